//! Sources: what feeds a [`Directory`].
//!
//! A directory is fed by one or more sources. Each publishes, per service, the full set of
//! instances it knows of; the directory shows their union. The [`Discovery`](crate::Discovery)
//! of a [`Registry`](crate::Registry) is the source named [`BACKEND_SOURCE`](crate::BACKEND_SOURCE); others are added
//! with [`Directory::source`]: a static list ([`StaticSource`], from code or a file), or any
//! program that follows another registry (Consul's catalog, DNS) and publishes what it sees.
//!
//! **Collisions are explicit.** Every source has a precedence. When two sources list the same
//! instance id of a service, the one with the higher precedence is shown and the other is not
//! (counted in [`ServiceSnapshot::collisions`](crate::ServiceSnapshot::collisions), logged once
//! per id); the backend's precedence is [`BACKEND_PRECEDENCE`](crate::BACKEND_PRECEDENCE). Two sources may not share a name
//! or a precedence, so the winner never depends on timing.
//!
//! **Staleness is per source.** A view is stale when any source that contributes to it is (its
//! `stale_since` is the earliest): an unreachable Consul catalog never hides the instances the
//! backend still shows, and the other way round.
//!
//! This is how a service moves between registries without a flag day: during the move both the
//! old registry (a source) and ours (the backend) feed the same directory, clients route over
//! the union, and the old registrations are removed when every instance registers with us.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use registry_core::backend::Revision;
use registry_core::error::{Error, ErrorKind, Result};

use crate::collections::instances::InstanceMap;
use crate::model::instance::Instance;
use crate::read::directory::Directory;
use crate::read::merge::SourceKey;

impl Directory {
    /// A new source feeding this directory, named `name` (unique in the directory; [`BACKEND_SOURCE`](crate::BACKEND_SOURCE)
    /// is the registry's own), with `precedence` (unique too; higher wins an id collision; the
    /// backend's is [`BACKEND_PRECEDENCE`](crate::BACKEND_PRECEDENCE)). See [`SourceHandle`] and the module on sources.
    pub fn source(&self, name: &str, precedence: i32) -> Result<SourceHandle> {
        let key = self.claim_source(name, precedence)?;
        Ok(SourceHandle::new(self.clone(), key))
    }
}

/// A source's handle on a [`Directory`]: what it publishes there. From [`Directory::source`].
///
/// Dropping the handle leaves what it published in place (like dropping a
/// [`Discovery`](crate::Discovery)); [`withdraw_all`](Self::withdraw_all) removes it.
///
/// ```
/// use registry_engine::{Directory, Instance};
///
/// let dir = Directory::new();
/// let legacy = dir.source("legacy", 10).unwrap();
/// legacy.publish("web", [Instance::new("web", "old-1").addr("10.0.0.9:80")], 1);
/// assert_eq!(dir.get("web").len(), 1);
/// assert_eq!(dir.snapshot("web").source_of("old-1"), Some("legacy"));
/// ```
pub struct SourceHandle {
    dir: Directory,
    key: SourceKey,
}

impl fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceHandle")
            .field("name", &self.key.name)
            .field("precedence", &self.key.precedence())
            .finish()
    }
}

impl SourceHandle {
    pub(crate) fn new(dir: Directory, key: SourceKey) -> Self {
        SourceHandle { dir, key }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.key.name
    }

    /// The source's precedence.
    pub fn precedence(&self) -> i32 {
        self.key.precedence()
    }

    /// Replaces everything this source shows of `service` with `instances`, as of `revision` (a
    /// number of the source's own that only grows: an older one than last published is ignored;
    /// pass 0 if the source has none). Instances that are invalid or belong to another service
    /// are skipped, logged and counted: the number skipped is returned. Clears the source's
    /// staleness for the service.
    pub fn publish(
        &self,
        service: &str,
        instances: impl IntoIterator<Item = Instance>,
        revision: Revision,
    ) -> usize {
        let mut all = InstanceMap::new();
        let mut skipped = 0;
        for inst in instances {
            let why = if inst.service != service {
                Some(format!("belongs to service {}", inst.service))
            } else {
                inst.validate().err().map(|e| e.message().to_owned())
            };
            match why {
                Some(why) => {
                    skipped += 1;
                    tracing::warn!(source = %self.key.name, service, id = %inst.id, why, "source: skipping an invalid instance");
                }
                None => {
                    all.insert(Arc::new(inst));
                }
            }
        }
        self.dir
            .publish_from(&self.key, service, all, revision, revision == 0);
        skipped
    }

    /// Marks this source's view of `service` stale (the source cannot reach what it follows) or
    /// fresh; its instances stay as last published.
    pub fn set_stale(&self, service: &str, stale: bool) {
        self.dir.set_stale_from(&self.key, service, stale);
    }

    /// Removes everything this source published for `service`.
    pub fn withdraw(&self, service: &str) {
        self.dir.withdraw(&self.key, service);
    }

    /// Removes everything this source published, for every service.
    pub fn withdraw_all(&self) {
        for service in self.dir.services() {
            self.dir.withdraw(&self.key, &service);
        }
    }
}

/// A fixed list of instances, from code or a JSON file: a source for tests, for services that are
/// not registered anywhere (a database, a partner's API), and for migrations.
///
/// ```
/// use registry_engine::{Directory, Instance, StaticSource};
///
/// let dir = Directory::new();
/// let _static = StaticSource::new([
///     Instance::new("db", "primary").addr("10.0.0.5:5432"),
///     Instance::new("db", "replica").addr("10.0.0.6:5432"),
/// ])
/// .install(&dir, "static", -10)
/// .unwrap();
/// assert_eq!(dir.get("db").len(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticSource {
    instances: Vec<Instance>,
}

impl StaticSource {
    /// These instances.
    pub fn new(instances: impl IntoIterator<Item = Instance>) -> Self {
        StaticSource {
            instances: instances.into_iter().collect(),
        }
    }

    /// Instances from a JSON file: an array of instance documents as stored in the backends
    /// (`{"service":"db","id":"primary","addrs":["10.0.0.5:5432"],"meta":{...},...}`; `v` may be
    /// left out). An unreadable or malformed file is an error; invalid instances are skipped when
    /// installed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot read {}", path.display()),
            )
            .with_source(e)
        })?;
        let instances: Vec<Instance> = serde_json::from_slice(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{} is not a JSON array of instances", path.display()),
            )
            .with_source(e)
        })?;
        Ok(StaticSource { instances })
    }

    /// The instances.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Publishes the instances into `dir` as source `name` with `precedence`; the handle can
    /// withdraw them. Invalid instances are skipped and logged.
    pub fn install(&self, dir: &Directory, name: &str, precedence: i32) -> Result<SourceHandle> {
        let handle = dir.source(name, precedence)?;
        let mut by_service: BTreeMap<&str, Vec<Instance>> = BTreeMap::new();
        for inst in &self.instances {
            by_service
                .entry(inst.service.as_str())
                .or_default()
                .push(inst.clone());
        }
        for (service, instances) in by_service {
            if crate::model::names::validate_service(service).is_err() {
                tracing::warn!(
                    source = name,
                    service,
                    "static source: skipping an invalid service name"
                );
                continue;
            }
            handle.publish(service, instances, 0);
        }
        Ok(handle)
    }
}

#[cfg(test)]
mod tests;
