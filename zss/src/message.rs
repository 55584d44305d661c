//! The ZSS message: eight frames on the wire.
//!
//! | frame | content |
//! |---|---|
//! | 0 | identity (the client's, on requests a worker receives) |
//! | 1 | protocol, `ZSS:0.0` |
//! | 2 | type, `REQ` or `REP` |
//! | 3 | request id |
//! | 4 | address `{sid, sversion, verb}`, msgpack |
//! | 5 | headers, msgpack map |
//! | 6 | status, decimal ASCII (empty on requests) |
//! | 7 | payload, msgpack |
//!
//! A DEALER receives seven frames when the broker's ROUTER consumed frame 0 for routing (replies to
//! the worker's own SMI requests); [`Message::parse`] accepts both.

use bytes::Bytes;

use crate::msgpack::{self, Value};

/// The protocol frame.
pub const PROTOCOL: &str = "ZSS:0.0";

/// Request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `REQ`.
    Request,
    /// `REP`.
    Reply,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "REQ",
            Kind::Reply => "REP",
        }
    }
}

/// Where a message goes: service id, service version, verb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Service id (upper case).
    pub sid: String,
    /// Service version (`*` for any).
    pub sversion: String,
    /// Verb (upper case).
    pub verb: String,
}

impl Address {
    /// An address for `sid` and `verb`, any version.
    pub fn new(sid: &str, verb: &str) -> Self {
        Address {
            sid: sid.to_uppercase(),
            sversion: "*".into(),
            verb: verb.to_uppercase(),
        }
    }

    fn to_value(&self) -> Value {
        Value::map([
            ("sid", Value::from(self.sid.as_str())),
            ("sversion", Value::from(self.sversion.as_str())),
            ("verb", Value::from(self.verb.as_str())),
        ])
    }

    fn from_value(v: &Value) -> Result<Self, String> {
        let field = |k: &str| -> Result<String, String> {
            match v.get(k) {
                Some(Value::Str(s)) => Ok(s.clone()),
                Some(Value::Nil) | None if k == "sversion" => Ok("*".into()),
                other => Err(format!("address field `{k}` is {other:?}")),
            }
        };
        Ok(Address {
            sid: field("sid")?,
            sversion: field("sversion")?,
            verb: field("verb")?,
        })
    }
}

/// One ZSS message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Frame 0: on a request a worker receives, the client's identity (`CLIENT#uuid`).
    pub identity: Option<String>,
    /// Request or reply.
    pub kind: Kind,
    /// Request id.
    pub rid: String,
    /// Destination.
    pub address: Address,
    /// Headers (a map, or nil).
    pub headers: Value,
    /// Status code (replies).
    pub status: Option<u16>,
    /// Payload.
    pub payload: Value,
}

/// Why frames are not a ZSS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed ZSS message: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

impl Message {
    /// A new request to `address` with a fresh request id.
    pub fn request(address: Address, headers: Value, payload: Value) -> Self {
        Message {
            identity: None,
            kind: Kind::Request,
            rid: uuid::Uuid::new_v4().to_string(),
            address,
            headers,
            status: None,
            payload,
        }
    }

    /// The client part of the identity (before `#`).
    pub fn client(&self) -> Option<&str> {
        self.identity
            .as_deref()
            .map(|i| i.split('#').next().unwrap_or(i))
    }

    /// A header by name.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers.get(name)
    }

    /// Parses seven or eight frames.
    pub fn parse(frames: &[Bytes]) -> Result<Message, ParseError> {
        let f: Vec<&[u8]> = match frames.len() {
            8 => frames.iter().map(|b| b.as_ref()).collect(),
            7 => std::iter::once(&b""[..])
                .chain(frames.iter().map(|b| b.as_ref()))
                .collect(),
            n => return Err(ParseError(format!("{n} frames, expected 7 or 8"))),
        };
        let text = |i: usize| String::from_utf8_lossy(f[i]).into_owned();
        if f[1] != PROTOCOL.as_bytes() {
            return Err(ParseError(format!("protocol frame is {:?}", text(1))));
        }
        let kind = match f[2] {
            b"REQ" => Kind::Request,
            b"REP" => Kind::Reply,
            other => {
                return Err(ParseError(format!(
                    "type frame is {:?}",
                    String::from_utf8_lossy(other)
                )));
            }
        };
        let de = |i: usize, what: &str| -> Result<Value, ParseError> {
            if f[i].is_empty() {
                return Ok(Value::Nil);
            }
            msgpack::decode(f[i]).map_err(|e| ParseError(format!("{what}: {e}")))
        };
        let address = Address::from_value(&de(4, "address")?).map_err(ParseError)?;
        let identity = (!f[0].is_empty()).then(|| text(0));
        Ok(Message {
            identity,
            kind,
            rid: text(3),
            address,
            headers: de(5, "headers")?,
            status: std::str::from_utf8(f[6])
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            payload: de(7, "payload")?,
        })
    }

    /// The eight frames.
    pub fn to_frames(&self) -> Vec<Bytes> {
        vec![
            Bytes::from(self.identity.clone().unwrap_or_default()),
            Bytes::from_static(PROTOCOL.as_bytes()),
            Bytes::from_static(self.kind.as_str().as_bytes()),
            Bytes::from(self.rid.clone()),
            Bytes::from(msgpack::encode(&self.address.to_value())),
            Bytes::from(msgpack::encode(&self.headers)),
            Bytes::from(self.status.map(|s| s.to_string()).unwrap_or_default()),
            Bytes::from(msgpack::encode(&self.payload)),
        ]
    }
}

/// The error bodies the ZSS services and broker send, by status code.
pub fn error_body(code: u16) -> Value {
    let (dev, user) = match code {
        400 => (
            "The request cannot be fulfilled due to bad syntax.",
            "An error occured",
        ),
        401 => (
            "User authentication token has expired or is missing",
            "This resource is only available after logging in.",
        ),
        403 => (
            "User does not have enough privileges to access this resource.",
            "You do not have access to this resource.",
        ),
        404 => (
            "The resource could not be found.",
            "The content you requested was not found.",
        ),
        429 => (
            "You have sent too many requests in a given amount of time.",
            "Please wait a while before trying to access this content again",
        ),
        599 => (
            "Connection timeout while processing this request.",
            "Connection timeout while processing this request.",
        ),
        _ => (
            "There was an error while processing this request. There is probably something wrong with the API server.",
            "There was an error while processing this request.",
        ),
    };
    Value::map([
        ("developerMessage", Value::from(dev)),
        ("userMessage", Value::from(user)),
        ("code", Value::Int(i64::from(code))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_layout() {
        let mut m = Message::request(
            Address::new("ping", "list"),
            Value::map([("x-request-id", Value::from("r1"))]),
            Value::from("hi"),
        );
        m.identity = Some("CLIENT#abc".into());
        let f = m.to_frames();
        assert_eq!(f.len(), 8);
        assert_eq!(&f[1][..], b"ZSS:0.0");
        assert_eq!(&f[2][..], b"REQ");
        assert_eq!(&f[6][..], b"", "requests carry an empty status");
        let back = Message::parse(&f).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.client(), Some("CLIENT"));
        assert_eq!(back.address.sid, "PING");
        let mut rep = back.clone();
        rep.kind = Kind::Reply;
        rep.status = Some(204);
        assert_eq!(&rep.to_frames()[6][..], b"204");
        // Seven frames: the identity was consumed by the ROUTER.
        let seven: Vec<Bytes> = rep.to_frames().into_iter().skip(1).collect();
        let p = Message::parse(&seven).unwrap();
        assert_eq!(
            (p.identity, p.status, p.kind),
            (None, Some(204), Kind::Reply)
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        let good = Message::request(Address::new("a", "b"), Value::Nil, Value::Nil).to_frames();
        assert!(Message::parse(&good[..3]).is_err());
        let mut bad = good.clone();
        bad[1] = Bytes::from_static(b"HTTP/1.1");
        assert!(Message::parse(&bad).is_err());
        let mut bad = good.clone();
        bad[4] = Bytes::from_static(&[0xc1]);
        assert!(Message::parse(&bad).is_err());
        let mut bad = good;
        bad[4] = Bytes::from(msgpack::encode(&Value::from("not a map")));
        assert!(Message::parse(&bad).is_err());
    }
}
