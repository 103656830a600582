//! The connection to one broker: QUIC + TLS, the Hello handshake, one bidirectional stream per
//! request, transparent reconnection.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, Endpoint, ReadError, ReadToEndError, VarInt, WriteError};
use quiver_protocol::{
    decode_error, split_frame, Command, Request, Response, Status, PROTOCOL_VERSION,
};

use crate::error::ClientError;
use crate::tls::{quinn_client_config, Tls};

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
    /// Time allowed for the QUIC/TLS handshake; default 3 s.
    pub connect_timeout: Duration,
    /// Time allowed for one request (a long-poll pull gets its poll time on top); default 5 s.
    pub request_timeout: Duration,
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
        }
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
}

impl Conn {
    fn alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn limit(&self) -> usize {
        self.info.max_frame as usize + 8
    }
}

/// Packet counters of a connection, to tell a dead broker from a slow one.
#[derive(Clone, Copy)]
struct Traffic {
    sent: u64,
    acks: u64,
}

impl Traffic {
    fn of(conn: &Conn) -> Self {
        let s = conn.conn.stats();
        Traffic {
            sent: s.udp_tx.datagrams,
            acks: s.frame_rx.acks,
        }
    }
}

struct ConnectState {
    /// The last failed connection attempt, numbered when it finished: requests that were
    /// waiting for it get its error instead of trying again at once.
    last_error: Option<(u64, ClientError)>,
}

struct Inner {
    cfg: ClientConfig,
    endpoint: Endpoint,
    quic: quinn::ClientConfig,
    current: StdMutex<Option<Conn>>,
    connect_lock: tokio::sync::Mutex<ConnectState>,
    attempts: AtomicU64,
    generations: AtomicU64,
    closed: AtomicBool,
}

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
/// QUIC stream, so any number of requests can be in flight at once. When the connection is
/// lost (for example because the broker restarted), requests in flight fail with
/// [`ClientError::ConnectionLost`] and the next request reconnects, including the Hello
/// handshake, so a long-lived `Client` survives broker restarts.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.cfg.addr)
            .field("client_id", &self.inner.cfg.client_id)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Client {
    /// Connects to the broker and performs the Hello handshake. Must be called inside a
    /// tokio runtime.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let quic = quinn_client_config(&cfg.tls)?;
        let bind: SocketAddr = if cfg.addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = Endpoint::client(bind).map_err(|e| ClientError::Connect {
            addr: cfg.addr,
            reason: format!("cannot bind a UDP socket on {bind}: {e}"),
        })?;
        let client = Client::with_parts(cfg, endpoint, quic, false);
        client.connection().await?;
        Ok(client)
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
                connect_lock: tokio::sync::Mutex::new(ConnectState { last_error: None }),
                attempts: AtomicU64::new(0),
                generations: AtomicU64::new(0),
                closed: AtomicBool::new(closed),
            }),
        }
    }

    /// A client that is already closed (no network needed), for unit tests of code that
    /// fails before any request.
    #[cfg(test)]
    pub(crate) fn closed_for_tests() -> Client {
        let cfg = ClientConfig::new((Ipv4Addr::LOCALHOST, 9).into(), Tls::Insecure);
        let quic = quinn_client_config(&cfg.tls).expect("config");
        let endpoint = Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("endpoint");
        Client::with_parts(cfg, endpoint, quic, true)
    }

    /// The configuration this client was created with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// What the broker said in the last successful handshake (`None` before the first one).
    pub fn broker_info(&self) -> Option<BrokerInfo> {
        self.current().map(|c| c.info)
    }

    /// Sends a request and waits for its response, with the configured request timeout
    /// (plus the long-poll time for a [`Request::Pull`] with `long_poll_ms > 0`). A broker
    /// error status becomes [`ClientError::Broker`].
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let mut timeout = self.inner.cfg.request_timeout;
        if let Request::Pull { long_poll_ms, .. } = &request {
            timeout += Duration::from_millis(u64::from(*long_poll_ms));
        }
        self.request_with_timeout(request, timeout).await
    }

    /// Like [`Client::request`] with an explicit timeout for the exchange (connecting, when
    /// needed, has its own `connect_timeout` on top).
    pub async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let conn = self.connection().await?;
        let cmd = request.command();
        let frame = request.encode();
        self.check_frame_size(&conn, frame.len())?;
        self.run(&conn, timeout, exchange(&conn, cmd, frame)).await
    }

    /// Runs one exchange on `conn` within `timeout`; on failure, drops the connection if
    /// it is lost or the broker looks dead.
    async fn run<T>(
        &self,
        conn: &Conn,
        timeout: Duration,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let mut fut = pin!(fut);
        // Wait in two halves and judge liveness on the second one only, so ACKs for
        // earlier traffic that arrive just after the start do not hide a dead broker.
        let half = timeout / 2;
        let res = match tokio::time::timeout(half, &mut fut).await {
            Ok(r) => r,
            Err(_) => {
                let mid = Traffic::of(conn);
                match tokio::time::timeout(timeout - half, &mut fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.check_dead(conn, mid, timeout - half);
                        return Err(ClientError::Timeout(timeout));
                    }
                }
            }
        };
        if let Err(ClientError::ConnectionLost(_)) = &res {
            self.forget(conn);
        }
        res
    }

    /// After a timeout: if we sent packets during the last half of the wait (half a second
    /// or more) but the broker acknowledged none of them, the broker is gone without closing
    /// the connection (killed, or restarted and unaware of it; its stray packets don't count,
    /// only ACK frames that decrypt). Close the connection now so the next request
    /// reconnects, instead of waiting for the 30 s idle timeout.
    fn check_dead(&self, conn: &Conn, before: Traffic, waited: Duration) {
        let now = Traffic::of(conn);
        if waited >= Duration::from_millis(500) && now.sent > before.sent && now.acks == before.acks
        {
            tracing::warn!(
                addr = %self.inner.cfg.addr,
                "the broker acknowledged nothing for {waited:?}; dropping the connection"
            );
            conn.conn
                .close(VarInt::from_u32(CLOSE_CODE), b"broker unresponsive");
            self.forget(conn);
        }
    }

    /// Sends an already encoded request frame one-way, on its own unidirectional stream: no
    /// response comes back, and errors the broker finds are only logged there. Returns once
    /// the frame is written to the connection (not when the broker has processed it).
    pub async fn send_oneway_frame(&self, frame: Bytes) -> Result<(), ClientError> {
        let conn = self.connection().await?;
        self.check_frame_size(&conn, frame.len())?;
        let timeout = self.inner.cfg.request_timeout;
        let write = async {
            let mut send = conn.conn.open_uni().await.map_err(conn_lost)?;
            send.write_chunk(frame).await.map_err(write_err)?;
            send.finish()
                .map_err(|_| ClientError::Protocol("stream closed before finish".into()))?;
            Ok(())
        };
        self.run(&conn, timeout, write).await
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

    /// The live connection, connecting (with the handshake) when there is none.
    async fn connection(&self) -> Result<Conn, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if let Some(c) = self.current() {
            if c.alive() {
                return Ok(c);
            }
        }
        let seen = self.inner.attempts.load(Ordering::SeqCst);
        let mut state = self.inner.connect_lock.lock().await;
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if let Some(c) = self.current() {
            if c.alive() {
                return Ok(c);
            }
        }
        if let Some((attempt, e)) = &state.last_error {
            // An attempt finished after this request arrived, and failed: report that
            // instead of piling up one connect timeout per waiting request.
            if *attempt > seen {
                return Err(e.clone());
            }
        }
        let result = self.establish().await;
        // Numbered when done: requests that arrived during this attempt share its failure.
        let attempt = self.inner.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        match result {
            Ok(c) => {
                state.last_error = None;
                if let Ok(mut cur) = self.inner.current.lock() {
                    *cur = Some(c.clone());
                }
                Ok(c)
            }
            Err(e) => {
                state.last_error = Some((attempt, e.clone()));
                Err(e)
            }
        }
    }

    /// A new connection: QUIC + TLS handshake, then Hello.
    async fn establish(&self) -> Result<Conn, ClientError> {
        let cfg = &self.inner.cfg;
        let fail = |reason: String| ClientError::Connect {
            addr: cfg.addr,
            reason,
        };
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.quic.clone(), cfg.addr, &cfg.server_name)
            .map_err(|e| fail(e.to_string()))?;
        let conn = match tokio::time::timeout(cfg.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => {
                return Err(fail(format!(
                    "no QUIC handshake within {:?}",
                    cfg.connect_timeout
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
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client_id: cfg.client_id.clone(),
        };
        let resp = match tokio::time::timeout(
            cfg.request_timeout,
            exchange(&c, Command::Hello, hello.encode()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(cfg.request_timeout)),
        };
        match resp {
            Ok(Response::Hello {
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
                tracing::debug!(addr = %cfg.addr, broker = %c.info.broker, generation, "connected");
                Ok(c)
            }
            Ok(other) => {
                c.conn.close(VarInt::from_u32(CLOSE_CODE), b"bad hello");
                Err(ClientError::unexpected("Hello", &other))
            }
            Err(e) => {
                c.conn.close(VarInt::from_u32(CLOSE_CODE), b"hello failed");
                Err(match e {
                    // Keep the broker's verdict (e.g. UnsupportedVersion) as it is.
                    ClientError::Broker { .. } => e,
                    other => fail(format!("handshake failed: {other}")),
                })
            }
        }
    }
}

/// One request/response exchange on a fresh bidirectional stream.
async fn exchange(conn: &Conn, cmd: Command, frame: Bytes) -> Result<Response, ClientError> {
    let (mut send, mut recv) = conn.conn.open_bi().await.map_err(conn_lost)?;
    send.write_chunk(frame).await.map_err(write_err)?;
    send.finish()
        .map_err(|_| ClientError::Protocol("stream closed before finish".into()))?;
    let data = recv.read_to_end(conn.limit()).await.map_err(|e| match e {
        ReadToEndError::TooLong => ClientError::Protocol(format!(
            "response exceeds the broker's maximum frame of {} bytes",
            conn.info.max_frame
        )),
        ReadToEndError::Read(e) => read_err(conn, e),
    })?;
    decode_response(cmd, Bytes::from(data), conn.info.max_frame)
}

/// Decodes a whole response frame to a command.
pub(crate) fn decode_response(
    cmd: Command,
    frame: Bytes,
    max_frame: u32,
) -> Result<Response, ClientError> {
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
    Ok(Response::decode(cmd, body)?)
}

fn conn_lost(e: ConnectionError) -> ClientError {
    ClientError::ConnectionLost(e.to_string())
}

fn write_err(e: WriteError) -> ClientError {
    match e {
        WriteError::ConnectionLost(e) => conn_lost(e),
        WriteError::Stopped(code) => {
            ClientError::Protocol(format!("broker refused the request stream (code {code})"))
        }
        other => ClientError::Protocol(format!("cannot write the request: {other}")),
    }
}

fn read_err(conn: &Conn, e: ReadError) -> ClientError {
    match e {
        ReadError::ConnectionLost(e) => conn_lost(e),
        ReadError::Reset(code) => match conn.conn.close_reason() {
            Some(reason) => conn_lost(reason),
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
    use quiver_protocol::encode_error;

    #[test]
    fn responses_decode_statuses() {
        let ok = Response::Route { queues: 8 }.encode_chunks(Command::Route);
        let frame: Vec<u8> = ok.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(
            decode_response(
                Command::Route,
                Bytes::from(frame.clone()),
                DEFAULT_MAX_FRAME
            )
            .unwrap(),
            Response::Route { queues: 8 }
        );
        // Echoed command must match.
        assert!(matches!(
            decode_response(Command::Send, Bytes::from(frame), DEFAULT_MAX_FRAME),
            Err(ClientError::Protocol(_))
        ));
        let err = encode_error(Status::Busy, Command::Send as u16, "slow down");
        match decode_response(Command::Send, err, DEFAULT_MAX_FRAME) {
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
                decode_response(
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
    }

    #[tokio::test]
    async fn connect_to_nothing_fails_fast() {
        // Bind a UDP socket and never answer: the handshake must time out with Connect.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = ClientConfig::new(silent.local_addr().unwrap(), Tls::Insecure);
        cfg.connect_timeout = Duration::from_millis(200);
        let err = Client::connect(cfg).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    }
}
