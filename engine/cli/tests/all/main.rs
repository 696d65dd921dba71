//! End-to-end tests of the `airlock` binary: real plugins compiled from
//! `plugins/`, a real sled store in a temporary state directory, real
//! processes and signals.

mod agents;
mod browser;
mod checkout;
mod crash;
mod database;
mod deploy;
mod docs;
mod failures;
mod hooks;
mod hostile;
mod objects;
mod provenance;
mod publish;
mod registry;
mod run;
mod schemathesis;
mod secrets;
mod server;
mod servers;
mod snapshots;
mod step_cache;
mod step_process;
mod support;
mod tokens;
mod tools;
mod ui;
