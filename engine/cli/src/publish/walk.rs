//! Finding the files to publish: globs and directories, each file with
//! the path it is published under, its stat and its stat-cache key.

use super::cache::Stat;
use super::{Fail, cores, fail};
use crate::exit;
use airlock_host::publish::check_path;
use std::path::{Component, Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// One file to publish, as found.
pub(super) struct Found {
    /// Where it is published.
    pub(super) path: String,
    /// Where it is, as the arguments name it.
    pub(super) file: PathBuf,
    /// Its absolute path: its key in the stat cache.
    pub(super) key: String,
    pub(super) stat: Stat,
}

/// Every regular file the arguments name, sorted by published path.
pub(super) fn find(globs: &[String], strip: usize) -> Result<Vec<Found>, Fail> {
    let mut found = Vec::new();
    for arg in globs {
        let is_pattern = arg.contains(['*', '?', '[']);
        let paths: Vec<PathBuf> = if is_pattern {
            let entries =
                glob::glob(arg).map_err(|e| fail(exit::USAGE, format!("`{arg}` is not a valid glob: {e}")))?;
            entries.map(|e| e.map_err(|e| fail(exit::ERROR, e.to_string()))).collect::<Result<_, _>>()?
        } else {
            vec![PathBuf::from(arg)]
        };
        if paths.is_empty() {
            return Err(fail(exit::USAGE, format!("`{arg}` matches no file")));
        }
        for p in paths {
            let meta = std::fs::symlink_metadata(&p)
                .map_err(|e| fail(exit::ERROR, format!("cannot read `{}`: {e}", p.display())))?;
            if meta.is_dir() {
                found.extend(walk(&p, strip, list_threads())?);
            } else if meta.is_file() {
                found.push(Found { path: published_path(&p, strip)?, key: key_of(&p), file: p, stat: Stat::of(&meta) });
            } else {
                return Err(not_regular(&p, &meta));
            }
        }
    }
    if found.is_empty() {
        return Err(fail(exit::USAGE, "nothing to publish: the arguments name no regular file"));
    }
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    // The same file named twice (`a` and `./a`) is one file; two files
    // for one published path are a mistake.
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        match out.last() {
            Some(last) if last.path == f.path => {
                if (last.stat.dev, last.stat.inode) != (f.stat.dev, f.stat.inode) {
                    return Err(fail(
                        exit::USAGE,
                        format!(
                            "`{}` and `{}` would both be published as `{}`",
                            last.file.display(),
                            f.file.display(),
                            f.path
                        ),
                    ));
                }
            }
            _ => out.push(f),
        }
    }
    Ok(out)
}

/// Threads that list a tree: more than there are cores, because a
/// `stat` of a file whose inode is not in memory waits for the disk, and
/// waits overlap. (10,008 files after the page cache was dropped: 0.15 s
/// listed by 2 threads, 0.10 s by 8; with the inodes in memory 8 cost
/// no more than 2.)
fn list_threads() -> usize {
    (cores() * 4).clamp(4, 32)
}

/// The absolute path of `file`, `.` parts dropped, as the cache keys it.
fn key_of(file: &Path) -> String {
    std::path::absolute(file).unwrap_or_else(|_| file.to_owned()).display().to_string()
}

pub(super) fn not_regular(p: &Path, meta: &std::fs::Metadata) -> Fail {
    let what = if meta.file_type().is_symlink() { "a symbolic link" } else { "not a regular file" };
    fail(exit::FAILED, format!("`{}` is {what}; airlock publishes regular files only", p.display()))
        .hint("publish what the link points to, or leave it out of the globs")
}

/// The parts of `given` that a published path is made of: no `.`, no
/// root, never `..`.
fn parts(given: &Path) -> Result<Vec<&str>, Fail> {
    let mut parts = Vec::new();
    for c in given.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| {
                fail(exit::FAILED, format!("`{}` is not UTF-8; published paths are", given.display()))
            })?),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(fail(exit::USAGE, format!("`{}` goes up with `..`", given.display()))
                    .hint("run airlock publish from a directory above the files, or use --strip"));
            }
        }
    }
    Ok(parts)
}

/// The published path of `file` as given: no `./`, no root, `strip`
/// leading directories fewer.
pub(super) fn published_path(given: &Path, strip: usize) -> Result<String, Fail> {
    let parts = parts(given)?;
    if parts.len() <= strip {
        return Err(fail(exit::USAGE, format!("`--strip {strip}` leaves nothing of `{}`", given.display())));
    }
    let path = parts[strip..].join("/");
    check_path(&path).map_err(|e| fail(exit::FAILED, e.to_string()))?;
    Ok(path)
}

/// A directory still to list: where it is as given, and its path below
/// the walk's root (empty for the root itself, else ending with `/`).
struct Dir {
    given: PathBuf,
    below: String,
}

/// Every regular file under `root`, listed by `threads` threads at once
/// (a tree of small files costs a `stat` each: the kernel's part of that
/// spreads over the cores, and its waits for the disk overlap).
fn walk(root: &Path, strip: usize, threads: usize) -> Result<Vec<Found>, Fail> {
    // What every file's published path and key start with, worked out once.
    let root_parts = parts(root)?;
    let kept: Vec<&str> = root_parts.iter().skip(strip).copied().collect();
    let prefix = if kept.is_empty() { String::new() } else { format!("{}/", kept.join("/")) };
    let strip_below = strip.saturating_sub(root_parts.len());
    let root_key = key_of(root);
    let root_key = root_key.trim_end_matches('/');

    let publish_as = |given: &Path, below: &str| -> Result<String, Fail> {
        // `strip` may reach below the root: drop that many more parts.
        let mut rest = below;
        for _ in 0..strip_below {
            match rest.split_once('/') {
                Some((_, after)) => rest = after,
                None => {
                    return Err(fail(
                        exit::USAGE,
                        format!("`--strip {strip}` leaves nothing of `{}`", given.display()),
                    ));
                }
            }
        }
        let path = format!("{prefix}{rest}");
        check_path(&path).map_err(|e| fail(exit::FAILED, e.to_string()))?;
        Ok(path)
    };
    let list = |d: &Dir, found: &mut Vec<Found>| -> Result<Vec<Dir>, Fail> {
        let cannot_list = |e: std::io::Error| fail(exit::ERROR, format!("cannot list `{}`: {e}", d.given.display()));
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(&d.given).map_err(cannot_list)? {
            let entry = entry.map_err(cannot_list)?;
            let given = entry.path();
            let cannot_read = |e: std::io::Error| fail(exit::ERROR, format!("cannot read `{}`: {e}", given.display()));
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(fail(exit::FAILED, format!("`{}` is not UTF-8; published paths are", given.display())));
            };
            let below = format!("{}{name}", d.below);
            // The directory's listing tells a directory from a file (a
            // `stat` only where the file system does not say); only files
            // need their stat.
            if entry.file_type().map_err(cannot_read)?.is_dir() {
                subdirs.push(Dir { given, below: below + "/" });
                continue;
            }
            let meta = entry.metadata().map_err(cannot_read)?;
            if meta.is_file() {
                let path = publish_as(&given, &below)?;
                let key = format!("{root_key}/{below}");
                found.push(Found { path, file: given, key, stat: Stat::of(&meta) });
            } else {
                return Err(not_regular(&given, &meta));
            }
        }
        Ok(subdirs)
    };

    struct Work {
        dirs: Vec<Dir>,
        /// Threads listing a directory now.
        busy: usize,
        failed: Option<Fail>,
    }
    let work =
        Mutex::new(Work { dirs: vec![Dir { given: root.to_owned(), below: String::new() }], busy: 0, failed: None });
    let more = Condvar::new();
    let worker = || {
        let mut found = Vec::new();
        let mut guard = work.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if guard.failed.is_some() {
                break;
            }
            let Some(d) = guard.dirs.pop() else {
                if guard.busy == 0 {
                    break;
                }
                guard = more.wait(guard).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            guard.busy += 1;
            drop(guard);
            let listed = list(&d, &mut found);
            guard = work.lock().unwrap_or_else(|p| p.into_inner());
            guard.busy -= 1;
            match listed {
                Ok(subdirs) => guard.dirs.extend(subdirs),
                Err(f) => {
                    guard.failed.get_or_insert(f);
                }
            }
            more.notify_all();
        }
        found
    };
    let found: Vec<Found> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(worker)).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    match work.into_inner().unwrap_or_else(|p| p.into_inner()).failed {
        Some(f) => Err(f),
        None => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_paths_drop_dots_roots_and_stripped_dirs() {
        let p = |s: &str, n| published_path(Path::new(s), n).map_err(|f| f.message);
        assert_eq!(p("./dist/app.js", 0).ok().as_deref(), Some("dist/app.js"));
        assert_eq!(p("/tmp/tree/a/b", 2).ok().as_deref(), Some("a/b"));
        assert!(p("dist/app.js", 2).expect_err("nothing left").contains("leaves nothing"));
        assert!(p("../x", 0).expect_err("up").contains("goes up"));
    }

    /// A walked tree gets the paths and keys that naming each file would.
    #[test]
    fn a_walk_names_files_as_naming_them_one_by_one_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["t/a.txt", "t/d/b.txt", "t/d/e/c.txt"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
            std::fs::write(&p, f).expect("write");
        }
        let root = dir.path().join("t");
        for strip in [0, 1, 2, 3] {
            let mut walked: Vec<(String, String)> = match walk(&root.join("."), strip, 2) {
                Ok(found) => found.into_iter().map(|f| (f.path, f.key)).collect(),
                Err(f) => vec![("error".into(), f.message)],
            };
            walked.sort();
            let mut one_by_one: Vec<(String, String)> = Vec::new();
            for f in ["a.txt", "d/b.txt", "d/e/c.txt"] {
                let given = root.join(".").join(f);
                match published_path(&given, strip) {
                    Ok(path) => one_by_one.push((path, key_of(&given))),
                    Err(_) if strip >= 2 => {}
                    Err(e) => panic!("{}", e.message),
                }
            }
            one_by_one.sort();
            if walked.first().is_some_and(|w| w.0 == "error") {
                // Some file is left with nothing: naming it alone says so too.
                assert!(one_by_one.len() < 3, "strip {strip}: {walked:?}");
                assert!(walked[0].1.contains("leaves nothing"), "{walked:?}");
            } else {
                assert_eq!(walked, one_by_one, "strip {strip}");
            }
        }
    }
}
