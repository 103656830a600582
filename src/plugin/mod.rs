//! WebAssembly plugins (docs/PLUGINS.md): users' filter and transform modules, loaded into the
//! running broker, kept in the data directory with their compiled form, and run on a batch of
//! messages at a time — after a subscription's tag/SQL filter at pull time, or on a topic's
//! ingress before a send is stored.
//!
//! Everything here is synchronous and CPU-bound: the broker calls it from blocking threads.

mod abi;
mod guest;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::names::{check_name, check_property_name};
use quiver_protocol::record::{encode_into, RecordLimits, RecordPlacement};
use quiver_protocol::{
    NewMessage, PluginFailurePolicy, PluginInfo, PluginKind, PluginRef, RecordView, WireMessage,
};
use serde::{Deserialize, Serialize};

use crate::store::durable::write_file;
use wasmtime::{InstancePre, Module};

use self::abi::{Action, Input, OutputLimits};

/// A loaded plugin as JSON, the one shape the console's API (docs/CONSOLE.md) and
/// `quiver admin plugin list|describe --json` both print.
#[derive(Debug, Serialize)]
pub struct PluginView<'a> {
    name: &'a str,
    kind: &'static str,
    version: u32,
    sha256: &'a str,
    size: u64,
    config: BTreeMap<&'a str, &'a str>,
    memory_limit_bytes: u64,
    time_limit_ms: u32,
    healthy: bool,
    consecutive_failures: u32,
    last_error: &'a str,
    batches: u64,
    messages_in: u64,
    messages_out: u64,
    failures: u64,
    loaded_at_ms: i64,
    topics: &'a [String],
}

impl<'a> From<&'a PluginInfo> for PluginView<'a> {
    fn from(p: &'a PluginInfo) -> Self {
        Self {
            name: &p.name,
            kind: p.kind.name(),
            version: p.version,
            sha256: &p.sha256,
            size: p.size,
            config: p
                .config
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            memory_limit_bytes: p.memory_limit_bytes,
            time_limit_ms: p.time_limit_ms,
            healthy: p.healthy,
            consecutive_failures: p.consecutive_failures,
            last_error: &p.last_error,
            batches: p.batches,
            messages_in: p.messages_in,
            messages_out: p.messages_out,
            failures: p.failures,
            loaded_at_ms: p.loaded_at_ms,
            topics: &p.topics,
        }
    }
}
use self::guest::{Failure, Guest, GuestState, LogSink, Outcome, Runtime};

/// `[plugins]`: limits and failure handling of WebAssembly plugins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Memory limit per plugin instance when the load does not give one (bytes).
    #[serde(with = "crate::units::size")]
    pub default_memory_limit_bytes: u64,
    /// Largest memory limit a load may ask for (bytes).
    #[serde(with = "crate::units::size")]
    pub max_memory_limit_bytes: u64,
    /// Time limit per batch when the load does not give one (ms).
    #[serde(with = "crate::units::ms")]
    pub default_time_limit_ms: u32,
    /// Largest time limit a load may ask for (ms).
    #[serde(with = "crate::units::ms")]
    pub max_time_limit_ms: u32,
    /// Consecutive failed batches after which a plugin is marked unhealthy until reloaded.
    pub max_consecutive_failures: u32,
    /// Idle instances kept per plugin for reuse (more are created under concurrency).
    pub max_idle_instances: usize,
    /// Most plugins loaded at once.
    pub max_plugins: usize,
    /// Most messages given to a plugin in one call.
    pub max_batch_messages: usize,
    /// About this many bytes given to a plugin in one call (a single larger message still goes).
    #[serde(with = "crate::units::size")]
    pub max_batch_bytes: usize,
    /// Granularity of time limits (ms): the engine's epoch advances this often.
    #[serde(with = "crate::units::ms")]
    pub epoch_tick_ms: u64,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            default_memory_limit_bytes: 16 << 20,
            max_memory_limit_bytes: 1 << 30,
            default_time_limit_ms: 100,
            max_time_limit_ms: 10_000,
            max_consecutive_failures: 5,
            max_idle_instances: 4,
            max_plugins: 64,
            max_batch_messages: 256,
            max_batch_bytes: 1 << 20,
            epoch_tick_ms: 5,
        }
    }
}

impl PluginConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_memory_limit_bytes > self.max_memory_limit_bytes {
            return Err("plugins.default_memory_limit_bytes exceeds max_memory_limit_bytes".into());
        }
        if self.max_memory_limit_bytes > 4 << 30 {
            return Err("plugins.max_memory_limit_bytes is at most 4 GiB (wasm32)".into());
        }
        if self.default_time_limit_ms == 0 || self.default_time_limit_ms > self.max_time_limit_ms {
            return Err("plugins.default_time_limit_ms must be 1..=max_time_limit_ms".into());
        }
        if self.max_consecutive_failures == 0 {
            return Err("plugins.max_consecutive_failures must be at least 1".into());
        }
        if self.max_batch_messages == 0 || self.epoch_tick_ms == 0 {
            return Err("plugins.max_batch_messages and epoch_tick_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a plugin operation or call failed; the broker maps each to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// No plugin under that name.
    #[error("no plugin named {0:?} is loaded (see `quiver admin plugin list`)")]
    NotFound(String),
    /// A topic's ingress chain names a plugin that is not loaded.
    #[error("plugin {name:?} is attached to the ingress of topic {topic:?} but is not loaded; sends to the topic are refused until it is loaded again or detached")]
    MissingFromChain {
        /// Plugin name.
        name: String,
        /// Topic.
        topic: String,
    },
    /// The name is taken.
    #[error("a plugin named {0:?} is already loaded; use `quiver admin plugin reload`")]
    Exists(String),
    /// The module or its configuration is not acceptable.
    #[error("invalid plugin {name:?}: {reason}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A call failed (trap, timeout, memory, ABI violation).
    #[error("plugin {name:?} (version {version}) failed on topic {topic:?}: {reason}")]
    Failed {
        /// Plugin name.
        name: String,
        /// Its version.
        version: u32,
        /// Topic of the batch.
        topic: String,
        /// What happened.
        reason: String,
    },
    /// The plugin is disabled after too many failures.
    #[error("plugin {name:?} is unhealthy after {failures} consecutive failures (last: {last}); reload it to enable it again")]
    Unhealthy {
        /// Plugin name.
        name: String,
        /// Consecutive failures.
        failures: u32,
        /// The last failure.
        last: String,
    },
    /// An ingress plugin rejected a message.
    #[error("plugin {name:?} rejected message {index} (id {id:032x}) of the send: {reason}")]
    Rejected {
        /// Plugin name.
        name: String,
        /// Index of the message in the send.
        index: usize,
        /// Its id.
        id: u128,
        /// The plugin's reason.
        reason: String,
    },
    /// Still attached to topics.
    #[error("plugin {name:?} is attached to the ingress of {topics:?}; detach it first or unload with --force")]
    InUse {
        /// Plugin name.
        name: String,
        /// Topics.
        topics: Vec<String>,
    },
    /// A request outside the limits.
    #[error("{0}")]
    BadRequest(String),
    /// Disk or engine trouble.
    #[error("plugin registry: {0}")]
    Internal(String),
}

/// One loaded version of a plugin.
pub struct Plugin {
    name: Arc<str>,
    kind: PluginKind,
    version: u32,
    sha256: String,
    size: u64,
    config: Vec<(String, String)>,
    memory_limit: u64,
    time_limit_ms: u32,
    loaded_at_ms: i64,
    pre: InstancePre<GuestState>,
    log: Arc<LogSink>,
    idle: Mutex<Vec<Guest>>,
    consecutive: AtomicU32,
    unhealthy: AtomicBool,
    last_error: Mutex<String>,
    batches: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    failures: AtomicU64,
    /// Time spent running batches (instance creation included), ns.
    run_nanos: AtomicU64,
}

impl Plugin {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version (1 at load, +1 per reload).
    pub fn version(&self) -> u32 {
        self.version
    }

    fn run(
        &self,
        host: &PluginHost,
        topic: &str,
        queue_id: u32,
        ingress: bool,
        inputs: &[Input<'_>],
    ) -> Result<Outcome, PluginError> {
        if self.unhealthy.load(Ordering::Acquire) {
            return Err(PluginError::Unhealthy {
                name: self.name.to_string(),
                failures: self.consecutive.load(Ordering::Relaxed),
                last: self
                    .last_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default(),
            });
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.messages_in
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let counted = RunTime(&self.run_nanos, started);
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let guest = match idle {
            Some(g) => Ok(g),
            None => Guest::new(
                &host.rt,
                &self.pre,
                self.kind,
                self.log.clone(),
                self.memory_limit,
                self.time_limit_ms,
                &self.config,
            ),
        };
        let result = guest.and_then(|mut g| {
            let out = g.run(
                &host.rt,
                topic,
                queue_id,
                ingress,
                inputs,
                host.output_limits,
            )?;
            Ok((g, out))
        });
        drop(counted);
        match result {
            Ok((g, out)) => {
                self.consecutive.store(0, Ordering::Relaxed);
                let kept = match &out {
                    Outcome::Verdicts(v) => v.iter().filter(|k| **k).count(),
                    Outcome::Transformed(t) => t
                        .iter()
                        .filter(|e| matches!(e.action, Action::Keep { .. }))
                        .count(),
                };
                self.messages_out.fetch_add(kept as u64, Ordering::Relaxed);
                debug_assert_eq!(g.kind(), self.kind);
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < host.cfg.max_idle_instances {
                        idle.push(g);
                    }
                }
                Ok(out)
            }
            Err(f) => Err(self.failed(host, topic, f)),
        }
    }

    /// Counts a failure (the instance is already dropped) and maybe marks the plugin unhealthy.
    fn failed(&self, host: &PluginHost, topic: &str, f: Failure) -> PluginError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = f.to_string();
        if let Ok(mut e) = self.last_error.lock() {
            *e = reason.clone();
        }
        if n >= host.cfg.max_consecutive_failures && !self.unhealthy.swap(true, Ordering::AcqRel) {
            tracing::error!(plugin = &*self.name, version = self.version, failures = n, error = %reason,
                "plugin marked unhealthy; reload it to enable it again");
        } else {
            tracing::warn!(plugin = &*self.name, version = self.version, topic, error = %reason,
                "plugin call failed; instance discarded");
        }
        PluginError::Failed {
            name: self.name.to_string(),
            version: self.version,
            topic: topic.to_string(),
            reason,
        }
    }

    fn info(&self, topics: Vec<String>) -> PluginInfo {
        PluginInfo {
            name: self.name.to_string(),
            kind: self.kind,
            version: self.version,
            sha256: self.sha256.clone(),
            size: self.size,
            config: self.config.clone(),
            memory_limit_bytes: self.memory_limit,
            time_limit_ms: self.time_limit_ms,
            healthy: !self.unhealthy.load(Ordering::Acquire),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
            batches: self.batches.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            loaded_at_ms: self.loaded_at_ms,
            topics,
        }
    }
}

/// A load or reload request.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec {
    /// Module bytes (binary or WAT); empty on reload = keep the current module.
    pub wasm: Bytes,
    /// Configuration; `None` on reload = keep.
    pub config: Option<Vec<(String, String)>>,
    /// Memory limit per instance; 0 = default (load) or keep (reload).
    pub memory_limit_bytes: u64,
    /// Time limit per batch; 0 = default (load) or keep (reload).
    pub time_limit_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    name: String,
    sha256: String,
    config: Vec<(String, String)>,
    memory_limit_bytes: u64,
    time_limit_ms: u32,
    version: u32,
    loaded_at_ms: i64,
}

/// A loaded plugin's registry entry.
fn entry_of(p: &Plugin) -> Entry {
    Entry {
        name: p.name.to_string(),
        sha256: p.sha256.clone(),
        config: p.config.clone(),
        memory_limit_bytes: p.memory_limit,
        time_limit_ms: p.time_limit_ms,
        version: p.version,
        loaded_at_ms: p.loaded_at_ms,
    }
}

impl Entry {
    /// The same plugin as `o` (module, configuration, limits, version).
    fn same_as(&self, o: &Entry) -> bool {
        self.sha256 == o.sha256
            && self.config == o.config
            && self.memory_limit_bytes == o.memory_limit_bytes
            && self.time_limit_ms == o.time_limit_ms
            && self.version == o.version
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    plugins: Vec<Entry>,
    /// Topic → plugin names, run in order on every send.
    ingress: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct State {
    plugins: HashMap<String, Arc<Plugin>>,
    ingress: BTreeMap<String, Vec<String>>,
    /// Registered plugins that could not be loaded at startup, with why: kept in the registry
    /// (and their module on disk) until an operator reloads or unloads them.
    broken: BTreeMap<String, (Entry, String)>,
}

/// A resolved chain of plugins for one subscription.
pub type Chain = Vec<(Arc<Plugin>, PluginFailurePolicy)>;

/// Loaded plugins, their persistence, and running them on batches.
pub struct PluginHost {
    cfg: PluginConfig,
    dir: PathBuf,
    rt: Runtime,
    output_limits: OutputLimits,
    state: RwLock<State>,
    /// Serializes load/reload/unload/attach/detach so the registry file follows one order.
    admin: Mutex<()>,
}

/// Most plugins one topic's ingress chain may hold.
pub const MAX_INGRESS_CHAIN: usize = 8;

fn sha256_hex(bytes: &[u8]) -> String {
    quiver_protocol::text::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

impl PluginHost {
    /// Opens the registry in `dir` (`<data_dir>/plugins`) and loads every plugin it lists. A
    /// plugin that cannot be loaded any more is logged and left out; topics whose ingress chain
    /// names it refuse sends until it is loaded again. Blocking (compiles modules).
    pub fn open(
        cfg: PluginConfig,
        dir: PathBuf,
        record_limits: RecordLimits,
    ) -> anyhow::Result<Self> {
        let modules = dir.join("modules");
        std::fs::create_dir_all(&modules)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", modules.display()))?;
        let rt = Runtime::new(Duration::from_millis(cfg.epoch_tick_ms))?;
        let host = Self {
            cfg,
            rt,
            output_limits: OutputLimits {
                max_body: record_limits.max_body,
                max_properties: record_limits.max_properties,
            },
            state: RwLock::new(State::default()),
            admin: Mutex::new(()),
            dir,
        };
        let path = host.registry_path();
        let file: RegistryFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{} is unreadable ({e}); fix or remove it (plugins would be lost)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let mut state = State {
            plugins: HashMap::new(),
            ingress: file.ingress,
            broken: BTreeMap::new(),
        };
        for e in file.plugins {
            let wasm = match std::fs::read(host.module_path(&e.sha256)) {
                Ok(w) => w,
                Err(err) => {
                    let why = format!("its module file is unreadable: {err}");
                    tracing::error!(plugin = e.name, error = %why, "plugin not loaded; reload or unload it");
                    state.broken.insert(e.name.clone(), (e, why));
                    continue;
                }
            };
            match host.build(&e.name, &wasm, e.sha256.clone(), &e) {
                Ok(p) => {
                    tracing::info!(
                        plugin = e.name,
                        version = e.version,
                        kind = p.kind.name(),
                        "plugin loaded"
                    );
                    state.plugins.insert(e.name.clone(), Arc::new(p));
                }
                Err(err) => {
                    tracing::error!(plugin = e.name, error = %err, "plugin not loaded; reload or unload it");
                    state.broken.insert(e.name.clone(), (e, err));
                }
            }
        }
        *host
            .state
            .write()
            .map_err(|_| anyhow::anyhow!("plugin state poisoned"))? = state;
        Ok(host)
    }

    fn registry_path(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    fn module_path(&self, sha: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{sha}.wasm"))
    }

    fn compiled_path(&self, sha: &str) -> PathBuf {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        self.rt
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut h);
        self.dir
            .join("modules")
            .join(format!("{sha}-{:016x}.cwasm", h.finish()))
    }

    /// The compiled module: from the cache when it is there and fits this engine, else compiled
    /// and cached.
    fn module(&self, wasm: &[u8], sha: &str) -> Result<Module, String> {
        let cached = self.compiled_path(sha);
        if cached.exists() {
            // SAFETY: the file is written only by this broker (below), into its own data
            // directory, from a module it compiled; wasmtime checks the engine compatibility
            // header and refuses files from another version or configuration.
            match unsafe { Module::deserialize_file(self.rt.engine(), &cached) } {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "compiled plugin cache unusable; recompiling")
                }
            }
        }
        let m = self.rt.compile(wasm)?;
        match m.serialize() {
            Ok(bytes) => {
                if let Err(e) = write_file(&cached, &bytes) {
                    tracing::warn!(file = %cached.display(), error = %e, "cannot cache the compiled plugin");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled plugin"),
        }
        Ok(m)
    }

    /// Compiles, checks and initializes one instance: a plugin ready to run.
    fn build(&self, name: &str, wasm: &[u8], sha256: String, e: &Entry) -> Result<Plugin, String> {
        let module = self.module(wasm, &sha256)?;
        let (kind, pre) = self.rt.prepare(&module)?;
        let log = Arc::new(LogSink::new(Arc::from(name)));
        let first = Guest::new(
            &self.rt,
            &pre,
            kind,
            log.clone(),
            e.memory_limit_bytes,
            e.time_limit_ms,
            &e.config,
        )
        .map_err(|f| match f {
            Failure::Abi(s) => s,
            f => format!("failed while starting: {f}"),
        })?;
        Ok(Plugin {
            name: Arc::from(name),
            kind,
            version: e.version,
            sha256,
            size: wasm.len() as u64,
            config: e.config.clone(),
            memory_limit: e.memory_limit_bytes,
            time_limit_ms: e.time_limit_ms,
            loaded_at_ms: e.loaded_at_ms,
            pre,
            log,
            idle: Mutex::new(vec![first]),
            consecutive: AtomicU32::new(0),
            unhealthy: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            batches: AtomicU64::new(0),
            run_nanos: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self) -> Result<(), PluginError> {
        let file = {
            let st = self.read();
            let mut plugins: Vec<Entry> = st.plugins.values().map(|p| entry_of(p)).collect();
            plugins.extend(st.broken.values().map(|(e, _)| e.clone()));
            plugins.sort_by(|a, b| a.name.cmp(&b.name));
            RegistryFile {
                plugins,
                ingress: st.ingress.clone(),
            }
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| PluginError::Internal(e.to_string()))?;
        write_file(&self.registry_path(), &bytes)
            .map_err(|e| PluginError::Internal(format!("writing the registry: {e}")))?;
        // Only the modules of registered plugins, and their form compiled for this engine, stay.
        let keep: Vec<PathBuf> = file
            .plugins
            .iter()
            .flat_map(|e| [self.module_path(&e.sha256), self.compiled_path(&e.sha256)])
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.dir.join("modules")) {
            for f in dir.flatten() {
                if !keep.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    fn limits(&self, memory: u64, time_ms: u32) -> Result<(u64, u32), PluginError> {
        if memory > self.cfg.max_memory_limit_bytes {
            return Err(PluginError::BadRequest(format!(
                "memory limit {memory} bytes exceeds plugins.max_memory_limit_bytes ({})",
                self.cfg.max_memory_limit_bytes
            )));
        }
        if time_ms > self.cfg.max_time_limit_ms {
            return Err(PluginError::BadRequest(format!(
                "time limit {time_ms} ms exceeds plugins.max_time_limit_ms ({})",
                self.cfg.max_time_limit_ms
            )));
        }
        Ok((memory, time_ms))
    }

    fn store_module(&self, sha: &str, wasm: &[u8]) -> Result<(), PluginError> {
        let path = self.module_path(sha);
        if !path.exists() {
            write_file(&path, wasm)
                .map_err(|e| PluginError::Internal(format!("writing {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Loads a new plugin. Blocking (compiles).
    pub fn load(&self, name: &str, spec: LoadSpec) -> Result<PluginInfo, PluginError> {
        check_name("plugin", name).map_err(PluginError::BadRequest)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if self.read().plugins.contains_key(name) || self.read().broken.contains_key(name) {
            return Err(PluginError::Exists(name.into()));
        }
        if self.read().plugins.len() >= self.cfg.max_plugins {
            return Err(PluginError::BadRequest(format!(
                "the broker holds {} plugins (plugins.max_plugins); unload one first",
                self.cfg.max_plugins
            )));
        }
        if spec.wasm.is_empty() {
            return Err(PluginError::BadRequest("the module is empty".into()));
        }
        let (memory, time) = self.limits(
            nonzero(spec.memory_limit_bytes, self.cfg.default_memory_limit_bytes),
            nonzero(spec.time_limit_ms, self.cfg.default_time_limit_ms),
        )?;
        let entry = Entry {
            name: name.into(),
            sha256: sha256_hex(&spec.wasm),
            config: spec.config.unwrap_or_default(),
            memory_limit_bytes: memory,
            time_limit_ms: time,
            version: 1,
            loaded_at_ms: quiver_protocol::text::epoch_ms(),
        };
        let plugin = self
            .build(name, &spec.wasm, entry.sha256.clone(), &entry)
            .map_err(|reason| PluginError::Invalid {
                name: name.into(),
                reason,
            })?;
        self.store_module(&entry.sha256, &spec.wasm)?;
        let plugin = Arc::new(plugin);
        self.write().plugins.insert(name.into(), plugin.clone());
        self.persist()?;
        tracing::info!(
            plugin = name,
            kind = plugin.kind.name(),
            sha256 = plugin.sha256,
            "plugin loaded"
        );
        Ok(plugin.info(self.topics_of(name)))
    }

    /// Replaces a plugin atomically: batches already running finish on the old version; later
    /// ones use the new one. Blocking (compiles).
    pub fn reload(&self, name: &str, spec: LoadSpec) -> Result<PluginInfo, PluginError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        // The current registration: a loaded plugin, or one that failed to load at startup.
        let old = match self.get(name) {
            Ok(p) => Entry {
                name: name.into(),
                sha256: p.sha256.clone(),
                config: p.config.clone(),
                memory_limit_bytes: p.memory_limit,
                time_limit_ms: p.time_limit_ms,
                version: p.version,
                loaded_at_ms: p.loaded_at_ms,
            },
            Err(e) => match self.read().broken.get(name) {
                Some((entry, _)) => entry.clone(),
                None => return Err(e),
            },
        };
        let wasm = if spec.wasm.is_empty() {
            std::fs::read(self.module_path(&old.sha256))
                .map(Bytes::from)
                .map_err(|e| PluginError::Internal(format!("reading the current module: {e}")))?
        } else {
            spec.wasm
        };
        let (memory, time) = self.limits(
            nonzero(spec.memory_limit_bytes, old.memory_limit_bytes),
            nonzero(spec.time_limit_ms, old.time_limit_ms),
        )?;
        let entry = Entry {
            name: name.into(),
            sha256: sha256_hex(&wasm),
            config: spec.config.unwrap_or(old.config),
            memory_limit_bytes: memory,
            time_limit_ms: time,
            version: old.version + 1,
            loaded_at_ms: quiver_protocol::text::epoch_ms(),
        };
        let plugin = self
            .build(name, &wasm, entry.sha256.clone(), &entry)
            .map_err(|reason| PluginError::Invalid {
                name: name.into(),
                reason,
            })?;
        self.store_module(&entry.sha256, &wasm)?;
        let plugin = Arc::new(plugin);
        {
            let mut st = self.write();
            st.plugins.insert(name.into(), plugin.clone());
            st.broken.remove(name);
        }
        self.persist()?;
        tracing::info!(
            plugin = name,
            version = plugin.version,
            sha256 = plugin.sha256,
            "plugin reloaded"
        );
        Ok(plugin.info(self.topics_of(name)))
    }

    /// Unloads a plugin; `force` first detaches it from topics.
    pub fn unload(&self, name: &str, force: bool) -> Result<(), PluginError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(name).is_err() && !self.read().broken.contains_key(name) {
            return Err(PluginError::NotFound(name.into()));
        }
        let topics = self.topics_of(name);
        if !topics.is_empty() && !force {
            return Err(PluginError::InUse {
                name: name.into(),
                topics,
            });
        }
        {
            let mut st = self.write();
            st.plugins.remove(name);
            st.broken.remove(name);
            for chain in st.ingress.values_mut() {
                chain.retain(|p| p != name);
            }
            st.ingress.retain(|_, c| !c.is_empty());
        }
        self.persist()?;
        tracing::info!(plugin = name, "plugin unloaded");
        Ok(())
    }

    /// Every loaded plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let st = self.read();
        let mut out: Vec<PluginInfo> = st
            .plugins
            .values()
            .map(|p| p.info(topics_in(&st.ingress, &p.name)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One plugin.
    pub fn describe(&self, name: &str) -> Result<PluginInfo, PluginError> {
        if let Some((_, why)) = self.read().broken.get(name) {
            return Err(PluginError::Invalid {
                name: name.into(),
                reason: format!(
                    "registered but not loaded at startup ({why}); reload it (with a new module \
                     if needed) or unload it"
                ),
            });
        }
        let p = self.get(name)?;
        Ok(p.info(self.topics_of(name)))
    }

    /// Appends a plugin to a topic's ingress chain.
    pub fn attach(&self, name: &str, topic: &str) -> Result<(), PluginError> {
        check_name("topic", topic).map_err(PluginError::BadRequest)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.get(name)?;
        {
            let mut st = self.write();
            let chain = st.ingress.entry(topic.to_string()).or_default();
            if chain.iter().any(|p| p == name) {
                return Err(PluginError::BadRequest(format!(
                    "plugin {name:?} is already attached to topic {topic:?}"
                )));
            }
            if chain.len() >= MAX_INGRESS_CHAIN {
                return Err(PluginError::BadRequest(format!(
                    "topic {topic:?} already runs {MAX_INGRESS_CHAIN} ingress plugins"
                )));
            }
            chain.push(name.to_string());
        }
        self.persist()?;
        tracing::info!(plugin = name, topic, "plugin attached to topic ingress");
        Ok(())
    }

    /// Removes a plugin from a topic's ingress chain.
    pub fn detach(&self, name: &str, topic: &str) -> Result<(), PluginError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.write();
            let chain = st.ingress.get_mut(topic);
            let Some(chain) = chain.filter(|c| c.iter().any(|p| p == name)) else {
                return Err(PluginError::BadRequest(format!(
                    "plugin {name:?} is not attached to topic {topic:?}"
                )));
            };
            chain.retain(|p| p != name);
            if chain.is_empty() {
                st.ingress.remove(topic);
            }
        }
        self.persist()?;
        tracing::info!(plugin = name, topic, "plugin detached from topic ingress");
        Ok(())
    }

    /// The registry as a master gives it to its slaves (docs/CLUSTER.md): every plugin's
    /// name, module hash, configuration, limits and version, and the topics' ingress chains.
    pub fn replica_view(&self) -> serde_json::Value {
        let st = self.read();
        let mut plugins: Vec<Entry> = st.plugins.values().map(|p| entry_of(p)).collect();
        plugins.extend(st.broken.values().map(|(e, _)| e.clone()));
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_value(RegistryFile {
            plugins,
            ingress: st.ingress.clone(),
        })
        .unwrap_or_default()
    }

    /// The module whose SHA-256 (lowercase hex) is `sha`, if this broker keeps it.
    pub fn module_bytes(&self, sha: &str) -> Option<Bytes> {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        std::fs::read(self.module_path(sha)).ok().map(Bytes::from)
    }

    /// A slave makes its plugins its master's ([`PluginHost::replica_view`]): plugins the
    /// master has are loaded or replaced with the master's module, configuration, limits and
    /// version; plugins it lacks are unloaded; the ingress chains become the master's.
    /// Modules come from `modules` (by hash) or this broker's own store; the hashes of those
    /// it has neither way are returned, to ask for next time (those plugins wait). Blocking
    /// (compiles). A module that does not match its hash, or does not compile here, is
    /// logged and its plugin left as it was.
    pub fn mirror(
        &self,
        view: serde_json::Value,
        modules: &HashMap<String, Bytes>,
    ) -> Result<Vec<String>, PluginError> {
        let want: RegistryFile = serde_json::from_value(view)
            .map_err(|e| PluginError::BadRequest(format!("the master's plugin registry: {e}")))?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing = Vec::new();
        let mut changed = false;
        for e in &want.plugins {
            if check_name("plugin", &e.name).is_err() {
                continue;
            }
            let same = match self.read().plugins.get(&e.name) {
                Some(p) => entry_of(p).same_as(e),
                None => false,
            };
            if same {
                continue;
            }
            let wasm = match modules.get(&e.sha256) {
                Some(w) => w.clone(),
                None => match self.module_bytes(&e.sha256) {
                    Some(w) => w,
                    None => {
                        missing.push(e.sha256.clone());
                        continue;
                    }
                },
            };
            if sha256_hex(&wasm) != e.sha256 {
                tracing::warn!(
                    plugin = e.name,
                    "the master's module does not match its hash; ignored"
                );
                continue;
            }
            match self.build(&e.name, &wasm, e.sha256.clone(), e) {
                Ok(p) => {
                    self.store_module(&e.sha256, &wasm)?;
                    let mut st = self.write();
                    st.plugins.insert(e.name.clone(), Arc::new(p));
                    st.broken.remove(&e.name);
                    changed = true;
                    tracing::info!(
                        plugin = e.name,
                        version = e.version,
                        "plugin mirrored from the master"
                    );
                }
                Err(reason) => {
                    tracing::error!(plugin = e.name, %reason, "the master's plugin does not load here");
                }
            }
        }
        {
            let mut st = self.write();
            let names: std::collections::HashSet<&str> =
                want.plugins.iter().map(|e| e.name.as_str()).collect();
            let before = st.plugins.len() + st.broken.len();
            st.plugins.retain(|n, _| names.contains(n.as_str()));
            st.broken.retain(|n, _| names.contains(n.as_str()));
            changed |= st.plugins.len() + st.broken.len() != before;
            let known: std::collections::HashSet<String> = st.plugins.keys().cloned().collect();
            let ingress: BTreeMap<String, Vec<String>> = want
                .ingress
                .iter()
                .map(|(t, c)| {
                    let c: Vec<String> = c.iter().filter(|n| known.contains(*n)).cloned().collect();
                    (t.clone(), c)
                })
                .filter(|(_, c)| !c.is_empty())
                .collect();
            if st.ingress != ingress {
                st.ingress = ingress;
                changed = true;
            }
        }
        if changed {
            self.persist()?;
        }
        Ok(missing)
    }

    /// Time each loaded plugin has spent running batches since it was loaded.
    pub fn run_times(&self) -> Vec<(String, Duration)> {
        self.read()
            .plugins
            .values()
            .map(|p| {
                (
                    p.name.to_string(),
                    Duration::from_nanos(p.run_nanos.load(Ordering::Relaxed)),
                )
            })
            .collect()
    }

    fn get(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        self.read()
            .plugins
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::NotFound(name.into()))
    }

    fn topics_of(&self, name: &str) -> Vec<String> {
        topics_in(&self.read().ingress, name)
    }

    /// The current versions of a subscription's plugins.
    pub fn resolve(&self, refs: &[PluginRef]) -> Result<Chain, PluginError> {
        let st = self.read();
        refs.iter()
            .map(|r| {
                st.plugins
                    .get(&r.name)
                    .map(|p| (p.clone(), r.on_error))
                    .ok_or_else(|| PluginError::NotFound(r.name.clone()))
            })
            .collect()
    }

    /// The current versions of a topic's ingress chain (empty when none is attached).
    pub fn ingress_chain(&self, topic: &str) -> Result<Vec<Arc<Plugin>>, PluginError> {
        let st = self.read();
        let Some(names) = st.ingress.get(topic) else {
            return Ok(Vec::new());
        };
        names
            .iter()
            .map(|n| {
                st.plugins
                    .get(n)
                    .cloned()
                    .ok_or_else(|| PluginError::MissingFromChain {
                        name: n.clone(),
                        topic: topic.to_string(),
                    })
            })
            .collect()
    }

    /// Splits `n` items into batches within the per-call limits.
    fn batches(&self, sizes: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes, mut i) = (0usize, 0usize, 0usize);
        for s in sizes {
            if i > start
                && (i - start >= self.cfg.max_batch_messages
                    || bytes + s > self.cfg.max_batch_bytes)
            {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += s;
            i += 1;
        }
        if i > start {
            out.push(start..i);
        }
        out
    }

    /// Runs a subscription's chain over stored records (in queue order) and returns what to
    /// deliver. A failing plugin follows its attachment's policy.
    pub fn apply_to_records(
        &self,
        chain: &Chain,
        topic: &str,
        queue_id: u32,
        mut records: Vec<Bytes>,
    ) -> Result<Vec<Bytes>, PluginError> {
        for (plugin, policy) in chain {
            if records.is_empty() {
                break;
            }
            let mut next = Vec::with_capacity(records.len());
            for range in self.batches(records.iter().map(|r| r.len() + abi::DESCRIPTOR)) {
                let part = &records[range];
                let inputs: Vec<Input<'_>> = part.iter().map(|r| Input::Record(r)).collect();
                let result = match plugin.run(self, topic, queue_id, false, &inputs) {
                    Ok(Outcome::Verdicts(v)) => Ok(part
                        .iter()
                        .zip(v)
                        .filter(|(_, keep)| *keep)
                        .map(|(r, _)| r.clone())
                        .collect::<Vec<_>>()),
                    Ok(Outcome::Transformed(entries)) => entries
                        .into_iter()
                        .filter_map(|e| match e.action {
                            Action::Keep {
                                tag,
                                keys,
                                properties,
                                body,
                            } => Some(
                                reencode(&part[e.index], &tag, &keys, &properties, &body).map_err(
                                    |reason| plugin.failed(self, topic, Failure::Abi(reason)),
                                ),
                            ),
                            Action::Reject(_) => None,
                        })
                        .collect(),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(kept) => next.extend(kept),
                    Err(e) => match policy {
                        PluginFailurePolicy::Fail => return Err(e),
                        PluginFailurePolicy::Skip => {}
                        PluginFailurePolicy::Deliver => next.extend(part.iter().cloned()),
                    },
                }
            }
            records = next;
        }
        Ok(records)
    }

    /// Runs a topic's ingress chain over a send. Every message must come out: a filter's drop
    /// or a transform's reject or drop refuses the whole send, as does any failure.
    pub fn apply_to_send(
        &self,
        chain: &[Arc<Plugin>],
        topic: &str,
        queue_id: u32,
        mut messages: Vec<WireMessage>,
    ) -> Result<Vec<WireMessage>, PluginError> {
        for plugin in chain {
            let mut next: Vec<WireMessage> = Vec::with_capacity(messages.len());
            let sizes = messages
                .iter()
                .map(|m| Input::Wire(m).data_len() + abi::DESCRIPTOR);
            for range in self.batches(sizes) {
                let offset = range.start;
                let part = &messages[range];
                let inputs: Vec<Input<'_>> = part.iter().map(Input::Wire).collect();
                let reject = |i: usize, reason: String| PluginError::Rejected {
                    name: plugin.name.to_string(),
                    index: offset + i,
                    id: part[i].id,
                    reason,
                };
                match plugin.run(self, topic, queue_id, true, &inputs)? {
                    Outcome::Verdicts(v) => {
                        if let Some(i) = v.iter().position(|k| !*k) {
                            return Err(reject(i, "the filter did not accept it".into()));
                        }
                        next.extend(part.iter().cloned());
                    }
                    Outcome::Transformed(entries) => {
                        let mut expect = 0usize;
                        for e in entries {
                            if e.index != expect {
                                return Err(reject(
                                    expect,
                                    "the transform dropped it (at ingress a plugin keeps or \
                                     rejects each message)"
                                        .into(),
                                ));
                            }
                            expect += 1;
                            match e.action {
                                Action::Reject(reason) => return Err(reject(e.index, reason)),
                                Action::Keep {
                                    tag,
                                    keys,
                                    properties,
                                    body,
                                } => {
                                    for (k, _) in &properties {
                                        check_property_name(k).map_err(|err| {
                                            plugin.failed(
                                                self,
                                                topic,
                                                Failure::Abi(format!(
                                                    "message {}: {err}",
                                                    offset + e.index
                                                )),
                                            )
                                        })?;
                                    }
                                    let orig = &part[e.index];
                                    next.push(WireMessage {
                                        id: orig.id,
                                        born_timestamp: orig.born_timestamp,
                                        flags: orig.flags,
                                        tag,
                                        keys,
                                        properties,
                                        body: Bytes::from(body),
                                    });
                                }
                            }
                        }
                        if expect < part.len() {
                            return Err(reject(
                                expect,
                                "the transform dropped it (at ingress a plugin keeps or rejects \
                                 each message)"
                                    .into(),
                            ));
                        }
                    }
                }
            }
            messages = next;
        }
        Ok(messages)
    }
}

fn nonzero<T: Default + PartialEq>(v: T, default: T) -> T {
    if v == T::default() {
        default
    } else {
        v
    }
}

fn topics_in(ingress: &BTreeMap<String, Vec<String>>, name: &str) -> Vec<String> {
    ingress
        .iter()
        .filter(|(_, chain)| chain.iter().any(|p| p == name))
        .map(|(t, _)| t.clone())
        .collect()
}

/// A stored record with new sections; everything else (id, queue, offsets, times) unchanged.
fn reencode(
    original: &[u8],
    tag: &str,
    keys: &[String],
    properties: &[(String, String)],
    body: &[u8],
) -> Result<Bytes, String> {
    let view = RecordView::parse_unchecked_crc(original)
        .map_err(|e| format!("stored record is malformed: {e}"))?;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let props: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let m = NewMessage {
        msg_id: view.msg_id(),
        flags: view.flags(),
        born_timestamp: view.born_timestamp(),
        born_host: view.born_host(),
        reconsume_times: view.reconsume_times(),
        tag,
        keys: &keys,
        properties: &props,
        body,
    };
    // The transform output was checked against the broker's limits already.
    let limits = RecordLimits {
        max_body: usize::MAX >> 1,
        max_properties: usize::MAX >> 1,
    };
    let len = m
        .encoded_len(view.topic(), &limits)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len];
    let at = RecordPlacement {
        queue_id: view.queue_id(),
        queue_offset: view.queue_offset(),
        phys_offset: view.phys_offset(),
        store_timestamp: view.store_timestamp(),
        extra_flags: 0,
    };
    encode_into(&mut buf, view.topic(), &m, &at);
    Ok(Bytes::from(buf))
}

/// Adds the time since its start to a plugin's run time when dropped (also on a failure).
struct RunTime<'a>(&'a AtomicU64, std::time::Instant);

impl Drop for RunTime<'_> {
    fn drop(&mut self) {
        self.0
            .fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
