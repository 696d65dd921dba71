//! Hostile plugins against the whole engine: each test runs one attack as
//! a step of a real pipeline with `airlock run` and checks that it is
//! contained (see [`lab::Report::assert_contained`]).
//!
//! The guests are in `sandbox-tests/guests`: Rust programs built for
//! wasm32-wasip2, and WebAssembly text assembled by the tests.

mod lab;

mod concurrency;
mod coverage;
mod cpu;
mod environment;
mod filesystem;
mod malformed;
mod memory;
mod network;
mod output;
