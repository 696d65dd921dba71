//! The admin policy file: one file for the engine's own configuration,
//! written by the platform admin, never by a pipeline author.
//!
//! It names the publish targets (where each keeps its published trees and
//! how much one publish may hold), the users of airlock's API with their
//! roles and the digests of their tokens, groups of users, and the
//! environments deployments go to: each with its provider, its
//! credentials by reference (an environment variable or a file of the
//! engine, never the secret itself), the pipelines that may deploy there,
//! the approvals it needs and what steps running for it may use. It is
//! read with the same spanned parser as pipelines, so every mistake is
//! reported at once with `line:col`, and unknown keys are errors: a
//! misspelt limit must not silently become no limit.
//!
//! ```yaml
//! targets:
//!   snapshots:
//!     dir: /srv/airlock/snapshots
//!     limits: { file: 1GiB, files: 20000, total: 10GiB }
//!   releases:
//!     dir: releases          # relative to the policy file
//! ```

mod agents;
pub(crate) mod environments;
mod people;
pub(crate) mod repositories;

pub use agents::AgentPool;
pub use environments::{
    Approvals, Credential, CredentialSource, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_COMMAND_TIMEOUT, DEFAULT_KEEP,
    Environment, Grants, HostInterface, HttpAuth, HttpMethod, LimitCaps, Payload, Provider, ProviderKind,
};
pub use people::{Role, User};
pub use repositories::{DEFAULT_PIPELINES, FirstTime, Forge, PullRequests, Repository, Trusted, ref_glob};

use crate::parse::{Checker, closest, count, document, get, join, size};
use crate::yaml::Node;
use crate::{Diagnostic, Span};
use indexmap::IndexMap;
use serde::Serialize;

/// The keys of the policy, from [`Policy`] (see `crate::schema::keys`).
static TOP_KEYS: std::sync::LazyLock<Vec<&str>> = std::sync::LazyLock::new(crate::schema::own_keys::<Policy>);
// A target's limits are fields of `PublishTarget` but a mapping of their
// own in the file (`limits: { file, files, total }`), so these two lists
// are written here.
const TARGET_KEYS: &[&str] = &["dir", "description", "limits"];
const TARGET_LIMIT_KEYS: &[&str] = &["file", "files", "total"];

/// Names a target may not have: they are paths of the server's own.
pub const RESERVED_TARGET_NAMES: &[&str] = &["api", "static"];

/// Largest file one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 2 << 30;
/// Most files one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_FILES: u64 = 100_000;
/// Most bytes one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_TOTAL: u64 = 20 << 30;

/// The admin policy.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct Policy {
    /// Publish targets by name.
    pub targets: IndexMap<String, PublishTarget>,
    /// Users of airlock's API by name.
    pub users: IndexMap<String, User>,
    /// Groups of users by name.
    pub groups: IndexMap<String, Vec<String>>,
    /// Deployment environments by name.
    pub environments: IndexMap<String, Environment>,
    /// Git repositories whose pushes and pull requests start runs, by name.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub repositories: IndexMap<String, Repository>,
    /// How what runs publish and deploy is attested: signed provenance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// How the step cache is checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_cache: Option<StepCache>,
    /// Pools of agents that run sandboxed steps on other machines, by name.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub agents: IndexMap<String, AgentPool>,
}

/// Checks of the step cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StepCache {
    /// Of the steps a run would take from the cache, the percentage (0
    /// to 100) it runs anyway, to compare what they make with what the
    /// cache holds. A difference is recorded loudly on the step, and the
    /// entry is dropped.
    pub verify_percent: u64,
}

impl Policy {
    /// Why the runs `requester` starts are untrusted, when the policy
    /// says they are (`trusted: false` on the user).
    pub fn untrusted_user(&self, requester: &str) -> Option<String> {
        self.users
            .get(requester)
            .filter(|u| !u.trusted)
            .map(|_| format!("user `{requester}` is one the policy does not trust (`trusted: false`)"))
    }
}

/// Signed provenance for every publish and deployment: an in-toto
/// statement with a SLSA provenance predicate, signed with this key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Provenance {
    /// The ed25519 private key (PKCS#8 PEM), by reference: `{ env: VAR }`
    /// or `{ file: PATH }`, never inline.
    pub key: Credential,
    /// Who vouches for the builds: a URI naming this airlock (SLSA's
    /// `builder.id`), e.g. `https://ci.example.org/airlock`.
    pub builder_id: String,
}

/// A place published trees go: `DIR` holds every build published to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PublishTarget {
    /// The directory, as written (relative paths are relative to the
    /// policy file; the caller resolves them).
    pub dir: String,
    /// What the target is for.
    pub description: Option<String>,
    /// Largest single file of a publish.
    pub max_file_size: u64,
    /// Most files in one publish.
    pub max_files: u64,
    /// Most bytes in one publish, all files together.
    pub max_total: u64,
    /// Where the target's name was written.
    #[serde(skip)]
    pub span: Span,
}

/// Parses and checks a policy file, reporting every error found.
pub fn load_policy(file: &str, src: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut c = Checker { file, diags: Vec::new() };
    let needs = "a policy has `targets:`, `users:`, `groups:`, `environments:`, `repositories:` and `agents:`";
    let policy = document(&mut c, src, "a policy", needs).map(|root| {
        let top = c.map(&root, "", Some(&TOP_KEYS));
        let targets = get(top, "targets").map(|t| targets(&mut c, t)).unwrap_or_default();
        let users = get(top, "users").map(|u| people::users(&mut c, u)).unwrap_or_default();
        let groups = get(top, "groups").map(|g| people::groups(&mut c, g, &users)).unwrap_or_default();
        let environments =
            get(top, "environments").map(|e| environments::environments(&mut c, e, &groups)).unwrap_or_default();
        let repositories = get(top, "repositories").map(|r| repositories::repositories(&mut c, r)).unwrap_or_default();
        let provenance = get(top, "provenance").and_then(|p| provenance(&mut c, p));
        let step_cache = get(top, "step_cache").and_then(|n| {
            let entries = c.map(n, "step_cache", Some(&STEP_CACHE_KEYS));
            let percent =
                get(entries, "verify_percent").and_then(|v| count(&mut c, v, "step_cache.verify_percent", 100));
            Some(StepCache { verify_percent: percent? })
        });
        let agents = get(top, "agents").map(|a| agents::agents(&mut c, a, &environments, &users)).unwrap_or_default();
        Policy { targets, users, groups, environments, repositories, provenance, step_cache, agents }
    });
    let mut diags = c.diags;
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.col)).unwrap_or((0, 0)));
    match policy {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(diags),
    }
}

static STEP_CACHE_KEYS: std::sync::LazyLock<Vec<&str>> = std::sync::LazyLock::new(crate::schema::own_keys::<StepCache>);

static PROVENANCE_KEYS: std::sync::LazyLock<Vec<&str>> =
    std::sync::LazyLock::new(crate::schema::own_keys::<Provenance>);

fn provenance(c: &mut Checker<'_>, node: &Node) -> Option<Provenance> {
    let entries = c.map(node, "provenance", Some(&PROVENANCE_KEYS));
    let key = match get(entries, "key") {
        Some(k) => environments::credential(c, "key", k.span, k, "provenance.key"),
        None => {
            c.error(
                "missing-key",
                "provenance.key",
                node.span,
                "`provenance` has no `key`".into(),
                Some("name the ed25519 signing key: `key: { file: PATH }` or `key: { env: VAR }`".into()),
            );
            None
        }
    };
    let builder_id = match get(entries, "builder_id") {
        Some(b) => c.scalar(b, "provenance.builder_id").and_then(|text| {
            let scheme = text.split_once(':').map(|(s, _)| s).unwrap_or_default();
            let uri = !scheme.is_empty()
                && scheme.chars().all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch))
                && !text.contains(char::is_whitespace);
            if !uri {
                c.error(
                    "bad-value",
                    "provenance.builder_id",
                    b.span,
                    format!("`{text}` is not a URI"),
                    Some("name this airlock by a URI you control, e.g. `https://ci.example.org/airlock`".into()),
                );
            }
            uri.then(|| text.to_owned())
        }),
        None => {
            c.error(
                "missing-key",
                "provenance.builder_id",
                node.span,
                "`provenance` has no `builder_id`".into(),
                Some("name this airlock by a URI you control, e.g. `https://ci.example.org/airlock`".into()),
            );
            None
        }
    };
    Some(Provenance { key: key?, builder_id: builder_id? })
}

fn targets(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, PublishTarget> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "targets", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("targets.{name}");
        c.name(name, "target name", &path, key.span);
        if RESERVED_TARGET_NAMES.contains(&name) {
            c.error(
                "reserved-name",
                &path,
                key.span,
                format!("`{name}` cannot name a target: the server uses `/{name}/` itself"),
                Some("choose another name, e.g. `snapshots`".into()),
            );
        }
        let entries = c.map(value, &path, Some(TARGET_KEYS));
        let dir = match get(entries, "dir") {
            Some(d) => c.scalar(d, &join(&path, "dir")).map(str::to_owned),
            None => {
                c.error(
                    "missing-key",
                    &join(&path, "dir"),
                    key.span,
                    format!("target `{name}` has no `dir`"),
                    Some("set `dir:` to the directory that keeps its published trees".into()),
                );
                None
            }
        };
        let description = get(entries, "description").and_then(|d| c.scalar(d, &join(&path, "description")));
        let mut target = PublishTarget {
            dir: dir.unwrap_or_default(),
            description: description.map(str::to_owned),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_files: DEFAULT_MAX_FILES,
            max_total: DEFAULT_MAX_TOTAL,
            span: key.span,
        };
        if let Some(limits) = get(entries, "limits") {
            let lpath = join(&path, "limits");
            let l = c.map(limits, &lpath, Some(TARGET_LIMIT_KEYS));
            if let Some(n) = get(l, "file").and_then(|n| size(c, n, &join(&lpath, "file"))) {
                target.max_file_size = n;
            }
            if let Some(n) = get(l, "files").and_then(|n| count(c, n, &join(&lpath, "files"), 10_000_000)) {
                target.max_files = n;
            }
            if let Some(n) = get(l, "total").and_then(|n| size(c, n, &join(&lpath, "total"))) {
                target.max_total = n;
            }
        }
        out.insert(name.to_owned(), target);
    }
    out
}

impl Policy {
    /// The target called `name`, or an error naming the targets there are.
    pub fn target(&self, name: &str) -> Result<&PublishTarget, String> {
        self.targets.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            match closest(name, &names) {
                Some(k) => format!("no publish target `{name}` in the policy; did you mean `{k}`?"),
                None if names.is_empty() => format!("no publish target `{name}`: the policy names none"),
                None => format!("no publish target `{name}` in the policy; it has: {}", names.join(", ")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_keys_and_a_users_are_the_fields_of_the_types() {
        assert_eq!(
            *TOP_KEYS,
            ["agents", "environments", "groups", "provenance", "repositories", "step_cache", "targets", "users"]
        );
        assert_eq!(*people::USER_KEYS, ["roles", "token_sha256", "trusted"]);
    }

    #[test]
    fn reads_targets_with_defaults_and_limits() {
        let src = "targets:\n  snapshots:\n    dir: snaps\n    limits: { file: 1MiB, files: 10 }\n  releases:\n    dir: /srv/rel\n";
        let p = load_policy("policy.yaml", src).expect("valid");
        let s = &p.targets["snapshots"];
        assert_eq!(
            (s.dir.as_str(), s.max_file_size, s.max_files, s.max_total),
            ("snaps", 1 << 20, 10, DEFAULT_MAX_TOTAL)
        );
        assert_eq!(p.targets["releases"].dir, "/srv/rel");
        assert!(p.target("snapshot").expect_err("unknown").contains("did you mean `snapshots`?"));
    }

    #[test]
    fn reports_every_mistake_with_its_place() {
        let src =
            "targets:\n  api:\n    dir: x\n  snaps:\n    dri: y\n    limits: { files: lots, totl: 1GiB }\nuser: {}\n";
        let diags = load_policy("policy.yaml", src).expect_err("invalid");
        let shown: Vec<String> = diags
            .iter()
            .map(|d| format!("{} {} {} {}", d.span.map_or(0, |s| s.line), d.code, d.path, d.message))
            .collect();
        assert_eq!(
            shown,
            [
                "2 reserved-name targets.api `api` cannot name a target: the server uses `/api/` itself",
                "4 missing-key targets.snaps.dir target `snaps` has no `dir`",
                "5 unknown-key targets.snaps.dri unknown key `dri`",
                "6 bad-number targets.snaps.limits.files `lots` is not a whole number from 0 to 10000000",
                "6 unknown-key targets.snaps.limits.totl unknown key `totl`",
                "7 unknown-key user unknown key `user`",
            ]
        );
    }

    const ALICE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const BOB: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn reads_people_and_environments() {
        let src = format!(
            "users:\n  alice: {{ token_sha256: {ALICE}, roles: [approver, viewer] }}\n  bob: {{ token_sha256: {BOB}, roles: [runner] }}\n\
             groups:\n  release-managers: [alice, bob]\n\
             environments:\n\
             \x20 staging:\n    provider: {{ type: http, url: 'http://127.0.0.1:9000/deploy', method: post, auth: bearer, credential: token, payload: manifest }}\n\
             \x20   credentials:\n      token: {{ env: STAGING_TOKEN, expires: 2027-03-01 }}\n\
             \x20   pipelines: [release]\n\
             \x20   approvals: {{ required: 2, groups: [release-managers], timeout: 30m }}\n\
             \x20   grants: {{ interfaces: [deploy], plugins: ['plugins/**/*.wasm'], limits: {{ memory: 64MiB }} }}\n\
             \x20 www:\n    provider: {{ type: directory, path: /srv/www }}\n    pipelines: ['*']\n\
             \x20 cdn:\n    provider: {{ type: command, argv: [/usr/local/bin/push, --fast], credentials: [key] }}\n\
             \x20   credentials: {{ key: {{ file: /etc/airlock/cdn.key }} }}\n    pipelines: [site]\n"
        );
        let p = load_policy("policy.yaml", &src).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(p.users["alice"].roles, [Role::Approver, Role::Viewer]);
        assert_eq!(p.groups["release-managers"], ["alice", "bob"]);
        let staging = &p.environments["staging"];
        assert_eq!(
            staging.provider,
            Provider::Http {
                url: "http://127.0.0.1:9000/deploy".into(),
                method: HttpMethod::Post,
                auth: HttpAuth::Bearer,
                credential: Some("token".into()),
                payload: Payload::Manifest,
                idempotent: false,
            }
        );
        assert_eq!(staging.credentials["token"].source, CredentialSource::Env("STAGING_TOKEN".into()));
        assert_eq!(staging.credentials["token"].expires_ms, Some(1_803_859_200_000));
        let approvals = staging.approvals.as_ref().expect("approvals");
        assert_eq!((approvals.required, approvals.requester_may_approve), (2, false));
        assert_eq!(approvals.timeout, std::time::Duration::from_secs(1800));
        assert_eq!(staging.grants.interfaces, [HostInterface::Deploy]);
        assert_eq!(staging.grants.limits.memory, Some(64 << 20));
        assert_eq!(staging.grants.limits.disk, None);
        assert!(staging.allows_pipeline("release") && !staging.allows_pipeline("site"));
        assert!(p.environments["www"].allows_pipeline("anything"));
        assert_eq!(p.environments["www"].provider, Provider::Directory { path: "/srv/www".into(), keep: DEFAULT_KEEP });
        assert!(
            matches!(&p.environments["cdn"].provider, Provider::Command { credentials, .. } if credentials == &["key"])
        );
    }

    #[test]
    fn reports_every_people_and_environment_mistake() {
        let src = format!(
            "users:\n  alice: {{ token_sha256: {ALICE}, roles: [aprover] }}\n  bob: {{ token_sha256: {ALICE} }}\n  eve: {{ token_sha256: hunter2 }}\n\
             groups:\n  ops: [alice, mallory]\n\
             environments:\n\
             \x20 prod:\n    provider: {{ type: http, url: 'ftp://x', auth: basic, credential: pasword }}\n\
             \x20   credentials:\n      password: s3cret\n      both: {{ env: A, file: /b }}\n      when: {{ env: W, expires: soon }}\n\
             \x20   approvals: {{ required: 3, groups: [ops, admins] }}\n\
             \x20   grants: {{ interfaces: [network] }}\n\
             \x20 nowhere:\n    provider: {{ type: ftp }}\n    pipelines: []\n\
             \x20 run:\n    provider: {{ type: command, argv: [deploy.sh] }}\n    pipelines: ['*']\n"
        );
        let diags = load_policy("policy.yaml", &src).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "unknown-role users.alice.roles[0]",
                "duplicate-token users.bob.token_sha256",
                "bad-digest users.eve.token_sha256",
                "unknown-user groups.ops[1]",
                "missing-key environments.prod.pipelines",
                "bad-url environments.prod.provider.url",
                "unknown-credential environments.prod.provider.credential",
                "inline-secret environments.prod.credentials.password",
                "credential-source environments.prod.credentials.both",
                "bad-date environments.prod.credentials.when.expires",
                "impossible-approval environments.prod.approvals.required",
                "unknown-group environments.prod.approvals.groups[1]",
                "unknown-interface environments.prod.grants.interfaces[0]",
                "bad-value environments.nowhere.provider.type",
                "relative-program environments.run.provider.argv[0]",
            ]
        );
        let secret = diags.iter().find(|d| d.code == "inline-secret").expect("inline secret");
        assert!(!secret.message.contains("s3cret"), "a secret written inline is not echoed: {}", secret.message);
    }

    /// Pools of agents: their tokens, labels and environments, and what
    /// is wrong with them.
    #[test]
    fn reads_agent_pools_and_their_mistakes() {
        let pool = "b".repeat(64);
        let src = format!(
            "users:\n  alice: {{ token_sha256: {ALICE}, roles: [viewer] }}\n\
             environments:\n  prod:\n    provider: {{ type: directory, path: www }}\n    pipelines: ['*']\n\
             agents:\n  builders: {{ token_sha256: {pool}, labels: [linux, big], environments: [prod] }}\n"
        );
        let p = load_policy("policy.yaml", &src).unwrap_or_else(|d| panic!("{d:#?}"));
        let builders = &p.agents["builders"];
        assert_eq!(
            (builders.labels.as_slice(), builders.environments.as_slice()),
            (&["linux".to_owned(), "big".to_owned()][..], &["prod".to_owned()][..])
        );
        assert!(builders.serves(None) && builders.serves(Some("prod")) && !builders.serves(Some("staging")));
        let src = format!(
            "users:\n  alice: {{ token_sha256: {ALICE}, roles: [viewer] }}\n\
             agents:\n  same: {{ token_sha256: {ALICE} }}\n  bad: {{ token_sha256: nope, labels: [a, a, 'x y'], environments: [prd] }}\n  none: {{ labels: [] }}\n"
        );
        let diags = load_policy("policy.yaml", &src).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "duplicate-token agents.same.token_sha256",
                "bad-digest agents.bad.token_sha256",
                "duplicate-entry agents.bad.labels[1]",
                "bad-name agents.bad.labels[2]",
                "unknown-environment agents.bad.environments[0]",
                "missing-key agents.none.token_sha256",
            ]
        );
    }

    /// Issue 12, item 8: a provider URL with a password or an API key in
    /// it was accepted, and then shown to every viewer of an approval.
    #[test]
    fn credentials_in_a_provider_url_are_refused_without_echoing_them() {
        for (url, secret) in [
            ("https://deployer:hunter2@deploy.example/hook", "hunter2"),
            ("https://deployer@deploy.example/hook", "deployer"),
            ("https://deploy.example/hook?env=prod&api_key=k3y-v4lue", "k3y-v4lue"),
            ("https://deploy.example/hook?Token=t0k3n", "t0k3n"),
            ("https://deploy.example/hook?X-Amz-Signature=s1g", "s1g"),
            ("https://deploy.example/hook?access%5Fkey=p4ss", "p4ss"),
            ("http://deploy.example/?sig=abc123#frag", "abc123"),
        ] {
            let src =
                format!("environments:\n  prod:\n    provider: {{ type: http, url: '{url}' }}\n    pipelines: ['*']\n");
            let diags = load_policy("policy.yaml", &src).expect_err(url);
            assert_eq!(diags.len(), 1, "{url}: {diags:?}");
            let d = &diags[0];
            assert_eq!((d.code, d.path.as_str()), ("secret-in-url", "environments.prod.provider.url"), "{url}");
            assert!(!d.message.contains(secret), "{url}: the secret is echoed: {}", d.message);
            assert!(d.hint.as_deref().is_some_and(|h| h.contains("credential:")), "{url}: {:?}", d.hint);
        }
        for fine in [
            "https://deploy.example/hook",
            "https://deploy.example/hook?env=prod&region=eu",
            "https://deploy.example/path/with@sign",
        ] {
            let src = format!(
                "environments:\n  prod:\n    provider: {{ type: http, url: '{fine}' }}\n    pipelines: ['*']\n"
            );
            load_policy("policy.yaml", &src).unwrap_or_else(|d| panic!("{fine}: {d:?}"));
        }
    }

    #[test]
    fn environment_limits_are_defaults_and_ceilings() {
        use crate::{Limits, LimitsWritten};
        let env = LimitCaps { memory: Some(64 << 20), disk: Some(8 << 30), fuel: Some(1000), ..LimitCaps::default() };
        let step = Limits { memory: 512 << 20, disk: 1 << 30, ..Limits::default() };
        let written = LimitsWritten { memory: true, ..LimitsWritten::default() };
        let got = env.apply(&step, &written);
        assert_eq!(got.memory, 64 << 20, "a limit written above the environment's is lowered to it");
        assert_eq!(got.disk, 8 << 30, "a limit not written takes the environment's, even above airlock's default");
        assert_eq!(got.log, Limits::default().log, "what neither sets stays airlock's");
        assert_eq!(got.fuel, Some(1000));
        let small = Limits { memory: 16 << 20, ..Limits::default() };
        assert_eq!(env.apply(&small, &written).memory, 16 << 20, "a lower limit stands");
    }
}
