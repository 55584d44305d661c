//! Sources: what feeds a [`Directory`].
//!
//! A directory is fed by one or more sources. Each publishes, per service, the full set of
//! instances it knows of; the directory shows their union. The [`Discovery`](crate::Discovery)
//! of a [`Registry`](crate::Registry) is the source named [`BACKEND_SOURCE`]; others are added
//! with [`Directory::source`]: a static list ([`StaticSource`], from code or a file), or any
//! program that follows another registry (Consul's catalog, DNS) and publishes what it sees.
//!
//! **Collisions are explicit.** Every source has a precedence. When two sources list the same
//! instance id of a service, the one with the higher precedence is shown and the other is not
//! (counted in [`ServiceSnapshot::collisions`](crate::ServiceSnapshot::collisions), logged once
//! per id); the backend's precedence is [`BACKEND_PRECEDENCE`]. Two sources may not share a name
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
use std::time::SystemTime;

use crate::collections::instances::InstanceMap;
use crate::model::instance::Instance;
use crate::read::directory::Directory;
use registry_core::backend::Revision;
use registry_core::error::{Error, ErrorKind, Result};

/// The name of the source a [`Discovery`](crate::Discovery) publishes under: the registry's own
/// backend.
pub const BACKEND_SOURCE: &str = "backend";

/// The backend's precedence: a source with a higher one wins an id collision with it.
pub const BACKEND_PRECEDENCE: i32 = 0;

/// Identifies a source in a directory: ordered by precedence, highest first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SourceKey {
    /// Reversed, so that iteration meets the highest precedence first.
    rank: std::cmp::Reverse<i32>,
    name: Arc<str>,
}

impl SourceKey {
    pub(crate) fn new(name: &str, precedence: i32) -> SourceKey {
        SourceKey {
            rank: std::cmp::Reverse(precedence),
            name: Arc::from(name),
        }
    }

    pub(crate) fn backend() -> SourceKey {
        SourceKey::new(BACKEND_SOURCE, BACKEND_PRECEDENCE)
    }

    fn precedence(&self) -> i32 {
        self.rank.0
    }
}

/// What one source last published for one service.
#[derive(Clone, Debug, Default)]
pub(crate) struct SourceView {
    /// Shared with the snapshot when this source is the only one: publishing does not copy it.
    pub(crate) all: InstanceMap,
    pub(crate) revision: Revision,
    pub(crate) stale_since: Option<SystemTime>,
    pub(crate) synced: bool,
}

/// Every source's view of one service (kept under the service's write lock).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sources {
    views: BTreeMap<SourceKey, SourceView>,
    /// Ids already logged as collisions (logged once each).
    logged: std::collections::BTreeSet<String>,
}

/// The union of the sources' views of a service.
pub(crate) struct Merged {
    pub(crate) all: InstanceMap,
    /// The source of each instance, when more than one source contributes (else `sole`).
    pub(crate) origin: Origin,
    pub(crate) revision: Revision,
    pub(crate) stale_since: Option<SystemTime>,
    pub(crate) synced: bool,
    pub(crate) collisions: usize,
}

/// Where a snapshot's instances come from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// All from one source (or none).
    Sole(Arc<str>),
    /// From several: the source of each id (persistent: a view's copy shares it).
    Many(imbl::OrdMap<String, Arc<str>>),
}

impl Origin {
    pub(crate) fn of(&self, id: &str) -> &str {
        match self {
            Origin::Sole(s) => s,
            Origin::Many(m) => m.get(id).map_or(BACKEND_SOURCE, |s| s),
        }
    }
}

impl Sources {
    /// Mutable access to `key`'s view (created empty and unsynced if new).
    pub(crate) fn view(&mut self, key: &SourceKey) -> &mut SourceView {
        self.views.entry(key.clone()).or_default()
    }

    pub(crate) fn remove(&mut self, key: &SourceKey) -> Option<SourceView> {
        self.views.remove(key)
    }

    /// The earliest moment a source of this view went stale, if one is.
    pub(crate) fn stale_since(&self) -> Option<SystemTime> {
        self.views.values().filter_map(|v| v.stale_since).min()
    }

    /// What the sources show now, given `prev` (what they showed before `source`'s view changed
    /// from `old` to its current one). When several sources contributed before and still do, only
    /// the ids `source` changed are merged again: O(changes × sources × log n), not O(n).
    pub(crate) fn merge_after(
        &mut self,
        service: &str,
        source: &SourceKey,
        old: &InstanceMap,
        prev: Merged,
    ) -> Merged {
        let contributing = self.views.values().filter(|v| !v.all.is_empty()).count();
        let Origin::Many(mut origin) = prev.origin else {
            return self.merge(service);
        };
        if contributing <= 1 {
            return self.merge(service);
        }
        let mut all = prev.all;
        let new = self
            .views
            .get(source)
            .map(|v| v.all.clone())
            .unwrap_or_default();
        for (id, _, _) in old.diff(&new) {
            let mut holders = self
                .views
                .iter()
                .filter_map(|(k, v)| v.all.get(id).map(|i| (k, i)));
            match holders.next() {
                None => {
                    all.remove(id);
                    origin.remove(id);
                }
                Some((winner, inst)) => {
                    all.insert(inst.clone());
                    origin.insert(id.to_owned(), winner.name.clone());
                    if let Some((other, _)) = holders.next() {
                        if self.logged.insert(id.to_owned()) {
                            tracing::warn!(service, id = %id, shown = %winner.name, hidden = %other.name, "two sources list the same instance id; the one with the higher precedence is shown");
                        }
                        continue;
                    }
                }
            }
            self.logged.remove(id);
        }
        let listed: usize = self.views.values().map(|v| v.all.len()).sum();
        // Every incremental merge of registry-core's unit tests is checked against a full one.
        #[cfg(test)]
        {
            let full = self.clone().merge(service);
            assert!(full.all == all, "{service}: merged instances");
            for id in all.keys() {
                assert_eq!(
                    full.origin.of(id),
                    Origin::Many(origin.clone()).of(id),
                    "{id}"
                );
            }
            assert_eq!(full.collisions, listed - all.len());
        }
        Merged {
            collisions: listed - all.len(),
            all,
            origin: Origin::Many(origin),
            revision: self
                .views
                .get(&SourceKey::backend())
                .map_or(0, |v| v.revision),
            stale_since: self.stale_since(),
            synced: self.views.values().any(|v| v.synced),
        }
    }

    /// The union, the highest precedence winning each id. One source (the usual case) is its own
    /// view, without a merge.
    pub(crate) fn merge(&mut self, service: &str) -> Merged {
        let stale_since = self.views.values().filter_map(|v| v.stale_since).min();
        let synced = self.views.values().any(|v| v.synced);
        let revision = self
            .views
            .get(&SourceKey::backend())
            .map_or(0, |v| v.revision);
        let contributing: Vec<(&SourceKey, &SourceView)> = self
            .views
            .iter()
            .filter(|(_, v)| !v.all.is_empty())
            .collect();
        if contributing.len() <= 1 {
            let (name, all) = match contributing.first() {
                Some((k, v)) => (k.name.clone(), v.all.clone()),
                None => (Arc::from(BACKEND_SOURCE), InstanceMap::new()),
            };
            return Merged {
                all,
                origin: Origin::Sole(name),
                revision,
                stale_since,
                synced,
                collisions: 0,
            };
        }
        let mut all = InstanceMap::new();
        let mut origin = imbl::OrdMap::new();
        let mut collided = std::collections::BTreeSet::new();
        for (key, view) in &contributing {
            for (id, inst) in view.all.iter() {
                if let Some(winner) = origin.get(id) {
                    collided.insert(id.to_owned());
                    if !self.logged.contains(id) {
                        tracing::warn!(service, id = %id, shown = %winner, hidden = %key.name, "two sources list the same instance id; the one with the higher precedence is shown");
                    }
                    continue;
                }
                all.insert(inst.clone());
                origin.insert(id.to_owned(), key.name.clone());
            }
        }
        // Counted once per hidden duplicate; an id that no longer collides may be logged again.
        let collisions = contributing.iter().map(|(_, v)| v.all.len()).sum::<usize>() - all.len();
        self.logged = collided;
        Merged {
            all,
            origin: Origin::Many(origin),
            revision,
            stale_since,
            synced,
            collisions,
        }
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
mod tests {
    use super::*;

    fn inst(service: &str, id: &str) -> Instance {
        Instance::new(service, id).addr("10.0.0.1:80")
    }

    #[test]
    fn invalid_and_foreign_instances_are_skipped_and_counted() {
        let dir = Directory::new();
        let s = dir.source("file", 5).unwrap();
        let skipped = s.publish(
            "web",
            [
                inst("web", "ok"),
                inst("api", "elsewhere"),
                Instance::new("web", "no-address"),
                inst("web", "bad id!"),
            ],
            0,
        );
        assert_eq!(skipped, 3);
        let snap = dir.snapshot("web");
        let ids: Vec<&str> = snap.all().keys().collect();
        assert_eq!(ids, ["ok"]);
    }

    #[test]
    fn an_older_revision_of_a_source_is_ignored() {
        let dir = Directory::new();
        let s = dir.source("dns", 5).unwrap();
        s.publish("web", [inst("web", "a")], 7);
        s.publish("web", [inst("web", "b")], 6);
        assert!(dir.snapshot("web").all().contains_key("a"));
        s.publish("web", [inst("web", "c")], 8);
        assert!(dir.snapshot("web").all().contains_key("c"));
    }

    #[test]
    fn staleness_is_per_source_and_keeps_every_instance() {
        let dir = Directory::new();
        let one = dir.source("one", 1).unwrap();
        let two = dir.source("two", 2).unwrap();
        one.publish("web", [inst("web", "a")], 0);
        two.publish("web", [inst("web", "b")], 0);
        one.set_stale("web", true);
        let first = dir.snapshot("web").stale_since().expect("stale");
        std::thread::sleep(std::time::Duration::from_millis(5));
        two.set_stale("web", true);
        let snap = dir.snapshot("web");
        assert_eq!(snap.stale_since(), Some(first), "the earliest");
        assert_eq!(snap.online().len(), 2);
        one.set_stale("web", false);
        assert!(dir.snapshot("web").is_stale(), "two is still stale");
        two.publish("web", [inst("web", "b")], 0);
        let snap = dir.snapshot("web");
        assert!(!snap.is_stale());
        assert_eq!(snap.online().len(), 2);
    }

    #[test]
    fn names_and_precedences_are_unique() {
        let dir = Directory::new();
        dir.source("a", 1).unwrap();
        assert!(dir.source("a", 2).is_err());
        assert!(dir.source("b", 1).is_err());
        assert!(dir.source("c", BACKEND_PRECEDENCE).is_err());
        assert!(dir.source(BACKEND_SOURCE, 3).is_err());
        assert!(dir.source("", 3).is_err());
        dir.source("b", 2).unwrap();
    }

    #[test]
    fn a_static_file_is_read_or_refused_with_its_name() {
        let path = std::env::temp_dir().join(format!("static-source-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"[{"service":"db","id":"primary","addrs":["10.0.0.5:5432"],"meta":{"role":"rw"}},
                {"service":"db","id":"replica","addrs":["10.0.0.6:5432"],"weight":50}]"#,
        )
        .unwrap();
        let s = StaticSource::from_file(&path).unwrap();
        let dir = Directory::new();
        s.install(&dir, "static", -1).unwrap();
        let snap = dir.snapshot("db");
        assert_eq!(snap.online().len(), 2);
        assert_eq!(snap.all()["primary"].metadata["role"], "rw");
        assert_eq!(snap.all()["replica"].weight, 50);
        std::fs::write(&path, "{not json").unwrap();
        let e = StaticSource::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("static-source-"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(StaticSource::from_file(&path).is_err());
    }

    /// Random publications and withdrawals by three sources listing overlapping ids: each
    /// incremental merge is checked against a full one (in `merge_after`) and each view's
    /// changes against a full diff (in the directory's `update`); here, the shown instance of
    /// each id must be the one of the highest precedence that lists it.
    #[test]
    fn incremental_merges_of_several_sources_equal_full_merges() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        // (source 0..3, ids to list as bits of a u64 over 40 ids, tag, withdraw)
        let steps =
            proptest::collection::vec((0usize..3, any::<u64>(), 0u8..3, any::<bool>()), 1..40);
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        runner
            .run(&steps, |steps| {
                let dir = Directory::new();
                let handles = [dir.source("a", 10).unwrap(), dir.source("b", -10).unwrap()];
                let mut listed: [BTreeMap<String, Instance>; 3] = Default::default();
                for (src, bits, tag, withdraw) in steps {
                    let view: BTreeMap<String, Instance> = if withdraw && src < 2 {
                        BTreeMap::new()
                    } else {
                        (0..40)
                            .filter(|b| bits >> b & 1 == 1)
                            .map(|b| {
                                let id = format!("i{b:02}");
                                let i = inst("web", &id).meta("tag", format!("{src}-{tag}"));
                                (id, i)
                            })
                            .collect()
                    };
                    match src {
                        2 => dir.publish(
                            "web",
                            view.values()
                                .cloned()
                                .map(Arc::new)
                                .collect::<InstanceMap>(),
                            1,
                            true,
                        ),
                        s if withdraw => handles[s].withdraw("web"),
                        s => {
                            handles[s].publish("web", view.values().cloned(), 0);
                        }
                    }
                    listed[src] = view;
                    let snap = dir.snapshot("web");
                    // Precedence: a (10) > backend (0) > b (-10).
                    for id in (0..40).map(|b| format!("i{b:02}")) {
                        let want = [0, 2, 1].into_iter().find_map(|s| listed[s].get(&id));
                        prop_assert_eq!(snap.all().get(&id).map(|i| &**i), want, "{}", id);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
