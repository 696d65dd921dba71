//! One digest for a directory tree: what a step mounting it can see.

use sha2::{Digest as _, Sha256};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// The sha256 (hex) of a file's bytes, read as they stream.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The sha256 (hex) of a directory tree: every entry's path, kind and
/// content (a file's bytes, a link's target), in name order. Two trees
/// with the same digest look the same to a step that mounts them, except
/// for their modification times. Links are not followed.
pub fn tree_digest(dir: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    walk(dir, &mut Vec::new(), &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn walk(dir: &Path, prefix: &mut Vec<u8>, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let len = prefix.len();
        prefix.extend_from_slice(entry.file_name().as_bytes());
        let kind = entry.file_type()?;
        // Each record: a kind letter, the path, NUL, what it holds, NUL.
        if kind.is_dir() {
            record(hasher, b'd', prefix, b"");
            prefix.push(b'/');
            walk(&entry.path(), prefix, hasher)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            record(hasher, b'l', prefix, target.as_os_str().as_bytes());
        } else if kind.is_file() {
            record(hasher, b'f', prefix, file_digest(&entry.path())?.as_bytes());
        } else {
            record(hasher, b'o', prefix, b"");
        }
        prefix.truncate(len);
    }
    Ok(())
}

fn record(hasher: &mut Sha256, kind: u8, path: &[u8], content: &[u8]) {
    hasher.update([kind]);
    hasher.update(path);
    hasher.update([0]);
    hasher.update(content);
    hasher.update([0]);
}

#[cfg(test)]
mod tests {
    use super::tree_digest;

    #[test]
    fn a_tree_is_named_by_its_paths_and_contents() {
        let a = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(a.path().join("x/y")).expect("mkdir");
        std::fs::write(a.path().join("x/y/f"), "one").expect("write");
        std::fs::write(a.path().join("g"), "two").expect("write");
        let first = tree_digest(a.path()).expect("digest");
        assert_eq!(first, tree_digest(a.path()).expect("digest"));
        std::fs::write(a.path().join("x/y/f"), "One").expect("write");
        let changed = tree_digest(a.path()).expect("digest");
        assert_ne!(first, changed, "a file's bytes count");
        std::fs::rename(a.path().join("g"), a.path().join("h")).expect("rename");
        assert_ne!(changed, tree_digest(a.path()).expect("digest"), "a file's name counts");
        std::fs::create_dir(a.path().join("empty")).expect("mkdir");
        let with_dir = tree_digest(a.path()).expect("digest");
        std::os::unix::fs::symlink("h", a.path().join("link")).expect("link");
        assert_ne!(with_dir, tree_digest(a.path()).expect("digest"), "a link counts");
    }
}
