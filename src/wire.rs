//! The socket as a WebSocket's reader sees it: reads come from the TCP
//! stream, and what the WebSocket library writes while reading (its pongs,
//! and its answer to a client's close, which the outbox drops because the
//! connection answers the close itself) goes to the connection's outbox,
//! so that only the outbox and its writer write the socket and no reply
//! lands inside a frame being written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_std::net::TcpStream;
use futures_lite::{AsyncRead, AsyncWrite};

use crate::outbox::Outbox;

pub struct Wire {
    pub socket: TcpStream,
    pub outbox: Outbox,
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.outbox.control(buf) {
            Ok(()) => Ok(buf.len()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection is closing",
            )),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
