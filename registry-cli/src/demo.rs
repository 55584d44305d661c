//! `registry demo`: the whole story in under a minute, on the in-memory backend by default.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use registry::Result;
use registry::engine::{Directory, Instance, Registration, Registry};
use tokio::time::{Instant, sleep};

use crate::commands::Context;
use crate::output::{bold, dim, green, out, outln, red, yellow};

/// `registry demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// How many keys to route
    #[arg(long, default_value_t = 20)]
    keys: usize,
}

fn step(n: u32, text: &str) {
    outln!("\n{}  {}", bold(&n.to_string()), bold(text));
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// Waits until `check` holds for the service's snapshot (or 60 s pass).
async fn until(
    dir: &Directory,
    service: &str,
    check: impl Fn(&registry::engine::ServiceSnapshot) -> bool,
) {
    let mut rx = dir.subscribe(service);
    let _ = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| check(s))).await;
}

fn ids(dir: &Directory, service: &str) -> Vec<String> {
    dir.get(service).iter().map(|i| i.id.clone()).collect()
}

pub(crate) async fn run(ctx: &Context, a: DemoArgs) -> Result<()> {
    let backend = ctx.backend().await?;
    let caps = backend.capabilities();
    let ttl = caps
        .grant_ttl(caps.min_ttl.max(Duration::from_secs(5)))
        .unwrap_or(Duration::from_secs(5));
    let heartbeat = ttl / 5;
    // On a shared server, keep the demo's keys apart from everything else.
    let namespace = if ctx.backend.scheme() == "memory" {
        ctx.namespace.clone()
    } else {
        format!("{}-demo-{}", ctx.namespace, std::process::id())
    };
    let process = || {
        Registry::builder(backend.clone())
            .namespace(namespace.clone())
            .ttl(ttl)
            .heartbeat(heartbeat)
            .build()
    };

    outln!(
        "{} five instances of two services, on {} (namespace {namespace})",
        bold("registry demo:"),
        ctx.shown
    );

    step(
        1,
        &format!(
            "Five instances register, each in a process of its own (TTL {}s, heartbeat {:.1}s)",
            ttl.as_secs(),
            heartbeat.as_secs_f64()
        ),
    );
    let instances = [
        ("api", "api-1", "10.0.0.1:8080", "eu-west-1a"),
        ("api", "api-2", "10.0.0.2:8080", "eu-west-1b"),
        ("api", "api-3", "10.0.0.3:8080", "eu-west-1c"),
        ("cache", "cache-1", "10.0.1.1:6379", "eu-west-1a"),
        ("cache", "cache-2", "10.0.1.2:6379", "eu-west-1b"),
    ];
    let mut processes: BTreeMap<&str, (Registry, Registration)> = BTreeMap::new();
    for (service, id, addr, zone) in instances {
        let p = process()?;
        let reg = p
            .register(Instance::new(service, id).addr(addr).meta("zone", zone))
            .await?;
        outln!(
            "   {} {:<14} {:<15} {}",
            green("+"),
            format!("{service}/{id}"),
            addr,
            dim(&format!("zone={zone}"))
        );
        processes.insert(id, (p, reg));
    }

    step(2, "A client discovers both services; its directory fills");
    let client = process()?;
    let discovery = client.discover_all().await?;
    let dir = discovery.directory().clone();
    until(&dir, "api", |s| s.online().len() == 3).await;
    until(&dir, "cache", |s| s.online().len() == 2).await;
    for service in ["api", "cache"] {
        let online = ids(&dir, service);
        outln!(
            "   {:<6} {} online  {}",
            service,
            online.len(),
            online.join(" ")
        );
    }

    step(
        3,
        &format!(
            "{} keys are routed to api instances by consistent hashing (128 virtual nodes each)",
            a.keys
        ),
    );
    let keys: Vec<String> = (1..=a.keys).map(|k| format!("user-{k:02}")).collect();
    let owner = |k: &str| {
        dir.find("api", k)
            .map(|i| i.id.clone())
            .unwrap_or_else(|| "-".into())
    };
    let before: Vec<String> = keys.iter().map(|k| owner(k)).collect();
    for row in keys.iter().zip(&before).collect::<Vec<_>>().chunks(4) {
        let line: Vec<String> = row.iter().map(|(k, o)| format!("{k} → {:<7}", o)).collect();
        outln!("   {}", line.join("  ").trim_end());
    }
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &before {
        *load.entry(o.as_str()).or_default() += 1;
    }
    outln!(
        "   {}",
        dim(&load
            .iter()
            .map(|(o, n)| format!("{o} owns {n}"))
            .collect::<Vec<_>>()
            .join(" · "))
    );

    step(
        4,
        "api-2 goes offline (still listed, out of routing): its keys move, and no other key",
    );
    processes["api-2"].1.set_online(false).await?;
    until(&dir, "api", |s| s.online().iter().all(|i| i.id != "api-2")).await;
    let mut moved = 0;
    let mut moved_from_others = 0;
    for (k, old) in keys.iter().zip(&before) {
        let new = owner(k);
        if &new != old {
            moved += 1;
            if old != "api-2" {
                moved_from_others += 1;
            }
            outln!("   {k}  {} → {}", yellow(old), green(&new));
        }
    }
    let owned = before.iter().filter(|o| *o == "api-2").count();
    outln!(
        "   {moved} of {} keys moved, {} api-2's {owned}; {} stayed where they were.",
        keys.len(),
        if moved_from_others == 0 {
            "exactly"
        } else {
            "NOT only"
        },
        keys.len() - moved
    );
    let listed: Vec<String> = dir
        .all("api")
        .iter()
        .map(|i| {
            format!(
                "{} ({})",
                i.id,
                if i.is_online() { "online" } else { "offline" }
            )
        })
        .collect();
    outln!("   {}", dim(&format!("listed: {}", listed.join(", "))));

    step(
        5,
        "api-3 crashes: its process stops heart-beating; it disappears when its TTL runs out",
    );
    let (crashed, reg) = processes.remove("api-3").expect("api-3");
    let crashed_at = Instant::now();
    crashed.crash();
    std::mem::forget(reg); // a crashed process deregisters nothing
    out!("   api-3 still listed ");
    flush();
    let mut shown = ttl.as_secs() + 1;
    loop {
        if dir.all("api").iter().all(|i| i.id != "api-3") {
            break;
        }
        let left = ttl
            .saturating_sub(crashed_at.elapsed())
            .as_millis()
            .div_ceil(1000) as u64;
        if left < shown {
            shown = left;
            out!("{} ", yellow(&format!("{left}s")));
            flush();
        }
        if crashed_at.elapsed() > ttl + caps.expiry_slack_for(ttl) + Duration::from_secs(30) {
            outln!();
            outln!("   {}", red("api-3 did not expire in time"));
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    outln!(
        "… {} {:.1}s after the crash",
        red("gone"),
        crashed_at.elapsed().as_secs_f64()
    );

    let grace = Duration::from_secs(2);
    step(
        6,
        &format!(
            "cache-1 drains: out of routing at once, deregistered after a {}s grace, gone at once",
            grace.as_secs()
        ),
    );
    let (_p, reg) = processes.remove("cache-1").expect("cache-1");
    let drain_at = Instant::now();
    let drain = tokio::spawn(reg.drain(grace));
    until(&dir, "cache", |s| {
        s.online().iter().all(|i| i.id != "cache-1")
    })
    .await;
    outln!(
        "   cache-1 {} {:.1}s after the drain began (still listed while it finishes its work)",
        yellow("offline"),
        drain_at.elapsed().as_secs_f64()
    );
    let _ = drain.await;
    until(&dir, "cache", |s| s.all().keys().all(|id| id != "cache-1")).await;
    outln!(
        "   cache-1 {} {:.1}s after the drain began, without waiting for its TTL",
        red("gone"),
        drain_at.elapsed().as_secs_f64()
    );

    outln!(
        "\n{} api {} online ({}), cache {} online ({})",
        bold("Directory now:"),
        ids(&dir, "api").len(),
        ids(&dir, "api").join(" "),
        ids(&dir, "cache").len(),
        ids(&dir, "cache").join(" ")
    );
    // Leave nothing behind on a real server.
    for (_, (_p, reg)) in processes {
        let _ = reg.deregister().await;
    }
    if ctx.backend.scheme() == "memory" {
        outln!(
            "{}",
            dim(
                "Next: the same against a server, `registry --backend etcd://127.0.0.1:2379 demo`; or `registry --help`."
            )
        );
    }
    Ok(())
}
