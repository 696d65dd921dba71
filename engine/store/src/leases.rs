//! Leases: which engine works on which run, so that several servers can
//! share one database and a run is worked on by one of them at a time.
//!
//! Every run that has not ended has a lease. A run submitted to a server
//! is offered free, in the transaction that records it; a run of
//! `airlock run` is held from the start by the engine that made it.
//! An engine *claims* the oldest lease that is free or has expired,
//! which makes it the holder for a while ([`Store::identify`] says how
//! long) and raises the lease's *fence*, a number that only grows. While
//! it works on the run it renews the lease; if it stops renewing (killed,
//! frozen, cut off from the database), the lease expires and another
//! engine claims the run and resumes it, as a restarted server resumes
//! its own. Ending the run ends its lease, in the same transaction.
//!
//! The fence is what makes a late engine harmless: on PostgreSQL, every
//! change an engine makes to a run it holds (the run's state, a step's,
//! a log) is applied only if the lease still has the fence the engine
//! claimed it with, checked in the same statement under a share lock on
//! the lease. An engine that was frozen past its lease and wakes up finds
//! every write refused ([`StoreError::LeaseLost`]) and stops; it cannot
//! record a step the new holder is running, nor start a deployment.
//!
//! On PostgreSQL the leases are a table of their own, `airlock_leases`,
//! claimed with `FOR UPDATE SKIP LOCKED` (engines claiming at once never
//! wait for each other), and `LISTEN`/`NOTIFY` wakes idle engines when a
//! run is submitted. In sled they are a tree: one process holds a sled
//! store, so a lease there is taken over only by that process's own
//! engine after a restart, and its writes need no fence.
//!
//! An engine's holder name is its state directory's (see
//! [`Store::identify`]), which one process holds at a time: a server
//! that starts again takes back its own runs at once
//! ([`Store::reclaim_runs`]) rather than waiting for their leases to
//! expire.

use crate::kv::{Db, Tree, TxError, TxResult, Txn};
use crate::{Result, StoreError, decode, encode, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// An engine's hold on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run: String,
    /// The fence the engine claimed it with: greater than any before.
    pub fence: u64,
    /// Whether some engine held the run before this claim (it was
    /// running, and is resumed), rather than it being claimed the
    /// first time.
    pub taken_over: bool,
}

/// Runs waiting and held, over every engine on a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Runs whose lease is free or expired.
    pub waiting: u64,
    /// Runs an engine holds.
    pub held: u64,
}

/// What engines tell each other through the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A run was submitted or let go of: an idle engine may claim it.
    Work,
    /// A job was offered to the agents: a waiting claim may take it.
    Job,
    /// Someone asked for this run to be cancelled: whoever works on it
    /// stops it.
    Cancel(String),
    /// An agent completed this job: the engine waiting for it goes on.
    Done(String),
}

/// A lease in sled's `leases` tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    holder: Option<String>,
    fence: u64,
    expires_ms: u64,
    /// The place in the queue: an id, so ever growing.
    queued: u64,
}

/// This process's side of the leases.
pub(crate) struct Leases {
    /// This engine's name and how long its leases last.
    me: OnceLock<(String, u64)>,
    /// The runs this process holds, with their fences, and those it held
    /// until it found its lease gone (true): its writes to those are
    /// still fenced with the old fence, and so refused, for whatever of
    /// the run is still under way here.
    held: Mutex<HashMap<String, (u64, bool)>>,
    signals: tokio::sync::broadcast::Sender<Signal>,
    listening: OnceLock<()>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            me: OnceLock::new(),
            held: Mutex::default(),
            signals: tokio::sync::broadcast::channel(256).0,
            listening: OnceLock::new(),
        }
    }
}

impl Leases {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, bool)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The default time a lease lasts without being renewed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Txn<'_> {
    /// Offers `run` to the engines, or (with `holder`) records that it is
    /// held already, with fence 1. sled queues it at `order` (an id);
    /// PostgreSQL at the time.
    pub(crate) fn offer_lease(&mut self, run: &str, holder: Option<(&str, u64)>, order: u64) -> TxResult<()> {
        match self {
            Txn::Pg(t) => t.offer_lease(run, holder).map_err(TxError::Pg),
            Txn::Sled { .. } => {
                let now = now_ms();
                let record = LeaseRecord {
                    holder: holder.map(|(h, _)| h.to_owned()),
                    fence: u64::from(holder.is_some()),
                    expires_ms: holder.map_or(0, |(_, ttl)| now + ttl),
                    queued: order,
                };
                self.insert(Tree::Leases, run.as_bytes(), encode(&record))
            }
        }
    }

    /// Refuses the transaction unless `run`'s lease still has `fence`.
    pub(crate) fn check_fence(&mut self, run: &str, fence: Option<u64>) -> TxResult<()> {
        match (self, fence) {
            (Txn::Pg(t), Some(fence)) => match t.has_fence(run, fence).map_err(TxError::Pg)? {
                true => Ok(()),
                false => Err(TxError::Abort(StoreError::LeaseLost(run.to_owned()))),
            },
            _ => Ok(()),
        }
    }

    /// Ends `run`'s lease: the run has ended.
    pub(crate) fn end_lease(&mut self, run: &str) -> TxResult<()> {
        match self {
            Txn::Pg(t) => t.end_lease(run).map_err(TxError::Pg),
            Txn::Sled { .. } => self.remove(Tree::Leases, run.as_bytes()),
        }
    }
}

impl crate::Store {
    /// Names the engine working through this store (its state
    /// directory's name, held by one process at a time) and how long its
    /// leases last without renewal. Only the first call counts.
    pub fn identify(&self, holder: &str, lease: Duration) {
        let ttl = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let _ = self.leases.me.set((holder.to_owned(), ttl));
    }

    /// The engine's name and lease time, once [`identify`](Self::identify) was called.
    pub(crate) fn me(&self) -> Option<(&str, u64)> {
        self.leases.me.get().map(|(h, t)| (h.as_str(), *t))
    }

    /// How long this engine's leases last.
    pub fn lease_time(&self) -> Duration {
        Duration::from_millis(self.me().map_or(DEFAULT_LEASE.as_millis() as u64, |(_, t)| t))
    }

    /// The fence this process's writes to `run` carry: the one it
    /// claimed the run with, while it holds it and after it lost it.
    pub(crate) fn fence(&self, run: &str) -> Option<u64> {
        self.leases.held().get(run).map(|(fence, _)| *fence)
    }

    /// Whether this process holds `run` (claimed it, and has not found
    /// its lease gone since).
    pub fn holds(&self, run: &str) -> bool {
        self.leases.held().get(run).is_some_and(|(_, lost)| !lost)
    }

    fn holder(&self) -> Result<(&str, u64)> {
        self.me().ok_or_else(|| StoreError::Database("the engine has not said who it is (Store::identify)".into()))
    }

    pub(crate) fn hold(&self, lease: &Lease) {
        self.leases.held().insert(lease.run.clone(), (lease.fence, false));
    }

    /// The run ended: its lease is gone with it.
    pub(crate) fn forget(&self, run: &str) {
        self.leases.held().remove(run);
    }

    /// The lease on `run` is no longer this process's: it may claim the
    /// run again, and until then its writes to it are refused.
    fn lose(&self, run: &str) {
        if let Some(entry) = self.leases.held().get_mut(run) {
            entry.1 = true;
        }
    }

    /// Claims the run that has waited longest among those whose lease is
    /// free or expired (and that this process does not hold): this
    /// engine holds it now, with a new fence. None when there is none.
    pub fn claim_run(&self) -> Result<Option<Lease>> {
        let (me, ttl) = self.holder()?;
        let mine: Vec<String> =
            self.leases.held().iter().filter(|(_, (_, lost))| !lost).map(|(run, _)| run.clone()).collect();
        let lease = match &*self.db {
            Db::Postgres(p) => p.claim_lease(me, ttl, mine)?,
            Db::Sled(_) => loop {
                let now = now_ms();
                let mut oldest: Option<(Vec<u8>, Vec<u8>, LeaseRecord)> = None;
                for (key, value) in self.db.all(Tree::Leases)? {
                    let record: LeaseRecord = decode(&key, &value)?;
                    let free = record.holder.is_none() || record.expires_ms <= now;
                    if free
                        && !mine.iter().any(|r| r.as_bytes() == key)
                        && oldest.as_ref().is_none_or(|(_, _, o)| record.queued < o.queued)
                    {
                        oldest = Some((key, value, record));
                    }
                }
                let Some((key, old, record)) = oldest else { break None };
                let taken_over = record.holder.is_some();
                let claimed = LeaseRecord {
                    holder: Some(me.to_owned()),
                    fence: record.fence + 1,
                    expires_ms: now + ttl,
                    ..record
                };
                if self.db.cas(Tree::Leases, &key, Some(&old), Some(encode(&claimed)))?.is_ok() {
                    let run = String::from_utf8_lossy(&key).into_owned();
                    break Some(Lease { run, fence: claimed.fence, taken_over });
                }
            },
        };
        if let Some(lease) = &lease {
            self.hold(lease);
        }
        Ok(lease)
    }

    /// Takes back, at once and with new fences, every lease held under
    /// this engine's name: runs a process on the same state directory
    /// held when it stopped. Call it once, at start.
    pub fn reclaim_runs(&self) -> Result<Vec<Lease>> {
        let (me, ttl) = self.holder()?;
        let leases = match &*self.db {
            Db::Postgres(p) => p.reclaim_leases(me, ttl)?,
            Db::Sled(_) => {
                let mut taken = Vec::new();
                for (key, _) in self.db.all(Tree::Leases)? {
                    let updated = self.db.update(Tree::Leases, &key, |old| {
                        let record: LeaseRecord = serde_json::from_slice(old?).ok()?;
                        if record.holder.as_deref() != Some(me) {
                            return old.map(<[u8]>::to_vec);
                        }
                        Some(encode(&LeaseRecord { fence: record.fence + 1, expires_ms: now_ms() + ttl, ..record }))
                    })?;
                    if let Some(bytes) = updated {
                        let record: LeaseRecord = decode(&key, &bytes)?;
                        if record.holder.as_deref() == Some(me) {
                            let run = String::from_utf8_lossy(&key).into_owned();
                            taken.push(Lease { run, fence: record.fence, taken_over: true });
                        }
                    }
                }
                taken
            }
        };
        for lease in &leases {
            self.hold(lease);
        }
        Ok(leases)
    }

    /// Makes this engine's lease on `run` last its full time again from
    /// now. False when the lease is no longer this engine's (another
    /// claimed it after it expired, or the run ended): the engine must
    /// stop working on the run.
    pub fn renew_lease(&self, run: &str) -> Result<bool> {
        let (me, ttl) = self.holder()?;
        let Some(fence) = self.fence(run).filter(|_| self.holds(run)) else { return Ok(false) };
        let renewed = match &*self.db {
            Db::Postgres(p) => p.renew_lease(run, me, fence, ttl)?,
            Db::Sled(_) => {
                let mut renewed = false;
                self.db.update(Tree::Leases, run.as_bytes(), |old| {
                    let record: LeaseRecord = serde_json::from_slice(old?).ok()?;
                    renewed = record.holder.as_deref() == Some(me) && record.fence == fence;
                    if !renewed {
                        return old.map(<[u8]>::to_vec);
                    }
                    Some(encode(&LeaseRecord { expires_ms: now_ms() + ttl, ..record }))
                })?;
                renewed
            }
        };
        if !renewed {
            self.lose(run);
        }
        Ok(renewed)
    }

    /// Lets go of `run` without ending it (the server is stopping): its
    /// lease expires now, so another engine may claim it at once.
    pub fn let_go(&self, run: &str) -> Result<()> {
        let (me, _) = self.holder()?;
        if let Some(fence) = self.fence(run).filter(|_| self.holds(run)) {
            match &*self.db {
                Db::Postgres(p) => p.let_go(run, me, fence)?,
                Db::Sled(_) => {
                    self.db.update(Tree::Leases, run.as_bytes(), |old| {
                        let record: LeaseRecord = serde_json::from_slice(old?).ok()?;
                        if record.fence != fence {
                            return old.map(<[u8]>::to_vec);
                        }
                        Some(encode(&LeaseRecord { expires_ms: 0, ..record }))
                    })?;
                }
            }
            self.lose(run);
            self.signal(&Signal::Work)?;
        }
        Ok(())
    }

    /// Records where the other engines on this store reach this one
    /// (an `http://` URL), so a server can ask the one holding a run for
    /// what only that one has: the log of a step attempt running there,
    /// the one-time code of an approval it waits for. Called again, it
    /// replaces the address.
    pub fn announce(&self, address: &str) -> Result<()> {
        let (me, _) = self.holder()?;
        self.db.insert(Tree::Servers, me.as_bytes(), encode(&address))
    }

    /// Where to reach the engine holding `run`, if that is another engine
    /// than this one and it said where ([`announce`](Self::announce)).
    /// A free or expired lease, or a run that ended, has no holder.
    pub fn holder_elsewhere(&self, run: &str) -> Result<Option<String>> {
        let (me, _) = self.holder()?;
        let holder = match &*self.db {
            Db::Postgres(p) => p.lease_holder(run)?,
            Db::Sled(_) => match self.db.get(Tree::Leases, run.as_bytes())? {
                Some(value) => {
                    let record: LeaseRecord = decode(run.as_bytes(), &value)?;
                    record.holder.filter(|_| record.expires_ms > now_ms())
                }
                None => None,
            },
        };
        match holder {
            Some(holder) if holder != me => match self.db.get(Tree::Servers, holder.as_bytes())? {
                Some(value) => decode(holder.as_bytes(), &value).map(Some),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// How many runs wait for an engine (their lease is free, or expired
    /// with the engine that held it), and how many an engine holds now:
    /// the queue's depth and its work under way, over every engine on
    /// the store.
    pub fn lease_counts(&self) -> Result<LeaseCounts> {
        match &*self.db {
            Db::Postgres(p) => p.lease_counts(),
            Db::Sled(_) => {
                let now = now_ms();
                let mut counts = LeaseCounts::default();
                for (key, value) in self.db.all(Tree::Leases)? {
                    let record: LeaseRecord = decode(&key, &value)?;
                    if record.holder.is_none() || record.expires_ms <= now {
                        counts.waiting += 1;
                    } else {
                        counts.held += 1;
                    }
                }
                Ok(counts)
            }
        }
    }

    /// Ends the lease of a run that ended (or that is not there): what a
    /// run's end does in the same transaction, for a lease left behind.
    pub fn end_lease(&self, run: &str) -> Result<()> {
        self.db.transaction(&[Tree::Leases], |tx| tx.end_lease(run))?;
        self.forget(run);
        Ok(())
    }

    /// Offers every run submitted to a server that has not ended and has
    /// no lease: runs recorded by an airlock from before leases.
    pub fn offer_unleased_runs(&self) -> Result<usize> {
        let mut offered = 0;
        for run in self.runs()? {
            if run.state.is_final() || run.submission.is_none() {
                continue;
            }
            let order = self.db.next_id()?;
            let created = self.db.transaction(&[Tree::Leases], |tx| match tx.has_lease(&run.id)? {
                true => Ok(false),
                false => tx.offer_lease(&run.id, None, order).map(|()| true),
            })?;
            offered += usize::from(created);
        }
        Ok(offered)
    }

    /// Tells every engine on this store (this one included) `signal`.
    pub fn signal(&self, signal: &Signal) -> Result<()> {
        if let Db::Postgres(p) = &*self.db {
            p.notify(signal)?;
        }
        self.signal_here(signal);
        Ok(())
    }

    /// Delivers `signal` to this process's listeners at once. On
    /// PostgreSQL the other engines learn of it by `NOTIFY`, whose echo
    /// here is dropped: a job offered and claimed through the same
    /// server, or completed through the one that waits for it, does
    /// not wait for the database to pass the word back.
    pub(crate) fn signal_here(&self, signal: &Signal) {
        // No receiver is no one to tell.
        let _ = self.leases.signals.send(signal.clone());
    }

    /// What other engines (and this one) signal from now on. On
    /// PostgreSQL, a connection of its own listens, and comes back after
    /// losing the database; it then signals [`Signal::Work`], since work
    /// may have come while it was away.
    pub fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal> {
        let receiver = self.leases.signals.subscribe();
        if let Db::Postgres(p) = &*self.db
            && self.leases.listening.set(()).is_ok()
        {
            p.listen(self.leases.signals.clone());
        }
        receiver
    }
}

impl Txn<'_> {
    fn has_lease(&mut self, run: &str) -> TxResult<bool> {
        match self {
            Txn::Pg(t) => t.has_lease(run).map_err(TxError::Pg),
            Txn::Sled { .. } => Ok(self.get(Tree::Leases, run.as_bytes())?.is_some()),
        }
    }
}

/// Encodes a signal as a `NOTIFY` payload.
///
/// A payload starts with `@` and the sending process's origin (see
/// [`origin`]): a process has its own signals delivered at once, not
/// after the round trip through the database, and drops their echo.
pub(crate) fn payload(origin: &str, signal: &Signal) -> String {
    match signal {
        Signal::Work => format!("@{origin} work"),
        Signal::Job => format!("@{origin} job"),
        Signal::Cancel(run) => format!("@{origin} cancel {run}"),
        Signal::Done(job) => format!("@{origin} done {job}"),
    }
}

/// Decodes a `NOTIFY` payload: its origin (none from an airlock that did
/// not send one) and the signal.
pub(crate) fn parse_payload(payload: &str) -> Option<(Option<&str>, Signal)> {
    let (origin, payload) = match payload.strip_prefix('@').and_then(|p| p.split_once(' ')) {
        Some((origin, rest)) => (Some(origin), rest),
        None => (None, payload),
    };
    let signal = match payload.split_once(' ') {
        None if payload == "work" => Signal::Work,
        None if payload == "job" => Signal::Job,
        Some(("cancel", run)) => Signal::Cancel(run.to_owned()),
        Some(("done", job)) => Signal::Done(job.to_owned()),
        _ => return None,
    };
    Some((origin, signal))
}

/// A name for this process's signals, different in every process.
pub(crate) fn origin() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunState, StepState, Store, Submission};

    fn submit(store: &Store) -> String {
        store.submit_run("p", Default::default(), &["a".into()], Submission::by("ci")).expect("submit").0.id
    }

    fn start(store: &Store, run: &str) -> crate::Result<crate::StepRecord> {
        store.update_step(run, "a", None, |s| s.state = StepState::Running)
    }

    /// Submitted runs are claimed oldest first, each once, with fence 1;
    /// a run of `airlock run` is its engine's from the start; ending a
    /// run ends its lease.
    #[test]
    fn runs_are_claimed_oldest_first_and_once() {
        crate::on_each_backend(|store| {
            store.identify("engine-a", Duration::from_secs(60));
            let local = store.create_run("p", "p.yaml", Default::default(), &["a".into()]).expect("local");
            assert_eq!(store.fence(&local.id), Some(1));
            assert!(store.holds(&local.id));
            let (first, second) = (submit(store), submit(store));
            assert_eq!(store.lease_counts().expect("counts"), LeaseCounts { waiting: 2, held: 1 });
            let claimed = store.claim_run().expect("claim").expect("a run");
            assert_eq!(claimed, Lease { run: first.clone(), fence: 1, taken_over: false });
            assert_eq!(store.claim_run().expect("claim").expect("a run").run, second);
            assert_eq!(store.claim_run().expect("claim"), None);
            assert_eq!(store.lease_counts().expect("counts"), LeaseCounts { waiting: 0, held: 3 });
            assert!(store.renew_lease(&first).expect("renew"));
            start(store, &first).expect("the holder writes");
            store.finish_run(&first, RunState::Succeeded, None).expect("finish");
            assert_eq!(store.fence(&first), None);
            assert!(!store.holds(&first));
            assert!(!store.renew_lease(&first).expect("renew"), "an ended run's lease is gone");
        });
    }

    /// A lease that expires goes to another engine with a greater fence;
    /// from then on the first engine's every write to the run is refused,
    /// and it cannot renew; the second one's are applied.
    #[test]
    fn a_late_engine_is_fenced_off() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let (a, b) = (Store::open_postgres(&url).expect("a"), Store::open_postgres(&url).expect("b"));
        a.identify("engine-a", Duration::from_millis(300));
        b.identify("engine-b", Duration::from_secs(60));
        let run = submit(&a);
        let lease = a.claim_run().expect("claim").expect("a run");
        assert_eq!(b.claim_run().expect("claim"), None, "held, not expired");
        start(&a, &run).expect("the holder writes");
        std::thread::sleep(Duration::from_millis(400));
        let taken = b.claim_run().expect("claim").expect("the expired run");
        assert_eq!(taken, Lease { run: run.clone(), fence: lease.fence + 1, taken_over: true });
        let refused = |e: Option<StoreError>| matches!(e, Some(StoreError::LeaseLost(r)) if r == run);
        assert!(refused(a.update_step(&run, "a", None, |s| s.state = StepState::Succeeded).err()));
        assert!(refused(a.finish_run(&run, RunState::Succeeded, None).err()));
        assert!(refused(a.set_run_state(&run, RunState::Running, None).err()));
        let log = crate::LogRecord { attempt: 1, bytes: b"late".to_vec(), written: 4 };
        assert!(refused(a.put_log(&run, "a", &log).err()));
        assert!(!a.renew_lease(&run).expect("renew"));
        // Having found its lease gone, it is still refused, not let through.
        assert!(refused(a.update_step(&run, "a", None, |s| s.state = StepState::Succeeded).err()));
        assert!(refused(a.finish_run(&run, RunState::Cancelled, None).err()));
        assert_eq!(b.step(&run, "a").expect("step").state, StepState::Running, "the late write did not land");
        assert!(b.logs(&run, "a").expect("logs").is_empty());
        b.update_step(&run, "a", None, |s| s.state = StepState::Succeeded).expect("the new holder writes");
        b.finish_run(&run, RunState::Succeeded, None).expect("finish");
        assert_eq!(a.claim_run().expect("claim"), None);
    }

    /// An engine finds the address of the engine holding a run, as that
    /// one announced it, and only while it holds the run; never its own.
    #[test]
    fn the_holder_of_a_run_is_found_where_it_said() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let (a, b) = (Store::open_postgres(&url).expect("a"), Store::open_postgres(&url).expect("b"));
        a.identify("engine-a", Duration::from_secs(60));
        b.identify("engine-b", Duration::from_secs(60));
        a.announce("http://10.0.0.1:8480").expect("announce");
        b.announce("http://10.0.0.2:8480").expect("announce");
        a.announce("http://10.0.0.9:8480").expect("announce again");
        let run = submit(&a);
        assert_eq!(b.holder_elsewhere(&run).expect("holder"), None, "a free lease has no holder");
        let lease = a.claim_run().expect("claim").expect("a run");
        assert_eq!(b.holder_elsewhere(&run).expect("holder").as_deref(), Some("http://10.0.0.9:8480"));
        assert_eq!(a.holder_elsewhere(&run).expect("holder"), None, "an engine never asks itself");
        a.let_go(&lease.run).expect("let go");
        assert_eq!(b.holder_elsewhere(&run).expect("holder"), None, "a lease let go has no holder");
        b.claim_run().expect("claim").expect("the run let go");
        assert_eq!(a.holder_elsewhere(&run).expect("holder").as_deref(), Some("http://10.0.0.2:8480"));
        b.finish_run(&run, RunState::Succeeded, None).expect("finish");
        assert_eq!(a.holder_elsewhere(&run).expect("holder"), None, "an ended run has no holder");
    }

    /// A run taken over keeps its history in the order it happened, even
    /// when the engine taking it over took its block of ids before the
    /// engine it takes over from took its own.
    #[test]
    fn a_run_taken_over_keeps_its_history_in_order() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let (early, late) = (Store::open_postgres(&url).expect("early"), Store::open_postgres(&url).expect("late"));
        early.identify("engine-early", Duration::from_secs(60));
        late.identify("engine-late", Duration::from_millis(300));
        // `early` takes a block of ids, then `late` a later one.
        let first = submit(&early);
        let run = submit(&late);
        let claimed: Vec<String> = std::iter::from_fn(|| late.claim_run().expect("claim")).map(|l| l.run).collect();
        assert_eq!(claimed, [first.clone(), run.clone()]);
        late.finish_run(&first, RunState::Succeeded, None).expect("finish");
        late.update_step(&run, "a", Some("before".into()), |s| s.state = StepState::Running).expect("write");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(early.claim_run().expect("claim").map(|l| l.run), Some(run.clone()));
        early.update_step(&run, "a", Some("after".into()), |s| s.state = StepState::Succeeded).expect("write");
        let details: Vec<Option<String>> =
            early.events(&run).expect("events").into_iter().filter(|e| e.step.is_some()).map(|e| e.detail).collect();
        assert_eq!(details.last(), Some(&Some("after".into())), "{details:?}");
    }

    /// Engines claiming at the same time never get the same run.
    #[test]
    fn engines_claiming_at_once_share_the_runs_out() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let submitter = Store::open_postgres(&url).expect("open");
        let mut runs: Vec<String> = (0..40).map(|_| submit(&submitter)).collect();
        let claimed: Vec<Vec<String>> = std::thread::scope(|scope| {
            let engines: Vec<_> = (0..4)
                .map(|i| {
                    let url = url.clone();
                    scope.spawn(move || {
                        let store = Store::open_postgres(&url).expect("open");
                        store.identify(&format!("engine-{i}"), Duration::from_secs(60));
                        std::iter::from_fn(|| store.claim_run().expect("claim")).map(|l| l.run).collect()
                    })
                })
                .collect();
            engines.into_iter().map(|e| e.join().expect("engine")).collect()
        });
        let mut all: Vec<String> = claimed.concat();
        all.sort();
        runs.sort();
        assert_eq!(all, runs, "each run claimed exactly once");
    }

    /// An engine that starts again under the same name takes its runs
    /// back at once, with new fences; the process before it (were it
    /// still there) is fenced off.
    #[test]
    fn an_engine_takes_back_its_own_runs() {
        crate::on_each_backend(|store| {
            store.identify("engine-a", Duration::from_secs(60));
            let run = submit(store);
            let before = store.claim_run().expect("claim").expect("run");
            let again = store.clone_unidentified();
            again.identify("engine-a", Duration::from_secs(60));
            assert_eq!(again.claim_run().expect("claim"), None, "not expired");
            let taken = again.reclaim_runs().expect("reclaim");
            assert_eq!(taken, vec![Lease { run: run.clone(), fence: before.fence + 1, taken_over: true }]);
            if store.is_shared() {
                assert!(matches!(start(store, &run), Err(StoreError::LeaseLost(_))));
            }
            start(&again, &run).expect("the new process writes");
        });
    }

    /// An engine that lets a run go (it is stopping) leaves it to the
    /// next claim at once; runs recorded before leases get one.
    #[test]
    fn a_run_let_go_is_claimed_at_once() {
        crate::on_each_backend(|store| {
            store.identify("engine-a", Duration::from_secs(60));
            let run = submit(store);
            store.claim_run().expect("claim").expect("run");
            store.let_go(&run).expect("let go");
            let other = store.clone_unidentified();
            other.identify("engine-b", Duration::from_secs(60));
            let lease = other.claim_run().expect("claim").expect("the run let go");
            assert_eq!((lease.run.as_str(), lease.taken_over), (run.as_str(), true));
            assert_eq!(store.offer_unleased_runs().expect("offer"), 0);
        });
    }

    /// A submission wakes the engines listening on the database, and a
    /// cancellation reaches them.
    #[test]
    fn signals_reach_the_other_engines() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let (a, b) = (Store::open_postgres(&url).expect("a"), Store::open_postgres(&url).expect("b"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut signals = b.signals();
        let next = |signals: &mut tokio::sync::broadcast::Receiver<Signal>| {
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), signals.recv()).await })
                .expect("a signal in time")
                .expect("signal")
        };
        // The listening connection says it is there.
        assert_eq!(next(&mut signals), Signal::Work);
        submit(&a);
        assert_eq!(next(&mut signals), Signal::Work);
        a.signal(&Signal::Cancel("20261206-000000-abcd".into())).expect("signal");
        assert_eq!(next(&mut signals), Signal::Cancel("20261206-000000-abcd".into()));
    }

    #[test]
    fn payloads_read_back() {
        for signal in [Signal::Work, Signal::Job, Signal::Cancel("r 1".into()), Signal::Done("r/s/1".into())] {
            assert_eq!(parse_payload(&payload("0a1b", &signal)), Some((Some("0a1b"), signal)));
        }
        // What an airlock that names no origin sends.
        assert_eq!(parse_payload("work"), Some((None, Signal::Work)));
        assert_eq!(parse_payload("done r/s/1"), Some((None, Signal::Done("r/s/1".into()))));
        assert_eq!(parse_payload("stop"), None);
        assert_eq!(parse_payload("@0a1b stop"), None);
    }
}
