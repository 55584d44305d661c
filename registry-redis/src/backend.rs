//! [`RedisBackend`]: the backend contract over Redis, correct without keyspace notifications.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Script, Value};
use registry_core::config::clamp_duration;
use registry_core::watch;
use registry_core::{
    Backend, Capabilities, CondOutcome, CondPut, Condition, Error, ErrorKind, Event, KeyValue,
    Lease, LeaseId, Listing, Result, Revision, WatchStream, key,
};

use crate::error::map;
use crate::scripts;

/// Local revisions occupy the low 30 bits of a [`Revision`]; the namespace's epoch (tenths of a
/// second since 2023-11-14, 34 bits) the rest, so a server that lost its data (and started a new,
/// later epoch) never reuses an old revision.
const EPOCH_SHIFT: u32 = 30;
const LOCAL_MASK: u64 = (1 << EPOCH_SHIFT) - 1;

fn compose(epoch: u64, local: u64) -> Revision {
    (epoch << EPOCH_SHIFT) | (local & LOCAL_MASK)
}

fn decompose(rev: Revision) -> (u64, u64) {
    (rev >> EPOCH_SHIFT, rev & LOCAL_MASK)
}

/// How long one blocking stream read waits before the watch checks that the server is still the
/// same (a new epoch means history is gone).
const BLOCK_MS: usize = 2000;
/// Stream entries read per round trip.
const READ_COUNT: usize = 512;
/// The most conditional puts one [`scripts::PUT_IF_MANY`] call carries. A script holds the
/// server for its whole run (every other client waits), and each write costs it about 10 us: 128
/// keep that near a millisecond while paying the script's prologue (about 10 us: the server's
/// time, the restart check, the reaper) once for all of them instead of once each.
const BATCH_WRITES: usize = 128;

struct Scripts {
    grant: Script,
    keep_alive: Script,
    revoke: Script,
    put: Script,
    delete: Script,
    put_if: Script,
    put_if_many: Script,
    delete_if: Script,
    get: Script,
    list: Script,
    watch_start: Script,
    reap: Script,
    compact: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body| Script::new(&scripts::source(body));
        Scripts {
            grant: s(scripts::GRANT),
            keep_alive: s(scripts::KEEP_ALIVE),
            revoke: s(scripts::REVOKE),
            put: s(scripts::PUT),
            delete: s(scripts::DELETE),
            put_if: Script::new(&scripts::conditional_source(scripts::PUT_IF)),
            put_if_many: Script::new(&scripts::conditional_source(scripts::PUT_IF_MANY)),
            delete_if: Script::new(&scripts::conditional_source(scripts::DELETE_IF)),
            get: s(scripts::GET),
            list: s(scripts::LIST),
            watch_start: s(scripts::WATCH_START),
            reap: s(scripts::REAP),
            compact: s(scripts::COMPACT),
        }
    }
}

/// A Redis backend. Cheap to clone; clones share the connection and the reaper.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server written to: swapped when Sentinel names another master.
    link: ArcSwap<Link>,
    /// Under Sentinel: how the master is found again.
    follow: Option<Follow>,
    /// The script KEYS, all under the namespace's hash tag.
    keys: [String; 9],
    /// `{ns}:`, the prefix of derived keys.
    base: String,
    namespace: String,
    stream_max_len: usize,
    request_timeout: Duration,
    caps: Capabilities,
    scripts: Scripts,
    /// The expiry reaper, aborted with the last clone (a `JoinSet` aborts its tasks when dropped).
    reaper: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("address", &self.inner.link.load().address)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

/// The server a backend talks to: a client of it (for watch connections), the shared
/// connection, and its `host:port`.
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) address: String,
}

/// Under Sentinel: the sentinels' client, and how to connect to a master they name.
pub(crate) struct Follow {
    pub(crate) sentinel: tokio::sync::Mutex<SentinelClient>,
    pub(crate) cfg: ConnectionManagerConfig,
    /// For each question to the sentinels and each new connection.
    pub(crate) timeout: Duration,
    /// When the sentinels were last asked.
    pub(crate) asked: std::sync::Mutex<Option<std::time::Instant>>,
    pub(crate) asks: AtomicU64,
    pub(crate) moves: AtomicU64,
}

/// The sentinels are asked at most this often (a failing server fails every call until then).
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Whether an error may mean the server is no longer the master: it cannot be reached, or it
/// says it is a replica (`READONLY`, after a failover demoted it) or has lost its master.
fn may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
            )
        )
}

/// The master the sentinels name now (the redis crate checks that it answers as one), and its
/// `host:port`; `None` if there is no answer within `within`.
pub(crate) async fn ask_master(
    sentinel: &mut SentinelClient,
    within: Duration,
) -> Option<Result<(Client, String)>> {
    let found = tokio::time::timeout(within, sentinel.async_get_client())
        .await
        .ok()?;
    Some(
        found
            .map(|client| {
                let address = client.get_connection_info().addr().to_string();
                (client, address)
            })
            .map_err(|e| map(e, "sentinel")),
    )
}

fn lease_parts(id: &LeaseId) -> Result<(String, String)> {
    id.as_str()
        .split_once('-')
        .filter(|(e, n)| e.parse::<u64>().is_ok() && n.parse::<u64>().is_ok())
        .map(|(e, n)| (e.to_owned(), n.to_owned()))
        .ok_or_else(|| Error::lease_not_found(format!("{id} is not a Redis backend lease id")))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

fn as_array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(Error::new(
            ErrorKind::Internal,
            format!("unexpected script reply {other:?}"),
        )),
    }
}

fn bad_reply(what: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("redis {what}: unexpected script reply"),
    )
}

/// Parses a stream ID `rev-seq`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (r, s) = id.split_once('-')?;
    Some((r.parse().ok()?, s.parse().ok()?))
}

/// A condition as the conditional scripts' ARGV[7..9]: kind, epoch, local revision or lease id.
/// `None` when it can hold for no key (a lease id not of this backend's form, a condition this
/// backend does not know).
fn condition_args(cond: &Condition) -> Option<[String; 3]> {
    match cond {
        Condition::Absent => Some(["absent".into(), String::new(), String::new()]),
        Condition::Revision(r) => {
            let (epoch, local) = decompose(*r);
            Some(["rev".into(), epoch.to_string(), local.to_string()])
        }
        Condition::Lease(l) => {
            let (epoch, id) = lease_parts(l).ok()?;
            Some(["lease".into(), epoch, id])
        }
        _ => None,
    }
}

/// What a backend keeps of its builder's settings.
pub(crate) struct Settings {
    pub(crate) namespace: String,
    pub(crate) stream_max_len: usize,
    pub(crate) reap_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_value_len: usize,
}

impl RedisBackend {
    /// The backend over a connected `link` (under Sentinel, with `follow` to find the master
    /// again): checks that it may run the scripts, reaps once, and starts this client's expiry
    /// reaper (on the current tokio runtime).
    pub(crate) async fn start(
        link: Link,
        follow: Option<Follow>,
        settings: Settings,
    ) -> Result<RedisBackend> {
        let tag = format!("{{{}}}", settings.namespace);
        let base = format!("{tag}:");
        let keys = [
            "rev", "kv", "meta", "idx", "leases", "ttl", "events", "seq", "epoch",
        ]
        .map(|k| format!("{base}{k}"));
        let caps = Capabilities::default()
            .with_min_ttl(Duration::from_millis(100))
            .with_max_ttl(Duration::from_secs(365 * 86_400))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_expiry_slack(settings.reap_interval + Duration::from_millis(400))
            .with_max_key_len(1024)
            .with_max_value_len(settings.max_value_len)
            .with_exact_history(true)
            .with_watch_delay(Duration::from_secs(1))
            .with_batch_writes(BATCH_WRITES);
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                link: ArcSwap::from_pointee(link),
                follow,
                keys,
                base,
                namespace: settings.namespace,
                stream_max_len: settings.stream_max_len,
                request_timeout: settings.request_timeout,
                caps,
                scripts: Scripts::new(),
                reaper: std::sync::Mutex::new(tokio::task::JoinSet::new()),
            }),
        };
        // Fails now on refused credentials or a missing permission, not at the first operation.
        let link = backend.link();
        let mut conn = link.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| map(e, "connect").context(format!("Redis at {}", link.address)))?;
        // Redis Cluster is refused: every key of a namespace shares one hash tag, so one slot, but
        // this client talks to one server and follows no MOVED redirection, and a resharding or a
        // failover inside the cluster would move the slot under it.
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .map_err(|e| map(e, "connect").context(format!("Redis at {}", link.address)))?;
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(Error::invalid(format!(
                "Redis at {} runs as a Redis Cluster node (cluster-enabled yes), which this backend \
                 does not support: use a standalone Redis, or one under Sentinel \
                 (redis+sentinel://sentinel:26379,.../MASTER) for high availability",
                link.address
            )));
        }
        backend
            .run(&backend.inner.scripts.reap, "connect", &[])
            .await
            .map_err(|e| e.context(format!("Redis at {}", link.address)))?;
        backend
            .inner
            .reaper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(reaper(
                Arc::downgrade(&backend.inner),
                settings.reap_interval,
            ));
        Ok(backend)
    }

    /// Runs a script with the namespace's keys and the common arguments followed by `args`.
    async fn run(&self, script: &Script, what: &str, args: &[&[u8]]) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        for k in &self.inner.keys {
            inv.key(k);
        }
        inv.arg(&self.inner.base).arg(self.inner.stream_max_len);
        for a in args {
            inv.arg(*a);
        }
        let link = self.link();
        let mut conn = link.conn.clone();
        let err = match tokio::time::timeout(
            self.inner.request_timeout,
            inv.invoke_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !may_have_moved(&e) => return Err(map(e, what)),
            Ok(Err(e)) => map(e, what),
            Err(_) => Error::new(
                ErrorKind::Timeout,
                format!(
                    "redis {what}: no answer from {} within {:?}",
                    link.address, self.inner.request_timeout
                ),
            ),
        };
        // The server may no longer be the master: under Sentinel, ask which one is. This call
        // fails either way (the engine retries it, as any failed call); the next goes there.
        self.follow_master().await;
        Err(err)
    }

    /// The server written to now.
    fn link(&self) -> Arc<Link> {
        self.inner.link.load_full()
    }

    /// Under Sentinel, asks the sentinels which server is the master (at most every
    /// [`FOLLOW_EVERY`], one question at a time) and, if it is another than the one written to,
    /// connects to it and writes there from now on.
    async fn follow_master(&self) {
        let Some(follow) = &self.inner.follow else {
            return;
        };
        // Someone is asking already: their answer will do.
        let Ok(mut sentinel) = follow.sentinel.try_lock() else {
            return;
        };
        {
            let mut asked = follow.asked.lock().unwrap_or_else(|p| p.into_inner());
            if asked.is_some_and(|t| t.elapsed() < FOLLOW_EVERY) {
                return;
            }
            *asked = Some(std::time::Instant::now());
        }
        follow.asks.fetch_add(1, Ordering::Relaxed);
        let (client, address) = match ask_master(&mut sentinel, follow.timeout).await {
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Redis Sentinel: no master found");
                return;
            }
            None => {
                tracing::warn!(timeout = ?follow.timeout, "Redis Sentinel: no answer from the sentinels");
                return;
            }
        };
        let old = self.link();
        if address == old.address {
            return;
        }
        let conn = match tokio::time::timeout(
            follow.timeout,
            ConnectionManager::new_with_config(client.clone(), follow.cfg.clone()),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(master = %address, error = %map(e, "connect"), "Redis Sentinel: cannot connect to the new master");
                return;
            }
            Err(_) => {
                tracing::warn!(master = %address, "Redis Sentinel: the new master does not answer");
                return;
            }
        };
        tracing::warn!(from = %old.address, to = %address, "Redis Sentinel: the master moved; following it");
        follow.moves.fetch_add(1, Ordering::Relaxed);
        self.inner.link.store(Arc::new(Link {
            client,
            conn,
            address,
        }));
    }

    /// How often this backend asked the sentinels for the master, and how often it moved.
    pub fn sentinel_counts(&self) -> Option<(u64, u64)> {
        let f = self.inner.follow.as_ref()?;
        Some((
            f.asks.load(Ordering::Relaxed),
            f.moves.load(Ordering::Relaxed),
        ))
    }

    /// Runs a script whose reply starts with the epoch; returns the epoch and the rest.
    async fn run_epoch(
        &self,
        script: &Script,
        what: &str,
        args: &[&[u8]],
    ) -> Result<(u64, Vec<Value>)> {
        let mut reply = as_array(self.run(script, what, args).await?)?.into_iter();
        let epoch = reply
            .next()
            .as_ref()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply(what))?;
        Ok((epoch, reply.collect()))
    }

    /// Discards the namespace's history at or below `revision`: a watch from an older revision then
    /// fails with `Compacted`. (The stream is also trimmed to the configured length as it grows.)
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let (epoch, local) = decompose(revision);
        let (e, l) = (epoch.to_string(), local.to_string());
        self.run(
            &self.inner.scripts.compact,
            "compact",
            &[e.as_bytes(), l.as_bytes()],
        )
        .await
        .map(|_| ())
    }

    /// Runs the expiry reaper once, returning how many leases it ended. Every connected backend
    /// also runs it on its own, every reap interval.
    pub async fn reap(&self) -> Result<u64> {
        let (_, rest) = self
            .run_epoch(&self.inner.scripts.reap, "reap", &[])
            .await?;
        Ok(rest.first().and_then(as_u64).unwrap_or(0))
    }

    /// Runs a conditional script (`put_if` or `delete_if`) and reads its outcome.
    async fn run_if(
        &self,
        script: &Script,
        what: &str,
        k: &str,
        value: &[u8],
        lease: Option<&LeaseId>,
        cond: &Condition,
    ) -> Result<CondOutcome> {
        let (le, lid) = match lease {
            Some(l) => lease_parts(l)?,
            None => (String::new(), String::new()),
        };
        let Some([kind, ce, carg]) = condition_args(cond) else {
            return Ok(CondOutcome::Failed(self.get(k).await?));
        };
        let (epoch, rest) = self
            .run_epoch(
                script,
                what,
                &[
                    k.as_bytes(),
                    value,
                    le.as_bytes(),
                    lid.as_bytes(),
                    kind.as_bytes(),
                    ce.as_bytes(),
                    carg.as_bytes(),
                ],
            )
            .await?;
        self.cond_outcome(epoch, k.to_owned(), &rest, what)
    }

    /// A conditional write's outcome as its script answers it after the epoch: `{1, revision}`
    /// applied, `{0}` failed on an absent key, `{0, value, meta}` failed with what the key holds.
    fn cond_outcome(
        &self,
        epoch: u64,
        key: String,
        reply: &[Value],
        what: &str,
    ) -> Result<CondOutcome> {
        match reply {
            [applied, rev] if as_u64(applied) == Some(1) => {
                let rev = as_u64(rev).ok_or_else(|| bad_reply(what))?;
                Ok(CondOutcome::Applied(compose(epoch, rev)))
            }
            [failed] if as_u64(failed) == Some(0) => Ok(CondOutcome::Failed(None)),
            [failed, value, meta] if as_u64(failed) == Some(0) => self
                .kv(epoch, key, value, meta)
                .map(|kv| CondOutcome::Failed(Some(kv)))
                .ok_or_else(|| bad_reply(what)),
            _ => Err(bad_reply(what)),
        }
    }

    /// Up to [`BATCH_WRITES`] conditional puts in one script call (see [`scripts::PUT_IF_MANY`]).
    /// A write whose key, value or lease is refused up front gets its error and is not sent.
    async fn put_if_batch(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        const WHAT: &str = "conditional put batch";
        let mut out: Vec<Option<Result<CondOutcome>>> = Vec::with_capacity(writes.len());
        // The script's arguments: 7 per write sent, and which write each group is.
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(writes.len() * 7);
        let mut sent: Vec<(usize, String)> = Vec::with_capacity(writes.len());
        let mut single = Vec::new();
        for (i, w) in writes.into_iter().enumerate() {
            let parts =
                key::validate_put(&w.key, &w.value, &self.inner.caps).and_then(|()| {
                    match &w.lease {
                        Some(l) => lease_parts(l),
                        None => Ok((String::new(), String::new())),
                    }
                });
            match (parts, condition_args(&w.cond)) {
                (Err(e), _) => out.push(Some(Err(e))),
                // A condition that can hold for no key: answered alone, as `put_if` does.
                (Ok(_), None) => {
                    out.push(None);
                    single.push((i, w));
                }
                (Ok((le, lid)), Some([kind, ce, carg])) => {
                    out.push(None);
                    args.extend([
                        w.key.as_bytes().to_vec(),
                        w.value.to_vec(),
                        le.into_bytes(),
                        lid.into_bytes(),
                        kind.into_bytes(),
                        ce.into_bytes(),
                        carg.into_bytes(),
                    ]);
                    sent.push((i, w.key));
                }
            }
        }
        if !sent.is_empty() {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            match self
                .run_epoch(&self.inner.scripts.put_if_many, WHAT, &refs)
                .await
            {
                Ok((epoch, replies)) if replies.len() == sent.len() => {
                    for ((i, key), reply) in sent.into_iter().zip(replies) {
                        out[i] = Some(self.batch_outcome(epoch, key, reply));
                    }
                }
                Ok(_) => {
                    for (i, _) in sent {
                        out[i] = Some(Err(bad_reply(WHAT)));
                    }
                }
                Err(e) => {
                    for (i, _) in sent {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for (i, w) in single {
            out[i] = Some(self.put_if(&w.key, w.value, w.lease.as_ref(), w.cond).await);
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(bad_reply(WHAT))))
            .collect()
    }

    /// One write's outcome in a [`scripts::PUT_IF_MANY`] reply: a conditional write's, or `{2}`
    /// when the condition held and the lease is gone.
    fn batch_outcome(&self, epoch: u64, key: String, reply: Value) -> Result<CondOutcome> {
        let reply = as_array(reply)?;
        match reply.as_slice() {
            [gone] if as_u64(gone) == Some(2) => Err(Error::lease_not_found(
                "the lease has expired or was revoked",
            )),
            reply => self.cond_outcome(epoch, key, reply, "conditional put batch"),
        }
    }

    fn kv(&self, epoch: u64, key: String, value: &Value, meta: &Value) -> Option<KeyValue> {
        let value = as_bytes(value)?;
        let meta = as_bytes(meta)?;
        let meta = std::str::from_utf8(&meta).ok()?;
        let (rev, lease) = meta.split_once(':')?;
        Some(KeyValue {
            key,
            value,
            revision: compose(epoch, rev.parse().ok()?),
            lease: (!lease.is_empty()).then(|| LeaseId::new(format!("{epoch}-{lease}"))),
        })
    }

    async fn watch_connection(&self) -> Result<MultiplexedConnection> {
        // Blocking reads must not hit the response timeout of the shared connection.
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.request_timeout))
            .set_response_timeout(None);
        let link = self.link();
        match link
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(conn) => Ok(conn),
            Err(e) => {
                let err = map(e, "watch connect").context(format!("Redis at {}", link.address));
                self.follow_master().await;
                Err(err)
            }
        }
    }
}

/// Ends expired leases every `interval`, so their deletes reach watchers within the declared slack
/// even when nobody reads. Concurrent reapers are harmless: the script is atomic.
async fn reaper(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let backend = RedisBackend { inner };
        if let Err(e) = backend.reap().await {
            tracing::debug!(error = %e, "redis reaper: pass failed; retrying");
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        let caps = &self.inner.caps;
        let granted = caps.check_ttl(ttl)?;
        let ms = (granted.as_millis() as u64).to_string();
        let (epoch, rest) = self
            .run_epoch(&self.inner.scripts.grant, "lease grant", &[ms.as_bytes()])
            .await?;
        let id = rest
            .first()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply("grant"))?;
        Ok(Lease {
            id: LeaseId::new(format!("{epoch}-{id}")),
            ttl: granted,
        })
    }

    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        let (e, id) = lease_parts(lease)?;
        let v = self
            .run(
                &self.inner.scripts.keep_alive,
                "lease keep-alive",
                &[e.as_bytes(), id.as_bytes()],
            )
            .await?;
        as_u64(&v)
            .map(|ms| clamp_duration(Duration::from_millis(ms)))
            .ok_or_else(|| bad_reply("keep-alive"))
    }

    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        let (e, id) = lease_parts(lease)?;
        self.run(
            &self.inner.scripts.revoke,
            "lease revoke",
            &[e.as_bytes(), id.as_bytes()],
        )
        .await
        .map(|_| ())
    }

    async fn put(&self, k: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let (e, id) = match lease {
            Some(l) => lease_parts(l)?,
            None => (String::new(), String::new()),
        };
        let (epoch, rest) = self
            .run_epoch(
                &self.inner.scripts.put,
                "put",
                &[k.as_bytes(), &value, e.as_bytes(), id.as_bytes()],
            )
            .await?;
        let rev = rest
            .first()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply("put"))?;
        Ok(compose(epoch, rev))
    }

    async fn delete(&self, k: &str) -> Result<Option<Revision>> {
        key::validate_key(k, &self.inner.caps)?;
        let (epoch, rest) = self
            .run_epoch(&self.inner.scripts.delete, "delete", &[k.as_bytes()])
            .await?;
        let rev = rest
            .first()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply("delete"))?;
        Ok((rev > 0).then(|| compose(epoch, rev)))
    }

    async fn put_if(
        &self,
        k: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        key::validate_put(k, &value, &self.inner.caps)?;
        let script = &self.inner.scripts.put_if;
        self.run_if(script, "conditional put", k, &value, lease, &cond)
            .await
    }

    /// Batches of up to [`Capabilities::batch_writes`] writes, each one script call; a larger call
    /// is split into such batches, sent one after another.
    async fn put_if_many(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        let mut out = Vec::with_capacity(writes.len());
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<CondPut> = writes.by_ref().take(BATCH_WRITES).collect();
            out.extend(self.put_if_batch(chunk).await);
        }
        out
    }

    async fn delete_if(&self, k: &str, cond: Condition) -> Result<CondOutcome> {
        key::validate_key(k, &self.inner.caps)?;
        let script = &self.inner.scripts.delete_if;
        self.run_if(script, "conditional delete", k, b"", None, &cond)
            .await
    }

    async fn get(&self, k: &str) -> Result<Option<KeyValue>> {
        key::validate_key(k, &self.inner.caps)?;
        let (epoch, rest) = self
            .run_epoch(&self.inner.scripts.get, "get", &[k.as_bytes()])
            .await?;
        match rest.as_slice() {
            [] => Ok(None),
            [value, meta] => self
                .kv(epoch, k.to_owned(), value, meta)
                .map(Some)
                .ok_or_else(|| bad_reply("get")),
            _ => Err(bad_reply("get")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let p = key::normalize_prefix(prefix);
        let (min, max) = if p.is_empty() {
            (b"-".to_vec(), b"+".to_vec())
        } else {
            let mut min = b"[".to_vec();
            min.extend_from_slice(p.as_bytes());
            let max = match key::prefix_range_end(p.as_bytes()) {
                Some(end) => {
                    let mut m = b"(".to_vec();
                    m.extend_from_slice(&end);
                    m
                }
                None => b"+".to_vec(),
            };
            (min, max)
        };
        let (epoch, rest) = self
            .run_epoch(&self.inner.scripts.list, "list", &[&min, &max])
            .await?;
        let mut it = rest.into_iter();
        let rev = it
            .next()
            .as_ref()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply("list"))?;
        let keys = as_array(it.next().ok_or_else(|| bad_reply("list"))?)?;
        let values = as_array(it.next().ok_or_else(|| bad_reply("list"))?)?;
        let metas = as_array(it.next().ok_or_else(|| bad_reply("list"))?)?;
        let mut entries = Vec::with_capacity(keys.len());
        for ((k, v), m) in keys.iter().zip(&values).zip(&metas) {
            let Some(k) = as_bytes(k).and_then(|b| String::from_utf8(b.to_vec()).ok()) else {
                continue;
            };
            if let Some(kv) = self.kv(epoch, k, v, m) {
                entries.push(kv);
            }
        }
        Ok(Listing {
            entries,
            revision: compose(epoch, rev),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        key::validate_prefix(prefix, &self.inner.caps)?;
        let (epoch, rest) = self
            .run_epoch(&self.inner.scripts.watch_start, "watch", &[])
            .await?;
        let current = rest
            .first()
            .and_then(as_u64)
            .ok_or_else(|| bad_reply("watch"))?;
        let first = rest
            .get(1)
            .and_then(as_bytes)
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .and_then(|s| parse_id(&s));
        let (after_epoch, after_local) = decompose(after);
        // Numbers from the server saturate rather than overflow: a reply of u64::MAX is nonsense,
        // not a reason to panic.
        let oldest = match first {
            Some((r, 0)) => r,
            Some((r, _)) => r.saturating_add(1),
            None => current.saturating_add(1),
        };
        if after != 0 && after_epoch != epoch {
            // The server lost this namespace's data since `after` was read: its history is gone.
            return Err(Error::compacted(compose(
                epoch,
                oldest.min(current.saturating_add(1)).max(1),
            )));
        }
        let complete = match first {
            // Nothing retained: complete only if nothing happened after `after`.
            None => current <= after_local,
            Some((r, s)) => r <= after_local || (r == after_local + 1 && s == 0),
        };
        if !complete {
            return Err(Error::compacted(compose(epoch, oldest)));
        }
        let conn = self.watch_connection().await?;
        let state = Reader {
            backend: self.clone(),
            conn,
            prefix: key::normalize_prefix(prefix).into_owned(),
            epoch,
            last: (after_local, u64::MAX),
            held: Vec::new(),
        };
        Ok(watch::batched(state))
    }
}

/// Whether stream ID `id` follows `last` with no gap: the next seq of the same revision, or the
/// first of the next (`last.1 == u64::MAX` stands for every event of revision `last.0`). IDs come
/// from the server: at `u64::MAX` nothing follows, rather than an overflow.
fn follows(last: (u64, u64), id: (u64, u64)) -> bool {
    let (r, s) = last;
    r.checked_add(1).is_some_and(|next| id == (next, 0))
        || s.checked_add(1).is_some_and(|next| id == (r, next))
}

/// One watch: blocking reads of the namespace's stream from the last ID seen, on a connection of
/// its own.
struct Reader {
    backend: RedisBackend,
    conn: MultiplexedConnection,
    prefix: String,
    epoch: u64,
    /// The last stream ID seen (`seq == u64::MAX`: every event of that revision).
    last: (u64, u64),
    /// Events of the last revision read while that revision may still have more entries in the
    /// stream (a read filled its COUNT). A revision is handed out only whole: a consumer resumes
    /// after the revision of the last event it saw, so handing out part of one would lose the
    /// rest if the watch broke before the next read.
    held: Vec<Event>,
}

impl Reader {
    /// The error that ends a watch whose epoch is gone (`now`: the server's epoch, when known):
    /// its history is lost, the consumer re-lists.
    fn epoch_lost(&self, now: Option<u64>) -> Error {
        Error::compacted(compose(now.unwrap_or(self.epoch.saturating_add(1)), 1))
    }
}

#[async_trait]
impl watch::EventBatches for Reader {
    async fn read(&mut self, out: &mut VecDeque<Event>) -> Result<()> {
        let stream_key = &self.backend.inner.keys[6];
        let from = format!("{}-{}", self.last.0, self.last.1);
        let opts = StreamReadOptions::default()
            .block(BLOCK_MS)
            .count(READ_COUNT);
        // The connection has no response timeout (the read blocks by design), so bound it here: a
        // server that stops answering while the connection stays open (a black-holed network, a
        // paused host) must end the stream, not hang it while the view claims to be fresh.
        let limit = Duration::from_millis(BLOCK_MS as u64) + self.backend.inner.request_timeout;
        let reply: Option<StreamReadReply> = match tokio::time::timeout(
            limit,
            self.conn.xread_options(&[stream_key], &[&from], &opts),
        )
        .await
        {
            Ok(r) => r.map_err(|e| map(e, "watch"))?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "watch: Redis at {} did not answer a blocking read within {limit:?}",
                        self.backend.link().address
                    ),
                ));
            }
        };
        let ids = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
            .unwrap_or_default();
        // Every entry of one revision is added by one atomic script, so a read that returned
        // fewer entries than it asked for saw the whole of its last revision.
        let full = ids.len() >= READ_COUNT;
        if ids.is_empty() {
            // Nothing after the held revision: it was whole.
            out.extend(self.held.drain(..));
            // Quiet: make sure the server is still the one we were reading (a server that lost its
            // data starts a new epoch and numbers events from 1 again, below our position), and
            // that nothing we have not seen happened: a stream trimmed past our position (by
            // hand, or by its length limit while we were paused) shows nothing after it, but the
            // revision counter is ahead. Read together (MULTI), so that a write landing between
            // the reads cannot pass for a gap.
            let (epoch, rev, next): (Option<String>, Option<u64>, StreamRangeReply) = redis::pipe()
                .atomic()
                .get(&self.backend.inner.keys[8])
                .get(&self.backend.inner.keys[0])
                .xrange_count(stream_key, format!("({from}"), "+", 1)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| map(e, "watch"))?;
            if epoch.as_deref() != Some(self.epoch.to_string().as_str()) {
                return Err(self.epoch_lost(epoch.and_then(|e| e.parse().ok())));
            }
            let rev = rev.unwrap_or(0);
            if next.ids.is_empty() && rev > self.last.0 {
                // Revisions after ours exist, their events do not: trimmed away.
                return Err(Error::compacted(compose(self.epoch, rev.saturating_add(1))));
            }
            return Ok(());
        }
        // After a FLUSHALL (or a rollover) the new epoch numbers its entries from 1 again: once they
        // pass our position they follow it like a continuation, and only their epoch shows that the
        // history we were reading is gone. One read returns entries of one stream, one epoch.
        let mut unlabelled = false;
        for entry in &ids {
            match entry.map.get("e").map(as_u64) {
                Some(Some(e)) if e == self.epoch => {}
                Some(e) => return Err(self.epoch_lost(e)),
                None => unlabelled = true,
            }
        }
        if unlabelled {
            // Written by an older version of this crate, without its epoch: ask the server. Epochs
            // only grow, so entries of a later epoch than ours leave the key at another one.
            let epoch: Option<String> = self
                .conn
                .get(&self.backend.inner.keys[8])
                .await
                .map_err(|e| map(e, "watch"))?;
            if epoch.as_deref() != Some(self.epoch.to_string().as_str()) {
                return Err(self.epoch_lost(epoch.and_then(|e| e.parse().ok())));
            }
        }
        for entry in ids {
            let id = parse_id(&entry.id).ok_or_else(|| bad_reply("watch"))?;
            if !follows(self.last, id) {
                // The stream was trimmed past us: events are missing.
                let oldest = if id.1 == 0 {
                    id.0
                } else {
                    id.0.saturating_add(1)
                };
                return Err(Error::compacted(compose(self.epoch, oldest)));
            }
            self.last = id;
            let field = |name: &str| entry.map.get(name).and_then(as_bytes);
            let key = field("k")
                .and_then(|b| String::from_utf8(b.to_vec()).ok())
                .ok_or_else(|| bad_reply("watch"))?;
            if !key::key_matches(&self.prefix, &key) {
                continue;
            }
            let revision = compose(self.epoch, id.0);
            let ev = match field("t").as_deref() {
                Some(b"p") => Event::put(key, field("v").unwrap_or_default(), revision),
                Some(b"d") => Event::delete(key, revision),
                _ => return Err(bad_reply("watch")),
            };
            if self.held.first().is_some_and(|h| h.revision != revision) {
                out.extend(self.held.drain(..));
            }
            self.held.push(ev);
        }
        if !full {
            out.extend(self.held.drain(..));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `r + 1` overflowed (a panic in debug builds) on a stream ID of `u64::MAX` from the server.
    #[test]
    fn stream_ids_at_the_end_of_the_range_do_not_overflow() {
        assert!(follows((4, u64::MAX), (5, 0)));
        assert!(follows((4, 2), (4, 3)));
        assert!(follows((4, 2), (5, 0)));
        assert!(!follows((4, 2), (4, 4)));
        assert!(!follows((4, u64::MAX), (4, 0)));
        assert!(!follows((u64::MAX, u64::MAX), (0, 0)));
        assert!(!follows((u64::MAX, 7), (0, 0)));
        assert!(follows((u64::MAX, 7), (u64::MAX, 8)));
        assert_eq!(
            parse_id("18446744073709551615-18446744073709551615"),
            Some((u64::MAX, u64::MAX))
        );
        assert_eq!(parse_id("18446744073709551616-0"), None);
        assert_eq!(parse_id("-"), None);
    }
}
