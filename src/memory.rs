//! Giving memory back to the operating system after many connections close.
//!
//! A connection's buffers (QUIC packet and stream buffers, request frames) are freed when
//! it closes, but glibc's allocator keeps freed memory in its arenas for reuse: after a burst
//! of a thousand producers the broker's RSS would stay at its peak. When the number of open
//! connections has fallen well below its peak, the broker asks the allocator to return what
//! it does not use (`malloc_trim`), on a blocking thread (docs/OPERATIONS.md, "Memory per
//! connection").

/// Decides when to trim, from the open-connection count sampled once a second.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The highest count since the last trim.
    peak: i64,
}

impl Trimmer {
    /// A new trimmer.
    pub fn new() -> Self {
        Self::default()
    }

    /// One sample; true when the allocator should be trimmed now: the count fell to at most
    /// half of its peak since the last trim, by at least 16 connections.
    pub fn observe(&mut self, open: i64) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= 16 && open <= self.peak / 2 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Returns unused heap memory to the operating system (glibc only; a no-op elsewhere).
/// Blocking: it walks the allocator's arenas.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_large_drop_only() {
        let mut t = Trimmer::new();
        // Growing and small changes: nothing.
        for n in [0, 10, 300, 1000, 990, 700, 501] {
            assert!(!t.observe(n), "{n}");
        }
        // Half the peak: trim once, then the peak is the new level.
        assert!(t.observe(500));
        assert!(!t.observe(490));
        // A small broker never trims for a handful of connections.
        let mut small = Trimmer::new();
        for n in [0, 10, 0, 12, 1] {
            assert!(!small.observe(n), "{n}");
        }
        // Everything closed after a burst.
        assert!(t.observe(0));
        assert!(!t.observe(0));
    }
}
