//! Jobs: sandboxed steps handed to agents (`airlock agent`), which run
//! them on other machines.
//!
//! The engine working on a run offers a job for a step attempt that
//! should run on an agent, with the labels an agent needs and what it
//! needs to run it (the job's spec, which the store does not read). An
//! agent claims the oldest job its labels cover, which leases it to that
//! agent for a while and raises the job's fence; the agent renews the
//! lease as it works, and completes the job with the fence it claimed
//! it with. An agent that stops renewing (killed, frozen, cut off) loses
//! the job when the lease expires: another agent claims it, with a
//! greater fence, and the first one's completion, should it come, is
//! refused. The engine waits for the job to be done, takes its result,
//! and removes it.
//!
//! On sled every change is a compare-and-swap of the job's record; on
//! PostgreSQL jobs have a table of their own (`airlock_jobs`), where a
//! claim is one statement that skips the rows another server is
//! claiming. Either way, servers sharing a database hand out each job
//! once.

use crate::kv::{Db, Tree};
use crate::{Result, StoreError, decode, encode, now_ms};
use serde::{Deserialize, Serialize};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for an agent.
    Waiting,
    /// An agent holds it (until `expires_ms`).
    Leased,
    /// An agent completed it; its result is there.
    Done,
}

/// A step attempt handed to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `RUN/STEP/ATTEMPT`.
    pub id: String,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// Labels an agent must all have to run it.
    pub labels: Vec<String>,
    /// The pools (of the policy's `agents`) whose agents may run it.
    pub pools: Vec<String>,
    /// What the agent needs to run it (the engine's; the store does not
    /// read it).
    pub spec: serde_json::Value,
    /// Where it is.
    pub state: JobState,
    /// The agent holding it, or that completed it.
    pub agent: Option<String>,
    /// Grows by one at each claim.
    pub fence: u64,
    /// When the lease of the agent holding it ends.
    pub expires_ms: u64,
    /// When it was offered.
    pub created_ms: u64,
    /// What the agent reported (the engine's; the store does not read it).
    pub result: Option<serde_json::Value>,
}

impl JobRecord {
    /// A job waiting for an agent.
    pub fn new(
        run: &str,
        step: &str,
        attempt: u32,
        labels: Vec<String>,
        pools: Vec<String>,
        spec: serde_json::Value,
    ) -> Self {
        Self {
            id: job_id(run, step, attempt),
            run: run.to_owned(),
            step: step.to_owned(),
            attempt,
            labels,
            pools,
            spec,
            state: JobState::Waiting,
            agent: None,
            fence: 0,
            expires_ms: 0,
            created_ms: now_ms(),
            result: None,
        }
    }

    /// Whether an agent of `pool` with `labels` may run it.
    pub fn fits(&self, pool: &str, labels: &[String]) -> bool {
        self.pools.iter().any(|p| p == pool) && self.labels.iter().all(|l| labels.contains(l))
    }
}

/// The id of a step attempt's job.
pub fn job_id(run: &str, step: &str, attempt: u32) -> String {
    format!("{run}/{step}/{attempt}")
}

/// What the engine waiting for a job finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Awaited {
    /// The job was done; its record, taken out of the store.
    Done(Box<JobRecord>),
    /// It is waiting for an agent or held by one.
    NotYet,
    /// There is no such job (its run took it back).
    Gone,
}

/// Why a completion or a renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRefusal {
    /// No such job (it was never offered, or its run took it back).
    #[error("no job `{0}`: its step ended or was never handed to an agent")]
    Unknown(String),
    /// The job's lease went to another agent, or was never this one's.
    #[error("job `{0}` is no longer this agent's: its lease expired and another agent claimed it")]
    NotYours(String),
}

/// An agent's claim waiting in this process for a job.
struct Waiter {
    id: u64,
    agent: String,
    pool: String,
    labels: Vec<String>,
    give: tokio::sync::oneshot::Sender<JobRecord>,
}

/// The claims waiting in this process, oldest first.
#[derive(Default)]
pub(crate) struct Waiting {
    waiters: std::sync::Mutex<Vec<Waiter>>,
    next: std::sync::atomic::AtomicU64,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The oldest claim still waiting that `job` fits, taken out.
    fn take_for(&self, job: &JobRecord) -> Option<Waiter> {
        let mut waiters = self.lock();
        waiters.retain(|w| !w.give.is_closed());
        let i = waiters.iter().position(|w| job.fits(&w.pool, &w.labels))?;
        Some(waiters.remove(i))
    }
}

/// A claim waiting in this process: a job offered here that it fits is
/// leased to it in the offer's own statement and handed over through
/// [`job`](Self::job), with no claim of its own. Dropped, it waits no
/// more.
pub struct WaitingClaim {
    recent: std::sync::Arc<crate::Recent>,
    id: u64,
    /// Until it answered: a oneshot answers once.
    taken: Option<tokio::sync::oneshot::Receiver<JobRecord>>,
}

impl WaitingClaim {
    /// The job leased to this claim, when one is; never, if none is
    /// offered here (or the store keeps jobs in sled, where a claim
    /// costs no round trip and nothing is handed over).
    pub async fn job(&mut self) -> JobRecord {
        if let Some(taken) = &mut self.taken {
            let answer = taken.await;
            self.taken = None;
            if let Ok(job) = answer {
                return job;
            }
            // Its offer failed after taking it: other claims go on.
        }
        std::future::pending().await
    }

    /// Stops waiting. If an offer took this claim meanwhile, its job is
    /// on its way (the offer sends it once its statement is done), and is
    /// answered: leased to this claim's agent, it must not be dropped.
    pub async fn finish(mut self) -> Option<JobRecord> {
        let id = self.id;
        let waited = {
            let mut waiters = self.recent.waiting.lock();
            let before = waiters.len();
            waiters.retain(|w| w.id != id);
            waiters.len() != before
        };
        if waited {
            return None;
        }
        self.taken.take()?.await.ok()
    }
}

impl Drop for WaitingClaim {
    fn drop(&mut self) {
        self.recent.waiting.lock().retain(|w| w.id != self.id);
    }
}

impl crate::Store {
    /// Registers a claim of `agent` (of `pool`, with `labels`) that found
    /// no job and waits for one: on PostgreSQL, a job this process offers
    /// that it fits goes to it straight away (see [`offer_job`](Self::offer_job)).
    /// The caller still listens for [`Signal::Job`](crate::Signal::Job),
    /// for jobs offered elsewhere and leases that run out.
    pub fn wait_for_job(&self, agent: &str, pool: &str, labels: &[String]) -> WaitingClaim {
        let (give, taken) = tokio::sync::oneshot::channel();
        let id = self.recent.waiting.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if matches!(&*self.db, Db::Postgres(_)) {
            self.recent.waiting.lock().push(Waiter {
                id,
                agent: agent.to_owned(),
                pool: pool.to_owned(),
                labels: labels.to_vec(),
                give,
            });
        }
        WaitingClaim { recent: self.recent.clone(), id, taken: Some(taken) }
    }

    /// Offers a job to the agents, replacing one of the same id (an
    /// attempt offered again after its engine stopped), and tells them.
    ///
    /// On PostgreSQL, when a claim waits in this process that the job
    /// fits, the offer leases the job to that claim's agent in the same
    /// statement and hands it over: the agent has it without a claim of
    /// its own, which would be another round trip to the database and a
    /// wake-up on the way. Should that claim have gone meanwhile (its
    /// agent hung up), the job is let go for any agent.
    pub fn offer_job(&self, job: &JobRecord) -> Result<()> {
        // Offered again, it keeps its fence: an agent that held it before
        // is refused, as after any claim. A job removed and offered anew
        // (its run taken over, the step restarted under the same id)
        // starts above every fence it had: the fences of a run's jobs
        // start from the run's own, which grew when it was taken over.
        let floor = self.fence(&job.run).unwrap_or(0) << 32;
        if let Db::Postgres(p) = &*self.db {
            self.recent.awaits(&job.id);
            if let Some(waiter) = self.recent.waiting.take_for(job) {
                let ttl = u64::try_from(self.lease_time().as_millis()).unwrap_or(u64::MAX);
                let leased = p.offer_leased(job, floor, &waiter.agent, now_ms().saturating_add(ttl))?;
                if let Err(leased) = waiter.give.send(leased) {
                    p.let_go_job(&leased.id, leased.fence)?;
                    self.signal_here(&crate::Signal::Job);
                }
                return Ok(());
            }
            p.offer_job(job, floor)?;
            self.signal_here(&crate::Signal::Job);
            return Ok(());
        }
        self.db.update(Tree::Jobs, job.id.as_bytes(), |old| {
            let fence = old.and_then(|o| serde_json::from_slice::<JobRecord>(o).ok()).map_or(0, |o| o.fence);
            Some(encode(&JobRecord { fence: fence.max(job.fence).max(floor), ..job.clone() }))
        })?;
        self.signal(&crate::Signal::Job)
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        if let Db::Postgres(p) = &*self.db {
            if self.recent.was_taken(id) {
                return Ok(None);
            }
            return p.job(id);
        }
        self.db.get(Tree::Jobs, id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// Every job: waiting, leased and done.
    pub fn jobs(&self) -> Result<Vec<JobRecord>> {
        if let Db::Postgres(p) = &*self.db {
            let mut jobs = p.jobs()?;
            jobs.retain(|j| !self.recent.was_taken(&j.id));
            return Ok(jobs);
        }
        self.db.all(Tree::Jobs)?.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Removes a job: its engine took the result, or gave it up.
    pub fn remove_job(&self, id: &str) -> Result<()> {
        self.recent.forget(id);
        if let Db::Postgres(p) = &*self.db {
            return p.remove_job(id);
        }
        self.db.remove(Tree::Jobs, id.as_bytes())
    }

    /// Takes a done job's record out of the store, in one step: what the
    /// engine waiting for it does once its agent completed it.
    ///
    /// On PostgreSQL, a job completed through this same process is
    /// handed over as it was completed, without asking the database
    /// again, and its row deleted in the background: until then it is a
    /// done job, which no agent can claim, and whose completion came
    /// before the engine records anything of its result. To this process
    /// it is gone at once: taken again, it is [`Awaited::Gone`], and
    /// [`job`](Self::job) and [`jobs`](Self::jobs) no longer show it.
    pub fn take_done_job(&self, id: &str) -> Result<Awaited> {
        if let Db::Postgres(p) = &*self.db {
            if let Some(job) = self.recent.take(id) {
                let recent = self.recent.clone();
                let owned = id.to_owned();
                p.forget_done_job(id, move || recent.deleted(&owned));
                return Ok(Awaited::Done(Box::new(job)));
            }
            if self.recent.was_taken(id) {
                return Ok(Awaited::Gone);
            }
            let taken = p.take_done_job(id)?;
            if !matches!(taken, Err(true)) {
                // Completed through another server, or gone: no longer
                // waited for here either.
                self.recent.forget(id);
            }
            return Ok(match taken {
                Ok(job) => Awaited::Done(Box::new(job)),
                Err(true) => Awaited::NotYet,
                Err(false) => Awaited::Gone,
            });
        }
        loop {
            let Some(old) = self.db.get(Tree::Jobs, id.as_bytes())? else { return Ok(Awaited::Gone) };
            let job: JobRecord = decode(id.as_bytes(), &old)?;
            if job.state != JobState::Done {
                return Ok(Awaited::NotYet);
            }
            if self.db.cas(Tree::Jobs, id.as_bytes(), Some(&old), None)?.is_ok() {
                return Ok(Awaited::Done(Box::new(job)));
            }
        }
    }

    /// Claims, for `agent` of `pool` with `labels`, the job waiting
    /// longest among those it fits that are waiting or whose lease
    /// expired: leased to it for `ttl_ms`, with a new fence.
    pub fn claim_job(&self, agent: &str, pool: &str, labels: &[String], ttl_ms: u64) -> Result<Option<JobRecord>> {
        if let Db::Postgres(p) = &*self.db {
            return p.claim_job(agent, pool, labels, now_ms(), ttl_ms);
        }
        loop {
            let now = now_ms();
            let mut oldest: Option<(Vec<u8>, Vec<u8>, JobRecord)> = None;
            for (key, value) in self.db.all(Tree::Jobs)? {
                let job: JobRecord = decode(&key, &value)?;
                let free = job.state == JobState::Waiting || (job.state == JobState::Leased && job.expires_ms <= now);
                if free
                    && job.fits(pool, labels)
                    && oldest.as_ref().is_none_or(|(_, _, o)| job.created_ms < o.created_ms)
                {
                    oldest = Some((key, value, job));
                }
            }
            let Some((key, old, job)) = oldest else { return Ok(None) };
            let claimed = JobRecord {
                state: JobState::Leased,
                agent: Some(agent.to_owned()),
                fence: job.fence + 1,
                expires_ms: now + ttl_ms,
                ..job
            };
            if self.db.cas(Tree::Jobs, &key, Some(&old), Some(encode(&claimed)))?.is_ok() {
                return Ok(Some(claimed));
            }
        }
    }

    /// Changes a job `agent` holds with `fence`, if it still does.
    fn change_job(
        &self,
        id: &str,
        agent: &str,
        fence: u64,
        change: impl Fn(&mut JobRecord),
    ) -> Result<std::result::Result<JobRecord, JobRefusal>> {
        loop {
            let Some(old) = self.db.get(Tree::Jobs, id.as_bytes())? else {
                return Ok(Err(JobRefusal::Unknown(id.to_owned())));
            };
            let mut job: JobRecord = decode(id.as_bytes(), &old)?;
            // An expired lease nobody claimed since is still this agent's:
            // nobody else has acted on the job.
            if job.state != JobState::Leased || job.fence != fence || job.agent.as_deref() != Some(agent) {
                return Ok(Err(JobRefusal::NotYours(id.to_owned())));
            }
            change(&mut job);
            if self.db.cas(Tree::Jobs, id.as_bytes(), Some(&old), Some(encode(&job)))?.is_ok() {
                return Ok(Ok(job));
            }
        }
    }

    /// Makes `agent`'s lease on a job last `ttl_ms` from now.
    pub fn renew_job(
        &self,
        id: &str,
        agent: &str,
        fence: u64,
        ttl_ms: u64,
    ) -> Result<std::result::Result<JobRecord, JobRefusal>> {
        if let Db::Postgres(p) = &*self.db {
            return p.renew_job(id, agent, fence, now_ms() + ttl_ms);
        }
        self.change_job(id, agent, fence, |job| job.expires_ms = now_ms() + ttl_ms)
    }

    /// Records what `agent` reports of a job it holds with `fence`: the
    /// job is done. Refused when the job is no longer its.
    ///
    /// The answer does not wait for the disk. A completion lost with the
    /// database (a crash of PostgreSQL or of the machine) leaves the job
    /// leased to the agent until the lease ends, and then another agent
    /// runs the step again: the step was not recorded as done either
    /// (the engine's record of it comes after this one, in the same
    /// log), and nothing the engine does outside the store happens
    /// before it flushes what it wrote.
    pub fn complete_job(
        &self,
        id: &str,
        agent: &str,
        fence: u64,
        result: serde_json::Value,
    ) -> Result<std::result::Result<JobRecord, JobRefusal>> {
        let done = match &*self.db {
            Db::Postgres(p) => {
                let done = p.complete_job(id, agent, fence, encode(&result))?;
                if let Ok(job) = &done {
                    // If the engine waiting for it is in this process, it
                    // takes the job from here.
                    self.recent.completed(job);
                    self.signal_here(&crate::Signal::Done(id.to_owned()));
                }
                done
            }
            Db::Sled(_) => {
                let done = self.change_job(id, agent, fence, |job| {
                    job.state = JobState::Done;
                    job.result = Some(result.clone());
                })?;
                if done.is_ok() {
                    self.signal(&crate::Signal::Done(id.to_owned()))?;
                }
                done
            }
        };
        // The same completion again (the agent sent it once more, after
        // its answer was lost) is taken: the job is done, and by it.
        match done {
            Err(JobRefusal::NotYours(_)) => match self.job(id)? {
                Some(job)
                    if job.state == JobState::Done && job.agent.as_deref() == Some(agent) && job.fence == fence =>
                {
                    Ok(Ok(job))
                }
                _ => Ok(done),
            },
            done => Ok(done),
        }
    }
}

impl From<JobRefusal> for StoreError {
    fn from(e: JobRefusal) -> Self {
        StoreError::Database(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn offer(store: &Store, step: &str, labels: &[&str]) -> String {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        let job = JobRecord::new("r1", step, 1, labels, vec!["pool".into()], serde_json::json!({"step": step}));
        store.offer_job(&job).expect("offer");
        job.id
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|l| (*l).to_owned()).collect()
    }

    /// Jobs go oldest first to agents whose pool and labels fit, each to
    /// one agent; a completion with the claim's fence is taken.
    #[test]
    fn jobs_go_once_to_agents_that_fit() {
        crate::on_each_backend(|store| {
            let big = offer(store, "big", &["linux", "big"]);
            std::thread::sleep(std::time::Duration::from_millis(2));
            let small = offer(store, "small", &["linux"]);
            assert_eq!(store.claim_job("a1", "other-pool", &labels(&["linux", "big"]), 60_000).expect("claim"), None);
            let first = store.claim_job("a1", "pool", &labels(&["linux"]), 60_000).expect("claim").expect("a job");
            assert_eq!((first.id.as_str(), first.fence), (small.as_str(), 1));
            assert_eq!(store.claim_job("a2", "pool", &labels(&["linux"]), 60_000).expect("claim"), None);
            let second =
                store.claim_job("a2", "pool", &labels(&["big", "linux"]), 60_000).expect("claim").expect("job");
            assert_eq!(second.id, big);
            let done = store.complete_job(&small, "a1", 1, serde_json::json!({"ok": true})).expect("complete");
            let done = done.expect("taken");
            assert_eq!((done.state, done.result), (JobState::Done, Some(serde_json::json!({"ok": true}))));
            assert_eq!(store.claim_job("a3", "pool", &labels(&["linux", "big"]), 60_000).expect("claim"), None);
            store.remove_job(&small).expect("remove");
            assert_eq!(store.jobs().expect("jobs").len(), 1);
        });
    }

    /// On PostgreSQL a claim waiting in the process that offers a job it
    /// fits has the job leased to it by the offer itself, and only it:
    /// nobody else claims the job, and its agent completes it with the
    /// fence it was handed. A claim that stopped waiting, or that the job
    /// does not fit, gets nothing, and the job waits for any agent. A
    /// claim that stops waiting just as a job is handed to it still gets
    /// it. On sled nothing is handed over: claims claim as before.
    #[test]
    fn a_claim_waiting_here_is_handed_the_job_by_its_offer() {
        crate::on_each_backend(|store| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let soon = |waiting: &mut WaitingClaim| {
                rt.block_on(async {
                    tokio::time::timeout(std::time::Duration::from_millis(200), waiting.job()).await.ok()
                })
            };
            drop(store.wait_for_job("gone", "pool", &labels(&["linux"])));
            let mut elsewhere = store.wait_for_job("a0", "other-pool", &labels(&["linux"]));
            let mut waiting = store.wait_for_job("a1", "pool", &labels(&["linux"]));
            let first = offer(store, "first", &["linux"]);
            match soon(&mut waiting) {
                Some(job) => {
                    assert!(store.is_shared(), "handed over on sled");
                    assert_eq!(
                        (job.id.as_str(), job.state, job.agent.as_deref()),
                        (first.as_str(), JobState::Leased, Some("a1"))
                    );
                    let row = store.job(&first).expect("job").expect("there");
                    assert_eq!((row.state, row.agent.as_deref(), row.fence), (JobState::Leased, Some("a1"), job.fence));
                    assert!(job.fence >= 1 && job.expires_ms > now_ms());
                    assert_eq!(store.claim_job("a2", "pool", &labels(&["linux"]), 60_000).expect("claim"), None);
                    let done = store.complete_job(&first, "a1", job.fence, serde_json::json!("ok")).expect("complete");
                    assert!(done.is_ok(), "{done:?}");
                }
                None => {
                    assert!(!store.is_shared(), "not handed over on PostgreSQL");
                    let job = store.claim_job("a1", "pool", &labels(&["linux"]), 60_000).expect("claim").expect("job");
                    assert_eq!(job.id, first);
                }
            }
            assert_eq!(rt.block_on(waiting.finish()), None);
            // Nobody waits that it fits: it waits for any agent.
            let second = offer(store, "second", &["linux"]);
            assert_eq!(soon(&mut elsewhere), None, "handed to a claim it does not fit");
            let job = store.claim_job("a2", "pool", &labels(&["linux"]), 60_000).expect("claim").expect("job");
            assert_eq!(job.id, second);
            // Handed over just as the claim stops waiting: still its.
            let waiting = store.wait_for_job("a3", "pool", &labels(&["linux"]));
            let third = offer(store, "third", &["linux"]);
            let finished = rt.block_on(waiting.finish());
            assert_eq!(finished.map(|j| j.id), store.is_shared().then(|| third.clone()));
            drop(elsewhere);
            // A job handed to a claim that went meanwhile is let go, for
            // any agent, unless it changed since.
            if let Db::Postgres(p) = &*store.db {
                let job =
                    JobRecord::new("r1", "fourth", 1, labels(&["linux"]), vec!["pool".into()], serde_json::json!({}));
                let leased = p.offer_leased(&job, 0, "a4", now_ms() + 60_000).expect("offer");
                p.let_go_job(&job.id, leased.fence + 1).expect("let go");
                assert_eq!(store.job(&job.id).expect("job").expect("there").agent.as_deref(), Some("a4"));
                p.let_go_job(&job.id, leased.fence).expect("let go");
                let again = store.claim_job("a5", "pool", &labels(&["linux"]), 60_000).expect("claim").expect("job");
                assert_eq!((again.id, again.fence), (job.id, leased.fence + 1));
            }
        });
    }

    /// A job completed through the process that waits for it is taken
    /// as completed (on PostgreSQL, from memory, its row deleted after);
    /// one completed through another process is read from the store.
    #[test]
    fn a_done_job_is_taken_wherever_it_was_completed() {
        crate::on_each_backend(|store| {
            let elsewhere = store.clone_unidentified();
            for (i, through) in [store, &elsewhere].into_iter().enumerate() {
                let id = offer(store, &format!("s{i}"), &[]);
                assert!(matches!(store.take_done_job(&id).expect("take"), Awaited::NotYet));
                let job = through.claim_job("a1", "pool", &[], 60_000).expect("claim").expect("job");
                let result = serde_json::json!({ "through": i });
                through.complete_job(&id, "a1", job.fence, result.clone()).expect("complete").expect("taken");
                // A look before the completion did not stop the handover.
                let here = store.recent.done.lock().expect("done").contains_key(&id);
                assert_eq!(here, store.is_shared() && i == 0, "job {id} handed over in memory");
                match store.take_done_job(&id).expect("take") {
                    Awaited::Done(job) => assert_eq!(job.result, Some(result)),
                    _ => panic!("job {id} was completed"),
                }
                // The row deleted in the background goes soon.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while store.job(&id).expect("job").is_some() {
                    assert!(std::time::Instant::now() < deadline, "job {id} stays in the store");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                assert!(matches!(store.take_done_job(&id).expect("take again"), Awaited::Gone));
            }
        });
    }

    /// An agent whose lease expired loses the job to the next claim; its
    /// renewal and its completion are refused from then on, and the new
    /// holder's are taken.
    #[test]
    fn a_late_agent_is_refused() {
        crate::on_each_backend(|store| {
            let id = offer(store, "s", &[]);
            let first = store.claim_job("a1", "pool", &[], 1).expect("claim").expect("job");
            std::thread::sleep(std::time::Duration::from_millis(5));
            let second = store.claim_job("a2", "pool", &[], 60_000).expect("claim").expect("the expired job");
            assert_eq!((second.fence, second.agent.as_deref()), (first.fence + 1, Some("a2")));
            let late = store.complete_job(&id, "a1", first.fence, serde_json::json!("late")).expect("complete");
            assert_eq!(late, Err(JobRefusal::NotYours(id.clone())));
            assert_eq!(
                store.renew_job(&id, "a1", first.fence, 60_000).expect("renew"),
                Err(JobRefusal::NotYours(id.clone()))
            );
            assert!(store.renew_job(&id, "a2", second.fence, 60_000).expect("renew").is_ok());
            assert!(store.complete_job(&id, "a2", second.fence, serde_json::json!("ok")).expect("complete").is_ok());
            assert_eq!(store.job(&id).expect("job").expect("there").result, Some(serde_json::json!("ok")));
            assert_eq!(
                store.complete_job("r1/nothing/1", "a2", 1, serde_json::json!("x")).expect("complete"),
                Err(JobRefusal::Unknown("r1/nothing/1".into()))
            );
        });
    }

    /// The engine takes a done job's record out in one step; until then it
    /// finds the job not yet done, and after, gone. A completion sent
    /// again by the agent that made it is taken; another agent's is not.
    #[test]
    fn a_done_job_is_taken_once_and_a_repeated_completion_is_taken() {
        crate::on_each_backend(|store| {
            let id = offer(store, "s", &[]);
            assert_eq!(store.take_done_job(&id).expect("take"), Awaited::NotYet);
            let claimed = store.claim_job("a1", "pool", &[], 60_000).expect("claim").expect("job");
            assert_eq!(store.take_done_job(&id).expect("take"), Awaited::NotYet);
            let result = serde_json::json!({"ok": 1});
            assert!(store.complete_job(&id, "a1", claimed.fence, result.clone()).expect("complete").is_ok());
            let again = store.complete_job(&id, "a1", claimed.fence, result.clone()).expect("complete again");
            assert_eq!(again.map(|j| j.state), Ok(JobState::Done));
            let other = store.complete_job(&id, "a2", claimed.fence, result.clone()).expect("another agent");
            assert_eq!(other, Err(JobRefusal::NotYours(id.clone())));
            match store.take_done_job(&id).expect("take") {
                Awaited::Done(job) => {
                    assert_eq!((job.state, job.result, job.fence), (JobState::Done, Some(result), claimed.fence))
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(store.take_done_job(&id).expect("take"), Awaited::Gone);
            assert_eq!(store.job(&id).expect("job"), None);
        });
    }

    /// On PostgreSQL a job completed through this process is handed over
    /// from memory and its row deleted behind. Taken again before that
    /// delete was done, it was handed over a second time (a CI run met
    /// it); now it is gone to this process at once. Another session
    /// holds the row here, so the delete behind has to wait.
    #[test]
    fn a_job_taken_from_memory_is_gone_before_its_row_is() {
        let server = crate::testing::TestPostgres::start().expect("a PostgreSQL server for the test");
        let url = server.database().expect("database");
        let store = Store::open_postgres(&url).expect("open");
        let id = offer(&store, "s", &[]);
        let claimed = store.claim_job("a1", "pool", &[], 60_000).expect("claim").expect("job");
        assert!(store.complete_job(&id, "a1", claimed.fence, serde_json::json!(1)).expect("complete").is_ok());

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let holder = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            client.batch_execute("BEGIN").await.expect("begin");
            let held = client
                .query("SELECT 1 FROM airlock_jobs WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .expect("lock the row");
            assert_eq!(held.len(), 1);
            client
        });

        assert!(matches!(store.take_done_job(&id).expect("take"), Awaited::Done(_)));
        assert_eq!(store.take_done_job(&id).expect("take again"), Awaited::Gone);
        assert_eq!(store.job(&id).expect("job"), None);
        assert!(store.jobs().expect("jobs").iter().all(|j| j.id != id));
        let elsewhere = store.clone_unidentified();
        assert!(elsewhere.job(&id).expect("job").is_some(), "the row is still held, so still there");

        rt.block_on(holder.batch_execute("ROLLBACK")).expect("let the row go");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while elsewhere.job(&id).expect("job").is_some() {
            assert!(std::time::Instant::now() < deadline, "the row of a taken job was never deleted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(store.take_done_job(&id).expect("take after the delete"), Awaited::Gone);
    }

    /// Agents claiming from four threads at once get every job exactly
    /// once.
    #[test]
    fn claims_at_once_hand_out_each_job_once() {
        crate::on_each_backend(|store| {
            let ids: Vec<String> = (0..40).map(|i| offer(store, &format!("s{i}"), &[])).collect();
            let claimed: Vec<String> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..4)
                    .map(|w| {
                        s.spawn(move || {
                            let mut got = Vec::new();
                            while let Some(job) = store.claim_job(&format!("a{w}"), "pool", &[], 60_000).expect("claim")
                            {
                                got.push(job.id);
                            }
                            got
                        })
                    })
                    .collect();
                workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
            });
            let mut sorted = claimed.clone();
            sorted.sort();
            let mut expected = ids.clone();
            expected.sort();
            assert_eq!(sorted, expected, "each job once");
        });
    }

    /// A job removed and offered anew under the same id after its run was
    /// taken back (the step restarted) gets fences above all it had: the
    /// agent that held the old job is refused, even when the same agent
    /// claims the new one.
    #[test]
    fn a_job_offered_anew_after_a_takeover_refuses_the_old_claim() {
        crate::on_each_backend(|store| {
            store.identify("engine", std::time::Duration::from_secs(60));
            let submission = crate::Submission::by("ci");
            let run = store.submit_run("p", Default::default(), &["s".into()], submission).expect("submit").0.id;
            store.claim_run().expect("claim").expect("the run");
            let job = JobRecord::new(&run, "s", 1, Vec::new(), vec!["pool".into()], serde_json::json!({}));
            store.offer_job(&job).expect("offer");
            let old = store.claim_job("a1", "pool", &[], 60_000).expect("claim").expect("job");
            store.remove_job(&job.id).expect("remove");
            store.reclaim_runs().expect("taken back");
            store.offer_job(&job).expect("offer anew");
            let new = store.claim_job("a1", "pool", &[], 60_000).expect("claim").expect("job");
            assert!(new.fence > old.fence, "{} after {}", new.fence, old.fence);
            let late = store.complete_job(&job.id, "a1", old.fence, serde_json::json!("late")).expect("complete");
            assert_eq!(late, Err(JobRefusal::NotYours(job.id.clone())));
            assert!(store.complete_job(&job.id, "a1", new.fence, serde_json::json!("ok")).expect("complete").is_ok());
        });
    }
}
