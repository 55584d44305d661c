//! Revisions: the logical clock of a backend's namespace.

/// A backend revision: a logical clock over every change in the backend's namespace.
///
/// Revisions strictly increase with every change (put, delete, revoke, expiry). They are comparable
/// only within one backend namespace. Revision 0 is before any change.
pub type Revision = u64;
