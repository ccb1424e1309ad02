//! A load generator for parlor: subscribers spread over one or more instances,
//! publishers sending as fast as the server acks, and a report of what went
//! through, how fast, and whether every subscriber got every message exactly
//! once and in order.
//!
//! ```text
//! cargo run --release --example load -- --url ws://127.0.0.1:8081 --url ws://127.0.0.1:8082 \
//!     --rooms 10 --subscribers 10 --publishers 4 --messages 5000
//! ```
//! Each message carries its send time, so the report has end-to-end latency
//! (publish to delivery) as well as rates. Publishers keep up to `--window`
//! sends in flight each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_lite::StreamExt;
use serde_json::{json, Value};

/// Load parlor and report rates, latency and delivery correctness.
#[derive(FromArgs)]
struct Args {
    /// instance to connect to (repeat for several; connections are spread
    /// over them in turn)
    #[argh(option)]
    url: Vec<String>,
    /// rooms to use
    #[argh(option, default = "10")]
    rooms: usize,
    /// subscribers per room
    #[argh(option, default = "10")]
    subscribers: usize,
    /// publishing connections (each sends to every room in turn)
    #[argh(option, default = "4")]
    publishers: usize,
    /// messages each publisher sends
    #[argh(option, default = "2000")]
    messages: usize,
    /// sends each publisher keeps in flight
    #[argh(option, default = "64")]
    window: usize,
    /// bytes of padding added to each message's text
    #[argh(option, default = "0")]
    pad: usize,
    /// members of the first room that join and then never read (slow readers)
    #[argh(option, default = "0")]
    stalled: usize,
    /// instead of publishing: hold this many idle connections, each joined to
    /// one room, for --hold seconds (to measure memory per connection)
    #[argh(option, default = "0")]
    idle: usize,
    /// seconds to hold idle connections
    #[argh(option, default = "10")]
    hold: u64,
    /// prefix of the room names, so that runs do not see each other's history
    #[argh(option, default = "format!(\"load{}\", std::process::id())")]
    prefix: String,
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(url: &str, user: &str) -> Ws {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let tcp = TcpStream::connect(&host)
        .await
        .unwrap_or_else(|e| panic!("connect {host}: {e}"));
    let _ = tcp.set_nodelay(true);
    let (ws, _) = async_tungstenite::client_async(format!("{url}/ws?user={user}"), tcp)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    ws
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        match async_std::future::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(text.as_str()).unwrap()
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("closed by the server: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

fn main() {
    let mut args: Args = argh::from_env();
    // A failure in any connection's task ends the whole run.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(1);
    }));
    if args.url.is_empty() {
        args.url.push("ws://127.0.0.1:8080".into());
    }
    async_std::task::block_on(run(args));
}

struct Received {
    /// Per room: ids in arrival order.
    ids: Vec<u64>,
    latencies_us: Vec<u64>,
}

async fn run(args: Args) {
    if args.idle > 0 {
        return hold_idle(&args).await;
    }
    let start = Instant::now();
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("{}-{r}", args.prefix))
        .collect();
    let expected_per_room = args.publishers * args.messages / args.rooms
        + usize::from(args.publishers * args.messages % args.rooms != 0);
    let total = args.publishers * args.messages;

    // Subscribers: join first, with no history, so every one expects ids from 1.
    let mut subscribers = Vec::new();
    let (ready_tx, ready) = async_channel::unbounded::<()>();
    for (r, room) in rooms.iter().enumerate() {
        for s in 0..args.subscribers {
            let url = args.url[(r * args.subscribers + s) % args.url.len()].clone();
            let room = room.clone();
            let ready_tx = ready_tx.clone();
            let expected = count_for_room(r, args.rooms, total);
            subscribers.push(async_std::task::spawn(async move {
                let mut ws = connect(&url, &format!("sub{r}-{s}")).await;
                ws.send(Message::text(
                    json!({"type":"join","room":room,"history":0}).to_string(),
                ))
                .await
                .unwrap();
                while next_frame(&mut ws).await["type"] != "replayed" {}
                ready_tx.send(()).await.unwrap();
                let mut got = Received {
                    ids: Vec::with_capacity(expected),
                    latencies_us: Vec::with_capacity(expected),
                };
                while got.ids.len() < expected {
                    let frame = next_frame(&mut ws).await;
                    if frame["type"] == "message" {
                        let now = start.elapsed().as_micros() as u64;
                        let text = frame["text"].as_str().unwrap();
                        let sent: u64 = text.split(' ').next().unwrap().parse().unwrap();
                        got.latencies_us.push(now.saturating_sub(sent));
                        got.ids.push(frame["id"].as_u64().unwrap());
                    }
                }
                got
            }));
        }
    }
    for _ in 0..subscribers.len() {
        ready.recv().await.unwrap();
    }
    // Slow readers: joined to the first room, never reading; the server must
    // cut them off without the other members noticing.
    let mut stalled = Vec::new();
    for i in 0..args.stalled {
        let mut ws = connect(&args.url[i % args.url.len()], &format!("stalled{i}")).await;
        ws.send(Message::text(
            json!({"type":"join","room":rooms[0],"history":0}).to_string(),
        ))
        .await
        .unwrap();
        while next_frame(&mut ws).await["type"] != "replayed" {}
        stalled.push(ws);
    }
    let connected = start.elapsed();

    // Publishers: message i of publisher p goes to room (p * messages + i) % rooms.
    let publish_start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let url = args.url[p % args.url.len()].clone();
        let rooms = rooms.clone();
        let (messages, window) = (args.messages, args.window);
        let padding = " ".to_owned() + &"x".repeat(args.pad);
        publishers.push(async_std::task::spawn(async move {
            let mut ws = connect(&url, &format!("pub{p}")).await;
            let (mut sent, mut acked) = (0, 0);
            while acked < messages {
                while sent < messages && sent - acked < window {
                    let room = &rooms[(p * messages + sent) % rooms.len()];
                    let text = format!("{}{padding}", start.elapsed().as_micros());
                    ws.send(Message::text(
                        json!({"type":"send","room":room,"text":text}).to_string(),
                    ))
                    .await
                    .unwrap();
                    sent += 1;
                }
                let frame = next_frame(&mut ws).await;
                match frame["type"].as_str() {
                    Some("ack") => acked += 1,
                    Some("error") => panic!("publisher {p}: {frame}"),
                    _ => {}
                }
            }
        }));
    }
    for p in publishers {
        p.await;
    }
    let publish_time = publish_start.elapsed();
    let mut latencies = Vec::new();
    let mut deliveries = 0usize;
    let mut faults = HashMap::new();
    for s in subscribers {
        let got = s.await;
        deliveries += got.ids.len();
        let contiguous = got
            .ids
            .iter()
            .enumerate()
            .all(|(i, id)| *id == i as u64 + 1);
        if !contiguous {
            *faults
                .entry("a subscriber saw a gap, duplicate or reordering")
                .or_insert(0) += 1;
        }
        latencies.extend(got.latencies_us);
    }
    let delivery_time = publish_start.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    println!(
        "instances {}, rooms {}, subscribers {} ({} per room), publishers {}, messages {} (~{} per room)",
        args.url.len(),
        args.rooms,
        args.rooms * args.subscribers,
        args.subscribers,
        args.publishers,
        total,
        expected_per_room
    );
    println!("connected and joined in {:.2}s", connected.as_secs_f64());
    if args.stalled > 0 {
        println!(
            "{} stalled members in {} never read",
            args.stalled, rooms[0]
        );
    }
    println!(
        "published {total} in {:.2}s: {:.0} messages/s acked (stored)",
        publish_time.as_secs_f64(),
        total as f64 / publish_time.as_secs_f64()
    );
    println!(
        "delivered {deliveries} in {:.2}s: {:.0} deliveries/s",
        delivery_time.as_secs_f64(),
        deliveries as f64 / delivery_time.as_secs_f64()
    );
    println!(
        "latency publish to delivery: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    if faults.is_empty() {
        println!("every subscriber got every message of its room once, in order");
    } else {
        for (fault, n) in faults {
            println!("FAULT: {fault} ({n} subscribers)");
        }
        std::process::exit(1);
    }
}

/// Opens `--idle` connections, joins each to a room, and holds them.
async fn hold_idle(args: &Args) {
    let start = Instant::now();
    let mut held = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let url = &args.url[i % args.url.len()];
        let mut ws = connect(url, &format!("idle{i}")).await;
        let room = format!("{}-idle-{}", args.prefix, i % 100);
        ws.send(Message::text(
            json!({"type":"join","room":room,"history":0}).to_string(),
        ))
        .await
        .unwrap();
        while next_frame(&mut ws).await["type"] != "replayed" {}
        held.push(ws);
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "{} connections open and joined in {took:.2}s ({:.0} per second); holding them {}s",
        held.len(),
        held.len() as f64 / took,
        args.hold
    );
    async_std::task::sleep(Duration::from_secs(args.hold)).await;
}

/// How many of `total` messages, sent round-robin over `rooms`, land in room `r`.
fn count_for_room(r: usize, rooms: usize, total: usize) -> usize {
    total / rooms + usize::from(r < total % rooms)
}
