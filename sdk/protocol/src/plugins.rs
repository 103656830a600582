//! Wire types of WebAssembly plugins: how a subscription names its plugins, and what the broker
//! reports about a loaded plugin (docs/PLUGINS.md, docs/PROTOCOL.md).

use bytes::{BufMut, BytesMut};

use crate::wire::{DecodeError, Reader, WriteExt};

/// What a subscription's pull does when one of its plugins fails on a batch (trap, time or
/// memory limit, malformed output, or the plugin is unhealthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PluginFailurePolicy {
    /// The pull fails with the plugin's error; the offset does not move, so the same messages
    /// are offered again on the next pull.
    #[default]
    Fail = 0,
    /// The batch's messages are skipped (not delivered); the offset moves past them.
    Skip = 1,
    /// The batch is delivered as it came out of the tag/SQL filter, unfiltered and untransformed
    /// by this plugin.
    Deliver = 2,
}

impl PluginFailurePolicy {
    /// The policy for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Fail,
            1 => Self::Skip,
            2 => Self::Deliver,
            _ => return None,
        })
    }

    /// The name used in the CLI and logs (`fail`, `skip`, `deliver`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::Deliver => "deliver",
        }
    }

    /// Parses `fail`, `skip` or `deliver`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(Self::Fail),
            "skip" => Some(Self::Skip),
            "deliver" => Some(Self::Deliver),
            _ => None,
        }
    }
}

/// A plugin attached to a subscription: run on the broker at pull time, after the tag/SQL
/// filter, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginRef {
    /// Name the plugin was loaded under.
    pub name: String,
    /// What a failure of this plugin does to the pull.
    pub on_error: PluginFailurePolicy,
}

impl PluginRef {
    /// A reference with the default policy (fail the pull).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            on_error: PluginFailurePolicy::Fail,
        }
    }

    /// The same reference with another failure policy.
    pub fn on_error(mut self, policy: PluginFailurePolicy) -> Self {
        self.on_error = policy;
        self
    }
}

/// Most plugins one subscription may chain.
pub const MAX_PLUGINS_PER_SUBSCRIPTION: usize = 8;

pub(crate) fn put_plugin_refs(b: &mut BytesMut, refs: &[PluginRef]) {
    b.put_u8(refs.len().min(255) as u8);
    for p in refs.iter().take(255) {
        b.put_str16(&p.name);
        b.put_u8(p.on_error as u8);
    }
}

pub(crate) fn get_plugin_refs(r: &mut Reader) -> Result<Vec<PluginRef>, DecodeError> {
    let n = r.u8("plugin count")? as usize;
    if n > MAX_PLUGINS_PER_SUBSCRIPTION {
        return Err(DecodeError::Invalid {
            field: "plugin count",
            reason: format!("{n} plugins; at most {MAX_PLUGINS_PER_SUBSCRIPTION} per subscription"),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str16("plugin name")?;
        let v = r.u8("plugin failure policy")?;
        let on_error = PluginFailurePolicy::from_u8(v).ok_or(DecodeError::Invalid {
            field: "plugin failure policy",
            reason: format!("unknown value {v}"),
        })?;
        out.push(PluginRef { name, on_error });
    }
    Ok(out)
}

/// Whether a plugin filters or transforms (decided by its exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PluginKind {
    /// Exports `quiver_filter`: keeps or drops messages.
    Filter = 1,
    /// Exports `quiver_transform`: rewrites, drops or rejects messages.
    Transform = 2,
}

impl PluginKind {
    /// The kind for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Filter),
            2 => Some(Self::Transform),
            _ => None,
        }
    }

    /// `filter` or `transform`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Transform => "transform",
        }
    }
}

/// What the broker knows about one loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Name it was loaded under.
    pub name: String,
    /// Filter or transform.
    pub kind: PluginKind,
    /// 1 at load, +1 at every reload.
    pub version: u32,
    /// SHA-256 of the module, hex.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
    /// Configuration given to its `quiver_init`.
    pub config: Vec<(String, String)>,
    /// Memory limit per instance, bytes.
    pub memory_limit_bytes: u64,
    /// Time limit per batch, ms.
    pub time_limit_ms: u32,
    /// False after too many consecutive failures, until reloaded.
    pub healthy: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The last failure, empty if none.
    pub last_error: String,
    /// Batches processed (successfully or not).
    pub batches: u64,
    /// Messages given to the plugin.
    pub messages_in: u64,
    /// Messages it kept (delivered or stored).
    pub messages_out: u64,
    /// Failed batches in total.
    pub failures: u64,
    /// When this version was loaded, ms since the epoch.
    pub loaded_at_ms: i64,
    /// Topics whose ingress chain includes it.
    pub topics: Vec<String>,
}

impl PluginInfo {
    pub(crate) fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u8(self.kind as u8);
        b.put_u32_le(self.version);
        b.put_str16(&self.sha256);
        b.put_u64_le(self.size);
        put_pairs(b, &self.config);
        b.put_u64_le(self.memory_limit_bytes);
        b.put_u32_le(self.time_limit_ms);
        b.put_u8(self.healthy as u8);
        b.put_u32_le(self.consecutive_failures);
        b.put_str16(&self.last_error);
        b.put_u64_le(self.batches);
        b.put_u64_le(self.messages_in);
        b.put_u64_le(self.messages_out);
        b.put_u64_le(self.failures);
        b.put_i64_le(self.loaded_at_ms);
        b.put_u16_le(self.topics.len().min(u16::MAX as usize) as u16);
        for t in self.topics.iter().take(u16::MAX as usize) {
            b.put_str16(t);
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str16("plugin name")?;
        let k = r.u8("plugin kind")?;
        let kind = PluginKind::from_u8(k).ok_or(DecodeError::Invalid {
            field: "plugin kind",
            reason: format!("unknown value {k}"),
        })?;
        let version = r.u32("plugin version")?;
        let sha256 = r.str16("plugin sha256")?;
        let size = r.u64("plugin size")?;
        let config = get_pairs(r)?;
        let memory_limit_bytes = r.u64("memory limit")?;
        let time_limit_ms = r.u32("time limit")?;
        let healthy = r.bool("healthy")?;
        let consecutive_failures = r.u32("consecutive failures")?;
        let last_error = r.str16("last error")?;
        let batches = r.u64("batches")?;
        let messages_in = r.u64("messages in")?;
        let messages_out = r.u64("messages out")?;
        let failures = r.u64("failures")?;
        let loaded_at_ms = r.i64("loaded at")?;
        let n = r.u16("topic count")? as usize;
        let mut topics = Vec::with_capacity(n.min(r.remaining() / 2));
        for _ in 0..n {
            topics.push(r.str16("topic")?);
        }
        Ok(Self {
            name,
            kind,
            version,
            sha256,
            size,
            config,
            memory_limit_bytes,
            time_limit_ms,
            healthy,
            consecutive_failures,
            last_error,
            batches,
            messages_in,
            messages_out,
            failures,
            loaded_at_ms,
            topics,
        })
    }
}

/// Key/value pairs: `u16 count`, then `str16 key, str16 value` each.
pub(crate) fn put_pairs(b: &mut BytesMut, pairs: &[(String, String)]) {
    b.put_u16_le(pairs.len().min(u16::MAX as usize) as u16);
    for (k, v) in pairs.iter().take(u16::MAX as usize) {
        b.put_str16(k);
        b.put_str16(v);
    }
}

pub(crate) fn get_pairs(r: &mut Reader) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.u16("pair count")? as usize;
    if n > r.remaining() / 4 {
        return Err(DecodeError::Invalid {
            field: "pair count",
            reason: format!("{n} pairs cannot fit in {} bytes", r.remaining()),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.str16("config key")?;
        out.push((k, r.str16("config value")?));
    }
    Ok(out)
}
