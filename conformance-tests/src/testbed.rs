//! The containerized test bed shared by every backend's tests (feature `testbed`).
//!
//! Servers run in containers started with `testcontainers`. Image and tag per backend come from one
//! place ([`ServerKind::spec`]): the upstream images a user with Docker and internet would expect, or
//! the local images `scripts/testbed.sh` builds from Debian's packages, through
//! `REGISTRY_TEST_<BACKEND>_IMAGE` / `REGISTRY_TEST_<BACKEND>_TAG`. An external server can replace the
//! container with `REGISTRY_TEST_<BACKEND>_ENDPOINTS`.
//!
//! With `REGISTRY_TEST_REQUIRED=1` a server that cannot be started fails the test with the reason;
//! otherwise the test prints why it skips.

use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use crate::server_required;

/// A running test container (dropping it removes it).
pub type Container = ContainerAsync<GenericImage>;

/// The label every test container carries, so leftovers can be removed (`scripts/testbed.sh`).
pub const LABEL: (&str, &str) = ("service-registry-test", "1");

/// The label naming the process that started a test container: `scripts/testbed.sh` removes
/// leftovers only when that process is gone, so concurrent test runs do not remove each other's.
pub const PID_LABEL: &str = "service-registry-test.pid";

/// A backend server the test bed can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// etcd 3.5.
    Etcd,
    /// Consul 1.8.
    Consul,
    /// Redis 7.0.
    Redis,
    /// Prometheus 2.42: not a backend, the scraper that `registry serve`'s HTTP service discovery
    /// is tested against.
    Prometheus,
}

/// Which image runs a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Image name (no registry host: Docker's default applies).
    pub image: String,
    /// Image tag.
    pub tag: String,
}

impl ServerKind {
    const ALL: [ServerKind; 4] = [
        ServerKind::Etcd,
        ServerKind::Consul,
        ServerKind::Redis,
        ServerKind::Prometheus,
    ];

    fn env_name(self) -> &'static str {
        match self {
            ServerKind::Etcd => "ETCD",
            ServerKind::Consul => "CONSUL",
            ServerKind::Redis => "REDIS",
            ServerKind::Prometheus => "PROMETHEUS",
        }
    }

    /// The image `scripts/testbed.sh` builds for this server (`registry-test/etcd`, ...).
    pub fn local_image(self) -> &'static str {
        match self {
            ServerKind::Etcd => "registry-test/etcd",
            ServerKind::Consul => "registry-test/consul",
            ServerKind::Redis => "registry-test/redis",
            ServerKind::Prometheus => "registry-test/prometheus",
        }
    }

    /// The image to run: `REGISTRY_TEST_<KIND>_IMAGE`/`_TAG` when set; else the image
    /// `scripts/testbed.sh` built locally, found by asking the Docker engine (so the tests need no
    /// environment file); else the upstream image a machine with an image registry would pull.
    pub fn spec(self) -> ServerSpec {
        let (image, tag) = match self {
            ServerKind::Etcd => ("bitnami/etcd", "3.5.16"),
            ServerKind::Consul => ("hashicorp/consul", "1.8.7"),
            ServerKind::Redis => ("redis", "7.0.15"),
            ServerKind::Prometheus => ("prom/prometheus", "v2.42.0"),
        };
        let var = |suffix: &str| {
            std::env::var(format!("REGISTRY_TEST_{}_{suffix}", self.env_name()))
                .ok()
                .filter(|v| !v.is_empty())
        };
        if let Some(image) = var("IMAGE") {
            return ServerSpec {
                image,
                tag: var("TAG").unwrap_or_else(|| tag.to_owned()),
            };
        }
        if let Some(tag) = self.local_tag() {
            return ServerSpec {
                image: self.local_image().to_owned(),
                tag,
            };
        }
        ServerSpec {
            image: image.to_owned(),
            tag: tag.to_owned(),
        }
    }

    /// The newest tag of [`local_image`](Self::local_image) the Docker engine has, asked once per
    /// process through the `docker` command.
    fn local_tag(self) -> Option<String> {
        static TAGS: OnceLock<[Option<String>; ServerKind::ALL.len()]> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            ServerKind::ALL.map(|k| {
                let out = std::process::Command::new("docker")
                    .args(["image", "ls", "--format", "{{.Tag}}", k.local_image()])
                    .stderr(std::process::Stdio::null())
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                // Newest version first: compare dotted numbers numerically.
                text.lines()
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && *t != "<none>")
                    .max_by_key(|t| {
                        t.split('.')
                            .map(|p| p.parse::<u64>().unwrap_or(0))
                            .collect::<Vec<_>>()
                    })
                    .map(str::to_owned)
            })
        });
        let i = ServerKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is in ALL");
        tags[i].clone()
    }

    /// `REGISTRY_TEST_<KIND>_ENDPOINTS`: an external server to use instead of a container.
    pub fn external_endpoints(self) -> Option<String> {
        std::env::var(format!("REGISTRY_TEST_{}_ENDPOINTS", self.env_name()))
            .ok()
            .filter(|v| !v.is_empty())
    }
}

/// What to do when a server cannot be had: fail under `REGISTRY_TEST_REQUIRED=1`, else print the
/// reason and skip (returns `None`).
pub fn unavailable<T>(what: &str, reason: &str) -> Option<T> {
    let msg = format!(
        "{what} is unavailable: {reason}. Run scripts/testbed.sh (Docker engine and local images), \
         or point REGISTRY_TEST_*_ENDPOINTS at a server"
    );
    if server_required() {
        panic!("{msg} (REGISTRY_TEST_REQUIRED=1, so this is a failure)");
    }
    eprintln!("skipping: {msg}");
    None
}

/// Awaits `start` (a server's start): the server, or `None` once [`unavailable`] has said why it
/// cannot be had (a failure under `REGISTRY_TEST_REQUIRED=1`).
pub async fn start_or_skip<T>(
    what: &str,
    start: impl std::future::Future<Output = Result<T, String>>,
) -> Option<T> {
    match start.await {
        Ok(server) => Some(server),
        Err(reason) => unavailable(what, &reason),
    }
}

/// A free TCP port on the loopback interface (for containers that must keep their port across a
/// restart).
///
/// It is taken from below the kernel's ephemeral range: a port the kernel hands out (`bind(0)`)
/// can be reused as the source port of any outgoing connection - tests open many - before the
/// container binds it. Ports below that range are only ever taken by an explicit bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FLOOR: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(FLOOR);
    if span > 100 {
        // Different processes start at different places; one process walks on from there.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        for _ in 0..span.min(1000) {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = FLOOR + seed.wrapping_add(step.wrapping_mul(7_919)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Starts `kind`'s image with `cmd`, exposing `port` (fixed on the host when `host_port` is given),
/// waits for `ready`, and returns the container with its `127.0.0.1:port` endpoint.
async fn start_container(
    kind: ServerKind,
    cmd: Vec<String>,
    port: u16,
    ready: WaitFor,
    host_port: Option<u16>,
    customize: impl FnOnce(ContainerRequest<GenericImage>) -> ContainerRequest<GenericImage>,
) -> Result<(ContainerAsync<GenericImage>, String), String> {
    start_container_with_ports(kind, cmd, port, &[], ready, host_port, customize).await
}

/// [`start_container`], also exposing `extra_ports` on host ports Docker picks (only without
/// `host_port`: a fixed mapping publishes the mapped port alone).
async fn start_container_with_ports(
    kind: ServerKind,
    cmd: Vec<String>,
    port: u16,
    extra_ports: &[ContainerPort],
    ready: WaitFor,
    host_port: Option<u16>,
    customize: impl FnOnce(ContainerRequest<GenericImage>) -> ContainerRequest<GenericImage>,
) -> Result<(ContainerAsync<GenericImage>, String), String> {
    let spec = kind.spec();
    let port: ContainerPort = port.tcp();
    let mut image = GenericImage::new(spec.image.clone(), spec.tag.clone());
    for p in extra_ports {
        image = image.with_exposed_port(*p);
    }
    let mut req = image
        .with_exposed_port(port)
        .with_wait_for(ready)
        .with_cmd(cmd)
        .with_label(LABEL.0, LABEL.1)
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(60));
    if let Some(p) = host_port {
        req = req.with_mapped_port(p, port);
    }
    let container = customize(req).start().await.map_err(|e| {
        format!(
            "cannot start {kind:?} from image {}:{} ({e})",
            spec.image, spec.tag
        )
    })?;
    remove_when_process_exits(container.id());
    let mapped = container
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| format!("{kind:?} container has no mapped port ({e})"))?;
    Ok((container, format!("127.0.0.1:{mapped}")))
}

/// Makes sure the container `id` is removed when this process ends, however it ends.
///
/// Containers a test drops are removed by testcontainers, but the servers shared by all tests of a
/// process live in statics that are never dropped, and a killed or aborted test process drops
/// nothing. So every container gets a small watcher: a shell in its own process group (a Ctrl-C at
/// the terminal does not reach it) that waits for end-of-file on a pipe whose write end only this
/// process holds (close-on-exec, so no child inherits it). The kernel closes that pipe when the
/// process exits, for any reason, and the watcher then removes the container. Removing a container
/// that is already gone is a no-op.
fn remove_when_process_exits(id: &str) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;
    static PIPES: Mutex<Vec<std::process::ChildStdin>> = Mutex::new(Vec::new());
    let spawned = Command::new("sh")
        .args([
            "-c",
            "cat >/dev/null; exec docker rm -f -v \"$0\" >/dev/null 2>&1",
            id,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(mut child) => {
            if let Some(stdin) = child.stdin.take() {
                PIPES.lock().unwrap_or_else(|p| p.into_inner()).push(stdin);
            }
            // Reap it in the background if this process outlives it (it never exits before us
            // unless killed; then there is nothing left to do).
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(e) => eprintln!(
            "testbed: cannot start the watcher that removes container {id} at exit ({e}); \
             scripts/testbed.sh removes leftovers"
        ),
    }
}

/// Options for one etcd container.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Member name; on a network also the container's name, which peers resolve (so it must be
    /// unique on the machine); default `etcd`.
    pub name: Option<String>,
    /// A Docker network to join (created if missing).
    pub network: Option<String>,
    /// `--initial-cluster` for a multi-member cluster.
    pub initial_cluster: Option<String>,
    /// A fixed host port for the client port (kept across stop/start).
    pub host_port: Option<u16>,
    /// Files to copy into the container, `(container path, bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra command-line flags.
    pub extra_args: Vec<String>,
    /// Client URL scheme (`https` with TLS flags in `extra_args`); default `http`, `https` with
    /// [`tls`](Self::tls).
    pub scheme: Option<String>,
    /// Serve clients over TLS only with this certificate (clients are asked for none unless
    /// `extra_args` names a `--trusted-ca-file`).
    pub tls: Option<ServerTls>,
}

/// A running etcd container.
pub struct Etcd {
    /// The container (dropping it removes it).
    pub container: ContainerAsync<GenericImage>,
    /// `127.0.0.1:port` of the client port.
    pub endpoint: String,
    /// The member name.
    pub name: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Starts an etcd container from [`ServerKind::Etcd`]'s image and waits until it serves clients.
pub async fn start_etcd(opts: EtcdOptions) -> Result<Etcd, String> {
    let name = opts.name.clone().unwrap_or_else(|| "etcd".to_owned());
    let default_scheme = if opts.tls.is_some() { "https" } else { "http" };
    let scheme = opts
        .scheme
        .clone()
        .unwrap_or_else(|| default_scheme.to_owned());
    let peer = format!("http://{name}:2380");
    let mut cmd = vec![
        "etcd".to_owned(),
        "--name".into(),
        name.clone(),
        "--data-dir".into(),
        format!("/data/{name}"),
        "--listen-client-urls".into(),
        format!("{scheme}://0.0.0.0:2379"),
        "--advertise-client-urls".into(),
        format!("{scheme}://{name}:2379"),
        "--listen-peer-urls".into(),
        "http://0.0.0.0:2380".into(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        opts.initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{name}={peer}")),
        "--initial-cluster-state".into(),
        "new".into(),
    ];
    if opts.tls.is_some() {
        cmd.extend([
            format!("--cert-file={}", ServerTls::CERT),
            format!("--key-file={}", ServerTls::KEY),
        ]);
    }
    cmd.extend(opts.extra_args.iter().cloned());
    let ready = WaitFor::message_on_stderr("ready to serve client requests");
    let (container, endpoint) = start_container(
        ServerKind::Etcd,
        cmd,
        2379,
        ready,
        opts.host_port,
        |mut req| {
            if let Some(net) = &opts.network {
                req = req
                    .with_network(net.clone())
                    .with_container_name(name.clone());
            }
            for (path, bytes) in &opts.files {
                req = req.with_copy_to(path.clone(), bytes.clone());
            }
            match &opts.tls {
                Some(tls) => tls.copy_into(req),
                None => req,
            }
        },
    )
    .await?;
    Ok(Etcd {
        container,
        endpoint,
        name,
    })
}

/// A server shared by every test of this process: started once, on a thread of its own so it
/// outlives each test's runtime, and kept until the process exits (the test bed removes leftover
/// containers by label). `None` (after printing why) when unavailable and not required.
fn shared<F, Fut, T>(
    kind: ServerKind,
    cell: &'static OnceLock<Result<String, String>>,
    start: F,
) -> Option<String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(String, T), String>>,
    T: Send + 'static,
{
    if let Some(ext) = kind.external_endpoints() {
        return Some(ext);
    }
    let r = cell.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("shared-{kind:?}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match start().await {
                        Ok((endpoint, server)) => {
                            let _ = tx.send(Ok(endpoint));
                            std::future::pending::<()>().await;
                            drop(server);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    });
    match r {
        Ok(ep) => Some(ep.clone()),
        Err(reason) => unavailable(&format!("{kind:?}"), reason),
    }
}

/// The etcd every test of this process shares (or `REGISTRY_TEST_ETCD_ENDPOINTS`).
pub fn shared_etcd() -> Option<String> {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    shared(ServerKind::Etcd, &CELL, || async {
        let etcd = start_etcd(EtcdOptions::default()).await?;
        Ok((etcd.endpoint.clone(), etcd))
    })
}

/// TLS for a test server: its certificate and key (PEM, for example from
/// [`TestCa::server_cert`](crate::pki::TestCa::server_cert)), copied into the container as
/// [`ServerTls::CERT`] and [`ServerTls::KEY`]. Clients are not asked for a certificate.
#[derive(Clone, Default)]
pub struct ServerTls {
    /// The server's certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

impl ServerTls {
    /// Where the certificate is in the container.
    pub const CERT: &str = "/certs/server.pem";
    /// Where the key is in the container.
    pub const KEY: &str = "/certs/server-key.pem";

    fn copy_into(&self, req: ContainerRequest<GenericImage>) -> ContainerRequest<GenericImage> {
        req.with_copy_to(Self::CERT, self.cert.clone().into_bytes())
            .with_copy_to(Self::KEY, self.key.clone().into_bytes())
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Options for one Redis container.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// A fixed host port (so a replacement container can take over the address).
    pub host_port: Option<u16>,
    /// Extra `redis-server` arguments (`--requirepass`, `--user`, ...).
    pub extra_args: Vec<String>,
    /// Serve TLS only (`--tls-port`, no plain-text port) with this certificate.
    pub tls: Option<ServerTls>,
}

/// A running Redis container.
pub struct Redis {
    /// The container (dropping it removes it).
    pub container: ContainerAsync<GenericImage>,
    /// `127.0.0.1:port`.
    pub endpoint: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Starts a Redis container (no persistence) and waits until it accepts connections.
pub async fn start_redis(opts: RedisOptions) -> Result<Redis, String> {
    let mut cmd: Vec<String> = [
        "redis-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if opts.tls.is_some() {
        // Debian's redis-server is built with TLS (it links libssl, which the image carries).
        let plain = cmd.iter().position(|a| a == "--port").expect("--port") + 1;
        cmd[plain] = "0".into();
        cmd.extend(
            [
                "--tls-port",
                "6379",
                "--tls-cert-file",
                ServerTls::CERT,
                "--tls-key-file",
                ServerTls::KEY,
                "--tls-auth-clients",
                "no",
            ]
            .map(String::from),
        );
    }
    cmd.extend(opts.extra_args.iter().cloned());
    let ready = WaitFor::message_on_stdout("Ready to accept connections");
    let (container, endpoint) = start_container(
        ServerKind::Redis,
        cmd,
        6379,
        ready,
        opts.host_port,
        |r| match &opts.tls {
            Some(tls) => tls.copy_into(r),
            None => r,
        },
    )
    .await?;
    Ok(Redis {
        container,
        endpoint,
    })
}

/// The Redis every test of this process shares (or `REGISTRY_TEST_REDIS_ENDPOINTS`).
pub fn shared_redis() -> Option<String> {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    shared(ServerKind::Redis, &CELL, || async {
        let r = start_redis(RedisOptions::default()).await?;
        Ok((r.endpoint.clone(), r))
    })
}

/// Options for one Consul container (a `-dev` agent: in-memory, single node).
#[derive(Clone, Debug, Default)]
pub struct ConsulOptions {
    /// A fixed host port for the HTTP API (so a restarted agent keeps its address).
    pub host_port: Option<u16>,
    /// Extra agent arguments (`-hcl ...` for ACLs).
    pub extra_args: Vec<String>,
    /// Serve the HTTP API over HTTPS (port 8501, the endpoint then) with this certificate.
    pub tls: Option<ServerTls>,
}

/// A running Consul container.
pub struct Consul {
    /// The container (dropping it removes it).
    pub container: ContainerAsync<GenericImage>,
    /// `127.0.0.1:port` of the HTTP API (HTTPS with [`ConsulOptions::tls`]).
    pub endpoint: String,
    /// `127.0.0.1:port` of the agent's DNS interface over UDP (container port 8600); `None` with
    /// [`ConsulOptions::host_port`] (a fixed mapping publishes the HTTP port alone).
    pub dns_udp: Option<String>,
    /// The same over TCP (Docker maps UDP and TCP to host ports of their own).
    pub dns_tcp: Option<String>,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("endpoint", &self.endpoint)
            .field("dns_udp", &self.dns_udp)
            .field("dns_tcp", &self.dns_tcp)
            .finish()
    }
}

/// Starts a Consul `-dev` agent and waits until it has a leader and has synced its node.
pub async fn start_consul(opts: ConsulOptions) -> Result<Consul, String> {
    let mut cmd: Vec<String> = [
        "consul",
        "agent",
        "-dev",
        "-client",
        "0.0.0.0",
        "-log-level",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if opts.tls.is_some() {
        for hcl in [
            "ports { https = 8501 }".to_owned(),
            format!("cert_file = \"{}\"", ServerTls::CERT),
            format!("key_file = \"{}\"", ServerTls::KEY),
            "verify_incoming = false".to_owned(),
        ] {
            cmd.extend(["-hcl".to_owned(), hcl]);
        }
    }
    cmd.extend(opts.extra_args.iter().cloned());
    let ready = WaitFor::message_on_stdout("Synced node info");
    let port = if opts.tls.is_some() { 8501 } else { 8500 };
    // A -dev agent serves DNS on 8600 (UDP and TCP) at the client address: published too, for
    // tests that ask Consul's DNS interface (`dig -p`).
    let dns_ports = [8600.udp(), 8600.tcp()];
    let (container, endpoint) = start_container_with_ports(
        ServerKind::Consul,
        cmd,
        port,
        if opts.host_port.is_none() {
            &dns_ports
        } else {
            &[]
        },
        ready,
        opts.host_port,
        |r| match &opts.tls {
            Some(tls) => tls.copy_into(r),
            None => r,
        },
    )
    .await?;
    let (mut dns_udp, mut dns_tcp) = (None, None);
    if opts.host_port.is_none() {
        for (p, slot) in dns_ports.into_iter().zip([&mut dns_udp, &mut dns_tcp]) {
            let mapped = container
                .get_host_port_ipv4(p)
                .await
                .map_err(|e| format!("Consul container has no mapped DNS port {p} ({e})"))?;
            *slot = Some(format!("127.0.0.1:{mapped}"));
        }
    }
    Ok(Consul {
        container,
        endpoint,
        dns_udp,
        dns_tcp,
    })
}

/// The Consul agent every test of this process shares (or `REGISTRY_TEST_CONSUL_ENDPOINTS`).
pub fn shared_consul() -> Option<String> {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    shared(ServerKind::Consul, &CELL, || async {
        let c = start_consul(ConsulOptions::default()).await?;
        Ok((c.endpoint.clone(), c))
    })
}

/// Options for one Prometheus container.
#[derive(Clone, Debug, Default)]
pub struct PrometheusOptions {
    /// The configuration file (`prometheus.yml`), copied into the container as
    /// [`Prometheus::CONFIG`].
    pub config: String,
    /// Extra command-line flags.
    pub extra_args: Vec<String>,
}

/// A running Prometheus container.
pub struct Prometheus {
    /// The container (dropping it removes it).
    pub container: ContainerAsync<GenericImage>,
    /// `127.0.0.1:port` of its web server and HTTP API (`/api/v1/...`).
    pub endpoint: String,
}

impl Prometheus {
    /// Where the configuration is in the container.
    pub const CONFIG: &str = "/etc/registry-test/prometheus.yml";
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Starts Prometheus with `opts.config` and waits until its web server is ready.
///
/// Prometheus must reach what it discovers and scrapes: `registry serve` and the targets, which the
/// tests run as processes of this machine listening on 127.0.0.1. So the container shares the
/// host's network (`--network host`) and listens on `127.0.0.1:<free port>` there: 127.0.0.1 means
/// the same thing to Prometheus, to the targets and to the test, the targets need not listen on
/// every interface, and nothing depends on the bridge's gateway address or on
/// `host.docker.internal`. It also holds when the tests run in a chroot, which shares the machine's
/// network namespace with the Docker engine. (No port is published: there is none to map.) The
/// configuration is copied into the container (as `docker cp` does), never bind-mounted, since the
/// engine may not see the test's files. The TSDB lives in the container's /tmp and goes with it.
pub async fn start_prometheus(opts: PrometheusOptions) -> Result<Prometheus, String> {
    let kind = ServerKind::Prometheus;
    let spec = kind.spec();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let mut args = vec![
        format!("--config.file={}", Prometheus::CONFIG),
        "--storage.tsdb.path=/tmp/prometheus".to_owned(),
        format!("--web.listen-address={endpoint}"),
    ];
    args.extend(opts.extra_args.iter().cloned());
    // The entrypoint is the binary, the command its flags: both the local image (no entrypoint,
    // /usr/bin on PATH) and the upstream one (entrypoint /bin/prometheus) run it that way.
    let container = GenericImage::new(spec.image.clone(), spec.tag.clone())
        .with_entrypoint("prometheus")
        .with_wait_for(WaitFor::message_on_stderr(
            "Server is ready to receive web requests",
        ))
        .with_network("host")
        .with_cmd(args)
        .with_copy_to(Prometheus::CONFIG, opts.config.clone().into_bytes())
        .with_label(LABEL.0, LABEL.1)
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .map_err(|e| {
            format!(
                "cannot start {kind:?} from image {}:{} ({e})",
                spec.image, spec.tag
            )
        })?;
    remove_when_process_exits(container.id());
    Ok(Prometheus {
        container,
        endpoint,
    })
}

/// A fresh namespace for one scenario: `prefix-<random>`.
pub fn fresh_namespace(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
