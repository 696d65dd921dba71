//! The book's command-line reference is generated from `--help`, so it
//! cannot drift from the binary. `AIRLOCK_BLESS=1` rewrites the page.

use crate::support::{airlock, output, repo};

/// The subcommands a `--help` lists under `Commands:` (clap's own list,
/// so a new command is in the reference the day it is added).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command, depth first, as the words that name it.
fn commands(path: &[String], out: &mut Vec<Vec<String>>) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    for name in subcommands(&help(&args)) {
        let mut command = path.to_vec();
        command.push(name);
        out.push(command.clone());
        commands(&command, out);
    }
}

fn help(args: &[&str]) -> String {
    let state = tempfile::tempdir().expect("tempdir");
    // A fixed width keeps the wrapped text the same on every machine.
    let (code, stdout, stderr) = output(airlock(state.path()).args(args).arg("--help").env("COLUMNS", "100"));
    assert_eq!(code, 0, "`airlock {} --help` failed: {stderr}", args.join(" "));
    stdout
}

fn page() -> String {
    let mut page = String::from(
        "# Command line\n\n\
         <!-- Generated from `airlock --help` by engine/cli/tests/all/docs.rs; \
         run the tests with AIRLOCK_BLESS=1 to update. -->\n\n\
         Every command takes `--state-dir DIR` (or `AIRLOCK_STATE_DIR`); a run id may be \
         given whole, as a unique prefix, or as `last`. Commands that print tables also \
         take `--json` for scripts.\n\n## airlock\n\n```text\n",
    );
    page.push_str(&help(&[]));
    page.push_str("```\n");
    let mut all = Vec::new();
    commands(&[], &mut all);
    for command in all {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        page.push_str(&format!("\n## airlock {}\n\n```text\n{}```\n", args.join(" "), help(&args)));
    }
    page
}

#[test]
fn cli_reference_matches_the_help() {
    let listed: Vec<String> = {
        let mut all = Vec::new();
        commands(&[], &mut all);
        all.iter().map(|c| c.join(" ")).collect()
    };
    for expected in ["approve", "env check", "env rollback", "user token", "token create", "serve"] {
        assert!(listed.iter().any(|c| c == expected), "`airlock {expected}` is not in the reference: {listed:?}");
    }
    let path = repo().join("book/src/reference/cli.md");
    let generated = page();
    if std::env::var_os("AIRLOCK_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write cli.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "book/src/reference/cli.md is out of date with `airlock --help`; rerun with AIRLOCK_BLESS=1 and commit it"
    );
}

/// Every page in the book's table of contents exists, and every include and
/// relative link in the book points at a file that does. (mdBook itself is
/// not needed to run the tests.)
#[test]
fn book_links_and_includes_resolve() {
    let src = repo().join("book/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    let mut broken = Vec::new();
    let mut pages = Vec::new();
    for target in link_targets(&summary) {
        pages.push(src.join(&target));
    }
    assert!(pages.len() >= 8, "SUMMARY.md lists too few pages: {pages:?}");
    for page in &pages {
        let Ok(text) = std::fs::read_to_string(page) else {
            broken.push(format!("SUMMARY.md lists {}, which does not exist", page.display()));
            continue;
        };
        let dir = page.parent().expect("page dir");
        for include in text.split("{{#include ").skip(1) {
            let path = include.split("}}").next().unwrap_or_default().trim();
            let path = path.split(':').next().unwrap_or(path);
            if !dir.join(path).is_file() {
                broken.push(format!("{}: include `{path}` does not resolve", page.display()));
            }
        }
        for target in link_targets(&text) {
            if !dir.join(&target).exists() {
                broken.push(format!("{}: link `{target}` does not resolve", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The relative targets of Markdown links `[text](target)` in `text`,
/// without fragments; web links and pure fragments are left out.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://"))
        .collect()
}

/// The policy snippets of the book's sections on provenance and the step
/// cache are whole policies, and they load.
#[test]
fn the_policy_snippets_of_provenance_and_the_step_cache_load() {
    let text = std::fs::read_to_string(repo().join("book/src/reference/policy.md")).expect("policy.md");
    for section in ["## `provenance`", "## `step_cache`"] {
        let after = &text[text.find(section).unwrap_or_else(|| panic!("no {section}"))..];
        let block = after.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
        if let Err(diagnostics) = airlock_model::policy::load_policy(section, block) {
            panic!("{section}: {block}\n{diagnostics:?}");
        }
    }
}
