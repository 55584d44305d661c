//! `register`, `list`, `watch`, `find` and `serve`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use registry::engine::{
    Change, DirectoryEvent, Discovery, Instance, InstanceState, RegisterOptions, RegistrationState,
    Registry,
};
use registry::url::BackendUrl;
use registry::{Backend, Error, ErrorKind, Result};
use serde_json::json;

use crate::output::{bold, clean, dim, green, json_line, outln, red, table, yellow};
use crate::parse_duration;

/// What every command needs: where the backend is and which namespace to use.
pub(crate) struct Context {
    /// The backend URL, parsed once: what connecting uses.
    pub(crate) backend: BackendUrl,
    /// The same URL with its password and token masked (its `Display`): for everything shown.
    pub(crate) shown: String,
    pub(crate) namespace: String,
}

impl Context {
    pub(crate) fn new(backend: BackendUrl, namespace: String) -> Self {
        let shown = backend.to_string();
        Context {
            backend,
            shown,
            namespace,
        }
    }

    pub(crate) async fn backend(&self) -> Result<Arc<dyn Backend>> {
        registry::connect_url(&self.backend).await
    }

    /// A registry for registering. On Consul its instances are also mirrored into Consul's
    /// catalog (`CatalogMirror`), unless the URL says `catalog=false` or the environment
    /// `REGISTRY_CONSUL_CATALOG=false`.
    pub(crate) async fn registry(&self, ttl: Duration, heartbeat: Duration) -> Result<Registry> {
        let mut builder = Registry::builder(self.backend().await?)
            .namespace(self.namespace.clone())
            .ttl(ttl)
            .heartbeat(heartbeat);
        if let Some(mirror) = self.catalog_mirror()? {
            builder = builder.observer(mirror);
        }
        builder.build()
    }

    /// The Consul catalog mirror this backend URL asks for, if any.
    fn catalog_mirror(&self) -> Result<Option<Arc<registry::consul::CatalogMirror>>> {
        use registry::consul::{CatalogMirror, ConsulBuilder, catalog_option};
        if self.backend.tls_variant_of("consul").is_none() {
            return Ok(None);
        }
        let from_url = self
            .backend
            .query_pairs()
            .find(|(k, _)| *k == "catalog")
            .and_then(|(_, v)| catalog_option(v));
        let from_env = std::env::var("REGISTRY_CONSUL_CATALOG")
            .ok()
            .and_then(|v| catalog_option(&v));
        if !from_url.or(from_env).unwrap_or(true) {
            return Ok(None);
        }
        let consul = ConsulBuilder::from_backend_url(&self.backend)?;
        Ok(Some(Arc::new(CatalogMirror::start(&consul)?)))
    }

    /// A registry for reading (discovery only), with the backend's smallest valid lease options.
    async fn reader(&self) -> Result<Registry> {
        let backend = self.backend().await?;
        let caps = backend.capabilities();
        let ttl = caps.min_ttl.max(Duration::from_secs(15));
        Registry::builder(backend)
            .namespace(self.namespace.clone())
            .ttl(ttl)
            .heartbeat(ttl / 3)
            .build()
    }

    /// A discovery of `service` (or of every service), once it has listed what there is.
    async fn discover(&self, service: Option<&str>) -> Result<Discovery> {
        let reader = self.reader().await?;
        let d = match service {
            Some(s) => reader.discover(s).await?,
            None => reader.discover_all().await?,
        };
        synced(&d, &self.shown).await?;
        Ok(d)
    }
}

fn parse_meta(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

/// `HH:MM:SS` UTC, for log-like lines.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// Metadata as `k=v,k=v`, safe for a terminal (written by anyone).
fn meta_text(i: &Instance) -> String {
    clean(
        &i.metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Addresses as `a,b`, safe for a terminal.
fn addrs_text(i: &Instance) -> String {
    clean(&i.addrs.join(","))
}

fn instance_json(i: &Instance) -> serde_json::Value {
    serde_json::to_value(i).unwrap_or_default()
}

/// Waits until a discovery has loaded its first listing, or reports why it cannot.
async fn synced(d: &Discovery, url: &str) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(15), d.synced())
        .await
        .map_err(|_| {
            Error::unavailable(format!(
                "could not list instances from {url} within 15 s (check that the backend is reachable)"
            ))
        })
}

/// `registry register`.
#[derive(clap::Args, Debug)]
pub(crate) struct RegisterArgs {
    /// Service name (letters, digits, . _ -)
    service: String,
    /// Instance id, unique within the service
    #[arg(long)]
    id: String,
    /// Address to publish, HOST:PORT or a URL (repeatable)
    #[arg(long = "addr", required = true, value_name = "HOST:PORT")]
    addrs: Vec<String>,
    /// Metadata entry (repeatable)
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Software version to publish
    #[arg(long, value_name = "VERSION")]
    instance_version: Option<String>,
    /// Routing weight (100 = 128 virtual nodes)
    #[arg(long, default_value_t = 100)]
    weight: u32,
    /// How long the registration outlives its last heartbeat
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    ttl: Duration,
    /// How often to send a heartbeat (shorter than the TTL)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Register offline (listed, but not routed to)
    #[arg(long)]
    offline: bool,
    /// Print state changes as JSON lines
    #[arg(long)]
    json: bool,
    /// Replace the same id held by another live process (which then reports `conflict`)
    #[arg(long)]
    takeover: bool,
}

pub(crate) async fn register(ctx: &Context, a: RegisterArgs) -> Result<()> {
    let registry = ctx.registry(a.ttl, a.heartbeat).await?;
    let mut inst = Instance::new(&a.service, &a.id).weight(a.weight);
    for addr in &a.addrs {
        inst = inst.addr(addr);
    }
    for (k, v) in &a.meta {
        inst = inst.meta(k, v);
    }
    if let Some(v) = &a.instance_version {
        inst = inst.version(v);
    }
    if a.offline {
        inst = inst.state(InstanceState::Offline);
    }
    let what = format!("{}/{}", a.service, a.id);
    if !a.json {
        outln!(
            "{} {what} at {} on {} (ttl {:?}, heartbeat {:?}); Ctrl-C deregisters",
            bold("registering"),
            a.addrs.join(", "),
            ctx.shown,
            a.ttl,
            a.heartbeat
        );
    }
    // Catch Ctrl-C and SIGTERM from now on: one that arrives while the first write is on its way
    // must still deregister (with the default handling it would end the process and leave the
    // registration to expire with its TTL).
    let mut int = signal(SignalKind::interrupt());
    let mut term = signal(SignalKind::terminate());
    let reg = registry
        .register_with(inst, RegisterOptions::new().takeover(a.takeover))
        .await?;
    let mut states = reg.watch_state();
    let report = |s: &RegistrationState| {
        if a.json {
            let mut v =
                json!({"time": clock(), "service": a.service, "id": a.id, "state": s.name()});
            if let RegistrationState::Lost { error, .. } = s {
                v["error"] = json!(error.to_string());
            }
            if let RegistrationState::Conflict { holder, .. } = s {
                v["holder"] = json!(holder.to_string());
            }
            outln!("{}", json_line(&v));
        } else {
            let name = match s {
                RegistrationState::Registered { .. } => green(s.name()),
                RegistrationState::Lost { .. } | RegistrationState::Conflict { .. } => {
                    red(s.name())
                }
                _ => yellow(s.name()),
            };
            let detail = match s {
                RegistrationState::Registered { lease, .. } => dim(&format!("lease {lease}")),
                RegistrationState::Lost { error, .. } => clean(&error.to_string()),
                RegistrationState::Conflict { holder, .. } => {
                    clean(&format!("held by another live owner (lease {holder})"))
                }
                RegistrationState::Registering {
                    last_error: Some(e),
                } => clean(&e.to_string()),
                _ => String::new(),
            };
            let line = format!("{} {what} {name} {detail}", dim(&clock()));
            outln!("{}", line.trim_end());
        }
    };
    report(&states.borrow_and_update());
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                report(&states.borrow_and_update());
            }
            _ = recv(&mut int) => break,
            _ = recv(&mut term) => break,
        }
    }
    let result = reg.deregister().await;
    report(&RegistrationState::Deregistered);
    result
}

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Completes on Ctrl-C (SIGINT) or SIGTERM: how `serve` is asked to stop, in either phase.
async fn interrupted() {
    let mut term = signal(SignalKind::terminate());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = recv(&mut term) => {}
    }
}

async fn recv(sig: &mut std::io::Result<Signal>) {
    match sig {
        Ok(s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// `registry list`.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Only this service
    service: Option<String>,
    /// One JSON document instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sources: SourceArgs,
}

/// `--source`, on `list`, `watch` and `serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct SourceArgs {
    /// A directory source beside the backend: static:FILE, dns:[SERVICE=]SRVNAME or
    /// consul-catalog[=ADDR]; repeat for more
    #[arg(long = "source", value_name = "SPEC", value_parser = registry_cli::sources::SourceSpec::parse)]
    specs: Vec<registry_cli::sources::SourceSpec>,
}

/// Starts `specs` into `d`'s directory and waits (up to 5 s) until each has listed once.
async fn start_sources(
    d: &Discovery,
    specs: &[registry_cli::sources::SourceSpec],
) -> Result<registry_cli::sources::Sources> {
    let sources = registry_cli::sources::Sources::start(d.directory(), specs).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !sources.listed().iter().all(|(_, l)| *l) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, listed) in sources.listed() {
        if !listed {
            tracing::warn!(source = %name, "source has not listed yet; showing what it has");
        }
    }
    Ok(sources)
}

pub(crate) async fn list(ctx: &Context, a: ListArgs) -> Result<()> {
    let d = ctx.discover(a.service.as_deref()).await?;
    let _sources = start_sources(&d, &a.sources.specs).await?;
    let dir = d.directory();
    let services = match &a.service {
        Some(s) => vec![s.clone()],
        None => dir.services(),
    };
    let mut all: Vec<Arc<Instance>> = Vec::new();
    for s in &services {
        all.extend(dir.all(s));
    }
    if a.json {
        let doc: Vec<serde_json::Value> = all.iter().map(|i| instance_json(i)).collect();
        outln!("{}", json_line(&serde_json::Value::Array(doc)));
        return Ok(());
    }
    if all.is_empty() {
        outln!(
            "no instances{} in namespace {} on {}",
            a.service
                .as_deref()
                .map(|s| format!(" of {s}"))
                .unwrap_or_default(),
            ctx.namespace,
            ctx.shown
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|i| {
            let hidden = dir.snapshot(&i.service).is_hidden(&i.id);
            let state = match (i.state, hidden) {
                (_, true) => yellow("unreachable"),
                (InstanceState::Online, _) => green("online"),
                (InstanceState::Offline, _) => yellow("offline"),
                (other, _) => yellow(other.as_str()),
            };
            vec![
                clean(&i.service),
                clean(&i.id),
                state,
                addrs_text(i),
                clean(i.version.as_deref().unwrap_or_default()),
                meta_text(i),
            ]
        })
        .collect();
    table(
        &["SERVICE", "ID", "STATE", "ADDRESS", "VERSION", "META"],
        &rows,
    );
    Ok(())
}

/// `registry watch`.
#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {
    /// Only this service
    service: Option<String>,
    /// One JSON document per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sources: SourceArgs,
}

pub(crate) async fn watch(ctx: &Context, a: WatchArgs) -> Result<()> {
    let d = ctx.discover(a.service.as_deref()).await?;
    let _sources = start_sources(&d, &a.sources.specs).await?;
    if !a.json {
        outln!(
            "{} {} on {} (Ctrl-C to stop)",
            bold("watching"),
            a.service.as_deref().unwrap_or("every service"),
            ctx.shown
        );
    }
    // The directory's feed covers every service, those discovered later included: no polling.
    let mut feed = d.directory().all_changes();
    let mut routable = Routable::new(a.service.clone());
    let mut term = signal(SignalKind::terminate());
    loop {
        tokio::select! {
            Some(event) = feed.next() => {
                for (service, change) in routable.apply(&event) {
                    print_change(&service, &change, a.json);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = recv(&mut term) => break,
        }
    }
    drop(d);
    Ok(())
}

/// What `watch` shows: the routable (online, not probe-hidden) instances of each service, followed
/// through the directory's feed and turned into the insert / remove lines it has always printed.
struct Routable {
    only: Option<String>,
    held: HashMap<String, BTreeMap<String, Arc<Instance>>>,
}

impl Routable {
    fn new(only: Option<String>) -> Self {
        Routable {
            only,
            held: HashMap::new(),
        }
    }

    fn wanted(&self, service: &str) -> bool {
        self.only.as_deref().is_none_or(|s| s == service)
    }

    /// The changes to the routable instances that `event` makes, in order: for a resync (the
    /// start, or after falling behind), the net difference, removals first.
    fn apply(&mut self, event: &DirectoryEvent) -> Vec<(String, Change)> {
        let mut out = Vec::new();
        match event {
            DirectoryEvent::Change(c) => {
                if !self.wanted(&c.service) {
                    return out;
                }
                let held = self.held.entry(c.service.to_string()).or_default();
                let Some(inst) = c.instance() else {
                    return out; // staleness: not shown
                };
                match c.kind.routable() {
                    Some(now) if held.get(&inst.id) != Some(now) => {
                        held.insert(inst.id.clone(), now.clone());
                        out.push((
                            c.service.to_string(),
                            Change::Insert(inst.id.clone(), now.clone()),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        if held.remove(&inst.id).is_some() {
                            out.push((c.service.to_string(), Change::Remove(inst.id.clone())));
                        }
                    }
                }
            }
            DirectoryEvent::Resync(r) => {
                let mut next: HashMap<String, BTreeMap<String, Arc<Instance>>> = HashMap::new();
                for snap in r.services.iter().filter(|s| self.wanted(s.service())) {
                    next.insert(
                        snap.service().to_owned(),
                        snap.online()
                            .iter()
                            .map(|i| (i.id.clone(), i.clone()))
                            .collect(),
                    );
                }
                let mut services: Vec<&String> = self.held.keys().chain(next.keys()).collect();
                services.sort();
                services.dedup();
                let empty = BTreeMap::new();
                for service in services {
                    let before = self.held.get(service).unwrap_or(&empty);
                    let after = next.get(service).unwrap_or(&empty);
                    for id in before.keys().filter(|id| !after.contains_key(*id)) {
                        out.push((service.clone(), Change::Remove(id.clone())));
                    }
                    for (id, inst) in after {
                        if before.get(id) != Some(inst) {
                            out.push((service.clone(), Change::Insert(id.clone(), inst.clone())));
                        }
                    }
                }
                self.held = next;
            }
            // A kind of feed event this tool does not know: nothing to show.
            _ => {}
        }
        out
    }
}

fn print_change(service: &str, change: &Change, json: bool) {
    match (change, json) {
        (Change::Insert(id, inst), true) => outln!(
            "{}",
            json_line(
                &json!({"time": clock(), "event": "insert", "service": service, "id": id, "instance": instance_json(inst)})
            )
        ),
        (Change::Remove(id), true) => outln!(
            "{}",
            json_line(&json!({"time": clock(), "event": "remove", "service": service, "id": id}))
        ),
        (Change::Insert(id, inst), false) => outln!(
            "{} {} {}/{}  {}  {}",
            dim(&clock()),
            green("+"),
            clean(service),
            clean(id),
            addrs_text(inst),
            dim(&meta_text(inst))
        ),
        (Change::Remove(id), false) => {
            outln!(
                "{} {} {}/{}",
                dim(&clock()),
                red("-"),
                clean(service),
                clean(id)
            )
        }
    }
}

/// `registry find`.
#[derive(clap::Args, Debug)]
pub(crate) struct FindArgs {
    /// Service name
    service: String,
    /// The key to route (a user id, a file name, ...)
    key: String,
    /// How many distinct owners to list, walking the ring from the key
    #[arg(long, short = 'n', default_value_t = 1)]
    count: usize,
    /// One JSON document instead of a table
    #[arg(long)]
    json: bool,
}

pub(crate) async fn find(ctx: &Context, a: FindArgs) -> Result<()> {
    let d = ctx.discover(Some(&a.service)).await?;
    let owners = d.directory().find_n(a.count.max(1), &a.service, &a.key);
    if owners.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no online instance of service {} in namespace {} on {}",
                a.service, ctx.namespace, ctx.shown
            ),
        ));
    }
    if a.json {
        let doc: Vec<serde_json::Value> = owners.iter().map(|i| instance_json(i)).collect();
        outln!(
            "{}",
            json_line(&json!({"service": a.service, "key": a.key, "owners": doc}))
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = owners
        .iter()
        .enumerate()
        .map(|(n, i)| vec![(n + 1).to_string(), clean(&i.id), addrs_text(i)])
        .collect();
    outln!(
        "key {} of service {}:",
        bold(&clean(&a.key)),
        bold(&clean(&a.service))
    );
    table(&["RANK", "ID", "ADDRESS"], &rows);
    Ok(())
}

/// `registry serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to serve HTTP on (port 0 picks a free one; the address is printed)
    #[arg(long, default_value = registry_cli::serve::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Probe every instance's first address with a TCP connect this often (e.g. `5s`); an
    /// instance that does not answer is shown as hidden and left out of routing and of the
    /// Prometheus targets until it answers again. Off unless given
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    probe_interval: Option<Duration>,
    /// How long a request's head may take to arrive, and so how long a connection may idle
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::parse_duration)]
    header_timeout: Duration,
    /// How many connections may be open at once (the excess is told 503). Default: the
    /// open-file limit, raised to its hard limit, less room for the rest of the process
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// A host name clients may reach the server by (the `Host` header), besides IP addresses
    /// and `localhost`; repeat for more, `*` for any. Guards against DNS rebinding
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// A file holding the token every request must carry (`Authorization: Bearer TOKEN`, or as
    /// the password of HTTP Basic authentication); the health checks are open. Or set
    /// REGISTRY_SERVE_TOKEN. Required to listen beyond loopback, unless --no-auth
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// Listen beyond loopback without a token: anyone who reaches the port reads the estate
    #[arg(long)]
    no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key)
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Forget a service once it has shown no instance for this long (names that come and go
    /// must not grow the server)
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = crate::parse_duration)]
    forget_after: Duration,
    #[command(flatten)]
    sources: SourceArgs,
    /// Also serve the directory over xDS (gRPC's aggregated discovery service) on this address,
    /// for proxyless gRPC clients in any language (target `xds:///SERVICE`; see docs/xds.md).
    /// The token and TLS options apply to it too
    #[arg(long, value_name = "ADDR")]
    xds: Option<std::net::SocketAddr>,
    /// How xDS clients balance a service: round-robin (weighted by the instances' weights) or
    /// ring-hash (a call goes to the owner of its `x-key` header on a ring)
    #[arg(long, value_enum, default_value_t = XdsBalancing::RoundRobin, requires = "xds")]
    xds_balancing: XdsBalancing,
}

/// `--xds-balancing`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XdsBalancing {
    /// ROUND_ROBIN, weighted by the instances' weights
    RoundRobin,
    /// RING_HASH on the `x-key` request header
    RingHash,
}

/// The token of `registry serve`: from --token-file, else REGISTRY_SERVE_TOKEN. Never printed.
fn serve_token(a: &ServeArgs) -> Result<Option<registry_cli::serve::Token>> {
    use registry_cli::serve::Token;
    if let Some(path) = &a.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot read the token file {}", path.display()),
            )
            .with_source(e)
        })?;
        return Token::new(&text).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("the token file {} is empty", path.display()),
            )
        });
    }
    match std::env::var("REGISTRY_SERVE_TOKEN") {
        Ok(text) => Token::new(&text)
            .map(Some)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "REGISTRY_SERVE_TOKEN is empty")),
        Err(_) => Ok(None),
    }
}

pub(crate) async fn serve(ctx: &Context, a: ServeArgs) -> Result<()> {
    use registry::engine::{DiscoveryOptions, ProbeOptions, Scope};
    use registry_cli::serve::{Options, Server};
    let token = serve_token(&a)?;
    for addr in std::iter::once(a.listen).chain(a.xds) {
        if !addr.ip().is_loopback() && token.is_none() && !a.no_auth {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{addr} is reachable beyond this machine: give a token (--token-file or \
                     REGISTRY_SERVE_TOKEN), or say --no-auth to serve the estate to anyone who \
                     reaches the port"
                ),
            ));
        }
    }
    if token.is_some() && a.tls_cert.is_none() && !a.listen.ip().is_loopback() {
        tracing::warn!(
            "a token without TLS crosses the network in clear text (--tls-cert, --tls-key)"
        );
    }
    let mut allowed_hosts = vec!["localhost".to_owned()];
    allowed_hosts.extend(a.allow_hosts.iter().cloned());
    let options = Options {
        header_timeout: a.header_timeout,
        max_connections: a.max_connections,
        allowed_hosts,
        token,
        tls: a
            .tls_cert
            .clone()
            .zip(a.tls_key.clone())
            .map(|(cert, key)| registry_cli::serve::TlsFiles { cert, key }),
        forget_empty_after: a.forget_after,
        ..Options::default()
    };
    let mut opts = DiscoveryOptions::new();
    if let Some(every) = a.probe_interval {
        opts = opts.probe(ProbeOptions::tcp(every));
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let bind = || {
        let listener = registry_cli::serve::bind(a.listen).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot listen on {}", a.listen),
            )
            .with_source(e)
        })?;
        let addr = listener.local_addr().map_or(a.listen, |a| a);
        outln!(
            "{} namespace {} of {} on {scheme}://{addr}/ (Ctrl-C to stop)",
            bold("serving"),
            ctx.namespace,
            ctx.shown
        );
        Ok::<_, Error>(listener)
    };
    // A backend that cannot be reached at start (it starts after us, as under an orchestrator)
    // is waited for, the port already answering health checks; a permanent error (a bad URL, a
    // refused password) ends the command.
    let (reader, listener) = match ctx.reader().await {
        Ok(reader) => (reader, None),
        Err(e) if e.kind().is_permanent() => return Err(e),
        Err(e) => {
            let listener = std::sync::Arc::new(bind()?);
            match wait_for_backend(ctx, e, listener.clone(), &options).await? {
                Some(reader) => {
                    let listener = std::sync::Arc::try_unwrap(listener).map_err(|_| {
                        Error::new(ErrorKind::Internal, "the listener is still in use")
                    })?;
                    (reader, Some(listener))
                }
                // Stopped by a signal while waiting.
                None => return Ok(()),
            }
        }
    };
    // Not waiting for the first listing: until the backend answers, the API shows no service,
    // and a backend that goes away later shows as stale views rather than stopping the server.
    let d = reader.discover_with(Scope::All, opts).await?;
    let sources = std::sync::Arc::new(
        registry_cli::sources::Sources::start(d.directory(), &a.sources.specs).await?,
    );
    let listener = match listener {
        Some(listener) => listener,
        None => bind()?,
    };
    let shutdown = interrupted();
    let xds_options = registry_xds::XdsOptions {
        balancing: match a.xds_balancing {
            XdsBalancing::RoundRobin => registry_xds::Balancing::RoundRobin,
            XdsBalancing::RingHash => registry_xds::Balancing::RingHash,
        },
        token: options.token.as_ref().map(|t| t.expose()),
        tls: match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) if a.xds.is_some() => Some((read_pem(cert)?, read_pem(key)?)),
            _ => None,
        },
        ..registry_xds::XdsOptions::default()
    };
    let server = Server::new(d, options);
    server.sources_ready(sources.readiness());
    // Both servers stop on the same signal.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut xds_task = None;
    if let Some(xds_addr) = a.xds {
        let xds_listener = registry_cli::serve::bind(xds_addr).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot listen on {xds_addr} for xDS"),
            )
            .with_source(e)
        })?;
        let bound = xds_listener.local_addr().map_or(xds_addr, |a| a);
        let xds = registry_xds::XdsServer::new(server.directory().clone(), xds_options);
        server.xds_stats(xds.stats());
        outln!("{} xDS on {bound} (target xds:///SERVICE)", bold("serving"));
        let mut stopped = stopped.clone();
        xds_task = Some(tokio::spawn(xds.serve(xds_listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    let http = server
        .serve(listener, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
    if let Some(task) = xds_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the xDS server failed"),
            Err(e) => tracing::warn!(error = %e, "the xDS server's task failed"),
        }
    }
    http.map_err(|e| Error::new(ErrorKind::Unavailable, "the HTTP server failed").with_source(e))
}

/// Retries connecting to the backend (`first` was the first attempt's error) with back-off, 0.5 s
/// doubling to 10 s, one log line per failure, while `listener` answers health checks
/// ([`registry_cli::serve::connecting`]). The reader once connected (the listener is free
/// again), `None` if a signal stopped the wait, an error if one is permanent.
async fn wait_for_backend(
    ctx: &Context,
    first: Error,
    listener: std::sync::Arc<tokio::net::TcpListener>,
    options: &registry_cli::serve::Options,
) -> Result<Option<Registry>> {
    tracing::warn!(
        error = %first,
        "the backend cannot be reached; /healthz answers, /readyz says 503 until it is listed; retrying"
    );
    let (connected, until) = tokio::sync::oneshot::channel::<()>();
    let serving = registry_cli::serve::connecting(listener, options, async move {
        let _ = until.await;
    });
    tokio::pin!(serving);
    let retry = async {
        let mut backoff =
            registry::engine::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match ctx.reader().await {
                Ok(reader) => return Ok(reader),
                Err(e) if e.kind().is_permanent() => return Err(e),
                Err(e) => tracing::warn!(
                    error = %e,
                    attempts = backoff.attempts() + 1,
                    "the backend still cannot be reached; retrying"
                ),
            }
        }
    };
    let outcome = tokio::select! {
        r = retry => Some(r),
        () = interrupted() => None,
        r = &mut serving => {
            r.map_err(|e| Error::new(ErrorKind::Unavailable, "serving failed").with_source(e))?;
            return Err(Error::new(ErrorKind::Internal, "stopped serving while connecting"));
        }
    };
    let _ = connected.send(());
    serving
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, "serving failed").with_source(e))?;
    match outcome {
        Some(reader) => {
            let reader = reader?;
            tracing::info!("the backend is reachable; serving the directory");
            Ok(Some(reader))
        }
        None => Ok(None),
    }
}

/// A PEM file's bytes, or an error naming the file (never its content).
fn read_pem(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("cannot read {}", path.display()),
        )
        .with_source(e)
    })
}

#[cfg(test)]
mod tests;
