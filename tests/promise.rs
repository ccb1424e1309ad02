//! The ways the promise (every member sees every event of its room once, in
//! one order) was broken from outside, each tried again over the real wire:
//! pipelined sends, a Redis back from an older snapshot, a slow joiner during
//! a burst, a re-join that fails, subscriptions of joins that fail, held-back
//! deliveries that overflow an outbox, and an instance name that corrupts
//! frames.

mod common;

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use common::{get, live_members, on_redis, Client, Redis, Server, WAIT};
use futures_util::StreamExt;
use serde_json::{json, Value};

const FAST: [&str; 4] = ["--rate", "1000000", "--burst", "1000000"];

/// Sends `count` messages from one connection without waiting for any ack,
/// then reads the acks; returns the ids in the order the messages were sent.
async fn pipeline(url: &str, room: &str, who: usize, count: usize) -> Vec<u64> {
    let (client, _) = Client::welcomed(url).await;
    let mut ws = client.into_inner();
    for n in 0..count {
        let frame = json!({"type":"send","room":room,"text":format!("{who}:{n}"),"ref":format!("{who}-{n}")});
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let mut ids = vec![0; count];
    let mut acked = 0;
    while acked < count {
        let message = async_std::future::timeout(WAIT, ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = message else {
            panic!("connection {who} ended before its acks: {message:?}");
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "ack" {
            let n: usize = frame["ref"]
                .as_str()
                .unwrap()
                .split('-')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n, acked, "acks come in the order of the sends");
            ids[n] = frame["id"].as_u64().unwrap();
            acked += 1;
        }
    }
    ids
}

/// Eight connections, each sending 3,000 messages without waiting, spread
/// over `urls`: every connection's messages are stored in the order it sent
/// them, and a member sees each connection's texts in that order.
async fn pipelined_sends_keep_their_order(urls: &[String]) {
    const CONNECTIONS: usize = 8;
    const EACH: usize = 3000;
    let (mut member, _) = Client::welcomed(&urls[0].replace("user=w", "user=m")).await;
    member
        .join(json!({"type":"join","room":"pipe","history":0}))
        .await;
    let reader = async_std::task::spawn(async move {
        let mut next = [0usize; CONNECTIONS];
        for _ in 0..CONNECTIONS * EACH {
            let (frame, _) = member.recv_type("message").await;
            let (who, n) = frame["text"].as_str().unwrap().split_once(':').unwrap();
            let (who, n): (usize, usize) = (who.parse().unwrap(), n.parse().unwrap());
            assert_eq!(
                n, next[who],
                "connection {who}'s messages arrive in the order sent"
            );
            next[who] += 1;
        }
    });
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|who| {
            let url = urls[who % urls.len()].clone();
            async_std::task::spawn(async move { pipeline(&url, "pipe", who, EACH).await })
        })
        .collect();
    for (who, sender) in senders.into_iter().enumerate() {
        let ids = sender.await;
        let inversions = ids.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(
            inversions, 0,
            "connection {who}'s sends were stored out of order"
        );
    }
    reader.await;
}

#[async_std::test]
async fn pipelined_sends_are_stored_in_the_order_sent_in_memory() {
    let server = Server::start(&FAST);
    pipelined_sends_keep_their_order(&[server.ws_url("?user=w")]).await;
}

#[async_std::test]
async fn pipelined_sends_are_stored_in_the_order_sent_on_redis() {
    let redis = Redis::start();
    let a = on_redis(&redis, &FAST);
    let b = on_redis(&redis, &FAST);
    pipelined_sends_keep_their_order(&[a.ws_url("?user=w"), b.ws_url("?user=w")]).await;
}

fn post(server: &Server, room: &str, text: &str) -> Value {
    let body = json!({"user":"writer","text":text});
    let response = common::post_json(&server.addr, &format!("/rooms/{room}/messages"), &body);
    assert_eq!(response.status, 201, "{}", response.body);
    response.json()
}

#[async_std::test]
async fn a_redis_back_from_an_older_snapshot_starts_a_new_epoch() {
    let mut redis = Redis::start();
    let a = on_redis(&redis, &["--redis-timeout-ms", "500"]);
    // B never saw the room: it cannot know that ids are given again.
    let b = on_redis(&redis, &["--redis-timeout-ms", "500"]);
    let mut member = live_members(&[&a], "snap").await.remove(0);
    for i in 1..=5 {
        post(&a, "snap", &format!("saved {i}"));
    }
    redis.cli(&["SAVE"]);
    let mut epoch = String::new();
    for i in 6..=10 {
        epoch = post(&a, "snap", &format!("lost {i}"))["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let got = common::messages(&mut member, "snap", 10).await;
    assert_eq!(common::ids(&got), (1..=10).collect::<Vec<_>>());
    redis.kill();
    redis.restart();
    let deadline = Instant::now() + WAIT;
    let mut posted = Vec::new();
    while posted.len() < 3 {
        let response = common::post_json(
            &b.addr,
            "/rooms/snap/messages",
            &json!({"user":"writer","text":format!("new {}", posted.len() + 1)}),
        );
        match response.status {
            201 => posted.push(response.json()),
            503 => async_std::task::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other}: {}", response.body),
        }
        assert!(Instant::now() < deadline, "Redis did not come back");
    }
    // The member is told that the room's history began again, and then
    // gets the new messages under the new epoch.
    let (joined, _) = member.recv_type("joined").await;
    assert_ne!(
        joined["epoch"], epoch,
        "a new epoch: ids 6 to 10 meant other messages"
    );
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let (frame, _) = member.recv_type("message").await;
        let text = frame["text"].as_str().unwrap().to_owned();
        assert!(
            !text.starts_with("lost"),
            "a lost message came back: {frame}"
        );
        if text.starts_with("new") {
            texts.push(text);
        }
    }
    assert_eq!(texts, ["new 1", "new 2", "new 3"]);
    // A client resuming where it stopped learns that it has a gap.
    let (mut resumed, _) = Client::welcomed(&a.ws_url("?user=late")).await;
    let (joined, _, replayed) = resumed
        .join(json!({"type":"join","room":"snap","since":10,"epoch":epoch}))
        .await;
    assert_ne!(joined["epoch"], epoch);
    assert_eq!(replayed["truncated"], true, "{replayed}");
}

/// Sends `count` of the largest messages there are (4,096 control
/// characters, 24 KB of JSON each) from one connection without waiting, and
/// waits for their acks.
async fn flood(url: &str, room: &str, tag: &str, count: usize) {
    let (client, _) = Client::welcomed(url).await;
    let mut ws = client.into_inner();
    let text = "\u{1}".repeat(4096);
    for n in 0..count {
        let frame = json!({"type":"send","room":room,"text":text,"ref":format!("{tag}{n}")});
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let mut acked = 0;
    while acked < count {
        let Ok(Some(Ok(Message::Text(text)))) = async_std::future::timeout(WAIT, ws.next()).await
        else {
            panic!("the flood's connection ended");
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_ne!(frame["type"], "error", "{frame}");
        acked += usize::from(frame["type"] == "ack");
    }
}

#[async_std::test]
async fn a_slow_joiner_never_goes_live_behind_the_head() {
    let mut args = vec!["--outbox", "64"];
    args.extend_from_slice(&FAST);
    let server = Server::start(&args);
    flood(&server.ws_url("?user=w"), "burst", "before", 1000).await;
    // The joiner asks for everything after 0, and does not read while its
    // replay (24 MB) waits on the socket and 1,500 more are sent; then it
    // reads, and nothing more is sent.
    let (joiner, _) = Client::welcomed(&server.ws_url("?user=slow")).await;
    let mut ws = joiner.into_inner();
    let join = json!({"type":"join","room":"burst","since":0});
    ws.send(Message::text(join.to_string())).await.unwrap();
    async_std::task::sleep(Duration::from_millis(300)).await;
    flood(&server.ws_url("?user=w"), "burst", "during", 1500).await;
    let mut ids = Vec::new();
    let mut replayed = Vec::new();
    while ids.last() != Some(&2500) || replayed.is_empty() {
        let message = async_std::future::timeout(WAIT, ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = message else {
            panic!(
                "the joiner's connection ended after {:?}: {message:?}",
                ids.last()
            );
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        match frame["type"].as_str() {
            Some("message") => ids.push(frame["id"].as_u64().unwrap()),
            Some("replayed") => replayed.push(frame),
            _ => {}
        }
    }
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["truncated"], false, "{replayed:?}");
    assert!(
        ids == (1..=2500).collect::<Vec<_>>(),
        "a gap or a duplicate before the head"
    );
}

#[async_std::test]
async fn a_failed_rejoin_leaves_the_membership_as_it_was() {
    let redis = Redis::start();
    let server = on_redis(&redis, &["--redis-timeout-ms", "500"]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    alice
        .join(json!({"type":"join","room":"stay","history":0}))
        .await;
    redis.signal("STOP");
    let answer = alice
        .request(json!({"type":"join","room":"stay","history":0,"ref":"again"}))
        .await;
    redis.signal("CONT");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    let mut bob = live_members(&[&server], "other").await.remove(0);
    let deadline = Instant::now() + WAIT;
    loop {
        let reference = format!("b{}", fastrand::u32(..));
        let sent = bob
            .request(json!({"type":"send","room":"stay","text":"still here?","ref":reference}))
            .await;
        if sent["type"] == "ack" {
            break;
        }
        assert!(Instant::now() < deadline, "Redis did not come back: {sent}");
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    let (message, _) = alice.recv_type("message").await;
    assert_eq!(message["text"], "still here?", "alice is still a member");
    alice.send(json!({"type":"leave","room":"stay"})).await;
    let left = alice.recv().await;
    assert_eq!(left["type"], "left", "{left}");
}

#[async_std::test]
async fn joins_that_fail_leave_no_subscription_behind() {
    let redis = Redis::start();
    let server = on_redis(&redis, &["--redis-timeout-ms", "500"]);
    let mut clients = Vec::new();
    for n in 0..10 {
        clients.push(
            Client::welcomed(&server.ws_url(&format!("?user=u{n}")))
                .await
                .0,
        );
    }
    redis.signal("STOP");
    let joins: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(n, mut client)| {
            async_std::task::spawn(async move {
                let join = json!({"type":"join","room":format!("paused{n}"),"history":0,"ref":"j"});
                let answer = client.request(join).await;
                assert_eq!(answer["code"], "unavailable", "{answer}");
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for join in joins {
        clients.push(join.await);
    }
    redis.signal("CONT");
    // Longer than the feed's reassertion of its subscriptions.
    async_std::task::sleep(Duration::from_secs(6)).await;
    let channels = redis.cli(&["PUBSUB", "SHARDCHANNELS"]);
    assert!(!channels.contains("paused"), "left behind: {channels}");
    drop(clients);
}

#[async_std::test]
async fn deliveries_held_back_for_a_joiner_fit_in_its_outbox() {
    let mut args = vec!["--outbox", "64"];
    args.extend_from_slice(&FAST);
    let server = Server::start(&args);
    flood(&server.ws_url("?user=w"), "held", "before", 300).await;
    // The joiner's replay (7 MB) waits on its socket with its outbox half
    // full, while 60 more arrive and are held back for it.
    let (joiner, _) = Client::welcomed(&server.ws_url("?user=slow")).await;
    let mut ws = joiner.into_inner();
    let join = json!({"type":"join","room":"held","history":300});
    ws.send(Message::text(join.to_string())).await.unwrap();
    async_std::task::sleep(Duration::from_millis(300)).await;
    flood(&server.ws_url("?user=w"), "held", "during", 60).await;
    let mut ids = Vec::new();
    while ids.len() < 360 {
        let message = async_std::future::timeout(WAIT, ws.next()).await;
        match message {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] == "message" {
                    ids.push(frame["id"].as_u64().unwrap());
                }
            }
            Ok(Some(Ok(Message::Close(close)))) => {
                panic!("the joiner was closed after {:?}: {close:?}", ids.last())
            }
            other => panic!("the joiner's connection ended: {other:?}"),
        }
    }
    assert!(ids == (1..=360).collect::<Vec<_>>(), "a gap or a duplicate");
}

#[test]
fn an_instance_name_that_could_break_frames_is_refused() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["--port", "0", "--instance", "eu west"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("parlor started with --instance \"eu west\"");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--instance") && stderr.contains("A-Z a-z 0-9 _ - ."),
        "{stderr}"
    );
    let server = Server::start(&["--instance", "eu-west.1"]);
    assert_eq!(get(&server.addr, "/healthz").status, 200);
}
