//! The HTTP routes: health, readiness, metrics, the chat page, the message
//! API, and the WebSocket upgrade at `/ws`.
//!
//! Every answer that is not a success carries the error body of PROTOCOL.md,
//! `{"error":{"code":"...","message":"..."}}`, with the status that fits.

use std::collections::HashMap;
use std::sync::Arc;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use smol_hyper::rt::FuturesIo;

use crate::app::App;
use crate::auth::Identity;
use crate::connection::{self, Params};
use crate::error::{Error, ErrorCode};
use crate::fields::{Ref, Room, Text, User};
use crate::log::{Append, Change, Slice};
use crate::metrics;
use crate::page;
use crate::protocol;

pub type Body = Full<Bytes>;

/// Read buffer of an upgraded WebSocket. tungstenite's default is 128 KiB and
/// is touched at once; 256 bytes hold most chat frames whole and keep an idle
/// connection small (clients send little: fan-out is writes). Larger frames
/// still arrive, in several reads.
const WS_READ_BUFFER: usize = 256;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match route(&app, req).await {
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
    match segments.as_slice() {
        ["" | "app.js" | "app.css"] => {
            allow(&req, "GET, HEAD")?;
            let asset = page::asset(&path).expect("the page has these files");
            Ok(page_file(&req, asset))
        }
        ["healthz"] => {
            allow(&req, "GET")?;
            Ok(text(StatusCode::OK, "ok\n"))
        }
        ["readyz"] => {
            allow(&req, "GET")?;
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
        ["metrics"] => {
            allow(&req, "GET")?;
            let mut response = Response::new(Body::from(app.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            Ok(response)
        }
        ["ws"] => {
            allow(&req, "GET")?;
            Ok(upgrade(app, req)?)
        }
        ["rooms", room, "messages"] => {
            let room = Room::parse(room)?;
            if req.method() == Method::POST {
                post_message(app, room, req).await.map_err(Refusal::from)
            } else {
                allow(&req, "GET, POST")?;
                http_identity(app, &req, &room)?;
                read_messages(app, room, &Query::parse(req.uri().query())?)
                    .await
                    .map_err(Refusal::from)
            }
        }
        ["rooms", room, "presence"] => {
            allow(&req, "GET")?;
            let room = Room::parse(room)?;
            http_identity(app, &req, &room)?;
            let users = app.store.presence.users(&room).await.map_err(Error::from)?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "users": users }).to_string(),
            ))
        }
        _ => Err(Error::new(ErrorCode::NotFound, format!("no route for {path}")).into()),
    }
}

/// Refuses a method that the route does not take, naming the ones it does.
fn allow(req: &Request<Incoming>, methods: &'static str) -> Result<(), Refusal> {
    if methods.split(", ").any(|m| m == req.method().as_str()) {
        return Ok(());
    }
    Err(Refusal {
        error: Error::new(
            ErrorCode::MethodNotAllowed,
            format!("{} takes {methods}", req.uri().path()),
        ),
        allow: Some(methods),
    })
}

fn error_response(error: &Error) -> Response<Body> {
    json(
        StatusCode::from_u16(error.code.http_status()).expect("valid status"),
        error.http_body(),
    )
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
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
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else if req.method() == Method::HEAD {
        Response::new(Body::default())
    } else {
        Response::new(Body::from(asset.body))
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
    check_origin(app, &req)?;
    let params = ws_params(app, &req, &Query::parse(req.uri().query())?)?;
    if app.connections.len() >= app.config.max_connections {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "this instance holds {} connections, its limit; connect to another instance or retry later",
                app.config.max_connections
            ),
        ));
    }
    let upgrading = hyper::upgrade::on(&mut req);
    async_std::task::spawn(websocket(app.clone(), upgrading, params));
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
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
async fn websocket(app: Arc<App>, upgrading: hyper::upgrade::OnUpgrade, params: Params) {
    let upgraded = match upgrading.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            log::debug!("WebSocket upgrade failed: {e}");
            return;
        }
    };
    // hyper hands back the TCP stream it served, with any bytes it read
    // past the request, so tungstenite works on the socket directly.
    let Ok(parts) = upgraded.downcast::<FuturesIo<async_std::net::TcpStream>>() else {
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
    let ws =
        WebSocketStream::from_partially_read(io.into_inner(), early, Role::Server, Some(config))
            .await;
    // A task of its own: this one's state (the upgrade) is freed now, not
    // carried for the connection's whole life.
    async_std::task::spawn(connection::serve(app, ws, params));
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Refuses a browser page from an origin that `--allowed-origins` does not
/// list, so that a page on another site cannot open a socket with a user's
/// credentials. Clients that send no Origin (not browsers) and the page this
/// instance serves itself are let through.
fn check_origin(app: &App, req: &Request<Incoming>) -> Result<(), Error> {
    let Some(allowed) = &app.config.allowed_origins else {
        return Ok(());
    };
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same_origin = [format!("http://{host}"), format!("https://{host}")]
        .iter()
        .any(|o| o == origin);
    if same_origin || allowed.iter().any(|o| o == origin || o == "*") {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::Forbidden,
            format!("pages from {origin} may not connect here (--allowed-origins)"),
        ))
    }
}

/// Who an HTTP request acts as when auth is on: the token's user, checked
/// against the room before anything else is read. `None` on an open server,
/// where the request names its user.
fn http_identity(
    app: &App,
    req: &Request<Incoming>,
    room: &Room,
) -> Result<Option<Identity>, Error> {
    if app.access.is_open() {
        return Ok(None);
    }
    let identity = app.access.identify(bearer(req), None)?;
    if let Some(identity) = &identity {
        identity.check(room)?;
    }
    Ok(identity)
}

fn ws_params(app: &App, req: &Request<Incoming>, query: &Query) -> Result<Params, Error> {
    let token = query.get("token").or_else(|| bearer(req));
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    user: Option<String>,
    text: String,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct Posted<'a> {
    room: &'a str,
    id: u64,
    ts: u64,
    epoch: &'a str,
}

async fn post_message(
    app: &Arc<App>,
    room: Room,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let query = Query::parse(req.uri().query())?;
    let token_identity = http_identity(app, &req, &room)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let declared_json = match content_type.as_deref() {
        Some("application/json") => true,
        None | Some("text/plain") | Some("application/x-www-form-urlencoded") => false,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "content type {other} is not taken: send application/json or text/plain"
            )))
        }
    };
    let max_body = app.config.max_body;
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("the body is over {max_body} bytes"),
            ))
        }
        Err(e) => return Err(Error::bad_request(format!("could not read the body: {e}"))),
    };
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| Error::bad_request("the body is not valid UTF-8"))?;
    // As over WebSocket, a body that is not a JSON object is the text itself:
    // this is what makes `curl -d 'hello' …?user=bot` work.
    let (user, text, reference) = if declared_json || body.trim_start().starts_with('{') {
        let posted: PostBody = serde_json::from_str(&body)
            .map_err(|e| Error::bad_request(format!("malformed JSON body: {e}")))?;
        (posted.user, posted.text, posted.reference)
    } else {
        (None, body, None)
    };
    // With auth on, the token says who this is; a user in the body or query is ignored.
    let user = match token_identity {
        Some(identity) => identity.user,
        None => User::parse(user.as_deref().or(query.get("user")).ok_or_else(|| {
            Error::bad_request("user is required: give it in the JSON body or as ?user=")
        })?)?,
    };
    let reference = reference.as_deref().or(query.get("ref"));
    let append = Append {
        user,
        change: Change::Message(Text::parse(text, app.config.max_text)?),
        reference: reference.map(Ref::parse).transpose()?,
    };
    let outcome = app.append(&room, std::slice::from_ref(&append)).await?;
    let stored = outcome
        .into_iter()
        .next()
        .expect("one outcome per append")?;
    let body = serde_json::to_string(&Posted {
        room: room.as_str(),
        id: stored.id,
        ts: stored.ts,
        epoch: stored.epoch.as_str(),
    })
    .expect("serializes");
    Ok(json(StatusCode::CREATED, body))
}

async fn read_messages(app: &Arc<App>, room: Room, query: &Query) -> Result<Response<Body>, Error> {
    let limit = protocol::page_size(query.integer("limit")?, 1, &app.limits, "limit")?;
    let since = query.integer("since")?;
    let before = query.integer("before")?;
    let epoch = query.get("epoch");
    if epoch.is_some() && since.is_none() {
        return Err(Error::bad_request("epoch goes with since"));
    }
    let (page, more, truncated) = match (since, before) {
        (Some(_), Some(_)) => return Err(Error::bad_request("give since or before, not both")),
        (Some(since), None) => {
            let mut page = app.read(&room, Slice::oldest_after(since, limit)).await?;
            let mut truncated = page.trimmed_after(since);
            if epoch.is_some_and(|e| e != page.epoch.as_str()) {
                // The ids the client has are from a lost history: start over.
                page = app.read(&room, Slice::oldest_after(0, limit)).await?;
                truncated = true;
            }
            let more = page.more_after();
            (page, more, truncated)
        }
        (None, before) => {
            let slice = Slice::newest_before(before.unwrap_or(u64::MAX), limit);
            let page = app.read(&room, slice).await?;
            let more = page.more_before();
            (page, more, false)
        }
    };
    let body = format!(
        r#"{{"epoch":{},"messages":{},"more":{more},"truncated":{truncated}}}"#,
        serde_json::to_string(page.epoch.as_str()).expect("serializes"),
        protocol::message_array(&page.events),
    );
    Ok(json(StatusCode::OK, body))
}

/// A decoded query string. Values must be valid UTF-8 once decoded, and a
/// name may appear once: a repeated name is ambiguous, so it is refused.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, Error> {
        let mut pairs = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_component(name)?;
            let value = decode_component(value)?;
            if pairs.insert(name.clone(), value).is_some() {
                return Err(Error::bad_request(format!(
                    "query parameter {name} is given twice"
                )));
            }
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn integer(&self, name: &str) -> Result<Option<u64>, Error> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::bad_request(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }
}

fn decode_component(raw: &str) -> Result<String, Error> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::bad_request("the query string is not valid UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_percent_and_plus() {
        let q = Query::parse(Some("user=Zo%C3%AB+K&room=general&since=4")).unwrap();
        assert_eq!(q.get("user"), Some("Zoë K"));
        assert_eq!(q.integer("since").unwrap(), Some(4));
    }

    #[test]
    fn query_refuses_bad_utf8_repeats_and_bad_numbers() {
        assert!(Query::parse(Some("user=%FF")).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        let q = Query::parse(Some("since=-1&limit=99999999999999999999999")).unwrap();
        assert!(q.integer("since").is_err());
        assert!(q.integer("limit").is_err());
    }
}
