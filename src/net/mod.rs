//! QUIC front door: TLS identity, the accept loop, one task per connection and per stream.
//! One request per bidirectional stream (docs/PROTOCOL.md explains why); one-way sends on
//! unidirectional streams. Frames are length-capped and read with a deadline; a malformed frame
//! gets an error response and never takes the broker down. Knows nothing of the store.

pub mod peer;
mod routing;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_protocol::{
    encode_error, Command, FrameError, FrameHeader, Request, Status, FRAME_HEADER, PROTOCOL_VERSION,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::auth::perm::{self, Resource};
use crate::auth::{Caller, Who};
use crate::broker::{Broker, BrokerError};
use crate::cluster::Member;

/// Transport settings tuned for request/response traffic (docs/PROTOCOL.md §2.2), the same
/// definition the client uses.
pub use quiver_protocol::transport::transport_config;

/// Says once when the kernel granted a smaller UDP receive buffer than asked for: bursts
/// then overflow it and show as loss-recovery stalls (docs/PROTOCOL.md §2.2).
fn warn_small_udp_buffer(granted: usize) {
    let want = quiver_protocol::transport::UDP_BUFFER_BYTES;
    if granted < want {
        warn!(
            granted,
            wanted = want,
            "the UDP receive buffer is smaller than asked for; raise net.core.rmem_max (and \
             net.core.wmem_max) to at least the wanted size for full throughput"
        );
    }
}

/// A bound, listening QUIC endpoint.
pub struct Listener {
    endpoint: quinn::Endpoint,
    identity: Arc<tls::Identity>,
    cluster: Option<Arc<Member>>,
    /// Sorts presented client certificates into cluster nodes and users (replaced when
    /// `auth.client_crl` changes).
    peers: Arc<std::sync::RwLock<Arc<tls::PeerCheck>>>,
    /// The configuration the TLS settings were built from (to rebuild them).
    cfg: crate::config::Config,
    /// SHA-256 fingerprint of the certificate, for clients to pin.
    pub fingerprint: String,
    /// The certificate file (clients can use it as a CA file).
    pub cert_path: std::path::PathBuf,
}

impl Listener {
    /// Binds the configured address with the broker's TLS identity.
    pub fn bind(cfg: &crate::config::Config) -> anyhow::Result<Self> {
        let id = tls::load_or_generate(cfg)?;
        let server = tls::server_config(&id, cfg)?;
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        endpoint_cfg.reset_key(Arc::new(tls::stateless_reset_key(&id)));
        let cid_key = tls::connection_id_key(&id);
        endpoint_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let listen = cfg.broker.listen;
        let endpoint = quiver_protocol::transport::udp_socket(listen)
            .and_then(|(socket, granted)| {
                warn_small_udp_buffer(granted);
                let runtime = quinn::default_runtime()
                    .ok_or_else(|| std::io::Error::other("no async runtime"))?;
                quinn::Endpoint::new(endpoint_cfg, Some(server), socket, runtime)
            })
            .map_err(|e| anyhow::anyhow!("cannot listen on udp {listen}: {e}"))?;
        Ok(Self {
            endpoint,
            fingerprint: id.fingerprint.clone(),
            cert_path: id.cert_path.clone(),
            identity: Arc::new(id),
            cluster: None,
            peers: Arc::new(std::sync::RwLock::new(Arc::new(tls::PeerCheck::new(cfg)?))),
            cfg: cfg.clone(),
        })
    }

    /// The client this node reaches its cluster peers with (its own identity, the cluster's
    /// roots).
    pub fn peer_transport(
        &self,
        cfg: &crate::config::Config,
    ) -> anyhow::Result<Arc<peer::QuicPeers>> {
        peer::QuicPeers::new(cfg, &self.identity)
    }

    /// The admin listener's HTTPS configuration, with this broker's certificate.
    pub fn https_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        tls::https_config(&self.identity)
    }

    /// Answers cluster commands through `member` (before [`Listener::serve`]).
    pub fn set_cluster(&mut self, member: Arc<Member>) {
        self.cluster = Some(member);
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Re-reads `auth.client_crl` (at `path`) whenever it changes, checked every
    /// `auth.client_crl_check_ms`: new connections are then checked against the new lists
    /// (connections already open stay). A list that does not parse is logged and the
    /// previous ones stay in force.
    fn reload_crls(
        &self,
        path: std::path::PathBuf,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (endpoint, identity, peers, cfg) = (
            self.endpoint.clone(),
            self.identity.clone(),
            self.peers.clone(),
            self.cfg.clone(),
        );
        let every = Duration::from_millis(cfg.auth.client_crl_check_ms.max(10));
        async move {
            let digest = |path: std::path::PathBuf| async move {
                let bytes = tokio::fs::read(&path).await.ok()?;
                Some(
                    ring::digest::digest(&ring::digest::SHA256, &bytes)
                        .as_ref()
                        .to_vec(),
                )
            };
            let mut seen = digest(path.clone()).await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = digest(path.clone()).await;
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                let (id, c) = (identity.clone(), cfg.clone());
                let built = tokio::task::spawn_blocking(move || {
                    Ok::<_, anyhow::Error>((tls::server_config(&id, &c)?, tls::PeerCheck::new(&c)?))
                })
                .await;
                match built {
                    Ok(Ok((server, check))) => {
                        endpoint.set_server_config(Some(server));
                        *peers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(check);
                        info!(path = %path.display(), "reloaded auth.client_crl");
                    }
                    Ok(Err(e)) => warn!(
                        path = %path.display(),
                        error = %format!("{e:#}"),
                        "auth.client_crl changed but does not load; the previous lists stay in force"
                    ),
                    Err(e) => warn!(error = %e, "reloading auth.client_crl failed"),
                }
            }
        }
    }

    /// Accepts connections until `shutdown`, then closes the endpoint after in-flight
    /// requests finish (bounded by `grace`).
    pub async fn serve(self, broker: Arc<Broker>, shutdown: CancellationToken) {
        let limits = broker.limits();
        let conns = Arc::new(Semaphore::new(limits.max_connections as usize));
        let request_bytes = Arc::new(Semaphore::new(limits.request_bytes));
        let requests = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        // Stops with the accept loop, however it ends.
        let reloading = shutdown.child_token();
        let _stop_reloading = reloading.clone().drop_guard();
        if let Some(path) = self.cfg.auth.client_crl.clone() {
            tokio::spawn(self.reload_crls(path, reloading));
        }
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                incoming.refuse();
                continue;
            };
            let broker = broker.clone();
            let stop = requests.clone();
            let budget = Budget {
                connection: Arc::new(Semaphore::new(limits.connection_request_bytes)),
                broker: request_bytes.clone(),
                wait: Duration::from_millis(limits.busy_timeout_ms),
            };
            let remote = incoming.remote_address();
            let cluster = self.cluster.clone();
            let peers = self.peers.read().unwrap_or_else(|p| p.into_inner()).clone();
            tracker.spawn(
                async move {
                    let _permit = permit;
                    match incoming.await {
                        Ok(conn) => {
                            serve_connection(conn, broker, stop, budget, cluster, &peers).await
                        }
                        Err(e) => debug!(error = %e, "handshake failed"),
                    }
                }
                .instrument(tracing::info_span!("conn", %remote)),
            );
        }
        // Stop accepting; let in-flight requests finish, then close every connection.
        info!("no longer accepting connections; finishing in-flight requests");
        tracker.close();
        let grace = Duration::from_millis(limits.shutdown_grace_ms);
        requests.cancel();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!("some requests did not finish within the shutdown grace period");
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), SHUTDOWN_REASON);
        // Peers that vanished never acknowledge the close: do not wait for them.
        if tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("some connections were still closing after 2 s");
        }
    }
}

/// Per-connection state shared by its streams.
struct Session {
    remote: SocketAddr,
    hello: AtomicBool,
    /// The node's part in its cluster, when it is in one.
    cluster: Option<Arc<Member>>,
    /// The peer presented a certificate that chains to the cluster's roots (the TLS layer
    /// refused any other): a cluster member.
    member: bool,
    /// Request-buffer budgets: this connection's and the whole broker's.
    budget: Budget,
    /// The password handshake's state and the user logged in (src/auth).
    login: std::sync::Mutex<crate::auth::Login>,
}

impl Session {
    /// Who sends this connection's requests.
    fn caller(&self) -> Caller {
        let who = if self.member {
            Who::Member
        } else {
            match self.login.lock() {
                Ok(l) => l.user().cloned().map_or(Who::Anonymous, Who::User),
                Err(p) => p
                    .into_inner()
                    .user()
                    .cloned()
                    .map_or(Who::Anonymous, Who::User),
            }
        };
        Caller {
            who,
            remote: self.remote,
        }
    }

    fn login(&self) -> std::sync::MutexGuard<'_, crate::auth::Login> {
        match self.login.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        }
    }
}

/// Bytes of request buffers that may be held at once, per connection and in the whole broker.
/// A request takes from both as its bytes arrive (never by the length it claims) and gives
/// them back when it has been handled.
#[derive(Clone)]
struct Budget {
    connection: Arc<Semaphore>,
    broker: Arc<Semaphore>,
    /// How long a request waits for room before it is answered `Busy`.
    wait: Duration,
}

/// Buffer bytes a request holds in both budgets; returned on drop.
#[derive(Default)]
struct Held {
    connection: Option<OwnedSemaphorePermit>,
    broker: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn bytes(&self) -> usize {
        self.connection.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Takes `n` more bytes from the connection's budget, then the broker's (always in this
    /// order, so two requests cannot each hold what the other waits for across budgets).
    async fn grow(&mut self, n: usize, budget: &Budget) -> Result<(), ()> {
        let n = u32::try_from(n).map_err(|_| ())?;
        let take = async {
            let c = budget.connection.clone().acquire_many_owned(n).await;
            let b = budget.broker.clone().acquire_many_owned(n).await;
            match (c, b) {
                (Ok(c), Ok(b)) => Ok((c, b)),
                _ => Err(()),
            }
        };
        let (c, b) = tokio::time::timeout(budget.wait, take)
            .await
            .map_err(|_| ())??;
        merge(&mut self.connection, c);
        merge(&mut self.broker, b);
        Ok(())
    }
}

fn merge(slot: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match slot {
        Some(held) => held.merge(p),
        None => *slot = Some(p),
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    broker: Arc<Broker>,
    stop: CancellationToken,
    budget: Budget,
    cluster: Option<Arc<Member>>,
    peers: &tls::PeerCheck,
) {
    let presented = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map_or(tls::PeerCert::None, |chain| peers.classify(&chain));
    let member = cluster.is_some() && presented == tls::PeerCert::Member;
    let login = match &presented {
        tls::PeerCert::User(user) => {
            broker
                .auth()
                .audit_login(true, user, conn.remote_address().ip(), "client-certificate");
            crate::auth::Login::by_certificate(user)
        }
        _ => crate::auth::Login::default(),
    };
    let session = Arc::new(Session {
        remote: conn.remote_address(),
        hello: AtomicBool::new(false),
        cluster,
        member,
        budget,
        login: std::sync::Mutex::new(login),
    });
    let streams = tokio_util::task::TaskTracker::new();
    debug!("connection open");
    broker.metrics().connections(1);
    let _counted = ConnectionCount(broker.clone());
    let shutting_down = loop {
        tokio::select! {
            _ = stop.cancelled() => break true,
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let (b, s, st) = (broker.clone(), session.clone(), stop.clone());
                    streams.spawn(async move { handle_bi(send, recv, b, s, st).await }.in_current_span());
                }
                Err(e) => { debug!(reason = %e, "connection closed"); break false; }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (b, s) = (broker.clone(), session.clone());
                    streams.spawn(async move { handle_uni(recv, b, s).await }.in_current_span());
                }
                Err(e) => { debug!(reason = %e, "connection closed"); break false; }
            },
        }
    };
    // Requests already accepted run to completion (the listener bounds this by the shutdown
    // grace period); then the connection is closed with the reason PROTOCOL.md §2 gives.
    // Dropping the last handle instead would close it with an empty reason.
    streams.close();
    streams.wait().await;
    if shutting_down {
        conn.close(quinn::VarInt::from_u32(0), SHUTDOWN_REASON);
    }
}

/// Counts a connection in `quiver_connections` until it ends.
struct ConnectionCount(Arc<Broker>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.metrics().connections(-1);
    }
}

/// The reason of the connection close a shutting-down broker sends (docs/PROTOCOL.md §2).
const SHUTDOWN_REASON: &[u8] = b"broker shutting down";

/// A frame's body is read in pieces of at most this many bytes.
const READ_CHUNK: usize = 64 << 10;

type FrameFailure = (Status, u16, String);

/// Reads one frame: header, length check, body. The body buffer grows with the bytes that
/// arrive (at most doubling, never beyond the claimed length) and its memory is taken from the
/// session's budgets first, so a length a peer claims but never sends costs nothing. Errors
/// carry the status to answer with.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_frame: u32,
    deadline: Duration,
    budget: &Budget,
) -> Result<(FrameHeader, Bytes, Held), FrameFailure> {
    let read = async {
        let mut h = [0u8; FRAME_HEADER];
        recv.read_exact(&mut h).await.map_err(|e| {
            (
                Status::BadRequest,
                0,
                format!("truncated frame header: {e}"),
            )
        })?;
        let header = FrameHeader::parse(&h, max_frame).map_err(|e| {
            let code = u16::from_le_bytes([h[4], h[5]]);
            (e.status(), code, e.to_string())
        })?;
        let len = header.body_len();
        let truncated = |got: usize, e: String| {
            (
                Status::BadRequest,
                header.code,
                format!("truncated frame: expected {len} body bytes, got {got}{e}"),
            )
        };
        let busy = || {
            (
                Status::Busy,
                header.code,
                "the broker holds too many request bytes from this connection or in total; retry later"
                    .to_string(),
            )
        };
        let mut held = Held::default();
        let mut body: Vec<u8> = Vec::new();
        while body.len() < len {
            let chunk = match recv
                .read_chunk((len - body.len()).min(READ_CHUNK), true)
                .await
            {
                Ok(Some(c)) => c.bytes,
                Ok(None) => return Err(truncated(body.len(), String::new())),
                Err(e) => return Err(truncated(body.len(), format!(": {e}"))),
            };
            if body.is_empty() && chunk.len() == len {
                // The whole body in one piece: keep quinn's buffer, no copy.
                held.grow(len, budget).await.map_err(|_| busy())?;
                return Ok((header, chunk, held));
            }
            let need = body.len() + chunk.len();
            if need > body.capacity() {
                let cap = (body.capacity() * 2).max(need).min(len);
                held.grow(cap.saturating_sub(held.bytes()), budget)
                    .await
                    .map_err(|_| busy())?;
                body.reserve_exact(cap - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((header, Bytes::from(body), held))
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err((
            Status::BadRequest,
            0,
            format!("request not received within {} ms", deadline.as_millis()),
        )),
    }
}

async fn handle_bi(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    broker: Arc<Broker>,
    session: Arc<Session>,
    stop: CancellationToken,
) {
    let limits = broker.limits();
    let deadline = Duration::from_millis(limits.request_read_timeout_ms);
    let chunks =
        match read_frame(&mut recv, limits.max_frame_bytes, deadline, &session.budget).await {
            // `_held` keeps the request's bytes counted until it has been handled.
            Ok((header, body, _held)) => match Request::decode(&header, body) {
                Ok(req) => {
                    let cmd = req.command();
                    // A client that gives up (timeout, closed connection) stops the stream: the
                    // request (e.g. a parked pull) ends with it instead of lingering.
                    let result = tokio::select! {
                        r = dispatch(req, &broker, &session, &stop) => r,
                        _ = send.stopped() => {
                            debug!(command = ?cmd, "client abandoned the request");
                            return;
                        }
                    };
                    match result {
                        Ok(resp) => {
                            broker.metrics().request(Some(cmd), Status::Ok);
                            resp.encode_chunks()
                        }
                        Err(e) => {
                            broker.metrics().request(Some(cmd), e.status());
                            vec![encode_error(e.status(), cmd as u16, &e.to_string())]
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, code = header.code, "bad request");
                    broker
                        .metrics()
                        .request(Command::from_u16(header.code), e.status());
                    vec![encode_error(
                        e.status(),
                        header.code,
                        &frame_error_message(&e),
                    )]
                }
            },
            Err((status, code, msg)) => {
                debug!(status = %status_name(status), %msg, "bad frame");
                broker.metrics().request(Command::from_u16(code), status);
                let _ = recv.stop(quinn::VarInt::from_u32(status as u32));
                vec![encode_error(status, code, &msg)]
            }
        };
    let mut chunks = chunks;
    if let Err(e) = send.write_all_chunks(&mut chunks).await {
        debug!(error = %e, "client went away before the response");
        return;
    }
    let _ = send.finish();
    // Keep the stream (and so the connection) until the client has the whole response: at
    // shutdown, dropping it early could discard an acknowledgement the client never received.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}

fn status_name(s: Status) -> String {
    format!("{s:?}")
}

fn frame_error_message(e: &FrameError) -> String {
    match e {
        FrameError::UnknownCommand(c) => format!(
            "unknown command code {c}; this broker speaks protocol version {PROTOCOL_VERSION}"
        ),
        other => other.to_string(),
    }
}

async fn handle_uni(mut recv: quinn::RecvStream, broker: Arc<Broker>, session: Arc<Session>) {
    let limits = broker.limits();
    let deadline = Duration::from_millis(limits.request_read_timeout_ms);
    let (header, body, _held) =
        match read_frame(&mut recv, limits.max_frame_bytes, deadline, &session.budget).await {
            Ok(f) => f,
            Err((_, _, msg)) => {
                debug!(%msg, "bad one-way frame");
                return;
            }
        };
    match Request::decode(&header, body) {
        Ok(req @ (Request::Send(_) | Request::SendSpecial(_) | Request::EndTransaction(_)))
            if session.hello.load(Ordering::Acquire) =>
        {
            let req = match authorize(req, &broker, &session.caller()).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "one-way request refused");
                    return;
                }
            };
            if let Err(e) = broker.handle(req, session.remote).await {
                debug!(error = %e, "one-way request failed");
            }
        }
        Ok(req) => {
            debug!(command = ?req.command(), "one-way streams carry only sends and transaction decisions after the handshake")
        }
        Err(e) => debug!(error = %e, "bad one-way request"),
    }
}

/// A Raft message: only from a connection that presented a certificate of this cluster.
async fn raft(
    r: quiver_protocol::cmd::Raft,
    session: &Session,
) -> Result<quiver_protocol::Response, BrokerError> {
    let Some(c) = &session.cluster else {
        return Err(BrokerError::new(
            Status::NoController,
            "this node is not in a cluster",
        ));
    };
    if !session.member {
        return Err(BrokerError::new(
            Status::NotClusterMember,
            "Raft messages are accepted only from cluster members (a TLS client certificate of this cluster)",
        ));
    }
    match c.handle_peer(r).await {
        Ok(body) => Ok(quiver_protocol::Response::Raft(
            quiver_protocol::cmd::RaftReply { body },
        )),
        Err(e @ crate::cluster::ClusterError::OtherCluster { .. }) => {
            Err(BrokerError::new(Status::NotClusterMember, e.to_string()))
        }
        Err(e @ crate::cluster::ClusterError::Malformed(_)) => {
            Err(BrokerError::new(Status::BadRequest, e.to_string()))
        }
        Err(e @ crate::cluster::ClusterError::NotController) => {
            Err(BrokerError::new(Status::NoController, e.to_string()))
        }
        Err(e) => Err(BrokerError::new(Status::Internal, e.to_string())),
    }
}

/// Who a slave's request (ReplicaFetch, ReplicaState) comes from: a member of this
/// cluster, a registered broker of this node's set other than this node, following this
/// node as the set's master in `epoch`. Returns the cluster member.
async fn check_slave<'a>(
    session: &'a Session,
    cluster_id: &str,
    set: &str,
    node_id: u64,
    epoch: u64,
) -> Result<&'a Arc<crate::cluster::Member>, BrokerError> {
    let Some(node) = &session.cluster else {
        return Err(BrokerError::new(
            Status::NoController,
            "this node is not in a cluster",
        ));
    };
    if !session.member || cluster_id != node.cluster_id() {
        return Err(BrokerError::new(
            Status::NotClusterMember,
            "replication is served only to members of this cluster (a TLS client certificate of this cluster)",
        ));
    }
    let state = node
        .state(false)
        .await
        .map_err(|e| BrokerError::new(Status::ControllerUnavailable, e.to_string()))?;
    let me = node.node_id();
    match state.master_for(me) {
        Some((master, _, e)) if master == me && e == epoch && node.broker_set() == Some(set) => {}
        other => {
            let knows = match other {
                Some((m, _, e)) => format!("its set's master is node {m} in epoch {e}"),
                None => "it knows no master for its set".to_string(),
            };
            return Err(BrokerError::new(
                Status::NotMaster,
                format!(
                    "node {me} is not the master of broker set {set:?} in epoch {epoch}: {knows}"
                ),
            ));
        }
    }
    // Only a registered broker of this set acknowledges as a slave.
    if node_id == me || state.brokers.get(&node_id).map(|b| b.set.as_str()) != Some(set) {
        return Err(BrokerError::new(
            Status::BadRequest,
            format!("node {node_id} is not a slave of broker set {set:?}"),
        ));
    }
    Ok(node)
}

/// A slave's fetch of this master's commit log: from a cluster member, for this node's set
/// and current master epoch only.
async fn replica_fetch(
    f: quiver_protocol::cmd::ReplicaFetch,
    broker: &Broker,
    session: &Session,
) -> Result<quiver_protocol::Response, BrokerError> {
    check_slave(session, &f.cluster_id, &f.set, f.node_id, f.epoch).await?;
    // The slave's history first: where its newest epoch's part of this log ends.
    let store = broker.store();
    let (history_epoch, history_end) = store.epoch_end(f.last_epoch);
    let epochs = store
        .epochs()
        .into_iter()
        .map(|e| quiver_protocol::cmd::EpochStart {
            epoch: e.epoch,
            start: e.start,
        })
        .collect();
    let reply = |chunk: crate::store::LogChunk, epochs| {
        quiver_protocol::Response::ReplicaFetch(quiver_protocol::cmd::ReplicaChunk {
            epoch: f.epoch,
            start: chunk.start,
            next: chunk.next,
            end: store.log_end(),
            bytes: chunk.bytes,
            history_epoch,
            history_end,
            epochs,
        })
    };
    if history_epoch != f.last_epoch || f.from > history_end {
        // It holds records this master never had: no records until it has cut them (and
        // its position acknowledges nothing).
        let none = crate::store::LogChunk {
            start: f.from,
            bytes: bytes::Bytes::new(),
            next: f.from,
        };
        return Ok(reply(none, epochs));
    }
    // A chunk is this plus at most one whole batch (never split): within MAX_REPLICA_CHUNK.
    let max = f.max_bytes.clamp(1, 8 << 20) as usize;
    let wait = Duration::from_millis(u64::from(f.wait_ms.min(5_000)));
    let chunk = broker.replica_chunk(f.node_id, f.from, max, wait).await?;
    Ok(reply(chunk, epochs))
}

/// A slave's read of this master's state outside the log (consumer offsets).
async fn replica_state(
    f: quiver_protocol::cmd::ReplicaState,
    broker: &Broker,
    session: &Session,
) -> Result<quiver_protocol::Response, BrokerError> {
    check_slave(session, &f.cluster_id, &f.set, f.node_id, f.epoch).await?;
    let json = broker
        .replica_state()
        .map_err(|e| BrokerError::new(Status::Internal, e.to_string()))?;
    if json.len() > quiver_protocol::cmd::MAX_REPLICA_STATE as usize {
        return Err(BrokerError::new(
            Status::Internal,
            format!(
                "the state is {} bytes, more than a ReplicaState carries ({}); offsets are not mirrored",
                json.len(),
                quiver_protocol::cmd::MAX_REPLICA_STATE
            ),
        ));
    }
    let broker_ = broker.plugins().clone();
    let want = f.want;
    // Modules up to 32 MiB in one reply (at least one): the rest at the next round.
    let modules = tokio::task::spawn_blocking(move || {
        let mut total = 0usize;
        let mut out = Vec::new();
        for sha in &want {
            let Some(m) = broker_.module_bytes(sha) else {
                continue;
            };
            if !out.is_empty() && total + m.len() > 32 << 20 {
                break;
            }
            total += m.len();
            out.push((sha.clone(), m));
        }
        out
    })
    .await
    .unwrap_or_default();
    Ok(quiver_protocol::Response::ReplicaState(
        quiver_protocol::cmd::ReplicaStateReply {
            json: json.into(),
            modules,
        },
    ))
}

/// A switch-over: makes a broker the master of its set. From a cluster member, or from a
/// client on this machine (loopback); on a node with users, authorize has also checked that
/// the caller has `admin` on `cluster`.
async fn elect_master(
    c: quiver_protocol::cmd::ClusterElect,
    session: &Session,
) -> Result<quiver_protocol::Response, BrokerError> {
    let Some(node) = &session.cluster else {
        return Err(BrokerError::new(
            Status::NoController,
            "this node is not in a cluster",
        ));
    };
    if !session.member && !session.remote.ip().is_loopback() {
        return Err(BrokerError::new(
            Status::NotClusterMember,
            "master elections are accepted from cluster members and from this machine only",
        ));
    }
    let unavailable = |e: crate::cluster::ClusterError| {
        BrokerError::new(Status::ControllerUnavailable, e.to_string())
    };
    let state = node.state(true).await.map_err(unavailable)?;
    let Some(st) = state.sets.get(&c.set) else {
        return Err(BrokerError::new(
            Status::BadRequest,
            format!(
                "broker set {:?} has no master: no broker of it is registered",
                c.set
            ),
        ));
    };
    if st.master == c.node_id {
        return Err(BrokerError::new(
            Status::BadRequest,
            format!(
                "node {} is already the master of broker set {:?} (epoch {})",
                c.node_id, c.set, st.epoch
            ),
        ));
    }
    let alive = state.alive(c.node_id, node.clock_now_ms(), node.lease_ms());
    match state.brokers.get(&c.node_id) {
        Some(b) if b.set == c.set && !alive => {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!(
                    "node {} of broker set {:?} is not alive (its lease expired)",
                    c.node_id, c.set
                ),
            ))
        }
        Some(b) if b.set == c.set => {}
        _ => {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!(
                    "node {} is not a registered broker of broker set {:?}",
                    c.node_id, c.set
                ),
            ))
        }
    }
    if !st.in_sync.contains(&c.node_id) {
        return Err(BrokerError::new(
            Status::NotEnoughReplicas,
            format!(
                "node {} is not in sync with the master of broker set {:?} (in sync: {:?}): \
                 electing it could lose acknowledged messages; wait until it is in sync",
                c.node_id, c.set, st.in_sync
            ),
        ));
    }
    let cmd = crate::cluster::state::Command::ElectMaster {
        set: c.set.clone(),
        epoch: st.epoch,
        node: c.node_id,
    };
    match node.write(cmd).await.map_err(unavailable)? {
        crate::cluster::state::Reply::Ok => {}
        crate::cluster::state::Reply::Refused(why) => {
            return Err(BrokerError::new(Status::BadRequest, why));
        }
    }
    let info = match node.controller() {
        Some(ctl) => ctl.info(),
        None => node.info_without_controller().await.map_err(unavailable)?,
    };
    Ok(quiver_protocol::Response::ClusterElect(info))
}

/// A voter change: from a cluster member, or from a client on this machine (loopback); on a
/// node with users, authorize has also checked that the caller has `admin` on `cluster`.
async fn change_voters(
    v: quiver_protocol::cmd::ClusterVoter,
    session: &Session,
) -> Result<quiver_protocol::Response, BrokerError> {
    let Some(c) = session.cluster.as_ref().and_then(|m| m.controller()) else {
        return Err(BrokerError::new(
            Status::NoController,
            "this node runs no controller; ask a controller node",
        ));
    };
    if !session.member && !session.remote.ip().is_loopback() {
        return Err(BrokerError::new(
            Status::NotClusterMember,
            "voter changes are accepted from cluster members and from this machine only",
        ));
    }
    match c.change_voters(v).await {
        Ok(()) => Ok(quiver_protocol::Response::ClusterVoter(c.info())),
        Err(e @ crate::cluster::ClusterError::Malformed(_)) => {
            Err(BrokerError::new(Status::BadRequest, e.to_string()))
        }
        Err(
            e @ (crate::cluster::ClusterError::NoLeader | crate::cluster::ClusterError::Forward(_)),
        ) => Err(BrokerError::new(Status::Busy, e.to_string())),
        // openraft's refusals (a change already under way, an unknown learner...) say why.
        Err(e @ crate::cluster::ClusterError::Raft(_)) => {
            Err(BrokerError::new(Status::BadRequest, e.to_string()))
        }
        Err(e) => Err(BrokerError::new(Status::Internal, e.to_string())),
    }
}

async fn dispatch(
    req: Request,
    broker: &Broker,
    session: &Session,
    stop: &CancellationToken,
) -> Result<quiver_protocol::Response, BrokerError> {
    if let Request::Hello(hello) = &req {
        let version = hello.version;
        if version != PROTOCOL_VERSION {
            return Err(BrokerError::new(
                Status::UnsupportedVersion,
                format!(
                    "client speaks protocol version {version}; this broker speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        session.hello.store(true, Ordering::Release);
        debug!(client = %hello.client_id, "handshake");
        return Ok(quiver_protocol::Response::Hello(broker.hello()));
    }
    if !session.hello.load(Ordering::Acquire) {
        return Err(BrokerError::new(
            Status::HandshakeRequired,
            format!(
                "send Hello (command {}) first on a new connection",
                Command::Hello as u16
            ),
        ));
    }
    match &req {
        Request::AuthStart(s) => {
            let reply = broker
                .auth()
                .start(&mut session.login(), s, session.remote.ip())?;
            return Ok(quiver_protocol::Response::AuthStart(reply));
        }
        Request::AuthFinish(f) => {
            let reply = broker
                .auth()
                .finish(&mut session.login(), f, session.remote.ip())?;
            return Ok(quiver_protocol::Response::AuthFinish(reply));
        }
        _ => {}
    }
    let caller = session.caller();
    let req = authorize(req, broker, &caller).await?;
    let req = match req {
        Request::ClusterInfo(_) => {
            let mut info = match &session.cluster {
                None => crate::cluster::standalone_info(),
                Some(m) => match m.controller() {
                    Some(c) => c.info(),
                    // A node without a controller: the brokers as a voter's metadata has them.
                    None => m.info_without_controller().await.map_err(|e| {
                        BrokerError::new(Status::ControllerUnavailable, e.to_string())
                    })?,
                },
            };
            if session.cluster.is_some() {
                info.replicas = broker.replica_lags().await;
            }
            return Ok(quiver_protocol::Response::ClusterInfo(info));
        }
        Request::Raft(r) => return raft(r, session).await,
        Request::ClusterVoter(v) => return change_voters(v, session).await,
        Request::ReplicaFetch(f) => return replica_fetch(f, broker, session).await,
        Request::ReplicaState(f) => return replica_state(f, broker, session).await,
        Request::ClusterElect(c) => return elect_master(c, session).await,
        other => other,
    };
    let resp = answer_checked(req, broker, session.cluster.as_ref(), session.remote, stop).await?;
    Ok(filter(resp, broker, &caller))
}

/// Checks that `caller` holds what `req` needs (docs/SECURITY.md §4) and returns the request
/// to run: a route's auto-creation is dropped for a caller who may not create the topic.
/// Every refusal and every allowed change is written to the audit log.
pub async fn authorize(
    req: Request,
    broker: &Broker,
    caller: &Caller,
) -> Result<Request, BrokerError> {
    let auth = broker.auth();
    let command = req.command();
    let change = perm::is_change(&req);
    if auth.unchecked(caller) {
        // Only changes are written here: the needs are built for them alone, off the hot
        // path of sends and pulls.
        if change && caller.who != crate::auth::Who::Member {
            auth.audit_request(caller, command, &perm::needs(&req), true, None);
        }
        return Ok(req);
    }
    let decided = resolve_and_decide(req, broker, caller).await;
    let (needs, decided) = match decided {
        Ok((needs, req)) => (needs, Ok(req)),
        Err((needs, e)) => (needs, Err(e)),
    };
    let refused = decided.as_ref().err().map(ToString::to_string);
    auth.audit_request(caller, command, &needs, change, refused.as_deref());
    decided
}

/// Checks what `req` needs, the needs on stored records last, once the rest held (so
/// nobody unchecked makes the broker read its log): each must name records that exist, or
/// the request is refused as `NotFound` (a record written after the check cannot fall
/// under a check that found none). Returns the needs checked, for the audit log.
#[allow(clippy::type_complexity)]
async fn resolve_and_decide(
    req: Request,
    broker: &Broker,
    caller: &Caller,
) -> Result<(Vec<perm::Need>, Request), (Vec<perm::Need>, BrokerError)> {
    let (stored, mut needs): (Vec<_>, Vec<_>) = perm::needs(&req)
        .into_iter()
        .partition(|n| matches!(n.resource, Resource::Stored(_)));
    if let Err(e) = broker.auth().check(caller, &needs) {
        return Err((needs, e.into()));
    }
    for n in stored {
        let Resource::Stored(which) = n.resource else {
            continue;
        };
        let found = stored_resources(broker, which).await;
        if found.is_empty() {
            let what = match which {
                perm::Stored::Scheduled(id) => format!("no scheduled message {id:032x}"),
                perm::Stored::At { handle, id } => {
                    format!("no message {id:032x} at commit-log offset {handle}")
                }
            };
            return Err((needs, BrokerError::new(Status::NotFound, what)));
        }
        needs.extend(found.into_iter().map(|resource| perm::Need {
            actions: n.actions,
            resource,
        }));
    }
    match decide(req, broker, caller, &needs) {
        Ok(req) => Ok((needs, req)),
        Err(e) => Err((needs, e)),
    }
}

/// [`authorize`]'s decision, once `needs` name real resources.
fn decide(
    req: Request,
    broker: &Broker,
    caller: &Caller,
    needs: &[perm::Need],
) -> Result<Request, BrokerError> {
    let auth = broker.auth();
    auth.check(caller, needs)?;
    let create = quiver_protocol::cmd::actions::CREATE;
    // Sends and subscriptions create a missing topic on a standalone broker: only for a
    // caller who may create it.
    let created: Vec<&str> = match &req {
        Request::Send(s) => vec![s.topic.as_str()],
        Request::SendSpecial(s) => vec![s.topic.as_str()],
        Request::Heartbeat(h) => h.subscriptions.iter().map(|s| s.topic.as_str()).collect(),
        _ => vec![],
    };
    for topic in created {
        if !quiver_protocol::names::is_system_topic(topic)
            && !broker.has_topic(topic)
            && !auth.may(caller, create, Resource::topic(topic))
        {
            return Err(BrokerError::new(
                Status::TopicNotFound,
                format!(
                    "topic {topic:?} does not exist, and this user may not create it (create \
                     on topic:{topic})"
                ),
            ));
        }
    }
    Ok(match req {
        Request::Route(mut r)
            if r.create && !auth.may(caller, create, Resource::topic(&r.topic)) =>
        {
            r.create = false;
            Request::Route(r)
        }
        Request::TopicRoute(mut r)
            if r.create && !auth.may(caller, create, Resource::topic(&r.topic)) =>
        {
            r.create = false;
            Request::TopicRoute(r)
        }
        other => other,
    })
}

/// What the stored records a command acts on belong to ([`perm::Stored`]): their topics as
/// users know them, and a half message's producer group. Empty when there is no such record
/// (the command then fails with `NotFound` on its own).
async fn stored_resources(broker: &Broker, which: perm::Stored) -> Vec<Resource> {
    use quiver_protocol::names::{props, HALF_TOPIC, SCHEDULE_TOPIC};
    let store = broker.store().clone();
    let records = tokio::task::spawn_blocking(move || match which {
        perm::Stored::Scheduled(id) => store.messages_by_id(id).unwrap_or_default(),
        perm::Stored::At { handle, .. } => store.message_at(handle).into_iter().collect(),
    })
    .await
    .unwrap_or_default();
    let mut out = Vec::new();
    for b in &records {
        let Ok(v) = quiver_protocol::RecordView::parse_unchecked_crc(b) else {
            continue;
        };
        match which {
            perm::Stored::Scheduled(_) if v.topic() != SCHEDULE_TOPIC => continue,
            perm::Stored::At { id, .. } if v.msg_id() != id => continue,
            _ => {}
        }
        if let Some(t) = record_topic(b) {
            out.push(Resource::topic(&t));
        }
        if v.topic() == HALF_TOPIC {
            if let Some(g) = v.property(props::PGROUP) {
                out.push(Resource::Group(g.to_string()));
            }
        }
    }
    out.dedup();
    out
}

/// A stored record's topic as users know it: a scheduled or half message's real topic.
fn record_topic(record: &[u8]) -> Option<String> {
    let v = quiver_protocol::RecordView::parse_unchecked_crc(record).ok()?;
    let real = v.property(quiver_protocol::names::props::REAL_TOPIC);
    Some(match real {
        Some(t) if v.topic().starts_with('%') => t.to_string(),
        _ => v.topic().to_string(),
    })
}

/// Leaves out of lists and lookups what `caller` may not see.
fn filter(
    resp: quiver_protocol::Response,
    broker: &Broker,
    caller: &Caller,
) -> quiver_protocol::Response {
    use quiver_protocol::cmd::actions::{CONSUME, DESCRIBE, SEND};
    use quiver_protocol::Response as A;
    let auth = broker.auth();
    if !auth.enforced() {
        return resp;
    }
    match resp {
        A::TopicList(mut r) => {
            r.topics
                .retain(|t| auth.may(caller, DESCRIBE | SEND | CONSUME, Resource::topic(&t.name)));
            A::TopicList(r)
        }
        A::GroupList(mut r) => {
            r.groups
                .retain(|g| auth.may(caller, DESCRIBE | CONSUME, Resource::Group(g.name.clone())));
            A::GroupList(r)
        }
        A::MessageById(mut r) => {
            r.0.retain(|rec| {
                record_topic(rec).is_some_and(|t| auth.may(caller, DESCRIBE, Resource::topic(&t)))
            });
            A::MessageById(r)
        }
        A::MessageByKey(mut r) => {
            r.0.retain(|rec| {
                record_topic(rec).is_some_and(|t| auth.may(caller, DESCRIBE, Resource::topic(&t)))
            });
            A::MessageByKey(r)
        }
        other => other,
    }
}

/// [`answer_checked`] for a caller that has not been checked yet (the web console): the
/// same checks and filters a QUIC connection gets.
pub async fn answer(
    req: Request,
    broker: &Broker,
    cluster: Option<&Arc<Member>>,
    caller: &Caller,
    stop: &CancellationToken,
) -> Result<quiver_protocol::Response, BrokerError> {
    let req = authorize(req, broker, caller).await?;
    let resp = answer_checked(req, broker, cluster, caller.remote, stop).await?;
    Ok(filter(resp, broker, caller))
}

/// Answers a client request that needs no connection identity and has been authorized, the
/// way this node answers it over QUIC: on a cluster node, topic commands go through the
/// controller and plugin changes are refused on a slave; everything else goes to the local
/// broker. The web console's JSON API (src/console) comes here through [`answer`], so both
/// give the same answers.
async fn answer_checked(
    req: Request,
    broker: &Broker,
    cluster: Option<&Arc<Member>>,
    remote: SocketAddr,
    stop: &CancellationToken,
) -> Result<quiver_protocol::Response, BrokerError> {
    if let Request::BrokerStatus(_) = req {
        let status = crate::console::status(broker, cluster).await?;
        return Ok(quiver_protocol::Response::BrokerStatus(
            quiver_protocol::cmd::BrokerStatusReply {
                json: status.to_string(),
            },
        ));
    }
    let req = match cluster {
        Some(node) => match routing::intercept(req, node, broker, remote).await {
            routing::Routed::Answered(r) => return r,
            routing::Routed::Local(req) => req,
        },
        None => req,
    };
    if stop.is_cancelled() && matches!(req, Request::Send(_)) {
        return Err(BrokerError::new(
            Status::ShuttingDown,
            "broker is shutting down",
        ));
    }
    broker.handle_with_stop(req, remote, stop).await
}
