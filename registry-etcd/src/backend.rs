//! [`EtcdBackend`]: the backend contract over etcd v3.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::{StreamExt, stream};
use registry_core::config::clamp_duration;
use registry_core::{
    Backend, Capabilities, CondOutcome, Condition, Error, ErrorKind, Event, KeyValue, Lease,
    LeaseId, Listing, Result, Revision, WatchStream, key,
};

use crate::error::map;

/// Entries fetched per page when listing, so that no response approaches gRPC's message limit.
const LIST_PAGE: i64 = 1000;

/// One lease's keep-alive stream: the request half and the response half.
type Keeper = Arc<tokio::sync::Mutex<(LeaseKeeper, LeaseKeepAliveStream)>>;

/// An etcd v3 backend. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `namespace/` or empty: prepended to every key.
    prefix: String,
    endpoints: Vec<String>,
    request_timeout: Duration,
    caps: Capabilities,
    /// One keep-alive stream per lease, opened on first use and reused, each behind its own lock so
    /// that keep-alives never wait for other calls (nor other leases).
    keepers: Mutex<HashMap<i64, Keeper>>,
    /// What revisions this backend handed out looked like (see [`Witness`]), newest last.
    witnesses: Mutex<VecDeque<(Vec<u8>, Revision, Witness)>>,
}

/// How many [`Witness`]es a backend keeps: enough for every watch of a process to resume.
const WITNESSES_KEPT: usize = 512;

/// What the server held at a revision this backend handed out (a listing's, or the last event a
/// watch delivered), to recognise that revision when a watch resumes from it.
///
/// etcd put back to an older copy of its data (a restored backup, a rolled-back disk) keeps its
/// cluster id and hands out the old revision numbers again for other changes. A watch resuming
/// from a revision above the server's current one is caught by its header; but once new writes
/// have carried the server past it, only the history itself can tell: the same revision must
/// show the same thing. So a resume first reads, at its revision, what was seen there: the
/// listing's prefix (how many keys, the newest modification) or the event's key (its create
/// revision, version and lease). A difference means the history was replaced: `Compacted`, re-list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Witness {
    Listing {
        count: i64,
        newest: i64,
    },
    Key {
        key: Vec<u8>,
        create: i64,
        version: i64,
        /// Its lease: a key written again after a restore, at the same revision by the same
        /// process, is written under the new lease that process had to take.
        lease: i64,
    },
    /// A key deleted at the revision: absent there, present just before.
    Gone {
        key: Vec<u8>,
    },
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("namespace", &self.inner.prefix.trim_end_matches('/'))
            .finish()
    }
}

/// Whether the request failed before reaching any server (connection refused, no route).
fn is_connect_error(e: &etcd_client::Error) -> bool {
    let text = match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
        etcd_client::Error::TransportError(t) => t.to_string(),
        _ => return false,
    };
    let lower = text.to_ascii_lowercase();
    lower.contains("connect error") || lower.contains("connection refused")
}

/// The etcd start revision of a watch delivering what follows `after`. A revision beyond etcd's
/// `i64` range (one the caller made up, or a server's negative revision read as `u64`) waits
/// for the last possible revision instead of overflowing.
fn start_revision(after: Revision) -> i64 {
    i64::try_from(after).map_or(i64::MAX, |a| a.saturating_add(1))
}

fn parse_lease(id: &LeaseId) -> Result<i64> {
    id.as_str()
        .parse()
        .map_err(|_| Error::lease_not_found(format!("{id} is not an etcd lease id")))
}

/// The etcd comparison that holds exactly when `cond` does for the key `full`, or `None` when
/// `cond` can hold for no key (revision 0 or beyond etcd's range, a lease id not of etcd's form).
fn compare(full: &str, cond: &Condition) -> Option<Compare> {
    match cond {
        // A key that never existed, or was deleted, has create revision 0.
        Condition::Absent => Some(Compare::create_revision(full, CompareOp::Equal, 0)),
        // An absent key compares as mod revision 0: revision 0 must not reach etcd.
        Condition::Revision(r) => i64::try_from(*r)
            .ok()
            .filter(|r| *r > 0)
            .map(|r| Compare::mod_revision(full, CompareOp::Equal, r)),
        // An absent key compares as lease 0, a key without a lease too.
        Condition::Lease(l) => parse_lease(l)
            .ok()
            .filter(|id| *id != 0)
            .map(|id| Compare::lease(full, CompareOp::Equal, id)),
        _ => None,
    }
}

impl EtcdBackend {
    /// The backend over a connected `client`, its keys under `namespace`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        endpoints: Vec<String>,
        request_timeout: Duration,
        max_value_len: usize,
    ) -> EtcdBackend {
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}/")
        };
        let caps = Capabilities::default()
            .with_min_ttl(Duration::from_secs(2))
            .with_max_ttl(Duration::from_secs(365 * 86_400))
            .with_ttl_granularity(Duration::from_secs(1))
            .with_expiry_slack(Duration::from_millis(1500))
            .with_max_key_len(1024)
            .with_max_value_len(max_value_len)
            .with_exact_history(true)
            .with_watch_delay(Duration::from_secs(1));
        EtcdBackend {
            inner: Arc::new(Inner {
                client,
                prefix,
                endpoints,
                request_timeout,
                caps,
                keepers: Mutex::new(HashMap::new()),
                witnesses: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Compacts etcd's history up to `revision` (an administrative operation: it affects every user
    /// of the cluster). Watches from before it then fail with `Compacted`.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        self.call("compact", true, |mut c| async move {
            c.compact(
                revision as i64,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        })
        .await
        .map(|_| ())
    }

    /// The etcd client, for administrative calls the contract does not cover.
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    fn strip<'a>(&self, full: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(full)
            .ok()?
            .strip_prefix(self.inner.prefix.as_str())
    }

    /// Runs one request with the request timeout. A request that could not even connect (the
    /// balanced channel picked a dead member) had no effect anywhere, so it is retried, reaching
    /// another endpoint; `idempotent` requests are retried on any unavailability.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let attempt = tokio::time::timeout_at(deadline, op(self.client())).await;
            let err = match attempt {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let never_connected = is_connect_error(&e);
                    let mapped = map(e, what);
                    let retry =
                        never_connected || (idempotent && mapped.kind() == ErrorKind::Unavailable);
                    if !retry || tokio::time::Instant::now() + pause >= deadline {
                        return Err(mapped);
                    }
                    mapped
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "etcd {what}: no answer from {} within {:?}",
                            self.inner.endpoints.join(","),
                            self.inner.request_timeout
                        ),
                    ));
                }
            };
            tracing::debug!(error = %err, "etcd {what}: retrying on another endpoint");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn drop_keeper(&self, id: i64) {
        self.inner
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        let key = self.strip(kv.key())?.to_owned();
        Some(KeyValue {
            key,
            value: Bytes::copy_from_slice(kv.value()),
            revision: kv.mod_revision() as u64,
            lease: (kv.lease() != 0).then(|| LeaseId::new(kv.lease().to_string())),
        })
    }

    /// Runs `op` on `k` in one transaction guarded by `cond`; when the guard fails, the same
    /// transaction reads the key instead, so the answer shows the state the guard was checked on.
    async fn txn_if(
        &self,
        what: &str,
        k: &str,
        cond: &Condition,
        op: TxnOp,
    ) -> Result<CondOutcome> {
        let full = self.full(k);
        let Some(cmp) = compare(&full, cond) else {
            // Nothing can satisfy it: a plain read is the whole answer.
            return Ok(CondOutcome::Failed(self.get(k).await?));
        };
        let txn = Txn::new()
            .when(vec![cmp])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(full, None)]);
        let resp = self
            .call(what, false, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(CondOutcome::Applied(
                resp.header().map_or(0, |h| h.revision() as u64),
            ));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().and_then(|kv| self.kv(kv))),
            _ => None,
        });
        Ok(CondOutcome::Failed(current.flatten()))
    }

    /// One range page: `[start, end)` at `revision` (0 = latest).
    async fn page(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        revision: i64,
    ) -> Result<etcd_client::GetResponse> {
        let mut opts = GetOptions::new().with_range(end).with_limit(LIST_PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        self.call("list", true, |mut c| {
            let (start, opts) = (start.clone(), opts.clone());
            async move { c.get(start, Some(opts)).await }
        })
        .await
    }

    fn witness(&self, prefix: Vec<u8>, rev: Revision, w: Witness) {
        let mut all = self
            .inner
            .witnesses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if all
            .iter()
            .any(|(p, r, known)| *p == prefix && *r == rev && *known == w)
        {
            return;
        }
        if all.len() >= WITNESSES_KEPT {
            all.pop_front();
        }
        all.push_back((prefix, rev, w));
    }

    /// Before a watch of `start..end` resumes from `after`: if this backend handed `after` out,
    /// the server must still show there what it showed then (see [`Witness`]).
    async fn check_witness(&self, start: &[u8], end: &[u8], after: Revision) -> Result<()> {
        let known: Vec<Witness> = self
            .inner
            .witnesses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(p, r, _)| p == start && *r == after)
            .map(|(_, _, w)| w.clone())
            .collect();
        let Ok(at) = i64::try_from(after) else {
            return Ok(());
        };
        for w in known {
            let same = match &w {
                Witness::Listing { count, newest } => {
                    let opts = GetOptions::new()
                        .with_range(end.to_vec())
                        .with_revision(at)
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1)
                        .with_keys_only();
                    let r = self.read_at(start, opts, after).await?;
                    r.count() == *count
                        && r.kvs().first().map_or(0, |kv| kv.mod_revision()) == *newest
                }
                Witness::Key {
                    key,
                    create,
                    version,
                    lease,
                } => {
                    let r = self
                        .read_at(key, GetOptions::new().with_revision(at), after)
                        .await?;
                    r.kvs().first().is_some_and(|kv| {
                        kv.mod_revision() == at
                            && kv.create_revision() == *create
                            && kv.version() == *version
                            && kv.lease() == *lease
                    })
                }
                Witness::Gone { key } => {
                    let gone = self
                        .read_at(key, GetOptions::new().with_revision(at), after)
                        .await?
                        .kvs()
                        .is_empty();
                    gone && at > 1 && {
                        let before = GetOptions::new().with_revision(at - 1);
                        !self.read_at(key, before, after).await?.kvs().is_empty()
                    }
                }
            };
            if !same {
                return Err(replaced(after, "it shows other data than it did"));
            }
        }
        Ok(())
    }

    /// A read at a past revision for [`check_witness`](Self::check_witness).
    async fn read_at(
        &self,
        key: &[u8],
        opts: GetOptions,
        after: Revision,
    ) -> Result<etcd_client::GetResponse> {
        match self
            .call("watch resume check", true, |mut c| {
                let (key, opts) = (key.to_vec(), opts.clone());
                async move { c.get(key, Some(opts)).await }
            })
            .await
        {
            // The server is below `after` now: its history went back.
            Err(e) if e.to_string().contains("future revision") => {
                Err(replaced(after, "the server's revision is below it"))
            }
            r => r,
        }
    }
}

/// `Compacted` for a watch whose resume revision now means something else on the server.
fn replaced(after: Revision, why: &str) -> Error {
    tracing::warn!(
        revision = after,
        why,
        "etcd's history was replaced (restored from an older copy of its data?); listing again"
    );
    Error::compacted(after.saturating_add(1)).context(format!(
        "etcd no longer holds the history this watch resumes from (revision {after}: {why})"
    ))
}

#[async_trait]
impl Backend for EtcdBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        let caps = &self.inner.caps;
        let granted = caps.check_ttl(ttl)?;
        let secs = granted.as_secs() as i64;
        let resp = self
            .call("lease grant", false, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(Lease {
            id: LeaseId::new(resp.id().to_string()),
            ttl: clamp_duration(Duration::from_secs(resp.ttl().max(secs) as u64)),
        })
    }

    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        let id = parse_lease(lease)?;
        let existing = self
            .inner
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        let keeper = match existing {
            Some(k) => k,
            None => {
                let pair = self
                    .call("lease keep-alive", true, |mut c| async move {
                        c.lease_keep_alive(id).await
                    })
                    .await?;
                let k = Arc::new(tokio::sync::Mutex::new(pair));
                self.inner
                    .keepers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, k.clone());
                k
            }
        };
        let result = {
            let mut guard = keeper.lock().await;
            let (ka, stream) = &mut *guard;
            match tokio::time::timeout(self.inner.request_timeout, async {
                ka.keep_alive().await?;
                stream.message().await
            })
            .await
            {
                Ok(r) => r.map_err(|e| map(e, "lease keep-alive")),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "etcd lease keep-alive: no answer within {:?}",
                        self.inner.request_timeout
                    ),
                )),
            }
        };
        match result {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                Ok(clamp_duration(Duration::from_secs(resp.ttl() as u64)))
            }
            Ok(Some(_)) => {
                self.drop_keeper(id);
                Err(Error::lease_not_found(format!(
                    "etcd lease {id} has expired or was revoked"
                )))
            }
            Ok(None) => {
                self.drop_keeper(id);
                Err(Error::unavailable("etcd closed the keep-alive stream"))
            }
            Err(e) => {
                // The stream may be broken; open a fresh one next time.
                self.drop_keeper(id);
                Err(e)
            }
        }
    }

    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        let id = parse_lease(lease)?;
        self.drop_keeper(id);
        self.call("lease revoke", false, |mut c| async move {
            c.lease_revoke(id).await
        })
        .await
        .map(|_| ())
    }

    async fn put(&self, k: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let opts = match lease {
            Some(l) => Some(PutOptions::new().with_lease(parse_lease(l)?)),
            None => None,
        };
        let full = self.full(k);
        let resp = self
            .call("put", false, |mut c| {
                let (full, value, opts) = (full.clone(), value.to_vec(), opts.clone());
                async move { c.put(full, value, opts).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision() as u64))
    }

    async fn delete(&self, k: &str) -> Result<Option<Revision>> {
        key::validate_key(k, &self.inner.caps)?;
        let full = self.full(k);
        let resp = self
            .call("delete", false, |mut c| {
                let full = full.clone();
                async move { c.delete(full, None).await }
            })
            .await?;
        Ok((resp.deleted() > 0).then(|| resp.header().map_or(0, |h| h.revision() as u64)))
    }

    async fn put_if(
        &self,
        k: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let opts = match lease {
            Some(l) => Some(PutOptions::new().with_lease(parse_lease(l)?)),
            None => None,
        };
        // etcd checks the lease only on the branch it runs: a failed guard is `Failed` even when
        // the lease has ended, as the contract says.
        let op = TxnOp::put(self.full(k), value.to_vec(), opts);
        self.txn_if("conditional put", k, &cond, op).await
    }

    async fn delete_if(&self, k: &str, cond: Condition) -> Result<CondOutcome> {
        key::validate_key(k, &self.inner.caps)?;
        let op = TxnOp::delete(self.full(k), None);
        self.txn_if("conditional delete", k, &cond, op).await
    }

    async fn get(&self, k: &str) -> Result<Option<KeyValue>> {
        key::validate_key(k, &self.inner.caps)?;
        let full = self.full(k);
        let resp = self
            .call("get", true, |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.kv(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let start = self.full(&key::normalize_prefix(prefix)).into_bytes();
        // An empty start with the end "\0" is etcd's "every key".
        let end = key::prefix_range_end(&start).unwrap_or_else(|| vec![0]);
        let start = if start.is_empty() { vec![0] } else { start };
        let first = self.page(start.clone(), end.clone(), 0).await?;
        let revision = first.header().map_or(0, |h| h.revision());
        let count = first.count();
        let mut newest = first.kvs().iter().map(|kv| kv.mod_revision()).max();
        let mut entries: Vec<KeyValue> = first.kvs().iter().filter_map(|kv| self.kv(kv)).collect();
        let mut more = first.more();
        let mut last = first.kvs().last().map(|kv| kv.key().to_vec());
        // Later pages read the same revision: the listing stays one consistent snapshot.
        while more {
            let Some(mut from) = last.take() else { break };
            from.push(0);
            let page = self.page(from, end.clone(), revision).await?;
            entries.extend(page.kvs().iter().filter_map(|kv| self.kv(kv)));
            newest = newest.max(page.kvs().iter().map(|kv| kv.mod_revision()).max());
            more = page.more();
            last = page.kvs().last().map(|kv| kv.key().to_vec());
        }
        self.witness(
            start,
            revision as u64,
            Witness::Listing {
                count,
                newest: newest.unwrap_or(0),
            },
        );
        Ok(Listing {
            entries,
            revision: revision as u64,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let start = self.full(&key::normalize_prefix(prefix)).into_bytes();
        let end = key::prefix_range_end(&start).unwrap_or_else(|| vec![0]);
        let start = if start.is_empty() { vec![0] } else { start };
        if after > 0 {
            self.check_witness(&start, &end, after).await?;
        }
        let witness_prefix = start.clone();
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(start_revision(after))
            .with_progress_notify();
        let stream = self
            .call("watch", true, |mut c| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { c.watch(start, Some(opts)).await }
            })
            .await?;
        let state = WatchState {
            backend: self.clone(),
            stream,
            buffer: VecDeque::new(),
            done: false,
            floor: after,
            prefix: witness_prefix,
            delivered: None,
        };
        Ok(Box::pin(stream::unfold(state, WatchState::next)))
    }
}

struct WatchState {
    backend: EtcdBackend,
    stream: etcd_client::WatchStream,
    buffer: VecDeque<(Event, Witness)>,
    done: bool,
    /// The highest revision this watch knows the server reached (where it started, then each
    /// event's). A response whose header is below it comes from a server whose history went
    /// back: restored from a snapshot or a copy of its data directory.
    floor: Revision,
    /// The watched range's start, and the last event handed out with its witness: recorded in
    /// the backend when the watch ends, for the watch that resumes from there.
    prefix: Vec<u8>,
    delivered: Option<(Revision, Witness)>,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        if let Some((rev, w)) = self.delivered.take() {
            self.backend
                .witness(std::mem::take(&mut self.prefix), rev, w);
        }
    }
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Event>, WatchState)> {
        loop {
            if let Some((ev, w)) = self.buffer.pop_front() {
                self.delivered = Some((ev.revision, w));
                return Some((Ok(ev), self));
            }
            if self.done {
                return None;
            }
            let failure = match self.stream.next().await {
                None => Error::unavailable("etcd closed the watch stream"),
                Some(Err(e)) => map(e, "watch"),
                Some(Ok(resp)) => {
                    let now = resp.header().map_or(0, |h| h.revision() as u64);
                    if resp.compact_revision() > 0 {
                        Error::compacted(resp.compact_revision() as u64)
                    } else if now > 0 && now < self.floor {
                        tracing::warn!(
                            seen = self.floor,
                            now,
                            "etcd's revision went backwards (restored from an older snapshot?); its history is gone"
                        );
                        Error::compacted(now.saturating_add(1)).context(format!(
                            "etcd's revision went back from {} to {now}",
                            self.floor
                        ))
                    } else if resp.canceled() {
                        Error::unavailable(format!(
                            "etcd canceled the watch: {}",
                            resp.cancel_reason()
                        ))
                    } else {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let Some(key) = self.backend.strip(kv.key()) else {
                                continue;
                            };
                            let rev = kv.mod_revision() as u64;
                            self.floor = self.floor.max(rev);
                            let witness = match ev.event_type() {
                                EventType::Put => Witness::Key {
                                    key: kv.key().to_vec(),
                                    create: kv.create_revision(),
                                    version: kv.version(),
                                    lease: kv.lease(),
                                },
                                EventType::Delete => Witness::Gone {
                                    key: kv.key().to_vec(),
                                },
                            };
                            let event = match ev.event_type() {
                                EventType::Put => {
                                    Event::put(key, Bytes::copy_from_slice(kv.value()), rev)
                                }
                                EventType::Delete => Event::delete(key, rev),
                            };
                            self.buffer.push_back((event, witness));
                        }
                        continue;
                    }
                }
            };
            self.done = true;
            return Some((Err(failure), self));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `after as i64 + 1` overflowed (a panic in debug builds) for revisions from `i64::MAX` up.
    #[test]
    fn watch_start_revision_never_overflows() {
        assert_eq!(start_revision(0), 1);
        assert_eq!(start_revision(41), 42);
        assert_eq!(start_revision(i64::MAX as u64), i64::MAX);
        assert_eq!(start_revision(u64::MAX), i64::MAX);
    }
}
