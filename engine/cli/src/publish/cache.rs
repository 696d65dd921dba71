//! What `airlock publish` remembers between runs, in one file: the
//! digest of each file it hashed, valid while the file's stat is the
//! same, and which digests each server's target had when it last
//! committed there.
//!
//! The file is binary and read whole at start: for a tree of 10,000
//! files it is about a megabyte, and reading it must cost less than
//! hashing what it spares. A file that is not one (an older version's
//! JSON, a broken write) is ignored and written anew.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The first bytes of the file; the number is its format's version.
const MAGIC: &[u8] = b"airlock publish cache 2\n";

/// Digests remembered for one server's target, at most; past it the
/// record starts again from the last commit.
const MAX_PRESENT: usize = 1 << 20;

/// What the cache remembers of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
    pub(super) inode: u64,
    pub(super) dev: u64,
}

impl Stat {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// FNV-1a: the cache's keys are paths this machine chose, so a hash
/// that is fast on short strings serves better than a keyed one.
#[derive(Default)]
pub(super) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The stat cache and the record of what servers have.
#[derive(Default, Debug, PartialEq)]
pub(super) struct StatCache {
    /// Digest of each file by its absolute path, valid while the stat matches.
    pub(super) files: HashMap<String, (Stat, [u8; 32]), BuildHasherDefault<Fnv>>,
    /// For each `SERVER TARGET`, the digests it held after a commit from
    /// here, sorted: looked up by binary search, read without rehashing.
    present: HashMap<String, Vec<[u8; 32]>>,
}

impl StatCache {
    /// The cache at `path`, or an empty one if there is none or it cannot be read.
    pub(super) fn load(path: &Path) -> Self {
        std::fs::read(path).ok().and_then(|b| Self::decode(&b)).unwrap_or_default()
    }

    /// Writes the cache to `path` (through a temporary file, renamed).
    pub(super) fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(tmp, path)
    }

    /// Whether `place` held every one of `digests` when this client last
    /// committed there.
    pub(super) fn all_present<'a>(&self, place: &str, mut digests: impl Iterator<Item = &'a [u8; 32]>) -> bool {
        self.present.get(place).is_some_and(|set| digests.all(|d| set.binary_search(d).is_ok()))
    }

    /// Records that `place` holds `digests` (a commit there succeeded);
    /// returns whether the record changed.
    pub(super) fn record_present<'a>(&mut self, place: &str, digests: impl Iterator<Item = &'a [u8; 32]>) -> bool {
        let set = self.present.entry(place.to_owned()).or_default();
        let new: Vec<[u8; 32]> = digests.filter(|d| set.binary_search(d).is_err()).copied().collect();
        if new.is_empty() {
            return false;
        }
        if set.len() + new.len() > MAX_PRESENT {
            set.clear();
        }
        set.extend(new);
        set.sort_unstable();
        set.dedup();
        true
    }

    /// Forgets what `place` was thought to hold (a commit found a blob missing).
    pub(super) fn forget(&mut self, place: &str) {
        self.present.remove(place);
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + self.files.len() * 140);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for (key, (stat, digest)) in &self.files {
            put_str(&mut out, key);
            out.extend_from_slice(&stat.size.to_le_bytes());
            out.extend_from_slice(&stat.mtime_ns.to_le_bytes());
            out.extend_from_slice(&stat.ctime_ns.to_le_bytes());
            out.extend_from_slice(&stat.inode.to_le_bytes());
            out.extend_from_slice(&stat.dev.to_le_bytes());
            out.extend_from_slice(digest);
        }
        out.extend_from_slice(&(self.present.len() as u64).to_le_bytes());
        for (place, digests) in &self.present {
            put_str(&mut out, place);
            out.extend_from_slice(&(digests.len() as u64).to_le_bytes());
            for d in digests {
                out.extend_from_slice(d);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes.strip_prefix(MAGIC)?);
        // Counts are checked against what is left, so a damaged file
        // cannot make this allocate more than its own size.
        let n = r.count(4 + 8 + 16 + 16 + 8 + 8 + 32)?;
        let mut files = HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default());
        for _ in 0..n {
            let key = r.string()?;
            let stat = Stat {
                size: u64::from_le_bytes(r.array()?),
                mtime_ns: i128::from_le_bytes(r.array()?),
                ctime_ns: i128::from_le_bytes(r.array()?),
                inode: u64::from_le_bytes(r.array()?),
                dev: u64::from_le_bytes(r.array()?),
            };
            files.insert(key, (stat, r.array()?));
        }
        let places = r.count(4 + 8)?;
        let mut present = HashMap::with_capacity(places);
        for _ in 0..places {
            let place = r.string()?;
            let n = r.count(32)?;
            let mut set = Vec::with_capacity(n);
            for _ in 0..n {
                set.push(r.array()?);
            }
            // Written sorted; a file that is not is no cache.
            if !set.is_sorted() {
                return None;
            }
            present.insert(place, set);
        }
        r.0.is_empty().then_some(Self { files, present })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the cache's fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A count of items of at least `each` bytes, if that many could follow.
    fn count(&mut self, each: usize) -> Option<usize> {
        let n = usize::try_from(u64::from_le_bytes(self.array()?)).ok()?;
        (n.checked_mul(each)? <= self.0.len()).then_some(n)
    }

    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatCache {
        let mut c = StatCache::default();
        let stat = Stat { size: 5, mtime_ns: -1, ctime_ns: 1 << 70, inode: 9, dev: 2 };
        c.files.insert("/tree/a.txt".into(), (stat, [7; 32]));
        c.files.insert("/tree/ü.txt".into(), (Stat { size: 0, ..stat }, [8; 32]));
        assert!(c.record_present("http://h:1 snaps", [[7; 32], [8; 32]].iter()));
        assert!(!c.record_present("http://h:1 snaps", [[7; 32]].iter()), "nothing new");
        c
    }

    #[test]
    fn the_cache_reads_back_what_it_wrote() {
        let c = sample();
        assert_eq!(StatCache::decode(&c.encode()), Some(c));
        assert_eq!(StatCache::decode(&StatCache::default().encode()), Some(StatCache::default()));
    }

    #[test]
    fn a_damaged_or_foreign_file_is_no_cache() {
        let bytes = sample().encode();
        for cut in [0, MAGIC.len(), MAGIC.len() + 3, bytes.len() - 1] {
            assert_eq!(StatCache::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(StatCache::decode(&longer), None, "trailing bytes");
        // A count larger than the file cannot allocate.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(StatCache::decode(&huge), None);
        assert_eq!(StatCache::decode(br#"{"version":1,"files":{}}"#), None, "the old JSON cache");
    }

    #[test]
    fn presence_is_per_server_and_target_and_can_be_forgotten() {
        let mut c = sample();
        assert!(c.all_present("http://h:1 snaps", [[7; 32]].iter()));
        assert!(!c.all_present("http://h:1 snaps", [[7; 32], [9; 32]].iter()));
        assert!(!c.all_present("http://h:1 other", [[7; 32]].iter()));
        c.forget("http://h:1 snaps");
        assert!(!c.all_present("http://h:1 snaps", [[7; 32]].iter()));
    }
}
