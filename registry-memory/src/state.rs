//! The store itself: keys, leases and bounded history, guarded by one mutex in `backend.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use registry_core::config::MAX_DURATION;
use registry_core::{
    CondOutcome, Condition, Error, Event, KeyValue, LeaseId, Listing, Result, Revision, key,
};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    pub(crate) revision: Revision,
    pub(crate) lease: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) ttl: Duration,
    pub(crate) deadline: Instant,
    pub(crate) keys: BTreeSet<String>,
}

/// A copy of the keys and leases of a store, to put back later (see
/// [`MemoryBackend::checkpoint`](crate::MemoryBackend::checkpoint)).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    keys: BTreeMap<String, (Bytes, Revision, Option<u64>)>,
    leases: HashMap<u64, (Duration, BTreeSet<String>)>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) revision: Revision,
    pub(crate) keys: BTreeMap<String, Entry>,
    pub(crate) leases: HashMap<u64, LeaseState>,
    /// (deadline, lease) for every live lease, so the earliest expiry is found without a scan.
    pub(crate) deadlines: BTreeSet<(Instant, u64)>,
    /// Retained events, in revision order.
    pub(crate) history: VecDeque<Event>,
    /// Every event with a revision at or below this one has been discarded.
    pub(crate) compacted: Revision,
    pub(crate) history_limit: usize,
    /// Bumped by fault injection to end every open watch stream.
    pub(crate) watch_epoch: u64,
}

pub(crate) fn parse_lease(id: &LeaseId) -> Option<u64> {
    id.as_str().parse().ok()
}

impl State {
    pub(crate) fn new(history_limit: usize) -> Self {
        State {
            revision: 0,
            keys: BTreeMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_limit: history_limit.max(1),
            watch_epoch: 0,
        }
    }

    /// The earliest lease deadline, if any lease is live.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Ends every lease whose deadline is at or before `now`, deleting its keys. Returns whether
    /// anything changed.
    pub(crate) fn expire_due(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = id, "memory backend: lease expired");
            changed |= self.end_lease(id);
        }
        changed
    }

    /// Removes lease `id` and its keys in one revision. Returns whether any key was deleted.
    fn end_lease(&mut self, id: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        self.deadlines.remove(&(lease.deadline, id));
        if lease.keys.is_empty() {
            return false;
        }
        self.revision += 1;
        let rev = self.revision;
        for k in lease.keys {
            self.keys.remove(&k);
            self.history.push_back(Event::delete(k, rev));
        }
        self.trim_history();
        true
    }

    pub(crate) fn grant(&mut self, id: u64, ttl: Duration, now: Instant) {
        let deadline = deadline_after(now, ttl);
        self.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
    }

    pub(crate) fn keep_alive(&mut self, id: u64, now: Instant) -> Result<Duration> {
        let lease = self.leases.get_mut(&id).ok_or_else(|| {
            Error::lease_not_found(format!("lease {id} has expired or was revoked"))
        })?;
        self.deadlines.remove(&(lease.deadline, id));
        lease.deadline = deadline_after(now, lease.ttl);
        self.deadlines.insert((lease.deadline, id));
        Ok(lease.ttl)
    }

    pub(crate) fn revoke(&mut self, id: u64) -> Result<()> {
        if !self.leases.contains_key(&id) {
            return Err(Error::lease_not_found(format!(
                "lease {id} has expired or was revoked"
            )));
        }
        self.end_lease(id);
        Ok(())
    }

    pub(crate) fn put(&mut self, k: &str, value: Bytes, lease: Option<u64>) -> Result<Revision> {
        if let Some(id) = lease
            && !self.leases.contains_key(&id)
        {
            return Err(Error::lease_not_found(format!(
                "lease {id} has expired or was revoked"
            )));
        }
        if let Some(old) = self.keys.get(k).and_then(|e| e.lease)
            && Some(old) != lease
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(k);
        }
        if let Some(id) = lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.insert(k.to_owned());
        }
        self.revision += 1;
        let rev = self.revision;
        self.keys.insert(
            k.to_owned(),
            Entry {
                value: value.clone(),
                revision: rev,
                lease,
            },
        );
        self.history.push_back(Event::put(k, value, rev));
        self.trim_history();
        Ok(rev)
    }

    pub(crate) fn delete(&mut self, k: &str) -> Option<Revision> {
        let entry = self.keys.remove(k)?;
        if let Some(l) = entry.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(k);
        }
        self.revision += 1;
        self.history.push_back(Event::delete(k, self.revision));
        self.trim_history();
        Some(self.revision)
    }

    /// Whether `cond` holds for `k` now.
    fn holds(&self, k: &str, cond: &Condition) -> bool {
        let entry = self.keys.get(k);
        match cond {
            Condition::Absent => entry.is_none(),
            Condition::Revision(r) => entry.is_some_and(|e| e.revision == *r),
            Condition::Lease(l) => {
                let id = parse_lease(l);
                entry.is_some_and(|e| e.lease.is_some() && e.lease == id)
            }
            // A condition this backend does not know never holds.
            _ => false,
        }
    }

    /// [`put`](Self::put) if `cond` holds, checked first: when it does not, nothing is written and
    /// the lease is not looked at.
    pub(crate) fn put_if(
        &mut self,
        k: &str,
        value: Bytes,
        lease: Option<u64>,
        cond: &Condition,
    ) -> Result<CondOutcome> {
        if !self.holds(k, cond) {
            return Ok(CondOutcome::Failed(self.get(k)));
        }
        self.put(k, value, lease).map(CondOutcome::Applied)
    }

    /// [`delete`](Self::delete) if `cond` holds. With [`Condition::Absent`] there is nothing to
    /// delete: the current revision, and no change.
    pub(crate) fn delete_if(&mut self, k: &str, cond: &Condition) -> CondOutcome {
        if !self.holds(k, cond) {
            return CondOutcome::Failed(self.get(k));
        }
        CondOutcome::Applied(self.delete(k).unwrap_or(self.revision))
    }

    pub(crate) fn get(&self, k: &str) -> Option<KeyValue> {
        self.keys.get(k).map(|e| to_kv(k, e))
    }

    pub(crate) fn list(&self, prefix: &str) -> Listing {
        let prefix = key::normalize_prefix(prefix);
        let entries = self
            .keys
            .range::<str, _>((
                std::ops::Bound::Included(&*prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| key::key_matches(&prefix, k))
            .map(|(k, e)| to_kv(k, e))
            .collect();
        Listing {
            entries,
            revision: self.revision,
        }
    }

    /// Discards every event at or below `revision` (capped at the current revision).
    pub(crate) fn compact(&mut self, revision: Revision) {
        let revision = revision.min(self.revision);
        while self.history.front().is_some_and(|e| e.revision <= revision) {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// The keys and leases as they are now (see [`MemoryBackend::checkpoint`](crate::MemoryBackend::checkpoint)).
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            keys: self
                .keys
                .iter()
                .map(|(k, e)| (k.clone(), (e.value.clone(), e.revision, e.lease)))
                .collect(),
            leases: self
                .leases
                .iter()
                .map(|(id, l)| (*id, (l.ttl, l.keys.clone())))
                .collect(),
        }
    }

    /// Puts the keys and leases of `cp` back, as a server restored from that backup: every
    /// restored lease gets a whole TTL from `now`; the revision goes on from where it is (one
    /// more), and the history is gone (a watch from before must list again).
    pub(crate) fn restore(&mut self, cp: &Checkpoint, now: Instant) {
        self.keys = cp
            .keys
            .iter()
            .map(|(k, (value, revision, lease))| {
                let entry = Entry {
                    value: value.clone(),
                    revision: *revision,
                    lease: *lease,
                };
                (k.clone(), entry)
            })
            .collect();
        self.leases.clear();
        self.deadlines.clear();
        for (id, (ttl, keys)) in &cp.leases {
            let deadline = deadline_after(now, *ttl);
            self.leases.insert(
                *id,
                LeaseState {
                    ttl: *ttl,
                    deadline,
                    keys: keys.clone(),
                },
            );
            self.deadlines.insert((deadline, *id));
        }
        self.revision += 1;
        self.history.clear();
        self.compacted = self.revision;
        self.watch_epoch += 1;
    }

    /// Keeps the history within its limit, discarding whole revisions from the front.
    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            let Some(rev) = self.history.front().map(|e| e.revision) else {
                break;
            };
            self.compact(rev);
        }
    }

    /// Appends to `out` the events under `prefix` after `cursor`, reading at most about `budget`
    /// retained events (never splitting a revision). Returns the new cursor, or `Err(oldest)` when
    /// history after `cursor` is gone.
    pub(crate) fn read_history(
        &self,
        prefix: &str,
        cursor: Revision,
        budget: usize,
        out: &mut VecDeque<Event>,
    ) -> std::result::Result<Revision, Revision> {
        if cursor < self.compacted {
            return Err(self.compacted + 1);
        }
        let start = self.history.partition_point(|e| e.revision <= cursor);
        let mut last = cursor;
        for (read, ev) in self.history.range(start..).enumerate() {
            if read >= budget && ev.revision != last {
                break;
            }
            last = ev.revision;
            if key::key_matches(prefix, &ev.key) {
                out.push_back(ev.clone());
            }
        }
        Ok(last)
    }
}

/// `now + ttl`, or `now +` [`MAX_DURATION`] if that would overflow (a TTL that long never expires
/// in practice either way).
fn deadline_after(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(MAX_DURATION))
        .unwrap_or(now)
}

fn to_kv(k: &str, e: &Entry) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: e.value.clone(),
        revision: e.revision,
        lease: e.lease.map(|id| LeaseId::new(id.to_string())),
    }
}
