//! Who may ask: a Host allow-list (against DNS rebinding) and bearer-token authentication (for a
//! server that listens beyond loopback).
//!
//! **Host.** A web page on another origin can make a browser on this machine read the API through
//! DNS rebinding: its own name, re-pointed at 127.0.0.1, reaches the server with that name in
//! `Host`. Such an attack needs a name, so an IP literal always passes; a name must be on the
//! allow-list (`localhost` unless told otherwise; `*` turns the check off). A request without a
//! `Host` (HTTP/1.0) did not come from a browser and passes.
//!
//! **Token.** With a token set, every route but `/healthz` and `/readyz` asks for it, either as
//! `Authorization: Bearer TOKEN` (Prometheus' `authorization`, curl) or as the password of HTTP
//! Basic authentication with any user name (what a browser asks a person for, and then sends with
//! every request of the page, the dashboard's event stream included), or bare (what Prometheus
//! 2.42 sends when its `authorization` has no `type`). The comparison takes the
//! same time wherever the first difference is. The token is never logged or shown: [`Token`]'s
//! `Debug` says only that there is one.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::ApiError;

/// Routes answered without a token: a supervisor's or a load balancer's probes.
pub(crate) const OPEN_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// A bearer token. Never shown.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text; surrounding white space (a file's last newline) is not part of it.
    /// `None` if nothing is left.
    pub fn new(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty()).then(|| Token(t.into()))
    }

    /// The token's text, for another listener of the same process (the xDS server) to check;
    /// never to be printed or logged.
    pub fn expose(&self) -> Arc<str> {
        self.0.clone()
    }

    fn matches(&self, given: &[u8]) -> bool {
        bool::from(self.0.as_bytes().ct_eq(given))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The names a `Host` header may carry besides IP literals.
#[derive(Clone, Debug)]
pub(crate) struct Hosts {
    any: bool,
    names: Vec<String>,
}

impl Hosts {
    pub(crate) fn new(names: &[String]) -> Hosts {
        Hosts {
            any: names.iter().any(|n| n == "*"),
            names: names.iter().map(|n| normalize(n)).collect(),
        }
    }

    /// Whether a request with these headers may be answered.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        if self.any {
            return true;
        }
        let Some(host) = headers.get(header::HOST) else {
            return true;
        };
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = strip_port(host);
        if name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalize(name);
        self.names.contains(&name)
    }
}

/// A host name compared without case and without a final dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name:port` -> `name`, `[::1]:port` -> `[::1]`; a bare IPv6 literal stays whole.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// What the guard middleware checks.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    pub(crate) hosts: Hosts,
    pub(crate) token: Option<Token>,
}

impl Guard {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        // The bare token: what Prometheus 2.42's `http_sd_configs` sends for `authorization:
        // {credentials: ...}` when `type` is not given (seen with Debian's build).
        if token.matches(value.trim_ascii()) {
            return true;
        }
        let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => return false,
        };
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return token.matches(rest);
        }
        if scheme.eq_ignore_ascii_case(b"basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return false;
            };
            let password = match decoded.iter().position(|b| *b == b':') {
                Some(i) => &decoded[i + 1..],
                None => return false,
            };
            return token.matches(password);
        }
        false
    }
}

/// Refuses a request whose `Host` is not allowed (421) or that lacks the token (401).
pub(crate) async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if !guard.hosts.allows(req.headers()) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (see `registry serve --allow-host`)",
        )
        .into_response();
    }
    if !OPEN_ROUTES.contains(&req.uri().path()) && !guard.authorized(req.headers()) {
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "a valid token is required").into_response();
        let h = response.headers_mut();
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"registry serve\", charset=\"UTF-8\""),
        );
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"registry serve\""),
        );
        return response;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn ip_literals_and_listed_names_pass() {
        let hosts = Hosts::new(&["localhost".into(), "Registry.Example.".into()]);
        for ok in [
            "127.0.0.1:9797",
            "10.1.2.3",
            "[::1]:80",
            "[::1]",
            "::1",
            "localhost:9797",
            "LOCALHOST",
            "registry.example:443",
            "registry.example.",
        ] {
            assert!(hosts.allows(&host(ok)), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:9797",
            "localhost.attacker.example",
            "127.0.0.1.nip.example",
        ] {
            assert!(!hosts.allows(&host(bad)), "{bad}");
        }
        assert!(hosts.allows(&HeaderMap::new()), "no Host: not a browser");
        assert!(Hosts::new(&["*".into()]).allows(&host("anything.example")));
    }

    fn auth(value: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        m
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let guard = Guard {
            hosts: Hosts::new(&[]),
            token: Token::new("s3cret\n"),
        };
        assert!(guard.authorized(&auth("Bearer s3cret")));
        assert!(guard.authorized(&auth("bearer  s3cret ")));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        assert!(guard.authorized(&auth(&format!("Basic {basic}"))));
        assert!(!guard.authorized(&HeaderMap::new()));
        assert!(!guard.authorized(&auth("Bearer s3cre")));
        assert!(!guard.authorized(&auth("Bearer s3cret2")));
        assert!(
            guard.authorized(&auth("s3cret")),
            "bare, as Prometheus 2.42 sends it"
        );
        assert!(!guard.authorized(&auth("s3cre")));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:other");
        assert!(!guard.authorized(&auth(&format!("Basic {wrong}"))));
        assert!(!guard.authorized(&auth("Basic not-base64!")));
        let open = Guard {
            hosts: Hosts::new(&[]),
            token: None,
        };
        assert!(open.authorized(&HeaderMap::new()));
    }

    #[test]
    fn a_token_is_never_shown() {
        let t = Token::new("s3cret").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Token::new(" \n").is_none());
    }
}
