//! The independent truth reader: what the server holds, read through each backend's own client
//! (the `etcd-client` crate, the `redis` crate on our key layout, plain HTTP against Consul's KV
//! API), never through this workspace's backend code. Also the "external" hand of some faults:
//! deletes, compaction, stream trims, snapshots.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// One backend's truth, for one registry namespace and service.
#[derive(Clone)]
pub enum Truth {
    /// etcd: keys `{namespace}/{service}/{id}` (the backend URL has no key prefix).
    Etcd {
        /// `127.0.0.1:port` of each member.
        endpoints: Vec<String>,
    },
    /// Redis: the hash `{ns}:kv` whose fields are `{namespace}/{service}/{id}`
    /// (registry-redis/src/scripts.rs), `ns` being the backend namespace of the URL.
    Redis {
        /// `127.0.0.1:port` the clients use.
        endpoint: String,
        /// The backend namespace (`?namespace=` of the URL).
        backend_ns: String,
    },
    /// Consul: KV keys `{prefix}/{namespace}/{service}/{id}` (`prefix` is the backend's KV
    /// prefix, `registry` by default).
    Consul {
        /// `127.0.0.1:port` of the HTTP API.
        endpoint: String,
        /// A token allowed to read and write everything (ACL runs), never printed.
        token: Option<String>,
    },
}

impl std::fmt::Debug for Truth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Truth::Etcd { endpoints } => write!(f, "etcd truth at {endpoints:?}"),
            Truth::Redis {
                endpoint,
                backend_ns,
            } => write!(f, "redis truth at {endpoint} ({{{backend_ns}}}:kv)"),
            Truth::Consul { endpoint, .. } => write!(f, "consul truth at {endpoint}"),
        }
    }
}

const CONSUL_PREFIX: &str = "registry";
const OP_TIMEOUT: Duration = Duration::from_secs(3);

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn http() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: timed out after {OP_TIMEOUT:?}"))?
}

impl Truth {
    async fn etcd(&self) -> Result<etcd_client::Client, String> {
        let Truth::Etcd { endpoints } = self else {
            return Err("not etcd".into());
        };
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        etcd_client::Client::connect(endpoints.clone(), Some(opts))
            .await
            .map_err(|e| format!("etcd connect: {e}"))
    }

    async fn redis(&self) -> Result<(redis::aio::MultiplexedConnection, String), String> {
        let Truth::Redis {
            endpoint,
            backend_ns,
        } = self
        else {
            return Err("not redis".into());
        };
        let con = redis_con(endpoint)
            .await
            .map_err(|e| format!("redis connect: {e}"))?;
        Ok((con, format!("{{{backend_ns}}}:")))
    }

    async fn consul(
        &self,
        method: hyper::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), String> {
        let Truth::Consul { endpoint, token } = self else {
            return Err("not consul".into());
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{endpoint}{path_and_query}"));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = http()
            .request(req)
            .await
            .map_err(|e| format!("consul http: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("consul body: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// The ids the server holds for `service` in registry namespace `ns`.
    pub async fn ids(&self, ns: &str, service: &str) -> Result<BTreeSet<String>, String> {
        let prefix = format!("{ns}/{service}/");
        timed("truth read", async {
            let keys: Vec<String> = match self {
                Truth::Etcd { .. } => {
                    let mut c = self.etcd().await?;
                    let r = c
                        .get(
                            prefix.as_bytes(),
                            Some(
                                etcd_client::GetOptions::new()
                                    .with_prefix()
                                    .with_keys_only(),
                            ),
                        )
                        .await
                        .map_err(|e| format!("etcd get: {e}"))?;
                    r.kvs()
                        .iter()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                        .collect()
                }
                Truth::Redis { .. } => {
                    let (mut con, base) = self.redis().await?;
                    let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                        .arg(format!("{base}kv"))
                        .query_async(&mut con)
                        .await
                        .map_err(|e| format!("redis HGETALL: {e}"))?;
                    all.into_iter().map(|(k, _)| k).collect()
                }
                Truth::Consul { .. } => {
                    let (status, body) = self
                        .consul(
                            hyper::Method::GET,
                            &format!("/v1/kv/{CONSUL_PREFIX}/{prefix}?keys"),
                            None,
                        )
                        .await?;
                    match status {
                        404 => Vec::new(),
                        200 => serde_json::from_slice::<Vec<String>>(&body)
                            .map_err(|e| format!("consul keys: {e}"))?
                            .into_iter()
                            .filter_map(|k| {
                                k.strip_prefix(&format!("{CONSUL_PREFIX}/"))
                                    .map(str::to_owned)
                            })
                            .collect(),
                        s => return Err(format!("consul keys: HTTP {s}")),
                    }
                }
            };
            Ok(keys
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .map(str::to_owned)
                .collect())
        })
        .await
    }

    /// Deletes one instance's key behind the registry's back.
    pub async fn delete_key(&self, ns: &str, service: &str, id: &str) -> Result<(), String> {
        let key = format!("{ns}/{service}/{id}");
        timed("truth delete", async {
            match self {
                Truth::Etcd { .. } => {
                    let mut c = self.etcd().await?;
                    c.delete(key.as_bytes(), None)
                        .await
                        .map_err(|e| format!("etcd delete: {e}"))?;
                }
                Truth::Redis { .. } => {
                    // What an operator's HDEL does: the value goes; our metadata and index too, so
                    // the key is gone for every reader (no event is appended: nobody told us).
                    let (mut con, base) = self.redis().await?;
                    redis::pipe()
                        .cmd("HDEL")
                        .arg(format!("{base}kv"))
                        .arg(&key)
                        .cmd("HDEL")
                        .arg(format!("{base}meta"))
                        .arg(&key)
                        .cmd("ZREM")
                        .arg(format!("{base}idx"))
                        .arg(&key)
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(|e| format!("redis delete: {e}"))?;
                }
                Truth::Consul { .. } => {
                    let (s, _) = self
                        .consul(
                            hyper::Method::DELETE,
                            &format!("/v1/kv/{CONSUL_PREFIX}/{key}"),
                            None,
                        )
                        .await?;
                    if s != 200 {
                        return Err(format!("consul delete: HTTP {s}"));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes the whole registry namespace (every service) behind the registry's back. On Redis
    /// that is every key of the backend namespace (`{ns}:*`): values, metadata, index, leases,
    /// counters and stream.
    pub async fn delete_namespace(&self, ns: &str) -> Result<(), String> {
        timed("truth delete namespace", async {
            match self {
                Truth::Etcd { .. } => {
                    let mut c = self.etcd().await?;
                    c.delete(
                        format!("{ns}/").as_bytes(),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await
                    .map_err(|e| format!("etcd delete prefix: {e}"))?;
                }
                Truth::Redis { .. } => {
                    let (mut con, base) = self.redis().await?;
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{base}*"))
                        .query_async(&mut con)
                        .await
                        .map_err(|e| format!("redis KEYS: {e}"))?;
                    if !keys.is_empty() {
                        redis::cmd("DEL")
                            .arg(&keys)
                            .query_async::<()>(&mut con)
                            .await
                            .map_err(|e| format!("redis DEL: {e}"))?;
                    }
                }
                Truth::Consul { .. } => {
                    let (s, _) = self
                        .consul(
                            hyper::Method::DELETE,
                            &format!("/v1/kv/{CONSUL_PREFIX}/{ns}/?recurse"),
                            None,
                        )
                        .await?;
                    if s != 200 {
                        return Err(format!("consul delete recurse: HTTP {s}"));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// etcd: compacts history up to the current revision (physically). Returns that revision.
    pub async fn etcd_compact(&self) -> Result<i64, String> {
        timed("etcd compact", async {
            let mut c = self.etcd().await?;
            let rev = c
                .get("\0", None)
                .await
                .map_err(|e| format!("etcd get: {e}"))?
                .header()
                .map(|h| h.revision())
                .ok_or("etcd: no header")?;
            c.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .map_err(|e| format!("etcd compact: {e}"))?;
            Ok(rev)
        })
        .await
    }

    /// Redis: trims the backend namespace's event stream to nothing (`XTRIM {ns}:events MAXLEN 0`).
    pub async fn redis_trim_stream(&self) -> Result<u64, String> {
        timed("redis XTRIM", async {
            let (mut con, base) = self.redis().await?;
            redis::cmd("XTRIM")
                .arg(format!("{base}events"))
                .arg("MAXLEN")
                .arg(0)
                .query_async(&mut con)
                .await
                .map_err(|e| format!("redis XTRIM: {e}"))
        })
        .await
    }

    /// Redis: any command on the server the clients use (`SAVE`, `REPLICAOF`, ...).
    pub async fn redis_cmd(&self, args: &[&str]) -> Result<String, String> {
        timed("redis command", async {
            let (mut con, _) = self.redis().await?;
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            let v: redis::Value = cmd
                .query_async(&mut con)
                .await
                .map_err(|e| format!("redis {}: {e}", args[0]))?;
            Ok(format!("{v:?}"))
        })
        .await
    }

    /// etcd: the member id of the current leader and, for each endpoint, its own member id.
    pub async fn etcd_leader(&self) -> Result<(u64, Vec<(String, u64)>), String> {
        let Truth::Etcd { endpoints } = self else {
            return Err("not etcd".into());
        };
        let mut leader = 0;
        let mut members = Vec::new();
        for ep in endpoints {
            let one = Truth::Etcd {
                endpoints: vec![ep.clone()],
            };
            let Ok(Ok(mut c)) = tokio::time::timeout(OP_TIMEOUT, one.etcd()).await else {
                continue;
            };
            if let Ok(Ok(s)) = tokio::time::timeout(OP_TIMEOUT, c.status()).await {
                leader = s.leader();
                if let Some(h) = s.header() {
                    members.push((ep.clone(), h.member_id()));
                }
            }
        }
        if leader == 0 {
            return Err("no etcd member names a leader".into());
        }
        Ok((leader, members))
    }

    /// Ends a lease from outside, as the server would when it expires or an operator revokes it
    /// (`lease` as the registry names it in its state lines).
    ///
    /// etcd: `LeaseRevoke`. Consul: `PUT /v1/session/destroy/<id>`. Redis: what the passing of the
    /// lease's deadline does in the layout of `registry-redis/src/scripts.rs`: its deadline in
    /// `{ns}:leases` set in the past and its `{ns}:lease:<id>` marker expired; the server-side
    /// reaper at the start of the next script anyone runs ends it with its keys, and a keep-alive
    /// on it is refused.
    pub async fn end_lease(&self, lease: &str) -> Result<(), String> {
        timed("truth end lease", async {
            match self {
                Truth::Etcd { .. } => {
                    let id: i64 = lease
                        .parse()
                        .map_err(|_| format!("etcd lease id {lease:?} is not a number"))?;
                    let mut c = self.etcd().await?;
                    c.lease_revoke(id)
                        .await
                        .map_err(|e| format!("etcd lease revoke: {e}"))?;
                }
                Truth::Redis { .. } => {
                    let id = redis_lease_number(lease)?;
                    let (mut con, base) = self.redis().await?;
                    let changed: i64 = redis::cmd("ZADD")
                        .arg(format!("{base}leases"))
                        .arg("XX")
                        .arg("CH")
                        .arg(0)
                        .arg(id)
                        .query_async(&mut con)
                        .await
                        .map_err(|e| format!("redis ZADD: {e}"))?;
                    if changed != 1 {
                        return Err(format!("redis: lease {id} is not in {base}leases"));
                    }
                    redis::cmd("PEXPIRE")
                        .arg(format!("{base}lease:{id}"))
                        .arg(1)
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(|e| format!("redis PEXPIRE: {e}"))?;
                }
                Truth::Consul { .. } => {
                    let (s, body) = self
                        .consul(
                            hyper::Method::PUT,
                            &format!("/v1/session/destroy/{lease}"),
                            None,
                        )
                        .await?;
                    if s != 200 || body.trim_ascii() != b"true" {
                        return Err(format!(
                            "consul session destroy: HTTP {s}, {:?}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Whether the server still has `lease` (named as in the registry's state lines).
    pub async fn lease_alive(&self, lease: &str) -> Result<bool, String> {
        timed("truth lease read", async {
            match self {
                Truth::Etcd { .. } => {
                    let id: i64 = lease
                        .parse()
                        .map_err(|_| format!("etcd lease id {lease:?} is not a number"))?;
                    let mut c = self.etcd().await?;
                    let r = c
                        .lease_time_to_live(id, None)
                        .await
                        .map_err(|e| format!("etcd lease ttl: {e}"))?;
                    Ok(r.ttl() > 0)
                }
                Truth::Redis { .. } => {
                    let id = redis_lease_number(lease)?;
                    let (mut con, base) = self.redis().await?;
                    let score: Option<f64> = redis::cmd("ZSCORE")
                        .arg(format!("{base}leases"))
                        .arg(id)
                        .query_async(&mut con)
                        .await
                        .map_err(|e| format!("redis ZSCORE: {e}"))?;
                    Ok(score.is_some())
                }
                Truth::Consul { .. } => {
                    let (s, body) = self
                        .consul(
                            hyper::Method::GET,
                            &format!("/v1/session/info/{lease}"),
                            None,
                        )
                        .await?;
                    if s != 200 {
                        return Err(format!("consul session info: HTTP {s}"));
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| format!("consul session info: {e}"))?;
                    Ok(v.as_array().is_some_and(|a| !a.is_empty()))
                }
            }
        })
        .await
    }

    /// The lease an instance's key is attached to (etcd: the lease id; Redis: the lease number
    /// within its epoch; Consul: the session), `None` when the key is absent or has no lease.
    pub async fn key_lease(
        &self,
        ns: &str,
        service: &str,
        id: &str,
    ) -> Result<Option<String>, String> {
        let key = format!("{ns}/{service}/{id}");
        timed("truth key lease", async {
            match self {
                Truth::Etcd { .. } => {
                    let mut c = self.etcd().await?;
                    let r = c
                        .get(key.as_bytes(), None)
                        .await
                        .map_err(|e| format!("etcd get: {e}"))?;
                    Ok(r.kvs()
                        .first()
                        .filter(|kv| kv.lease() != 0)
                        .map(|kv| kv.lease().to_string()))
                }
                Truth::Redis { .. } => {
                    let (mut con, base) = self.redis().await?;
                    let meta: Option<String> = redis::cmd("HGET")
                        .arg(format!("{base}meta"))
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .map_err(|e| format!("redis HGET: {e}"))?;
                    Ok(meta
                        .and_then(|m| m.split_once(':').map(|(_, l)| l.to_owned()))
                        .filter(|l| !l.is_empty()))
                }
                Truth::Consul { .. } => {
                    let (s, body) = self
                        .consul(
                            hyper::Method::GET,
                            &format!("/v1/kv/{CONSUL_PREFIX}/{key}"),
                            None,
                        )
                        .await?;
                    match s {
                        404 => Ok(None),
                        200 => {
                            let v: serde_json::Value = serde_json::from_slice(&body)
                                .map_err(|e| format!("consul kv: {e}"))?;
                            Ok(v[0]["Session"].as_str().map(str::to_owned))
                        }
                        s => Err(format!("consul kv: HTTP {s}")),
                    }
                }
            }
        })
        .await
    }

    /// Whether `lease` as the registry names it (state lines) is the one
    /// [`key_lease`](Self::key_lease) returned.
    pub fn same_lease(&self, registry_lease: &str, stored: &str) -> bool {
        match self {
            Truth::Redis { .. } => redis_lease_number(registry_lease).is_ok_and(|n| n == stored),
            _ => registry_lease == stored,
        }
    }

    /// Whether the server answers a read.
    pub async fn ping(&self) -> bool {
        self.ids("ping", "ping").await.is_ok()
    }
}

/// The lease number within its epoch of a Redis lease the registry names `{epoch}-{number}`
/// (registry-redis/src/backend.rs).
fn redis_lease_number(lease: &str) -> Result<&str, String> {
    lease
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("redis lease id {lease:?} is not `epoch-number`"))
}

/// A connection to the Redis (or sentinel) at `addr` (`ip:port`), through the `redis` crate.
pub(crate) async fn redis_con(addr: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    redis::Client::open(format!("redis://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("{addr}: {e}"))
}
