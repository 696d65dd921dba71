//! The publish protocol: what `airlock publish` and `airlock serve` say
//! to each other, in one place for both.
//!
//! A publish of a tree to `TARGET` as build `BUILD` is three calls under
//! `/api/v1/targets/TARGET/builds/BUILD`, each with a publish token as
//! `Authorization: Bearer …`:
//!
//! 1. `POST …/missing` with a [`MissingRequest`]: which of these blobs
//!    the server lacks ([`MissingAnswer`]).
//! 2. `POST …/blobs` with the missing blobs as [frames](FrameHeader), one
//!    after another, and a `Content-Length` (the token is charged for it
//!    before a byte is read): [`BlobsAnswer`].
//! 3. `PUT …` with the manifest, a [`CommitRequest`]: the build appears
//!    whole or not at all ([`CommitAnswer`]; 201 made now, 200 there
//!    already with the same files).
//!
//! A tree the target already holds (the same files published before
//! under another build id) can be committed by its digest alone, with
//! no call before: a [`CommitRequest`] with `tree` instead of `files`.
//! The digest is that of the manifest the client would send, sorted by
//! path ([`tree_digest`](airlock_host::publish::tree_digest)); a tree
//! the server does not hold is refused as `unknown_tree`, and the client
//! goes the long way.
//!
//! Every refusal is an [`ErrorBody`] whose code is one of [`ErrorCode`].

use airlock_host::publish::{ManifestEntry, PublishError};
use airlock_store::TokenError;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

pub use crate::api::{ErrorBody, ErrorDetail};

/// The path of the calls of one build, under a server's base URL.
pub fn build_path(target: &str, build: &str) -> String {
    format!("/api/v1/targets/{target}/builds/{build}")
}

/// `POST …/missing`: the digests of the files to publish.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    /// sha256 digests, hex.
    pub digests: Vec<String>,
}

/// Which of the digests asked about the server does not have.
#[derive(Debug, Serialize, Deserialize)]
pub struct MissingAnswer {
    /// Those to upload, in the order asked.
    pub missing: Vec<String>,
}

/// What an upload of blobs stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlobsAnswer {
    /// Blobs in the upload.
    pub stored: u64,
    /// Of those, how many the server did not have before.
    pub new: u64,
}

/// `PUT …`: the manifest of the build, or the digest of a tree the
/// target holds: one of the two.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Every file of the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ManifestEntry>,
    /// The sha256 of a tree the target holds, instead of `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
}

/// The build, as committed.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommitAnswer {
    /// Its target.
    pub target: String,
    /// Its build id.
    pub build: String,
    /// Its files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether this call made it (else it was there, with the same files).
    pub created: bool,
    /// The sha256 of its tree: what a later commit of the same files can
    /// send instead of them.
    #[serde(default)]
    pub tree: String,
    /// Where it is browsed, relative to the server.
    pub url: String,
}

/// `GET /api/v1/targets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetList {
    /// The server's publish targets.
    pub targets: Vec<TargetInfo>,
}

/// A publish target.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
}

/// `GET /api/v1/targets/TARGET/builds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildList {
    /// The target's builds.
    pub builds: Vec<BuildInfo>,
}

/// A published build.
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Its id.
    pub build: String,
    /// When it was committed (ms since the epoch).
    pub published_ms: u64,
}

/// The head of one blob in an upload: `sha256 (32 bytes) | length (u64,
/// big-endian)`, then `length` bytes of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The blob's sha256.
    pub sha256: [u8; 32],
    /// Its length.
    pub len: u64,
}

impl FrameHeader {
    /// Bytes of a header.
    pub const LEN: usize = 40;

    /// The header of a blob whose digest is `sha256` in hex.
    pub fn new(sha256: &str, len: u64) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256, &mut digest).ok()?;
        Some(Self { sha256: digest, len })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.sha256);
        out[32..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The header at the start of `bytes`, if they hold a whole one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let head = bytes.get(..Self::LEN)?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&head[..32]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[32..]);
        Some(Self { sha256, len: u64::from_be_bytes(len) })
    }

    /// The digest in hex.
    pub fn digest(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Every code a publish call refuses with, and its HTTP status.
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:ident, $doc:literal;)*) => {
        /// Why a publish call was refused: the `code` of its [`ErrorBody`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as sent, e.g. `token_expired`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }

            /// The HTTP status it is sent with.
            pub fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)* }
            }
        }
    };
}

error_codes! {
    TokenMissing = "token_missing", UNAUTHORIZED, "No `Authorization: Bearer` token.";
    TokenMalformed = "token_malformed", UNAUTHORIZED, "The token is not an airlock token.";
    TokenUnknown = "token_unknown", UNAUTHORIZED, "No such token.";
    TokenRevoked = "token_revoked", UNAUTHORIZED, "The token was revoked.";
    TokenExpired = "token_expired", UNAUTHORIZED, "The token expired.";
    TokenNotYetValid = "token_not_yet_valid", UNAUTHORIZED, "The token is not valid yet.";
    TokenWrongSource = "token_wrong_source", FORBIDDEN, "The token may not be used from this address.";
    TokenOutOfScope = "token_out_of_scope", FORBIDDEN, "The token is for another target or build.";
    TokenQuotaUsedUp = "token_quota_used_up", FORBIDDEN, "The token's file or byte quota is used up.";
    NoTarget = "no_target", NOT_FOUND, "The server has no such publish target.";
    NoBuild = "no_build", NOT_FOUND, "Nothing is published under that build id.";
    BadBuildId = "bad_build_id", UNPROCESSABLE_ENTITY, "The build id is not one.";
    BadPath = "bad_path", UNPROCESSABLE_ENTITY, "A manifest path is not a plain relative path.";
    DuplicatePath = "duplicate_path", UNPROCESSABLE_ENTITY, "A manifest lists a path twice.";
    PathClash = "path_clash", UNPROCESSABLE_ENTITY, "A manifest has a file where another has a directory.";
    BadDigest = "bad_digest", UNPROCESSABLE_ENTITY, "A digest is not 64 hex digits.";
    MissingBlob = "missing_blob", UNPROCESSABLE_ENTITY, "The manifest names a blob the server does not have.";
    UnknownTree = "unknown_tree", UNPROCESSABLE_ENTITY, "The commit names a tree the target does not hold.";
    SizeMismatch = "size_mismatch", UNPROCESSABLE_ENTITY, "A blob's size is not what the manifest says.";
    EmptyManifest = "empty_manifest", UNPROCESSABLE_ENTITY, "The manifest has no files.";
    TooManyFiles = "too_many_files", PAYLOAD_TOO_LARGE, "More files than the target allows in one publish.";
    FileTooLarge = "file_too_large", PAYLOAD_TOO_LARGE, "A file larger than the target allows.";
    PublishTooLarge = "publish_too_large", PAYLOAD_TOO_LARGE, "More bytes than the target allows in one publish.";
    DigestMismatch = "digest_mismatch", UNPROCESSABLE_ENTITY, "An uploaded blob does not hash to its digest.";
    TruncatedUpload = "truncated_upload", UNPROCESSABLE_ENTITY, "An upload ended inside a frame.";
    Conflict = "conflict", CONFLICT, "The build exists with other files: published builds never change.";
    LengthRequired = "length_required", LENGTH_REQUIRED, "A blob upload without `Content-Length`.";
    UploadTooLarge = "upload_too_large", PAYLOAD_TOO_LARGE, "An upload larger than one publish may hold.";
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE, "A JSON body over the call's limit.";
    BadBody = "bad_body", BAD_REQUEST, "The body could not be read.";
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT, "The body stopped arriving, or took too long.";
    BadJson = "bad_json", BAD_REQUEST, "The body is not the JSON the call takes.";
    Busy = "busy", SERVICE_UNAVAILABLE, "The server holds as many bodies as it may; try again.";
    Io = "io", INTERNAL_SERVER_ERROR, "The server could not read or write its disk.";
    DamagedBlob = "damaged_blob", INTERNAL_SERVER_ERROR, "A stored blob is damaged.";
    Store = "store", INTERNAL_SERVER_ERROR, "The server's state store failed.";
    Internal = "internal", INTERNAL_SERVER_ERROR, "The server could not finish the call.";
}

impl ErrorCode {
    /// The code sent as `code`, if this client knows it.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// What a client should tell its user to do, where there is something.
    pub fn hint(self) -> Option<&'static str> {
        Some(match self {
            Self::Conflict => "published trees never change: publish under a new build id",
            Self::TokenExpired | Self::TokenRevoked | Self::TokenQuotaUsedUp => {
                "nothing was published; ask for a new token and publish again (blobs already sent are kept)"
            }
            Self::TokenOutOfScope => "the token was made for another target or build-id prefix",
            Self::TokenMissing | Self::TokenMalformed | Self::TokenUnknown => {
                "pass the token with --token or AIRLOCK_TOKEN"
            }
            Self::NoTarget => "check --target against the server's policy",
            _ => return None,
        })
    }
}

impl From<&PublishError> for ErrorCode {
    fn from(e: &PublishError) -> Self {
        use airlock_host::ArtifactError;
        match e {
            PublishError::BadBuildId(_) => Self::BadBuildId,
            PublishError::BadPath { .. } => Self::BadPath,
            PublishError::DuplicatePath(_) => Self::DuplicatePath,
            PublishError::PathClash { .. } => Self::PathClash,
            PublishError::BadDigest(_) | PublishError::Artifact(ArtifactError::BadDigest(_)) => Self::BadDigest,
            PublishError::MissingBlob { .. } => Self::MissingBlob,
            PublishError::SizeMismatch { .. } => Self::SizeMismatch,
            PublishError::Empty => Self::EmptyManifest,
            PublishError::TooManyFiles { .. } => Self::TooManyFiles,
            PublishError::FileTooLarge { .. } => Self::FileTooLarge,
            PublishError::TotalTooLarge { .. } => Self::PublishTooLarge,
            PublishError::DigestMismatch { .. } => Self::DigestMismatch,
            PublishError::Truncated { .. } => Self::TruncatedUpload,
            PublishError::UnknownTree { .. } => Self::UnknownTree,
            PublishError::Conflict { .. } => Self::Conflict,
            PublishError::Io { .. } | PublishError::Artifact(ArtifactError::Io { .. }) => Self::Io,
            PublishError::Artifact(_) => Self::DamagedBlob,
        }
    }
}

impl From<&TokenError> for ErrorCode {
    fn from(e: &TokenError) -> Self {
        match e {
            TokenError::Malformed => Self::TokenMalformed,
            TokenError::Unknown => Self::TokenUnknown,
            TokenError::Revoked { .. } => Self::TokenRevoked,
            TokenError::Expired { .. } => Self::TokenExpired,
            TokenError::NotYetValid { .. } => Self::TokenNotYetValid,
            TokenError::WrongSource { .. } => Self::TokenWrongSource,
            TokenError::OutOfScope { .. } => Self::TokenOutOfScope,
            TokenError::QuotaUsedUp { .. } => Self::TokenQuotaUsedUp,
            TokenError::Store(_) => Self::Store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_is_digest_then_big_endian_length() {
        let digest = "ab".repeat(32);
        let head = FrameHeader::new(&digest, 0x0102).expect("a digest");
        let bytes = head.encode();
        assert_eq!(&bytes[..32], &[0xab; 32]);
        assert_eq!(&bytes[32..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(FrameHeader::decode(&bytes), Some(head));
        assert_eq!(head.digest(), digest);
        assert_eq!(FrameHeader::decode(&bytes[..39]), None, "a header is 40 bytes");
        assert_eq!(FrameHeader::new("xyz", 1), None);
    }

    #[test]
    fn every_code_is_distinct_and_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(ErrorCode::parse("from_a_newer_server"), None);
    }

    /// The book's table of refusals lists every code with its status.
    #[test]
    fn the_book_lists_every_code_with_its_status() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src/guide/publishing.md");
        let book = std::fs::read_to_string(&path).expect("the publishing guide");
        for code in ErrorCode::ALL {
            let row = book
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&format!("`{}`", code.as_str())))
                .unwrap_or_else(|| panic!("{} has no row for `{}`", path.display(), code.as_str()));
            let status = row.split('|').nth(2).map(str::trim).unwrap_or_default();
            assert_eq!(status, code.status().as_str(), "the status of `{}` in {}", code.as_str(), path.display());
        }
    }
}
