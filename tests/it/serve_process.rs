//! `quiver serve` as a real process: what its environment, its pipes and hostile peers do to it.
//! Each test starts the binary on 127.0.0.1 port 0 in a temporary directory and reads the
//! address and fingerprint from its banner.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use quiver_protocol::{cmd, split_frame, Command as Cmd, Request, Status, PROTOCOL_VERSION};

struct Serve {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
    /// The banner's reader: dropping it closes the read end of the stdout pipe.
    stdout: Option<BufReader<std::process::ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(envs: &[(&str, &str)]) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .env("QUIVER_BROKER__LISTEN", "127.0.0.1:0")
        .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
        .env("QUIVER_STORE__SEGMENT_SIZE", "1048576")
        .env("QUIVER_STORE__MAX_MESSAGE_SIZE", "262144")
        .env("QUIVER_STORE__INDEX_SLOTS", "1024")
        .env("QUIVER_STORE__INDEX_ENTRIES", "4096")
        .env("QUIVER_STORE__DISK_HIGH_WATERMARK", "1.0")
        .env("QUIVER_STORE__DISK_CLEAN_WATERMARK", "1.0")
        .env("QUIVER_STORE__DISK_HEADROOM_BYTES", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("quiver serve starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut fingerprint) = (None, None);
    let mut line = String::new();
    while fingerprint.is_none() {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve exited before its banner: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(a) = line.strip_prefix("quiver broker listening on ") {
            addr = Some(a.split_whitespace().next().unwrap().parse().unwrap());
        }
        if let Some(f) = line.trim().strip_prefix("sha256 fingerprint: ") {
            fingerprint = Some(f.to_string());
        }
    }
    Serve {
        child,
        addr: addr.expect("the banner names the address"),
        fingerprint: fingerprint.unwrap(),
        stdout: Some(stdout),
        _dir: dir,
    }
}

/// Waits for the process to exit, at most `limit`. A helper thread blocks in waitid(2) with
/// WNOWAIT (the child stays to be reaped by `Child`), so nothing polls.
fn exits_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: waitid on our own child with a zeroed siginfo_t we own; WNOWAIT leaves it
        // waitable, so std's Child still reaps it.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(0) => child.try_wait().unwrap(),
        _ => None,
    }
}

async fn connect(s: &Serve) -> (quinn::Endpoint, quinn::Connection) {
    crate::harness::raw_connection(s.addr, &s.fingerprint).await
}

async fn exchange(conn: &quinn::Connection, req: &Request) -> Status {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&req.encode()).await.unwrap();
    let _ = send.finish();
    let resp = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("the broker answers")
        .unwrap();
    let (h, _) = split_frame(&bytes::Bytes::from(resp), 1 << 20).unwrap();
    Status::from_u16(h.code)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The CLI's own variables (documented in the README) and `QUIVER_CONFIG` do not stop serve;
/// `QUIVER_CONFIG` names the file it reads.
#[test]
fn client_variables_do_not_stop_serve_and_quiver_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quiver.toml");
    std::fs::write(&file, "[broker]\nname = \"from-the-file\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--print-config"])
        .env("QUIVER_CONFIG", &file)
        .env("QUIVER_FINGERPRINT", "00:11")
        .env("QUIVER_CA", "/nonexistent/ca.pem")
        .env("QUIVER_BROKER", "127.0.0.1:10911")
        .env("QUIVER_STORE__FLUSH_MODE", "sync")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "serve refused its environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name = \"from-the-file\""), "{stdout}");
    assert!(stdout.contains("flush_mode = \"sync\""), "{stdout}");
}

/// `--print-config` shows sizes and durations in human units, given in the environment or the
/// file either way, and `serve --config` accepts what it printed.
#[test]
fn print_config_speaks_human_units_and_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quiver.toml");
    std::fs::write(
        &file,
        "[broker]\nbusy_timeout_ms = 1500\n[store]\nretention_hours = 48\n",
    )
    .unwrap();
    let print = |config: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["serve", "--print-config", "--config"])
            .arg(config)
            .env("QUIVER_STORE__SEGMENT_SIZE", "512MiB")
            .env("QUIVER_BROKER__LONG_POLL_MAX_MS", "15s")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "serve refused the config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = print(&file);
    for line in [
        "segment_size = \"512MiB\"",
        "long_poll_max_ms = \"15s\"",
        "busy_timeout_ms = \"1500ms\"",
        "retention_hours = \"2d\"",
    ] {
        assert!(first.lines().any(|l| l == line), "{line} not in:\n{first}");
    }
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &first).unwrap();
    assert_eq!(
        print(&printed),
        first,
        "the printed config loads back unchanged"
    );
}

/// `quiver serve 2>&1 | head -5`: once the reader of its output is gone, SIGTERM still stops
/// the broker cleanly.
#[test]
fn sigterm_stops_serve_after_its_output_pipes_closed() {
    let mut s = serve(&[]);
    // Close the read ends of both pipes, as `head` does when it has its lines.
    drop(s.stdout.take());
    drop(s.child.stderr.take());
    // Make the broker write log lines into the closed pipe before the signal.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_e, conn) = connect(&s).await;
        let hello = Request::Hello(cmd::Hello {
            version: PROTOCOL_VERSION,
            client_id: "pipe".into(),
        });
        assert_eq!(exchange(&conn, &hello).await, Status::Ok);
        conn.close(0u32.into(), b"bye");
    });
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = exits_within(&mut s.child, Duration::from_secs(15))
        .expect("SIGTERM stops the broker even though its stderr is a closed pipe");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

/// A connection open when the broker stops is closed with the reason PROTOCOL.md §2 gives.
#[test]
fn shutdown_closes_connections_with_a_reason() {
    let mut s = serve(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_e, conn) = rt.block_on(connect(&s));
    let hello = Request::Hello(cmd::Hello {
        version: PROTOCOL_VERSION,
        client_id: "reason".into(),
    });
    assert_eq!(rt.block_on(exchange(&conn, &hello)), Status::Ok);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let reason = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .expect("the broker closes the connection")
    });
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), 0);
            assert_eq!(&c.reason[..], b"broker shutting down");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    assert!(exits_within(&mut s.child, Duration::from_secs(15)).is_some());
}

/// Streams that send only a request header claiming the largest frame and then stall cost
/// the broker (almost) nothing: memory follows the bytes that arrive, not the claimed length.
#[test]
fn claimed_frame_lengths_do_not_reserve_memory() {
    let s = serve(&[("QUIVER_BROKER__REQUEST_READ_TIMEOUT_MS", "1000")]);
    let pid = s.child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_e, good) = connect(&s).await;
        let hello = Request::Hello(cmd::Hello {
            version: PROTOCOL_VERSION,
            client_id: "good".into(),
        });
        assert_eq!(exchange(&good, &hello).await, Status::Ok);
        let before = rss_kib(pid);
        // Largest frame the broker accepts by default (16 MiB + 64 KiB).
        let claimed: u32 = (16 << 20) + (64 << 10);
        let mut header = BytesMut::new();
        header.put_u32_le(claimed);
        header.put_u16_le(Cmd::Send as u16);
        header.put_u16_le(0);
        let mut peak = before;
        for round in 0..2 {
            let (_e, conn) = connect(&s).await;
            let mut streams = Vec::new();
            for _ in 0..200 {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&header).await.unwrap();
                streams.push((send, recv));
            }
            // Meanwhile others are still served.
            let ping = Request::TopicList(cmd::TopicList);
            assert_eq!(
                exchange(&good, &ping).await,
                Status::Ok,
                "round {round}: the broker keeps serving others"
            );
            peak = peak.max(rss_kib(pid));
            // The broker gives up on them after its read timeout (1 s here): their buffers (if
            // any) are freed, and the next round's come from a heap that has seen 16 MiB frees.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            peak = peak.max(rss_kib(pid));
            drop(streams);
        }
        let grown_mib = peak.saturating_sub(before) / 1024;
        assert!(
            grown_mib <= 64,
            "2 x 200 stalled streams grew the broker's RSS by {grown_mib} MiB (from {} MiB)",
            before / 1024
        );
    });
}

/// Logs in a pipe carry no colour codes; `--log-format json` (or `QUIVER_LOG_FORMAT=json`)
/// writes one JSON object per line; the banner names the metrics address.
#[test]
fn logs_in_a_pipe_are_plain_and_json_on_request() {
    for (format, json) in [("text", false), ("json", true)] {
        let mut s = serve(&[("QUIVER_LOG_FORMAT", format)]);
        // SAFETY: kill(2) on our own child.
        assert_eq!(
            unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let status = exits_within(&mut s.child, Duration::from_secs(20)).expect("stops");
        assert!(status.success());
        let mut err = String::new();
        std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!err.contains('\u{1b}'), "colour codes in a pipe:\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "no log lines");
        for l in &lines {
            let parsed = serde_json::from_str::<serde_json::Value>(l);
            assert_eq!(parsed.is_ok(), json, "{format}: {l}");
        }
        if json {
            assert!(err.contains("\"level\":\"INFO\""), "{err}");
        }
    }
}

/// `--version` names the commit and the protocol version; completions and the manual page
/// come from the command definitions.
#[test]
fn version_completions_and_manual_page() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v = run(&["--version"]);
    assert!(v.starts_with("quiver "), "{v}");
    assert!(
        v.contains("commit ") && v.contains("protocol version 3"),
        "{v}"
    );
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_quiver()") && bash.contains("dev-cluster"),
        "{bash}"
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef quiver"));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH quiver 1") && man.contains("serve"),
        "{man}"
    );
}

/// A data directory that cannot be made is named in a one-line error, like the client
/// commands' errors.
#[test]
fn a_bad_data_directory_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&bad)
        .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(&*bad.to_string_lossy()), "{err}");
    assert!(lines[0].contains("Not a directory"), "{err}");
}

/// Host names are addresses too: `serve --listen localhost:0` listens on loopback, and
/// `bench --broker` (the CLI's one name for the broker address) resolves them.
#[test]
fn host_names_for_listen_and_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.path())
        .env("QUIVER_ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first
        .strip_prefix("quiver broker listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("banner: {first:?}"))
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let _ = child.kill();
    let _ = child.wait();

    let out = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["bench", "produce", "--broker", "no-such-host.invalid:1"])
        .env_remove("QUIVER_BROKER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot resolve the broker address"), "{err}");
}

/// The audit log: an allowed change (a topic created, a topic deleted) is one line on the
/// `quiver::audit` target naming who, from where, the command and the topic; a plain send
/// or read is not written.
#[test]
fn changes_are_written_to_the_audit_log() {
    let mut s = serve(&[("QUIVER_LOG_FORMAT", "json")]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (_endpoint, conn) = connect(&s).await;
        let hello = Request::Hello(cmd::Hello {
            version: PROTOCOL_VERSION,
            client_id: "audit".into(),
        });
        assert_eq!(exchange(&conn, &hello).await, Status::Ok);
        let create = Request::TopicCreate(cmd::TopicCreate {
            topic: "audited".into(),
            queues: 1,
        });
        assert_eq!(exchange(&conn, &create).await, Status::Ok);
        // Routes (which clients ask for all the time) are not changes.
        let route = Request::Route(cmd::Route {
            topic: "audited".into(),
            create: true,
        });
        assert_eq!(exchange(&conn, &route).await, Status::Ok);
        let send = Request::Send(cmd::Send {
            topic: "audited".into(),
            queue_id: 0,
            messages: vec![crate::harness::wire_message(7, &[], b"x")],
        });
        assert_eq!(exchange(&conn, &send).await, Status::Ok);
        let delete = Request::TopicDelete(cmd::TopicDelete {
            topic: "audited".into(),
        });
        assert_eq!(exchange(&conn, &delete).await, Status::Ok);
    });
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    exits_within(&mut s.child, Duration::from_secs(20)).expect("stops");
    let mut err = String::new();
    std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let audit: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "quiver::audit")
        .map(|l| l["fields"].clone())
        .collect();
    let commands: Vec<&str> = audit
        .iter()
        .map(|f| f["command"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(commands, ["TopicCreate", "TopicDelete"], "{err}");
    for f in &audit {
        assert_eq!(f["outcome"], "allowed", "{f}");
        assert_eq!(f["who"], "\"anonymous\"", "{f}");
        assert_eq!(f["from"], "127.0.0.1", "{f}");
        assert_eq!(f["resources"], "\"topic:audited\"", "{f}");
    }
}
