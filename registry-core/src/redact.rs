//! Keeping secrets out of everything a person or a log can read.
//!
//! Backend URLs carry credentials (`redis://:PASSWORD@host`, `etcd://user:PASSWORD@host`,
//! `consul://host?token=TOKEN`). Every message that shows a URL shows [`redact_url`]'s form of it,
//! and [`Secrets`] masks known secret values in text that came from elsewhere (a client crate's
//! error, a log line) before it is printed.
//!
//! A URL is taken apart once, with the `url` crate: its redacted form and its secrets are built
//! from those parts ([`crate::url::BackendUrl`] is the public face of the same parse). Text that
//! does not parse (an error message about a malformed URL must show it too) is redacted by text
//! heuristics instead.

use std::fmt;

use url::{Host, Url};

use crate::percent::percent_decode;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "password",
    // Redis Sentinel's own password (`redis+sentinel://...?sentinel_password=`).
    "sentinel_password",
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

/// A piece of a URL as the `url` crate writes it (percent-encoded), and decoded.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Written {
    pub(crate) raw: String,
    pub(crate) decoded: String,
}

impl Written {
    fn new(raw: &str) -> Self {
        Written {
            raw: raw.to_owned(),
            decoded: percent_decode(raw),
        }
    }
}

/// One `name=value` option of a URL's query; `value` is `None` without `=`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueryPair {
    pub(crate) name: Written,
    pub(crate) value: Option<Written>,
}

impl QueryPair {
    fn is_secret(&self) -> bool {
        is_secret_param(&self.name.raw) || is_secret_param(&self.name.decoded)
    }
}

/// A URL taken apart with the `url` crate: scheme (lower case), user information, one or more
/// hosts, path, query options in order, fragment. Its `Display` is the redacted URL.
///
/// A comma-separated host list (`etcd://h1:2379,h2:2379/ns`), which the `url` crate cannot read as
/// one host, is split here and each host parsed by the `url` crate. No `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct UrlParts {
    pub(crate) scheme: String,
    /// The user name (empty when there is none).
    pub(crate) user: Written,
    pub(crate) password: Option<Written>,
    /// Each host with its port; an IPv6 address without its brackets.
    pub(crate) hosts: Vec<(String, Option<u16>)>,
    pub(crate) path: Written,
    pub(crate) query: Vec<QueryPair>,
    pub(crate) fragment: Option<String>,
    /// Every secret value: as written in the text, as the `url` crate writes it, and decoded.
    pub(crate) secrets: Vec<String>,
}

impl UrlParts {
    /// Takes `text` apart, or says why it is no URL of the form
    /// `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?query][#fragment]`. The reason
    /// never quotes the text (it may hold a secret).
    pub(crate) fn parse(text: &str) -> Result<UrlParts, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("it has no `SCHEME://`".to_owned());
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(
                "its scheme is not a letter followed by letters, digits, `+`, `-` or `.`"
                    .to_owned(),
            );
        }
        let scheme = scheme.to_ascii_lowercase();
        // The authority ends where the url crate ends it; its user information at its last `@`.
        let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let (userinfo, host_list) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let written_password = userinfo.and_then(|u| u.split_once(':')).map(|(_, p)| p);
        // An `@` further on reads, to the text heuristics, as the end of a password holding an
        // unencoded `/`, `?` or `#`: which one was meant cannot be told, so neither is guessed.
        if text_password(text).is_some_and(|p| Some(p) != written_password) {
            return Err(
                "an `@` after the host reads as the end of a password: percent-encode \
                 `/`, `?`, `#` and `@` in a password (%2F, %3F, %23, %40) and `@` in an option \
                 value (%40)"
                    .to_owned(),
            );
        }
        let mut pieces = host_list
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let at = userinfo.map_or(String::new(), |u| format!("{u}@"));
        let first = pieces.next().unwrap_or("");
        let url =
            Url::parse(&format!("{scheme}://{at}{first}{tail}")).map_err(|e| e.to_string())?;
        let mut hosts: Vec<_> = host_of(&url).into_iter().collect();
        for piece in pieces {
            let other = Url::parse(&format!("{scheme}://{piece}")).map_err(|e| e.to_string())?;
            match host_of(&other) {
                Some(h) if matches!(other.path(), "" | "/") => hosts.push(h),
                _ => return Err("a host of its host list is not host:port".to_owned()),
            }
        }
        let user = Written::new(url.username());
        let password = url.password().map(Written::new);
        let query: Vec<QueryPair> = url
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) => QueryPair {
                    name: Written::new(name),
                    value: Some(Written::new(value)),
                },
                None => QueryPair {
                    name: Written::new(pair),
                    value: None,
                },
            })
            .collect();
        let mut secrets = text_secrets(text);
        let secret_values = query
            .iter()
            .filter(|pair| pair.is_secret())
            .filter_map(|pair| pair.value.as_ref());
        for w in password.iter().chain(secret_values) {
            secrets.extend([w.raw.clone(), w.decoded.clone()]);
        }
        secrets.extend(written_password.map(str::to_owned));
        Ok(UrlParts {
            scheme,
            user,
            password,
            hosts,
            path: Written::new(url.path()),
            query,
            fragment: url.fragment().map(str::to_owned),
            secrets: tidy(secrets),
        })
    }
}

/// The host and port of `url`, an IPv6 address without brackets.
fn host_of(url: &Url) -> Option<(String, Option<u16>)> {
    let host = match url.host()? {
        Host::Domain(d) => d.to_owned(),
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => a.to_string(),
    };
    Some((host, url.port()))
}

/// Writes `host[:port]`, an IPv6 address in brackets (`[::1]:2379`).
pub(crate) fn write_host(f: &mut fmt::Formatter<'_>, host: &str, port: Option<u16>) -> fmt::Result {
    // A domain never holds `:`; an IPv6 address always does.
    if host.contains(':') {
        write!(f, "[{host}]")?;
    } else {
        f.write_str(host)?;
    }
    match port {
        Some(p) => write!(f, ":{p}"),
        None => Ok(()),
    }
}

/// The URL with its password and secret query values masked.
impl fmt::Display for UrlParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if !self.user.raw.is_empty() || self.password.is_some() {
            f.write_str(&self.user.raw)?;
            if self.password.is_some() {
                write!(f, ":{MASK}")?;
            }
            f.write_str("@")?;
        }
        for (i, (host, port)) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_host(f, host, *port)?;
        }
        f.write_str(&self.path.raw)?;
        for (i, pair) in self.query.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            f.write_str(&pair.name.raw)?;
            match &pair.value {
                Some(_) if pair.is_secret() => write!(f, "={MASK}")?,
                Some(v) => write!(f, "={}", v.raw)?,
                None => {}
            }
        }
        match &self.fragment {
            Some(frag) => write!(f, "#{frag}"),
            None => Ok(()),
        }
    }
}

/// `url` with its password and secret query values replaced by `***`:
/// `redis://:s3cret@h:6379/0` → `redis://:***@h:6379/0`, `etcd://bob:pw@h:2379` →
/// `etcd://bob:***@h:2379`, `consul://h:8500?token=t&dc=eu` → `consul://h:8500?token=***&dc=eu`.
///
/// A URL that parses is shown as parsed, in the `url` crate's spelling. Text that is not a
/// well-formed URL (as in error messages about malformed ones) is masked all the same: whatever
/// stands between the last `@` of the authority and a `:` before it, and the values of secret query
/// parameters. A user name alone (`redis://alice@h`) is not a secret and stays.
pub fn redact_url(url: &str) -> String {
    match UrlParts::parse(url) {
        Ok(parts) => parts.to_string(),
        Err(_) => redact_text(url),
    }
}

/// [`redact_url`] of text that does not parse: by text heuristics alone.
fn redact_text(url: &str) -> String {
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
    // Text that does not parse may put a secret option where the reading above does not look for
    // one (after an `@` it took for the end of a password, say): mask every secret option it
    // holds, wherever it stands.
    mask_secret_options(&out)
}

/// The secret options (`name=value` after a `?` or `&`, `name` a secret one) of `text`, wherever
/// they stand: the range of each value.
fn secret_options(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    for (i, c) in text.char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let rest = &text[i + 1..];
        let Some((name, _)) = rest.split_once('=') else {
            continue;
        };
        if name.contains(['&', '?', '#', '/']) || !is_secret_param(name) {
            continue;
        }
        let start = i + 1 + name.len() + 1;
        let len = text[start..].find(['&', '#']).unwrap_or(text.len() - start);
        found.push(start..start + len);
    }
    found
}

/// `text` with the value of every secret option replaced by `***`.
fn mask_secret_options(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in secret_options(text) {
        out.push_str(&text[at..r.start]);
        out.push_str(MASK);
        at = r.end;
    }
    out.push_str(&text[at..]);
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

/// The password of `url`'s user information as the text heuristics see it ([`userinfo_end`]).
fn text_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let at = userinfo_end(rest)?;
    rest[..at].split_once(':').map(|(_, pw)| pw)
}

/// The secret values a URL carries: the password of its user information and the values of its
/// secret query parameters, each as written and percent-decoded (and, where the URL parses, as the
/// `url` crate writes it).
pub fn secrets_in_url(url: &str) -> Vec<String> {
    match UrlParts::parse(url) {
        Ok(parts) => parts.secrets,
        Err(_) => text_secrets(url),
    }
}

/// [`secrets_in_url`] by text heuristics alone: for text that does not parse, and for the spelling
/// of the secrets as written in text that does.
fn text_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(pw) = text_password(url) {
        found.push(pw.to_owned());
        found.push(percent_decode(pw));
    }
    if let Some(at) = userinfo_end(rest) {
        rest = &rest[at + 1..];
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret_param(k)
            {
                found.push(v.to_owned());
                found.push(percent_decode(v));
            }
        }
    }
    // And every secret option wherever it stands (see `redact_text`).
    let whole = url.split_once("://").map_or(url, |(_, r)| r);
    for r in secret_options(whole) {
        found.push(whole[r.clone()].to_owned());
        found.push(percent_decode(&whole[r]));
    }
    tidy(found)
}

/// Secret values without empty ones, sorted, each once.
fn tidy(mut found: Vec<String>) -> Vec<String> {
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

    /// Found by url_properties' secrets_never_show: an `@` in an option value reads as the end of
    /// a password, and the token after it used to be shown as part of the host.
    #[test]
    fn a_secret_option_after_an_at_is_masked_and_found() {
        let url = "memory://127.0.0.1:0?timeout=@&token=Qx0zQ";
        let shown = redact_url(url);
        assert!(!shown.contains("Qx0zQ"), "{shown}");
        assert!(secrets_in_url(url).contains(&"Qx0zQ".to_owned()));
        assert_eq!(
            mask_secret_options("h?a=1&password=p&token=t#f"),
            "h?a=1&password=***&token=***#f"
        );
    }

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
    fn urls_that_parse_are_redacted_from_their_parts() {
        // The url crate's spelling: scheme in lower case, IPv6 normalised, spaces encoded.
        assert_eq!(
            redact_url("ETCD://Bob:pw@[0:0::1]:2379/a b?token=x&ca=/c"),
            "etcd://Bob:***@[::1]:2379/a%20b?token=***&ca=/c"
        );
        // An `@` in an option value after a path is no password's end.
        assert_eq!(
            redact_url("redis://h:1/0?user=a@b&password=hunter22"),
            "redis://h:1/0?user=a@b&password=***"
        );
        let s = secrets_in_url("redis://h:1/0?user=a@b&password=p%20w+x");
        assert_eq!(s, ["p w+x", "p%20w+x"]);
        // Where an `@` may end a password holding `?`, the text is masked as the heuristics read it.
        assert_eq!(redact_url("redis://u:12?x@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(secrets_in_url("redis://u:12?x@h:1/0"), ["12?x"]);
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
