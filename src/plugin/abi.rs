//! The plugin ABI's byte layouts (docs/PLUGINS.md, "The ABI"): the input batch the host writes
//! into guest memory, and the filter verdicts and transform output it reads back. Pure code over
//! byte slices, so it is tested without an engine; every address from the guest is checked.

use quiver_protocol::record::{get_u32, RecordView};
use quiver_protocol::WireMessage;

/// ABI version a plugin's `quiver_abi_version` must return.
pub(crate) const ABI_VERSION: i32 = 1;
/// Bytes of the input batch header.
pub(crate) const BATCH_HEADER: usize = 32;
/// Bytes of one input descriptor.
pub(crate) const DESCRIPTOR: usize = 80;
/// Bytes of the transform output header.
pub(crate) const OUT_HEADER: usize = 8;
/// Bytes of one transform output entry.
pub(crate) const OUT_ENTRY: usize = 40;
/// Batch flag: the messages come from a producer (ingress), not from a pull.
pub(crate) const FLAG_INGRESS: u32 = 1;

/// One message given to a plugin.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    /// A stored record (subscription, at pull time).
    Record(&'a [u8]),
    /// A producer's message (ingress, before it is stored).
    Wire(&'a WireMessage),
}

fn keys_len(keys: &[String]) -> usize {
    keys.iter().map(|k| 2 + k.len()).sum()
}

fn props_len(props: &[(String, String)]) -> usize {
    props.iter().map(|(k, v)| 4 + k.len() + v.len()).sum()
}

impl Input<'_> {
    /// Bytes this message takes in the data area of a batch.
    pub(crate) fn data_len(&self) -> usize {
        match self {
            Input::Record(r) => r.len(),
            Input::Wire(m) => {
                m.tag.len() + keys_len(&m.keys) + props_len(&m.properties) + m.body.len()
            }
        }
    }
}

/// Size of a batch holding `inputs` for `topic`.
pub(crate) fn batch_len(topic: &str, inputs: &[Input<'_>]) -> usize {
    BATCH_HEADER
        + DESCRIPTOR * inputs.len()
        + topic.len()
        + inputs.iter().map(Input::data_len).sum::<usize>()
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Address of `part` inside `whole`, which starts at guest address `base`.
fn addr_in(base: u32, whole: &[u8], part: &[u8]) -> u32 {
    let off = part.as_ptr() as usize - whole.as_ptr() as usize;
    base + off as u32
}

/// Writes a batch into `dst` (exactly [`batch_len`] bytes), which sits at guest address `base`.
/// Records must be well formed (the store parsed them); a malformed one is an error.
pub(crate) fn write_batch(
    dst: &mut [u8],
    base: u32,
    topic: &str,
    queue_id: u32,
    ingress: bool,
    inputs: &[Input<'_>],
) -> Result<(), String> {
    let len = dst.len();
    put32(dst, 0, inputs.len() as u32);
    put32(dst, 4, len as u32);
    put32(dst, 8, if ingress { FLAG_INGRESS } else { 0 });
    put32(dst, 12, queue_id);
    let mut data = BATCH_HEADER + DESCRIPTOR * inputs.len();
    put32(dst, 16, base + data as u32);
    put32(dst, 20, topic.len() as u32);
    put32(dst, 24, DESCRIPTOR as u32);
    put32(dst, 28, 0);
    dst[data..data + topic.len()].copy_from_slice(topic.as_bytes());
    data += topic.len();
    for (i, input) in inputs.iter().enumerate() {
        let d = BATCH_HEADER + DESCRIPTOR * i;
        match input {
            Input::Record(rec) => {
                let view = RecordView::parse_unchecked_crc(rec)
                    .map_err(|e| format!("stored record is malformed: {e}"))?;
                let start = data;
                dst[start..start + rec.len()].copy_from_slice(rec);
                data += rec.len();
                let at = base + start as u32;
                dst[d..d + 16].copy_from_slice(&view.msg_id().to_le_bytes());
                put64(dst, d + 16, view.queue_offset());
                put64(dst, d + 24, view.born_timestamp() as u64);
                put64(dst, d + 32, view.store_timestamp() as u64);
                put32(dst, d + 40, view.reconsume_times());
                put32(dst, d + 44, view.flags());
                let sections = [
                    view.tag().as_bytes(),
                    view.keys_section(),
                    view.properties_section(),
                    view.body(),
                ];
                for (k, s) in sections.iter().enumerate() {
                    put32(dst, d + 48 + 8 * k, addr_in(at, rec, s));
                    put32(dst, d + 52 + 8 * k, s.len() as u32);
                }
            }
            Input::Wire(m) => {
                dst[d..d + 16].copy_from_slice(&m.id.to_le_bytes());
                put64(dst, d + 16, u64::MAX);
                put64(dst, d + 24, m.born_timestamp as u64);
                put64(dst, d + 32, 0);
                put32(dst, d + 40, 0);
                put32(dst, d + 44, m.flags);
                // tag
                put32(dst, d + 48, base + data as u32);
                put32(dst, d + 52, m.tag.len() as u32);
                dst[data..data + m.tag.len()].copy_from_slice(m.tag.as_bytes());
                data += m.tag.len();
                // keys
                let start = data;
                for k in &m.keys {
                    dst[data..data + 2].copy_from_slice(&(k.len() as u16).to_le_bytes());
                    dst[data + 2..data + 2 + k.len()].copy_from_slice(k.as_bytes());
                    data += 2 + k.len();
                }
                put32(dst, d + 56, base + start as u32);
                put32(dst, d + 60, (data - start) as u32);
                // properties
                let start = data;
                for (k, v) in &m.properties {
                    for s in [k, v] {
                        dst[data..data + 2].copy_from_slice(&(s.len() as u16).to_le_bytes());
                        dst[data + 2..data + 2 + s.len()].copy_from_slice(s.as_bytes());
                        data += 2 + s.len();
                    }
                }
                put32(dst, d + 64, base + start as u32);
                put32(dst, d + 68, (data - start) as u32);
                // body
                put32(dst, d + 72, base + data as u32);
                put32(dst, d + 76, m.body.len() as u32);
                dst[data..data + m.body.len()].copy_from_slice(&m.body);
                data += m.body.len();
            }
        }
    }
    debug_assert_eq!(data, len);
    Ok(())
}

/// A bounds-checked region of guest memory.
fn region(mem: &[u8], addr: u32, len: u32, what: &str) -> Result<std::ops::Range<usize>, String> {
    let start = addr as usize;
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= mem.len())
        .ok_or_else(|| {
            format!(
                "{what} at address {addr} with length {len} lies outside the plugin's memory \
                 ({} bytes)",
                mem.len()
            )
        })?;
    Ok(start..end)
}

/// Reads the filter verdicts: `count` bytes at `addr`, each 0 (drop) or 1 (keep).
pub(crate) fn read_verdicts(mem: &[u8], addr: u32, count: usize) -> Result<Vec<bool>, String> {
    let r = region(mem, addr, count as u32, "the verdicts")?;
    mem[r]
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!(
                "verdict {v} for message {i} (a filter answers 0 = drop or 1 = keep)"
            )),
        })
        .collect()
}

/// One message as a transform returned it, its sections copied out of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transformed {
    /// Index of the input message.
    pub(crate) index: usize,
    /// What to do with it.
    pub(crate) action: Action,
}

/// What a transform decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Deliver or store it with these sections.
    Keep {
        tag: String,
        keys: Vec<String>,
        properties: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Reject it (ingress: the send fails; subscription: dropped), with a reason.
    Reject(String),
}

/// Limits a transformed message is checked against (like a producer's message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutputLimits {
    pub(crate) max_body: usize,
    pub(crate) max_properties: usize,
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Splits a section of `u16 len | bytes` items.
fn items(mut s: &[u8], what: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while !s.is_empty() {
        if s.len() < 2 {
            return Err(format!("{what} section ends inside a length prefix"));
        }
        let n = u16::from_le_bytes([s[0], s[1]]) as usize;
        let item = s
            .get(2..2 + n)
            .ok_or_else(|| format!("{what} section: an item of {n} bytes runs past its end"))?;
        out.push(utf8(item, what)?);
        s = &s[2 + n..];
    }
    Ok(out)
}

/// Reads the transform output at `addr` for a batch of `count` inputs.
pub(crate) fn read_transform(
    mem: &[u8],
    addr: u32,
    count: usize,
    limits: OutputLimits,
) -> Result<Vec<Transformed>, String> {
    let h = region(mem, addr, OUT_HEADER as u32, "the transform output header")?;
    let n = get_u32(mem, h.start) as usize;
    let entry_size = get_u32(mem, h.start + 4) as usize;
    if entry_size != OUT_ENTRY {
        return Err(format!(
            "transform output entry size is {entry_size}; ABI version 1 uses {OUT_ENTRY}"
        ));
    }
    if n > count {
        return Err(format!(
            "transform returned {n} entries for a batch of {count} messages"
        ));
    }
    let table = region(
        mem,
        addr.wrapping_add(OUT_HEADER as u32),
        (n * OUT_ENTRY) as u32,
        "the transform output entries",
    )?;
    let mut out = Vec::with_capacity(n);
    let mut next_index = 0usize;
    for i in 0..n {
        let e = table.start + i * OUT_ENTRY;
        let index = get_u32(mem, e) as usize;
        if index < next_index || index >= count {
            return Err(format!(
                "transform entry {i} names input {index}; indices must increase and stay below \
                 {count}"
            ));
        }
        next_index = index + 1;
        let action = get_u32(mem, e + 4);
        let mut sec = [0..0, 0..0, 0..0, 0..0];
        const NAMES: [&str; 4] = ["tag", "keys", "properties", "body"];
        for (k, name) in NAMES.iter().enumerate() {
            let a = get_u32(mem, e + 8 + 8 * k);
            let l = get_u32(mem, e + 12 + 8 * k);
            sec[k] = region(mem, a, l, &format!("message {index}'s {name}"))?;
        }
        let action = match action {
            0 => {
                let tag = utf8(&mem[sec[0].clone()], "tag")?;
                if tag.len() > u16::MAX as usize {
                    return Err(format!("message {index}'s tag is longer than 65535 bytes"));
                }
                let keys = items(&mem[sec[1].clone()], "keys")?;
                if keys.iter().any(String::is_empty) {
                    return Err(format!("message {index} has an empty key"));
                }
                let flat = items(&mem[sec[2].clone()], "properties")?;
                if flat.len() % 2 != 0 {
                    return Err(format!(
                        "message {index}'s properties section has a name without a value"
                    ));
                }
                let mut properties = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if k.is_empty() {
                        return Err(format!("message {index} has an empty property name"));
                    }
                    properties.push((k, v));
                }
                let extra = tag.len() + sec[1].len() + sec[2].len();
                if extra > limits.max_properties
                    || sec[1].len() > u16::MAX as usize
                    || sec[2].len() > u16::MAX as usize
                {
                    return Err(format!(
                        "message {index}'s tag, keys and properties take {extra} bytes, more \
                         than the maximum of {} bytes",
                        limits.max_properties
                    ));
                }
                if sec[3].len() > limits.max_body {
                    return Err(format!(
                        "message {index}'s body of {} bytes exceeds the maximum of {} bytes",
                        sec[3].len(),
                        limits.max_body
                    ));
                }
                Action::Keep {
                    tag,
                    keys,
                    properties,
                    body: mem[sec[3].clone()].to_vec(),
                }
            }
            1 => Action::Reject(String::from_utf8_lossy(&mem[sec[3].clone()]).into_owned()),
            a => {
                return Err(format!(
                    "transform entry {i} has action {a} (0 = keep, 1 = reject)"
                ))
            }
        };
        out.push(Transformed { index, action });
    }
    Ok(out)
}

/// Writes `pairs` as a properties section (the configuration given to `quiver_init`).
pub(crate) fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(props_len(pairs));
    for (k, v) in pairs {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Reads a descriptor field (for tests and diagnostics).
#[cfg(test)]
pub(crate) fn descriptor_u64(batch: &[u8], i: usize, at: usize) -> u64 {
    quiver_protocol::record::get_u64(batch, BATCH_HEADER + DESCRIPTOR * i + at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn wire(tag: &str, keys: &[&str], props: &[(&str, &str)], body: &[u8]) -> WireMessage {
        WireMessage {
            id: 42,
            born_timestamp: 7,
            flags: 0,
            tag: tag.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn slice(batch: &[u8], base: u32, i: usize, field: usize) -> &[u8] {
        let d = BATCH_HEADER + DESCRIPTOR * i + 48 + 8 * field;
        let a = get_u32(batch, d) - base;
        let l = get_u32(batch, d + 4);
        &batch[a as usize..(a + l) as usize]
    }

    #[test]
    fn wire_batch_layout_matches_the_document() {
        let m = wire("t", &["k1", "k2"], &[("a", "1")], b"hello");
        let inputs = [Input::Wire(&m)];
        let len = batch_len("orders", &inputs);
        let mut buf = vec![0u8; len];
        let base = 1000;
        write_batch(&mut buf, base, "orders", 3, true, &inputs).unwrap();
        assert_eq!(get_u32(&buf, 0), 1);
        assert_eq!(get_u32(&buf, 4) as usize, len);
        assert_eq!(get_u32(&buf, 8), FLAG_INGRESS);
        assert_eq!(get_u32(&buf, 12), 3);
        let topic_at = (get_u32(&buf, 16) - base) as usize;
        assert_eq!(&buf[topic_at..topic_at + 6], b"orders");
        assert_eq!(get_u32(&buf, 24) as usize, DESCRIPTOR);
        assert_eq!(descriptor_u64(&buf, 0, 16), u64::MAX);
        assert_eq!(slice(&buf, base, 0, 0), b"t");
        assert_eq!(slice(&buf, base, 0, 1), b"\x02\x00k1\x02\x00k2");
        assert_eq!(slice(&buf, base, 0, 2), b"\x01\x00a\x01\x001");
        assert_eq!(slice(&buf, base, 0, 3), b"hello");
    }

    #[test]
    fn record_batch_points_into_the_copied_record() {
        use quiver_protocol::record::{encode_into, RecordLimits, RecordPlacement};
        use quiver_protocol::NewMessage;
        let keys = ["order-1"];
        let props = [("region", "eu")];
        let nm = NewMessage {
            msg_id: 9,
            flags: 0,
            born_timestamp: 5,
            born_host: "127.0.0.1:1".parse().unwrap(),
            reconsume_times: 2,
            tag: "paid",
            keys: &keys,
            properties: &props,
            body: b"{\"a\":1}",
        };
        let limits = RecordLimits {
            max_body: 1 << 20,
            max_properties: 1 << 15,
        };
        let n = nm.encoded_len("orders", &limits).unwrap();
        let mut rec = vec![0u8; n];
        let at = RecordPlacement {
            queue_id: 1,
            queue_offset: 77,
            phys_offset: 0,
            store_timestamp: 6,
            extra_flags: 0,
        };
        encode_into(&mut rec, "orders", &nm, &at);
        let inputs = [Input::Record(&rec), Input::Record(&rec)];
        let mut buf = vec![0u8; batch_len("orders", &inputs)];
        write_batch(&mut buf, 64, "orders", 1, false, &inputs).unwrap();
        assert_eq!(get_u32(&buf, 8), 0);
        assert_eq!(descriptor_u64(&buf, 1, 16), 77);
        assert_eq!(descriptor_u64(&buf, 1, 24), 5);
        assert_eq!(get_u32(&buf, BATCH_HEADER + DESCRIPTOR + 40), 2);
        assert_eq!(slice(&buf, 64, 1, 0), b"paid");
        assert_eq!(slice(&buf, 64, 1, 2), b"\x06\x00region\x02\x00eu");
        assert_eq!(slice(&buf, 64, 1, 3), b"{\"a\":1}");
    }

    #[test]
    fn verdicts_are_checked() {
        let mem = [0u8, 1, 1, 0, 2];
        assert_eq!(
            read_verdicts(&mem, 0, 4).unwrap(),
            vec![false, true, true, false]
        );
        assert!(read_verdicts(&mem, 0, 5).unwrap_err().contains("verdict 2"));
        assert!(read_verdicts(&mem, 3, 5)
            .unwrap_err()
            .contains("outside the plugin's memory"));
        assert!(read_verdicts(&mem, u32::MAX, 2).is_err());
    }

    fn entry(mem: &mut Vec<u8>, index: u32, action: u32, secs: [(u32, u32); 4]) {
        mem.extend_from_slice(&index.to_le_bytes());
        mem.extend_from_slice(&action.to_le_bytes());
        for (a, l) in secs {
            mem.extend_from_slice(&a.to_le_bytes());
            mem.extend_from_slice(&l.to_le_bytes());
        }
    }

    const LIMITS: OutputLimits = OutputLimits {
        max_body: 16,
        max_properties: 64,
    };

    #[test]
    fn transform_output_is_read_and_checked() {
        // data at 0..: "tag" (0..3), keys "\x01\x00k" (3..6), props (6..12), body (12..16)
        let mut mem = b"tag\x01\x00k\x01\x00p\x01\x00vBODY".to_vec();
        let out = mem.len() as u32;
        mem.extend_from_slice(&2u32.to_le_bytes());
        mem.extend_from_slice(&(OUT_ENTRY as u32).to_le_bytes());
        entry(&mut mem, 1, 0, [(0, 3), (3, 3), (6, 6), (12, 4)]);
        entry(&mut mem, 3, 1, [(0, 0), (0, 0), (0, 0), (12, 4)]);
        let got = read_transform(&mem, out, 4, LIMITS).unwrap();
        assert_eq!(
            got[0],
            Transformed {
                index: 1,
                action: Action::Keep {
                    tag: "tag".into(),
                    keys: vec!["k".into()],
                    properties: vec![("p".into(), "v".into())],
                    body: b"BODY".to_vec(),
                }
            }
        );
        assert_eq!(got[1].action, Action::Reject("BODY".into()));
        // too few inputs for index 3
        assert!(read_transform(&mem, out, 3, LIMITS).is_err());
    }

    #[test]
    fn transform_output_rejects_bad_entries() {
        let base = b"tag\x01\x00k\x05\x00p".to_vec();
        type Case = ([(u32, u32); 4], u32, &'static str);
        let cases: Vec<Case> = vec![
            ([(0, 3), (0, 0), (0, 0), (0, 1000)], 0, "outside"),
            ([(0, 3), (3, 1), (0, 0), (0, 0)], 0, "length prefix"),
            ([(0, 3), (3, 2), (0, 0), (0, 0)], 0, "runs past"),
            ([(0, 3), (6, 3), (0, 0), (0, 0)], 0, "runs past"),
            ([(0, 3), (0, 0), (3, 3), (0, 0)], 0, "without a value"),
            ([(0, 0), (0, 0), (0, 0), (0, 17)], 0, "exceeds the maximum"),
            ([(0, 0), (0, 0), (0, 0), (0, 0)], 7, "action 7"),
        ];
        for (secs, action, want) in cases {
            let mut mem = base.clone();
            mem.extend_from_slice(&[0u8; 32]);
            let out = mem.len() as u32;
            mem.extend_from_slice(&1u32.to_le_bytes());
            mem.extend_from_slice(&(OUT_ENTRY as u32).to_le_bytes());
            entry(&mut mem, 0, action, secs);
            let err = read_transform(&mem, out, 1, LIMITS).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        // decreasing indices
        let mut mem = vec![];
        mem.extend_from_slice(&2u32.to_le_bytes());
        mem.extend_from_slice(&(OUT_ENTRY as u32).to_le_bytes());
        entry(&mut mem, 1, 0, [(0, 0); 4]);
        entry(&mut mem, 1, 0, [(0, 0); 4]);
        assert!(read_transform(&mem, 0, 4, LIMITS)
            .unwrap_err()
            .contains("must increase"));
        // header outside memory
        assert!(read_transform(&mem, mem.len() as u32 - 4, 4, LIMITS).is_err());
    }
}
