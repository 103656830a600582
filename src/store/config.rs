//! Store configuration with the defaults documented in docs/STORAGE.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Ack once the record is in the mapped log; a background thread flushes every
    /// `flush_interval_ms` or as soon as `flush_dirty_pages` pages are dirty.
    Async,
    /// Ack only after an fsync that covers the record (group commit: concurrent appends share
    /// one fsync). Records become readable only once durable.
    Sync,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "async" => Ok(FlushMode::Async),
            "sync" => Ok(FlushMode::Sync),
            other => Err(format!(
                "unknown flush mode {other:?}: use \"async\" or \"sync\""
            )),
        }
    }
}

/// Everything the store can be told. In the broker's config file this is the `[store]`
/// section; `dir` is set by the broker (`<data_dir>/store`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Data directory (commitlog/, consumequeue/, index/, checkpoint, abort, lock).
    #[serde(skip)]
    pub dir: PathBuf,
    /// Size of one commit-log segment file. Default 1 GiB.
    #[serde(with = "crate::units::size")]
    pub segment_size: u64,
    /// Entries per consume-queue file (20 bytes each). Default 300,000 (6 MB files).
    pub cq_entries_per_file: u64,
    /// Hash slots per index file. Default 1,000,000.
    pub index_slots: u32,
    /// Entries per index file. Default 4,000,000.
    pub index_entries: u32,
    /// Ack policy. Default async.
    pub flush_mode: FlushMode,
    /// Async mode: flush at least this often. Default 500 ms.
    #[serde(with = "crate::units::ms")]
    pub flush_interval_ms: u64,
    /// Async mode: flush as soon as this many 4 KiB pages are dirty. Default 4096 (16 MiB).
    pub flush_dirty_pages: u64,
    /// Sync mode: after serving a large group, wait up to this long for its writers to
    /// return so that one fsync serves them together. Default 200 µs; 0 disables.
    #[serde(with = "crate::units::us")]
    pub group_commit_wait_us: u64,
    /// How often the checkpoint is written (bounds the recovery scan). Default 1000 ms.
    #[serde(with = "crate::units::ms")]
    pub checkpoint_interval_ms: u64,
    /// Largest message body. Default 4 MiB.
    #[serde(with = "crate::units::size")]
    pub max_message_size: usize,
    /// Largest tag + keys + properties of one message. Default 32 KiB.
    #[serde(with = "crate::units::size")]
    pub max_properties_size: usize,
    /// Segments older than this are deleted. Default 72 h.
    #[serde(with = "crate::units::hours")]
    pub retention_hours: u64,
    /// Local hour (0-23) at which expired segments are deleted. Default 4.
    pub delete_hour: u8,
    /// Above this fraction of disk used, appends fail with a retryable error. Default 0.90.
    pub disk_high_watermark: f64,
    /// Above this fraction of disk used, the oldest segments are deleted whatever their age
    /// (losses are reported). Default 0.85.
    pub disk_clean_watermark: f64,
    /// Free space kept when a commit-log segment is allocated: a new segment is refused with
    /// the retryable `DiskFull` if fewer than `segment_size + disk_headroom_bytes` bytes are
    /// available. Consume-queue and index files may use the headroom (they only need their
    /// own size), so dispatch of what the log holds does not run out first. Default 256 MiB.
    #[serde(with = "crate::units::size")]
    pub disk_headroom_bytes: u64,
    /// Check each record's CRC when it is read. Default true.
    pub verify_crc_on_read: bool,
    /// Where free space is measured (`statvfs` of `dir`); tests replace it.
    #[serde(skip)]
    pub disk_space: DiskSpaceSource,
}

/// Size and free space of the filesystem holding the store, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Size of the filesystem.
    pub total: u64,
    /// Bytes an unprivileged writer can still allocate (`f_bavail`).
    pub available: u64,
}

type SpaceFn = dyn Fn(&Path) -> Option<DiskSpace> + Send + Sync;

/// How the store measures [`DiskSpace`]: `statvfs` by default, or a function (a test saying
/// "the disk has N bytes free"). `None` from the function means "unknown": nothing is refused
/// for lack of a measurement, and `ENOSPC` from the filesystem still gives `DiskFull`.
#[derive(Clone, Default)]
pub struct DiskSpaceSource(Option<Arc<SpaceFn>>);

impl DiskSpaceSource {
    /// Measures with `statvfs` on the data directory (the default).
    pub fn statvfs() -> Self {
        Self(None)
    }

    /// Measures with `f`, called with the data directory.
    pub fn custom(f: impl Fn(&Path) -> Option<DiskSpace> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// The current size and free space of the filesystem holding `dir`.
    pub fn query(&self, dir: &Path) -> Option<DiskSpace> {
        match &self.0 {
            Some(f) => f(dir),
            None => statvfs(dir),
        }
    }
}

impl std::fmt::Debug for DiskSpaceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "custom"
        } else {
            "statvfs"
        })
    }
}

fn statvfs(dir: &Path) -> Option<DiskSpace> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is ours to fill.
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if r != 0 || st.f_blocks == 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some(DiskSpace {
        total: (st.f_blocks as u64).saturating_mul(unit),
        available: (st.f_bavail as u64).saturating_mul(unit),
    })
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::new(PathBuf::new())
    }
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 1 << 30,
            cq_entries_per_file: 300_000,
            index_slots: 1_000_000,
            index_entries: 4_000_000,
            flush_mode: FlushMode::Async,
            flush_interval_ms: 500,
            flush_dirty_pages: 4096,
            checkpoint_interval_ms: 1000,
            group_commit_wait_us: 200,
            max_message_size: 4 << 20,
            max_properties_size: 32 << 10,
            retention_hours: 72,
            delete_hour: 4,
            disk_high_watermark: 0.90,
            disk_clean_watermark: 0.85,
            disk_headroom_bytes: 256 << 20,
            verify_crc_on_read: true,
            disk_space: DiskSpaceSource::statvfs(),
        }
    }

    /// Small files, for tests that must exercise rollover.
    pub fn small_for_tests(dir: impl Into<PathBuf>) -> Self {
        Self {
            segment_size: 64 << 10,
            cq_entries_per_file: 64,
            index_slots: 64,
            index_entries: 256,
            max_message_size: 16 << 10,
            max_properties_size: 4 << 10,
            // Tests must not depend on how full the machine's disk happens to be.
            disk_high_watermark: 1.0,
            disk_clean_watermark: 1.0,
            disk_headroom_bytes: 0,
            ..Self::new(dir)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), super::StoreError> {
        let err = |m: String| Err(super::StoreError::Config(m));
        if self.segment_size < 4096
            || !self.segment_size.is_multiple_of(4096)
            || self.segment_size > u32::MAX as u64
        {
            return err(format!(
                "segment_size must be a multiple of 4096 between 4 KiB and 4 GiB, got {}",
                self.segment_size
            ));
        }
        if (self.max_message_size + self.max_properties_size + 512) as u64 > self.segment_size {
            return err("max_message_size must fit into one segment".into());
        }
        if self.disk_clean_watermark > self.disk_high_watermark {
            return err("disk_clean_watermark must not exceed disk_high_watermark (cleaning must start before writes stop)".into());
        }
        if self.flush_interval_ms == 0 || self.flush_dirty_pages == 0 {
            return err("flush_interval_ms and flush_dirty_pages must be positive".into());
        }
        if self.cq_entries_per_file == 0 || self.index_slots == 0 || self.index_entries == 0 {
            return err(
                "cq_entries_per_file, index_slots and index_entries must be positive".into(),
            );
        }
        if self.delete_hour > 23 {
            return err(format!(
                "delete_hour must be 0..=23, got {}",
                self.delete_hour
            ));
        }
        if !(0.0..=1.0).contains(&self.disk_high_watermark)
            || !(0.0..=1.0).contains(&self.disk_clean_watermark)
        {
            return err("disk watermarks are fractions between 0 and 1".into());
        }
        Ok(())
    }
}
