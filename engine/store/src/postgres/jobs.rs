//! Jobs for agents in PostgreSQL: the table `airlock_jobs`, one
//! statement for each thing an engine or an agent does to a job.
//!
//! The table's columns hold what changes over a job's life (its state,
//! the agent holding it, its fence, when the lease ends, the result);
//! `record` holds the rest as the store's JSON, written once when the
//! job is offered. A claim takes the oldest job that fits with `FOR
//! UPDATE SKIP LOCKED`, so servers answering many agents at once never
//! wait for each other and never hand out one job twice.

use super::{CHANNEL, PgDb, PgError};
use crate::Result;
use crate::jobs::{JobRecord, JobRefusal, JobState};

/// The columns a job is read back from, in order (a claim names them
/// with its table's alias, `j.`, since it joins).
const COLUMNS: &str = "record, state, agent, fence, expires_ms, result";

/// A job from a row of [`COLUMNS`].
fn job_of(row: &tokio_postgres::Row) -> std::result::Result<JobRecord, PgError> {
    let record: Vec<u8> = row.get(0);
    let mut job: JobRecord =
        serde_json::from_slice(&record).map_err(|e| PgError::new(format!("a job's record cannot be read: {e}")))?;
    let state: String = row.get(1);
    job.state = match state.as_str() {
        "waiting" => JobState::Waiting,
        "leased" => JobState::Leased,
        "done" => JobState::Done,
        other => return Err(PgError::new(format!("job `{}` is in an unknown state `{other}`", job.id))),
    };
    job.agent = row.get(2);
    job.fence = row.get::<_, i64>(3).unsigned_abs();
    job.expires_ms = row.get::<_, i64>(4).unsigned_abs();
    job.result = match row.get::<_, Option<Vec<u8>>>(5) {
        Some(bytes) => {
            Some(serde_json::from_slice(&bytes).map_err(|e| PgError::new(format!("job `{}`'s result: {e}", job.id)))?)
        }
        None => None,
    };
    Ok(job)
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Waiting => "waiting",
        JobState::Leased => "leased",
        JobState::Done => "done",
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether job `id` is there.
async fn exists(c: &deadpool_postgres::Object, id: &str) -> std::result::Result<bool, PgError> {
    let st = c.prepare_cached("SELECT 1 FROM airlock_jobs WHERE id = $1").await?;
    Ok(c.query_opt(&st, &[&id]).await?.is_some())
}

/// What a change to job `id` by the agent holding it came to: the job as
/// changed (the `row` of [`COLUMNS`] the change returned), or, when it
/// found no row to change, why.
async fn changed(
    c: &deadpool_postgres::Object,
    row: Option<tokio_postgres::Row>,
    id: &str,
) -> std::result::Result<std::result::Result<JobRecord, JobRefusal>, PgError> {
    Ok(match row {
        Some(row) => Ok(job_of(&row)?),
        None if exists(c, id).await? => Err(JobRefusal::NotYours(id.to_owned())),
        None => Err(JobRefusal::Unknown(id.to_owned())),
    })
}

impl PgDb {
    /// See [`Store::offer_job`](crate::Store::offer_job): `job` with a
    /// fence of at least `floor`, replacing one of the same id but never
    /// lowering its fence, and a `NOTIFY` to the agents' servers, in one
    /// statement.
    pub(crate) fn offer_job(&self, job: &JobRecord, floor: u64) -> Result<()> {
        let record = crate::encode(job);
        let payload = crate::leases::payload(&self.origin, &crate::Signal::Job);
        self.retrying(|| {
            let (job, record, payload) = (job.clone(), record.clone(), payload.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "WITH offered AS ( \
                           INSERT INTO airlock_jobs \
                             (id, run, pools, labels, state, agent, fence, expires_ms, created_ms, record, result) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                           ON CONFLICT (id) DO UPDATE SET run = excluded.run, pools = excluded.pools, \
                             labels = excluded.labels, state = excluded.state, agent = excluded.agent, \
                             fence = GREATEST(airlock_jobs.fence, excluded.fence), \
                             expires_ms = excluded.expires_ms, created_ms = excluded.created_ms, \
                             record = excluded.record, result = excluded.result \
                           RETURNING 1) \
                         SELECT pg_notify($12, $13) FROM offered",
                    )
                    .await?;
                let result = job.result.as_ref().map(crate::encode);
                c.execute(
                    &st,
                    &[
                        &job.id,
                        &job.run,
                        &job.pools,
                        &job.labels,
                        &state_name(job.state),
                        &job.agent,
                        &signed(job.fence.max(floor)),
                        &signed(job.expires_ms),
                        &signed(job.created_ms),
                        &record,
                        &result,
                        &CHANNEL,
                        &payload,
                    ],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// [`offer_job`](Self::offer_job), leased at once to `agent` until
    /// `expires` with a fence above any the job had: what a claim would
    /// have made of it, in the same statement. No `NOTIFY`: no other
    /// agent is to claim it. Answers the job as leased.
    pub(crate) fn offer_leased(&self, job: &JobRecord, floor: u64, agent: &str, expires: u64) -> Result<JobRecord> {
        let record = crate::encode(job);
        self.retrying(|| {
            let (job, record, agent) = (job.clone(), record.clone(), agent.to_owned());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "INSERT INTO airlock_jobs \
                           (id, run, pools, labels, state, agent, fence, expires_ms, created_ms, record, result) \
                         VALUES ($1, $2, $3, $4, 'leased', $5, $6, $7, $8, $9, NULL) \
                         ON CONFLICT (id) DO UPDATE SET run = excluded.run, pools = excluded.pools, \
                           labels = excluded.labels, state = 'leased', agent = excluded.agent, \
                           fence = GREATEST(airlock_jobs.fence + 1, excluded.fence), \
                           expires_ms = excluded.expires_ms, created_ms = excluded.created_ms, \
                           record = excluded.record, result = NULL \
                         RETURNING fence",
                    )
                    .await?;
                let base = job.fence.max(floor).saturating_add(1);
                let row = c
                    .query_one(
                        &st,
                        &[
                            &job.id,
                            &job.run,
                            &job.pools,
                            &job.labels,
                            &agent,
                            &signed(base),
                            &signed(expires),
                            &signed(job.created_ms),
                            &record,
                        ],
                    )
                    .await?;
                Ok(JobRecord {
                    state: JobState::Leased,
                    agent: Some(agent),
                    fence: row.get::<_, i64>(0).unsigned_abs(),
                    expires_ms: expires,
                    result: None,
                    ..job
                })
            })
        })
    }

    /// Lets a job leased with `fence` go back to waiting for any agent,
    /// and tells the agents' servers; a job changed since is left as it is.
    pub(crate) fn let_go_job(&self, id: &str, fence: u64) -> Result<()> {
        let payload = crate::leases::payload(&self.origin, &crate::Signal::Job);
        self.retrying(|| {
            let (id, payload) = (id.to_owned(), payload.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "WITH freed AS ( \
                           UPDATE airlock_jobs SET state = 'waiting', agent = NULL \
                           WHERE id = $1 AND state = 'leased' AND fence = $2 RETURNING 1) \
                         SELECT pg_notify($3, $4) FROM freed",
                    )
                    .await?;
                c.execute(&st, &[&id, &signed(fence), &CHANNEL, &payload]).await?;
                Ok(())
            })
        })
    }

    /// A job by id.
    pub(crate) fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        self.retrying(|| {
            let id = id.to_owned();
            self.with(move |c| async move {
                let st = c.prepare_cached(&format!("SELECT {COLUMNS} FROM airlock_jobs WHERE id = $1")).await?;
                c.query_opt(&st, &[&id]).await?.as_ref().map(job_of).transpose()
            })
        })
    }

    /// Every job, oldest first.
    pub(crate) fn jobs(&self) -> Result<Vec<JobRecord>> {
        self.retrying(|| {
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM airlock_jobs ORDER BY created_ms, id COLLATE \"C\""
                    ))
                    .await?;
                c.query(&st, &[]).await?.iter().map(job_of).collect()
            })
        })
    }

    /// Removes a job.
    pub(crate) fn remove_job(&self, id: &str) -> Result<()> {
        self.retrying(|| {
            let id = id.to_owned();
            self.with(move |c| async move {
                let st = c.prepare_cached("DELETE FROM airlock_jobs WHERE id = $1").await?;
                c.execute(&st, &[&id]).await?;
                Ok(())
            })
        })
    }

    /// Removes a job if it is done, answering it; else whether it is
    /// still there.
    pub(crate) fn take_done_job(&self, id: &str) -> Result<std::result::Result<JobRecord, bool>> {
        self.retrying(|| {
            let id = id.to_owned();
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(&format!(
                        "DELETE FROM airlock_jobs WHERE id = $1 AND state = 'done' RETURNING {COLUMNS}"
                    ))
                    .await?;
                if let Some(row) = c.query_opt(&st, &[&id]).await? {
                    return Ok(Ok(job_of(&row)?));
                }
                Ok(Err(exists(&c, &id).await?))
            })
        })
    }

    /// Deletes a done job's row in the background: the engine took its
    /// result from this process's memory. `deleted` is called once the
    /// row is gone. A row left by a failure here is a done job, which
    /// nothing claims or counts.
    pub(crate) fn forget_done_job(&self, id: &str, deleted: impl FnOnce() + Send + 'static) {
        let (pool, id) = (self.pool.clone(), id.to_owned());
        self.handle.spawn(async move {
            let outcome = super::bounded(async {
                let c = pool.get().await?;
                let st = c.prepare_cached("DELETE FROM airlock_jobs WHERE id = $1 AND state = 'done'").await?;
                c.execute(&st, &[&id]).await?;
                Ok(())
            })
            .await;
            match outcome {
                Ok(()) => deleted(),
                Err(e) => tracing::warn!("job {id}: its done row stays in the database: {e}"),
            }
        });
    }

    /// See [`Store::claim_job`](crate::Store::claim_job): one statement,
    /// skipping the jobs another server is claiming at this moment.
    pub(crate) fn claim_job(
        &self,
        agent: &str,
        pool: &str,
        labels: &[String],
        now: u64,
        ttl: u64,
    ) -> Result<Option<JobRecord>> {
        self.retrying(|| {
            let (agent, pool, labels) = (agent.to_owned(), pool.to_owned(), labels.to_vec());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "WITH next AS ( \
                           SELECT id FROM airlock_jobs \
                           WHERE state <> 'done' AND (state = 'waiting' OR expires_ms <= $4) \
                             AND $2 = ANY(pools) AND labels <@ $3 \
                           ORDER BY created_ms, id COLLATE \"C\" LIMIT 1 FOR UPDATE SKIP LOCKED) \
                         UPDATE airlock_jobs j SET state = 'leased', agent = $1, fence = j.fence + 1, \
                           expires_ms = $4 + $5 \
                         FROM next WHERE j.id = next.id \
                         RETURNING j.record, j.state, j.agent, j.fence, j.expires_ms, j.result",
                    )
                    .await?;
                let row = c.query_opt(&st, &[&agent, &pool, &labels, &signed(now), &signed(ttl)]).await?;
                row.as_ref().map(job_of).transpose()
            })
        })
    }

    /// See [`Store::renew_job`](crate::Store::renew_job).
    pub(crate) fn renew_job(
        &self,
        id: &str,
        agent: &str,
        fence: u64,
        expires: u64,
    ) -> Result<std::result::Result<JobRecord, JobRefusal>> {
        self.retrying(|| {
            let (id, agent) = (id.to_owned(), agent.to_owned());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(&format!(
                        "UPDATE airlock_jobs SET expires_ms = $4 \
                         WHERE id = $1 AND state = 'leased' AND agent = $2 AND fence = $3 RETURNING {COLUMNS}"
                    ))
                    .await?;
                let row = c.query_opt(&st, &[&id, &agent, &signed(fence), &signed(expires)]).await?;
                changed(&c, row, &id).await
            })
        })
    }

    /// See [`Store::complete_job`](crate::Store::complete_job): the change
    /// and the `NOTIFY` of the engine waiting for the job, in one
    /// statement.
    pub(crate) fn complete_job(
        &self,
        id: &str,
        agent: &str,
        fence: u64,
        result: Vec<u8>,
    ) -> Result<std::result::Result<JobRecord, JobRefusal>> {
        let payload = crate::leases::payload(&self.origin, &crate::Signal::Done(id.to_owned()));
        self.retrying(|| {
            let (id, agent, result, payload) = (id.to_owned(), agent.to_owned(), result.clone(), payload.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(&format!(
                        "WITH done AS ( \
                           UPDATE airlock_jobs SET state = 'done', result = $4 \
                           WHERE id = $1 AND state = 'leased' AND agent = $2 AND fence = $3 RETURNING {COLUMNS}) \
                         SELECT {COLUMNS}, pg_notify($5, $6) FROM done"
                    ))
                    .await?;
                let row = c.query_opt(&st, &[&id, &agent, &signed(fence), &result, &CHANNEL, &payload]).await?;
                changed(&c, row, &id).await
            })
        })
    }
}
