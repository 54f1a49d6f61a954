//! A connection whose writes may not stay blocked for long: hyper has no
//! write timeout, and it stops polling a response body (an event stream,
//! a file) while the socket is full — so without this a client that
//! stops reading holds its stream (its slot, its place on its channels,
//! past its token's `exp`) for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io`, whose `poll_write`/`poll_flush` fail with `TimedOut` once they
/// have been pending for `limit` without a break.
pub(super) struct Stalls<S> {
    io: S,
    limit: Duration,
    since: Option<Pin<Box<Sleep>>>,
}

impl<S> Stalls<S> {
    pub(super) fn new(io: S, limit: Duration) -> Stalls<S> {
        Stalls {
            io,
            limit,
            since: None,
        }
    }

    /// After a pending write: ready with an error once `limit` has passed
    /// since the first of an unbroken run of them (the timer wakes the
    /// task, so a socket that never drains is noticed).
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let since = self
            .since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match since.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read (write stalled)",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn done<T>(&mut self, ready: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match ready {
            Poll::Pending => self.pending(cx),
            ready => {
                self.since = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ready = Pin::new(&mut this.io).poll_write(cx, buf);
        this.done(ready, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ready = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.done(ready, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let ready = Pin::new(&mut this.io).poll_flush(cx);
        this.done(ready, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_blocked_past_the_limit_fails() {
        let (_client, server) = tokio::io::duplex(16);
        let mut io = Stalls::new(server, Duration::from_millis(50));
        io.write_all(&[0; 16]).await.expect("room for 16 bytes");
        let stalled = tokio::time::timeout(Duration::from_secs(5), io.write_all(&[0; 1]))
            .await
            .expect("ended by the stall limit");
        assert_eq!(
            stalled.expect_err("stalled").kind(),
            io::ErrorKind::TimedOut
        );
    }
}
