//! The web console (the job of RocketMQ Dashboard): one page, embedded in the binary, and the
//! JSON API under `/api` it is built on, both on the admin HTTP listener (docs/CONSOLE.md).
//!
//! Every API call becomes the protocol request a QUIC client would send and is answered by
//! [`crate::net::answer`], so the console, the CLI and the SDK get the same answers and the
//! same checks (on a cluster node, topic changes go through the controller). Who may call
//! the API is [`guard`]'s business.

mod api;
mod login;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::auth::Who;
use crate::broker::{Broker, BrokerError};
use crate::cluster::Member;

pub(crate) use api::api_routes;
pub(crate) use login::Sessions;

/// What the console's handlers share.
#[derive(Clone)]
pub(crate) struct ConsoleState {
    pub(crate) broker: Arc<Broker>,
    pub(crate) member: Option<Arc<Member>>,
    /// The listener's own address (the "remote" of requests the console makes).
    pub(crate) local: SocketAddr,
    /// The admin token (`admin.token`), if one is configured.
    pub(crate) token: Option<Arc<str>>,
    /// Fires at shutdown (parked requests answer early).
    pub(crate) stop: CancellationToken,
    /// Console logins with the broker's users.
    pub(crate) sessions: Arc<login::Sessions>,
}

impl ConsoleState {
    /// True when the listener accepts only this machine's connections.
    fn loopback(&self) -> bool {
        self.local.ip().is_loopback()
    }
}

/// The broker's status: the console's overview and the BrokerStatus command's reply
/// (`quiver admin broker status`); fields in docs/CONSOLE.md and docs/PROTOCOL.md.
pub(crate) async fn status(
    b: &Broker,
    member: Option<&Arc<Member>>,
) -> Result<serde_json::Value, BrokerError> {
    use quiver_protocol::{cmd, names, Request, Response};
    use serde_json::json;
    let g = b.gauges().await;
    let m = b.metrics();
    let now = b.clock().now_ms();
    let role = match (member, b.store().is_replica()) {
        (None, _) => "standalone",
        (Some(_), true) => "slave",
        (Some(_), false) => "master",
    };
    let local = b.listen_addr();
    let topics = match b.handle(Request::TopicList(cmd::TopicList), local).await? {
        Response::TopicList(t) => t.topics,
        _ => Vec::new(),
    };
    let groups = match b.handle(Request::GroupList(cmd::GroupList), local).await? {
        Response::GroupList(g) => g.groups,
        _ => Vec::new(),
    };
    let controller = member.and_then(|node| node.controller()).map(|c| {
        let i = c.info();
        json!({ "cluster": i.cluster_id, "node": i.node_id, "term": i.term, "leader": i.leader })
    });
    let cfg = b.config();
    Ok(json!({
        "broker": cfg.broker.name,
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("QUIVER_GIT_COMMIT"),
        "protocol": quiver_protocol::PROTOCOL_VERSION,
        "role": role,
        "listen": local.to_string(),
        "flush": format!("{:?}", cfg.store.flush_mode).to_lowercase(),
        "replication": member.map(|_| format!("{:?}", b.replicas().policy()).to_lowercase()),
        "max_message_bytes": cfg.store.max_message_size,
        "now_ms": now,
        "started_ms": b.started_ms(),
        "uptime_seconds": (now - b.started_ms()).max(0) / 1000,
        "totals": m.totals(),
        "connections": m.open_connections(),
        "long_polls_parked": m.parked_pulls(),
        "scheduled_pending": g.scheduled_pending,
        "unresolved_transactions": g.unresolved_transactions,
        "disk_used_ratio": g.disk_used_ratio,
        "disk_full": g.disk_full,
        "log_bytes": g.log_bytes,
        "topics": topics.iter().filter(|t| !names::is_system_topic(&t.name)).count(),
        "groups": groups.len(),
        "plugins": g.plugins.len(),
        "dlq_messages": g.dlq.iter().map(|(_, n)| n).sum::<u64>(),
        "slaves": g.slaves.iter().map(|s| json!({
            "node": s.node, "lag_bytes": s.lag_bytes,
            "lag_messages": s.lag_messages, "in_sync": s.in_sync,
        })).collect::<Vec<_>>(),
        "controller": controller,
    }))
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The page and its assets.
pub(crate) fn page_routes() -> Router<ConsoleState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // The page runs only its own script and talks only to this listener.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// An API error: an HTTP status and a JSON body `{"error": text, "status": name}`, where
/// `status` is the protocol status name (docs/PROTOCOL.md §5) or a console reason.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: StatusCode,
    status: String,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: StatusCode, status: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            status: status.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        use quiver_protocol::Status as S;
        let status = e.status();
        let code = match status {
            S::TopicNotFound
            | S::QueueNotFound
            | S::GroupNotFound
            | S::NotFound
            | S::PluginNotFound
            | S::UserNotFound => StatusCode::NOT_FOUND,
            S::AccessDenied => StatusCode::FORBIDDEN,
            S::AuthenticationFailed => StatusCode::UNAUTHORIZED,
            S::TopicExists | S::PluginExists | S::GroupOnline | S::PluginInUse | S::UserExists => {
                StatusCode::CONFLICT
            }
            S::Busy
            | S::DiskFull
            | S::StoreUnavailable
            | S::ShuttingDown
            | S::NotMaster
            | S::NoController
            | S::ControllerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            S::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            code,
            status: format!("{status:?}"),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(serde_json::json!({ "error": self.message, "status": self.status })),
        )
            .into_response()
    }
}

/// Makes every error the API answers JSON, also those axum gives for a body, path or query
/// that does not parse (they come as plain text).
pub(crate) async fn json_errors(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let code = resp.status();
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let status = if code == StatusCode::PAYLOAD_TOO_LARGE {
        "TooLarge"
    } else {
        "BadRequest"
    };
    ApiError::new(code, status, text).into_response()
}

/// Who may use the API (docs/CONSOLE.md "Access"):
/// - on a loopback listener, anyone on this machine, but only under a loopback host name
///   (a page from another site that rebinds its name to 127.0.0.1 is refused), and changes
///   only from this console's own pages (a cross-site form or script is refused by `Origin`);
/// - on any other address, only requests carrying `Authorization: Bearer <admin.token>`;
///   without a token configured the API refuses everything (the page still loads and says
///   so). `/metrics` is not behind this guard.
pub(crate) async fn guard(
    State(s): State<ConsoleState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let now = s.broker.clock().now_ms();
    let auth = s.broker.auth();
    let session = login::bearer(req.headers())
        .and_then(|t| s.sessions.user(t, now, |u| auth.credential_stamp(u)));
    let who = check_access(
        s.loopback(),
        s.token.as_deref(),
        session,
        req.method() == Method::POST && matches!(req.uri().path(), "/login" | "/api/login"),
        req.method(),
        req.headers(),
    )?;
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::admin_http::Peer>>()
        .map_or(s.local, |c| (c.0).0);
    let caller = crate::auth::Caller { who, remote };
    Ok(login::CALLER.scope(caller, next.run(req)).await)
}

/// Who a request is from, or why it is refused (see [`guard`]): `session` is the user of a
/// live console login whose token the request carries.
fn check_access(
    loopback: bool,
    token: Option<&str>,
    session: Option<Arc<str>>,
    login_path: bool,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Who, ApiError> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header(header::HOST).unwrap_or("");
    let change = !matches!(*method, Method::GET | Method::HEAD);
    if change {
        if let Some(origin) = header(header::ORIGIN) {
            let same = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host));
            if !same {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("a change from another site ({origin}) is refused"),
                ));
            }
        }
    }
    if loopback && !loopback_host(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the console on a loopback listener answers only to localhost, 127.0.0.1 or [::1]",
        ));
    }
    if let Some(given) = login::bearer(headers) {
        if token.is_some_and(|t| same_secret(given.as_bytes(), t.as_bytes())) {
            return Ok(Who::AdminToken);
        }
        if let Some(user) = session {
            return Ok(Who::User(user));
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the Authorization token is neither the admin token nor a live console login: \
             log in again",
        ));
    }
    if loopback || login_path {
        return Ok(Who::Anonymous);
    }
    if token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the admin listener is not on loopback: log in with a broker user, or set \
             admin.token (QUIVER_ADMIN__TOKEN) to use the console from another machine",
        ));
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this console needs a login (a broker user) or the admin token \
         (Authorization: Bearer <admin.token>)",
    ))
}

/// `localhost`, `127.0.0.1`, `[::1]` (or any 127.x address), with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares two secrets in time that does not depend on where they differ (their SHA-256
/// digests are compared).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{digest, SHA256};
    let (x, y) = (digest(&SHA256, a), digest(&SHA256, b));
    x.as_ref()
        .iter()
        .zip(y.as_ref())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:10980",
            "127.0.0.1:1",
            "127.0.0.9",
            "[::1]:80",
            "LOCALHOST:1",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example:10980",
            "10.0.0.1:80",
            "[::2]:1",
            "localhost.evil",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn access_rules() {
        let get = Method::GET;
        let post = Method::POST;
        let check = |loopback, token, session: Option<&str>, method: &Method, h: &HeaderMap| {
            check_access(loopback, token, session.map(Arc::from), false, method, h)
        };
        let local = headers(&[("host", "127.0.0.1:10980")]);
        // Loopback: anyone on the machine, changes only from the same origin.
        assert_eq!(
            check(true, None, None, &get, &local).unwrap(),
            Who::Anonymous
        );
        assert!(check(true, None, None, &post, &local).is_ok());
        let same = headers(&[("host", "localhost:1"), ("origin", "http://localhost:1")]);
        assert!(check(true, None, None, &post, &same).is_ok());
        let cross = headers(&[("host", "localhost:1"), ("origin", "http://evil.example")]);
        assert_eq!(
            check(true, None, None, &post, &cross).unwrap_err().code,
            StatusCode::FORBIDDEN
        );
        let rebound = headers(&[("host", "evil.example")]);
        assert!(check(true, None, None, &get, &rebound).is_err());
        // Elsewhere: the token or a login, for reads and changes alike.
        let remote = headers(&[("host", "10.0.0.5:10980")]);
        let e = check(false, None, None, &get, &remote).unwrap_err();
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert!(e.message.contains("admin.token"), "{}", e.message);
        let e = check(false, Some("s3cret"), None, &get, &remote).unwrap_err();
        assert_eq!(e.code, StatusCode::UNAUTHORIZED);
        let wrong = headers(&[("host", "10.0.0.5:10980"), ("authorization", "Bearer nope")]);
        assert!(check(false, Some("s3cret"), None, &post, &wrong).is_err());
        let right = headers(&[
            ("host", "10.0.0.5:10980"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert_eq!(
            check(false, Some("s3cret"), None, &get, &right).unwrap(),
            Who::AdminToken
        );
        assert!(check(false, Some("s3cret"), None, &post, &right).is_ok());
        // A live console login (the guard found the token's session).
        assert_eq!(
            check(false, None, Some("alice"), &get, &wrong).unwrap(),
            Who::User(Arc::from("alice"))
        );
        // The login form itself needs no token.
        assert_eq!(
            check_access(false, None, None, true, &post, &remote).unwrap(),
            Who::Anonymous
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"", b"abc"));
    }
}
