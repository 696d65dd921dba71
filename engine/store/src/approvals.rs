//! Approval requests and their decisions: taken once, by the right
//! people, with the code that was shown, and kept for the audit.
//!
//! A request records exactly what would happen (environment, provider,
//! target, the artifacts by digest, who asked), who may decide, how many
//! must approve, until when, and a salted sha256 of a random one-time
//! code shown in the run's output (each request has its own salt, so no
//! table of hashes computed in advance fits two requests). Each decision is checked against the
//! request and appended in one compare-and-swap, then flushed to disk
//! before anyone is told: of two decisions racing for the last approval,
//! exactly one counts; once a request is decided, nothing changes it.

use crate::kv::Tree;
use crate::{Result, Store, StoreError, now_ms};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for decisions.
    Pending,
    /// Enough approvals.
    Approved,
    /// Someone denied it.
    Denied,
    /// Not enough approvals before the deadline: denied.
    TimedOut,
    /// The run was cancelled while the request waited.
    Cancelled,
}

impl ApprovalState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An artifact as the request shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalArtifact {
    /// Its path.
    pub path: String,
    /// Its sha256: what is approved, and what will be deployed.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// One person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who (a user of the policy).
    pub user: String,
    /// Approve or deny.
    pub approve: bool,
    /// Why, as they said.
    pub reason: Option<String>,
    /// When.
    pub at_ms: u64,
}

/// A request for approval, with its decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The run.
    pub run: String,
    /// The step that waits.
    pub step: String,
    /// The environment.
    pub environment: String,
    /// What would do the deployment (`http`, `directory`, `command`).
    pub provider: String,
    /// Where it would deploy.
    pub target: String,
    /// What it would deploy.
    pub artifacts: Vec<ApprovalArtifact>,
    /// Who asked.
    pub requester: String,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub required: u64,
    /// Whether the requester may be one of them.
    pub requester_may_approve: bool,
    /// sha256 of the salt and the one-time code: never shown to anyone.
    pub code_sha256: String,
    /// The salt, hex (empty in requests made before codes were salted).
    #[serde(default)]
    pub code_salt: String,
    /// When it was asked.
    pub created_ms: u64,
    /// When it times out.
    pub deadline_ms: u64,
    /// Where it is.
    pub state: ApprovalState,
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
    /// When it reached its end state.
    pub decided_ms: Option<u64>,
}

/// Why a decision was refused. Each rule has its own reason.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such request.
    #[error("run `{run}` has no approval request for step `{step}`")]
    NoRequest {
        /// The run.
        run: String,
        /// The step.
        step: String,
    },
    /// The user is not among the environment's approvers.
    #[error("`{user}` may not decide for environment `{environment}`: only members of its approver groups may")]
    NotApprover {
        /// Who tried.
        user: String,
        /// The environment.
        environment: String,
    },
    /// The requester tried to approve their own request.
    #[error("`{user}` asked for this deployment and the policy of `{environment}` does not let the requester approve")]
    Requester {
        /// Who tried.
        user: String,
        /// The environment.
        environment: String,
    },
    /// The code is not this request's.
    #[error("that is not the code of this request; use the code printed for run `{run}` step `{step}`")]
    WrongCode {
        /// The run.
        run: String,
        /// The step.
        step: String,
    },
    /// Already decided: the code is stale.
    #[error("this request was already {state}; its code no longer works")]
    AlreadyDecided {
        /// How it ended.
        state: &'static str,
    },
    /// The same user decided before.
    #[error("`{user}` already decided on this request; each approver decides once")]
    AlreadyVoted {
        /// Who.
        user: String,
    },
    /// Past the deadline.
    #[error("this request timed out, which denied it")]
    TimedOut,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new salt and the salted sha256 of a one-time code, both hex: what
/// a request keeps in `code_salt` and `code_sha256`.
pub fn hash_code(code: &str) -> (String, String) {
    let salt = hex::encode(rand::random::<[u8; 16]>());
    let digest = salted(&salt, code);
    (salt, digest)
}

fn salted(salt: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(code.trim().as_bytes());
    hex::encode(h.finalize())
}

impl ApprovalRecord {
    /// Whether `code` is this request's one-time code.
    pub fn code_matches(&self, code: &str) -> bool {
        salted(&self.code_salt, code) == self.code_sha256
    }
}

/// A new one-time code: 10 characters from an alphabet without look-alikes.
pub fn new_code() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    let bytes: [u8; 10] = rand::random();
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

fn key(run: &str, step: &str) -> Vec<u8> {
    [run.as_bytes(), b"\0", step.as_bytes()].concat()
}

/// The decision `user` asks for, checked against `r` at `now`.
fn apply(
    mut r: ApprovalRecord,
    user: &str,
    code: &str,
    approve: bool,
    reason: Option<&str>,
    now: u64,
) -> Result<ApprovalRecord, ApprovalError> {
    if r.state != ApprovalState::Pending {
        return Err(ApprovalError::AlreadyDecided { state: r.state.as_str() });
    }
    if now >= r.deadline_ms {
        return Err(ApprovalError::TimedOut);
    }
    // Whether the user may decide at all comes first: to someone who may
    // not, a right code and a wrong one get the same answer.
    if !r.approvers.iter().any(|a| a == user) {
        return Err(ApprovalError::NotApprover { user: user.to_owned(), environment: r.environment });
    }
    if !r.code_matches(code) {
        return Err(ApprovalError::WrongCode { run: r.run, step: r.step });
    }
    if approve && user == r.requester && !r.requester_may_approve {
        return Err(ApprovalError::Requester { user: user.to_owned(), environment: r.environment });
    }
    if r.decisions.iter().any(|d| d.user == user) {
        return Err(ApprovalError::AlreadyVoted { user: user.to_owned() });
    }
    r.decisions.push(Decision { user: user.to_owned(), approve, reason: reason.map(str::to_owned), at_ms: now });
    let approvals = r.decisions.iter().filter(|d| d.approve).count() as u64;
    if !approve {
        r.state = ApprovalState::Denied;
    } else if approvals >= r.required {
        r.state = ApprovalState::Approved;
    }
    if r.state != ApprovalState::Pending {
        r.decided_ms = Some(now);
    }
    Ok(r)
}

impl Store {
    /// Records a new request. A request already there for the step (a
    /// resumed run) is kept, not replaced: its code and decisions stand.
    pub fn request_approval(&self, record: &ApprovalRecord) -> Result<ApprovalRecord> {
        let k = key(&record.run, &record.step);
        let value = serde_json::to_vec(record).unwrap_or_default();
        match self.db.cas(Tree::Approvals, &k, None, Some(value))? {
            Ok(()) => {
                self.db.flush()?;
                Ok(record.clone())
            }
            Err(current) => match current {
                Some(v) => crate::decode(&k, &v),
                None => Err(StoreError::NoStep { run: record.run.clone(), step: record.step.clone() }),
            },
        }
    }

    /// Forgets a request still waiting for decisions, so that the step
    /// can ask again with a new code (its engine stopped, and the process
    /// that showed the old code is gone). A request already decided stands.
    pub fn discard_pending_approval(&self, run: &str, step: &str) -> Result<()> {
        let k = key(run, step);
        loop {
            let Some(old) = self.db.get(Tree::Approvals, &k)? else { return Ok(()) };
            let r: ApprovalRecord = crate::decode(&k, &old)?;
            if r.state != ApprovalState::Pending {
                return Ok(());
            }
            if self.db.cas(Tree::Approvals, &k, Some(&old), None)?.is_ok() {
                return Ok(());
            }
        }
    }

    /// The request of a step, if there is one.
    pub fn approval(&self, run: &str, step: &str) -> Result<Option<ApprovalRecord>> {
        let k = key(run, step);
        self.db.get(Tree::Approvals, &k)?.map(|v| crate::decode(&k, &v)).transpose()
    }

    /// Every request of a run.
    pub fn approvals(&self, run: &str) -> Result<Vec<ApprovalRecord>> {
        let prefix = [run.as_bytes(), b"\0"].concat();
        self.db.scan_prefix(Tree::Approvals, &prefix, None)?.iter().map(|(k, v)| crate::decode(k, v)).collect()
    }

    /// Every request still pending, across runs.
    pub fn pending_approvals(&self) -> Result<Vec<ApprovalRecord>> {
        let mut out = Vec::new();
        for (k, v) in self.db.all(Tree::Approvals)? {
            let r: ApprovalRecord = crate::decode(&k, &v)?;
            if r.state == ApprovalState::Pending {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Records `user`'s decision, if every rule allows it, in one
    /// compare-and-swap, and flushes it before returning.
    pub fn decide(
        &self,
        run: &str,
        step: &str,
        user: &str,
        code: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let k = key(run, step);
        loop {
            let Some(old) = self.db.get(Tree::Approvals, &k)? else {
                return Err(ApprovalError::NoRequest { run: run.to_owned(), step: step.to_owned() });
            };
            let record: ApprovalRecord = crate::decode(&k, &old)?;
            let new = apply(record, user, code, approve, reason, now_ms())?;
            let value = serde_json::to_vec(&new).unwrap_or_default();
            if self.db.cas(Tree::Approvals, &k, Some(&old), Some(value))?.is_ok() {
                self.db.flush()?;
                return Ok(new);
            }
        }
    }

    /// Ends a pending request because its run was cancelled: no decision
    /// can change anything any more.
    pub fn cancel_approval(&self, run: &str, step: &str) -> Result<()> {
        let k = key(run, step);
        loop {
            let Some(old) = self.db.get(Tree::Approvals, &k)? else { return Ok(()) };
            let mut r: ApprovalRecord = crate::decode(&k, &old)?;
            if r.state != ApprovalState::Pending {
                return Ok(());
            }
            r.state = ApprovalState::Cancelled;
            r.decided_ms = Some(now_ms());
            let value = serde_json::to_vec(&r).unwrap_or_default();
            if self.db.cas(Tree::Approvals, &k, Some(&old), Some(value))?.is_ok() {
                self.db.flush()?;
                return Ok(());
            }
        }
    }

    /// Ends a pending request that passed its deadline: denied by
    /// timeout. Returns the record as it stands.
    pub fn expire_approval(&self, run: &str, step: &str) -> Result<Option<ApprovalRecord>> {
        let k = key(run, step);
        loop {
            let Some(old) = self.db.get(Tree::Approvals, &k)? else { return Ok(None) };
            let mut r: ApprovalRecord = crate::decode(&k, &old)?;
            let now = now_ms();
            if r.state != ApprovalState::Pending || now < r.deadline_ms {
                return Ok(Some(r));
            }
            r.state = ApprovalState::TimedOut;
            r.decided_ms = Some(now);
            let value = serde_json::to_vec(&r).unwrap_or_default();
            if self.db.cas(Tree::Approvals, &k, Some(&old), Some(value))?.is_ok() {
                self.db.flush()?;
                return Ok(Some(r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: codes were hashed unsalted, so one table of the ~49-bit
    /// code space fitted every request.
    #[test]
    fn codes_are_salted_per_request() {
        let code = new_code();
        let (salt1, digest1) = hash_code(&code);
        let (salt2, digest2) = hash_code(&code);
        assert_ne!(salt1, salt2);
        assert_ne!(digest1, digest2, "the same code hashes differently in two requests");
        assert_ne!(digest1, hex::encode(Sha256::digest(code.as_bytes())), "the digest is not the bare sha256");
        let mut r = request(&code, 1, true, now_ms() + 60_000);
        (r.code_salt, r.code_sha256) = (salt1, digest1);
        assert!(r.code_matches(&code) && r.code_matches(&format!(" {code}\n")));
        assert!(!r.code_matches("WRONGCODE1"));
        // A request from before salts still takes its code.
        (r.code_salt, r.code_sha256) = (String::new(), hex::encode(Sha256::digest(code.as_bytes())));
        assert!(r.code_matches(&code));
    }

    fn request(code: &str, required: u64, requester_may_approve: bool, deadline_ms: u64) -> ApprovalRecord {
        ApprovalRecord {
            run: "r1".into(),
            step: "deploy".into(),
            environment: "prod".into(),
            provider: "http".into(),
            target: "https://prod.example/deploy".into(),
            artifacts: vec![ApprovalArtifact { path: "site.tar.gz".into(), sha256: "ab".repeat(32), size: 10 }],
            requester: "alice".into(),
            approvers: vec!["alice".into(), "bob".into(), "carol".into()],
            required,
            requester_may_approve,
            code_sha256: salted("5a17", code),
            code_salt: "5a17".into(),
            created_ms: now_ms(),
            deadline_ms,
            state: ApprovalState::Pending,
            decisions: Vec::new(),
            decided_ms: None,
        }
    }

    #[test]
    fn every_rule_has_its_reason() {
        crate::on_each_backend(|store| {
            let code = new_code();
            assert_eq!(code.len(), 10);
            store.request_approval(&request(&code, 2, false, now_ms() + 60_000)).expect("request");
            let err = |user: &str, code: &str, approve: bool| {
                store.decide("r1", "deploy", user, code, approve, None).expect_err("refused").to_string()
            };
            assert!(err("mallory", &code, true).contains("`mallory` may not decide for environment `prod`"));
            assert_eq!(
                err("mallory", "WRONGCODE1", true),
                err("mallory", &code, true),
                "a code tells a non-approver nothing"
            );
            assert!(err("alice", &code, true).contains("`alice` asked for this deployment"));
            assert!(err("bob", "WRONGCODE1", true).contains("not the code of this request"));
            assert!(matches!(
                store.decide("r1", "nope", "bob", &code, true, None),
                Err(ApprovalError::NoRequest { .. })
            ));

            let r = store.decide("r1", "deploy", "bob", &code, true, Some("looks right")).expect("bob approves");
            assert_eq!((r.state, r.decisions.len()), (ApprovalState::Pending, 1), "two approvals are required");
            assert!(err("bob", &code, true).contains("`bob` already decided"));
            let r = store.decide("r1", "deploy", "carol", &code, true, None).expect("carol approves");
            assert_eq!(r.state, ApprovalState::Approved);
            assert!(r.decided_ms.is_some());
            // The code is stale now, for everyone.
            assert!(err("alice", &code, false).contains("already approved; its code no longer works"));
            // Asking again (a resumed run) keeps the decided request.
            let again = store.request_approval(&request("OTHERCODE1", 2, false, now_ms() + 60_000)).expect("request");
            assert_eq!(again.state, ApprovalState::Approved);
        });
    }

    #[test]
    fn a_denial_ends_it_and_a_deadline_denies() {
        crate::on_each_backend(|store| {
            store.request_approval(&request("CODE234567", 1, true, now_ms() + 60_000)).expect("request");
            let r = store.decide("r1", "deploy", "carol", "CODE234567", false, Some("not today")).expect("deny");
            assert_eq!(r.state, ApprovalState::Denied);
            assert_eq!(r.decisions[0].reason.as_deref(), Some("not today"));

            let mut late = request("CODE234567", 1, true, now_ms() - 1);
            late.run = "r2".into();
            store.request_approval(&late).expect("request");
            assert!(matches!(
                store.decide("r2", "deploy", "bob", "CODE234567", true, None),
                Err(ApprovalError::TimedOut)
            ));
            let r = store.expire_approval("r2", "deploy").expect("expire").expect("there");
            assert_eq!(r.state, ApprovalState::TimedOut);
        });
    }

    #[test]
    fn racing_approvers_cannot_both_take_the_last_approval() {
        crate::on_each_backend(|store| {
            for n in 0..20 {
                let mut r = request("CODE234567", 1, true, now_ms() + 60_000);
                r.run = format!("r{n}");
                r.approvers = (0..8).map(|i| format!("u{i}")).collect();
                store.request_approval(&r).expect("request");
                let winners = std::sync::atomic::AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for i in 0..8 {
                        let (run, winners) = (&r.run, &winners);
                        s.spawn(move || {
                            if store.decide(run, "deploy", &format!("u{i}"), "CODE234567", true, None).is_ok() {
                                winners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        });
                    }
                });
                assert_eq!(winners.into_inner(), 1);
                let r = store.approval(&r.run, "deploy").expect("read").expect("there");
                assert_eq!((r.state, r.decisions.len()), (ApprovalState::Approved, 1));
            }
        });
    }
}
