//! A persistent B+tree of instances sorted by id, with positions: the tree behind
//! [`Instances`](crate::Instances) and [`InstanceMap`](crate::InstanceMap).
//!
//! Written here because no maintained crate has all of what the directory's online list needs at
//! once: structural sharing (a changed version shares every untouched node with the old one),
//! insertion and removal *in the middle* by key in O(log n), and the `i`-th element in O(log n).
//! `imbl`'s RRB vector has sharing and positions, but it inserts in the middle by splitting the
//! vector and concatenating it again: measured at 58 µs per change at 1,000 instances and 310 µs at
//! 100,000 (this tree: about the cost of `imbl`'s B-tree map, a few µs). Its ordered map and `rpds`'
//! maps have no positions.
//!
//! A B+tree of chunks: leaves hold up to [`MAX`] instances, branches up to [`MAX`] children with
//! each child's count and the [`Keys`] of its first id (to descend by position and by id). Every
//! leaf is at the same depth. A node's entries are arrays in the node itself, so copying a node is
//! one allocation. A change copies the nodes on its path (`Arc::make_mut`: a node held by no other
//! version is changed in place), splits a node that grew past [`MAX`] in two, and merges one that
//! fell under [`MIN`] with a neighbour (splitting the result again if it is too big).
//!
//! A descent by id reads each node's [`Keys`], not the instances: comparing an id with an entry's
//! id follows two pointers (the entry's `Arc`, then the id's bytes), and at 100,000 instances the
//! twenty or so comparisons of a descent were as many cache misses in a row (3 µs a lookup with one
//! directory, 9 µs with fifty). A node keeps a prefix that all its ids share and, for each id, the
//! eight bytes after it: a descent compares those in the node's own memory and reads an id only
//! where the eight bytes are equal (the match itself, in a leaf; in a branch, a tie is read down the
//! child's leftmost path).

use std::sync::Arc;

use arrayvec::ArrayVec;

use crate::model::instance::Instance;

/// The most entries (instances in a leaf, children in a branch) in a node.
const MAX: usize = 16;
/// A node with fewer entries (not the root) is merged with a neighbour.
const MIN: usize = MAX / 4;
/// The most entries a node holds for a moment: a node under [`MIN`] merged with a full neighbour,
/// before it is split again.
const CAP: usize = MAX + MIN;
/// The longest common prefix a node's [`Keys`] keep.
const PREFIX: usize = 32;

#[derive(Clone)]
enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

/// A node's entries, in the node itself: copying a node is one allocation, and a descent reads
/// its entries without following another pointer.
type Entries<T> = ArrayVec<T, CAP>;

#[derive(Clone)]
struct Leaf {
    items: Entries<Arc<Instance>>,
    /// The items' ids.
    keys: Keys,
}

#[derive(Clone)]
struct Branch {
    children: Entries<Arc<Node>>,
    /// Instances under each child.
    lens: Entries<usize>,
    /// The ids of the children's first instances (children are never empty). Only the keys: a
    /// branch holding each child's first instance too (another `Arc`) cost a copied branch as
    /// many more reference counts, each a cache miss at 100,000 instances; the rare descent that
    /// needs a first's whole id reads it down the child's leftmost path.
    keys: Keys,
    /// Instances under this branch.
    len: usize,
}

/// A node's ids (sorted) as a descent compares them: a prefix every one of them starts with (not
/// necessarily the longest), and each one's next eight bytes as a big-endian number (zero-padded).
/// For two ids with that prefix, a smaller number means a smaller id and a greater one a greater
/// id; only equal numbers need the ids themselves.
#[derive(Clone)]
struct Keys {
    len: u8,
    skip: u8,
    prefix: [u8; PREFIX],
    heads: [u64; CAP],
}

/// How many leading bytes `a` and `b` share.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The eight bytes of `id` after its first `skip`, big-endian, zero-padded.
fn head(id: &[u8], skip: usize) -> u64 {
    let rest = id.get(skip..).unwrap_or_default();
    let mut w = [0u8; 8];
    let n = rest.len().min(8);
    w[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(w)
}

impl Keys {
    /// The keys of sorted ids, with the longest prefix they share (up to [`PREFIX`] bytes).
    fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Keys {
        let ids: Vec<&[u8]> = ids.into_iter().map(str::as_bytes).collect();
        // Sorted: what the first and last share, all share.
        let skip = match (ids.first(), ids.last()) {
            (Some(a), Some(b)) => common(a, b).min(PREFIX),
            _ => 0,
        };
        let mut keys = Keys {
            len: 0,
            skip: skip as u8,
            prefix: [0; PREFIX],
            heads: [0; CAP],
        };
        if let Some(a) = ids.first() {
            keys.prefix[..skip].copy_from_slice(&a[..skip]);
        }
        for (h, id) in keys.heads.iter_mut().zip(&ids) {
            *h = head(id, skip);
        }
        keys.len = ids.len() as u8;
        keys
    }

    fn heads(&self) -> &[u64] {
        &self.heads[..usize::from(self.len)]
    }

    /// How many of the ids are at most `q`, and whether the last of those is `q`. `id_at(i)` is
    /// the `i`-th id, read only where its eight bytes equal `q`'s.
    fn rank<'a>(&self, q: &str, id_at: impl Fn(usize) -> &'a str) -> (usize, bool) {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let q = q.as_bytes();
        let skip = usize::from(self.skip);
        let n = q.len().min(skip);
        match q[..n].cmp(&self.prefix[..n]) {
            Less => return (0, false),
            Greater => return (usize::from(self.len), false),
            // `q` is a proper prefix of every id: smaller than all.
            Equal if q.len() < skip => return (0, false),
            Equal => {}
        }
        let hq = head(q, skip);
        let heads = self.heads();
        // A count rather than a binary search: no branch to mispredict, and the loads of the
        // heads do not wait for each other.
        let mut at = heads.iter().filter(|&&h| h < hq).count();
        while at < heads.len() && heads[at] == hq {
            match id_at(at).as_bytes().cmp(q) {
                Less => at += 1,
                Equal => return (at + 1, true),
                Greater => break,
            }
        }
        (at, false)
    }

    /// Inserts `id` as the `i`-th id.
    fn insert(&mut self, i: usize, id: &str) {
        let len = usize::from(self.len);
        assert!(len < CAP, "a node holds at most CAP entries");
        self.heads.copy_within(i..len, i + 1);
        self.len += 1;
        self.set(i, id);
    }

    /// Replaces the `i`-th id by `id` (the order stays sorted).
    fn set(&mut self, i: usize, id: &str) {
        self.fit(id.as_bytes());
        self.heads[i] = head(id.as_bytes(), usize::from(self.skip));
    }

    fn remove(&mut self, i: usize) {
        let len = usize::from(self.len);
        self.heads.copy_within(i + 1..len, i);
        self.len -= 1;
    }

    /// Appends `other`'s ids (all greater).
    fn append(&mut self, mut other: Keys) {
        let shared = common(
            &self.prefix[..usize::from(self.skip)],
            &other.prefix[..usize::from(other.skip)],
        );
        self.shorten(shared);
        other.shorten(shared);
        let (len, more) = (usize::from(self.len), usize::from(other.len));
        assert!(len + more <= CAP, "a node holds at most CAP entries");
        self.heads[len..len + more].copy_from_slice(other.heads());
        self.len += other.len;
    }

    /// Shortens the prefix to what `id` shares with it, so that `id` can join.
    fn fit(&mut self, id: &[u8]) {
        let skip = usize::from(self.skip);
        let shared = common(&self.prefix[..skip], id);
        if shared < skip {
            self.shorten(shared);
        }
    }

    /// Shortens the prefix to its first `to` bytes: the bytes that leave it come first in every
    /// head, without reading an id.
    fn shorten(&mut self, to: usize) {
        let skip = usize::from(self.skip);
        if to >= skip {
            return;
        }
        let moved = head(&self.prefix[..skip], to);
        let d = skip - to;
        let len = usize::from(self.len);
        for h in &mut self.heads[..len] {
            *h = if d >= 8 {
                moved
            } else {
                moved | (*h >> (8 * d))
            };
        }
        self.skip = to as u8;
    }
}

impl Leaf {
    fn new(items: Entries<Arc<Instance>>) -> Leaf {
        let keys = Keys::of(items.iter().map(|m| m.id.as_str()));
        Leaf { items, keys }
    }

    /// Where `id` is (`Ok`) or would go (`Err`).
    fn search(&self, id: &str) -> Result<usize, usize> {
        match self.keys.rank(id, |i| &self.items[i].id) {
            (at, true) => Ok(at - 1),
            (at, false) => Err(at),
        }
    }
}

impl Branch {
    /// The last child whose first id is at most `id` (or the first child), and whether any is.
    fn child_for(&self, id: &str) -> (usize, bool) {
        let (at, _) = self.keys.rank(id, |i| self.children[i].first_id());
        (at.saturating_sub(1), at > 0)
    }

    /// Records child `j`'s first id again.
    fn refresh(&mut self, j: usize) {
        let Branch { children, keys, .. } = self;
        keys.set(j, children[j].first_id());
    }
}

impl Node {
    fn len(&self) -> usize {
        match self {
            Node::Leaf(l) => l.items.len(),
            Node::Branch(b) => b.len,
        }
    }

    /// Entries of this node itself (instances or children).
    fn width(&self) -> usize {
        match self {
            Node::Leaf(l) => l.items.len(),
            Node::Branch(b) => b.children.len(),
        }
    }

    /// The first instance (down the leftmost path).
    fn first(&self) -> Option<&Arc<Instance>> {
        let mut node = self;
        loop {
            match node {
                Node::Leaf(l) => return l.items.first(),
                Node::Branch(b) => node = b.children.first()?,
            }
        }
    }

    /// The first instance's id (`""` for an empty leaf, which only an empty root is).
    fn first_id(&self) -> &str {
        self.first().map_or("", |f| f.id.as_str())
    }

    fn branch(children: Entries<Arc<Node>>) -> Node {
        let lens: Entries<usize> = children.iter().map(|c| c.len()).collect();
        let keys = Keys::of(children.iter().map(|c| c.first_id()));
        let len = lens.iter().sum();
        Node::Branch(Branch {
            children,
            lens,
            keys,
            len,
        })
    }

    /// Splits off the upper half of this node's entries. Both halves' keys are made again from
    /// their ids: a half's ids may share a longer prefix than the whole's (a tree grown from one
    /// empty leaf would otherwise never have one).
    fn split_half(&mut self) -> Node {
        match self {
            Node::Leaf(l) => {
                let upper = l.items.drain(l.items.len() / 2..).collect();
                *l = Leaf::new(std::mem::take(&mut l.items));
                Node::Leaf(Leaf::new(upper))
            }
            Node::Branch(b) => {
                let at = b.children.len() / 2;
                let right = Node::branch(b.children.drain(at..).collect());
                b.lens.truncate(at);
                b.keys = Keys::of(b.children.iter().map(|c| c.first_id()));
                b.len -= right.len();
                right
            }
        }
    }

    /// Appends `other`'s entries (a node of the same depth, all of whose ids are greater).
    fn absorb(&mut self, other: Node) {
        match (self, other) {
            (Node::Leaf(a), Node::Leaf(b)) => {
                a.items.extend(b.items);
                a.keys.append(b.keys);
            }
            (Node::Branch(a), Node::Branch(b)) => {
                a.children.extend(b.children);
                a.lens.extend(b.lens);
                a.keys.append(b.keys);
                a.len += b.len;
            }
            _ => unreachable!("every leaf is at the same depth"),
        }
    }
}

/// What [`apply`] did under a node.
struct Applied {
    /// What was there (`Some(None)`: nothing, and now the new entry is); `None`: nothing changed.
    old: Option<Option<Arc<Instance>>>,
    /// By how many instances the count moved.
    delta: isize,
    /// Whether the node's first id may have changed (its parent records it again).
    first_moved: bool,
}

/// Sets `id` to `new` (`None`: removes it) under `node`. The caller fixes the node's size (split
/// or merge).
fn apply(node: &mut Arc<Node>, id: &str, new: Option<&Arc<Instance>>) -> Applied {
    let done = |old, delta, first_moved| Applied {
        old,
        delta,
        first_moved,
    };
    match Arc::make_mut(node) {
        Node::Leaf(l) => match (l.search(id), new) {
            (Ok(i), Some(new)) => done(
                Some(Some(std::mem::replace(&mut l.items[i], new.clone()))),
                0,
                false,
            ),
            (Ok(i), None) => {
                l.keys.remove(i);
                done(Some(Some(l.items.remove(i))), -1, i == 0)
            }
            (Err(i), Some(new)) => {
                l.items.insert(i, new.clone());
                l.keys.insert(i, &new.id);
                done(Some(None), 1, i == 0)
            }
            (Err(_), None) => done(None, 0, false),
        },
        Node::Branch(b) => {
            let (j, _) = b.child_for(id);
            let mut applied = apply(&mut b.children[j], id, new);
            if applied.old.is_some() {
                b.len = b.len.wrapping_add_signed(applied.delta);
                b.lens[j] = b.lens[j].wrapping_add_signed(applied.delta);
                applied.first_moved = fix_child(b, j, applied.first_moved);
            }
            applied
        }
    }
}

/// Restores child `j`'s invariants after a change under it: not empty, not wider than [`MAX`],
/// not narrower than [`MIN`] (when it has a neighbour), and its first id recorded (`moved`:
/// whether it may have changed; the child's leftmost path is then the one just changed, so reading
/// it again is cheap). Whether the branch's own first id may have changed.
fn fix_child(b: &mut Branch, j: usize, moved: bool) -> bool {
    let width = b.children[j].width();
    if width == 0 {
        b.children.remove(j);
        b.lens.remove(j);
        b.keys.remove(j);
        return j == 0;
    }
    if width > MAX {
        split_child(b, j);
    } else if width < MIN && b.children.len() > 1 {
        // Merge with the right neighbour (the left one for the last child), then split again if
        // the two together are too wide.
        let left = if j + 1 < b.children.len() { j } else { j - 1 };
        let right = b.children.remove(left + 1);
        b.lens.remove(left + 1);
        b.keys.remove(left + 1);
        let right = Arc::try_unwrap(right).unwrap_or_else(|shared| Node::clone(&shared));
        let merged = Arc::make_mut(&mut b.children[left]);
        merged.absorb(right);
        b.lens[left] = merged.len();
        if merged.width() > MAX {
            split_child(b, left);
        }
        b.refresh(left);
        return left == 0;
    }
    if moved {
        b.refresh(j);
    }
    moved && j == 0
}

/// Splits child `j` in halves, the upper one becoming child `j + 1` (its count and first id
/// recorded; child `j`'s first is unchanged).
fn split_child(b: &mut Branch, j: usize) {
    let upper = Arc::make_mut(&mut b.children[j]).split_half();
    b.lens[j] -= upper.len();
    b.lens.insert(j + 1, upper.len());
    b.keys.insert(j + 1, upper.first_id());
    b.children.insert(j + 1, Arc::new(upper));
}

/// An id whose entry differs between two versions, with its old and new entry (see
/// [`Seq::diff`]).
pub(crate) type Difference<'a> = (
    &'a str,
    Option<&'a Arc<Instance>>,
    Option<&'a Arc<Instance>>,
);

/// The sequence: a root node (a leaf while it fits in one).
#[derive(Clone)]
pub(crate) struct Seq {
    root: Arc<Node>,
}

impl Default for Seq {
    fn default() -> Self {
        Seq {
            root: Arc::new(Node::Leaf(Leaf::new(Entries::new()))),
        }
    }
}

impl Seq {
    /// From instances sorted by id with distinct ids (the caller's guarantee), packed three
    /// quarters full so that the first changes do not split at once.
    pub(crate) fn from_sorted(items: Vec<Arc<Instance>>) -> Seq {
        const FILL: usize = MAX * 3 / 4;
        if items.len() <= MAX {
            return Seq {
                root: Arc::new(Node::Leaf(Leaf::new(items.into_iter().collect()))),
            };
        }
        let mut level: Vec<Arc<Node>> = items
            .chunks(FILL)
            .map(|c| Arc::new(Node::Leaf(Leaf::new(c.iter().cloned().collect()))))
            .collect();
        while level.len() > 1 {
            level = level
                .chunks(FILL)
                .map(|c| Arc::new(Node::branch(c.iter().cloned().collect())))
                .collect();
        }
        // A last chunk narrower than MIN is legal: only changes merge, and they keep the rest.
        Seq {
            root: level.pop().expect("items is not empty"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.root.len()
    }

    pub(crate) fn ptr_eq(&self, other: &Seq) -> bool {
        Arc::ptr_eq(&self.root, &other.root)
    }

    /// The instance with this id.
    pub(crate) fn find(&self, id: &str) -> Option<&Arc<Instance>> {
        let mut node = &*self.root;
        loop {
            match node {
                Node::Leaf(l) => return l.search(id).ok().map(|i| &l.items[i]),
                Node::Branch(b) => {
                    let (j, any) = b.child_for(id);
                    if !any {
                        return None;
                    }
                    node = &b.children[j];
                }
            }
        }
    }

    /// The `i`-th instance.
    pub(crate) fn get(&self, mut i: usize) -> Option<&Arc<Instance>> {
        let mut node = &*self.root;
        loop {
            match node {
                Node::Leaf(l) => return l.items.get(i),
                Node::Branch(b) => {
                    if i >= b.len {
                        return None;
                    }
                    let mut j = 0;
                    while i >= b.lens[j] {
                        i -= b.lens[j];
                        j += 1;
                    }
                    node = &b.children[j];
                }
            }
        }
    }

    pub(crate) fn first(&self) -> Option<&Arc<Instance>> {
        self.root.first()
    }

    pub(crate) fn last(&self) -> Option<&Arc<Instance>> {
        let len = self.len();
        len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Sets `id` to `new` (`None`: removes it); whether anything changed. Copies only the nodes
    /// on the path that another version still holds.
    pub(crate) fn set(&mut self, id: &str, new: Option<&Arc<Instance>>) -> bool {
        self.replace(id, new).is_some()
    }

    /// Sets `id` to `new` (`None`: removes it); what was there (`Some(None)`: nothing), or `None`
    /// if nothing changed (removing an absent id).
    pub(crate) fn replace(
        &mut self,
        id: &str,
        new: Option<&Arc<Instance>>,
    ) -> Option<Option<Arc<Instance>>> {
        if new.is_none() && self.find(id).is_none() {
            return None;
        }
        let old = apply(&mut self.root, id, new).old;
        if self.root.width() > MAX {
            let right = Arc::make_mut(&mut self.root).split_half();
            let left = std::mem::replace(
                &mut self.root,
                Arc::new(Node::Leaf(Leaf::new(Entries::new()))),
            );
            self.root = Arc::new(Node::branch([left, Arc::new(right)].into_iter().collect()));
        }
        // A branch root with one child gives way to it (the tree gets lower).
        while let Node::Branch(b) = &*self.root {
            if b.children.len() != 1 {
                break;
            }
            let only = b.children[0].clone();
            self.root = only;
        }
        old
    }

    /// The ids whose entry differs between `self` (older) and `newer`, in id order, with the old
    /// and new entry (an entry differs if it is another `Arc` holding another value). Skips every
    /// subtree the two versions share, so after a few changes it visits the nodes on the changed
    /// paths and their neighbours, not the whole tree.
    pub(crate) fn diff<'a>(&'a self, newer: &'a Seq) -> Vec<Difference<'a>> {
        let mut out = Vec::new();
        if self.ptr_eq(newer) {
            return out;
        }
        let (mut a, mut b) = (Side::new(&self.root), Side::new(&newer.root));
        loop {
            // Between leaves on both sides: skip a subtree both hold next, or open the taller
            // of the two next subtrees (both, at equal height).
            if a.leaf.is_empty()
                && b.leaf.is_empty()
                && let (Some(&(x, hx)), Some(&(y, hy))) = (a.stack.last(), b.stack.last())
            {
                if std::ptr::eq(x, y) {
                    a.stack.pop();
                    b.stack.pop();
                    continue;
                }
                if hx >= hy {
                    a.open();
                }
                if hy >= hx {
                    b.open();
                }
                continue;
            }
            a.fill();
            b.fill();
            let (x, y) = (a.leaf.first(), b.leaf.first());
            let order = match (x, y) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.id.cmp(&y.id),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let x = a.next();
                    out.push((x.id.as_str(), Some(x), None));
                }
                std::cmp::Ordering::Greater => {
                    let y = b.next();
                    out.push((y.id.as_str(), None, Some(y)));
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next(), b.next());
                    if !Arc::ptr_eq(x, y) && x != y {
                        out.push((x.id.as_str(), Some(x), Some(y)));
                    }
                }
            }
        }
        out
    }

    pub(crate) fn iter(&self) -> InstancesIter<'_> {
        let mut leaves = Vec::new();
        collect_leaves(&self.root, &mut leaves);
        InstancesIter {
            inner: leaves.into_iter().flatten(),
            remaining: self.len(),
        }
    }

    /// Checks the tree's invariants (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        fn walk(node: &Node, root: bool, depth: usize, leaf_depth: &mut Option<usize>) -> usize {
            assert!(node.width() <= MAX, "node wider than MAX");
            match node {
                Node::Leaf(l) => {
                    let v = &l.items;
                    assert_eq!(
                        *leaf_depth.get_or_insert(depth),
                        depth,
                        "leaves at one depth"
                    );
                    assert!(root || !v.is_empty(), "empty leaf");
                    assert!(v.windows(2).all(|w| w[0].id < w[1].id), "leaf not sorted");
                    check_keys(&l.keys, v);
                    v.len()
                }
                Node::Branch(b) => {
                    assert!(b.children.len() >= 2 || !root, "root branch of one child");
                    assert!(!b.children.is_empty(), "empty branch");
                    let mut sum = 0;
                    for (k, c) in b.children.iter().enumerate() {
                        let n = walk(c, false, depth + 1, leaf_depth);
                        assert_eq!(n, b.lens[k], "child count");
                        sum += n;
                    }
                    assert_eq!(sum, b.len, "branch count");
                    let firsts: Vec<Arc<Instance>> = b
                        .children
                        .iter()
                        .map(|c| c.first().expect("children are never empty").clone())
                        .collect();
                    check_keys(&b.keys, &firsts);
                    sum
                }
            }
        }
        /// The keys are a prefix all ids start with and each id's eight bytes after it.
        fn check_keys(keys: &Keys, ids: &[Arc<Instance>]) {
            let skip = usize::from(keys.skip);
            assert_eq!(usize::from(keys.len), ids.len(), "keys count");
            for (h, m) in keys.heads().iter().zip(ids) {
                assert!(
                    m.id.as_bytes().starts_with(&keys.prefix[..skip]),
                    "keys prefix"
                );
                assert_eq!(*h, head(m.id.as_bytes(), skip), "keys head of {:?}", m.id);
            }
        }
        walk(&self.root, true, 0, &mut None);
        let ids: Vec<&str> = self.iter().map(|i| i.id.as_str()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not sorted");
    }
}

#[cfg(test)]
thread_local! {
    /// Nodes opened by diffs on this thread (tests).
    static OPENED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One version's remaining entries during [`Seq::diff`]: the rest of a leaf, then subtrees in
/// order (the next one on top, with its height above the leaves).
struct Side<'a> {
    leaf: &'a [Arc<Instance>],
    stack: Vec<(&'a Node, usize)>,
}

impl<'a> Side<'a> {
    fn new(root: &'a Node) -> Side<'a> {
        let mut height = 0;
        let mut node = root;
        while let Node::Branch(b) = node {
            node = &b.children[0];
            height += 1;
        }
        Side {
            leaf: &[],
            stack: vec![(root, height)],
        }
    }

    /// Replaces the next subtree by its children (a leaf by its entries).
    fn open(&mut self) {
        if let Some((node, h)) = self.stack.pop() {
            #[cfg(test)]
            OPENED.with(|o| o.set(o.get() + 1));
            match node {
                Node::Leaf(l) => self.leaf = &l.items,
                Node::Branch(b) => self
                    .stack
                    .extend(b.children.iter().rev().map(|c| (&**c, h - 1))),
            }
        }
    }

    /// Opens subtrees until an entry is next (or none is left).
    fn fill(&mut self) {
        while self.leaf.is_empty() && !self.stack.is_empty() {
            self.open();
        }
    }

    /// Takes the next entry (the caller has seen it with `fill`).
    fn next(&mut self) -> &'a Arc<Instance> {
        let (first, rest) = self.leaf.split_first().expect("an entry is next");
        self.leaf = rest;
        first
    }
}

fn collect_leaves<'a>(node: &'a Node, out: &mut Vec<&'a [Arc<Instance>]>) {
    match node {
        Node::Leaf(l) => out.push(&l.items),
        Node::Branch(b) => b.children.iter().for_each(|c| collect_leaves(c, out)),
    }
}

/// The instances of an [`Instances`](crate::Instances) in id order (double-ended, exact size).
pub struct InstancesIter<'a> {
    inner: std::iter::Flatten<std::vec::IntoIter<&'a [Arc<Instance>]>>,
    remaining: usize,
}

impl<'a> Iterator for InstancesIter<'a> {
    type Item = &'a Arc<Instance>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.inner.next();
        self.remaining -= usize::from(next.is_some());
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl DoubleEndedIterator for InstancesIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let next = self.inner.next_back();
        self.remaining -= usize::from(next.is_some());
        next
    }
}

impl ExactSizeIterator for InstancesIter<'_> {}

impl std::iter::FusedIterator for InstancesIter<'_> {}

impl std::fmt::Debug for InstancesIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancesIter")
            .field("remaining", &self.remaining)
            .finish()
    }
}

#[cfg(test)]
mod tests;
