//! Maps etcd-client errors onto the core error kinds, keeping the original as the source.

use registry_core::{Error, ErrorKind};

/// Classifies an etcd-client error. `what` names the operation, for the message.
pub(crate) fn map(e: etcd_client::Error, what: &str) -> Error {
    use etcd_client::Error as E;
    // A failed TLS handshake (a reconnect to a member whose certificate changed) says so.
    if let Some(t) = crate::tls::failure(&e, "the roots this client trusts") {
        return t.context(format!("etcd {what}")).with_source(e);
    }
    let (kind, msg) = match &e {
        E::GRpcStatus(status) => {
            let m = status.message().to_owned();
            let lower = m.to_ascii_lowercase();
            let kind = if lower.contains("lease not found") {
                ErrorKind::LeaseNotFound
            } else if lower.contains("authentication failed")
                || lower.contains("permission denied")
                || lower.contains("invalid auth token")
                || lower.contains("user name is empty")
                || lower.contains("user name not found")
            {
                ErrorKind::PermissionDenied
            } else if lower.contains("compacted") {
                ErrorKind::Compacted
            } else if lower.contains("request is too large") || lower.contains("too large") {
                ErrorKind::InvalidInput
            } else if lower.contains("request timed out") {
                ErrorKind::Timeout
            } else if lower.contains("no leader") || lower.contains("leader changed") {
                ErrorKind::Unavailable
            } else {
                use tonic::Code;
                match status.code() {
                    Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown => {
                        ErrorKind::Unavailable
                    }
                    Code::DeadlineExceeded => ErrorKind::Timeout,
                    Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
                    Code::NotFound => ErrorKind::NotFound,
                    Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
                        ErrorKind::InvalidInput
                    }
                    Code::Unimplemented => ErrorKind::Unsupported,
                    _ => ErrorKind::Internal,
                }
            };
            (kind, m)
        }
        // The keep-alive stream reports an unknown lease as an error of its own.
        E::LeaseKeepAliveError(m) if m.to_ascii_lowercase().contains("lease not found") => {
            (ErrorKind::LeaseNotFound, e.to_string())
        }
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => {
            (ErrorKind::Unavailable, e.to_string())
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) | E::EndpointError(_) => {
            (ErrorKind::InvalidInput, e.to_string())
        }
        _ => (ErrorKind::Internal, e.to_string()),
    };
    // A compacted revision is reported without the oldest revision; callers re-list.
    let err = if kind == ErrorKind::Compacted {
        Error::compacted(0)
    } else {
        Error::new(kind, format!("etcd {what}: {msg}"))
    };
    err.with_source(e)
}
