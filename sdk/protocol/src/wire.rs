//! Little-endian primitives with bounds checks: every read from the network is checked and
//! turns into a [`DecodeError`], never a panic.

use bytes::{BufMut, Bytes};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before a field did.
    #[error("truncated: {field} needs {need} more bytes, {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needed.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
    /// A value is out of its allowed range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Reads fields from a frame body.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails if bytes remain.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                field,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `n` bytes as a zero-copy slice of the frame.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                field,
                need: n,
                have: self.remaining(),
            });
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// A u8.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(a))
    }

    /// A little-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A little-endian i64.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(field)? as i64)
    }

    /// A little-endian u128.
    pub fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16, field)?);
        Ok(u128::from_le_bytes(a))
    }

    /// A string with a u16 length prefix.
    pub fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(field)? as usize;
        let b = self.take(n, field)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::Utf8(field))
    }

    /// A boolean byte (0 or 1).
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Invalid {
                field,
                reason: format!("boolean must be 0 or 1, got {v}"),
            }),
        }
    }
}

/// Writes fields into a frame body.
pub trait WriteExt: BufMut {
    /// A string with a u16 length prefix (callers check the length first; longer strings are
    /// cut at 65535 bytes, which decoding then rejects as invalid UTF-8 or a wrong name).
    fn put_str16(&mut self, s: &str) {
        let n = s.len().min(u16::MAX as usize);
        self.put_u16_le(n as u16);
        self.put_slice(&s.as_bytes()[..n]);
    }
}

impl<T: BufMut> WriteExt for T {}
