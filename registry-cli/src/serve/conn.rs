//! Connections that cannot hold the server up: a write that makes no progress for the write
//! timeout fails, which closes the connection. An event-stream client that stops reading fills its
//! socket buffers (the server's side fixed at [`SEND_BUFFER`]), its next write stalls, and it is
//! dropped with everything it held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The send buffer of each connection (SO_SNDBUF; Linux reserves twice this for bookkeeping).
const SEND_BUFFER: usize = 64 * 1024;

impl Stalling {
    /// `stream`, with the server's socket options, whose writes fail after `timeout` without
    /// progress.
    pub(crate) fn new(stream: TcpStream, timeout: Duration) -> Stalling {
        let _ = stream.set_nodelay(true);
        // Left alone, the kernel grows a connection's send buffer up to net.ipv4.tcp_wmem's
        // maximum (4 MiB by default): a client that stops reading then holds that much kernel
        // memory before any write of ours stalls, and is dropped only once it is full (at a
        // trickle of changes, many minutes). A fixed buffer bounds what a client can hold and
        // starts the write timeout soon.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        Stalling {
            stream,
            timeout,
            stalled: None,
        }
    }
}

/// A TCP stream whose writes (and flushes) fail once they have made no progress for `timeout`.
pub(crate) struct Stalling {
    stream: TcpStream,
    timeout: Duration,
    /// Since when the current write has been pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Stalling {
    /// `poll` of the stream's write side, with the stall timer.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(r) = poll(Pin::new(&mut self.stream), cx) {
            self.stalled = None;
            return Poll::Ready(r);
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client has not read for the write timeout",
        )))
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
