//! A terminal chat client for parlor that shows the replay contract from the
//! user's side: it remembers the last id and epoch it saw, and when the
//! connection drops it reconnects by itself and resumes with `since` and
//! `epoch`, so nothing is missed and nothing is shown twice. Sends carry a
//! ref no other process or connection uses, and one not acked yet goes again,
//! with the same ref, after a reconnect: it is stored once.
//!
//! ```text
//! cargo run --example client -- --url ws://localhost:8082 --room general --user alice
//! ```
//! Type a line and press Enter to send it; `/help` lists the commands
//! (edit, delete, react); Ctrl-D quits.

use std::time::Duration;

use argh::FromArgs;
use async_std::io::{self, BufReadExt};
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_lite::{FutureExt, StreamExt};
use serde_json::{json, Value};

/// A terminal chat client that reconnects and resumes where it left off.
/// Type a line to send it, or a command: /edit ID TEXT, /delete ID,
/// /react ID EMOJI, /unreact ID EMOJI, /read (mark what was shown as read),
/// /help. Ctrl-D quits.
#[derive(FromArgs)]
struct Args {
    /// server address, such as ws://localhost:8082
    #[argh(option, default = "String::from(\"ws://localhost:8080\")")]
    url: String,
    /// room to join
    #[argh(option, default = "String::from(\"general\")")]
    room: String,
    /// your name
    #[argh(option, default = "String::from(\"guest\")")]
    user: String,
}

const HELP: &str = "* commands: /edit ID TEXT, /delete ID, /react ID EMOJI, /unreact ID EMOJI, /read, /help; anything else is sent";

/// Where the client stands in the room: what it asks for when it rejoins,
/// and what it sent that is not acked yet.
struct Position {
    last_id: Option<u64>,
    epoch: Option<String>,
    /// The last session got as far as a connection (so backoff starts over).
    connected: bool,
    refs: Refs,
    /// Frames sent and not acked, with their refs: sent again after a
    /// reconnect.
    unacked: Vec<(String, Value)>,
}

/// Refs no other process or connection makes: a random prefix of the
/// process, then a count that goes on across reconnects. (Refs counted from
/// 1 in every process would repeat one seen within five minutes, and the
/// server would take a new message for a retry of an old one.)
struct Refs {
    prefix: String,
    next: u64,
}

impl Refs {
    fn new() -> Refs {
        Refs {
            prefix: format!("{:016x}", fastrand::u64(..)),
            next: 0,
        }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

enum Event {
    Line(Option<String>),
    Frame(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
}

fn main() {
    let args: Args = argh::from_env();
    async_std::task::block_on(run(args));
}

async fn run(args: Args) {
    let (lines_tx, lines) = async_channel::bounded::<Option<String>>(16);
    async_std::task::spawn(async move {
        let mut stdin = io::BufReader::new(io::stdin()).lines();
        loop {
            let line = stdin.next().await.and_then(Result::ok);
            let done = line.is_none();
            if lines_tx.send(line).await.is_err() || done {
                return;
            }
        }
    });
    let mut position = Position {
        last_id: None,
        epoch: None,
        connected: false,
        refs: Refs::new(),
        unacked: Vec::new(),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&args, &mut position, &lines).await {
            Ok(Quit) => return,
            Err(why) => {
                if std::mem::take(&mut position.connected) {
                    backoff = Duration::from_millis(250);
                }
                eprintln!(
                    "* disconnected ({why}); reconnecting in {:.1}s",
                    backoff.as_secs_f32()
                );
                async_std::task::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Quit;

type Ws = WebSocketStream<TcpStream>;

async fn send(ws: &mut Ws, frame: &Value) -> Result<(), String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// Opens the WebSocket and joins the room, resuming from `position`, and
/// sends again what was not acked.
async fn connect(args: &Args, position: &mut Position) -> Result<Ws, String> {
    let url = format!(
        "{}/ws?user={}",
        args.url.trim_end_matches('/'),
        encode(&args.user)
    );
    let host = args
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let tcp = TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = async_tungstenite::client_async(&url, tcp)
        .await
        .map_err(|e| e.to_string())?;
    position.connected = true;
    // Once the room's epoch is known, a rejoin asks for everything after the
    // last id seen, even none: what came while away is not lost.
    let join = match &position.epoch {
        Some(epoch) => {
            let since = position.last_id.unwrap_or(0);
            json!({"type":"join","room":args.room,"since":since,"epoch":epoch})
        }
        None => json!({"type":"join","room":args.room}),
    };
    send(&mut ws, &join).await?;
    for (_, frame) in &position.unacked {
        send(&mut ws, frame).await?;
    }
    Ok(ws)
}

/// One connection: join, then chat until the line input ends (Ok) or the
/// connection fails (Err).
async fn session(
    args: &Args,
    position: &mut Position,
    lines: &async_channel::Receiver<Option<String>>,
) -> Result<Quit, String> {
    let mut ws = connect(args, position).await?;
    loop {
        let event = async { Event::Frame(ws.next().await) }
            .or(async { Event::Line(lines.recv().await.ok().flatten()) })
            .await;
        match event {
            Event::Line(None) => {
                let _ = ws.close(None).await;
                return Ok(Quit);
            }
            Event::Line(Some(line)) => {
                let Some(mut frame) = request(&args.room, &line, position) else {
                    continue;
                };
                if frame["type"] != "read" {
                    let reference = position.refs.next();
                    frame["ref"] = json!(reference);
                    position.unacked.push((reference, frame.clone()));
                }
                send(&mut ws, &frame).await?;
            }
            Event::Frame(Some(Ok(Message::Text(text)))) => {
                let frame: Value =
                    serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                show(&frame, position);
            }
            Event::Frame(Some(Ok(Message::Close(frame)))) => {
                return Err(frame.map_or("closed".into(), |f| {
                    format!("closed with {}: {}", u16::from(f.code), f.reason)
                }));
            }
            Event::Frame(Some(Ok(_))) => {}
            Event::Frame(Some(Err(e))) => return Err(e.to_string()),
            Event::Frame(None) => return Err("connection ended".into()),
        }
    }
}

/// The frame a typed line asks for: a message, or a command.
fn request(room: &str, line: &str, position: &Position) -> Option<Value> {
    if line.trim().is_empty() {
        return None;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Some(json!({"type":"send","room":room,"text":line}));
    };
    let mut words = command.splitn(3, ' ');
    let (verb, id, rest) = (words.next()?, words.next(), words.next());
    let id = id.and_then(|id| {
        id.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<u64>()
            .ok()
    });
    let frame = match (verb, id, rest) {
        ("edit", Some(id), Some(text)) => json!({"type":"edit","room":room,"id":id,"text":text}),
        ("delete", Some(id), None) => json!({"type":"delete","room":room,"id":id}),
        ("react" | "unreact", Some(id), Some(emoji)) => {
            json!({"type":verb,"room":room,"id":id,"emoji":emoji.trim()})
        }
        ("read", None, None) => {
            json!({"type":"read","room":room,"id":position.last_id.unwrap_or(0)})
        }
        _ => {
            eprintln!("{HELP}");
            return None;
        }
    };
    Some(frame)
}

/// Prints a server frame and moves the position forward.
fn show(frame: &Value, position: &mut Position) {
    let s = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
    let kind = frame["type"].as_str().unwrap_or_default();
    match kind {
        "welcome" => eprintln!("* connected to instance {} as {}", s("instance"), s("user")),
        "joined" => {
            let epoch = s("epoch");
            if position.epoch.as_ref().is_some_and(|e| *e != epoch) {
                eprintln!("* the room's history began again; counting afresh");
                position.last_id = None;
            }
            position.epoch = Some(epoch);
            let unread = frame["head"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(frame["read"].as_u64().unwrap_or(0));
            eprintln!("* joined {} ({unread} unread)", s("room"));
        }
        "message" | "edit" | "delete" | "reaction" => {
            let id = frame["id"].as_u64().unwrap_or(0);
            if position.last_id.is_some_and(|last| id <= last) {
                return; // seen already
            }
            position.last_id = Some(id);
            println!("{}", describe(frame));
        }
        "ack" => position
            .unacked
            .retain(|(reference, _)| *reference != s("ref")),
        "replayed" => {
            let count = frame["count"].as_u64().unwrap_or(0);
            if frame["truncated"].as_bool() == Some(true) {
                eprintln!("* replayed {count}; some older events are no longer in history");
            } else if count > 0 {
                eprintln!("* replayed {count} event(s)");
            }
        }
        "read" => eprintln!("* {} read up to [{}]", s("user"), frame["id"]),
        "error" => {
            position
                .unacked
                .retain(|(reference, _)| *reference != s("ref"));
            eprintln!("* error {}: {}", s("code"), s("message"));
        }
        _ => {}
    }
}

/// One line for a stored event: a message with what became of it, or what
/// an event did to one.
fn describe(frame: &Value) -> String {
    let s = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
    let (id, target) = (&frame["id"], &frame["target"]);
    match frame["type"].as_str().unwrap_or_default() {
        "edit" => format!("[{id}] {} edited [{target}]: {}", s("user"), s("text")),
        "delete" => format!("[{id}] {} deleted [{target}]", s("user")),
        "reaction" if frame["on"] == true => {
            format!("[{id}] {} reacted {} to [{target}]", s("user"), s("emoji"))
        }
        "reaction" => format!(
            "[{id}] {} took back {} from [{target}]",
            s("user"),
            s("emoji")
        ),
        _ if frame["deleted"] == true => format!("[{id}] {}: (deleted)", s("user")),
        _ => {
            let mut line = format!("[{id}] {}: {}", s("user"), s("text"));
            if frame["edited"].is_u64() {
                line.push_str(" (edited)");
            }
            if let Some(reactions) = frame["reactions"].as_object() {
                for (emoji, users) in reactions {
                    let users: Vec<&str> = users
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    line.push_str(&format!("  {emoji} {}", users.join(", ")));
                }
            }
            line
        }
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_of_two_processes_never_meet() {
        let (mut one, mut two) = (Refs::new(), Refs::new());
        let a: Vec<String> = (0..100).map(|_| one.next()).collect();
        let b: Vec<String> = (0..100).map(|_| two.next()).collect();
        assert!(a.iter().all(|r| !b.contains(r)));
        assert!(a.iter().all(|r| r.len() <= 64 && r.is_ascii()));
    }

    #[test]
    fn lines_become_requests() {
        let position = Position {
            last_id: Some(7),
            epoch: None,
            connected: false,
            refs: Refs::new(),
            unacked: Vec::new(),
        };
        let ask = |line| request("r", line, &position);
        assert_eq!(ask("hi there").unwrap()["type"], "send");
        assert_eq!(
            ask("/edit 42 fixed it").unwrap(),
            json!({"type":"edit","room":"r","id":42,"text":"fixed it"})
        );
        assert_eq!(ask("/delete [42]").unwrap()["id"], 42);
        assert_eq!(ask("/react 42 👍").unwrap()["emoji"], "👍");
        assert_eq!(ask("/read").unwrap()["id"], 7);
        assert!(ask("/edit x").is_none() && ask("   ").is_none());
    }
}
