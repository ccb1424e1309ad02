//! No sticky sessions: Debian's nginx, with the repository's own
//! `deploy/nginx.conf`, in front of two instances over one Redis, round-robin.
//! Clients through nginx land on both instances across reconnects; one
//! instance restarts midway; a writer that retries with its refs and a reader
//! that resumes with `since` and `epoch` agree on every message, once, in
//! order. Event streams through nginx arrive unbuffered and resume with
//! `Last-Event-ID` on the other instance.
//!
//! Needs Debian's `nginx` (`make test` installs it where it is missing); the
//! test fails, loudly, without it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use common::event_stream::Stream;
use common::{free_port, get, Client, Redis, Server, WAIT};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// An nginx process serving `deploy/nginx.conf` with the given instances'
/// ports, killed when dropped.
struct Nginx {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Nginx {
    fn start(upstreams: [u16; 2]) -> Nginx {
        let binary = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").output().is_ok())
            .expect("this test needs nginx (apt-get install nginx)");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("parlor-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
                .unwrap();
        let mut site = ours.clone();
        for (from, to) in [
            (
                "server 127.0.0.1:8081 ",
                format!("server 127.0.0.1:{} ", upstreams[0]),
            ),
            (
                "server 127.0.0.1:8082 ",
                format!("server 127.0.0.1:{} ", upstreams[1]),
            ),
            ("listen 8080;", format!("listen 127.0.0.1:{port};")),
            (
                "access_log /var/log/nginx/parlor.access.log ",
                format!("access_log {}/parlor.access.log ", dir.display()),
            ),
        ] {
            assert!(
                site.contains(from),
                "deploy/nginx.conf no longer has {from:?}"
            );
            site = site.replace(from, &to);
        }
        std::fs::write(dir.join("parlor.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log info;
             events {{ worker_connections 1024; }}
             http {{
               access_log {d}/access.log;
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
               include {d}/parlor.conf;
             }}"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(binary)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &format!("{d}/nginx.conf"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(&addr).is_err() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "nginx did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, addr, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis, instances `a` and `b` on fixed ports (so one can come back where
/// nginx looks for it), and nginx in front.
struct Deployment {
    _redis: Redis,
    url: String,
    ports: [u16; 2],
    a: Mutex<Option<Server>>,
    _b: Server,
    nginx: Nginx,
}

impl Deployment {
    fn start() -> Deployment {
        let redis = Redis::start();
        let url = redis.url();
        let ports = [free_port(), free_port()];
        let a = Server::start_on(ports[0], &["--redis", &url, "--instance", "a"]);
        let b = Server::start_on(ports[1], &["--redis", &url, "--instance", "b"]);
        let nginx = Nginx::start(ports);
        Deployment {
            _redis: redis,
            url,
            ports,
            a: Mutex::new(Some(a)),
            _b: b,
            nginx,
        }
    }

    /// Instance a drains and exits, then starts again on its port.
    fn restart_a(&self) {
        let mut a = self.a.lock().unwrap().take().unwrap();
        a.signal("TERM");
        assert!(a.wait_exit(WAIT).success());
        let again = Server::start_on(self.ports[0], &["--redis", &self.url, "--instance", "a"]);
        *self.a.lock().unwrap() = Some(again);
    }
}

/// Posts through nginx until it is stored: an instance that is draining or
/// gone answers 502 or 503, and the same ref makes the retry safe.
fn post_until_stored(addr: &str, room: &str, text: &str) -> u64 {
    common::post_until_acked(addr, room, text, text, WAIT)
        .unwrap_or_else(|| panic!("{text} was not stored within {WAIT:?}"))
}

/// What a reader through nginx saw: message ids in order, and the instance
/// of each connection.
#[derive(Default)]
struct Reading {
    ids: Vec<u64>,
    instances: Vec<String>,
}

/// Reads `room` through nginx until id `last`, on a new connection after
/// every `per_connection` messages (and whenever an instance closes it),
/// resuming each time with the last id and epoch it saw.
async fn read_through(addr: &str, room: &str, last: u64, per_connection: usize) -> Reading {
    let mut reading = Reading::default();
    let mut epoch: Option<String> = None;
    while reading.ids.last() != Some(&last) {
        let (client, welcome) = Client::welcomed(&format!("ws://{addr}/ws?user=reader")).await;
        reading
            .instances
            .push(welcome["instance"].as_str().unwrap().to_owned());
        let since = reading.ids.last().copied().unwrap_or(0);
        let mut ws = client.into_inner();
        let join = json!({"type":"join","room":room,"since":since,"epoch":epoch});
        ws.send(Message::text(join.to_string())).await.unwrap();
        let mut here = 0;
        while here < per_connection && reading.ids.last() != Some(&last) {
            let frame: Value = match async_std::future::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(text.as_str()).unwrap(),
                Ok(Some(Ok(Message::Close(close)))) => {
                    let code = close.map(|c| u16::from(c.code));
                    assert_eq!(code, Some(1001), "only a draining instance closes");
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!(
                    "reading through nginx: {other:?} after {:?} on {:?}",
                    reading.ids.last(),
                    reading.instances.last()
                ),
            };
            match frame["type"].as_str() {
                Some("joined") => {
                    let now = frame["epoch"].as_str().map(str::to_owned);
                    assert!(epoch.is_none() || epoch == now, "one epoch throughout");
                    epoch = now;
                }
                Some("replayed") => assert_eq!(frame["truncated"], false, "{frame}"),
                Some("message") => {
                    reading.ids.push(frame["id"].as_u64().unwrap());
                    here += 1;
                }
                _ => {}
            }
        }
    }
    reading
}

#[async_std::test]
async fn clients_through_nginx_land_on_both_instances_and_lose_nothing() {
    const COUNT: u64 = 300;
    let deployment = Arc::new(Deployment::start());
    let addr = deployment.nginx.addr.clone();
    let stored = Arc::new(AtomicU64::new(0));
    let writer = {
        let (addr, stored, deployment) = (addr.clone(), stored.clone(), deployment.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 1..=COUNT {
                ids.push(post_until_stored(&addr, "lb", &format!("w-{i}")));
                stored.store(i, Ordering::Release);
                if i == COUNT / 2 {
                    deployment.restart_a();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            ids
        })
    };
    let reading = read_through(&addr, "lb", COUNT, 25).await;
    let ids = writer.join().unwrap();
    assert_eq!(
        ids,
        (1..=COUNT).collect::<Vec<_>>(),
        "each send stored once, in order"
    );
    assert_eq!(
        reading.ids,
        (1..=COUNT).collect::<Vec<_>>(),
        "each message read once, in order"
    );
    let instances: BTreeSet<&str> = reading.instances.iter().map(String::as_str).collect();
    assert_eq!(
        instances,
        BTreeSet::from(["a", "b"]),
        "round-robin: {:?}",
        reading.instances
    );
    let history = get(&addr, &format!("/rooms/lb/messages?since=0&limit={COUNT}")).json();
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=COUNT).map(|i| format!("w-{i}")).collect();
    assert_eq!(texts, expected);
    // The access log has every request, and none of their queries (where
    // tokens would be).
    let logged = std::fs::read_to_string(deployment.nginx.dir.join("parlor.access.log")).unwrap();
    assert!(logged.lines().count() > COUNT as usize, "{logged}");
    assert!(logged.contains("GET /ws "), "{logged}");
    assert!(
        !logged.contains('?'),
        "a query in the access log:\n{logged}"
    );
    println!(
        "through nginx: {COUNT} stored and read once each over {} connections ({} on a, {} on b), instance a restarted at {}",
        reading.instances.len(),
        reading.instances.iter().filter(|i| *i == "a").count(),
        reading.instances.iter().filter(|i| *i == "b").count(),
        COUNT / 2
    );
}

#[test]
fn event_streams_through_nginx_arrive_at_once_and_resume_on_the_other_instance() {
    let deployment = Deployment::start();
    let addr = &deployment.nginx.addr;
    // Round-robin: two streams in a row are on the two instances.
    let mut epoch = String::new();
    let mut streams: Vec<Stream> = (0..2)
        .map(|_| {
            let mut stream = Stream::open(addr, "/rooms/feed/events?history=0", "");
            assert_eq!(stream.status, 200);
            let joined = stream.until("joined").pop().unwrap();
            epoch = joined.data["epoch"].as_str().unwrap().to_owned();
            stream.until("replayed");
            stream
        })
        .collect();
    let one = post_until_stored(addr, "feed", "one");
    for stream in &mut streams {
        // Unbuffered: the event arrives while the stream is still open.
        let event = stream.until("message").pop().unwrap();
        assert_eq!(event.id, Some(format!("{epoch}:{one}")));
    }
    // Instance a drains: its stream ends with a close event; b's goes on.
    let mut a = deployment.a.lock().unwrap().take().unwrap();
    a.signal("TERM");
    assert!(a.wait_exit(WAIT).success());
    let two = post_until_stored(addr, "feed", "two");
    let mut ended = Vec::new();
    for (n, stream) in streams.iter_mut().enumerate() {
        let last = loop {
            let event = stream.next().expect("a close event before the end");
            if event.event == "close" || event.event == "message" {
                break event;
            }
        };
        match last.event.as_str() {
            "close" => {
                assert_eq!(last.data["code"], 1001);
                ended.push(n);
            }
            _ => assert_eq!(last.data["id"].as_u64(), Some(two)),
        }
    }
    assert_eq!(ended.len(), 1, "one stream was on each instance");
    // The stream that ended resumes through nginx, on b: what it missed, once.
    let three = post_until_stored(addr, "feed", "three");
    let header = format!("Last-Event-ID: {epoch}:{one}\r\n");
    let mut resumed = Stream::open(addr, "/rooms/feed/events", &header);
    assert_eq!(resumed.status, 200);
    let events = resumed.until("replayed");
    let ids: Vec<_> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.id.clone().unwrap())
        .collect();
    assert_eq!(ids, [format!("{epoch}:{two}"), format!("{epoch}:{three}")]);
    assert_eq!(events.last().unwrap().data["truncated"], false);
}
