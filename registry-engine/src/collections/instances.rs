//! The directory's collections of instances: persistent (structurally shared) so that a change to
//! a service of 100,000 instances copies a few tree nodes, not the service.
//!
//! Both are our own persistent B+tree with positions (see `tree.rs` for why), which shares
//! every untouched node between the old and the new version: a publication costs O(log n) per
//! changed instance, and comparing two versions visits only the nodes that differ. The wrappers
//! keep the tree out of the public API and keep the invariant that both are sorted by instance id.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Index;
use std::sync::Arc;

pub use crate::collections::tree::InstancesIter;
use crate::collections::tree::{Difference, Seq};
use crate::model::instance::Instance;

/// Online instances of a service, sorted by id, shared and immutable: what [`Directory::get`]
/// returns (one atomic load and a reference count, whatever the size).
///
/// Reads like a slice: [`len`](Self::len), [`iter`](Self::iter), indexing (`instances[i]`,
/// O(log n)), [`get`](Self::get), [`find`](Self::find) by id (O(log n)).
///
/// [`Directory::get`]: crate::Directory::get
#[derive(Clone, Default)]
pub struct Instances(Seq);

impl Instances {
    /// No instance.
    pub fn new() -> Self {
        Instances::default()
    }

    /// The number of instances.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no instance.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The instances in id order.
    pub fn iter(&self) -> InstancesIter<'_> {
        self.0.iter()
    }

    /// The `i`-th instance in id order (O(log n)).
    pub fn get(&self, i: usize) -> Option<&Arc<Instance>> {
        self.0.get(i)
    }

    /// The first instance in id order.
    pub fn first(&self) -> Option<&Arc<Instance>> {
        self.0.first()
    }

    /// The last instance in id order.
    pub fn last(&self) -> Option<&Arc<Instance>> {
        self.0.last()
    }

    /// The instance with this id, if present (O(log n)).
    pub fn find(&self, id: &str) -> Option<&Arc<Instance>> {
        self.0.find(id)
    }

    /// Whether an instance with this id is present.
    pub fn contains_id(&self, id: &str) -> bool {
        self.0.find(id).is_some()
    }

    /// The instances, copied into a `Vec` (O(n)).
    pub fn to_vec(&self) -> Vec<Arc<Instance>> {
        self.0.iter().cloned().collect()
    }

    /// Whether both are the same version (a cheap test of "nothing changed").
    pub fn ptr_eq(a: &Instances, b: &Instances) -> bool {
        a.0.ptr_eq(&b.0)
    }

    /// The online list of a service whose every listed instance is online and visible: the map
    /// itself, shared (O(1)).
    pub(crate) fn sharing(all: &InstanceMap) -> Instances {
        Instances(all.0.clone())
    }

    /// From instances sorted by id with distinct ids (the caller's guarantee), in O(n).
    pub(crate) fn from_sorted(items: Vec<Arc<Instance>>) -> Instances {
        Instances(Seq::from_sorted(items))
    }

    /// A new version with `id` set to `inst` (`None`: removed); shares what is unchanged.
    pub(crate) fn with_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a Arc<Instance>>)>,
    ) -> Instances {
        let mut next = self.0.clone();
        let mut changed = false;
        for (id, inst) in changes {
            changed |= next.set(id, inst);
        }
        if changed {
            Instances(next)
        } else {
            self.clone()
        }
    }
}

impl Index<usize> for Instances {
    type Output = Arc<Instance>;

    fn index(&self, i: usize) -> &Arc<Instance> {
        match self.0.get(i) {
            Some(inst) => inst,
            None => panic!(
                "index {i} out of range for Instances of length {}",
                self.len()
            ),
        }
    }
}

impl<'a> IntoIterator for &'a Instances {
    type Item = &'a Arc<Instance>;
    type IntoIter = InstancesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Sorted by id; of two with the same id, the last is kept.
impl FromIterator<Arc<Instance>> for Instances {
    fn from_iter<I: IntoIterator<Item = Arc<Instance>>>(iter: I) -> Self {
        let by_id: BTreeMap<String, Arc<Instance>> =
            iter.into_iter().map(|i| (i.id.clone(), i)).collect();
        Instances(Seq::from_sorted(by_id.into_values().collect()))
    }
}

impl From<Vec<Arc<Instance>>> for Instances {
    fn from(v: Vec<Arc<Instance>>) -> Self {
        v.into_iter().collect()
    }
}

impl PartialEq for Instances {
    fn eq(&self, other: &Self) -> bool {
        Instances::ptr_eq(self, other) || self.iter().eq(other.iter())
    }
}

impl Eq for Instances {}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Every listed instance of a service (online or not) by id: a persistent sorted map. Cloning is
/// O(1) and a changed clone shares every untouched node with the original. It is the same tree as
/// [`Instances`] (keyed by each instance's own id, no separate key), so that while every listed
/// instance is online the directory's online list *is* this map, and a change copies one path,
/// not two.
#[derive(Clone, Default)]
pub struct InstanceMap(Seq);

impl InstanceMap {
    /// An empty map.
    pub fn new() -> Self {
        InstanceMap::default()
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.0.find(id)
    }

    /// Whether an instance with this id is listed.
    pub fn contains_key(&self, id: &str) -> bool {
        self.0.find(id).is_some()
    }

    /// The number of instances.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no instance is listed.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// (id, instance) in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &Arc<Instance>)> + '_ {
        self.0.iter().map(|i| (i.id.as_str(), i))
    }

    /// The ids in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0.iter().map(|i| i.id.as_str())
    }

    /// The instances in id order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Instance>> + '_ {
        self.0.iter()
    }

    /// Lists `inst` under its id, replacing what was there (O(log n)); the replaced one.
    pub fn insert(&mut self, inst: Arc<Instance>) -> Option<Arc<Instance>> {
        self.0.replace(&inst.id, Some(&inst)).flatten()
    }

    /// Removes `id` (O(log n)); the removed instance.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Instance>> {
        self.0.replace(id, None).flatten()
    }

    /// Whether both are the same version (shared root).
    pub(crate) fn ptr_eq(&self, other: &InstanceMap) -> bool {
        self.0.ptr_eq(&other.0)
    }

    /// Whether `online` is this very tree (see [`Instances::sharing`]; tests).
    #[cfg(test)]
    pub(crate) fn is_shared_by(&self, online: &Instances) -> bool {
        self.0.ptr_eq(&online.0)
    }

    /// The ids whose entry differs between `self` (older) and `newer`, in order, with the old and
    /// new entry. Visits only the tree nodes the two versions do not share.
    pub(crate) fn diff<'a>(
        &'a self,
        newer: &'a InstanceMap,
    ) -> impl Iterator<Item = Difference<'a>> {
        self.0.diff(&newer.0).into_iter()
    }
}

/// Like a `BTreeMap`'s: panics if `id` is not listed.
impl Index<&str> for InstanceMap {
    type Output = Arc<Instance>;

    fn index(&self, id: &str) -> &Arc<Instance> {
        match self.0.find(id) {
            Some(inst) => inst,
            None => panic!("no instance {id:?} in the map"),
        }
    }
}

/// Of two with the same id, the last is kept.
impl FromIterator<Arc<Instance>> for InstanceMap {
    fn from_iter<I: IntoIterator<Item = Arc<Instance>>>(iter: I) -> Self {
        InstanceMap(iter.into_iter().collect::<Instances>().0)
    }
}

/// Entries whose key is not the instance's id are listed under the instance's id.
impl From<BTreeMap<String, Arc<Instance>>> for InstanceMap {
    fn from(m: BTreeMap<String, Arc<Instance>>) -> Self {
        m.into_values().collect()
    }
}

impl PartialEq for InstanceMap {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || self.0.iter().eq(other.0.iter())
    }
}

impl Eq for InstanceMap {}

impl fmt::Debug for InstanceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Arc<Instance> {
        Arc::new(Instance::new("svc", id).addr("10.0.0.1:80"))
    }

    #[test]
    fn instances_stay_sorted_through_changes() {
        let base: Instances = ["b", "d", "a"].into_iter().map(inst).collect();
        assert_eq!(
            base.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "d"]
        );
        let c = inst("c");
        let next = base.with_changes([("c", Some(&c)), ("a", None), ("zz", None)]);
        let ids: Vec<&str> = next.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        assert_eq!(base.len(), 3, "the old version is untouched");
        assert!(next.find("c").is_some() && next.find("a").is_none());
        assert_eq!(next[1].id, "c");
        let same = next.with_changes([("nope", None)]);
        assert!(Instances::ptr_eq(&same, &next));
    }

    #[test]
    fn map_diff_lists_only_what_changed() {
        let mut a: InstanceMap = (0..1000).map(|i| inst(&format!("m{i:04}"))).collect();
        let before = a.clone();
        a.remove("m0007");
        a.insert(inst("m0500").as_ref().clone().weight(50).into());
        a.insert(inst("n"));
        let d: Vec<(String, bool, bool)> = before
            .diff(&a)
            .map(|(id, o, n)| (id.to_owned(), o.is_some(), n.is_some()))
            .collect();
        assert_eq!(
            d,
            [
                ("m0007".into(), true, false),
                ("m0500".into(), true, true),
                ("n".into(), false, true)
            ]
        );
    }
}
