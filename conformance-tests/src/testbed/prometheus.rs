//! Prometheus 2.42: the scraper that `registry serve`'s HTTP service discovery is tested against.

use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::container::*;

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
