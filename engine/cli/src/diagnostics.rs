//! `airlock validate`, and rendering pipeline diagnostics.

use crate::exit;
use airlock_model::Diagnostic;
use airlock_model::policy::Policy;
use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
use std::path::{Path, PathBuf};

/// Loads and validates a pipeline file, rendering every diagnostic to
/// stderr. `Ok(None)` means it was invalid (already reported).
pub fn load(path: &Path, policy: Option<&Policy>) -> anyhow::Result<Option<airlock_model::Pipeline>> {
    let (src, result) = check(path, policy)?;
    match result {
        Ok(p) => Ok(Some(p)),
        Err(diags) => {
            eprint!("{}", render(path, &src, &diags));
            Ok(None)
        }
    }
}

pub(crate) fn check(
    path: &Path,
    policy: Option<&Policy>,
) -> anyhow::Result<(String, Result<airlock_model::Pipeline, Vec<Diagnostic>>)> {
    let src = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
    let base = base_dir(path);
    let mut lookup = airlock_runner::FsLookup::new(&base);
    if let Some(policy) = policy {
        lookup = lookup.with_policy(policy.clone());
    }
    let result = airlock_model::load(&path.display().to_string(), &src, &lookup);
    Ok((src, result))
}

/// The directory plugin and source paths are relative to.
pub fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Renders diagnostics like a compiler: the message, the place, the line
/// with the spot underlined, the field path and a hint.
pub fn render(path: &Path, src: &str, diags: &[Diagnostic]) -> String {
    let masked = masked(src, diags);
    let src = masked.as_str();
    let file = SimpleFile::new(path.display().to_string(), src);
    let config = term::Config::default();
    let mut out = String::new();
    for d in diags {
        let mut report = Report::error().with_message(&d.message).with_code(d.code);
        let mut notes = Vec::new();
        if let Some(span) = d.span
            && line_around(src, span.start).len() > MAX_SHOWN_LINE
        {
            // A line this long would flood the terminal: name the place.
            let at = if d.path.is_empty() { String::new() } else { format!(" (`{}`)", d.path) };
            notes.push(format!("at {}:{}:{}{at}, on a line too long to show", path.display(), span.line, span.col));
        } else if let Some(span) = d.span {
            let end = if span.end > span.start { span.end } else { (span.start + 1).min(src.len()) };
            let label = Label::primary((), span.start.min(src.len())..end);
            report = report.with_labels(vec![if d.path.is_empty() {
                label
            } else {
                label.with_message(format!("at `{}`", d.path))
            }]);
        }
        if let Some(hint) = &d.hint {
            notes.push(format!("hint: {hint}"));
        }
        report = report.with_notes(notes);
        if term::emit_to_string(&mut out, &config, &file, &report).is_err() {
            out.push_str(&format!("{d}\n"));
        }
    }
    let n = diags.len();
    out.push_str(&format!("{}: {n} error{}\n", path.display(), if n == 1 { "" } else { "s" }));
    out
}

/// `src` with the text under every diagnostic that may point at a secret
/// (a credential written inline, a password in a URL) replaced by `*`,
/// byte for byte, so the rest still lines up: a terminal or a CI log is
/// shown where the mistake is, never the secret.
fn masked(src: &str, diags: &[Diagnostic]) -> String {
    let mut text = src.to_owned();
    for span in diags.iter().filter(|d| d.spans_a_secret()).filter_map(|d| d.span) {
        let (start, end) = (span.start.min(text.len()), span.end.min(text.len()));
        if let Some(secret) = text.get(start..end) {
            let stars: String = secret.chars().map(|c| "*".repeat(c.len_utf8())).collect();
            text.replace_range(start..end, &stars);
        }
    }
    text
}

/// Longest source line shown under a diagnostic, in bytes.
const MAX_SHOWN_LINE: usize = 400;

/// The line of `src` holding byte `at`.
fn line_around(src: &str, at: usize) -> &str {
    let bytes = src.as_bytes();
    let at = at.min(bytes.len());
    let start = bytes[..at].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let end = bytes[at..].iter().position(|b| *b == b'\n').map_or(bytes.len(), |i| at + i);
    src.get(start..end).unwrap_or("")
}

/// `airlock validate FILE...`: every file, every error.
pub fn validate(files: &[PathBuf], json: bool, policy: Option<&Path>, state_dir: &Path) -> anyhow::Result<u8> {
    let policy = match policy {
        Some(path) => match crate::policy::load(path)? {
            Some(p) => Some(p.policy),
            None => return Ok(exit::FAILED),
        },
        None => None,
    };
    let mut all_valid = true;
    let mut report = Vec::new();
    for path in files {
        let (src, result) = match check(path, policy.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                all_valid = false;
                if json {
                    report.push(serde_json::json!({ "file": path.display().to_string(), "valid": false, "error": e.to_string() }));
                } else {
                    crate::output::error(&e);
                }
                continue;
            }
        };
        // A valid pipeline's WebAssembly, where it can be seen without
        // fetching anything, is checked as a step would load it.
        let result = result.and_then(|pipeline| {
            let found = inspect_plugins(path, &pipeline, policy.as_ref(), state_dir);
            if found.is_empty() { Ok(pipeline) } else { Err(found) }
        });
        match result {
            Ok(pipeline) => {
                if json {
                    report.push(serde_json::json!({ "file": path.display().to_string(), "valid": true, "steps": pipeline.steps.len() }));
                } else {
                    eprintln!(
                        "{}: valid ({} step{})",
                        path.display(),
                        pipeline.steps.len(),
                        if pipeline.steps.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Err(diags) => {
                all_valid = false;
                if json {
                    report.push(
                        serde_json::json!({ "file": path.display().to_string(), "valid": false, "diagnostics": diags }),
                    );
                } else {
                    eprint!("{}", render(path, &src, &diags));
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if all_valid { exit::OK } else { exit::FAILED })
}

/// What a step would refuse to load, for the plugin files beside the
/// pipeline and the tools already in the tool cache (those not fetched
/// yet are not fetched: `airlock fetch` does that, and checks them as it
/// compiles). Each file is checked once: its size against the
/// environment's limit, a module's imports, and the WebAssembly features
/// it uses, without compiling it.
fn inspect_plugins(
    path: &Path,
    pipeline: &airlock_model::Pipeline,
    policy: Option<&Policy>,
    state_dir: &Path,
) -> Vec<Diagnostic> {
    let limit = pipeline
        .environment
        .as_ref()
        .and_then(|env| policy?.environments.get(env)?.grants.limits.plugin)
        .unwrap_or(airlock_model::DEFAULT_PLUGIN_LIMIT);
    let tools_dir = crate::tool_cache_dir(state_dir);
    let cache = tools_dir.is_dir().then(|| airlock_host::tools::ToolCache::open(&tools_dir).ok()).flatten();
    let base = base_dir(path);
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::new();
    for (name, step) in &pipeline.steps {
        let Some(plugin) = step.plugin() else { continue };
        let (file, field) = match plugin.tool() {
            Some(tool) => {
                let found = cache.as_ref().and_then(|c| c.cached(tool, &pipeline.tools[tool]).ok().flatten());
                match found.and_then(|f| f.module) {
                    Some(module) => (module, format!("tools.{tool}")),
                    None => continue,
                }
            }
            None => (base.join(&plugin.uses), format!("steps.{name}.uses")),
        };
        if file.is_file() && seen.insert(file.clone()) {
            files.push((file, field));
        }
    }
    if files.is_empty() {
        return Vec::new();
    }
    let sandbox = match airlock_sandbox::Sandbox::new(None) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot check the pipeline's WebAssembly: {e}");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for (file, field) in files {
        if let Err(e) = sandbox.check(&file, limit) {
            found.push(Diagnostic {
                file: path.display().to_string(),
                code: "plugin-refused",
                message: e.to_string(),
                path: field,
                span: None,
                hint: Some("a step running it would fail before it starts".into()),
            });
        }
    }
    found
}
