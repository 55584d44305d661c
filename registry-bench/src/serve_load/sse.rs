//! SSE clients: ones that read the change stream, parse every event and note when each change
//! arrived, and stalled ones that ask for the stream and never read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};

use super::changes::Changes;
use super::http::{Client, get};

#[derive(Default)]
pub(super) struct SseClientStats {
    /// Bytes of the first (start) resync event.
    pub(super) resync_bytes: usize,
    /// Resyncs after the first: the client lagged or was told to start over.
    pub(super) later_resyncs: u64,
    /// (change index, microseconds from the change's call to receipt), in order of receipt.
    pub(super) got: Vec<(u32, u32)>,
    /// Change events that match no change the driver made.
    pub(super) unknown: u64,
    /// Event ids that did not increase.
    pub(super) out_of_order: u64,
    /// Events other than resync, insert, remove (update, stale, fresh).
    pub(super) other: u64,
    /// Why the stream ended before it was stopped, if it did.
    pub(super) failed: Option<String>,
}

/// Splits off the complete events (blank-line terminated) from `buf`, from `scanned` on.
fn next_event(buf: &mut Vec<u8>, scanned: &mut usize) -> Option<Vec<u8>> {
    let from = scanned.saturating_sub(1);
    match buf[from..].windows(2).position(|w| w == b"\n\n") {
        Some(p) => {
            let end = from + p + 2;
            let rest = buf.split_off(end);
            let ev = std::mem::replace(buf, rest);
            *scanned = 0;
            Some(ev)
        }
        None => {
            *scanned = buf.len();
            None
        }
    }
}

pub(super) async fn sse_client(
    addr: SocketAddr,
    changes: Arc<Changes>,
    started: Arc<AtomicUsize>,
    connect_slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SseClientStats {
    let mut st = SseClientStats::default();
    let permit = connect_slots.acquire_owned().await.expect("open semaphore");
    let mut body = match open_stream(addr).await {
        Ok(b) => b,
        Err(e) => {
            st.failed = Some(e);
            return st;
        }
    };
    let mut permit = Some(permit);
    let (mut buf, mut scanned, mut last_seq) = (Vec::new(), 0usize, None::<u64>);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => break,
        };
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                st.failed = Some(e.to_string());
                break;
            }
            None => {
                st.failed = Some("the server ended the stream".into());
                break;
            }
        };
        let now = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(ev) = next_event(&mut buf, &mut scanned) {
            let (mut kind, mut id, mut payload) = ("", "", "");
            let text = String::from_utf8_lossy(&ev);
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    payload = v.trim_start();
                }
            }
            if kind.is_empty() {
                continue; // a keep-alive comment
            }
            if let Some(seq) = id.split_once('-').and_then(|(_, s)| s.parse::<u64>().ok()) {
                if last_seq.is_some_and(|l| seq <= l) {
                    st.out_of_order += 1;
                }
                last_seq = Some(seq);
            }
            match kind {
                "resync" if permit.is_some() => {
                    st.resync_bytes = ev.len();
                    permit = None;
                    started.fetch_add(1, Ordering::SeqCst);
                }
                "resync" => st.later_resyncs += 1,
                "insert" | "remove" => {
                    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                    let key = format!(
                        "{kind}/{}/{}",
                        v["service"].as_str().unwrap_or(""),
                        v["id"].as_str().unwrap_or("")
                    );
                    match changes.lookup(&key) {
                        Some((idx, at)) => st
                            .got
                            .push((idx, now.saturating_duration_since(at).as_micros() as u32)),
                        None => st.unknown += 1,
                    }
                }
                _ => st.other += 1,
            }
        }
    }
    st
}

async fn open_stream(addr: SocketAddr) -> Result<hyper::body::Incoming, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/events")
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    Ok(resp.into_body())
}

/// `registry_sse_clients` from the server's /metrics.
pub(super) async fn open_streams(c: &Client, addr: SocketAddr) -> Option<u64> {
    let (_, body) = get(c, &format!("http://{addr}/metrics")).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let line = text
        .lines()
        .find(|l| l.starts_with("registry_sse_clients "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A client that asks for the change stream and, once the server has answered `200`, never reads
/// again. (The answer's status line is read so that a refused request counts as an error: until
/// 6b4a0b6 these clients sent a `Host` the server's allow-list refuses since issue 28, and the
/// phase measured nothing.)
pub(super) async fn stalled_client(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(2048)?;
    let mut s = sock.connect(addr).await?;
    let request =
        format!("GET /v1/events HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut status = [0u8; 12];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_exact(&mut status),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    if &status != b"HTTP/1.1 200" {
        return Err(std::io::Error::other(format!(
            "the change stream was refused: {}",
            String::from_utf8_lossy(&status)
        )));
    }
    Ok(s)
}
