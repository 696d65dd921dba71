//! Webhook deliveries from git forges: each recorded once, by the id the
//! forge gave it, before the forge is answered.
//!
//! A forge sends a delivery again when it did not hear back in time, and
//! anyone who saw one can replay it; the first record of a
//! `(repository, delivery id)` wins, in one compare-and-swap, and every
//! later copy is answered as a duplicate and starts nothing.

use crate::kv::{Tree, TxError};
use crate::{Result, Store, StoreError, decode, encode, now_ms};
use serde::{Deserialize, Serialize};

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Recorded; its commit is not fetched yet.
    Received,
    /// Its runs were submitted.
    Started,
    /// It starts nothing (an event airlock does not run on, or no
    /// pipeline's triggers matched).
    Ignored,
    /// It could not start its runs (the commit was gone, the fetch
    /// failed); `detail` says why.
    Failed,
    /// A pull request of a first-time contributor, held until a user
    /// with the `runner` role approves it (the policy's
    /// `first_time_contributors: approve`).
    Waiting,
}

impl DeliveryState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Started => "started",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
        }
    }
}

/// One delivery, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The repository of the policy it came for.
    pub repository: String,
    /// The forge's id of the delivery.
    pub id: String,
    /// When it arrived (ms since the epoch).
    pub received_ms: u64,
    /// The event, as the host read it from the payload.
    pub event: serde_json::Value,
    /// Where it is.
    pub state: DeliveryState,
    /// The runs it started.
    #[serde(default)]
    pub runs: Vec<String>,
    /// Why it was ignored or failed, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The user who let a waiting delivery start its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// What airlock last told the forge about a run's commit, or tried to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeStatus {
    /// The state sent: `pending`, `success`, `failure`, `cancelled`.
    pub state: String,
    /// Whether the forge took it.
    pub delivered: bool,
    /// Attempts made for this state.
    pub attempts: u32,
    /// Why the last attempt failed, while it is not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last attempt was made (ms since the epoch).
    pub at_ms: u64,
}

fn key(repository: &str, id: &str) -> Vec<u8> {
    [repository.as_bytes(), b"\0", id.as_bytes()].concat()
}

impl Store {
    /// Records a delivery, unless one with its id was recorded for the
    /// repository before: then answers that one, and `false`. An event
    /// that starts nothing is recorded `ignored` with why.
    pub fn record_delivery(
        &self,
        repository: &str,
        id: &str,
        event: serde_json::Value,
        ignored: Option<String>,
    ) -> Result<(DeliveryRecord, bool)> {
        let record = DeliveryRecord {
            repository: repository.to_owned(),
            id: id.to_owned(),
            received_ms: now_ms(),
            event,
            state: if ignored.is_some() { DeliveryState::Ignored } else { DeliveryState::Received },
            runs: Vec::new(),
            detail: ignored,
            approved_by: None,
        };
        let key = key(repository, id);
        let received = record.state == DeliveryState::Received;
        // The record and its place among those left to do, together.
        let earlier = self.db.transaction(&[Tree::Deliveries, Tree::Received], |tx| {
            if let Some(bytes) = tx.get(Tree::Deliveries, &key)? {
                return Ok(Some(bytes));
            }
            tx.insert(Tree::Deliveries, &key, encode(&record))?;
            if received {
                tx.insert(Tree::Received, &key, Vec::new())?;
            }
            Ok(None)
        })?;
        match earlier {
            None => Ok((record, true)),
            Some(bytes) => Ok((decode(&key, &bytes)?, false)),
        }
    }

    /// Moves a received delivery to where it ended, with the runs it
    /// started.
    pub fn finish_delivery(
        &self,
        repository: &str,
        id: &str,
        state: DeliveryState,
        runs: Vec<String>,
        detail: Option<String>,
    ) -> Result<DeliveryRecord> {
        self.change_delivery(repository, id, |record| {
            record.state = state;
            record.runs = runs.clone();
            record.detail = detail.clone();
            Ok(())
        })
    }

    /// Lets a waiting delivery start its runs, as `user`: it is
    /// `received` again, and the intake takes it.
    pub fn approve_delivery(&self, repository: &str, id: &str, user: &str) -> Result<DeliveryRecord> {
        self.change_delivery(repository, id, |record| {
            if record.state != DeliveryState::Waiting {
                return Err(StoreError::NotWaiting { id: id.to_owned(), state: record.state.as_str() });
            }
            record.state = DeliveryState::Received;
            record.approved_by = Some(user.to_owned());
            record.detail = None;
            Ok(())
        })
    }

    /// Changes a delivery's record with `change`, in one transaction that
    /// also keeps its place among those left to do in step with its
    /// state; `change` refusing leaves everything as it was.
    fn change_delivery(
        &self,
        repository: &str,
        id: &str,
        change: impl Fn(&mut DeliveryRecord) -> Result<()>,
    ) -> Result<DeliveryRecord> {
        let key = key(repository, id);
        self.db.transaction(&[Tree::Deliveries, Tree::Received], |tx| {
            let missing = || StoreError::NoDelivery { repository: repository.to_owned(), id: id.to_owned() };
            let bytes = tx.get(Tree::Deliveries, &key)?.ok_or_else(|| TxError::Abort(missing()))?;
            let mut record: DeliveryRecord = decode(&key, &bytes)?;
            change(&mut record)?;
            tx.insert(Tree::Deliveries, &key, encode(&record))?;
            if record.state == DeliveryState::Received {
                tx.insert(Tree::Received, &key, Vec::new())?;
            } else {
                tx.remove(Tree::Received, &key)?;
            }
            Ok(record)
        })
    }

    /// The delivery `id` of `repository`, if it was recorded.
    pub fn delivery(&self, repository: &str, id: &str) -> Result<Option<DeliveryRecord>> {
        let key = key(repository, id);
        match self.db.get(Tree::Deliveries, &key)? {
            Some(bytes) => decode(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The deliveries still `received`, oldest first.
    pub fn received_deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::new();
        for (key, _) in self.db.all(Tree::Received)? {
            if let Some(value) = self.db.get(Tree::Deliveries, &key)? {
                out.push(decode::<DeliveryRecord>(&key, &value)?);
            }
        }
        out.retain(|d| d.state == DeliveryState::Received);
        out.sort_by_key(|d| d.received_ms);
        Ok(out)
    }

    /// The deliveries of `repository`, oldest first.
    pub fn deliveries_of(&self, repository: &str) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::new();
        for (key, value) in self.db.scan_prefix(Tree::Deliveries, &[repository.as_bytes(), b"\0"].concat(), None)? {
            out.push(decode::<DeliveryRecord>(&key, &value)?);
        }
        out.sort_by_key(|d| d.received_ms);
        Ok(out)
    }

    /// Every delivery recorded, oldest first.
    pub fn deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::new();
        for (key, value) in self.db.all(Tree::Deliveries)? {
            out.push(decode::<DeliveryRecord>(&key, &value)?);
        }
        out.sort_by_key(|d| d.received_ms);
        Ok(out)
    }
}

impl Store {
    /// Records what the forge was told (or not) of a run's commit.
    pub fn set_forge_status(&self, run: &str, status: &ForgeStatus) -> Result<()> {
        self.db.insert(Tree::Statuses, run.as_bytes(), encode(status))
    }

    /// What the forge was last told of a run's commit, if anything.
    pub fn forge_status(&self, run: &str) -> Result<Option<ForgeStatus>> {
        match self.db.get(Tree::Statuses, run.as_bytes())? {
            Some(bytes) => decode(run.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_recorded_once_and_its_replays_start_nothing() {
        crate::on_each_backend(|store| {
            let event = serde_json::json!({ "kind": "push", "commit": "abc" });
            let (first, new) = store.record_delivery("blinky", "d-1", event.clone(), None).expect("record");
            assert!(new && first.state == DeliveryState::Received);
            let (again, new) = store.record_delivery("blinky", "d-1", serde_json::json!({}), None).expect("replay");
            assert!(!new && again == first, "a replay answers the first record");
            // Another repository may use the same id.
            assert!(store.record_delivery("other", "d-1", event, None).expect("record").1);
            let ignored =
                store.record_delivery("blinky", "d-2", serde_json::json!({}), Some("a star".into())).expect("x").0;
            assert_eq!(ignored.state, DeliveryState::Ignored);
            let done = store
                .finish_delivery("blinky", "d-1", DeliveryState::Started, vec!["run-1".into()], None)
                .expect("finish");
            assert_eq!((done.state, done.runs.as_slice()), (DeliveryState::Started, ["run-1".to_owned()].as_slice()));
            assert_eq!(store.deliveries().expect("list").len(), 3);
            assert_eq!(store.deliveries_of("blinky").expect("list").len(), 2);
            // Of those, only `other`'s d-1 is left to do.
            let left: Vec<(String, String)> =
                store.received_deliveries().expect("left").into_iter().map(|d| (d.repository, d.id)).collect();
            assert_eq!(left, [("other".to_owned(), "d-1".to_owned())]);
            assert!(store.finish_delivery("blinky", "nope", DeliveryState::Failed, vec![], None).is_err());
        });
    }

    #[test]
    fn only_a_waiting_delivery_is_approved_and_then_taken_again() {
        crate::on_each_backend(|store| {
            store.record_delivery("blinky", "pr-1", serde_json::json!({}), None).expect("record");
            let e = store.approve_delivery("blinky", "pr-1", "rita").expect_err("not waiting yet");
            assert!(matches!(e, StoreError::NotWaiting { state: "received", .. }), "{e}");
            let why = Some("first-time contributor".to_owned());
            store.finish_delivery("blinky", "pr-1", DeliveryState::Waiting, vec![], why).expect("hold");
            assert!(store.received_deliveries().expect("left").is_empty(), "a waiting delivery is not taken");
            let approved = store.approve_delivery("blinky", "pr-1", "rita").expect("approve");
            assert_eq!((approved.state, approved.approved_by.as_deref()), (DeliveryState::Received, Some("rita")));
            assert_eq!(store.received_deliveries().expect("left"), [approved]);
            assert!(matches!(store.approve_delivery("blinky", "pr-1", "rita"), Err(StoreError::NotWaiting { .. })));
            assert!(matches!(store.approve_delivery("blinky", "nope", "rita"), Err(StoreError::NoDelivery { .. })));
        });
    }
}
