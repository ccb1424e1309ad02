//! The WebSocket wire format: client frames decoded into a closed enum at the
//! edge, and server frames encoded once into shareable bytes.
//!
//! Decoding goes through a JSON object first rather than a derived struct so
//! that each mistake gets its own message ("since must be a non-negative
//! integer", "unknown field `foo`") and the error can still echo the request's
//! `ref`. Client frames are rare next to deliveries, so this costs nothing that
//! matters; server frames, which fan out, are encoded straight to bytes.

use bytes::{Buf, Bytes};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::fields::{Emoji, Ref, Room, Text, User};
use crate::log::{Epoch, Event, Fold, Record};
use crate::ws_frame;

/// An encoded server frame: UTF-8 JSON behind its WebSocket header, in one
/// buffer that is cheap to clone, so one encoding of a message is shared by
/// every recipient on this instance and goes to each socket in one `send`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The JSON text (what an event stream sends, and what Redis carries).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.text()).expect("a frame is made from text")
    }

    /// The JSON text's bytes.
    pub fn text(&self) -> &[u8] {
        &self.0[ws_frame::header_len(&self.0)..]
    }

    /// Bytes of JSON text.
    pub fn len(&self) -> usize {
        self.text().len()
    }

    pub fn is_empty(&self) -> bool {
        self.text().is_empty()
    }

    /// The whole WebSocket frame, header and text.
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// Frames text written after `ws_frame::HEADER_ROOM` bytes left free
    /// at the front of `buffer`: the header goes right before it, no copy.
    fn framed(mut buffer: Vec<u8>) -> Frame {
        let len = buffer.len() - ws_frame::HEADER_ROOM;
        let (head, used) = ws_frame::text_header(len);
        let start = ws_frame::HEADER_ROOM - used;
        buffer[start..ws_frame::HEADER_ROOM].copy_from_slice(&head[..used]);
        let mut bytes = Bytes::from(buffer);
        bytes.advance(start);
        Frame(bytes)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        let mut buffer = Vec::with_capacity(ws_frame::HEADER_ROOM + text.len());
        buffer.resize(ws_frame::HEADER_ROOM, 0);
        buffer.extend_from_slice(text.as_bytes());
        Frame::framed(buffer)
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::from(text.as_str())
    }
}

/// Limits that decoding enforces; they come from the command line.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_text_bytes: usize,
    /// Largest `limit` of a `history` request and `history` of a `join`.
    pub max_page: usize,
    /// Default `limit` of a `history` request and `history` of a `join`.
    pub default_page: usize,
}

/// A client request, after validation.
#[derive(Debug, PartialEq)]
pub enum Request {
    Join {
        room: Room,
        replay: Replay,
    },
    Leave {
        room: Room,
    },
    Send {
        room: Room,
        text: Text,
    },
    Edit {
        room: Room,
        id: u64,
        text: Text,
    },
    Delete {
        room: Room,
        id: u64,
    },
    /// `react` (`on`) and `unreact`.
    React {
        room: Room,
        id: u64,
        emoji: Emoji,
        on: bool,
    },
    /// A read marker.
    Read {
        room: Room,
        id: u64,
    },
    History {
        room: Room,
        before: Option<u64>,
        limit: usize,
    },
    Typing {
        room: Room,
    },
    Presence {
        room: Room,
    },
}

impl Request {
    /// The room the request is about.
    pub fn room(&self) -> &Room {
        match self {
            Request::Join { room, .. }
            | Request::Leave { room }
            | Request::Send { room, .. }
            | Request::Edit { room, .. }
            | Request::Delete { room, .. }
            | Request::React { room, .. }
            | Request::Read { room, .. }
            | Request::History { room, .. }
            | Request::Typing { room }
            | Request::Presence { room } => room,
        }
    }
}

/// What a `join` replays before live messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Replay {
    /// The newest N messages (0: live only).
    Recent(usize),
    /// Every message after `since` (up to the replay cap), in `epoch` when given.
    Since { since: u64, epoch: Option<Epoch> },
}

/// A decoded frame: the request and the client's `ref`, if it gave one.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub request: Request,
    pub reference: Option<Ref>,
}

/// A frame that could not be decoded, with the `ref` to echo when one was readable.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub reference: Option<Ref>,
    pub error: Error,
}

/// Decodes one text frame. A frame that is not a JSON object is the plain-text
/// shortcut: a `send` of the whole frame to `default_room` (the `?room=` of the
/// connection), which is what makes `websocat` a usable client.
pub fn decode(
    text: &str,
    default_room: Option<&Room>,
    limits: &Limits,
) -> Result<Decoded, Rejected> {
    if !text.trim_start().starts_with('{') {
        let reject = |error| Rejected {
            reference: None,
            error,
        };
        let room = default_room.cloned().ok_or_else(|| {
            reject(Error::bad_request(
                "plain text is sent to the ?room= of the connection, and it has none; send JSON frames such as {\"type\":\"send\",\"room\":\"general\",\"text\":\"hi\"}",
            ))
        })?;
        // Line-oriented clients such as websocat end each frame with the line
        // break the user typed to send it; it is not part of the message.
        let line = text
            .strip_suffix('\n')
            .map_or(text, |t| t.strip_suffix('\r').unwrap_or(t));
        let text = Text::parse(line.to_owned(), limits.max_text_bytes).map_err(reject)?;
        return Ok(Decoded {
            request: Request::Send { room, text },
            reference: None,
        });
    }
    let mut object: Map<String, Value> = serde_json::from_str(text).map_err(|e| Rejected {
        reference: None,
        error: Error::bad_request(format!("malformed JSON: {e}")),
    })?;
    // The ref is read first so that every later error can echo it.
    let reference = match object.remove("ref") {
        None => None,
        Some(Value::String(s)) => Some(Ref::parse(&s).map_err(|error| Rejected {
            reference: None,
            error,
        })?),
        Some(_) => {
            return Err(Rejected {
                reference: None,
                error: Error::bad_request("ref must be a string"),
            })
        }
    };
    match decode_request(object, limits) {
        Ok(request) => Ok(Decoded { request, reference }),
        Err(error) => Err(Rejected { reference, error }),
    }
}

fn decode_request(mut object: Map<String, Value>, limits: &Limits) -> Result<Request, Error> {
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(Error::bad_request("type must be a string")),
        None => return Err(Error::bad_request("missing field `type`")),
    };
    let mut fields = Fields {
        object,
        kind: &kind,
    };
    let request = match kind.as_str() {
        "join" => {
            let room = fields.room()?;
            let since = fields.integer("since")?;
            let epoch = fields.string("epoch")?;
            let history = fields.integer("history")?;
            let replay = replay(since, epoch, history, limits)?;
            Request::Join { room, replay }
        }
        "leave" => Request::Leave {
            room: fields.room()?,
        },
        "send" => Request::Send {
            room: fields.room()?,
            text: Text::parse(fields.required("text")?, limits.max_text_bytes)?,
        },
        "edit" => Request::Edit {
            room: fields.room()?,
            id: fields.target()?,
            text: Text::parse(fields.required("text")?, limits.max_text_bytes)?,
        },
        "delete" => Request::Delete {
            room: fields.room()?,
            id: fields.target()?,
        },
        "react" | "unreact" => Request::React {
            room: fields.room()?,
            id: fields.target()?,
            emoji: Emoji::parse(&fields.required("emoji")?)?,
            on: kind == "react",
        },
        "read" => Request::Read {
            room: fields.room()?,
            id: fields
                .integer("id")?
                .ok_or_else(|| Error::bad_request("missing field `id`"))?,
        },
        "history" => {
            let room = fields.room()?;
            let before = before_bound(fields.integer("before")?)?;
            let limit = page_size(fields.integer("limit")?, 1, limits, "limit")?;
            Request::History {
                room,
                before,
                limit,
            }
        }
        "typing" => Request::Typing {
            room: fields.room()?,
        },
        "presence" => Request::Presence {
            room: fields.room()?,
        },
        other => {
            return Err(Error::bad_request(format!(
                "unknown type `{}`; expected join, leave, send, edit, delete, react, unreact, read, history, typing or presence",
                other.escape_debug()
            )))
        }
    };
    fields.finish()?;
    Ok(request)
}

/// What a join replays, from its `since`, `epoch` and `history`: the one
/// rule for a `join` frame, the WebSocket URL and the event stream.
pub fn replay(
    since: Option<u64>,
    epoch: Option<String>,
    history: Option<u64>,
    limits: &Limits,
) -> Result<Replay, Error> {
    match (since, history) {
        (Some(_), Some(_)) => Err(Error::bad_request("give since or history, not both")),
        (Some(since), None) => Ok(Replay::Since {
            since,
            epoch: epoch.map(Epoch::from),
        }),
        (None, _) if epoch.is_some() => Err(Error::bad_request("epoch goes with since")),
        (None, history) => Ok(Replay::Recent(page_size(history, 0, limits, "history")?)),
    }
}

/// A `before` from the client: ids start at 1, so `before` is at least 1
/// (`before: 1` is a valid question with an empty answer). The one rule for
/// `history` and `GET /rooms/{room}/messages`.
pub fn before_bound(value: Option<u64>) -> Result<Option<u64>, Error> {
    match value {
        Some(0) => Err(Error::bad_request(
            "before must be at least 1: ids start at 1",
        )),
        other => Ok(other),
    }
}

/// A page size from the client, or the default; `min` is 0 where "none"
/// makes sense. The one rule for `history` and `limit` everywhere.
pub fn page_size(
    value: Option<u64>,
    min: u64,
    limits: &Limits,
    name: &str,
) -> Result<usize, Error> {
    match value {
        None => Ok(limits.default_page),
        Some(n) if n >= min && n <= limits.max_page as u64 => Ok(n as usize),
        Some(_) => Err(Error::bad_request(format!(
            "{name} must be from {min} to {}",
            limits.max_page
        ))),
    }
}

/// The fields of one request object, taken one by one so that what is left at
/// the end is exactly the fields nobody asked for.
struct Fields<'a> {
    object: Map<String, Value>,
    kind: &'a str,
}

impl Fields<'_> {
    fn room(&mut self) -> Result<Room, Error> {
        let raw = self
            .string("room")?
            .ok_or_else(|| Error::bad_request("missing field `room`"))?;
        Room::parse(&raw)
    }

    /// The id of the message a request is about.
    fn target(&mut self) -> Result<u64, Error> {
        match self.integer("id")? {
            Some(id) if id > 0 => Ok(id),
            Some(_) => Err(Error::bad_request("id must be the id of a message, from 1")),
            None => Err(Error::bad_request("missing field `id`")),
        }
    }

    fn required(&mut self, name: &str) -> Result<String, Error> {
        self.string(name)?
            .ok_or_else(|| Error::bad_request(format!("missing field `{name}`")))
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, Error> {
        match self.object.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::bad_request(format!("{name} must be a string"))),
        }
    }

    fn integer(&mut self, name: &str) -> Result<Option<u64>, Error> {
        match self.object.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(_) => Err(Error::bad_request(format!(
                "{name} must be a non-negative integer"
            ))),
        }
    }

    /// Refuses fields that this type does not take: a typo such as `sinse`
    /// would otherwise silently change what the request means.
    fn finish(self) -> Result<(), Error> {
        match self.object.keys().next() {
            None => Ok(()),
            Some(extra) => Err(Error::bad_request(format!(
                "unknown field `{}` for type `{}`",
                extra.escape_debug(),
                self.kind
            ))),
        }
    }
}

fn encode(value: &impl Serialize) -> Frame {
    let mut buffer = vec![0; ws_frame::HEADER_ROOM];
    serde_json::to_writer(&mut buffer, value).expect("server frames always serialize");
    Frame::framed(buffer)
}

pub fn welcome(user: &User, instance: &str, connection: &str) -> Frame {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        user: &'a str,
        instance: &'a str,
        connection: &'a str,
    }
    encode(&Welcome {
        r#type: "welcome",
        user: user.as_str(),
        instance,
        connection,
    })
}

/// `joined`: the room's epoch, its last id, and the user's read marker.
pub fn joined(room: &Room, epoch: &Epoch, head: u64, read: u64) -> Frame {
    #[derive(Serialize)]
    struct Joined<'a> {
        r#type: &'static str,
        room: &'a str,
        epoch: &'a str,
        head: u64,
        read: u64,
    }
    encode(&Joined {
        r#type: "joined",
        room: room.as_str(),
        epoch: epoch.as_str(),
        head,
        read,
    })
}

/// A JSON string.
fn string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// An event's frame in two parts, before and after its id, so that the
/// store can put in the id it assigns without encoding the frame again:
/// the one place where the shape of each stored event is written.
pub fn event_parts(room: &Room, record: &Record, ts: u64) -> (String, String) {
    let kind = match record {
        Record::Message { .. } => "message",
        Record::Edit { .. } => "edit",
        Record::Delete { .. } => "delete",
        Record::Reaction { .. } => "reaction",
    };
    // Room names are plain ASCII without quotes or backslashes: no escaping needed.
    let prefix = format!(r#"{{"type":"{kind}","room":"{room}","id":"#);
    let suffix = match record {
        Record::Message { user, text } => {
            format!(
                r#","user":{},"text":{},"ts":{ts}}}"#,
                string(user),
                string(text)
            )
        }
        Record::Edit { user, target, text } => format!(
            r#","target":{target},"user":{},"text":{},"ts":{ts}}}"#,
            string(user),
            string(text)
        ),
        Record::Delete { user, target } => {
            format!(r#","target":{target},"user":{},"ts":{ts}}}"#, string(user))
        }
        Record::Reaction {
            user,
            target,
            emoji,
            on,
        } => format!(
            r#","target":{target},"user":{},"emoji":{},"on":{on},"ts":{ts}}}"#,
            string(user),
            string(emoji)
        ),
    };
    (prefix, suffix)
}

/// An event's frame as it was first delivered.
pub fn event(room: &Room, id: u64, record: &Record, ts: u64) -> Frame {
    let (prefix, suffix) = event_parts(room, record, ts);
    format!("{prefix}{id}{suffix}").into()
}

/// A message as reads show it: with its latest text, `edited`, `deleted`
/// and `reactions` once later events made them so; other events as they
/// were delivered.
pub fn folded(room: &Room, id: u64, record: &Record, ts: u64, fold: &Fold) -> Frame {
    let Record::Message { user, text } = record else {
        return event(room, id, record, ts);
    };
    if fold.is_empty() {
        return event(room, id, record, ts);
    }
    let text = match (&fold.edited, fold.deleted) {
        (_, true) => "",
        (Some((latest, _)), false) => latest.as_str(),
        (None, false) => text.as_str(),
    };
    let mut out = format!(
        r#"{{"type":"message","room":"{room}","id":{id},"user":{},"text":{},"ts":{ts}"#,
        string(user),
        string(text)
    );
    if let Some((_, at)) = &fold.edited {
        out.push_str(&format!(r#","edited":{at}"#));
    }
    if fold.deleted {
        out.push_str(r#","deleted":true"#);
    }
    if !fold.reactions.is_empty() {
        let reactions = serde_json::to_string(&fold.reactions).expect("reactions serialize");
        out.push_str(&format!(r#","reactions":{reactions}"#));
    }
    out.push('}');
    out.into()
}

/// The `message` frame of a new message; over HTTP the same object is an
/// element of `messages`.
pub fn message(room: &Room, id: u64, user: &str, text: &str, ts: u64) -> Frame {
    let record = Record::Message {
        user: user.to_owned(),
        text: text.to_owned(),
    };
    event(room, id, &record, ts)
}

/// The `read` signal: `user` has read `room` up to `id`.
pub fn read(room: &Room, user: &User, id: u64) -> Frame {
    #[derive(Serialize)]
    struct Read<'a> {
        r#type: &'static str,
        room: &'a str,
        user: &'a str,
        id: u64,
    }
    encode(&Read {
        r#type: "read",
        room: room.as_str(),
        user: user.as_str(),
        id,
    })
}

pub fn replayed(room: &Room, count: usize, truncated: bool) -> Frame {
    #[derive(Serialize)]
    struct Replayed<'a> {
        r#type: &'static str,
        room: &'a str,
        count: usize,
        truncated: bool,
    }
    encode(&Replayed {
        r#type: "replayed",
        room: room.as_str(),
        count,
        truncated,
    })
}

/// `ack`, with the stored event's id (`null` for a reaction that changed
/// nothing).
pub fn ack(reference: Option<&Ref>, room: &Room, id: Option<u64>) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a> {
        r#type: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        id: Option<u64>,
    }
    encode(&Ack {
        r#type: "ack",
        reference: reference.map(Ref::as_str),
        room: room.as_str(),
        id,
    })
}

pub fn typing(room: &Room, user: &User) -> Frame {
    #[derive(Serialize)]
    struct Typing<'a> {
        r#type: &'static str,
        room: &'a str,
        user: &'a str,
    }
    encode(&Typing {
        r#type: "typing",
        room: room.as_str(),
        user: user.as_str(),
    })
}

/// The start of a `member` frame, up to its user: the store completes it
/// with the user and event (`"join"` or `"leave"`).
pub fn member_prefix(room: &Room) -> String {
    // Room names are plain ASCII without quotes or backslashes: no escaping needed.
    format!(r#"{{"type":"member","room":"{room}","user":"#)
}

pub fn member(room: &Room, user: &User, event: &str) -> Frame {
    let user = serde_json::to_string(user.as_str()).expect("strings serialize");
    format!(r#"{}{user},"event":"{event}"}}"#, member_prefix(room)).into()
}

pub fn presence(reference: Option<&Ref>, room: &Room, users: &[String]) -> Frame {
    #[derive(Serialize)]
    struct Presence<'a> {
        r#type: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        users: &'a [String],
    }
    encode(&Presence {
        r#type: "presence",
        reference: reference.map(Ref::as_str),
        room: room.as_str(),
        users,
    })
}

pub fn left(room: &Room) -> Frame {
    #[derive(Serialize)]
    struct Left<'a> {
        r#type: &'static str,
        room: &'a str,
    }
    encode(&Left {
        r#type: "left",
        room: room.as_str(),
    })
}

/// Writes `[e1,e2,…]` from already encoded event frames, without decoding them.
pub fn message_array(messages: &[Event]) -> String {
    let mut out =
        String::with_capacity(2 + messages.iter().map(|m| m.frame.len() + 1).sum::<usize>());
    out.push('[');
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(message.frame.as_str());
    }
    out.push(']');
    out
}

pub fn history(reference: Option<&Ref>, room: &Room, messages: &[Event], more: bool) -> Frame {
    let mut out = String::from(r#"{"type":"history","#);
    if let Some(reference) = reference {
        out.push_str(r#""ref":"#);
        out.push_str(&serde_json::to_string(reference.as_str()).expect("strings serialize"));
        out.push(',');
    }
    out.push_str(r#""room":""#);
    // Room names are plain ASCII without quotes or backslashes: no escaping needed.
    out.push_str(room.as_str());
    out.push_str(r#"","messages":"#);
    out.push_str(&message_array(messages));
    out.push_str(if more {
        r#","more":true}"#
    } else {
        r#","more":false}"#
    });
    out.into()
}

pub fn error(reference: Option<&Ref>, error: &Error) -> Frame {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        r#type: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        code: &'static str,
        message: &'a str,
    }
    encode(&ErrorFrame {
        r#type: "error",
        reference: reference.map(Ref::as_str),
        code: error.code.as_str(),
        message: &error.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn a_frame_is_its_text_behind_the_websocket_header_for_its_length() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let text = "y".repeat(len);
            let frame = Frame::from(text.as_str());
            let (head, used) = ws_frame::text_header(len);
            assert_eq!(&frame.wire()[..used], &head[..used], "header of {len}");
            assert_eq!(frame.as_str(), text);
            assert_eq!(frame.len(), len);
        }
        let encoded = encode(&serde_json::json!({"type": "x"}));
        assert_eq!(encoded.as_str(), r#"{"type":"x"}"#);
        assert_eq!(encoded.wire()[..2], [0x81, 12]);
    }

    fn limits() -> Limits {
        Limits {
            max_text_bytes: 16,
            max_page: 1000,
            default_page: 50,
        }
    }

    fn ok(text: &str) -> Decoded {
        decode(text, None, &limits()).unwrap()
    }

    fn err(text: &str) -> Rejected {
        decode(text, None, &limits()).unwrap_err()
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    #[test]
    fn decodes_the_three_join_forms() {
        assert_eq!(
            ok(r#"{"type":"join","room":"general"}"#).request,
            Request::Join {
                room: room("general"),
                replay: Replay::Recent(50)
            }
        );
        assert_eq!(
            ok(r#"{"type":"join","room":"general","since":41,"epoch":"k3j2xq0a"}"#).request,
            Request::Join {
                room: room("general"),
                replay: Replay::Since {
                    since: 41,
                    epoch: Some(Epoch::from("k3j2xq0a".to_owned()))
                }
            }
        );
        assert_eq!(
            ok(r#"{"type":"join","room":"general","history":0}"#).request,
            Request::Join {
                room: room("general"),
                replay: Replay::Recent(0)
            }
        );
    }

    #[test]
    fn decodes_send_with_ref() {
        let decoded = ok(r#"{"type":"send","room":"general","text":"hello","ref":"c-1"}"#);
        assert_eq!(decoded.reference, Some(Ref::parse("c-1").unwrap()));
        assert!(matches!(decoded.request, Request::Send { text, .. } if text.as_str() == "hello"));
    }

    #[test]
    fn plain_text_is_a_send_to_the_query_room() {
        let general = room("general");
        let decoded = decode("hello there", Some(&general), &limits()).unwrap();
        assert!(matches!(decoded.request, Request::Send { room, text }
            if room == general && text.as_str() == "hello there"));
        for (frame, text) in [
            ("line\n", "line"),
            ("line\r\n", "line"),
            (" two\n\n", " two\n"),
        ] {
            let decoded = decode(frame, Some(&general), &limits()).unwrap();
            assert!(
                matches!(decoded.request, Request::Send { text: t, .. } if t.as_str() == text),
                "{frame:?}"
            );
        }
        assert_eq!(err("hello").error.code, ErrorCode::BadRequest);
        let blank = decode("   ", Some(&general), &limits()).unwrap_err();
        assert_eq!(blank.error.message, "text is empty");
    }

    #[test]
    fn every_mistake_is_a_clear_error_that_echoes_the_ref() {
        let cases = [
            (
                r#"{"type":"send","room":"general","text":"hi""#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"room":"general","ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"shout","ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"join","ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"join","room":5,"ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"join","room":"a b","ref":"r"}"#,
                ErrorCode::InvalidName,
                Some("r"),
            ),
            (
                r#"{"type":"join","room":"a","since":-1,"ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"join","room":"a","since":1.5}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a","since":"4"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a","since":1,"history":2}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a","epoch":"e"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a","history":1001}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a","sinse":4,"ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"send","room":"a","ref":"r"}"#,
                ErrorCode::BadRequest,
                Some("r"),
            ),
            (
                r#"{"type":"send","room":"a","text":"   "}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a","text":"this is far too long"}"#,
                ErrorCode::TooLarge,
                None,
            ),
            (
                r#"{"type":"history","room":"a","limit":0}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"history","room":"a","limit":99999999999999999999999}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a","text":"x","ref":""}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a","text":"x","ref":7}"#,
                ErrorCode::BadRequest,
                None,
            ),
        ];
        for (frame, code, reference) in cases {
            let rejected = err(frame);
            assert_eq!(rejected.error.code, code, "{frame}");
            assert_eq!(
                rejected.reference.as_ref().map(Ref::as_str),
                reference,
                "{frame}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!(
            r#"{{"type":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(err(&deep).error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn history_frame_splices_encoded_messages() {
        let general = room("general");
        let m = Event {
            id: 3,
            frame: message(&general, 3, "al\"ice", "hi\n", 7),
            nonce: 1,
        };
        let frame = history(
            Some(&Ref::parse("h").unwrap()),
            &general,
            &[m.clone(), m],
            true,
        );
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["type"], "history");
        assert_eq!(value["ref"], "h");
        assert_eq!(value["more"], true);
        assert_eq!(value["messages"][1]["user"], "al\"ice");
        assert_eq!(value["messages"][0]["text"], "hi\n");
    }

    #[test]
    fn message_frame_has_the_documented_field_order() {
        let frame = message(&room("general"), 42, "alice", "hello", 1732700000000);
        assert_eq!(
            frame.as_str(),
            r#"{"type":"message","room":"general","id":42,"user":"alice","text":"hello","ts":1732700000000}"#
        );
    }
}
