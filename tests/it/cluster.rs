//! The cluster controller with real processes: three `quiver serve` voters on 127.0.0.1 elect
//! a leader over QUIC with mutual TLS, survive `kill -9` of the leader, take a restarted node
//! back, refuse Raft messages from non-members, and refuse bad cluster configs at start.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_client::{Admin, Client, ClientConfig, ClientError, Status, Tls};
use quiver_protocol::cmd::{ClusterInfoReply, Raft, RaftKind};

/// A `quiver serve` process; killed when dropped.
pub(crate) struct Node {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    pub(crate) addr: SocketAddr,
}

impl Node {
    pub(crate) fn start(config: &Path, log: &Path, addr: SocketAddr) -> Node {
        let mut n = Node {
            child: None,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            addr,
        };
        n.spawn();
        n
    }

    pub(crate) fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("quiver serve starts");
        self.child = Some(child);
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One certificate and key shared by every node: the cluster's trust anchor.
pub(crate) fn shared_identity(dir: &Path) -> (PathBuf, PathBuf) {
    let mut cfg = quiver::config::Config::default();
    cfg.broker.data_dir = dir.join("shared");
    let id = quiver::net::tls::load_or_generate(&cfg).unwrap();
    let key = id.cert_path.with_file_name("key.pem");
    (id.cert_path, key)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn node_config(
    dir: &Path,
    name: &str,
    id: u64,
    controller: bool,
    broker_set: Option<&str>,
    cluster: &str,
    voters: &[(u64, SocketAddr)],
    listen: SocketAddr,
    (cert, key): &(PathBuf, PathBuf),
) -> PathBuf {
    let voters: Vec<String> = voters
        .iter()
        .map(|(i, a)| format!("{{ id = {i}, addr = \"{a}\" }}"))
        .collect();
    let text = format!(
        r#"[broker]
listen = "{listen}"
data_dir = "{data}"
[store]
segment_size = 1048576
max_message_size = 262144
index_slots = 1024
index_entries = 4096
disk_headroom_bytes = 0
disk_high_watermark = 1.0
disk_clean_watermark = 1.0
[tls]
cert = "{cert}"
key = "{key}"
[admin]
listen = "127.0.0.1:0"
[cluster]
cluster_id = "{cluster}"
node_id = {id}
controller = {controller}
{broker_set}broker_heartbeat_ms = 200
broker_lease_ms = 1000
voters = [ {voters} ]
"#,
        data = dir.join(name).display(),
        cert = cert.display(),
        key = key.display(),
        voters = voters.join(", "),
        broker_set = broker_set.map_or(String::new(), |s| format!("broker_set = \"{s}\"\n")),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) async fn info(addr: SocketAddr, cert: &Path) -> Result<ClusterInfoReply, ClientError> {
    let mut cfg = ClientConfig::new(addr, Tls::CaFile(cert.to_path_buf()));
    cfg.request_timeout = Duration::from_millis(500);
    let client = Client::connect(cfg).await?;
    let r = Admin::new(client.clone()).cluster_info().await;
    client.close().await;
    r
}

/// Polls until every node in `addrs` names the same leader (not in `not`) in the same term,
/// at most `limit`; returns (leader, term).
pub(crate) async fn agreed_leader(
    addrs: &[SocketAddr],
    cert: &Path,
    not: &[u64],
    limit: Duration,
    logs: &Path,
) -> (u64, u64) {
    let agreed = super::harness::within(limit, Duration::from_millis(50), async || {
        let mut last = Vec::new();
        for a in addrs {
            last.push(info(*a, cert).await.map(|i| (i.leader, i.term)));
        }
        match last.first() {
            Some(Ok((leader, term)))
                if *leader != 0
                    && !not.contains(leader)
                    && last
                        .iter()
                        .all(|r| r.as_ref().ok() == Some(&(*leader, *term))) =>
            {
                Ok((*leader, *term))
            }
            _ => Err(last),
        }
    })
    .await;
    agreed.unwrap_or_else(|last| {
        panic!(
            "no agreed leader within {limit:?}: {last:?}\n{}",
            tail_logs(logs)
        )
    })
}

/// The last lines of every node's log in `dir`, for failure messages.
pub(crate) fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n", p.display());
            for l in lines.iter().take(6) {
                out += l;
                out += "\n";
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_elect_fail_over_and_take_a_node_back() {
    let _heavy = super::harness::heavy();
    let dir = tempfile::tempdir().unwrap();
    let identity = shared_identity(dir.path());
    let voters: Vec<(u64, SocketAddr)> = (1..=3)
        .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    // Nodes 1-3: controller voters with brokers in sets a, b, c; node 4: the broker of set d
    // without a controller (it registers through the voters).
    let mut all = voters.clone();
    all.push((4, SocketAddr::from(([127, 0, 0, 1], free_port()))));
    let mut nodes: Vec<Node> = all
        .iter()
        .map(|(id, addr)| {
            let set = ["a", "b", "c", "d"][*id as usize - 1];
            let cfg = node_config(
                dir.path(),
                &format!("node{id}"),
                *id,
                *id <= 3,
                Some(set),
                "c1",
                &voters,
                *addr,
                &identity,
            );
            Node::start(&cfg, &dir.path().join(format!("node{id}.log")), *addr)
        })
        .collect();
    let cert = identity.0.clone();
    let addrs: Vec<SocketAddr> = voters.iter().map(|(_, a)| *a).collect();
    let (leader, term) =
        agreed_leader(&addrs, &cert, &[], Duration::from_secs(20), dir.path()).await;
    let i = info(addrs[0], &cert).await.unwrap();
    assert_eq!(i.cluster_id, "c1");
    assert_eq!(i.nodes.len(), 3);
    assert!(i.nodes.iter().all(|n| n.voter));

    // Every broker registers in its set and stays alive; the controller-less node 4 answers
    // ClusterInfo with the brokers of the metadata it reads from a voter.
    let alive = |i: &ClusterInfoReply| -> Vec<(u64, String, bool)> {
        let mut v: Vec<_> = i
            .brokers
            .iter()
            .map(|b| (b.id, b.set.clone(), b.alive))
            .collect();
        v.sort();
        v
    };
    let want: Vec<(u64, String, bool)> = vec![
        (1, "a".into(), true),
        (2, "b".into(), true),
        (3, "c".into(), true),
        (4, "d".into(), true),
    ];
    wait_for(&addrs[0], &cert, Duration::from_secs(20), dir.path(), |i| {
        alive(i) == want
    })
    .await;
    wait_for(&all[3].1, &cert, Duration::from_secs(20), dir.path(), |i| {
        i.cluster_id == "c1" && i.node_id == 4 && alive(i) == want
    })
    .await;

    // An ordinary client (no cluster certificate) cannot speak Raft to a controller.
    let client = Client::connect(ClientConfig::new(addrs[0], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    for kind in [RaftKind::Vote, RaftKind::Write] {
        let forged = Raft {
            cluster_id: "c1".into(),
            kind,
            body: bytes::Bytes::from_static(b"{}"),
        };
        match client.call(forged).await {
            Err(ClientError::Broker { status, .. }) => {
                assert_eq!(status, Status::NotClusterMember)
            }
            other => panic!("a forged {kind:?} was not refused: {other:?}"),
        }
    }
    client.close().await;

    // kill -9 the leader: the two others agree on a new one within 5 s.
    let idx = voters.iter().position(|(id, _)| *id == leader).unwrap();
    nodes[idx].kill9();
    let rest: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, a)| *a)
        .collect();
    let killed = Instant::now();
    let (new_leader, new_term) =
        agreed_leader(&rest, &cert, &[leader], Duration::from_secs(5), dir.path()).await;
    assert!(new_term > term, "a new term after the failover");
    eprintln!(
        "new leader {new_leader} in term {new_term} after {:?}",
        killed.elapsed()
    );
    // Its broker's lease runs out; the others keep theirs through the new leader.
    let expected: Vec<(u64, String, bool)> = want
        .iter()
        .map(|(id, set, _)| (*id, set.clone(), *id != leader))
        .collect();
    wait_for(&rest[0], &cert, Duration::from_secs(20), dir.path(), |i| {
        alive(i) == expected
    })
    .await;

    // The old leader comes back (same data directory), follows the new one, and its broker
    // is alive again.
    nodes[idx].spawn();
    let (again, _) = agreed_leader(&addrs, &cert, &[], Duration::from_secs(20), dir.path()).await;
    assert_ne!(again, 0);
    let back = info(nodes[idx].addr, &cert).await.unwrap();
    assert_eq!(back.leader, again);
    wait_for(
        &nodes[idx].addr,
        &cert,
        Duration::from_secs(10),
        dir.path(),
        |i| alive(i) == want,
    )
    .await;

    // A fifth node joins as a voter (cluster.join: it does not bootstrap), then leaves.
    let addr5 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg5 = node_config(
        dir.path(),
        "node5",
        5,
        true,
        Some("e"),
        "c1",
        &voters,
        addr5,
        &identity,
    );
    let mut text = std::fs::read_to_string(&cfg5).unwrap();
    text += "join = true\n";
    std::fs::write(&cfg5, text).unwrap();
    let _node5 = Node::start(&cfg5, &dir.path().join("node5.log"), addr5);
    let admin_client = Client::connect(ClientConfig::new(addrs[0], Tls::CaFile(cert.clone())))
        .await
        .unwrap();
    let admin = Admin::new(admin_client.clone());
    let voters_of = |i: &ClusterInfoReply| -> Vec<u64> {
        let mut v: Vec<u64> = i.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
        v.sort();
        v
    };
    // The new node's listener may take a moment to come up: retry while the leader cannot
    // reach it yet.
    let added = super::harness::within(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || admin.cluster_add_voter(5, addr5).await,
    )
    .await
    .unwrap_or_else(|e| panic!("add-voter failed: {e}\n{}", tail_logs(dir.path())));
    eprintln!("voters right after the addition: {:?}", voters_of(&added));
    wait_for(&addrs[0], &cert, Duration::from_secs(20), dir.path(), |i| {
        voters_of(i) == vec![1, 2, 3, 5]
    })
    .await;
    wait_for(&addr5, &cert, Duration::from_secs(10), dir.path(), |i| {
        i.leader != 0 && voters_of(i) == vec![1, 2, 3, 5]
    })
    .await;
    // The promotion may still be settling (a membership change under way): retry.
    let removed = super::harness::within(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || admin.cluster_remove_voter(5).await,
    )
    .await
    .unwrap_or_else(|e| panic!("remove-voter failed: {e}\n{}", tail_logs(dir.path())));
    // The answering node may be a follower that applies the change a moment later.
    eprintln!("voters right after the removal: {:?}", voters_of(&removed));
    wait_for(&addrs[0], &cert, Duration::from_secs(20), dir.path(), |i| {
        voters_of(i) == vec![1, 2, 3]
    })
    .await;
    admin_client.close().await;
}

/// Polls `addr`'s ClusterInfo until `ok` holds, at most `limit`.
pub(crate) async fn wait_for(
    addr: &SocketAddr,
    cert: &Path,
    limit: Duration,
    logs: &Path,
    ok: impl Fn(&ClusterInfoReply) -> bool,
) {
    let r = super::harness::within(limit, Duration::from_millis(50), async || {
        match info(*addr, cert).await {
            Ok(i) if ok(&i) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    if let Err(r) = r {
        panic!("not within {limit:?}: {r:?}\n{}", tail_logs(logs));
    }
}

#[test]
fn bad_cluster_configs_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let identity = shared_identity(dir.path());
    let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cases: Vec<(&str, PathBuf)> = vec![
        (
            "not among cluster.voters",
            node_config(
                dir.path(),
                "unknown",
                9,
                true,
                Some("a"),
                "c1",
                &[(1, a), (2, b)],
                a,
                &identity,
            ),
        ),
        (
            "appears twice",
            node_config(
                dir.path(),
                "twice",
                1,
                true,
                Some("a"),
                "c1",
                &[(1, a), (1, b)],
                a,
                &identity,
            ),
        ),
        (
            "cluster_id",
            node_config(
                dir.path(),
                "badid",
                1,
                true,
                Some("a"),
                "bad id!",
                &[(1, a)],
                a,
                &identity,
            ),
        ),
    ];
    for (want, cfg) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{want}: serve started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want}: {err}");
    }

    // A node that ran in cluster c1 is refused when its config later names another cluster
    // (its data belongs to c1).
    let cfg = node_config(
        dir.path(),
        "owned",
        1,
        true,
        Some("a"),
        "c1",
        &[(1, a)],
        a,
        &identity,
    );
    let mut node = Node::start(&cfg, &dir.path().join("owned.log"), a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("owned").join("cluster.json").exists() {
        assert!(Instant::now() < deadline, "{}", tail_logs(dir.path()));
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill9();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("cluster_id = \"c1\"", "cluster_id = \"c2\"");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("serve")
        .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a mismatched cluster id started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to node 1 of cluster \"c1\"") && err.contains("c2"),
        "{err}"
    );
}
