//! What the mirror's task still has to tell the agent, bounded whatever the agent's speed: the
//! latest desired state per service ID (registered as written, or removed), one heartbeat per
//! lease, one end per lease, and the TTLs of leases granted. An event for something already
//! waiting replaces it (or is dropped, for a heartbeat) instead of queueing behind it, so the
//! queue holds at most one entry per service ID of the registry's instances plus two per lease:
//! its size follows the registry's size, never the number of events or how long the agent takes.
//!
//! The task takes lease ends and removals first, then heartbeats, then registrations: after an
//! agent outage a deregistration made meanwhile is the first request the agent sees.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_engine::Instance;
use tokio::sync::{Notify, oneshot};

/// A change of one service ID.
pub(super) enum Change {
    /// Registered as this instance, under `session`.
    Put {
        instance: Arc<Instance>,
        session: String,
    },
    /// Its key was deleted: the entry goes.
    Delete,
    /// Another live owner (lease `holder`) holds its key: our entry goes, theirs stays.
    Yield { holder: String },
}

/// One thing for the task to do.
pub(super) enum Job {
    /// A lease was granted with this TTL.
    Granted { session: String, ttl: Duration },
    /// The lease was revoked, or the server reports it gone.
    LeaseEnded { session: String },
    /// A service ID's latest change.
    Instance { service_id: String, change: Change },
    /// A keep-alive of the lease succeeded.
    Heartbeat { session: String },
}

/// Entries in arrival order, at most one per key: a later value for a waiting key replaces it in
/// its place.
struct Fifo<T> {
    order: BTreeMap<u64, String>,
    /// Key -> (value, its place in `order`, the sequence number of the oldest event it stands for).
    items: HashMap<String, (T, u64, u64)>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            order: BTreeMap::new(),
            items: HashMap::new(),
        }
    }
}

impl<T> Fifo<T> {
    /// Sets `key`'s value (new at the back, or replacing a waiting one in its place); `true` when
    /// it replaced one.
    fn put(&mut self, key: String, value: T, seq: u64, since: u64) -> bool {
        if let Some(item) = self.items.get_mut(&key) {
            item.0 = value;
            item.2 = item.2.min(since);
            return true;
        }
        self.order.insert(seq, key.clone());
        self.items.insert(key, (value, seq, since));
        false
    }

    fn take(&mut self, key: &str) -> Option<(T, u64)> {
        let (value, place, since) = self.items.remove(key)?;
        self.order.remove(&place);
        Some((value, since))
    }

    fn pop(&mut self) -> Option<(String, T)> {
        let (_, key) = self.order.pop_first()?;
        let (value, _, _) = self.items.remove(&key)?;
        Some((key, value))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.items.len();
        let order = &mut self.order;
        self.items.retain(|_, (value, place, _)| {
            let k = keep(value);
            if !k {
                order.remove(place);
            }
            k
        });
        before - self.items.len()
    }

    fn oldest(&self) -> Option<u64> {
        self.items.values().map(|(_, _, since)| *since).min()
    }
}

struct Put {
    instance: Arc<Instance>,
    session: String,
}

enum Removal {
    Delete,
    Yield { holder: String },
}

#[derive(Default)]
struct State {
    /// Events accepted so far (each numbered).
    seq: u64,
    granted: Fifo<Duration>,
    ended: Fifo<()>,
    removals: Fifo<Removal>,
    heartbeats: Fifo<()>,
    puts: Fifo<Put>,
    /// `settle` calls waiting for the events up to a number.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    /// The task is doing a job it took.
    busy: bool,
    /// The handle is gone: the task ends once the queue is empty.
    closed: bool,
    /// The task is gone (its runtime shut down): nothing is done any more.
    gone: bool,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn oldest(&self) -> Option<u64> {
        [
            self.granted.oldest(),
            self.ended.oldest(),
            self.removals.oldest(),
            self.heartbeats.oldest(),
            self.puts.oldest(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Answers the flushes whose events are all done (and forgets those nobody waits for).
    fn answer_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let oldest = if self.busy { Some(0) } else { self.oldest() };
        let waiting = std::mem::take(&mut self.flushes);
        for (upto, done) in waiting {
            if oldest.is_none_or(|o| o > upto) {
                let _ = done.send(());
            } else if !done.is_closed() {
                self.flushes.push((upto, done));
            }
        }
    }

    fn pop(&mut self) -> Option<Job> {
        if let Some((session, ttl)) = self.granted.pop() {
            return Some(Job::Granted { session, ttl });
        }
        if let Some((session, ())) = self.ended.pop() {
            return Some(Job::LeaseEnded { session });
        }
        if let Some((service_id, r)) = self.removals.pop() {
            let change = match r {
                Removal::Delete => Change::Delete,
                Removal::Yield { holder } => Change::Yield { holder },
            };
            return Some(Job::Instance { service_id, change });
        }
        if let Some((session, ())) = self.heartbeats.pop() {
            return Some(Job::Heartbeat { session });
        }
        let (service_id, p) = self.puts.pop()?;
        Some(Job::Instance {
            service_id,
            change: Change::Put {
                instance: p.instance,
                session: p.session,
            },
        })
    }
}

/// What [`Queue::push`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued as a new entry.
    Queued,
    /// Merged into an entry already waiting (or made one unnecessary).
    Coalesced,
    /// The task is gone: nothing will be done.
    Gone,
}

/// The queue between the handle (which pushes, never waiting) and the task.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
    wake: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `job` in, merged with what waits for the same service ID or lease.
    pub(super) fn push(&self, job: Job) -> Pushed {
        let mut s = self.lock();
        if s.gone {
            return Pushed::Gone;
        }
        let seq = s.next_seq();
        let coalesced = match job {
            Job::Granted { session, ttl } => s.granted.put(session, ttl, seq, seq),
            Job::LeaseEnded { session } => {
                // Everything still waiting for this lease ended with it.
                let mut dropped = s.puts.retain(|p| p.session != session);
                dropped += usize::from(s.heartbeats.take(&session).is_some());
                dropped += usize::from(s.granted.take(&session).is_some());
                s.ended.put(session, (), seq, seq) || dropped > 0
            }
            Job::Heartbeat { session } => s.heartbeats.put(session, (), seq, seq),
            Job::Instance { service_id, change } => match change {
                Change::Put { instance, session } => {
                    let earlier = s.removals.take(&service_id);
                    let since = earlier.as_ref().map_or(seq, |(_, since)| *since);
                    let put = Put { instance, session };
                    s.puts.put(service_id, put, seq, since) || earlier.is_some()
                }
                removal => {
                    let earlier = s.puts.take(&service_id);
                    let since = earlier.as_ref().map_or(seq, |(_, since)| *since);
                    let mut removal = match removal {
                        Change::Yield { holder } => Removal::Yield { holder },
                        _ => Removal::Delete,
                    };
                    // A yield waiting stays one: the entry goes only if it is still ours.
                    if let Some((Removal::Yield { holder }, _, _)) =
                        s.removals.items.get(&service_id)
                    {
                        removal = Removal::Yield {
                            holder: holder.clone(),
                        };
                    }
                    s.removals.put(service_id, removal, seq, since) || earlier.is_some()
                }
            },
        };
        drop(s);
        self.wake.notify_one();
        if coalesced {
            Pushed::Coalesced
        } else {
            Pushed::Queued
        }
    }

    /// A receiver answered once every event pushed so far is done (or superseded by a later
    /// one); answered at once when the task is gone.
    pub(super) fn flush(&self) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let mut s = self.lock();
        if s.gone {
            return wait;
        }
        let upto = s.seq;
        s.flushes.push((upto, done));
        s.answer_flushes();
        drop(s);
        self.wake.notify_one();
        wait
    }

    /// The next job, waiting for one; `None` once the handle is gone and nothing waits.
    pub(super) async fn next(&self) -> Option<Job> {
        loop {
            {
                let mut s = self.lock();
                s.busy = false;
                s.answer_flushes();
                if let Some(job) = s.pop() {
                    s.busy = true;
                    return Some(job);
                }
                if s.closed {
                    return None;
                }
            }
            // A push between the unlock and here leaves a permit: no wake-up is lost.
            self.wake.notified().await;
        }
    }

    /// The handle is gone: the task ends after what waits.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Held by the task: when it ends (or its runtime drops it), later events are refused and the
    /// flushes waiting are let go.
    pub(super) fn task_guard(self: &Arc<Self>) -> TaskGuard {
        TaskGuard(self.clone())
    }

    /// How many entries wait (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let s = self.lock();
        s.granted.items.len()
            + s.ended.items.len()
            + s.removals.items.len()
            + s.heartbeats.items.len()
            + s.puts.items.len()
    }
}

pub(super) struct TaskGuard(Arc<Queue>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.gone = true;
        s.flushes.clear();
        s.granted = Fifo::default();
        s.ended = Fifo::default();
        s.removals = Fifo::default();
        s.heartbeats = Fifo::default();
        s.puts = Fifo::default();
    }
}
