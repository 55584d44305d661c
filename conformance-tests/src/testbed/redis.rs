//! Redis 7.0, with TLS and extra arguments when asked.

use std::sync::OnceLock;

use testcontainers::core::WaitFor;
use testcontainers::{ContainerAsync, GenericImage};

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

/// The Redis every test of this process shares (or `REGISTRY_TEST_REDIS_ENDPOINTS`).
pub fn shared_redis() -> Option<String> {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    shared(ServerKind::Redis, &CELL, || async {
        let r = start_redis(RedisOptions::default()).await?;
        Ok((r.endpoint.clone(), r))
    })
}
