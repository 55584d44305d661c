//! Routing over the directory: selections of a service's instances and dispatch of calls by key.

pub(crate) mod dispatch;
pub(crate) mod select;
