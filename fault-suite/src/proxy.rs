//! A TCP forwarder in front of a server, whose target can be switched (a failover: the address the
//! clients know now leads to another server, and every open connection is closed), and whose
//! server-to-client bytes can be delayed (a slow server).
//!
//! The delay is pipelined: every chunk read from the server is stamped with its arrival time plus
//! the delay in force then, and written to the client once that moment has come, while reading
//! goes on. So the delay adds latency to every answer without limiting throughput (a window of
//! answers is in flight, as on a long link), and changing it affects only the bytes that arrive
//! afterwards (order is kept: a chunk never overtakes an earlier one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// A running forwarder.
pub struct Proxy {
    port: u16,
    target: Arc<Mutex<String>>,
    /// Delay of server-to-client bytes, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `target` (`host:port`), without delay.
    pub async fn start(target: String) -> Result<Proxy, String> {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("proxy bind: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let target = Arc::new(Mutex::new(target));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, c, d) = (target.clone(), conns.clone(), delay_ms.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                let to = t.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let down = d.clone();
                let h = tokio::spawn(async move {
                    if let Ok(out) = TcpStream::connect(&to).await {
                        forward(inbound, out, down).await;
                    }
                });
                let mut all = c.lock().unwrap_or_else(|p| p.into_inner());
                all.retain(|h| !h.is_finished());
                all.push(h);
            }
        });
        Ok(Proxy {
            port,
            target,
            delay_ms,
            conns,
            accept,
        })
    }

    /// `127.0.0.1:port` the clients use.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Points new connections at `target` and closes every open one.
    pub fn switch(&self, target: String) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    /// Delays the server-to-client bytes that arrive from now on by `d` (zero: none), on every
    /// connection, open or new.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(
            d.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// Forwards both ways until both directions ended (each end's EOF passed on as a shutdown of the
/// other's write side), or until either failed (both sockets are then closed).
async fn forward(inbound: TcpStream, out: TcpStream, down_delay: Arc<AtomicU64>) {
    let _ = inbound.set_nodelay(true);
    let _ = out.set_nodelay(true);
    let (client_r, client_w) = inbound.into_split();
    let (server_r, server_w) = out.into_split();
    let up = pipe(client_r, server_w, Arc::new(AtomicU64::new(0)));
    let down = pipe(server_r, client_w, down_delay);
    let _ = tokio::try_join!(up, down);
}

/// Copies `r` to `w`, each chunk held back until its arrival time plus the delay in force at its
/// arrival (reading goes on meanwhile). `Err` when either side failed.
async fn pipe(
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    delay_ms: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let due = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::SeqCst));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            sleep_until(due).await;
            w.write_all(&bytes).await?;
        }
        // The reader saw EOF and everything before it is written: pass the EOF on.
        w.shutdown().await
    };
    tokio::try_join!(read, write).map(drop)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}
