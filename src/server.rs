//! The listener: accepts TCP connections, serves HTTP/1.1 on each through
//! hyper (WebSocket upgrades included), and drains everything on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use futures_lite::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::app::App;
use crate::routes;

/// Largest request head hyper buffers.
const MAX_HEAD: usize = 16 * 1024;
/// How long to wait before accepting again when accept fails (out of file
/// descriptors, say), rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `listener` until `app.shutdown` is set, then waits (up to the drain
/// time) for every connection to answer what it read and close with 1001.
pub async fn run(app: Arc<App>, listener: TcpListener) {
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let app = app.clone();
                    async_std::task::spawn(serve_http(app, stream));
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    async_std::task::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    };
    accept.or(app.shutdown.wait()).await;
    drop(listener);
    // Each connection sees the same signal: it finishes the request in hand,
    // so every send it read is answered, then closes with 1001.
    let open = app.connections.len();
    log::info!("shutting down: closing {open} WebSocket connection(s) with 1001");
    let drain = Duration::from_secs(app.config.drain_seconds);
    if async_std::future::timeout(drain, app.connections.drained())
        .await
        .is_err()
    {
        log::warn!(
            "{} connection(s) still open after the {}s drain; exiting anyway",
            app.connections.len(),
            drain.as_secs()
        );
    }
}

async fn serve_http(app: Arc<App>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service_app = app.clone();
    let service = service_fn(move |req| {
        let app = service_app.clone();
        async move { Ok::<_, Infallible>(routes::handle(app, req).await) }
    });
    // Without a timer, hyper would silently wait forever for request headers
    // (a slow-loris client costs a socket); with one, it gives up after
    // --header-timeout-ms.
    let mut builder = http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(Duration::from_millis(app.config.header_timeout_ms))
        .max_buf_size(MAX_HEAD);
    let mut conn = std::pin::pin!(builder
        .serve_connection(FuturesIo::new(stream), service)
        .with_upgrades());
    let served = async { Some(conn.as_mut().await) }
        .or(async {
            app.shutdown.wait().await;
            None
        })
        .await;
    let result = match served {
        Some(result) => result,
        None => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        log::debug!("HTTP connection: {e}");
    }
}
