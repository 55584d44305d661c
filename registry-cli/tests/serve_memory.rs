//! `registry serve`'s memory under slow event-stream clients, measured from outside: the real
//! binary over a real etcd holding thousands of instances, and hundreds of clients that open
//! `/v1/events` and read 2 KB a second. Every client starts with a resync of the whole
//! directory; the server serializes it once and writes it to each in pieces, so its resident
//! memory grows by a few copies of that document and a little per client, not by a copy per
//! client.
//!
//! Defaults (the README's test command): 20,000 instances, 200 clients, 30 s. For the larger
//! figures in BENCHMARKS.md: `SERVE_MEMORY_INSTANCES=100000 SERVE_MEMORY_CLIENTS=1000
//! SERVE_MEMORY_SECONDS=60`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use conformance_tests::testbed;
use registry::engine::{Instance, Registry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Opens `/v1/events` and returns the connection with the answer's head read.
async fn open_events(addr: &str, recv_buffer: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(b) = recv_buffer {
        socket.set_recv_buffer_size(b).unwrap();
    }
    let mut tcp = socket
        .connect(addr.parse().unwrap())
        .await
        .expect("connect");
    tcp.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_event_clients_share_one_resync() {
    let instances = setting("SERVE_MEMORY_INSTANCES", 20_000);
    let clients = setting("SERVE_MEMORY_CLIENTS", 200);
    let seconds = setting("SERVE_MEMORY_SECONDS", 30) as u64;
    let Some(etcd) = testbed::shared_etcd() else {
        return;
    };
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if soft < clients as u64 + 256 {
        rlimit::increase_nofile_limit(clients as u64 + 256).unwrap();
    }
    let url = format!("etcd://{etcd}");
    let ns = testbed::fresh_namespace("serve-mem");
    let backend = registry::connect(&url).await.expect("connect to etcd");
    let writer = Registry::builder(backend)
        .namespace(ns.clone())
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Instant::now();
    let outcomes = writer
        .register_many((0..instances).map(|i| {
            Instance::new(format!("svc-{}", i % 50), format!("i{i:06}"))
                .addr(format!(
                    "10.{}.{}.{}:8080",
                    i / 65536,
                    i / 256 % 256,
                    i % 256
                ))
                .meta("zone", ["a", "b", "c"][i % 3])
                .meta("build", "2026.12.07-0123456789abcdef")
        }))
        .await;
    let handles: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.expect("registered"))
        .collect();
    eprintln!("{instances} instances registered in {:.1?}", t.elapsed());

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(["--backend", &url, "--namespace", &ns])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    // Ready once listed; then one fast client reads a whole resync: its size is the directory's
    // serialized size, and the server now holds that document (the baseline includes it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut fast = open_events(&addr, None).await;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = Vec::new();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let document = loop {
        let n = tokio::time::timeout(Duration::from_secs(30), fast.read(&mut buf))
            .await
            .expect("the resync within 30 s")
            .unwrap();
        assert!(n > 0, "the stream ended");
        got.extend_from_slice(&buf[..n]);
        if let Some(start) = find(&got, b"event: resync")
            && let Some(len) = find(&got[start..], b"\n\n")
        {
            break len;
        }
    };
    drop(fast);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss(pid);

    // The slow clients: a small receive buffer, 2 KB a second.
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let addr = addr.clone();
        readers.spawn(async move {
            let mut tcp = open_events(&addr, Some(4096)).await;
            let mut buf = [0u8; 2048];
            let mut total = 0usize;
            while Instant::now() < stop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return (total, false),
                    Ok(n) => total += n,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (total, true)
        });
    }
    let mut peak = base;
    while Instant::now() < stop {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut read = 0;
    let mut still_open = 0;
    while let Some(r) = readers.join_next().await {
        let (n, open) = r.unwrap();
        read += n;
        still_open += usize::from(open);
    }
    let growth = peak.saturating_sub(base);
    let per_client = 64 * 1024u64;
    let bound = 3 * document as u64 + clients as u64 * per_client;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{instances} instances, resync document {:.1} MiB; {clients} clients at 2 KB/s for \
         {seconds} s ({still_open} still connected, {:.1} MiB read in all): RSS {:.1} MiB -> peak \
         {:.1} MiB, growth {:.1} MiB (bound: 3 documents + 64 KiB a client = {:.1} MiB)",
        mib(document as u64),
        mib(read as u64),
        mib(base),
        mib(peak),
        mib(growth),
        mib(bound)
    );
    assert!(
        growth <= bound,
        "RSS grew by {:.1} MiB, more than {:.1} MiB",
        mib(growth),
        mib(bound)
    );
    assert_eq!(still_open, clients, "a 2 KB/s client was dropped");
    drop(handles);
    writer.shutdown().await.expect("shut down the writer");
}
