//! `airlock token`: created once, stored by digest, listed without the
//! secret, revoked by id.

use crate::support::{Scratch, airlock, output};

#[test]
fn a_token_is_shown_once_and_never_stored_or_listed() {
    let s = Scratch::new();
    let (code, token, stderr) = output(airlock(&s.state()).args([
        "token",
        "create",
        "--scope",
        "publish:snapshots/pr-481-",
        "--ttl",
        "30m",
        "--max-files",
        "100",
        "--cidr",
        "127.0.0.1/32",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let token = token.trim();
    assert!(token.starts_with("alk_") && token.len() == 68, "stdout holds the token alone: {token:?}");
    assert!(stderr.contains("publish:snapshots/pr-481-, valid until"), "{stderr}");
    assert!(!stderr.contains(token));

    let (code, list, _) = output(airlock(&s.state()).args(["token", "list"]));
    assert_eq!(code, 0);
    assert!(
        list.contains("active") && list.contains("publish:snapshots/pr-481- (files 0/100, from 127.0.0.1/32)"),
        "{list}"
    );
    assert!(!list.contains(token));
    let (_, json, _) = output(airlock(&s.state()).args(["token", "list", "--json"]));
    assert!(!json.contains(token));
    let id = serde_json::from_str::<serde_json::Value>(&json).expect("json")[0]["id"].as_str().expect("id").to_owned();

    for f in crate::support::files_below(&s.state()) {
        let bytes = std::fs::read(&f).expect("read");
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "the token is in {}", f.display());
    }

    let (code, _, stderr) = output(airlock(&s.state()).args(["token", "revoke", &id]));
    assert_eq!(code, 0, "{stderr}");
    let (_, list, _) = output(airlock(&s.state()).args(["token", "list"]));
    assert!(list.contains("revoked"), "{list}");
}

#[test]
fn bad_token_requests_say_what_is_wrong() {
    let s = Scratch::new();
    for (args, message) in [
        (&["--scope", "publish"][..], "scope `publish` has no `:`"),
        (&["--scope", "deploy:prod"], "the actions are: publish"),
        (&["--scope", "publish:snap shots"], "needs a target of letters, digits"),
        (&["--scope", "publish:s/..", "--ttl", "1h"], "build-id prefix starting with `.`"),
        (&["--scope", "publish:s/a;b"], "build-id prefix with characters"),
        (&["--scope", "publish:s", "--ttl", "31d"], "longer than 30 days"),
        (&["--scope", "publish:s", "--not-before", "tomorrow"], "is not a time"),
        (&["--scope", "publish:s", "--cidr", "localhost"], "invalid value 'localhost' for '--cidr <NET>'"),
    ] {
        let (code, stdout, stderr) = output(airlock(&s.state()).args(["token", "create"]).args(args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "no token for a bad request");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = output(airlock(&s.state()).args(["token", "revoke", "tok-00000000"]));
    assert_eq!(code, 3);
    assert!(stderr.contains("no token `tok-00000000`"), "{stderr}");
}

#[test]
fn a_user_token_comes_with_the_digest_the_policy_names() {
    use sha2::Digest;
    let s = Scratch::new();
    let (code, stdout, stderr) = output(airlock(&s.state()).args(["user", "token"]));
    assert_eq!(code, 0, "{stderr}");
    let token = stdout.trim();
    assert!(token.starts_with("alu_") && token.len() == 68, "{token}");
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    assert!(stderr.contains(&format!("token_sha256: {digest}")), "{stderr}");
    assert!(!s.state().exists(), "a user token is not stored anywhere by airlock");

    let policy = s.file("policy.yaml", format!("users:\n  alice: {{ token_sha256: {digest}, roles: [approver] }}\n"));
    let pipeline = s.file("p.yaml", "name: p\nsteps:\n  a:\n    uses: a.wasm\n");
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).expect("wat");
    std::fs::write(s.path().join("a.wasm"), module).expect("plugin file");
    let (code, _, stderr) = output(airlock(&s.state()).arg("--policy").arg(&policy).arg("validate").arg(&pipeline));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn env_check_lists_credentials_that_need_attention_without_their_values() {
    let s = Scratch::new();
    let canary = "canary-deploy-secret-51f0";
    s.file("keys/fresh", canary);
    s.file("keys/soon", canary);
    let in_days = |days: u64| {
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let policy = s.file(
        "policy.yaml",
        format!(
            "environments:\n  prod:\n    provider: {{ type: directory, path: www }}\n    pipelines: ['*']\n    credentials:\n      fresh: {{ file: keys/fresh, expires: '{}' }}\n      soon: {{ file: keys/soon, expires: '{}' }}\n      old: {{ file: keys/fresh, expires: 2020-01-01 }}\n      absent: {{ env: AIRLOCK_TEST_SURELY_UNSET_VAR }}\n",
            in_days(90),
            in_days(3)
        ),
    );
    let (code, stdout, stderr) =
        output(airlock(&s.state()).arg("--policy").arg(&policy).args(["env", "check", "--days", "7"]));
    assert_eq!(code, 1, "{stderr}");
    let line =
        |name: &str| stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or_default().to_owned();
    assert!(line("fresh").contains(" ok "), "{stdout}");
    assert!(line("soon").contains("expiring"), "{stdout}");
    assert!(line("old").contains("expired") && line("old").contains("expired on 2020-01-01T00:00:00Z"), "{stdout}");
    assert!(line("absent").contains("missing") && line("absent").contains("AIRLOCK_TEST_SURELY_UNSET_VAR"), "{stdout}");
    assert!(stderr.contains("3 of 4 credentials need attention"), "{stderr}");
    assert!(!stdout.contains(canary) && !stderr.contains(canary));

    let (code, json, _) =
        output(airlock(&s.state()).arg("--policy").arg(&policy).args(["env", "check", "--days", "1", "--json"]));
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    let soon = report.as_array().expect("list").iter().find(|r| r["name"] == "soon").expect("soon");
    assert_eq!(soon["state"], "ok", "3 days away is fine when asking about 1");
    assert!(!json.contains(canary));
}
