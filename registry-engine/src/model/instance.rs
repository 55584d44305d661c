//! The instance: the model and the versioned JSON document stored per instance.
//!
//! Each instance is one key, `{namespace}/{service}/{id}`, whose value is a JSON document other
//! languages can read:
//!
//! ```json
//! {"v":1,"service":"web","id":"web-1","addrs":["10.0.0.1:8080"],"meta":{"zone":"a"},
//!  "version":"1.4.2","weight":100,"state":"online"}
//! ```
//!
//! `v` is the format's major version: readers skip documents with another `v` (and count them),
//! and ignore fields they do not know, so additive changes keep `v = 1`.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use registry_core::error::{Error, ErrorKind, Result};

use crate::model::names::{validate_id, validate_service};

/// The format version written in every instance document.
pub const FORMAT_VERSION: u32 = 1;
/// The default weight: 128 virtual nodes on the ring.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The largest weight accepted (100 times the default share).
pub const MAX_WEIGHT: u32 = 10_000;

/// The `host:port` of an instance address given as `host:port` or as a URL
/// (`grpc://user:pass@10.0.0.1:50051/path`): the scheme, credentials, path, query and fragment
/// removed. `None` if nothing is left.
///
/// ```
/// assert_eq!(registry_engine::host_port("http://u:p@10.0.0.1:80/x?y"), Some("10.0.0.1:80"));
/// assert_eq!(registry_engine::host_port("[::1]:50051"), Some("[::1]:50051"));
/// assert_eq!(registry_engine::host_port("http:///path"), None);
/// ```
pub fn host_port(addr: &str) -> Option<&str> {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host_port.is_empty()).then_some(host_port)
}

/// Whether an instance takes routed work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InstanceState {
    /// Listed and routed to.
    #[default]
    Online,
    /// Still listed (visible in [`Directory::all`](crate::Directory::all)), but out of
    /// [`Directory::get`](crate::Directory::get) and of routing.
    Offline,
}

impl InstanceState {
    /// The state as written in instance documents: `online` or `offline`.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Online => "online",
            InstanceState::Offline => "offline",
        }
    }
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub service: String,
    /// The instance id, unique within the service: 1 to 128 of `A-Z a-z 0-9 . _ - : @`, starting
    /// with a letter or digit.
    pub id: String,
    /// Where the instance is reached (`host:port` or URLs); at least one.
    pub addrs: Vec<String>,
    /// Free-form string metadata.
    #[serde(default, rename = "meta", skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The instance's software version, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Relative routing weight (default 100 = 128 virtual nodes).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Online or offline.
    #[serde(default)]
    pub state: InstanceState,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Instance {
    /// An online instance with no address yet; add one with [`addr`](Self::addr).
    pub fn new(service: impl Into<String>, id: impl Into<String>) -> Self {
        Instance {
            service: service.into(),
            id: id.into(),
            addrs: Vec::new(),
            metadata: BTreeMap::new(),
            version: None,
            weight: DEFAULT_WEIGHT,
            state: InstanceState::Online,
        }
    }

    /// Adds an address.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addrs.push(addr.into());
        self
    }

    /// The first address that is an IP address and a port: `IP:port`, `[IPv6]:port`, or either
    /// inside a URL (`grpc://10.0.0.1:50051/`, credentials and path ignored). What gRPC clients
    /// take as an endpoint (they resolve no names from an xDS answer).
    ///
    /// ```
    /// use registry_engine::Instance;
    ///
    /// let i = Instance::new("db", "db-1").addr("db.internal:5432").addr("grpc://10.0.0.3:5432/");
    /// assert_eq!(i.socket_addr(), Some("10.0.0.3:5432".parse().unwrap()));
    /// ```
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.addrs.iter().find_map(|a| host_port(a)?.parse().ok())
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the routing weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the state.
    pub fn state(mut self, state: InstanceState) -> Self {
        self.state = state;
        self
    }

    /// Whether the instance is online.
    pub fn is_online(&self) -> bool {
        self.state == InstanceState::Online
    }

    /// Checks names, addresses and weight.
    pub fn validate(&self) -> Result<()> {
        validate_service(&self.service)?;
        validate_id(&self.id)?;
        if self.addrs.is_empty() {
            return Err(Error::invalid(format!(
                "instance {}/{} has no address",
                self.service, self.id
            )));
        }
        for a in &self.addrs {
            if a.is_empty() || a.len() > 512 || a.chars().any(|c| c.is_control()) {
                return Err(Error::invalid(format!(
                    "instance {}/{}: invalid address {a:?}",
                    self.service, self.id
                )));
            }
        }
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(Error::invalid(format!(
                "instance {}/{}: weight {} is outside 1..={MAX_WEIGHT}",
                self.service, self.id, self.weight
            )));
        }
        Ok(())
    }

    /// The JSON document stored for this instance.
    pub fn encode(&self) -> Bytes {
        let doc = Document {
            v: FORMAT_VERSION,
            instance: self.clone(),
        };
        // Serialising plain strings and maps cannot fail.
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// Decodes a stored document, checking that it belongs at `service`/`id`.
    pub fn decode(service: &str, id: &str, value: &[u8]) -> Result<Instance> {
        #[derive(Deserialize)]
        struct Probe {
            v: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(value).map_err(|e| {
            Error::new(ErrorKind::Decode, "instance value is not a JSON object").with_source(e)
        })?;
        match probe.v {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    format!(
                        "instance document has format version {v}; this build reads {FORMAT_VERSION}"
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    "instance document has no format version `v`",
                ));
            }
        }
        let doc: Document = serde_json::from_slice(value).map_err(|e| {
            Error::new(ErrorKind::Decode, "malformed instance document").with_source(e)
        })?;
        let inst = doc.instance;
        if inst.service != service || inst.id != id {
            return Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "document names {}/{} but is stored at {service}/{id}",
                    inst.service, inst.id
                ),
            ));
        }
        inst.validate()
            .map_err(|e| Error::new(ErrorKind::Decode, e.message().to_owned()))?;
        Ok(inst)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.id)
    }
}

#[derive(Serialize, Deserialize)]
struct Document {
    v: u32,
    #[serde(flatten)]
    instance: Instance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_shape() {
        let i = Instance::new("web", "web-1")
            .addr("10.0.0.1:8080")
            .meta("zone", "a")
            .version("1.2.3");
        let bytes = i.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"service":"web","id":"web-1""#),
            "{text}"
        );
        assert_eq!(Instance::decode("web", "web-1", &bytes).unwrap(), i);
    }

    #[test]
    fn decode_rejects_foreign_and_future_documents() {
        let good = Instance::new("web", "a").addr("x:1").encode();
        assert!(
            Instance::decode("web", "b", &good).is_err(),
            "stored under another id"
        );
        for bad in [
            &b"not json"[..],
            br#"{"service":"web","id":"a","addrs":["x:1"]}"#,
            br#"{"v":2,"service":"web","id":"a","addrs":["x:1"]}"#,
            br#"{"v":1,"service":"web","id":"a","addrs":[]}"#,
            br#"{"v":1,"service":"web","id":"a"}"#,
            br#"[1,2]"#,
        ] {
            let e = Instance::decode("web", "a", bad).unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::Decode,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Unknown fields from a newer minor version are ignored.
        let newer = br#"{"v":1,"service":"web","id":"a","addrs":["x:1"],"colour":"red"}"#;
        assert!(Instance::decode("web", "a", newer).is_ok());
    }
}
