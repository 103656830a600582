//! Failed logins per source address, across connections: after [`LIMIT`] failures within
//! [`WINDOW_MS`], logins from that address are refused until its window ends. A guesser who
//! reconnects after each connection's five attempts is slowed to [`LIMIT`] guesses a minute
//! per address. Time comes from the broker's clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed logins an address may make within a window.
pub(crate) const LIMIT: u32 = 20;
/// The window, in ms.
pub(crate) const WINDOW_MS: i64 = 60_000;
/// Addresses tracked at once (the map never grows past this).
const MAX_SOURCES: usize = 4096;

/// Per address: failures in the current window, and when the window started.
#[derive(Default)]
pub(crate) struct Throttle {
    by_source: Mutex<HashMap<IpAddr, (u32, i64)>>,
}

impl Throttle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, i64)>> {
        self.by_source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether logins from `from` are refused now.
    pub(crate) fn blocked(&self, from: IpAddr, now_ms: i64) -> bool {
        self.map()
            .get(&source(from))
            .is_some_and(|(n, start)| *n >= LIMIT && now_ms - start < WINDOW_MS)
    }

    /// Counts a failed login from `from`.
    pub(crate) fn failed(&self, from: IpAddr, now_ms: i64) {
        let from = source(from);
        let mut map = self.map();
        if map.len() >= MAX_SOURCES && !map.contains_key(&from) {
            map.retain(|_, (_, start)| now_ms - *start < WINDOW_MS);
            if map.len() >= MAX_SOURCES {
                // Still full of live windows: make room by dropping the oldest.
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(from).or_insert((0, now_ms));
        if now_ms - entry.1 >= WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }
}

/// The unit failures are counted by: an IPv4 address, or an IPv6 /64 (one host or site
/// usually holds a whole /64, and could otherwise guess from each of its addresses). An
/// IPv4-mapped IPv6 address counts as its IPv4 address.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_window_ends() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for i in 0..LIMIT {
            assert!(!t.blocked(a, 1_000 + i as i64));
            t.failed(a, 1_000 + i as i64);
        }
        assert!(t.blocked(a, 2_000));
        assert!(!t.blocked(b, 2_000), "other addresses are not affected");
        assert!(t.blocked(a, 1_000 + WINDOW_MS - 1));
        assert!(!t.blocked(a, 1_000 + WINDOW_MS));
        // A new window starts counting from zero.
        t.failed(a, 1_000 + WINDOW_MS);
        assert!(!t.blocked(a, 1_000 + WINDOW_MS + 1));
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let t = Throttle::default();
        for i in 0..LIMIT {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            t.failed(ip, 1_000);
        }
        assert!(t.blocked("2001:db8:1:2:ffff::9".parse().unwrap(), 1_001));
        assert!(!t.blocked("2001:db8:1:3::1".parse().unwrap(), 1_001));
        for _ in 0..LIMIT {
            t.failed("::ffff:10.0.0.3".parse().unwrap(), 1_000);
        }
        assert!(t.blocked("10.0.0.3".parse().unwrap(), 1_001));
    }

    #[test]
    fn the_map_stays_bounded() {
        let t = Throttle::default();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()), i as i64);
        }
        assert!(t.map().len() <= MAX_SOURCES);
    }
}
