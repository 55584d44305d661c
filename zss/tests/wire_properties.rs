//! Properties of what zss reads off the wire: the msgpack decoder and `Message::parse` get
//! arbitrary and near-valid bytes and frames, as a broken or hostile peer could send them. Never a
//! panic; what decodes re-encodes stably; valid encodings round-trip and none of their strict
//! prefixes decodes.

use bytes::Bytes;
use proptest::prelude::*;
use zss::Value;
use zss::message::{Address, Kind, Message, PROTOCOL};
use zss::msgpack::{decode, encode};

/// Values as `msgpack-js` writes them (integers in the 32-bit range, finite floats, buffers too).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| Value::Int(i64::from(i))),
        prop_oneof![-40i64..300, 65_530i64..65_540].prop_map(Value::Int),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        ".{0,40}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bin),
    ];
    leaf.prop_recursive(4, 48, 20, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
        ]
    })
}

/// What every decoded value must satisfy: its encoding decodes, and re-encoding is stable from
/// then on (a first re-encoding may normalise: 64-bit integers become doubles, invalid UTF-8 is
/// replaced).
fn check_stable(v: &Value) -> Result<(), TestCaseError> {
    let once = encode(v);
    // The JSON view handlers use stays proportional to the bytes received (maps nested as keys
    // once doubled it per level).
    let json = serde_json::Value::from(v).to_string();
    prop_assert!(
        json.len() <= 64 * once.len() + 64,
        "{} bytes of msgpack became {} bytes of JSON",
        once.len(),
        json.len()
    );
    let back = decode(&once);
    prop_assert!(back.is_ok(), "{v:?} encodes to undecodable {once:02x?}");
    let twice = encode(&back.unwrap());
    prop_assert_eq!(&once, &twice);
    Ok(())
}

/// Bytes that look like msgpack: a valid encoding with a few bytes changed, cut or added.
fn mutated_encoding() -> impl Strategy<Value = Vec<u8>> {
    (
        value(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(v, flips, cut, tail)| {
            let mut b = encode(&v);
            if !b.is_empty() {
                for (at, byte) in flips {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                b.truncate(cut.index(b.len() + 1));
            }
            b.extend(tail);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn msgpack_decode_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(v) = decode(&bytes) {
            check_stable(&v)?;
        }
    }

    #[test]
    fn msgpack_decode_never_panics_on_mutated_encodings(bytes in mutated_encoding()) {
        if let Ok(v) = decode(&bytes) {
            check_stable(&v)?;
        }
    }

    /// Length prefixes announcing far more than there is (up to 4 GiB) are errors, found
    /// without allocating what they announce.
    #[test]
    fn msgpack_huge_announced_lengths_are_errors(
        tag in prop::sample::select(vec![0xdbu8, 0xd9, 0xdd, 0xdf, 0xda, 0xd8, 0xdc, 0xde]),
        len in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut b = vec![tag];
        if matches!(tag, 0xda | 0xd8 | 0xdc | 0xde) {
            b.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            b.extend_from_slice(&len.to_be_bytes());
        }
        b.extend_from_slice(&body);
        if let Ok(v) = decode(&b) {
            check_stable(&v)?;
        }
    }
}

proptest! {
    #[test]
    fn msgpack_values_round_trip_and_no_strict_prefix_decodes(v in value()) {
        let b = encode(&v);
        prop_assert_eq!(decode(&b).ok(), Some(v.clone()));
        for cut in 0..b.len() {
            prop_assert!(decode(&b[..cut]).is_err(), "prefix of {} bytes of {:?}", cut, v);
        }
    }
}

fn frame() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from),
        value().prop_map(|v| Bytes::from(encode(&v))),
        prop::sample::select(vec![
            &b""[..],
            b"ZSS:0.0",
            b"REQ",
            b"REP",
            b"200",
            b" 204 ",
            b"99999",
            b"-1",
            b"+5",
            b"\xff\xfe",
        ])
        .prop_map(Bytes::from_static),
    ]
}

fn valid_message() -> impl Strategy<Value = Message> {
    (
        prop::option::of("[A-Z]{1,8}#[a-f0-9-]{1,36}"),
        any::<bool>(),
        ".{0,36}",
        (".{0,12}", ".{0,6}", ".{0,12}"),
        value(),
        prop::option::of(any::<u16>()),
        value(),
    )
        .prop_map(
            |(identity, reply, rid, (sid, sversion, verb), headers, status, payload)| Message {
                identity: identity.filter(|i| !i.is_empty()),
                kind: if reply { Kind::Reply } else { Kind::Request },
                rid,
                address: Address {
                    sid,
                    sversion,
                    verb,
                },
                headers,
                status,
                payload,
            },
        )
}

/// What every parsed message must satisfy: its frames parse to the same routing facts.
fn check_parsed(m: &Message) -> Result<(), TestCaseError> {
    let frames = m.to_frames();
    prop_assert_eq!(frames.len(), 8);
    let back = Message::parse(&frames);
    prop_assert!(back.is_ok(), "{m:?} does not re-parse: {back:?}");
    let back = back.unwrap();
    prop_assert_eq!(&back.identity, &m.identity);
    prop_assert_eq!(back.kind, m.kind);
    prop_assert_eq!(&back.rid, &m.rid);
    prop_assert_eq!(&back.address, &m.address);
    prop_assert_eq!(back.status, m.status);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn message_parse_never_panics_on_arbitrary_frames(
        frames in prop::collection::vec(frame(), 0..10),
    ) {
        if let Ok(m) = Message::parse(&frames) {
            prop_assert!(frames.len() == 7 || frames.len() == 8);
            check_parsed(&m)?;
        }
    }

}

proptest! {
    /// A valid message with one frame replaced, or the identity frame dropped.
    #[test]
    fn message_parse_never_panics_on_near_valid_frames(
        m in valid_message(),
        replace in prop::option::of((0usize..8, frame())),
        drop_identity in any::<bool>(),
    ) {
        let mut frames = m.to_frames();
        if let Some((i, f)) = &replace {
            frames[*i] = f.clone();
        }
        if drop_identity {
            frames.remove(0);
        }
        match Message::parse(&frames) {
            Ok(parsed) => check_parsed(&parsed)?,
            Err(e) => {
                // Only the protocol, type and msgpack frames can be refused.
                prop_assert!(replace.as_ref().is_some_and(|(i, _)| [1, 2, 4, 5, 7].contains(i)), "{e}");
            }
        }
    }
}

proptest! {
    #[test]
    fn valid_messages_round_trip(m in valid_message()) {
        let back = Message::parse(&m.to_frames());
        prop_assert_eq!(back.as_ref().ok(), Some(&m));
        prop_assert_eq!(&m.to_frames()[1][..], PROTOCOL.as_bytes());
    }
}
