//! [`ConsulBackend`]: leases are sessions (`Behavior=delete`), keys attached to a lease are locked by
//! its session, watches are rate-limited blocking queries diffed into per-key events.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use registry_core::config::check_duration;
use registry_core::watch;
use registry_core::{
    Backend, Capabilities, CondOutcome, Condition, Error, ErrorKind, Event, KeyValue, Lease,
    LeaseId, Listing, Result, Revision, WatchStream, key,
};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::ConsulBuilder;
use crate::http::{Answer, Http};
use crate::keys;

mod cond;

/// One key's state in a snapshot of a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    modify_index: u64,
    value: Bytes,
    session: Option<String>,
}

/// A prefix's full state at one index, keyed by our (decoded) keys.
type Snapshot = Arc<BTreeMap<String, Entry>>;

/// Recently seen snapshots, so that a watch can start from a revision this process listed or
/// delivered: Consul keeps no history, so a diff needs the state at the starting revision.
#[derive(Default)]
struct Snapshots {
    recent: VecDeque<(String, Revision, Snapshot)>,
}

const SNAPSHOTS_KEPT: usize = 64;

impl Snapshots {
    fn insert(&mut self, prefix: &str, rev: Revision, snap: Snapshot) {
        if self.recent.iter().any(|(p, r, _)| p == prefix && *r == rev) {
            return;
        }
        if self.recent.len() >= SNAPSHOTS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((prefix.to_owned(), rev, snap));
    }

    /// The state of `prefix` at `rev`, from a snapshot of it or of any directory above it.
    fn get(&self, prefix: &str, rev: Revision) -> Option<Snapshot> {
        let (p, _, snap) = self
            .recent
            .iter()
            .rev()
            .find(|(p, r, _)| *r == rev && prefix.starts_with(p.as_str()))?;
        if p == prefix {
            return Some(snap.clone());
        }
        Some(Arc::new(
            snap.iter()
                .filter(|(k, _)| key::key_matches(prefix, k))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        ))
    }
}

/// A Consul backend. Cheap to clone; clones share the HTTP client.
#[derive(Clone)]
pub struct ConsulBackend {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    /// The encoded namespace, ending in `/`.
    root: String,
    namespace: String,
    request_timeout: Duration,
    watch_wait: Duration,
    min_poll_interval: Duration,
    caps: Capabilities,
    snapshots: Mutex<Snapshots>,
}

impl fmt::Debug for ConsulBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulBackend")
            .field("address", &self.inner.http.address)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEntry {
    key: String,
    value: Option<String>,
    modify_index: u64,
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<RawEntry>,
}

/// The error of a transaction Consul refused: `PermissionDenied` when an ACL said no.
fn txn_failure(what: &str, errs: &[String]) -> Error {
    let text = errs.join("; ");
    let kind = if errs
        .iter()
        .any(|e| e.to_ascii_lowercase().contains("permission denied"))
    {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, format!("consul {what} transaction failed: {text}"))
}

fn session_id(lease: &LeaseId) -> Result<&str> {
    let id = lease.as_str();
    let ok = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(Error::lease_not_found(format!(
            "{id} is not a Consul session id"
        )))
    }
}

/// A session TTL as the server returns it (`15s`; also `500ms`, `2m`, ...), at most
/// [`MAX_DURATION`](registry_core::config::MAX_DURATION). `None` for anything else, including
/// negative, `NaN` and huge values.
fn parse_ttl(s: &str) -> Option<Duration> {
    registry_core::config::parse_duration(s)
}

impl ConsulBuilder {
    /// Connects, checking that the agent answers and accepts the token.
    pub async fn connect(self) -> Result<ConsulBackend> {
        ConsulBackend::connect(self).await
    }
}

impl ConsulBackend {
    /// A builder with defaults (`127.0.0.1:8500`).
    pub fn builder() -> ConsulBuilder {
        ConsulBuilder::new()
    }

    pub(crate) async fn connect(b: ConsulBuilder) -> Result<ConsulBackend> {
        // Positive and bounded: a zero poll interval would let a watch spin, and deadlines (sums
        // of these) must not overflow.
        check_duration("Consul request timeout", b.request_timeout)?;
        check_duration("Consul blocking query wait", b.watch_wait)?;
        check_duration("Consul minimum poll interval", b.min_poll_interval)?;
        let http = b.http()?;
        let caps = Capabilities::default()
            .with_min_ttl(Duration::from_secs(10))
            .with_max_ttl(Duration::from_secs(86_400))
            .with_ttl_granularity(Duration::from_secs(1))
            // Consul invalidates a session up to twice its TTL after the last renewal.
            .with_expiry_slack(Duration::from_secs(2))
            .with_expiry_slack_ttl_percent(100)
            .with_max_key_len(512)
            // Values travel base64-encoded inside a transaction limited to 512 KiB.
            .with_max_value_len(256 * 1024)
            .with_exact_history(false)
            .with_watch_delay(Duration::from_secs(1) + b.min_poll_interval);
        let backend = ConsulBackend {
            inner: Arc::new(Inner {
                http,
                root: keys::encode_prefix(&format!("{}/", b.namespace)),
                namespace: b.namespace.clone(),
                request_timeout: b.request_timeout,
                watch_wait: b.watch_wait,
                min_poll_interval: b.min_poll_interval,
                caps,
                snapshots: Mutex::new(Snapshots::default()),
            }),
        };
        // Fail now when nothing answers or the token is refused.
        backend.list("").await.map_err(|e| {
            e.context(format!(
                "cannot use Consul at {}",
                backend.inner.http.address
            ))
        })?;
        Ok(backend)
    }

    fn enc(&self, k: &str) -> String {
        format!("{}{}", self.inner.root, keys::encode(k))
    }

    fn enc_prefix(&self, normalized: &str) -> String {
        if normalized.is_empty() {
            self.inner.root.clone()
        } else {
            format!("{}{}", self.inner.root, keys::encode_prefix(normalized))
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer> {
        self.inner
            .http
            .call(method, path, query, body, self.inner.request_timeout)
            .await
    }

    fn decode_entry(&self, raw: RawEntry) -> Option<(String, Entry)> {
        let key = keys::decode(raw.key.strip_prefix(&self.inner.root)?)?;
        let value = match raw.value {
            Some(v) => Bytes::from(B64.decode(v).ok()?),
            None => Bytes::new(),
        };
        Some((
            key,
            Entry {
                modify_index: raw.modify_index,
                value,
                session: raw.session.filter(|s| !s.is_empty()),
            },
        ))
    }

    /// The state of a (normalized) prefix: a plain read, or a blocking query waiting for a change
    /// after `index`.
    async fn fetch(&self, prefix: &str, blocking: Option<u64>) -> Result<(u64, Snapshot)> {
        let path = format!("/v1/kv/{}", self.enc_prefix(prefix));
        let (query, timeout) = match blocking {
            Some(i) => (
                format!(
                    "recurse=true&index={i}&wait={}s",
                    self.inner.watch_wait.as_secs().max(1)
                ),
                self.inner.watch_wait + self.inner.watch_wait / 16 + self.inner.request_timeout,
            ),
            None => ("recurse=true".to_owned(), self.inner.request_timeout),
        };
        let a = self
            .inner
            .http
            .call(Method::GET, &path, &query, None, timeout)
            .await?;
        let index = a.index.unwrap_or(0);
        let mut snap = BTreeMap::new();
        match a.status {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK => {
                let raw: Vec<RawEntry> = serde_json::from_slice(&a.body).map_err(|e| {
                    Error::new(ErrorKind::Internal, "consul: unreadable KV listing").with_source(e)
                })?;
                for r in raw {
                    if let Some((k, e)) = self.decode_entry(r)
                        && key::key_matches(prefix, &k)
                    {
                        snap.insert(k, e);
                    }
                }
            }
            s => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("consul KV read: {s} {}", a.text()),
                ));
            }
        }
        if snap.is_empty() {
            // Consul filters a recursive read by the token's ACLs without saying so: a token that
            // may not read the prefix sees it empty. An empty answer is only believed when a plain
            // read of the prefix itself is not refused (that one answers 403, which the HTTP layer
            // turns into PermissionDenied); otherwise a directory would go empty instead of stale.
            self.call(Method::GET, &path, "", None).await?;
        }
        Ok((index, Arc::new(snap)))
    }

    fn remember(&self, prefix: &str, rev: Revision, snap: &Snapshot) {
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prefix, rev, snap.clone());
    }

    fn recall(&self, prefix: &str, rev: Revision) -> Option<Snapshot> {
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix, rev)
    }

    /// Runs a transaction; `Err` inside (each error's text) when Consul rolled it back.
    async fn txn(
        &self,
        ops: serde_json::Value,
    ) -> Result<std::result::Result<Vec<TxnResult>, Vec<String>>> {
        let ops = match ops {
            serde_json::Value::Array(ops) => ops,
            op => vec![op],
        };
        Ok(self
            .txn_indexed(ops)
            .await?
            .map_err(|errs| errs.into_iter().map(|(_, what)| what).collect()))
    }

    /// Whether the session lives. `false` only on Consul's definite answer that it does not (a
    /// 200 with an empty list, or `null`): any other answer (a 429 under load, a proxy's error
    /// page, an unreadable body) is `Unavailable` with the status, so that a live session is never
    /// reported gone (a revoke would then count as done while its keys stay up to 2 x TTL). The
    /// message holds the status, never the body (which an intermediary could fill with anything,
    /// a token included).
    async fn session_exists(&self, id: &str) -> Result<bool> {
        let a = self
            .call(Method::GET, &format!("/v1/session/info/{id}"), "", None)
            .await?;
        let unknown = |why: String| {
            Error::unavailable(format!(
                "consul session info {id}: {why}; whether the session lives is unknown (try again)"
            ))
        };
        if a.status != StatusCode::OK {
            return Err(unknown(format!("answered {}", a.status)));
        }
        match serde_json::from_slice::<serde_json::Value>(&a.body) {
            Ok(serde_json::Value::Null) => Ok(false),
            Ok(serde_json::Value::Array(sessions)) => Ok(!sessions.is_empty()),
            Ok(_) => Err(unknown("200 with an answer that is not a list".to_owned())),
            Err(e) => Err(unknown(format!("200 with an unreadable answer ({e})"))),
        }
    }
}

#[async_trait]
impl Backend for ConsulBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        let caps = &self.inner.caps;
        let granted = caps.check_ttl(ttl)?;
        // LockDelay 0: a registration must be able to take its key again at once after its old
        // session ended. No health checks ("Checks": [], and the 1.7+ NodeChecks): a session
        // created without them gets the node's serfHealth check, and an agent whose gossip flaps
        // would then delete every healthy registration on it. The TTL alone says whether the
        // process lives.
        let body = json!({
            "Name": "service-registry",
            "TTL": format!("{}s", granted.as_secs()),
            "Behavior": "delete",
            "LockDelay": "0s",
            "Checks": [],
            "NodeChecks": [],
        });
        let a = self
            .call(
                Method::PUT,
                "/v1/session/create",
                "",
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if a.status != StatusCode::OK {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("consul session create: {} {}", a.status, a.text()),
            ));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let c: Created = serde_json::from_slice(&a.body).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                "consul session create: unreadable answer",
            )
            .with_source(e)
        })?;
        Ok(Lease {
            id: LeaseId::new(c.id),
            ttl: granted,
        })
    }

    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        let id = session_id(lease)?;
        let a = self
            .call(Method::PUT, &format!("/v1/session/renew/{id}"), "", None)
            .await?;
        match a.status {
            StatusCode::OK => {
                #[derive(Deserialize)]
                struct S {
                    #[serde(rename = "TTL")]
                    ttl: String,
                }
                let s: Vec<S> = serde_json::from_slice(&a.body).unwrap_or_default();
                let ttl = s.first().and_then(|s| parse_ttl(&s.ttl)).ok_or_else(|| {
                    Error::new(ErrorKind::Internal, "consul session renew: no TTL")
                })?;
                Ok(ttl)
            }
            StatusCode::NOT_FOUND => Err(Error::lease_not_found(format!(
                "consul session {id} has expired or was destroyed"
            ))),
            s => Err(Error::new(
                ErrorKind::Internal,
                format!("consul session renew: {s} {}", a.text()),
            )),
        }
    }

    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        let id = session_id(lease)?;
        if !self.session_exists(id).await? {
            return Err(Error::lease_not_found(format!(
                "consul session {id} has expired or was destroyed"
            )));
        }
        let a = self
            .call(Method::PUT, &format!("/v1/session/destroy/{id}"), "", None)
            .await?;
        if a.status != StatusCode::OK {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("consul session destroy: {} {}", a.status, a.text()),
            ));
        }
        Ok(())
    }

    async fn put(&self, k: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let session = lease.map(session_id).transpose()?;
        let ck = self.enc(k);
        let v = B64.encode(&value);
        // A key held by another session must be unlocked by that session first; it may change
        // between our read and the transaction, which then fails as a whole: read again.
        for _ in 0..8 {
            let holder = self
                .get(k)
                .await?
                .and_then(|kv| kv.lease)
                .map(|l| l.as_str().to_owned());
            let mut ops = Vec::new();
            if let Some(h) = holder.as_deref().filter(|h| Some(*h) != session) {
                ops.push(json!({"KV": {"Verb": "unlock", "Key": ck, "Value": v, "Session": h}}));
            }
            ops.push(match session {
                Some(s) => json!({"KV": {"Verb": "lock", "Key": ck, "Value": v, "Session": s}}),
                None => json!({"KV": {"Verb": "set", "Key": ck, "Value": v}}),
            });
            match self.txn(serde_json::Value::Array(ops)).await? {
                Ok(results) => {
                    return results
                        .iter()
                        .rev()
                        .find_map(|r| r.kv.as_ref().map(|kv| kv.modify_index))
                        .ok_or_else(|| {
                            Error::new(ErrorKind::Internal, "consul txn: no index in the answer")
                        });
                }
                Err(whats) => {
                    let all = whats.join("; ");
                    let lower = all.to_ascii_lowercase();
                    if session.is_some()
                        && lower.contains("session")
                        && !self.session_exists(session.unwrap_or_default()).await?
                    {
                        return Err(Error::lease_not_found(format!("consul put {k}: {all}")));
                    }
                    if lower.contains("permission denied") {
                        return Err(txn_failure(&format!("put {k}"), &whats));
                    }
                    if lower.contains("lock") || lower.contains("session") {
                        continue;
                    }
                    return Err(txn_failure(&format!("put {k}"), &whats));
                }
            }
        }
        Err(Error::unavailable(format!(
            "consul put {k}: the key's lock kept changing hands; try again"
        )))
    }

    async fn delete(&self, k: &str) -> Result<Option<Revision>> {
        key::validate_key(k, &self.inner.caps)?;
        let ck = self.enc(k);
        // Atomically: fail if absent, else delete (locked or not).
        let ops = json!([
            {"KV": {"Verb": "get", "Key": ck}},
            {"KV": {"Verb": "delete", "Key": ck}},
        ]);
        match self.txn(ops).await? {
            // The get failed: the key is absent. Any other failure (permissions, a server
            // error) is not "no such key".
            Err(errs)
                if errs
                    .iter()
                    .all(|e| e.contains("doesn't exist") || e.contains("does not exist")) =>
            {
                Ok(None)
            }
            Err(errs) => Err(txn_failure("delete", &errs)),
            Ok(_) => {
                // Consul does not say at which index the delete happened; the key's own prefix
                // index covers its tombstone and no later change outside it.
                let a = self
                    .call(Method::GET, &format!("/v1/kv/{ck}"), "keys=true", None)
                    .await?;
                Ok(Some(a.index.unwrap_or(0)))
            }
        }
    }

    async fn put_if(
        &self,
        k: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        self.put_if_txn(k, value, lease, cond).await
    }

    async fn delete_if(&self, k: &str, cond: Condition) -> Result<CondOutcome> {
        self.delete_if_txn(k, cond).await
    }

    async fn get(&self, k: &str) -> Result<Option<KeyValue>> {
        key::validate_key(k, &self.inner.caps)?;
        let a = self
            .call(Method::GET, &format!("/v1/kv/{}", self.enc(k)), "", None)
            .await?;
        match a.status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let raw: Vec<RawEntry> = serde_json::from_slice(&a.body).map_err(|e| {
                    Error::new(ErrorKind::Internal, "consul: unreadable KV entry").with_source(e)
                })?;
                Ok(raw
                    .into_iter()
                    .filter_map(|r| self.decode_entry(r))
                    .find(|(key, _)| key == k)
                    .map(|(key, e)| KeyValue {
                        key,
                        value: e.value,
                        revision: e.modify_index,
                        lease: e.session.map(LeaseId::new),
                    }))
            }
            s => Err(Error::new(
                ErrorKind::Internal,
                format!("consul KV get: {s} {}", a.text()),
            )),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let p = key::normalize_prefix(prefix).into_owned();
        let (index, snap) = self.fetch(&p, None).await?;
        self.remember(&p, index, &snap);
        Ok(Listing {
            entries: snap
                .iter()
                .map(|(k, e)| KeyValue {
                    key: k.clone(),
                    value: e.value.clone(),
                    revision: e.modify_index,
                    lease: e.session.clone().map(LeaseId::new),
                })
                .collect(),
            revision: index,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let p = key::normalize_prefix(prefix).into_owned();
        let base = if after == 0 {
            Arc::new(BTreeMap::new())
        } else if let Some(s) = self.recall(&p, after) {
            s
        } else {
            // No snapshot at `after`: usable only if nothing changed under the prefix since.
            let (index, snap) = self.fetch(&p, None).await?;
            if index != after {
                return Err(Error::compacted(index.max(1)));
            }
            snap
        };
        let state = Poller {
            backend: self.clone(),
            prefix: p,
            base,
            index: after,
            last_emitted: after,
            last_poll: None,
        };
        Ok(watch::batched(state))
    }
}

/// One watch: blocking queries on the prefix from the last index, each answer diffed against the
/// previous state into put and delete events.
struct Poller {
    backend: ConsulBackend,
    prefix: String,
    base: Snapshot,
    /// The index for the next blocking query.
    index: u64,
    last_emitted: Revision,
    last_poll: Option<Instant>,
}

#[async_trait]
impl watch::EventBatches for Poller {
    async fn read(&mut self, out: &mut VecDeque<Event>) -> Result<()> {
        // Rate limit: a flapping key or an index that keeps moving never makes the loop spin.
        if let Some(at) = self.last_poll {
            tokio::time::sleep_until(at + self.backend.inner.min_poll_interval).await;
        }
        self.last_poll = Some(Instant::now());
        let (index, snap) = self.backend.fetch(&self.prefix, Some(self.index)).await?;
        if index < self.last_emitted {
            // The index went below what we delivered: the server's history restarted (a restored
            // snapshot, a new cluster) or its tombstones were reaped. Revisions we handed out may
            // now mean other states: only a fresh listing is meaningful.
            return Err(Error::compacted(index.max(1)));
        }
        let mut puts: Vec<(u64, String, Bytes)> = Vec::new();
        for (k, e) in snap.iter() {
            if self
                .base
                .get(k)
                .is_none_or(|old| old.modify_index != e.modify_index)
            {
                puts.push((e.modify_index, k.clone(), e.value.clone()));
            }
        }
        puts.sort();
        if puts
            .first()
            .is_some_and(|(m, _, _)| *m <= self.last_emitted)
        {
            // Indexes older than what we delivered: the server's history restarted.
            return Err(Error::compacted(index.max(1)));
        }
        let deleted: Vec<String> = self
            .base
            .keys()
            .filter(|k| !snap.contains_key(*k))
            .cloned()
            .collect();
        // Consul does not say when a key vanished, only that it did after the previous answer:
        // deletes come first, just after what was delivered (so a reader that stops at a put of
        // this answer has seen every delete that may have preceded it), then the puts at their
        // own indexes.
        let mut last = self.last_emitted;
        if !deleted.is_empty() {
            last = last.saturating_add(1);
            for k in deleted {
                out.push_back(Event::delete(k, last));
            }
        }
        for (m, k, v) in puts {
            out.push_back(Event::put(k, v, m));
            last = last.max(m);
        }
        self.last_emitted = last;
        self.index = index;
        self.base = snap;
        // A later watch may resume from this answer's index: remember the state there. Only
        // there: the state after this answer is the state at its index, but not at its last
        // put's index when a delete came after that put, nor at the deletes' made-up revision; a
        // reader that listed at such a revision would be diffed against a state it never had
        // and miss a delete for good. Resuming elsewhere costs a listing (`Compacted`).
        self.backend.remember(&self.prefix, index, &self.base);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_core::config::MAX_DURATION;

    /// A TTL string from the server went through `Duration::from_secs_f64` (which panics on
    /// negative, NaN and huge values) or `m * 60` (which overflows).
    #[test]
    fn session_ttls_from_the_server_never_panic() {
        assert_eq!(parse_ttl("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_ttl("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ttl("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_ttl("2m"), Some(Duration::from_secs(120)));
        for hostile in [
            "1e300s",
            "-1s",
            "NaNs",
            "infs",
            "307445734561825861m",
            "18446744073709551615m",
            "",
            "s",
            "fifteen seconds",
        ] {
            assert_eq!(parse_ttl(hostile), None, "{hostile}");
        }
        assert_eq!(parse_ttl("315360000s"), Some(MAX_DURATION));
    }

    /// `Duration::MAX` timeouts panicked in deadline arithmetic, and a zero minimum poll interval
    /// let a watch spin.
    #[tokio::test]
    async fn out_of_range_durations_are_refused_before_connecting() {
        for (b, what) in [
            (
                ConsulBuilder::new().request_timeout(Duration::MAX),
                "request timeout",
            ),
            (
                ConsulBuilder::new().request_timeout(Duration::ZERO),
                "request timeout",
            ),
            (ConsulBuilder::new().watch_wait(Duration::MAX), "wait"),
            (
                ConsulBuilder::new().min_poll_interval(Duration::ZERO),
                "poll interval",
            ),
            (
                ConsulBuilder::new().min_poll_interval(Duration::MAX),
                "poll interval",
            ),
        ] {
            let e = b.connect().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().contains(what), "{what}: {e}");
        }
    }
}
