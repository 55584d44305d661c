//! Keyed dispatch (Dispatch.Service): each file name is owned by one instance of an "uploader"
//! service by consistent hashing. Writes go to the owner and the next instance on the ring with
//! `multi_call` (two replicas, in parallel, each within a timeout); reads go to the owner with `call`.
//!
//! ```text
//! cargo run -p service-registry --example keyed_dispatch
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::engine::{Dispatcher, Instance, Registry};

#[derive(Clone, Debug)]
enum Request {
    Put(String, String),
    Get(String),
}

/// Each instance's storage, standing in for a remote uploader process.
type Stores = Arc<Mutex<HashMap<String, HashMap<String, String>>>>;

#[tokio::main]
async fn main() -> registry::Result<()> {
    let backend = registry::connect("memory://dispatch").await?;
    let servers = Registry::new(backend.clone())?;
    let mut regs = Vec::new();
    for i in 1..=4 {
        regs.push(
            servers
                .register(
                    Instance::new("uploader", format!("up-{i}")).addr(format!("10.0.2.{i}:9000")),
                )
                .await?,
        );
    }
    let client = Registry::new(backend)?;
    let discovery = client.discover("uploader").await?;

    let stores: Stores = Arc::default();
    let dispatcher = Dispatcher::new(discovery.directory().clone(), "uploader", {
        let stores = stores.clone();
        move |inst: &Instance| {
            // One client per instance, created once and dropped when the instance leaves.
            let (id, stores) = (inst.id.clone(), stores.clone());
            tower::service_fn(move |req: Request| {
                let (id, stores) = (id.clone(), stores.clone());
                async move {
                    let mut all = stores.lock().expect("stores");
                    let mine = all.entry(id.clone()).or_default();
                    Ok::<_, Infallible>(match req {
                        Request::Put(k, v) => {
                            mine.insert(k, v);
                            format!("stored on {id}")
                        }
                        Request::Get(k) => {
                            mine.get(&k).cloned().unwrap_or_else(|| "(missing)".into())
                        }
                    })
                }
            })
        }
    });

    for file in [
        "cat.png",
        "report.pdf",
        "notes.txt",
        "song.mp3",
        "photo.jpg",
    ] {
        let results = dispatcher
            .multi_call(
                2,
                file,
                Request::Put(file.into(), format!("contents of {file}")),
                Duration::from_secs(1),
            )
            .await;
        let replicas: Vec<String> = results
            .iter()
            .map(|(inst, r)| match r {
                Ok(_) => inst.id.clone(),
                Err(e) => format!("{} failed: {e}", inst.id),
            })
            .collect();
        println!("{file:<11} written to {}", replicas.join(" and "));
    }
    println!();
    for file in ["cat.png", "notes.txt"] {
        let owner = dispatcher
            .owner(file)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        let got = dispatcher
            .call(file, Request::Get(file.into()))
            .await
            .expect("call");
        println!("{file:<11} read from its owner {owner}: {got}");
    }
    println!(
        "\nclients held: {} (one per instance routed to)",
        dispatcher.client_count()
    );
    Ok(())
}
