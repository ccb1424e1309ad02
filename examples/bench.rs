//! The load generator of parlor's benchmark: it loads parlor, or Socket.IO 4
//! spoken over a raw WebSocket, the same way, so that the numbers in
//! docs/BENCHMARKS.md compare like with like. `make bench` (bench/run.py)
//! starts the servers and runs every scenario; each run prints one JSON line
//! on stdout for the driver and a readable summary on stderr.
//!
//! - `idle`: connections held, each joined to a room: connect rate, and the
//!   servers' RSS per connection.
//! - `fanout`: rooms × subscribers spread over the instances, publishers at
//!   maximum rate (a window of sends in flight) or at a fixed delivery rate:
//!   deliveries per second, end-to-end latency (each message carries its send
//!   time), server CPU per 1,000 deliveries, and whether every subscriber got
//!   every message of its room exactly once and in order. `--stalled` adds
//!   members that never read, which must not hold the others back.
//! - `ingest` (parlor): messages per second acked, that is stored.
//! - `replay` (parlor): how long a join with `since` takes to replay what a
//!   client missed.
//!
//! ```text
//! cargo run --release --example bench -- --url ws://127.0.0.1:8081 --url ws://127.0.0.1:8082 \
//!     fanout --rooms 10 --subscribers 10 --publishers 4 --seconds 5
//! ```
//! `--target parlor` also drives the floor (bench/floor.rs), which speaks
//! the part of parlor's protocol that `fanout` uses.
//!
//! Parlor must run with a high `--rate` and `--burst`, since publishers send
//! far faster than one person types; `--server-pid` adds CPU and memory
//! figures read from /proc. Many connections need `ulimit -n` raised first.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_std::future::timeout;
use async_std::net::TcpStream;
use async_std::task;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures_lite::{future, StreamExt};
use serde_json::{json, Value};

#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/quiet.rs"]
mod quiet;
#[path = "common/scan.rs"]
mod scan;
use procfs::status_kib;
use scan::number_after;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// Load parlor or Socket.IO and measure it; one JSON line on stdout.
#[derive(FromArgs)]
struct Args {
    /// server under test: parlor or socketio
    #[argh(option, default = "Target::Parlor")]
    target: Target,
    /// instance to connect to, such as ws://127.0.0.1:8080 (repeat for
    /// several; connections are spread over them in turn)
    #[argh(option)]
    url: Vec<String>,
    /// spread connections over the loopback addresses 127.0.0.1 to
    /// 127.0.0.N (for URLs on 127.0.0.1), each with its own range of
    /// ephemeral ports
    #[argh(option, default = "1")]
    spread: u8,
    /// process id of a server instance, for CPU time and RSS from /proc
    /// (repeat for each instance)
    #[argh(option)]
    server_pid: Vec<u32>,
    /// process id of redis-server, for its CPU time (repeat for each node
    /// of a Redis Cluster: their sum is reported)
    #[argh(option)]
    redis_pid: Vec<u32>,
    /// prefix of room names, so that runs do not see each other's rooms
    #[argh(option, default = "format!(\"bench{}\", std::process::id())")]
    prefix: String,
    #[argh(subcommand)]
    scenario: Scenario,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Scenario {
    Idle(Idle),
    Fanout(Fanout),
    Ingest(Ingest),
    Replay(Replay),
}

/// Hold connections on the first instance, each joined to a room.
#[derive(FromArgs)]
#[argh(subcommand, name = "idle")]
struct Idle {
    /// connections to open and hold
    #[argh(option, default = "1000")]
    connections: usize,
    /// connections joined to each room
    #[argh(option, default = "20")]
    per_room: usize,
    /// connections being opened at a time
    #[argh(option, default = "64")]
    concurrency: usize,
    /// seconds to hold the connections before reading the servers' RSS
    #[argh(option, default = "3")]
    hold: u64,
}

/// Publish to rooms whose members are spread over the instances.
#[derive(FromArgs)]
#[argh(subcommand, name = "fanout")]
struct Fanout {
    /// rooms
    #[argh(option, default = "10")]
    rooms: usize,
    /// subscribers per room
    #[argh(option, default = "10")]
    subscribers: usize,
    /// publishing connections; each sends to every room in turn
    #[argh(option, default = "4")]
    publishers: usize,
    /// seconds of publishing
    #[argh(option, default = "5.0")]
    seconds: f64,
    /// deliveries per second to aim at, by pacing the sends; 0 sends as fast
    /// as the window allows
    #[argh(option, default = "0")]
    rate: u64,
    /// sends each publisher keeps in flight at maximum rate
    #[argh(option, default = "64")]
    window: u64,
    /// bytes of padding in each message
    #[argh(option, default = "0")]
    pad: usize,
    /// members of the first room that join and then never read
    #[argh(option, default = "0")]
    stalled: usize,
    /// connections being opened at a time
    #[argh(option, default = "64")]
    concurrency: usize,
}

/// Publish through the first instance to rooms nobody is in (parlor only).
#[derive(FromArgs)]
#[argh(subcommand, name = "ingest")]
struct Ingest {
    /// rooms
    #[argh(option, default = "100")]
    rooms: usize,
    /// publishing connections
    #[argh(option, default = "8")]
    publishers: usize,
    /// seconds of publishing
    #[argh(option, default = "5.0")]
    seconds: f64,
    /// sends each publisher keeps in flight
    #[argh(option, default = "64")]
    window: u64,
    /// bytes of padding in each message
    #[argh(option, default = "0")]
    pad: usize,
}

/// Rejoin with `since` after missing messages, and time the replay (parlor only).
#[derive(FromArgs)]
#[argh(subcommand, name = "replay")]
struct Replay {
    /// messages missed before each rejoin
    #[argh(option, default = "1000")]
    missed: u64,
    /// rejoins to time
    #[argh(option, default = "50")]
    repeats: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Parlor,
    SocketIo,
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parlor" => Ok(Target::Parlor),
            "socketio" => Ok(Target::SocketIo),
            _ => Err(format!("--target must be parlor or socketio, not {s}")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Parlor => "parlor",
            Target::SocketIo => "socketio",
        })
    }
}

/// Microseconds since the clock started (first call): the one clock of send
/// times and arrival times, which works because publishers and subscribers
/// share this process.
fn micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn main() {
    micros(); // starts the clock
    let args: Args = argh::from_env();
    let (target, name) = (args.target, args.scenario.name());
    match task::block_on(run(args)) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("bench {name} ({target}): {e}");
            println!(
                "{}",
                json!({"scenario": name, "target": target.to_string(), "error": e.to_string()})
            );
            std::process::exit(1);
        }
    }
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Ingest(_) => "ingest",
            Scenario::Replay(_) => "replay",
        }
    }
}

async fn run(args: Args) -> Result<Value> {
    let env = Arc::new(Env::new(&args)?);
    let mut report = match args.scenario {
        Scenario::Idle(idle) => run_idle(env, idle).await?,
        Scenario::Fanout(fanout) => run_fanout(env, fanout).await?,
        Scenario::Ingest(ingest) => run_ingest(env, ingest).await?,
        Scenario::Replay(replay) => run_replay(env, replay).await?,
    };
    report["target"] = json!(args.target.to_string());
    Ok(report)
}

/// What every scenario needs: where the servers are and how to measure them.
struct Env {
    target: Target,
    /// Host and port of each instance.
    instances: Vec<(String, u16)>,
    spread: u8,
    server_pids: Vec<u32>,
    redis_pids: Vec<u32>,
    prefix: String,
}

impl Env {
    fn new(args: &Args) -> Result<Env> {
        let urls = if args.url.is_empty() {
            vec!["ws://127.0.0.1:8080".to_owned()]
        } else {
            args.url.clone()
        };
        let mut instances = Vec::new();
        for url in &urls {
            let authority = url
                .strip_prefix("ws://")
                .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?
                .trim_end_matches('/');
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| format!("{url}: the URL needs a port"))?;
            if args.spread > 1 && host != "127.0.0.1" {
                return Err(format!("--spread needs URLs on 127.0.0.1, not {url}").into());
            }
            instances.push((host.to_owned(), port.parse()?));
        }
        Ok(Env {
            target: args.target,
            instances,
            spread: args.spread.max(1),
            server_pids: args.server_pid.clone(),
            redis_pids: args.redis_pid.clone(),
            prefix: args.prefix.clone(),
        })
    }

    /// The address of connection `n` to instance `instance`. Connections to
    /// 127.0.0.1 go to 127.0.0.1..=127.0.0.spread in turn: the servers listen
    /// on every address, and each destination address has its own ephemeral
    /// port range, so ~19,000 connections (with the TIME_WAIT of earlier runs)
    /// do not exhaust it.
    fn addr(&self, instance: usize, n: usize) -> String {
        let (host, port) = &self.instances[instance % self.instances.len()];
        if self.spread > 1 {
            format!("127.0.0.{}:{port}", 1 + n % usize::from(self.spread))
        } else {
            format!("{host}:{port}")
        }
    }

    fn room(&self, kind: &str, i: usize) -> String {
        format!("{}-{kind}-{i}", self.prefix)
    }

    /// CPU seconds used so far by the servers (user and system time apart)
    /// and by Redis (both together, every node given).
    fn cpu(&self) -> Result<(Cpu, f64)> {
        let sum = |pids: &[u32]| {
            pids.iter()
                .map(|&pid| cpu_seconds(pid))
                .sum::<Result<Cpu>>()
        };
        let servers = sum(&self.server_pids)?;
        let redis = sum(&self.redis_pids)?.total();
        Ok((servers, redis))
    }

    fn only_parlor(&self, scenario: &str) -> Result<()> {
        match self.target {
            Target::Parlor => Ok(()),
            Target::SocketIo => Err(format!(
                "{scenario} measures stored messages, and Socket.IO stores none: parlor only"
            )
            .into()),
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// One client connection, speaking parlor's protocol or Socket.IO's.
struct Conn {
    ws: Ws,
    target: Target,
    /// The last Socket.IO acknowledgement id this connection asked for.
    ack_id: u64,
}

impl Conn {
    async fn open(target: Target, addr: &str, user: &str) -> Result<Conn> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true)?;
        let url = match target {
            Target::Parlor => format!("ws://{addr}/ws?user={user}"),
            Target::SocketIo => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        };
        // tungstenite's default 128 KiB read buffer would make ~19,000 idle
        // connections cost this process gigabytes.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (ws, _) = async_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
        let mut conn = Conn {
            ws,
            target,
            ack_id: 0,
        };
        if target == Target::SocketIo {
            // Engine.IO opens with `0{...}`; the client then connects to the
            // main namespace (`40`), which the server confirms with `40{...}`.
            let open = conn.next_text().await?;
            if !open.starts_with('0') {
                return Err(format!("expected an Engine.IO open packet, got {open}").into());
            }
            conn.send("40".to_owned()).await?;
            loop {
                let text = conn.recv().await?;
                if text.starts_with("40") {
                    break;
                }
                if text.starts_with("44") {
                    return Err(format!("Socket.IO refused the connection: {text}").into());
                }
            }
        }
        Ok(conn)
    }

    async fn send(&mut self, text: String) -> Result<()> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// The next text frame, whatever it is. Cancel-safe, so that it can race
    /// a timer.
    async fn next_text(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed by the server: {frame:?}").into())
                }
                // WebSocket pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the server ended the connection".into()),
            }
        }
    }

    /// Answers an Engine.IO ping (`2`) with a pong (`3`); true if `text` was one.
    async fn answer_ping(&mut self, text: &str) -> Result<bool> {
        if self.target == Target::SocketIo && text == "2" {
            self.send("3".to_owned()).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next text frame that is not an Engine.IO ping.
    async fn recv(&mut self) -> Result<Utf8Bytes> {
        loop {
            let text = self.next_text().await?;
            if !self.answer_ping(&text).await? {
                return Ok(text);
            }
        }
    }

    /// Joins `room`, live only (no history), and waits until the server says
    /// the join is complete.
    async fn join(&mut self, room: &str) -> Result<()> {
        match self.target {
            Target::Parlor => {
                self.send(format!(r#"{{"type":"join","room":"{room}","history":0}}"#))
                    .await?;
                loop {
                    let text = self.recv().await?;
                    if text.contains(r#""type":"replayed""#) {
                        return Ok(());
                    }
                    if text.contains(r#""type":"error""#) {
                        return Err(format!("join {room}: {text}").into());
                    }
                }
            }
            Target::SocketIo => {
                self.ack_id += 1;
                self.send(format!(r#"42{}["join","{room}"]"#, self.ack_id))
                    .await?;
                let ack = format!("43{}[", self.ack_id);
                while !self.recv().await?.starts_with(&ack) {}
                Ok(())
            }
        }
    }

    /// A send to `room` carrying the send time, the publisher and its
    /// sequence number in that room; parlor numbers messages itself, so only
    /// the time goes into its text.
    fn send_frame(&mut self, room: &str, publisher: usize, seq: u64, pad: &str) -> String {
        let now = micros();
        match self.target {
            Target::Parlor => {
                format!(r#"{{"type":"send","room":"{room}","text":"{now}{pad}","ref":"{seq}"}}"#)
            }
            Target::SocketIo => {
                self.ack_id += 1;
                format!(
                    r#"42{}["send",{{"room":"{room}","p":{publisher},"s":{seq},"t":{now}{pad}}}]"#,
                    self.ack_id
                )
            }
        }
    }

    /// Padding of `bytes` bytes in the shape `send_frame` takes.
    fn padding(&self, bytes: usize) -> String {
        if bytes == 0 {
            return String::new();
        }
        let filler = "x".repeat(bytes);
        match self.target {
            Target::Parlor => format!(" {filler}"),
            Target::SocketIo => format!(r#","pad":"{filler}""#),
        }
    }

    /// Whether `text` acknowledges a send; an error frame ends the run,
    /// since the publishers' counts would no longer match what was stored.
    fn is_ack(&self, text: &str) -> Result<bool> {
        match self.target {
            Target::Parlor if text.contains(r#""type":"error""#) => {
                Err(format!("a send was refused: {text}").into())
            }
            Target::Parlor => Ok(text.contains(r#""type":"ack""#)),
            Target::SocketIo => Ok(text.starts_with("43")),
        }
    }

    /// A delivered message, if `text` is one. Found by searching for the few
    /// fields needed rather than parsing the JSON: the load generator shares
    /// the cores with the servers, and deliveries are most of its work.
    fn delivery(&self, text: &str) -> Option<Delivery> {
        match self.target {
            Target::Parlor => {
                if !text.contains(r#""type":"message""#) {
                    return None;
                }
                Some(Delivery {
                    key: 0,
                    seq: number_after(text, r#""id":"#)?,
                    sent_us: number_after(text, r#""text":""#)?,
                })
            }
            Target::SocketIo => {
                if !text.starts_with(r#"42["message","#) {
                    return None;
                }
                Some(Delivery {
                    key: number_after(text, r#""p":"#)? as usize,
                    seq: number_after(text, r#""s":"#)?,
                    sent_us: number_after(text, r#""t":"#)?,
                })
            }
        }
    }
}

/// A delivered message as the correctness check sees it: parlor's room id
/// (key 0), or a Socket.IO publisher (key) and its sequence number in the room.
struct Delivery {
    key: usize,
    seq: u64,
    sent_us: u64,
}

async fn run_idle(env: Arc<Env>, idle: Idle) -> Result<Value> {
    let rss_before = env
        .server_pids
        .iter()
        .map(|&pid| status_kib(pid, "VmRSS:"))
        .sum::<Result<u64>>()?;
    let dropped = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let concurrency = idle.concurrency.clamp(1, idle.connections.max(1));
    let mut openers = Vec::new();
    for worker in 0..concurrency {
        let (env, dropped) = (env.clone(), dropped.clone());
        let (connections, per_room) = (idle.connections, idle.per_room.max(1));
        openers.push(task::spawn(async move {
            for i in (worker..connections).step_by(concurrency) {
                let mut conn = Conn::open(env.target, &env.addr(0, i), &format!("idle{i}")).await?;
                conn.join(&env.room("idle", i / per_room)).await?;
                let dropped = dropped.clone();
                // Reading keeps Socket.IO's pings answered; parlor's are
                // answered by tungstenite while reading.
                task::spawn(async move {
                    while conn.recv().await.is_ok() {}
                    dropped.fetch_add(1, Ordering::Relaxed);
                });
            }
            Ok::<_, Error>(())
        }));
    }
    for opener in openers {
        opener.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    task::sleep(Duration::from_secs(idle.hold)).await;
    let rss_after = env
        .server_pids
        .iter()
        .map(|&pid| status_kib(pid, "VmRSS:"))
        .sum::<Result<u64>>()?;
    let dropped = dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        return Err(format!("{dropped} idle connections were closed while held").into());
    }
    let per_connection =
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / idle.connections as f64;
    eprintln!(
        "idle {}: {} connections joined in {seconds:.2}s ({:.0}/s); server RSS {rss_before} KiB -> {rss_after} KiB, {:.0} bytes per connection",
        env.target,
        idle.connections,
        idle.connections as f64 / seconds,
        per_connection
    );
    Ok(json!({
        "scenario": "idle",
        "connections": idle.connections,
        "seconds": seconds,
        "connect_rate": idle.connections as f64 / seconds,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_bytes": per_connection,
    }))
}

async fn run_fanout(env: Arc<Env>, fanout: Fanout) -> Result<Value> {
    let rooms: Arc<Vec<String>> =
        Arc::new((0..fanout.rooms).map(|r| env.room("fanout", r)).collect());
    // Keys the correctness check follows in each room: parlor's one sequence
    // of ids, or one sequence per Socket.IO publisher.
    let keys = match env.target {
        Target::Parlor => 1,
        Target::SocketIo => fanout.publishers,
    };
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = async_channel::bounded::<()>(1);

    // Subscriber j of room r is connection r * subscribers + j; connections
    // alternate between instances, so that every room has members on each.
    let total = fanout.rooms * fanout.subscribers;
    let concurrency = fanout.concurrency.clamp(1, total.max(1));
    let mut openers = Vec::new();
    for worker in 0..concurrency {
        let (env, rooms, progress, stopped) = (
            env.clone(),
            rooms.clone(),
            progress.clone(),
            stopped.clone(),
        );
        let subscribers = fanout.subscribers;
        openers.push(task::spawn(async move {
            let mut running = Vec::new();
            for n in (worker..total).step_by(concurrency) {
                let room = n / subscribers;
                let mut conn = Conn::open(env.target, &env.addr(n, n), &format!("sub{n}")).await?;
                conn.join(&rooms[room]).await?;
                let (progress, stopped) = (progress.clone(), stopped.clone());
                running.push((room, task::spawn(subscribe(conn, keys, progress, stopped))));
            }
            Ok::<_, Error>(running)
        }));
    }
    let mut subscribers = Vec::new();
    for opener in openers {
        subscribers.extend(opener.await?);
    }
    // Held open and never read until the run is over.
    let mut stalled = Vec::new();
    for i in 0..fanout.stalled {
        let mut conn =
            Conn::open(env.target, &env.addr(i, total + i), &format!("stalled{i}")).await?;
        conn.join(&rooms[0]).await?;
        stalled.push(conn);
    }
    let mut publishers = Vec::new();
    for p in 0..fanout.publishers {
        publishers.push(
            Conn::open(
                env.target,
                &env.addr(p, total + fanout.stalled + p),
                &format!("pub{p}"),
            )
            .await?,
        );
    }

    // Each message reaches `subscribers` members, so a delivery rate is this
    // many messages per second, shared by the publishers, which take turns.
    let interval = (fanout.rate > 0).then(|| {
        let messages_per_second = fanout.rate as f64 / fanout.subscribers.max(1) as f64;
        Duration::from_secs_f64(fanout.publishers as f64 / messages_per_second)
    });
    // Joins are announced to the rooms' members (Socket.IO announces
    // none): the run measures the messages' deliveries after them.
    quiet::quiet(&progress.frames, Duration::from_secs(60)).await;
    let (cpu_before, redis_before) = env.cpu()?;
    let start = Instant::now();
    let start_us = micros();
    // sent[p][r]: messages publisher p had acked in room r.
    let sent = publish_all(
        publishers,
        &rooms,
        start,
        fanout.seconds,
        interval,
        fanout.window,
        fanout.pad,
    )
    .await?;
    let publish_seconds = start.elapsed().as_secs_f64();
    let room_total = |r: usize| sent.iter().map(|s| s[r]).sum::<u64>();
    let messages: u64 = (0..fanout.rooms).map(room_total).sum();
    let expected = messages * fanout.subscribers as u64;

    // Wait for the deliveries still on their way, or until they stop coming.
    let (mut seen, mut last_change) = (0, Instant::now());
    while seen < expected && last_change.elapsed() < Duration::from_secs(15) {
        task::sleep(Duration::from_millis(5)).await;
        let now_seen = progress.delivered.load(Ordering::Relaxed);
        if now_seen != seen {
            (seen, last_change) = (now_seen, Instant::now());
        }
    }
    let (cpu_after, redis_after) = env.cpu()?;
    drop(stop);

    let mut faults = BTreeMap::from([
        ("short", 0),
        ("gaps", 0),
        ("repeats", 0),
        ("disconnected", 0),
    ]);
    let mut latencies = Vec::new();
    let mut deliveries = 0;
    for (room, subscriber) in subscribers {
        let tally = subscriber.await;
        let want: Vec<u64> = match env.target {
            Target::Parlor => vec![room_total(room)],
            Target::SocketIo => sent.iter().map(|s| s[room]).collect(),
        };
        if tally.deliveries < want.iter().sum::<u64>() || tally.last != want {
            *faults.entry("short").or_default() += 1;
        }
        if tally.gaps > 0 {
            *faults.entry("gaps").or_default() += 1;
        }
        if tally.repeats > 0 {
            *faults.entry("repeats").or_default() += 1;
        }
        if let Some(error) = &tally.error {
            *faults.entry("disconnected").or_default() += 1;
            eprintln!("a subscriber of {} stopped early: {error}", rooms[room]);
        }
        deliveries += tally.deliveries;
        latencies.extend(tally.latencies_us);
    }
    let ok = faults.values().all(|&n| n == 0) && deliveries == expected;
    let seconds = (progress
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(start_us)) as f64
        / 1e6;
    let delivery_rate = deliveries as f64 / seconds.max(1e-9);
    let server_times = cpu_after - cpu_before;
    let server_cpu = server_times.total();
    let latency = percentiles(&mut latencies);
    let cpu = if env.server_pids.is_empty() {
        "server CPU not measured (no --server-pid)".to_owned()
    } else {
        format!(
            "server CPU {server_cpu:.2}s ({:.2} ms per 1,000 deliveries)",
            server_cpu * 1e6 / deliveries.max(1) as f64
        )
    };
    eprintln!(
        "fanout {} at {}: {messages} messages, {deliveries}/{expected} deliveries in {seconds:.2}s ({delivery_rate:.0}/s); latency {latency}; {cpu}; {}",
        env.target,
        if fanout.rate > 0 { format!("{} deliveries/s", fanout.rate) } else { "maximum rate".to_owned() },
        if ok {
            "every subscriber got every message of its room once, in order".to_owned()
        } else {
            format!("FAULTS (subscribers): {faults:?}")
        }
    );
    Ok(json!({
        "scenario": "fanout",
        "rate": fanout.rate,
        "rooms": fanout.rooms,
        "subscribers": fanout.subscribers,
        "publishers": fanout.publishers,
        "stalled": fanout.stalled,
        "messages": messages,
        "send_rate": messages as f64 / publish_seconds,
        "expected": expected,
        "deliveries": deliveries,
        "seconds": seconds,
        "delivery_rate": delivery_rate,
        "latency_ms": latency.to_json(),
        "server_cpu_s": server_cpu,
        "server_user_s": server_times.user,
        "server_system_s": server_times.system,
        "redis_cpu_s": redis_after - redis_before,
        "faults": faults,
        "ok": ok,
    }))
}

async fn run_ingest(env: Arc<Env>, ingest: Ingest) -> Result<Value> {
    env.only_parlor("ingest")?;
    let rooms: Arc<Vec<String>> =
        Arc::new((0..ingest.rooms).map(|r| env.room("ingest", r)).collect());
    let mut publishers = Vec::new();
    for p in 0..ingest.publishers {
        publishers.push(Conn::open(env.target, &env.addr(0, p), &format!("pub{p}")).await?);
    }
    let (cpu_before, redis_before) = env.cpu()?;
    let start = Instant::now();
    let sent = publish_all(
        publishers,
        &rooms,
        start,
        ingest.seconds,
        None,
        ingest.window,
        ingest.pad,
    )
    .await?;
    let messages: u64 = sent.iter().flatten().sum();
    let seconds = start.elapsed().as_secs_f64();
    let (cpu_after, redis_after) = env.cpu()?;
    let rate = messages as f64 / seconds;
    eprintln!("ingest: {messages} messages stored in {seconds:.2}s: {rate:.0}/s");
    Ok(json!({
        "scenario": "ingest",
        "rooms": ingest.rooms,
        "publishers": ingest.publishers,
        "window": ingest.window,
        "messages": messages,
        "seconds": seconds,
        "rate": rate,
        "server_cpu_s": (cpu_after - cpu_before).total(),
        "redis_cpu_s": redis_after - redis_before,
    }))
}

async fn run_replay(env: Arc<Env>, replay: Replay) -> Result<Value> {
    env.only_parlor("replay")?;
    let room = env.room("replay", 0);
    let rooms = Arc::new(vec![room.clone()]);
    let mut times_us = Vec::with_capacity(replay.repeats);
    for i in 0..replay.repeats {
        // A fresh publisher each time: its refs start again at 1, and parlor
        // would take a repeated ref from the same user for a retry.
        let publisher =
            Conn::open(env.target, &env.addr(0, 2 * i), &format!("replay-pub{i}")).await?;
        let plan = Plan {
            rooms: rooms.clone(),
            start: Instant::now(),
            end: Instant::now() + Duration::from_secs(60),
            interval: None,
            window: 64,
            messages: replay.missed,
            pad: 0,
        };
        publish(publisher, 0, plan).await?;

        // The client comes back on the other instance, having seen everything
        // up to the previous round.
        let since = i as u64 * replay.missed;
        let mut client =
            Conn::open(env.target, &env.addr(1, 2 * i + 1), &format!("replay{i}")).await?;
        let start = micros();
        client
            .send(format!(
                r#"{{"type":"join","room":"{room}","since":{since}}}"#
            ))
            .await?;
        let mut next = since + 1;
        loop {
            let text = client.recv().await?;
            if let Some(message) = client.delivery(&text) {
                if message.seq != next {
                    return Err(format!(
                        "replay after {since}: id {} where {next} was due",
                        message.seq
                    )
                    .into());
                }
                next += 1;
            } else if text.contains(r#""type":"replayed""#) {
                break;
            }
        }
        times_us.push((micros() - start) as u32);
        if next != since + replay.missed + 1 {
            return Err(format!(
                "replay after {since}: {} messages, not {}",
                next - since - 1,
                replay.missed
            )
            .into());
        }
    }
    let time = percentiles(&mut times_us);
    eprintln!(
        "replay of {} missed messages, {} times: {time}",
        replay.missed, replay.repeats
    );
    Ok(json!({
        "scenario": "replay",
        "missed": replay.missed,
        "repeats": replay.repeats,
        "ms": time.to_json(),
    }))
}

/// What one publisher sends.
struct Plan {
    rooms: Arc<Vec<String>>,
    /// When its first send is due.
    start: Instant,
    /// When it stops sending.
    end: Instant,
    /// Paced: one send per interval, whatever the acks do, so that a server
    /// that falls behind shows as latency rather than as a lower send rate.
    /// Otherwise as fast as `window` sends in flight allow.
    interval: Option<Duration>,
    window: u64,
    /// Most messages to send.
    messages: u64,
    pad: usize,
}

/// Runs `publish` on every connection from `start` for `seconds`; paced
/// publishers are staggered over one interval. Returns, per publisher, how
/// many it sent to each room, all of them acked.
async fn publish_all(
    publishers: Vec<Conn>,
    rooms: &Arc<Vec<String>>,
    start: Instant,
    seconds: f64,
    interval: Option<Duration>,
    window: u64,
    pad: usize,
) -> Result<Vec<Vec<u64>>> {
    let count = publishers.len();
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, conn)| {
            let plan = Plan {
                rooms: rooms.clone(),
                start: start
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(p as f64 / count as f64)),
                end: start + Duration::from_secs_f64(seconds),
                interval,
                window,
                messages: u64::MAX,
                pad,
            };
            task::spawn(publish(conn, p, plan))
        })
        .collect();
    let mut sent = Vec::new();
    for publisher in tasks {
        sent.push(publisher.await?);
    }
    Ok(sent)
}

/// Sends message after message to the rooms in turn (publisher `p` starts at
/// room `p`) until the plan ends, then waits for every ack. Returns how many
/// it sent to each room, all of them acked.
async fn publish(mut conn: Conn, p: usize, plan: Plan) -> Result<Vec<u64>> {
    const ACK_TIMEOUT: Duration = Duration::from_secs(30);
    let pad = conn.padding(plan.pad);
    let mut sent_to = vec![0; plan.rooms.len()];
    let (mut sent, mut acked) = (0, 0);
    let due = |sent: u64, interval: Duration| plan.start + interval.mul_f64(sent as f64);
    let sending = |now: Instant, sent: u64| now < plan.end && sent < plan.messages;
    loop {
        let mut now = Instant::now();
        while sending(now, sent)
            && match plan.interval {
                Some(interval) => due(sent, interval) <= now,
                None => sent - acked < plan.window,
            }
        {
            let room = (p + sent as usize) % plan.rooms.len();
            sent_to[room] += 1;
            let frame = conn.send_frame(&plan.rooms[room], p, sent_to[room], &pad);
            conn.send(frame).await?;
            sent += 1;
            now = Instant::now();
        }
        let still_sending = sending(now, sent);
        if !still_sending && acked == sent {
            return Ok(sent_to);
        }
        // Wait for an ack, or until the next paced send is due.
        let wake = match plan.interval {
            Some(interval) if still_sending => due(sent, interval).min(plan.end),
            _ => now + ACK_TIMEOUT,
        };
        let text = match timeout(wake.saturating_duration_since(now), conn.next_text()).await {
            Ok(text) => text?,
            Err(_) if still_sending && plan.interval.is_some() => continue,
            Err(_) => {
                return Err(
                    format!("{} sends unanswered after {ACK_TIMEOUT:?}", sent - acked).into(),
                )
            }
        };
        if !conn.answer_ping(&text).await? && conn.is_ack(&text)? {
            acked += 1;
        }
    }
}

/// How far the subscribers have got, together.
#[derive(Default)]
struct Progress {
    /// Frames of any kind read, to wait until they are quiet.
    frames: AtomicU64,
    delivered: AtomicU64,
    /// When the latest delivery arrived, in `micros()`.
    last_us: AtomicU64,
}

/// What one subscriber saw.
struct Tally {
    deliveries: u64,
    latencies_us: Vec<u32>,
    /// The highest sequence number seen, per key (see `Delivery`).
    last: Vec<u64>,
    /// Deliveries that skipped ahead of the next number (something lost or
    /// reordered).
    gaps: u64,
    /// Deliveries at or below a number already seen (duplicated or reordered).
    repeats: u64,
    /// Why the connection ended before the run did.
    error: Option<String>,
}

/// Reads deliveries until `stopped` closes, checking each sequence as it goes.
async fn subscribe(
    mut conn: Conn,
    keys: usize,
    progress: Arc<Progress>,
    stopped: async_channel::Receiver<()>,
) -> Tally {
    let mut tally = Tally {
        deliveries: 0,
        latencies_us: Vec::new(),
        last: vec![0; keys],
        gaps: 0,
        repeats: 0,
        error: None,
    };
    let stop = stopped.recv();
    futures_lite::pin!(stop);
    loop {
        let next = future::or(async { Some(conn.recv().await) }, async {
            let _ = stop.as_mut().await;
            None
        })
        .await;
        let text = match next {
            None => return tally,
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                tally.error = Some(e.to_string());
                return tally;
            }
        };
        progress.frames.fetch_add(1, Ordering::Relaxed);
        let Some(message) = conn.delivery(&text) else {
            continue;
        };
        let now = micros();
        tally.deliveries += 1;
        tally
            .latencies_us
            .push(now.saturating_sub(message.sent_us).min(u32::MAX.into()) as u32);
        match tally.last.get_mut(message.key) {
            Some(last) if message.seq == *last + 1 => *last = message.seq,
            Some(last) if message.seq > *last => {
                tally.gaps += 1;
                *last = message.seq;
            }
            _ => tally.repeats += 1,
        }
        progress.delivered.fetch_add(1, Ordering::Relaxed);
        progress.last_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// Percentiles of a set of microsecond durations.
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentiles(us: &mut [u32]) -> Percentiles {
    us.sort_unstable();
    let at = |q: f64| {
        us.get(((us.len() as f64 * q) as usize).min(us.len().saturating_sub(1)))
            .map_or(0.0, |&v| f64::from(v) / 1000.0)
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

impl Percentiles {
    fn to_json(&self) -> Value {
        json!({"p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max})
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// CPU seconds a process has used (or several, summed), user and system
/// time apart.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl std::iter::Sum for Cpu {
    fn sum<I: Iterator<Item = Cpu>>(times: I) -> Cpu {
        times.fold(Cpu::default(), |sum, t| Cpu {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
    }
}

/// CPU seconds, user and system, that process `pid` has used: fields 14
/// (utime) and 15 (stime) of /proc/<pid>/stat, in clock ticks of 1/100 s
/// (USER_HZ, which Linux fixes at 100 for /proc on every common
/// architecture).
fn cpu_seconds(pid: u32) -> Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; count from after it.
    let fields: Vec<&str> = stat[stat.rfind(')').ok_or("odd /proc stat")? + 1..]
        .split_whitespace()
        .collect();
    let seconds = |field: &str| Ok::<_, Error>(field.parse::<u64>()? as f64 / 100.0);
    Ok(Cpu {
        user: seconds(fields[11])?,
        system: seconds(fields[12])?,
    })
}
