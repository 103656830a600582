//! Time as an input. Parts of the broker that act on time (consumer-group sessions, the timer
//! wheel of scheduled messages, transaction check-backs) read it from a [`Clock`] they are
//! given instead of asking the operating system, so tests drive time rather than sleep.
//!
//! A clock gives two readings: wall-clock milliseconds since the Unix epoch (due times that
//! are stored, such as `DELIVER_AT`) and a monotonic instant (session ages, periods).
//! [`Clock::system`] is the operating system's clock, what the broker uses. A [`ManualClock`]
//! stands still until a test advances it; parts that wait for a time to come register a wake-up
//! ([`Clock::on_advance`]) and are woken on every advance, so nothing polls.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// A wake-up called after a manual clock moved.
pub type Waker = dyn Fn() + Send + Sync;

/// The time source a part of the broker reads. Cheap to clone; clones read the same time.
#[derive(Clone)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(m) => write!(f, "Clock::manual({} ms)", m.now().0),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

struct Manual {
    /// (epoch ms, monotonic instant) now.
    now: Mutex<(i64, Instant)>,
    wakers: Mutex<Vec<Weak<Waker>>>,
    /// The epoch ms, for async waiters.
    watch: tokio::sync::watch::Sender<i64>,
}

impl Manual {
    fn now(&self) -> (i64, Instant) {
        *lock(&self.now)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => quiver_protocol::text::epoch_ms(),
            Some(m) => m.now().0,
        }
    }

    /// A monotonic instant (never goes back).
    pub fn instant(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.now().1,
        }
    }

    /// Whether this clock moves only when a test advances it.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// How long a thread should wait in real time for `ms` milliseconds of this clock to pass:
    /// `None` for a manual clock (wait for a wake-up registered with [`Clock::on_advance`]).
    pub fn real_wait(&self, ms: i64) -> Option<Duration> {
        match &self.manual {
            None => Some(Duration::from_millis(ms.max(0) as u64)),
            Some(_) => None,
        }
    }

    /// Calls `waker` after every advance of a manual clock, for as long as the caller keeps
    /// it (the clock holds it weakly). Nothing to do for the system clock: waiters sleep the
    /// real time instead. A waker that takes the lock its waiter checks the time under before
    /// notifying loses no wake-up.
    pub fn on_advance(&self, waker: &Arc<Waker>) {
        if let Some(m) = &self.manual {
            let mut w = lock(&m.wakers);
            w.retain(|w| w.strong_count() > 0);
            w.push(Arc::downgrade(waker));
        }
    }

    /// Waits until this clock reads `at_ms` or later. Async: real sleep for the system clock
    /// (checked again after waking, as the wall clock may be set back), a wait for advances
    /// for a manual one.
    pub async fn sleep_until_ms(&self, at_ms: i64) {
        match &self.manual {
            None => loop {
                let left = at_ms - self.now_ms();
                if left <= 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(left as u64)).await;
            },
            Some(m) => {
                let mut rx = m.watch.subscribe();
                // The sender lives as long as `m`, which this clock holds.
                let _ = rx.wait_for(|now| *now >= at_ms).await;
            }
        }
    }
}

/// A clock that moves only when told to. Tests give [`ManualClock::clock`] to the parts they
/// test and call [`ManualClock::advance`] where they would have slept.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManualClock({} ms)", self.inner.now().0)
    }
}

impl ManualClock {
    /// A clock that reads `epoch_ms` until advanced.
    pub fn at(epoch_ms: i64) -> ManualClock {
        let (watch, _) = tokio::sync::watch::channel(epoch_ms);
        ManualClock {
            inner: Arc::new(Manual {
                now: Mutex::new((epoch_ms, Instant::now())),
                wakers: Mutex::new(Vec::new()),
                watch,
            }),
        }
    }

    /// A clock that starts at the system's current time (so that times the store stamps with
    /// the system clock and times read from this clock are comparable).
    pub fn starting_now() -> ManualClock {
        Self::at(Clock::system().now_ms())
    }

    /// The clock to hand to the parts under test.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.inner.clone()),
        }
    }

    /// Milliseconds since the epoch now.
    pub fn now_ms(&self) -> i64 {
        self.inner.now().0
    }

    /// Moves time forward by `d` and wakes whoever waits on this clock.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let now = {
            let mut now = lock(&self.inner.now);
            now.0 = now.0.saturating_add(ms);
            now.1 += d;
            now.0
        };
        self.inner.watch.send_replace(now);
        let wakers: Vec<Arc<Waker>> = lock(&self.inner.wakers)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for w in wakers {
            w();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_wakes_its_waiters() {
        let m = ManualClock::at(1_000);
        let c = m.clock();
        let (t0, i0) = (c.now_ms(), c.instant());
        assert_eq!(t0, 1_000);
        assert_eq!(c.instant(), i0, "stands still");
        assert_eq!(c.real_wait(500), None);
        let woken = Arc::new(AtomicU32::new(0));
        let w = woken.clone();
        let waker: Arc<Waker> = Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        c.on_advance(&waker);
        m.advance(Duration::from_millis(250));
        assert_eq!(c.now_ms(), 1_250);
        assert_eq!(c.instant() - i0, Duration::from_millis(250));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        drop(waker);
        m.advance(Duration::from_millis(1));
        assert_eq!(
            woken.load(Ordering::SeqCst),
            1,
            "a dropped waker is forgotten"
        );
    }

    #[tokio::test]
    async fn sleeping_on_a_manual_clock_ends_when_it_is_advanced_far_enough() {
        let m = ManualClock::at(0);
        let c = m.clock();
        let sleeper = tokio::spawn(async move { c.sleep_until_ms(100).await });
        m.advance(Duration::from_millis(99));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "not yet due");
        m.advance(Duration::from_millis(1));
        sleeper.await.unwrap();
    }

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let c = Clock::system();
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((c.now_ms() - sys).abs() < 60_000);
        assert_eq!(c.real_wait(20), Some(Duration::from_millis(20)));
        assert_eq!(c.real_wait(-5), Some(Duration::ZERO));
        assert!(!c.is_manual());
    }
}
