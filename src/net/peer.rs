//! The QUIC client a cluster node uses to reach the other nodes' listeners: the controller's
//! Raft messages. Mutual TLS: it trusts only certificates that chain to the cluster's roots
//! and presents this node's own certificate, which the peer checks the same way.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use quiver_protocol::cmd::{encode_request, Call, Hello, Raft, MAX_RAFT_BODY, MAX_REPLICA_CHUNK};
use quiver_protocol::{decode_error, split_frame, Status, PROTOCOL_VERSION};

use super::tls::{self, Identity};
use crate::cluster::{PeerError, PeerTransport};
use crate::config::Config;

/// Connections to peers, one per address, opened on first use and again after they drop.
pub struct QuicPeers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    node: String,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

impl QuicPeers {
    /// A client endpoint with this node's identity and the cluster's roots.
    pub fn new(cfg: &Config, id: &Identity) -> anyhow::Result<Arc<Self>> {
        let roots = tls::cluster_roots(cfg)?.context("not a cluster node")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .context("this node's certificate and key do not match")?;
        crypto.alpn_protocols = vec![quiver_protocol::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(Arc::new(quiver_protocol::transport::transport_config()));
        let bind: SocketAddr = if cfg.broker.listen.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let (socket, _) = quiver_protocol::transport::udp_socket(bind)?;
        let runtime = quinn::default_runtime().context("no async runtime")?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        Ok(Arc::new(Self {
            endpoint,
            client,
            node: format!("quiver-node-{}", cfg.cluster.node_id),
            conns: Mutex::new(HashMap::new()),
        }))
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let cached = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let unreachable = |reason: String| PeerError::Unreachable { addr, reason };
        let conn = self
            .endpoint
            .connect_with(self.client.clone(), addr, &addr.ip().to_string())
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client_id: self.node.clone(),
        };
        exchange(&conn, addr, encode_request(&hello), Hello::COMMAND as u16).await?;
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, conn.clone());
        Ok(conn)
    }

    /// One request frame to `addr` within `timeout`; the body of the successful reply.
    async fn call(
        &self,
        addr: SocketAddr,
        frame: Bytes,
        command: u16,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let call = async {
            let conn = self.connection(addr).await?;
            exchange(&conn, addr, frame, command).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Unreachable {
                addr,
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }
}

/// One request on a new stream; the body of the successful reply.
async fn exchange(
    conn: &quinn::Connection,
    addr: SocketAddr,
    frame: Bytes,
    cmd: u16,
) -> Result<Bytes, PeerError> {
    let lost = |e: String| PeerError::Unreachable { addr, reason: e };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
    send.write_chunk(frame)
        .await
        .map_err(|e| lost(e.to_string()))?;
    let _ = send.finish();
    let limit = MAX_RAFT_BODY.max(MAX_REPLICA_CHUNK) as usize + 64 * 1024;
    let data = recv
        .read_to_end(limit)
        .await
        .map_err(|e| lost(e.to_string()))?;
    let (header, body) =
        split_frame(&Bytes::from(data), limit as u32).map_err(|e| PeerError::Refused {
            addr,
            reason: format!("malformed reply: {e}"),
        })?;
    if header.code != Status::Ok as u16 {
        return Err(PeerError::Refused {
            addr,
            reason: format!(
                "{:?}: {}",
                Status::from_u16(header.code),
                decode_error(body)
            ),
        });
    }
    if header.aux != cmd {
        return Err(PeerError::Refused {
            addr,
            reason: format!("reply for command {}, expected {cmd}", header.aux),
        });
    }
    Ok(body)
}

impl PeerTransport for QuicPeers {
    fn raft(
        self: Arc<Self>,
        addr: SocketAddr,
        request: Raft,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, PeerError>> + Send + 'static>> {
        Box::pin(async move {
            let frame = encode_request(&request);
            let body = self
                .call(addr, frame, Raft::COMMAND as u16, timeout)
                .await?;
            let reply: quiver_protocol::cmd::RaftReply = quiver_protocol::cmd::decode_body(body)
                .map_err(|e| PeerError::Refused {
                    addr,
                    reason: format!("malformed reply: {e}"),
                })?;
            Ok(reply.body)
        })
    }

    fn request(
        self: Arc<Self>,
        addr: SocketAddr,
        frame: Bytes,
        command: u16,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, PeerError>> + Send + 'static>> {
        Box::pin(async move { self.call(addr, frame, command, timeout).await })
    }
}
