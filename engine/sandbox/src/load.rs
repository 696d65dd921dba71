//! Reading, compiling (or finding in the compile cache), checking and
//! linking a plugin.

use crate::cache::Vouched;
use crate::link::{ComponentState, Flavor, FlavorKind, ModuleState, bindings};
use crate::{
    DEFAULT_PLUGIN_LIMIT, GRANTED_INTERFACES, HostGrants, HostInterface, MAX_MEMORIES, MAX_MEMORIES_PER_MODULE,
    MAX_TABLES, MAX_TABLES_PER_MODULE, Sandbox, SandboxError,
};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::Engine;

/// What kind of program a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A component exporting `airlock:step/run`: configured with `with:`.
    Step,
    /// A `wasi:cli/command` component: configured with `args:`.
    Command,
    /// A core module (wasip1), started from `_start` or its `entry:`:
    /// configured with `args:`.
    Module,
}

pub(crate) enum Compiled {
    Step(bindings::StepPre<ComponentState>),
    Command(wasmtime_wasi::p2::bindings::CommandPre<ComponentState>),
    Module(wasmtime::InstancePre<ModuleState>),
}

/// A plugin ready to instantiate: compiled, checked, linked.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) compiled: Arc<Compiled>,
    /// sha256 of the plugin file, hex.
    pub digest: String,
    /// The plugin's file name, used as `argv[0]` and in messages.
    pub name: String,
    /// Whether the compiled form came from the cache.
    pub from_cache: bool,
    pub(crate) flavor: FlavorKind,
    /// Where a mapped core module's code is, known to be sound (the
    /// cache entry whose sum this process checked, or the compiler's
    /// output in memory): a step process running it need not read it
    /// through again.
    pub(crate) checked: Option<Vouched>,
}

impl Plugin {
    /// For a core module, the exported functions it can start from (no
    /// parameters, no results), `_start` among them if it has one; none
    /// for a component.
    pub fn entries(&self) -> Vec<String> {
        let Compiled::Module(pre) = &*self.compiled else { return Vec::new() };
        pre.module()
            .exports()
            .filter(|e| e.ty().func().is_some_and(|f| f.params().len() == 0 && f.results().len() == 0))
            .map(|e| e.name().to_owned())
            .collect()
    }

    /// Whether it runs in a step process of its own (a big core module,
    /// on a sandbox with [`Sandbox::set_step_process`]).
    pub fn in_own_process(&self) -> bool {
        self.flavor == FlavorKind::Unchecked
    }

    /// What kind of program this is.
    pub fn kind(&self) -> PluginKind {
        match &*self.compiled {
            Compiled::Step(_) => PluginKind::Step,
            Compiled::Command(_) => PluginKind::Command,
            Compiled::Module(_) => PluginKind::Module,
        }
    }
}

impl Sandbox {
    /// Reads, compiles (or loads from the cache), checks and links a plugin.
    /// `fuel` selects the engine that counts instructions.
    pub fn load_with(&self, path: &Path, fuel: bool) -> Result<Plugin, SandboxError> {
        self.load_granted(path, fuel, &HostGrants::default(), DEFAULT_PLUGIN_LIMIT)
    }

    /// [`Sandbox::load_with`] for a step granted host interfaces beyond
    /// WASI (a plugin importing one that `grants` does not name is
    /// refused) and allowed plugins up to `max_bytes`.
    pub fn load_granted(
        &self,
        path: &Path,
        fuel: bool,
        grants: &HostGrants,
        max_bytes: u64,
    ) -> Result<Plugin, SandboxError> {
        self.load_reporting(path, None, fuel, grants, max_bytes, &|_| {})
    }

    /// [`Sandbox::load_granted`], calling `compiling` with the plugin's
    /// size just before it is compiled: when the compile cache does not
    /// have it, which for a large tool means a wait worth telling about.
    ///
    /// `known` is the file's sha256 when the caller has it on record (the
    /// tool cache keeps it for the module of a fetched tool). Then, when
    /// the compiled form is cached, the file is not read at all: a warm
    /// Yosys run used to read and hash its 66 MiB module only to find the
    /// key. What runs is still exactly the compiled form of that digest,
    /// the digest any policy is checked against; a record gone stale (the
    /// file is not what it says) only means running what was recorded.
    /// When the compiled form is not cached, the file is read and hashed
    /// as without `known`.
    pub fn load_reporting(
        &self,
        path: &Path,
        known: Option<&str>,
        fuel: bool,
        grants: &HostGrants,
        max_bytes: u64,
        compiling: &dyn Fn(u64),
    ) -> Result<Plugin, SandboxError> {
        let read_error = |source| SandboxError::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > max_bytes {
            return Err(SandboxError::TooLarge { path: path.to_owned(), size, limit: max_bytes });
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(digest) = known {
            let mut header = [0; 8];
            let is_component =
                File::open(path).and_then(|mut f| f.read_exact(&mut header)).ok().and_then(|()| kind_of(&header));
            if let Some(is_component) = is_component {
                let kind = self.flavor_kind(is_component, fuel, size);
                if let Some(plugin) =
                    self.cached_plugin(digest, &name, is_component, kind, grants).map_err(|e| e.with_path(path))?
                {
                    return Ok(plugin);
                }
            }
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        // Messages name the path as the caller gave it.
        let plugin = self
            .load_bytes_reporting(&bytes, &name, fuel, grants, max_bytes, compiling)
            .map_err(|e| e.with_path(path))?;
        if known.is_some_and(|k| k != plugin.digest) {
            tracing::warn!(path = %path.display(), "the recorded sha256 of this file was not its own; used its own");
        }
        Ok(plugin)
    }

    /// Checks a plugin file without compiling it: that it is WebAssembly
    /// within `max_bytes`, that a core module imports nothing but WASI,
    /// and that it uses only the WebAssembly airlock runs (a module is
    /// validated in full, on every core: a small part of compiling it).
    /// `airlock validate` runs this on the tools it can see.
    pub fn check(&self, path: &Path, max_bytes: u64) -> Result<(), SandboxError> {
        let read_error = |source| SandboxError::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > max_bytes {
            return Err(SandboxError::TooLarge { path: path.to_owned(), size, limit: max_bytes });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                check_before_compiling(path, &bytes)?;
                validate_module(&self.plain.engine, path, &bytes)
            }
            // Components are small step plugins; compiling one says all.
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
            _ => Err(SandboxError::NotWasm { path: path.to_owned() }),
        }
    }

    /// [`Sandbox::load_with`] without fuel.
    pub fn load(&self, path: &Path) -> Result<Plugin, SandboxError> {
        self.load_with(path, false)
    }

    /// Loads a plugin from its bytes; `name` appears in messages.
    pub fn load_bytes(&self, bytes: &[u8], name: &str, fuel: bool) -> Result<Plugin, SandboxError> {
        self.load_bytes_granted(bytes, name, fuel, &HostGrants::default(), DEFAULT_PLUGIN_LIMIT)
    }

    /// [`Sandbox::load_bytes`] with host interfaces granted.
    pub fn load_bytes_granted(
        &self,
        bytes: &[u8],
        name: &str,
        fuel: bool,
        grants: &HostGrants,
        max_bytes: u64,
    ) -> Result<Plugin, SandboxError> {
        self.load_bytes_reporting(bytes, name, fuel, grants, max_bytes, &|_| {})
    }

    fn load_bytes_reporting(
        &self,
        bytes: &[u8],
        name: &str,
        fuel: bool,
        grants: &HostGrants,
        max_bytes: u64,
        compiling: &dyn Fn(u64),
    ) -> Result<Plugin, SandboxError> {
        let path = PathBuf::from(name);
        if bytes.len() as u64 > max_bytes {
            return Err(SandboxError::TooLarge { path, size: bytes.len() as u64, limit: max_bytes });
        }
        let Some(is_component) = bytes.get(..8).and_then(kind_of) else {
            return Err(SandboxError::NotWasm { path });
        };
        if !is_component {
            // Seconds or minutes of compiling saved for a module that
            // could never link.
            check_before_compiling(&path, bytes)?;
        }
        let kind = self.flavor_kind(is_component, fuel, bytes.len() as u64);
        let flavor = self.flavor(kind);
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(plugin) = self.cached_plugin(&digest, name, is_component, kind, grants)? {
            return Ok(plugin);
        }
        let compile_error = |e: wasmtime::Error| {
            let message = format!("{e:#}");
            // The pooled engine checks a module's memories and tables
            // against the pool when compiling; say so in airlock's words.
            match message.split_once("pooling allocator requirements: ") {
                Some((_, detail)) => SandboxError::TooMuch { path: path.clone(), detail: detail.to_owned() },
                None => SandboxError::Compile { path: path.clone(), message },
            }
        };
        let (compiled, checked) = if is_component {
            compiling(bytes.len() as u64);
            let component = wasmtime::component::Component::new(&flavor.engine, bytes).map_err(compile_error)?;
            self.store_in_cache(&digest, &flavor.engine, component.serialize());
            (self.link_component(flavor, &component, &path, grants)?, None)
        } else {
            // Before minutes of compiling: a feature left off is found by
            // validating, in a fraction of the time.
            let started = std::time::Instant::now();
            validate_module(&flavor.engine, &path, bytes)?;
            tracing::debug!(took = ?started.elapsed(), "validated {name}");
            compiling(bytes.len() as u64);
            let (module, written) = self.compile_module(flavor, kind, &digest, name, bytes).map_err(compile_error)?;
            (Self::link_module(flavor, &module, &path)?, written)
        };
        Ok(Plugin {
            compiled: Arc::new(compiled),
            digest,
            name: name.to_owned(),
            from_cache: false,
            flavor: kind,
            checked,
        })
    }

    /// Which engine a plugin is compiled for: with fuel if asked, for a
    /// step process if it is a core module that big, else the plain one.
    fn flavor_kind(&self, is_component: bool, fuel: bool, size: u64) -> FlavorKind {
        if fuel {
            FlavorKind::Fueled
        } else if !is_component && self.step_process.as_ref().is_some_and(|p| size >= p.min_bytes) {
            FlavorKind::Unchecked
        } else {
            FlavorKind::Plain
        }
    }

    /// The plugin whose file has sha256 `digest`, from the compile cache,
    /// linked; `None` if the cache does not have it (or has it damaged).
    fn cached_plugin(
        &self,
        digest: &str,
        name: &str,
        is_component: bool,
        kind: FlavorKind,
        grants: &HostGrants,
    ) -> Result<Option<Plugin>, SandboxError> {
        let Some(cache) = self.cache.as_ref() else { return Ok(None) };
        let path = PathBuf::from(name);
        let flavor = self.flavor(kind);
        self.behind.wait_for(digest, &flavor.engine);
        let loaded =
            |e: &wasmtime::Error| tracing::warn!("cannot load a cached compiled plugin, compiling again: {e:#}");
        let (compiled, checked) = if is_component {
            // SAFETY (the one kind of `unsafe` in airlock): wasmtime runs
            // precompiled code as it finds it. These bytes were produced
            // by `serialize` of an engine with this exact configuration
            // (the cache key says so), written only by us under the state
            // directory, and their sum was checked just now, on the bytes
            // handed over. wasmtime also checks its version and settings
            // in the header before using them.
            #[allow(unsafe_code)]
            let Some(component) = cache.get_bytes(digest, &flavor.engine).and_then(|bytes| {
                unsafe { wasmtime::component::Component::deserialize(&flavor.engine, bytes) }.inspect_err(loaded).ok()
            }) else {
                return Ok(None);
            };
            (self.link_component(flavor, &component, &path, grants)?, None)
        } else {
            // SAFETY: as for components above, the sum checked on the
            // open file that is then mapped: an entry replaced or evicted
            // meanwhile is not what runs.
            let Some(entry) = cache.get(digest, &flavor.engine) else { return Ok(None) };
            let id = entry.id;
            #[allow(unsafe_code)]
            let Some(module) =
                unsafe { wasmtime::Module::deserialize_open_file(&flavor.engine, entry.file) }.inspect_err(loaded).ok()
            else {
                return Ok(None);
            };
            (Self::link_module(flavor, &module, &path)?, Some(Vouched::Entry(id)))
        };
        let compiled = Arc::new(compiled);
        Ok(Some(Plugin {
            compiled,
            digest: digest.to_owned(),
            name: name.to_owned(),
            from_cache: true,
            flavor: kind,
            checked,
        }))
    }

    /// A core module compiled for a step process, by the sha256 of its
    /// file: what a step process runs. `handed` is the engine's sealed
    /// memory file holding the code, when it has one (a `/proc` path);
    /// otherwise, or if it cannot be opened, the code comes from the
    /// compile cache.
    pub(crate) fn load_compiled(
        &self,
        digest: &str,
        name: &str,
        checked: Option<crate::cache::FileId>,
        handed: Option<&Path>,
    ) -> Result<Plugin, SandboxError> {
        let path = PathBuf::from(name);
        let flavor = self.flavor(FlavorKind::Unchecked);
        let missing = || SandboxError::Compile {
            path: path.clone(),
            message:
                "its compiled form is not in the compile cache (evicted while the step started?); run the step again"
                    .into(),
        };
        let (file, id) = match handed.and_then(|p| File::open(p).ok()) {
            Some(file) => (file, None),
            None => {
                let cached = self
                    .cache
                    .as_ref()
                    .and_then(|c| match checked {
                        Some(id) => c.get_checked(digest, &flavor.engine, id),
                        None => c.get(digest, &flavor.engine),
                    })
                    .ok_or_else(missing)?;
                (cached.file, Some(cached.id))
            }
        };
        // SAFETY: as in `load_bytes_reporting`: made by this engine's
        // configuration, and either the sealed memory file the engine
        // that started this process wrote the compiler's output into, or
        // an entry written under the state directory whose sum was checked
        // on the open file that is mapped, here or (the same file, still
        // held open) by that engine.
        #[allow(unsafe_code)]
        let module = unsafe { wasmtime::Module::deserialize_open_file(&flavor.engine, file) }
            .map_err(|e| SandboxError::Compile { path: path.clone(), message: format!("{e:#}") })?;
        let compiled = Self::link_module(flavor, &module, &path)?;
        Ok(Plugin {
            compiled: Arc::new(compiled),
            digest: digest.to_owned(),
            name: name.to_owned(),
            from_cache: true,
            flavor: FlavorKind::Unchecked,
            checked: id.map(Vouched::Entry),
        })
    }

    /// Compiles a core module. One for a step process of its own (a big
    /// tool) is compiled into a sealed memory file that this engine and
    /// the tool's step processes map, while its cache entry is written
    /// behind: the first step need not wait for the disk. Where a memory
    /// file cannot be made, it is compiled straight into its cache entry
    /// and mapped from there, and the entry's identity, returned, spares
    /// the step process reading it through once more.
    fn compile_module(
        &self,
        flavor: &Flavor,
        kind: FlavorKind,
        digest: &str,
        name: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(wasmtime::Module, Option<Vouched>)> {
        let started = std::time::Instant::now();
        let cache = self.cache.as_ref().filter(|_| kind == FlavorKind::Unchecked);
        let Some(cache) = cache else {
            let m = wasmtime::Module::new(&flavor.engine, bytes)?;
            tracing::debug!(took = ?started.elapsed(), "compiled {name}");
            self.store_in_cache(digest, &flavor.engine, m.serialize());
            return Ok((m, None));
        };
        let code = flavor.engine.precompile_module(bytes)?;
        tracing::debug!(took = ?started.elapsed(), bytes = code.len(), "compiled {name}");
        match crate::cache::in_memory(name, &code) {
            Ok(file) => {
                let mapped = file.try_clone()?;
                self.behind.put(cache, digest, &flavor.engine, code);
                // SAFETY: the file holds exactly the bytes this engine's
                // `precompile_module` made just now, written by this
                // process into a memory file sealed against writes (only
                // processes of this user reach it, through `/proc`);
                // wasmtime checks its version and settings too.
                #[allow(unsafe_code)]
                let m = unsafe { wasmtime::Module::deserialize_open_file(&flavor.engine, mapped) }?;
                return Ok((m, Some(Vouched::Memory(Arc::new(file)))));
            }
            Err(e) => tracing::debug!("cannot hold compiled code in a memory file ({e}); writing the cache first"),
        }
        let stored = std::time::Instant::now();
        // The step process maps the code from the cache: without an
        // entry there is nothing for it to run.
        let entry = cache.put_open(digest, &flavor.engine, &code).map_err(|e| {
            wasmtime::Error::msg(format!(
                "cannot keep its compiled form in the compile cache at {}, where its step process maps it from: {e}",
                cache.dir().display()
            ))
        })?;
        drop(code);
        tracing::debug!(took = ?stored.elapsed(), "stored {name} in the compile cache");
        let id = entry.id;
        // SAFETY: the file holds exactly the bytes this engine's
        // `precompile_module` made just now, written by this process into
        // its state directory and open since then (wasmtime keeps it
        // mapped, so its identity stays its own); wasmtime checks its
        // version and settings too.
        #[allow(unsafe_code)]
        let m = unsafe { wasmtime::Module::deserialize_open_file(&flavor.engine, entry.file) }?;
        Ok((m, Some(Vouched::Entry(id))))
    }

    fn store_in_cache(&self, digest: &str, engine: &Engine, serialized: wasmtime::Result<Vec<u8>>) {
        let Some(cache) = &self.cache else { return };
        let result =
            serialized.map_err(|e| std::io::Error::other(format!("{e:#}"))).and_then(|b| cache.put(digest, engine, &b));
        if let Err(e) = result {
            tracing::warn!(dir = %cache.dir().display(), "cannot cache a compiled plugin: {e}");
        }
    }

    fn link_component(
        &self,
        flavor: &Flavor,
        component: &wasmtime::component::Component,
        path: &Path,
        grants: &HostGrants,
    ) -> Result<Compiled, SandboxError> {
        let ty = component.component_type();
        let granted = |name: &str| {
            GRANTED_INTERFACES.contains(&name) || HostInterface::from_wit(name).is_some_and(|i| grants.allows(i))
        };
        let refused: Vec<String> = ty
            .imports(&flavor.engine)
            .map(|(import, _)| import)
            .filter(|import| !granted(import.split('@').next().unwrap_or(import)))
            .map(str::to_owned)
            .collect();
        if !refused.is_empty() {
            return Err(SandboxError::NotGranted { path: path.to_owned(), imports: refused, js_host: false });
        }
        let exports: Vec<String> = ty.exports(&flavor.engine).map(|(n, _)| n.to_owned()).collect();
        let exports_iface = |name: &str| exports.iter().any(|e| e.split('@').next() == Some(name));
        if let Some(needs) = component.resources_required() {
            check_resources(path, &needs, MAX_MEMORIES, MAX_TABLES)?;
        }
        let link_error = |e: wasmtime::Error| SandboxError::Link { path: path.to_owned(), message: format!("{e:#}") };
        let linker = flavor.component_linker(grants).map_err(link_error)?;
        let pre = linker.instantiate_pre(component).map_err(link_error)?;
        if exports_iface("airlock:step/run") {
            Ok(Compiled::Step(bindings::StepPre::new(pre).map_err(link_error)?))
        } else if exports_iface("wasi:cli/run") {
            Ok(Compiled::Command(wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(link_error)?))
        } else {
            Err(SandboxError::NothingToRun { path: path.to_owned() })
        }
    }

    fn link_module(flavor: &Flavor, module: &wasmtime::Module, path: &Path) -> Result<Compiled, SandboxError> {
        let refused: Vec<String> = module
            .imports()
            .filter(|import| import.module() != "wasi_snapshot_preview1")
            .map(|import| format!("{}::{}", import.module(), import.name()))
            .collect();
        if !refused.is_empty() {
            return Err(SandboxError::NotGranted { path: path.to_owned(), imports: refused, js_host: false });
        }
        // Any function without parameters or results could be its
        // entry (`entry:`); a module without one has nothing to run.
        let startable =
            module.exports().any(|e| e.ty().func().is_some_and(|f| f.params().len() == 0 && f.results().len() == 0));
        if !startable {
            return Err(SandboxError::NothingToRun { path: path.to_owned() });
        }
        check_resources(path, &module.resources_required(), MAX_MEMORIES_PER_MODULE, MAX_TABLES_PER_MODULE)?;
        let pre = flavor
            .modules
            .instantiate_pre(module)
            .map_err(|e| SandboxError::Link { path: path.to_owned(), message: format!("{e:#}") })?;
        Ok(Compiled::Module(pre))
    }
}

/// Whether an import (`module::name`) says its module was built for a
/// JavaScript host (wasm-bindgen, Emscripten) rather than as a WASI
/// command.
fn from_a_js_host(import: &str) -> bool {
    ["wbg::", "__wbindgen_placeholder__::", "env::emscripten_", "env::__syscall_", "env::invoke_"]
        .iter()
        .any(|p| import.starts_with(p))
}

/// Refuses, before it is compiled, a core module importing anything but
/// WASI preview 1 or defining more memories or tables than a step may
/// have, reading only the sections before its code. A module too broken
/// to read is left to the compiler, which says what is wrong with it.
fn check_before_compiling(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    let mut refused = Vec::new();
    let (mut memories, mut tables) = (0, 0);
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ImportSection(reader)) => {
                for import in reader.into_imports() {
                    let Ok(import) = import else { return Ok(()) };
                    if import.module != "wasi_snapshot_preview1" {
                        refused.push(format!("{}::{}", import.module, import.name));
                    }
                }
            }
            Ok(wasmparser::Payload::MemorySection(reader)) => memories = reader.count(),
            Ok(wasmparser::Payload::TableSection(reader)) => tables = reader.count(),
            // Imports, memories and tables come before functions.
            Ok(wasmparser::Payload::CodeSectionStart { .. } | wasmparser::Payload::End(_)) => break,
            Err(_) => return Ok(()),
            _ => {}
        }
    }
    if !refused.is_empty() {
        let js = refused.iter().any(|i| from_a_js_host(i));
        return Err(SandboxError::NotGranted { path: path.to_owned(), imports: refused, js_host: js });
    }
    // The same words whichever engine the module is for: the instance
    // pool would refuse it while compiling, in its own.
    let needs = wasmtime::ResourcesRequired {
        num_memories: memories,
        max_initial_memory_size: None,
        num_tables: tables,
        max_initial_table_size: None,
    };
    check_resources(path, &needs, MAX_MEMORIES_PER_MODULE, MAX_TABLES_PER_MODULE)
}

/// Whether a file starting with `header` is a component (`true`) or a
/// core module (`false`); `None` if it is not WebAssembly.
fn kind_of(header: &[u8]) -> Option<bool> {
    match header.get(..8)? {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(false),
        [0, b'a', b's', b'm', _, _, 1, 0] => Some(true),
        _ => None,
    }
}

/// Validates a core module with the engine's features, in parallel. A
/// feature the engine leaves off is [`SandboxError::Unsupported`]; other
/// invalid code is left for the compiler to report in its words.
fn validate_module(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    match wasmtime::Module::validate(engine, bytes) {
        Err(e) if crate::error::is_feature_error(&format!("{e:#}")) => {
            Err(SandboxError::Unsupported { path: path.to_owned(), message: format!("{e:#}") })
        }
        _ => Ok(()),
    }
}

/// Refuses a plugin defining more memories or tables than allowed. The
/// pooled engine refuses such modules when compiling them; this holds the
/// engine with fuel, which allocates on demand, to the same limits.
pub(crate) fn check_resources(
    path: &Path,
    needs: &wasmtime::ResourcesRequired,
    memories: u32,
    tables: u32,
) -> Result<(), SandboxError> {
    let detail = if needs.num_memories > memories {
        format!("it defines {} linear memories, and the limit is {memories}", needs.num_memories)
    } else if needs.num_tables > tables {
        format!("it defines {} tables, and the limit is {tables}", needs.num_tables)
    } else {
        return Ok(());
    };
    Err(SandboxError::TooMuch { path: path.to_owned(), detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_wasm() {
        let sandbox = Sandbox::new(None).expect("engine");
        let err = sandbox.load_bytes(b"#!/bin/sh\necho hi\n", "x.wasm", false).err().expect("refused");
        assert!(matches!(err, SandboxError::NotWasm { .. }), "{err}");
    }

    /// A module built for a JavaScript host is refused, saying so, before
    /// it is compiled: its code does not even validate, and that is not
    /// what is reported.
    #[test]
    fn imports_are_checked_before_compiling() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module (import "env" "emscripten_memcpy_big" (func)) (func (export "_start") i32.add))"#;
        let bytes = wat::parse_str(wat).expect("wat");
        let err = sandbox.load_bytes(&bytes, "em.wasm", false).err().expect("refused");
        assert_eq!(
            err.to_string(),
            "plugin `em.wasm` imports `env::emscripten_memcpy_big`, which this step is not granted; it is built for a JavaScript host (Emscripten or wasm-bindgen): use a WASI command build of the tool (wasm32-wasip1)"
        );
        // Without the import, the compiler is what refuses it.
        let bytes = wat::parse_str(r#"(module (func (export "_start") i32.add))"#).expect("wat");
        let err = sandbox.load_bytes(&bytes, "bad.wasm", false).err().expect("refused");
        assert!(matches!(err, SandboxError::Compile { .. }), "{err}");
    }

    /// The legacy exception proposal (pandoc-wasm uses it) is found
    /// before compiling, with what to do.
    #[test]
    fn features_left_off_are_named_before_compiling() {
        let sandbox = Sandbox::new(None).expect("engine");
        let legacy = r#"(module (tag $t) (func (export "_start") try throw $t catch_all end))"#;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("legacy.wasm");
        std::fs::write(&file, wat::parse_str(legacy).expect("wat")).expect("write");
        let err = sandbox.check(&file, u64::MAX).expect_err("refused");
        assert!(err.to_string().contains("legacy exception-handling proposal"), "{err}");
        let err = sandbox.load(&file).err().expect("refused");
        assert!(err.to_string().contains("legacy exception-handling proposal"), "{err}");
    }

    /// Too many memories or tables are refused before compiling, in the
    /// same words by `airlock validate` and for every engine: the
    /// instance pool used to refuse them while compiling, in its own.
    #[test]
    fn too_many_memories_or_tables_are_refused_in_one_way_before_compiling() {
        let sandbox = Sandbox::new(None).expect("engine");
        let dir = tempfile::tempdir().expect("dir");
        for (wat, detail) in [
            (
                r#"(module (memory 1) (memory 1) (func (export "_start")))"#,
                "it defines 2 linear memories, and the limit is 1",
            ),
            (
                r#"(module (table 1 funcref) (table 1 funcref) (table 1 funcref) (func (export "_start")))"#,
                "it defines 3 tables, and the limit is 2",
            ),
        ] {
            let file = dir.path().join("greedy.wasm");
            std::fs::write(&file, wat::parse_str(wat).expect("wat")).expect("write");
            let want = format!("plugin `{}` needs more than a step may have: {detail}", file.display());
            assert_eq!(sandbox.check(&file, u64::MAX).expect_err("refused").to_string(), want);
            for fuel in [false, true] {
                assert_eq!(sandbox.load_with(&file, fuel).err().expect("refused").to_string(), want);
            }
        }
    }

    /// A big tool's first use maps the compiler's output from a sealed
    /// memory file, which its step process is told about, while the cache
    /// entry is written behind it; later uses map the entry, and the step
    /// process is told which file that is. The entry is what the compiler
    /// made, by its sum.
    #[test]
    fn a_tool_for_a_step_process_is_mapped_from_memory_then_from_its_entry() {
        let dir = tempfile::tempdir().expect("dir");
        let cache_dir = dir.path().join("cache");
        let mut sandbox = Sandbox::new(Some(cache_dir.clone())).expect("engine");
        sandbox.set_step_process(small_process());
        let bytes = wat::parse_str(r#"(module (memory 1) (func (export "_start")))"#).expect("wat");
        let cold = sandbox.load_bytes(&bytes, "tool.wasm", false).expect("compiled");
        assert!(cold.in_own_process() && !cold.from_cache);
        let Some(Vouched::Memory(handed)) = &cold.checked else { panic!("not handed in memory: {:?}", cold.checked) };
        // Sealed: not even this process can change the code under a step.
        assert!(std::io::Write::write_all(&mut &**handed, b"x").is_err(), "sealed against writes");
        let handed_path = Vouched::handed_path(handed);
        let written = std::fs::read(&handed_path).expect("the memory file, through /proc");
        sandbox.behind.wait();
        let cache = crate::cache::CompileCache::new(&cache_dir);
        let engine = &sandbox.flavor(FlavorKind::Unchecked).engine;
        let entry = cache.get(&cold.digest, engine).expect("a sound entry, by its sum");
        assert_eq!(
            std::fs::read(cache_dir.join(format!("{}.cwasm", crate::cache::CompileCache::key(&cold.digest, engine))))
                .expect("entry"),
            written,
            "the same code in memory and on disk"
        );
        // What a step process does with each.
        let by_proc = sandbox.load_compiled(&cold.digest, "tool.wasm", None, Some(&handed_path)).expect("from memory");
        assert!(by_proc.checked.is_none(), "not an entry");
        let warm = sandbox.load_bytes(&bytes, "tool.wasm", false).expect("loaded");
        assert!(warm.from_cache);
        assert!(
            matches!(warm.checked, Some(Vouched::Entry(id)) if id == entry.id),
            "the step process is told the file it maps"
        );
        let by_entry = sandbox.load_compiled(&cold.digest, "tool.wasm", Some(entry.id), None).expect("from the entry");
        assert!(matches!(by_entry.checked, Some(Vouched::Entry(id)) if id == entry.id));
        // A plugin for this process is compiled in memory, as before.
        let mut small = Sandbox::new(Some(dir.path().join("other"))).expect("engine");
        small.set_step_process(crate::worker::StepProcess { min_bytes: u64::MAX, ..small_process() });
        let plugin = small.load_bytes(&bytes, "tool.wasm", false).expect("compiled");
        assert!(!plugin.in_own_process() && plugin.checked.is_none());
    }

    /// A big tool whose compiled code cannot be kept in the cache (here
    /// the cache's directory cannot be made; in life, a full disk) still
    /// loads, from memory: failing to cache is not failing to run.
    #[test]
    fn a_tool_loads_even_when_its_cache_entry_cannot_be_written() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("file"), b"").expect("write");
        let mut sandbox = Sandbox::new(Some(dir.path().join("file").join("cache"))).expect("engine");
        sandbox.set_step_process(small_process());
        let bytes = wat::parse_str(r#"(module (func (export "_start")))"#).expect("wat");
        let plugin = sandbox.load_bytes(&bytes, "tool.wasm", false).expect("loaded from memory");
        assert!(matches!(plugin.checked, Some(Vouched::Memory(_))));
        sandbox.behind.wait();
        assert!(sandbox.load_bytes(&bytes, "tool.wasm", false).is_ok_and(|p| !p.from_cache), "compiled again");
    }

    /// A step loading a tool whose entry is still being written waits
    /// for the entry rather than compiling the tool again.
    #[test]
    fn a_tool_compiled_just_now_is_not_compiled_again() {
        let dir = tempfile::tempdir().expect("dir");
        let mut sandbox = Sandbox::new(Some(dir.path().join("cache"))).expect("engine");
        sandbox.set_step_process(small_process());
        let bytes = wat::parse_str(r#"(module (func (export "_start")))"#).expect("wat");
        crate::cache::SLOW_WRITES.store(true, std::sync::atomic::Ordering::Relaxed);
        let cold = sandbox.load_bytes(&bytes, "tool.wasm", false).expect("compiled");
        assert!(!cold.from_cache);
        let again = sandbox.load_bytes(&bytes, "tool.wasm", false).expect("loaded");
        assert!(again.from_cache, "the entry written behind the first load");
    }

    /// Every core module in a step process (never started here).
    fn small_process() -> crate::worker::StepProcess {
        crate::worker::StepProcess { program: "/bin/false".into(), args: Vec::new(), min_bytes: 0 }
    }

    /// With its sha256 on record and its compiled form cached, a plugin's
    /// file is not read at all: what loads is the compiled form of that
    /// digest. Without a record, or with one not in the cache, the file is
    /// read and its own digest counts.
    #[test]
    fn a_plugin_known_by_its_digest_is_not_read_when_compiled_already() {
        let dir = tempfile::tempdir().expect("dir");
        let mut sandbox = Sandbox::new(Some(dir.path().join("cache"))).expect("engine");
        let file = dir.path().join("tool.wasm");
        let module = |export: &str| wat::parse_str(format!(r#"(module (func (export "{export}")))"#)).expect("wat");
        let load = |sandbox: &Sandbox, known: Option<&str>| {
            sandbox.load_reporting(&file, known, false, &HostGrants::default(), u64::MAX, &|_| {}).expect("load")
        };
        for step_process in [false, true] {
            if step_process {
                sandbox.set_step_process(small_process());
            }
            std::fs::write(&file, module("_start")).expect("write");
            let first = load(&sandbox, None);
            assert_eq!(first.in_own_process(), step_process);
            sandbox.behind.wait();
            // Another module in its place, the first one's digest on record.
            std::fs::write(&file, module("other")).expect("write");
            let known = load(&sandbox, Some(&first.digest));
            assert!(known.from_cache, "from the compile cache");
            assert_eq!((known.digest.as_str(), known.entries()), (first.digest.as_str(), vec!["_start".to_owned()]));
            assert!(known.checked.is_some(), "a step process is told the file it maps");
            // Without the record the file is read: the other module.
            let read = load(&sandbox, None);
            assert_ne!(read.digest, first.digest);
            assert_eq!(read.entries(), vec!["other".to_owned()]);
            // A record whose compiled form is not cached: read, its own digest.
            let stale = load(&sandbox, Some(&"0".repeat(64)));
            assert_eq!(stale.digest, read.digest);
        }
    }

    #[test]
    fn refuses_modules_importing_anything_but_wasi() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module (import "env" "socket" (func)) (func (export "_start")))"#;
        let bytes = wat::parse_str(wat).expect("wat");
        let err = sandbox.load_bytes(&bytes, "net.wasm", false).err().expect("refused");
        assert_eq!(err.to_string(), "plugin `net.wasm` imports `env::socket`, which this step is not granted");
    }
}
