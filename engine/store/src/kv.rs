//! Ordered trees of keys and values: the one seam between the store's
//! records and the database that keeps them. Every operation of
//! [`Store`](crate::Store) is written once, against [`Db`]; [`Db`] is
//! sled in the state directory (the default, nothing to install) or
//! PostgreSQL (see [`crate::postgres`]).
//!
//! What both give: keys ordered as bytes; single-key compare-and-swap;
//! transactions over several trees that either apply whole or not at
//! all and see no one else's writes half done (retried on conflict);
//! ids that only grow.

use crate::postgres::PgDb;
use crate::{Result, StoreError};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionalTree, UnabortableTransactionError};

/// The trees of the store. Their names are sled's tree names and the
/// `tree` column of the PostgreSQL table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tree {
    Runs,
    Steps,
    Events,
    Logs,
    Artifacts,
    Tokens,
    TokenIds,
    Approvals,
    Keys,
    Deliveries,
    Received,
    Statuses,
    StepCache,
    /// sled's leases (PostgreSQL keeps them in a table of their own).
    Leases,
    Jobs,
    /// Where each engine can be reached by the others (see `Store::announce`).
    Servers,
    /// Web sign-ins, so that any server knows them.
    Sessions,
}

impl Tree {
    pub(crate) const ALL: [Tree; 17] = [
        Tree::Runs,
        Tree::Steps,
        Tree::Events,
        Tree::Logs,
        Tree::Artifacts,
        Tree::Tokens,
        Tree::TokenIds,
        Tree::Approvals,
        Tree::Keys,
        Tree::Deliveries,
        Tree::Received,
        Tree::Statuses,
        Tree::StepCache,
        Tree::Leases,
        Tree::Jobs,
        Tree::Servers,
        Tree::Sessions,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Tree::Runs => "runs",
            Tree::Steps => "steps",
            Tree::Events => "events",
            Tree::Logs => "logs",
            Tree::Artifacts => "artifacts",
            Tree::Tokens => "tokens",
            Tree::TokenIds => "token_ids",
            Tree::Approvals => "approvals",
            Tree::Keys => "idempotency",
            Tree::Deliveries => "deliveries",
            Tree::Received => "deliveries_received",
            Tree::Statuses => "forge_statuses",
            Tree::StepCache => "step_cache",
            Tree::Leases => "leases",
            Tree::Jobs => "jobs",
            Tree::Servers => "servers",
            Tree::Sessions => "sessions",
        }
    }
}

/// A key and its value.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// Why a transaction's closure stopped.
pub(crate) enum TxError {
    /// The operation refuses: the transaction is rolled back and this is
    /// its error.
    Abort(StoreError),
    /// sled saw a conflict (it runs the closure again) or failed.
    Sled(UnabortableTransactionError),
    /// PostgreSQL failed; a serialization failure runs it again.
    Pg(crate::postgres::PgError),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Abort(e)
    }
}

/// What a transaction's closure returns.
pub(crate) type TxResult<T> = std::result::Result<T, TxError>;

/// The trees a transaction reads and writes.
pub(crate) enum Txn<'a> {
    Sled { views: &'a [TransactionalTree], trees: &'a [Tree] },
    Pg(crate::postgres::PgTxn<'a>),
}

impl Txn<'_> {
    fn sled_view<'v>(views: &'v [TransactionalTree], trees: &[Tree], tree: Tree) -> TxResult<&'v TransactionalTree> {
        trees.iter().position(|t| *t == tree).and_then(|i| views.get(i)).ok_or_else(|| {
            TxError::Abort(StoreError::Database(format!("tree `{}` is not in the transaction", tree.name())))
        })
    }

    pub(crate) fn get(&mut self, tree: Tree, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        match self {
            Txn::Sled { views, trees } => {
                Ok(Self::sled_view(views, trees, tree)?.get(key).map_err(TxError::Sled)?.map(|v| v.to_vec()))
            }
            Txn::Pg(t) => t.get(tree, key).map_err(TxError::Pg),
        }
    }

    pub(crate) fn insert(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) -> TxResult<()> {
        match self {
            Txn::Sled { views, trees } => {
                Self::sled_view(views, trees, tree)?.insert(key, value).map_err(TxError::Sled)?;
                Ok(())
            }
            Txn::Pg(t) => t.insert(tree, key, value).map_err(TxError::Pg),
        }
    }

    pub(crate) fn remove(&mut self, tree: Tree, key: &[u8]) -> TxResult<()> {
        match self {
            Txn::Sled { views, trees } => {
                Self::sled_view(views, trees, tree)?.remove(key).map_err(TxError::Sled)?;
                Ok(())
            }
            Txn::Pg(t) => t.remove(tree, key).map_err(TxError::Pg),
        }
    }
}

/// sled, in a directory of its own.
pub(crate) struct SledDb {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// The database under the store.
pub(crate) enum Db {
    Sled(SledDb),
    Postgres(Box<PgDb>),
}

impl Db {
    /// sled in `path`.
    ///
    /// A store dropped in this process lets go of its file lock only
    /// when sled's flusher thread next wakes, a moment later; so a lock
    /// held is waited for, briefly, before it is an error. (Processes are
    /// kept apart by the state directory's own lock, taken before this.)
    pub(crate) fn sled(path: &std::path::Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened?,
            }
        };
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<sled::Result<_>>()?;
        Ok(Db::Sled(SledDb { db, trees }))
    }

    fn tree(s: &SledDb, tree: Tree) -> &sled::Tree {
        // ALL lists every tree in declaration order.
        &s.trees[tree as usize]
    }

    pub(crate) fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Db::Sled(s) => Ok(Self::tree(s, tree).get(key)?.map(|v| v.to_vec())),
            Db::Postgres(p) => p.get(tree, key),
        }
    }

    pub(crate) fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<()> {
        match self {
            Db::Sled(s) => {
                Self::tree(s, tree).insert(key, value)?;
                Ok(())
            }
            Db::Postgres(p) => p.insert(tree, key, value),
        }
    }

    pub(crate) fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        match self {
            Db::Sled(s) => {
                Self::tree(s, tree).remove(key)?;
                Ok(())
            }
            Db::Postgres(p) => p.remove(tree, key),
        }
    }

    /// Sets `key` to `new` if it holds `old` (`None`: absent), atomically.
    /// On a mismatch, answers what it holds now.
    pub(crate) fn cas(
        &self,
        tree: Tree,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        match self {
            Db::Sled(s) => {
                Ok(Self::tree(s, tree).compare_and_swap(key, old, new)?.map_err(|e| e.current.map(|v| v.to_vec())))
            }
            Db::Postgres(p) => p.cas(tree, key, old, new),
        }
    }

    /// [`cas`](Self::cas) from `old` to `new`, on PostgreSQL only while
    /// the lease of `fence`'s run still has its fence (else
    /// [`StoreError::LeaseLost`]). sled's leases need no fence: one
    /// process holds a sled store.
    pub(crate) fn cas_fenced(
        &self,
        fence: Option<(&str, u64)>,
        tree: Tree,
        key: &[u8],
        old: &[u8],
        new: Vec<u8>,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        match (self, fence) {
            (Db::Postgres(p), Some((run, fence))) => p.cas_fenced(run, fence, tree, key, old, new),
            _ => self.cas(tree, key, Some(old), Some(new)),
        }
    }

    /// [`insert`](Self::insert), fenced as [`cas_fenced`](Self::cas_fenced) is.
    pub(crate) fn insert_fenced(
        &self,
        fence: Option<(&str, u64)>,
        tree: Tree,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<()> {
        match (self, fence) {
            (Db::Postgres(p), Some((run, fence))) => p.insert_fenced(run, fence, tree, key, value),
            _ => self.insert(tree, key, value),
        }
    }

    /// Changes `key`'s value with `change` (`None`: absent) until no one
    /// else changed it in between; answers the new value.
    pub(crate) fn update(
        &self,
        tree: Tree,
        key: &[u8],
        mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        loop {
            let old = self.get(tree, key)?;
            let new = change(old.as_deref());
            if self.cas(tree, key, old.as_deref(), new.clone())?.is_ok() {
                return Ok(new);
            }
        }
    }

    /// The pairs whose keys start with `prefix`, in key order; at most
    /// `limit` of them.
    pub(crate) fn scan_prefix(&self, tree: Tree, prefix: &[u8], limit: Option<usize>) -> Result<Vec<Pair>> {
        match self {
            Db::Sled(s) => Self::tree(s, tree)
                .scan_prefix(prefix)
                .take(limit.unwrap_or(usize::MAX))
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
                .collect(),
            Db::Postgres(p) => p.scan_prefix(tree, prefix, limit),
        }
    }

    /// Every pair of a tree, in key order.
    pub(crate) fn all(&self, tree: Tree) -> Result<Vec<Pair>> {
        self.scan_prefix(tree, b"", None)
    }

    /// The pair with the greatest key.
    pub(crate) fn last(&self, tree: Tree) -> Result<Option<Pair>> {
        match self {
            Db::Sled(s) => Ok(Self::tree(s, tree).last()?.map(|(k, v)| (k.to_vec(), v.to_vec()))),
            Db::Postgres(p) => p.last(tree),
        }
    }

    /// A number no earlier call answered, greater than those of every
    /// earlier call in this process.
    pub(crate) fn next_id(&self) -> Result<u64> {
        match self {
            Db::Sled(s) => Ok(s.db.generate_id()?),
            Db::Postgres(p) => p.next_id(),
        }
    }

    /// Makes every write so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        match self {
            Db::Sled(s) => {
                s.db.flush()?;
                Ok(())
            }
            Db::Postgres(p) => p.flush(),
        }
    }

    /// Runs `f` as one transaction over `trees`: its writes apply whole or
    /// not at all. `f` may run more than once (after a conflict), so it
    /// must not act outside the transaction.
    pub(crate) fn transaction<T>(&self, trees: &[Tree], f: impl Fn(&mut Txn<'_>) -> TxResult<T>) -> Result<T> {
        match self {
            Db::Sled(s) => {
                let sled_trees: Vec<&sled::Tree> = trees.iter().map(|t| Self::tree(s, *t)).collect();
                sled_trees[..]
                    .transaction(|views: &Vec<TransactionalTree>| {
                        let mut txn = Txn::Sled { views, trees };
                        f(&mut txn).map_err(|e| match e {
                            TxError::Abort(e) => ConflictableTransactionError::Abort(e),
                            TxError::Sled(e) => e.into(),
                            TxError::Pg(e) => ConflictableTransactionError::Abort(StoreError::Database(e.to_string())),
                        })
                    })
                    .map_err(|e| match e {
                        sled::transaction::TransactionError::Abort(e) => e,
                        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                    })
            }
            Db::Postgres(p) => p.transaction(&f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's trees are found by a tree's place in `Tree::ALL`.
    #[test]
    fn every_tree_is_in_its_place() {
        for (i, tree) in Tree::ALL.iter().enumerate() {
            assert_eq!(*tree as usize, i, "{tree:?}");
        }
    }
}
