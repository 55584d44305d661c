//! `fault-node`: one registering or discovering process of a fault scene.
//!
//! - `fault-node register --backend URL --namespace NS --service S --ids a,b,c [--ttl 3s --heartbeat 1s]
//!   [--op-timeout 2s] [--takeover]` registers each id through the library (with `--takeover`, taking
//!   over ids another live process holds) and prints one JSON line per state change of each
//!   handle: `{"kind":"state","id":..,"state":..,"lease":..,"error":..,"pid":..,"t_ms":..}`. On
//!   SIGTERM (or Ctrl-C) it deregisters every id, prints `deregistered` for each and exits 0.
//! - `fault-node discover --backend URL --namespace NS --service S` follows the service and prints,
//!   every 200 ms and on each change, `{"kind":"view","ids":[..],"stale":..,"synced":..,"revision":..}`.
//!
//! Every line is flushed as it is written. Errors are shown through the library's messages, which
//! mask the URL's secrets.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use registry::config::try_parse_duration;
use registry::engine::RegisterOptions;
use registry::{Instance, Registration, RegistrationState, Registry};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "A registering or discovering process of a fault scene")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Backend URL (etcd://, redis://, consul://, memory://)
    #[arg(long)]
    backend: String,
    /// Registry namespace
    #[arg(long)]
    namespace: String,
    /// Service name
    #[arg(long)]
    service: String,
    /// Lease TTL
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    ttl: Duration,
    /// Heartbeat interval
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Deadline of each backend call (default: the library's, the heartbeat)
    #[arg(long, value_parser = parse_duration)]
    op_timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Register ids and report each handle's state changes.
    Register {
        #[command(flatten)]
        common: Common,
        /// Instance ids, comma separated
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<String>,
        /// Take over ids another live process holds (`RegisterOptions::takeover`)
        #[arg(long)]
        takeover: bool,
    },
    /// Follow a service and report its directory view.
    Discover {
        #[command(flatten)]
        common: Common,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    try_parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Writes one line to stdout and flushes it (a closed stdout ends the process: nobody listens).
fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn state_line(id: &str, s: &RegistrationState) -> serde_json::Value {
    let mut v = json!({
        "kind": "state",
        "id": id,
        "state": s.name(),
        "pid": std::process::id(),
        "t_ms": now_ms() as u64,
    });
    match s {
        RegistrationState::Registered { lease, .. } => v["lease"] = json!(lease.to_string()),
        RegistrationState::Lost { error, .. } => v["error"] = json!(error.to_string()),
        RegistrationState::Registering {
            last_error: Some(e),
        } => v["error"] = json!(e.to_string()),
        _ => {}
    }
    v
}

async fn build(c: &Common) -> registry::Result<Registry> {
    let backend = registry::connect(&c.backend).await?;
    let mut b = Registry::builder(backend)
        .namespace(c.namespace.clone())
        .ttl(c.ttl)
        .heartbeat(c.heartbeat);
    if let Some(t) = c.op_timeout {
        b = b.op_timeout(t);
    }
    b.build()
}

async fn register(c: Common, ids: Vec<String>, takeover: bool) -> registry::Result<()> {
    let registry = build(&c).await?;
    let mut handles: Vec<(String, Registration)> = Vec::new();
    let mut tasks = Vec::new();
    for id in &ids {
        let inst = Instance::new(&c.service, id).addr("127.0.0.1:9");
        let reg = registry
            .register_with(inst, RegisterOptions::new().takeover(takeover))
            .await?;
        let mut rx = reg.watch_state();
        let id2 = id.clone();
        tasks.push(tokio::spawn(async move {
            emit(state_line(&id2, &rx.borrow_and_update()));
            while rx.changed().await.is_ok() {
                emit(state_line(&id2, &rx.borrow_and_update()));
            }
        }));
        handles.push((id.clone(), reg));
    }
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| registry::Error::unavailable(format!("cannot listen for SIGTERM: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for t in &tasks {
        t.abort();
    }
    let mut result = Ok(());
    for (id, reg) in handles {
        if let Err(e) = reg.deregister().await {
            result = Err(e);
        }
        emit(state_line(&id, &RegistrationState::Deregistered));
    }
    result
}

async fn discover(c: Common) -> registry::Result<()> {
    let registry = build(&c).await?;
    let d = registry.discover(&c.service).await?;
    let mut rx = d.directory().subscribe(&c.service);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let snap = rx.borrow_and_update().clone();
        emit(json!({
            "kind": "view",
            "ids": snap.all().keys().collect::<Vec<_>>(),
            "stale": snap.is_stale(),
            "synced": snap.is_synced(),
            "revision": snap.revision(),
            "pid": std::process::id(),
            "t_ms": now_ms() as u64,
        }));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(()); },
            _ = tick.tick() => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The library's own log lines (lease lost, repairs, conflicts, re-lists) on stderr, for
    // reading a failed scene: `RUST_LOG=registry_core=info`; errors only by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Register {
            common,
            ids,
            takeover,
        } => register(common, ids, takeover).await,
        Cmd::Discover { common } => discover(common).await,
    };
    if let Err(e) = r {
        emit(json!({"kind": "error", "error": e.to_string(), "pid": std::process::id()}));
        std::process::exit(1);
    }
}
