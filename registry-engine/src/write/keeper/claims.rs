//! What a keeper shares with the callers of `register`, so that a caller can make a
//! registration's first write itself, on the keeper's lease, instead of handing it to the keeper's
//! task and waiting to be woken with the answer (two hand-offs between threads, most of a
//! registration's latency on an idle process: BENCHMARKS.md section 1.1).
//!
//! A caller may write a key itself only when that cannot race with the keeper: the keeper holds a
//! lease it believes alive, the key is none of its members (a member's key is the keeper's to
//! write), no other caller is writing it, and the keeper is not deleting it. The caller marks the
//! key as being written (a [`claim`](Claims::claim)), makes a create ("only if absent") on the
//! lease, and sends the keeper the registration, written or not; until the keeper takes it, the
//! keeper neither deletes that key nor revokes the lease it was written on. Whatever the caller
//! could not write goes the usual way, through the keeper.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use registry_core::lease::LeaseId;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    state: Mutex<State>,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct State {
    /// The lease callers may write on: the keeper's, while it believes it alive.
    lease: Option<LeaseId>,
    /// How many members have a key of each hash. A caller's key that matches one goes through
    /// the keeper (a false match costs only that), so the keeper need not share the keys.
    members: HashMap<u64, u32>,
    /// Keys a caller claimed (it is writing them, or has, and the keeper has not taken them).
    writing: HashSet<String>,
    /// Keys the keeper is deleting right now.
    deleting: HashSet<String>,
    /// The keeper has stopped: nothing is claimed any more.
    closed: bool,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// For a caller: the lease to write `key` on, with the key claimed; `None` when the key's
    /// first write must go through the keeper. A claim is always followed by a command that the
    /// keeper ends with [`taken`](Self::taken).
    pub(crate) fn claim(&self, key: &str) -> Option<LeaseId> {
        let h = self.hash(key);
        let mut st = self.lock();
        if st.closed
            || st.members.contains_key(&h)
            || st.writing.contains(key)
            || st.deleting.contains(key)
        {
            return None;
        }
        let lease = st.lease.clone()?;
        st.writing.insert(key.to_owned());
        Some(lease)
    }

    /// A caller that claimed `key` could not hand it to the keeper (it has stopped).
    pub(crate) fn release(&self, key: &str) {
        self.lock().writing.remove(key);
    }

    /// For the keeper: it took the command of a claimed `key`; `member` when the key is now one of
    /// its members.
    pub(crate) fn taken(&self, key: &str, member: bool) {
        let h = self.hash(key);
        let mut st = self.lock();
        st.writing.remove(key);
        if member {
            *st.members.entry(h).or_default() += 1;
        }
    }

    /// For the keeper: `key` became one of its members without a claim.
    pub(crate) fn joined(&self, key: &str) {
        let h = self.hash(key);
        *self.lock().members.entry(h).or_default() += 1;
    }

    /// For the keeper: `key` is no longer one of its members.
    pub(crate) fn left(&self, key: &str) {
        let h = self.hash(key);
        let mut st = self.lock();
        if let Some(n) = st.members.get_mut(&h) {
            *n -= 1;
            if *n == 0 {
                st.members.remove(&h);
            }
        }
    }

    /// For the keeper, before it deletes `key`: `false` when a caller has claimed it (the key is
    /// that new registration's: not to be deleted); otherwise no caller claims it until
    /// [`deleted`](Self::deleted).
    pub(crate) fn deleting(&self, key: &str) -> bool {
        let mut st = self.lock();
        if st.writing.contains(key) {
            return false;
        }
        st.deleting.insert(key.to_owned());
        true
    }

    /// For the keeper: the delete of `key` is over.
    pub(crate) fn deleted(&self, key: &str) {
        self.lock().deleting.remove(key);
    }

    /// For the keeper: the lease callers may write on from now on.
    pub(crate) fn publish(&self, lease: Option<&LeaseId>) {
        let mut st = self.lock();
        if st.lease.as_ref() != lease {
            st.lease = lease.cloned();
        }
    }

    /// For the keeper, before it revokes its lease with no member left: `false` when a caller
    /// has claimed a key (written on the lease, or about to be): the lease must stay. Otherwise no
    /// caller writes on it any more.
    pub(crate) fn retire(&self) -> bool {
        let mut st = self.lock();
        if !st.writing.is_empty() {
            return false;
        }
        st.lease = None;
        true
    }

    /// For the keeper, when it stops: nothing more is claimed.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.lease = None;
        st.members.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_and_never_while_the_keeper_owns_or_deletes_it() {
        let c = Claims::default();
        assert_eq!(c.claim("a"), None, "no lease yet");
        let lease = LeaseId::new("7");
        c.publish(Some(&lease));
        assert_eq!(c.claim("a"), Some(lease.clone()));
        assert_eq!(c.claim("a"), None, "claimed twice");
        assert!(!c.deleting("a"), "the keeper deletes a claimed key");
        assert!(!c.retire(), "the lease retired under a claim");
        c.taken("a", true);
        assert_eq!(c.claim("a"), None, "a member's key claimed");
        c.left("a");
        assert!(c.deleting("a"));
        assert_eq!(c.claim("a"), None, "a key being deleted claimed");
        c.deleted("a");
        c.joined("b");
        assert_eq!(c.claim("b"), None);
        c.left("b");
        assert_eq!(c.claim("b"), Some(lease.clone()));
        c.release("b");
        assert!(c.retire());
        assert_eq!(c.claim("c"), None, "claimed on a retired lease");
        c.publish(Some(&lease));
        c.close();
        assert_eq!(c.claim("c"), None, "claimed from a stopped keeper");
    }
}
