//! The raw-QUIC baseline: how many bytes QUIC itself moves on this machine with the broker's
//! TLS and transport settings, one stream each way, no broker logic. `quiver bench produce`
//! and `consume` measure it in the same run and print their figures also as a ratio to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use quiver_client::{quinn_client_config, Tls};

use quiver::config::Config;
use quiver::net::tls;

/// What QUIC moved, in bytes per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Baseline {
    /// Client to server, one stream.
    pub(crate) upload: f64,
    /// Server to client, one stream.
    pub(crate) download: f64,
    /// Round trips of 1 MB requests, a new stream each (the shape of a batch of 1000 sends,
    /// without a broker): p50 and p99 in microseconds.
    pub(crate) request_p50_us: u64,
    /// See `request_p50_us`.
    pub(crate) request_p99_us: u64,
    /// Round trips of 1 KB requests, one at a time, a new stream each (the shape of a single
    /// synchronous send): p50 and p99 in microseconds.
    pub(crate) small_p50_us: u64,
    /// See `small_p50_us`.
    pub(crate) small_p99_us: u64,
}

impl Baseline {
    /// Prints the figures.
    pub(crate) fn print(&self, bytes: u64) {
        if super::json() {
            let v = serde_json::json!({
                "name": "raw QUIC baseline",
                "upload_megabytes_per_second": self.upload / 1e6,
                "download_megabytes_per_second": self.download / 1e6,
                "request_1mb_ms": { "p50": self.request_p50_us as f64 / 1000.0, "p99": self.request_p99_us as f64 / 1000.0 },
                "request_1kb_ms": { "p50": self.small_p50_us as f64 / 1000.0, "p99": self.small_p99_us as f64 / 1000.0 },
            });
            println!("{v}");
            return;
        }
        println!(
            "{:<28} upload {:.1} MB/s  download {:.1} MB/s  ({} MiB each way, one stream, broker TLS and transport settings)",
            "raw QUIC baseline",
            self.upload / 1e6,
            self.download / 1e6,
            bytes >> 20
        );
        println!(
            "{:<28} p50 {:.3} ms  p99 {:.3} ms  ({REQUESTS} x 1 MB up, 8 bytes back, a stream each)",
            "  raw QUIC round trips",
            self.request_p50_us as f64 / 1000.0,
            self.request_p99_us as f64 / 1000.0,
        );
        println!(
            "{:<28} p50 {:.3} ms  p99 {:.3} ms  ({SMALL_REQUESTS} x 1 KB up, 8 bytes back, one at a time)",
            "  raw QUIC small round trips",
            self.small_p50_us as f64 / 1000.0,
            self.small_p99_us as f64 / 1000.0,
        );
    }
}

/// Round trips measured for the request-latency baseline.
const REQUESTS: usize = 300;
/// Small round trips measured for the single-send baseline.
const SMALL_REQUESTS: usize = 2000;

/// Chunk the server writes (a shared buffer, as the broker writes stored records).
const CHUNK: usize = 256 << 10;

/// Measures the baseline: a raw QUIC server on its own runtime (like the embedded broker) on
/// 127.0.0.1, and a client on the caller's runtime.
pub(crate) async fn measure(dir: &std::path::Path, bytes: u64) -> anyhow::Result<Baseline> {
    let server = Server::start(dir)?;
    let result = client_side(server.addr, &server.fingerprint, bytes).await;
    server.stop()?;
    result
}

/// The raw server: its own thread and 2-worker runtime (like the embedded broker), the
/// broker's TLS and transport settings, [`serve_stream`] on every stream.
struct Server {
    addr: SocketAddr,
    fingerprint: String,
    stop: tokio_util::sync::CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    dir: std::path::PathBuf,
}

impl Server {
    fn start(dir: &std::path::Path) -> anyhow::Result<Server> {
        let dir = dir.join(format!("quiver-bench-quic-{}", std::process::id()));
        let mut cfg = Config::default();
        cfg.broker.data_dir = dir.clone();
        let id = tls::load_or_generate(&cfg)?;
        let server_cfg = tls::server_config(&id, &cfg)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let server_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-quic".into())
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("bench-quic-server")
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let (socket, _) = quiver_protocol::transport::udp_socket(
                        "127.0.0.1:0".parse().expect("literal address"),
                    )?;
                    let runtime = quinn::default_runtime().context("no async runtime")?;
                    let endpoint = quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server_cfg),
                        socket,
                        runtime,
                    )?;
                    let _ = tx.send(endpoint.local_addr()?);
                    loop {
                        let incoming = tokio::select! {
                            i = endpoint.accept() => i,
                            _ = server_stop.cancelled() => break,
                        };
                        let Some(incoming) = incoming else { break };
                        tokio::spawn(async move {
                            if let Ok(conn) = incoming.await {
                                while let Ok((send, recv)) = conn.accept_bi().await {
                                    tokio::spawn(serve_stream(send, recv));
                                }
                            }
                        });
                    }
                    endpoint.close(0u32.into(), b"done");
                    endpoint.wait_idle().await;
                    anyhow::Ok(())
                })
            })?;
        let addr: SocketAddr = rx.recv().context("the baseline server failed to start")?;
        Ok(Server {
            addr,
            fingerprint: id.fingerprint.clone(),
            stop,
            thread,
            dir,
        })
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let served = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the baseline server panicked"))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        served
    }
}

/// Requests per second raw QUIC answers from `connections` connections with one request in
/// flight each, each request a new stream carrying `size` bytes up and 8 back (the shape of
/// a single send and its receipt, without a broker), for `seconds`; with p50 and p99 in
/// microseconds. The ceiling `quiver bench connections` compares the broker with.
pub(crate) async fn request_rate(
    dir: &std::path::Path,
    connections: usize,
    seconds: u64,
    size: usize,
) -> anyhow::Result<(f64, u64, u64)> {
    let server = Server::start(dir)?;
    let qc = quinn_client_config(&Tls::fingerprint_from_hex(&server.fingerprint)?)?;
    let mut endpoints = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..connections {
        // One endpoint (UDP socket) per connection, as separate producers have.
        let (socket, _) = quiver_protocol::transport::udp_socket(
            "127.0.0.1:0".parse().expect("literal address"),
        )?;
        let runtime = quinn::default_runtime().context("no async runtime")?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        conns.push(
            endpoint
                .connect_with(qc.clone(), server.addr, "localhost")?
                .await?,
        );
        endpoints.push(endpoint);
    }
    let mut frame = vec![b'U'];
    frame.resize(1 + size, b'q');
    let frame = Bytes::from(frame);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in &conns {
        let (conn, frame) = (conn.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while Instant::now() < deadline {
                let t = Instant::now();
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_chunk(frame.clone()).await?;
                send.finish()?;
                recv.read_to_end(8).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let took = started.elapsed().as_secs_f64();
    for (c, e) in conns.iter().zip(&endpoints) {
        c.close(0u32.into(), b"done");
        e.wait_idle().await;
    }
    server.stop()?;
    Ok((
        all.len() as f64 / took.max(1e-9),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
    ))
}

/// One stream: `U` then bytes up to FIN (answered with their count), or `D` and a u64 count
/// (answered with that many bytes).
async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    match kind[0] {
        b'U' => {
            let mut n = 0u64;
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                n += chunk.bytes.len() as u64;
            }
            let _ = send.write_all(&n.to_le_bytes()).await;
            let _ = send.finish();
        }
        b'D' => {
            let mut len = [0u8; 8];
            if recv.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(len);
            let chunk = Bytes::from(vec![b'q'; CHUNK]);
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if send.write_chunk(chunk.slice(..n)).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = send.finish();
        }
        _ => {}
    }
}

async fn client_side(addr: SocketAddr, fingerprint: &str, bytes: u64) -> anyhow::Result<Baseline> {
    let qc = quinn_client_config(&Tls::fingerprint_from_hex(fingerprint)?)?;
    let (socket, _) =
        quiver_protocol::transport::udp_socket("127.0.0.1:0".parse().expect("literal address"))?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    let conn = endpoint.connect_with(qc, addr, "localhost")?.await?;
    let limit = Duration::from_secs(120);

    // Upload: bytes up one stream, timed until the server has counted them all.
    let upload = tokio::time::timeout(limit, async {
        let started = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"U").await?;
        let chunk = Bytes::from(vec![b'q'; CHUNK]);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_chunk(chunk.slice(..n)).await?;
            left -= n as u64;
        }
        send.finish()?;
        let got = recv.read_to_end(8).await?;
        let counted = u64::from_le_bytes(got.as_slice().try_into().context("short answer")?);
        anyhow::ensure!(
            counted == bytes,
            "the server counted {counted} of {bytes} bytes"
        );
        anyhow::Ok(bytes as f64 / started.elapsed().as_secs_f64())
    })
    .await
    .context("upload timed out")??;

    // Download: ask for bytes, timed until the last one has arrived.
    let download = tokio::time::timeout(limit, async {
        let started = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut ask = vec![b'D'];
        ask.extend_from_slice(&bytes.to_le_bytes());
        send.write_all(&ask).await?;
        send.finish()?;
        let mut n = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            n += chunk.bytes.len() as u64;
        }
        anyhow::ensure!(n == bytes, "received {n} of {bytes} bytes");
        anyhow::Ok(bytes as f64 / started.elapsed().as_secs_f64())
    })
    .await
    .context("download timed out")??;

    // Request round trips: 1 MB up on a new stream, the 8-byte count back.
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let request = Bytes::from(vec![b'q'; 1 << 20]);
    tokio::time::timeout(limit, async {
        for _ in 0..REQUESTS {
            let started = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"U").await?;
            send.write_chunk(request.clone()).await?;
            send.finish()?;
            recv.read_to_end(8).await?;
            hist.record(started.elapsed().as_micros().max(1) as u64)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("round trips timed out")??;

    // Small round trips: 1 KB up on a new stream, the count back, one at a time.
    let mut small = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let one_kb = Bytes::from(vec![b'q'; 1024]);
    tokio::time::timeout(limit, async {
        for _ in 0..SMALL_REQUESTS {
            let started = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut frame = Vec::with_capacity(1 + one_kb.len());
            frame.push(b'U');
            frame.extend_from_slice(&one_kb);
            send.write_chunk(frame.into()).await?;
            send.finish()?;
            recv.read_to_end(8).await?;
            small.record(started.elapsed().as_micros().max(1) as u64)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("small round trips timed out")??;

    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(Baseline {
        small_p50_us: small.value_at_quantile(0.5),
        small_p99_us: small.value_at_quantile(0.99),
        upload,
        download,
        request_p50_us: hist.value_at_quantile(0.5),
        request_p99_us: hist.value_at_quantile(0.99),
    })
}
