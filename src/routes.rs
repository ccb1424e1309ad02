//! The HTTP routes: health, readiness, metrics, the chat page, the rooms'
//! API (`room_api.rs`), and the WebSocket upgrade at `/ws`.
//!
//! Every answer that is not a success carries the error body of PROTOCOL.md,
//! `{"error":{"code":"...","message":"..."}}`, with the status that fits.

use std::sync::Arc;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use smol_hyper::rt::FuturesIo;

use crate::app::{App, Upgrading};
use crate::auth::Identity;
use crate::connection::{self, Params};
use crate::error::{Error, ErrorCode};
use crate::fields::Room;
use crate::log::Change;
use crate::metrics;
use crate::origin::Act;
use crate::page;
use crate::patient_io::PatientIo;
use crate::protocol;
use crate::query::Query;
use crate::room_api;
use crate::sse::{self, EventStream};
use crate::wire::Wire;

/// A response body: whole, or an event stream.
pub type Body = Either<Full<Bytes>, EventStream>;

/// A whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// Read buffer of an upgraded WebSocket. tungstenite's default is 128 KiB and
/// is touched at once; 256 bytes hold most chat frames whole and keep an idle
/// connection small (clients send little: fan-out is writes). Larger frames
/// still arrive, in several reads.
const WS_READ_BUFFER: usize = 256;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `--port`: clients, and health checks.
    Public,
    /// `--admin-bind`: health, readiness and metrics, for operators only.
    Admin,
}

/// The address a request's connection comes from.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::IpAddr);

pub async fn handle(app: Arc<App>, req: Request<Incoming>, side: Side) -> Response<Body> {
    let routed = match side {
        Side::Admin => admin_route(&app, &req),
        Side::Public => route(&app, req).await,
    };
    match routed {
        Ok(response) => response,
        Err(Refusal { error, allow }) => {
            if error.code != ErrorCode::NotFound {
                app.metrics.refused(error.code);
            }
            let mut response = error_response(&error);
            if let Some(methods) = allow {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(methods));
            }
            if error.code == ErrorCode::RateLimited {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }
}

/// Why a route said no: the error, and for a method it does not take, the
/// methods it does (the Allow header).
struct Refusal {
    error: Error,
    allow: Option<&'static str>,
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        Refusal { error, allow: None }
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
    // Health checks come from load balancers by address; the rest must be
    // addressed to this deployment.
    if !matches!(segments.as_slice(), ["healthz" | "readyz" | "metrics"]) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        app.origins
            .check_host(host)
            .map_err(|e| Error::new(ErrorCode::Forbidden, e))?;
    }
    match segments.as_slice() {
        ["" | "app.js" | "app.css" | "parlor.js" | "favicon.svg"] => {
            allow(&req, "GET, HEAD")?;
            let asset = page::asset(&path).expect("the page has these files");
            Ok(page_file(&req, asset))
        }
        ["healthz" | "readyz" | "metrics"] if app.config.admin_bind.is_none() => {
            admin_route(app, &req)
        }
        ["healthz"] => admin_route(app, &req),
        ["readyz" | "metrics"] => Err(Error::new(
            ErrorCode::NotFound,
            format!("{path} is served on the admin address, --admin-bind"),
        )
        .into()),
        ["ws"] => {
            allow(&req, "GET")?;
            Ok(upgrade(app, req)?)
        }
        ["rooms", room, rest @ ..] => room_route(app, Room::parse(room)?, rest, req).await,
        _ => Err(Error::new(ErrorCode::NotFound, format!("no route for {path}")).into()),
    }
}

/// Health, readiness and metrics: the routes of the admin listener, and of
/// the public one when there is no admin listener (`/healthz` always).
fn admin_route(app: &App, req: &Request<Incoming>) -> Result<Response<Body>, Refusal> {
    match req.uri().path() {
        "/healthz" => {
            allow(req, "GET")?;
            Ok(text(StatusCode::OK, "ok\n"))
        }
        "/readyz" => {
            allow(req, "GET")?;
            Ok(if app.shutdown.is_set() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if app.store.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the message store or its live feed is not connected\n",
                )
            })
        }
        "/metrics" => {
            allow(req, "GET")?;
            let mut response = Response::new(full(app.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            Ok(response)
        }
        path => Err(Error::new(
            ErrorCode::NotFound,
            format!("no route for {path}: the admin address serves /healthz, /readyz and /metrics"),
        )
        .into()),
    }
}

/// The routes of a room: `rest` is the path after `/rooms/{room}/`.
async fn room_route(
    app: &Arc<App>,
    room: Room,
    rest: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let method = req.method().clone();
    if matches!(
        method,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    ) {
        page_may(app, &req, Act::Change)?;
    }
    if method == Method::GET {
        read_budget(app, &req)?;
    }
    let response = match (rest, method) {
        (["messages"], Method::POST) => room_api::post_message(app, room, req).await,
        (["messages"], Method::GET) => {
            room_api::identity(app, &req, &room)?;
            room_api::read_messages(app, room, &Query::parse(req.uri().query())?).await
        }
        (["messages"], _) => return Err(refuse_method(&req, "GET, POST")),
        (["messages", id], Method::PATCH) => {
            room_api::edit_message(app, room, room_api::message_id(id)?, req).await
        }
        (["messages", id], Method::DELETE) => {
            let change = Change::Delete {
                target: room_api::message_id(id)?,
            };
            room_api::change_message(app, room, change, req).await
        }
        (["messages", _], _) => return Err(refuse_method(&req, "PATCH, DELETE")),
        (["messages", id, "reactions", emoji], Method::PUT | Method::DELETE) => {
            let change = Change::React {
                target: room_api::message_id(id)?,
                emoji: room_api::emoji(emoji)?,
                on: req.method() == Method::PUT,
            };
            room_api::change_message(app, room, change, req).await
        }
        (["messages", _, "reactions", _], _) => return Err(refuse_method(&req, "PUT, DELETE")),
        (["read"], Method::GET) => {
            room_api::identity(app, &req, &room)?;
            room_api::markers(app, room).await
        }
        (["presence"], Method::GET) => {
            room_api::identity(app, &req, &room)?;
            room_api::presence(app, room).await
        }
        (["events"], Method::GET) => sse::events(app, room, &req),
        (["read" | "presence" | "events"], _) => return Err(refuse_method(&req, "GET")),
        _ => Err(Error::new(
            ErrorCode::NotFound,
            format!("no route for {}", req.uri().path()),
        )),
    };
    response.map_err(Refusal::from)
}

/// Refuses a method that the route does not take, naming the ones it does.
fn allow(req: &Request<Incoming>, methods: &'static str) -> Result<(), Refusal> {
    if methods.split(", ").any(|m| m == req.method().as_str()) {
        return Ok(());
    }
    Err(refuse_method(req, methods))
}

fn refuse_method(req: &Request<Incoming>, methods: &'static str) -> Refusal {
    Refusal {
        error: Error::new(
            ErrorCode::MethodNotAllowed,
            format!("{} takes {methods}", req.uri().path()),
        ),
        allow: Some(methods),
    }
}

fn error_response(error: &Error) -> Response<Body> {
    json(
        StatusCode::from_u16(error.code.http_status()).expect("valid status"),
        error.http_body(),
    )
}

pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A file of the page, or 304 when the browser has it already.
fn page_file(req: &Request<Incoming>, asset: &page::Asset) -> Response<Body> {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let mut response = if fresh {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else if req.method() == Method::HEAD {
        Response::new(full(Bytes::new()))
    } else {
        Response::new(full(asset.body))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Answers a WebSocket handshake and hands the socket to a connection task.
/// Bad query parameters are refused here, before the upgrade.
fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let key = match handshake_key(&req) {
        Ok(key) => key,
        Err(refusal) => return Ok(*refusal),
    };
    let accept = derive_accept_key(key.as_bytes());
    page_may(app, &req, Act::Connect)?;
    let params = ws_params(app, &req, &Query::parse(req.uri().query())?)?;
    app.room_for_one_more()?;
    let chose_parlor = protocols(&req).any(|p| p == PROTOCOL);
    let counted = app.upgrading();
    let upgrading = hyper::upgrade::on(&mut req);
    async_std::task::spawn(websocket(app.clone(), upgrading, params, counted));
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if chose_parlor {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PROTOCOL),
        );
    }
    Ok(response)
}

/// The handshake's `Sec-WebSocket-Key`, or the answer to a request that is
/// not a WebSocket handshake of version 13 (426, saying how to connect).
fn handshake_key(req: &Request<Incoming>) -> Result<HeaderValue, Box<Response<Body>>> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    let upgrade_required = |message: &'static str, name, value| {
        let mut response = error_response(&Error::bad_request(message));
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
        Box::new(response)
    };
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade") => key,
        _ => {
            return Err(upgrade_required(
                "/ws speaks WebSocket: connect with a WebSocket client, such as websocat ws://host:port/ws",
                header::UPGRADE,
                "websocket",
            ))
        }
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(upgrade_required(
            "only WebSocket version 13 is supported",
            header::SEC_WEBSOCKET_VERSION,
            "13",
        ));
    }
    Ok(key.clone())
}

/// Once hyper hands the connection over: the WebSocket on the raw TCP
/// stream, served by a connection task of its own.
async fn websocket(
    app: Arc<App>,
    upgrading: hyper::upgrade::OnUpgrade,
    params: Params,
    counted: Upgrading,
) {
    let upgraded = match upgrading.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            log::debug!("WebSocket upgrade failed: {e}");
            return;
        }
    };
    // hyper hands back the TCP stream it served, with any bytes it read
    // past the request, so tungstenite works on the socket directly.
    let Ok(parts) = upgraded.downcast::<FuturesIo<PatientIo<async_std::net::TcpStream>>>() else {
        log::error!("WebSocket upgrade: unexpected connection type");
        return;
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(app.config.max_frame))
        .max_frame_size(Some(app.config.max_frame));
    // Only the bytes hyper read past the request are kept: its read buffer
    // (8 KiB) is freed here rather than held for the connection's life.
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let early = read_buf.to_vec();
    drop(read_buf);
    let socket = io.into_inner().into_inner();
    let (outbox, writer) = connection::outbox(&app, socket.clone());
    // The reader's side: the outbox takes what tungstenite writes (pongs,
    // the answer to a close), and writes all the rest itself.
    let wire = Wire {
        socket,
        outbox: outbox.clone(),
    };
    let ws = WebSocketStream::from_partially_read(wire, early, Role::Server, Some(config)).await;
    // A task of its own: this one's state (the upgrade) is freed now, not
    // carried for the connection's whole life.
    let served = connection::serve(app, (outbox, writer), ws, params);
    // Added to the connections by now: no longer an upgrade in flight.
    drop(counted);
    async_std::task::spawn(served);
}

/// Takes a read from the budget of the request's client (`read_budget.rs`),
/// or refuses it with 429.
fn read_budget(app: &App, req: &Request<Incoming>) -> Result<(), Error> {
    let Some(Peer(peer)) = req.extensions().get::<Peer>().copied() else {
        return Ok(());
    };
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    if app.reads.take(app.reads.client(peer, forwarded)) {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::RateLimited,
        format!(
            "more than {} reads a second from your address (--http-read-rate); retry in a second",
            app.config.http_read_rate
        ),
    ))
}

/// Refuses a request of a browser page that the origin policy does not
/// trust to `act` (origin.rs), so that a page on another site cannot act
/// with a user's credentials or from inside the user's network.
fn page_may(app: &App, req: &Request<Incoming>, act: Act) -> Result<(), Error> {
    let header = |name: &str| req.headers().get(name).map(HeaderValue::as_bytes);
    app.origins
        .check(header("origin"), header("sec-fetch-site"), act)
        .map_err(|e| Error::new(ErrorCode::Forbidden, e))
}

/// The sub-protocol a browser names to carry its token in the handshake
/// (`new WebSocket(url, ["parlor", "parlor.token." + token])`), so that the
/// token stays out of URLs and the access logs that record them.
const PROTOCOL: &str = "parlor";
const TOKEN_PROTOCOL: &str = "parlor.token.";

/// The handshake's offered sub-protocols.
fn protocols(req: &Request<Incoming>) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn ws_params(app: &App, req: &Request<Incoming>, query: &Query) -> Result<Params, Error> {
    let offered = protocols(req).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL));
    let token = query
        .get("token")
        .or_else(|| room_api::bearer(req))
        .or(offered);
    let identity = match app.access.identify(token, query.get("user"))? {
        Some(identity) => identity,
        None => Identity::guest(),
    };
    let room = query.get("room").map(Room::parse).transpose()?;
    if let Some(room) = &room {
        identity.check(room)?;
    }
    let since = query.integer("since")?;
    let history = query.integer("history")?;
    let epoch = query.get("epoch").map(str::to_owned);
    if room.is_none() && (since.is_some() || epoch.is_some() || history.is_some()) {
        return Err(Error::bad_request("since, epoch and history go with room"));
    }
    let replay = protocol::replay(since, epoch, history, &app.limits)?;
    Ok(Params {
        identity,
        room,
        replay,
    })
}
