//! Instances: the model, name rules, key layout and the versioned JSON document stored per instance.
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

/// The format version written in every instance document.
pub const FORMAT_VERSION: u32 = 1;
/// The longest service name, in bytes.
pub const MAX_SERVICE_LEN: usize = 64;
/// The longest instance id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The default weight: 128 virtual nodes on the ring.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The largest weight accepted (100 times the default share).
pub const MAX_WEIGHT: u32 = 10_000;

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

fn name_ok(name: &str, max: usize, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(&c)
        })
}

/// Checks a service name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (so it
/// can never contain `/` or `..` at its start and escape its prefix).
pub fn validate_service(name: &str) -> Result<()> {
    if name_ok(name, MAX_SERVICE_LEN, &[]) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid service name {name:?}: use 1 to {MAX_SERVICE_LEN} of A-Z a-z 0-9 . _ -, \
             starting with a letter or digit"
        )))
    }
}

/// Checks an instance id: 1 to 128 of `A-Z a-z 0-9 . _ - : @`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<()> {
    if name_ok(id, MAX_ID_LEN, &[':', '@']) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid instance id {id:?}: use 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ - : @, \
             starting with a letter or digit"
        )))
    }
}

/// Checks a namespace: one or more `/`-separated segments, each a valid service name.
pub fn validate_namespace(ns: &str) -> Result<()> {
    if !ns.is_empty() && ns.split('/').all(|seg| name_ok(seg, MAX_SERVICE_LEN, &[])) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid namespace {ns:?}: use /-separated segments of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Where instances live in the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    namespace: String,
}

impl Layout {
    pub(crate) fn new(namespace: &str) -> Result<Self> {
        validate_namespace(namespace)?;
        Ok(Layout {
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.namespace)
    }

    pub(crate) fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.namespace)
    }

    pub(crate) fn all_prefix(&self) -> String {
        format!("{}/", self.namespace)
    }

    /// Splits a key under the namespace into (service, id); `None` for keys of another shape.
    pub(crate) fn parse<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.namespace)?.strip_prefix('/')?;
        let (service, id) = rest.split_once('/')?;
        (validate_service(service).is_ok() && validate_id(id).is_ok()).then_some((service, id))
    }
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

    #[test]
    fn names_cannot_escape_their_prefix() {
        for bad in [
            "",
            "a/b",
            "..",
            "../x",
            ".hidden",
            "a b",
            "ünï",
            &"x".repeat(65),
        ] {
            assert!(validate_service(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "a.b_c-d", "9lives"] {
            assert!(validate_service(good).is_ok(), "{good:?}");
        }
        assert!(validate_id("node@host:8080").is_ok());
        assert!(validate_id("a/b").is_err());
        assert!(validate_namespace("registry/prod").is_ok());
        assert!(validate_namespace("registry//prod").is_err());
        assert!(validate_namespace("/registry").is_err());
    }

    #[test]
    fn layout_parses_its_own_keys_only() {
        let l = Layout::new("registry").unwrap();
        assert_eq!(l.parse(&l.key("web", "a")), Some(("web", "a")));
        assert_eq!(l.parse("registry/web"), None);
        assert_eq!(l.parse("registry/web/a/b"), None);
        assert_eq!(l.parse("registryx/web/a"), None);
        assert_eq!(l.parse("other/web/a"), None);
    }
}
