//! A client balancing requests over the live instances of a service with `tower::balance` (power of
//! two choices), fed directly by the directory's change stream: instances that register join the
//! balancer, instances that leave or go offline leave it, with no polling and no restart.
//!
//! ```text
//! cargo run -p service-registry --features tower --example balance_p2c
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use registry::engine::{Instance, Registry};
use tower::balance::p2c::Balance;
use tower::load::Constant;
use tower::{Service, ServiceExt};

/// The client-side service for one instance. A real client would open a connection to
/// `instance.addrs[0]`; here each "connection" answers with the instance's id.
fn connect(
    instance: &Instance,
) -> Constant<tower::util::BoxService<String, String, Infallible>, u32> {
    let id = instance.id.clone();
    let svc = tower::service_fn(move |req: String| {
        let id = id.clone();
        async move { Ok::<_, Infallible>(format!("{id} handled {req}")) }
    });
    Constant::new(tower::util::BoxService::new(svc), 1)
}

/// Sends `n` requests through `svc` and counts which instance handled each.
async fn send_many<S>(svc: &mut S, n: usize) -> BTreeMap<String, usize>
where
    S: Service<String, Response = String>,
    S::Error: std::fmt::Debug,
{
    let mut by = BTreeMap::new();
    for i in 0..n {
        let reply = svc
            .ready()
            .await
            .expect("balancer ready")
            .call(format!("request-{i}"))
            .await
            .expect("call");
        let who = reply.split_whitespace().next().unwrap_or("?").to_owned();
        *by.entry(who).or_default() += 1;
    }
    by
}

#[tokio::main]
async fn main() -> registry::Result<()> {
    let backend = registry::connect("memory://balance").await?;
    let server_side = Registry::new(backend.clone())?;
    let mut regs = Vec::new();
    for i in 1..=3 {
        regs.push(
            server_side
                .register(
                    Instance::new("echo", format!("echo-{i}")).addr(format!("10.0.0.{i}:7000")),
                )
                .await?,
        );
    }

    let client = Registry::new(backend)?;
    let discovery = client.discover("echo").await?;
    let discover = discovery.directory().changes("echo").into_discover(connect);
    let mut balancer = Balance::new(discover);

    println!(
        "30 requests over 3 instances: {:?}",
        send_many(&mut balancer, 30).await
    );

    let leaving = regs.remove(1);
    println!("echo-2 goes offline");
    leaving.set_online(false).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = send_many(&mut balancer, 30).await;
    println!("30 requests after:          {after:?}");
    assert!(
        !after.contains_key("echo-2"),
        "an offline instance still got requests"
    );
    Ok(())
}
