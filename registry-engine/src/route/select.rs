//! Selectors: which of a service's instances a caller wants, by metadata, version and zone.
//! See [`Selector`].

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures::Stream;

use crate::collections::instances::Instances;
use crate::collections::ring::{Ring, RingKind};
use crate::model::instance::Instance;
use crate::read::change::Change;
use crate::read::changes::ChangeQueue;
use crate::read::directory::Directory;
use crate::read::endpoint::addressed;
use crate::read::snapshot::ServiceSnapshot;
use registry_core::error::{Error, Result};

/// The metadata key that names an instance's zone (Spring Cloud's and Kratos' convention).
pub const ZONE_KEY: &str = "zone";

type Predicate = Arc<dyn Fn(&Instance) -> bool + Send + Sync>;

#[derive(Clone)]
struct Filter {
    what: String,
    test: Predicate,
}

/// Which instances of a service to use, by metadata, version and zone: strict filters plus an
/// optional zone preference. Built with chained calls; cheap to clone.
///
/// These are the selectors users of Spring Cloud (metadata match, zone preference) and Kratos
/// (version, metadata, custom filters) reach for first. A [`Selector`] is a list of strict
/// filters (an instance must pass all of them) and an optional zone *preference* (instances of
/// that zone if the filters leave any there, otherwise all that pass the filters). Applied to a
/// directory's service with [`Selector::on`], it gives a [`Selection`] with the directory's read
/// calls: [`get`](Selection::get), [`find`](Selection::find), [`find_n`](Selection::find_n) and
/// [`changes`](Selection::changes).
///
/// Routing through a selection stays consistent: [`Selection::find`] answers on the ring of the
/// selected instances, with the directory's virtual nodes, so a selector every instance passes
/// gives exactly [`Directory::find`]'s owners, and a key moves only when its owner leaves the
/// selection. The selected list and its ring are computed once per membership view, not per
/// call.
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Arc;
/// use registry_engine::{Directory, Instance, Selector};
///
/// let dir = Directory::new();
/// let src = dir.source("static", 10).unwrap();
/// src.publish("api", [
///     Instance::new("api", "a1").addr("10.0.0.1:80").version("1.4.2").meta("zone", "eu-1"),
///     Instance::new("api", "a2").addr("10.0.0.2:80").version("1.5.0").meta("zone", "eu-2"),
///     Instance::new("api", "a3").addr("10.0.0.3:80").version("2.0.0").meta("zone", "eu-1"),
/// ], 0);
///
/// // Version 1.x, preferring zone eu-2, falling back to any zone when eu-2 has none.
/// let v1 = Selector::new().version_prefix("1").prefer_zone("eu-2").on(&dir, "api");
/// let ids: Vec<_> = v1.get().iter().map(|i| i.id.clone()).collect();
/// assert_eq!(ids, ["a2"]);
/// assert_eq!(v1.find("user-42").unwrap().id, "a2");
///
/// // Exactly zone eu-1.
/// let eu1 = Selector::new().zone("eu-1").on(&dir, "api");
/// assert_eq!(eu1.get().len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct Selector {
    filters: Vec<Filter>,
    prefer_zone: Option<String>,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field(
                "filters",
                &self.filters.iter().map(|f| &f.what).collect::<Vec<_>>(),
            )
            .field("prefer_zone", &self.prefer_zone)
            .finish()
    }
}

impl Selector {
    /// A selector that selects every instance.
    pub fn new() -> Self {
        Selector::default()
    }

    fn with(
        mut self,
        what: String,
        test: impl Fn(&Instance) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filters.push(Filter {
            what,
            test: Arc::new(test),
        });
        self
    }

    /// Only instances whose metadata has `key` set to `value`.
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let canary = Selector::new().meta("track", "canary");
    /// assert!(canary.matches(&Instance::new("api", "a1").meta("track", "canary")));
    /// assert!(!canary.matches(&Instance::new("api", "a2")));
    /// ```
    pub fn meta(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.with(format!("meta {key}={value}"), move |i| {
            i.metadata.get(&key) == Some(&value)
        })
    }

    /// Only instances whose metadata has `key`, whatever its value.
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().has_meta("gpu");
    /// assert!(s.matches(&Instance::new("ml", "m1").meta("gpu", "a100")));
    /// assert!(!s.matches(&Instance::new("ml", "m2")));
    /// ```
    pub fn has_meta(self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.with(format!("meta {key}"), move |i| {
            i.metadata.contains_key(&key)
        })
    }

    /// Only instances whose [`version`](Instance::version) is exactly `version` (Kratos'
    /// version selector).
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().version("1.4.2");
    /// assert!(s.matches(&Instance::new("api", "a1").version("1.4.2")));
    /// assert!(!s.matches(&Instance::new("api", "a2").version("1.4.20")));
    /// assert!(!s.matches(&Instance::new("api", "a3")));
    /// ```
    pub fn version(self, version: impl Into<String>) -> Self {
        let version = version.into();
        self.with(format!("version {version}"), move |i| {
            i.version.as_deref() == Some(version.as_str())
        })
    }

    /// Only instances whose version is `prefix` or starts with `prefix` followed by `.`, `-` or
    /// `+`: `"1.4"` selects `1.4`, `1.4.2` and `1.4.0-rc1`, not `1.40.0`.
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().version_prefix("1.4");
    /// assert!(s.matches(&Instance::new("api", "a1").version("1.4.2")));
    /// assert!(s.matches(&Instance::new("api", "a2").version("1.4")));
    /// assert!(!s.matches(&Instance::new("api", "a3").version("1.40.0")));
    /// ```
    pub fn version_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.with(format!("version {prefix}.*"), move |i| {
            i.version.as_deref().is_some_and(|v| {
                v.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
            })
        })
    }

    /// Only instances whose version is a semantic version matching `req` (Cargo's syntax:
    /// `">=1.2, <2"`, `"^1.4"`, `"~1.4.2"`); instances without a version or with one that is
    /// not a semantic version are not selected. Fails if `req` does not parse.
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().version_req(">=1.4, <2").unwrap();
    /// assert!(s.matches(&Instance::new("api", "a1").version("1.5.0")));
    /// assert!(!s.matches(&Instance::new("api", "a2").version("2.0.0")));
    /// assert!(!s.matches(&Instance::new("api", "a3").version("latest")));
    /// assert!(Selector::new().version_req("not a range").is_err());
    /// ```
    pub fn version_req(self, req: &str) -> Result<Self> {
        let parsed = semver::VersionReq::parse(req)
            .map_err(|e| Error::invalid(format!("version requirement {req:?}: {e}")))?;
        Ok(self.with(format!("version {req}"), move |i| {
            i.version
                .as_deref()
                .and_then(|v| semver::Version::parse(v).ok())
                .is_some_and(|v| parsed.matches(&v))
        }))
    }

    /// Only instances of zone `zone` (metadata [`ZONE_KEY`]). To fall back to other zones when
    /// this one has none, use [`prefer_zone`](Self::prefer_zone) instead.
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().zone("eu-1");
    /// assert!(s.matches(&Instance::new("api", "a1").meta("zone", "eu-1")));
    /// assert!(!s.matches(&Instance::new("api", "a2").meta("zone", "us-1")));
    /// ```
    pub fn zone(self, zone: impl Into<String>) -> Self {
        self.meta(ZONE_KEY, zone)
    }

    /// Prefers instances of zone `zone` (metadata [`ZONE_KEY`]): when at least one instance that
    /// passes the filters is in that zone, only those are selected; when none is, all that pass
    /// are (Spring Cloud LoadBalancer's zone preference). A later call replaces the zone.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use registry_engine::{Instance, Selector};
    ///
    /// let s = Selector::new().prefer_zone("eu-1");
    /// let a = Arc::new(Instance::new("api", "a").meta("zone", "eu-1"));
    /// let b = Arc::new(Instance::new("api", "b").meta("zone", "us-1"));
    /// assert_eq!(s.apply(&[a.clone(), b.clone()]), vec![a]);
    /// // Nobody in eu-1: fall back to every zone.
    /// assert_eq!(s.apply(&[b.clone()]), vec![b]);
    /// ```
    pub fn prefer_zone(mut self, zone: impl Into<String>) -> Self {
        self.prefer_zone = Some(zone.into());
        self
    }

    /// Only instances for which `test` is true (a custom selector; `what` names it in `Debug`).
    ///
    /// ```
    /// use registry_engine::{Instance, Selector};
    ///
    /// let heavy = Selector::new().filter("weight >= 200", |i: &Instance| i.weight >= 200);
    /// assert!(heavy.matches(&Instance::new("api", "a1").weight(300)));
    /// assert!(!heavy.matches(&Instance::new("api", "a2")));
    /// ```
    pub fn filter(
        self,
        what: impl Into<String>,
        test: impl Fn(&Instance) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.with(what.into(), test)
    }

    /// Whether `instance` passes every filter (the zone preference is not a filter: it depends
    /// on the other instances; see [`apply`](Self::apply)).
    pub fn matches(&self, instance: &Instance) -> bool {
        self.filters.iter().all(|f| (f.test)(instance))
    }

    /// The instances of `instances` this selector selects, in their order: those that pass the
    /// filters, narrowed to the preferred zone if any of them is in it.
    pub fn apply<'a>(
        &self,
        instances: impl IntoIterator<Item = &'a Arc<Instance>>,
    ) -> Vec<Arc<Instance>> {
        let passed: Vec<Arc<Instance>> = instances
            .into_iter()
            .filter(|i| self.matches(i))
            .cloned()
            .collect();
        let Some(zone) = &self.prefer_zone else {
            return passed;
        };
        let in_zone = |i: &Arc<Instance>| i.metadata.get(ZONE_KEY) == Some(zone);
        if passed.iter().any(in_zone) {
            passed.into_iter().filter(in_zone).collect()
        } else {
            passed
        }
    }

    /// This selector applied to `service`'s online instances in `directory`.
    pub fn on(&self, directory: &Directory, service: impl Into<String>) -> Selection {
        Selection {
            inner: Arc::new(SelectionInner {
                directory: directory.clone(),
                service: service.into(),
                selector: self.clone(),
                cache: Mutex::new(None),
            }),
        }
    }
}

/// What a selector selected from one membership view, with its ring built on first use.
struct Selected {
    /// The view's online instances (held so that the pointer it is keyed by stays unique).
    from: Instances,
    members: Instances,
    ring: OnceLock<Ring>,
}

struct SelectionInner {
    directory: Directory,
    service: String,
    selector: Selector,
    cache: Mutex<Option<Arc<Selected>>>,
}

/// A [`Selector`] applied to one service of a [`Directory`]: the directory's read calls over the
/// selected instances. Cheap to clone; clones share the cache. From [`Selector::on`].
#[derive(Clone)]
pub struct Selection {
    inner: Arc<SelectionInner>,
}

impl fmt::Debug for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selection")
            .field("service", &self.inner.service)
            .field("selector", &self.inner.selector)
            .finish()
    }
}

impl Selection {
    /// The service selected from.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The directory selected from.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.inner.selector
    }

    fn selected_from(&self, snap: &ServiceSnapshot) -> Arc<Selected> {
        let online = snap.online();
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sel) = cache
            .as_ref()
            .filter(|s| Instances::ptr_eq(&s.from, online))
        {
            return sel.clone();
        }
        let sel = Arc::new(Selected {
            from: online.clone(),
            members: Instances::from(self.inner.selector.apply(online)),
            ring: OnceLock::new(),
        });
        *cache = Some(sel.clone());
        sel
    }

    fn current(&self) -> Arc<Selected> {
        self.selected_from(&self.inner.directory.snapshot(&self.inner.service))
    }

    /// The selected online instances, sorted by id (the selector's [`apply`](Selector::apply)
    /// over [`Directory::get`]).
    pub fn get(&self) -> Instances {
        self.current().members.clone()
    }

    /// The ring of the selected instances, of the directory's kind and virtual nodes (a gRPC ring
    /// over those with an IP address, the first by id keeping an address two of them share).
    pub fn ring(&self) -> impl std::ops::Deref<Target = Ring> + use<> {
        struct RingRef(Arc<Selected>);
        impl std::ops::Deref for RingRef {
            type Target = Ring;
            fn deref(&self) -> &Ring {
                self.0
                    .ring
                    .get()
                    .expect("built before the reference is made")
            }
        }
        let sel = self.current();
        let dir = &self.inner.directory;
        sel.ring.get_or_init(|| match dir.ring_kind() {
            RingKind::MultiProbe => Ring::with_vnodes(sel.members.iter().cloned(), dir.vnodes()),
            RingKind::GrpcRingHash => Ring::grpc(addressed(sel.members.iter().cloned())),
        });
        RingRef(sel)
    }

    /// The owner of `key` among the selected instances.
    pub fn find(&self, key: impl AsRef<[u8]>) -> Option<Arc<Instance>> {
        self.ring().find(key.as_ref()).cloned()
    }

    /// Up to `count` distinct selected instances, walking their ring from `key`.
    pub fn find_n(&self, count: usize, key: impl AsRef<[u8]>) -> Vec<Arc<Instance>> {
        self.ring()
            .find_n(count, key.as_ref())
            .into_iter()
            .cloned()
            .collect()
    }

    /// A stream of [`Change`]s to the selected instances, like [`Directory::changes`]: first an
    /// `Insert` for every selected instance, then one event per difference. An instance that
    /// stops passing the selector (its metadata or version changed) is removed; with a zone
    /// preference, the instances of other zones are inserted when the last one of the preferred
    /// zone leaves.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use registry_engine::{Change, Directory, Instance, Selector};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let dir = Directory::new();
    /// let src = dir.source("static", 10).unwrap();
    /// let canary = Instance::new("api", "a1").addr("10.0.0.1:80").meta("track", "canary");
    /// src.publish("api", [canary], 0);
    /// let mut canaries = Selector::new().meta("track", "canary").on(&dir, "api").changes();
    /// assert!(matches!(canaries.next().await, Some(Change::Insert(id, _)) if id == "a1"));
    /// // a1 leaves the canary track: it leaves the selection.
    /// src.publish("api", [Instance::new("api", "a1").addr("10.0.0.1:80")], 0);
    /// assert!(matches!(canaries.next().await, Some(Change::Remove(id)) if id == "a1"));
    /// # }
    /// ```
    pub fn changes(&self) -> SelectedChanges {
        SelectedChanges {
            selection: self.clone(),
            queue: ChangeQueue::new(self.inner.directory.subscribe(&self.inner.service)),
        }
    }
}

/// The stream returned by [`Selection::changes`].
pub struct SelectedChanges {
    selection: Selection,
    queue: ChangeQueue,
}

impl fmt::Debug for SelectedChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectedChanges")
            .field("selection", &self.selection)
            .field("held", &self.queue.held.len())
            .field("pending", &self.queue.pending.len())
            .finish()
    }
}

impl Stream for SelectedChanges {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        let this = self.get_mut();
        let selection = &this.selection;
        this.queue
            .poll_next(cx, |snap| selection.selected_from(snap).members.clone())
    }
}

#[cfg(test)]
mod tests;
