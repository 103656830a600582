//! The admin HTTP listener, off the QUIC port: `GET /metrics` in the Prometheus text format
//! (docs/OPERATIONS.md) and the web console with its JSON API under `/api` (src/console,
//! docs/CONSOLE.md). It listens on 127.0.0.1 unless configured otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::cluster::Member;
use crate::console::ConsoleState;

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/metrics` and the console over HTTP.
    pub enabled: bool,
    /// TCP address of the listener; loopback by default (port 0: any free port, printed).
    pub listen: SocketAddr,
    /// The admin token the console's API asks for when the listener is not on loopback
    /// (`Authorization: Bearer <token>`); without one, such a listener serves `/metrics`
    /// and refuses the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 10980)),
            token: None,
        }
    }
}

/// Binds the listener (an error names the address and what to change).
pub async fn bind(cfg: &AdminConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for admin HTTP on {}: {e} (set admin.listen to a free address, or \
             admin.enabled = false)",
                cfg.listen
            )
        })
}

/// Serves until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    member: Option<Arc<Member>>,
    token: Option<String>,
    stop: CancellationToken,
) {
    let Ok(local) = listener.local_addr() else {
        tracing::error!("admin HTTP listener has no local address");
        return;
    };
    // Requests are bounded by what a QUIC request may carry (a plugin upload in base64
    // is a third larger), and are buffered only as their bytes arrive.
    let body_limit = (broker.config().broker.max_frame_bytes as usize).saturating_mul(4) / 3 + 4096;
    let state = ConsoleState {
        broker,
        member,
        local,
        token: token.filter(|t| !t.is_empty()).map(Arc::from),
        stop: stop.clone(),
    };
    let api = crate::console::api_routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::console::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(crate::console::json_errors));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .merge(crate::console::page_routes())
        .nest("/api", api)
        .with_state(state);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
    {
        tracing::error!(error = %e, "admin HTTP listener failed");
    }
}

async fn metrics(State(s): State<ConsoleState>) -> impl IntoResponse {
    let mut g = s.broker.gauges().await;
    if let Some(c) = s.member.as_ref().and_then(|m| m.controller()) {
        let info = c.info();
        g.controller = Some(crate::metrics::ControllerGauge {
            term: info.term,
            leader: info.leader,
            is_leader: info.leader == info.node_id,
        });
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.broker.metrics().render(&g),
    )
}

/// Where the listener ended up (for port 0).
pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
