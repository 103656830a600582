//! The ABI's data layouts (docs/PLUGINS.md, "The ABI (version 1)"): input batch parsing, the
//! filter verdicts and the transform output table.
//!
//! Everything here works over a byte slice plus the address `base` it has in the guest's memory
//! (on wasm32 the slice's real address), so it is tested natively with any `base`.

use std::borrow::Cow;

use crate::message::{Message, Outcome};

/// The ABI version this crate implements.
pub(crate) const ABI_VERSION: i32 = 1;
/// Size of the input batch header.
pub(crate) const HEADER_SIZE: usize = 32;
/// Size of a message descriptor in ABI version 1 (the minimum `descriptor_size`).
pub(crate) const DESCRIPTOR_SIZE: usize = 80;
/// Size of a transform output entry.
pub(crate) const ENTRY_SIZE: usize = 40;
/// Size of the transform output header.
pub(crate) const OUTPUT_HEADER_SIZE: usize = 8;

fn u32_at(data: &[u8], at: usize) -> u32 {
    let bytes = data[at..at + 4].try_into().expect("4 bytes");
    u32::from_le_bytes(bytes)
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let bytes = data[at..at + 8].try_into().expect("8 bytes");
    u64::from_le_bytes(bytes)
}

fn u128_at(data: &[u8], at: usize) -> u128 {
    let bytes = data[at..at + 16].try_into().expect("16 bytes");
    u128::from_le_bytes(bytes)
}

/// A parsed input batch: the header is checked, descriptors are read on demand.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    data: &'a [u8],
    base: u32,
    count: usize,
    step: usize,
    ingress: bool,
    queue_id: u32,
    topic: &'a str,
}

impl<'a> Batch<'a> {
    /// Checks the header of the batch in `data`, which sits at address `base`. The error says
    /// what is wrong. Sections a descriptor points at are not checked here: one outside the
    /// batch reads as empty.
    pub(crate) fn parse(data: &'a [u8], base: u32) -> Result<Self, String> {
        if data.len() < HEADER_SIZE {
            return Err(format!(
                "the batch is {} bytes long, shorter than its {HEADER_SIZE}-byte header",
                data.len()
            ));
        }
        let count = u32_at(data, 0) as usize;
        let len = u32_at(data, 4) as usize;
        let flags = u32_at(data, 8);
        let queue_id = u32_at(data, 12);
        let (topic_addr, topic_len) = (u32_at(data, 16), u32_at(data, 20));
        let step = u32_at(data, 24) as usize;
        if len != data.len() {
            return Err(format!(
                "the batch header says {len} bytes but the call passed {}",
                data.len()
            ));
        }
        if step < DESCRIPTOR_SIZE {
            return Err(format!(
                "descriptor_size is {step}; ABI version {ABI_VERSION} needs at least {DESCRIPTOR_SIZE}"
            ));
        }
        let end = count
            .checked_mul(step)
            .and_then(|n| n.checked_add(HEADER_SIZE));
        if end.is_none_or(|end| end > data.len()) {
            return Err(format!(
                "{count} descriptors of {step} bytes do not fit in a batch of {} bytes",
                data.len()
            ));
        }
        let mut batch = Batch {
            data,
            base,
            count,
            step,
            ingress: flags & 1 == 1,
            queue_id,
            topic: "",
        };
        batch.topic = std::str::from_utf8(batch.section(topic_addr, topic_len)).unwrap_or("");
        Ok(batch)
    }

    /// The number of messages.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The `len` bytes at absolute address `addr`; empty when they are not inside the batch.
    fn section(&self, addr: u32, len: u32) -> &'a [u8] {
        let start = addr.wrapping_sub(self.base) as usize;
        match start.checked_add(len as usize) {
            Some(end) if end <= self.data.len() => &self.data[start..end],
            _ => &[],
        }
    }

    /// Message `index` (< `len()`), borrowing every field from the batch.
    pub(crate) fn message(&self, index: usize) -> Message<'a> {
        let at = HEADER_SIZE + index * self.step;
        let d = &self.data[at..at + DESCRIPTOR_SIZE];
        let field = |off: usize| Cow::Borrowed(self.section(u32_at(d, off), u32_at(d, off + 4)));
        Message {
            id: u128_at(d, 0),
            topic: self.topic,
            queue_id: self.queue_id,
            queue_offset: u64_at(d, 16),
            born_timestamp: u64_at(d, 24) as i64,
            store_timestamp: u64_at(d, 32) as i64,
            reconsume_times: u32_at(d, 40),
            flags: u32_at(d, 44),
            ingress: self.ingress,
            tag: field(48),
            keys: field(56),
            props: field(64),
            body: field(72),
        }
    }
}

/// Runs `filter` over every message of `batch` and writes one verdict byte per message
/// (`1` keep, `0` drop) into `verdicts`, which is reused: no allocation once it is big enough.
pub(crate) fn filter_batch<F>(batch: &Batch<'_>, verdicts: &mut Vec<u8>, mut filter: F)
where
    F: FnMut(&Message<'_>) -> bool,
{
    verdicts.clear();
    // At least one byte so the returned address is a real one even for an empty batch.
    verdicts.reserve(batch.len().max(1));
    for i in 0..batch.len() {
        verdicts.push(u8::from(filter(&batch.message(i))));
    }
}

/// Where the bytes of one output field are: in the input batch or in the output arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Input { offset: u32, len: u32 },
    Arena { offset: u32, len: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    index: u32,
    action: u32,
    /// tag, keys, properties, body
    fields: [Loc; 4],
}

const EMPTY: Loc = Loc::Input { offset: 0, len: 0 };

/// The transform output being built: entries are collected first, the table is written once
/// all new bytes are in the arena (whose address is only final then). All buffers are reused
/// from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct TransformOutput {
    entries: Vec<Entry>,
    arena: Vec<u8>,
    table: Vec<u8>,
}

impl TransformOutput {
    pub(crate) const fn new() -> Self {
        TransformOutput {
            entries: Vec::new(),
            arena: Vec::new(),
            table: Vec::new(),
        }
    }

    /// Where `bytes` go: a slice inside `input` (a field left borrowed from the batch) is
    /// pointed at, no copy; anything else is copied into the arena.
    fn place(&mut self, input: &[u8], bytes: &[u8]) -> Loc {
        if bytes.is_empty() {
            return EMPTY;
        }
        let start = bytes.as_ptr() as usize;
        let input_start = input.as_ptr() as usize;
        if start >= input_start && start + bytes.len() <= input_start + input.len() {
            return Loc::Input {
                offset: (start - input_start) as u32,
                len: bytes.len() as u32,
            };
        }
        let offset = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        Loc::Arena {
            offset,
            len: bytes.len() as u32,
        }
    }

    /// Records what happens to input message `index` (indices must increase).
    fn push(&mut self, input: &[u8], index: usize, outcome: Outcome<'_>) {
        let index = index as u32;
        match outcome {
            Outcome::Drop => {}
            Outcome::Deliver(m) => {
                let fields = [
                    self.place(input, &m.tag),
                    self.place(input, &m.keys),
                    self.place(input, &m.props),
                    self.place(input, &m.body),
                ];
                self.entries.push(Entry {
                    index,
                    action: 0,
                    fields,
                });
            }
            Outcome::Reject(reject) => {
                let body = self.place(input, reject.reason().as_bytes());
                self.entries.push(Entry {
                    index,
                    action: 1,
                    fields: [EMPTY, EMPTY, EMPTY, body],
                });
            }
        }
    }

    /// Writes the output table, with input locations relative to `input_base` and arena
    /// locations relative to the address `arena_base` gives for the (now final) arena.
    fn finish(&mut self, input_base: u32, arena_base: impl FnOnce(&[u8]) -> u32) {
        let arena_base = arena_base(&self.arena);
        self.table.clear();
        self.table
            .reserve(OUTPUT_HEADER_SIZE + self.entries.len() * ENTRY_SIZE);
        self.table
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.table
            .extend_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        for entry in &self.entries {
            self.table.extend_from_slice(&entry.index.to_le_bytes());
            self.table.extend_from_slice(&entry.action.to_le_bytes());
            for loc in entry.fields {
                let (addr, len) = match loc {
                    Loc::Input { offset, len } => (input_base.wrapping_add(offset), len),
                    Loc::Arena { offset, len } => (arena_base.wrapping_add(offset), len),
                };
                self.table.extend_from_slice(&addr.to_le_bytes());
                self.table.extend_from_slice(&len.to_le_bytes());
            }
        }
    }

    /// The output table written by the last [`transform_batch`].
    pub(crate) fn table(&self) -> &[u8] {
        &self.table
    }

    /// The arena holding the bytes the last [`transform_batch`] could not point at in place.
    #[cfg(test)]
    pub(crate) fn arena(&self) -> &[u8] {
        &self.arena
    }
}

/// Runs `transform` over every message of `batch` and writes the output table into `out`.
/// `arena_base` gives the address of the arena holding the new bytes (on wasm32, its real
/// address).
pub(crate) fn transform_batch<F>(
    batch: &Batch<'_>,
    out: &mut TransformOutput,
    arena_base: impl FnOnce(&[u8]) -> u32,
    mut transform: F,
) where
    F: for<'m> FnMut(Message<'m>) -> Outcome<'m>,
{
    out.entries.clear();
    out.arena.clear();
    for i in 0..batch.len() {
        let outcome = transform(batch.message(i));
        out.push(batch.data, i, outcome);
    }
    out.finish(batch.base, arena_base);
}
