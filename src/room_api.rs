//! The HTTP API of rooms: post, edit and delete messages, react, read
//! history, read markers and presence. Each request acts as the token's user
//! when auth is on, or as the `user` it names when open, and follows the
//! same rules as over WebSocket.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::Identity;
use crate::error::{Error, ErrorCode};
use crate::fields::{Emoji, Ref, Room, Text, User};
use crate::log::{Append, Change, Slice, Stored};
use crate::protocol;
use crate::query::Query;
use crate::routes::{json, Body};

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who an HTTP request acts as when auth is on: the token's user, checked
/// against the room before anything else is read. `None` on an open server,
/// where the request names its user.
pub fn identity(
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

/// Who appends: the token's user (a user in the body or query is ignored),
/// or the one named, in the body or as `?user=`.
fn author(token: Option<Identity>, named: Option<&str>) -> Result<(User, bool), Error> {
    match token {
        Some(identity) => Ok((identity.user, identity.moderator)),
        None => {
            let named = named.ok_or_else(|| {
                Error::bad_request("user is required: give it in the JSON body or as ?user=")
            })?;
            Ok((User::parse(named)?, false))
        }
    }
}

/// What a body of a post or an edit says.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    pub user: Option<String>,
    pub text: String,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

#[derive(Serialize)]
struct Answer<'a> {
    room: &'a str,
    id: Option<u64>,
    ts: u64,
    epoch: &'a str,
}

/// Reads a body of text: JSON (`application/json`, or a body that is an
/// object), or the text itself (`text/plain`, curl's form type, none).
async fn text_body(app: &App, req: Request<Incoming>) -> Result<TextBody, Error> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let declared_json = declares_json(content_type)?;
    let max_body = app.config.max_body;
    // The whole body within the time a head may take: a client sending a
    // byte a second holds a socket no longer than a slow head would.
    let deadline = Duration::from_millis(app.config.header_timeout_ms);
    let collected =
        async_std::future::timeout(deadline, Limited::new(req.into_body(), max_body).collect())
            .await
            .map_err(|_| {
                Error::bad_request(format!(
                    "the body did not arrive within {} ms; send it at once",
                    deadline.as_millis()
                ))
            })?;
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("the body is over {max_body} bytes"),
            ))
        }
        Err(e) => return Err(Error::bad_request(format!("could not read the body: {e}"))),
    };
    parse_text_body(declared_json, &body)
}

/// Whether a `Content-Type` says JSON (true) or text (false); other types
/// are refused before the body is read.
pub fn declares_json(content_type: Option<&str>) -> Result<bool, Error> {
    let essence = content_type.map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some("application/json") => Ok(true),
        None | Some("text/plain") | Some("application/x-www-form-urlencoded") => Ok(false),
        Some(other) => Err(Error::bad_request(format!(
            "content type {other} is not taken: send application/json or text/plain"
        ))),
    }
}

/// A body's fields. As over WebSocket, a body that is not a JSON object is
/// the text itself: this is what makes `curl -d 'hello' …?user=bot` work.
pub fn parse_text_body(declared_json: bool, body: &[u8]) -> Result<TextBody, Error> {
    let body =
        std::str::from_utf8(body).map_err(|_| Error::bad_request("the body is not valid UTF-8"))?;
    if declared_json || body.trim_start().starts_with('{') {
        serde_json::from_str(body)
            .map_err(|e| Error::bad_request(format!("malformed JSON body: {e}")))
    } else {
        Ok(TextBody {
            user: None,
            text: body.to_owned(),
            reference: None,
        })
    }
}

/// Stores one event and answers where it went.
async fn store(
    app: &App,
    room: &Room,
    append: Append,
    status: StatusCode,
) -> Result<Response<Body>, Error> {
    let outcome = app.append(room, std::slice::from_ref(&append)).await?;
    let stored: Stored = outcome
        .into_iter()
        .next()
        .expect("one outcome per append")?;
    let body = serde_json::to_string(&Answer {
        room: room.as_str(),
        id: stored.id,
        ts: stored.ts,
        epoch: stored.epoch.as_str(),
    })
    .expect("serializes");
    Ok(json(status, body))
}

/// `POST /rooms/{room}/messages`.
pub async fn post_message(
    app: &Arc<App>,
    room: Room,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let query = Query::parse(req.uri().query())?;
    let token = identity(app, &req, &room)?;
    let body = text_body(app, req).await?;
    let (user, moderator) = author(token, body.user.as_deref().or(query.get("user")))?;
    let reference = body.reference.as_deref().or(query.get("ref"));
    let append = Append {
        user,
        change: Change::Message(Text::parse(body.text, app.config.max_text)?),
        reference: reference.map(Ref::parse).transpose()?,
        moderator,
    };
    store(app, &room, append, StatusCode::CREATED).await
}

/// `PATCH /rooms/{room}/messages/{id}`: an edit.
pub async fn edit_message(
    app: &Arc<App>,
    room: Room,
    target: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let query = Query::parse(req.uri().query())?;
    let token = identity(app, &req, &room)?;
    let body = text_body(app, req).await?;
    let (user, moderator) = author(token, body.user.as_deref().or(query.get("user")))?;
    let reference = body.reference.as_deref().or(query.get("ref"));
    let text = Text::parse(body.text, app.config.max_text)?;
    let append = Append {
        user,
        change: Change::Edit { target, text },
        reference: reference.map(Ref::parse).transpose()?,
        moderator,
    };
    store(app, &room, append, StatusCode::OK).await
}

/// `DELETE /rooms/{room}/messages/{id}`, and `PUT` and `DELETE` of
/// `/rooms/{room}/messages/{id}/reactions/{emoji}`: what they ask is in the
/// path and the query.
pub async fn change_message(
    app: &Arc<App>,
    room: Room,
    change: Change,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let query = Query::parse(req.uri().query())?;
    let token = identity(app, &req, &room)?;
    let (user, moderator) = author(token, query.get("user"))?;
    let append = Append {
        user,
        change,
        reference: query.get("ref").map(Ref::parse).transpose()?,
        moderator,
    };
    store(app, &room, append, StatusCode::OK).await
}

/// The id of a message in a path.
pub fn message_id(raw: &str) -> Result<u64, Error> {
    raw.parse::<u64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| Error::bad_request("a message id is a number from 1"))
}

/// A reaction in a path, percent-decoded.
pub fn emoji(raw: &str) -> Result<Emoji, Error> {
    Emoji::parse(&crate::query::path_segment(raw)?)
}

/// `GET /rooms/{room}/messages`: history after `since`, or before `before`.
pub async fn read_messages(
    app: &Arc<App>,
    room: Room,
    query: &Query,
) -> Result<Response<Body>, Error> {
    let limit = protocol::page_size(query.integer("limit")?, 1, &app.limits, "limit")?;
    let since = query.integer("since")?;
    let before = protocol::before_bound(query.integer("before")?)?;
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

/// `GET /rooms/{room}/read`: every user's read marker.
pub async fn markers(app: &Arc<App>, room: Room) -> Result<Response<Body>, Error> {
    let users = app.store.log.markers(&room).await.map_err(Error::from)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "users": users }).to_string(),
    ))
}

/// `GET /rooms/{room}/presence`.
pub async fn presence(app: &Arc<App>, room: Room) -> Result<Response<Body>, Error> {
    let users = app.store.presence.users(&room).await.map_err(Error::from)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "users": users }).to_string(),
    ))
}
