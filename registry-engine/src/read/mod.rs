//! The read side: discoveries follow the backend into the [`Directory`](crate::Directory), which
//! other sources feed too; snapshots, change streams, the journal feed and liveness probes.

pub(crate) mod change;
pub(crate) mod changes;
pub(crate) mod directory;
pub(crate) mod discovery;
pub(crate) mod endpoint;
pub(crate) mod feed;
pub(crate) mod journal;
pub(crate) mod merge;
pub(crate) mod probe;
pub(crate) mod slot;
pub(crate) mod snapshot;
pub(crate) mod source;
