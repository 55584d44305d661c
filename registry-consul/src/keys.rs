//! Our keys as Consul keys. Consul keys travel in URL paths, where Go's HTTP stack cleans `//`,
//! `.` and `..` segments (and redirects) and treats `%`, `?` and `#` specially. Each `/`-separated
//! segment is therefore escaped: bytes outside `A-Z a-z 0-9 . _ -` become `~XX` (hex), and an empty
//! segment becomes `~`, `.` `~2E`, `..` `~2E~2E`. The mapping is bijective and keeps `/` as the
//! separator, so an encoded directory prefix is a string prefix of exactly the encoded keys under it.

fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn encode_segment(seg: &str, out: &mut String) {
    match seg {
        "" => out.push('~'),
        "." => out.push_str("~2E"),
        ".." => out.push_str("~2E~2E"),
        _ => {
            for &b in seg.as_bytes() {
                if safe(b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("~{b:02X}"));
                }
            }
        }
    }
}

/// Encodes a key: every segment escaped (a trailing `/` is an empty last segment, `~`).
pub(crate) fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, seg) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        encode_segment(seg, &mut out);
    }
    out
}

/// Encodes a normalized directory prefix (ending in `/`): its segments escaped as in [`encode`],
/// then the separator, so that it is a string prefix of exactly the encoded keys under it.
pub(crate) fn encode_prefix(prefix: &str) -> String {
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    let mut out = encode(body);
    out.push('/');
    out
}

/// Decodes a key written by [`encode`]; `None` for anything else.
pub(crate) fn decode(enc: &str) -> Option<String> {
    let mut out = Vec::with_capacity(enc.len());
    for (i, seg) in enc.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if seg == "~" {
            continue;
        }
        if seg.is_empty() {
            return None;
        }
        let b = seg.as_bytes();
        let mut j = 0;
        while j < b.len() {
            if b[j] == b'~' {
                let pair = b.get(j + 1..j + 3)?;
                // Exactly two hex digits (`from_str_radix` would also take a sign, `~+F`).
                if !pair.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?);
                j += 3;
            } else if safe(b[j]) {
                out.push(b[j]);
                j += 1;
            } else {
                return None;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_of_awkward_keys() {
        for k in [
            "svc/web/a-1",
            "u//a///b/",
            "u/a%2Fb?c=d#e&f",
            "u/.././..",
            "u/ключ/服务",
            "u/🦀/x y",
            "~/~~",
            "a/",
            "/lead",
        ] {
            let e = encode(k);
            assert!(
                e.bytes().all(|b| safe(b) || b == b'~' || b == b'/'),
                "{k:?} -> {e:?}"
            );
            assert!(
                !e.contains("//") && !e.split('/').any(|s| s == "." || s == ".."),
                "{e}"
            );
            assert_eq!(decode(&e).as_deref(), Some(k), "{k:?} -> {e:?}");
        }
    }

    #[test]
    fn foreign_keys_that_are_not_our_encoding_are_refused() {
        for foreign in ["~+F", "~-1", "~4", "~", "a//b", "a b", "~zz", "x~4\u{e9}"] {
            let d = decode(foreign);
            assert!(
                d.is_none() || d.as_deref().map(encode).as_deref() == Some(foreign),
                "{foreign:?} -> {d:?}"
            );
        }
        assert_eq!(decode("~+F"), None);
    }

    #[test]
    fn prefixes_stay_prefixes() {
        let p = encode_prefix("a/b/");
        assert!(encode("a/b/x").starts_with(&p));
        assert!(encode("a/b//y").starts_with(&p));
        assert!(
            encode("a/b/").starts_with(&p),
            "a key ending in / is under its directory"
        );
        assert!(!encode("a/bc/x").starts_with(&p));
        assert!(!encode("a/b").starts_with(&p));
        assert!(encode("u//a///b/").starts_with(&encode_prefix("u//a/")));
    }
}
