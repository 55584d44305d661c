use super::*;

/// An error that wraps another, like a client crate's transport error.
#[derive(Debug)]
struct Wrapper(Box<dyn StdError + Send + Sync>);
impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("transport error")
    }
}
impl StdError for Wrapper {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

fn buried(e: rustls::Error) -> Wrapper {
    Wrapper(Box::new(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        e,
    )))
}

#[test]
fn finds_the_rustls_error_inside_io_errors() {
    let e = buried(rustls::Error::InvalidCertificate(
        CertificateError::UnknownIssuer,
    ));
    let t = tls_failure(&e, "the CA file /x/ca.pem").unwrap();
    assert_eq!(t.kind(), ErrorKind::Unavailable);
    assert!(t.message().starts_with("TLS: "), "{t}");
    assert!(t.message().contains("UnknownIssuer"), "{t}");
    assert!(t.message().contains("/x/ca.pem"), "{t}");
    assert!(t.message().contains("ca=PATH"), "{t}");
    // Behind an Arc, as the redis crate keeps I/O errors.
    let shared: Arc<dyn StdError + Send + Sync> = Arc::new(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    ));
    let t = tls_failure(&shared, "x").unwrap();
    assert!(t.message().contains("UnknownIssuer"), "{t}");
    let plain = std::io::Error::other("connection refused");
    assert!(tls_failure(&plain, "x").is_none());
    assert!(tls_failure(&Wrapper(Box::new(plain)), "x").is_none());
}

#[test]
fn an_alert_known_only_by_its_text_is_found() {
    // What h2 leaves of an alert received after the handshake.
    let e = Wrapper(Box::new(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "received fatal alert: CertificateRequired",
    )));
    let t = tls_failure(&e, "x").unwrap();
    assert_eq!(t.kind(), ErrorKind::PermissionDenied, "{t}");
    assert!(t.message().contains("client certificate"), "{t}");
    let e = std::io::Error::other("received fatal alert: SomethingNew");
    assert!(tls_failure(&e, "x").is_none());
}

#[test]
fn names_what_to_check() {
    let cases = [
        (
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            ErrorKind::Unavailable,
            "not valid for the name",
        ),
        (
            rustls::Error::InvalidCertificate(CertificateError::Expired),
            ErrorKind::Unavailable,
            "validity period",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            ErrorKind::PermissionDenied,
            "client certificate",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
            ErrorKind::Unavailable,
            "ended the handshake",
        ),
        (
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            ErrorKind::Unavailable,
            "plain-text port",
        ),
    ];
    for (e, kind, words) in cases {
        let t = tls_failure(&buried(e), "x").unwrap();
        assert_eq!(t.kind(), kind, "{t}");
        assert!(t.message().starts_with("TLS: "), "{t}");
        assert!(t.message().contains(words), "{t}");
    }
}
