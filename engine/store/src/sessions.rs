//! Web sign-ins, kept in the store so that every server sharing it knows
//! them: a user signed in through one server is signed in on all, and a
//! server can forward a page's request to another with its cookie.
//!
//! Only a digest of the cookie's value is kept, as for tokens.

use crate::kv::Tree;
use crate::{Result, decode, encode, now_ms};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    expires_ms: u64,
    /// When it began, in microseconds: of two sign-ins in one
    /// millisecond, the older goes first.
    #[serde(default)]
    started_us: u64,
}

/// Why a sign-in was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The store holds as many sign-ins as it keeps.
    Full,
}

impl crate::Store {
    /// Records a sign-in of `user` under `digest` (of the cookie's
    /// value) until `expires_ms`. Expired sign-ins go first; a user keeps
    /// at most `per_user` (a new one ends their oldest), and the store at
    /// most `max`. Servers signing users in at the same moment may each
    /// pass the bounds by one.
    pub fn start_session(
        &self,
        digest: &str,
        user: &str,
        expires_ms: u64,
        per_user: usize,
        max: usize,
    ) -> Result<std::result::Result<(), SessionRefusal>> {
        let now = now_ms();
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut live = 0;
        let mut theirs = Vec::new();
        for (key, value) in self.db.all(Tree::Sessions)? {
            let record: SessionRecord = decode(&key, &value)?;
            if record.expires_ms <= now {
                self.db.remove(Tree::Sessions, &key)?;
                continue;
            }
            live += 1;
            if record.user == user {
                theirs.push((record.expires_ms, record.started_us, key));
            }
        }
        theirs.sort();
        let over = theirs.len().saturating_sub(per_user.saturating_sub(1));
        for (_, _, key) in theirs.iter().take(over) {
            self.db.remove(Tree::Sessions, key)?;
        }
        if live - over >= max {
            return Ok(Err(SessionRefusal::Full));
        }
        self.db.insert(
            Tree::Sessions,
            digest.as_bytes(),
            encode(&SessionRecord { user: user.to_owned(), expires_ms, started_us }),
        )?;
        Ok(Ok(()))
    }

    /// The user signed in under `digest`, unless that sign-in ended or
    /// expired.
    pub fn session(&self, digest: &str) -> Result<Option<String>> {
        match self.db.get(Tree::Sessions, digest.as_bytes())? {
            Some(value) => {
                let record: SessionRecord = decode(digest.as_bytes(), &value)?;
                Ok((record.expires_ms > now_ms()).then_some(record.user))
            }
            None => Ok(None),
        }
    }

    /// Ends the sign-in under `digest`.
    pub fn end_session(&self, digest: &str) -> Result<()> {
        self.db.remove(Tree::Sessions, digest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ins_are_bounded_per_user_and_in_all_and_expire() {
        crate::on_each_backend(|store| {
            let later = now_ms() + 60_000;
            for i in 0..3 {
                store.start_session(&format!("ada-{i}"), "ada", later + i, 2, 4).expect("store").expect("room");
            }
            // Ada keeps her two newest.
            assert_eq!(store.session("ada-0").expect("store"), None);
            assert_eq!(store.session("ada-1").expect("store").as_deref(), Some("ada"));
            assert_eq!(store.session("ada-2").expect("store").as_deref(), Some("ada"));
            store.start_session("bob-0", "bob", later, 2, 4).expect("store").expect("room");
            store.start_session("eve-0", "eve", later, 2, 4).expect("store").expect("room");
            // Four in all: a fifth user is refused, a user who has two
            // still signs in (ending their oldest).
            assert_eq!(store.start_session("joe-0", "joe", later, 2, 4).expect("store"), Err(SessionRefusal::Full));
            assert_eq!(store.session("joe-0").expect("store"), None);
            store.start_session("ada-3", "ada", later + 3, 2, 4).expect("store").expect("room");
            assert_eq!(store.session("ada-1").expect("store"), None);
            assert_eq!(store.session("ada-3").expect("store").as_deref(), Some("ada"));
            // Ended and expired sign-ins name nobody, and make room.
            store.end_session("ada-3").expect("store");
            assert_eq!(store.session("ada-3").expect("store"), None);
            store.start_session("old", "joe", now_ms() - 1, 2, 4).expect("store").expect("room");
            assert_eq!(store.session("old").expect("store"), None);
            store.start_session("joe-1", "joe", later, 2, 4).expect("store").expect("room");
        });
    }
}
