//! What a ZSS peer sends: msgpack values and whole multipart messages. The first byte chooses:
//! even, the rest is one msgpack value for `msgpack::decode`; odd, the rest is a list of frames
//! (each a length byte, then up to that many bytes) for `Message::parse`. Never a panic; decoded
//! values re-encode stably; parsed messages re-parse to the same routing facts.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use zss::Message;
use zss::msgpack::{decode, encode};

fn msgpack(data: &[u8]) {
    if let Ok(v) = decode(data) {
        let once = encode(&v);
        let back = decode(&once).expect("an encoded value decodes");
        assert_eq!(encode(&back), once, "re-encoding is not stable");
        // The JSON view handlers get must not panic either.
        let _ = serde_json::Value::from(&v);
    }
}

fn frames(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let n = usize::from(len).min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..n]));
        data = &rest[n..];
    }
    out
}

fn message(data: &[u8]) {
    let frames = frames(data);
    if let Ok(m) = Message::parse(&frames) {
        let again = Message::parse(&m.to_frames()).expect("a message's own frames parse");
        assert_eq!(
            (
                &again.identity,
                again.kind,
                &again.rid,
                &again.address,
                again.status
            ),
            (&m.identity, m.kind, &m.rid, &m.address, m.status)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => message(rest),
        Some((_, rest)) => msgpack(rest),
        None => {}
    }
});
