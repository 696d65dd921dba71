//! The step cache and deterministic steps, end to end: the example site
//! run again takes every step from the cache with the same artifacts, a
//! changed page runs again only what follows from it, and a step's clock
//! and random bytes are the same in every run unless it asks otherwise.

use crate::support::{Scratch, airlock, output, plugins, repo};

/// The steps of the last run as (name, cached-from run, output digests).
fn steps(scratch: &Scratch) -> Vec<(String, Option<String>, Vec<String>)> {
    let show = scratch.show();
    show["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            assert_eq!(s["state"], "succeeded", "{show}");
            (
                s["name"].as_str().expect("name").to_owned(),
                s["cached"]["run"].as_str().map(str::to_owned),
                s["outputs"].as_array().expect("outputs").iter().map(|o| o["sha256"].to_string()).collect(),
            )
        })
        .collect()
}

fn last_run(scratch: &Scratch) -> String {
    scratch.show()["run"]["id"].as_str().expect("id").to_owned()
}

#[test]
fn the_site_run_again_is_taken_from_the_cache_and_a_changed_page_runs_only_what_follows() {
    let scratch = Scratch::new();
    let site = repo().join("pipelines/site");
    for file in crate::support::files_below(&site) {
        let rel = file.strip_prefix(&site).expect("below");
        scratch.file(&format!("site/{}", rel.display()), std::fs::read(&file).expect("read"));
    }
    let yaml = std::fs::read_to_string(repo().join("pipelines/site.yaml")).expect("site.yaml");
    scratch.pipeline(&yaml.replace("../plugins/target", "{plugins}"));
    plugins();

    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let first_run = last_run(&scratch);
    let first = steps(&scratch);
    assert!(first.iter().all(|(_, cached, _)| cached.is_none()), "{first:?}");

    // Unchanged: every step is the first run's, with its artifacts.
    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    for line in ["cached    render", "cached    lint", "cached    pack", "cached    checksum"] {
        assert!(stderr.contains(line), "no `{line}` in {stderr}");
    }
    let again = steps(&scratch);
    for ((name, cached, digests), (_, _, before)) in again.iter().zip(&first) {
        assert_eq!(cached.as_deref(), Some(first_run.as_str()), "{name}");
        assert_eq!(digests, before, "{name} took other artifacts");
    }
    let (_, shown, _) = output(airlock(&scratch.state()).args(["show", "last"]));
    assert!(shown.contains(&format!("outputs of run {first_run} step `pack`")), "{shown}");

    // One page changes: what reads the pages runs again; `lint`, which
    // mounts only the data files, is taken from the cache.
    let page = scratch.path().join("site/guide/why.md");
    let text = std::fs::read_to_string(&page).expect("page");
    std::fs::write(&page, format!("{text}\nOne more line.\n")).expect("write");
    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let changed = steps(&scratch);
    let cached: Vec<&str> = changed.iter().filter(|s| s.1.is_some()).map(|s| s.0.as_str()).collect();
    assert_eq!(cached, ["lint"], "{changed:?}");
    let archive =
        |s: &[(String, Option<String>, Vec<String>)]| s.iter().find(|x| x.0 == "pack").expect("pack").2.clone();
    assert_ne!(archive(&changed), archive(&first), "the archive holds the changed page");

    // `--no-cache` runs every step, and they make the same bytes.
    let (code, _, stderr) = scratch.run(&["--no-cache"]);
    assert_eq!(code, 0, "{stderr}");
    let fresh = steps(&scratch);
    assert!(fresh.iter().all(|(_, cached, _)| cached.is_none()), "{fresh:?}");
    for ((name, _, digests), (_, _, before)) in fresh.iter().zip(&changed) {
        assert_eq!(digests, before, "{name} is not reproducible");
    }

    // The entries, listed; trimmed to nothing, the next run runs all.
    let cache = |args: &[&str]| {
        let (code, stdout, stderr) = output(airlock(&scratch.state()).arg("cache").args(args));
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON")
    };
    let listed = cache(&["ls", "--steps", "--json"]);
    let entries = listed["steps"].as_array().expect("entries");
    // lint once; render, pack and checksum for each version of the page.
    assert_eq!(entries.len(), 7, "{listed}");
    assert!(entries.iter().all(|e| e["scope"] == "trusted" && e["key"].as_str().is_some_and(|k| k.len() == 64)));
    let lint = entries.iter().find(|e| e["step"] == "lint").expect("lint");
    assert_eq!((lint["run"].as_str(), lint["hits"].as_u64()), (Some(first_run.as_str()), Some(2)), "{lint}");
    let trimmed = cache(&["gc", "--steps", "--max-size", "0", "--json"]);
    assert_eq!(trimmed["removed"].as_array().map(Vec::len), Some(7), "{trimmed}");
    let (code, _, stderr) = output(airlock(&scratch.state()).args(["cache", "gc", "--steps"]));
    assert_eq!(code, 2, "a bound is needed: {stderr}");
    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(steps(&scratch).iter().all(|(_, cached, _)| cached.is_none()));
}

#[test]
fn a_steps_clocks_and_random_bytes_are_fixed_unless_it_asks_for_real_ones() {
    // The example pipeline of the book's step cache page.
    let scratch = Scratch::new();
    let yaml = std::fs::read_to_string(repo().join("pipelines/reproducible.yaml")).expect("reproducible.yaml");
    scratch.pipeline(&yaml.replace("../plugins/target", "{plugins}"));
    let said = |scratch: &Scratch, step: &str| {
        let (code, log, stderr) = output(airlock(&scratch.state()).args(["logs", "last", step]));
        assert_eq!(code, 0, "{stderr}");
        log
    };
    let (code, _, stderr) = scratch.run(&["--no-cache"]);
    assert_eq!(code, 0, "{stderr}");
    let (fixed, other, real) = (said(&scratch, "fixed"), said(&scratch, "other"), said(&scratch, "real"));
    // 2000-01-01T00:00:00Z, read once before anything else.
    assert!(fixed.starts_with("time 946684800000000000\n"), "{fixed}");
    assert!(!real.starts_with("time 946684800"), "{real}");
    let random = |log: &str| log.lines().find(|l| l.starts_with("random ")).expect("random").to_owned();
    assert_ne!(random(&fixed), random(&other), "two steps share their random bytes");

    let (code, _, stderr) = scratch.run(&["--no-cache"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(said(&scratch, "fixed"), fixed, "a deterministic step differed between runs");
    assert_eq!(said(&scratch, "other"), other);
    assert_ne!(said(&scratch, "real"), real, "a step with the real clocks saw the same time twice");

    // From the cache: the deterministic steps, not the others.
    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    for (step, cached) in [("fixed", true), ("other", true), ("real", false), ("uncached", false)] {
        assert_eq!(scratch.step(step)["cached"].is_object(), cached, "{step}: {}", scratch.step(step));
    }
    assert!(scratch.step("real")["cache_key"].is_null(), "a step with the real clocks has no key");
}

#[test]
fn verify_runs_steps_again_and_says_loudly_when_the_same_inputs_made_other_bytes() {
    let scratch = Scratch::new();
    scratch.file("src/a.txt", "one\n");
    scratch.pipeline(
        "name: v\nsources: { src: src }\nsteps:\n  \
         fixed:\n    uses: {plugins}/wasm32-wasip2/release/entropy.wasm\n    args: [out.txt]\n    outputs: [out.txt]\n  \
         stamp:\n    uses: {plugins}/wasm32-wasip2/release/entropy.wasm\n    inputs: [src]\n    needs: [fixed]\n    \
         args: [out.txt, '${{ inputs.src }}/a.txt']\n    outputs: [out.txt]\n  \
         real:\n    uses: {plugins}/wasm32-wasip2/release/entropy.wasm\n    args: [out.txt]\n    outputs: [out.txt]\n    \
         deterministic: false\n",
    );
    let (code, _, stderr) = scratch.run(&[]);
    assert_eq!(code, 0, "{stderr}");
    let run = last_run(&scratch);
    let verify = |args: &[&str]| {
        let (code, stdout, stderr) = output(airlock(&scratch.state()).args(["verify", "--json"]).args(args));
        let verdicts: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stderr}"));
        let of = |step: &str| {
            verdicts["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .find(|v| v["step"] == step)
                .map(|v| v["verdict"].clone())
        };
        (code, of("fixed"), of("stamp"), of("real"))
    };
    let same = Some(serde_json::Value::from("same"));
    assert_eq!(verify(&[&run]), (0, same.clone(), same.clone(), Some("not-deterministic".into())));
    // The verify left no run behind, and took nothing from the cache.
    let (_, runs, _) = output(airlock(&scratch.state()).args(["runs", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&runs).expect("JSON").as_array().map(Vec::len), Some(1));

    // The input's bytes stay, its modification time moves: the key is the
    // same, and `stamp` (which prints that time) makes other bytes.
    let file = std::fs::File::options().write(true).open(scratch.path().join("src/a.txt")).expect("open");
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400)).expect("touch");
    let (code, fixed, stamp, _) = verify(&[&run]);
    assert_eq!((code, fixed, stamp), (1, same.clone(), Some("different".into())));
    let (code, table, stderr) = output(airlock(&scratch.state()).args(["verify", &run, "stamp"]));
    assert_eq!(code, 1);
    assert!(table.contains("DIFFERENT") && table.contains("out.txt: recorded "), "{table}");
    assert!(stderr.contains("made other bytes from the same inputs"), "{stderr}");
    assert!(!table.contains("real"), "only the step asked for (and those it needs) is judged: {table}");

    // Its bytes change: the step saw something else, and is not judged.
    std::fs::write(scratch.path().join("src/a.txt"), "two\n").expect("write");
    let (code, fixed, stamp, _) = verify(&[&run]);
    assert_eq!((code, fixed, stamp), (1, same, Some("inputs-changed".into())));
    let (code, _, stderr) = output(airlock(&scratch.state()).args(["verify", &run, "nope"]));
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn a_policy_sample_of_hits_runs_again_and_a_difference_is_loud_and_drops_the_entry() {
    let scratch = Scratch::new();
    scratch.file("src/a.txt", "one\n");
    let policy = scratch.file("policy.yaml", "step_cache: { verify_percent: 100 }\n");
    scratch.pipeline(
        "name: v\nsources: { src: src }\nsteps:\n  \
         stamp:\n    uses: {plugins}/wasm32-wasip2/release/entropy.wasm\n    inputs: [src]\n    \
         args: [out.txt, '${{ inputs.src }}/a.txt']\n    outputs: [out.txt]\n",
    );
    let run = |with_policy: bool| {
        let mut cmd = airlock(&scratch.state());
        if with_policy {
            cmd.arg("--policy").arg(&policy);
        }
        let (code, _, stderr) = output(cmd.arg("run").arg(scratch.path().join("pipeline.yaml")));
        assert_eq!(code, 0, "{stderr}");
        (scratch.step("stamp"), stderr)
    };
    let (first, _) = run(true);
    assert!(first["cache_check"].is_null() && first["cached"].is_null(), "{first}");
    let first_run = last_run(&scratch);
    // Every hit is sampled: the step runs, and made the same bytes.
    let (checked, stderr) = run(true);
    assert!(checked["cached"].is_null(), "{checked}");
    assert_eq!(checked["cache_check"]["same"], true, "{checked}");
    assert!(stderr.contains(&format!("checked: the same bytes as run {first_run}")), "{stderr}");
    // Its input's modification time moves: other bytes, said loudly.
    let file = std::fs::File::options().write(true).open(scratch.path().join("src/a.txt")).expect("open");
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).expect("touch");
    let (differs, stderr) = run(true);
    assert_eq!(differs["cache_check"]["same"], false, "{differs}");
    assert!(stderr.contains("CACHE CHECK FAILED"), "{stderr}");
    let (_, shown, _) = output(airlock(&scratch.state()).args(["show", "last"]));
    assert!(shown.contains("CACHE CHECK FAILED: other bytes than run"), "{shown}");
    // The entry is gone: the next run, unsampled, runs the step.
    let (after, _) = run(false);
    assert!(after["cached"].is_null(), "{after}");
    let (again, _) = run(false);
    assert!(again["cached"].is_object(), "recorded again by the run after: {again}");
}

#[test]
fn a_plugin_the_environment_stops_allowing_is_refused_even_when_cached() {
    let scratch = Scratch::new();
    let entropy = plugins().join("wasm32-wasip2/release/entropy.wasm");
    let policy = |allowed: &std::path::Path| {
        scratch.file(
            "policy.yaml",
            format!(
                "environments:\n  ci:\n    provider: {{ type: command, argv: [/bin/true] }}\n    pipelines: [e]\n    \
                 grants:\n      plugins: ['{}']\n",
                allowed.display()
            ),
        )
    };
    scratch.pipeline(
        "name: e\nenvironment: ci\nsteps:\n  a:\n    uses: {plugins}/wasm32-wasip2/release/entropy.wasm\n    \
         args: [out.txt]\n    outputs: [out.txt]\n",
    );
    let run = |policy: &std::path::Path| {
        output(
            airlock(&scratch.state()).arg("--policy").arg(policy).arg("run").arg(scratch.path().join("pipeline.yaml")),
        )
    };
    let allowing = policy(&entropy);
    let (code, _, stderr) = run(&allowing);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&allowing);
    assert_eq!(code, 0, "{stderr}");
    assert!(scratch.step("a")["cached"].is_object());
    let refusing = policy(&plugins().join("wasm32-wasip2/release/noop.wasm"));
    let (code, _, stderr) = run(&refusing);
    assert_eq!(code, 1, "{stderr}");
    let step = scratch.step("a");
    assert!(step["cached"].is_null(), "{step}");
    assert!(
        step["reason"].as_str().is_some_and(|r| r.contains("is not among the plugins environment `ci` allows")),
        "{step}"
    );
}

/// A user the policy does not trust (`trusted: false`) runs untrusted,
/// through the API and with `airlock run`: no publishing, and a cache
/// scope of their own that the trusted user's runs never read.
#[test]
fn runs_of_a_user_the_policy_does_not_trust_are_untrusted_and_cannot_feed_trusted_runs() {
    use crate::support::{Server, call, http, submit_run, user_token, wait_for_end};
    let scratch = Scratch::new();
    let (mallory, rita) = (user_token(scratch.path()), user_token(scratch.path()));
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  mallory: {{ token_sha256: {}, roles: [runner], trusted: false }}\n  \
             rita: {{ token_sha256: {}, roles: [runner] }}\ntargets:\n  site:\n    dir: published\n",
            mallory.digest, rita.digest
        ),
    );
    scratch.file("pipelines/src/a.txt", "one\n");
    scratch.file(
        "pipelines/stamp.yaml",
        format!(
            "name: stamp\nsources: {{ src: src }}\nsteps:\n  stamp:\n    uses: {}\n    inputs: [src]\n    \
             args: [out.txt, '${{{{ inputs.src }}}}/a.txt']\n    outputs: [out.txt]\n  \
             ship:\n    needs: [stamp]\n    publish: {{ target: site, build: '${{{{ run.id }}}}', from: [stamp] }}\n",
            plugins().join("wasm32-wasip2/release/entropy.wasm").display()
        ),
    );
    let mut server = Server::start(&scratch.state(), &policy, &scratch.path().join("pipelines"), &[]);
    let agent = http();
    let run_as = |token: &str| {
        let id = submit_run(&agent, &server.url, token, "stamp.yaml");
        wait_for_end(&agent, &server.url, token, &id)
    };
    let step = |run: &serde_json::Value, name: &str| {
        run["steps"].as_array().expect("steps").iter().find(|s| s["name"] == name).expect("step").clone()
    };
    let untrusted = run_as(&mallory.token);
    assert_eq!(untrusted["run"]["state"], "failed", "{untrusted}");
    let refused = step(&untrusted, "ship")["reason"].as_str().expect("reason").to_owned();
    assert!(refused.contains("user `mallory` is one the policy does not trust"), "{refused}");
    // The input's modification time moves: the same key, other bytes.
    let file = std::fs::File::options().write(true).open(scratch.path().join("pipelines/src/a.txt")).expect("open");
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).expect("touch");
    let trusted = run_as(&rita.token);
    assert_eq!(trusted["run"]["state"], "succeeded", "{trusted}");
    let (theirs, ours) = (step(&untrusted, "stamp"), step(&trusted, "stamp"));
    assert_eq!(theirs["cache_key"], ours["cache_key"]);
    assert!(ours["cached"].is_null(), "a trusted run took an untrusted user's outputs: {ours}");
    assert_ne!(theirs["outputs"], ours["outputs"]);
    // Mallory's next run may take what a trusted run made.
    let again = run_as(&mallory.token);
    assert_eq!(step(&again, "stamp")["cached"]["scope"], "trusted", "{again}");
    let (status, _) =
        call(&agent, "GET", &format!("{}/api/v1/runs", server.url), Some(&rita.token), None, &[]).expect("runs");
    assert_eq!(status, 200);
    server.stop();

    // With `airlock run` and mallory's token: untrusted too.
    let (code, _, stderr) = output(
        airlock(&scratch.state())
            .env("AIRLOCK_USER_TOKEN", &mallory.token)
            .arg("--policy")
            .arg(&policy)
            .arg("run")
            .arg(scratch.path().join("pipelines/stamp.yaml")),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is one the policy does not trust"), "{stderr}");
}
