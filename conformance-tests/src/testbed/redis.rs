//! Redis 7.0, with TLS and extra arguments when asked.

use std::sync::OnceLock;

use testcontainers::core::WaitFor;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::container::*;

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

/// Options for one Redis Sentinel (Debian's `redis-server --sentinel`, from the Redis image).
#[derive(Clone, Debug)]
pub struct SentinelOptions {
    /// A fixed host port for the sentinel's port (26379 inside).
    pub host_port: Option<u16>,
    /// The master's name, as clients ask for it.
    pub master_name: String,
    /// The master's `ip:port`, as the sentinel reaches it (a container's address).
    pub master: String,
    /// How many sentinels must agree that the master is down.
    pub quorum: u32,
    /// `down-after-milliseconds`: how long without an answer before a server is down.
    pub down_after_ms: u64,
    /// `failover-timeout`, in milliseconds.
    pub failover_timeout_ms: u64,
    /// More lines of the configuration file (`requirepass ...`, `sentinel auth-pass ...`).
    pub extra_conf: Vec<String>,
    /// Serve TLS only with this certificate, and speak TLS to the master, trusting `tls_ca` (PEM).
    pub tls: Option<(ServerTls, String)>,
}

/// Where a sentinel with TLS finds the CA it trusts for the master's certificate.
const SENTINEL_CA: &str = "/certs/ca.pem";

/// The sentinel's configuration file inside its container (a sentinel rewrites it: writable).
const SENTINEL_CONF: &str = "/data/sentinel.conf";

/// Starts a sentinel monitoring `opts.master` and waits until it does.
pub async fn start_redis_sentinel(opts: SentinelOptions) -> Result<Redis, String> {
    let (ip, port) = opts
        .master
        .rsplit_once(':')
        .ok_or_else(|| format!("master {:?} is not ip:port", opts.master))?;
    let name = &opts.master_name;
    let conf = format!(
        "port 26379\nbind 0.0.0.0\nprotected-mode no\ndir /data\n\
         sentinel monitor {name} {ip} {port} {q}\n\
         sentinel down-after-milliseconds {name} {down}\n\
         sentinel failover-timeout {name} {fail}\n\
         sentinel parallel-syncs {name} 1\n",
        q = opts.quorum,
        down = opts.down_after_ms,
        fail = opts.failover_timeout_ms,
    ) + &opts
        .extra_conf
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &match &opts.tls {
            Some(_) => format!(
                "port 0\ntls-port 26379\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {SENTINEL_CA}\ntls-auth-clients no\ntls-replication yes\n",
                ServerTls::CERT,
                ServerTls::KEY
            ),
            None => String::new(),
        };
    let cmd = vec![
        "redis-server".to_owned(),
        SENTINEL_CONF.to_owned(),
        "--sentinel".to_owned(),
    ];
    let ready = WaitFor::message_on_stdout("+monitor master");
    let (container, endpoint) =
        start_container(ServerKind::Redis, cmd, 26379, ready, opts.host_port, |r| {
            let r = r.with_copy_to(SENTINEL_CONF, conf.into_bytes());
            match &opts.tls {
                Some((tls, ca)) => tls
                    .copy_into(r)
                    .with_copy_to(SENTINEL_CA, ca.clone().into_bytes()),
                None => r,
            }
        })
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
