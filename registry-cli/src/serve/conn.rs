//! Connections that cannot hold the server up: once a write has had to wait, the connection
//! must move at least [`MIN_PROGRESS`] within the write timeout, or the next write fails, which
//! closes the connection. Any progress is not enough: a client that reads a byte now and then
//! would otherwise hold its connection, and what it is being sent, for ever. An event-stream
//! client that stops reading (or reads a trickle) fills its socket buffers (the server's side
//! fixed at [`SEND_BUFFER`]), its writes wait, and it is dropped with everything it held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The send buffer of each connection (SO_SNDBUF; Linux reserves twice this for bookkeeping).
const SEND_BUFFER: usize = 64 * 1024;

/// How much a connection whose writes wait must take within the write timeout: 32 KiB, about
/// 1 KiB/s at the default 30 s.
pub(crate) const MIN_PROGRESS: usize = 32 * 1024;

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
    /// Since the first write that had to wait: the deadline, and the bytes written since.
    stalled: Option<(Pin<Box<Sleep>>, usize)>,
}

impl Stalling {
    /// `poll` of the stream's write side, with the stall timer.
    fn guard(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(r) = poll(Pin::new(&mut self.stream), cx) {
            if let (Ok(n), Some((_, progressed))) = (&r, &mut self.stalled) {
                *progressed += n;
                if *progressed >= MIN_PROGRESS {
                    self.stalled = None;
                }
            }
            return Poll::Ready(r);
        }
        self.wait(cx)
    }

    /// The write side is not ready: fails once the stall timer (started now if it is not
    /// running) has run out.
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let (timer, _) = self
            .stalled
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep(timeout)), 0));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client has not read enough for the write timeout",
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
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.wait(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
