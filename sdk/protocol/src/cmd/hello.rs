//! The handshake and topic routes.

use bytes::{BufMut, BytesMut};

use super::{call, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Handshake: the client's protocol version and a free-form id for logs. Must be the first
/// request of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Client id (for logs).
    pub client_id: String,
}

/// Handshake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// Protocol version the broker speaks.
    pub version: u16,
    /// Broker name.
    pub broker: String,
    /// Largest body the broker accepts.
    pub max_message_size: u32,
    /// Largest frame the broker accepts.
    pub max_frame: u32,
}

call!(Hello => HelloReply, Hello);

impl WireEncode for Hello {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u16_le(self.version);
        b.put_str16(&self.client_id);
    }
}

impl WireDecode for Hello {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Hello {
            version: r.u16("version")?,
            client_id: r.str16("client id")?,
        })
    }
}

impl WireEncode for HelloReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u16_le(self.version);
        b.put_str16(&self.broker);
        b.put_u32_le(self.max_message_size);
        b.put_u32_le(self.max_frame);
    }
}

impl WireDecode for HelloReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(HelloReply {
            version: r.u16("version")?,
            broker: r.str16("broker")?,
            max_message_size: r.u32("max message size")?,
            max_frame: r.u32("max frame")?,
        })
    }
}

/// Queue count of a topic; `create` asks for auto-creation if the broker allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Topic.
    pub topic: String,
    /// Create when missing (auto-creation on).
    pub create: bool,
}

/// Queue count of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteReply {
    /// Queue count.
    pub queues: u32,
}

call!(Route => RouteReply, Route);

impl WireEncode for Route {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.topic);
        b.put_u8(self.create as u8);
    }
}

impl WireDecode for Route {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Route {
            topic: r.str16("topic")?,
            create: r.bool("create")?,
        })
    }
}

impl WireEncode for RouteReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.queues);
    }
}

impl WireDecode for RouteReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RouteReply {
            queues: r.u32("queues")?,
        })
    }
}
