//! Replies several commands share.

use bytes::{BufMut, Bytes, BytesMut};

use super::{WireDecode, WireEncode};
use crate::frame::decode_records;
use crate::wire::{DecodeError, Reader};

/// Done, nothing to return (an empty body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done;

impl WireEncode for Done {
    fn encode(&self, _b: &mut BytesMut) {}
}

impl WireDecode for Done {
    fn decode(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Done)
    }
}

/// Stored records (lookups, transaction checks): a count, then each record in the stored
/// layout (record.rs), self-delimited by its own length field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records(pub Vec<Bytes>);

impl WireEncode for Records {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.0.len() as u32);
    }

    fn tail(&self) -> &[Bytes] {
        &self.0
    }
}

impl WireDecode for Records {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Records(decode_records(r)?))
    }
}

/// How many items an operation affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountReply(pub u64);

impl WireEncode for CountReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u64_le(self.0);
    }
}

impl WireDecode for CountReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CountReply(r.u64("count")?))
    }
}
