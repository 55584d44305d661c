//! Baselines measured with each backend's client directly, without the registry: the put -> watch
//! event latency (the physical limit for propagation) and sequential and pipelined put throughput.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use registry::Backend;

use crate::stats::{Summary, summarize};

/// `host:port` parts of a backend URL (`scheme://[userinfo@]hosts[/path][?query]`).
fn hosts(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split(',').map(str::to_owned).collect()
}

fn tag() -> String {
    format!("bench-raw-{}", std::process::id())
}

/// Pause between latency samples: the same pace as the registry's propagation samples, so that
/// both meet the same connection and scheduler state.
pub(crate) const PACE: Duration = Duration::from_millis(110);

/// Put -> watch event latency with the client crate directly, `n` samples.
pub(crate) async fn latency(url: &str, n: usize) -> Result<Summary, String> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("etcd") => etcd_latency(url, n).await,
        Some("redis") => redis_latency(url, n).await,
        Some("consul") => consul_latency(url, n).await,
        Some("memory") => memory_latency(n).await,
        _ => Err(format!("no raw baseline for {url}")),
    }
}

/// Sequential and pipelined (64 in flight) put throughput, in puts per second.
pub(crate) async fn throughput(url: &str, n: usize) -> Result<(f64, f64), String> {
    match url.split_once("://").map(|(s, _)| s) {
        Some("etcd") => etcd_throughput(url, n).await,
        Some("redis") => redis_throughput(url, n).await,
        Some("consul") => consul_throughput(url, n).await,
        Some("memory") => memory_throughput(n).await,
        _ => Err(format!("no raw baseline for {url}")),
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Puts `n` keys one after another, then `n` more with 64 in flight: puts per second for each.
/// `put` gets the key's suffix (`s{i}` for the sequential ones, `p{i}` for the pipelined ones).
async fn put_rates<F, Fut, E>(n: usize, put: F) -> Result<(f64, f64), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: ToString,
{
    let t0 = Instant::now();
    for i in 0..n {
        put(format!("s{i}")).await.map_err(|e| e.to_string())?;
    }
    let seq = rate(n, t0.elapsed());
    let t0 = Instant::now();
    let results: Vec<Result<(), E>> = futures::stream::iter(0..n)
        .map(|i| put(format!("p{i}")))
        .buffer_unordered(64)
        .collect()
        .await;
    let piped = rate(n, t0.elapsed());
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        return Err(e.to_string());
    }
    Ok((seq, piped))
}

async fn etcd_client(url: &str) -> Result<etcd_client::Client, String> {
    let eps: Vec<String> = hosts(url)
        .into_iter()
        .map(|h| format!("http://{h}"))
        .collect();
    etcd_client::Client::connect(eps, None)
        .await
        .map_err(|e| e.to_string())
}

async fn etcd_latency(url: &str, n: usize) -> Result<Summary, String> {
    let mut c = etcd_client(url).await?;
    let prefix = format!("{}/lat/", tag());
    let mut watch = c
        .watch(
            prefix.clone(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| e.to_string())?;
    // Wait for the watch to be created before the first put.
    let _ = watch.message().await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(PACE).await;
        let key = format!("{prefix}{i}");
        let t0 = Instant::now();
        c.put(key.clone(), "v", None)
            .await
            .map_err(|e| e.to_string())?;
        'wait: loop {
            let resp = watch
                .message()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("watch ended")?;
            for ev in resp.events() {
                if ev.kv().is_some_and(|kv| kv.key() == key.as_bytes()) {
                    samples.push(t0.elapsed());
                    break 'wait;
                }
            }
        }
    }
    let _ = c
        .delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    Ok(summarize(samples))
}

async fn etcd_throughput(url: &str, n: usize) -> Result<(f64, f64), String> {
    let c = etcd_client(url).await?;
    let prefix = format!("{}/tp/", tag());
    let rates = put_rates(n, |k| {
        let (mut c, key) = (c.clone(), format!("{prefix}{k}"));
        async move { c.put(key, "v", None).await.map(|_| ()) }
    })
    .await;
    let _ = c
        .clone()
        .delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    rates
}

fn redis_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

async fn redis_latency(url: &str, n: usize) -> Result<Summary, String> {
    use redis::AsyncCommands;
    let client = redis::Client::open(redis_url(url)).map_err(|e| e.to_string())?;
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut reader = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    let mut writer = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let key = format!("{}:lat", tag());
    let mut samples = Vec::with_capacity(n);
    let mut last = "0-0".to_owned();
    for i in 0..n {
        tokio::time::sleep(PACE).await;
        let t0 = Instant::now();
        let id: String = writer
            .xadd(&key, "*", &[("i", i)])
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let opts = redis::streams::StreamReadOptions::default()
                .block(5000)
                .count(16);
            let reply: Option<redis::streams::StreamReadReply> = reader
                .xread_options(&[&key], &[&last], &opts)
                .await
                .map_err(|e| e.to_string())?;
            let ids: Vec<String> = reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(|e| e.id)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(l) = ids.last() {
                last = l.clone();
            }
            if ids.contains(&id) {
                samples.push(t0.elapsed());
                break;
            }
        }
    }
    let _: () = writer.del(&key).await.map_err(|e| e.to_string())?;
    Ok(summarize(samples))
}

async fn redis_throughput(url: &str, n: usize) -> Result<(f64, f64), String> {
    use redis::AsyncCommands;
    let client = redis::Client::open(redis_url(url)).map_err(|e| e.to_string())?;
    let con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("{}:tp:", tag());
    let rates = put_rates(n, |k| {
        let (mut con, key) = (con.clone(), format!("{prefix}{k}"));
        async move { con.set::<_, _, ()>(key, "v").await }
    })
    .await?;
    let keys: Vec<String> = (0..n)
        .flat_map(|i| [format!("{prefix}s{i}"), format!("{prefix}p{i}")])
        .collect();
    for chunk in keys.chunks(1000) {
        let _: () = con.clone().del(chunk).await.map_err(|e| e.to_string())?;
    }
    Ok(rates)
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    BoxBody<Bytes, Infallible>,
>;

fn http() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

async fn consul_call(
    c: &Http,
    method: hyper::Method,
    uri: String,
    body: Option<&'static str>,
) -> Result<Option<u64>, String> {
    let body: BoxBody<Bytes, Infallible> = match body {
        Some(b) => Full::new(Bytes::from_static(b.as_bytes())).boxed(),
        None => Empty::new().boxed(),
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let _ = resp.into_body().collect().await;
    Ok(index)
}

async fn consul_latency(url: &str, n: usize) -> Result<Summary, String> {
    let base = format!("http://{}", hosts(url)[0]);
    let prefix = format!("{}/lat/", tag());
    let c = http();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let watcher = {
        let (c, base, prefix) = (c.clone(), base.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut index = 0u64;
            loop {
                let uri = format!("{base}/v1/kv/{prefix}?recurse=true&index={index}&wait=5s");
                match consul_call(&c, hyper::Method::GET, uri, None).await {
                    Ok(Some(i)) => {
                        if i != index && index != 0 && tx.send(Instant::now()).is_err() {
                            return;
                        }
                        index = i;
                    }
                    _ => return,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(PACE).await;
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        consul_call(
            &c,
            hyper::Method::PUT,
            format!("{base}/v1/kv/{prefix}{i}"),
            Some("v"),
        )
        .await?;
        let woke = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| "blocking query never woke")?
            .ok_or("watcher ended")?;
        samples.push(woke.saturating_duration_since(t0));
    }
    watcher.abort();
    consul_call(
        &c,
        hyper::Method::DELETE,
        format!("{base}/v1/kv/{}?recurse=true", tag()),
        None,
    )
    .await?;
    Ok(summarize(samples))
}

async fn consul_throughput(url: &str, n: usize) -> Result<(f64, f64), String> {
    let base = format!("http://{}", hosts(url)[0]);
    let prefix = format!("{}/tp/", tag());
    let c = http();
    let rates = put_rates(n, |k| {
        let (c, uri) = (c.clone(), format!("{base}/v1/kv/{prefix}{k}"));
        async move {
            consul_call(&c, hyper::Method::PUT, uri, Some("v"))
                .await
                .map(|_| ())
        }
    })
    .await?;
    consul_call(
        &c,
        hyper::Method::DELETE,
        format!("{base}/v1/kv/{}?recurse=true", tag()),
        None,
    )
    .await?;
    Ok(rates)
}

async fn memory_latency(n: usize) -> Result<Summary, String> {
    let b = registry::memory::MemoryBackend::new();
    let mut w = b.watch("lat", 0).await.map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(PACE).await;
        let t0 = Instant::now();
        b.put(&format!("lat/{i}"), Bytes::from_static(b"v"), None)
            .await
            .map_err(|e| e.to_string())?;
        w.next()
            .await
            .ok_or("watch ended")?
            .map_err(|e| e.to_string())?;
        samples.push(t0.elapsed());
    }
    Ok(summarize(samples))
}

async fn memory_throughput(n: usize) -> Result<(f64, f64), String> {
    let b = registry::memory::MemoryBackend::new();
    put_rates(n, |k| {
        let b = b.clone();
        async move { b.put(&k, Bytes::from_static(b"v"), None).await.map(|_| ()) }
    })
    .await
}
