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
    let remote = Remote { forge: Forge::Github, url: &url, token: Some(TOKEN) };
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
    let wrong = Remote { forge: Forge::Github, url: &url, token: Some("wrong-token") };
    let fresh = Checkouts::new(state.path().join("other"));
    let e = fresh.fetch("blinky", &wrong, &first, None).expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, CheckoutError::Git { what: "fetch", .. }), "{text}");
    assert!(!text.contains("wrong-token") && !text.contains(TOKEN), "{text}");
}
