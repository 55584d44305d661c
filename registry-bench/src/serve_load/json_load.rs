//! JSON requests: an open loop at a fixed rate over the server's read routes, each request timed
//! from its scheduled send time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::http::{Client, get};
use crate::stats::{Summary, summarize_or_zero};

pub(super) const ROUTES: [&str; 3] = ["services", "service", "owners"];

/// Request `k` of a run: a fifth list the services, two fifths read one service, two fifths ask a
/// key's owners.
fn request_path(k: u64, services: usize) -> (usize, String) {
    let svc = format!("svc-{:02}", (k * 7) as usize % services);
    match k % 5 {
        0 => (0, "/v1/services".into()),
        1 | 2 => (1, format!("/v1/services/{svc}")),
        _ => (2, format!("/v1/services/{svc}/owners?key=user-{k}&n=2")),
    }
}

pub(super) struct LoadResult {
    pub(super) sent: u64,
    pub(super) took: Duration,
    pub(super) all: Summary,
    pub(super) by_route: Vec<Summary>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) bytes: u64,
}

pub(super) async fn json_load(
    c: &Client,
    addr: SocketAddr,
    rps: u32,
    dur: Duration,
    services: usize,
) -> LoadResult {
    let n = (f64::from(rps) * dur.as_secs_f64()) as u64;
    let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    // At most this many requests in flight (and as many connections): waiting for a slot counts in
    // the latency, since it is measured from the scheduled time.
    let slots = Arc::new(Semaphore::new(256));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(n as usize);
    for k in 0..n {
        let at = start + Duration::from_secs_f64(k as f64 / f64::from(rps));
        tokio::time::sleep_until(at).await;
        let permit = slots.clone().acquire_owned().await.expect("open semaphore");
        let (route, path) = request_path(k, services);
        let uri = format!("http://{addr}{path}");
        let (c, samples, errors, bytes, first_error) = (
            c.clone(),
            samples.clone(),
            errors.clone(),
            bytes.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), get(&c, &uri)).await;
            let took = at.elapsed();
            drop(permit);
            let failure = match r {
                Ok(Ok((200, body))) if body.first() == Some(&b'{') => {
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    None
                }
                Ok(Ok((status, _))) => Some(format!("{path}: status {status}")),
                Ok(Err(e)) => Some(format!("{path}: {e}")),
                Err(_) => Some(format!("{path}: no answer within 10 s")),
            };
            if let Some(f) = failure {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error.lock().unwrap().get_or_insert(f);
            }
            samples.lock().unwrap().push((route, took));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = start.elapsed();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let by_route = (0..ROUTES.len())
        .map(|r| {
            summarize_or_zero(
                samples
                    .iter()
                    .filter(|(x, _)| *x == r)
                    .map(|(_, d)| *d)
                    .collect(),
            )
        })
        .collect();
    let all = summarize_or_zero(samples.into_iter().map(|(_, d)| d).collect());
    let first_error = first_error.lock().unwrap().take();
    LoadResult {
        sent: n,
        took,
        all,
        by_route,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        bytes: bytes.load(Ordering::Relaxed),
    }
}
