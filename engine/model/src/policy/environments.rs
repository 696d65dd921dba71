//! Environments: where deployments go, with which credentials, after
//! whose approval, and what steps running for them may use.

use crate::parse::{Checker, closest, count, duration, get, join, size};
use crate::schema::{keys, variant_keys};
use crate::yaml::{Kind, Node};
use crate::{Limits, LimitsWritten, Span};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::LazyLock;
use std::time::Duration;

// The keys of each mapping, from the types the policy is read into (see
// `crate::schema::keys`).
static ENV_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Environment>);
static CREDENTIAL_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Credential>);
static APPROVAL_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Approvals>);
static GRANT_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Grants>);
static LIMIT_CAP_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<LimitCaps>);
/// The keys of each kind of provider, `type` among them.
static PROVIDER_KEYS: LazyLock<[Vec<&str>; 3]> =
    LazyLock::new(|| ProviderKind::ALL.map(|k| variant_keys::<Provider>("type", k.name())));

/// A host interface beyond WASI that an environment can grant to the
/// steps that run for it. A step is linked with exactly the interfaces
/// its grant names; one it imports without the grant is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostInterface {
    /// `airlock:step/deploy`: asking the host for a deployment.
    Deploy,
}

impl HostInterface {
    /// Every host interface there is.
    pub const ALL: &[HostInterface] = &[HostInterface::Deploy];

    /// Its name in the policy, e.g. `deploy`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
        }
    }

    /// The WIT interface a plugin imports, without its version.
    pub fn wit(self) -> &'static str {
        match self {
            Self::Deploy => "airlock:step/deploy",
        }
    }

    /// The interface of a policy name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|i| i.name() == name)
    }

    /// The interface a plugin imports under a WIT name (with or without
    /// `@version`), if it is a host interface.
    pub fn from_wit(import: &str) -> Option<Self> {
        let name = import.split('@').next().unwrap_or(import);
        Self::ALL.iter().copied().find(|i| i.wit() == name)
    }
}

/// The names of the host interfaces, for messages.
fn interface_names() -> Vec<&'static str> {
    HostInterface::ALL.iter().map(|i| i.name()).collect()
}

/// How long an approval waits when the policy sets no timeout.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a `command` provider may run when the policy sets no timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Releases a `directory` provider keeps when the policy sets no number.
pub const DEFAULT_KEEP: u64 = 5;

/// A place deployments go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Environment {
    /// What it is.
    pub description: Option<String>,
    /// What performs a deployment.
    pub provider: Provider,
    /// Secrets the provider uses, by name; never inline, never in a
    /// pipeline.
    pub credentials: IndexMap<String, Credential>,
    /// Pipelines (by name) that may deploy here; `*` allows any.
    pub pipelines: Vec<String>,
    /// People who must agree first, if any.
    pub approvals: Option<Approvals>,
    /// What steps running for this environment may use.
    pub grants: Grants,
    /// Where the environment's name was written.
    #[serde(skip)]
    pub span: Span,
}

impl Environment {
    /// Whether the pipeline `name` may deploy here.
    pub fn allows_pipeline(&self, name: &str) -> bool {
        self.pipelines.iter().any(|p| p == "*" || p == name)
    }
}

/// What performs a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Provider {
    /// Sends the artifacts, or a JSON description of them, to a URL.
    Http {
        /// `http://` or `https://`.
        url: String,
        /// `PUT` or `POST`.
        method: HttpMethod,
        /// How it authenticates, if it does.
        auth: HttpAuth,
        /// The credential `auth` uses.
        credential: Option<String>,
        /// What is sent.
        payload: Payload,
        /// The receiver applies a request whose `Idempotency-Key` it has
        /// seen before at most once: a deployment cut off by an engine
        /// that stopped may be sent again, with the same key.
        idempotent: bool,
    },
    /// Copies the artifacts into a new release directory and switches a
    /// `current` link to it.
    Directory {
        /// The directory that holds the releases and `current`.
        path: String,
        /// Releases kept, the current one included.
        keep: u64,
    },
    /// Runs a program the admin chose, with a fixed argv; pipeline values
    /// arrive as environment variables, never through a shell.
    Command {
        /// Program (an absolute path) and its arguments.
        argv: Vec<String>,
        /// How long it may run.
        #[schemars(with = "String")]
        timeout: Duration,
        /// Credentials passed to it, as environment variables
        /// `AIRLOCK_CREDENTIAL_<NAME>`.
        credentials: Vec<String>,
    },
}

/// The kinds of provider, as a policy names them in `type:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// `http`: [`Provider::Http`].
    Http,
    /// `directory`: [`Provider::Directory`].
    Directory,
    /// `command`: [`Provider::Command`].
    Command,
}

impl ProviderKind {
    /// Every kind there is.
    pub const ALL: [ProviderKind; 3] = [ProviderKind::Http, ProviderKind::Directory, ProviderKind::Command];

    /// Its name in the policy, as the `type` tag of [`Provider`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Directory => "directory",
            Self::Command => "command",
        }
    }

    /// The keys a provider of this kind may have, `type` among them.
    fn keys(self) -> &'static [&'static str] {
        &PROVIDER_KEYS[self as usize]
    }
}

impl Provider {
    /// Its kind.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Http { .. } => ProviderKind::Http,
            Self::Directory { .. } => ProviderKind::Directory,
            Self::Command { .. } => ProviderKind::Command,
        }
    }

    /// Whether sending the same deployment again is safe: the `http`
    /// receiver says it honours idempotency keys, or the `directory`
    /// provider, which finds a release it made before by its name.
    pub fn idempotent(&self) -> bool {
        match self {
            Provider::Http { idempotent, .. } => *idempotent,
            Provider::Directory { .. } => true,
            Provider::Command { .. } => false,
        }
    }
}

/// The method of an `http` provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum HttpMethod {
    /// `PUT`.
    Put,
    /// `POST`.
    Post,
}

/// How an `http` provider authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuth {
    /// Not at all.
    None,
    /// `Authorization: Bearer CREDENTIAL`.
    Bearer,
    /// `Authorization: Basic` with a `USER:PASSWORD` credential.
    Basic,
}

/// What an `http` provider sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// Each artifact, to `URL/PATH`.
    Artifacts,
    /// One JSON document naming the deployment and the artifacts' digests.
    Manifest,
}

/// A secret, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Credential {
    /// Where the engine reads it.
    #[serde(flatten)]
    pub source: CredentialSource,
    /// When it stops working (ms since the epoch), as the admin knows it.
    #[serde(rename = "expires")]
    pub expires_ms: Option<u64>,
    /// Where its name was written.
    #[serde(skip)]
    pub span: Span,
}

/// Where a credential is read from, by the engine only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// An environment variable of the engine.
    Env(String),
    /// A file of the engine's (relative paths: to the policy file).
    File(String),
}

/// Who must agree before a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Approvals {
    /// Distinct approvals needed.
    pub required: u64,
    /// Groups whose members may decide.
    pub groups: Vec<String>,
    /// Whether whoever asked for the deployment may approve it.
    pub requester_may_approve: bool,
    /// Without enough approvals by then, the request is denied.
    #[schemars(with = "String")]
    pub timeout: Duration,
}

/// What steps running for an environment may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Grants {
    /// Host interfaces linked into their sandbox.
    pub interfaces: Vec<HostInterface>,
    /// Glob patterns of the plugin files that may run (relative patterns
    /// are relative to the policy file); empty allows any.
    pub plugins: Vec<String>,
    /// The limits of its steps: the default where a step sets none, and
    /// the most a step may set.
    pub limits: LimitCaps,
}

/// An environment's limits; unset fields leave airlock's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LimitCaps {
    /// Linear memory.
    pub memory: Option<u64>,
    /// Log bytes kept.
    pub log: Option<u64>,
    /// Instructions.
    pub fuel: Option<u64>,
    /// Workspace bytes.
    pub disk: Option<u64>,
    /// Workspace entries.
    pub files: Option<u64>,
    /// The largest plugin or tool module a step may load (default 512 MiB).
    pub plugin: Option<u64>,
}

impl LimitCaps {
    /// The limits of a step running for this environment: where the
    /// pipeline set a limit, the lower of it and the environment's; where
    /// it did not, the environment's, or else airlock's default.
    pub fn apply(&self, limits: &Limits, written: &LimitsWritten) -> Limits {
        let one = |value: u64, written: bool, env: Option<u64>| match (written, env) {
            (true, Some(e)) => value.min(e),
            (false, Some(e)) => e,
            (_, None) => value,
        };
        Limits {
            memory: one(limits.memory, written.memory, self.memory),
            log: one(limits.log, written.log, self.log),
            fuel: match (limits.fuel, self.fuel) {
                (Some(f), Some(e)) => Some(f.min(e)),
                (f, e) => f.or(e),
            },
            disk: one(limits.disk, written.disk, self.disk),
            files: one(limits.files, written.files, self.files),
        }
    }
}

pub(crate) fn environments(
    c: &mut Checker<'_>,
    node: &Node,
    groups: &IndexMap<String, Vec<String>>,
) -> IndexMap<String, Environment> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "environments", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("environments.{name}");
        c.name(name, "environment name", &path, key.span);
        let entries = c.map(value, &path, Some(&ENV_KEYS));
        let description =
            get(entries, "description").and_then(|d| c.scalar(d, &join(&path, "description"))).map(str::to_owned);
        let credentials = get(entries, "credentials").map(|n| credentials(c, n, &path)).unwrap_or_default();
        let provider = match get(entries, "provider") {
            Some(p) => provider(c, p, &join(&path, "provider"), &credentials),
            None => {
                c.error(
                    "missing-key",
                    &join(&path, "provider"),
                    key.span,
                    format!("environment `{name}` has no `provider`"),
                    Some("a provider is `type: http`, `type: directory` or `type: command`".into()),
                );
                None
            }
        };
        let pipelines = match get(entries, "pipelines") {
            Some(p) => c.list(p, &join(&path, "pipelines")).into_iter().map(|(n, _, _)| n.to_owned()).collect(),
            None => {
                c.error(
                    "missing-key",
                    &join(&path, "pipelines"),
                    key.span,
                    format!("environment `{name}` names no `pipelines` that may deploy to it"),
                    Some("list pipeline names, or `['*']` for any".into()),
                );
                Vec::new()
            }
        };
        let approvals = get(entries, "approvals").map(|a| approvals(c, a, &join(&path, "approvals"), groups));
        let grants = get(entries, "grants").map(|g| grants(c, g, &join(&path, "grants"))).unwrap_or_default();
        if let Some(provider) = provider {
            out.insert(
                name.to_owned(),
                Environment { description, provider, credentials, pipelines, approvals, grants, span: key.span },
            );
        }
    }
    out
}

/// Reads `2027-03-01` or `2027-03-01T12:00:00Z` as ms since the epoch.
fn date(c: &mut Checker<'_>, node: &Node, path: &str) -> Option<u64> {
    let text = c.scalar(node, path)?;
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    match humantime::parse_rfc3339_weak(&full) {
        Ok(t) => t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64),
        Err(_) => {
            c.error(
                "bad-date",
                path,
                node.span,
                format!("`{text}` is not a date"),
                Some("write it like `2027-03-01` or `2027-03-01T12:00:00Z`".into()),
            );
            None
        }
    }
}

fn credentials(c: &mut Checker<'_>, node: &Node, env_path: &str) -> IndexMap<String, Credential> {
    let mut out = IndexMap::new();
    let cpath = join(env_path, "credentials");
    for (key, value) in c.map(node, &cpath, None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = join(&cpath, name);
        c.name(name, "credential name", &path, key.span);
        if let Some(credential) = credential(c, name, key.span, value, &path) {
            out.insert(name.to_owned(), credential);
        }
    }
    out
}

/// One credential reference, `{ env: VAR }` or `{ file: PATH }` with an
/// optional `expires:`; `name` and `span` are what it is called where it
/// is written. A secret written inline is refused without echoing it.
pub(crate) fn credential(c: &mut Checker<'_>, name: &str, span: Span, value: &Node, path: &str) -> Option<Credential> {
    if let Kind::Scalar { .. } = value.kind {
        c.error(
            "inline-secret",
            path,
            value.span,
            format!("credential `{name}` is written inline"),
            Some("a policy names where a secret is, never the secret: `{ env: VAR }` or `{ file: PATH }`".into()),
        );
        return None;
    }
    let entries = c.map(value, path, Some(&CREDENTIAL_KEYS));
    let env = get(entries, "env").and_then(|e| c.scalar(e, &join(path, "env")).map(|v| (v.to_owned(), e.span)));
    let file = get(entries, "file").and_then(|f| c.scalar(f, &join(path, "file")).map(str::to_owned));
    let source = match (env, file) {
        (Some((var, vspan)), None) => {
            let valid = var.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
                && var.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !valid {
                c.error(
                    "bad-name",
                    &join(path, "env"),
                    vspan,
                    format!("`{var}` is not a valid environment variable name"),
                    None,
                );
            }
            CredentialSource::Env(var)
        }
        (None, Some(file)) => CredentialSource::File(file),
        _ => {
            c.error(
                "credential-source",
                path,
                span,
                format!("credential `{name}` needs exactly one of `env` and `file`"),
                Some(
                    "`{ env: DEPLOY_TOKEN }` reads the engine's environment; `{ file: /etc/airlock/token }` a file"
                        .into(),
                ),
            );
            return None;
        }
    };
    let expires_ms = get(entries, "expires").and_then(|e| date(c, e, &join(path, "expires")));
    Some(Credential { source, expires_ms, span })
}

/// A credential named by a provider must be one of the environment's.
fn credential_ref(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    credentials: &IndexMap<String, Credential>,
) -> Option<String> {
    let name = c.scalar(node, path)?;
    if !credentials.contains_key(name) {
        let names: Vec<&str> = credentials.keys().map(String::as_str).collect();
        let hint = match closest(name, &names) {
            Some(k) => format!("did you mean `{k}`?"),
            None => "name one of the environment's `credentials`".into(),
        };
        c.error(
            "unknown-credential",
            path,
            node.span,
            format!("no credential `{name}` in this environment"),
            Some(hint),
        );
    }
    Some(name.to_owned())
}

fn choice<T: Copy>(c: &mut Checker<'_>, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
    let text = c.scalar(node, path)?;
    if let Some((_, v)) = options.iter().find(|(n, _)| n.eq_ignore_ascii_case(text)) {
        return Some(*v);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let hint = match closest(&text.to_ascii_lowercase(), &names) {
        Some(k) => format!("did you mean `{k}`?"),
        None => format!("one of: {}", names.join(", ")),
    };
    c.error("bad-value", path, node.span, format!("`{text}` is not a value `{path}` takes"), Some(hint));
    None
}

fn provider(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    credentials: &IndexMap<String, Credential>,
) -> Option<Provider> {
    let entries = c.map(node, path, None);
    let Some(kind_node) = get(entries, "type") else {
        c.error(
            "missing-key",
            &join(path, "type"),
            node.span,
            "the provider has no `type`".into(),
            Some(format!("one of: {}", ProviderKind::ALL.map(ProviderKind::name).join(", "))),
        );
        return None;
    };
    let kinds = ProviderKind::ALL.map(|k| (k.name(), k));
    let kind = choice(c, kind_node, &join(path, "type"), &kinds)?;
    let allowed = kind.keys();
    for (key, _) in entries {
        if let Some(k) = key.as_scalar().filter(|k| !allowed.contains(k)) {
            let hint = match closest(k, allowed) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("a `{}` provider has: {}", kind.name(), allowed.join(", ")),
            };
            c.error("unknown-key", &join(path, k), key.span, format!("unknown key `{k}`"), Some(hint));
        }
    }
    let required = |c: &mut Checker<'_>, key: &str| {
        let n = get(entries, key);
        if n.is_none() {
            c.error(
                "missing-key",
                &join(path, key),
                node.span,
                format!("a `{}` provider needs `{key}`", kind.name()),
                None,
            );
        }
        n
    };
    match kind {
        ProviderKind::Http => {
            let url = required(c, "url").and_then(|u| {
                let text = c.scalar(u, &join(path, "url"))?;
                if !(text.starts_with("http://") || text.starts_with("https://")) || text.contains(char::is_whitespace)
                {
                    c.error(
                        "bad-url",
                        &join(path, "url"),
                        u.span,
                        format!("`{text}` is not an http:// or https:// URL"),
                        None,
                    );
                } else if let Some(what) = secret_in_url(text) {
                    // The URL is shown to everyone who sees an approval, so
                    // neither it nor the secret is echoed here.
                    c.error(
                        "secret-in-url",
                        &join(path, "url"),
                        u.span,
                        format!("the URL carries {what}; URLs are shown to everyone who reads an approval"),
                        Some(
                            "take it out of the URL, put it in the environment's `credentials`, and name it with \
                             `credential:` (sent as an `Authorization` header with `auth: bearer` or `auth: basic`)"
                                .into(),
                        ),
                    );
                }
                Some(text.to_owned())
            });
            let method = get(entries, "method")
                .map(|m| choice(c, m, &join(path, "method"), &[("PUT", HttpMethod::Put), ("POST", HttpMethod::Post)]))
                .unwrap_or(Some(HttpMethod::Put));
            let auth = get(entries, "auth")
                .map(|a| {
                    choice(
                        c,
                        a,
                        &join(path, "auth"),
                        &[("none", HttpAuth::None), ("bearer", HttpAuth::Bearer), ("basic", HttpAuth::Basic)],
                    )
                })
                .unwrap_or(Some(HttpAuth::None));
            let credential =
                get(entries, "credential").and_then(|n| credential_ref(c, n, &join(path, "credential"), credentials));
            if auth.is_some_and(|a| a != HttpAuth::None) && credential.is_none() && get(entries, "credential").is_none()
            {
                c.error(
                    "missing-key",
                    &join(path, "credential"),
                    node.span,
                    "`auth` needs a `credential` to authenticate with".into(),
                    Some("name one of the environment's `credentials`".into()),
                );
            }
            let payload = get(entries, "payload")
                .map(|p| {
                    choice(
                        c,
                        p,
                        &join(path, "payload"),
                        &[("artifacts", Payload::Artifacts), ("manifest", Payload::Manifest)],
                    )
                })
                .unwrap_or(Some(Payload::Artifacts));
            let idempotent = get(entries, "idempotent")
                .map(|i| choice(c, i, &join(path, "idempotent"), &[("true", true), ("false", false)]))
                .unwrap_or(Some(false));
            Some(Provider::Http {
                url: url?,
                method: method?,
                auth: auth?,
                credential,
                payload: payload?,
                idempotent: idempotent?,
            })
        }
        ProviderKind::Directory => {
            let dir = required(c, "path").and_then(|p| c.scalar(p, &join(path, "path")).map(str::to_owned));
            let keep =
                get(entries, "keep").map(|k| count(c, k, &join(path, "keep"), 1000)).unwrap_or(Some(DEFAULT_KEEP));
            if keep == Some(0) {
                let span = get(entries, "keep").map_or(node.span, |k| k.span);
                c.error(
                    "bad-number",
                    &join(path, "keep"),
                    span,
                    "`keep` must be at least 1: the current release".into(),
                    None,
                );
            }
            Some(Provider::Directory { path: dir?, keep: keep? })
        }
        ProviderKind::Command => {
            let argv: Vec<(String, Span)> = required(c, "argv")
                .map(|a| c.list(a, &join(path, "argv")).into_iter().map(|(t, s, _)| (t.to_owned(), s)).collect())
                .unwrap_or_default();
            if let Some((program, span)) = argv.first()
                && !program.starts_with('/')
            {
                c.error(
                    "relative-program",
                    &format!("{}[0]", join(path, "argv")),
                    *span,
                    format!("`{program}` is not an absolute path"),
                    Some("the program is found by its path, never through PATH".into()),
                );
            }
            let timeout = get(entries, "timeout")
                .and_then(|t| duration(c, t, &join(path, "timeout")))
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT);
            let creds = get(entries, "credentials")
                .map(|n| {
                    c.list(n, &join(path, "credentials"))
                        .into_iter()
                        .filter_map(|(name, span, p)| {
                            let node = Node { kind: Kind::Scalar { text: name.to_owned(), quoted: false }, span };
                            credential_ref(c, &node, &p, credentials)
                        })
                        .collect()
                })
                .unwrap_or_default();
            (!argv.is_empty()).then(|| Provider::Command {
                argv: argv.into_iter().map(|(a, _)| a).collect(),
                timeout,
                credentials: creds,
            })
        }
    }
}

fn approvals(c: &mut Checker<'_>, node: &Node, path: &str, groups: &IndexMap<String, Vec<String>>) -> Approvals {
    let entries = c.map(node, path, Some(&APPROVAL_KEYS));
    let required = get(entries, "required").and_then(|r| count(c, r, &join(path, "required"), 100)).unwrap_or(1);
    let mut names = Vec::new();
    let group_names: Vec<&str> = groups.keys().map(String::as_str).collect();
    let listed = get(entries, "groups").map(|g| c.list(g, &join(path, "groups"))).unwrap_or_default();
    if listed.is_empty() {
        c.error(
            "missing-key",
            &join(path, "groups"),
            node.span,
            "approvals name no `groups` whose members may decide".into(),
            None,
        );
    }
    for (group, span, gpath) in listed {
        if groups.contains_key(group) {
            names.push(group.to_owned());
        } else {
            let hint = match closest(group, &group_names) {
                Some(k) => format!("did you mean `{k}`?"),
                None => "approver groups are named under `groups:`".into(),
            };
            c.error("unknown-group", &gpath, span, format!("`{group}` is not a group"), Some(hint));
        }
    }
    let mut people: Vec<&String> = names.iter().filter_map(|g| groups.get(g)).flatten().collect();
    people.sort();
    people.dedup();
    if required == 0 || (required as usize > people.len() && !names.is_empty()) {
        let span = get(entries, "required").map_or(node.span, |r| r.span);
        c.error(
            "impossible-approval",
            &join(path, "required"),
            span,
            format!("{required} approvals are required, and the approver groups have {} people", people.len()),
            Some("require at least 1, and no more than the groups' members".into()),
        );
    }
    let requester_may_approve = get(entries, "requester_may_approve")
        .and_then(|r| choice(c, r, &join(path, "requester_may_approve"), &[("true", true), ("false", false)]))
        .unwrap_or(false);
    let timeout = get(entries, "timeout")
        .and_then(|t| duration(c, t, &join(path, "timeout")))
        .unwrap_or(DEFAULT_APPROVAL_TIMEOUT);
    Approvals { required, groups: names, requester_may_approve, timeout }
}

fn grants(c: &mut Checker<'_>, node: &Node, path: &str) -> Grants {
    let entries = c.map(node, path, Some(&GRANT_KEYS));
    let mut g = Grants::default();
    for (interface, span, ipath) in
        get(entries, "interfaces").map(|i| c.list(i, &join(path, "interfaces"))).unwrap_or_default()
    {
        if let Some(known) = HostInterface::from_name(interface) {
            if !g.interfaces.contains(&known) {
                g.interfaces.push(known);
            }
        } else {
            let names = interface_names();
            let hint = match closest(interface, &names) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("the host interfaces are: {}", names.join(", ")),
            };
            c.error("unknown-interface", &ipath, span, format!("unknown host interface `{interface}`"), Some(hint));
        }
    }
    for (pattern, span, ppath) in get(entries, "plugins").map(|p| c.list(p, &join(path, "plugins"))).unwrap_or_default()
    {
        match globset::Glob::new(pattern) {
            Ok(_) => g.plugins.push(pattern.to_owned()),
            Err(e) => c.error("bad-glob", &ppath, span, format!("`{pattern}` is not a valid glob: {}", e.kind()), None),
        }
    }
    if let Some(l) = get(entries, "limits") {
        let lpath = join(path, "limits");
        let e = c.map(l, &lpath, Some(&LIMIT_CAP_KEYS));
        g.limits = LimitCaps {
            memory: get(e, "memory").and_then(|n| size(c, n, &join(&lpath, "memory"))),
            log: get(e, "log").and_then(|n| size(c, n, &join(&lpath, "log"))),
            fuel: get(e, "fuel").and_then(|n| count(c, n, &join(&lpath, "fuel"), u64::MAX)),
            disk: get(e, "disk").and_then(|n| size(c, n, &join(&lpath, "disk"))),
            files: get(e, "files").and_then(|n| count(c, n, &join(&lpath, "files"), u64::MAX)),
            plugin: get(e, "plugin").and_then(|n| size(c, n, &join(&lpath, "plugin"))),
        };
    }
    g
}

/// Query parameter names that carry a secret, in part of the name.
const SECRET_PARAMS: &[&str] =
    &["key", "token", "secret", "pass", "pwd", "auth", "signature", "credential", "session", "jwt", "bearer"];

/// What secret an http(s) URL carries, if it carries one: a user name
/// or password before the host, or a query parameter named like a key,
/// token, password or signature. Says so in words without the value.
pub(crate) fn secret_in_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest[..end].contains('@') {
        return Some("a user name or password before its host (`USER:PASSWORD@`)".into());
    }
    let query = rest.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or_default())?;
    query.split('&').find_map(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let lower = percent_decoded(name).to_ascii_lowercase();
        let secret = SECRET_PARAMS.iter().any(|s| lower.contains(s)) || matches!(lower.as_str(), "sig" | "code");
        secret.then(|| format!("a secret in its query (`{}=...`)", crate::text::one_line(name, 60)))
    })
}

/// `%XX` escapes of a URL part decoded, so `api%5Fkey` is seen as `api_key`.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy parser's key lists come from the types; these are what
    /// the book's policy reference documents.
    #[test]
    fn the_keys_the_parser_knows_are_the_fields_of_the_types() {
        assert_eq!(*ENV_KEYS, ["approvals", "credentials", "description", "grants", "pipelines", "provider"]);
        assert_eq!(*CREDENTIAL_KEYS, ["expires", "env", "file"]);
        assert_eq!(*APPROVAL_KEYS, ["groups", "requester_may_approve", "required", "timeout"]);
        assert_eq!(*GRANT_KEYS, ["interfaces", "limits", "plugins"]);
        assert_eq!(*LIMIT_CAP_KEYS, ["disk", "files", "fuel", "log", "memory", "plugin"]);
        let keys = ProviderKind::ALL.map(ProviderKind::keys);
        assert_eq!(keys[0], ["auth", "credential", "idempotent", "method", "payload", "type", "url"]);
        assert_eq!(keys[1], ["keep", "path", "type"]);
        assert_eq!(keys[2], ["argv", "credentials", "timeout", "type"]);
        for kind in ProviderKind::ALL {
            let provider = match kind {
                ProviderKind::Http => Provider::Http {
                    url: "https://x.invalid".into(),
                    method: HttpMethod::Put,
                    auth: HttpAuth::None,
                    credential: None,
                    payload: Payload::Artifacts,
                    idempotent: false,
                },
                ProviderKind::Directory => Provider::Directory { path: "/srv".into(), keep: 1 },
                ProviderKind::Command => {
                    Provider::Command { argv: vec!["/bin/true".into()], timeout: Duration::ZERO, credentials: vec![] }
                }
            };
            assert_eq!(provider.kind(), kind);
            let json = serde_json::to_value(&provider).expect("serializes");
            assert_eq!(json["type"], kind.name(), "the tag serde writes is the kind's name");
        }
    }
}
