//! TLS for `registry serve`: a certificate chain and its private key from PEM files, served with
//! rustls (the ring provider, as the backends' clients use).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the server's certificate chain and key are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The acceptor for `files`, or a message saying what is wrong with them (never the key's text).
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| read_error("certificate", &files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error("certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (expected PEM `CERTIFICATE` blocks)",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| read_error("private key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the key in {} does not fit the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_error(what: &str, path: &Path, e: &rustls::pki_types::pem::Error) -> String {
    // pem::Error names the problem (file missing, no such section, bad base64), never the text.
    format!("cannot read the {what} from {}: {e}", path.display())
}
