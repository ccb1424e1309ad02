//! A socket whose writes fail once its peer has taken no byte for the
//! patience (two ping intervals).
//!
//! hyper writes a response body, an event stream's among them, without a
//! deadline: a client that stops reading (or a peer that vanished, once the
//! socket's buffers are full) would hold its socket until TCP gives up,
//! long after parlor let go of the connection and stopped counting it.
//! Every HTTP connection's socket is wrapped in this, so a write that makes
//! no progress for that long is an error, and hyper drops the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

pub struct PatientIo<S> {
    inner: S,
    patience: Duration,
    /// Set while a write or flush waits for the peer: when it fires, the
    /// peer has taken nothing for the patience.
    stalled: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl<S> PatientIo<S> {
    pub fn new(inner: S, patience: Duration) -> PatientIo<S> {
        PatientIo {
            inner,
            patience,
            stalled: None,
        }
    }

    /// The socket itself, for a WebSocket, whose writer keeps the same
    /// deadline on its own.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What a write's poll says, with the deadline applied: progress resets
    /// it, waiting starts it, and waiting past it is `TimedOut`.
    fn checked<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let patience = self.patience;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(async_std::task::sleep(patience)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no byte for {patience:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PatientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PatientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.checked(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.checked(cx, poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_close(cx);
        self.checked(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncWriteExt;

    /// A peer that never takes a byte.
    struct Full;

    impl AsyncWrite for Full {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[async_std::test]
    async fn a_write_the_peer_never_takes_fails_after_the_patience() {
        let mut io = PatientIo::new(Full, Duration::from_millis(50));
        let error = io.write_all(b"x").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// A peer that takes each write 30 ms after it is offered.
    #[derive(Default)]
    struct Slow {
        ready_at: Option<std::time::Instant>,
        taken: usize,
    }

    impl AsyncWrite for Slow {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let now = std::time::Instant::now();
            match self.ready_at {
                Some(at) if now >= at => {
                    self.ready_at = None;
                    self.taken += buf.len();
                    Poll::Ready(Ok(buf.len()))
                }
                Some(_) => Poll::Pending,
                None => {
                    self.ready_at = Some(now + Duration::from_millis(30));
                    let waker = cx.waker().clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        waker.wake();
                    });
                    Poll::Pending
                }
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[async_std::test]
    async fn a_slow_peer_that_takes_bytes_is_given_the_patience_per_write() {
        // 300 ms of writes in all, each taken within the 50 ms patience.
        let mut io = PatientIo::new(Slow::default(), Duration::from_millis(50));
        for _ in 0..10 {
            io.write_all(b"x").await.unwrap();
        }
        assert_eq!(io.inner.taken, 10);
    }
}
