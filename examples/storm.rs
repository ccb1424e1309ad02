//! The reconnect storm of parlor's benchmark (`make bench`, bench/run.py):
//! members of many rooms spread over the instances each drop their
//! connection without a close frame (the socket closed, no WebSocket close)
//! every 10 to 20 s and resume on a random instance, while publishers post
//! at a fixed rate; the same for parlor (a join with the last id and epoch
//! seen) and for Socket.IO 4 with connection state recovery (a CONNECT with
//! the last `pid` and `offset` seen, over a raw WebSocket), so that the two
//! are measured doing the same thing. Publishing and the storm start once
//! the members' first joins are quiet (no frame read for a second).
//!
//! At the end it checks, from what each member held, that every acked
//! message reached every member of its room, and counts duplicates and
//! reorders (per publisher, whose messages each server must keep in order),
//! the resumes, and how long each resume took to catch up: from the drop
//! until the member held every message of its room acked before the resume
//! completed (parlor's `replayed`; Socket.IO's CONNECT answer, which follows
//! the missed packets, or for a session it could not restore the ack of the
//! join sent again) and after the member's previous resume completed.
//! It prints one JSON line on stdout for the driver and a summary on stderr.
//!
//! ```text
//! cargo run --release --example storm -- --target parlor \
//!     --url ws://127.0.0.1:8081 --url ws://127.0.0.1:8082 --rooms 10 --members 100 --seconds 15
//! ```
//! Many members need `ulimit -n` raised first, and parlor a high `--rate`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
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

#[path = "common/quiet.rs"]
mod quiet;
#[path = "common/scan.rs"]
mod scan;
use scan::number_after;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;
type Ws = WebSocketStream<TcpStream>;

/// Members dropping and resuming while publishers post; one JSON line on stdout.
#[derive(FromArgs)]
struct Args {
    /// server under test: parlor or socketio
    #[argh(option, default = "String::from(\"parlor\")")]
    target: String,
    /// instance, as ws://127.0.0.1:PORT (repeat for each)
    #[argh(option)]
    url: Vec<String>,
    /// connect to 127.0.0.1 to 127.0.0.N, each with its own ephemeral ports
    #[argh(option, default = "8")]
    spread: u8,
    /// rooms [default 100]
    #[argh(option, default = "100")]
    rooms: usize,
    /// members per room [default 100]
    #[argh(option, default = "100")]
    members: usize,
    /// publishing connections, which never drop [default 10]
    #[argh(option, default = "10")]
    publishers: usize,
    /// messages posted per second, in all, each to a random room [default 200]
    #[argh(option, default = "200")]
    rate: u64,
    /// seconds of the storm [default 60]
    #[argh(option, default = "60")]
    seconds: u64,
    /// mean seconds between two drops of a member (uniformly 2/3 to 4/3 of it)
    #[argh(option, default = "15.0")]
    drop_every: f64,
    /// seconds of publishing before the storm, so that every room has a message
    #[argh(option, default = "3")]
    warmup: u64,
    /// most seconds to wait for the members to catch up after the storm
    #[argh(option, default = "20")]
    drain: u64,
    /// resumes slower than this to catch up are counted by the second of the
    /// storm they dropped in, in the report's `slow` [default 50]
    #[argh(option, default = "50")]
    slow_ms: u64,
    /// members connecting at a time at the start
    #[argh(option, default = "200")]
    concurrency: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Parlor,
    SocketIo,
}

/// What every task shares: where the instances are, the clock and the phases.
struct Ctx {
    target: Target,
    ports: Vec<u16>,
    spread: u8,
    rooms: Vec<String>,
    publishers: usize,
    /// Messages per second, in all.
    rate: u64,
    clock: Instant,
    /// When the storm starts and ends, in `now_us`; 0 until it is set.
    storm_from: AtomicU64,
    storm_to: AtomicU64,
    /// Set once the members have caught up: they return what they saw.
    stop: AtomicBool,
    /// Members connected and joined for the first time.
    joined: AtomicUsize,
    /// Frames the members have read, of any kind.
    frames: AtomicU64,
    /// Distinct messages each member holds.
    held: Vec<AtomicU32>,
    drop_every_us: u64,
    /// What `Slow` counts: catch-ups longer than this.
    slow_us: u64,
}

impl Ctx {
    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// A random instance, on a random one of the loopback addresses.
    fn random_addr(&self) -> String {
        let port = self.ports[fastrand::usize(..self.ports.len())];
        format!("127.0.0.{}:{port}", 1 + fastrand::u8(..self.spread))
    }

    /// The next gap between two drops of a member, 2/3 to 4/3 of the mean.
    fn drop_gap_us(&self) -> u64 {
        fastrand::u64(self.drop_every_us * 2 / 3..=self.drop_every_us * 4 / 3)
    }
}

fn main() {
    let args: Args = argh::from_env();
    let target = args.target.clone();
    match task::block_on(run(args)) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("storm ({target}): {e}");
            println!(
                "{}",
                json!({"scenario": "storm", "target": target, "error": e.to_string()})
            );
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<Value> {
    let ctx = Arc::new(context(&args)?);
    let started = Instant::now();
    let members = start_members(&ctx, &args).await?;
    // The storm starts once the members' first joins are announced: a
    // million `member` frames for 10,000 members in rooms of 100.
    quiet::quiet(&ctx.frames, Duration::from_secs(120)).await;
    let mut connections = Vec::new();
    for p in 0..ctx.publishers {
        connections.push(connect_publisher(&ctx, p).await?);
    }
    let storm_from = ctx.now_us() + args.warmup * 1_000_000;
    ctx.storm_to
        .store(storm_from + args.seconds * 1_000_000, Ordering::Release);
    ctx.storm_from.store(storm_from, Ordering::Release);
    let publishers: Vec<Publisher> = connections
        .into_iter()
        .enumerate()
        .map(|(p, ws)| task::spawn(publish(ctx.clone(), p, ws)))
        .collect();
    let (mut published, mut acked, mut reconnects) = (0, Vec::new(), 0);
    for publisher in publishers {
        let done = publisher.await?;
        published += done.sent;
        acked.extend(done.acked);
        reconnects += done.reconnects;
    }
    let drain = Instant::now();
    wait_caught_up(&ctx, &acked, Duration::from_secs(args.drain)).await;
    let drain_s = drain.elapsed().as_secs_f64();
    ctx.stop.store(true, Ordering::Release);
    let mut logs = Vec::new();
    for member in members {
        logs.push(member.await);
    }
    let mut report = analyse(&ctx, &logs, &acked);
    let fields = json!({
        "scenario": "storm", "target": args.target, "published": published,
        "publisher_reconnects": reconnects,
        "rooms": args.rooms, "per_room": args.members, "publishers": args.publishers,
        "rate": args.rate, "seconds": args.seconds, "warmup_s": args.warmup,
        "drop_every_s": args.drop_every, "drain_s": drain_s,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    for (key, value) in fields.as_object().into_iter().flatten() {
        report[key] = value.clone();
    }
    summary(&report);
    Ok(report)
}

fn context(args: &Args) -> Result<Ctx> {
    let target = match args.target.as_str() {
        "parlor" => Target::Parlor,
        "socketio" => Target::SocketIo,
        other => return Err(format!("--target must be parlor or socketio, not {other}").into()),
    };
    let mut ports = Vec::new();
    for url in &args.url {
        let port = url
            .strip_prefix("ws://127.0.0.1:")
            .ok_or_else(|| format!("{url}: the instances must be ws://127.0.0.1:PORT"))?;
        ports.push(port.trim_end_matches('/').parse()?);
    }
    if ports.is_empty() || args.publishers == 0 || args.rate == 0 {
        return Err("at least one --url, one publisher and a rate above 0 are needed".into());
    }
    let prefix = format!("storm{}", std::process::id());
    Ok(Ctx {
        target,
        ports,
        spread: args.spread.max(1),
        rooms: (0..args.rooms).map(|r| format!("{prefix}-{r}")).collect(),
        publishers: args.publishers,
        rate: args.rate,
        clock: Instant::now(),
        storm_from: AtomicU64::new(0),
        storm_to: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        joined: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        held: (0..args.rooms * args.members)
            .map(|_| AtomicU32::new(0))
            .collect(),
        drop_every_us: (args.drop_every * 1e6) as u64,
        slow_us: args.slow_ms * 1000,
    })
}

async fn open_ws(addr: &str, path: &str) -> Result<Ws> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // tungstenite's default 128 KiB read buffer, times 10,000 members, would
    // be gigabytes.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = async_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        tcp,
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// The next text frame; an error once the connection has ended.
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}").into()),
            Some(Ok(_)) => {} // tungstenite answers WebSocket pings itself
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the server ended the connection".into()),
        }
    }
}

async fn send(ws: &mut Ws, text: String) -> Result<()> {
    Ok(ws.send(Message::text(text)).await?)
}

/// The string that follows `key` in `text`, up to the next quote.
fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

/// A member's view of its room: what it needs to resume, and what it saw.
struct Member {
    index: usize,
    room: usize,
    /// parlor: the room's epoch; Socket.IO: the session's `pid`.
    token: String,
    /// parlor: the last id seen; Socket.IO: the last offset seen.
    position: String,
    seen: HashSet<u32>,
    log: Log,
}

/// What a member saw, for the checks at the end.
#[derive(Default)]
struct Log {
    room: usize,
    /// (message number, arrival in `now_us`), in the order delivered.
    arrivals: Vec<(u32, u64)>,
    resumes: Vec<Resume>,
    /// Connection attempts that failed, retried on another instance, by
    /// what went wrong.
    failed: HashMap<String, u64>,
}

impl Log {
    fn failed(&mut self, error: Error) {
        *self.failed.entry(error.to_string()).or_default() += 1;
    }
}

struct Resume {
    dropped_us: u64,
    done_us: u64,
    /// Whether the server restored the session (Socket.IO) or the epoch
    /// went on (parlor); otherwise the member joined afresh.
    recovered: bool,
}

impl Resume {
    /// From the drop to the resume's end; u64::MAX if it never ended.
    fn took_us(&self) -> u64 {
        match self.done_us {
            u64::MAX => u64::MAX,
            done => done - self.dropped_us,
        }
    }
}

impl Member {
    /// Records a delivered message, if `text` is one, and moves the position on.
    fn delivery(&mut self, ctx: &Ctx, text: &str) {
        let n = match ctx.target {
            Target::Parlor if text.contains(r#""type":"message""#) => {
                let id = number_after(text, r#""id":"#).unwrap_or(0);
                self.position = id.to_string();
                number_after(text, r#""text":""#)
            }
            Target::SocketIo if text.starts_with(r#"42["message","#) => {
                // The offset is the event's last argument: `…},"1733-0"]`.
                if let Some(at) = text.rfind(",\"") {
                    self.position = text[at + 2..].trim_end_matches("\"]").to_owned();
                }
                number_after(text, r#""n":"#)
            }
            _ => return,
        };
        let Some(n) = n.and_then(|n| u32::try_from(n).ok()) else {
            return;
        };
        self.log.arrivals.push((n, ctx.now_us()));
        if self.seen.insert(n) {
            ctx.held[self.index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn start_members(ctx: &Arc<Ctx>, args: &Args) -> Result<Vec<task::JoinHandle<Log>>> {
    let gate = async_channel::bounded(args.concurrency.max(1));
    for _ in 0..args.concurrency.max(1) {
        gate.0.send(()).await?;
    }
    let total = args.rooms * args.members;
    let members = (0..total)
        .map(|index| {
            let member = Member {
                index,
                room: index % args.rooms,
                token: String::new(),
                position: String::new(),
                seen: HashSet::new(),
                log: Log::default(),
            };
            task::spawn(follow(ctx.clone(), member, gate.clone()))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ctx.joined.load(Ordering::Acquire) < total {
        if Instant::now() > deadline {
            let joined = ctx.joined.load(Ordering::Acquire);
            return Err(format!("{joined} of {total} members joined within 300 s").into());
        }
        task::sleep(Duration::from_millis(50)).await;
    }
    Ok(members)
}

/// Follows the member's room until told to stop: joins once (through
/// `gate`, so that the start is not a stampede), then drops on schedule
/// during the storm and resumes at once on a random instance.
async fn follow(
    ctx: Arc<Ctx>,
    mut member: Member,
    gate: (async_channel::Sender<()>, async_channel::Receiver<()>),
) -> Log {
    member.log.room = member.room;
    let _ = gate.1.recv().await;
    let mut ws = loop {
        match resume(&ctx, &mut member).await {
            Ok((ws, _)) => break ws,
            Err(e) => member.log.failed(e),
        }
        task::sleep(Duration::from_millis(100)).await;
    };
    let _ = gate.0.send(()).await;
    ctx.joined.fetch_add(1, Ordering::AcqRel);
    // The first drop falls anywhere in a gap, so that drops are spread evenly.
    let mut next_drop = None;
    let phase = fastrand::u64(..ctx.drop_every_us * 4 / 3);
    loop {
        if !read_until_drop(&ctx, &mut ws, &mut member, &mut next_drop, phase).await {
            return member.log;
        }
        drop(ws); // the socket closes: no WebSocket close frame
        let dropped_us = ctx.now_us();
        ws = loop {
            match resume(&ctx, &mut member).await {
                Ok((ws, recovered)) => {
                    let done_us = ctx.now_us();
                    member.log.resumes.push(Resume {
                        dropped_us,
                        done_us,
                        recovered,
                    });
                    break ws;
                }
                Err(_) if ctx.stop.load(Ordering::Acquire) => {
                    member.log.resumes.push(Resume {
                        dropped_us,
                        done_us: u64::MAX, // never completed
                        recovered: false,
                    });
                    return member.log;
                }
                Err(e) => member.log.failed(e),
            }
            task::sleep(Duration::from_millis(100)).await;
        };
    }
}

/// Reads deliveries until the member's next drop is due (true) or the run
/// stops (false). A connection the server ends counts as a drop.
async fn read_until_drop(
    ctx: &Ctx,
    ws: &mut Ws,
    member: &mut Member,
    next_drop: &mut Option<u64>,
    phase: u64,
) -> bool {
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return false;
        }
        let now = ctx.now_us();
        let (from, to) = (
            ctx.storm_from.load(Ordering::Acquire),
            ctx.storm_to.load(Ordering::Acquire),
        );
        if from > 0 && next_drop.is_none() {
            *next_drop = Some(from + phase);
        }
        // No drop falls after the storm.
        let due = next_drop.filter(|&due| due < to);
        if due.is_some_and(|due| due <= now) {
            *next_drop = Some(now + ctx.drop_gap_us());
            return true;
        }
        // Until the drop, or the end of the storm; after it, waking once a
        // second is enough to see the stop. One timer for many deliveries: a
        // timer each would cost the load generator more than reading them.
        let wake = due.unwrap_or(if now < to { to } else { now + 1_000_000 });
        let wait = wake - now;
        let mut timer = std::pin::pin!(task::sleep(Duration::from_micros(wait)));
        loop {
            let next = future::or(async { Some(next_text(ws).await) }, async {
                timer.as_mut().await;
                None
            });
            let text = match next.await {
                None => break,
                Some(Ok(text)) => text,
                Some(Err(_)) => return true,
            };
            ctx.frames.fetch_add(1, Ordering::Relaxed);
            if ctx.target == Target::SocketIo && text == "2" {
                let _ = send(ws, "3".to_owned()).await;
                continue;
            }
            member.delivery(ctx, &text);
        }
    }
}

/// Connects to a random instance and joins the member's room, resuming from
/// its position if it has one; returns once the resume is complete (see the
/// header), with whether the server went on from where the member was.
async fn resume(ctx: &Ctx, member: &mut Member) -> Result<(Ws, bool)> {
    let addr = ctx.random_addr();
    let attempt = timeout(Duration::from_secs(30), async {
        match ctx.target {
            Target::Parlor => resume_parlor(ctx, member, &addr).await,
            Target::SocketIo => resume_socketio(ctx, member, &addr).await,
        }
    });
    attempt.await.map_err(|_| "no resume within 30 s")?
}

async fn resume_parlor(ctx: &Ctx, member: &mut Member, addr: &str) -> Result<(Ws, bool)> {
    let (room, user) = (&ctx.rooms[member.room], member.index);
    let path = if member.token.is_empty() {
        format!("/ws?user=m{user}&room={room}&since=0")
    } else {
        let since = if member.position.is_empty() {
            "0"
        } else {
            &member.position
        };
        let epoch = &member.token;
        format!("/ws?user=m{user}&room={room}&since={since}&epoch={epoch}")
    };
    let mut ws = open_ws(addr, &path).await?;
    let mut recovered = false;
    loop {
        let text = next_text(&mut ws).await?;
        if text.contains(r#""type":"joined""#) {
            let epoch = string_after(&text, r#""epoch":""#).unwrap_or_default();
            recovered = !member.token.is_empty() && epoch == member.token;
            member.token = epoch.to_owned();
        } else if text.contains(r#""type":"replayed""#) {
            return Ok((ws, recovered && !text.contains(r#""truncated":true"#)));
        } else if text.contains(r#""type":"error""#) {
            return Err(format!("join refused: {text}").into());
        } else {
            member.delivery(ctx, &text);
        }
    }
}

/// Engine.IO v4's open packet, then a Socket.IO CONNECT to the main
/// namespace, with `{pid, offset}` when the member has both: the server
/// sends the missed packets, then its CONNECT answer with the session's
/// `pid`, the same one if it restored the session. A new session joins the
/// room again.
async fn resume_socketio(ctx: &Ctx, member: &mut Member, addr: &str) -> Result<(Ws, bool)> {
    let mut ws = open_ws(addr, "/socket.io/?EIO=4&transport=websocket").await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected an Engine.IO open packet, got {open}").into());
    }
    let resuming = !member.token.is_empty() && !member.position.is_empty();
    let connect = if resuming {
        let (pid, offset) = (&member.token, &member.position);
        format!(r#"40{{"pid":"{pid}","offset":"{offset}"}}"#)
    } else {
        "40".to_owned()
    };
    send(&mut ws, connect).await?;
    let mut recovered = false;
    let mut joining = false;
    loop {
        let text = next_text(&mut ws).await?;
        if text == "2" {
            send(&mut ws, "3".to_owned()).await?;
        } else if text.starts_with("40{") {
            let pid = string_after(&text, r#""pid":""#).unwrap_or_default();
            recovered = resuming && pid == member.token;
            member.token = pid.to_owned();
            if recovered {
                return Ok((ws, true));
            }
            let room = &ctx.rooms[member.room];
            send(&mut ws, format!(r#"421["join","{room}"]"#)).await?;
            joining = true;
        } else if joining && text.starts_with("431[") {
            return Ok((ws, recovered));
        } else if text.starts_with("44") {
            return Err(format!("Socket.IO refused the connection: {text}").into());
        } else {
            member.delivery(ctx, &text);
        }
    }
}

/// A message its publisher had acked.
struct Acked {
    n: u32,
    room: usize,
    acked_us: u64,
}

type Publisher = task::JoinHandle<Result<Published>>;

/// Publisher `p`'s connection, to the instances in turn by `p`.
async fn connect_publisher(ctx: &Ctx, p: usize) -> Result<Ws> {
    let port = ctx.ports[p % ctx.ports.len()];
    let addr = format!("127.0.0.1:{port}");
    Ok(match ctx.target {
        Target::Parlor => open_ws(&addr, &format!("/ws?user=pub{p}")).await?,
        Target::SocketIo => {
            let mut ws = open_ws(&addr, "/socket.io/?EIO=4&transport=websocket").await?;
            send(&mut ws, "40".to_owned()).await?;
            while !next_text(&mut ws).await?.starts_with("40") {}
            ws
        }
    })
}

/// Connects publisher `p` again after the server ended its connection,
/// trying until `until`; None if it could not.
async fn reconnect_publisher(ctx: &Ctx, p: usize, until: Instant) -> Option<Ws> {
    while Instant::now() < until {
        if let Ok(Ok(ws)) = timeout(Duration::from_secs(10), connect_publisher(ctx, p)).await {
            return Some(ws);
        }
        task::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What a publisher did: messages sent, those acked, and how many times
/// it had to connect again (its sends not acked by then never are).
struct Published {
    sent: u64,
    acked: Vec<Acked>,
    reconnects: u64,
}

/// Posts message after message, each to a random room, paced by the clock
/// until the end of the storm, then waits (up to 10 s) for every ack.
/// Publisher `p` numbers its messages p, p + P, p + 2P, … (P publishers), so
/// that every message has a number of its own and each publisher's numbers
/// rise. Without a connection it sends nothing: after connecting again it
/// goes on at the same pace from then, and stops if it cannot by the end.
async fn publish(ctx: Arc<Ctx>, p: usize, mut ws: Ws) -> Result<Published> {
    let count = ctx.publishers as u64;
    let interval = Duration::from_secs_f64(count as f64 / ctx.rate as f64);
    let mut start = Instant::now() + interval.mul_f64(p as f64 / count as f64);
    let end_us = ctx.storm_to.load(Ordering::Acquire);
    let end = Instant::now() + Duration::from_micros(end_us.saturating_sub(ctx.now_us()));
    let (mut rooms, mut acked) = (Vec::new(), Vec::new());
    let (mut deadline, mut abandoned, mut reconnects) = (None, 0, 0);
    loop {
        let now = Instant::now();
        let due = start + interval.mul_f64(rooms.len() as f64);
        let sending = ctx.now_us() < end_us;
        let mut lost = false;
        if sending && due <= now {
            let (k, room) = (rooms.len() as u64, fastrand::usize(..ctx.rooms.len()));
            lost = send(&mut ws, ctx.send_frame(room, k, k * count + p as u64))
                .await
                .is_err();
            rooms.push(room);
        } else {
            let wake = if sending {
                due
            } else {
                *deadline.get_or_insert(now + Duration::from_secs(10))
            };
            if !sending && (acked.len() + abandoned == rooms.len() || now >= wake) {
                let sent = rooms.len() as u64;
                return Ok(Published {
                    sent,
                    acked,
                    reconnects,
                });
            }
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            match timeout(wait, next_text(&mut ws)).await {
                Err(_) => {}
                Ok(Err(_)) => lost = true,
                Ok(Ok(text)) => {
                    if let Some(k) = ctx.acked_send(&text)? {
                        let room = *rooms.get(k as usize).ok_or("an ack for nothing sent")?;
                        let n = (k * count + p as u64) as u32;
                        acked.push(Acked {
                            n,
                            room,
                            acked_us: ctx.now_us(),
                        });
                    } else if ctx.target == Target::SocketIo && text == "2" {
                        lost = send(&mut ws, "3".to_owned()).await.is_err();
                    }
                }
            }
        }
        if lost {
            abandoned = rooms.len() - acked.len();
            let Some(again) = reconnect_publisher(&ctx, p, end).await else {
                let sent = rooms.len() as u64;
                return Ok(Published {
                    sent,
                    acked,
                    reconnects,
                });
            };
            (ws, reconnects) = (again, reconnects + 1);
            let sent = interval.mul_f64(rooms.len() as f64);
            start = Instant::now().checked_sub(sent).unwrap_or(start);
        }
    }
}

impl Ctx {
    /// Send `k` of a publisher: message number `n` to `room`. parlor's ref,
    /// and Socket.IO's ack id (k + 1, as 0 is not used), say which it was.
    fn send_frame(&self, room: usize, k: u64, n: u64) -> String {
        let room = &self.rooms[room];
        match self.target {
            Target::Parlor => {
                format!(r#"{{"type":"send","room":"{room}","text":"{n}","ref":"{k}"}}"#)
            }
            Target::SocketIo => {
                format!(r#"42{}["send",{{"room":"{room}","n":{n}}}]"#, k + 1)
            }
        }
    }

    /// Which send `text` acks, if it is an ack; a refused send ends the run.
    fn acked_send(&self, text: &str) -> Result<Option<u64>> {
        match self.target {
            Target::Parlor if text.contains(r#""type":"error""#) => {
                Err(format!("a send was refused: {text}").into())
            }
            Target::Parlor if text.contains(r#""type":"ack""#) => {
                Ok(number_after(text, r#""ref":""#))
            }
            Target::SocketIo if text.starts_with("43") => {
                Ok(number_after(text, "43").and_then(|id| id.checked_sub(1)))
            }
            _ => Ok(None),
        }
    }
}

/// Waits until every member holds as many messages as were acked in its
/// room, or for `most`, or until 5 s pass without a delivery.
async fn wait_caught_up(ctx: &Ctx, acked: &[Acked], most: Duration) {
    let mut per_room = vec![0u32; ctx.rooms.len()];
    for a in acked {
        per_room[a.room] += 1;
    }
    let rooms = ctx.rooms.len();
    let deadline = Instant::now() + most;
    let (mut total, mut moved) = (0, Instant::now());
    while Instant::now() < deadline && moved.elapsed() < Duration::from_secs(5) {
        let held: Vec<u32> = ctx.held.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        if held
            .iter()
            .enumerate()
            .all(|(i, h)| *h >= per_room[i % rooms])
        {
            return;
        }
        let now: u64 = held.iter().map(|&h| u64::from(h)).sum();
        if now != total {
            (total, moved) = (now, Instant::now());
        }
        task::sleep(Duration::from_millis(200)).await;
    }
}

/// What the members saw, against what was acked.
#[derive(Default)]
struct Totals {
    expected: u64,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    resumes: u64,
    recovered: u64,
    failed: HashMap<String, u64>,
}

fn analyse(ctx: &Ctx, logs: &[Log], acked: &[Acked]) -> Value {
    // Each room's acked messages by ack time, and where each number is.
    let mut by_room: Vec<Vec<(u64, u32)>> = vec![Vec::new(); ctx.rooms.len()];
    for a in acked {
        by_room[a.room].push((a.acked_us, a.n));
    }
    let mut place = HashMap::new();
    for (room, list) in by_room.iter_mut().enumerate() {
        list.sort_unstable();
        for (i, (_, n)) in list.iter().enumerate() {
            place.insert(*n, (room, i));
        }
    }
    let mut totals = Totals::default();
    let mut slow = Slow::default();
    // In microseconds; u64::MAX for a resume that never caught up.
    let mut catch_ups = Vec::new();
    for log in logs {
        let list = &by_room[log.room];
        let first = first_arrivals(log, list.len(), &place, ctx.publishers, &mut totals);
        let times = catch_up_times(log, list, &first);
        slow.count(ctx, &log.resumes, &times);
        catch_ups.extend(times);
        totals.resumes += log.resumes.len() as u64;
        totals.recovered += log.resumes.iter().filter(|r| r.recovered).count() as u64;
        for (error, count) in &log.failed {
            *totals.failed.entry(error.clone()).or_default() += count;
        }
    }
    let mut resumed: Vec<u64> = logs
        .iter()
        .flat_map(|log| log.resumes.iter().map(Resume::took_us))
        .collect();
    catch_ups.sort_unstable();
    resumed.sort_unstable();
    let at = |sorted: &[u64], q: f64| {
        let us = *sorted.get(((sorted.len().max(1) - 1) as f64 * q) as usize)?;
        (us != u64::MAX).then(|| us as f64 / 1e3)
    };
    let quantiles = |sorted: &[u64]| json!({"p50": at(sorted, 0.5), "p99": at(sorted, 0.99), "max": at(sorted, 1.0)});
    json!({
        "members": logs.len(),
        "acked": acked.len(),
        "expected": totals.expected,
        "delivered": totals.delivered,
        "delivered_fraction": totals.delivered as f64 / totals.expected.max(1) as f64,
        "duplicates": totals.duplicates,
        "reordered": totals.reordered,
        "resumes": totals.resumes,
        "recovered": totals.recovered,
        "not_caught_up": catch_ups.iter().filter(|&&us| us == u64::MAX).count(),
        "unfinished": resumed.iter().filter(|&&us| us == u64::MAX).count(),
        "failed_attempts": totals.failed.values().sum::<u64>(),
        "failures": totals.failed,
        "catch_up_ms": quantiles(&catch_ups),
        "resume_ms": quantiles(&resumed),
        "slow": slow.report(ctx),
    })
}

/// The resumes slower than `--slow-ms` to catch up (that did catch up):
/// how many, how many of them were slow to complete the resume itself
/// rather than waiting for live messages after it, and the seconds of the
/// storm they dropped in. Slow resumes bunched in a few seconds point at a
/// stall (of the machine, or of an instance), spread ones at a steady cost.
#[derive(Default)]
struct Slow {
    resumes: u64,
    in_the_resume: u64,
    by_second: HashMap<u64, u64>,
}

impl Slow {
    fn count(&mut self, ctx: &Ctx, resumes: &[Resume], catch_ups: &[u64]) {
        let from = ctx.storm_from.load(Ordering::Acquire);
        for (resume, &us) in resumes.iter().zip(catch_ups) {
            if us <= ctx.slow_us || us == u64::MAX {
                continue;
            }
            self.resumes += 1;
            self.in_the_resume += u64::from(resume.took_us() > ctx.slow_us);
            let second = resume.dropped_us.saturating_sub(from) / 1_000_000;
            *self.by_second.entry(second).or_default() += 1;
        }
    }

    /// The report's `slow`, with the five seconds that had the most, most first.
    fn report(&self, ctx: &Ctx) -> Value {
        let mut seconds: Vec<(u64, u64)> = self.by_second.iter().map(|(&s, &n)| (s, n)).collect();
        seconds.sort_unstable_by_key(|&(second, n)| (std::cmp::Reverse(n), second));
        let seconds_with_slow = seconds.len();
        seconds.truncate(5);
        json!({
            "over_ms": ctx.slow_us / 1000,
            "resumes": self.resumes,
            "in_the_resume": self.in_the_resume,
            "seconds_with_slow": seconds_with_slow,
            "most": seconds,
        })
    }
}

/// When each acked message of the member's room first reached it
/// (u64::MAX: never), by its place in the room's list; counts deliveries,
/// duplicates, and messages that came after a later one of their publisher.
fn first_arrivals(
    log: &Log,
    len: usize,
    place: &HashMap<u32, (usize, usize)>,
    publishers: usize,
    totals: &mut Totals,
) -> Vec<u64> {
    let mut first = vec![u64::MAX; len];
    let mut seen = HashSet::new();
    let mut highest: Vec<Option<u32>> = vec![None; publishers];
    for &(n, at) in &log.arrivals {
        if !seen.insert(n) {
            totals.duplicates += 1;
            continue;
        }
        let top = &mut highest[n as usize % publishers];
        if top.is_some_and(|top| n < top) {
            totals.reordered += 1;
        }
        *top = Some(top.map_or(n, |top| top.max(n)));
        if let Some(&(room, i)) = place.get(&n) {
            if room == log.room {
                first[i] = at;
            }
        }
    }
    totals.expected += len as u64;
    totals.delivered += first.iter().filter(|&&at| at != u64::MAX).count() as u64;
    first
}

/// For each resume, from the drop until the member held every message of
/// its room acked after its previous resume completed and before this one
/// did (u64::MAX: it never did).
fn catch_up_times(log: &Log, list: &[(u64, u32)], first: &[u64]) -> Vec<u64> {
    let mut since = 0;
    log.resumes
        .iter()
        .map(|resume| {
            let from = list.partition_point(|&(acked, _)| acked <= since);
            let to = list.partition_point(|&(acked, _)| acked < resume.done_us);
            since = resume.done_us;
            match first[from..to.max(from)].iter().max() {
                _ if resume.done_us == u64::MAX => u64::MAX,
                Some(&u64::MAX) => u64::MAX,
                last => last.copied().unwrap_or(0).max(resume.done_us) - resume.dropped_us,
            }
        })
        .collect()
}

fn summary(report: &Value) {
    let ms = |what: &str, key: &str| match report[what][key].as_f64() {
        Some(ms) => format!("{ms:.1} ms"),
        None => "never".to_owned(),
    };
    eprintln!(
        "storm ({}): {} members, {} published, {} acked, {}/{} delivered ({:.4}%), \
         {} duplicates, {} reordered, {} resumes ({} recovered, {} never caught up), \
         reconnect to caught up p50 {}, p99 {}, max {} (to the resume's end: p50 {}, p99 {})",
        report["target"].as_str().unwrap_or_default(),
        report["members"],
        report["published"],
        report["acked"],
        report["delivered"],
        report["expected"],
        report["delivered_fraction"].as_f64().unwrap_or(0.0) * 100.0,
        report["duplicates"],
        report["reordered"],
        report["resumes"],
        report["recovered"],
        report["not_caught_up"],
        ms("catch_up_ms", "p50"),
        ms("catch_up_ms", "p99"),
        ms("catch_up_ms", "max"),
        ms("resume_ms", "p50"),
        ms("resume_ms", "p99"),
    );
    for (error, count) in report["failures"].as_object().into_iter().flatten() {
        eprintln!("storm: {count} attempts failed: {error}");
    }
}
