//! [`BackendUrl`]: a backend URL parsed once, where it enters the program, and handed as it is to
//! the backend that reads it.
//!
//! ```
//! use registry_core::url::BackendUrl;
//!
//! let url: BackendUrl = "etcds://bob:p%40ss@10.0.0.1:2379,[::1]:2379/prod?timeout=3s".parse()?;
//! assert_eq!(url.scheme(), "etcds");
//! assert_eq!((url.user(), url.password()), (Some("bob"), Some("p@ss")));
//! let hosts: Vec<String> = url.hosts().map(|h| h.to_string()).collect();
//! assert_eq!(hosts, ["10.0.0.1:2379", "[::1]:2379"]);
//! assert_eq!(url.path(), "/prod");
//! assert_eq!(url.query_pairs().collect::<Vec<_>>(), [("timeout", "3s")]);
//! // Shown, it never carries its secrets.
//! assert_eq!(url.to_string(), "etcds://bob:***@10.0.0.1:2379,[::1]:2379/prod?timeout=3s");
//! # Ok::<(), registry_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::redact::{Secrets, UrlParts, redact_url, write_host};

/// A backend URL, parsed once with the `url` crate:
/// `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?name=value&...][#fragment]`.
///
/// - The scheme is in lower case (`ETCD://` reads as `etcd://`).
/// - One or more hosts, each with an optional port; a comma-separated list
///   (`etcd://h1:2379,h2:2379/ns`) gives several, an IPv6 address is written in brackets
///   (`[::1]:2379`). `memory://NAME` names a store by its host; `memory://` has none.
/// - User name and password, percent-decoded (`p%40ss` is `p@ss`).
/// - The path, percent-decoded: etcd's and Consul's namespace, Redis's database number.
/// - The query options, percent-decoded and in order (`+` stays `+`: tokens and passwords hold it).
///
/// What each backend makes of these parts is up to its builder (`from_backend_url`). `Display` and
/// `Debug` show the URL redacted: the password and the values of secret options (`token`,
/// `password`, ...) as `***`. [`secrets`](Self::secrets) gives those values, to mask them in text
/// from elsewhere.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    parts: UrlParts,
    /// The text it was parsed from, with its scheme in lower case.
    text: String,
}

impl BackendUrl {
    /// Parses `text`. A malformed URL is [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput),
    /// with the URL redacted in the message (which says what is wrong, not what the right form is:
    /// that depends on the backend, and callers add it).
    ///
    /// A password holding `/`, `?`, `#` or `@` must be percent-encoded; an `@` after the host part
    /// (say in an option value) too, as it would read as the end of a password.
    pub fn parse(text: &str) -> Result<Self> {
        let parts = UrlParts::parse(text).map_err(|why| {
            Error::invalid(format!(
                "`{}` is not a valid backend URL: {why}",
                redact_url(text)
            ))
        })?;
        let rest = &text[text.find("://").unwrap_or(0)..];
        let text = format!("{}{rest}", parts.scheme);
        Ok(BackendUrl { parts, text })
    }

    /// [`parse`](Self::parse), with what a good URL looks like for the caller (`right_form`, say
    /// `expected etcd://host:port`) added to the message of the error.
    pub fn parse_expecting(text: &str, right_form: &str) -> Result<Self> {
        BackendUrl::parse(text)
            .map_err(|e| Error::invalid(format!("{}; {right_form}", e.message())))
    }

    /// The scheme, in lower case: `memory`, `etcd`, `etcds`, `redis`, ...
    pub fn scheme(&self) -> &str {
        &self.parts.scheme
    }

    /// Whether the scheme is `plain` (`Some(false)`), its TLS variant `plain` + `s` (`Some(true)`:
    /// `etcds` for `etcd`), or neither (`None`).
    pub fn tls_variant_of(&self, plain: &str) -> Option<bool> {
        match self.scheme().strip_prefix(plain)? {
            "" => Some(false),
            "s" => Some(true),
            _ => None,
        }
    }

    /// The user name, percent-decoded; `None` when the URL names none (`redis://:pw@h`).
    pub fn user(&self) -> Option<&str> {
        Some(self.parts.user.decoded.as_str()).filter(|u| !u.is_empty())
    }

    /// The password, percent-decoded. A secret: never show it.
    pub fn password(&self) -> Option<&str> {
        self.parts.password.as_ref().map(|p| p.decoded.as_str())
    }

    /// The hosts, in the order written; none for `memory://`.
    pub fn hosts(&self) -> impl ExactSizeIterator<Item = HostPort<'_>> + '_ {
        self.parts
            .hosts
            .iter()
            .map(|(host, port)| HostPort { host, port: *port })
    }

    /// The path, percent-decoded, with its leading `/` (`""` when there is none).
    pub fn path(&self) -> &str {
        &self.parts.path.decoded
    }

    /// The query options as `(name, value)`, percent-decoded, in the order written; the value of an
    /// option without `=` is `""`. Secret values among them: never show them.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.parts.query.iter().map(|pair| {
            let value = pair.value.as_ref().map_or("", |v| v.decoded.as_str());
            (pair.name.decoded.as_str(), value)
        })
    }

    /// The fragment (after `#`), as written.
    pub fn fragment(&self) -> Option<&str> {
        self.parts.fragment.as_deref()
    }

    /// The secrets this URL carries (its password and secret option values, as written and
    /// decoded), to mask them in any text before it is shown.
    pub fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        for value in &self.parts.secrets {
            secrets.add(value.as_str());
        }
        secrets
    }

    /// The URL as it was given, secrets included (with its scheme in lower case): for an API that
    /// takes a URL as text. Never show it; `Display` is the form to show.
    pub fn as_unredacted_str(&self) -> &str {
        &self.text
    }
}

/// The URL redacted: `redis://alice:***@h:6379/0?namespace=prod`.
impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts.fmt(f)
    }
}

/// The URL redacted, as `Display` shows it.
impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl")
            .field(&self.parts.to_string())
            .finish()
    }
}

impl FromStr for BackendUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        BackendUrl::parse(text)
    }
}

impl TryFrom<&str> for BackendUrl {
    type Error = Error;

    fn try_from(text: &str) -> Result<Self> {
        BackendUrl::parse(text)
    }
}

/// One host of a [`BackendUrl`], with its port if it has one. `Display` writes `host:port`, an
/// IPv6 address in brackets (`[::1]:2379`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostPort<'a> {
    host: &'a str,
    port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// The host name or address, an IPv6 address without brackets (`::1`).
    pub fn host(&self) -> &'a str {
        self.host
    }

    /// The port, if the URL gives one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_host(f, self.host, self.port)
    }
}

#[cfg(test)]
mod tests;
