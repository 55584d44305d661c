//! The servers of a scene, from the test bed (`conformance_tests::testbed`), and the operations the
//! faults do on them through the Docker CLI: stop, start, kill, copy files, exec, cut the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance_tests::testbed::{self, ConsulOptions, EtcdOptions, RedisOptions, SentinelOptions};
use testcontainers::{ContainerAsync, GenericImage};

use crate::proxy::Proxy;
use crate::truth::{Truth, redis_con};

/// A backend kind of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// etcd.
    Etcd,
    /// Redis.
    Redis,
    /// Consul.
    Consul,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::Etcd, Backend::Redis, Backend::Consul];

    /// `etcd`, `redis`, `consul`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::Redis => "redis",
            Backend::Consul => "consul",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// What a scene's server is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// One server.
    Single,
    /// etcd: a 3-member cluster.
    EtcdCluster,
    /// Redis: a primary and a replica, clients through a TCP proxy that can switch between them.
    RedisReplica,
    /// Redis under Sentinel: a master, a replica and three sentinels (quorum 2) that fail over;
    /// the clients find the master through the sentinels (`redis+sentinel://`).
    RedisSentinel,
    /// Consul with ACLs (default deny); the scene's processes use a token of their own.
    ConsulAcl,
    /// One server, the scene's processes reaching it through a TCP proxy that can delay the
    /// server's answers ([`Proxy::set_delay`]); the truth reader goes to the server directly.
    Delayed,
}

/// The master token of ACL runs (a test value, not a secret of anything real; never printed).
const ROOT_TOKEN: &str = "5e1f0a2b-0000-4000-8000-00000000f00d";
/// The token the scene's processes use in ACL runs.
const NODE_TOKEN: &str = "5e1f0a2b-0000-4000-8000-000000000001";

/// One container with the host port it keeps.
pub struct Member {
    /// The container (dropping it removes it).
    pub container: Option<ContainerAsync<GenericImage>>,
    /// Docker's id.
    pub id: String,
    /// The host port mapped to the server's client port.
    pub host_port: u16,
    /// The port inside the container.
    pub inner_port: u16,
    /// etcd member name.
    pub name: String,
}

/// The server(s) of a scene.
pub struct Server {
    /// The backend.
    pub backend: Backend,
    /// How it is set up.
    pub setup: Setup,
    /// Containers (etcd cluster: three; Redis replica: primary, replica).
    pub members: Vec<Member>,
    /// The backend namespace (Redis `?namespace=`).
    pub backend_ns: String,
    /// Redis replica and delayed setups: the proxy the clients use.
    pub proxy: Option<Proxy>,
    /// etcd cluster: the Docker network.
    pub network: Option<String>,
    /// Redis under Sentinel: the sentinels.
    pub sentinels: Vec<Member>,
    /// Redis under Sentinel: the master's `ip:6379` as the sentinels last named it (the truth
    /// reader reads there).
    pub master: std::sync::Mutex<String>,
    /// A scratch directory on the host (snapshots).
    pub scratch: PathBuf,
}

/// Runs `docker args...`, returning stdout.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a command, returning stdout.
async fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(prog)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The master's name under Sentinel.
pub const SENTINEL_MASTER: &str = "registry-master";

fn rand_tag() -> String {
    format!("{:08x}", fastrand::u32(..))
}

impl Server {
    /// Starts the server(s) for `setup` on `backend`.
    pub async fn start(backend: Backend, setup: Setup) -> Result<Server, String> {
        let scratch = std::env::temp_dir().join(format!("fault-suite-{}", rand_tag()));
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        let mut s = Server {
            backend,
            setup,
            members: Vec::new(),
            backend_ns: format!("fs{}", rand_tag()),
            proxy: None,
            network: None,
            sentinels: Vec::new(),
            master: std::sync::Mutex::new(String::new()),
            scratch,
        };
        match (backend, setup) {
            (Backend::Etcd, Setup::Single) => {
                let m = start_etcd_member(EtcdOptions {
                    host_port: Some(testbed::free_port()),
                    ..EtcdOptions::default()
                })
                .await?;
                s.members.push(m);
            }
            (Backend::Etcd, Setup::EtcdCluster) => {
                let tag = rand_tag();
                let net = format!("fs-net-{tag}");
                let names: Vec<String> = (0..3).map(|i| format!("fs{tag}-{i}")).collect();
                let cluster = names
                    .iter()
                    .map(|n| format!("{n}=http://{n}:2380"))
                    .collect::<Vec<_>>()
                    .join(",");
                // The members wait for each other: start them together.
                let starts = names.iter().map(|n| {
                    start_etcd_member(EtcdOptions {
                        name: Some(n.clone()),
                        network: Some(net.clone()),
                        initial_cluster: Some(cluster.clone()),
                        host_port: Some(testbed::free_port()),
                        ..EtcdOptions::default()
                    })
                });
                for m in futures::future::join_all(starts).await {
                    s.members.push(m?);
                }
                s.network = Some(net);
            }
            (Backend::Redis, Setup::Single) => {
                s.members
                    .push(start_redis_member(testbed::free_port(), vec![]).await?);
            }
            (Backend::Redis, Setup::RedisReplica) => {
                let (primary, replica, _) = start_redis_pair().await?;
                let proxy = Proxy::start(format!("127.0.0.1:{}", primary.host_port)).await?;
                s.members.push(primary);
                s.members.push(replica);
                s.proxy = Some(proxy);
            }
            (Backend::Redis, Setup::RedisSentinel) => {
                let (primary, replica, ip) = start_redis_pair().await?;
                s.members.push(primary);
                s.members.push(replica);
                let starts = (0..3).map(|_| {
                    testbed::start_redis_sentinel(SentinelOptions {
                        host_port: Some(testbed::free_port()),
                        master_name: SENTINEL_MASTER.into(),
                        master: format!("{ip}:6379"),
                        quorum: 2,
                        down_after_ms: 1000,
                        failover_timeout_ms: 5000,
                        extra_conf: Vec::new(),
                        tls: None,
                    })
                });
                for r in futures::future::join_all(starts).await {
                    let r = r?;
                    let host_port = r
                        .endpoint
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse().ok())
                        .ok_or("a sentinel without a port")?;
                    s.sentinels.push(Member {
                        id: r.container.id().to_owned(),
                        container: Some(r.container),
                        host_port,
                        inner_port: 26379,
                        name: "sentinel".into(),
                    });
                }
                *s.master.lock().unwrap_or_else(|p| p.into_inner()) = format!("{ip}:6379");
                s.wait_sentinels_ready(Duration::from_secs(30)).await?;
            }
            (Backend::Consul, Setup::Single) => {
                s.members
                    .push(start_consul_member(testbed::free_port(), false).await?);
            }
            (Backend::Consul, Setup::ConsulAcl) => {
                s.members
                    .push(start_consul_member(testbed::free_port(), true).await?);
                s.consul_acl_setup().await?;
            }
            (b, Setup::Delayed) => {
                let m = match b {
                    Backend::Etcd => {
                        start_etcd_member(EtcdOptions {
                            host_port: Some(testbed::free_port()),
                            ..EtcdOptions::default()
                        })
                        .await?
                    }
                    Backend::Redis => start_redis_member(testbed::free_port(), vec![]).await?,
                    Backend::Consul => start_consul_member(testbed::free_port(), false).await?,
                };
                s.proxy = Some(Proxy::start(format!("127.0.0.1:{}", m.host_port)).await?);
                s.members.push(m);
            }
            (b, set) => return Err(format!("{set:?} does not exist for {b:?}")),
        }
        s.wait_ready(Duration::from_secs(30)).await?;
        Ok(s)
    }

    /// The URL the scene's processes use (may hold a token: never print it unredacted).
    pub fn url(&self) -> String {
        match self.backend {
            Backend::Etcd if self.proxy.is_some() => format!("etcd://{}", self.client_endpoint()),
            Backend::Etcd => format!(
                "etcd://{}",
                self.members
                    .iter()
                    .map(|m| format!("127.0.0.1:{}", m.host_port))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Backend::Redis if self.setup == Setup::RedisSentinel => format!(
                "redis+sentinel://{}/{SENTINEL_MASTER}?namespace={}",
                self.sentinels
                    .iter()
                    .map(|m| format!("127.0.0.1:{}", m.host_port))
                    .collect::<Vec<_>>()
                    .join(","),
                self.backend_ns
            ),
            Backend::Redis => format!(
                "redis://{}?namespace={}",
                self.client_endpoint(),
                self.backend_ns
            ),
            Backend::Consul => match self.setup {
                Setup::ConsulAcl => {
                    format!("consul://{}?token={NODE_TOKEN}", self.client_endpoint())
                }
                _ => format!("consul://{}", self.client_endpoint()),
            },
        }
    }

    /// Where the clients connect (the proxy, when there is one).
    pub fn client_endpoint(&self) -> String {
        match &self.proxy {
            Some(p) => p.endpoint(),
            None => format!("127.0.0.1:{}", self.members[0].host_port),
        }
    }

    /// Where the truth reader connects: where the clients do (after a failover, the server they
    /// reach now), except behind a delaying proxy, whose delays are the clients' fault alone.
    fn truth_endpoint(&self) -> String {
        match self.setup {
            Setup::Delayed => format!("127.0.0.1:{}", self.members[0].host_port),
            Setup::RedisSentinel => self
                .master
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            _ => self.client_endpoint(),
        }
    }

    /// The truth reader for this server.
    pub fn truth(&self) -> Truth {
        match self.backend {
            Backend::Etcd => Truth::Etcd {
                endpoints: self
                    .members
                    .iter()
                    .map(|m| format!("127.0.0.1:{}", m.host_port))
                    .collect(),
            },
            Backend::Redis => Truth::Redis {
                endpoint: self.truth_endpoint(),
                backend_ns: self.backend_ns.clone(),
            },
            Backend::Consul => Truth::Consul {
                endpoint: self.truth_endpoint(),
                token: (self.setup == Setup::ConsulAcl).then(|| ROOT_TOKEN.to_owned()),
            },
        }
    }

    /// A truth reader with the scene processes' own token (ACL runs), to see what they may see.
    pub fn node_truth(&self) -> Truth {
        match (self.backend, self.truth()) {
            (Backend::Consul, Truth::Consul { endpoint, .. }) => Truth::Consul {
                endpoint,
                token: (self.setup == Setup::ConsulAcl).then(|| NODE_TOKEN.to_owned()),
            },
            (_, t) => t,
        }
    }

    /// The truth reader of one member, directly (not through the proxy).
    pub fn member_truth(&self, i: usize) -> Truth {
        let ep = format!("127.0.0.1:{}", self.members[i].host_port);
        match self.backend {
            Backend::Etcd => Truth::Etcd {
                endpoints: vec![ep],
            },
            Backend::Redis => Truth::Redis {
                endpoint: ep,
                backend_ns: self.backend_ns.clone(),
            },
            Backend::Consul => Truth::Consul {
                endpoint: ep,
                token: (self.setup == Setup::ConsulAcl).then(|| ROOT_TOKEN.to_owned()),
            },
        }
    }

    /// Waits until the truth reader gets answers.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let truth = self.truth();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match truth.ids("ping", "ping").await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "{:?} not ready within {within:?}: {e}",
                        self.backend
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Replaces member `i` with a fresh, empty server on the same host port (a restart without
    /// persistence).
    pub async fn replace_fresh(&mut self, i: usize) -> Result<(), String> {
        let port = self.members[i].host_port;
        self.remove_member(i).await;
        let m = match self.backend {
            Backend::Etcd => {
                start_etcd_member(EtcdOptions {
                    host_port: Some(port),
                    ..EtcdOptions::default()
                })
                .await?
            }
            Backend::Redis => start_redis_member(port, vec![]).await?,
            Backend::Consul => start_consul_member(port, self.setup == Setup::ConsulAcl).await?,
        };
        self.members[i] = m;
        Ok(())
    }

    async fn remove_member(&mut self, i: usize) {
        if let Some(c) = self.members[i].container.take() {
            let _ = c.rm().await;
        }
        let _ = docker(&["rm", "-f", "-v", &self.members[i].id]).await;
    }

    /// Stops member `i` (`docker stop`, SIGTERM then SIGKILL after 5 s).
    pub async fn stop(&self, i: usize) -> Result<(), String> {
        docker(&["stop", "-t", "5", &self.members[i].id])
            .await
            .map(drop)
    }

    /// Redis under Sentinel: the master the sentinels name (`ip:port`), once it answers `ROLE`
    /// as a master: asked of each sentinel in turn, through the `redis` crate.
    pub async fn sentinel_master(&self) -> Result<String, String> {
        let mut last = String::from("no sentinel");
        for m in &self.sentinels {
            let ask = async {
                let mut con = redis_con(&format!("127.0.0.1:{}", m.host_port)).await?;
                let (ip, port): (String, String) = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                let master = format!("{ip}:{port}");
                let mut con = redis_con(&master).await?;
                let role: Vec<redis::Value> = redis::cmd("ROLE")
                    .query_async(&mut con)
                    .await
                    .map_err(|e| format!("{master}: {e}"))?;
                match role.first() {
                    Some(redis::Value::BulkString(r)) if r == b"master" => Ok(master),
                    other => Err(format!("{master} is not a master yet ({other:?})")),
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(master)) => return Ok(master),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("sentinel 127.0.0.1:{} did not answer", m.host_port),
            }
        }
        Err(last)
    }

    /// Redis under Sentinel: asks the first sentinel for a failover (`SENTINEL FAILOVER`: the
    /// master is demoted and stays up as a replica).
    pub async fn sentinel_failover(&self) -> Result<(), String> {
        let m = self.sentinels.first().ok_or("no sentinel")?;
        let mut con = redis_con(&format!("127.0.0.1:{}", m.host_port)).await?;
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| format!("SENTINEL FAILOVER: {e}"))
    }

    /// Redis under Sentinel: waits until the sentinels name a master other than `old` that
    /// answers as one, and makes it the truth reader's server; returns it.
    pub async fn wait_new_master(&self, old: &str, within: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.sentinel_master().await;
            match now {
                Ok(m) if m != old => {
                    *self.master.lock().unwrap_or_else(|p| p.into_inner()) = m.clone();
                    return Ok(m);
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "the sentinels named no new master within {within:?} (last: {now:?})"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Redis under Sentinel: waits until every sentinel knows the replica (and so could fail
    /// over to it) and the replica is in sync.
    async fn wait_sentinels_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut ready = true;
            for m in &self.sentinels {
                let known = async {
                    let mut con = redis_con(&format!("127.0.0.1:{}", m.host_port))
                        .await
                        .ok()?;
                    let replicas: Vec<std::collections::HashMap<String, String>> =
                        redis::cmd("SENTINEL")
                            .arg("REPLICAS")
                            .arg(SENTINEL_MASTER)
                            .query_async(&mut con)
                            .await
                            .ok()?;
                    Some(replicas.iter().any(|r| {
                        r.get("flags").is_some_and(|f| f == "slave")
                            && r.get("master-link-status").is_some_and(|s| s == "ok")
                    }))
                };
                if !tokio::time::timeout(Duration::from_secs(2), known)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(false)
                {
                    ready = false;
                }
            }
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the sentinels did not all see an in-sync replica within {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The member whose container has `ip` (`ip:port` accepted).
    pub async fn member_at(&self, addr: &str) -> Result<usize, String> {
        let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
        for (i, m) in self.members.iter().enumerate() {
            if testbed::container_ip(&m.id)?.to_string() == ip {
                return Ok(i);
            }
        }
        Err(format!("no member at {addr}"))
    }

    /// Kills member `i` (SIGKILL).
    pub async fn kill(&self, i: usize) -> Result<(), String> {
        docker(&["kill", &self.members[i].id]).await.map(drop)
    }

    /// Starts a stopped member `i` again (same container, same port mapping).
    pub async fn start_again(&self, i: usize) -> Result<(), String> {
        docker(&["start", &self.members[i].id]).await.map(drop)
    }

    /// Takes a snapshot of the data; [`restore`](Self::restore) brings it back.
    ///
    /// Redis: `SAVE`, then copies `/data/dump.rdb` out. etcd: stops the server, copies its data
    /// directory out, starts it again. Consul: `consul snapshot save` inside the container.
    pub async fn snapshot(&self) -> Result<(), String> {
        let m = &self.members[0];
        match self.backend {
            Backend::Redis => {
                self.member_truth(0).redis_cmd(&["SAVE"]).await?;
                let dst = self.scratch.join("dump.rdb");
                docker(&["cp", &format!("{}:/data/dump.rdb", m.id), path(&dst)?]).await?;
            }
            Backend::Etcd => {
                self.stop(0).await?;
                let dst = self.scratch.join("etcd-data");
                let _ = std::fs::remove_dir_all(&dst);
                let r = docker(&["cp", &format!("{}:/data/{}", m.id, m.name), path(&dst)?]).await;
                self.start_again(0).await?;
                r?;
                self.wait_ready(Duration::from_secs(30)).await?;
            }
            Backend::Consul => {
                self.consul_exec(&["snapshot", "save", "/data/fault.snap"])
                    .await?;
            }
        }
        Ok(())
    }

    /// Restores the snapshot of [`snapshot`](Self::snapshot): the server goes back in time.
    ///
    /// Redis: stop, copy the old dump back, start (same container and port). etcd: the container
    /// is replaced by one started from the old data directory on the same port. Consul:
    /// `consul snapshot restore` in the running agent.
    pub async fn restore(&mut self) -> Result<(), String> {
        match self.backend {
            Backend::Redis => {
                let id = self.members[0].id.clone();
                self.stop(0).await?;
                let src = self.scratch.join("dump.rdb");
                docker(&["cp", path(&src)?, &format!("{id}:/data/dump.rdb")]).await?;
                self.start_again(0).await?;
            }
            Backend::Etcd => {
                let port = self.members[0].host_port;
                let name = self.members[0].name.clone();
                let src = self.scratch.join("etcd-data");
                let mut files = Vec::new();
                collect_files(&src, &format!("/data/{name}"), &mut files)
                    .map_err(|e| format!("reading the etcd snapshot: {e}"))?;
                self.remove_member(0).await;
                self.members[0] = start_etcd_member(EtcdOptions {
                    host_port: Some(port),
                    files,
                    ..EtcdOptions::default()
                })
                .await?;
            }
            Backend::Consul => {
                self.consul_exec(&["snapshot", "restore", "/data/fault.snap"])
                    .await?;
            }
        }
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Runs the `consul` CLI inside member 0 (with the master token on ACL runs).
    pub async fn consul_exec(&self, args: &[&str]) -> Result<String, String> {
        let id = &self.members[0].id;
        let mut a = vec!["exec"];
        let env;
        if self.setup == Setup::ConsulAcl {
            env = format!("CONSUL_HTTP_TOKEN={ROOT_TOKEN}");
            a.extend(["-e", &env]);
        }
        a.extend([id.as_str(), "consul"]);
        a.extend(args);
        docker(&a).await
    }

    async fn consul_acl_setup(&self) -> Result<(), String> {
        // The agent needs a moment before ACLs answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.consul_exec(&["acl", "policy", "list"]).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        self.consul_exec(&[
            "acl",
            "policy",
            "create",
            "-name",
            "fault-node",
            "-rules",
            &consul_rules("write"),
        ])
        .await?;
        self.consul_exec(&[
            "acl",
            "token",
            "create",
            "-secret",
            NODE_TOKEN,
            "-policy-name",
            "fault-node",
        ])
        .await
        .map(drop)
    }

    /// Consul ACL runs: sets the key policy of the processes' token (`write`, `deny`, ...).
    pub async fn consul_set_key_policy(&self, policy: &str) -> Result<(), String> {
        self.consul_exec(&[
            "acl",
            "policy",
            "update",
            "-name",
            "fault-node",
            "-rules",
            &consul_rules(policy),
        ])
        .await
        .map(drop)
    }

    /// Cuts member `i` off the network: a rule in its network namespace drops every packet to its
    /// client port (a black hole, not a refusal). [`heal_network`](Self::heal_network) removes it.
    pub async fn cut_network(&self, i: usize) -> Result<(), String> {
        self.iptables(i, "-I").await
    }

    /// Removes the rule of [`cut_network`](Self::cut_network).
    pub async fn heal_network(&self, i: usize) -> Result<(), String> {
        self.iptables(i, "-D").await
    }

    async fn iptables(&self, i: usize, op: &str) -> Result<(), String> {
        let m = &self.members[i];
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &m.id]).await?;
        let port = m.inner_port.to_string();
        run(
            "nsenter",
            &[
                "-t", &pid, "-n", "iptables", op, "INPUT", "-p", "tcp", "--dport", &port, "-j",
                "DROP",
            ],
        )
        .await
        .map(drop)
    }

    /// Whether this machine can cut a container's network (`nsenter` and `iptables`, as root).
    pub async fn can_cut_network() -> Result<(), String> {
        run("nsenter", &["--version"]).await?;
        run("iptables", &["--version"]).await?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Containers are removed by their handles (and at process exit by the test bed); the
        // network of a cluster only here.
        let ids: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        let net = self.network.take();
        let scratch = self.scratch.clone();
        let _ = std::fs::remove_dir_all(&scratch);
        if let Some(net) = net {
            let _ = std::process::Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", &net])
                .output();
        }
    }
}

fn consul_rules(kv: &str) -> String {
    format!(
        r#"key_prefix "" {{ policy = "{kv}" }} session_prefix "" {{ policy = "write" }} node_prefix "" {{ policy = "read" }}"#
    )
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("{p:?} is not UTF-8"))
}

fn collect_files(dir: &Path, inner: &str, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let inner_path = format!("{inner}/{name}");
        if e.file_type()?.is_dir() {
            collect_files(&e.path(), &inner_path, out)?;
        } else {
            out.push((inner_path, std::fs::read(e.path())?));
        }
    }
    Ok(())
}

async fn start_etcd_member(opts: EtcdOptions) -> Result<Member, String> {
    let host_port = opts.host_port.unwrap_or_else(testbed::free_port);
    let opts = EtcdOptions {
        host_port: Some(host_port),
        ..opts
    };
    let e = testbed::start_etcd(opts).await?;
    Ok(Member {
        id: e.container.id().to_owned(),
        container: Some(e.container),
        host_port,
        inner_port: 2379,
        name: e.name,
    })
}

async fn start_redis_member(port: u16, extra_args: Vec<String>) -> Result<Member, String> {
    let r = testbed::start_redis(RedisOptions {
        host_port: Some(port),
        extra_args,
        ..RedisOptions::default()
    })
    .await?;
    Ok(Member {
        id: r.container.id().to_owned(),
        container: Some(r.container),
        host_port: port,
        inner_port: 6379,
        name: "redis".into(),
    })
}

/// A Redis primary and a replica of it, and the primary's address on the bridge.
async fn start_redis_pair() -> Result<(Member, Member, String), String> {
    let primary = start_redis_member(testbed::free_port(), vec![]).await?;
    let ip = testbed::container_ip(&primary.id)?.to_string();
    let replica = start_redis_member(
        testbed::free_port(),
        vec!["--replicaof".into(), ip.clone(), "6379".into()],
    )
    .await?;
    Ok((primary, replica, ip))
}

async fn start_consul_member(port: u16, acl: bool) -> Result<Member, String> {
    let extra_args = if acl {
        vec![
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{ROOT_TOKEN}" agent = "{ROOT_TOKEN}" }} }}"#
            ),
        ]
    } else {
        vec![]
    };
    let c = testbed::start_consul(ConsulOptions {
        host_port: Some(port),
        extra_args,
        ..ConsulOptions::default()
    })
    .await?;
    Ok(Member {
        id: c.container.id().to_owned(),
        container: Some(c.container),
        host_port: port,
        inner_port: 8500,
        name: "consul".into(),
    })
}
