//! The `quiver produce | consume | admin` commands: the real binary against a real broker,
//! pinning its certificate fingerprint.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::TestBroker;

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as one JSON value per line.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    pub fn expect_ok(self, what: &str) -> Run {
        assert!(self.ok, "{what} failed: {self:#?}");
        self
    }

    pub fn expect_fail(self, what: &str) -> Run {
        assert!(!self.ok, "{what} should fail: {self:#?}");
        assert_eq!(self.code, Some(1), "{what}: exit code {self:#?}");
        self
    }
}

/// Runs the binary with `args` (and `stdin` piped in when given), without the caller's
/// QUIVER_* environment, in a directory without a local broker.
fn run_raw(args: Vec<String>, stdin: Option<Vec<u8>>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.args(&args)
        .env_remove("QUIVER_BROKER")
        .env_remove("QUIVER_FINGERPRINT")
        .env_remove("QUIVER_CA")
        .env_remove("QUIVER_USER")
        .env_remove("QUIVER_PASSWORD")
        .env_remove("QUIVER_CREDENTIALS")
        .env_remove("QUIVER_NEW_PASSWORD")
        .env_remove("QUIVER_CLIENT_CERT")
        .env_remove("QUIVER_CLIENT_KEY")
        .env_remove("RUST_LOG")
        .current_dir(std::env::temp_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("quiver starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(&input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("quiver runs");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with `args` and no broker, off the async runtime.
async fn run_local(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || run_raw(args, None))
        .await
        .unwrap()
}

/// Runs the binary against `broker`.
pub struct Quiver {
    addr: String,
    fingerprint: String,
}

impl Quiver {
    pub fn new(broker: &TestBroker) -> Self {
        Quiver {
            addr: broker.server().addr.to_string(),
            fingerprint: broker.server().fingerprint.clone(),
        }
    }

    fn args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--broker".into(),
            self.addr.clone(),
            "--fingerprint".into(),
            self.fingerprint.clone(),
        ]);
        v
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let args = self.args(args);
        tokio::task::spawn_blocking(move || run_raw(args, None))
            .await
            .unwrap()
    }

    pub async fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let (args, stdin) = (self.args(args), stdin.to_vec());
        tokio::task::spawn_blocking(move || run_raw(args, Some(stdin)))
            .await
            .unwrap()
    }
}

fn bodies(records: &[Value]) -> Vec<String> {
    let mut b: Vec<String> = records
        .iter()
        .map(|r| r["body"].as_str().expect("body").to_string())
        .collect();
    b.sort();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_from_args_and_stdin_then_consume() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);

    // From arguments, with everything a message can carry.
    let sent = q
        .run(&[
            "produce",
            "--topic",
            "cli",
            "--tag",
            "created",
            "--key",
            "order-1",
            "--key",
            "o1",
            "--prop",
            "region=eu",
            "--json",
            "first",
            "second",
        ])
        .await
        .expect_ok("produce from args")
        .json();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for s in &sent {
        assert_eq!(s["topic"], "cli");
        assert_eq!(s["id"].as_str().unwrap().len(), 32);
        assert!(s["queue"].is_u64() && s["offset"].is_u64(), "{s}");
    }

    // From stdin: one message per line, batches of 2, empty lines skipped, CRLF stripped.
    let sent = q
        .run_stdin(
            &["produce", "--topic", "cli", "--batch", "2", "--json"],
            b"line 1\nline 2\n\nline 3\r\nline 4\nline 5",
        )
        .await
        .expect_ok("produce from stdin")
        .json();
    assert_eq!(sent.len(), 5, "{sent:?}");
    // A batch lands contiguously in one queue.
    assert_eq!(sent[0]["queue"], sent[1]["queue"]);
    assert_eq!(
        sent[1]["offset"].as_u64().unwrap(),
        sent[0]["offset"].as_u64().unwrap() + 1
    );

    // Human output: a header and one row per message.
    let human = q
        .run(&["produce", "--topic", "cli", "--queue", "2", "third"])
        .await
        .expect_ok("produce human");
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{human:?}");
    assert!(lines[0].starts_with("MSG ID"), "{human:?}");
    assert!(
        lines[1].contains(" cli ") && lines[1].contains(" 2 "),
        "{human:?}"
    );

    // Everything comes back, across all queues.
    let all = q
        .run(&["consume", "--topic", "cli", "--json"])
        .await
        .expect_ok("consume all")
        .json();
    assert_eq!(
        bodies(&all),
        ["first", "line 1", "line 2", "line 3", "line 4", "line 5", "second", "third"]
    );
    let first = all.iter().find(|m| m["body"] == "first").unwrap();
    assert_eq!(first["tag"], "created");
    assert_eq!(first["keys"], serde_json::json!(["order-1", "o1"]));
    assert_eq!(first["properties"]["region"], "eu");
    assert_eq!(first["body_encoding"], "utf8");
    assert_eq!(first["topic"], "cli");

    // --max stops early.
    let some = q
        .run(&["consume", "--topic", "cli", "--max", "3", "--json"])
        .await
        .expect_ok("consume --max")
        .json();
    assert_eq!(some.len(), 3);

    // --queue reads one queue only; human rows start with queue/offset.
    let q2 = q
        .run(&["consume", "--topic", "cli", "--queue", "2"])
        .await
        .expect_ok("consume --queue");
    assert!(q2
        .stdout
        .lines()
        .next()
        .unwrap()
        .starts_with("QUEUE/OFFSET"));
    assert!(
        q2.stdout.lines().skip(1).all(|l| l.starts_with("2/")),
        "{q2:?}"
    );
    assert!(q2.stdout.contains("third"), "{q2:?}");

    // --group commits what it printed; the next run continues there.
    let a = q
        .run(&[
            "consume", "--topic", "cli", "--group", "g1", "--max", "3", "--json",
        ])
        .await
        .expect_ok("group run 1")
        .json();
    let b = q
        .run(&["consume", "--topic", "cli", "--group", "g1", "--json"])
        .await
        .expect_ok("group run 2")
        .json();
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 5);
    let mut both: Vec<Value> = a.into_iter().chain(b).collect();
    both.sort_by_key(|m| m["id"].as_str().unwrap().to_string());
    both.dedup_by_key(|m| m["id"].clone());
    assert_eq!(both.len(), 8, "no message twice, none lost");
    let c = q
        .run(&["consume", "--topic", "cli", "--group", "g1", "--json"])
        .await
        .expect_ok("group run 3");
    assert_eq!(c.stdout, "", "all committed");

    // A binary body: base64 in JSON, hex for people.
    q.run_stdin(&["produce", "--topic", "bin", "--json"], b"\xff\x00\x01\n")
        .await
        .expect_ok("produce binary");
    let bin = q
        .run(&["consume", "--topic", "bin", "--json"])
        .await
        .expect_ok("consume binary")
        .json();
    assert_eq!(bin.len(), 1);
    assert_eq!(bin[0]["body_encoding"], "base64");
    assert_eq!(bin[0]["body"], "/wAB");
    assert_eq!(bin[0]["body_len"], 3);
    let human = q
        .run(&["consume", "--topic", "bin"])
        .await
        .expect_ok("consume binary, human");
    assert!(human.stdout.contains("0xff0001 (3 bytes)"), "{human:?}");

    broker.stop().await;
}

/// `produce --file` sends a file as one message; a scheduled send says when it is due; a
/// consume that finds nothing says so (on stderr, stdout stays empty for scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_due_times_and_empty_results() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    q.run(&["admin", "topic", "create", "files", "--queues", "1"])
        .await
        .expect_ok("create");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order.json");
    let content = "{\"id\": 7,\n \"lines\": [1, 2, 3]}\n";
    std::fs::write(&path, content).unwrap();
    let sent = q
        .run(&[
            "produce",
            "--topic",
            "files",
            "--json",
            "--file",
            path.to_str().unwrap(),
        ])
        .await
        .expect_ok("produce --file")
        .json();
    assert_eq!(sent.len(), 1, "one message for the whole file");
    let got = q
        .run(&["consume", "--topic", "files", "--from", "first", "--json"])
        .await
        .expect_ok("consume")
        .json();
    assert_eq!(bodies(&got), vec![content.to_string()]);
    let missing = q
        .run(&[
            "produce",
            "--topic",
            "files",
            "--file",
            "/nonexistent/order.json",
        ])
        .await
        .expect_fail("missing file");
    assert!(
        missing.stderr.contains("/nonexistent/order.json"),
        "{missing:?}"
    );

    // A delayed send: when it is due, not the scheduler's internal queue and offset.
    let delayed = q
        .run(&["produce", "--topic", "files", "--delay", "1h", "later"])
        .await
        .expect_ok("produce --delay");
    assert!(
        delayed
            .stdout
            .contains("scheduled for topic files: due at 20"),
        "{delayed:?}"
    );
    let delayed = q
        .run(&[
            "produce", "--topic", "files", "--delay", "1h", "--json", "later",
        ])
        .await
        .expect_ok("produce --delay --json")
        .json();
    assert_eq!(delayed[0]["scheduled"], true);
    assert!(delayed[0]["due_at"].as_str().unwrap().ends_with('Z'));

    // Nothing matches: said so.
    let none = q
        .run(&[
            "consume", "--topic", "files", "--from", "first", "--tag", "nope", "--json",
        ])
        .await
        .expect_ok("consume nothing");
    assert!(none.stdout.is_empty(), "{none:?}");
    assert!(
        none.stderr
            .contains("no messages matched the filter in topic \"files\""),
        "{none:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_topic_lifecycle() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);

    let created = q
        .run(&["admin", "topic", "create", "adm", "--queues", "3"])
        .await
        .expect_ok("create");
    assert_eq!(created.stdout.trim(), "created topic adm (3 queues)");
    let again = q
        .run(&["admin", "topic", "create", "adm"])
        .await
        .expect_fail("create twice");
    assert!(again.stderr.contains("already exists"), "{again:?}");

    let list = q
        .run(&["admin", "topic", "list", "--json"])
        .await
        .expect_ok("list")
        .json();
    assert!(
        list.contains(&serde_json::json!({"topic": "adm", "queues": 3})),
        "{list:?}"
    );
    let human = q
        .run(&["admin", "topic", "list"])
        .await
        .expect_ok("list human");
    assert!(human.stdout.starts_with("TOPIC"), "{human:?}");
    assert!(human
        .stdout
        .lines()
        .any(|l| l.split_whitespace().eq(["adm", "3"])));

    q.run(&["produce", "--topic", "adm", "--queue", "1", "a", "b"])
        .await
        .expect_ok("produce");
    let described = q
        .run(&["admin", "topic", "describe", "adm", "--json"])
        .await
        .expect_ok("describe")
        .json();
    assert_eq!(described.len(), 3);
    assert_eq!(
        described[1],
        serde_json::json!({"topic": "adm", "queue": 1, "min_offset": 0, "max_offset": 2, "messages": 2})
    );
    assert_eq!(described[0]["messages"], 0);
    // Global options also work before the subcommand.
    let human = q
        .run(&["admin", "--json", "topic", "describe", "adm"])
        .await
        .expect_ok("describe, --json first");
    assert_eq!(human.json().len(), 3);
    let human = q
        .run(&["admin", "topic", "describe", "adm"])
        .await
        .expect_ok("describe human");
    assert!(
        human.stdout.starts_with("topic adm: 3 queues, 2 messages"),
        "{human:?}"
    );

    let updated = q
        .run(&["admin", "topic", "update", "adm", "--queues", "5", "--json"])
        .await
        .expect_ok("update")
        .json();
    assert_eq!(
        updated,
        [serde_json::json!({"topic": "adm", "action": "updated", "queues": 5})]
    );
    let described = q
        .run(&["admin", "topic", "describe", "adm", "--json"])
        .await
        .expect_ok("describe after update")
        .json();
    assert_eq!(described.len(), 5);
    // Shrinking asks for --force, saying what it leaves behind.
    let refused = q
        .run(&["admin", "topic", "update", "adm", "--queues", "2"])
        .await
        .expect_fail("shrink without --force");
    assert!(
        refused.stderr.contains("has 5 queues") && refused.stderr.contains("--force"),
        "{refused:?}"
    );
    q.run(&[
        "admin", "topic", "update", "adm", "--queues", "2", "--force",
    ])
    .await
    .expect_ok("shrink with --force");
    assert_eq!(
        q.run(&["admin", "topic", "describe", "adm", "--json"])
            .await
            .expect_ok("describe after shrink")
            .json()
            .len(),
        2
    );

    q.run(&["admin", "topic", "delete", "adm"])
        .await
        .expect_ok("delete");
    let list = q
        .run(&["admin", "topic", "list", "--json"])
        .await
        .expect_ok("list after delete")
        .json();
    assert!(list.iter().all(|t| t["topic"] != "adm"), "{list:?}");
    let gone = q
        .run(&["admin", "topic", "describe", "adm"])
        .await
        .expect_fail("describe deleted");
    assert!(gone.stderr.contains("does not exist"), "{gone:?}");

    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_message_get_and_query() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);

    let sent = q
        .run(&[
            "produce", "--topic", "look", "--key", "k-1", "--tag", "t", "--json", "find me",
        ])
        .await
        .expect_ok("produce")
        .json();
    let id = sent[0]["id"].as_str().unwrap().to_string();

    let got = q
        .run(&["admin", "message", "get", "--id", &id, "--json"])
        .await
        .expect_ok("get --json")
        .json();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["body"], "find me");
    assert_eq!(got[0]["topic"], "look");
    assert_eq!(got[0]["queue"], sent[0]["queue"]);
    assert_eq!(got[0]["offset"], sent[0]["offset"]);

    let human = q
        .run(&["admin", "message", "get", "--id", &id])
        .await
        .expect_ok("get");
    assert!(
        human.stdout.starts_with(&format!("id:           {id}\n")),
        "{human:?}"
    );
    assert!(human.stdout.contains("find me"), "{human:?}");

    let found = q
        .run(&[
            "admin", "message", "query", "--topic", "look", "--key", "k-1", "--json",
        ])
        .await
        .expect_ok("query")
        .json();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], id.as_str());
    let none = q
        .run(&[
            "admin", "message", "query", "--topic", "look", "--key", "nope", "--json",
        ])
        .await
        .expect_ok("query, no match");
    assert_eq!(none.stdout, "");

    let missing = q
        .run(&["admin", "message", "get", "--id", &"0".repeat(32)])
        .await
        .expect_fail("get unknown id");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    let bad = q
        .run(&["admin", "message", "get", "--id", "xyz"])
        .await
        .expect_fail("get bad id");
    assert!(bad.stderr.contains("32 hex digits"), "{bad:?}");

    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_a_clear_message() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);

    let bad = q
        .run(&["produce", "--topic", "bad topic", "x"])
        .await
        .expect_fail("bad topic name");
    assert!(
        bad.stderr.contains("topic name \"bad topic\"") && bad.stderr.contains("position 3"),
        "{bad:?}"
    );
    assert_eq!(bad.stdout, "");
    let bad = q
        .run(&["consume", "--topic", "a/b"])
        .await
        .expect_fail("consume bad topic");
    assert!(bad.stderr.contains("topic name \"a/b\""), "{bad:?}");
    let bad = q
        .run(&["admin", "topic", "create", "x y"])
        .await
        .expect_fail("create bad topic");
    assert!(bad.stderr.contains("topic name \"x y\""), "{bad:?}");

    let missing = q
        .run(&["consume", "--topic", "never-created"])
        .await
        .expect_fail("consume missing topic");
    assert!(missing.stderr.contains("does not exist"), "{missing:?}");
    let bad = q
        .run(&["produce", "--topic", "t", "--queue", "7", "x"])
        .await
        .expect_fail("queue out of range");
    assert!(bad.stderr.contains("queue 7"), "{bad:?}");

    // Reserved property names are refused by the argument parser (exit 2, usage error).
    let reserved = tokio::task::spawn_blocking({
        let args = q.args(&["produce", "--topic", "t", "--prop", "KEYS=x", "x"]);
        move || run_raw(args, None)
    })
    .await
    .unwrap();
    assert_eq!(reserved.code, Some(2), "{reserved:?}");
    assert!(reserved.stderr.contains("reserved"), "{reserved:?}");

    // No TLS choice and no local broker certificate: say what to pass.
    let no_tls = tokio::task::spawn_blocking({
        let addr = q.addr.clone();
        move || {
            run_raw(
                vec![
                    "admin".into(),
                    "topic".into(),
                    "list".into(),
                    "--broker".into(),
                    addr,
                    "--data-dir".into(),
                    "/nonexistent/quiver-data".into(),
                ],
                None,
            )
        }
    })
    .await
    .unwrap()
    .expect_fail("no TLS choice");
    assert!(
        no_tls.stderr.contains("--fingerprint")
            && no_tls.stderr.contains("--ca")
            && no_tls.stderr.contains("--insecure"),
        "{no_tls:?}"
    );

    // Another certificate than the broker's: said in words, with what to do.
    let addr = broker.server().addr.to_string();
    let wrong = tokio::task::spawn_blocking(move || {
        run_raw(
            vec![
                "admin".into(),
                "topic".into(),
                "list".into(),
                "--broker".into(),
                addr,
                "--fingerprint".into(),
                "ab".repeat(32),
            ],
            None,
        )
    })
    .await
    .unwrap()
    .expect_fail("wrong fingerprint");
    assert!(
        wrong
            .stderr
            .contains("the broker's certificate is not the one this client trusts"),
        "{wrong:?}"
    );
    assert!(!wrong.stderr.contains("Connect {"), "{wrong:?}");

    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_waits_for_new_messages() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    q.run(&["admin", "topic", "create", "live", "--queues", "2"])
        .await
        .expect_ok("create");
    q.run(&["produce", "--topic", "live", "old"])
        .await
        .expect_ok("produce old");

    // Starts at a time after "old" was stored, so only what is sent from then on shows up
    // (whenever the consumer gets to resolving its start offsets).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follow = tokio::task::spawn_blocking({
        let from = format!("@{since}");
        let args = q.args(&[
            "consume", "--topic", "live", "--from", &from, "--follow", "--max", "3", "--json",
        ]);
        move || run_raw(args, None)
    });
    // The consumer is parked in a long poll.
    broker.parked(1).await;
    q.run(&["produce", "--topic", "live", "new 1", "new 2", "new 3"])
        .await
        .expect_ok("produce new");
    let out = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("--follow --max 3 returns")
        .unwrap()
        .expect_ok("follow");
    assert_eq!(bodies(&out.json()), ["new 1", "new 2", "new 3"]);

    // --follow on a topic nobody has created yet waits for it.
    let follow = tokio::task::spawn_blocking({
        let args = q.args(&[
            "consume", "--topic", "notyet", "--from", "first", "--follow", "--max", "1", "--json",
        ]);
        move || run_raw(args, None)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    q.run(&["produce", "--topic", "notyet", "at last"])
        .await
        .expect_ok("produce creates the topic");
    let out = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .expect("--follow returns once the topic exists")
        .unwrap()
        .expect_ok("follow a new topic");
    assert_eq!(bodies(&out.json()), ["at last"]);
    assert!(
        out.stderr.contains("waiting for it to be created"),
        "{out:?}"
    );

    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_group_describe_reset_and_delete() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    q.run(&["admin", "topic", "create", "grp", "--queues", "2"])
        .await
        .expect_ok("create");
    q.run_stdin(&["produce", "--topic", "grp"], b"a\nb\nc\nd\n")
        .await
        .expect_ok("produce");
    let got = q
        .run(&[
            "consume", "--topic", "grp", "--group", "billing", "--max", "2", "--json",
        ])
        .await
        .expect_ok("consume");
    assert_eq!(got.json().len(), 2);

    let list = q
        .run(&["admin", "group", "list", "--json"])
        .await
        .expect_ok("list")
        .json();
    assert!(
        list.iter()
            .any(|g| g["group"] == "billing" && g["members"] == 0),
        "{list:?}"
    );
    let rows = q
        .run(&["admin", "group", "describe", "billing", "--json"])
        .await
        .expect_ok("describe")
        .json();
    let lag: u64 = rows
        .iter()
        .filter(|r| r.get("queue").is_some())
        .map(|r| r["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 2, "4 produced, 2 consumed: {rows:?}");
    let human = q
        .run(&["admin", "group", "describe", "billing"])
        .await
        .expect_ok("describe");
    assert!(human.stdout.contains("total lag 2"), "{}", human.stdout);

    q.run(&[
        "admin",
        "group",
        "reset-offset",
        "billing",
        "--topic",
        "grp",
        "--to",
        "first",
    ])
    .await
    .expect_ok("reset");
    let rows = q
        .run(&["admin", "group", "describe", "billing", "--json"])
        .await
        .expect_ok("describe")
        .json();
    assert_eq!(
        rows.iter().map(|r| r["lag"].as_u64().unwrap()).sum::<u64>(),
        4
    );
    let bad = q
        .run(&[
            "admin",
            "group",
            "reset-offset",
            "billing",
            "--topic",
            "grp",
            "--to",
            "soon",
        ])
        .await;
    assert!(!bad.ok && bad.stderr.contains("first, last"), "{bad:?}");

    q.run(&["admin", "group", "delete", "billing"])
        .await
        .expect_ok("delete");
    let gone = q
        .run(&["admin", "group", "describe", "billing"])
        .await
        .expect_fail("describe deleted");
    assert!(gone.stderr.contains("no members"), "{gone:?}");

    // With a live member, --json lists it (a row with a "member" key) before the queues.
    let member = quiver_client::PushConsumer::start(
        broker.client().await,
        vec![quiver_client::Subscription::new("grp", Default::default())],
        quiver_client::PushConsumerOptions::new("live"),
        |_batch| async { quiver_client::ConsumeResult::Success },
    )
    .await
    .unwrap();
    let rows = crate::harness::eventually_some("the member owns queues", async || {
        let rows = q
            .run(&["admin", "group", "describe", "live", "--json"])
            .await
            .expect_ok("describe live")
            .json();
        rows.iter()
            .any(|r| {
                r.get("member").is_some() && r["owns"].as_array().is_some_and(|o| o.len() >= 2)
            })
            .then_some(rows)
    })
    .await;
    let m = rows.iter().find(|r| r.get("member").is_some()).unwrap();
    assert_eq!(m["group"], "live");
    // Its subscription, and the group's retry topic every member reads too.
    assert_eq!(m["topics"], serde_json::json!(["%RETRY%live", "grp"]));
    let owns = m["owns"].as_array().unwrap();
    assert!(
        owns.contains(&"grp/0".into()) && owns.contains(&"grp/1".into()),
        "{m}"
    );
    assert!(rows.iter().any(|r| r.get("queue").is_some()), "{rows:?}");
    member.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_from_the_shell() {
    // Local checks need no broker.
    let check = |args: &[&str]| {
        let mut v: Vec<String> = vec!["filter".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        run_raw(v, None)
    };
    let ok = check(&["check", "NOT a = 1 AND b IN ('x','y')"]).expect_ok("check");
    assert_eq!(ok.stdout.trim(), "NOT (a = 1) AND b IN ('x', 'y')");
    let bad = check(&["check", "a = 1 b"]).expect_fail("trailing tokens");
    assert!(bad.stderr.contains("column 7"), "{bad:?}");
    assert_eq!(
        check(&["eval", "a > 3", "--prop", "a=3.5"])
            .expect_ok("eval")
            .stdout
            .trim(),
        "true"
    );
    assert_eq!(
        check(&["eval", "a > 3", "--prop", "a=abc"])
            .expect_ok("eval")
            .stdout
            .trim(),
        "unknown"
    );
    assert_eq!(
        check(&["eval", "a > 3", "--prop", "a=2"])
            .expect_ok("eval")
            .stdout
            .trim(),
        "false"
    );
    assert_eq!(
        check(&["eval", "--tag", "A || B", "--msg-tag", "C"])
            .expect_ok("eval")
            .stdout
            .trim(),
        "false"
    );
    check(&["eval", "a == 1"]).expect_fail("bad expression");
    // RocketMQ's general forms, from the shell too.
    for (args, want) in [
        (
            &["eval", "a > b", "--prop", "a=5", "--prop", "b=3"][..],
            "true",
        ),
        (&["eval", "a = 1 = TRUE", "--prop", "a=1"][..], "true"),
        (&["eval", "vip", "--prop", "vip=TRUE"][..], "true"),
        (&["eval", "NULL OR TRUE"][..], "true"),
        (
            &["eval", "a NOT BETWEEN 3 AND 1", "--prop", "a=2"][..],
            "true",
        ),
    ] {
        assert_eq!(
            check(args).expect_ok("eval").stdout.trim(),
            want,
            "{args:?}"
        );
    }
    assert_eq!(
        check(&["check", "a = 1 = true"])
            .expect_ok("check")
            .stdout
            .trim(),
        "(a = 1) = TRUE"
    );
    check(&["eval", "a > 9223372036854775808"]).expect_fail("integer out of range");

    // consume --tag / --sql ask the broker to filter.
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    q.run(&["admin", "topic", "create", "f", "--queues", "1"])
        .await
        .expect_ok("create");
    for (tag, region) in [("A", "eu"), ("B", "us"), ("A", "us"), ("C", "eu")] {
        q.run(&[
            "produce",
            "--topic",
            "f",
            "--tag",
            tag,
            "--prop",
            &format!("region={region}"),
            &format!("{tag}-{region}"),
        ])
        .await
        .expect_ok("produce");
    }
    let tagged = q
        .run(&["consume", "--topic", "f", "--tag", "A || C", "--json"])
        .await
        .expect_ok("consume --tag")
        .json();
    assert_eq!(bodies(&tagged), vec!["A-eu", "A-us", "C-eu"]);
    let sql = q
        .run(&[
            "consume",
            "--topic",
            "f",
            "--sql",
            "region = 'us'",
            "--json",
        ])
        .await
        .expect_ok("consume --sql")
        .json();
    assert_eq!(bodies(&sql), vec!["A-us", "B-us"]);
    let bad = q
        .run(&["consume", "--topic", "f", "--sql", "region = \"us\""])
        .await
        .expect_fail("bad sql");
    assert!(bad.stderr.contains("single quotes"), "{bad:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_status_reports_what_the_broker_did() {
    let broker = TestBroker::start().await;
    let q = Quiver::new(&broker);
    for i in 0..3 {
        q.run(&["produce", "--topic", "status-t", &format!("m{i}")])
            .await
            .expect_ok("produce");
    }
    let v = &q
        .run(&["admin", "broker", "status", "--json", "--sample", "0"])
        .await
        .expect_ok("broker status --json")
        .json()[0];
    assert_eq!(v["role"], "standalone");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["totals"]["messages_in"], 3);
    assert_eq!(v["topics"], 1);
    assert!(v["uptime_seconds"].as_u64().is_some());
    assert_eq!(v["listen"], broker.server().addr.to_string());
    assert!(v.get("rates").is_none(), "no sample, no rates");
    // The text form, with rates measured over a short sample.
    let text = q
        .run(&["admin", "broker", "status", "--sample", "200ms"])
        .await
        .expect_ok("broker status");
    for want in [
        "uptime:",
        "3 in,",
        "rates:",
        "connections:",
        "disk:",
        "standalone",
    ] {
        assert!(text.stdout.contains(want), "{want:?} in {}", text.stdout);
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_and_filter_print_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let run = run_local(&[
        "bench",
        "produce",
        "--messages",
        "300",
        "--json",
        "--baseline-mib",
        "0",
        "--dir",
        &d,
    ])
    .await
    .expect_ok("bench produce --json");
    let lines = run.json();
    assert_eq!(lines.len(), 1, "one JSON line per measurement: {run:#?}");
    assert_eq!(lines[0]["messages"], 300);
    assert_eq!(lines[0]["errors"], 0);
    assert!(lines[0]["messages_per_second"].as_f64().unwrap() > 0.0);
    assert!(lines[0]["latency_ms"]["p99"].as_f64().is_some());
    assert!(
        run.stderr.contains("quiver bench produce"),
        "the header goes to stderr"
    );

    let check = run_local(&["filter", "check", "a >= 1", "--json"])
        .await
        .expect_ok("filter check --json");
    assert_eq!(check.json()[0]["canonical"], "a >= 1");
    let bad = run_local(&["filter", "check", "a >=", "--json"])
        .await
        .expect_fail("filter check --json of a bad expression");
    assert_eq!(bad.json()[0]["valid"], false);
    let eval = run_local(&["filter", "eval", "a >= 1", "--prop", "a=0", "--json"])
        .await
        .expect_ok("filter eval --json");
    assert_eq!(eval.json()[0]["result"], "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_connections_measures_a_broker_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let run = run_local(&[
        "bench",
        "connections",
        "--count",
        "40",
        "--concurrency",
        "20",
        "--seconds",
        "1",
        "--baseline",
        "--json",
        "--dir",
        &d,
    ])
    .await
    .expect_ok("bench connections --json");
    let v = &run.json()[0];
    assert_eq!(v["connections"], 40, "{run:#?}");
    assert_eq!(v["connect_errors"], 0);
    assert_eq!(v["burst"]["errors"], 0);
    assert_eq!(v["sustained"]["errors"], 0);
    assert!(v["sustained"]["messages"].as_u64().unwrap() > 0);
    // A sync-flush broker: every fsync acknowledged at least one append.
    assert!(
        v["sustained"]["appends_per_fsync"].as_f64().unwrap() >= 1.0,
        "{v}"
    );
    assert!(v["rss_bytes"]["open"].as_u64().unwrap() > 0);
    // The raw-QUIC ceiling was measured with the same shape.
    assert!(
        v["raw_quic"]["requests_per_second"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}
