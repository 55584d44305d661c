//! The first thing to run: a process registers instances of two services, a second process
//! discovers them into its directory, routes keys to owners, and sees one instance leave. In-memory
//! backend, no server needed:
//!
//! ```text
//! cargo run -p service-registry --example quickstart
//! ```
//!
//! Pass a backend URL to run the same story against a server: `... --example quickstart etcd://127.0.0.1:2379`.

use std::time::Duration;

use registry::engine::{Instance, Registry};

#[tokio::main]
async fn main() -> registry::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://quickstart".to_owned());
    let backend = registry::connect(&url).await?;
    println!("backend   {url}");

    // Process A: a service host registering three web instances and a database, one shared lease.
    let host = Registry::builder(backend.clone())
        .ttl(Duration::from_secs(15))
        .heartbeat(Duration::from_secs(5))
        .build()?;
    let mut web = Vec::new();
    for (id, addr) in [
        ("web-1", "10.0.0.1:8080"),
        ("web-2", "10.0.0.2:8080"),
        ("web-3", "10.0.0.3:8080"),
    ] {
        web.push(
            host.register(Instance::new("web", id).addr(addr).meta("zone", "eu-1"))
                .await?,
        );
        println!("register  web/{id:<6} {addr}");
    }
    let _db = host
        .register(
            Instance::new("db", "db-1")
                .addr("10.0.1.1:5432")
                .version("15.4"),
        )
        .await?;
    println!("register  db/db-1    10.0.1.1:5432");

    // Process B: a client discovering everything.
    let client = Registry::new(backend.clone())?;
    let discovery = client.discover_all().await?;
    let directory = discovery.directory();
    println!("\ndirectory of the client:");
    for service in directory.services() {
        for inst in directory.get(&service).iter() {
            println!("  {service:<5} {:<6} {}", inst.id, inst.addrs.join(","));
        }
    }

    println!("\nrouting keys to web owners (consistent hashing):");
    for key in ["alice", "bob", "carol", "dave", "erin"] {
        let owner = directory
            .find("web", key)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        println!("  {key:<6} -> {owner}");
    }

    let leaving = web.remove(1);
    println!("\nweb-2 deregisters gracefully");
    leaving.deregister().await?;
    let mut view = directory.subscribe("web");
    view.wait_for(|s| s.online().len() == 2)
        .await
        .map_err(|_| registry::Error::new(registry::ErrorKind::Closed, "directory closed"))?;
    let left: Vec<String> = directory.get("web").iter().map(|i| i.id.clone()).collect();
    println!("web now: {}", left.join(", "));
    Ok(())
}
