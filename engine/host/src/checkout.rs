//! Trusted checkouts: the exact commit of a repository, fetched by the
//! host with the repository's credential, as a plain source tree that
//! steps mount read-only.
//!
//! Git does the work (Debian's `git`, driven as a command, not a
//! protocol written here). Each repository has a bare mirror under
//! `ROOT/mirrors/NAME.git` that keeps the objects fetched so far, so a
//! second commit of the same repository fetches only what is new. Its
//! config holds no remote and no credential: the URL is given on each
//! fetch, and the credential travels in the environment of that one git
//! process (`GIT_CONFIG_COUNT`, an `Authorization` header), never in a
//! file, an argument or a log. Git runs with no system or user config,
//! no prompts, and only the http(s) transports.
//!
//! The commit's tree is written out (`git archive`, read through the tar
//! crate) to `ROOT/trees/TREE`, named by its git tree id, so the same
//! tree is written once. It has no `.git`: a step sees files, never a
//! remote or a credential. Symbolic links that point outside the tree,
//! or anywhere absolute, are left out. Pipeline files are read from the
//! commit's objects, not from the tree on disk.

use airlock_model::policy::Forge;
use base64::Engine as _;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The largest file [`Checkouts::read_file`] reads (pipeline files).
pub const MAX_READ: u64 = 1 << 20;
/// Most bytes of git's error output kept for a message.
const MAX_STDERR: usize = 16 << 10;

/// Why a checkout failed. No variant holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The commit is not in the repository any more (a force push
    /// removed it before the fetch), or never was.
    #[error("commit {commit} is not in {url}: it was removed (a force push?) or never pushed; push it again to run it")]
    Gone {
        /// The commit.
        commit: String,
        /// The repository's URL.
        url: String,
    },
    /// The remote has no such branch or tag.
    #[error("{url} has no `{git_ref}`: check the name (a tag is `refs/tags/NAME`)")]
    NoRef {
        /// The ref asked for.
        git_ref: String,
        /// The repository's URL.
        url: String,
    },
    /// Git failed; its own words.
    #[error("git {what} failed: {message}")]
    Git {
        /// Which step.
        what: &'static str,
        /// What git said.
        message: String,
    },
    /// The host could not read or write its own files.
    #[error("{0}")]
    Io(String),
}

/// Where a repository is fetched from and with what.
pub struct Remote<'a> {
    /// The forge, which says how a token is presented.
    pub forge: Forge,
    /// The clone URL, with no credential in it.
    pub url: &'a str,
    /// The clone token, if the repository needs one.
    pub token: Option<&'a str>,
}

/// A commit written out as a source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit.
    pub commit: String,
    /// Its git tree id, which names the directory.
    pub tree: String,
    /// The directory: the commit's files, no `.git`.
    pub dir: PathBuf,
    /// Paths the commit changed since `since` (when that was given and
    /// could be fetched).
    pub changed: Option<Vec<String>>,
    /// Symbolic links left out because they lead outside the tree.
    pub skipped_links: Vec<String>,
}

/// The mirrors and trees of every repository, under one directory.
#[derive(Debug, Clone)]
pub struct Checkouts {
    root: PathBuf,
}

impl Checkouts {
    /// Checkouts kept under `root` (the state directory's `checkouts`).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the tree with git id `tree` is (or will be) written out.
    pub fn tree_dir(&self, tree: &str) -> PathBuf {
        self.root.join("trees").join(tree)
    }

    fn mirror(&self, repository: &str) -> PathBuf {
        self.root.join("mirrors").join(format!("{repository}.git"))
    }

    /// The repository's mirror, made empty if it is not there yet.
    fn open_mirror(&self, repository: &str) -> Result<PathBuf, CheckoutError> {
        let mirror = self.mirror(repository);
        if !mirror.join("HEAD").is_file() {
            let parent = mirror.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(parent).map_err(|e| CheckoutError::Io(format!("{}: {e}", parent.display())))?;
            git(&mirror, None, &["init", "--quiet", "--bare", "."], "init", true)?;
        }
        Ok(mirror)
    }

    /// The commit `git_ref` (`refs/heads/NAME` or `refs/tags/NAME`)
    /// points at on the remote now; an annotated tag is followed to its
    /// commit. Asks the remote (`git ls-remote`), fetches nothing.
    pub fn resolve(&self, repository: &str, remote: &Remote<'_>, git_ref: &str) -> Result<String, CheckoutError> {
        let mirror = self.open_mirror(repository)?;
        let peeled = format!("{git_ref}^{{}}");
        let out = git(&mirror, Some(remote), &["ls-remote", "--", remote.url, git_ref, &peeled], "ls-remote", false)?;
        let text = String::from_utf8_lossy(&out);
        let listed: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
        let find = |name: &str| listed.iter().find(|(_, r)| *r == name).map(|(id, _)| id.to_string());
        let id = find(&peeled)
            .or_else(|| find(git_ref))
            .ok_or_else(|| CheckoutError::NoRef { git_ref: git_ref.to_owned(), url: remote.url.to_owned() })?;
        crate::forge::checked_commit(&id)
            .map_err(|e| CheckoutError::Git { what: "ls-remote", message: format!("answered {e}") })
    }

    /// Fetches `commit` (and `since`, to tell what changed) from the
    /// remote into the repository's mirror, shallow, and writes its tree
    /// out. `repository` is the policy's name for it.
    pub fn fetch(
        &self,
        repository: &str,
        remote: &Remote<'_>,
        commit: &str,
        since: Option<&str>,
    ) -> Result<Checkout, CheckoutError> {
        let mirror = self.open_mirror(repository)?;
        if !self.has_commit(repository, commit) {
            let fetched = git(
                &mirror,
                Some(remote),
                &["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1", "--", remote.url, commit],
                "fetch",
                false,
            );
            match fetched {
                Ok(_) => {}
                Err(CheckoutError::Git { message, .. }) if gone(&message) => {
                    return Err(CheckoutError::Gone { commit: commit.to_owned(), url: remote.url.to_owned() });
                }
                Err(e) => return Err(e),
            }
        }
        // What changed needs only the other commit's tree, so it too is
        // fetched shallow; if it is gone, what changed is not known.
        let changed = since.and_then(|since| {
            if !self.has_commit(repository, since) {
                let args =
                    ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1", "--", remote.url, since];
                git(&mirror, Some(remote), &args, "fetch", false).ok()?;
            }
            let out = git(
                &mirror,
                None,
                &["diff-tree", "-r", "-z", "--name-only", "--no-commit-id", since, commit],
                "diff-tree",
                false,
            )
            .ok()?;
            Some(
                out.split(|b| *b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            )
        });
        let tree = String::from_utf8_lossy(&git(
            &mirror,
            None,
            &["rev-parse", "--verify", &format!("{commit}^{{tree}}")],
            "rev-parse",
            false,
        )?)
        .trim()
        .to_owned();
        let dir = self.tree_dir(&tree);
        let mut skipped_links = Vec::new();
        if !dir.is_dir() {
            skipped_links = self.write_tree(&mirror, commit, &dir)?;
        }
        Ok(Checkout { commit: commit.to_owned(), tree, dir, changed, skipped_links })
    }

    fn has_commit(&self, repository: &str, commit: &str) -> bool {
        let mirror = self.mirror(repository);
        git(&mirror, None, &["cat-file", "-e", &format!("{commit}^{{commit}}")], "cat-file", false).is_ok()
    }

    /// Writes the commit's files to `dir`, whole or not at all.
    fn write_tree(&self, mirror: &Path, commit: &str, dir: &Path) -> Result<Vec<String>, CheckoutError> {
        let trees = dir.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(trees).map_err(|e| CheckoutError::Io(format!("{}: {e}", trees.display())))?;
        let temp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(trees)
            .map_err(|e| CheckoutError::Io(format!("{}: {e}", trees.display())))?;
        let mut child = git_command(mirror, None)
            .args(["archive", "--format=tar", commit])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CheckoutError::Io(format!("cannot start git: {e}")))?;
        let stdout = child.stdout.take().ok_or_else(|| CheckoutError::Io("git archive has no output".into()))?;
        let unpacked = unpack(stdout, temp.path());
        let status = child.wait().map_err(|e| CheckoutError::Io(e.to_string()))?;
        let skipped = unpacked?;
        if !status.success() {
            return Err(CheckoutError::Git { what: "archive", message: format!("exit {status}") });
        }
        let temp = temp.keep();
        if let Err(e) = std::fs::rename(&temp, dir) {
            let _ = std::fs::remove_dir_all(&temp);
            // Written meanwhile by another fetch of the same tree: as good.
            if !dir.is_dir() {
                return Err(CheckoutError::Io(format!("{}: {e}", dir.display())));
            }
        }
        Ok(skipped)
    }

    /// The file at `path` in `commit`, read from the repository's objects
    /// (at most [`MAX_READ`] bytes), or None if the commit has none there.
    pub fn read_file(&self, repository: &str, commit: &str, path: &str) -> Result<Option<Vec<u8>>, CheckoutError> {
        let mirror = self.mirror(repository);
        let spec = format!("{commit}:{path}");
        let Ok(size) = git(&mirror, None, &["cat-file", "-s", &spec], "cat-file", false) else { return Ok(None) };
        let size: u64 = String::from_utf8_lossy(&size).trim().parse().unwrap_or(u64::MAX);
        if size > MAX_READ {
            return Err(CheckoutError::Io(format!("`{path}` at {commit} is over {MAX_READ} bytes")));
        }
        git(&mirror, None, &["cat-file", "blob", &spec], "cat-file", false).map(Some)
    }

    /// The paths of the regular files of `commit`.
    pub fn files(&self, repository: &str, commit: &str) -> Result<Vec<String>, CheckoutError> {
        let mirror = self.mirror(repository);
        let out = git(&mirror, None, &["ls-tree", "-r", "-z", "--name-only", commit], "ls-tree", false)?;
        Ok(out.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect())
    }
}

/// Whether git's words say the commit is not on the remote.
fn gone(message: &str) -> bool {
    ["not our ref", "couldn't find remote ref", "no such remote ref", "upload-pack: not our ref", "unadvertised object"]
        .iter()
        .any(|m| message.contains(m))
}

/// A git command on the mirror, with nothing of the host's configuration
/// and, when given, the remote's credential in its environment only.
fn git_command(mirror: &Path, remote: Option<&Remote<'_>>) -> Command {
    let mut command = Command::new("git");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", mirror)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("LC_ALL", "C")
        .arg("-C")
        .arg(mirror)
        // Only http(s): no `ext::` commands, no `file://` of the host.
        .args(["-c", "protocol.allow=never", "-c", "protocol.https.allow=always", "-c", "protocol.http.allow=always"])
        .args(["-c", "core.hooksPath=/dev/null", "-c", "credential.helper="])
        .stdin(Stdio::null());
    if let Some(Remote { forge, token: Some(token), .. }) = remote {
        let user = match forge {
            Forge::Github => "x-access-token",
            Forge::Gitea | Forge::Gitlab => "oauth2",
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: Basic {basic}"));
    }
    command
}

/// Runs git to its end (or [`FETCH_TIMEOUT`]) and returns its output.
fn git(
    mirror: &Path,
    remote: Option<&Remote<'_>>,
    args: &[&str],
    what: &'static str,
    create: bool,
) -> Result<Vec<u8>, CheckoutError> {
    if create {
        std::fs::create_dir_all(mirror).map_err(|e| CheckoutError::Io(format!("{}: {e}", mirror.display())))?;
    }
    let mut child = git_command(mirror, remote)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CheckoutError::Io(format!("cannot start git (is it installed?): {e}")))?;
    let mut stdout = child.stdout.take().ok_or_else(|| CheckoutError::Io("git has no output".into()))?;
    let mut stderr = child.stderr.take().ok_or_else(|| CheckoutError::Io("git has no error output".into()))?;
    let reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(MAX_STDERR as u64).read_to_end(&mut err);
        // Whatever is left is drained so git never blocks on it.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        err
    });
    let mut out = Vec::new();
    let read = stdout.read_to_end(&mut out);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > FETCH_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CheckoutError::Git {
                    what,
                    message: format!("took longer than {}s", FETCH_TIMEOUT.as_secs()),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(CheckoutError::Io(e.to_string())),
        }
    };
    let err = reader.join().unwrap_or_default();
    read.map_err(|e| CheckoutError::Io(e.to_string()))?;
    if status.success() {
        return Ok(out);
    }
    let message = airlock_model::text::one_line(String::from_utf8_lossy(&err).trim(), 2000);
    Err(CheckoutError::Git { what, message: if message.is_empty() { format!("exit {status}") } else { message } })
}

/// Unpacks a tar stream into `dir`: plain files and directories, and
/// symbolic links that stay inside; returns the links left out.
fn unpack(stream: impl std::io::Read, dir: &Path) -> Result<Vec<String>, CheckoutError> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    let mut skipped = Vec::new();
    let mut links = Vec::new();
    let entries = archive.entries().map_err(|e| CheckoutError::Io(format!("reading git archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| CheckoutError::Io(format!("reading git archive: {e}")))?;
        let path = entry.path().map_err(|e| CheckoutError::Io(e.to_string()))?.into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
                if !stays_inside(&path, &target) {
                    skipped.push(path.display().to_string());
                    continue;
                }
                links.push(path.clone());
            }
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            // `git archive` writes a global header with the commit id.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            _ => continue,
        }
        entry.unpack_in(dir).map_err(|e| CheckoutError::Io(format!("writing `{}`: {e}", path.display())))?;
    }
    // git pads its archive past the end-of-archive blocks, where tar
    // stops reading; the rest is drained so git does not die of SIGPIPE.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| CheckoutError::Io(format!("reading git archive: {e}")))?;
    // Words alone do not tell where a chain of links leads: `a/b -> ..`
    // stays inside, and so does `c -> a/b/..` by its words, yet the
    // system resolves it to the tree's parent. So each link kept is also
    // resolved as the system does, and goes if it leads out.
    let root = std::fs::canonicalize(dir).map_err(|e| CheckoutError::Io(format!("{}: {e}", dir.display())))?;
    let outward: Vec<PathBuf> = links
        .into_iter()
        .filter(|link| std::fs::canonicalize(root.join(link)).is_ok_and(|to| !to.starts_with(&root)))
        .collect();
    for link in outward {
        std::fs::remove_file(root.join(&link))
            .map_err(|e| CheckoutError::Io(format!("removing `{}`: {e}", link.display())))?;
        skipped.push(link.display().to_string());
    }
    Ok(skipped)
}

/// Whether a link at `link` (relative to the tree's root) pointing at
/// `target` resolves inside the tree, by its words alone.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_by_where_they_lead() {
        for (link, target, inside) in [
            ("a", "b", true),
            ("d/a", "../b", true),
            ("a", "../b", false),
            ("d/a", "../../b", false),
            ("a", "/etc/passwd", false),
            ("d/e/a", "../x/../../y", true),
            ("d/a", "x/../../..", false),
        ] {
            assert_eq!(stays_inside(Path::new(link), Path::new(target)), inside, "{link} -> {target}");
        }
    }
}
