//! The approval service's accepted connections, bounded against slow and
//! greedy peers before tonic sees them: at most [`MAX_CONNECTIONS`] at once
//! (beyond it a new connection is closed at once), TCP_NODELAY, and a peer
//! must send its first [`FIRST_BYTES`] bytes (the HTTP/2 preface, or the
//! start of a TLS handshake) within [`HANDSHAKE_TIMEOUT`]. After that,
//! HTTP/2 keep-alive pings close a peer that stops answering.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a new connection may take to send its first bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bytes a peer must send within [`HANDSHAKE_TIMEOUT`]: the length of
/// the HTTP/2 connection preface.
pub const FIRST_BYTES: usize = 24;

/// One accepted connection holding its slot until it closes.
#[derive(Debug)]
pub struct Bounded {
    tcp: TcpStream,
    /// Until the peer has sent [`FIRST_BYTES`] bytes.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
    _slot: OwnedSemaphorePermit,
}

/// The listener's connections, bounded as the module says.
pub fn bounded(listener: TcpListener) -> impl Stream<Item = io::Result<Bounded>> {
    use tokio_stream::StreamExt;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let tcp = match accepted {
            Ok(tcp) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: not fatal.
                tracing::warn!(error = %e, "accepting a connection failed");
                return None;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "connection limit reached: closing a new connection"
            );
            return None;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Some(Ok(Bounded {
            tcp,
            deadline: Some(Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT))),
            read: 0,
            _slot: slot,
        }))
    })
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            this.read += buf.filled().len() - before;
            if this.read >= FIRST_BYTES {
                this.deadline = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!("a peer sent too little too slowly: closing");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no handshake within the time allowed",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}
