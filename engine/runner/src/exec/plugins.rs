//! Loading a step's plugin once per run, with what its environment grants.

use super::grants::effective_limits;
use super::tools::Resolved;
use super::{Progress, Shared};
use airlock_model::PluginStep;
use airlock_sandbox::{HostGrants, Plugin, PluginKind};
use tokio::sync::OnceCell;

/// Plugins this large take seconds to compile (nextpnr's 2 MiB, three;
/// Yosys's 66 MiB, a minute on two cores): compiling one is reported.
/// Smaller ones compile in the blink of an eye.
const COMPILE_NOTICE_BYTES: u64 = 1 << 20;

/// A plugin loaded once per run, or why it could not be.
pub(crate) type PluginCell = OnceCell<Result<Plugin, String>>;

/// Loads the plugin `resolved` names for `step` (whose `uses:` names it
/// in messages). The sha256 of a tool's module is recorded in the tool
/// cache the first time, so that later runs need not read the module.
pub(crate) async fn load_plugin(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    resolved: &Resolved,
) -> Result<Plugin, String> {
    let path = resolved.plugin.clone();
    let known = resolved.sha256.clone();
    let fuel = effective_limits(shared, step).fuel.is_some();
    let max_bytes =
        shared.grants.as_ref().and_then(|g| g.grants.limits.plugin).unwrap_or(airlock_model::DEFAULT_PLUGIN_LIMIT);
    let grants = HostGrants::of(shared.grants.iter().flat_map(|g| g.grants.interfaces.iter().copied()));
    // Steps sharing a plugin compile it once; different plugins compile
    // in parallel.
    let cell = shared.plugins.lock().await.entry((path.clone(), fuel, grants.clone())).or_default().clone();
    cell.get_or_init(|| async {
        let sandbox = shared.sandbox.clone();
        let (p, g) = (path.clone(), grants.clone());
        // Compiling a large tool takes a while, once: say so.
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A tool's module whose sha256 is not on record yet: record it.
        let record = match (&known, &resolved.tool) {
            (None, Some(tool)) => Some((shared.tool_cache.clone(), shared.tools[tool].clone())),
            _ => None,
        };
        let job = super::blocking_reporting(
            move |report| {
                let loaded = sandbox.load_reporting(&p, known.as_deref(), fuel, &g, max_bytes, &|size| {
                    if size >= COMPILE_NOTICE_BYTES {
                        report(size);
                    }
                });
                if let (Ok(plugin), Some((cache, tool))) = (&loaded, &record) {
                    cache.remember_module(tool, &plugin.digest);
                }
                loaded
            },
            |size| {
                let what = format!("compiling {file} ({}), first use only", airlock_model::format_size(size));
                shared.preparing_slowly(name);
                (shared.observer)(&Progress::StepPreparing { step: name.to_owned(), what, done: None, total: None });
            },
        );
        job.await.map_err(|e| format!("plugin `{}` could not be loaded: {e}", step.uses)).and_then(|r| {
            r.map_err(|e| {
                let mut message = e.to_string().replace(&path.display().to_string(), &step.uses);
                for interface in airlock_sandbox::HostInterface::ALL {
                    if message.contains(interface.wit()) && !grants.allows(*interface) {
                        message.push_str(&format!(
                            "; a step may import `{}` only in a pipeline whose `environment:` grants `{}`",
                            interface.wit(),
                            interface.name()
                        ));
                    }
                }
                message
            })
        })
    })
    .await
    .clone()
}

pub(crate) fn check_kind(name: &str, step: &PluginStep, plugin: &Plugin, entry: Option<&str>) -> Result<(), String> {
    match plugin.kind() {
        PluginKind::Step if step.args.is_some() => Err(format!(
            "step `{name}`: plugin `{}` is an `airlock:step` plugin; configure it with `with:`, not `args:`",
            step.uses
        )),
        PluginKind::Command | PluginKind::Module if !step.with.is_empty() => Err(format!(
            "step `{name}`: plugin `{}` is a WASI command program; pass it `args:`, not `with:`",
            step.uses
        )),
        PluginKind::Step | PluginKind::Command if entry.is_some() => Err(format!(
            "step `{name}`: plugin `{}` is a component, which starts from the interface it exports; `entry:` is for core modules",
            step.uses
        )),
        PluginKind::Module => {
            let entry = entry.unwrap_or("_start");
            let entries = plugin.entries();
            if entries.iter().any(|e| e == entry) {
                return Ok(());
            }
            Err(format!(
                "step `{name}`: plugin `{}` has no function `{entry}` to start from; it exports {}: set `entry:` to the one that runs it",
                step.uses,
                entries.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
            ))
        }
        _ => Ok(()),
    }
}
