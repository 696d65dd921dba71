//! A workspace as a guest may leave it: any tree of files, directories,
//! symbolic and hard links with any names. Measuring it for the quota and
//! extracting outputs from it never panic, never look outside it, and
//! take out only regular files, each stored under its true digest.

#![no_main]

use airlock_host::{ArtifactStore, ExtractLimits, extract};
use airlock_sandbox::{Quota, measure};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Arbitrary, Debug)]
enum Entry {
    File { dir: u8, name: Vec<u8>, content: Vec<u8> },
    Dir { dir: u8, name: Vec<u8> },
    Symlink { dir: u8, name: Vec<u8>, target: Vec<u8> },
    Hardlink { dir: u8, name: Vec<u8>, to: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    entries: Vec<Entry>,
    patterns: Vec<String>,
    max_files: u8,
}

fuzz_target!(|input: Input| {
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    std::fs::create_dir(&ws).expect("mkdir");
    // A file beside the workspace that must never be taken out.
    std::fs::write(root.path().join("secret"), "outside").expect("write");
    let mut dirs: Vec<PathBuf> = vec![ws.clone()];
    let mut files: Vec<PathBuf> = Vec::new();
    for e in input.entries.iter().take(64) {
        let (dir, name) = match e {
            Entry::File { dir, name, .. }
            | Entry::Dir { dir, name }
            | Entry::Symlink { dir, name, .. }
            | Entry::Hardlink { dir, name, .. } => (dir, OsStr::from_bytes(name)),
        };
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            continue;
        }
        let path = dirs[*dir as usize % dirs.len()].join(name);
        match e {
            Entry::File { content, .. } => {
                if std::fs::write(&path, content).is_ok() {
                    files.push(path);
                }
            }
            Entry::Dir { .. } => {
                if std::fs::create_dir(&path).is_ok() {
                    dirs.push(path);
                }
            }
            Entry::Symlink { target, .. } => {
                let _ = std::os::unix::fs::symlink(OsStr::from_bytes(target), path);
            }
            Entry::Hardlink { to, .. } => {
                if let Some(to) = files.get(*to as usize % files.len().max(1)) {
                    let _ = std::fs::hard_link(to, path);
                }
            }
        }
    }
    let _ = measure(&ws, &Quota { bytes: 1 << 20, entries: 1000 });
    let store = ArtifactStore::new(root.path().join("store"));
    let limits = ExtractLimits { max_files: input.max_files as usize, ..ExtractLimits::default() };
    let patterns: Vec<String> = input.patterns.into_iter().take(8).collect();
    if let Ok(outputs) = extract(&ws, &patterns, &limits, &store) {
        assert!(outputs.len() <= limits.max_files);
        for o in outputs {
            let on_disk = ws.join(&o.path);
            let meta = std::fs::symlink_metadata(&on_disk).expect("an output exists in the workspace");
            assert!(meta.is_file(), "{} is not a regular file", o.path);
            let stored = std::fs::read(store.path(&o.sha256).expect("digest")).expect("stored");
            assert_eq!(hex::encode(Sha256::digest(&stored)), o.sha256);
            assert_ne!(stored, b"outside", "took out the file beside the workspace");
        }
    }
});
