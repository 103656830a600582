//! Console logins with the broker's users (docs/CONSOLE.md "Access"): `POST /api/login`
//! checks a user's password (argon2id, off the async threads, two at a time) and returns a
//! session token the page sends as `Authorization: Bearer <token>`. Each API request runs
//! with its [`Caller`] in a task-local, so every call the console makes through
//! [`crate::net::answer`] is checked against that user's rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ConsoleState};
use crate::auth::{Caller, Who};

/// How long a console login lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 1024;

tokio::task_local! {
    /// Who sends the API request being handled.
    pub(crate) static CALLER: Caller;
}

/// One console login.
struct Session {
    user: Arc<str>,
    /// Expiry, in the broker's clock.
    until: i64,
    /// The user's credentials when logging in ([`crate::auth::Auth::credential_stamp`]): a
    /// changed password, or a user deleted (and perhaps made again), ends the session.
    stamp: [u8; 32],
}

/// Logged-in console sessions by token.
pub(crate) struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    /// Password checks in progress (argon2id costs memory: at most two at once).
    checks: tokio::sync::Semaphore,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Self {
            by_token: Mutex::default(),
            checks: tokio::sync::Semaphore::new(2),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        match self.by_token.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The user of a live session token, whose credentials are still those it logged in
    /// with (`stamp` gives a user's current ones).
    pub(crate) fn user(
        &self,
        token: &str,
        now_ms: i64,
        stamp: impl Fn(&str) -> Option<[u8; 32]>,
    ) -> Option<Arc<str>> {
        let mut map = self.map();
        let s = map.get(token)?;
        if s.until > now_ms && stamp(&s.user) == Some(s.stamp) {
            return Some(s.user.clone());
        }
        map.remove(token);
        None
    }

    fn add(&self, user: Arc<str>, stamp: [u8; 32], now_ms: i64) -> (String, i64) {
        let token = quiver_protocol::text::hex(&quiver_protocol::scram::random::<32>());
        let until = now_ms + SESSION_MS;
        let mut map = self.map();
        map.retain(|_, s| s.until > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(t, _)| t.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(token.clone(), Session { user, until, stamp });
        (token, until)
    }

    fn remove(&self, token: &str) {
        self.map().remove(token);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    user: String,
    password: String,
}

/// `POST /api/login {user, password}` → `{token, user, expires_ms}`.
pub(crate) async fn login(
    State(s): State<ConsoleState>,
    axum::extract::ConnectInfo(crate::admin_http::Peer(from)): axum::extract::ConnectInfo<
        crate::admin_http::Peer,
    >,
    Json(b): Json<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    let failed = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "authentication failed: unknown user or wrong password",
        )
    };
    if b.user.len() > 255 || b.password.len() > 1024 {
        return Err(failed());
    }
    let _slot =
        s.sessions.checks.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ShuttingDown", "stopping")
        })?;
    let auth = s.broker.auth().clone();
    let user = b.user.clone();
    let checked =
        tokio::task::spawn_blocking(move || auth.check_password(&user, &b.password, from.ip()))
            .await
            .map_err(|_| failed())?;
    let stamp = match checked {
        // The stamp of the credentials the password matched: if they changed meanwhile, the
        // session is dead on its first use.
        Ok(stamp) => stamp,
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                e.message,
            ))
        }
    };
    let now = s.broker.clock().now_ms();
    let (token, until) = s.sessions.add(Arc::from(b.user.as_str()), stamp, now);
    Ok(Json(
        json!({ "token": token, "user": b.user, "expires_ms": until }),
    ))
}

/// `POST /api/logout`: ends the session whose token the request carries.
pub(crate) async fn logout(
    State(s): State<ConsoleState>,
    headers: axum::http::HeaderMap,
) -> Json<Value> {
    if let Some(t) = bearer(&headers) {
        s.sessions.remove(t);
    }
    Json(json!({ "ok": true }))
}

/// `GET /api/whoami` → `{user, auth}`: who the console acts as, and whether the broker
/// checks access (mode on and users exist).
pub(crate) async fn whoami(State(s): State<ConsoleState>) -> Json<Value> {
    let who = CALLER.try_with(|c| c.who.clone()).unwrap_or(Who::Anonymous);
    let user = match who {
        Who::User(u) => Some(u.to_string()),
        Who::AdminToken => Some("(admin token)".to_string()),
        _ => None,
    };
    Json(json!({ "user": user, "auth": s.broker.auth().enforced() }))
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller of the request being handled (anonymous outside the API's guard).
pub(crate) fn caller(fallback: std::net::SocketAddr) -> Caller {
    CALLER.try_with(Caller::clone).unwrap_or(Caller {
        who: Who::Anonymous,
        remote: fallback,
    })
}
