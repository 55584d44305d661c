//! Keeping secrets out of everything a person or a log can read.
//!
//! Backend URLs carry credentials (`redis://:PASSWORD@host`, `etcd://user:PASSWORD@host`,
//! `consul://host?token=TOKEN`). Every message that shows a URL shows [`redact_url`]'s form of it,
//! and [`Secrets`] masks known secret values in text that came from elsewhere (a client crate's
//! error, a log line) before it is printed.

use std::fmt;

use crate::percent::percent_decode;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "secret",
    "auth",
    "access_token",
    "api_key",
    "apikey",
];

fn is_secret_param(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    SECRET_PARAMS.contains(&name.as_str())
}

/// `url` with its password and secret query values replaced by `***`:
/// `redis://:s3cret@h:6379/0` → `redis://:***@h:6379/0`, `etcd://bob:pw@h:2379` →
/// `etcd://bob:***@h:2379`, `consul://h:8500?token=t&dc=eu` → `consul://h:8500?token=***&dc=eu`.
///
/// Works on text that is not a well-formed URL too (it is meant for error messages about malformed
/// ones): whatever stands between the last `@` of the authority and a `:` before it is masked. A
/// user name alone (`redis://alice@h`) is not a secret and stays.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let rest = match userinfo_end(rest) {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    out.push_str(host);
    // Query: mask the values of secret parameters.
    match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(tail),
    }
    out
}

/// Where the user information of `rest` (a URL after `scheme://`) ends: the last `@` that no `?` or
/// `#` precedes, or that no `/` precedes. Passwords are not always percent-encoded, so a password
/// holding `/` or `?` still counts as one, while an `@` inside a query (after a path) does not.
fn userinfo_end(rest: &str) -> Option<usize> {
    rest.char_indices()
        .rev()
        .find(|&(i, c)| {
            c == '@' && {
                let before = &rest[..i];
                !before.contains(['?', '#']) || !before.contains('/')
            }
        })
        .map(|(i, _)| i)
}

/// The secret values a URL carries: the password of its user information (raw and
/// percent-decoded) and the values of its secret query parameters.
pub fn secrets_in_url(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(at) = userinfo_end(rest) {
        if let Some((_, pw)) = rest[..at].split_once(':') {
            found.push(pw.to_owned());
            found.push(percent_decode(pw));
        }
        rest = &rest[at + 1..];
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if is_secret_param(k) {
                    found.push(v.to_owned());
                    found.push(percent_decode(v));
                }
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found.sort();
    found.dedup();
    found
}

/// A set of secret values to mask in any text before it is shown: the passwords and tokens of the
/// URLs and environment variables a program was given.
///
/// Secrets shorter than 3 characters are not masked (they would mask ordinary text and they are no
/// secret anyway). `Debug` shows how many secrets there are, never them.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Vec<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} values)", self.values.len())
    }
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Secrets::default()
    }

    /// The secrets one URL carries.
    pub fn from_url(url: &str) -> Self {
        let mut s = Secrets::new();
        s.add_url(url);
        s
    }

    /// Adds one secret value.
    pub fn add(&mut self, value: impl Into<String>) {
        let v = value.into();
        if v.chars().count() >= 3 && !self.values.contains(&v) {
            self.values.push(v);
            // Longest first, so that a secret containing another is masked whole.
            self.values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Adds the secrets a URL carries ([`secrets_in_url`]).
    pub fn add_url(&mut self, url: &str) {
        for s in secrets_in_url(url) {
            self.add(s);
        }
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every known secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_user_information_are_masked() {
        for (url, want) in [
            ("redis://:s3cret@h:6379/bad", "redis://:***@h:6379/bad"),
            (
                "etcd://bob:pw@h:2379,h2:2379/ns",
                "etcd://bob:***@h:2379,h2:2379/ns",
            ),
            ("rediss://alice@h:6380", "rediss://alice@h:6380"),
            ("etcd://h:2379", "etcd://h:2379"),
            // A password with unencoded '/', '@' and '?' characters is masked whole.
            ("redis://:a/b@c@h:1", "redis://:***@h:1"),
            ("redis://u:p?x@h:1/0", "redis://u:***@h:1/0"),
            // Not even a URL.
            (":pw@h:1", ":***@h:1"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn secret_query_values_are_masked() {
        assert_eq!(
            redact_url("consul://h:8500/ns?token=abc&dc=eu#x"),
            "consul://h:8500/ns?token=***&dc=eu#x"
        );
        assert_eq!(
            redact_url("redis://h:1?Password=x&namespace=n"),
            "redis://h:1?Password=***&namespace=n"
        );
        assert_eq!(redact_url("memory://?history=5"), "memory://?history=5");
    }

    #[test]
    fn secrets_are_found_raw_and_decoded() {
        let s = secrets_in_url("etcd://bob:p%40ss@h:2379?token=t0k3n&ca=/x");
        assert!(s.contains(&"p%40ss".to_owned()), "{s:?}");
        assert!(s.contains(&"p@ss".to_owned()), "{s:?}");
        assert!(s.contains(&"t0k3n".to_owned()), "{s:?}");
        assert!(!s.iter().any(|v| v == "/x"), "{s:?}");
        let mut m = Secrets::new();
        m.add_url("redis://:hunter22@h");
        m.add("ab");
        assert_eq!(
            m.mask("WRONGPASS hunter22 at ab"),
            "WRONGPASS *** at ab",
            "short values are not secrets"
        );
        assert!(!format!("{m:?}").contains("hunter22"));
    }
}
