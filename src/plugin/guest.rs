//! Wasmtime underneath the plugins: one engine with epoch interruption, module checks at load,
//! and instances that run one batch per call inside their memory and time limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_protocol::PluginKind;
use wasmtime::{
    Caller, Engine, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap,
    TypedFunc, ValType,
};

use super::abi::{self, Input, OutputLimits, Transformed, ABI_VERSION};

/// Why a call into a plugin failed. The instance that failed is discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The time limit per batch ran out (epoch interruption).
    Timeout(u32),
    /// The instance asked for more memory than its limit (bytes).
    OutOfMemory(u64),
    /// The guest trapped (panic, unreachable, out-of-bounds access...).
    Trap(String),
    /// The guest broke the ABI (bad address, malformed output, refused allocation...).
    Abi(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(ms) => write!(f, "exceeded its time limit of {ms} ms per batch"),
            Failure::OutOfMemory(b) => write!(
                f,
                "exceeded its memory limit of {} bytes ({} MiB)",
                b,
                b >> 20
            ),
            Failure::Trap(t) => write!(f, "trapped: {t}"),
            Failure::Abi(e) => write!(f, "broke the plugin ABI: {e}"),
        }
    }
}

/// The shared engine and the thread that advances its epoch.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    /// Length of one epoch tick; time limits are counted in ticks.
    tick: Duration,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    pub(crate) fn new(tick: Duration) -> anyhow::Result<Self> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        cfg.max_wasm_stack(512 << 10);
        cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(
                "quiver",
                "log",
                |mut caller: Caller<'_, GuestState>, level: i32, addr: i32, len: i32| {
                    guest_log(&mut caller, level, addr as u32, len as u32);
                },
            )
            .map_err(anyhow::Error::from)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("quiver-wasm-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    e.increment_epoch();
                }
            })?;
        Ok(Self {
            engine,
            linker,
            tick,
            stop,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a module (binary or WAT text). CPU-heavy: call from a blocking context.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Module, String> {
        Module::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid WebAssembly module: {e:#}"))
    }

    /// Checks a module's imports and exports against the ABI and prepares its instantiation.
    pub(crate) fn prepare(
        &self,
        module: &Module,
    ) -> Result<(PluginKind, InstancePre<GuestState>), String> {
        let kind = check_shape(module)?;
        let pre = self
            .linker
            .instantiate_pre(module)
            .map_err(|e| format!("cannot link the module: {e:#}"))?;
        Ok((kind, pre))
    }

    fn ticks(&self, ms: u32) -> u64 {
        let t = self.tick.as_millis().max(1) as u64;
        (ms as u64).div_ceil(t).max(1)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn func_sig(ty: &ExternType) -> Option<(Vec<ValType>, Vec<ValType>)> {
    match ty {
        ExternType::Func(f) => Some((f.params().collect(), f.results().collect())),
        _ => None,
    }
}

fn is_i32s(v: &[ValType], n: usize) -> bool {
    v.len() == n && v.iter().all(|t| matches!(t, ValType::I32))
}

/// Checks the ABI shape (docs/PLUGINS.md, "Module shape").
fn check_shape(module: &Module) -> Result<PluginKind, String> {
    for imp in module.imports() {
        let ok = imp.module() == "quiver"
            && imp.name() == "log"
            && func_sig(&imp.ty())
                .map(|(p, r)| is_i32s(&p, 3) && r.is_empty())
                .unwrap_or(false);
        if !ok {
            return Err(format!(
                "the module imports `{}.{}`; a plugin may import only `quiver.log` \
                 (func (param i32 i32 i32)) — no WASI, filesystem, network or clock",
                imp.module(),
                imp.name()
            ));
        }
    }
    let export = |name: &str| module.exports().find(|e| e.name() == name).map(|e| e.ty());
    match export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() => {}
        Some(_) => return Err("the export `memory` must be a 32-bit linear memory".into()),
        None => return Err("the module does not export its `memory`".into()),
    }
    let want = |name: &str, params: usize, required: bool| -> Result<bool, String> {
        match export(name) {
            None if required => Err(format!(
                "the module does not export `{name}` (func (param{}) (result i32))",
                " i32".repeat(params)
            )),
            None => Ok(false),
            Some(ty) => match func_sig(&ty) {
                Some((p, r)) if is_i32s(&p, params) && is_i32s(&r, 1) => Ok(true),
                _ => Err(format!(
                    "the export `{name}` must be (func (param{}) (result i32))",
                    " i32".repeat(params)
                )),
            },
        }
    };
    want("quiver_abi_version", 0, true)?;
    want("quiver_buffer", 1, true)?;
    want("quiver_init", 1, false)?;
    let filter = want("quiver_filter", 1, false)?;
    let transform = want("quiver_transform", 1, false)?;
    match (filter, transform) {
        (true, false) => Ok(PluginKind::Filter),
        (false, true) => Ok(PluginKind::Transform),
        (true, true) => Err(
            "the module exports both `quiver_filter` and `quiver_transform`; a plugin is one or \
             the other"
                .into(),
        ),
        (false, false) => Err(
            "the module exports neither `quiver_filter` nor `quiver_transform` (func (param i32) \
             (result i32))"
                .into(),
        ),
    }
}

/// Per-instance host state: limits, and the log it writes to.
pub(crate) struct GuestState {
    limiter: Limiter,
    log: Arc<LogSink>,
}

struct Limiter {
    max_memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Where a plugin's log lines go: the broker's log, rate limited per plugin.
pub(crate) struct LogSink {
    name: Arc<str>,
    bucket: Mutex<Bucket>,
    /// The last line (shown in errors such as a refused configuration).
    last: Mutex<String>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

/// Burst of lines a plugin may log at once, and lines per second after that.
const LOG_BURST: f64 = 20.0;
const LOG_RATE: f64 = 10.0;
/// Longest log line kept (bytes).
const LOG_MAX_LINE: usize = 1024;

impl LogSink {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            bucket: Mutex::new(Bucket {
                tokens: LOG_BURST,
                at: Instant::now(),
                dropped: 0,
            }),
            last: Mutex::new(String::new()),
        }
    }

    pub(crate) fn last_line(&self) -> String {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn write(&self, level: i32, text: &str) {
        if let Ok(mut l) = self.last.lock() {
            l.clear();
            l.push_str(text);
        }
        let dropped = {
            let Ok(mut b) = self.bucket.lock() else {
                return;
            };
            let now = Instant::now();
            b.tokens =
                (b.tokens + now.duration_since(b.at).as_secs_f64() * LOG_RATE).min(LOG_BURST);
            b.at = now;
            if b.tokens < 1.0 {
                b.dropped += 1;
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.dropped)
        };
        let plugin = &*self.name;
        if dropped > 0 {
            tracing::warn!(target: "quiver::plugin", plugin, dropped, "plugin log lines dropped by the rate limit");
        }
        match level {
            1 => tracing::error!(target: "quiver::plugin", plugin, "{text}"),
            2 => tracing::warn!(target: "quiver::plugin", plugin, "{text}"),
            4 => tracing::debug!(target: "quiver::plugin", plugin, "{text}"),
            _ => tracing::info!(target: "quiver::plugin", plugin, "{text}"),
        }
    }
}

fn guest_log(caller: &mut Caller<'_, GuestState>, level: i32, addr: u32, len: u32) {
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return;
    };
    let data = mem.data(&caller);
    let start = addr as usize;
    let n = (len as usize).min(LOG_MAX_LINE);
    let text = match start.checked_add(n).and_then(|end| data.get(start..end)) {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => format!("(log call with an address outside memory: {addr}+{len})"),
    };
    let sink = caller.data().log.clone();
    sink.write(level, &text);
}

/// One live instance of a plugin.
pub(crate) struct Guest {
    store: Store<GuestState>,
    memory: Memory,
    buffer: TypedFunc<i32, i32>,
    entry: TypedFunc<i32, i32>,
    kind: PluginKind,
    time_limit_ms: u32,
    memory_limit: u64,
}

/// What a plugin made of a batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A filter's keep/drop per input.
    Verdicts(Vec<bool>),
    /// A transform's entries.
    Transformed(Vec<Transformed>),
}

impl Guest {
    /// Instantiates, checks the ABI version, and runs `quiver_init` with `config`.
    pub(crate) fn new(
        rt: &Runtime,
        pre: &InstancePre<GuestState>,
        kind: PluginKind,
        log: Arc<LogSink>,
        memory_limit: u64,
        time_limit_ms: u32,
        config: &[(String, String)],
    ) -> Result<Self, Failure> {
        let mut store = Store::new(
            rt.engine(),
            GuestState {
                limiter: Limiter {
                    max_memory: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                    hit: false,
                },
                log,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(rt.ticks(time_limit_ms));
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, time_limit_ms, memory_limit))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Failure::Abi("no exported memory".into()))?;
        let typed = |store: &mut Store<GuestState>, name: &str| {
            instance
                .get_typed_func::<i32, i32>(&mut *store, name)
                .map_err(|e| Failure::Abi(format!("export `{name}`: {e}")))
        };
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "quiver_abi_version")
            .map_err(|e| Failure::Abi(format!("export `quiver_abi_version`: {e}")))?;
        let buffer = typed(&mut store, "quiver_buffer")?;
        let entry = typed(
            &mut store,
            match kind {
                PluginKind::Filter => "quiver_filter",
                PluginKind::Transform => "quiver_transform",
            },
        )?;
        let init = instance
            .get_typed_func::<i32, i32>(&mut store, "quiver_init")
            .ok();
        let mut guest = Guest {
            store,
            memory,
            buffer,
            entry,
            kind,
            time_limit_ms,
            memory_limit,
        };
        guest.store.set_epoch_deadline(rt.ticks(time_limit_ms));
        let v = version
            .call(&mut guest.store, ())
            .map_err(|e| classify(&guest.store, e, time_limit_ms, memory_limit))?;
        if v != ABI_VERSION {
            return Err(Failure::Abi(format!(
                "quiver_abi_version returned {v}; this broker speaks ABI version {ABI_VERSION}"
            )));
        }
        if init.is_none() && !config.is_empty() {
            return Err(Failure::Abi(
                "the plugin takes no configuration (it exports no quiver_init)".into(),
            ));
        }
        if let Some(init) = init {
            let cfg = abi::encode_pairs(config);
            guest.store.set_epoch_deadline(rt.ticks(time_limit_ms));
            let addr = guest.input(cfg.len())?;
            guest.memory.data_mut(&mut guest.store)[addr..addr + cfg.len()].copy_from_slice(&cfg);
            let ok = init
                .call(&mut guest.store, cfg.len() as i32)
                .map_err(|e| classify(&guest.store, e, time_limit_ms, memory_limit))?;
            if ok == 0 {
                let why = guest.store.data().log.last_line();
                return Err(Failure::Abi(if why.is_empty() {
                    "quiver_init refused the configuration".into()
                } else {
                    format!("quiver_init refused the configuration: {why}")
                }));
            }
        }
        Ok(guest)
    }

    pub(crate) fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Asks the guest for an input region of `len` bytes; returns its start. The caller has
    /// set the deadline (one per batch, shared by this call and the entry point).
    fn input(&mut self, len: usize) -> Result<usize, Failure> {
        let len32 = i32::try_from(len)
            .map_err(|_| Failure::Abi(format!("batch of {len} bytes is too large")))?;
        let addr = self
            .buffer
            .call(&mut self.store, len32)
            .map_err(|e| classify(&self.store, e, self.time_limit_ms, self.memory_limit))?
            as u32;
        if addr == 0 {
            if self.store.data().limiter.hit {
                return Err(Failure::OutOfMemory(self.memory_limit));
            }
            return Err(Failure::Abi(format!(
                "quiver_buffer could not provide {len} bytes"
            )));
        }
        let size = self.memory.data_size(&self.store);
        let end = (addr as usize).checked_add(len).filter(|&e| e <= size);
        if end.is_none() {
            return Err(Failure::Abi(format!(
                "quiver_buffer returned address {addr} for {len} bytes, outside the memory \
                 ({size} bytes)"
            )));
        }
        Ok(addr as usize)
    }

    /// Runs one batch: writes it into the guest, calls the entry point, reads the result.
    pub(crate) fn run(
        &mut self,
        rt: &Runtime,
        topic: &str,
        queue_id: u32,
        ingress: bool,
        inputs: &[Input<'_>],
        limits: OutputLimits,
    ) -> Result<Outcome, Failure> {
        let len = abi::batch_len(topic, inputs);
        // One time limit for the whole batch: the buffer request and the entry point.
        self.store.data_mut().limiter.hit = false;
        self.store.set_epoch_deadline(rt.ticks(self.time_limit_ms));
        let addr = self.input(len)?;
        {
            let mem = self.memory.data_mut(&mut self.store);
            abi::write_batch(
                &mut mem[addr..addr + len],
                addr as u32,
                topic,
                queue_id,
                ingress,
                inputs,
            )
            .map_err(Failure::Abi)?;
        }
        let out = self
            .entry
            .call(&mut self.store, len as i32)
            .map_err(|e| classify(&self.store, e, self.time_limit_ms, self.memory_limit))?
            as u32;
        if out == 0 {
            let why = self.store.data().log.last_line();
            return Err(Failure::Abi(if why.is_empty() {
                "the plugin returned 0 (failure)".into()
            } else {
                format!("the plugin returned 0 (failure); its last log line: {why}")
            }));
        }
        let mem = self.memory.data(&self.store);
        match self.kind {
            PluginKind::Filter => abi::read_verdicts(mem, out, inputs.len())
                .map(Outcome::Verdicts)
                .map_err(Failure::Abi),
            PluginKind::Transform => abi::read_transform(mem, out, inputs.len(), limits)
                .map(Outcome::Transformed)
                .map_err(Failure::Abi),
        }
    }
}

fn classify(
    store: &Store<GuestState>,
    e: wasmtime::Error,
    time_limit_ms: u32,
    memory_limit: u64,
) -> Failure {
    if store.data().limiter.hit {
        return Failure::OutOfMemory(memory_limit);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout(time_limit_ms),
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(format!("{e:#}")),
    }
}
