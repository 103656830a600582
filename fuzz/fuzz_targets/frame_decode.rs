//! Request frames as the broker reads them off a stream: an 8-byte header, then the body.
//! `FrameHeader::parse` (1 MiB limit) and `Request::decode` must never panic, whatever the
//! bytes. A request that decodes must survive `encode` and decode to the same value. (Not
//! byte for byte: a few fields are read and then ignored, such as the header's flags and the
//! value of a GroupResetOffset to First/Last, so the encoding is not canonical.)
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quiver_protocol::{split_frame, FrameHeader, Request, FRAME_HEADER};

const MAX_FRAME: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < FRAME_HEADER {
        return;
    }
    let mut h = [0u8; FRAME_HEADER];
    h.copy_from_slice(&data[..FRAME_HEADER]);
    let Ok(header) = FrameHeader::parse(&h, MAX_FRAME) else {
        return;
    };
    assert!(header.length >= 4 && header.length <= MAX_FRAME);
    // The broker reads exactly `body_len()` bytes; here the body is whatever follows the
    // header (shorter or longer than announced), which the decoder must also survive.
    let body = Bytes::copy_from_slice(&data[FRAME_HEADER..]);
    let Ok(req) = Request::decode(&header, body.clone()) else {
        return;
    };
    assert_eq!(req.command() as u16, header.code);
    let frame = req.encode();
    let (h2, b2) = split_frame(&frame, u32::MAX).expect("own frame splits");
    assert_eq!(h2.code, header.code);
    assert_eq!(h2.aux, 0);
    assert_eq!(Request::decode(&h2, b2).expect("own frame decodes"), req);
});
