//! The listener: accepts TCP connections, serves HTTP/1.1 on each through
//! hyper (WebSocket upgrades included), and drains everything on shutdown.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use event_listener::Event;
use futures_lite::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::app::App;
use crate::error::{Error, ErrorCode};
use crate::patient_io::PatientIo;
use crate::routes::{self, Side};

/// Largest request head hyper buffers.
const MAX_HEAD: usize = 16 * 1024;
/// How long to wait before accepting again when accept fails (out of file
/// descriptors, say), rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection over the limit gets to take its 503.
const TURN_AWAY_PATIENCE: Duration = Duration::from_secs(1);

/// Serves `listener` (and the admin listener, when there is one) until
/// `app.shutdown` is set, then waits (up to the drain time) for every
/// connection to answer what it read and close with 1001.
/// How many connections may wait to be accepted. The kernel's default of
/// std's listeners, 128, drops the SYNs of a reconnect storm (a thousand
/// clients back at once), and each dropped client waits a second for its
/// retry; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Listens on `address` with room for a reconnect storm's connections.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(std::net::TcpListener::from(socket).into())
}

pub async fn run(app: Arc<App>, listener: TcpListener, admin: Option<TcpListener>) {
    let served = Arc::new(Served::default());
    // Accepting goes on through the drain too: a connection already queued
    // to this instance is answered (503 for a new WebSocket or event
    // stream, which a proxy retries elsewhere) rather than reset when the
    // listener goes.
    let accepting = async {
        let admin_side = async {
            match &admin {
                Some(admin) => accept(&app, admin, Side::Admin, &served).await,
                None => std::future::pending().await,
            }
        };
        accept(&app, &listener, Side::Public, &served)
            .or(admin_side)
            .await
    };
    let mut accepting = std::pin::pin!(accepting);
    accepting.as_mut().or(app.shutdown.wait()).await;
    // Each connection sees the same signal: it finishes the request in hand,
    // so every send it read is answered, then closes with 1001.
    let open = app.connections.len();
    log::info!("shutting down: closing {open} WebSocket connection(s) with 1001");
    let drain = Duration::from_secs(app.config.drain_seconds);
    // HTTP connections too: an answer or the end of an event stream is
    // written and flushed before the process exits.
    let all_gone = async {
        app.connections.drained().await;
        served.drained().await;
    };
    if async_std::future::timeout(drain, all_gone.or(accepting))
        .await
        .is_err()
    {
        log::warn!(
            "{} connection(s) still open after the {}s drain; exiting anyway",
            app.connections
                .len()
                .max(served.open.load(Ordering::Acquire)),
            drain.as_secs()
        );
    }
}

/// Accepts connections on one listener for ever, each served by a task of
/// its own; beyond `--max-connections` HTTP connections open at once, a new
/// one is answered 503 and closed.
async fn accept(app: &Arc<App>, listener: &TcpListener, side: Side, served: &Arc<Served>) {
    loop {
        match listener.accept().await {
            Ok((stream, _))
                if served.open.load(Ordering::Acquire) >= app.config.max_connections =>
            {
                async_std::task::spawn(turn_away(stream, app.config.max_connections));
            }
            Ok((stream, _)) => {
                let app = app.clone();
                let guard = Served::enter(served);
                async_std::task::spawn(async move {
                    serve_http(app, stream, side).await;
                    drop(guard);
                });
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                async_std::task::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Answers a connection over the limit with 503 and closes it, giving up
/// on a peer that does not take the few bytes in time.
async fn turn_away(mut stream: TcpStream, limit: usize) {
    use futures_lite::AsyncWriteExt;
    let body = Error::new(
        ErrorCode::Unavailable,
        format!("this instance serves {limit} HTTP connections at once, its limit; retry later or use another instance"),
    )
    .http_body();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ =
        async_std::future::timeout(TURN_AWAY_PATIENCE, stream.write_all(answer.as_bytes())).await;
}

/// The HTTP connections being served, so that a drain can wait for them.
#[derive(Default)]
struct Served {
    open: AtomicUsize,
    gone: Event,
}

/// One HTTP connection being served; counted out when dropped.
struct ServedGuard(Arc<Served>);

impl Served {
    fn enter(served: &Arc<Served>) -> ServedGuard {
        served.open.fetch_add(1, Ordering::AcqRel);
        ServedGuard(served.clone())
    }

    async fn drained(&self) {
        loop {
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            let listener = self.gone.listen();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for ServedGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gone.notify(usize::MAX);
    }
}

async fn serve_http(app: Arc<App>, stream: TcpStream, side: Side) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let service_app = app.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let app = service_app.clone();
        req.extensions_mut().insert(routes::Peer(peer));
        async move { Ok::<_, Infallible>(routes::handle(app, req, side).await) }
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
        .serve_connection(
            FuturesIo::new(PatientIo::new(stream, app.config.patience())),
            service,
        )
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
