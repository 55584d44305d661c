//! A service that registers itself and leaves gracefully: on Ctrl-C (or after `--for SECS`) it goes
//! offline (out of routing, still listed), keeps serving for a drain window, then deregisters, so no
//! client is routed to it while it stops and nobody waits for a TTL.
//!
//! ```text
//! cargo run -p service-registry --example graceful_drain                       # memory, stops after 3 s
//! cargo run -p service-registry --features etcd --example graceful_drain -- etcd://127.0.0.1:2379 --for 0
//! ```

use std::time::Duration;

use registry::engine::{Instance, RegistrationState, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> registry::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut url = "memory://drain".to_owned();
    let mut run_for = Some(Duration::from_secs(3));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--for" => {
                let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                run_for = (secs > 0).then(|| Duration::from_secs(secs));
            }
            other => url = other.to_owned(),
        }
    }

    // The service itself: answers every connection with a greeting.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| registry::Error::unavailable("bind").with_source(e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| registry::Error::unavailable("local addr").with_source(e))?;
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(b"hello from greeter-1\n").await;
        }
    });

    let backend = registry::connect(&url).await?;
    let registry = Registry::new(backend)?;
    let registration = registry
        .register(Instance::new("greeter", "greeter-1").addr(addr.to_string()))
        .await?;
    println!("greeter-1 serving on {addr}, registered on {url}");
    let mut states = registration.watch_state();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let s: RegistrationState = states.borrow_and_update().clone();
            println!("  state: {s}");
        }
    });

    match run_for {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            println!("Ctrl-C to stop");
            let _ = tokio::signal::ctrl_c().await;
        }
    }

    let grace = Duration::from_secs(2);
    println!("stopping: offline now, serving in-flight work for {grace:?}, then deregistering");
    registration.drain(grace).await?;
    server.abort();
    println!("deregistered; bye");
    Ok(())
}
