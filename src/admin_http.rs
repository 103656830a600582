//! The admin HTTP listener, off the QUIC port: `GET /metrics` in the Prometheus text format
//! (docs/OPERATIONS.md). It listens on 127.0.0.1 unless configured otherwise, and serves
//! only reads.

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

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/metrics` (and, later, the console) over HTTP.
    pub enabled: bool,
    /// TCP address of the listener; loopback by default (port 0: any free port, printed).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 10980)),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    broker: Arc<Broker>,
    member: Option<Arc<Member>>,
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
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(AdminState { broker, member });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin HTTP listener failed");
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Quiver admin listener: GET /metrics (Prometheus text format; docs/OPERATIONS.md)\n",
    )
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
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
