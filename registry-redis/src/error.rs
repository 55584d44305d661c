//! Maps redis-crate errors onto the core error kinds, keeping the original as the source.

use redis::RedisError;
use registry_core::{Error, ErrorKind};

/// Classifies a Redis error. `what` names the operation, for the message.
pub(crate) fn map(e: RedisError, what: &str) -> Error {
    // A failed TLS handshake (a reconnect to a server whose certificate changed) says so.
    if let Some(t) = registry_core::tls::tls_failure(&e, "the roots this client trusts") {
        return t.context(format!("redis {what}")).with_source(e);
    }
    let code = e.code().unwrap_or("");
    let kind = match code {
        "LEASE_NOT_FOUND" => ErrorKind::LeaseNotFound,
        "NOPERM" | "WRONGPASS" | "NOAUTH" => ErrorKind::PermissionDenied,
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" => {
            ErrorKind::Unavailable
        }
        _ if e.kind() == redis::ErrorKind::AuthenticationFailed => ErrorKind::PermissionDenied,
        // Redis refuses long requests before AUTH with a protocol error.
        _ if e.to_string().contains("unauthenticated") => ErrorKind::PermissionDenied,
        _ if e.is_timeout() => ErrorKind::Timeout,
        _ if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
            ErrorKind::Unavailable
        }
        _ if e.kind() == redis::ErrorKind::InvalidClientConfig => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    };
    let detail = e
        .detail()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    Error::new(kind, format!("redis {what}: {detail}")).with_source(e)
}
