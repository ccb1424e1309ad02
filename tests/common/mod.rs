//! Test harness: parlor processes on free ports, and WebSocket and raw HTTP
//! clients that talk to them over the real wire.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

pub mod event_stream;
pub mod proxy;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running parlor process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_on(0, args)
    }

    /// Starts on a given port (0: a free one), for restarting an instance
    /// where its clients will look for it.
    pub fn start_on(port: u16, args: &[&str]) -> Server {
        let port = port.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--log-format",
                "text",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("parlor binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "parlor did not start; its output:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server { child, addr, log }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, KILL, STOP, CONT).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "parlor did not exit within {within:?}; its output:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client over the real wire.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    /// Frames read while waiting for something else, returned by `recv` first.
    early: std::collections::VecDeque<Value>,
    /// `member` frames come whenever someone joins or leaves; tests that are
    /// not about presence do not see them.
    members: bool,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    pub async fn try_connect(url: &str) -> Result<Client, async_tungstenite::tungstenite::Error> {
        let host = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let tcp = TcpStream::connect(&host).await?;
        let (ws, _) = async_tungstenite::client_async(url, tcp).await?;
        Ok(Client {
            ws,
            early: Default::default(),
            members: false,
        })
    }

    /// Connects and reads the `welcome` frame.
    pub async fn welcomed(url: &str) -> (Client, Value) {
        let mut client = Client::connect(url).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// From now on, `recv` returns `member` frames too.
    pub fn watch_members(&mut self) {
        self.members = true;
    }

    /// The next frame from the server, as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = match self.early.pop_front() {
                Some(frame) => frame,
                None => match self.next_message().await {
                    Message::Text(text) => {
                        serde_json::from_str(text.as_str()).expect("server frames are JSON")
                    }
                    // The server's keepalive; tungstenite answers it.
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                },
            };
            if self.members || frame["type"] != "member" {
                return frame;
            }
        }
    }

    /// The next frame, or None once the connection has ended.
    pub async fn recv_raw(&mut self) -> Option<Value> {
        if let Some(frame) = self.early.pop_front() {
            return Some(frame);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).ok(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn next_message(&mut self) -> Message {
        match async_std::future::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(other) => panic!("connection ended: {other:?}"),
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// Reads frames until one of `kind` arrives; returns it and what came before.
    pub async fn recv_type(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return (frame, before);
            }
            before.push(frame);
        }
    }

    /// Joins and returns (joined, replayed events, replayed frame).
    pub async fn join(&mut self, join: Value) -> (Value, Vec<Value>, Value) {
        self.send(join).await;
        let (joined, before) = self.recv_type("joined").await;
        assert!(before.is_empty(), "frames before joined: {before:?}");
        let (replayed, messages) = self.recv_type("replayed").await;
        for m in &messages {
            let stored = ["message", "edit", "delete", "reaction"];
            assert!(stored.iter().any(|kind| m["type"] == *kind), "{m}");
        }
        (joined, messages, replayed)
    }

    /// Sends a message and waits for its ack; returns the id. Frames that
    /// arrive meanwhile are kept for `recv`.
    pub async fn say(&mut self, room: &str, text: &str) -> u64 {
        let reference = format!("say-{}", next_ref());
        let answer = self
            .request(json!({"type":"send","room":room,"text":text,"ref":reference}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
        answer["id"].as_u64().unwrap()
    }

    /// Sends a frame with a `ref` and returns the answer that echoes it.
    /// Frames that arrive meanwhile are kept for `recv`.
    pub async fn request(&mut self, frame: Value) -> Value {
        let reference = frame["ref"].clone();
        assert!(reference.is_string(), "request needs a ref: {frame}");
        self.send(frame).await;
        let mut others = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["ref"] == reference {
                let early = std::mem::take(&mut self.early);
                self.early.extend(others);
                self.early.extend(early);
                return frame;
            }
            others.push(frame);
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match async_std::future::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| u16::from(f.code)).unwrap_or(1005)
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("connection failed without a close frame: {e}"),
                Ok(None) => panic!("connection ended without a close frame"),
                Err(_) => panic!("not closed within {WAIT:?}"),
            }
        }
    }

    pub fn into_inner(self) -> WebSocketStream<TcpStream> {
        self.ws
    }
}

fn next_ref() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends raw bytes as an HTTP request and reads the response to the end.
pub fn http_raw(addr: &str, request: &[u8]) -> Response {
    let mut stream = StdTcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).expect("write request");
    // A server that refuses a request before reading all of it may reset the
    // connection after its answer; what arrived before the reset counts.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if response_complete(&raw) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read response: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Whether `raw` holds a whole response with a Content-Length, so that a
/// kept-alive connection need not be waited out.
fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// An HTTP request with `Connection: close`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(content_type) = content_type {
        request.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes)
}

pub fn get(addr: &str, path: &str) -> Response {
    http(addr, "GET", path, None, b"")
}

pub fn post_json(addr: &str, path: &str, body: &Value) -> Response {
    http(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

/// Posts `text` with `reference` until it is acked, as a careful client
/// does: `503 unavailable` (or a proxy's 502, 503 or 504) is retried with
/// the same ref every 100 ms, for up to `patience`; any other answer fails
/// the test. Returns the id, or None when no ack came in time.
pub fn post_until_acked(
    addr: &str,
    room: &str,
    text: &str,
    reference: &str,
    patience: Duration,
) -> Option<u64> {
    let body = json!({"user":"writer","text":text,"ref":reference});
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let response = post_json(addr, &format!("/rooms/{room}/messages"), &body);
        let from_parlor = response.header("content-type") == Some("application/json");
        match response.status {
            201 => return response.json()["id"].as_u64(),
            503 if from_parlor => assert_eq!(response.error_code(), "unavailable"),
            502..=504 if !from_parlor => {}
            other => panic!("{text}: unexpected answer {other}: {}", response.body),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The ids of a list of message frames.
pub fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

/// A `redis-server` of a test's own, on a free port, killed when dropped.
/// Tests never use a shared Redis: they flush, kill and restart this one.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (for example AOF settings).
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "parlor-test-redis-{}-{}",
            std::process::id(),
            next_ref()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..20 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the server process on `self.port`; false if it did not come up.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests need redis-server (apt-get install redis-server): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self
                .try_cli(&["PING"])
                .is_some_and(|out| out.trim() == "PONG")
            {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a redis-cli command and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Starts a replica of this server and waits until the master counts it
    /// online.
    pub fn replica(&self) -> Redis {
        let port = self.port.to_string();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &port]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cli(&["INFO", "replication"]).contains("state=online") {
            assert!(Instant::now() < deadline, "the replica did not come online");
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// Sends a signal by name (STOP, CONT, …) to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} redis-server failed");
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters with a replica each, on free ports,
/// made by `redis-cli --cluster create`; every node is killed when dropped.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// Starts six nodes and waits until every one says the cluster is ok.
    /// A node is declared failed after 1 s without an answer, so failovers
    /// in the tests take seconds, not the default 15.
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..6)
            .map(|_| {
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica of a master that dies seconds after the
                    // cluster was made may take over all the same.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("these tests need redis-cli (apt-get install redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ok(&[]);
        cluster
    }

    /// The seed URLs, comma-separated, for `--redis`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every node but `except` says `cluster_state:ok` and
    /// agrees on who owns every slot.
    pub fn wait_ok(&self, except: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live: Vec<&Redis> = self
                .nodes
                .iter()
                .filter(|n| !except.contains(&n.port))
                .collect();
            let ok = live.iter().all(|n| {
                n.try_cli(&["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let views: Vec<Vec<(u16, String)>> =
                live.iter().map(|n| self.masters_seen_by(n)).collect();
            let replicas_synced = live.iter().all(|n| {
                n.try_cli(&["INFO", "replication"]).is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            });
            if ok
                && replicas_synced
                && views.windows(2).all(|w| w[0] == w[1])
                && views[0].len() == 3
            {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (port, slots) of each master with slots that is not failing, as
    /// `node` sees them, sorted.
    fn masters_seen_by(&self, node: &Redis) -> Vec<(u16, String)> {
        let text = node.try_cli(&["CLUSTER", "NODES"]).unwrap_or_default();
        let mut masters: Vec<(u16, String)> = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") || fields.len() < 9 {
                    return None;
                }
                let port = fields[1]
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                Some((port, fields[8..].join(" ")))
            })
            .collect();
        masters.sort();
        masters
    }

    /// The node (index into `nodes`) of the master that owns `key`'s slot.
    pub fn owner_of(&self, key: &str) -> usize {
        let node = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let slot: u16 = node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        for (port, slots) in self.masters_seen_by(node) {
            let owns = slots.split(' ').any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                lo.parse::<u16>().is_ok_and(|lo| lo <= slot)
                    && hi.parse::<u16>().is_ok_and(|hi| slot <= hi)
            });
            if owns {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// The indexes of the nodes that are masters with slots now.
    pub fn masters(&self) -> Vec<usize> {
        let node = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        self.masters_seen_by(node)
            .into_iter()
            .map(|(port, _)| self.nodes.iter().position(|n| n.port == port).unwrap())
            .collect()
    }

    /// The index of a replica of master `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.nodes[master]
            .cli(&["CLUSTER", "MYID"])
            .trim()
            .to_owned();
        let text = self.nodes[master].cli(&["CLUSTER", "NODES"]);
        let port: u16 = text
            .lines()
            .find(|line| line.split_whitespace().nth(3) == Some(id.as_str()))
            .and_then(|line| {
                line.split_whitespace()
                    .nth(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("the master has a replica");
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// Room names whose slots fall on every master, `per_shard` of each.
    pub fn rooms_on_every_shard(&self, prefix: &str, per_shard: usize) -> Vec<String> {
        let mut by_master: std::collections::HashMap<usize, Vec<String>> = Default::default();
        for n in 0.. {
            let room = format!("{prefix}{n}");
            let owner = self.owner_of(&format!("parlor:{{{room}}}:live"));
            let rooms = by_master.entry(owner).or_default();
            if rooms.len() < per_shard {
                rooms.push(room);
            }
            if by_master.len() == 3 && by_master.values().all(|r| r.len() == per_shard) {
                break;
            }
        }
        let mut rooms: Vec<String> = by_master.into_values().flatten().collect();
        rooms.sort();
        rooms
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads frames until `count` messages of `room` have arrived; returns them.
pub async fn messages(client: &mut Client, room: &str, count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < count {
        let frame = client.recv().await;
        if frame["type"] == "message" && frame["room"] == room {
            out.push(frame);
        }
    }
    out
}

/// Follows a room the way a well-behaved client does: joins with `since`,
/// reads messages until id `last`, and when the server closes it as a slow
/// reader (1013), reconnects and rejoins with the last id it saw. Returns
/// every message id it saw, in order, and how many times it reconnected.
pub async fn follow(url: &str, room: &str, since: u64, last: u64) -> (Vec<u64>, usize) {
    let mut seen = Vec::new();
    let mut reconnects = 0;
    let mut since = since;
    loop {
        let (client, _) = Client::welcomed(url).await;
        let mut ws = client.into_inner();
        ws.send(Message::text(
            json!({"type":"join","room":room,"since":since}).to_string(),
        ))
        .await
        .expect("send join");
        loop {
            let message = match async_std::future::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(message))) => message,
                other => panic!("following {room}: connection ended: {other:?}"),
            };
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "message" && frame["room"] == room {
                        let id = frame["id"].as_u64().unwrap();
                        seen.push(id);
                        since = id;
                        if id >= last {
                            return (seen, reconnects);
                        }
                    }
                }
                Message::Close(Some(close)) if u16::from(close.code) == 1013 => break,
                Message::Close(other) => panic!("following {room}: closed with {other:?}"),
                _ => {}
            }
        }
        reconnects += 1;
    }
}

/// A parlor instance on `redis`, with extra flags.
pub fn on_redis(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// One member per server, joined to `room` with no history, ready for live
/// messages.
pub async fn live_members(servers: &[&Server], room: &str) -> Vec<Client> {
    let mut members = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        let (mut c, _) = Client::welcomed(&server.ws_url(&format!("?user=member{n}"))).await;
        c.join(json!({"type":"join","room":room,"history":0})).await;
        members.push(c);
    }
    members
}

/// Sends `total` messages `m1`, `m2`, … to `room` without waiting for each
/// ack, so many are in flight, pausing 10 ms every `every` messages to spread
/// them over time; then waits for every ack. The server must allow the rate.
pub fn spawn_publisher(
    url: String,
    room: &str,
    total: u64,
    every: u64,
) -> async_std::task::JoinHandle<()> {
    let room = room.to_owned();
    async_std::task::spawn(async move {
        let (mut publisher, _) = Client::welcomed(&url).await;
        for i in 1..=total {
            publisher
                .send(json!({"type":"send","room":room,"text":format!("m{i}")}))
                .await;
            if i % every == 0 {
                async_std::task::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut acks = 0;
        while acks < total {
            let frame = publisher.recv().await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "ack" {
                acks += 1;
            }
        }
    })
}

/// Joiners of `room` while a publisher runs: joiner `n` connects to
/// `url(n)` after `n` × `spacing` and joins from `n` × `step`; each must get
/// exactly the ids after that up to `last`, none missed, none twice.
pub fn spawn_joiners(
    url: impl Fn(u64) -> String,
    room: &str,
    count: u64,
    spacing: Duration,
    step: u64,
    last: u64,
) -> Vec<async_std::task::JoinHandle<()>> {
    (0..count)
        .map(|n| {
            let (url, room) = (url(n), room.to_owned());
            async_std::task::spawn(async move {
                async_std::task::sleep(spacing * n as u32).await;
                let since = n * step;
                let (got, _) = follow(&url, &room, since, last).await;
                assert!(
                    got == ((since + 1)..=last).collect::<Vec<_>>(),
                    "joiner {n}: {} ids, first {:?}",
                    got.len(),
                    got.first()
                );
            })
        })
        .collect()
}

/// The value of a metric without labels, from `/metrics`.
pub fn metric(addr: &str, name: &str) -> f64 {
    let body = get(addr, "/metrics").body;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}
