//! The TLS of an `etcds://` connection: its material (CA, client certificate and key), which roots
//! it trusts, and how a failed handshake is reported.
//!
//! Without a CA file the client trusts the **system's trust store**, loaded with
//! `rustls-native-certs` (on Linux the OpenSSL locations, such as Debian's
//! `/etc/ssl/certs/ca-certificates.crt`, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), so that a CA
//! an administrator installed is trusted as it is by every other program on the machine. When that
//! store is empty or missing - a minimal Debian root without the `ca-certificates` package - the
//! Mozilla roots compiled in (`webpki-roots`, the list Debian's package is made from) stand in, with
//! a warning, so that a server with a public certificate still works.
//!
//! The roots are loaded here rather than through tonic's `tls-native-roots` feature, which refuses
//! to build the channel when the store is empty, logs loading errors only at debug level, and adds
//! the system roots to an explicit CA file instead of trusting that file alone. With a CA file (or
//! PEM) only that CA is trusted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use registry_core::{Error, Result};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, TrustAnchor, pem::PemObject};

/// TLS material, as PEM files or PEM bytes.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    pub(crate) ca: Option<Pem>,
    pub(crate) cert: Option<Pem>,
    pub(crate) key: Option<Pem>,
    pub(crate) domain: Option<String>,
}

/// A certificate or key in PEM: a file to read when connecting, or the bytes.
#[derive(Clone)]
pub(crate) enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    pub(crate) fn read(&self, what: &str) -> Result<Vec<u8>> {
        match self {
            Pem::Bytes(b) => Ok(b.clone()),
            Pem::File(p) => std::fs::read(p).map_err(|e| {
                Error::invalid(format!("cannot read the {what} file {}", p.display()))
                    .with_source(e)
            }),
        }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "{}", p.display()),
            Pem::Bytes(b) => write!(f, "<{} PEM bytes>", b.len()),
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A CA file (or PEM) given by the caller.
    Ca(String),
    /// The system's trust store, with this many CAs.
    System(usize),
    /// The built-in Mozilla roots: the system's trust store had none.
    Builtin,
}

impl Roots {
    /// What the client trusts, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Roots::Ca(what) => what.clone(),
            Roots::System(n) => {
                format!("the system's trust store ({n} CAs; no CA file was given)")
            }
            Roots::Builtin => "the built-in Mozilla roots (no CA file was given, and the system's \
                               trust store has no CA)"
                .to_owned(),
        }
    }
}

/// The tonic TLS options for `tls`, and what they trust. `handshake_timeout` bounds the handshake,
/// so that a server that accepts the connection but never answers in TLS cannot hang the client.
pub(crate) fn options(tls: &Tls, handshake_timeout: Duration) -> Result<(TlsOptions, Roots)> {
    let mut t = TlsOptions::new().timeout(handshake_timeout);
    let roots = match &tls.ca {
        Some(ca) => {
            let pem = ca.read("CA certificate")?;
            let what = match ca {
                Pem::File(p) => format!("the CA file {}", p.display()),
                Pem::Bytes(_) => "the CA certificate given".to_owned(),
            };
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                cert.map_err(|e| Error::invalid(format!("{what} is not valid PEM: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(Error::invalid(format!(
                    "{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                )));
            }
            t = t.ca_certificate(Certificate::from_pem(pem));
            Roots::Ca(what)
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
            let (anchors, roots) = system_roots(native.certs, &errors);
            t = t.trust_anchors(anchors);
            roots
        }
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            t = t.identity(Identity::from_pem(
                cert.read("client certificate")?,
                key.read("client key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "a client certificate needs both the certificate and its key",
            ));
        }
    }
    if let Some(d) = &tls.domain {
        t = t.domain_name(d.clone());
    }
    Ok((t, roots))
}

/// The trust anchors for the certificates found in the system's store (and the errors met loading
/// it): those that parse, or the built-in roots when none does. Never fails: an unreadable or
/// missing store is logged, not fatal.
fn system_roots(
    certs: Vec<CertificateDer<'static>>,
    errors: &[String],
) -> (Vec<TrustAnchor<'static>>, Roots) {
    for e in errors {
        tracing::warn!(error = %e, "etcd TLS: error loading the system's trust store");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "etcd TLS: unparsable certificates in the system's trust store"
        );
    }
    if added > 0 {
        tracing::debug!(added, "etcd TLS: trusting the system's trust store");
        (store.roots, Roots::System(added))
    } else {
        tracing::warn!(
            "etcd TLS: the system's trust store has no CA (is the ca-certificates package \
             installed? SSL_CERT_FILE / SSL_CERT_DIR are honoured); trusting the built-in Mozilla \
             roots instead. Give the server's CA with ca=PATH for a private CA"
        );
        (webpki_roots::TLS_SERVER_ROOTS.to_vec(), Roots::Builtin)
    }
}

/// The TLS failure inside an etcd-client error, if it is one (etcd-client's errors expose no
/// source chain of their own: the gRPC status and the transport error do).
pub(crate) fn failure(e: &etcd_client::Error, trusted: &str) -> Option<Error> {
    match e {
        etcd_client::Error::GRpcStatus(s) => registry_core::tls::tls_failure(s, trusted),
        etcd_client::Error::TransportError(t) => registry_core::tls::tls_failure(t, trusted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ca() -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap()
    }

    #[test]
    fn without_a_ca_the_system_store_is_trusted() {
        let ca = test_ca().der().clone();
        let (anchors, roots) = system_roots(vec![ca.clone()], &[]);
        assert_eq!(roots, Roots::System(1));
        let mut expected = RootCertStore::empty();
        expected.add(ca).unwrap();
        assert_eq!(anchors, expected.roots);
        assert!(roots.describe().contains("system's trust store"));
    }

    #[test]
    fn an_empty_or_broken_system_store_falls_back_to_the_builtin_roots() {
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        for (certs, errors) in [
            (vec![], vec![]),
            (vec![garbage], vec!["cannot read /etc/ssl/certs".to_owned()]),
        ] {
            let (anchors, roots) = system_roots(certs, &errors);
            assert_eq!(roots, Roots::Builtin);
            assert_eq!(anchors.len(), webpki_roots::TLS_SERVER_ROOTS.len());
            assert!(!anchors.is_empty());
        }
    }

    #[test]
    fn etcds_without_a_ca_trusts_roots_and_a_ca_file_alone_is_trusted() {
        // Whatever this machine's store holds, the options trust some roots (before the fix they
        // trusted none: `TlsOptions::new()` starts empty).
        let (opts, roots) = options(&Tls::default(), Duration::from_secs(1)).unwrap();
        assert!(matches!(roots, Roots::System(n) if n > 0) || roots == Roots::Builtin);
        let debug = format!("{opts:?}");
        assert!(debug.contains("trust_anchors: [TrustAnchor"), "{debug}");

        // With a CA, that CA alone: no other anchors.
        let tls = Tls {
            ca: Some(Pem::Bytes(test_ca().pem().into_bytes())),
            ..Tls::default()
        };
        let (opts, roots) = options(&tls, Duration::from_secs(1)).unwrap();
        assert_eq!(roots, Roots::Ca("the CA certificate given".into()));
        let debug = format!("{opts:?}");
        assert!(debug.contains("trust_anchors: []"), "{debug}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let tls = Tls {
            ca: Some(Pem::Bytes(b"not a certificate".to_vec())),
            ..Tls::default()
        };
        let e = options(&tls, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), registry_core::ErrorKind::InvalidInput);
        assert!(e.message().contains("no PEM certificate"), "{e}");
    }
}
