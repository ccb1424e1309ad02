//! The fault suite, `make soak`: instances of parlor over one Redis, each
//! through a fault-injecting proxy (tests/common/proxy.rs), with members on
//! every instance and publishers, for `--seconds` (600 by default), while
//! faults are injected at random: silent connections, resets, added
//! latency, Redis stopped (SIGSTOP) and killed and restarted from its
//! append-only file, instances killed or stopped with SIGTERM and started
//! again (their clients resume elsewhere), and reconnect storms.
//!
//! Members follow a room as a careful client does: on any disconnect they
//! join again on a random instance with the last id and epoch they saw.
//! Publishers post with a ref and retry it until acked. At the end the
//! checker proves from what the clients saw that every acked message
//! reached every member exactly once and in order, and that no room's
//! (epoch, id) reached two members with different texts, and prints a
//! table: faults by kind, messages acked, deliveries checked, lost,
//! duplicated, reordered, ids with two meanings, longest pause per fault
//! kind, and instance memory.
//!
//! With `--drops`, every member also drops its own connection every 5 to
//! 15 s without a close frame and resumes on a random instance, and the
//! report gives the time from reconnecting to `replayed` (p50, p99): the
//! reconnect-storm scenario (`--faults 0` for that alone).
//!
//! ```text
//! cargo build --release && cargo run --release --example soak -- --seconds 600
//! cargo run --release --example soak -- --seconds 60 --instances 2 --rooms 10 \
//!   --members 50 --rate 100 --faults 0 --drops
//! ```

#[path = "common/procfs.rs"]
mod procfs;
#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use procfs::status_kib;
use proxy::Proxy;
use serde_json::{json, Value};

/// parlor's fault suite: members and publishers through injected faults.
#[derive(FromArgs)]
struct Args {
    /// how long to run [default 600]
    #[argh(option, default = "600")]
    seconds: u64,
    /// parlor instances [default 3]
    #[argh(option, default = "3")]
    instances: usize,
    /// rooms [default 4]
    #[argh(option, default = "4")]
    rooms: usize,
    /// members per room on every instance [default 2]
    #[argh(option, default = "2")]
    members: usize,
    /// messages posted per second, in all [default 40]
    #[argh(option, default = "40")]
    rate: u64,
    /// seconds between two faults, at most (at least a third of it) [default 12]
    #[argh(option, default = "12")]
    every: u64,
    /// inject faults (1) or not (0) [default 1]
    #[argh(option, default = "1")]
    faults: u8,
    /// members drop their connection (no close frame) every 5 to 15 s
    #[argh(switch)]
    drops: bool,
}

const FAULTS: [&str; 8] = [
    "silent path",
    "connection reset",
    "added latency",
    "Redis SIGSTOP",
    "Redis SIGKILL",
    "instance SIGKILL",
    "instance SIGTERM",
    "reconnect storm",
];

fn main() {
    let args: Args = argh::from_env();
    let world = Arc::new(World::start(&args));
    let stop = Arc::new(AtomicBool::new(false));
    let members = start_members(&world, &args);
    let publishers = start_publishers(&world, &args, &stop);
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = world.rss();
    let faults = inject(&world, &args);
    stop.store(true, Ordering::Release);
    let acked: Vec<Acked> = publishers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let report = check(&members, &acked, &faults);
    report.print(&faults, rss_start, world.rss());
    world.stop();
    std::process::exit(if report.clean() { 0 } else { 1 });
}

/// Redis, the proxies and the instances, and how to reach them.
struct World {
    redis: Mutex<Child>,
    redis_port: u16,
    dir: std::path::PathBuf,
    proxies: Vec<Proxy>,
    instances: Vec<Mutex<Child>>,
    ports: Vec<u16>,
    /// Bumped by a reconnect storm: members drop their connections.
    storm: AtomicU64,
    /// Members drop their own connections every 5 to 15 s.
    drops: bool,
}

impl World {
    fn start(args: &Args) -> World {
        let dir = std::env::temp_dir().join(format!("parlor-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let redis_port = free_port();
        let redis = Mutex::new(start_redis(redis_port, &dir));
        let proxies: Vec<Proxy> = (0..args.instances)
            .map(|_| Proxy::start(&format!("127.0.0.1:{redis_port}")))
            .collect();
        let ports: Vec<u16> = (0..args.instances).map(|_| free_port()).collect();
        let instances = (0..args.instances)
            .map(|i| Mutex::new(start_parlor(ports[i], &proxies[i].url(), i)))
            .collect();
        let world = World {
            redis,
            redis_port,
            dir,
            proxies,
            instances,
            ports,
            storm: AtomicU64::new(0),
            drops: args.drops,
        };
        for port in &world.ports {
            wait_ready(*port);
        }
        world
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn random_addr(&self) -> String {
        self.addr(fastrand::usize(..self.ports.len()))
    }

    fn restart_instance(&self, i: usize, signal: &str) {
        let mut child = self.instances[i].lock().unwrap();
        kill(child.id(), signal);
        let _ = child.wait();
        *child = start_parlor(self.ports[i], &self.proxies[i].url(), i);
        drop(child);
        wait_ready(self.ports[i]);
    }

    fn redis_signal(&self, signal: &str) {
        kill(self.redis.lock().unwrap().id(), signal);
    }

    fn restart_redis(&self) {
        let mut child = self.redis.lock().unwrap();
        kill(child.id(), "KILL");
        let _ = child.wait();
        *child = start_redis(self.redis_port, &self.dir);
    }

    /// Resident memory of every instance, KiB.
    fn rss(&self) -> Vec<u64> {
        self.instances
            .iter()
            .map(|child| {
                let pid = child.lock().unwrap().id();
                status_kib(pid, "VmRSS:").unwrap_or(0)
            })
            .collect()
    }

    fn stop(&self) {
        for child in &self.instances {
            let _ = child.lock().unwrap().kill();
        }
        let _ = self.redis.lock().unwrap().kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// Redis with every write fsynced before it answers: an ack then means the
/// message survives a SIGKILL, and the checker can demand that nothing acked
/// is lost.
fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("make soak needs redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn start_parlor(port: u16, redis: &str, i: usize) -> Child {
    Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/target/release/parlor")
        .args([
            "--port",
            &port.to_string(),
            "--redis",
            redis,
            "--instance",
            &format!("soak-{i}"),
        ])
        .args([
            "--redis-timeout-ms",
            "1000",
            "--rate",
            "10000",
            "--burst",
            "10000",
        ])
        .args(["--log-level", "warn", "--drain-seconds", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("build parlor first: cargo build --release")
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&format!("127.0.0.1:{port}"), "GET", "/readyz", b"").0 != 200 {
        assert!(Instant::now() < deadline, "instance on {port} not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP request; (status, body), or status 0 when the connection failed.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut stream) = StdTcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .is_err()
    {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A message a publisher had acked.
struct Acked {
    room: String,
    id: u64,
    text: String,
}

fn start_publishers(
    world: &Arc<World>,
    args: &Args,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Acked>>> {
    let publishers = 4;
    let pause = Duration::from_micros(1_000_000 * publishers / args.rate.max(1));
    (0..publishers)
        .map(|p| {
            let (world, stop, rooms) = (world.clone(), stop.clone(), args.rooms);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let room = format!("soak-{}", fastrand::usize(..rooms));
                    let text = format!("p{p}-{n}");
                    if let Some(id) = post_until_acked(&world, &room, &text) {
                        acked.push(Acked { room, id, text });
                    }
                    std::thread::sleep(pause);
                }
                acked
            })
        })
        .collect()
}

/// Posts with a ref to random instances until one acks it (within a minute).
fn post_until_acked(world: &World, room: &str, text: &str) -> Option<u64> {
    let body = json!({"user":"publisher","text":text,"ref":text}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (status, answer) = http(
            &world.random_addr(),
            "POST",
            &format!("/rooms/{room}/messages"),
            body.as_bytes(),
        );
        if status == 201 {
            return serde_json::from_str::<Value>(&answer).ok()?["id"].as_u64();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("soak: {text} was never acked");
    None
}

/// What one member saw of its room.
#[derive(Default)]
struct Seen {
    /// (epoch, id, text) in the order delivered.
    events: Vec<(String, u64, String)>,
    /// Deliveries that did not continue the one before (same epoch, id + 1).
    out_of_order: u64,
    /// When each delivery came.
    times: Vec<Instant>,
    reconnects: u64,
    /// From connecting again to `replayed`, for each resume.
    catch_ups: Vec<Duration>,
}

struct Member {
    room: String,
    seen: Arc<Mutex<Seen>>,
}

fn start_members(world: &Arc<World>, args: &Args) -> Vec<Member> {
    let mut members = Vec::new();
    for r in 0..args.rooms {
        for m in 0..args.members * args.instances {
            let room = format!("soak-{r}");
            let seen = Arc::new(Mutex::new(Seen::default()));
            let (world, seen2, room2) = (world.clone(), seen.clone(), room.clone());
            let first = m % args.instances;
            async_std::task::spawn(follow(world, room2, first, seen2));
            members.push(Member { room, seen });
        }
    }
    members
}

/// Follows `room` for the whole run, joining again with the last id and
/// epoch after any disconnect, on a random instance.
async fn follow(world: Arc<World>, room: String, first: usize, seen: Arc<Mutex<Seen>>) {
    let mut addr = world.addr(first);
    let (mut epoch, mut last) = (String::new(), 0u64);
    loop {
        let storm = world.storm.load(Ordering::Acquire);
        let query = if epoch.is_empty() {
            format!("?user=member&room={room}&since=0")
        } else {
            format!("?user=member&room={room}&since={last}&epoch={epoch}")
        };
        let connecting = Instant::now();
        let resuming = !epoch.is_empty();
        let drop_at = connecting + Duration::from_millis(fastrand::u64(5000..15000));
        if let Ok(stream) = TcpStream::connect(&addr).await {
            if let Ok((mut ws, _)) =
                async_tungstenite::client_async(format!("ws://{addr}/ws{query}"), stream).await
            {
                loop {
                    if world.storm.load(Ordering::Acquire) != storm {
                        let _ = ws.close(None).await;
                        break;
                    }
                    if world.drops && Instant::now() >= drop_at {
                        break; // dropped with the socket: no close frame
                    }
                    let next =
                        async_std::future::timeout(Duration::from_millis(500), ws.next()).await;
                    let frame = match next {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(text)))) => {
                            serde_json::from_str::<Value>(&text).unwrap_or_default()
                        }
                        Ok(Some(Ok(_))) => continue,
                        Ok(_) => break,
                    };
                    if frame["type"] == "replayed" && resuming {
                        lock(&seen).catch_ups.push(connecting.elapsed());
                    }
                    record(&frame, &room, &mut epoch, &mut last, &seen);
                }
            }
        }
        lock(&seen).reconnects += 1;
        let pause = if world.drops { 0..50 } else { 50..500 };
        async_std::task::sleep(Duration::from_millis(fastrand::u64(pause))).await;
        addr = world.random_addr();
    }
}

fn record(frame: &Value, room: &str, epoch: &mut String, last: &mut u64, seen: &Mutex<Seen>) {
    match frame["type"].as_str() {
        Some("joined") if frame["room"] == room => {
            let now = frame["epoch"].as_str().unwrap_or_default();
            if !epoch.is_empty() && now != epoch.as_str() {
                eprintln!("soak: room {room} moved from epoch {epoch} to {now}");
                *last = 0;
            }
            *epoch = now.to_owned();
        }
        Some("message") if frame["room"] == room => {
            let id = frame["id"].as_u64().unwrap_or(0);
            let mut seen = lock(seen);
            if id != *last + 1 {
                seen.out_of_order += 1;
                eprintln!("soak: a member of {room} got id {id} after {last}");
            }
            *last = id;
            seen.events.push((
                epoch.clone(),
                id,
                frame["text"].as_str().unwrap_or_default().to_owned(),
            ));
            seen.times.push(Instant::now());
        }
        _ => {}
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fault that was injected: its kind and when it ran.
struct Fault {
    kind: usize,
    from: Instant,
    to: Instant,
}

fn inject(world: &World, args: &Args) -> Vec<Fault> {
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut faults = Vec::new();
    if args.faults == 0 {
        std::thread::sleep(Duration::from_secs(args.seconds));
        return faults;
    }
    while Instant::now() < end {
        let every = args.every.max(3);
        std::thread::sleep(Duration::from_secs(fastrand::u64(every / 3..=every)));
        let kind = fastrand::usize(..FAULTS.len());
        let from = Instant::now();
        let i = fastrand::usize(..args.instances);
        match kind {
            0 => {
                world.proxies[i].silence();
                std::thread::sleep(Duration::from_secs(fastrand::u64(2..=6)));
                world.proxies[i].speak();
            }
            1 => world.proxies[i].reset(),
            2 => {
                world.proxies[i].delay(Duration::from_millis(fastrand::u64(20..=60)));
                std::thread::sleep(Duration::from_secs(8));
                world.proxies[i].delay(Duration::ZERO);
            }
            3 => {
                world.redis_signal("STOP");
                std::thread::sleep(Duration::from_secs(fastrand::u64(1..=4)));
                world.redis_signal("CONT");
            }
            4 => world.restart_redis(),
            5 => world.restart_instance(i, "KILL"),
            6 => world.restart_instance(i, "TERM"),
            _ => {
                world.storm.fetch_add(1, Ordering::AcqRel);
            }
        }
        eprintln!(
            "soak: {} ({:.1} s)",
            FAULTS[kind],
            from.elapsed().as_secs_f64()
        );
        faults.push(Fault {
            kind,
            from,
            to: Instant::now(),
        });
    }
    faults
}

struct Report {
    acked: usize,
    checked: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// (room, epoch, id)s that members saw with two different texts.
    two_meanings: u64,
    members: usize,
    reconnects: u64,
    /// Longest time a member went without a delivery, per fault kind.
    pauses: BTreeMap<usize, Duration>,
    /// Every resume's time from connecting again to `replayed`, sorted.
    catch_ups: Vec<Duration>,
}

impl Report {
    fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.two_meanings == 0
            && self.acked > 0
    }

    fn print(&self, faults: &[Fault], rss_start: Vec<u64>, rss_end: Vec<u64>) {
        println!("| fault | injected | longest pause of a member (s) |");
        println!("| --- | ---: | ---: |");
        for (kind, name) in FAULTS.iter().enumerate() {
            let count = faults.iter().filter(|f| f.kind == kind).count();
            let pause = self.pauses.get(&kind).map_or(0.0, Duration::as_secs_f64);
            println!("| {name} | {count} | {pause:.1} |");
        }
        println!();
        println!("| messages acked | members | deliveries checked | lost | duplicated | reordered | ids with two meanings | reconnects |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.acked,
            self.members,
            self.checked,
            self.lost,
            self.duplicated,
            self.reordered,
            self.two_meanings,
            self.reconnects
        );
        if !self.catch_ups.is_empty() {
            let at = |q: f64| self.catch_ups[((self.catch_ups.len() - 1) as f64 * q) as usize];
            println!();
            println!(
                "{} resumes, reconnect to replayed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.catch_ups.len(),
                at(0.5).as_secs_f64() * 1e3,
                at(0.99).as_secs_f64() * 1e3,
                at(1.0).as_secs_f64() * 1e3
            );
        }
        println!();
        println!("instance RSS after warm-up, KiB: {rss_start:?}; at the end: {rss_end:?} (restarted instances start again)");
    }
}

/// Waits for the members to catch up, then compares what each saw with
/// what was acked in its room.
fn check(members: &[Member], acked: &[Acked], faults: &[Fault]) -> Report {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for a in acked {
        let id = last.entry(a.room.as_str()).or_default();
        *id = (*id).max(a.id);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for m in members {
        let want = last.get(m.room.as_str()).copied().unwrap_or(0);
        while lock(&m.seen).events.last().map_or(0, |e| e.1) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut report = Report {
        acked: acked.len(),
        checked: 0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        two_meanings: 0,
        members: members.len(),
        reconnects: 0,
        pauses: BTreeMap::new(),
        catch_ups: Vec::new(),
    };
    for m in members {
        let seen = lock(&m.seen);
        report.reordered += seen.out_of_order;
        report.reconnects += seen.reconnects;
        report.catch_ups.extend(&seen.catch_ups);
        let mut count: HashMap<&str, u64> = HashMap::new();
        for (_, _, text) in &seen.events {
            *count.entry(text.as_str()).or_default() += 1;
        }
        for a in acked.iter().filter(|a| a.room == m.room) {
            report.checked += 1;
            match count.get(a.text.as_str()).copied().unwrap_or(0) {
                0 => {
                    report.lost += 1;
                    eprintln!(
                        "soak: {} ({} in {}) never reached a member",
                        a.text, a.id, a.room
                    );
                }
                1 => {}
                n => report.duplicated += n - 1,
            }
        }
        for f in faults {
            // Gaps that end within the fault or the ten seconds after it.
            let (from, to) = (f.from, f.to + Duration::from_secs(10));
            let longest = seen
                .times
                .windows(2)
                .filter(|w| w[1] >= from && w[1] <= to)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            let pause = report.pauses.entry(f.kind).or_default();
            *pause = (*pause).max(longest);
        }
    }
    report.two_meanings = two_meanings(members);
    report.catch_ups.sort();
    report
}

/// How many (room, epoch, id)s reached members with different texts.
fn two_meanings(members: &[Member]) -> u64 {
    let mut meaning: HashMap<(String, String, u64), String> = HashMap::new();
    let mut conflicts = 0;
    for m in members {
        for (epoch, id, text) in &lock(&m.seen).events {
            let key = (m.room.clone(), epoch.clone(), *id);
            match meaning.get(&key) {
                Some(known) if known != text => {
                    conflicts += 1;
                    eprintln!(
                        "soak: {} id {id} (epoch {epoch}) is {known:?} and {text:?}",
                        m.room
                    );
                }
                Some(_) => {}
                None => {
                    meaning.insert(key, text.clone());
                }
            }
        }
    }
    conflicts
}
