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
    /// The disk is (nearly) full: usage is above the high watermark, allocating a file would
    /// eat into the configured headroom, or the filesystem answered `ENOSPC`/`EDQUOT`. Nothing
    /// was stored; the same request succeeds once space is freed. The message names no path
    /// (it may reach clients); `path` is for the broker's own logs.
    #[error("disk full: {cause}")]
    DiskFull {
        /// The data directory or file concerned (for logs, not for clients).
        path: PathBuf,
        /// What ran out.
        cause: DiskFullCause,
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
    /// The store is a replica (its broker is a slave): only replicated records are appended.
    #[error("this broker is a slave of its broker set: writes go to the set's master")]
    Replica,
    /// Replicated records that do not continue this log where it ends (another position,
    /// other queue offsets, records that fail validation); nothing was appended.
    #[error("replicated records do not continue this log: {0}")]
    Diverged(String),
}

impl StoreError {
    /// True when the same request may succeed later (disk space freed, restart).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    /// An I/O error on `path`. `ENOSPC` and `EDQUOT` become the retryable
    /// [`StoreError::DiskFull`]: a full disk is never an internal error, wherever in the write
    /// path it shows up.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull {
                path: path.into(),
                cause: DiskFullCause::NoSpace(source.to_string()),
            },
            _ => StoreError::Io {
                path: path.into(),
                source,
            },
        }
    }
}

/// Why the store refused a write for lack of disk space.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskFullCause {
    /// Usage (from `statvfs`) is above `store.disk_high_watermark`.
    Watermark {
        /// Current usage, percent.
        used_percent: f64,
        /// Configured high watermark, percent.
        limit_percent: f64,
    },
    /// Allocating a file of `needed` bytes would leave less than the headroom free.
    Headroom {
        /// Size of the file to allocate.
        needed: u64,
        /// Bytes available to the store's user on the filesystem.
        available: u64,
        /// Configured `store.disk_headroom_bytes` (0 for derived files, which may use it).
        headroom: u64,
    },
    /// The filesystem itself answered "no space left" (or "quota exceeded").
    NoSpace(String),
}

impl std::fmt::Display for DiskFullCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskFullCause::Watermark {
                used_percent,
                limit_percent,
            } => write!(
                f,
                "disk usage {used_percent:.1}% is above the {limit_percent:.1}% watermark; \
                 free space or raise store.disk_high_watermark"
            ),
            DiskFullCause::Headroom {
                needed,
                available,
                headroom,
            } => write!(
                f,
                "allocating {needed} bytes with {available} bytes available would leave less \
                 than the {headroom}-byte headroom (store.disk_headroom_bytes); free space"
            ),
            DiskFullCause::NoSpace(os) => write!(f, "{os}; free space"),
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
            StoreError::DiskFull { path, cause } => StoreError::DiskFull {
                path: path.clone(),
                cause: cause.clone(),
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
            StoreError::Diverged(s) => StoreError::Diverged(s.clone()),
            StoreError::Replica => StoreError::Replica,
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
