//! etcd 3.5: one member or a cluster on a network, with TLS and authentication when asked.

use std::sync::OnceLock;

use testcontainers::core::WaitFor;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::container::*;

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

/// The etcd every test of this process shares (or `REGISTRY_TEST_ETCD_ENDPOINTS`).
pub fn shared_etcd() -> Option<String> {
    static CELL: OnceLock<Result<String, String>> = OnceLock::new();
    shared(ServerKind::Etcd, &CELL, || async {
        let etcd = start_etcd(EtcdOptions::default()).await?;
        Ok((etcd.endpoint.clone(), etcd))
    })
}
