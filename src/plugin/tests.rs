//! Host tests with hand-written WAT plugins (tests/fixtures/plugins): the ABI, the sandbox
//! limits, the failure policies, health, reload and persistence — without a network.

use super::*;
use quiver_protocol::record::{encode_into, RecordLimits, RecordPlacement};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/plugins/",
            $name,
            ".wat"
        ))
    };
}

const LIMITS: RecordLimits = RecordLimits {
    max_body: 1 << 20,
    max_properties: 32 << 10,
};

fn host(dir: &std::path::Path) -> PluginHost {
    let cfg = PluginConfig {
        max_consecutive_failures: 3,
        ..PluginConfig::default()
    };
    PluginHost::open(cfg, dir.join("plugins"), LIMITS).expect("open plugin host")
}

fn spec(wat: &str, config: &[(&str, &str)]) -> LoadSpec {
    LoadSpec {
        wasm: Bytes::copy_from_slice(wat.as_bytes()),
        config: Some(
            config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        memory_limit_bytes: 0,
        time_limit_ms: 0,
    }
}

fn record(offset: u64, tag: &str, body: &str) -> Bytes {
    let keys = ["k1"];
    let props = [("region", "eu")];
    let m = NewMessage {
        msg_id: 1000 + offset as u128,
        flags: 0,
        born_timestamp: 1,
        born_host: "127.0.0.1:9".parse().unwrap(),
        reconsume_times: 0,
        tag,
        keys: &keys,
        properties: &props,
        body: body.as_bytes(),
    };
    let mut buf = vec![0u8; m.encoded_len("orders", &LIMITS).unwrap()];
    let at = RecordPlacement {
        queue_id: 0,
        queue_offset: offset,
        phys_offset: offset * 100,
        store_timestamp: 2,
        extra_flags: 0,
    };
    encode_into(&mut buf, "orders", &m, &at);
    Bytes::from(buf)
}

fn wire(id: u128, tag: &str) -> WireMessage {
    WireMessage {
        id,
        born_timestamp: 1,
        flags: 0,
        tag: tag.into(),
        keys: vec!["k".into()],
        properties: vec![("p".into(), "v".into())],
        body: Bytes::from_static(b"body"),
    }
}

fn tags(records: &[Bytes]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            RecordView::parse(r)
                .expect("valid record")
                .tag()
                .to_string()
        })
        .collect()
}

fn chain(host: &PluginHost, name: &str, policy: PluginFailurePolicy) -> Chain {
    host.resolve(&[PluginRef::new(name).on_error(policy)])
        .expect("resolve")
}

#[test]
fn hand_written_filter_follows_the_documented_abi() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    let info = h
        .load("keep", spec(fixture!("keep_tag"), &[("tag", "paid")]))
        .unwrap();
    assert_eq!(info.kind, PluginKind::Filter);
    assert_eq!(info.version, 1);
    let records: Vec<Bytes> = (0..10)
        .map(|i| record(i, if i % 3 == 0 { "paid" } else { "new" }, "x"))
        .collect();
    let c = chain(&h, "keep", PluginFailurePolicy::Fail);
    let out = h
        .apply_to_records(&c, "orders", 0, records.clone())
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(tags(&out).iter().all(|t| t == "paid"));
    // Kept records are the stored bytes themselves.
    assert_eq!(out[1], records[3]);
    // Many batches (more than max_batch_messages) keep their order.
    let many: Vec<Bytes> = (0..1000).map(|i| record(i, "paid", "x")).collect();
    let out = h.apply_to_records(&c, "orders", 0, many.clone()).unwrap();
    assert_eq!(out, many);
    let d = h.describe("keep").unwrap();
    assert_eq!(d.messages_in, 1010);
    assert_eq!(d.messages_out, 1004);
    assert!(d.batches >= 5, "1000 messages go in batches of 256");
}

#[test]
fn ingress_filter_rejects_the_whole_send_naming_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    h.load("keep", spec(fixture!("keep_tag"), &[])).unwrap();
    h.attach("keep", "orders").unwrap();
    let c = h.ingress_chain("orders").unwrap();
    assert_eq!(c.len(), 1);
    assert!(h.ingress_chain("other").unwrap().is_empty());
    let ok = vec![wire(1, "keep"), wire(2, "keep")];
    assert_eq!(h.apply_to_send(&c, "orders", 0, ok.clone()).unwrap(), ok);
    let bad = vec![wire(1, "keep"), wire(2, "nope"), wire(3, "keep")];
    match h.apply_to_send(&c, "orders", 0, bad) {
        Err(PluginError::Rejected {
            name, index, id, ..
        }) => {
            assert_eq!((name.as_str(), index, id), ("keep", 1, 2));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn hand_written_transform_rewrites_drops_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    let info = h.load("t2b", spec(fixture!("tag_to_body"), &[])).unwrap();
    assert_eq!(info.kind, PluginKind::Transform);
    let records = vec![
        record(0, "alpha", "one"),
        record(1, "", "two"),
        record(2, "bad", "three"),
        record(3, "omega", "four"),
    ];
    let c = chain(&h, "t2b", PluginFailurePolicy::Fail);
    let out = h.apply_to_records(&c, "orders", 0, records).unwrap();
    assert_eq!(out.len(), 2, "untagged dropped, rejected dropped");
    let v = RecordView::parse(&out[1]).expect("re-encoded record has a valid CRC");
    assert_eq!(v.body(), b"omega");
    assert_eq!(v.tag(), "omega");
    assert_eq!(v.queue_offset(), 3);
    assert_eq!(v.msg_id(), 1003);
    assert_eq!(v.property("region"), Some("eu"));
    assert_eq!(v.keys().collect::<Vec<_>>(), vec!["k1"]);
    // At ingress a drop or a reject refuses the send.
    h.attach("t2b", "orders").unwrap();
    let ic = h.ingress_chain("orders").unwrap();
    let out = h
        .apply_to_send(&ic, "orders", 0, vec![wire(1, "a"), wire(2, "b")])
        .unwrap();
    assert_eq!(&out[1].body[..], b"b");
    match h.apply_to_send(&ic, "orders", 0, vec![wire(1, "a"), wire(2, "bad")]) {
        Err(PluginError::Rejected { index, reason, .. }) => {
            assert_eq!(index, 1);
            assert_eq!(reason, "tag says bad");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    match h.apply_to_send(&ic, "orders", 0, vec![wire(1, ""), wire(2, "b")]) {
        Err(PluginError::Rejected { index, reason, .. }) => {
            assert_eq!(index, 0);
            assert!(reason.contains("dropped"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn modules_with_the_wrong_shape_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    let cases = [
        (fixture!("wrong_exports"), "quiver_filter"),
        (fixture!("no_entry"), "neither"),
        (fixture!("wasi_import"), "wasi_snapshot_preview1.fd_write"),
        (fixture!("init_refuses"), "`threshold` is required"),
        ("this is not wasm", "not a valid WebAssembly module"),
        ("(module)", "memory"),
    ];
    for (i, (wat, want)) in cases.iter().enumerate() {
        let err = h.load(&format!("p{i}"), spec(wat, &[])).unwrap_err();
        assert!(
            matches!(err, PluginError::Invalid { .. }),
            "case {i}: {err:?}"
        );
        assert!(err.to_string().contains(want), "case {i}: {err}");
    }
    assert!(h.list().is_empty(), "nothing half-loaded stays");
}

fn expect_failure(h: &PluginHost, name: &str, want: &str) {
    let records = vec![record(0, "a", "x"), record(1, "b", "y")];
    let fail = chain(h, name, PluginFailurePolicy::Fail);
    let err = h
        .apply_to_records(&fail, "orders", 0, records.clone())
        .unwrap_err();
    assert!(matches!(err, PluginError::Failed { .. }), "{name}: {err:?}");
    assert!(err.to_string().contains(want), "{name}: {err}");
    let skip = chain(h, name, PluginFailurePolicy::Skip);
    assert!(h
        .apply_to_records(&skip, "orders", 0, records.clone())
        .unwrap()
        .is_empty());
    let deliver = chain(h, name, PluginFailurePolicy::Deliver);
    assert_eq!(
        h.apply_to_records(&deliver, "orders", 0, records.clone())
            .unwrap(),
        records
    );
}

#[test]
fn misbehaving_plugins_fail_their_batch_under_each_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PluginConfig {
        max_consecutive_failures: 100,
        ..PluginConfig::default()
    };
    let h = PluginHost::open(cfg, dir.path().join("plugins"), LIMITS).unwrap();
    let mut s = spec(fixture!("infinite_loop"), &[]);
    s.time_limit_ms = 30;
    h.load("loop", s).unwrap();
    expect_failure(&h, "loop", "time limit of 30 ms");
    h.load("bomb", spec(fixture!("memory_bomb"), &[])).unwrap();
    expect_failure(&h, "bomb", "memory limit of 16777216 bytes");
    h.load("trap", spec(fixture!("trap"), &[])).unwrap();
    expect_failure(&h, "trap", "trapped");
    h.load("ptr", spec(fixture!("bad_pointer"), &[])).unwrap();
    expect_failure(&h, "ptr", "outside the plugin's memory");
    h.load("badt", spec(fixture!("bad_transform"), &[]))
        .unwrap();
    expect_failure(&h, "badt", "outside the plugin's memory");
    // A failing plugin does not disturb a healthy one.
    h.load("keep", spec(fixture!("keep_tag"), &[("tag", "a")]))
        .unwrap();
    let c = chain(&h, "keep", PluginFailurePolicy::Fail);
    let out = h
        .apply_to_records(&c, "orders", 0, vec![record(0, "a", "x")])
        .unwrap();
    assert_eq!(out.len(), 1);
    // Ingress failures refuse the send.
    h.attach("trap", "orders").unwrap();
    let ic = h.ingress_chain("orders").unwrap();
    assert!(matches!(
        h.apply_to_send(&ic, "orders", 0, vec![wire(1, "a")]),
        Err(PluginError::Failed { .. })
    ));
}

#[test]
fn consecutive_failures_mark_unhealthy_until_reload() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    h.load("trap", spec(fixture!("trap"), &[])).unwrap();
    let c = chain(&h, "trap", PluginFailurePolicy::Fail);
    for _ in 0..3 {
        let e = h
            .apply_to_records(&c, "orders", 0, vec![record(0, "a", "x")])
            .unwrap_err();
        assert!(matches!(e, PluginError::Failed { .. }));
    }
    let e = h
        .apply_to_records(&c, "orders", 0, vec![record(0, "a", "x")])
        .unwrap_err();
    assert!(matches!(e, PluginError::Unhealthy { .. }), "{e:?}");
    let info = h.describe("trap").unwrap();
    assert!(!info.healthy);
    assert_eq!(info.consecutive_failures, 3);
    assert!(info.last_error.contains("trapped"));
    // Reload with a working module: healthy again, version 2.
    let info = h
        .reload("trap", spec(fixture!("keep_tag"), &[("tag", "a")]))
        .unwrap();
    assert!(info.healthy);
    assert_eq!(info.version, 2);
    let c2 = chain(&h, "trap", PluginFailurePolicy::Fail);
    assert_eq!(
        h.apply_to_records(&c2, "orders", 0, vec![record(0, "a", "x")])
            .unwrap()
            .len(),
        1
    );
    // The chain resolved before the reload still runs the old version (in-flight batches).
    assert!(matches!(
        h.apply_to_records(&c, "orders", 0, vec![record(0, "a", "x")]),
        Err(PluginError::Unhealthy { .. })
    ));
}

#[test]
fn plugins_and_attachments_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = host(dir.path());
        h.load("keep", spec(fixture!("keep_tag"), &[("tag", "paid")]))
            .unwrap();
        h.reload("keep", LoadSpec::default()).unwrap();
        h.load("t2b", spec(fixture!("tag_to_body"), &[])).unwrap();
        h.attach("keep", "orders").unwrap();
        assert!(matches!(
            h.attach("keep", "orders"),
            Err(PluginError::BadRequest(_))
        ));
        assert!(matches!(
            h.load("keep", spec(fixture!("keep_tag"), &[])),
            Err(PluginError::Exists(_))
        ));
    }
    let modules: Vec<String> = std::fs::read_dir(dir.path().join("plugins/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        modules.iter().filter(|m| m.ends_with(".cwasm")).count(),
        2,
        "{modules:?}"
    );
    let h = host(dir.path());
    let list = h.list();
    assert_eq!(list.len(), 2);
    let keep = h.describe("keep").unwrap();
    assert_eq!(keep.version, 2);
    assert_eq!(keep.config, vec![("tag".to_string(), "paid".to_string())]);
    assert_eq!(keep.topics, vec!["orders".to_string()]);
    let ic = h.ingress_chain("orders").unwrap();
    assert!(matches!(
        h.apply_to_send(&ic, "orders", 0, vec![wire(1, "nope")]),
        Err(PluginError::Rejected { .. })
    ));
    // Unload: refused while attached, unless forced; the module files go with it.
    assert!(matches!(
        h.unload("keep", false),
        Err(PluginError::InUse { .. })
    ));
    h.unload("keep", true).unwrap();
    assert!(h.ingress_chain("orders").unwrap().is_empty());
    assert!(matches!(h.describe("keep"), Err(PluginError::NotFound(_))));
    h.unload("t2b", false).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("plugins/modules"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn limits_from_a_load_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    let mut s = spec(fixture!("keep_tag"), &[]);
    s.memory_limit_bytes = 8 << 30;
    assert!(matches!(h.load("big", s), Err(PluginError::BadRequest(_))));
    let mut s = spec(fixture!("keep_tag"), &[]);
    s.time_limit_ms = 60_000;
    assert!(matches!(h.load("slow", s), Err(PluginError::BadRequest(_))));
    let mut s = spec(fixture!("keep_tag"), &[]);
    s.memory_limit_bytes = 32 << 10;
    let err = h.load("tiny", s).unwrap_err();
    assert!(err.to_string().contains("memory limit"), "{err}");
    assert!(matches!(
        h.load("bad name!", spec(fixture!("keep_tag"), &[])),
        Err(PluginError::BadRequest(_))
    ));
}

#[test]
fn a_plugin_that_cannot_start_stays_registered_until_reloaded_or_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let sha = {
        let h = host(dir.path());
        let info = h
            .load("keep", spec(fixture!("keep_tag"), &[("tag", "a")]))
            .unwrap();
        h.attach("keep", "orders").unwrap();
        info.sha256
    };
    // The module file is damaged and its compiled form gone.
    let modules = dir.path().join("plugins/modules");
    for f in std::fs::read_dir(&modules).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::write(modules.join(format!("{sha}.wasm")), b"garbage").unwrap();
    let h = host(dir.path());
    assert!(h.list().is_empty());
    let err = h.describe("keep").unwrap_err();
    assert!(err.to_string().contains("not loaded at startup"), "{err}");
    // Sends to its topic are refused rather than let through unvalidated.
    let err = h.ingress_chain("orders").err().expect("refused");
    assert!(
        matches!(err, PluginError::MissingFromChain { .. }),
        "{err:?}"
    );
    // Other registry changes keep it (and its module file).
    h.load("other", spec(fixture!("trap"), &[])).unwrap();
    assert!(modules.join(format!("{sha}.wasm")).exists());
    assert!(matches!(
        h.load("keep", spec(fixture!("keep_tag"), &[])),
        Err(PluginError::Exists(_))
    ));
    // Reloading with a good module brings it back with its configuration and attachment.
    let info = h
        .reload("keep", spec(fixture!("keep_tag"), &[("tag", "a")]))
        .unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(info.topics, vec!["orders".to_string()]);
    assert_eq!(h.ingress_chain("orders").unwrap().len(), 1);
}
