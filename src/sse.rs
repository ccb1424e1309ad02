//! Server-sent events, `GET /rooms/{room}/events`: a read-only live stream
//! of one room in the `text/event-stream` format, for `curl -N`, for the
//! browser's `EventSource` and for servers that consume a room.
//!
//! A stream is a member of its room like a WebSocket connection: it joins
//! with the same replay rules and gets the same frames through an `Outbox`,
//! counted in `--max-connections`, cut off when it falls too far behind, and
//! ended after what was in flight on shutdown. Its response body takes the
//! frames from the outbox and writes each as an event: stored events with an
//! `id: <epoch>:<id>` line, which `Last-Event-ID` brings back on a reconnect,
//! and a `: ping` comment after 15 seconds without another line.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::FutureExt;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use crate::app::App;
use crate::auth::Identity;
use crate::error::{Error, ErrorCode};
use crate::fields::Room;
use crate::outbox::{Item, Outbox, GOING_AWAY, POLICY, TRY_AGAIN_LATER};
use crate::protocol::{self, Replay};
use crate::query::Query;
use crate::room_api;
use crate::rooms::{JoinError, Parting};
use crate::routes::Body;

/// A comment goes out after this long without another line.
const PING_AFTER: Duration = Duration::from_secs(15);

/// `GET /rooms/{room}/events`: checks what it can before the stream
/// starts (errors are then plain HTTP errors), then streams.
pub fn events(
    app: &Arc<App>,
    room: Room,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let query = Query::parse(req.uri().query())?;
    let token = query.get("token").or_else(|| room_api::bearer(req));
    let identity = match app.access.identify(token, query.get("user"))? {
        Some(identity) => identity,
        None => Identity::guest(),
    };
    identity.check(&room)?;
    let replay = match last_event_id(req)? {
        Some(replay) => replay,
        None => protocol::replay(
            query.integer("since")?,
            query.get("epoch").map(str::to_owned),
            query.integer("history")?,
            &app.limits,
        )?,
    };
    if !app.store.is_ready() {
        return Err(Error::new(
            ErrorCode::Unavailable,
            "the message store is not connected; retry in a moment",
        ));
    }
    app.room_for_one_more()?;
    let outbox = Outbox::new(
        app.config.outbox,
        app.config.outbox_bytes,
        app.config.patience(),
    );
    let conn = app.connections.add(&outbox);
    app.metrics.connection_opened();
    async_std::task::spawn(follow(
        app.clone(),
        outbox.clone(),
        conn,
        room,
        identity,
        replay,
    ));
    let mut response = Response::new(Body::Right(EventStream::new(outbox)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold events back in a buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

/// The resume point of a reconnecting `EventSource`: `<epoch>:<id>`.
fn last_event_id(req: &Request<Incoming>) -> Result<Option<Replay>, Error> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let bad = || Error::bad_request("Last-Event-ID must be <epoch>:<id>, as sent in id: lines");
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (epoch, id) = value.rsplit_once(':').ok_or_else(bad)?;
    let since = id.parse::<u64>().map_err(|_| bad())?;
    if epoch.is_empty() || epoch.len() > 64 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok(Some(Replay::Since {
        since,
        epoch: Some(epoch.into()),
    }))
}

/// The stream's life as a member of its room: join, then wait until the
/// client goes, falls behind, the token expires or the server drains.
async fn follow(
    app: Arc<App>,
    outbox: Outbox,
    conn: u64,
    room: Room,
    identity: Identity,
    replay: Replay,
) {
    match app
        .rooms
        .join(conn, &outbox, &room, &identity.user, replay)
        .await
    {
        Ok(()) => {
            let expired = async {
                match identity.expiry() {
                    Some(left) => async_std::task::sleep(left).await,
                    None => std::future::pending().await,
                }
                true
            };
            let stopped = async {
                outbox.stopped().await;
                false
            };
            if expired.or(stopped).await {
                outbox.close(POLICY, "token expired");
            } else {
                outbox.close(GOING_AWAY, "server shutting down");
            }
            // A stream has no goodbye: its client may be back at once.
            app.rooms.leave(conn, &room, Parting::Dropped);
        }
        Err(JoinError::Refused(error)) => {
            // The store failed or a limit was reached: the `error` event
            // says which, and the client's reconnect tries again.
            let _ = outbox.push(protocol::error(None, &error)).await;
            outbox.close(TRY_AGAIN_LATER, "the join failed: see the error event");
        }
        Err(JoinError::Closed) => {}
    }
    app.connections.remove(conn);
    app.metrics.connection_closed();
}

/// The response body: the outbox's frames as events.
pub struct EventStream {
    outbox: Outbox,
    /// The epoch of the last `joined`: stored events' ids are in it.
    epoch: Option<String>,
    started: bool,
    /// The `close` event went out: nothing follows it.
    closed: bool,
    quiet: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    ready: VecDeque<Bytes>,
}

impl EventStream {
    fn new(outbox: Outbox) -> EventStream {
        EventStream {
            outbox,
            epoch: None,
            started: false,
            closed: false,
            quiet: Box::pin(async_std::task::sleep(PING_AFTER)),
            ready: VecDeque::new(),
        }
    }

    /// One frame as an event.
    fn event(&mut self, frame: &str) -> Bytes {
        let value: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
        let kind = value["type"].as_str().unwrap_or("message");
        if kind == "joined" {
            self.epoch = value["epoch"].as_str().map(str::to_owned);
        }
        let stored = matches!(kind, "message" | "edit" | "delete" | "reaction");
        let mut out = String::with_capacity(frame.len() + 48);
        if let (true, Some(epoch), Some(id)) = (stored, &self.epoch, value["id"].as_u64()) {
            out.push_str(&format!("id: {epoch}:{id}\n"));
        }
        out.push_str(&format!("event: {kind}\ndata: {frame}\n\n"));
        Bytes::from(out)
    }
}

/// The last event of a stream that the server ends: why, with the close
/// code a WebSocket would get (1013 too far behind, 1001 shutting down,
/// 1008 token expired).
fn closing(code: u16, reason: &str) -> Bytes {
    let data = serde_json::json!({"type": "close", "code": code, "reason": reason});
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"retry: 1000\n\n",
            )))));
        }
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                this.quiet = Box::pin(async_std::task::sleep(PING_AFTER));
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match this.outbox.poll_item(cx) {
                Poll::Ready(Some(Item::Frame(frame))) => {
                    let event = this.event(frame.as_str());
                    this.ready.push_back(event);
                }
                Poll::Ready(Some(Item::Close(code, reason))) if !this.closed => {
                    this.closed = true;
                    this.ready.push_back(closing(code, reason));
                }
                Poll::Ready(Some(Item::Close(..)) | None) => return Poll::Ready(None),
                Poll::Pending => {
                    if this.quiet.as_mut().poll(cx).is_ready() {
                        this.ready.push_back(Bytes::from_static(b": ping\n\n"));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for EventStream {
    /// The client went away (or the stream ended): the room can let it go.
    fn drop(&mut self) {
        self.outbox.writer_gone();
    }
}
