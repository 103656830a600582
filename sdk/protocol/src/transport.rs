//! The QUIC transport settings the client and the broker share (docs/PROTOCOL.md §2.2), in
//! one place so the two ends cannot drift apart. Only with the `quic` feature.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{congestion, AckFrequencyConfig, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

/// The UDP receive and send buffer sizes both ends ask for. The kernel's default (about
/// 208 KiB on Linux) overflows when a peer sends a burst of a few megabytes: the datagrams
/// beyond it are dropped, and QUIC recovers them only after a loss timer, which showed as
/// 25-40 ms stalls at p99. The kernel caps the request at `net.core.rmem_max` /
/// `net.core.wmem_max`; [`udp_socket`] reports what it got.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] receive and send buffers asked
/// for (dual-stack when `addr` is IPv6), ready for `quinn::Endpoint::new`. Returns the
/// socket and the receive buffer size the kernel granted.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems do not allow dual-stack sockets.
        let _ = socket.set_only_v6(false);
    }
    // Best effort as well: a smaller buffer still works, only with more loss under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket.into(), granted))
}

/// The QUIC transport settings shared by the client and the broker: 1024 concurrent
/// bidirectional and unidirectional streams (the broker sets its own limit from
/// `broker.max_streams_per_connection`), 16 MiB stream / 64 MiB connection receive windows,
/// 64 MiB send window, immediate ACKs requested from the peer (`ack_eliciting_threshold` 0),
/// a 5 s keep-alive (the client derives its own from its liveness timeout), a 30 s idle
/// timeout and Cubic with a 4 MiB initial window.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(1024))
        .stream_receive_window(VarInt::from_u32(16 << 20))
        .receive_window(VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))));
    // Ask the peer to acknowledge every packet at once: with one small request per stream, the
    // default 25 ms delayed ACK otherwise stalls stream credit and the send window.
    let mut af = AckFrequencyConfig::default();
    af.ack_eliciting_threshold(VarInt::from_u32(0));
    t.ack_frequency_config(Some(af));
    let mut cc = congestion::CubicConfig::default();
    cc.initial_window(4 << 20);
    t.congestion_controller_factory(Arc::new(cc));
    t
}
