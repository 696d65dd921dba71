//! What a server tells a monitoring system (Prometheus, in the
//! OpenMetrics text format): the queue's depth and the runs under way
//! over every server on the store, this server's share of them, its
//! claims and take-overs, and how its steps end and how long they take.

use airlock_store::{StepState, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// An engine's metrics.
pub struct Metrics {
    registry: Registry,
    waiting: Gauge,
    held: Gauge,
    held_here: Gauge,
    claims: Counter,
    takeovers: Counter,
    steps: Family<State, Counter>,
    durations: Histogram,
    agents: Gauge,
    jobs_waiting: Gauge,
    jobs_leased: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let waiting = Gauge::default();
        let held = Gauge::default();
        let held_here = Gauge::default();
        let claims = Counter::default();
        let takeovers = Counter::default();
        let steps = Family::<State, Counter>::default();
        // 5 ms to about 20 minutes.
        let durations = Histogram::new(exponential_buckets(0.005, 4.0, 10));
        registry.register(
            "airlock_runs_waiting",
            "Runs waiting for a server to claim them (their lease is free or expired), over every server on the store",
            waiting.clone(),
        );
        registry.register("airlock_runs_held", "Runs a server holds, over every server on the store", held.clone());
        registry.register("airlock_runs_held_here", "Runs this server works on now", held_here.clone());
        registry.register("airlock_run_claims", "Runs this server claimed", claims.clone());
        registry.register(
            "airlock_run_takeovers",
            "Runs this server took over from a server that stopped renewing their leases",
            takeovers.clone(),
        );
        registry.register("airlock_steps_finished", "Steps of this server's runs that ended, by state", steps.clone());
        registry.register(
            "airlock_step_duration_seconds",
            "How long the steps of this server's runs took, from start to end",
            durations.clone(),
        );
        let agents = Gauge::default();
        let jobs_waiting = Gauge::default();
        let jobs_leased = Gauge::default();
        registry.register(
            "airlock_agents",
            "Agents that asked this server for work in the last minute",
            agents.clone(),
        );
        registry.register(
            "airlock_jobs_waiting",
            "Steps waiting for an agent (their job is not leased, or its lease expired), over every server",
            jobs_waiting.clone(),
        );
        registry.register("airlock_jobs_leased", "Steps an agent holds now, over every server", jobs_leased.clone());
        Self {
            registry,
            waiting,
            held,
            held_here,
            claims,
            takeovers,
            steps,
            durations,
            agents,
            jobs_waiting,
            jobs_leased,
        }
    }
}

impl Metrics {
    /// A run was claimed; `taken_over` when another engine had it.
    pub(crate) fn claimed(&self, taken_over: bool) {
        self.claims.inc();
        if taken_over {
            self.takeovers.inc();
        }
    }

    /// A step ended in `state` after `duration_ms`.
    pub(crate) fn step_finished(&self, state: StepState, duration_ms: u64) {
        self.steps.get_or_create(&State { state: state.as_str() }).inc();
        self.durations.observe(duration_ms as f64 / 1000.0);
    }

    /// The metrics as text, with the store's counts as they are now,
    /// `held_here` runs under way in this server and `agents` agents that
    /// asked it for work lately.
    pub fn encode(&self, store: &Store, held_here: usize, agents: usize) -> Result<String, airlock_store::StoreError> {
        let counts = store.lease_counts()?;
        let now = airlock_store::now_ms();
        let (mut waiting, mut leased) = (0i64, 0i64);
        for job in store.jobs()? {
            match job.state {
                airlock_store::JobState::Leased if job.expires_ms > now => leased += 1,
                airlock_store::JobState::Done => {}
                _ => waiting += 1,
            }
        }
        self.jobs_waiting.set(waiting);
        self.jobs_leased.set(leased);
        self.agents.set(i64::try_from(agents).unwrap_or(i64::MAX));
        self.waiting.set(i64::try_from(counts.waiting).unwrap_or(i64::MAX));
        self.held.set(i64::try_from(counts.held).unwrap_or(i64::MAX));
        self.held_here.set(i64::try_from(held_here).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        Ok(text)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// What an agent tells a monitoring system: the jobs it ran and how they
/// ended, how long they took, the jobs under way, and the bytes it moved.
pub struct AgentMetrics {
    registry: Registry,
    jobs: Family<Outcome, Counter>,
    running: Gauge,
    durations: Histogram,
    fetched: Counter,
    uploaded: Counter,
    unreachable: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<Outcome, Counter>::default();
        let running = Gauge::default();
        // 5 ms to about 20 minutes.
        let durations = Histogram::new(exponential_buckets(0.005, 4.0, 10));
        let (fetched, uploaded, unreachable) = (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "airlock_agent_jobs",
            "Jobs this agent claimed, by how they ended: succeeded, failed (the step failed), dropped (the lease \
             went to another agent), refused (the server refused the completion), undelivered",
            jobs.clone(),
        );
        registry.register("airlock_agent_jobs_running", "Jobs this agent runs now", running.clone());
        registry.register(
            "airlock_agent_job_duration_seconds",
            "How long this agent's jobs took, from claim to completion",
            durations.clone(),
        );
        registry.register("airlock_agent_fetched_bytes", "Bytes of plugins and inputs fetched", fetched.clone());
        registry.register("airlock_agent_uploaded_bytes", "Bytes of outputs uploaded", uploaded.clone());
        registry.register(
            "airlock_agent_servers_unreachable",
            "Calls that found a server out of reach (the agent turned to the next, or waited)",
            unreachable.clone(),
        );
        Self { registry, jobs, running, durations, fetched, uploaded, unreachable }
    }
}

impl AgentMetrics {
    /// A job was claimed and begins.
    pub fn job_started(&self) {
        self.running.inc();
    }

    /// A job begun with [`job_started`](Self::job_started) ended with
    /// `outcome` after `seconds`.
    pub fn job_ended(&self, outcome: &'static str, seconds: f64) {
        self.running.dec();
        self.jobs.get_or_create(&Outcome { outcome }).inc();
        self.durations.observe(seconds);
    }

    /// Bytes fetched from a server.
    pub fn fetched(&self, bytes: u64) {
        self.fetched.inc_by(bytes);
    }

    /// Bytes uploaded to a server.
    pub fn uploaded(&self, bytes: u64) {
        self.uploaded.inc_by(bytes);
    }

    /// A server could not be reached.
    pub fn unreachable(&self) {
        self.unreachable.inc();
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
