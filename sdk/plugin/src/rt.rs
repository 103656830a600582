//! The runtime behind the exports: the guest-owned input buffer, the reused output buffers, and
//! the entry points the attribute macros call. Not part of the public API.

use std::cell::RefCell;
use std::fmt::Display;

use crate::batch::{self, Batch, TransformOutput};
use crate::config::Config;
use crate::log;
use crate::message::{Message, Outcome};

/// Everything the runtime keeps between calls (one per instance: wasm32-unknown-unknown is
/// single-threaded, so a thread-local is a plain static there).
struct Runtime {
    /// The region `quiver_buffer` hands out; grows, never shrinks.
    input: Vec<u8>,
    /// The filter verdicts of the last batch.
    verdicts: Vec<u8>,
    /// The transform output of the last batch.
    output: TransformOutput,
}

thread_local! {
    static RUNTIME: RefCell<Runtime> = const {
        RefCell::new(Runtime {
            input: Vec::new(),
            verdicts: Vec::new(),
            output: TransformOutput::new(),
        })
    };
}

/// The address of `bytes` in the guest's memory (meaningful on wasm32 only).
fn addr(bytes: &[u8]) -> u32 {
    bytes.as_ptr() as usize as u32
}

fn with_runtime(what: &str, f: impl FnOnce(&mut Runtime) -> i32) -> i32 {
    RUNTIME.with(|rt| match rt.try_borrow_mut() {
        Ok(mut rt) => f(&mut rt),
        Err(_) => {
            log::error(&format!(
                "{what} called while another plugin call is running"
            ));
            0
        }
    })
}

/// The `len` input bytes the host wrote at the last buffer address.
fn input<'a>(rt_input: &'a [u8], what: &str, len: i32) -> Option<&'a [u8]> {
    let slice = usize::try_from(len)
        .ok()
        .and_then(|len| rt_input.get(..len));
    if slice.is_none() {
        log::error(&format!(
            "{what}({len}): the length is not that of a buffer quiver_buffer returned ({} bytes)",
            rt_input.len()
        ));
    }
    slice
}

/// `quiver_buffer(size)`: the address of a guest-owned region of at least `size` bytes, `0`
/// when it cannot be allocated. The same region is returned while it is big enough.
pub fn buffer(size: i32) -> i32 {
    let Ok(size) = usize::try_from(size) else {
        log::error(&format!("quiver_buffer({size}): negative size"));
        return 0;
    };
    with_runtime("quiver_buffer", |rt| {
        // At least one byte so the address is a real one.
        let size = size.max(1);
        if rt.input.len() < size {
            if rt.input.try_reserve(size - rt.input.len()).is_err() {
                log::error(&format!("quiver_buffer({size}): out of memory"));
                return 0;
            }
            rt.input.resize(size, 0);
        }
        addr(&rt.input) as i32
    })
}

/// `quiver_filter(len)`: runs `filter` over the batch in the buffer; the address of the
/// verdicts, `0` on failure (logged).
pub fn run_filter<F>(len: i32, filter: F) -> i32
where
    F: FnMut(&Message<'_>) -> bool,
{
    with_runtime("quiver_filter", |rt| {
        let Some(data) = input(&rt.input, "quiver_filter", len) else {
            return 0;
        };
        match Batch::parse(data, addr(data)) {
            Ok(batch) => {
                batch::filter_batch(&batch, &mut rt.verdicts, filter);
                addr(&rt.verdicts) as i32
            }
            Err(e) => {
                log::error(&format!("quiver_filter: bad input batch: {e}"));
                0
            }
        }
    })
}

/// `quiver_transform(len)`: runs `transform` over the batch in the buffer; the address of the
/// output table, `0` on failure (logged).
pub fn run_transform<F>(len: i32, transform: F) -> i32
where
    F: for<'m> FnMut(Message<'m>) -> Outcome<'m>,
{
    with_runtime("quiver_transform", |rt| {
        let Some(data) = input(&rt.input, "quiver_transform", len) else {
            return 0;
        };
        match Batch::parse(data, addr(data)) {
            Ok(batch) => {
                batch::transform_batch(&batch, &mut rt.output, addr, transform);
                addr(rt.output.table()) as i32
            }
            Err(e) => {
                log::error(&format!("quiver_transform: bad input batch: {e}"));
                0
            }
        }
    })
}

/// `quiver_init(len)`: decodes the configuration in the buffer and calls `init`; `1` when it
/// accepts it, `0` when it refuses it or the configuration is malformed (the reason is logged).
pub fn run_init<F, E>(len: i32, init: F) -> i32
where
    F: FnOnce(&Config) -> Result<(), E>,
    E: Display,
{
    let mut config = None;
    with_runtime("quiver_init", |rt| {
        let Some(data) = input(&rt.input, "quiver_init", len) else {
            return 0;
        };
        match Config::parse(data) {
            Ok(parsed) => {
                config = Some(parsed);
                1
            }
            Err(e) => {
                log::error(&format!("quiver_init: {e}"));
                0
            }
        }
    });
    // The runtime is not borrowed while `init` runs.
    let Some(config) = config else {
        return 0;
    };
    match init(&config) {
        Ok(()) => 1,
        Err(e) => {
            log::error(&format!("configuration refused: {e}"));
            0
        }
    }
}

/// Makes a panic visible in the broker's log before it becomes a trap.
#[cfg(target_arch = "wasm32")]
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| log::error(&format!("plugin {info}"))));
}

/// `quiver_abi_version`: the ABI version this SDK implements. Called first on every instance.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn quiver_abi_version() -> i32 {
    install_panic_hook();
    batch::ABI_VERSION
}

/// `quiver_buffer(size)`: see [`buffer`].
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn quiver_buffer(size: i32) -> i32 {
    buffer(size)
}

/// Test access to the runtime's buffers (native tests call the entry points directly).
#[cfg(test)]
pub(crate) mod testing {
    use super::RUNTIME;

    /// Runs `f` on the input buffer `buffer` handed out.
    pub(crate) fn with_input<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
        RUNTIME.with(|rt| f(&mut rt.borrow_mut().input))
    }

    /// The address of the input buffer, as `quiver_buffer` computes it.
    pub(crate) fn input_addr() -> u32 {
        RUNTIME.with(|rt| super::addr(&rt.borrow().input))
    }

    /// The verdicts of the last `run_filter`.
    pub(crate) fn verdicts() -> (u32, Vec<u8>) {
        RUNTIME.with(|rt| {
            let rt = rt.borrow();
            (super::addr(&rt.verdicts), rt.verdicts.clone())
        })
    }

    /// The output table and arena of the last `run_transform`.
    pub(crate) fn output() -> (u32, Vec<u8>, Vec<u8>) {
        RUNTIME.with(|rt| {
            let rt = rt.borrow();
            (
                super::addr(rt.output.table()),
                rt.output.table().to_vec(),
                rt.output.arena().to_vec(),
            )
        })
    }
}
