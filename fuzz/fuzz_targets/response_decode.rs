//! Successful response bodies as a client decodes them. The first input byte picks the
//! command whose response layout is expected (modulo the number of known commands); the rest
//! is the body. `Response::decode` must never panic. A response that decodes must survive
//! `encode_chunks` and decode to the same value. Error bodies (`decode_error`) are fed the
//! same bytes.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quiver_protocol::{decode_error, split_frame, Command, Response, Status};

/// Every command this protocol crate knows (codes are below 256), found by asking the crate
/// itself so new commands are fuzzed without editing this file.
fn commands() -> &'static [Command] {
    static ALL: OnceLock<Vec<Command>> = OnceLock::new();
    ALL.get_or_init(|| (0..=255u16).filter_map(Command::from_u16).collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let all = commands();
    let cmd = all[pick as usize % all.len()];
    let body = Bytes::copy_from_slice(rest);
    let _ = decode_error(body.clone());
    let Ok(resp) = Response::decode(cmd, body) else {
        return;
    };
    assert_eq!(resp.command(), cmd);
    let frame: Vec<u8> = resp.encode_chunks().concat();
    let (h, b) = split_frame(&Bytes::from(frame), u32::MAX).expect("own frame splits");
    assert_eq!(h.code, Status::Ok as u16);
    assert_eq!(h.aux, cmd as u16);
    assert_eq!(Response::decode(cmd, b).expect("own frame decodes"), resp);
});
