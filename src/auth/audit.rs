//! The audit log (docs/SECURITY.md §9): one line, on the tracing target `quiver::audit`, for
//! every login, failed login, refused request and allowed change (a request that needs
//! `create`, `update`, `delete`, `plugin` or `admin`), naming who, from where, the command
//! and what it touched. Cluster nodes' own requests are not logged.
//!
//! A client that sends refused requests (or wrong passwords, or logs in again and again) in a
//! loop must not fill the disk with log lines: at most [`LINES_PER_SECOND`] refusal and
//! failed-login lines, and as many login and allowed-change lines, are written per second (by
//! the broker's clock); the rest are counted and reported in one WARN line when the next
//! line of that kind is written. The two budgets are apart, so a flood of refusals, which
//! anybody can send, cannot hide logins and changes.

use std::net::IpAddr;
use std::sync::Mutex;

use super::{Caller, Who};

/// Audit lines written per second at most.
pub(crate) const LINES_PER_SECOND: u32 = 100;

/// The tracing target of audit lines (filter with `RUST_LOG=quiver::audit=info`).
pub const TARGET: &str = "quiver::audit";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A change was allowed.
    Allowed,
    /// A request was refused.
    Denied,
    /// A login succeeded.
    LoggedIn,
    /// A login failed.
    LoginFailed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::LoggedIn => "logged-in",
            Outcome::LoginFailed => "login-failed",
        }
    }
}

/// One audit event.
pub(crate) struct Event<'a> {
    pub(crate) outcome: Outcome,
    /// The user (or how the caller is known: `anonymous`, `admin-token`).
    pub(crate) who: &'a str,
    pub(crate) from: IpAddr,
    /// The command (`TopicCreate`, `AuthFinish`, `console-login`...).
    pub(crate) command: &'a str,
    /// What it touched (`topic:orders, group:billing`), or empty.
    pub(crate) resources: &'a str,
    /// Why it was refused, or empty.
    pub(crate) reason: &'a str,
}

/// The per-second line budgets: one for refusals and failed logins, one for logins and
/// allowed changes.
#[derive(Default)]
pub(crate) struct Audit {
    /// Per budget: (second, lines written in it, lines suppressed since the last report).
    windows: [Mutex<(i64, u32, u64)>; 2],
}

impl Audit {
    /// Writes `e` while this second's budget for its kind lasts; `now_ms` is the broker's
    /// clock.
    pub(crate) fn record(&self, now_ms: i64, e: &Event<'_>) {
        let budget = match e.outcome {
            Outcome::Denied | Outcome::LoginFailed => 0,
            Outcome::Allowed | Outcome::LoggedIn => 1,
        };
        let suppressed = {
            let mut w = self.windows[budget]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let second = now_ms.div_euclid(1000);
            if w.0 != second {
                w.0 = second;
                w.1 = 0;
            }
            if w.1 >= LINES_PER_SECOND {
                w.2 += 1;
                return;
            }
            w.1 += 1;
            std::mem::take(&mut w.2)
        };
        if suppressed > 0 {
            tracing::warn!(
                target: TARGET,
                suppressed,
                "audit lines dropped: more than {LINES_PER_SECOND} a second"
            );
        }
        // Names from the wire are quoted and escaped ({:?}), so they cannot forge lines.
        tracing::info!(
            target: TARGET,
            outcome = e.outcome.name(),
            who = ?e.who,
            from = %e.from,
            command = e.command,
            resources = ?e.resources,
            reason = ?e.reason,
            "audit"
        );
    }
}

/// How a caller appears in the audit log.
pub(crate) fn who(caller: &Caller) -> &str {
    match &caller.who {
        Who::Anonymous => "anonymous",
        Who::Member => "cluster-member",
        Who::AdminToken => "admin-token",
        Who::User(name) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_budget_are_counted_not_written() {
        let audit = Audit::default();
        let e = Event {
            outcome: Outcome::Denied,
            who: "mallory",
            from: IpAddr::from([10, 0, 0, 9]),
            command: "TopicDelete",
            resources: "topic:orders",
            reason: "no",
        };
        for _ in 0..LINES_PER_SECOND + 25 {
            audit.record(5_000, &e);
        }
        let refusals = || *audit.windows[0].lock().unwrap();
        assert_eq!(refusals(), (5, LINES_PER_SECOND, 25));
        // Allowed changes have their own budget: refusals do not crowd them out.
        let allowed = Event {
            outcome: Outcome::Allowed,
            ..e
        };
        audit.record(5_500, &allowed);
        assert_eq!(*audit.windows[1].lock().unwrap(), (5, 1, 0));
        assert_eq!(refusals(), (5, LINES_PER_SECOND, 25));
        // The next second writes again, and reports what was dropped (the count resets).
        audit.record(6_001, &e);
        assert_eq!(refusals(), (6, 1, 0));
    }
}
