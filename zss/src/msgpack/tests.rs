use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn strings_use_raw_types_never_str8() {
    assert_eq!(hex(&encode(&"".into())), "a0");
    assert_eq!(hex(&encode(&"PING".into())), "a450494e47");
    let s31 = "a".repeat(31);
    assert_eq!(encode(&s31.as_str().into())[0], 0xbf);
    for len in [32usize, 100, 255, 256, 65535] {
        let e = encode(&"x".repeat(len).into());
        assert_eq!(e[0], 0xda, "len {len}");
        assert_eq!(&e[1..3], &(len as u16).to_be_bytes(), "len {len}");
        assert_eq!(e.len(), 3 + len);
    }
    let e = encode(&"y".repeat(65536).into());
    assert_eq!(&e[..5], &[0xdb, 0, 1, 0, 0]);
}

#[test]
fn integers_fit_32_bits_or_become_doubles() {
    let cases: &[(i64, &str)] = &[
        (0, "00"),
        (127, "7f"),
        (128, "cc80"),
        (255, "ccff"),
        (256, "cd0100"),
        (65535, "cdffff"),
        (65536, "ce00010000"),
        (2_147_483_647, "ce7fffffff"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0df"),
        (-128, "d080"),
        (-129, "d1ff7f"),
        (-32768, "d18000"),
        (-32769, "d2ffff7fff"),
        (i32::MIN as i64, "d280000000"),
    ];
    for (i, want) in cases {
        assert_eq!(hex(&encode(&Value::Int(*i))), *want, "{i}");
    }
    // Beyond 32 bits: float64, as msgpack-js writes any number (x << 0) !== x.
    assert_eq!(
        hex(&encode(&Value::Int(2_147_483_648))),
        "cb41e0000000000000"
    );
    assert_eq!(
        hex(&encode(&Value::Int(-2_147_483_649))),
        "cbc1e0000000200000"
    );
    assert_eq!(hex(&encode(&Value::Float(1.5))), "cb3ff8000000000000");
}

#[test]
fn the_address_frame_of_a_real_request() {
    // {sid: "PING", sversion: "*", verb: "LIST"} as msgpack-js writes it (insertion order).
    let v = Value::map([
        ("sid", Value::from("PING")),
        ("sversion", Value::from("*")),
        ("verb", Value::from("LIST")),
    ]);
    let b = encode(&v);
    assert_eq!(
        hex(&b),
        "83a3736964a450494e47a87376657273696f6ea12aa476657262a44c495354"
    );
    assert_eq!(decode(&b).unwrap(), v);
}

#[test]
fn reads_what_msgpack_js_writes_and_more() {
    assert_eq!(decode(&[0xc4]).unwrap(), Value::Nil, "undefined");
    assert_eq!(decode(&[0xd8, 0, 2, 1, 2]).unwrap(), Value::Bin(vec![1, 2]));
    assert_eq!(
        decode(&[0xd9, 0, 0, 0, 1, 9]).unwrap(),
        Value::Bin(vec![9]),
        "0xd9 is a buffer here"
    );
    assert_eq!(
        decode(&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
        Value::Int(1 << 32)
    );
    assert_eq!(
        decode(&[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]).unwrap(),
        Value::Int(-2)
    );
    assert_eq!(
        decode(&[0xca, 0x3f, 0xc0, 0, 0]).unwrap(),
        Value::Float(1.5)
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for bad in [
        &[][..],
        &[0xda, 0x00],
        &[0xa5, b'a'],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xc1],
        &[0x01, 0x02],
        &[0xdf, 0x7f, 0xff, 0xff, 0xff],
    ] {
        assert!(decode(bad).is_err(), "{bad:?}");
    }
    let deep = vec![0x91u8; 10_000];
    assert!(decode(&deep).is_err());
}

/// Found by `cargo fuzz` (zss_msgpack, out of memory): maps nested as map keys. Converting
/// these 141 bytes to JSON escaped each level's key text into the next, doubling it per level,
/// until libFuzzer stopped at 2 GB.
#[test]
fn maps_nested_as_keys_make_bounded_json() {
    let input: &[u8] = &[
        134, 134, 134, 1, 255, 129, 129, 129, 129, 129, 129, 1, 0, 129, 129, 129, 129, 129, 129,
        129, 129, 134, 134, 134, 1, 255, 129, 129, 129, 129, 129, 129, 129, 129, 129, 129, 129,
        129, 129, 129, 129, 129, 129, 129, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 50, 48,
        48, 48, 48, 111, 111, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 111,
        111, 111, 111, 111, 255, 255, 255, 51, 3, 129, 129, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
        48, 48, 50, 48, 48, 48, 48, 111, 111, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
        48, 48, 48, 111, 111, 111, 111, 111, 255, 255, 255, 51, 3, 111, 233, 48, 101, 61,
    ];
    let v = decode(input).unwrap();
    let json = serde_json::Value::from(&v).to_string();
    assert!(json.len() < 64 * 1024, "{} bytes", json.len());

    // The worst shape for escaping: a chain of 500 maps, each the key of the next.
    let mut chain = Value::from("leaf \"quoted\" \\ text");
    for _ in 0..500 {
        chain = Value::Map(vec![(chain, Value::Nil)]);
    }
    let json = serde_json::Value::from(&chain).to_string();
    assert!(json.len() <= 2 * MAX_KEY_TEXT + 16, "{} bytes", json.len());

    // Simple non-string keys read as before.
    let v = Value::Map(vec![
        (Value::Int(7), Value::from("seven")),
        (
            Value::Array(vec![Value::Int(1), Value::Bool(true)]),
            Value::Nil,
        ),
        (Value::map([("a", Value::from("b\"c"))]), Value::Nil),
    ]);
    let json = serde_json::Value::from(&v);
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["7", "[1,true]", r#"{"a":"b\"c"}"#]);
}

#[test]
fn roundtrip_of_json_like_values() {
    let j = serde_json::json!({"ok": true, "n": [1, -2, 300, 70000, 1.25, null], "s": "x".repeat(40), "nested": {"a": "b"}});
    let v = Value::from(j.clone());
    let back = decode(&encode(&v)).unwrap();
    assert_eq!(serde_json::Value::from(&back), j);
}
