//! The store's trees in PostgreSQL: one table, `airlock_kv (tree, key,
//! value)`, keyed by tree and key, both compared as bytes, so a tree
//! reads in the order sled keeps it; ids from a sequence, taken a block
//! at a time; the schema's version in `airlock_schema`.
//!
//! The store is synchronous (sled is), and it is called from the
//! engine's threads and from async tasks alike. The client here is
//! tokio-postgres on a runtime of its own: each operation is a task on
//! that runtime, and the caller waits for its answer on a channel, which
//! is safe from any thread, an async task's included. A connection pool
//! (deadpool) holds up to [`MAX_CONNECTIONS`]; a connection PostgreSQL
//! closed (a restart) is dropped when it comes back and replaced.
//!
//! Transactions run `SERIALIZABLE`, reading the rows they will change
//! `FOR UPDATE`; PostgreSQL refuses one of two that would interleave
//! badly, and it is run again, as sled runs a conflicting transaction
//! again. Every statement and every wait for a connection is bounded in
//! time, so a database that stops answering is an error, not a hang; a
//! database out of reach (restarted, cut off) is waited for, for a while,
//! and each operation is then tried again.

use crate::kv::{Pair, Tree, TxError, TxResult, Txn};
use crate::{Result, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

mod jobs;

/// Connections one store holds open at most.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest wait for a connection, or for one statement's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Times a transaction PostgreSQL refused for a conflict is run again.
const ATTEMPTS: u32 = 200;
/// How long an operation waits for a database that went away to come
/// back before it fails.
const OUTAGE: Duration = Duration::from_secs(120);

/// Says, once in a while, that the database is out of reach.
fn tracing_lost(e: &PgError) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!("the database is out of reach ({e}); trying again");
    }
}

/// The schema this airlock writes. A database with a newer one is
/// refused; an older one is migrated at open.
pub const SCHEMA_VERSION: i32 = 4;

/// The migrations, in order: the one at index `i` takes the schema from
/// version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    "CREATE TABLE airlock_kv (
         tree text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (tree, key)
     );
     CREATE SEQUENCE airlock_ids;",
    // Ids are taken from the sequence a block at a time: one round trip
    // per `ID_BLOCK` ids rather than one per state transition.
    "ALTER SEQUENCE airlock_ids INCREMENT BY 1024;",
    // Leases on runs (see `crate::leases`): free while `holder` is null
    // or `expires_at` has passed; `fence` grows by one at each claim.
    "CREATE TABLE airlock_leases (
         run text PRIMARY KEY,
         holder text,
         fence bigint NOT NULL DEFAULT 0,
         expires_at timestamptz NOT NULL DEFAULT '-infinity',
         queued_at timestamptz NOT NULL DEFAULT clock_timestamp()
     );
     CREATE INDEX airlock_leases_queue ON airlock_leases (queued_at);",
    // Jobs for agents (see `crate::jobs`) in a table of their own, so a
    // claim is one indexed statement (`FOR UPDATE SKIP LOCKED`) rather
    // than a read of every job. The columns an agent's claim, renewal and
    // completion change are the job's state; `record` keeps the rest of
    // it as the store's JSON. Jobs kept as records before move over.
    "CREATE TABLE airlock_jobs (
         id text PRIMARY KEY,
         run text NOT NULL,
         pools text[] NOT NULL,
         labels text[] NOT NULL,
         state text NOT NULL,
         agent text,
         fence bigint NOT NULL,
         expires_ms bigint NOT NULL,
         created_ms bigint NOT NULL,
         record bytea NOT NULL,
         result bytea
     );
     CREATE INDEX airlock_jobs_queue ON airlock_jobs (created_ms) WHERE state <> 'done';
     INSERT INTO airlock_jobs
         SELECT convert_from(key, 'UTF8'), j->>'run',
                ARRAY(SELECT jsonb_array_elements_text(j->'pools')),
                ARRAY(SELECT jsonb_array_elements_text(j->'labels')),
                j->>'state', j->>'agent', (j->>'fence')::bigint, (j->>'expires_ms')::bigint,
                (j->>'created_ms')::bigint, value,
                CASE WHEN jsonb_typeof(j->'result') IS NULL OR jsonb_typeof(j->'result') = 'null' THEN NULL
                     ELSE convert_to((j->'result')::text, 'UTF8') END
         FROM (SELECT key, value, convert_from(value, 'UTF8')::jsonb AS j FROM airlock_kv WHERE tree = 'jobs') old;
     DELETE FROM airlock_kv WHERE tree = 'jobs';",
];

/// The `NOTIFY` channel of engines sharing a database.
const CHANNEL: &str = "airlock";

/// `now() + ms milliseconds`, with `ms` the parameter `n`, in SQL.
macro_rules! expires {
    ($n:literal) => {
        concat!("now() + $", $n, "::float8 * interval '1 millisecond'")
    };
}

/// Ids a store takes from the sequence at once (its increment).
const ID_BLOCK: u64 = 1024;

/// A failure of PostgreSQL or of the way to it.
#[derive(Debug)]
pub(crate) struct PgError {
    message: String,
    /// A conflict with another transaction: running it again may succeed.
    retry: bool,
    /// The connection was lost, or none could be made (a restart of
    /// PostgreSQL, a network cut): the same again, a moment later, may
    /// succeed.
    lost: bool,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl PgError {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), retry: false, lost: false }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        let retry = matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED);
        let (message, lost) = match e.as_db_error() {
            // PostgreSQL shutting down ends its sessions with an error.
            Some(db) => (
                format!("{}: {}", db.severity(), db.message()),
                *db.code() == SqlState::ADMIN_SHUTDOWN || *db.code() == SqlState::CANNOT_CONNECT_NOW,
            ),
            None => (e.to_string(), true),
        };
        Self { message, retry, lost }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self { lost: true, ..Self::new(format!("no connection: {e}")) }
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Database(e.message)
    }
}

/// `url` without a password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // The `key=value` form: its password goes.
        return url
            .split_whitespace()
            .map(|kv| if kv.starts_with("password=") { "password=…" } else { kv })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The first key after every key that starts with `prefix`, if there
/// is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The store's trees in one PostgreSQL database.
pub(crate) struct PgDb {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    /// The ids left of the block taken last: (next, end).
    ids: std::sync::Mutex<(u64, u64)>,
    /// What this process's `NOTIFY`s are signed with: their echo is
    /// dropped, since the store delivers them here at once.
    pub(crate) origin: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Dropping a runtime inside an async task would panic; its
        // threads are told to stop instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn bounded<T>(what: impl Future<Output = std::result::Result<T, PgError>>) -> std::result::Result<T, PgError> {
    tokio::time::timeout(TIMEOUT, what)
        .await
        .unwrap_or_else(|_| Err(PgError::new(format!("no answer within {} s", TIMEOUT.as_secs()))))
}

impl PgDb {
    /// Connects to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`, or any
    /// form libpq takes), applies the migrations this airlock knows and
    /// refuses a database whose schema is newer.
    pub(crate) fn open(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("the database URL `{}` is not valid: {e}", redact(url))))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("airlock-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the database client: {e}")))?;
        // Commits do not wait for the disk, as sled's writes do not:
        // [`flush`](Self::flush) waits for every commit before it, and
        // callers flush before anyone is told or anything happens (see
        // the crate's documentation). PostgreSQL never applies part of a
        // transaction; a crash of the database itself may lose the last
        // few hundred milliseconds of what was not flushed, as a crash
        // of the machine may with sled.
        let mut pooled = config.clone();
        let options = pooled.get_options().map(|o| format!("{o} -c synchronous_commit=off"));
        pooled.options(options.as_deref().unwrap_or("-c synchronous_commit=off"));
        let manager = Manager::from_config(pooled, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("cannot make a connection pool: {e}")))?;
        let db = Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool,
            config,
            ids: std::sync::Mutex::new((0, 0)),
            origin: crate::leases::origin(),
        };
        db.migrate().map_err(|e| StoreError::Database(format!("{} at {}", e.message, redact(url))))?;
        Ok(db)
    }

    /// Runs `what` on the client's runtime and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        what: impl Future<Output = std::result::Result<T, PgError>> + Send + 'static,
    ) -> std::result::Result<T, PgError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(bounded(what).await);
        });
        rx.recv().unwrap_or_else(|_| Err(PgError::new("the database client stopped")))
    }

    /// Runs one statement on a pooled connection.
    fn with<T: Send + 'static, F>(
        &self,
        what: impl FnOnce(Object) -> F + Send + 'static,
    ) -> std::result::Result<T, PgError>
    where
        F: Future<Output = std::result::Result<T, PgError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.call(async move { what(pool.get().await?).await })
    }

    /// Runs `op` again while the database is out of reach, for up to
    /// [`OUTAGE`]: a restart of PostgreSQL holds the engine up rather
    /// than failing its runs. A statement whose answer was lost with the
    /// connection may have been applied: every write here is an upsert,
    /// a delete or a compare-and-swap, which a caller checks again.
    fn retrying<T>(&self, op: impl Fn() -> std::result::Result<T, PgError>) -> Result<T> {
        let started = std::time::Instant::now();
        loop {
            match op() {
                Err(e) if e.lost && started.elapsed() < OUTAGE => {
                    tracing_lost(&e);
                    std::thread::sleep(Duration::from_millis(250));
                }
                done => return Ok(done?),
            }
        }
    }

    fn migrate(&self) -> std::result::Result<(), PgError> {
        let pool = self.pool.clone();
        self.call(async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // One server migrates at a time; the others wait, then find
            // the work done.
            tx.execute("SELECT pg_advisory_xact_lock(4242424242)", &[]).await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS airlock_schema (version integer NOT NULL)").await?;
            let found: Option<i32> = tx.query_opt("SELECT version FROM airlock_schema", &[]).await?.map(|r| r.get(0));
            let from = found.unwrap_or(0);
            if from > SCHEMA_VERSION {
                return Err(PgError::new(format!(
                    "the database holds airlock's schema version {from}, newer than this airlock's \
                     ({SCHEMA_VERSION}); run a newer airlock against it"
                )));
            }
            for migration in &MIGRATIONS[from as usize..] {
                tx.batch_execute(migration).await?;
            }
            if found.is_none() {
                tx.execute("INSERT INTO airlock_schema (version) VALUES ($1)", &[&SCHEMA_VERSION]).await?;
            } else if from < SCHEMA_VERSION {
                tx.execute("UPDATE airlock_schema SET version = $1", &[&SCHEMA_VERSION]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub(crate) fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.retrying(|| {
            let key = key.to_vec();
            self.with(move |c| async move {
                let st = c.prepare_cached("SELECT value FROM airlock_kv WHERE tree = $1 AND key = $2").await?;
                Ok(c.query_opt(&st, &[&tree.name(), &key]).await?.map(|r| r.get(0)))
            })
        })
    }

    pub(crate) fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.retrying(|| {
            let (key, value) = (key.to_vec(), value.clone());
            self.with(move |c| async move {
                let st = c.prepare_cached(UPSERT).await?;
                c.execute(&st, &[&tree.name(), &key, &value]).await?;
                Ok(())
            })
        })
    }

    pub(crate) fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.retrying(|| {
            let key = key.to_vec();
            self.with(move |c| async move {
                let st = c.prepare_cached("DELETE FROM airlock_kv WHERE tree = $1 AND key = $2").await?;
                c.execute(&st, &[&tree.name(), &key]).await?;
                Ok(())
            })
        })
    }

    pub(crate) fn cas(
        &self,
        tree: Tree,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        let swapped = self.retrying(|| {
            let (owned, old, new) = (key.to_vec(), old.map(<[u8]>::to_vec), new.clone());
            self.with(move |c| async move {
                let (name, key) = (tree.name(), owned);
                let changed = match (&old, &new) {
                    (None, Some(new)) => {
                        let st = c
                            .prepare_cached(
                                "INSERT INTO airlock_kv (tree, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                            )
                            .await?;
                        c.execute(&st, &[&name, &key, new]).await?
                    }
                    (Some(old), Some(new)) => {
                        let st = c
                            .prepare_cached(
                                "UPDATE airlock_kv SET value = $4 WHERE tree = $1 AND key = $2 AND value = $3",
                            )
                            .await?;
                        c.execute(&st, &[&name, &key, old, new]).await?
                    }
                    (Some(old), None) => {
                        let st = c
                            .prepare_cached("DELETE FROM airlock_kv WHERE tree = $1 AND key = $2 AND value = $3")
                            .await?;
                        c.execute(&st, &[&name, &key, old]).await?
                    }
                    (None, None) => {
                        let st = c.prepare_cached("SELECT 1 FROM airlock_kv WHERE tree = $1 AND key = $2").await?;
                        u64::from(c.query_opt(&st, &[&name, &key]).await?.is_none())
                    }
                };
                Ok(changed == 1)
            })
        })?;
        // Not atomic with the swap, as sled's answer is: it is what was
        // there a moment after, which is all a caller may assume anyway.
        if swapped { Ok(Ok(())) } else { Ok(Err(self.get(tree, key)?)) }
    }

    pub(crate) fn scan_prefix(&self, tree: Tree, prefix: &[u8], limit: Option<usize>) -> Result<Vec<Pair>> {
        self.retrying(|| {
            let (from, to) = (prefix.to_vec(), prefix_end(prefix));
            let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
            self.with(move |c| async move {
                let rows = match &to {
                    Some(to) => {
                        let st = c
                            .prepare_cached(
                                "SELECT key, value FROM airlock_kv WHERE tree = $1 AND key >= $2 AND key < $3 \
                                 ORDER BY key LIMIT $4",
                            )
                            .await?;
                        c.query(&st, &[&tree.name(), &from, to, &limit]).await?
                    }
                    None => {
                        let st = c
                            .prepare_cached(
                                "SELECT key, value FROM airlock_kv WHERE tree = $1 AND key >= $2 ORDER BY key LIMIT $3",
                            )
                            .await?;
                        c.query(&st, &[&tree.name(), &from, &limit]).await?
                    }
                };
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    pub(crate) fn last(&self, tree: Tree) -> Result<Option<Pair>> {
        self.retrying(|| {
            self.with(move |c| async move {
                let st = c
                    .prepare_cached("SELECT key, value FROM airlock_kv WHERE tree = $1 ORDER BY key DESC LIMIT 1")
                    .await?;
                Ok(c.query_opt(&st, &[&tree.name()]).await?.map(|r| (r.get(0), r.get(1))))
            })
        })
    }

    /// Makes every commit so far durable: a commit that waits for the
    /// disk waits for every commit before it.
    pub(crate) fn flush(&self) -> Result<()> {
        self.retrying(|| {
            self.with(|c| async move {
                c.batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit = on; \
                     UPDATE airlock_schema SET version = version; COMMIT",
                )
                .await?;
                Ok(())
            })
        })
    }

    pub(crate) fn next_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 >= ids.1 {
            // `nextval` answers the first of a block of ID_BLOCK that no
            // one else is given, after every block taken before.
            let first = self.retrying(|| {
                self.with(move |c| async move {
                    let st = c.prepare_cached("SELECT nextval('airlock_ids')").await?;
                    let n: i64 = c.query_one(&st, &[]).await?.get(0);
                    Ok(n.unsigned_abs())
                })
            })?;
            *ids = (first, first + ID_BLOCK);
        }
        ids.0 += 1;
        Ok(ids.0 - 1)
    }

    /// See [`Store::claim_run`](crate::Store::claim_run): the oldest lease
    /// free or expired, skipping those another engine is claiming at
    /// this moment (`SKIP LOCKED`) and those this process holds.
    pub(crate) fn claim_lease(&self, holder: &str, ttl: u64, mine: Vec<String>) -> Result<Option<crate::Lease>> {
        let claimed = self.claim_lease_once(holder, ttl, mine)?;
        if claimed.is_some() {
            self.fresh_ids();
        }
        Ok(claimed)
    }

    /// Drops what is left of this process's block of ids, so the next id
    /// comes from a block taken now. A run's history is in the order of
    /// its ids; the engine that held a run before a claim wrote its
    /// events with ids of blocks taken before the claim, so every event
    /// this process writes for the run after it sorts after them, even
    /// if this process's old block was older than the other's.
    fn fresh_ids(&self) {
        *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
    }

    fn claim_lease_once(&self, holder: &str, ttl: u64, mine: Vec<String>) -> Result<Option<crate::Lease>> {
        self.retrying(|| {
            let (holder, mine) = (holder.to_owned(), mine.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(concat!(
                        "WITH next AS (SELECT run FROM airlock_leases \
                         WHERE expires_at < now() AND NOT (run = ANY($3)) \
                         ORDER BY queued_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                         UPDATE airlock_leases l SET holder = $1, fence = l.fence + 1, expires_at = ",
                        expires!(2),
                        " FROM next WHERE l.run = next.run RETURNING l.run, l.fence"
                    ))
                    .await?;
                let row = c.query_opt(&st, &[&holder, &(ttl as f64), &mine]).await?;
                Ok(row.map(|r| {
                    let fence = r.get::<_, i64>(1).unsigned_abs();
                    crate::Lease { run: r.get(0), fence, taken_over: fence > 1 }
                }))
            })
        })
    }

    /// See [`Store::reclaim_runs`](crate::Store::reclaim_runs).
    pub(crate) fn reclaim_leases(&self, holder: &str, ttl: u64) -> Result<Vec<crate::Lease>> {
        let leases = self.reclaim_leases_once(holder, ttl)?;
        self.fresh_ids();
        Ok(leases)
    }

    fn reclaim_leases_once(&self, holder: &str, ttl: u64) -> Result<Vec<crate::Lease>> {
        self.retrying(|| {
            let holder = holder.to_owned();
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(concat!(
                        "UPDATE airlock_leases SET fence = fence + 1, expires_at = ",
                        expires!(2),
                        " WHERE holder = $1 RETURNING run, fence"
                    ))
                    .await?;
                let rows = c.query(&st, &[&holder, &(ttl as f64)]).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| crate::Lease { run: r.get(0), fence: r.get::<_, i64>(1).unsigned_abs(), taken_over: true })
                    .collect())
            })
        })
    }

    /// See [`Store::lease_counts`](crate::Store::lease_counts).
    pub(crate) fn lease_counts(&self) -> Result<crate::LeaseCounts> {
        self.retrying(|| {
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT count(*) FILTER (WHERE holder IS NULL OR expires_at < now()), \
                         count(*) FILTER (WHERE holder IS NOT NULL AND expires_at >= now()) FROM airlock_leases",
                    )
                    .await?;
                let row = c.query_one(&st, &[]).await?;
                Ok(crate::LeaseCounts {
                    waiting: row.get::<_, i64>(0).unsigned_abs(),
                    held: row.get::<_, i64>(1).unsigned_abs(),
                })
            })
        })
    }

    /// The engine holding `run` now: its lease's holder, unless the
    /// lease is free or has expired.
    pub(crate) fn lease_holder(&self, run: &str) -> Result<Option<String>> {
        self.retrying(|| {
            let run = run.to_owned();
            self.with(move |c| async move {
                let st = c
                    .prepare_cached("SELECT holder FROM airlock_leases WHERE run = $1 AND expires_at >= now()")
                    .await?;
                Ok(c.query_opt(&st, &[&run]).await?.and_then(|row| row.get::<_, Option<String>>(0)))
            })
        })
    }

    /// See [`Store::renew_lease`](crate::Store::renew_lease).
    pub(crate) fn renew_lease(&self, run: &str, holder: &str, fence: u64, ttl: u64) -> Result<bool> {
        self.retrying(|| {
            let (run, holder) = (run.to_owned(), holder.to_owned());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(concat!(
                        "UPDATE airlock_leases SET expires_at = ",
                        expires!(4),
                        " WHERE run = $1 AND holder = $2 AND fence = $3"
                    ))
                    .await?;
                Ok(c.execute(&st, &[&run, &holder, &(fence as i64), &(ttl as f64)]).await? == 1)
            })
        })
    }

    /// See [`Store::let_go`](crate::Store::let_go).
    pub(crate) fn let_go(&self, run: &str, holder: &str, fence: u64) -> Result<()> {
        self.retrying(|| {
            let (run, holder) = (run.to_owned(), holder.to_owned());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "UPDATE airlock_leases SET expires_at = '-infinity' \
                         WHERE run = $1 AND holder = $2 AND fence = $3",
                    )
                    .await?;
                c.execute(&st, &[&run, &holder, &(fence as i64)]).await?;
                Ok(())
            })
        })
    }

    /// Whether `run`'s lease has `fence`, outside any transaction.
    fn has_fence(&self, run: &str, fence: u64) -> Result<bool> {
        self.retrying(|| {
            let run = run.to_owned();
            self.with(move |c| async move {
                let st = c.prepare_cached("SELECT 1 FROM airlock_leases WHERE run = $1 AND fence = $2").await?;
                Ok(c.query_opt(&st, &[&run, &(fence as i64)]).await?.is_some())
            })
        })
    }

    /// A compare-and-swap applied only while `run`'s lease has `fence`:
    /// the lease row is share-locked by the statement, so a claim that
    /// raises the fence waits for it, or it for the claim, and then
    /// finds the new fence.
    pub(crate) fn cas_fenced(
        &self,
        run: &str,
        fence: u64,
        tree: Tree,
        key: &[u8],
        old: &[u8],
        new: Vec<u8>,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        let swapped = self.retrying(|| {
            let (run, key, old, new) = (run.to_owned(), key.to_vec(), old.to_vec(), new.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "UPDATE airlock_kv SET value = $4 WHERE tree = $1 AND key = $2 AND value = $3 \
                         AND EXISTS (SELECT 1 FROM airlock_leases WHERE run = $5 AND fence = $6 FOR SHARE)",
                    )
                    .await?;
                Ok(c.execute(&st, &[&tree.name(), &key, &old, &new, &run, &(fence as i64)]).await? == 1)
            })
        })?;
        if swapped {
            return Ok(Ok(()));
        }
        if !self.has_fence(run, fence)? {
            return Err(StoreError::LeaseLost(run.to_owned()));
        }
        Ok(Err(self.get(tree, key)?))
    }

    /// An upsert applied only while `run`'s lease has `fence` (see
    /// [`cas_fenced`](Self::cas_fenced)).
    pub(crate) fn insert_fenced(&self, run: &str, fence: u64, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<()> {
        let written = self.retrying(|| {
            let (run, key, value) = (run.to_owned(), key.to_vec(), value.clone());
            self.with(move |c| async move {
                let st = c
                    .prepare_cached(
                        "INSERT INTO airlock_kv (tree, key, value) SELECT $1, $2, $3 \
                         WHERE EXISTS (SELECT 1 FROM airlock_leases WHERE run = $4 AND fence = $5 FOR SHARE) \
                         ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value",
                    )
                    .await?;
                Ok(c.execute(&st, &[&tree.name(), &key, &value, &run, &(fence as i64)]).await? == 1)
            })
        })?;
        if written { Ok(()) } else { Err(StoreError::LeaseLost(run.to_owned())) }
    }

    /// Tells every engine listening on this database.
    pub(crate) fn notify(&self, signal: &crate::Signal) -> Result<()> {
        let payload = crate::leases::payload(&self.origin, signal);
        self.retrying(|| {
            let payload = payload.clone();
            self.with(move |c| async move {
                let st = c.prepare_cached("SELECT pg_notify($1, $2)").await?;
                c.execute(&st, &[&CHANNEL, &payload]).await?;
                Ok(())
            })
        })
    }

    /// Listens for other engines' signals on a connection of its own,
    /// until the store is dropped, passing them to `to`. A connection
    /// lost is made again a second later, and then [`Signal::Work`]
    /// (crate::Signal::Work) is passed on: what was sent meanwhile is
    /// lost, and there may be work.
    pub(crate) fn listen(&self, to: tokio::sync::broadcast::Sender<crate::Signal>) {
        let (config, me) = (self.config.clone(), self.origin.clone());
        self.handle.spawn(async move {
            loop {
                if let Ok((client, mut connection)) = config.connect(NoTls).await {
                    let (sender, me) = (to.clone(), me.clone());
                    let messages = tokio::spawn(async move {
                        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            if let tokio_postgres::AsyncMessage::Notification(n) = message
                                && let Some((origin, signal)) = crate::leases::parse_payload(n.payload())
                                && origin != Some(me.as_str())
                            {
                                let _ = sender.send(signal);
                            }
                        }
                    });
                    if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                        let _ = to.send(crate::Signal::Work);
                        let _ = messages.await;
                    } else {
                        messages.abort();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// See [`Db::transaction`](crate::kv::Db::transaction).
    pub(crate) fn transaction<T>(&self, f: &impl Fn(&mut Txn<'_>) -> TxResult<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failed = match self.attempt(f) {
                Ok(value) => return Ok(value),
                Err(TxError::Abort(e)) => return Err(e),
                Err(TxError::Pg(e)) => e,
                Err(TxError::Sled(e)) => PgError::new(format!("{e:?}")),
            };
            if failed.lost && started.elapsed() < OUTAGE {
                // A commit whose answer was lost may have been applied:
                // the transaction runs again and finds its own writes,
                // as it would find another's.
                tracing_lost(&failed);
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            if !failed.retry || attempt >= ATTEMPTS {
                return Err(failed.into());
            }
            // Let the transaction that won finish before trying again.
            std::thread::sleep(Duration::from_micros(
                200 * u64::from(attempt.min(50)) + u64::from(rand::random::<u8>()),
            ));
        }
    }

    /// One try of a transaction: begin, `f`, commit (or roll back).
    fn attempt<T>(&self, f: &impl Fn(&mut Txn<'_>) -> TxResult<T>) -> TxResult<T> {
        let pool = self.pool.clone();
        let client = Arc::new(self.call(async move { Ok(pool.get().await?) }).map_err(TxError::Pg)?);
        let mut open = Open { client: Some(client.clone()), done: false };
        self.exec(&client, "BEGIN ISOLATION LEVEL SERIALIZABLE").map_err(TxError::Pg)?;
        match f(&mut Txn::Pg(PgTxn { db: self, client: &client })) {
            Ok(value) => {
                let committed = self.exec(&client, "COMMIT");
                // A failed commit has ended the transaction too.
                open.done = true;
                committed.map_err(TxError::Pg)?;
                Ok(value)
            }
            Err(e) => {
                if self.exec(&client, "ROLLBACK").is_ok() {
                    open.done = true;
                }
                Err(e)
            }
        }
    }

    fn exec(&self, client: &Arc<Object>, sql: &'static str) -> std::result::Result<(), PgError> {
        let client = client.clone();
        self.call(async move { Ok(client.batch_execute(sql).await?) })
    }
}

/// A pooled connection in a transaction. Unless the transaction ended,
/// the connection is closed, not returned to the pool: no one else may
/// run statements inside a transaction left open (by a panic, say).
struct Open {
    client: Option<Arc<Object>>,
    done: bool,
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.done
            && let Some(client) = self.client.take().and_then(|c| Arc::try_unwrap(c).ok())
        {
            drop(Object::take(client));
        }
    }
}

const UPSERT: &str = "INSERT INTO airlock_kv (tree, key, value) VALUES ($1, $2, $3) ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value";

/// The statements of one transaction.
pub(crate) struct PgTxn<'a> {
    db: &'a PgDb,
    client: &'a Arc<Object>,
}

impl PgTxn<'_> {
    pub(crate) fn get(&mut self, tree: Tree, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, PgError> {
        let (c, key) = (self.client.clone(), key.to_vec());
        self.db.call(async move {
            let st = c.prepare_cached("SELECT value FROM airlock_kv WHERE tree = $1 AND key = $2 FOR UPDATE").await?;
            Ok(c.query_opt(&st, &[&tree.name(), &key]).await?.map(|r| r.get(0)))
        })
    }

    pub(crate) fn insert(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) -> std::result::Result<(), PgError> {
        let (c, key) = (self.client.clone(), key.to_vec());
        self.db.call(async move {
            let st = c.prepare_cached(UPSERT).await?;
            c.execute(&st, &[&tree.name(), &key, &value]).await?;
            Ok(())
        })
    }

    /// See [`Txn::offer_lease`].
    pub(crate) fn offer_lease(&mut self, run: &str, holder: Option<(&str, u64)>) -> std::result::Result<(), PgError> {
        let (c, run, holder) = (self.client.clone(), run.to_owned(), holder.map(|(h, t)| (h.to_owned(), t)));
        self.db.call(async move {
            match holder {
                None => {
                    let st =
                        c.prepare_cached("INSERT INTO airlock_leases (run) VALUES ($1) ON CONFLICT DO NOTHING").await?;
                    c.execute(&st, &[&run]).await?;
                }
                Some((holder, ttl)) => {
                    let st = c
                        .prepare_cached(concat!(
                            "INSERT INTO airlock_leases (run, holder, fence, expires_at) VALUES ($1, $2, 1, ",
                            expires!(3),
                            ")"
                        ))
                        .await?;
                    c.execute(&st, &[&run, &holder, &(ttl as f64)]).await?;
                }
            }
            Ok(())
        })
    }

    /// Whether `run`'s lease has `fence`, locking it until the
    /// transaction ends.
    pub(crate) fn has_fence(&mut self, run: &str, fence: u64) -> std::result::Result<bool, PgError> {
        let (c, run) = (self.client.clone(), run.to_owned());
        self.db.call(async move {
            let st = c.prepare_cached("SELECT 1 FROM airlock_leases WHERE run = $1 AND fence = $2 FOR UPDATE").await?;
            Ok(c.query_opt(&st, &[&run, &(fence as i64)]).await?.is_some())
        })
    }

    /// Whether `run` has a lease.
    pub(crate) fn has_lease(&mut self, run: &str) -> std::result::Result<bool, PgError> {
        let (c, run) = (self.client.clone(), run.to_owned());
        self.db.call(async move {
            let st = c.prepare_cached("SELECT 1 FROM airlock_leases WHERE run = $1 FOR UPDATE").await?;
            Ok(c.query_opt(&st, &[&run]).await?.is_some())
        })
    }

    /// Ends `run`'s lease.
    pub(crate) fn end_lease(&mut self, run: &str) -> std::result::Result<(), PgError> {
        let (c, run) = (self.client.clone(), run.to_owned());
        self.db.call(async move {
            let st = c.prepare_cached("DELETE FROM airlock_leases WHERE run = $1").await?;
            c.execute(&st, &[&run]).await?;
            Ok(())
        })
    }

    pub(crate) fn remove(&mut self, tree: Tree, key: &[u8]) -> std::result::Result<(), PgError> {
        let (c, key) = (self.client.clone(), key.to_vec());
        self.db.call(async move {
            let st = c.prepare_cached("DELETE FROM airlock_kv WHERE tree = $1 AND key = $2").await?;
            c.execute(&st, &[&tree.name(), &key]).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sql` on the database of `db`, as a test's set-up.
    fn execute(db: &PgDb, sql: &'static str) {
        let pool = db.pool.clone();
        db.call(async move {
            pool.get().await?.batch_execute(sql).await?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// What one connection wrote, another sees after reopening: the
    /// records are in the database, not in the process.
    #[test]
    fn records_outlive_the_store_that_wrote_them() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let id = {
            let store = crate::Store::open_postgres(&url).expect("open");
            let run = store.create_run("p", "p.yaml", Default::default(), &["a".into()]).expect("run");
            let log = crate::LogRecord { attempt: 1, bytes: b"hello".to_vec(), written: 9 };
            store.put_log(&run.id, "a", &log).expect("log");
            run.id
        };
        let store = crate::Store::open_postgres(&url).expect("reopen");
        assert_eq!(store.find_run(&id[..8]).expect("by prefix").id, id);
        assert_eq!(store.logs(&id, "a").expect("logs")[0].bytes, b"hello");
    }

    /// A database of schema 1 (ids one at a time, no leases) is brought to this
    /// airlock's schema at open, and ids go on growing past those it gave.
    #[test]
    fn an_older_schema_is_migrated_and_ids_keep_growing() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let db = PgDb::open(&url).expect("open");
        execute(
            &db,
            "ALTER SEQUENCE airlock_ids INCREMENT BY 1; DROP TABLE airlock_leases; DROP TABLE airlock_jobs; \
             UPDATE airlock_schema SET version = 1; \
             SELECT setval('airlock_ids', 5000)",
        );
        let given = 5000;
        drop(db);
        let db = PgDb::open(&url).expect("migrated");
        let mut last = given;
        for _ in 0..3000 {
            let id = db.next_id().expect("id");
            assert!(id > last, "{id} after {last}");
            last = id;
        }
        let other = PgDb::open(&url).expect("a second store");
        let theirs = other.next_id().expect("id");
        assert!(theirs > given && !(given..=last).contains(&theirs), "{theirs} was given already");
        let pool = db.pool.clone();
        let version = db
            .call(async move {
                Ok(pool.get().await?.query_one("SELECT version FROM airlock_schema", &[]).await?.get::<_, i32>(0))
            })
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// Jobs a database of schema 3 kept as records move to their table
    /// at open: still there, still claimable, their fences kept.
    #[test]
    fn jobs_kept_as_records_move_to_their_table() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        let url = server.database().expect("database");
        let db = PgDb::open(&url).expect("open");
        let mut job =
            crate::JobRecord::new("r1", "s", 1, vec!["x".into()], vec!["pool".into()], serde_json::json!({"a": 1}));
        job.fence = 7;
        let mut done = crate::JobRecord::new("r1", "t", 1, Vec::new(), vec!["pool".into()], serde_json::json!(null));
        (done.state, done.agent, done.result) =
            (crate::JobState::Done, Some("p/a".into()), Some(serde_json::json!("ok")));
        execute(&db, "DROP TABLE airlock_jobs; UPDATE airlock_schema SET version = 3");
        for j in [&job, &done] {
            db.insert(Tree::Jobs, j.id.as_bytes(), crate::encode(j)).expect("insert");
        }
        drop(db);
        let store = crate::Store::open_postgres(&url).expect("migrated");
        assert_eq!(store.job(&done.id).expect("job"), Some(done.clone()));
        let claimed = store.claim_job("p/b", "pool", &["x".into()], 60_000).expect("claim").expect("the job");
        assert_eq!((claimed.id, claimed.fence, claimed.spec), (job.id, 8, serde_json::json!({"a": 1})));
    }

    /// A database migrated by a newer airlock is refused, saying so,
    /// and left as it is.
    #[test]
    fn a_newer_schema_is_refused() {
        let server = crate::testing::TestPostgres::start().expect("postgres");
        // The test server trusts loopback: the password is taken, unused.
        let url = server.database().expect("database").replacen("airlock@", "airlock:s3cret@", 1);
        let db = PgDb::open(&url).expect("open");
        execute(&db, "UPDATE airlock_schema SET version = 99");
        let err = crate::Store::open_postgres(&url).err().expect("refused").to_string();
        assert!(err.contains(&format!("schema version 99, newer than this airlock's ({SCHEMA_VERSION})")), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// A server that is not there is an error naming it, without its
    /// password, and soon.
    #[test]
    fn an_unreachable_database_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let err = crate::Store::open_postgres(&format!("postgres://ci:s3cret@127.0.0.1:{port}/airlock"))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(&format!("postgres://ci@127.0.0.1:{port}/airlock")), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(redact("postgres://ci:s3cret@127.0.0.1:5432/airlock"), "postgres://ci@127.0.0.1:5432/airlock");
        assert_eq!(redact("postgres://ci@host/db?sslmode=disable"), "postgres://ci@host/db?sslmode=disable");
        assert_eq!(redact("host=/tmp dbname=x"), "host=/tmp dbname=x");
        assert_eq!(redact("host=db password=s3cret dbname=x"), "host=db password=… dbname=x");
    }

    #[test]
    fn prefixes_end_where_they_should() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
