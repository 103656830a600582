//! The connection to one broker: QUIC + TLS, the Hello handshake, one bidirectional stream per
//! request, a liveness watchdog, and reconnection with back-off.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, Endpoint, ReadError, ReadToEndError, VarInt, WriteError};
use quiver_protocol::cmd::{decode_body, encode_request, Call, Hello, HelloReply};
use quiver_protocol::{
    decode_error, split_frame, Command, Request, Response, Status, PROTOCOL_VERSION,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::tls::{transport_config, Tls};

/// Largest response accepted before the broker has told its `max_frame` (16 MiB + 64 KiB).
pub const DEFAULT_MAX_FRAME: u32 = (16 << 20) + (64 << 10);

/// Application close code sent when the client closes its connection.
const CLOSE_CODE: u32 = 0;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address (UDP).
    pub addr: SocketAddr,
    /// Name the broker's certificate must be valid for (with [`Tls::CaFile`] /
    /// [`Tls::CaDer`]); default `"localhost"`.
    pub server_name: String,
    /// How the broker's certificate is verified.
    pub tls: Tls,
    /// A free-form id sent in the Hello handshake (shows in broker logs); default
    /// `quiver-client-<pid>-<random>`.
    pub client_id: String,
    /// Time allowed for one connection attempt's QUIC/TLS handshake; default 3 s.
    pub connect_timeout: Duration,
    /// Time allowed for one request, reconnecting included (a long-poll pull gets its poll
    /// time on top); default 5 s.
    pub request_timeout: Duration,
    /// The connection is declared dead, and closed, when the broker has acknowledged none of
    /// the packets sent to it for this long (at least two of them, so a lone ACK does not
    /// count): a broker killed or restarted without closing its connections is noticed this
    /// quickly instead of after the 30 s idle timeout. Requests in flight then fail with
    /// [`ClientError::ConnectionLost`] and the next request reconnects. An idle connection
    /// sends a keep-alive ping at this period (at most every 100 ms, at least every 5 s) so
    /// that the check also works between requests and under long polls. Default 3 s; zero
    /// turns the check off (then only the 30 s idle timeout ends a dead connection).
    pub liveness_timeout: Duration,
    /// Wait after the first failed reconnection attempt; it doubles after each further
    /// failure up to `reconnect_backoff_max`, and each wait is randomised between half and
    /// all of it so that many clients do not reconnect in step. Default 100 ms.
    pub reconnect_backoff: Duration,
    /// Longest wait between two reconnection attempts; default 5 s.
    pub reconnect_backoff_max: Duration,
    /// Log in with this user on every connection, right after Hello (docs/PROTOCOL.md
    /// §5.1); `None` (the default) for a broker that does not check access.
    pub credentials: Option<crate::auth::Credentials>,
    /// Present this TLS client certificate: a broker with `auth.client_ca` logs the
    /// connection in as the user the certificate names, without a password. Default none.
    pub certificate: Option<crate::tls::ClientCertificate>,
}

impl ClientConfig {
    /// A configuration with the defaults for everything but the address and TLS settings.
    pub fn new(addr: SocketAddr, tls: Tls) -> Self {
        Self {
            addr,
            server_name: "localhost".into(),
            tls,
            client_id: format!(
                "quiver-client-{}-{:08x}",
                std::process::id(),
                crate::message::MessageId::new().0 as u32 ^ (crate::message::now_ms() as u32)
            ),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(3),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            credentials: None,
            certificate: None,
        }
    }
}

/// A handshake failure in words people can act on: a certificate the client does not trust
/// is named as such, with what to do (rustls says `BadSignature`, `UnknownIssuer`, ...).
fn explain_tls(reason: &str) -> String {
    let certificate = [
        "BadSignature",
        "UnknownIssuer",
        "invalid peer certificate",
        "NotValidForName",
        "certificate",
    ]
    .iter()
    .any(|k| reason.contains(k));
    if certificate {
        format!(
            "the broker's certificate is not the one this client trusts ({reason}): the broker \
             runs with another certificate than the --ca file or --fingerprint given (it may have \
             generated a new one in a new data directory); use the certificate it prints at start \
             (its data directory's tls/cert.pem, or the sha256 fingerprint)"
        )
    } else {
        reason.to_string()
    }
}

/// The broker port when an address names none (RocketMQ's 10911).
pub const DEFAULT_PORT: u16 = 10911;

/// Resolves a broker address as the `quiver` CLI does: `IP:PORT`, `HOST:PORT`
/// (`localhost:10911`), or an IP or host name alone (port [`DEFAULT_PORT`]). Host names are
/// looked up with the system resolver (blocking).
pub fn resolve_broker(s: &str) -> Result<SocketAddr, ClientError> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = match s.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => s.to_string(),
        _ => format!("{s}:{DEFAULT_PORT}"),
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| ClientError::invalid(format!("cannot resolve the broker address {s:?}: {e}")))?
        .next()
        .ok_or_else(|| {
            ClientError::invalid(format!("the broker address {s:?} resolves to nothing"))
        })
}

impl ClientConfig {
    /// The connection the `quiver` CLI would make, from the same environment: the broker at
    /// `broker` when given (e.g. a command-line argument), else `QUIVER_BROKER` (the first of
    /// a comma-separated list), else `127.0.0.1:10911`, resolved by [`resolve_broker`]; TLS
    /// pinned to `QUIVER_FINGERPRINT` when set, else trusting the CA file `QUIVER_CA`, else
    /// the local broker's own certificate `quiver-data/tls/cert.pem`. It logs in as
    /// `QUIVER_USER` with `QUIVER_PASSWORD` when both are set, else with the credentials
    /// file `QUIVER_CREDENTIALS` when set, and presents the client certificate
    /// `QUIVER_CLIENT_CERT` with its key `QUIVER_CLIENT_KEY` when both are set.
    pub fn from_env(broker: Option<&str>) -> Result<ClientConfig, ClientError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let broker = broker
            .map(str::to_string)
            .or_else(|| env("QUIVER_BROKER"))
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
        let first = broker.split(',').next().unwrap_or_default();
        let addr = resolve_broker(first)?;
        let tls = match (env("QUIVER_FINGERPRINT"), env("QUIVER_CA")) {
            (Some(fp), _) => Tls::fingerprint_from_hex(&fp)?,
            (None, Some(ca)) => Tls::CaFile(ca.into()),
            (None, None) => Tls::CaFile("quiver-data/tls/cert.pem".into()),
        };
        let mut cfg = ClientConfig::new(addr, tls);
        cfg.credentials = match (
            crate::auth::Credentials::from_env(),
            env("QUIVER_CREDENTIALS"),
        ) {
            (Some(c), _) => Some(c),
            (None, Some(file)) => Some(crate::auth::Credentials::from_file(file.as_ref())?),
            (None, None) => None,
        };
        if let (Some(cert), Some(key)) = (env("QUIVER_CLIENT_CERT"), env("QUIVER_CLIENT_KEY")) {
            cfg.certificate = Some(crate::tls::ClientCertificate {
                cert: cert.into(),
                key: key.into(),
            });
        }
        Ok(cfg)
    }
}

/// What the broker said in the Hello handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Protocol version the broker speaks.
    pub version: u16,
    /// Broker name.
    pub broker: String,
    /// Largest message body the broker accepts.
    pub max_message_size: u32,
    /// Largest frame the broker accepts (and sends).
    pub max_frame: u32,
}

/// One live, handshaken connection.
#[derive(Clone)]
struct Conn {
    conn: quinn::Connection,
    info: BrokerInfo,
    /// Increases with every new connection (to invalidate only the one that failed).
    generation: u64,
    /// Why this client closed the connection itself (the liveness verdict), for the errors
    /// of the requests that were in flight.
    verdict: Arc<OnceLock<String>>,
}

impl Conn {
    fn alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn limit(&self) -> usize {
        self.info.max_frame as usize + 8
    }

    /// The error of a request whose connection went away.
    fn lost(&self, e: ConnectionError) -> ClientError {
        match (&e, self.verdict.get()) {
            (ConnectionError::LocallyClosed, Some(why)) => ClientError::ConnectionLost(why.clone()),
            _ => ClientError::ConnectionLost(e.to_string()),
        }
    }
}

/// Frames received on a connection (every frame counted here was decrypted, so it came from
/// the broker that holds the connection's keys; a restarted broker's stray packets do not
/// count).
fn frames_received(s: &quinn::ConnectionStats) -> u64 {
    let f = &s.frame_rx;
    [
        f.acks,
        f.ack_frequency,
        f.crypto,
        f.connection_close,
        f.data_blocked,
        f.datagram,
        u64::from(f.handshake_done),
        f.immediate_ack,
        f.max_data,
        f.max_stream_data,
        f.max_streams_bidi,
        f.max_streams_uni,
        f.new_connection_id,
        f.new_token,
        f.path_challenge,
        f.path_response,
        f.ping,
        f.reset_stream,
        f.retire_connection_id,
        f.stream_data_blocked,
        f.streams_blocked_bidi,
        f.streams_blocked_uni,
        f.stop_sending,
        f.stream,
    ]
    .iter()
    .fold(0u64, |a, b| a.wrapping_add(*b))
}

/// The liveness verdict on a connection, from its packet counters sampled over time: dead
/// when at least two datagrams were sent since the broker's last frame arrived and that has
/// lasted `timeout` (counted from the sample that first saw the second one). One unanswered
/// datagram is not enough: it may be an ACK, which the broker does not acknowledge. A live
/// broker acknowledges at once (the client asks for immediate ACKs), so this only fires
/// when nothing comes back: the broker was killed, restarted (its new process cannot
/// decrypt the old connection's packets), or the network is cut.
#[derive(Debug)]
struct Liveness {
    timeout: Duration,
    /// Frames received at the last sample where that count changed.
    rx: u64,
    /// Datagrams sent at that sample.
    tx_at_rx: u64,
    /// The first sample that saw two or more datagrams unanswered.
    since: Option<Instant>,
}

impl Liveness {
    fn new(timeout: Duration, rx: u64, tx: u64) -> Self {
        Self {
            timeout,
            rx,
            tx_at_rx: tx,
            since: None,
        }
    }

    /// Takes a sample; true when the broker must be considered dead.
    fn observe(&mut self, now: Instant, rx: u64, tx: u64) -> bool {
        if rx != self.rx {
            self.rx = rx;
            self.tx_at_rx = tx;
            self.since = None;
            return false;
        }
        if tx.saturating_sub(self.tx_at_rx) < 2 {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= self.timeout
    }
}

/// Watches one connection until it closes; closes it when [`Liveness`] says the broker is
/// gone.
async fn watchdog(conn: Conn, timeout: Duration, addr: SocketAddr) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let stats = conn.conn.stats();
    let mut live = Liveness::new(timeout, frames_received(&stats), stats.udp_tx.datagrams);
    loop {
        tokio::select! {
            _ = conn.conn.closed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let s = conn.conn.stats();
        if live.observe(Instant::now(), frames_received(&s), s.udp_tx.datagrams) {
            let why = format!("the broker acknowledged nothing for {timeout:?}");
            tracing::warn!(%addr, generation = conn.generation, "{why}; dropping the connection");
            let _ = conn.verdict.set(why);
            conn.conn
                .close(VarInt::from_u32(CLOSE_CODE), b"broker unresponsive");
            return;
        }
    }
}

/// The keep-alive period for a liveness timeout: the timeout itself, between 100 ms and the
/// transport's default 5 s.
fn keep_alive_interval(liveness_timeout: Duration) -> Duration {
    liveness_timeout.clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// The wait before the next attempt after `failures` failed ones (1 or more): `base`
/// doubled per further failure, capped at `max`, then scaled into [half, all] of it by
/// `unit` (a random number in [0, 1]).
fn backoff(failures: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(30));
    let wait = doubled.min(max);
    wait / 2 + wait.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A random number in [0, 1] (from the std hasher's random keys; good enough for jitter).
fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(crate::message::MessageId::new().0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The reconnection state, behind the connect lock.
struct ConnectState {
    /// Failed attempts since the last successful one.
    failures: u32,
    /// No attempt before this instant (the back-off).
    not_before: Option<Instant>,
}

struct Inner {
    cfg: ClientConfig,
    endpoint: Endpoint,
    quic: quinn::ClientConfig,
    current: StdMutex<Option<Conn>>,
    /// Serialises connection attempts: one at a time, shared by every waiting request.
    connect_lock: tokio::sync::Mutex<ConnectState>,
    /// The error of the last failed attempt (readable without the connect lock).
    last_error: StdMutex<Option<ClientError>>,
    generations: AtomicU64,
    /// The generation of the newest connection (0 before the first).
    generation_tx: watch::Sender<u64>,
    closed: AtomicBool,
    /// The last salted password computed (salt, costs, key): reconnections skip argon2id.
    salted: StdMutex<Option<Salted>>,
}

type Salted = (
    [u8; quiver_protocol::cmd::SALT_LEN],
    quiver_protocol::scram::Params,
    [u8; quiver_protocol::cmd::KEY_LEN],
);

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut cur) = self.current.lock() {
            if let Some(c) = cur.take() {
                c.conn
                    .close(VarInt::from_u32(CLOSE_CODE), b"client dropped");
            }
        }
    }
}

/// A connection to one broker, shared by producers, consumers and admin calls.
///
/// Cloning is cheap (an `Arc`); all clones share the connection. Every request uses its own
/// QUIC stream, so any number of requests can be in flight at once.
///
/// **Surviving broker restarts.** A watchdog closes the connection when the broker stops
/// acknowledging packets for [`ClientConfig::liveness_timeout`] (a broker killed with
/// `kill -9`, or restarted, never closes its connections). Requests in flight on a lost
/// connection fail with [`ClientError::ConnectionLost`] (the broker may or may not have
/// processed them). The next request reconnects, with the Hello handshake, inside its own
/// timeout: attempts are made one at a time for all waiting requests, the first at once,
/// then after a back-off ([`ClientConfig::reconnect_backoff`], doubling up to
/// [`ClientConfig::reconnect_backoff_max`], randomised). A request still without a
/// connection at its deadline fails with the last attempt's error (usually
/// [`ClientError::Unreachable`]); a broker that stays down therefore never makes a request
/// hang longer than its timeout, and the next request tries again. Each new connection
/// bumps [`Client::generation`]; [`Client::subscribe_generation`] lets long-lived users (the
/// [`crate::PushConsumer`]) notice it and re-register.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.cfg.addr)
            .field("client_id", &self.inner.cfg.client_id)
            .field("generation", &self.generation())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// A client endpoint on a UDP socket with the shared buffer sizes
/// ([`quiver_protocol::transport::udp_socket`]).
fn bind_endpoint(bind: SocketAddr) -> std::io::Result<Endpoint> {
    let (socket, _granted) = quiver_protocol::transport::udp_socket(bind)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

impl Client {
    /// Connects to the broker and performs the Hello handshake (one attempt, within
    /// `connect_timeout` + `request_timeout`). Must be called inside a tokio runtime.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let limit = cfg.connect_timeout + cfg.request_timeout;
        let client = Client::lazy(cfg)?;
        let conn = client.establish(Instant::now() + limit).await?;
        client.install(conn);
        Ok(client)
    }

    /// A client that connects on its first request instead of now (the same reconnection
    /// and back-off as after a lost connection); fails only when no UDP socket can be bound.
    /// Must be called inside a tokio runtime.
    pub fn lazy(cfg: ClientConfig) -> Result<Client, ClientError> {
        let mut quic = crate::tls::quinn_client_config_with(&cfg.tls, cfg.certificate.as_ref())?;
        if !cfg.liveness_timeout.is_zero() {
            // An idle connection pings this often, so a dead broker is noticed even when no
            // request is in flight (or only a long poll, which sends nothing while it waits).
            let mut transport = transport_config();
            transport.keep_alive_interval(Some(keep_alive_interval(cfg.liveness_timeout)));
            quic.transport_config(Arc::new(transport));
        }
        let bind: SocketAddr = if cfg.addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = bind_endpoint(bind).map_err(|e| ClientError::Connect {
            addr: cfg.addr,
            reason: format!("cannot bind a UDP socket on {bind}: {e}"),
        })?;
        Ok(Client::with_parts(cfg, endpoint, quic, false))
    }

    fn with_parts(
        cfg: ClientConfig,
        endpoint: Endpoint,
        quic: quinn::ClientConfig,
        closed: bool,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                cfg,
                endpoint,
                quic,
                current: StdMutex::new(None),
                connect_lock: tokio::sync::Mutex::new(ConnectState {
                    failures: 0,
                    not_before: None,
                }),
                last_error: StdMutex::new(None),
                generations: AtomicU64::new(0),
                generation_tx: watch::channel(0).0,
                closed: AtomicBool::new(closed),
                salted: StdMutex::new(None),
            }),
        }
    }

    /// A client that is already closed (no network needed), for unit tests of code that
    /// fails before any request.
    #[cfg(test)]
    pub(crate) fn closed_for_tests() -> Client {
        let cfg = ClientConfig::new((Ipv4Addr::LOCALHOST, 9).into(), Tls::Insecure);
        let quic = crate::tls::quinn_client_config(&cfg.tls).expect("config");
        let endpoint = Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("endpoint");
        Client::with_parts(cfg, endpoint, quic, true)
    }

    /// The QUIC statistics of the current connection (packets, losses, congestion events,
    /// round-trip time, frames by type), for diagnostics; `None` when there is no connection.
    pub fn transport_stats(&self) -> Option<quinn::ConnectionStats> {
        self.current().map(|c| c.conn.stats())
    }

    /// The configuration this client was created with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// What the broker said in the last successful handshake (`None` when there is no
    /// connection right now).
    pub fn broker_info(&self) -> Option<BrokerInfo> {
        self.current().map(|c| c.info)
    }

    /// The generation of the current connection: 1 after [`Client::connect`], higher after
    /// every reconnection (it increases with every connection whose QUIC handshake
    /// succeeded).
    pub fn generation(&self) -> u64 {
        *self.inner.generation_tx.borrow()
    }

    /// A receiver that sees [`Client::generation`] change on every reconnection (the broker
    /// may have restarted: whatever it kept per connection or in memory is gone).
    pub fn subscribe_generation(&self) -> watch::Receiver<u64> {
        self.inner.generation_tx.subscribe()
    }

    /// Sends one command and waits for its typed reply, with the configured request timeout
    /// plus the time the broker may park it ([`Call::wait_ms`], e.g. a long-poll
    /// [`quiver_protocol::cmd::Pull`]). A broker error status becomes
    /// [`ClientError::Broker`].
    ///
    /// ```no_run
    /// # async fn demo(client: quiver_client::Client) -> Result<(), quiver_client::ClientError> {
    /// use quiver_client::quiver_protocol::cmd::TopicList;
    /// for t in client.call(TopicList).await?.topics {
    ///     println!("{} ({} queues)", t.name, t.queues);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call<C: Call>(&self, c: C) -> Result<C::Reply, ClientError> {
        let timeout = self.timeout_for(c.wait_ms());
        self.call_with_timeout(c, timeout).await
    }

    /// Like [`Client::call`] with an explicit timeout for the whole call: reconnecting when
    /// there is no connection, then the exchange.
    pub async fn call_with_timeout<C: Call>(
        &self,
        c: C,
        timeout: Duration,
    ) -> Result<C::Reply, ClientError> {
        let body = self
            .round_trip(C::COMMAND, encode_request(&c), timeout)
            .await?;
        Ok(decode_body(body)?)
    }

    /// Sends any request and waits for its response, with the configured request timeout
    /// plus the time the broker may park it ([`Request::wait_ms`]). A broker error status
    /// becomes [`ClientError::Broker`]. For a reply of a known type, [`Client::call`] is
    /// simpler.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let timeout = self.timeout_for(request.wait_ms());
        self.request_with_timeout(request, timeout).await
    }

    /// Like [`Client::request`] with an explicit timeout for the whole call: reconnecting
    /// when there is no connection, then the exchange.
    pub async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let cmd = request.command();
        let body = self.round_trip(cmd, request.encode(), timeout).await?;
        Ok(Response::decode(cmd, body)?)
    }

    /// The request timeout plus a broker-side wait of `wait_ms`.
    fn timeout_for(&self, wait_ms: u32) -> Duration {
        self.inner.cfg.request_timeout + Duration::from_millis(u64::from(wait_ms))
    }

    /// Sends a request frame for `cmd` and returns the body of its successful response,
    /// within `timeout` (reconnecting included).
    async fn round_trip(
        &self,
        cmd: Command,
        frame: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let deadline = Instant::now() + timeout;
        let conn = self.connection(deadline).await?;
        self.check_frame_size(&conn, frame.len())?;
        self.run(&conn, deadline, timeout, exchange(&conn, cmd, frame))
            .await
    }

    /// Runs one exchange on `conn` until `deadline`; forgets the connection when it is lost.
    async fn run<T>(
        &self,
        conn: &Conn,
        deadline: Instant,
        timeout: Duration,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let res = match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        if let Err(ClientError::ConnectionLost(_)) = &res {
            self.forget(conn);
        }
        res
    }

    /// Sends an already encoded request frame one-way, on its own unidirectional stream: no
    /// response comes back, and errors the broker finds are only logged there. Returns once
    /// the frame is written to the connection (not when the broker has processed it), within
    /// the request timeout (reconnecting included).
    pub async fn send_oneway_frame(&self, frame: Bytes) -> Result<(), ClientError> {
        let timeout = self.inner.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        let conn = self.connection(deadline).await?;
        self.check_frame_size(&conn, frame.len())?;
        let write = async {
            let mut send = conn.conn.open_uni().await.map_err(|e| conn.lost(e))?;
            send.write_chunk(frame)
                .await
                .map_err(|e| write_err(&conn, e))?;
            send.finish()
                .map_err(|_| ClientError::Protocol("stream closed before finish".into()))?;
            Ok(())
        };
        self.run(&conn, deadline, timeout, write).await
    }

    /// Closes the connection and the local endpoint. Requests in flight fail; later calls
    /// on this client or any of its clones fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let conn = self.inner.current.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = conn {
            c.conn.close(VarInt::from_u32(CLOSE_CODE), b"client closed");
        }
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_CODE), b"client closed");
        // Let the close frame go out, but never hang on an unresponsive broker.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    /// True once [`Client::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn check_frame_size(&self, conn: &Conn, len: usize) -> Result<(), ClientError> {
        if len > conn.info.max_frame as usize + 4 {
            return Err(ClientError::invalid(format!(
                "request of {len} bytes exceeds the broker's maximum frame of {} bytes",
                conn.info.max_frame
            )));
        }
        Ok(())
    }

    fn current(&self) -> Option<Conn> {
        self.inner.current.lock().ok().and_then(|c| c.clone())
    }

    /// The cached connection when it is alive; `Closed` once the client is closed.
    fn live(&self) -> Result<Option<Conn>, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        Ok(self.current().filter(Conn::alive))
    }

    /// Drops the cached connection if it is still `conn` (a newer one is kept).
    fn forget(&self, conn: &Conn) {
        if let Ok(mut cur) = self.inner.current.lock() {
            if cur
                .as_ref()
                .is_some_and(|c| c.generation == conn.generation)
            {
                *cur = None;
            }
        }
    }

    /// Makes `conn` the current connection, starts its watchdog and announces its generation.
    fn install(&self, conn: Conn) {
        let generation = conn.generation;
        let timeout = self.inner.cfg.liveness_timeout;
        if !timeout.is_zero() {
            tokio::spawn(watchdog(conn.clone(), timeout, self.inner.cfg.addr));
        }
        if let Ok(mut cur) = self.inner.current.lock() {
            *cur = Some(conn);
        }
        self.inner.generation_tx.send_replace(generation);
    }

    /// The error for a request that reached its deadline without a connection.
    fn no_connection(&self) -> ClientError {
        self.inner
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| ClientError::Unreachable {
                addr: self.inner.cfg.addr,
                reason: "no connection before the request's deadline".into(),
            })
    }

    /// The live connection; when there is none, reconnects (with the handshake) until
    /// `deadline`, one attempt at a time for all waiting requests, with back-off between
    /// failed attempts. A non-retryable failure (certificate rejected, Hello refused) is
    /// returned at once.
    async fn connection(&self, deadline: Instant) -> Result<Conn, ClientError> {
        if let Some(c) = self.live()? {
            return Ok(c);
        }
        let Ok(mut state) = tokio::time::timeout_at(deadline, self.inner.connect_lock.lock()).await
        else {
            return Err(self.no_connection());
        };
        loop {
            if let Some(c) = self.live()? {
                return Ok(c);
            }
            if let Some(at) = state.not_before {
                if at >= deadline {
                    return Err(self.no_connection());
                }
                tokio::time::sleep_until(at).await;
                if let Some(c) = self.live()? {
                    return Ok(c);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.no_connection());
            }
            match self.establish(deadline).await {
                Ok(c) => {
                    state.failures = 0;
                    state.not_before = None;
                    if let Ok(mut e) = self.inner.last_error.lock() {
                        *e = None;
                    }
                    if c.generation > 1 {
                        tracing::info!(addr = %self.inner.cfg.addr, generation = c.generation, "reconnected");
                    }
                    self.install(c.clone());
                    return Ok(c);
                }
                Err(_) if self.is_closed() => return Err(ClientError::Closed),
                Err(e) => {
                    state.failures = state.failures.saturating_add(1);
                    let cfg = &self.inner.cfg;
                    let wait = backoff(
                        state.failures,
                        cfg.reconnect_backoff,
                        cfg.reconnect_backoff_max,
                        random_unit(),
                    );
                    state.not_before = Some(Instant::now() + wait);
                    tracing::debug!(addr = %cfg.addr, failures = state.failures, error = %e, "connection attempt failed; next in {wait:?}");
                    if let Ok(mut last) = self.inner.last_error.lock() {
                        *last = Some(e.clone());
                    }
                    if !e.is_retryable() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A new connection: QUIC + TLS handshake (within `connect_timeout`), then Hello
    /// (within `request_timeout`), all before `deadline`.
    async fn establish(&self, deadline: Instant) -> Result<Conn, ClientError> {
        let cfg = &self.inner.cfg;
        let addr = cfg.addr;
        let fail = |reason: String| ClientError::Connect { addr, reason };
        let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.quic.clone(), addr, &cfg.server_name)
            .map_err(|e| fail(e.to_string()))?;
        let started = Instant::now();
        let limit = (started + cfg.connect_timeout).min(deadline);
        let conn = match tokio::time::timeout_at(limit, connecting).await {
            Ok(Ok(c)) => c,
            // No answer at all: the broker is down or restarting (or the network is cut).
            Ok(Err(e @ (ConnectionError::TimedOut | ConnectionError::Reset))) => {
                return Err(unreachable(e.to_string()))
            }
            // At its connection limit (many clients reconnecting at once): try again later.
            Ok(Err(ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                return Err(unreachable(format!(
                    "the broker refused the connection: {c}"
                )))
            }
            Ok(Err(e)) => return Err(fail(explain_tls(&e.to_string()))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no QUIC handshake within {:?}",
                    limit.duration_since(started)
                )))
            }
        };
        let generation = self.inner.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let mut c = Conn {
            conn,
            info: BrokerInfo {
                version: 0,
                broker: String::new(),
                max_message_size: 0,
                max_frame: DEFAULT_MAX_FRAME,
            },
            generation,
            verdict: Arc::default(),
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client_id: cfg.client_id.clone(),
        };
        let limit = (Instant::now() + cfg.request_timeout).min(deadline);
        let resp = match tokio::time::timeout_at(
            limit,
            exchange(&c, Hello::COMMAND, encode_request(&hello)),
        )
        .await
        {
            Ok(r) => r.and_then(|body| Ok(decode_body::<HelloReply>(body)?)),
            Err(_) => Err(ClientError::Timeout(cfg.request_timeout)),
        };
        match resp {
            Ok(HelloReply {
                version,
                broker,
                max_message_size,
                max_frame,
            }) => {
                c.info = BrokerInfo {
                    version,
                    broker,
                    max_message_size,
                    // A broker announcing less than a header's worth is broken: keep the default.
                    max_frame: if max_frame < 64 {
                        DEFAULT_MAX_FRAME
                    } else {
                        max_frame
                    },
                };
                if let Some(cred) = &cfg.credentials {
                    if let Err(e) = self.login(&c, cred, deadline).await {
                        c.conn.close(VarInt::from_u32(CLOSE_CODE), b"login failed");
                        return Err(e);
                    }
                }
                tracing::debug!(addr = %cfg.addr, broker = %c.info.broker, generation, "connected");
                Ok(c)
            }
            Err(e) => {
                c.conn.close(VarInt::from_u32(CLOSE_CODE), b"hello failed");
                Err(match e {
                    // Keep the broker's verdict (e.g. UnsupportedVersion, ShuttingDown) as it is.
                    ClientError::Broker { .. } => e,
                    // Lost or unanswered: the broker went away during the handshake.
                    e if e.is_retryable() => unreachable(format!("handshake failed: {e}")),
                    other => fail(format!("handshake failed: {other}")),
                })
            }
        }
    }
}

impl Client {
    /// The password handshake on a new connection (after Hello).
    async fn login(
        &self,
        c: &Conn,
        cred: &crate::auth::Credentials,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        use quiver_protocol::cmd::{AuthFinish, AuthFinishReply, AuthStart, AuthStartReply};
        let timeout = self.inner.cfg.request_timeout;
        let step = |cmd, frame| async move {
            let limit = (Instant::now() + timeout).min(deadline);
            match tokio::time::timeout_at(limit, exchange(c, cmd, frame)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout(timeout)),
            }
        };
        let hs = crate::auth::Handshake::new(&cred.user);
        let body = step(AuthStart::COMMAND, encode_request(hs.start())).await?;
        let challenge = decode_body::<AuthStartReply>(body)?;
        let params = crate::auth::challenge_params(&challenge)?;
        let cached = match self.inner.salted.lock() {
            Ok(g) => g
                .filter(|(salt, p, _)| *salt == challenge.salt && *p == params)
                .map(|(_, _, key)| key),
            Err(_) => None,
        };
        let salted = match cached {
            Some(k) => k,
            None => {
                let (password, salt) = (cred.password().to_string(), challenge.salt);
                let key = tokio::task::spawn_blocking(move || {
                    quiver_protocol::scram::salted_password(&password, &salt, params)
                })
                .await
                .map_err(|e| ClientError::Protocol(format!("password hashing failed: {e}")))?
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if let Ok(mut g) = self.inner.salted.lock() {
                    *g = Some((salt, params, key));
                }
                key
            }
        };
        let proof = hs.prove(&challenge, salted);
        let body = step(AuthFinish::COMMAND, encode_request(&proof.finish)).await?;
        proof.check(&decode_body::<AuthFinishReply>(body)?)
    }
}

/// One request/response exchange on a fresh bidirectional stream: the body of the successful
/// response to `cmd` (see [`response_body`]).
async fn exchange(conn: &Conn, cmd: Command, frame: Bytes) -> Result<Bytes, ClientError> {
    let (mut send, mut recv) = conn.conn.open_bi().await.map_err(|e| conn.lost(e))?;
    send.write_chunk(frame)
        .await
        .map_err(|e| write_err(conn, e))?;
    send.finish()
        .map_err(|_| ClientError::Protocol("stream closed before finish".into()))?;
    let data = recv.read_to_end(conn.limit()).await.map_err(|e| match e {
        ReadToEndError::TooLong => ClientError::Protocol(format!(
            "response exceeds the broker's maximum frame of {} bytes",
            conn.info.max_frame
        )),
        ReadToEndError::Read(e) => read_err(conn, e),
    })?;
    response_body(cmd, Bytes::from(data), conn.info.max_frame)
}

/// Checks a whole response frame to `cmd`: the body of a successful response (for the
/// caller to decode), the broker's error for an error status, a protocol error for a
/// malformed frame or one answering another command.
fn response_body(cmd: Command, frame: Bytes, max_frame: u32) -> Result<Bytes, ClientError> {
    let (header, body) = split_frame(&frame, max_frame.saturating_add(4))?;
    // An error about an unreadable request header cannot name the command: it echoes 0.
    let is_error = header.code != Status::Ok as u16;
    if header.aux != cmd as u16 && !(is_error && header.aux == 0) {
        return Err(ClientError::Protocol(format!(
            "response is for command {}, expected {}",
            header.aux, cmd as u16
        )));
    }
    if is_error {
        return Err(ClientError::Broker {
            status: Status::from_u16(header.code),
            message: decode_error(body),
        });
    }
    Ok(body)
}

fn write_err(conn: &Conn, e: WriteError) -> ClientError {
    match e {
        WriteError::ConnectionLost(e) => conn.lost(e),
        WriteError::Stopped(code) => {
            ClientError::Protocol(format!("broker refused the request stream (code {code})"))
        }
        other => ClientError::Protocol(format!("cannot write the request: {other}")),
    }
}

fn read_err(conn: &Conn, e: ReadError) -> ClientError {
    match e {
        ReadError::ConnectionLost(e) => conn.lost(e),
        ReadError::Reset(code) => match conn.conn.close_reason() {
            Some(reason) => conn.lost(reason),
            None => {
                ClientError::Protocol(format!("broker reset the response stream (code {code})"))
            }
        },
        other => ClientError::Protocol(format!("cannot read the response: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_protocol::cmd::RouteReply;
    use quiver_protocol::encode_error;

    #[test]
    fn responses_decode_statuses() {
        let ok = Response::Route(RouteReply { queues: 8 }).encode_chunks();
        let frame: Vec<u8> = ok.iter().flat_map(|b| b.iter().copied()).collect();
        let body = response_body(
            Command::Route,
            Bytes::from(frame.clone()),
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        assert_eq!(
            decode_body::<RouteReply>(body.clone()).unwrap(),
            RouteReply { queues: 8 }
        );
        assert_eq!(
            Response::decode(Command::Route, body).unwrap(),
            Response::Route(RouteReply { queues: 8 })
        );
        // Echoed command must match.
        assert!(matches!(
            response_body(Command::Send, Bytes::from(frame), DEFAULT_MAX_FRAME),
            Err(ClientError::Protocol(_))
        ));
        let err = encode_error(Status::Busy, Command::Send as u16, "slow down");
        match response_body(Command::Send, err, DEFAULT_MAX_FRAME) {
            Err(e @ ClientError::Broker { .. }) => {
                assert!(e.is_retryable());
                assert_eq!(
                    e,
                    ClientError::Broker {
                        status: Status::Busy,
                        message: "slow down".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        for junk in [&b""[..], b"\x02\0\0\0", b"\xff\xff\xff\xff\0\0\x02\0"] {
            assert!(matches!(
                response_body(
                    Command::Route,
                    Bytes::copy_from_slice(junk),
                    DEFAULT_MAX_FRAME
                ),
                Err(ClientError::Protocol(_))
            ));
        }
    }

    #[test]
    fn config_defaults() {
        let cfg = ClientConfig::new("127.0.0.1:10911".parse().unwrap(), Tls::Insecure);
        assert_eq!(cfg.server_name, "localhost");
        assert_eq!(cfg.connect_timeout, Duration::from_secs(3));
        assert_eq!(cfg.request_timeout, Duration::from_secs(5));
        assert!(cfg.client_id.starts_with("quiver-client-"));
        assert_eq!(cfg.liveness_timeout, Duration::from_secs(3));
        assert_eq!(cfg.reconnect_backoff, Duration::from_millis(100));
        assert_eq!(cfg.reconnect_backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let ms = |failures, unit| backoff(failures, base, max, unit).as_millis();
        // Lowest (unit 0) and highest (unit 1) waits per failure count.
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (50, 100));
        assert_eq!((ms(2, 0.0), ms(2, 1.0)), (100, 200));
        assert_eq!((ms(3, 0.0), ms(3, 1.0)), (200, 400));
        assert_eq!((ms(6, 0.0), ms(6, 1.0)), (1600, 3200));
        assert_eq!((ms(7, 0.0), ms(7, 1.0)), (2500, 5000));
        assert_eq!((ms(1000, 0.0), ms(u32::MAX, 1.0)), (2500, 5000));
        assert_eq!(ms(2, 0.5), 150);
        // Out-of-range randomness is clamped.
        assert_eq!(ms(1, 7.0), 100);
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..=1.0).contains(&u), "{u}");
        }
        let spread: std::collections::HashSet<u128> = (0..20)
            .map(|_| backoff(3, base, max, random_unit()).as_micros())
            .collect();
        assert!(spread.len() > 1, "jitter varies");
    }

    #[test]
    fn liveness_needs_two_unanswered_datagrams_for_the_whole_timeout() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Liveness::new(Duration::from_secs(1), 10, 100);
        // Quiet connection: nothing sent, nothing received.
        assert!(!l.observe(at(5_000), 10, 100));
        // One datagram (an ACK) unanswered for ever is not a verdict.
        assert!(!l.observe(at(6_000), 10, 101));
        assert!(!l.observe(at(60_000), 10, 101));
        // A request after that long quiet spell: the clock starts now, not at the ACK.
        assert!(!l.observe(at(60_100), 10, 102));
        // The broker answers in time: all forgotten.
        assert!(!l.observe(at(60_300), 12, 103));
        assert!(!l.observe(at(61_500), 12, 103));
        // A request and its retransmissions go unanswered: dead after the timeout.
        assert!(!l.observe(at(62_000), 12, 105));
        assert!(!l.observe(at(62_500), 12, 107));
        assert!(!l.observe(at(62_999), 12, 108));
        assert!(l.observe(at(63_000), 12, 108));
        // A frame arriving resets the verdict.
        assert!(!l.observe(at(63_100), 13, 108));
        assert!(!l.observe(at(63_200), 13, 110));
        assert!(!l.observe(at(64_100), 13, 111));
        assert!(l.observe(at(64_200), 13, 111));
    }

    #[tokio::test]
    async fn connect_to_nothing_fails_fast() {
        // Bind a UDP socket and never answer: the handshake must time out with Connect.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = ClientConfig::new(silent.local_addr().unwrap(), Tls::Insecure);
        cfg.connect_timeout = Duration::from_millis(200);
        let err = Client::connect(cfg).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.is_retryable());
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn broker_addresses_resolve_as_the_cli_resolves_them() {
        let a = |s: &str| resolve_broker(s).unwrap();
        assert_eq!(a("127.0.0.1:4000"), "127.0.0.1:4000".parse().unwrap());
        assert_eq!(a("127.0.0.1"), "127.0.0.1:10911".parse().unwrap());
        assert_eq!(a("[::1]:4000"), "[::1]:4000".parse().unwrap());
        assert_eq!(a("::1"), "[::1]:10911".parse().unwrap());
        assert!(a("localhost:4000").ip().is_loopback());
        assert_eq!(a("localhost:4000").port(), 4000);
        assert_eq!(a("localhost").port(), 10911);
        assert!(resolve_broker("no such host.invalid:1").is_err());
        let c = ClientConfig::from_env(Some("localhost:4001,other:1")).unwrap();
        assert_eq!(c.addr.port(), 4001);
    }
}
