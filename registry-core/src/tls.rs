//! Says why a TLS handshake failed, in words that name TLS and what to check (feature `rustls`).
//!
//! Every backend's client crate verifies servers with rustls 0.23 (etcd through tonic, Redis through
//! the redis crate, Consul through hyper-rustls), and each buries the rustls error a few sources
//! deep, behind a message such as "transport error" or "cannot reach the agent". [`tls_failure`]
//! digs it out so that a certificate problem is reported as one, not as an unreachable server.

use std::error::Error as StdError;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};

use crate::{Error, ErrorKind};

/// The TLS failure somewhere in `err`'s source chain, as an error whose message starts with `TLS:`,
/// says what went wrong and what to check. `trusted` names what the client trusts, for the message
/// (`"the CA file /etc/ca.pem"`, `"the system's trust store (no CA file given)"`).
///
/// The kind is [`PermissionDenied`](ErrorKind::PermissionDenied) when the server refused this
/// client's certificate, otherwise [`Unavailable`](ErrorKind::Unavailable) (as gRPC reports a
/// failed handshake: another member of a cluster may still have a good certificate). `None` when
/// the chain holds no rustls error. The caller attaches the original error as the source.
pub fn tls_failure(err: &(dyn StdError + 'static), trusted: &str) -> Option<Error> {
    let e = find_rustls(err, 0)
        .cloned()
        .or_else(|| alert_in_text(err))?;
    let e = &e;
    let (kind, text) = match *e {
        rustls::Error::InvalidCertificate(ref c) => {
            (ErrorKind::Unavailable, certificate(c, e, trusted))
        }
        rustls::Error::AlertReceived(a) if refuses_client_certificate(a) => (
            ErrorKind::PermissionDenied,
            format!(
                "the server refused this client's certificate ({e}); check the client certificate \
                 and key (cert=, key=) and that the server trusts the CA that issued them"
            ),
        ),
        rustls::Error::AlertReceived(_) => (
            ErrorKind::Unavailable,
            format!(
                "the server ended the handshake ({e}); check that it accepts this client's TLS \
                 versions and cipher suites, and whether it requires a client certificate"
            ),
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            ErrorKind::Unavailable,
            format!(
                "the server did not answer in TLS ({e}); is this a plain-text port? Use the \
                 scheme without TLS, or the server's TLS port"
            ),
        ),
        _ => (
            ErrorKind::Unavailable,
            format!("the handshake with the server failed ({e})"),
        ),
    };
    Some(Error::new(kind, format!("TLS: {text}")))
}

fn certificate(c: &CertificateError, e: &rustls::Error, trusted: &str) -> String {
    match c {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the server's certificate is not trusted ({e}): it was not issued by a CA in \
             {trusted}; give the CA that issued the server's certificate as the CA file (ca=PATH)"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate is not valid for the name connected to ({e}); connect \
                 by a host name or address the certificate carries"
            )
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => format!(
            "the server's certificate is outside its validity period ({e}); renew it, or check \
             the clocks"
        ),
        _ => format!("the server's certificate was rejected ({e})"),
    }
}

/// Alerts a server sends when it does not accept the client's certificate (or has none).
fn refuses_client_certificate(a: AlertDescription) -> bool {
    matches!(
        a,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
    )
}

/// Alerts whose names a message may carry, with what they mean for this client.
const ALERTS: &[AlertDescription] = &[
    AlertDescription::CertificateRequired,
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::HandshakeFailure,
    AlertDescription::ProtocolVersion,
    AlertDescription::InsufficientSecurity,
    AlertDescription::IllegalParameter,
    AlertDescription::DecryptError,
    AlertDescription::InternalError,
    AlertDescription::NoApplicationProtocol,
];

/// An alert the server sent after the handshake, known only by its text: in TLS 1.3 a server checks
/// the client's certificate after the client considers the handshake done, so its refusal arrives
/// on the first read, and HTTP/2 (h2) keeps only the text of such I/O errors.
fn alert_in_text(err: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    const MARK: &str = "received fatal alert: ";
    let mut cur = Some(err);
    for _ in 0..32 {
        let e = cur?;
        let text = e.to_string();
        if let Some(at) = text.find(MARK) {
            let name: String = text[at + MARK.len()..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return ALERTS
                .iter()
                .find(|a| format!("{a:?}") == name)
                .map(|a| rustls::Error::AlertReceived(*a));
        }
        cur = e.source();
    }
    None
}

/// The first rustls error in the chain. `std::io::Error::source` skips the error it wraps, and
/// rustls errors travel inside `io::Error`s, so those are opened with `get_ref`; likewise errors
/// shared behind an `Arc`.
fn find_rustls<'a>(err: &'a (dyn StdError + 'static), depth: usize) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    let mut depth = depth;
    while let Some(e) = cur {
        if depth > 32 {
            return None;
        }
        depth += 1;
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(r) = find_rustls(inner, depth)
        {
            return Some(r);
        }
        // A shared error (the redis crate keeps its I/O errors so) is itself the next link: its
        // `source` is the wrapped error's source, which skips the wrapped error.
        if let Some(inner) = e.downcast_ref::<Arc<dyn StdError + Send + Sync>>()
            && let Some(r) = find_rustls(&**inner, depth)
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
