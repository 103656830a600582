//! Clients survive a broker restart: a real `quiver serve` process is killed with SIGKILL
//! under a running producer and push consumer and started again on the same port and data
//! directory; the same SDK objects carry on, and every acknowledged message is consumed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{
    Admin, Client, ClientConfig, ConsumeFrom, ConsumeResult, Message, MessageId, Producer,
    ProducerOptions, PullConsumer, PullOptions, PushConsumer, PushConsumerOptions, Tls,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::test_config;

/// A broker in its own process (so it can be killed with SIGKILL), on a temporary data
/// directory that outlives its restarts.
struct ProcessBroker {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProcessBroker {
    async fn start() -> ProcessBroker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("quiver.toml");
        std::fs::write(&config, test_config(dir.path()).to_toml()).unwrap();
        let (child, addr, fingerprint) = spawn(&config, None).await;
        ProcessBroker {
            child,
            addr,
            fingerprint,
            config,
            _dir: dir,
        }
    }

    /// SIGKILL, then a new process on the same port and data directory after `pause`.
    async fn kill_and_restart(&mut self, pause: Duration) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        tokio::time::sleep(pause).await;
        let (child, addr, fingerprint) = spawn(&self.config, Some(self.addr)).await;
        assert_eq!(addr, self.addr);
        assert_eq!(fingerprint, self.fingerprint, "same certificate");
        self.child = child;
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig::new(
            self.addr,
            Tls::fingerprint_from_hex(&self.fingerprint).unwrap(),
        )
    }
}

/// Starts `quiver serve` and reads its address and certificate fingerprint from its banner.
async fn spawn(config: &Path, listen: Option<SocketAddr>) -> (Child, SocketAddr, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("serve").arg("--config").arg(config);
    if let Some(a) = listen {
        cmd.arg("--listen").arg(a.to_string());
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start quiver serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = async {
        let (mut addr, mut fingerprint) = (None, None);
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("quiver broker listening on ") {
                addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            } else if let Some(fp) = line.trim().strip_prefix("sha256 fingerprint: ") {
                fingerprint = Some(fp.to_string());
            }
            if let (Some(a), Some(f)) = (&addr, &fingerprint) {
                return (*a, f.clone());
            }
        }
        panic!("quiver serve exited before its banner");
    };
    let (addr, fingerprint) = tokio::time::timeout(Duration::from_secs(20), banner)
        .await
        .expect("broker banner in time");
    // Keep reading stdout so the broker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, fingerprint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_and_push_consumer_survive_a_broker_kill_and_restart() {
    let _heavy = super::harness::heavy();
    let mut broker = ProcessBroker::start().await;
    let topic = "restarts";
    // Producer and consumer in separate clients, as in separate applications; every SDK
    // setting is the default.
    let producer_client = Client::connect(broker.client_config()).await.unwrap();
    Admin::new(producer_client.clone())
        .create_topic(topic, 4)
        .await
        .unwrap();
    let producer = Producer::new(producer_client.clone(), ProducerOptions::default());
    let consumer_client = Client::connect(broker.client_config()).await.unwrap();
    let consumed: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let options = PushConsumerOptions {
        consume_from: ConsumeFrom::First,
        ..PushConsumerOptions::new("survivors")
    };
    let consumer =
        PushConsumer::start_single(consumer_client.clone(), vec![topic.into()], options, {
            let consumed = consumed.clone();
            move |m| {
                consumed.lock().unwrap().push(m.msg_id);
                async { ConsumeResult::Success }
            }
        })
        .await
        .unwrap();

    // Four senders, each one message at a time, recording what was acknowledged and when.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Instant, MessageId)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (producer, stop, acked, failed) = (
                producer.clone(),
                stop.clone(),
                acked.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match producer
                        .send(Message::new(topic, format!("s{s}-m{i}")))
                        .await
                    {
                        Ok(r) => acked.lock().unwrap().push((Instant::now(), r.msg_id)),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let consumed_count = || consumed.lock().unwrap().len();
    let acked_count = || acked.lock().unwrap().len();

    crate::harness::eventually("traffic before the kill", async || {
        acked_count() >= 20 && consumed_count() >= 20
    })
    .await;
    let killed_at = Instant::now();
    broker.kill_and_restart(Duration::from_millis(100)).await;
    let restarted_at = Instant::now();
    // Run until both have clearly resumed after the restart, then a little longer.
    let (consumed_before, deadline) = (consumed_count(), Instant::now() + Duration::from_secs(12));
    loop {
        let resumed = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > restarted_at)
            .count();
        if resumed >= 50 && consumed_count() >= consumed_before + 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {resumed} sends acknowledged after the restart, {} consumed \
             (then {consumed_before}); failures: {:?}",
            consumed_count(),
            failed.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }

    // Every acknowledged message is consumed (at least once) by the same consumer.
    let acked_ids: HashSet<MessageId> = acked.lock().unwrap().iter().map(|(_, id)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let seen: HashSet<MessageId> = consumed.lock().unwrap().iter().copied().collect();
        let missing: Vec<MessageId> = acked_ids.difference(&seen).copied().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never consumed, e.g. {:?}",
        missing.len(),
        acked_ids.len(),
        &missing[..missing.len().min(5)]
    );
    // The default retry policy rides out a restart this quick: no send failed.
    assert!(
        failed.lock().unwrap().is_empty(),
        "{:?}",
        failed.lock().unwrap()
    );
    assert!(producer_client.generation() >= 2 && consumer_client.generation() >= 2);
    let first_after = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .find(|t| *t > killed_at);
    let consumed_total = consumed_count();
    eprintln!(
        "restart: broker back {:?} after the kill; first ack {:?} after the kill; {} acked, \
         {} deliveries ({} duplicates)",
        restarted_at - killed_at,
        first_after.map(|t| t - killed_at),
        acked_ids.len(),
        consumed_total,
        consumed_total - acked_ids.len()
    );

    consumer.shutdown().await.unwrap();
    producer_client.close().await;
    consumer_client.close().await;
    broker.child.start_kill().unwrap();
    broker.child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_producer_rides_out_a_broker_kill_and_restart() {
    let _heavy = super::harness::heavy();
    let mut broker = ProcessBroker::start().await;
    let topic = "cli-restarts";
    let mut produce = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["produce", "--topic", topic, "--json", "--broker"])
        .arg(broker.addr.to_string())
        .args(["--fingerprint", &broker.fingerprint])
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start quiver produce");
    let mut stdin = produce.stdin.take().unwrap();
    // Acknowledgements arrive as JSON lines; count them as they come.
    let mut out = BufReader::new(produce.stdout.take().unwrap()).lines();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = tokio::spawn({
        let acked = acked.clone();
        async move {
            while let Ok(Some(line)) = out.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap().to_string());
            }
        }
    });
    let mut written = 0u32;
    let mut write_for = async |d: Duration, stdin: &mut tokio::process::ChildStdin| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            stdin
                .write_all(format!("line-{written}\n").as_bytes())
                .await
                .unwrap();
            written += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    write_for(Duration::from_millis(600), &mut stdin).await;
    assert!(!acked.lock().unwrap().is_empty(), "acks before the kill");
    broker.kill_and_restart(Duration::from_millis(100)).await;
    write_for(Duration::from_millis(1500), &mut stdin).await;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), produce.wait())
        .await
        .expect("produce ends")
        .unwrap();
    reader.await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut produce.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "quiver produce failed: {stderr}");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), written as usize, "one ack per line");

    // Every acknowledged message is in the topic.
    let client = Client::connect(broker.client_config()).await.unwrap();
    let consumer = PullConsumer::new(client.clone());
    let mut stored = HashSet::new();
    for q in consumer.queues(topic).await.unwrap() {
        let mut offset = q.min_offset;
        while offset < q.max_offset {
            let r = consumer
                .pull(topic, q.queue_id, offset, PullOptions::default())
                .await
                .unwrap();
            stored.extend(r.messages.iter().map(|m| m.msg_id.to_string()));
            offset = r.next_offset;
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    client.close().await;
    broker.child.start_kill().unwrap();
    broker.child.wait().await.unwrap();
}
