//! Errors of the store. Each variant is one real cause; `is_retryable` tells callers
//! (the broker, and through it producers) whether trying again later can succeed.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed on a file of the store.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A flush (fsync) failed earlier; the store refuses writes because it cannot vouch for
    /// what it acknowledged. Restart the broker to recover from the last durable state.
    #[error("store is poisoned after a failed flush ({0}); restart the broker to recover")]
    Poisoned(String),
    /// Disk usage is above the high watermark; writes resume when space is freed.
    #[error("disk usage {used_percent:.1}% is above the {limit_percent:.1}% watermark on {path}; free space or raise store.disk_high_watermark")]
    DiskFull {
        /// Data directory.
        path: PathBuf,
        /// Current usage.
        used_percent: f64,
        /// Configured high watermark.
        limit_percent: f64,
    },
    /// The body exceeds the configured maximum.
    #[error("message body of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Body size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Tag + keys + properties exceed the configured maximum.
    #[error("tag, keys and properties take {size} bytes, more than the maximum of {max} bytes")]
    PropertiesTooLarge {
        /// Encoded size of the sections.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// A batch does not fit into one segment.
    #[error(
        "batch of {size} bytes does not fit into a commit-log segment of {segment_size} bytes"
    )]
    BatchTooLarge {
        /// Encoded batch size.
        size: usize,
        /// Segment size.
        segment_size: u64,
    },
    /// The message is malformed (empty topic, empty key, empty batch...).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// Bytes on disk fail validation.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset inside that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The requested offset is not (or no longer) in the log.
    #[error("offset {offset} is outside the stored range {min}..{max}")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u64,
        /// First stored offset.
        min: u64,
        /// One past the last stored offset.
        max: u64,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is locked by another process")]
    Locked(PathBuf),
    /// The configuration is unusable.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The store is shutting down.
    #[error("store is shut down")]
    Closed,
}

impl StoreError {
    /// True when the same request may succeed later (disk space freed, restart).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

impl Clone for StoreError {
    fn clone(&self) -> Self {
        match self {
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Poisoned(s) => StoreError::Poisoned(s.clone()),
            StoreError::DiskFull {
                path,
                used_percent,
                limit_percent,
            } => StoreError::DiskFull {
                path: path.clone(),
                used_percent: *used_percent,
                limit_percent: *limit_percent,
            },
            StoreError::MessageTooLarge { size, max } => StoreError::MessageTooLarge {
                size: *size,
                max: *max,
            },
            StoreError::PropertiesTooLarge { size, max } => StoreError::PropertiesTooLarge {
                size: *size,
                max: *max,
            },
            StoreError::BatchTooLarge { size, segment_size } => StoreError::BatchTooLarge {
                size: *size,
                segment_size: *segment_size,
            },
            StoreError::InvalidMessage(s) => StoreError::InvalidMessage(s.clone()),
            StoreError::Corrupt {
                file,
                offset,
                reason,
            } => StoreError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            StoreError::OffsetOutOfRange { offset, min, max } => StoreError::OffsetOutOfRange {
                offset: *offset,
                min: *min,
                max: *max,
            },
            StoreError::Locked(p) => StoreError::Locked(p.clone()),
            StoreError::Config(s) => StoreError::Config(s.clone()),
            StoreError::Closed => StoreError::Closed,
        }
    }
}

impl From<quiver_protocol::RecordError> for StoreError {
    fn from(e: quiver_protocol::RecordError) -> Self {
        use quiver_protocol::RecordError as R;
        match e {
            R::BodyTooLarge { size, max } => StoreError::MessageTooLarge { size, max },
            R::PropertiesTooLarge { size, max } => StoreError::PropertiesTooLarge { size, max },
            R::Invalid(m) => StoreError::InvalidMessage(m),
        }
    }
}
