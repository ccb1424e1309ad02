//! Connections that end badly and servers that stop: a slow reader is closed
//! with 1013 and loses nothing when it rejoins; clients that read nothing
//! (silent or still sending) are let go, sockets and all, while one that
//! reads slowly stays; SIGTERM and SIGINT close every WebSocket with 1001 and
//! exit 0; an instance runs the threads `--threads` gives it.

mod common;

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message;
use common::event_stream::Stream;
use common::{get, Client, Server};
use serde_json::json;

#[async_std::test]
async fn a_slow_reader_is_closed_with_1013_and_catches_up_with_since() {
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
    let (mut slow, _) = Client::welcomed(&server.ws_url("?user=slow")).await;
    slow.join(json!({"type":"join","room":"flood","history":0}))
        .await;
    let (mut fast, _) = Client::welcomed(&server.ws_url("?user=fast")).await;
    fast.join(json!({"type":"join","room":"flood","history":0}))
        .await;
    let (mut writer, _) = Client::welcomed(&server.ws_url("?user=writer")).await;

    // Large messages fill the slow reader's socket buffers, then its outbox.
    let text = "x".repeat(4000);
    const COUNT: u64 = 3000;
    let started = Instant::now();
    for i in 1..=COUNT {
        writer
            .send(json!({"type":"send","room":"flood","text":text}))
            .await;
        // The fast member keeps up all along.
        let frame = fast.recv().await;
        assert_eq!(frame["id"], i);
    }
    let flood_time = started.elapsed();

    // The slow reader now reads what it was sent, then finds the connection
    // closed with 1013.
    let mut last_seen = 0;
    let code = loop {
        match slow.next_message().await {
            async_tungstenite::tungstenite::Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] != "message" {
                    continue; // member frames of the others joining
                }
                let id = frame["id"].as_u64().unwrap();
                assert_eq!(id, last_seen + 1, "what did arrive is contiguous");
                last_seen = id;
            }
            async_tungstenite::tungstenite::Message::Close(frame) => {
                break frame.map(|f| u16::from(f.code))
            }
            _ => {}
        }
    };
    assert_eq!(
        code,
        Some(1013),
        "after {last_seen} messages (flood took {flood_time:?})"
    );
    assert!(
        last_seen < COUNT,
        "the slow reader was cut off before the end"
    );

    // Rejoining with since brings exactly the rest.
    let (mut again, _) = Client::welcomed(&server.ws_url("?user=slow")).await;
    again
        .send(json!({"type":"join","room":"flood","since":last_seen}))
        .await;
    let (_, replay) = again.recv_type("replayed").await;
    let ids: Vec<u64> = replay
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = ((last_seen + 1)..=COUNT).collect();
    assert!(
        ids == expected,
        "replayed {} ids from {:?} to {:?}",
        ids.len(),
        ids.first(),
        ids.last()
    );
    let metrics = get(&server.addr, "/metrics").body;
    assert!(
        metrics.contains("parlor_slow_reader_closes_total 1\n"),
        "{metrics}"
    );
    eprintln!(
        "FAULT slow reader: acked {COUNT}; closed with 1013 after {last_seen}, rejoin replayed {}; lost 0, duplicated 0",
        COUNT - last_seen
    );
}

async fn shutdown_on(signal: &str) {
    let mut server = Server::start(&["--drain-seconds", "5"]);
    let (mut a, _) = Client::welcomed(&server.ws_url("?user=a&room=r")).await;
    a.recv_type("replayed").await;
    let (mut b, _) = Client::welcomed(&server.ws_url("?user=b")).await;
    server.signal(signal);
    assert_eq!(a.closed().await, 1001);
    assert_eq!(b.closed().await, 1001);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("draining"), "{}", server.log());
}

#[async_std::test]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    shutdown_on("TERM").await;
}

#[async_std::test]
async fn sigint_does_the_same() {
    shutdown_on("INT").await;
}

#[async_std::test]
async fn an_unusable_port_is_one_clear_line_and_a_failure() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["--bind", "127.0.0.1", "--port", &port])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };
    // A bad flag value: exit code 2, as the README says, whoever parses it.
    let (code, _, stderr) = run(&["--history", "many"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--history") && stderr.contains("--help"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["--log-format", "xml"]);
    assert_eq!((code, stderr.lines().count()), (Some(2), 1), "{stderr}");
    let (code, _, stderr) = run(&["--redis", "foo://bar"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("write redis://host:port"), "{stderr}");
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), concat!("parlor ", env!("CARGO_PKG_VERSION")))
    );
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let usage: Vec<&str> = stdout.lines().take_while(|l| !l.is_empty()).collect();
    assert!(
        usage.len() > 1 && usage.iter().all(|l| l.len() <= 80),
        "{usage:?}"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[async_std::test]
async fn a_slow_reader_costs_bounded_memory() {
    let server = Server::start(&[
        "--outbox",
        "64",
        "--history",
        "100",
        "--rate",
        "100000",
        "--burst",
        "100000",
    ]);
    let (mut stalled, _) = Client::welcomed(&server.ws_url("?user=stalled")).await;
    stalled
        .join(json!({"type":"join","room":"big","history":0}))
        .await;
    let (mut writer, _) = Client::welcomed(&server.ws_url("?user=writer")).await;
    let text = "y".repeat(4000);
    // Warm up, so the baseline includes the server's steady buffers.
    for _ in 0..200 {
        writer.say("warm", &text).await;
    }
    let before = rss_kib(server.pid());
    // 40 MB of messages for a member that never reads.
    for _ in 0..10_000 {
        writer
            .send(json!({"type":"send","room":"big","text":text}))
            .await;
        let ack = writer.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let after = rss_kib(server.pid());
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("slow reader: parlor's memory grew by {growth_mib} MiB while 40 MB were sent to it");
    assert!(
        growth_mib < 24,
        "memory grew by {growth_mib} MiB for one stalled reader"
    );
    drop(stalled);
}

#[async_std::test]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let server = Server::start(&["--ping-interval-ms", "200"]);
    // This one keeps reading, so its client library answers the pings.
    let (mut alive, _) = Client::welcomed(&server.ws_url("?user=alive")).await;
    // This one never reads again: it looks like a peer that vanished.
    let (_gone, _) = Client::welcomed(&server.ws_url("?user=gone")).await;
    let deadline = Instant::now() + common::WAIT;
    loop {
        // Reading for a while answers the server's pings on the way.
        let _ = async_std::future::timeout(Duration::from_millis(300), alive.recv_raw()).await;
        if common::metric(&server.addr, "parlor_connections") == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent connection was not dropped"
        );
    }
    let answer = alive
        .request(json!({"type":"history","room":"r","ref":"still"}))
        .await;
    assert_eq!(
        answer["type"], "history",
        "the answering client is still connected"
    );
}

/// Sockets the process holds open (the listener among them).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Waits until the process holds `count` sockets.
fn wait_for_sockets(server: &Server, count: usize, what: &str) {
    let deadline = Instant::now() + common::WAIT;
    while sockets_of(server.pid()) != count {
        assert!(
            Instant::now() < deadline,
            "{what}: parlor still holds {} sockets, not {count}",
            sockets_of(server.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Posts `count` messages of `text` to `room` over HTTP.
fn fill(server: &Server, room: &str, count: usize, text: &str) {
    for _ in 0..count {
        let body = json!({"user":"bot","text":text});
        let response = common::post_json(&server.addr, &format!("/rooms/{room}/messages"), &body);
        assert_eq!(response.status, 201, "{}", response.body);
    }
}

#[async_std::test]
async fn clients_that_never_read_are_dropped_and_their_sockets_freed() {
    let server = Server::start(&["--max-connections", "3", "--ping-interval-ms", "1000"]);
    // What it holds with no connection: the listener, the signal pipe.
    let idle = sockets_of(server.pid());
    // Each message is 24 KB of JSON (U+0001 is escaped as \u0001).
    fill(&server, "big", 300, &"\u{1}".repeat(4000));
    wait_for_sockets(&server, idle, "the fill's connections closed");
    let mut stalled = Vec::new();
    for n in 0..3 {
        let (mut client, _) = Client::welcomed(&server.ws_url(&format!("?user=stalled{n}"))).await;
        // 7 MB of replay, and not a byte of it read.
        client
            .send(json!({"type":"join","room":"big","history":300}))
            .await;
        stalled.push(client.into_inner());
    }
    wait_for_sockets(&server, idle + 3, "the stalled clients connected");
    // They answer no ping and take no byte: gone, though their sockets are
    // open. The server lets go of every one of them.
    wait_for_sockets(&server, idle, "clients that read nothing");
    assert_eq!(common::metric(&server.addr, "parlor_connections"), 0.0);
    let (_, welcome) = Client::welcomed(&server.ws_url("?user=next")).await;
    assert_eq!(welcome["type"], "welcome", "the limit has room again");
    drop(stalled);
}

/// An event stream whose client stops reading, as a peer that vanished
/// does once the socket's buffers are full: the server lets go of its socket
/// within the patience, not when TCP gives up.
#[async_std::test]
async fn event_streams_that_never_read_are_dropped_and_their_sockets_freed() {
    let server = Server::start(&["--max-connections", "3", "--ping-interval-ms", "1000"]);
    let idle = sockets_of(server.pid());
    // Each message is 24 KB of JSON (U+0001 is escaped as \u0001).
    fill(&server, "big", 300, &"\u{1}".repeat(4000));
    wait_for_sockets(&server, idle, "the fill's connections closed");
    let stalled: Vec<_> = (0..3)
        .map(|_| {
            let stream = Stream::open(&server.addr, "/rooms/big/events?since=0", "");
            assert_eq!(stream.status, 200);
            stream
        })
        .collect();
    wait_for_sockets(&server, idle + 3, "the stalled streams connected");
    wait_for_sockets(&server, idle, "event streams that read nothing");
    assert_eq!(common::metric(&server.addr, "parlor_connections"), 0.0);
    let next = Stream::open(&server.addr, "/rooms/big/events", "");
    assert_eq!(next.status, 200, "the limit has room again");
    drop(stalled);
}

#[async_std::test]
async fn a_client_that_sends_but_never_reads_is_closed() {
    let server = Server::start(&["--outbox", "64", "--ping-interval-ms", "1000"]);
    // What it holds with no connection: the listener, the signal pipe.
    let idle = sockets_of(server.pid());
    fill(&server, "big", 10, &"x".repeat(4000));
    wait_for_sockets(&server, idle, "the fill's connections closed");
    let (client, _) = Client::welcomed(&server.ws_url("?user=asker")).await;
    let mut ws = client.into_inner();
    // 6,000 requests of 40 KB answers each, none of them read: the client
    // keeps talking, so it is never silent.
    let ask = json!({"type":"history","room":"big","limit":10}).to_string();
    for _ in 0..6000 {
        if ws
            .send(async_tungstenite::tungstenite::Message::text(ask.clone()))
            .await
            .is_err()
        {
            break;
        }
    }
    wait_for_sockets(
        &server,
        idle,
        "a client that reads nothing of what it asks for",
    );
    drop(ws);
}

#[async_std::test]
async fn a_slow_reader_that_reads_is_not_taken_for_gone() {
    let server = Server::start(&["--ping-interval-ms", "2000"]);
    // 24 MB, read at about 5 MB a second: the pings of the server must not
    // wait behind what is queued for it, nor its writes be taken for a
    // peer that is gone.
    fill(&server, "big", 1000, &"\u{1}".repeat(4000));
    let (mut client, _) = Client::welcomed(&server.ws_url("?user=slow")).await;
    client
        .send(json!({"type":"join","room":"big","history":1000}))
        .await;
    let mut ids = Vec::new();
    loop {
        let frame = match client.recv_raw().await {
            Some(frame) => frame,
            None => panic!("closed after {} messages: {}", ids.len(), server.log()),
        };
        match frame["type"].as_str() {
            Some("message") => ids.push(frame["id"].as_u64().unwrap()),
            Some("replayed") => break,
            _ => {}
        }
        async_std::task::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    let answer = client
        .request(json!({"type":"history","room":"big","limit":1,"ref":"after"}))
        .await;
    assert_eq!(
        answer["type"], "history",
        "still connected after the slow replay"
    );
}

#[async_std::test]
async fn history_answers_never_read_cost_bounded_memory() {
    let server = Server::start(&[]);
    // 1,000 messages of 24 KB of JSON each: a page of all of them would be
    // 24 MB.
    fill(&server, "big", 1000, &"\u{1}".repeat(4000));
    let (mut reader, _) = Client::welcomed(&server.ws_url("?user=reader")).await;
    let page = reader
        .request(json!({"type":"history","room":"big","limit":1000,"ref":"warm"}))
        .await;
    let before = rss_kib(server.pid());
    // 60 pages asked for and never read.
    let (asker, _) = Client::welcomed(&server.ws_url("?user=asker")).await;
    let mut ws = asker.into_inner();
    let ask = json!({"type":"history","room":"big","limit":1000}).to_string();
    for _ in 0..60 {
        ws.send(async_tungstenite::tungstenite::Message::text(ask.clone()))
            .await
            .unwrap();
    }
    // The answers it can hold are queued by then, and the rest wait.
    async_std::task::sleep(Duration::from_secs(2)).await;
    let growth_mib = rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!(
        "60 unread history pages of {} messages: parlor's memory grew by {growth_mib} MiB",
        page["messages"].as_array().unwrap().len()
    );
    assert!(growth_mib < 32, "memory grew by {growth_mib} MiB");
    drop(ws);
}

/// Many hostile clients at once, each asking for pages it never reads and
/// sending frames as large as allowed: the instance's memory stays under
/// README's formula, `C × (2 × O + F)` over the idle process, with C the
/// clients, O `--outbox-bytes` and F `--max-frame` (and 8 MiB for the
/// allocator's slack).
#[async_std::test]
async fn many_hostile_clients_stay_under_the_memory_formula() {
    const CLIENTS: u64 = 40;
    const OUTBOX: u64 = 256 * 1024;
    const FRAME: u64 = 64 * 1024;
    let server = Server::start(&["--outbox-bytes", &OUTBOX.to_string()]);
    fill(&server, "big", 300, &"\u{1}".repeat(4000));
    let before = rss_kib(server.pid());
    let mut sockets = Vec::new();
    for i in 0..CLIENTS {
        let (client, _) = Client::welcomed(&server.ws_url(&format!("?user=hostile-{i}"))).await;
        let mut ws = client.into_inner();
        let ask = json!({"type":"history","room":"big","limit":1000}).to_string();
        for _ in 0..40 {
            ws.send(async_tungstenite::tungstenite::Message::text(ask.clone()))
                .await
                .unwrap();
        }
        // A frame of the largest size, of a request that is refused.
        let padding = "x".repeat(FRAME as usize - 200);
        let huge = json!({"type":"history","room":"big","limit":1000,"pad":padding}).to_string();
        let _ = ws
            .send(async_tungstenite::tungstenite::Message::text(huge))
            .await;
        sockets.push(ws);
    }
    async_std::task::sleep(Duration::from_secs(2)).await;
    let grown = rss_kib(server.pid()).saturating_sub(before) * 1024;
    let formula = CLIENTS * (2 * OUTBOX + FRAME) + 8 * 1024 * 1024;
    eprintln!(
        "{CLIENTS} hostile clients: memory grew by {:.1} MiB; the formula allows {:.1} MiB",
        grown as f64 / 1048576.0,
        formula as f64 / 1048576.0
    );
    assert!(
        grown <= formula,
        "grew {grown} bytes, over the formula's {formula}"
    );
    drop(sockets);
}

#[async_std::test]
async fn pings_are_answered_amid_deliveries_and_a_close_with_its_code() {
    let server = Server::start(&["--rate", "100000", "--burst", "100000"]);
    let (mut member, _) = Client::welcomed(&server.ws_url("?user=member")).await;
    member.join(json!({"type":"join","room":"p"})).await;
    let (mut sender, _) = Client::welcomed(&server.ws_url("?user=sender")).await;
    let publishing = async_std::task::spawn(async move {
        for i in 0..300 {
            sender.say("p", &format!("m{i}")).await;
        }
    });
    // Each pong must come whole, between two frames, with its ping's data;
    // a reply written into a frame would break the stream for the client.
    for n in 0..5u8 {
        member.send_raw(Message::Ping(vec![n; 8].into())).await;
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
    let (mut ids, mut pongs) = (Vec::new(), Vec::new());
    while ids.len() < 300 || pongs.len() < 5 {
        match member.next_message().await {
            Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] == "message" {
                    ids.push(frame["id"].as_u64().unwrap());
                }
            }
            Message::Pong(data) => pongs.push(data.to_vec()),
            other => panic!("unexpected {other:?}"),
        }
    }
    publishing.await;
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());
    assert_eq!(pongs, (0..5u8).map(|n| vec![n; 8]).collect::<Vec<_>>());
    // A close is answered with the client's own code.
    member
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(member.closed().await, 4001);
}

/// The threads of process `pid` that run async-std's tasks.
fn runtime_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .starts_with("async-std")
        })
        .count()
}

/// The process's `THP_enabled` in /proc: 0 once it turned transparent huge
/// pages off.
fn huge_pages_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("THP_enabled:"));
    line.expect("the kernel shows THP_enabled in /proc/PID/status")
        .trim_start_matches("THP_enabled:")
        .trim()
        .to_owned()
}

#[async_std::test]
async fn an_instance_takes_no_transparent_huge_pages() {
    let server = Server::start(&[]);
    let (_client, _) = Client::welcomed(&server.ws_url("?user=t")).await;
    assert_eq!(huge_pages_enabled(server.pid()), "0");
}

#[async_std::test]
async fn an_instance_runs_the_threads_it_is_given() {
    for threads in [1, 3] {
        let given = threads.to_string();
        let server = Server::start(&["--threads", &given]);
        // The instance serves before it is counted.
        let (_client, _) = Client::welcomed(&server.ws_url("?user=t")).await;
        assert_eq!(
            runtime_threads(server.pid()),
            threads,
            "--threads {threads}"
        );
        assert!(
            server.log().contains(&format!("{threads} thread(s)")),
            "{}",
            server.log()
        );
    }
}
