//! Webhooks from git forges: their signatures checked, their payloads
//! read into the few facts a run needs.
//!
//! Each forge proves a delivery its own way: GitHub signs the body with
//! HMAC-SHA256 of the webhook secret (`X-Hub-Signature-256:
//! sha256=HEX`), Gitea and Forgejo the same without the prefix
//! (`X-Gitea-Signature: HEX`), and GitLab sends the secret itself
//! (`X-Gitlab-Token`). [`verify`] checks that, in constant time, before
//! anything reads the body; only then does [`parse`] look inside.
//!
//! A payload becomes an [`Event`]: a push of a branch or tag, a pull
//! request opened or pushed to, or something airlock does not start runs
//! on (acknowledged, then ignored). Refs, commit ids and names are
//! checked here, so what reaches `git` and the run record is plain.

use airlock_model::policy::Forge;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// No signature, or one that does not match: answered 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Signed, but not a payload airlock can read: answered 400.
    #[error("{0}")]
    Malformed(String),
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A branch or tag pushed.
    Push {
        /// The ref, `refs/heads/NAME` or `refs/tags/NAME`.
        #[serde(rename = "ref")]
        git_ref: String,
        /// The commit the ref points at now.
        commit: String,
        /// The commit it pointed at before, when it existed.
        before: Option<String>,
        /// Who pushed.
        sender: String,
    },
    /// A pull request opened, reopened or pushed to.
    PullRequest {
        /// Its number on the forge.
        number: u64,
        /// The commit at its head.
        commit: String,
        /// Its head branch's name.
        head_ref: String,
        /// The branch it is into.
        base_ref: String,
        /// The commit of that branch when the event was sent.
        base_commit: Option<String>,
        /// Whether its head is in another repository (a fork).
        fork: bool,
        /// Whether the forge calls its author an owner, member or
        /// collaborator of the repository.
        member: bool,
        /// Whether its author is new to the repository: GitHub's
        /// first-time contributors (and authors it knows no tie of); on
        /// forges that do not say, anyone's fork who is not a member.
        #[serde(default)]
        first_time: bool,
        /// Who opened or pushed it.
        sender: String,
    },
    /// A run asked for through the API, for whatever commit a branch or
    /// tag points at when the intake asks the forge.
    Manual {
        /// The ref, `refs/heads/NAME` or `refs/tags/NAME`.
        #[serde(rename = "ref")]
        git_ref: String,
        /// The user who asked.
        sender: String,
    },
    /// A ref deleted, a ping, a pull request closed or labelled, an
    /// event of a kind airlock does not run on.
    Ignored {
        /// What it was, in words.
        what: String,
    },
}

impl Event {
    /// The commit the event is about, when the event says (a manual
    /// run's commit is found when it is taken).
    pub fn commit(&self) -> Option<&str> {
        match self {
            Event::Push { commit, .. } | Event::PullRequest { commit, .. } => Some(commit),
            Event::Manual { .. } | Event::Ignored { .. } => None,
        }
    }

    /// Who caused it.
    pub fn sender(&self) -> Option<&str> {
        match self {
            Event::Push { sender, .. } | Event::PullRequest { sender, .. } | Event::Manual { sender, .. } => {
                Some(sender)
            }
            Event::Ignored { .. } => None,
        }
    }
}

/// A delivery's headers, by name (any case).
pub trait Headers {
    /// The value of the header `name`, if it is there and is text.
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

/// Reads a repository's secret (its webhook secret or its token) from
/// where the policy says, at the moment it is needed, so a rotated
/// secret takes effect without a restart. The error names the place,
/// never the value.
pub fn read_secret(
    credential: &airlock_model::policy::Credential,
    what: &str,
    policy_dir: &std::path::Path,
) -> Result<crate::deploy::Secret, String> {
    use crate::deploy::credentials::{Unreadable, read_source};
    read_source(&credential.source, policy_dir).map_err(|missing| match missing {
        Unreadable::Env(var) => format!("{what} is missing: the engine's environment variable `{var}` is not set"),
        Unreadable::File { file, why } => format!("{what} is missing: cannot read `{file}`: {why}"),
    })
}

/// Checks that a delivery comes from the forge: its signature (or token)
/// against the repository's webhook secret, in constant time. Nothing of
/// the body is read before this passes.
pub fn verify(forge: Forge, secret: &[u8], headers: &(impl Headers + ?Sized), body: &[u8]) -> Result<(), HookError> {
    let refuse = |why: &str| Err(HookError::Unauthenticated(why.to_owned()));
    match forge {
        Forge::Github | Forge::Gitea => {
            let (header, prefix) = match forge {
                Forge::Github => ("x-hub-signature-256", "sha256="),
                _ => ("x-gitea-signature", ""),
            };
            // Forgejo sends its own header beside Gitea's.
            let value = headers
                .get(header)
                .or_else(|| matches!(forge, Forge::Gitea).then(|| headers.get("x-forgejo-signature")).flatten());
            let Some(value) = value else {
                return refuse(&format!(
                    "the delivery has no `{header}` header; set the webhook's secret on the forge"
                ));
            };
            let Some(signature) = value.trim().strip_prefix(prefix).and_then(|h| hex::decode(h).ok()) else {
                return refuse(&format!("`{header}` is not {prefix}HEX"));
            };
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            ring::hmac::verify(&key, body, &signature)
                .or_else(|_| refuse("the signature does not match the body and the repository's webhook secret"))
        }
        Forge::Gitlab => {
            let Some(token) = headers.get("x-gitlab-token") else {
                return refuse("the delivery has no `X-Gitlab-Token` header; set the webhook's secret token on GitLab");
            };
            // Compared as digests, so neither the bytes nor the length
            // of the secret show in the time taken.
            let given = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let wanted = ring::digest::digest(&ring::digest::SHA256, secret);
            if bool::from(given.as_ref().ct_eq(wanted.as_ref())) {
                Ok(())
            } else {
                refuse("`X-Gitlab-Token` is not the repository's webhook secret")
            }
        }
    }
}

/// The id the forge gives a delivery, which stays the same when it
/// sends it again: what deliveries are deduplicated by.
pub fn delivery_id(forge: Forge, headers: &(impl Headers + ?Sized)) -> Result<String, HookError> {
    let names: &[&str] = match forge {
        Forge::Github => &["x-github-delivery"],
        Forge::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        Forge::Gitlab => &["x-gitlab-event-uuid", "idempotency-key"],
    };
    let id = names.iter().find_map(|n| headers.get(n)).map(str::trim).ok_or_else(|| {
        HookError::Malformed(format!("the delivery has no `{}` header to tell it from others", names[0]))
    })?;
    let plain = !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !plain {
        return Err(HookError::Malformed(format!("`{}` is not a delivery id", names[0])));
    }
    Ok(id.to_owned())
}

/// Reads a verified delivery into the event it is.
pub fn parse(forge: Forge, headers: &(impl Headers + ?Sized), body: &[u8]) -> Result<Event, HookError> {
    let (header, kind) = match forge {
        Forge::Github => ("x-github-event", headers.get("x-github-event")),
        Forge::Gitea => ("x-gitea-event", headers.get("x-gitea-event").or_else(|| headers.get("x-forgejo-event"))),
        Forge::Gitlab => ("x-gitlab-event", headers.get("x-gitlab-event")),
    };
    let kind = kind.ok_or_else(|| HookError::Malformed(format!("the delivery has no `{header}` header")))?;
    let push = match (forge, kind) {
        (Forge::Github | Forge::Gitea, "push") | (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => true,
        (Forge::Github | Forge::Gitea, "pull_request") | (Forge::Gitlab, "Merge Request Hook") => false,
        (_, other) => {
            return Ok(Event::Ignored { what: format!("a `{}` event", airlock_model::text::one_line(other, 60)) });
        }
    };
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| HookError::Malformed(format!("the payload is not JSON: {e}")))?;
    match (forge, push) {
        (_, true) => push_event(forge, &payload),
        (Forge::Gitlab, false) => merge_request(&payload),
        (_, false) => pull_request(forge, &payload),
    }
}

fn text<'a>(payload: &'a Value, pointer: &str) -> Result<&'a str, HookError> {
    payload
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| HookError::Malformed(format!("the payload has no `{}`", pointer.trim_start_matches('/'))))
}

fn push_event(forge: Forge, payload: &Value) -> Result<Event, HookError> {
    let git_ref = checked_ref(text(payload, "/ref")?)?;
    let after = text(payload, "/after")?;
    let before = payload.pointer("/before").and_then(Value::as_str);
    let zero = |c: &str| c.bytes().all(|b| b == b'0');
    if zero(after) || payload.pointer("/deleted").and_then(Value::as_bool) == Some(true) {
        return Ok(Event::Ignored { what: format!("`{git_ref}` deleted") });
    }
    let sender = match forge {
        Forge::Github => text(payload, "/sender/login").or_else(|_| text(payload, "/pusher/name"))?,
        Forge::Gitea => text(payload, "/pusher/login").or_else(|_| text(payload, "/sender/login"))?,
        Forge::Gitlab => text(payload, "/user_username")?,
    };
    Ok(Event::Push {
        git_ref,
        commit: checked_commit(after)?,
        before: before.filter(|b| !zero(b)).map(checked_commit).transpose()?,
        sender: checked_name(sender)?,
    })
}

fn pull_request(forge: Forge, payload: &Value) -> Result<Event, HookError> {
    let action = text(payload, "/action")?;
    // Gitea says `synchronized` where GitHub says `synchronize`.
    if !matches!(action, "opened" | "reopened" | "synchronize" | "synchronized") {
        return Ok(Event::Ignored { what: format!("a pull request {}", airlock_model::text::one_line(action, 40)) });
    }
    let pr = payload
        .pointer("/pull_request")
        .ok_or_else(|| HookError::Malformed("the payload has no `pull_request`".into()))?;
    let base_repo = text(pr, "/base/repo/full_name")?;
    // A fork that was deleted leaves `head.repo` null: not this repository.
    let head_repo = pr.pointer("/head/repo/full_name").and_then(Value::as_str);
    let fork = head_repo != Some(base_repo);
    let association = pr.pointer("/author_association").and_then(Value::as_str).unwrap_or_default();
    let member = matches!(association, "OWNER" | "MEMBER" | "COLLABORATOR");
    let first_time = fork
        && match forge {
            Forge::Github => matches!(association, "FIRST_TIME_CONTRIBUTOR" | "FIRST_TIMER" | "NONE"),
            _ => !member,
        };
    let sender = match forge {
        Forge::Github => text(payload, "/sender/login")?,
        _ => text(payload, "/sender/login").or_else(|_| text(payload, "/sender/username"))?,
    };
    Ok(Event::PullRequest {
        number: pr
            .pointer("/number")
            .or_else(|| payload.pointer("/number"))
            .and_then(Value::as_u64)
            .ok_or_else(|| HookError::Malformed("the payload has no pull request `number`".into()))?,
        commit: checked_commit(text(pr, "/head/sha")?)?,
        head_ref: checked_branch(text(pr, "/head/ref")?)?,
        base_ref: checked_branch(text(pr, "/base/ref")?)?,
        base_commit: pr.pointer("/base/sha").and_then(Value::as_str).map(checked_commit).transpose()?,
        fork,
        member,
        first_time,
        sender: checked_name(sender)?,
    })
}

fn merge_request(payload: &Value) -> Result<Event, HookError> {
    let attrs = payload
        .pointer("/object_attributes")
        .ok_or_else(|| HookError::Malformed("the payload has no `object_attributes`".into()))?;
    let action = attrs.pointer("/action").and_then(Value::as_str).unwrap_or_default();
    // An `update` starts a run only when it brought commits (`oldrev`).
    let pushed = action == "update" && attrs.pointer("/oldrev").is_some_and(|v| v.is_string());
    if !(matches!(action, "open" | "reopen") || pushed) {
        return Ok(Event::Ignored { what: format!("a merge request {}", airlock_model::text::one_line(action, 40)) });
    }
    let source = attrs.pointer("/source_project_id").and_then(Value::as_u64);
    let target = attrs.pointer("/target_project_id").and_then(Value::as_u64);
    Ok(Event::PullRequest {
        number: attrs
            .pointer("/iid")
            .and_then(Value::as_u64)
            .ok_or_else(|| HookError::Malformed("the payload has no `object_attributes.iid`".into()))?,
        commit: checked_commit(text(attrs, "/last_commit/id")?)?,
        head_ref: checked_branch(text(attrs, "/source_branch")?)?,
        base_ref: checked_branch(text(attrs, "/target_branch")?)?,
        base_commit: None,
        fork: source.is_none() || source != target,
        // GitLab's payload does not say; a fork counts as a stranger's.
        member: source.is_some() && source == target,
        first_time: source.is_none() || source != target,
        sender: checked_name(text(payload, "/user/username")?)?,
    })
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn checked_commit(id: &str) -> Result<String, HookError> {
    let ok = (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(HookError::Malformed(format!("`{}` is not a commit id", airlock_model::text::one_line(id, 80))))
    }
}

/// A ref under `refs/heads/` or `refs/tags/` whose name git itself would
/// accept (see `git check-ref-format`), short enough to show.
pub fn checked_ref(name: &str) -> Result<String, HookError> {
    let bad =
        || HookError::Malformed(format!("`{}` is not a branch or tag ref", airlock_model::text::one_line(name, 120)));
    let short = name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/tags/")).ok_or_else(bad)?;
    checked_branch(short).map_err(|_| bad())?;
    Ok(name.to_owned())
}

/// A branch or tag name as `git check-ref-format --branch` takes it.
pub fn checked_branch(name: &str) -> Result<String, HookError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name != "@"
        && !name.split('/').any(|part| part.starts_with('.'))
        && !name.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\\u{7f}".contains(c));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(HookError::Malformed(format!("`{}` is not a branch or tag name", airlock_model::text::one_line(name, 120))))
    }
}

/// A user name as forges allow them.
fn checked_name(name: &str) -> Result<String, HookError> {
    let ok = !name.is_empty() && name.len() <= 100 && !name.chars().any(|c| c.is_control());
    if ok { Ok(name.to_owned()) } else { Err(HookError::Malformed("the payload's user name is not one".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// GitHub's own example payloads and signing code, from npm (put in
    /// place by `.ci/test-setup`).
    fn octokit() -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/octokit/node_modules/@octokit");
        assert!(dir.is_dir(), "{} is missing: run `bash .ci/test-setup`", dir.display());
        dir
    }

    fn examples(event: &str) -> Vec<Value> {
        let index = octokit().join("webhooks-examples/api.github.com/index.json");
        let all: Vec<Value> = serde_json::from_slice(&std::fs::read(&index).expect("read examples")).expect("JSON");
        let found = all.into_iter().find(|e| e["name"] == event).expect("an event of that name");
        found["examples"].as_array().expect("examples").clone()
    }

    /// Signs `body` with `@octokit/webhooks-methods`, as GitHub signs.
    fn octokit_sign(secret: &str, body: &[u8]) -> String {
        let dir = octokit().join("webhooks-methods");
        let script = "import(process.argv[1]).then(async (m) => { \
                      const body = require('fs').readFileSync(0, 'utf8'); \
                      process.stdout.write(await m.sign(process.argv[2], body)); })";
        let mut child = std::process::Command::new("node")
            .args(["-e", script, dir.join("dist-node/index.js").to_str().expect("path"), secret])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node");
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(body).expect("write");
        let out = child.wait_with_output().expect("node ran");
        assert!(out.status.success(), "node failed");
        String::from_utf8(out.stdout).expect("text")
    }

    fn github(event: &str, signature: &str) -> Vec<(&'static str, String)> {
        vec![
            ("X-GitHub-Event", event.to_owned()),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            ("X-Hub-Signature-256", signature.to_owned()),
        ]
    }

    fn view<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    #[test]
    fn github_examples_signed_by_octokit_are_verified_and_read() {
        let secret = "It's a Secret to Everybody";
        let mut pushes = Vec::new();
        for example in examples("push") {
            let body = serde_json::to_vec(&example).expect("JSON");
            let headers = github("push", &octokit_sign(secret, &body));
            let headers = view(&headers);
            verify(Forge::Github, secret.as_bytes(), headers.as_slice(), &body).expect("octokit's signature");
            assert_eq!(
                delivery_id(Forge::Github, headers.as_slice()).expect("id"),
                "72d3162e-cc78-11e3-81ab-4c9367dc0958"
            );
            pushes.push(parse(Forge::Github, headers.as_slice(), &body).expect("read"));
        }
        let commit = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
        assert!(
            pushes.contains(&Event::Push {
                git_ref: "refs/heads/master".into(),
                commit: commit.into(),
                before: None,
                sender: "Codertocat".into(),
            }),
            "{pushes:?}"
        );
        assert!(pushes.iter().any(|e| matches!(e, Event::Push { git_ref, .. } if git_ref == "refs/tags/simple-tag")));
        assert!(pushes.iter().any(|e| matches!(e, Event::Ignored { what } if what.contains("deleted"))));

        let mut runs = 0;
        for example in examples("pull_request") {
            let body = serde_json::to_vec(&example).expect("JSON");
            let headers = github("pull_request", &octokit_sign(secret, &body));
            let headers = view(&headers);
            verify(Forge::Github, secret.as_bytes(), headers.as_slice(), &body).expect("octokit's signature");
            let event = parse(Forge::Github, headers.as_slice(), &body).expect("read");
            let action = example["action"].as_str().expect("action");
            match event {
                Event::PullRequest { fork, member, ref base_ref, .. } => {
                    assert!(matches!(action, "opened" | "reopened" | "synchronize"), "{action} starts nothing");
                    assert!(!fork && member && base_ref == "master");
                    runs += 1;
                }
                Event::Ignored { .. } => assert!(!matches!(action, "opened" | "reopened" | "synchronize"), "{action}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(runs >= 3, "only {runs} pull requests start runs");
    }

    #[test]
    fn a_pull_request_from_a_fork_is_known_as_one() {
        let mut example =
            examples("pull_request").into_iter().find(|e| e["action"] == "opened").expect("an opened example");
        example["pull_request"]["head"]["repo"]["full_name"] = "stranger/Hello-World".into();
        example["pull_request"]["author_association"] = "FIRST_TIME_CONTRIBUTOR".into();
        let body = serde_json::to_vec(&example).expect("JSON");
        let headers = [("X-GitHub-Event", "pull_request")];
        let Event::PullRequest { fork, member, .. } = parse(Forge::Github, headers.as_slice(), &body).expect("read")
        else {
            panic!("a pull request")
        };
        assert!(fork && !member);
        let Event::PullRequest { first_time, .. } = parse(Forge::Github, headers.as_slice(), &body).expect("read")
        else {
            panic!("a pull request")
        };
        assert!(first_time, "FIRST_TIME_CONTRIBUTOR");
        // A deleted fork leaves no head repository: still a fork.
        example["pull_request"]["head"]["repo"] = Value::Null;
        let body = serde_json::to_vec(&example).expect("JSON");
        let event = parse(Forge::Github, headers.as_slice(), &body).expect("read");
        assert!(matches!(event, Event::PullRequest { fork: true, .. }), "{event:?}");
    }

    #[test]
    fn bad_signatures_are_refused_before_the_body_is_read() {
        let secret = b"right secret";
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let good = format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), body))
        );
        let ok = [("X-Hub-Signature-256", good.as_str())];
        verify(Forge::Github, secret, ok.as_slice(), body).expect("signed");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], &'a [u8]);
        let cases: [Case<'_>; 5] = [
            (&[], secret, body),
            (&ok, b"wrong secret", body),
            (&ok, secret, br#"{"zen": "Keep it logically awesome!"}"#),
            (&[("X-Hub-Signature-256", "sha1=abcd")], secret, body),
            (&[("X-Hub-Signature-256", "sha256=zz")], secret, body),
        ];
        for (headers, secret, body) in cases {
            let e = verify(Forge::Github, secret, headers, body).expect_err("refused");
            assert!(matches!(e, HookError::Unauthenticated(_)), "{e:?}");
        }
        // Gitea signs the same way without the prefix; Forgejo also under its own name.
        let hexed = good.trim_start_matches("sha256=");
        verify(Forge::Gitea, secret, [("X-Gitea-Signature", hexed)].as_slice(), body).expect("gitea");
        verify(Forge::Gitea, secret, [("X-Forgejo-Signature", hexed)].as_slice(), body).expect("forgejo");
        assert!(verify(Forge::Gitea, secret, [("X-Gitea-Signature", good.as_str())].as_slice(), body).is_err());
        // GitLab sends the secret itself.
        verify(Forge::Gitlab, secret, [("X-Gitlab-Token", "right secret")].as_slice(), body).expect("gitlab");
        for wrong in ["right secreT", "right secret ", ""] {
            assert!(verify(Forge::Gitlab, secret, [("X-Gitlab-Token", wrong)].as_slice(), body).is_err(), "{wrong:?}");
        }
    }

    /// The shapes of the examples in Gitea's and GitLab's documentation.
    #[test]
    fn gitea_and_gitlab_payloads_are_read() {
        let gitea_push = serde_json::json!({
            "ref": "refs/heads/develop",
            "before": "28e1879d029cb852e4844d9c718537df08844e03",
            "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
            "commits": [{ "id": "bffeb74224043ba2feb48d137756c8a9331c449a", "message": "Webhooks Yay!" }],
            "repository": { "id": 140, "full_name": "gitea/webhooks" },
            "pusher": { "id": 1, "login": "gitea", "username": "gitea" },
            "sender": { "id": 1, "login": "gitea", "username": "gitea" }
        });
        let headers = [("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")];
        let body = serde_json::to_vec(&gitea_push).expect("JSON");
        assert_eq!(
            parse(Forge::Gitea, headers.as_slice(), &body).expect("read"),
            Event::Push {
                git_ref: "refs/heads/develop".into(),
                commit: "bffeb74224043ba2feb48d137756c8a9331c449a".into(),
                before: Some("28e1879d029cb852e4844d9c718537df08844e03".into()),
                sender: "gitea".into(),
            }
        );
        assert_eq!(delivery_id(Forge::Gitea, headers.as_slice()).expect("id"), "f6266f16-1bf3-46a5-9ea4-602e06ead473");
        let gitea_pr = serde_json::json!({
            "action": "synchronized",
            "number": 2,
            "pull_request": {
                "number": 2,
                "head": { "ref": "fix", "sha": "bffeb74224043ba2feb48d137756c8a9331c449a", "repo": { "full_name": "friend/webhooks" } },
                "base": { "ref": "main", "sha": "28e1879d029cb852e4844d9c718537df08844e03", "repo": { "full_name": "gitea/webhooks" } }
            },
            "sender": { "login": "friend", "username": "friend" }
        });
        let body = serde_json::to_vec(&gitea_pr).expect("JSON");
        let event = parse(Forge::Gitea, [("X-Gitea-Event", "pull_request")].as_slice(), &body).expect("read");
        assert!(matches!(event, Event::PullRequest { number: 2, fork: true, member: false, .. }), "{event:?}");

        let gitlab_push = serde_json::json!({
            "object_kind": "push",
            "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "ref": "refs/heads/master",
            "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "user_username": "jsmith",
            "project": { "id": 15, "path_with_namespace": "mike/diaspora" }
        });
        let headers =
            [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Event-UUID", "8a0e3bd4-4b3f-4a4a-9c8e-0f1d5b3c3a21")];
        let body = serde_json::to_vec(&gitlab_push).expect("JSON");
        let event = parse(Forge::Gitlab, headers.as_slice(), &body).expect("read");
        assert!(matches!(&event, Event::Push { sender, .. } if sender == "jsmith"), "{event:?}");
        let gitlab_mr = serde_json::json!({
            "object_kind": "merge_request",
            "user": { "username": "root" },
            "object_attributes": {
                "iid": 1, "action": "update", "oldrev": "95790bf891e76fee5e1747ab589903a6a1f80f22",
                "source_branch": "ms-viewport", "target_branch": "master",
                "source_project_id": 14, "target_project_id": 14,
                "last_commit": { "id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7" }
            }
        });
        let body = serde_json::to_vec(&gitlab_mr).expect("JSON");
        let headers = [("X-Gitlab-Event", "Merge Request Hook")];
        let event = parse(Forge::Gitlab, headers.as_slice(), &body).expect("read");
        assert!(
            matches!(&event, Event::PullRequest { number: 1, fork: false, member: true, base_ref, .. } if base_ref == "master"),
            "{event:?}"
        );
        let mut labelled = gitlab_mr.clone();
        labelled["object_attributes"]["oldrev"] = Value::Null;
        let body = serde_json::to_vec(&labelled).expect("JSON");
        assert!(matches!(parse(Forge::Gitlab, headers.as_slice(), &body).expect("read"), Event::Ignored { .. }));
    }

    #[test]
    fn refs_and_commits_that_git_would_refuse_are_refused() {
        for bad in [
            "refs/heads/a..b",
            "refs/heads/x\u{1b}[31m",
            "refs/heads/-rf",
            "refs/remotes/origin/main",
            "refs/heads/a b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/",
        ] {
            assert!(checked_ref(bad).is_err(), "{bad:?}");
        }
        for ok in ["refs/heads/main", "refs/heads/release/1.0", "refs/tags/v1.2.3"] {
            assert_eq!(checked_ref(ok).as_deref(), Ok(ok));
        }
        assert!(checked_commit("6113728f27ae82c7b1a177c8d03f9e96e0adf246").is_ok());
        for bad in ["6113728", "--upload-pack=x", "zz13728f27ae82c7b1a177c8d03f9e96e0adf246"] {
            assert!(checked_commit(bad).is_err(), "{bad}");
        }
        let body = br#"{"ref": "refs/heads/../../etc", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#;
        let e = parse(Forge::Github, [("X-GitHub-Event", "push")].as_slice(), body).expect_err("refused");
        assert!(matches!(e, HookError::Malformed(m) if m.contains("not a branch or tag ref")));
        let e = parse(Forge::Github, [("X-GitHub-Event", "push")].as_slice(), b"[1, 2").expect_err("refused");
        assert!(matches!(e, HookError::Malformed(m) if m.contains("not JSON")));
        let ignored = parse(Forge::Github, [("X-GitHub-Event", "star")].as_slice(), b"not even JSON").expect("ignored");
        assert!(matches!(ignored, Event::Ignored { .. }));
    }
}
