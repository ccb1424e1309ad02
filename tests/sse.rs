//! Server-sent events, `GET /rooms/{room}/events`, over the real wire: the
//! stream's shape (retry, joined, the replay with `id:` lines, replayed,
//! live events, signals without ids), resuming with `Last-Event-ID`, errors
//! before the stream starts, `: ping` after 15 s of quiet, the connection
//! limit, a slow reader cut off (a `close` event says why) and resuming
//! without loss, a drain that ends the stream, and events across instances.

mod common;

use std::time::{Duration, Instant};

use async_std::task::block_on;
use common::event_stream::{Event, Stream};
use common::{get, on_redis, post_json, Client, Redis, Server, WAIT};
use serde_json::{json, Value};

fn post(server: &Server, room: &str, text: &str) -> u64 {
    let response = post_json(
        &server.addr,
        &format!("/rooms/{room}/messages"),
        &json!({"user":"bot","text":text}),
    );
    assert_eq!(response.status, 201, "{}", response.body);
    response.json()["id"].as_u64().unwrap()
}

#[test]
fn a_stream_replays_then_goes_live_and_resumes_with_last_event_id() {
    let server = Server::start(&[]);
    post(&server, "s", "one");
    post(&server, "s", "two");
    let mut stream = Stream::open(&server.addr, "/rooms/s/events?since=0", "");
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        stream.next().unwrap().retry,
        Some(1000),
        "the stream starts with retry: 1000"
    );
    let events = stream.until("replayed");
    let joined = &events[0];
    assert_eq!(
        (joined.event.as_str(), joined.id.as_ref()),
        ("joined", None),
        "{joined:?}"
    );
    let epoch = joined.data["epoch"].as_str().unwrap().to_owned();
    let ids: Vec<_> = events[1..3].iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, [format!("{epoch}:1"), format!("{epoch}:2")]);
    assert_eq!(
        events[1].data,
        get(&server.addr, "/rooms/s/messages?since=0").json()["messages"][0],
        "the very frame a member gets"
    );
    assert_eq!(events[3].id, None, "replayed moves no resume point");
    assert_eq!(events[3].data["count"], 2);
    // Live: a message with its id; a typing signal without.
    let _typist = block_on(async {
        let (mut typist, _) = Client::welcomed(&server.ws_url("?user=tia")).await;
        typist
            .join(json!({"type":"join","room":"s","history":0}))
            .await;
        typist.send(json!({"type":"typing","room":"s"})).await;
        typist
    });
    // The typing signal and a message posted after it take different
    // paths to the room: the message is posted once the signal is in.
    let typing = stream.until("typing").pop().unwrap();
    assert_eq!(typing.id, None);
    post(&server, "s", "three");
    let live: Vec<Event> = stream
        .until("message")
        .into_iter()
        .filter(|e| e.event != "member")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, Some(format!("{epoch}:3")));
    drop(stream);
    // Last-Event-ID wins over the query: what came after it, once.
    post(&server, "s", "four");
    let mut resumed = Stream::open(
        &server.addr,
        "/rooms/s/events?history=0",
        &format!("Last-Event-ID: {epoch}:2\r\n"),
    );
    let events = resumed.until("replayed");
    let texts: Vec<_> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["three", "four"]);
    assert_eq!(events.last().unwrap().data["truncated"], false);
    // An epoch that is not the room's: the room's history, truncated.
    let mut lost = Stream::open(
        &server.addr,
        "/rooms/s/events",
        "Last-Event-ID: gone1234:9\r\n",
    );
    let events = lost.until("replayed");
    assert_eq!(events.last().unwrap().data["truncated"], true);
}

#[test]
fn errors_before_the_stream_are_plain_http_errors() {
    const SECRET: &str = "correct horse battery staple, twice over";
    let server = Server::start(&["--secret", SECRET]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args([
            "token", "--secret", SECRET, "--sub", "sam", "--rooms", "mine",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    for (path, headers, status, code) in [
        (
            "/rooms/mine/events".to_owned(),
            String::new(),
            401,
            "unauthorized",
        ),
        (
            format!("/rooms/theirs/events?token={token}"),
            String::new(),
            403,
            "forbidden",
        ),
        (
            format!("/rooms/mine/events?token={token}&since=x"),
            String::new(),
            400,
            "bad_request",
        ),
        (
            format!("/rooms/mine/events?token={token}"),
            "Last-Event-ID: 12\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (
            "/rooms/mine/events".to_owned(),
            format!("Authorization: Bearer {token}\r\nLast-Event-ID: x:y\r\n"),
            400,
            "bad_request",
        ),
    ] {
        let stream = Stream::open(&server.addr, &path, &headers);
        assert_eq!(stream.status, status, "{path}");
        let body: Value = serde_json::from_str(&stream.text()).unwrap();
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    let post = common::http(&server.addr, "POST", "/rooms/mine/events", None, b"");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    let mut stream = Stream::open(
        &server.addr,
        "/rooms/mine/events",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(stream.status, 200);
    assert_eq!(stream.until("joined").last().unwrap().data["room"], "mine");
    stream.until("member");
    let presence = common::http_raw(
        &server.addr,
        format!("GET /rooms/mine/presence HTTP/1.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        presence.json()["users"],
        json!(["sam"]),
        "a stream is a member under its token's name"
    );
    // Without the store, a stream cannot start: 503.
    let mut redis = Redis::start();
    let on_redis = on_redis(&redis, &["--redis-timeout-ms", "300"]);
    redis.kill();
    let deadline = Instant::now() + WAIT;
    while get(&on_redis.addr, "/readyz").status != 503 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = Stream::open(&on_redis.addr, "/rooms/r/events", "");
    assert_eq!(refused.status, 503);
}

#[test]
fn a_quiet_stream_gets_a_ping_comment() {
    let server = Server::start(&[]);
    let mut stream = Stream::open(&server.addr, "/rooms/quiet/events", "");
    stream
        .reader
        .get_ref()
        .set_read_timeout(Some(WAIT * 2))
        .unwrap();
    stream.until("member"); // its own arrival, the last line before the quiet
    let started = Instant::now();
    let ping = stream.next().unwrap();
    assert_eq!(ping.comment.as_deref(), Some("ping"), "{ping:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "after 15 s of quiet, not {:?}",
        started.elapsed()
    );
}

#[test]
fn streams_count_in_the_connection_limit() {
    let server = Server::start(&["--max-connections", "1"]);
    let mut first = Stream::open(&server.addr, "/rooms/l/events", "");
    first.until("joined");
    let second = Stream::open(&server.addr, "/rooms/l/events", "");
    assert_eq!(second.status, 503);
}

#[test]
fn a_slow_stream_is_cut_off_and_resumes_without_loss() {
    const COUNT: u64 = 3000;
    let server = Server::start(&[
        "--outbox",
        "64",
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--replay-cap",
        "5000",
    ]);
    let mut stream = Stream::open(&server.addr, "/rooms/slow/events?history=0", "");
    let epoch = stream.until("joined").pop().unwrap().data["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.until("replayed");
    // The stream is not read while 12 MB of messages are sent: more than
    // the socket buffers hold, so its outbox fills.
    let text = "x".repeat(4000);
    block_on(async {
        let (mut writer, _) = Client::welcomed(&server.ws_url("?user=w")).await;
        for i in 0..COUNT {
            writer
                .send(json!({"type":"send","room":"slow","text":text,"ref":format!("f{i}")}))
                .await;
        }
        for _ in 0..COUNT {
            writer.recv_type("ack").await;
        }
    });
    let mut last = 0;
    let mut close = None;
    while let Some(event) = stream.next() {
        assert_eq!(close, None, "nothing follows the close event");
        match event.event.as_str() {
            "message" => {
                let id = event.data["id"].as_u64().unwrap();
                assert_eq!(id, last + 1, "what arrived is contiguous");
                last = id;
            }
            "close" => close = Some(event.data),
            _ => {}
        }
    }
    let close = close.expect("the stream says why it ends");
    assert_eq!(close["code"], 1013, "{close}");
    assert!(last < COUNT, "the stream was cut off (it got {last})");
    let mut resumed = Stream::open(
        &server.addr,
        "/rooms/slow/events",
        &format!("Last-Event-ID: {epoch}:{last}\r\n"),
    );
    let mut next = last;
    while next < COUNT {
        let event = resumed.next().expect("the resumed stream goes on");
        if event.event == "message" {
            assert_eq!(event.data["id"].as_u64().unwrap(), next + 1);
            next += 1;
        }
    }
}

#[test]
fn a_drain_ends_the_stream_after_what_was_in_flight() {
    let mut server = Server::start(&[]);
    let mut stream = Stream::open(&server.addr, "/rooms/d/events", "");
    stream.until("replayed");
    post(&server, "d", "last words");
    assert_eq!(
        stream.until("message").last().unwrap().data["text"],
        "last words"
    );
    server.signal("TERM");
    let close = stream.until("close").pop().unwrap();
    assert_eq!(close.data["code"], 1001, "{close:?}");
    assert!(
        stream.next().is_none(),
        "the stream ends after its close event"
    );
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn a_stream_on_one_instance_sees_what_another_stores() {
    let redis = Redis::start();
    let a = on_redis(&redis, &[]);
    let b = on_redis(&redis, &[]);
    let mut stream = Stream::open(&b.addr, "/rooms/x/events?history=0", "");
    stream.until("replayed");
    let id = post(&a, "x", "across");
    let event = stream.until("message").pop().unwrap();
    assert_eq!(
        (event.data["id"].as_u64(), event.data["text"].as_str()),
        (Some(id), Some("across"))
    );
}
