//! Stored message records as a client receives them in Pull / MessageBy* responses.
//! `RecordView::parse` (CRC-checked) and `parse_unchecked_crc` (so random inputs reach the
//! section parser despite the CRC) must never panic, and neither may any accessor or the
//! key/property iterators on a record that parsed. `record::probe` gets the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_protocol::record::{probe, record_crc, MIN_RECORD_SIZE};
use quiver_protocol::RecordView;

fn exercise(v: &RecordView<'_>, len: usize) {
    assert_eq!(v.bytes().len(), len);
    let _ = (v.flags(), v.queue_id(), v.queue_offset(), v.phys_offset());
    let _ = (v.born_timestamp(), v.store_timestamp(), v.born_host());
    let _ = (v.reconsume_times(), v.msg_id(), v.topic(), v.tag());
    let mut n = 0usize;
    for k in v.keys() {
        n += k.len();
    }
    for (name, value) in v.properties() {
        n += name.len() + value.len();
    }
    let _ = v.property("region");
    assert!(n + v.body().len() + v.topic().len() + v.tag().len() <= len);
    let _ = format!("{v:?}");
}

fuzz_target!(|data: &[u8]| {
    let _ = probe(data);
    if let Ok(v) = RecordView::parse(data) {
        exercise(&v, data.len());
    }
    if data.len() >= MIN_RECORD_SIZE {
        let _ = record_crc(data);
    }
    if let Ok(v) = RecordView::parse_unchecked_crc(data) {
        exercise(&v, data.len());
    }
});
