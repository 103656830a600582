//! `quiver dev-cluster` as a user runs it: three nodes come up with a leader and their brokers
//! alive, and SIGINT stops every `quiver serve` it started.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quiver_client::{Admin, Client, ClientConfig, Tls};
use quiver_protocol::cmd::ClusterInfoReply;

/// The dev-cluster process and the node pids it printed; on drop (a failed test) everything
/// still running is killed.
struct DevCluster {
    child: Child,
    nodes: Vec<(u64, SocketAddr, u32)>,
    dir: std::path::PathBuf,
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, _, pid) in &self.nodes {
            if is_our_node(*pid, &self.dir) {
                // SAFETY: kill(2) on a pid whose command line names this test's directory.
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// True while `pid` is a live (not zombie) `quiver serve` of a node config in `dir`.
fn is_our_node(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    !zombie && cmdline.contains("serve") && cmdline.contains(&*dir.to_string_lossy())
}

/// `node 1  127.0.0.1:4000  controller voter + broker  broker set set-1  (pid 123)`.
fn parse_node(line: &str) -> Option<(u64, SocketAddr, u32)> {
    let rest = line.strip_prefix("node ")?;
    let mut words = rest.split_whitespace();
    let id = words.next()?.parse().ok()?;
    let addr = words.next()?.parse().ok()?;
    let pid = line
        .rsplit_once("(pid ")?
        .1
        .strip_suffix(')')?
        .parse()
        .ok()?;
    Some((id, addr, pid))
}

async fn info(addr: SocketAddr, cert: &Path) -> anyhow::Result<ClusterInfoReply> {
    let mut cfg = ClientConfig::new(addr, Tls::CaFile(cert.to_path_buf()));
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(2);
    let client = Client::connect(cfg).await?;
    let r = Admin::new(client.clone()).cluster_info().await;
    client.close().await;
    Ok(r?)
}

#[test]
fn dev_cluster_starts_three_nodes_and_sigint_stops_them_all() {
    let _heavy = super::harness::heavy();
    let dir = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(dir.path().join("dev-cluster.stderr")).unwrap();
    let cluster_dir = dir.path().join("cluster");
    let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "dev-cluster",
            "--nodes",
            "3",
            "--ready-timeout",
            "25",
            "--dir",
        ])
        .arg(&cluster_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("quiver dev-cluster starts");
    let mut dc = DevCluster {
        child,
        nodes: Vec::new(),
        dir: cluster_dir.clone(),
    };
    let stdout = dc.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_text =
        || std::fs::read_to_string(dir.path().join("dev-cluster.stderr")).unwrap_or_default();

    // Its output names the nodes (with pids), then reports the cluster ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(n) = parse_node(&line) {
                    dc.nodes.push(n);
                }
                let ready = line.starts_with("cluster ready:");
                output.push(line);
                if ready {
                    break;
                }
            }
            Err(e) => panic!(
                "dev-cluster not ready within 30 s ({e:?}); stdout:\n{}\nstderr:\n{}",
                output.join("\n"),
                stderr_text()
            ),
        }
    }
    assert_eq!(
        dc.nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{output:#?}"
    );
    for (_, _, pid) in &dc.nodes {
        assert!(is_our_node(*pid, &cluster_dir), "node pid {pid} is running");
    }
    for f in [
        "node-1.toml",
        "node-2.toml",
        "node-3.toml",
        "shared/tls/cert.pem",
    ] {
        assert!(cluster_dir.join(f).exists(), "{f} written");
    }

    // The SDK sees what it printed: the three voters agree on a leader, three brokers alive.
    let cert = cluster_dir.join("shared").join("tls").join("cert.pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let views: Vec<ClusterInfoReply> = rt.block_on(async {
        let mut v = Vec::new();
        for (_, addr, _) in &dc.nodes {
            v.push(
                info(*addr, &cert)
                    .await
                    .expect("the node answers ClusterInfo"),
            );
        }
        v
    });
    let leader = views[0].leader;
    assert_ne!(leader, 0, "{views:?}");
    for v in &views {
        assert_eq!((v.leader, v.term), (leader, views[0].term), "{views:?}");
        assert_eq!(v.nodes.iter().filter(|n| n.voter).count(), 3, "{v:?}");
        let mut alive: Vec<(u64, String)> = v
            .brokers
            .iter()
            .filter(|b| b.alive)
            .map(|b| (b.id, b.set.clone()))
            .collect();
        alive.sort();
        assert_eq!(
            alive,
            vec![
                (1, "set-1".to_string()),
                (2, "set-2".to_string()),
                (3, "set-3".to_string())
            ],
            "{v:?}"
        );
    }

    // SIGINT (Ctrl-C): dev-cluster stops every node and exits cleanly, all within 10 s.
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(dc.child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = loop {
        if let Some(s) = dc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "dev-cluster still running 10 s after SIGINT; stderr:\n{}",
            stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}; stderr:\n{}", stderr_text());
    let still: Vec<u32> = dc
        .nodes
        .iter()
        .map(|n| n.2)
        .filter(|pid| is_our_node(*pid, &cluster_dir))
        .collect();
    assert!(
        still.is_empty(),
        "nodes still running after dev-cluster exited: {still:?}"
    );
    eprintln!(
        "dev-cluster and its nodes stopped {:?} after SIGINT",
        sent.elapsed()
    );
    // Nothing answers at the nodes' addresses any more.
    rt.block_on(async {
        for (id, addr, _) in &dc.nodes {
            assert!(
                info(*addr, &cert).await.is_err(),
                "node {id} still answers at {addr}"
            );
        }
    });
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        rest.push(line);
    }
    let rest = rest.join("\n");
    assert!(rest.contains("node 1 (pid"), "{rest}");
    assert!(rest.contains("kept in"), "{rest}");
    // The data stays for inspection.
    assert!(cluster_dir.join("node-1.log").exists());
}
