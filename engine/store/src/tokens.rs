//! Short-lived, scoped tokens: what a build machine is handed instead of
//! a credential.
//!
//! A token is 32 random bytes, shown once when it is created. The store
//! keeps only its sha256, with what it allows (one action on one target,
//! for build ids with one prefix), when (not before, not after), from
//! where (an address range) and how much (calls, files, bytes). Every use
//! is checked and charged in one compare-and-swap, so two uses racing for
//! the last call cannot both have it.

use crate::kv::Tree;
use crate::{Result, Store, StoreError, now_ms};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// What tokens start with, so a leaked one is easy to recognise.
pub const TOKEN_PREFIX: &str = "alk_";

/// What user API tokens start with: unlike publish tokens they are not
/// kept in the store but named, by digest, in the admin policy.
pub const USER_TOKEN_PREFIX: &str = "alu_";

/// A new user API token and its sha256 (hex), for the admin policy's
/// `users.NAME.token_sha256`.
pub fn new_user_token() -> (String, String) {
    let token = format!("{USER_TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let digest = digest(&token);
    (token, digest)
}

/// The sha256 (hex) of a user API token, as the policy names it.
pub fn user_token_digest(token: &str) -> String {
    digest(token)
}

/// The longest a token may live: tokens are for one job, not for keeps.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Actions a token can allow.
pub const ACTIONS: &[&str] = &["publish"];

/// What a token allows: `ACTION:TARGET/PREFIX`, e.g.
/// `publish:snapshots/pr-481-` allows publishing to the target
/// `snapshots` any build id starting with `pr-481-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The action, e.g. `publish`.
    pub action: String,
    /// The target, e.g. `snapshots`.
    pub target: String,
    /// Build ids must start with this; empty allows any.
    pub prefix: String,
}

impl Scope {
    /// Parses `ACTION:TARGET[/PREFIX]`; a trailing `*` on the prefix is
    /// allowed and means the same as none.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("scope `{text}` {why}; write it like `publish:snapshots/pr-481-`");
        let (action, rest) = text.split_once(':').ok_or_else(|| bad("has no `:`"))?;
        if !ACTIONS.contains(&action) {
            return Err(bad(&format!("has the action `{action}`; the actions are: {}", ACTIONS.join(", "))));
        }
        let (target, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.strip_suffix('*').unwrap_or(prefix);
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if target.is_empty() || !target.chars().all(name_char) {
            return Err(bad("needs a target of letters, digits, `-` and `_`"));
        }
        if prefix.starts_with('.') {
            return Err(bad("has a build-id prefix starting with `.`, which no build id does"));
        }
        if !prefix.chars().all(|c| name_char(c) || c == '.') {
            return Err(bad("has a build-id prefix with characters other than letters, digits, `-`, `_` and `.`"));
        }
        Ok(Self { action: action.to_owned(), target: target.to_owned(), prefix: prefix.to_owned() })
    }

    /// Whether this scope allows `action` on `target` for `build_id`.
    pub fn allows(&self, action: &str, target: &str, build_id: &str) -> bool {
        self.action == action && self.target == target && build_id.starts_with(&self.prefix)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.action, self.target, self.prefix)?;
        if self.prefix.is_empty() { write!(f, "*") } else { Ok(()) }
    }
}

/// What a new token allows; see [`Store::create_token`].
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// What it allows.
    pub scope: Scope,
    /// How long it lives, in ms, from `not_before_ms` (or from now).
    pub ttl_ms: u64,
    /// Not usable before this time.
    pub not_before_ms: Option<u64>,
    /// Uses at most.
    pub max_calls: Option<u64>,
    /// Files it may publish, all uses together.
    pub max_files: Option<u64>,
    /// Bytes it may upload, all uses together.
    pub max_bytes: Option<u64>,
    /// Addresses it may be used from.
    pub cidr: Option<ipnet::IpNet>,
    /// Who asked for it, e.g. a run and step, for the record.
    pub note: Option<String>,
    /// The run it was minted for, when the engine minted it for a step.
    pub run: Option<String>,
}

impl TokenSpec {
    /// A token for `scope` living `ttl_ms`, with no other constraint.
    pub fn new(scope: Scope, ttl_ms: u64) -> Self {
        Self {
            scope,
            ttl_ms,
            not_before_ms: None,
            max_calls: None,
            max_files: None,
            max_bytes: None,
            cidr: None,
            note: None,
            run: None,
        }
    }
}

/// What a token has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Uses.
    pub calls: u64,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A token as stored: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A name for the token that is not the token, e.g. `tok-3f9a61c2`.
    pub id: String,
    /// What it allows.
    pub scope: Scope,
    /// When it was created.
    pub created_ms: u64,
    /// Not usable before.
    pub not_before_ms: u64,
    /// Not usable from.
    pub expires_ms: u64,
    /// Uses at most.
    pub max_calls: Option<u64>,
    /// Files at most.
    pub max_files: Option<u64>,
    /// Bytes at most.
    pub max_bytes: Option<u64>,
    /// Addresses it may be used from, e.g. `127.0.0.1/32`.
    pub cidr: Option<String>,
    /// What it has used.
    pub used: TokenUsage,
    /// When it was revoked.
    pub revoked_ms: Option<u64>,
    /// Who asked for it.
    pub note: Option<String>,
    /// The run it was minted for, when the engine minted it for a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl TokenRecord {
    /// `active`, `revoked`, `expired` or `not yet valid`, at `now_ms`.
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if now_ms >= self.expires_ms {
            "expired"
        } else if now_ms < self.not_before_ms {
            "not yet valid"
        } else {
            "active"
        }
    }
}

/// One use of a token, as a server sees it.
#[derive(Debug, Clone)]
pub struct TokenUse<'a> {
    /// The action asked for.
    pub action: &'a str,
    /// The target.
    pub target: &'a str,
    /// The build id.
    pub build_id: &'a str,
    /// Where the request came from.
    pub source: IpAddr,
    /// Files this use publishes.
    pub files: u64,
    /// Bytes this use uploads.
    pub bytes: u64,
    /// The time of the request.
    pub now_ms: u64,
}

/// Why a token was refused. Each constraint has its own reason.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not shaped like a token at all.
    #[error("that is not an airlock token (tokens start with `{TOKEN_PREFIX}`)")]
    Malformed,
    /// Never issued here.
    #[error("token not recognised: it was never issued by this engine")]
    Unknown,
    /// Revoked.
    #[error("token {id} was revoked")]
    Revoked {
        /// The token's id.
        id: String,
    },
    /// Past its expiry.
    #[error("token {id} expired {ago_s} s ago")]
    Expired {
        /// The token's id.
        id: String,
        /// How long ago, in seconds.
        ago_s: u64,
    },
    /// Before its start.
    #[error("token {id} is not valid yet; it will be in {in_s} s")]
    NotYetValid {
        /// The token's id.
        id: String,
        /// In how long, in seconds.
        in_s: u64,
    },
    /// Used from an address it does not allow.
    #[error("token {id} may only be used from {cidr}, not from {from}")]
    WrongSource {
        /// The token's id.
        id: String,
        /// The allowed range.
        cidr: String,
        /// Where the request came from.
        from: IpAddr,
    },
    /// Asked for something outside its scope.
    #[error("token {id} allows `{scope}`, not {action} to `{target}/{build_id}`")]
    OutOfScope {
        /// The token's id.
        id: String,
        /// What it allows.
        scope: String,
        /// The action asked for.
        action: String,
        /// The target asked for.
        target: String,
        /// The build id asked for.
        build_id: String,
    },
    /// A quota is used up.
    #[error("token {id} has used up its {what}: {used} of {max} used, and this asks for {asked} more")]
    QuotaUsedUp {
        /// The token's id.
        id: String,
        /// `calls`, `files` or `bytes`.
        what: &'static str,
        /// The quota.
        max: u64,
        /// Used so far.
        used: u64,
        /// Asked for now.
        asked: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// sha256 of a token, hex: how the store knows it.
fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The store's key of a token, if it has a token's shape.
fn token_key(token: &str) -> std::result::Result<String, TokenError> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() != TOKEN_PREFIX.len() + 64 {
        return Err(TokenError::Malformed);
    }
    Ok(digest(token))
}

/// Checks `token` against one use; on success returns it charged.
fn check(mut t: TokenRecord, u: &TokenUse<'_>) -> std::result::Result<TokenRecord, TokenError> {
    let id = t.id.clone();
    if t.revoked_ms.is_some() {
        return Err(TokenError::Revoked { id });
    }
    if u.now_ms < t.not_before_ms {
        return Err(TokenError::NotYetValid { id, in_s: (t.not_before_ms - u.now_ms).div_ceil(1000) });
    }
    if u.now_ms >= t.expires_ms {
        return Err(TokenError::Expired { id, ago_s: (u.now_ms - t.expires_ms) / 1000 });
    }
    if let Some(cidr) = &t.cidr {
        let net: Option<ipnet::IpNet> = cidr.parse().ok();
        if !net.is_some_and(|n| n.contains(&u.source)) {
            return Err(TokenError::WrongSource { id, cidr: cidr.clone(), from: u.source });
        }
    }
    if !t.scope.allows(u.action, u.target, u.build_id) {
        return Err(TokenError::OutOfScope {
            id,
            scope: t.scope.to_string(),
            action: u.action.to_owned(),
            target: u.target.to_owned(),
            build_id: u.build_id.to_owned(),
        });
    }
    for (what, max, used, asked) in [
        ("calls", t.max_calls, t.used.calls, 1),
        ("files", t.max_files, t.used.files, u.files),
        ("bytes", t.max_bytes, t.used.bytes, u.bytes),
    ] {
        if let Some(max) = max
            && used.saturating_add(asked) > max
        {
            return Err(TokenError::QuotaUsedUp { id, what, max, used, asked });
        }
    }
    t.used.calls += 1;
    t.used.files = t.used.files.saturating_add(u.files);
    t.used.bytes = t.used.bytes.saturating_add(u.bytes);
    Ok(t)
}

impl Store {
    /// Creates a token. Returns the token, which is not stored and cannot
    /// be shown again, and its record.
    pub fn create_token(&self, spec: &TokenSpec) -> std::result::Result<(String, TokenRecord), String> {
        if spec.ttl_ms == 0 || spec.ttl_ms > MAX_TTL_MS {
            return Err(format!("a token lives from 1 ms to 30 days, not {} ms", spec.ttl_ms));
        }
        let now = now_ms();
        let start = spec.not_before_ms.unwrap_or(now);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let key = digest(&secret);
        let id = self.claim_token_id(&key).map_err(|e| e.to_string())?;
        let record = TokenRecord {
            id,
            scope: spec.scope.clone(),
            created_ms: now,
            not_before_ms: start,
            expires_ms: start.saturating_add(spec.ttl_ms),
            max_calls: spec.max_calls,
            max_files: spec.max_files,
            max_bytes: spec.max_bytes,
            cidr: spec.cidr.map(|c| c.to_string()),
            used: TokenUsage::default(),
            revoked_ms: None,
            note: spec.note.clone(),
            run: spec.run.clone(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        self.db.insert(Tree::Tokens, key.as_bytes(), value).map_err(|e| e.to_string())?;
        // A token must be on disk before anyone is handed it.
        self.db.flush().map_err(|e| e.to_string())?;
        Ok((secret, record))
    }

    /// Every token, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut all = Vec::new();
        for (key, value) in self.db.all(Tree::Tokens)? {
            all.push(crate::decode::<TokenRecord>(&key, &value)?);
        }
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// A new token id, claimed for the token whose secret has digest
    /// `key`: 128 random bits, and checked against every id claimed
    /// before, so an id names one token only.
    fn claim_token_id(&self, key: &str) -> Result<String> {
        loop {
            let id = format!("tok-{}", hex::encode(rand::random::<[u8; 16]>()));
            if self.db.cas(Tree::TokenIds, id.as_bytes(), None, Some(key.as_bytes().to_vec()))?.is_ok() {
                return Ok(id);
            }
        }
    }

    /// The key of the token with this id: from the id index, or, for
    /// tokens made before there was one, by looking at every token (and
    /// refusing an id that several of those share).
    fn token_key(&self, id: &str) -> Result<Vec<u8>> {
        if let Some(key) = self.db.get(Tree::TokenIds, id.as_bytes())? {
            return Ok(key);
        }
        let mut found = Vec::new();
        for (key, value) in self.db.all(Tree::Tokens)? {
            if crate::decode::<TokenRecord>(&key, &value)?.id == id {
                found.push(key);
            }
        }
        match found.len() {
            0 => Err(StoreError::NoToken(id.to_owned())),
            1 => Ok(found.remove(0)),
            count => Err(StoreError::AmbiguousToken { id: id.to_owned(), count }),
        }
    }

    /// Revokes the token with this id; revoking twice is not an error.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        let key = self.token_key(id)?;
        // Only this record changes, and a use racing with the revocation
        // either lands before it or sees it.
        // A record that does not decode is left as it is (returning
        // nothing here would delete it); reading it back reports it.
        let updated = self.db.update(Tree::Tokens, &key, |old| {
            let old = old?;
            let Ok(mut t) = serde_json::from_slice::<TokenRecord>(old) else { return Some(old.to_vec()) };
            t.revoked_ms.get_or_insert_with(now_ms);
            Some(serde_json::to_vec(&t).unwrap_or_else(|_| old.to_vec()))
        })?;
        self.db.flush()?;
        let value = updated.ok_or_else(|| StoreError::NoToken(id.to_owned()))?;
        crate::decode(&key, &value)
    }

    /// Revokes every token minted for a run that is still usable, and
    /// returns their ids. With `run` set, only that run's.
    ///
    /// An engine that opens the store is the only process using it (sled
    /// locks the directory), so any run-minted token it finds live at
    /// start belongs to a run that died with its engine.
    pub fn revoke_run_tokens(&self, run: Option<&str>) -> Result<Vec<String>> {
        let now = now_ms();
        let mut revoked = Vec::new();
        for t in self.tokens()? {
            let minted_for = match (&t.run, run) {
                (Some(r), Some(wanted)) => r == wanted,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if minted_for && t.revoked_ms.is_none() && now < t.expires_ms {
                self.revoke_token(&t.id)?;
                revoked.push(t.id);
            }
        }
        Ok(revoked)
    }

    /// Checks `token` for one use without charging it: what a server
    /// asks before it reads a request's body, whose size the use is then
    /// charged for with [`use_token`](Self::use_token).
    pub fn peek_token(&self, token: &str, u: &TokenUse<'_>) -> std::result::Result<TokenRecord, TokenError> {
        let key = token_key(token)?;
        let Some(old) = self.db.get(Tree::Tokens, key.as_bytes())? else {
            return Err(TokenError::Unknown);
        };
        let record = crate::decode::<TokenRecord>(key.as_bytes(), &old)?;
        check(record.clone(), u)?;
        Ok(record)
    }

    /// Checks `token` for one use and charges it, atomically: of two
    /// uses racing for a token's last call, one gets it.
    pub fn use_token(&self, token: &str, u: &TokenUse<'_>) -> std::result::Result<TokenRecord, TokenError> {
        let key = token_key(token)?;
        loop {
            let Some(old) = self.db.get(Tree::Tokens, key.as_bytes())? else {
                return Err(TokenError::Unknown);
            };
            let record = crate::decode::<TokenRecord>(key.as_bytes(), &old)?;
            let charged = check(record, u)?;
            let new = serde_json::to_vec(&charged).map_err(|e| StoreError::Corrupt { key: key.clone(), source: e })?;
            match self.db.cas(Tree::Tokens, key.as_bytes(), Some(&old), Some(new))? {
                Ok(()) => return Ok(charged),
                // Another use got there first: check again against it.
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        (dir, store)
    }

    fn publish<'a>(build_id: &'a str, now_ms: u64) -> TokenUse<'a> {
        TokenUse {
            action: "publish",
            target: "snapshots",
            build_id,
            source: IpAddr::V4(Ipv4Addr::LOCALHOST),
            files: 10,
            bytes: 1000,
            now_ms,
        }
    }

    fn spec() -> TokenSpec {
        TokenSpec::new(Scope::parse("publish:snapshots/pr-1-").expect("scope"), 60_000)
    }

    #[test]
    fn scopes_parse_and_print() {
        let s = Scope::parse("publish:snapshots/pr-1-*").expect("scope");
        assert_eq!(s.to_string(), "publish:snapshots/pr-1-");
        assert!(s.allows("publish", "snapshots", "pr-1-abc"));
        assert!(!s.allows("publish", "snapshots", "pr-2-abc"));
        assert!(!s.allows("publish", "releases", "pr-1-abc"));
        assert_eq!(Scope::parse("publish:releases").expect("scope").to_string(), "publish:releases/*");
        for bad in ["publish", "deploy:prod/x", "publish:/x", "publish:snap shots/x", "publish:s/../x", "publish:s/.."]
        {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_is_stored_by_its_digest_only() {
        let (dir, store) = store();
        let (secret, record) = store.create_token(&spec()).expect("create");
        assert!(secret.starts_with(TOKEN_PREFIX) && secret.len() == 68);
        store.flush().expect("flush");
        drop(store);
        let mut found = false;
        let mut dirs = vec![dir.path().join("db")];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(d).expect("db").flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                    continue;
                }
                let bytes = std::fs::read(entry.path()).expect("read");
                found |= bytes.windows(record.id.len()).any(|w| w == record.id.as_bytes());
                assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the token is on disk");
            }
        }
        assert!(found, "the record is on disk");
    }

    /// Issue 12, item 7: ids had 32 random bits and no uniqueness check,
    /// so revoking by id could hit another token.
    #[test]
    fn token_ids_are_long_unique_and_revoke_only_their_token() {
        crate::on_each_backend(|store| {
            let mut ids = std::collections::HashSet::new();
            let mut secrets = Vec::new();
            for _ in 0..200 {
                let (secret, record) = store.create_token(&spec()).expect("create");
                let random = record.id.strip_prefix("tok-").expect("prefix");
                assert_eq!(random.len(), 32, "an id carries 128 random bits: {}", record.id);
                assert!(ids.insert(record.id.clone()), "id {} given twice", record.id);
                secrets.push((secret, record.id));
            }
            let (victim, id) = &secrets[17];
            store.revoke_token(id).expect("revoke");
            for (secret, other) in &secrets {
                let revoked =
                    matches!(store.use_token(secret, &publish("pr-1-x", now_ms())), Err(TokenError::Revoked { .. }));
                assert_eq!(revoked, secret == victim, "token {other}");
            }
            // An id is claimed before its token is stored: it cannot be claimed twice.
            let claimed = store.db.cas(Tree::TokenIds, id.as_bytes(), None, Some(b"x".to_vec())).expect("cas");
            assert!(claimed.is_err(), "an id in use was claimed again");
        });
    }

    /// Tokens from before the id index may share a short id: revoking
    /// by it is refused instead of picking one of them.
    #[test]
    fn a_shared_legacy_id_revokes_nothing() {
        crate::on_each_backend(|store| {
            let mut keys = Vec::new();
            for _ in 0..2 {
                let (secret, mut record) = store.create_token(&spec()).expect("create");
                store.db.remove(Tree::TokenIds, record.id.as_bytes()).expect("unindex");
                record.id = "tok-0badf00d".into();
                store
                    .db
                    .insert(Tree::Tokens, digest(&secret).as_bytes(), serde_json::to_vec(&record).expect("json"))
                    .expect("insert");
                keys.push(secret);
            }
            let refused = store.revoke_token("tok-0badf00d");
            assert!(matches!(refused, Err(StoreError::AmbiguousToken { count: 2, .. })), "{refused:?}");
            for secret in &keys {
                store.use_token(secret, &publish("pr-1-x", now_ms())).expect("still usable");
            }
        });
    }

    /// A peek checks like a use and charges nothing.
    #[test]
    fn peeking_at_a_token_charges_nothing() {
        crate::on_each_backend(|store| {
            let mut spec = spec();
            spec.max_calls = Some(1);
            let (secret, _) = store.create_token(&spec).expect("create");
            for _ in 0..3 {
                store.peek_token(&secret, &publish("pr-1-x", now_ms())).expect("peek");
            }
            assert!(matches!(
                store.peek_token(&secret, &publish("pr-2-x", now_ms())),
                Err(TokenError::OutOfScope { .. })
            ));
            store.use_token(&secret, &publish("pr-1-x", now_ms())).expect("the one call");
            assert!(matches!(
                store.peek_token(&secret, &publish("pr-1-x", now_ms())),
                Err(TokenError::QuotaUsedUp { .. })
            ));
        });
    }

    #[test]
    fn every_constraint_has_its_reason() {
        crate::on_each_backend(|store| {
            // A moment from now: every token below exists by then.
            let now = now_ms() + 1000;
            let (t, _) = store.create_token(&spec()).expect("create");
            assert!(store.use_token(&t, &publish("pr-1-a", now)).is_ok());
            let err = |t: &str, u: TokenUse<'_>| store.use_token(t, &u).expect_err("refused").to_string();

            assert!(
                err(&t, publish("pr-2-a", now))
                    .contains("allows `publish:snapshots/pr-1-`, not publish to `snapshots/pr-2-a`")
            );
            assert!(err(&t, publish("pr-1-a", now + 61_000)).contains("expired"));
            assert_eq!(err("not-a-token", publish("pr-1-a", now)), TokenError::Malformed.to_string());
            let other = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
            assert_eq!(err(&other, publish("pr-1-a", now)), TokenError::Unknown.to_string());

            let later = TokenSpec { not_before_ms: Some(now + 3_600_000), ..spec() };
            let (t, _) = store.create_token(&later).expect("create");
            assert!(err(&t, publish("pr-1-a", now)).contains("is not valid yet; it will be in 3600 s"));

            let (t, _) = store
                .create_token(&TokenSpec { cidr: Some("10.0.0.0/8".parse().expect("cidr")), ..spec() })
                .expect("create");
            let e = err(&t, publish("pr-1-a", now));
            assert!(e.contains("may only be used from 10.0.0.0/8, not from 127.0.0.1"), "{e}");

            let (t, _) = store.create_token(&TokenSpec { max_calls: Some(1), ..spec() }).expect("create");
            assert!(store.use_token(&t, &publish("pr-1-a", now)).is_ok());
            assert!(err(&t, publish("pr-1-a", now)).contains("has used up its calls: 1 of 1 used"));

            let (t, _) = store.create_token(&TokenSpec { max_files: Some(15), ..spec() }).expect("create");
            assert!(store.use_token(&t, &publish("pr-1-a", now)).is_ok());
            assert!(
                err(&t, publish("pr-1-a", now))
                    .contains("has used up its files: 10 of 15 used, and this asks for 10 more")
            );

            let (t, _) = store.create_token(&TokenSpec { max_bytes: Some(999), ..spec() }).expect("create");
            assert!(err(&t, publish("pr-1-a", now)).contains("has used up its bytes: 0 of 999 used"));

            let (t, record) = store.create_token(&spec()).expect("create");
            store.revoke_token(&record.id).expect("revoke");
            assert_eq!(err(&t, publish("pr-1-a", now)), format!("token {} was revoked", record.id));
            assert!(matches!(store.revoke_token("tok-nope"), Err(StoreError::NoToken(_))));
        });
    }

    #[test]
    fn run_tokens_are_revoked_by_run() {
        crate::on_each_backend(|store| {
            let (_, mine) = store.create_token(&TokenSpec { run: Some("r1".into()), ..spec() }).expect("create");
            let (_, other) = store.create_token(&TokenSpec { run: Some("r2".into()), ..spec() }).expect("create");
            let (_, admin) = store.create_token(&spec()).expect("create");
            assert_eq!(store.revoke_run_tokens(Some("r1")).expect("revoke"), vec![mine.id.clone()]);
            assert_eq!(store.revoke_run_tokens(None).expect("revoke"), vec![other.id.clone()]);
            let live: Vec<String> =
                store.tokens().expect("tokens").into_iter().filter(|t| t.revoked_ms.is_none()).map(|t| t.id).collect();
            assert_eq!(live, vec![admin.id], "a token made by a person is left alone");
        });
    }

    #[test]
    fn racing_uses_share_the_last_call_fairly() {
        crate::on_each_backend(|store| {
            let (t, record) = store.create_token(&TokenSpec { max_calls: Some(50), ..spec() }).expect("create");
            let now = now_ms() + 1000;
            let granted = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        for _ in 0..20 {
                            if store.use_token(&t, &publish("pr-1-a", now)).is_ok() {
                                granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(granted.into_inner(), 50);
            let stored = store.tokens().expect("tokens").into_iter().find(|r| r.id == record.id).expect("listed");
            assert_eq!(stored.used.calls, 50);
        });
    }
}
