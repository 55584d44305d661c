//! MessagePack in the dialect of `msgpack-js` 0.3, the only one the ZSS broker decodes.
//!
//! It predates the str8/bin/ext revision of the spec:
//! - strings are `fixraw` (`0xa0`-`0xbf`, up to 31 bytes), `raw16` (`0xda`) or `raw32` (`0xdb`); a
//!   string of 32-255 bytes is `0xda`, never `0xd9`, which in this dialect means a 32-bit *buffer*;
//! - buffers are `0xd8` (16-bit length) and `0xd9` (32-bit length); `0xc4` is `undefined`;
//! - numbers outside the 32-bit signed range, and all non-integers, are float64 (`0xcb`).
//!
//! The encoder writes only what `msgpack-js` writes for JSON-like values (no buffers, no extension
//! types); the decoder reads everything `msgpack-js` reads.

use std::collections::BTreeMap;
use std::fmt;

/// A decoded value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `nil` (and `undefined`).
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer (only the 32-bit range is written as an integer).
    Int(i64),
    /// A float64.
    Float(f64),
    /// A string.
    Str(String),
    /// A buffer (read only: `msgpack-js` writes these for Node buffers).
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map; keys are strings in JSON-like data, but any value may be a key.
    Map(Vec<(Value, Value)>),
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "msgpack: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key`, if this is a map with a string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A map of string keys.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
        )
    }

    /// Whether this is `nil`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Self {
        match j {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => {
                Value::map(o.into_iter().map(|(k, v)| (k, Value::from(v))))
            }
        }
    }
}

/// The longest text a non-string map key becomes in the JSON view.
const MAX_KEY_TEXT: usize = 256;

/// The JSON text of a non-string map key, written directly from the value (keys nested in it
/// inline, not escaped again as strings) and cut at [`MAX_KEY_TEXT`] bytes. Escaping nested key
/// texts doubled them at every level of nesting: about 150 bytes of maps-as-keys from a peer made
/// gigabytes of text. Written this way, and stopped at the bound, a key costs at most its own size.
fn key_text(k: &Value) -> String {
    let mut out = String::new();
    write_key_text(k, &mut out);
    if out.len() > MAX_KEY_TEXT {
        let mut end = MAX_KEY_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn write_key_text(v: &Value, out: &mut String) {
    use std::fmt::Write as _;
    if out.len() > MAX_KEY_TEXT {
        return;
    }
    // Writing to a String cannot fail.
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Value::Str(s) => {
            // Only what can still be shown: the escaped text of at most the bound's length.
            let mut end = s.len().min(MAX_KEY_TEXT + 1);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&serde_json::Value::from(&s[..end]).to_string());
        }
        Value::Bin(b) => {
            out.push('[');
            for (i, x) in b.iter().enumerate() {
                if out.len() > MAX_KEY_TEXT {
                    return;
                }
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{x}");
            }
            out.push(']');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if out.len() > MAX_KEY_TEXT {
                    return;
                }
                if i > 0 {
                    out.push(',');
                }
                write_key_text(x, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if out.len() > MAX_KEY_TEXT {
                    return;
                }
                if i > 0 {
                    out.push(',');
                }
                write_key_text(k, out);
                out.push(':');
                write_key_text(x, out);
            }
            out.push('}');
        }
    }
}

/// The JSON view of a value. Map keys that are not strings become their JSON text (at most 256
/// bytes of it); buffers become arrays of numbers; non-finite floats `null`.
impl From<&Value> for serde_json::Value {
    fn from(v: &Value) -> Self {
        match v {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Bin(b) => {
                serde_json::Value::Array(b.iter().map(|x| serde_json::Value::from(*x)).collect())
            }
            Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(serde_json::Value::from).collect())
            }
            Value::Map(m) => {
                let mut o = serde_json::Map::new();
                for (k, v) in m {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => key_text(other),
                    };
                    o.insert(key, serde_json::Value::from(v));
                }
                serde_json::Value::Object(o)
            }
        }
    }
}

impl From<BTreeMap<String, Value>> for Value {
    fn from(m: BTreeMap<String, Value>) -> Self {
        Value::map(m)
    }
}

/// Encodes `v` as `msgpack-js` would.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn write_len(out: &mut Vec<u8>, len: usize, fix: Option<(u8, usize)>, b16: u8, b32: u8) {
    match fix {
        Some((tag, limit)) if len < limit => out.push(tag | len as u8),
        _ if len < 0x10000 => {
            out.push(b16);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(b32);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(i) if (i32::MIN as i64..=i32::MAX as i64).contains(i) => {
            let i = *i;
            if i >= 0 {
                if i < 0x80 {
                    out.push(i as u8);
                } else if i < 0x100 {
                    out.extend_from_slice(&[0xcc, i as u8]);
                } else if i < 0x10000 {
                    out.push(0xcd);
                    out.extend_from_slice(&(i as u16).to_be_bytes());
                } else {
                    out.push(0xce);
                    out.extend_from_slice(&(i as u32).to_be_bytes());
                }
            } else if i >= -0x20 {
                out.push(i as i8 as u8);
            } else if i >= -0x80 {
                out.extend_from_slice(&[0xd0, i as i8 as u8]);
            } else if i >= -0x8000 {
                out.push(0xd1);
                out.extend_from_slice(&(i as i16).to_be_bytes());
            } else {
                out.push(0xd2);
                out.extend_from_slice(&(i as i32).to_be_bytes());
            }
        }
        // Beyond 32 bits msgpack-js writes a double.
        Value::Int(i) => {
            out.push(0xcb);
            out.extend_from_slice(&(*i as f64).to_be_bytes());
        }
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => {
            write_len(out, s.len(), Some((0xa0, 0x20)), 0xda, 0xdb);
            out.extend_from_slice(s.as_bytes());
        }
        // msgpack-js's own buffer types; JSON-like payloads never contain them.
        Value::Bin(b) => {
            write_len(out, b.len(), None, 0xd8, 0xd9);
            out.extend_from_slice(b);
        }
        Value::Array(a) => {
            write_len(out, a.len(), Some((0x90, 0x10)), 0xdc, 0xdd);
            for x in a {
                write(x, out);
            }
        }
        Value::Map(m) => {
            write_len(out, m.len(), Some((0x80, 0x10)), 0xde, 0xdf);
            for (k, x) in m {
                write(k, out);
                write(x, out);
            }
        }
    }
}

/// Decodes one value that must span all of `bytes`, as `msgpack-js` does.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader {
        b: bytes,
        at: 0,
        depth: 0,
    };
    let v = r.value()?;
    if r.at != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes",
            bytes.len() - r.at
        )));
    }
    Ok(v)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    depth: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                DecodeError(format!("truncated: need {n} bytes at offset {}", self.at))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    fn string(&mut self, len: usize) -> Result<Value, DecodeError> {
        let raw = self.take(len)?;
        Ok(Value::Str(String::from_utf8_lossy(raw).into_owned()))
    }

    fn items(&mut self, len: usize, map: bool) -> Result<Value, DecodeError> {
        // Each item takes at least one byte: refuse lengths the input cannot hold.
        let per = if map { 2 } else { 1 };
        if len.saturating_mul(per) > self.b.len() - self.at {
            return Err(DecodeError(format!(
                "{len} items cannot fit in what is left"
            )));
        }
        self.depth += 1;
        if self.depth > 512 {
            return Err(DecodeError("nesting deeper than 512".into()));
        }
        let v = if map {
            let mut m = Vec::with_capacity(len);
            for _ in 0..len {
                let k = self.value()?;
                let v = self.value()?;
                m.push((k, v));
            }
            Value::Map(m)
        } else {
            let mut a = Vec::with_capacity(len);
            for _ in 0..len {
                a.push(self.value()?);
            }
            Value::Array(a)
        };
        self.depth -= 1;
        Ok(v)
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let t = self.take(1)?[0];
        Ok(match t {
            0x00..=0x7f => Value::Int(i64::from(t)),
            0x80..=0x8f => return self.items(usize::from(t & 0x0f), true),
            0x90..=0x9f => return self.items(usize::from(t & 0x0f), false),
            0xa0..=0xbf => return self.string(usize::from(t & 0x1f)),
            0xe0..=0xff => Value::Int(i64::from(t as i8)),
            0xc0 | 0xc4 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xcc => Value::Int(self.be(1)? as i64),
            0xcd => Value::Int(self.be(2)? as i64),
            0xce => Value::Int(self.be(4)? as i64),
            0xcf => {
                let u = self.be(8)?;
                i64::try_from(u).map_or(Value::Float(u as f64), Value::Int)
            }
            0xd0 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xca => Value::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xda => {
                let n = self.be(2)? as usize;
                return self.string(n);
            }
            0xdb => {
                let n = self.be(4)? as usize;
                return self.string(n);
            }
            0xd8 => {
                let n = self.be(2)? as usize;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xd9 => {
                let n = self.be(4)? as usize;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xdc => {
                let n = self.be(2)? as usize;
                return self.items(n, false);
            }
            0xdd => {
                let n = self.be(4)? as usize;
                return self.items(n, false);
            }
            0xde => {
                let n = self.be(2)? as usize;
                return self.items(n, true);
            }
            0xdf => {
                let n = self.be(4)? as usize;
                return self.items(n, true);
            }
            other => return Err(DecodeError(format!("unknown type 0x{other:02x}"))),
        })
    }
}

#[cfg(test)]
mod tests;
