//! A terminal chat client for parlor that shows the replay contract from the
//! user's side: it remembers the last id and epoch it saw, and when the
//! connection drops it reconnects by itself and resumes with `since` and
//! `epoch`, so nothing is missed and nothing is shown twice.
//!
//! ```text
//! cargo run --example client -- --url ws://localhost:8082 --room general --user alice
//! ```
//! Type a line and press Enter to send it; Ctrl-D quits.

use std::time::Duration;

use argh::FromArgs;
use async_std::io::{self, BufReadExt};
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use futures_lite::{FutureExt, StreamExt};
use serde_json::{json, Value};

/// A terminal chat client that reconnects and resumes where it left off.
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

/// Where the client stands in the room: what it asks for when it rejoins.
#[derive(Default)]
struct Position {
    last_id: Option<u64>,
    epoch: Option<String>,
    /// The last session got as far as a connection (so backoff starts over).
    connected: bool,
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
    let mut position = Position::default();
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

/// One connection: join (resuming from `position`), then chat until the line
/// input ends (Ok) or the connection fails (Err).
async fn session(
    args: &Args,
    position: &mut Position,
    lines: &async_channel::Receiver<Option<String>>,
) -> Result<Quit, String> {
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
    let join = match (&position.last_id, &position.epoch) {
        (Some(since), Some(epoch)) => {
            json!({"type":"join","room":args.room,"since":since,"epoch":epoch})
        }
        _ => json!({"type":"join","room":args.room}),
    };
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let mut next_ref = 0u64;
    loop {
        let event = async { Event::Frame(ws.next().await) }
            .or(async { Event::Line(lines.recv().await.ok().flatten()) })
            .await;
        match event {
            Event::Line(None) => {
                let _ = ws.close(None).await;
                return Ok(Quit);
            }
            Event::Line(Some(text)) if text.trim().is_empty() => {}
            Event::Line(Some(text)) => {
                next_ref += 1;
                let frame = json!({"type":"send","room":args.room,"text":text,"ref":format!("{}-{next_ref}", args.user)});
                ws.send(Message::text(frame.to_string()))
                    .await
                    .map_err(|e| e.to_string())?;
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

/// Prints a server frame and moves the position forward.
fn show(frame: &Value, position: &mut Position) {
    let s = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
    match frame["type"].as_str() {
        Some("welcome") => eprintln!("* connected to instance {} as {}", s("instance"), s("user")),
        Some("joined") => {
            let epoch = s("epoch");
            if position.epoch.as_ref().is_some_and(|e| *e != epoch) {
                eprintln!("* the room's history began again; counting afresh");
                position.last_id = None;
            }
            position.epoch = Some(epoch);
            eprintln!("* joined {}", s("room"));
        }
        Some("message") => {
            let id = frame["id"].as_u64().unwrap_or(0);
            if position.last_id.is_some_and(|last| id <= last) {
                return; // seen already
            }
            position.last_id = Some(id);
            println!("[{id}] {}: {}", s("user"), s("text"));
        }
        Some("replayed") => {
            let count = frame["count"].as_u64().unwrap_or(0);
            if frame["truncated"].as_bool() == Some(true) {
                eprintln!("* replayed {count}; some older messages are no longer in history");
            } else if count > 0 {
                eprintln!("* replayed {count} message(s)");
            }
        }
        Some("error") => eprintln!("* error {}: {}", s("code"), s("message")),
        _ => {}
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}
