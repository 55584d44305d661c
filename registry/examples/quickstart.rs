//! The first thing to run: three instances of a service register under a shared lease, a watcher
//! discovers them, one leaves, and the lease's revoke takes the rest away at once. In-memory backend,
//! no server needed:
//!
//! ```text
//! cargo run -p registry --example quickstart
//! ```

use std::time::Duration;

use futures::StreamExt;
use registry::{Bytes, EventKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> registry::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".to_owned());
    let backend = registry::connect(&url).await?;
    println!("backend: {url}");

    let lease = backend.grant(Duration::from_secs(10)).await?;
    println!("granted lease {} (ttl {:?})", lease.id, lease.ttl);

    let instances = [
        ("web-1", "10.0.0.1:8080"),
        ("web-2", "10.0.0.2:8080"),
        ("web-3", "10.0.0.3:8080"),
    ];
    for (id, addr) in instances {
        let rev = backend
            .put(
                &format!("demo/web/{id}"),
                Bytes::copy_from_slice(addr.as_bytes()),
                Some(&lease.id),
            )
            .await?;
        println!("registered  web/{id:<6} {addr:<15} @ revision {rev}");
    }

    let listing = backend.list("demo/web").await?;
    println!(
        "\ndiscovered {} instances at revision {}:",
        listing.entries.len(),
        listing.revision
    );
    for kv in &listing.entries {
        println!("  {:<16} {}", kv.key, String::from_utf8_lossy(&kv.value));
    }

    let mut changes = backend.watch("demo/web", listing.revision).await?;
    backend.delete("demo/web/web-2").await?;
    backend.revoke(&lease.id).await?;
    println!("\nchanges after the listing:");
    let mut remaining = listing.entries.len();
    while remaining > 0 {
        let Some(event) = changes.next().await else {
            break;
        };
        let event = event?;
        let what = match event.kind {
            EventKind::Put => "put",
            EventKind::Delete => "removed",
        };
        println!(
            "  {what:<8} {:<16} @ revision {}",
            event.key, event.revision
        );
        if event.kind == EventKind::Delete {
            remaining -= 1;
        }
    }
    println!(
        "\nleft: {} instances",
        backend.list("demo/web").await?.entries.len()
    );
    Ok(())
}
