//! Trusted host services that act on what a step left behind.
//!
//! - [`extract`] reads a finished step's declared outputs out of its
//!   workspace through a capability handle: regular files only; symlinks,
//!   hardlinks, devices and FIFOs are refused, as are names that are not
//!   UTF-8 or hold control characters, and counts or sizes over the caps.
//! - [`ArtifactStore`] keeps every output by its sha256, once, and checks
//!   the digest again whenever a blob is read back.
//! - [`publish`] keeps the trees published to each target of the admin
//!   policy: blobs by content, and a manifest per build that appears all
//!   at once or not at all.
//! - [`tools`] fetches the tools pipelines name by URL and sha256 into
//!   a cache, checks each digest before anything reads the file, and
//!   unpacks archives once.
//! - [`checkout`] fetches the exact commit of a repository with its
//!   credential and writes it out as a plain tree, no `.git`.
//! - [`forge`] checks the signatures of webhooks from git forges and
//!   reads their payloads into events.
//! - [`tree_digest`] names a directory tree by its contents, for the
//!   step cache's keys.
//! - [`provenance`] signs in-toto statements of what a run made (SLSA
//!   provenance in a DSSE envelope) and checks them.
//! - [`deploy`] holds the credentials and the providers that deploy
//!   artifacts to an environment; credentials never leave it.
//!
//! Nothing here runs guest code; this crate does not link wasmtime.
//!
//! ```no_run
//! use airlock_host::{ArtifactStore, ExtractLimits, extract};
//! let store = ArtifactStore::new("/var/lib/airlock/artifacts".into());
//! let outputs = extract("/tmp/ws".as_ref(), &["dist/**".into()], &ExtractLimits::default(), &store)?;
//! for o in &outputs {
//!     println!("{} {}", o.sha256, o.path);
//! }
//! # Ok::<(), airlock_host::ExtractError>(())
//! ```

pub mod artifacts;
pub mod checkout;
pub mod deploy;
mod extract;
pub mod forge;
pub mod forge_status;
pub mod provenance;
pub mod publish;
pub mod tools;
mod tree;

pub use artifacts::{ArtifactError, ArtifactStore, BlobWriter, ObjectTier, Trimmed};
pub use extract::{ExtractError, ExtractLimits, Extracted, extract};
pub use tree::{file_digest, tree_digest};
