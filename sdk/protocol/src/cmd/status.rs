//! The broker's status report (`quiver admin broker status`).

use bytes::{BufMut, BytesMut};

use super::{call, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader};

/// Ask for the broker's status: version, uptime, role, configuration summary, message
/// totals, connections, disk and counters. No body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus;

/// The status as one UTF-8 JSON object (u32 length, then the bytes); its fields are listed
/// in docs/PROTOCOL.md (the same object as the console's `GET /api/overview`). Clients must
/// ignore fields they do not know: new ones are added without a version change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatusReply {
    /// The JSON text.
    pub json: String,
}

call!(BrokerStatus => BrokerStatusReply, BrokerStatus);

impl WireEncode for BrokerStatus {
    fn encode(&self, _: &mut BytesMut) {}
}

impl WireDecode for BrokerStatus {
    fn decode(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(BrokerStatus)
    }
}

impl WireEncode for BrokerStatusReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.json.len() as u32);
        b.put_slice(self.json.as_bytes());
    }
}

impl WireDecode for BrokerStatusReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("status length")? as usize;
        let bytes = r.bytes(n, "status")?;
        let json = std::str::from_utf8(&bytes)
            .map_err(|_| DecodeError::Utf8("status"))?
            .to_string();
        Ok(BrokerStatusReply { json })
    }
}
