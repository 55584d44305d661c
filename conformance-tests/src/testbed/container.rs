//! What every server of the test bed shares: images per server, containers removed when the
//! test process ends, servers shared by the tests of a process, and what to do when a server
//! cannot be had.

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
pub(crate) async fn start_container(
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
pub(crate) async fn start_container_with_ports(
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
pub(crate) fn remove_when_process_exits(id: &str) {
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

/// A server shared by every test of this process: started once, on a thread of its own so it
/// outlives each test's runtime, and kept until the process exits (the test bed removes leftover
/// containers by label). `None` (after printing why) when unavailable and not required.
pub(crate) fn shared<F, Fut, T>(
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

    pub(crate) fn copy_into(
        &self,
        req: ContainerRequest<GenericImage>,
    ) -> ContainerRequest<GenericImage> {
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

/// The address of container `id` on Docker's bridge (the machine, and a chroot sharing its
/// network, reach it directly).
pub fn container_ip(id: &str) -> Result<std::net::IpAddr, String> {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            id,
        ])
        .output()
        .map_err(|e| format!("cannot run docker inspect ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "docker inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ip.parse()
        .map_err(|_| format!("the container has no bridge address ({ip:?})"))
}

/// A fresh namespace for one scenario: `prefix-<random>`.
pub fn fresh_namespace(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand_u64())
}

pub(crate) fn rand_u64() -> u64 {
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
