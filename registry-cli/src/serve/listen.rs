//! The accept loop: what keeps a client from holding the server up or using up its descriptors.
//!
//! - **A connection limit below the process's file limit.** [`raise_file_limit`] raises the soft
//!   limit to the hard one at start; the limit on connections leaves room under it for the
//!   backend's connections, probes and files. A connection beyond the limit is accepted, told
//!   `503` in one write and closed (counted in `/metrics`), so `accept` itself never fails for
//!   lack of descriptors and the server keeps answering those it holds.
//! - **A header timeout that is also the idle timeout.** hyper times the reading of a request's
//!   head from the moment the connection waits for one: a new connection that sends nothing, one
//!   that sends a byte a second, and a kept-alive connection idle between requests are all closed
//!   once it runs out. A response being streamed (an event stream) is not waiting for a head and
//!   is not cut.
//! - **A TLS handshake within the same timeout**, when TLS is on.
//! - **Stalled writes fail** ([`super::conn::Stalling`]).
//!
//! Written by hand rather than with `axum::serve`, which builds hyper without a timer (so
//! without the header timeout) and has no connection limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::conn::Stalling;
use super::metrics::Metrics;

/// Descriptors kept free under the file limit for everything but client connections: the
/// backend's connections, probes, files. At least this many, or an eighth of the limit.
const RESERVED_FILES: u64 = 64;

/// How long the accept loop pauses after `accept` itself failed (out of descriptors despite the
/// limit: another part of the process used them): a failing accept must not become a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long a graceful stop waits for the connections that are still answering.
const DRAIN: Duration = Duration::from_secs(1);

/// The answer to a connection over the limit, written at once and closed.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 51\r\n\
\r\n\
{\"error\":\"too many connections; retry in a moment\"}";

/// Raises the soft limit on open files to the hard one and returns it (the soft limit as it
/// is if it cannot be read or raised).
pub fn raise_file_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((_, hard)) => rlimit::increase_nofile_limit(hard).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            1024
        }
    }
}

/// How many connections the kernel may hold for `accept` (capped by `net.core.somaxconn`): a
/// burst of connections larger than the queue loses the handshakes beyond it, and a client whose
/// last handshake packet was dropped waits for the server's retransmissions (1, 3, 7, 15, 31 s).
pub const ACCEPT_BACKLOG: u32 = 4096;

/// A listener on `addr` with an accept queue of [`ACCEPT_BACKLOG`] (tokio's `bind` asks for 1,024).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The connection limit that leaves room for the rest of the process under `file_limit`.
pub fn connection_limit(file_limit: u64) -> usize {
    let reserved = RESERVED_FILES.max(file_limit / 8);
    usize::try_from(file_limit.saturating_sub(reserved).max(1)).unwrap_or(usize::MAX)
}

/// What the accept loop needs.
pub(crate) struct Accept {
    /// Shared: the listener serves the connecting phase first, then the server (see
    /// [`connecting`](super::connecting)).
    pub(crate) listener: Arc<TcpListener>,
    pub(crate) router: Router,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) tls: Option<TlsAcceptor>,
}

impl Accept {
    /// Accepts and serves connections until `shutdown` completes, then lets the open ones finish
    /// for a moment (event streams end by themselves: the server's stop ends them).
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        let service = TowerToHyperService::new(self.router.clone());
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        self.metrics.accept_failed();
                        tracing::warn!(error = %e, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                self.metrics.connection_refused();
                refuse(stream);
                continue;
            };
            let io = Stalling::new(stream, self.write_timeout);
            let conn = Connection {
                http: http.clone(),
                service: service.clone(),
                metrics: self.metrics.clone(),
                header_timeout: self.header_timeout,
                tls: self.tls.clone(),
                peer,
                _permit: permit,
            };
            let watcher = graceful.watcher();
            tokio::spawn(async move { conn.serve(io, watcher).await });
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("connections still open after the drain; closing them");
        }
        Ok(())
    }
}

/// One accepted connection and what it holds (its slot under the limit).
struct Connection {
    http: http1::Builder,
    service: TowerToHyperService<Router>,
    metrics: Arc<Metrics>,
    header_timeout: Duration,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, io: Stalling, graceful: hyper_util::server::graceful::Watcher) {
        let _open = self.metrics.connection_opened();
        let result = match &self.tls {
            None => {
                let conn = self.http.serve_connection(TokioIo::new(io), self.service);
                graceful.watch(conn).await
            }
            Some(acceptor) => {
                let tls = match tokio::time::timeout(self.header_timeout, acceptor.accept(io)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        self.metrics.tls_failed();
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.metrics.tls_failed();
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = self.http.serve_connection(TokioIo::new(tls), self.service);
                graceful.watch(conn).await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                self.metrics.header_timed_out();
            }
            tracing::debug!(peer = %self.peer, error = %e, "connection ended");
        }
    }
}

/// Tells a connection over the limit to come back later and closes it, here and now: a task
/// per refusal would hold each descriptor a while longer, and a flood of them would use up the
/// room left under the file limit. The answer fits in the empty send buffer, so one write that
/// does not wait sends it. What the client sent is read first (as much as has arrived), so the
/// close does not turn into a reset that could discard the answer at the client.
fn refuse(stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
    let _ = stream.try_write(OVER_LIMIT);
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_room_under_the_file_limit() {
        assert_eq!(connection_limit(1024), 896);
        assert_eq!(connection_limit(256), 192);
        assert_eq!(connection_limit(20_000), 17_500);
        assert_eq!(connection_limit(10), 1);
    }

    #[test]
    fn the_refusal_is_one_well_formed_answer() {
        let text = std::str::from_utf8(OVER_LIMIT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
