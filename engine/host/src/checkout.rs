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
//!
//! Submodules, when the repository asks for them, are fetched the same
//! way into mirrors of their own (`ROOT/mirrors/NAME.modules/`), at the
//! commits the tree records, and written into the tree before it is
//! moved into place; such a tree is `TREE-with-submodules`. Their URLs
//! must stay on the repository's forge: a commit chooses them, and the
//! host must not fetch (or send the token) wherever a commit says.

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
/// Submodules written into one checkout at most, nested ones included.
pub const MAX_SUBMODULES: usize = 64;
/// How deep submodules of submodules are followed.
pub const MAX_SUBMODULE_DEPTH: usize = 4;
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
    /// A submodule the checkout cannot take.
    #[error("submodule `{path}`: {why}")]
    Submodule {
        /// Where it is in the tree.
        path: String,
        /// What is wrong, and what to do.
        why: String,
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
    /// Whether the commit's submodules are fetched and written out too.
    pub submodules: bool,
}

/// A commit written out as a source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit.
    pub commit: String,
    /// Its git tree id, which names the directory (with
    /// `-with-submodules` after it when they are written out too).
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

    /// The mirror of a submodule fetched from `url` for `repository`.
    fn module_mirror(&self, repository: &str, url: &str) -> PathBuf {
        use sha2::Digest as _;
        let id = hex::encode(sha2::Sha256::digest(url.as_bytes()));
        self.root.join("mirrors").join(format!("{repository}.modules")).join(format!("{}.git", &id[..24]))
    }

    /// The repository's mirror, made empty if it is not there yet.
    fn open_mirror(&self, repository: &str) -> Result<PathBuf, CheckoutError> {
        let mirror = self.mirror(repository);
        init_mirror(&mirror, &self.root)?;
        Ok(mirror)
    }

    /// Fetches `commit` into `mirror` unless it is there (or, with
    /// `again`, even if it is: to fill in objects a killed fetch left
    /// out).
    fn fetch_commit(&self, mirror: &Path, remote: &Remote<'_>, commit: &str, again: bool) -> Result<(), CheckoutError> {
        match fetch_shallow(mirror, remote, commit, again) {
            Ok(()) => Ok(()),
            Err(CheckoutError::Git { message, .. }) if gone(&message) => {
                Err(CheckoutError::Gone { commit: commit.to_owned(), url: remote.url.to_owned() })
            }
            Err(e) => Err(e),
        }
    }

    /// The submodules of `commit` (in `mirror`, fetched from `url`), and
    /// theirs, each fetched into a mirror of its own (again, with
    /// `again`): where each goes in the tree, and what to write there.
    fn submodules(
        &self,
        repository: &str,
        remote: &Remote<'_>,
        at: (&Path, &str, &str),
        walk: Walk<'_>,
        found: &mut Vec<Module>,
    ) -> Result<(), CheckoutError> {
        let (mirror, commit, url) = at;
        let Walk { prefix, depth, again } = walk;
        let listing = git(mirror, None, &["ls-tree", "-r", "-z", commit], "ls-tree", false)?;
        let links: Vec<(String, String)> = listing
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (meta, path) = entry.split_once('\t')?;
                let mut meta = meta.split(' ');
                (meta.next()? == "160000").then(|| (path.to_owned(), meta.nth(1).unwrap_or_default().to_owned()))
            })
            .collect();
        if links.is_empty() {
            return Ok(());
        }
        let declared = declared_modules(mirror, commit);
        for (path, id) in links {
            let shown = format!("{prefix}{path}");
            let fail = |why: String| CheckoutError::Submodule { path: shown.clone(), why };
            if depth >= MAX_SUBMODULE_DEPTH {
                return Err(fail(format!("submodules nest deeper than {MAX_SUBMODULE_DEPTH}; airlock goes no deeper")));
            }
            if found.len() >= MAX_SUBMODULES {
                return Err(fail(format!("a checkout takes at most {MAX_SUBMODULES} submodules")));
            }
            if !Path::new(&path).components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(fail("its path is not a plain path inside the tree".into()));
            }
            let id = crate::forge::checked_commit(&id).map_err(|e| fail(e.to_string()))?;
            let Some(declared) = declared.iter().find(|(p, _)| *p == path).map(|(_, u)| u) else {
                return Err(fail("`.gitmodules` does not name it; add it there (`git submodule add`)".into()));
            };
            let module_url = module_url(url, declared).map_err(fail)?;
            let module_mirror = self.module_mirror(repository, &module_url);
            init_mirror(&module_mirror, &self.root)?;
            // Same forge, so the same token; never sent anywhere else.
            let module_remote = Remote { url: &module_url, ..*remote };
            self.fetch_commit(&module_mirror, &module_remote, &id, again).map_err(|e| fail(e.to_string()))?;
            found.push(Module { path: shown.clone(), mirror: module_mirror.clone(), commit: id.clone() });
            let inner = format!("{shown}/");
            let walk = Walk { prefix: &inner, depth: depth + 1, again };
            self.submodules(repository, remote, (&module_mirror, &id, &module_url), walk, found)?;
        }
        Ok(())
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
        self.fetch_commit(&mirror, remote, commit, false)?;
        let (tree, dir, skipped_links) = match self.write_out(repository, remote, &mirror, commit, false) {
            // A mirror written before fetches kept their packs whole may
            // hold a commit without all of its objects (its fetch was
            // killed while unpacking them one by one): fetching the
            // commit again, and its submodules, fills them in.
            Err(CheckoutError::Git { what, message }) if what != "fetch" => {
                tracing::warn!(repository, commit, "git {what} failed ({message}); fetching the commit again");
                self.fetch_commit(&mirror, remote, commit, true)?;
                self.write_out(repository, remote, &mirror, commit, true)?
            }
            other => other?,
        };
        // What changed needs only the other commit's tree, so it too is
        // fetched shallow; if it is gone, what changed is not known.
        let changed = since.and_then(|since| {
            fetch_shallow(&mirror, remote, since, false).ok()?;
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
        Ok(Checkout { commit: commit.to_owned(), tree, dir, changed, skipped_links })
    }

    /// Writes the tree of `commit` (in `mirror`) out unless it is there,
    /// fetching its submodules (again, with `again`) when the remote asks
    /// for them: its name, its directory and the links left out.
    fn write_out(
        &self,
        repository: &str,
        remote: &Remote<'_>,
        mirror: &Path,
        commit: &str,
        again: bool,
    ) -> Result<(String, PathBuf, Vec<String>), CheckoutError> {
        let tree = String::from_utf8_lossy(&git(
            mirror,
            None,
            &["rev-parse", "--verify", &format!("{commit}^{{tree}}")],
            "rev-parse",
            false,
        )?)
        .trim()
        .to_owned();
        // The tree id fixes every submodule's commit, and so theirs.
        let tree = if remote.submodules { format!("{tree}-with-submodules") } else { tree };
        let dir = self.tree_dir(&tree);
        if dir.is_dir() {
            return Ok((tree, dir, Vec::new()));
        }
        let mut modules = Vec::new();
        if remote.submodules {
            let walk = Walk { prefix: "", depth: 0, again };
            self.submodules(repository, remote, (mirror, commit, remote.url), walk, &mut modules)?;
        }
        let skipped_links = self.write_tree(mirror, commit, &modules, &dir)?;
        Ok((tree, dir, skipped_links))
    }

    /// Writes the commit's files to `dir`, and each submodule's into it,
    /// whole or not at all.
    fn write_tree(
        &self,
        mirror: &Path,
        commit: &str,
        modules: &[Module],
        dir: &Path,
    ) -> Result<Vec<String>, CheckoutError> {
        let trees = dir.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(trees).map_err(|e| CheckoutError::Io(format!("{}: {e}", trees.display())))?;
        let temp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(trees)
            .map_err(|e| CheckoutError::Io(format!("{}: {e}", trees.display())))?;
        let mut skipped = archive(mirror, commit, temp.path())?;
        for module in modules {
            let into = temp.path().join(&module.path);
            std::fs::create_dir_all(&into).map_err(|e| CheckoutError::Io(format!("{}: {e}", into.display())))?;
            let left_out = archive(&module.mirror, &module.commit, &into)?;
            skipped.extend(left_out.into_iter().map(|link| format!("{}/{link}", module.path)));
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

/// Where a walk through submodules is.
#[derive(Clone, Copy)]
struct Walk<'a> {
    /// The path of the repository being walked, ending in `/` (empty at
    /// the top).
    prefix: &'a str,
    /// How deep in submodules it is.
    depth: usize,
    /// Whether each is fetched even if its mirror has its commit.
    again: bool,
}

/// A submodule to write into a checkout.
struct Module {
    /// Where, relative to the tree's root.
    path: String,
    /// The mirror holding its commit.
    mirror: PathBuf,
    /// Its commit.
    commit: String,
}

/// Makes an empty bare mirror at `mirror` if there is none.
fn init_mirror(mirror: &Path, root: &Path) -> Result<(), CheckoutError> {
    if !mirror.join("HEAD").is_file() {
        let parent = mirror.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).map_err(|e| CheckoutError::Io(format!("{}: {e}", parent.display())))?;
        git(mirror, None, &["init", "--quiet", "--bare", "."], "init", true)?;
    }
    Ok(())
}

/// Fetches `commit` from the remote into `mirror`, one commit deep,
/// while holding the mirror's fetch lock, unless (when not `again`) the
/// mirror has it already.
///
/// Two fetches into one shallow mirror break each other ("shallow file
/// has changed since we read it"), whether they come from two threads or
/// from two processes: a server killed mid-fetch leaves its git running,
/// and the server started after it fetches too. So each fetch takes an
/// exclusive lock on `MIRROR/airlock-fetch.lock` and hands the locked file
/// to git as its standard input, which git never reads: the lock is held
/// as long as any process holding that file lives, the orphaned git of a
/// killed server included, and no longer.
///
/// Whether the mirror has the commit is asked under the lock too: a
/// fetch still running writes objects as it goes, and its commit may be
/// there before the commit's files are. Objects arrive as one pack that
/// appears whole (`fetch.unpackLimit=1`) rather than one loose object at
/// a time, so a fetch killed midway leaves no commit without its tree.
fn fetch_shallow(mirror: &Path, remote: &Remote<'_>, commit: &str, again: bool) -> Result<(), CheckoutError> {
    let path = mirror.join("airlock-fetch.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CheckoutError::Io(format!("{}: {e}", path.display())))?;
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < FETCH_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CheckoutError::Git {
                    what: "fetch",
                    message: format!(
                        "another fetch into {} held it for {}s; if no git is running, remove {}",
                        mirror.display(),
                        FETCH_TIMEOUT.as_secs(),
                        path.display()
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(CheckoutError::Io(format!("{}: {e}", path.display())));
            }
        }
    }
    if !again && has_commit(mirror, commit) {
        return Ok(());
    }
    let args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1", "--", remote.url, commit];
    let mut command = git_command(mirror, Some(remote));
    command.args(["-c", "fetch.unpackLimit=1"]).args(args).stdin(Stdio::from(lock));
    run_git(command, "fetch").map(drop)
}

fn has_commit(mirror: &Path, commit: &str) -> bool {
    git(mirror, None, &["cat-file", "-e", &format!("{commit}^{{commit}}")], "cat-file", false).is_ok()
}

/// Writes `commit`'s files (from `mirror`) into `dir`; returns the
/// links left out.
fn archive(mirror: &Path, commit: &str, dir: &Path) -> Result<Vec<String>, CheckoutError> {
    let mut child = git_command(mirror, None)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CheckoutError::Io(format!("cannot start git: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| CheckoutError::Io("git archive has no output".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| CheckoutError::Io("git archive has no error output".into()))?;
    let reader = std::thread::spawn(move || read_bounded(stderr));
    let unpacked = unpack(stdout, dir);
    let status = child.wait().map_err(|e| CheckoutError::Io(e.to_string()))?;
    let err = reader.join().unwrap_or_default();
    if !status.success() {
        let message = airlock_model::text::one_line(String::from_utf8_lossy(&err).trim(), 2000);
        return Err(CheckoutError::Git {
            what: "archive",
            message: if message.is_empty() { format!("exit {status}") } else { message },
        });
    }
    unpacked
}

/// The `(path, url)` of each submodule `.gitmodules` at `commit` names;
/// none when it has no `.gitmodules`.
fn declared_modules(mirror: &Path, commit: &str) -> Vec<(String, String)> {
    let blob = format!("{commit}:.gitmodules");
    let args = ["config", "--blob", &blob, "-z", "--get-regexp", r"^submodule\..*\.(path|url)$"];
    let Ok(out) = git(mirror, None, &args, "config", false) else { return Vec::new() };
    let mut paths = std::collections::BTreeMap::new();
    let mut urls = std::collections::BTreeMap::new();
    for item in out.split(|b| *b == 0).filter(|i| !i.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let Some((key, value)) = item.split_once('\n') else { continue };
        if let Some(name) = key.strip_prefix("submodule.").and_then(|k| k.strip_suffix(".path")) {
            paths.insert(name.to_owned(), value.to_owned());
        } else if let Some(name) = key.strip_prefix("submodule.").and_then(|k| k.strip_suffix(".url")) {
            urls.insert(name.to_owned(), value.to_owned());
        }
    }
    paths.into_iter().filter_map(|(name, path)| Some((path, urls.remove(&name)?))).collect()
}

/// A submodule's URL, resolved as git resolves it against the URL of the
/// repository that names it (`../lib.git` beside it); it must be on the
/// same forge (scheme, host and port), the only place the repository's
/// token may go and the only place a pull request may make the host
/// fetch from.
fn module_url(parent: &str, declared: &str) -> Result<String, String> {
    let base = url::Url::parse(&format!("{}/", parent.trim_end_matches('/')))
        .map_err(|e| format!("the repository's URL `{parent}` cannot be read: {e}"))?;
    let relative = declared.starts_with("./") || declared.starts_with("../");
    let resolved = if relative { base.join(declared) } else { url::Url::parse(declared) }.map_err(|e| {
        format!(
            "its URL `{}` cannot be read ({e}); use a URL relative to the repository's (`../NAME.git`)",
            airlock_model::text::one_line(declared, 200)
        )
    })?;
    if resolved.origin() != base.origin() || !matches!(resolved.scheme(), "http" | "https") {
        return Err(format!(
            "its URL `{}` is not on the repository's forge ({}); airlock fetches submodules only from there, \
             so a commit cannot make the server fetch from elsewhere",
            airlock_model::text::one_line(declared, 200),
            base.origin().ascii_serialization()
        ));
    }
    if !resolved.username().is_empty() || resolved.password().is_some() {
        return Err("its URL holds a user name or password; submodules use the repository's token".into());
    }
    Ok(resolved.as_str().trim_end_matches('/').to_owned())
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
    let mut command = git_command(mirror, remote);
    command.args(args);
    run_git(command, what)
}

/// Runs a prepared git command to its end (or [`FETCH_TIMEOUT`]) and
/// returns its output.
fn run_git(mut command: Command, what: &'static str) -> Result<Vec<u8>, CheckoutError> {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CheckoutError::Io(format!("cannot start git (is it installed?): {e}")))?;
    let mut stdout = child.stdout.take().ok_or_else(|| CheckoutError::Io("git has no output".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| CheckoutError::Io("git has no error output".into()))?;
    let reader = std::thread::spawn(move || read_bounded(stderr));
    // Read on a thread of its own, so a git that hangs without closing
    // its output still meets the timeout below.
    let output = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
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
    let out = output
        .join()
        .map_err(|_| CheckoutError::Io("reading git's output failed".into()))?
        .map_err(|e| CheckoutError::Io(e.to_string()))?;
    if status.success() {
        return Ok(out);
    }
    let message = airlock_model::text::one_line(String::from_utf8_lossy(&err).trim(), 2000);
    Err(CheckoutError::Git { what, message: if message.is_empty() { format!("exit {status}") } else { message } })
}

/// The first [`MAX_STDERR`] bytes of git's error output; whatever is
/// left is drained so git never blocks on it.
fn read_bounded(mut stderr: std::process::ChildStderr) -> Vec<u8> {
    let mut err = Vec::new();
    let _ = (&mut stderr).take(MAX_STDERR as u64).read_to_end(&mut err);
    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    err
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
    fn submodule_urls_resolve_as_git_does_and_stay_on_the_forge() {
        let parent = "https://forge.example/team/app.git";
        assert_eq!(module_url(parent, "../lib.git").as_deref(), Ok("https://forge.example/team/lib.git"));
        assert_eq!(
            module_url(parent, "./vendor/x.git").as_deref(),
            Ok("https://forge.example/team/app.git/vendor/x.git")
        );
        assert_eq!(module_url(parent, "../../other/lib.git").as_deref(), Ok("https://forge.example/other/lib.git"));
        assert_eq!(
            module_url(parent, "https://forge.example/team/lib").as_deref(),
            Ok("https://forge.example/team/lib")
        );
        for elsewhere in [
            "https://evil.example/lib.git",
            "http://forge.example/team/lib.git",
            "https://forge.example:8443/team/lib.git",
            "git@forge.example:team/lib.git",
            "ssh://forge.example/team/lib.git",
            "file:///etc",
            "https://user:pw@forge.example/team/lib.git",
        ] {
            assert!(module_url(parent, elsewhere).is_err(), "{elsewhere}");
        }
    }

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
