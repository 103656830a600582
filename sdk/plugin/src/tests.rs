//! Tests of the ABI layouts: batches are encoded here exactly as the host writes them
//! (docs/PLUGINS.md), at a pretend guest address, and outputs are decoded as the host reads
//! them.

use crate::batch::{self, Batch, TransformOutput};
use crate::message::{Message, Outcome, Reject, TransformResult};
use crate::rt;

/// Where the pretend input batch sits in guest memory.
const INPUT_BASE: u32 = 0x0001_0000;
/// Where the pretend transform arena sits in guest memory.
const ARENA_BASE: u32 = 0x0200_0000;

#[derive(Clone, Default)]
struct In {
    id: u128,
    queue_offset: u64,
    born: i64,
    store: i64,
    reconsume: u32,
    flags: u32,
    tag: Vec<u8>,
    keys: Vec<u8>,
    props: Vec<u8>,
    body: Vec<u8>,
}

fn str16(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

fn keys(keys: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        str16(&mut out, k.as_bytes());
    }
    out
}

fn props(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pairs {
        str16(&mut out, n.as_bytes());
        str16(&mut out, v.as_bytes());
    }
    out
}

fn msg(id: u128, tag: &str, body: &str) -> In {
    In {
        id,
        queue_offset: u64::MAX,
        born: 1_700_000_000_000 + id as i64,
        tag: tag.as_bytes().to_vec(),
        body: body.as_bytes().to_vec(),
        ..In::default()
    }
}

/// Field addresses (absolute) of one encoded message: tag, keys, props, body.
type Addrs = [(u32, u32); 4];

/// Encodes a batch as the host does, at address `base`, with descriptors `step` bytes apart.
/// The variable data is written after the descriptors in reverse message order, with a padding
/// byte between sections (their order and spacing are unspecified).
fn encode_at(
    base: u32,
    step: usize,
    ingress: bool,
    queue_id: u32,
    topic: &str,
    msgs: &[In],
) -> (Vec<u8>, Vec<Addrs>) {
    let data_start = 32 + msgs.len() * step;
    let mut data = vec![0u8; data_start];
    let place = |data: &mut Vec<u8>, bytes: &[u8]| -> (u32, u32) {
        data.push(0xEE);
        let at = base + data.len() as u32;
        data.extend_from_slice(bytes);
        (at, bytes.len() as u32)
    };
    let topic_loc = place(&mut data, topic.as_bytes());
    let mut addrs = vec![[(0, 0); 4]; msgs.len()];
    for (i, m) in msgs.iter().enumerate().rev() {
        addrs[i] = [
            place(&mut data, &m.body),
            place(&mut data, &m.props),
            place(&mut data, &m.keys),
            place(&mut data, &m.tag),
        ];
        addrs[i].reverse();
    }
    let len = data.len() as u32;
    let header = [
        msgs.len() as u32,
        len,
        u32::from(ingress),
        queue_id,
        topic_loc.0,
        topic_loc.1,
        step as u32,
        0,
    ];
    for (i, v) in header.iter().enumerate() {
        data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, m) in msgs.iter().enumerate() {
        let mut d = Vec::with_capacity(step);
        d.extend_from_slice(&m.id.to_le_bytes());
        d.extend_from_slice(&m.queue_offset.to_le_bytes());
        d.extend_from_slice(&m.born.to_le_bytes());
        d.extend_from_slice(&m.store.to_le_bytes());
        d.extend_from_slice(&m.reconsume.to_le_bytes());
        d.extend_from_slice(&m.flags.to_le_bytes());
        for (addr, len) in addrs[i] {
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
        }
        d.resize(step, 0xAB);
        let at = 32 + i * step;
        data[at..at + step].copy_from_slice(&d);
    }
    (data, addrs)
}

fn encode(ingress: bool, msgs: &[In]) -> (Vec<u8>, Vec<Addrs>) {
    encode_at(INPUT_BASE, 80, ingress, 3, "orders", msgs)
}

/// One decoded output entry: index, action, and per field its address, length and bytes.
#[derive(Debug)]
struct OutEntry {
    index: u32,
    action: u32,
    fields: [(u32, u32, Vec<u8>); 4],
}

impl OutEntry {
    fn bytes(&self, field: usize) -> &[u8] {
        &self.fields[field].2
    }
    fn in_input(&self, field: usize) -> bool {
        let (addr, len, _) = self.fields[field];
        len == 0 || (INPUT_BASE..ARENA_BASE).contains(&addr)
    }
}

const TAG: usize = 0;
const KEYS: usize = 1;
const PROPS: usize = 2;
const BODY: usize = 3;

/// Reads an output table as the host does, resolving addresses in the input or the arena.
fn decode_output(
    table: &[u8],
    input: &[u8],
    input_base: u32,
    arena: &[u8],
    arena_base: u32,
) -> Vec<OutEntry> {
    let u32_at = |at: usize| u32::from_le_bytes(table[at..at + 4].try_into().unwrap());
    let count = u32_at(0) as usize;
    assert_eq!(u32_at(4), 40, "entry_size");
    assert_eq!(table.len(), 8 + count * 40);
    let resolve = |addr: u32, len: u32| -> Vec<u8> {
        let (mem, base) = if addr >= arena_base {
            (arena, arena_base)
        } else {
            (input, input_base)
        };
        let start = (addr - base) as usize;
        mem[start..start + len as usize].to_vec()
    };
    (0..count)
        .map(|i| {
            let at = 8 + i * 40;
            let field = |f: usize| {
                let (addr, len) = (u32_at(at + 8 + f * 8), u32_at(at + 12 + f * 8));
                (addr, len, resolve(addr, len))
            };
            OutEntry {
                index: u32_at(at),
                action: u32_at(at + 4),
                fields: [field(0), field(1), field(2), field(3)],
            }
        })
        .collect()
}

fn run_transform<F>(data: &[u8], f: F) -> (Vec<OutEntry>, Vec<u8>)
where
    F: for<'m> FnMut(Message<'m>) -> Outcome<'m>,
{
    let batch = Batch::parse(data, INPUT_BASE).expect("valid batch");
    let mut out = TransformOutput::new();
    batch::transform_batch(&batch, &mut out, |_| ARENA_BASE, f);
    let arena = out.arena().to_vec();
    let entries = decode_output(out.table(), data, INPUT_BASE, &arena, ARENA_BASE);
    (entries, arena)
}

fn sample() -> Vec<In> {
    let mut a = msg(1, "TagA", "{\"n\":1}");
    a.keys = keys(&["k1", "k2"]);
    a.props = props(&[("region", "eu"), ("priority", "7")]);
    let b = msg(2, "TagB", "second");
    let mut c = msg(3, "", "");
    c.props = props(&[("region", "us")]);
    c.body = vec![0xff, 0xfe];
    vec![a, b, c]
}

#[test]
fn message_accessors_read_the_descriptor() {
    let mut msgs = sample();
    msgs[1].queue_offset = 42;
    msgs[1].store = 1_700_000_000_999;
    msgs[1].reconsume = 2;
    msgs[1].flags = 4;
    msgs[0].id = u128::MAX - 5;
    let (data, _) = encode_at(INPUT_BASE, 80, false, 7, "orders", &msgs);
    let batch = Batch::parse(&data, INPUT_BASE).unwrap();
    assert_eq!(batch.len(), 3);
    let a = batch.message(0);
    assert_eq!(a.id(), u128::MAX - 5);
    assert_eq!(a.topic(), "orders");
    assert_eq!(a.queue_id(), 7);
    assert!(!a.is_ingress());
    assert_eq!(a.queue_offset(), None);
    assert_eq!(a.born_timestamp(), 1_700_000_000_001);
    assert_eq!(a.tag(), "TagA");
    assert_eq!(a.keys().collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(a.property("priority"), Some("7"));
    assert_eq!(a.property("region"), Some("eu"));
    assert_eq!(a.property("nope"), None);
    assert_eq!(
        a.properties().collect::<Vec<_>>(),
        [("region", "eu"), ("priority", "7")]
    );
    assert_eq!(a.body_str(), Some("{\"n\":1}"));
    let b = batch.message(1);
    assert_eq!(b.queue_offset(), Some(42));
    assert_eq!(b.store_timestamp(), 1_700_000_000_999);
    assert_eq!(b.reconsume_times(), 2);
    assert_eq!(b.flags(), 4);
    assert_eq!(b.keys().count(), 0);
    assert_eq!(b.properties().count(), 0);
    let c = batch.message(2);
    assert_eq!(c.tag(), "");
    assert_eq!(c.body(), [0xff, 0xfe]);
    assert_eq!(c.body_str(), None);
}

#[test]
fn filter_writes_one_verdict_per_message_and_reuses_its_buffer() {
    let (data, _) = encode(true, &sample());
    let batch = Batch::parse(&data, INPUT_BASE).unwrap();
    let mut verdicts = Vec::new();
    batch::filter_batch(&batch, &mut verdicts, |m| {
        assert!(m.is_ingress());
        m.property("region") == Some("eu") || m.tag() == "TagB"
    });
    assert_eq!(verdicts, [1, 1, 0]);
    let ptr = verdicts.as_ptr();
    batch::filter_batch(&batch, &mut verdicts, |m| m.body().is_empty());
    assert_eq!(verdicts, [0, 0, 0]);
    assert_eq!(ptr, verdicts.as_ptr(), "the verdict buffer is reused");
}

#[test]
fn descriptor_size_above_80_is_the_step() {
    let (data, _) = encode_at(INPUT_BASE, 96, true, 0, "t", &sample());
    let batch = Batch::parse(&data, INPUT_BASE).unwrap();
    let tags: Vec<String> = (0..batch.len())
        .map(|i| batch.message(i).tag().to_owned())
        .collect();
    assert_eq!(tags, ["TagA", "TagB", ""]);
}

#[test]
fn empty_batch() {
    let (data, _) = encode(true, &[]);
    let batch = Batch::parse(&data, INPUT_BASE).unwrap();
    let mut verdicts = Vec::new();
    batch::filter_batch(&batch, &mut verdicts, |_| true);
    assert!(verdicts.is_empty());
    assert!(verdicts.capacity() > 0, "a real address even when empty");
    let (entries, _) = run_transform(&data, |m| m.into_outcome());
    assert!(entries.is_empty());
}

#[test]
fn unchanged_transform_points_back_into_the_input() {
    let msgs = sample();
    let (data, addrs) = encode(false, &msgs);
    let (entries, arena) = run_transform(&data, |m| Some(m).into_outcome());
    assert!(arena.is_empty(), "nothing was copied");
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!((e.index, e.action), (i as u32, 0));
        for f in [TAG, KEYS, PROPS, BODY] {
            let (addr, len) = addrs[i][f];
            assert_eq!(e.fields[f].1, len);
            if len > 0 {
                assert_eq!(e.fields[f].0, addr, "message {i} field {f} is the input's");
            } else {
                assert!(e.in_input(f));
            }
        }
        let m = &msgs[i];
        assert_eq!(e.bytes(TAG), m.tag);
        assert_eq!(e.bytes(KEYS), m.keys);
        assert_eq!(e.bytes(PROPS), m.props);
        assert_eq!(e.bytes(BODY), m.body);
    }
}

#[test]
fn transform_changes_drops_and_rejects() {
    let mut msgs = sample();
    msgs.push(msg(4, "TagD", "fourth"));
    msgs.push(msg(5, "TagE", "fifth"));
    let (data, addrs) = encode(true, &msgs);
    let (entries, _) = run_transform(&data, |mut m| {
        let r: Result<Option<Message<'_>>, Reject> = match m.id() {
            1 => {
                m.set_body("NEW BODY");
                Ok(Some(m))
            }
            2 => Ok(None),
            3 => Err(Reject::new("no region us")),
            4 => {
                m.set_property("seen", "1");
                m.set_tag("TagD2");
                m.add_key("added");
                Ok(Some(m))
            }
            _ => {
                m.clear_keys();
                m.remove_property("missing");
                Ok(Some(m))
            }
        };
        r.into_outcome()
    });
    let indices: Vec<u32> = entries.iter().map(|e| e.index).collect();
    assert_eq!(indices, [0, 2, 3, 4], "message 1 was dropped");

    let e = &entries[0];
    assert_eq!(e.action, 0);
    assert_eq!(e.bytes(BODY), b"NEW BODY");
    assert!(!e.in_input(BODY));
    for f in [TAG, KEYS, PROPS] {
        assert_eq!(
            e.fields[f].0, addrs[0][f].0,
            "unchanged field {f} stays in place"
        );
    }

    let e = &entries[1];
    assert_eq!(e.action, 1);
    assert_eq!(e.bytes(BODY), b"no region us");

    let e = &entries[2];
    assert_eq!(e.action, 0);
    assert_eq!(e.bytes(TAG), b"TagD2");
    assert_eq!(e.bytes(KEYS), keys(&["added"]));
    assert_eq!(e.bytes(PROPS), props(&[("seen", "1")]));
    assert_eq!(e.fields[BODY].0, addrs[3][BODY].0);
    assert_eq!(e.bytes(BODY), b"fourth");

    let e = &entries[3];
    assert_eq!(e.fields[KEYS].1, 0);
    assert_eq!(e.fields[TAG].0, addrs[4][TAG].0);
    assert_eq!(e.fields[BODY].0, addrs[4][BODY].0);
}

#[test]
fn borrowed_bytes_from_outside_the_input_are_copied() {
    let (data, _) = encode(true, &[msg(1, "t", "x")]);
    static OTHER: &[u8] = b"static body";
    let (entries, arena) = run_transform(&data, |m| {
        let mut fresh = Message::new(m.topic, OTHER);
        fresh.set_tag(m.tag());
        Outcome::Deliver(fresh)
    });
    assert_eq!(entries[0].bytes(BODY), b"static body");
    assert_eq!(entries[0].bytes(TAG), b"t");
    assert!(!entries[0].in_input(BODY));
    assert_eq!(arena.len(), "static body".len() + 1);
}

#[test]
fn bad_headers_are_errors() {
    let (good, _) = encode(true, &sample());
    assert!(Batch::parse(&good[..31], INPUT_BASE)
        .unwrap_err()
        .contains("shorter"));
    assert!(Batch::parse(&good[..good.len() - 1], INPUT_BASE)
        .unwrap_err()
        .contains("header says"));
    let mut bad = good.clone();
    bad[24..28].copy_from_slice(&40u32.to_le_bytes());
    assert!(Batch::parse(&bad, INPUT_BASE)
        .unwrap_err()
        .contains("descriptor_size"));
    let mut bad = good.clone();
    bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Batch::parse(&bad, INPUT_BASE)
        .unwrap_err()
        .contains("do not fit"));
}

#[test]
fn malformed_sections_never_panic() {
    let (good, _) = encode(true, &sample());
    // Descriptors pointing outside the batch read as empty.
    let mut bad = good.clone();
    let d = 32 + 80;
    bad[d + 48..d + 52].copy_from_slice(&(INPUT_BASE - 10).to_le_bytes());
    bad[d + 72..d + 76].copy_from_slice(&u32::MAX.to_le_bytes());
    bad[d + 76..d + 80].copy_from_slice(&u32::MAX.to_le_bytes());
    bad[16..20].copy_from_slice(&0u32.to_le_bytes());
    let batch = Batch::parse(&bad, INPUT_BASE).unwrap();
    let m = batch.message(1);
    assert_eq!(m.tag(), "");
    assert!(m.body().is_empty());
    assert_eq!(m.topic(), "");

    // Every single-byte corruption and truncation of a valid batch: parse, read every field of
    // every message, filter and transform, without panicking.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let exercise = |data: &[u8]| {
        let Ok(batch) = Batch::parse(data, INPUT_BASE) else {
            return;
        };
        for i in 0..batch.len() {
            let m = batch.message(i);
            let _ = (m.tag(), m.topic(), m.body_str(), m.property("region"));
            let _ = m.keys().count() + m.properties().count();
            let _ = format!("{m:?}");
        }
        let mut verdicts = Vec::new();
        batch::filter_batch(&batch, &mut verdicts, |m| m.property("x").is_none());
        let mut out = TransformOutput::new();
        batch::transform_batch(
            &batch,
            &mut out,
            |_| ARENA_BASE,
            |mut m| {
                m.set_property("p", "v");
                Outcome::Deliver(m)
            },
        );
    };
    for _ in 0..3000 {
        let mut data = good.clone();
        let at = (rnd() as usize) % data.len();
        data[at] = rnd() as u8;
        exercise(&data);
    }
    for len in 0..good.len() {
        let mut data = good[..len].to_vec();
        if len >= 8 {
            data[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        }
        exercise(&data);
    }
}

#[test]
fn entry_points_over_the_runtime_buffer() {
    // The whole path the exports take: quiver_buffer, the host writes, quiver_filter /
    // quiver_transform / quiver_init. Native addresses are cut to 32 bits consistently, as
    // the runtime does.
    let msgs = sample();
    let (probe, _) = encode(true, &msgs);
    assert_ne!(rt::buffer(probe.len() as i32), 0);
    let base = rt::testing::input_addr();
    let (data, _) = encode_at(base, 80, true, 3, "orders", &msgs);
    assert_eq!(data.len(), probe.len());
    rt::testing::with_input(|buf| buf[..data.len()].copy_from_slice(&data));

    let ret = rt::run_filter(data.len() as i32, |m: &Message| m.tag().starts_with("Tag"));
    let (addr, verdicts) = rt::testing::verdicts();
    assert_eq!(ret as u32, addr);
    assert_eq!(verdicts, [1, 1, 0]);

    let ret = rt::run_transform(data.len() as i32, |m| {
        if m.id() == 2 {
            Outcome::Drop
        } else {
            Outcome::Deliver(m)
        }
    });
    let (addr, table, _) = rt::testing::output();
    assert_eq!(ret as u32, addr);
    let entries = rt::testing::with_input(|input| {
        decode_output(&table, &input[..data.len()], base, &[], u32::MAX)
    });
    assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(entries[0].bytes(BODY), msgs[0].body);

    // A length the buffer does not have, or a malformed batch: 0.
    assert_eq!(rt::run_filter(i32::MAX, |_: &Message| true), 0);
    assert_eq!(rt::run_filter(-1, |_: &Message| true), 0);
    rt::testing::with_input(|buf| buf[4] ^= 1);
    assert_eq!(rt::run_filter(data.len() as i32, |_: &Message| true), 0);
    assert_eq!(
        rt::run_transform(data.len() as i32, |m| m.into_outcome()),
        0
    );
    assert_eq!(rt::buffer(-5), 0);

    // quiver_init: the configuration is a properties section.
    let config = props(&[("field", "status"), ("op", "eq")]);
    assert_ne!(rt::buffer(config.len() as i32), 0);
    rt::testing::with_input(|buf| buf[..config.len()].copy_from_slice(&config));
    let mut seen = Vec::new();
    let ok = rt::run_init(config.len() as i32, |c| {
        seen = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok::<(), String>(())
    });
    assert_eq!(ok, 1);
    assert_eq!(seen, ["field=status", "op=eq"]);
    let refused = rt::run_init(config.len() as i32, |_| Err("no thanks"));
    assert_eq!(refused, 0);
    // Malformed configuration: refused before the init function runs.
    let refused = rt::run_init(config.len() as i32 - 1, |_| -> Result<(), String> {
        panic!("not called")
    });
    assert_eq!(refused, 0);
}

#[test]
fn buffer_is_reused_while_big_enough() {
    let a = rt::buffer(100);
    let b = rt::buffer(10);
    let c = rt::buffer(0);
    assert_ne!(a, 0);
    assert_eq!(a, b);
    assert_eq!(a, c);
}

/// Counts this thread's allocations, to check the filter path allocates nothing per message.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// that never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

#[test]
fn the_filter_path_does_not_allocate() {
    let (data, _) = encode(true, &sample());
    let mut verdicts = Vec::new();
    let run = |verdicts: &mut Vec<u8>| {
        let batch = Batch::parse(&data, INPUT_BASE).unwrap();
        batch::filter_batch(&batch, verdicts, |m| {
            m.property("priority").is_some()
                || m.keys().any(|k| k == "k2")
                || m.properties().count() > 5
                || m.tag() == "TagB"
                || m.body_str().is_some_and(|b| b.contains('n'))
        });
    };
    run(&mut verdicts); // warms the verdict buffer up
    let before = ALLOCATIONS.with(|n| n.get());
    run(&mut verdicts);
    assert_eq!(ALLOCATIONS.with(|n| n.get()), before);
    assert_eq!(verdicts, [1, 1, 0]);
}
