//! Logging to the broker's log through the `quiver.log` import.
//!
//! Lines are tagged with the plugin's name by the broker, cut at 1 KiB and rate limited (a
//! burst of 20 lines, then 10 per second). Use the functions of this module with a `&str`, or
//! the [`error!`](crate::error), [`warn!`](crate::warn), [`info!`](crate::info) and
//! [`debug!`](crate::debug) macros with `format!` arguments. On native targets (unit tests)
//! lines go to standard error.

/// The level of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is wrong but the plugin goes on.
    Warn = 2,
    /// Information.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "quiver")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn quiver_log(level: i32, addr: *const u8, len: usize);
    }

    pub(super) fn write(level: super::Level, text: &str) {
        // SAFETY: the host only reads `len` bytes at `addr`, which `text` owns for the call.
        unsafe { quiver_log(level as i32, text.as_ptr(), text.len()) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    pub(super) fn write(level: super::Level, text: &str) {
        let level = match level {
            super::Level::Error => "ERROR",
            super::Level::Warn => "WARN",
            super::Level::Info => "INFO",
            super::Level::Debug => "DEBUG",
        };
        eprintln!("[plugin {level}] {text}");
    }
}

/// Writes `text` to the broker's log at `level`.
pub fn log(level: Level, text: &str) {
    host::write(level, text);
}

/// Logs `text` at level error.
pub fn error(text: &str) {
    log(Level::Error, text);
}

/// Logs `text` at level warn.
pub fn warn(text: &str) {
    log(Level::Warn, text);
}

/// Logs `text` at level info.
pub fn info(text: &str) {
    log(Level::Info, text);
}

/// Logs `text` at level debug.
pub fn debug(text: &str) {
    log(Level::Debug, text);
}

/// Logs a `format!`-style message at level error: `quiver_plugin::error!("bad {x}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*)) };
}

/// Logs a `format!`-style message at level warn: `quiver_plugin::warn!("odd {x}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// Logs a `format!`-style message at level info: `quiver_plugin::info!("ready: {x}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs a `format!`-style message at level debug: `quiver_plugin::debug!("saw {x}")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}
