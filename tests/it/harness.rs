//! Test harness: a real broker on a free loopback port with a temporary data directory, and
//! clients that pin its certificate fingerprint.

use std::path::Path;
use std::time::{Duration, Instant};

use quiver::clock::Clock;
use quiver::config::Config;
use quiver::server::Server;
use quiver_client::{Client, ClientConfig, Tls};

pub struct TestBroker {
    pub server: Option<Server>,
    cfg: Config,
    /// What the broker reads the time from (kept across restarts).
    clock: Clock,
    _temp: Option<tempfile::TempDir>,
}

/// A config for tests: loopback port 0, small segments (rollover gets exercised).
pub fn test_config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.broker.listen = "127.0.0.1:0".parse().unwrap();
    // The admin HTTP listener on any free port (tests run side by side).
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    cfg.broker.data_dir = dir.to_path_buf();
    cfg.broker.shutdown_grace_ms = 2000;
    cfg.store.dir = dir.join("store");
    cfg.store.segment_size = 1 << 20;
    cfg.store.cq_entries_per_file = 1000;
    cfg.store.index_slots = 1024;
    cfg.store.index_entries = 8192;
    cfg.store.max_message_size = 256 << 10;
    // Tests must not depend on how full the machine's disk happens to be.
    cfg.store.disk_high_watermark = 1.0;
    cfg.store.disk_clean_watermark = 1.0;
    cfg.store.disk_headroom_bytes = 0;
    cfg
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_tuned(|_| {}).await
    }

    /// A broker in its own temporary directory, with `tune` applied to the test config.
    pub async fn start_tuned(tune: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_clocked(tune, Clock::system()).await
    }

    /// A tuned broker that reads the time from `clock` (a manual clock the test advances).
    pub async fn start_clocked(tune: impl FnOnce(&mut Config), clock: Clock) -> TestBroker {
        let temp = tempfile::tempdir().unwrap();
        let mut cfg = test_config(temp.path());
        tune(&mut cfg);
        let server = Server::start_with_clock(cfg.clone(), clock.clone())
            .await
            .expect("broker starts");
        TestBroker {
            server: Some(server),
            cfg,
            clock,
            _temp: Some(temp),
        }
    }

    pub async fn start_with(cfg: Config) -> TestBroker {
        let server = Server::start(cfg.clone()).await.expect("broker starts");
        TestBroker {
            server: Some(server),
            cfg,
            clock: Clock::system(),
            _temp: None,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn client_config(&self) -> ClientConfig {
        let s = self.server();
        let tls = Tls::fingerprint_from_hex(&s.fingerprint).unwrap();
        let mut cfg = ClientConfig::new(s.addr, tls);
        cfg.request_timeout = Duration::from_secs(10);
        cfg
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("client connects")
    }

    /// Stops the broker cleanly and starts it again on the same directory and port.
    pub async fn restart(&mut self) {
        self.restart_with(|| {}).await;
    }

    /// Like [`TestBroker::restart`], calling `while_down` between the stop and the start
    /// (e.g. to advance a manual clock while the broker is down).
    pub async fn restart_with(&mut self, while_down: impl FnOnce()) {
        let old = self.server.take().expect("running");
        let addr = old.addr;
        old.stop().await.expect("clean stop");
        while_down();
        let mut cfg = self.cfg.clone();
        cfg.broker.listen = addr;
        self.server = Some(
            Server::start_with_clock(cfg, self.clock.clone())
                .await
                .expect("broker restarts"),
        );
    }

    /// Waits until at least `n` pulls are parked in the broker (long polls waiting for a
    /// message), instead of sleeping and hoping they are.
    pub async fn parked(&self, n: i64) {
        let b = self.server().broker().clone();
        eventually(&format!("{n} parked pull(s)"), async || {
            b.metrics().parked_pulls() >= n
        })
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean stop");
        }
    }
}

/// How long a test waits for something asynchronous before it fails: generous, so that a
/// loaded 2-core CI machine never trips it (a passing run waits only as long as it takes).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Pause between two looks of a bounded wait.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `f` gives a value and returns it, looking again every few milliseconds; fails
/// the test, naming `what`, when nothing came within [`PATIENCE`]. For things that happen
/// asynchronously (a message arriving, a commit persisted), never for time-driven behaviour:
/// that is driven with a manual clock.
pub async fn eventually_some<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `cond` holds (see [`eventually_some`]).
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    eventually_some(what, async || cond().await.then_some(())).await
}

/// A bare QUIC connection to a broker (no Hello sent), for tests that write raw frames.
pub async fn raw_connection(
    addr: std::net::SocketAddr,
    fingerprint: &str,
) -> (quinn::Endpoint, quinn::Connection) {
    let tls = Tls::fingerprint_from_hex(fingerprint).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quiver_client::quinn_client_config(&tls).unwrap());
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

/// Held by the tests that run several broker processes or kill them and time their return
/// (cluster, replication, reconnect, crash tests): one at a time, so that on a 2-core machine
/// one's processes do not starve another's timing (the other tests still run beside them).
/// Each test runs on its own runtime and holds it for its whole body, awaits included: the
/// only other holders are other tests' threads, which simply wait their turn.
pub struct Heavy {
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Waits for the heavy tests' turn (see [`Heavy`]).
pub fn heavy() -> Heavy {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    Heavy {
        _turn: HEAVY.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Calls `f` until it gives `Ok`, pausing `every` between calls (for waits on other processes
/// and the network, whose time is real); after `limit`, the last `Err`. Callers fail the test
/// with it and whatever context they have (logs, state).
pub async fn within<T, E>(
    limit: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// A UDP relay on 127.0.0.1 in front of `target` that the test can cut and heal: while cut,
/// every datagram either way is dropped (a network partition for whoever reaches `target`
/// through it). Each client address gets its own socket towards `target`. Stops when
/// dropped.
pub struct UdpRelay {
    /// Where clients send.
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    pub async fn start(target: std::net::SocketAddr) -> UdpRelay {
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (f, c) = (front.clone(), cut.clone());
        let task = tokio::spawn(async move {
            let mut backs: HashMap<std::net::SocketAddr, Arc<tokio::net::UdpSocket>> =
                HashMap::new();
            let mut replies = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = f.recv_from(&mut buf).await else {
                    return;
                };
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        b.connect(target).await.unwrap();
                        let (b2, f2, c2) = (b.clone(), f.clone(), c.clone());
                        replies.spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = b2.recv(&mut buf).await {
                                if !c2.load(Ordering::Relaxed) {
                                    let _ = f2.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        backs.insert(client, b.clone());
                        b
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        UdpRelay { addr, cut, task }
    }

    /// Drops everything from now on (`true`) or forwards again (`false`).
    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A message as raw frames carry it: this id, these keys and body, nothing else set.
pub fn wire_message(id: u128, keys: &[&str], body: &'static [u8]) -> quiver_protocol::WireMessage {
    quiver_protocol::WireMessage {
        id,
        born_timestamp: 0,
        flags: 0,
        tag: String::new(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        properties: vec![],
        body: bytes::Bytes::from_static(body),
    }
}
