//! Trusted checkouts against a real git server: the exact commit, the
//! token only in git's environment, a tree with no `.git` and no link
//! that leads out of it.

use crate::support::files_below;
use airlock_bench::git_http::{GitServer, git};
use airlock_host::checkout::{CheckoutError, Checkouts, Remote};
use airlock_model::policy::Forge;
use std::path::Path;

const TOKEN: &str = "canary-clone-token-5c1f9e";

fn base64_of(text: String) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn the_exact_commit_is_fetched_with_the_token_and_written_out_without_it() {
    let served = tempfile::tempdir().expect("dir");
    let work = served.path().join("work");
    std::fs::create_dir_all(work.join("rtl")).expect("mkdir");
    git(served.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "blinky.git"]).expect("git");
    // No `uploadpack.allowReachableSHA1InWant`: protocol v2 serves any
    // reachable commit by its id, as forges do.
    git(&work, &["init", "--quiet", "--initial-branch=main"]).expect("git");
    std::fs::write(work.join("rtl/blinky.v"), "module top(); endmodule\n").expect("write");
    std::fs::write(work.join("README"), "first\n").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", work.join("passwd")).expect("link");
    std::os::unix::fs::symlink("../README", work.join("rtl/readme")).expect("link");
    // Each link inside by its words, the second out through the first.
    std::os::unix::fs::symlink("..", work.join("rtl/up")).expect("link");
    std::os::unix::fs::symlink("rtl/up/..", work.join("chain")).expect("link");
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-m", "first"]).expect("git");
    let first = git(&work, &["rev-parse", "HEAD"]).expect("git");
    std::fs::write(work.join("rtl/blinky.v"), "module top(input clk); endmodule\n").expect("write");
    git(&work, &["commit", "--quiet", "-am", "second"]).expect("git");
    let second = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["push", "--quiet", &served.path().join("blinky.git").display().to_string(), "main"]).expect("git");
    let server = GitServer::start(served.path(), "x-access-token", TOKEN).expect("git server");
    let url = format!("{}/blinky.git", server.url);

    let state = tempfile::tempdir().expect("state");
    let checkouts = Checkouts::new(state.path().join("checkouts"));
    let remote = Remote { forge: Forge::Github, url: &url, token: Some(TOKEN), submodules: false };
    // The first commit, not the branch's tip.
    let one = checkouts.fetch("blinky", &remote, &first, None).expect("fetch");
    assert_eq!(std::fs::read_to_string(one.dir.join("rtl/blinky.v")).expect("file"), "module top(); endmodule\n");
    assert!(!one.dir.join(".git").exists(), "a checkout has no .git");
    assert_eq!(one.skipped_links, ["passwd", "chain"], "a link out of the tree is left out");
    assert!(one.dir.join("rtl/up").is_symlink(), "a link that stays inside is kept");
    assert_eq!(std::fs::read_link(one.dir.join("rtl/readme")).expect("link"), Path::new("../README"));
    let two = checkouts.fetch("blinky", &remote, &second, Some(&first)).expect("fetch");
    assert_ne!(one.tree, two.tree);
    assert_eq!(two.changed.as_deref(), Some(["rtl/blinky.v".to_owned()].as_slice()));
    assert!(two.dir.ends_with(&two.tree), "named by its tree");
    let again = checkouts.fetch("blinky", &remote, &second, None).expect("fetch again");
    assert_eq!(again.dir, two.dir);
    // Pipeline files come from the objects, not the tree on disk.
    assert_eq!(checkouts.read_file("blinky", &first, "README").expect("read"), Some(b"first\n".to_vec()));
    assert_eq!(checkouts.read_file("blinky", &first, "nope.yaml").expect("read"), None);
    let files = checkouts.files("blinky", &second).expect("files");
    assert!(files.contains(&"rtl/blinky.v".to_owned()) && files.contains(&"README".to_owned()), "{files:?}");

    // The token is in no file airlock wrote: not the mirror's config,
    // not its objects, not the trees.
    let written: Vec<u8> =
        files_below(state.path()).iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect();
    assert!(!written.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "the clone token was written to disk");
    let basic = base64_of(format!("x-access-token:{TOKEN}"));
    assert!(!written.windows(basic.len()).any(|w| w == basic.as_bytes()), "the encoded token was written to disk");

    // A commit the remote does not have: said plainly.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let e = checkouts.fetch("blinky", &remote, missing, None).expect_err("no such commit");
    assert!(matches!(e, CheckoutError::Gone { .. }), "{e}");
    // A wrong token: git's refusal, with neither token in it.
    let wrong = Remote { forge: Forge::Github, url: &url, token: Some("wrong-token"), submodules: false };
    let fresh = Checkouts::new(state.path().join("other"));
    let e = fresh.fetch("blinky", &wrong, &first, None).expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, CheckoutError::Git { what: "fetch", .. }), "{text}");
    assert!(!text.contains("wrong-token") && !text.contains(TOKEN), "{text}");
}

/// Makes the bare repository `served/NAME.git` with one commit holding
/// `files` and, for each `(path, url, commit)` of `modules`, a
/// submodule; answers the commit.
fn repository(served: &Path, name: &str, files: &[(&str, &str)], modules: &[(&str, &str, &str)]) -> String {
    let work = served.join(format!("work-{name}"));
    std::fs::create_dir_all(&work).expect("mkdir");
    git(served, &["init", "--quiet", "--bare", "--initial-branch=main", &format!("{name}.git")]).expect("git");
    git(&work, &["init", "--quiet", "--initial-branch=main"]).expect("git");
    for (path, text) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    }
    let declared: String = modules
        .iter()
        .enumerate()
        .map(|(i, (path, url, _))| format!("[submodule \"m{i}\"]\n\tpath = {path}\n\turl = {url}\n"))
        .collect();
    if !declared.is_empty() {
        std::fs::write(work.join(".gitmodules"), declared).expect("write");
    }
    git(&work, &["add", "-A"]).expect("git");
    // A gitlink goes straight into the index, as `git submodule add`
    // leaves it, without a clone of the submodule beside it.
    for (path, _, commit) in modules {
        git(&work, &["update-index", "--add", "--cacheinfo", &format!("160000,{commit},{path}")]).expect("git");
    }
    git(&work, &["commit", "--quiet", "-m", "one"]).expect("git");
    git(&work, &["push", "--quiet", &served.join(format!("{name}.git")).display().to_string(), "main"]).expect("git");
    git(&work, &["rev-parse", "HEAD"]).expect("git")
}

#[test]
fn submodules_are_written_in_when_asked_and_only_from_the_same_forge() {
    let served = tempfile::tempdir().expect("dir");
    let deep = repository(served.path(), "deep", &[("deep.txt", "deep\n")], &[]);
    let lib = repository(served.path(), "lib", &[("lib.txt", "lib\n")], &[("inner", "../deep.git", &deep)]);
    let app = repository(served.path(), "app", &[("app.txt", "app\n")], &[("vendor/lib", "../lib.git", &lib)]);
    let server = GitServer::start(served.path(), "x-access-token", TOKEN).expect("git server");
    let url = format!("{}/app.git", server.url);
    let state = tempfile::tempdir().expect("state");
    let checkouts = Checkouts::new(state.path().join("checkouts"));

    // Not asked: the submodule's place is there, empty.
    let plain = Remote { forge: Forge::Github, url: &url, token: Some(TOKEN), submodules: false };
    let without = checkouts.fetch("app", &plain, &app, None).expect("fetch");
    assert!(!without.dir.join("vendor/lib/lib.txt").exists());
    // Asked: each submodule and its own, at the commits the tree names,
    // fetched with the token of the forge they share.
    let remote = Remote { submodules: true, ..plain };
    let with = checkouts.fetch("app", &remote, &app, None).expect("fetch with submodules");
    assert_ne!(with.dir, without.dir, "a tree with its submodules is another tree");
    assert!(with.tree.ends_with("-with-submodules"), "{}", with.tree);
    assert_eq!(std::fs::read_to_string(with.dir.join("app.txt")).expect("file"), "app\n");
    assert_eq!(std::fs::read_to_string(with.dir.join("vendor/lib/lib.txt")).expect("file"), "lib\n");
    assert_eq!(std::fs::read_to_string(with.dir.join("vendor/lib/inner/deep.txt")).expect("file"), "deep\n");
    assert!(!files_below(&with.dir).iter().any(|f| f.ends_with(".git")), "no .git anywhere");

    // A submodule on another host, one `.gitmodules` does not name, and
    // one whose URL carries a password: refused, naming the submodule,
    // and nothing written.
    for (name, declared, why) in [
        ("elsewhere", "http://127.0.0.2:9/lib.git", "not on the repository's forge"),
        ("password", &format!("{}/lib.git", server.url.replace("://", "://me:pw@")), "password"),
    ] {
        let commit = repository(served.path(), name, &[("a.txt", "a")], &[("lib", declared, &lib)]);
        let url = format!("{}/{name}.git", server.url);
        let remote = Remote { url: &url, ..remote };
        let e = checkouts.fetch(name, &remote, &commit, None).expect_err("refused");
        assert!(matches!(&e, CheckoutError::Submodule { path, .. } if path == "lib"), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    let undeclared = served.path().join("work-undeclared");
    let commit = repository(served.path(), "undeclared", &[("a.txt", "a")], &[("lib", "../lib.git", &lib)]);
    git(&undeclared, &["rm", "--quiet", "--cached", ".gitmodules"]).expect("git");
    git(&undeclared, &["commit", "--quiet", "-m", "no .gitmodules"]).expect("git");
    let commit_without = git(&undeclared, &["rev-parse", "HEAD"]).expect("git");
    assert_ne!(commit, commit_without);
    git(&undeclared, &["push", "--quiet", &served.path().join("undeclared.git").display().to_string(), "main"])
        .expect("git");
    let url = format!("{}/undeclared.git", server.url);
    let e = checkouts.fetch("undeclared", &Remote { url: &url, ..remote }, &commit_without, None).expect_err("refused");
    assert!(e.to_string().contains("`.gitmodules` does not name it"), "{e}");
    let trees = std::fs::read_dir(state.path().join("checkouts/trees")).expect("trees").count();
    assert_eq!(trees, 2, "only the two good trees were written");

    let written: Vec<u8> =
        files_below(state.path()).iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect();
    assert!(!written.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "the clone token was written to disk");
}

#[test]
fn fetches_into_one_mirror_take_turns_even_across_processes() {
    let served = tempfile::tempdir().expect("dir");
    let work = served.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(served.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "blinky.git"]).expect("git");
    git(&work, &["init", "--quiet", "--initial-branch=main"]).expect("git");
    let mut commits = Vec::new();
    for i in 0..8 {
        std::fs::write(work.join("n"), format!("{i}\n")).expect("write");
        git(&work, &["add", "-A"]).expect("git");
        git(&work, &["commit", "--quiet", "-m", &format!("{i}")]).expect("git");
        commits.push(git(&work, &["rev-parse", "HEAD"]).expect("git"));
    }
    git(&work, &["push", "--quiet", &served.path().join("blinky.git").display().to_string(), "main"]).expect("git");
    let server = GitServer::start(served.path(), "x-access-token", TOKEN).expect("git server");
    let url = format!("{}/blinky.git", server.url);
    let state = tempfile::tempdir().expect("state");
    let checkouts = Checkouts::new(state.path().join("checkouts"));
    let remote = Remote { forge: Forge::Github, url: &url, token: Some(TOKEN), submodules: false };
    checkouts.fetch("blinky", &remote, &commits[0], None).expect("first fetch");
    let mirror = state.path().join("checkouts/mirrors/blinky.git");
    // What a fetch brings arrives as one pack, which appears whole, not
    // as loose objects a killed fetch could leave half written.
    assert_eq!(loose_objects(&mirror), 0, "a fetch left loose objects");

    // Another process (say the git a killed server left running) holds
    // the mirror's fetch lock, and has written the next commit's object
    // but not yet its files: a fetch waits for the lock rather than take
    // the commit for fetched, then goes ahead and fills in what is
    // missing.
    let lock = std::fs::File::open(mirror.join("airlock-fetch.lock")).expect("the mirror has a fetch lock");
    lock.lock().expect("lock");
    let raw = git_bytes(&work, &["cat-file", "commit", &commits[1]]);
    let planted = git_with_input(&mirror, &["hash-object", "-w", "-t", "commit", "--stdin"], &raw);
    assert_eq!(planted, commits[1]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(checkouts.fetch("blinky", &remote, &commits[1], None).map(|c| c.commit)));
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(500)).is_err(),
            "a fetch went ahead while another held the mirror"
        );
        lock.unlock().expect("unlock");
        let fetched = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the fetch went on once it was free");
        assert_eq!(fetched.expect("fetch"), commits[1]);
    });

    // Fetches from many threads at once: each waits its turn, none
    // breaks another's shallow file.
    std::thread::scope(|s| {
        let handles: Vec<_> = commits[2..]
            .iter()
            .map(|commit| s.spawn(|| checkouts.fetch("blinky", &remote, commit, None).map(|c| c.commit)))
            .collect();
        for (handle, commit) in handles.into_iter().zip(&commits[2..]) {
            assert_eq!(&handle.join().expect("thread").expect("fetch"), commit);
        }
    });
}

/// How many loose objects the repository at `dir` holds.
fn loose_objects(dir: &Path) -> usize {
    let objects = dir.join("objects");
    std::fs::read_dir(&objects)
        .expect("objects")
        .flatten()
        .filter(|d| d.file_name().len() == 2)
        .map(|d| std::fs::read_dir(d.path()).expect("dir").count())
        .sum()
}

/// What git prints for `args` in `dir`, as bytes.
fn git_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Runs git in `dir` with `input` on its standard input; its output.
fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    child.stdin.take().expect("stdin").write_all(input).expect("write");
    let out = child.wait_with_output().expect("git");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
