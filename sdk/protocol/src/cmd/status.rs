//! The broker's status report (`quiver admin broker status`).

use bytes::BytesMut;

use super::{call, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader};

/// Ask for the broker's status: version, uptime, role, configuration summary, message
/// totals, connections, disk and counters. No body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus;

/// The status as one UTF-8 JSON object (u32 length, then the bytes); its fields are listed
/// in docs/PROTOCOL.md (the same object as the console's `GET /api/overview`). Clients must
/// ignore fields they do not know: new ones are added without a version change.
pub type BrokerStatusReply = super::JsonReply;

call!(BrokerStatus => BrokerStatusReply, BrokerStatus);

impl WireEncode for BrokerStatus {
    fn encode(&self, _: &mut BytesMut) {}
}

impl WireDecode for BrokerStatus {
    fn decode(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(BrokerStatus)
    }
}
