//! The one public error type of the workspace.
//!
//! Every backend and the engine report failures as [`Error`], whose [`ErrorKind`] tells the caller what
//! happened independently of the backend in use. Client-crate error types (gRPC, Redis, HTTP) never
//! appear in signatures: they are attached as the error's [`source`](std::error::Error::source).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::revision::Revision;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] reports.
///
/// New kinds may be added in minor releases; match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist (a key, a service, an instance).
    NotFound,
    /// The lease has expired, was revoked, or never existed on this backend.
    LeaseNotFound,
    /// The backend no longer holds history back to the requested revision; re-list and watch again
    /// from the listing's revision. [`Error::compacted_revision`] gives the oldest revision still
    /// available.
    Compacted,
    /// The backend could not be reached or refused service for now (connection refused, no leader,
    /// server shutting down). Retrying later may succeed.
    Unavailable,
    /// The operation did not complete within its deadline. Its effect is unknown.
    Timeout,
    /// Authentication failed or the credentials lack the permission for the operation.
    PermissionDenied,
    /// The caller passed something invalid: a malformed key or name, an oversized value, a TTL out of
    /// range, a malformed URL or option.
    InvalidInput,
    /// The backend or build cannot do this (for example a URL scheme whose cargo feature is off).
    Unsupported,
    /// No instance of the service is available to take a routed call.
    ServiceUnavailable,
    /// Data read from the backend could not be decoded (for example a value under our prefix written
    /// by someone else).
    Decode,
    /// The operation was abandoned because the component doing it was shut down.
    Closed,
    /// Another live owner holds what was asked for (an instance id registered under another
    /// process's live lease). See `RegisterOptions::takeover` in registry-engine.
    Conflict,
    /// Anything else: a bug, or a backend answer we do not understand.
    Internal,
}

impl ErrorKind {
    /// A short lower-case name for the kind, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::LeaseNotFound => "lease not found",
            ErrorKind::Compacted => "compacted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ServiceUnavailable => "service unavailable",
            ErrorKind::Decode => "decode error",
            ErrorKind::Closed => "closed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal error",
        }
    }

    /// Whether retrying cannot cure an error of this kind: the caller (its credentials, its
    /// request, what the backend supports) must change first
    /// ([`PermissionDenied`](ErrorKind::PermissionDenied), [`Unsupported`](ErrorKind::Unsupported)
    /// and [`InvalidInput`](ErrorKind::InvalidInput)). A discovery or a source that meets one
    /// at its first attempt reports it instead of retrying for ever.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::PermissionDenied | ErrorKind::Unsupported | ErrorKind::InvalidInput
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in the workspace.
///
/// Cheap to clone (the source is shared), so it can be stored in watchable state such as a
/// registration's "lost since, last error".
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    compacted: Option<Revision>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            compacted: None,
            source: None,
        }
    }

    /// A [`ErrorKind::Compacted`] error: history before `oldest_available` is gone.
    pub fn compacted(oldest_available: Revision) -> Self {
        Error {
            kind: ErrorKind::Compacted,
            message: Cow::Owned(format!(
                "history was compacted; the oldest revision still available is {oldest_available}"
            )),
            compacted: Some(oldest_available),
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for an [`ErrorKind::LeaseNotFound`] error.
    pub fn lease_not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::LeaseNotFound, message)
    }

    /// Attaches the underlying cause (for example the client crate's error).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches an already boxed cause.
    pub fn with_boxed_source(
        mut self,
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    ) -> Self {
        self.source = Some(Arc::from(source));
        self
    }

    /// Prefixes the message with context, keeping kind and source.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = Cow::Owned(format!("{context}: {}", self.message));
        self
    }

    /// This error with every secret `secrets` knows masked, in its message and in the text of each
    /// of its causes (which are replaced by plain-text copies, in the same order).
    ///
    /// For the edges of a program that show errors it did not write: a client crate may quote a URL
    /// or a credential in its own message.
    pub fn masked(mut self, secrets: &crate::redact::Secrets) -> Self {
        if secrets.is_empty() {
            return self;
        }
        self.message = Cow::Owned(secrets.mask(&self.message));
        if let Some(source) = self.source.take() {
            let mut texts = Vec::new();
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(e) = next {
                texts.push(secrets.mask(&e.to_string()));
                next = e.source();
            }
            let mut chain: Option<MaskedCause> = None;
            for text in texts.into_iter().rev() {
                chain = Some(MaskedCause {
                    text,
                    next: chain.map(Box::new),
                });
            }
            self.source = chain.map(|c| Arc::new(c) as Arc<dyn std::error::Error + Send + Sync>);
        }
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For [`ErrorKind::Compacted`], the oldest revision the backend can still serve.
    pub fn compacted_revision(&self) -> Option<Revision> {
        self.compacted
    }

    /// Whether retrying the same operation later may succeed without any other change
    /// ([`Unavailable`](ErrorKind::Unavailable), [`Timeout`](ErrorKind::Timeout) and
    /// [`ServiceUnavailable`](ErrorKind::ServiceUnavailable)).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::ServiceUnavailable
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(rev) = self.compacted {
            d.field("compacted", &rev);
        }
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// A cause whose text had secrets masked ([`Error::masked`]).
#[derive(Debug)]
struct MaskedCause {
    text: String,
    next: Option<Box<MaskedCause>>,
}

impl fmt::Display for MaskedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for MaskedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_hides_secrets_in_message_and_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client said: redis://:pa55word@h failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::other("inner pa55word");
        let e = Error::unavailable("connect with pa55word")
            .with_source(Outer(inner))
            .masked(&crate::redact::Secrets::from_url("redis://:pa55word@h"));
        let mut all = format!("{e} {e:?}");
        let mut next = std::error::Error::source(&e);
        let mut depth = 0;
        while let Some(c) = next {
            all.push_str(&c.to_string());
            depth += 1;
            next = c.source();
        }
        assert_eq!(depth, 2, "the chain keeps its length");
        assert!(!all.contains("pa55word"), "{all}");
        assert!(all.contains("inner ***"), "{all}");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn permanent_kinds() {
        assert!(ErrorKind::PermissionDenied.is_permanent());
        assert!(ErrorKind::InvalidInput.is_permanent());
        assert!(ErrorKind::Unsupported.is_permanent());
        for k in [
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Compacted,
        ] {
            assert!(!k.is_permanent(), "{k}");
        }
    }

    #[test]
    fn temporary_kinds() {
        assert!(Error::unavailable("x").is_temporary());
        assert!(Error::new(ErrorKind::Timeout, "x").is_temporary());
        assert!(!Error::lease_not_found("x").is_temporary());
        assert!(!Error::compacted(3).is_temporary());
        assert!(!Error::invalid("x").is_temporary());
    }

    #[test]
    fn compacted_carries_revision_and_display_has_kind() {
        let e = Error::compacted(42);
        assert_eq!(e.kind(), ErrorKind::Compacted);
        assert_eq!(e.compacted_revision(), Some(42));
        assert!(e.to_string().starts_with("compacted: "));
    }

    #[test]
    fn source_is_kept_and_clone_shares_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::unavailable("connect")
            .with_source(io)
            .context("etcd 127.0.0.1:2379");
        let c = e.clone();
        assert_eq!(c.message(), "etcd 127.0.0.1:2379: connect");
        assert!(std::error::Error::source(&c).is_some());
        assert!(c.to_string().contains("refused"));
    }
}
