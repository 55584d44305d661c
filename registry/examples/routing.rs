//! Keyed routing: three instances of one service, ten keys routed by consistent hashing; one
//! instance goes offline and only the keys it owned move.
//!
//! ```text
//! cargo run -p service-registry --example routing
//! ```

use std::collections::BTreeMap;

use registry::engine::{Instance, Registry};

#[tokio::main]
async fn main() -> registry::Result<()> {
    let backend = registry::connect("memory://routing").await?;
    let registry = Registry::new(backend)?;
    let mut regs = BTreeMap::new();
    for i in 1..=3 {
        let id = format!("worker-{i}");
        let reg = registry
            .register(Instance::new("jobs", &id).addr(format!("10.0.0.{i}:9000")))
            .await?;
        regs.insert(id, reg);
    }
    let discovery = registry.discover("jobs").await?;
    let dir = discovery.directory();

    let keys: Vec<String> = (1..=10).map(|k| format!("job-{k:02}")).collect();
    let before: Vec<String> = keys
        .iter()
        .map(|k| {
            dir.find("jobs", k)
                .map(|i| i.id.clone())
                .unwrap_or_default()
        })
        .collect();

    println!("worker-2 goes offline (stays listed, leaves routing)\n");
    regs["worker-2"].set_online(false).await?;
    let mut view = dir.subscribe("jobs");
    view.wait_for(|s| s.online().len() == 2)
        .await
        .map_err(|_| registry::Error::new(registry::ErrorKind::Closed, "directory closed"))?;

    println!("{:<8} {:<10} {:<10}", "key", "before", "after");
    let mut moved = 0;
    for (k, old) in keys.iter().zip(&before) {
        let new = dir
            .find("jobs", k)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        let mark = if *old != new {
            moved += 1;
            "  <- moved"
        } else {
            ""
        };
        println!("{k:<8} {old:<10} {new:<10}{mark}");
    }
    let owned = before.iter().filter(|o| *o == "worker-2").count();
    println!("\n{moved} keys moved; worker-2 owned {owned}: only its keys moved.");
    assert_eq!(moved, owned);
    Ok(())
}
