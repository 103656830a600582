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
    /// HTTPS with the broker's certificate: `auto` (the default) when the listener is not on
    /// loopback, so passwords, session tokens and the admin token never cross a network in
    /// the clear; `on`; or `off` (plain HTTP, e.g. behind a TLS-terminating proxy).
    pub tls: AdminTls,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 10980)),
            token: None,
            tls: AdminTls::Auto,
        }
    }
}

impl AdminConfig {
    /// Whether the listener speaks HTTPS.
    pub fn https(&self) -> bool {
        match self.tls {
            AdminTls::On => true,
            AdminTls::Off => false,
            AdminTls::Auto => !self.listen.ip().is_loopback(),
        }
    }
}

/// `admin.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminTls {
    /// HTTPS unless the listener is on loopback.
    Auto,
    /// Always HTTPS.
    On,
    /// Always plain HTTP.
    Off,
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

/// Serves until `stop`: HTTPS when `tls` is given (see [`AdminConfig::https`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
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
        sessions: Arc::new(crate::console::Sessions::new()),
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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let listener = match tls {
        None => Guarded::Plain {
            inner: listener,
            slots,
            local,
        },
        Some(config) => Guarded::Tls {
            ready: handshakes(
                listener,
                tokio_rustls::TlsAcceptor::from(config),
                slots,
                stop.clone(),
            ),
            local,
        },
    };
    if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
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

/// Most HTTP connections the admin listener holds at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// How long an admin HTTP connection may send nothing while the listener waits for bytes
/// (a request's headers, or the next request) before it is closed.
pub const IDLE_READ: std::time::Duration = std::time::Duration::from_secs(20);

/// A connection of the admin listener: TCP, or TLS over TCP.
pub(crate) trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Conn for T {}

/// The admin listener with a connection cap and an idle-read deadline per connection, so a
/// client that opens connections and sends nothing (or a byte now and then) cannot hold
/// them all: axum's `serve` gives hyper no timer, so hyper's header-read timeout does not
/// apply.
enum Guarded {
    /// Plain HTTP: connections as accepted.
    Plain {
        inner: tokio::net::TcpListener,
        slots: Arc<tokio::sync::Semaphore>,
        local: SocketAddr,
    },
    /// HTTPS: connections whose TLS handshake finished ([`handshakes`]).
    Tls {
        ready: tokio::sync::mpsc::Receiver<(Deadline<Box<dyn Conn>>, SocketAddr)>,
        local: SocketAddr,
    },
}

impl axum::serve::Listener for Guarded {
    type Io = Deadline<Box<dyn Conn>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            Guarded::Plain { inner, slots, .. } => {
                let (slot, stream, addr) = accept_tcp(inner, slots).await;
                (Deadline::new(Box::new(stream), IDLE_READ, slot), addr)
            }
            Guarded::Tls { ready, .. } => match ready.recv().await {
                Some(conn) => conn,
                // The handshake task ended (shutdown): accept nothing more.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match self {
            Guarded::Plain { local, .. } | Guarded::Tls { local, .. } => Ok(*local),
        }
    }
}

/// Takes a connection slot, then accepts a TCP connection.
async fn accept_tcp(
    inner: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> (
    tokio::sync::OwnedSemaphorePermit,
    tokio::net::TcpStream,
    SocketAddr,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            // The semaphore is never closed.
            std::future::pending::<()>().await;
            continue;
        };
        match inner.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                return (slot, stream, addr);
            }
            // Out of file descriptors and the like: wait a little, as axum does.
            Err(e) => {
                tracing::debug!(error = %e, "admin listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts TCP connections and runs each one's TLS handshake in its own task (a client that
/// stalls its handshake delays nobody else, and is dropped after [`IDLE_READ`]), handing the
/// finished ones to the listener. Each holds its slot from the TCP accept on, so handshakes
/// in progress count against [`MAX_CONNECTIONS`] too.
fn handshakes(
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    slots: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) -> tokio::sync::mpsc::Receiver<(Deadline<Box<dyn Conn>>, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_CONNECTIONS);
    tokio::spawn(async move {
        loop {
            let (slot, stream, addr) = tokio::select! {
                c = accept_tcp(&inner, &slots) => c,
                () = stop.cancelled() => return,
                () = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(IDLE_READ, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn: Box<dyn Conn> = Box::new(tls);
                        let _ = tx.send((Deadline::new(conn, IDLE_READ, slot), addr)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "admin HTTPS handshake failed")
                    }
                    Err(_) => tracing::debug!(%addr, "admin HTTPS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The client's address, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Guarded>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, Guarded>) -> Self {
        Peer(*s.remote_addr())
    }
}

/// A stream whose reads fail with `TimedOut` after `idle` without a byte, holding its
/// listener slot until dropped.
pub(crate) struct Deadline<T> {
    io: T,
    idle: std::time::Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T> Deadline<T> {
    fn new(io: T, idle: std::time::Duration, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            io,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            _slot: slot,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Deadline<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.timer.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match std::future::Future::poll(self.timer.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "admin HTTP connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Deadline<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn https_is_the_default_off_loopback_only() {
        let at = |listen: &str, tls| AdminConfig {
            listen: listen.parse().unwrap(),
            tls,
            ..AdminConfig::default()
        };
        assert!(!AdminConfig::default().https());
        assert!(!at("[::1]:1", AdminTls::Auto).https());
        assert!(at("0.0.0.0:1", AdminTls::Auto).https());
        assert!(at("10.1.2.3:1", AdminTls::Auto).https());
        assert!(at("127.0.0.1:1", AdminTls::On).https());
        assert!(!at("0.0.0.0:1", AdminTls::Off).https());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_talking_one_does_not() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let (client, server) = tokio::io::duplex(64);
        let slot = slots.clone().try_acquire_owned().unwrap();
        let mut io = Deadline::new(server, IDLE_READ, slot);
        let mut client = client;
        // Bytes now and then keep it open past the deadline in total.
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::advance(IDLE_READ / 2).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails once the deadline passes.
        let err = tokio::time::timeout(IDLE_READ * 2, io.read(&mut buf))
            .await
            .expect("the read ends by itself at the deadline")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // The slot is held until the stream is dropped.
        assert!(slots.clone().try_acquire_owned().is_err());
        drop(io);
        assert!(slots.try_acquire_owned().is_ok());
    }
}
