//! WebAssembly plugin administration.

use bytes::{BufMut, Bytes, BytesMut};

use super::{call, Done, WireDecode, WireEncode};
use crate::plugins::{get_pairs, put_pairs, PluginInfo};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Load a WebAssembly plugin under a new name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLoad {
    /// Name (topic naming rules).
    pub name: String,
    /// The module: WebAssembly binary (or WAT text).
    pub wasm: Bytes,
    /// Configuration given to the plugin's `quiver_init`.
    pub config: Vec<(String, String)>,
    /// Memory limit per instance in bytes; 0 = the broker's default.
    pub memory_limit_bytes: u64,
    /// Time limit per batch in ms; 0 = the broker's default.
    pub time_limit_ms: u32,
}

/// Replace a plugin atomically: in-flight batches finish on the old version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReload {
    /// Name.
    pub name: String,
    /// A new module, or empty to keep the current one.
    pub wasm: Bytes,
    /// A new configuration, or `None` to keep the current one.
    pub config: Option<Vec<(String, String)>>,
    /// A new memory limit; 0 = keep.
    pub memory_limit_bytes: u64,
    /// A new time limit; 0 = keep.
    pub time_limit_ms: u32,
}

/// Unload a plugin (refused while attached to topics unless `force`, which detaches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginUnload {
    /// Name.
    pub name: String,
    /// Detach from topics first.
    pub force: bool,
}

/// List loaded plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginList;

/// Describe one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDescribe {
    /// Name.
    pub name: String,
}

/// Append a plugin to a topic's ingress chain (run on every send before it is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginAttach {
    /// Plugin name.
    pub name: String,
    /// Topic.
    pub topic: String,
}

/// Remove a plugin from a topic's ingress chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDetach {
    /// Plugin name.
    pub name: String,
    /// Topic.
    pub topic: String,
}

/// Loaded plugins (one for load, reload and describe; all for list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsReply {
    /// The plugins.
    pub plugins: Vec<PluginInfo>,
}

call!(PluginLoad => PluginsReply, PluginLoad);
call!(PluginReload => PluginsReply, PluginReload);
call!(PluginUnload => Done, PluginUnload);
call!(PluginList => PluginsReply, PluginList);
call!(PluginDescribe => PluginsReply, PluginDescribe);
call!(PluginAttach => Done, PluginAttach);
call!(PluginDetach => Done, PluginDetach);

impl WireEncode for PluginLoad {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u32_le(self.wasm.len() as u32);
        b.put_slice(&self.wasm);
        put_pairs(b, &self.config);
        b.put_u64_le(self.memory_limit_bytes);
        b.put_u32_le(self.time_limit_ms);
    }
}

impl WireDecode for PluginLoad {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str16("plugin name")?;
        let n = r.u32("module length")? as usize;
        Ok(PluginLoad {
            name,
            wasm: r.bytes(n, "module")?,
            config: get_pairs(r)?,
            memory_limit_bytes: r.u64("memory limit")?,
            time_limit_ms: r.u32("time limit")?,
        })
    }
}

impl WireEncode for PluginReload {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u32_le(self.wasm.len() as u32);
        b.put_slice(&self.wasm);
        b.put_u8(self.config.is_some() as u8);
        put_pairs(b, self.config.as_deref().unwrap_or(&[]));
        b.put_u64_le(self.memory_limit_bytes);
        b.put_u32_le(self.time_limit_ms);
    }
}

impl WireDecode for PluginReload {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str16("plugin name")?;
        let n = r.u32("module length")? as usize;
        let wasm = r.bytes(n, "module")?;
        let has_config = r.bool("config present")?;
        let config = get_pairs(r)?;
        Ok(PluginReload {
            name,
            wasm,
            config: has_config.then_some(config),
            memory_limit_bytes: r.u64("memory limit")?,
            time_limit_ms: r.u32("time limit")?,
        })
    }
}

impl WireEncode for PluginUnload {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u8(self.force as u8);
    }
}

impl WireDecode for PluginUnload {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PluginUnload {
            name: r.str16("plugin name")?,
            force: r.bool("force")?,
        })
    }
}

impl WireEncode for PluginList {
    fn encode(&self, _b: &mut BytesMut) {}
}

impl WireDecode for PluginList {
    fn decode(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PluginList)
    }
}

impl WireEncode for PluginDescribe {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
    }
}

impl WireDecode for PluginDescribe {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PluginDescribe {
            name: r.str16("plugin name")?,
        })
    }
}

impl WireEncode for PluginAttach {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_str16(&self.topic);
    }
}

impl WireDecode for PluginAttach {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PluginAttach {
            name: r.str16("plugin name")?,
            topic: r.str16("topic")?,
        })
    }
}

impl WireEncode for PluginDetach {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_str16(&self.topic);
    }
}

impl WireDecode for PluginDetach {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PluginDetach {
            name: r.str16("plugin name")?,
            topic: r.str16("topic")?,
        })
    }
}

impl WireEncode for PluginsReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.plugins.len() as u32);
        for p in &self.plugins {
            p.encode(b);
        }
    }
}

impl WireDecode for PluginsReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("plugin count")? as usize;
        let mut plugins = Vec::with_capacity(n.min(r.remaining() / 64));
        for _ in 0..n {
            plugins.push(PluginInfo::decode(r)?);
        }
        Ok(PluginsReply { plugins })
    }
}
