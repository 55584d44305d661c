//! Consul 1.8 `-dev` agents, with a fixed port, ACLs or TLS when asked.

use std::sync::OnceLock;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::{ContainerAsync, GenericImage};

use super::container::*;

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

impl ConsulOptions {
    /// An agent with ACLs on, denying by default, whose master and agent token is `root`.
    pub fn with_acls(root: &str) -> ConsulOptions {
        ConsulOptions {
            extra_args: vec![
                "-hcl".into(),
                format!(
                    r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{root}" agent = "{root}" }} }}"#
                ),
            ],
            ..ConsulOptions::default()
        }
    }
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

impl Consul {
    /// Port 8600 at the container's address on the Docker bridge: the agent's DNS interface over
    /// UDP and TCP at one address (the host mappings give each protocol a port of its own, which a
    /// resolver that retries a truncated answer over TCP cannot use). The machine, and a chroot
    /// sharing its network, reach the bridge directly.
    pub fn bridge_dns(&self) -> Result<std::net::SocketAddr, String> {
        let ip = container_ip(self.container.id())?;
        Ok(std::net::SocketAddr::new(ip, 8600))
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
