//! Several instances over one Redis (started by the test): delivery across
//! instances in one order, replay on any instance, the join race across
//! instances, idempotent retry, trimming, a flushed Redis, and a killed
//! subscriber connection.

mod common;

use std::time::Duration;

use common::{
    get, ids, live_members, messages, metric, on_redis, post_json, spawn_joiners, spawn_publisher,
    Client, Redis, Server,
};
use serde_json::json;

fn instance(redis: &Redis, extra: &[&str]) -> Server {
    let mut args = vec!["--rate", "100000", "--burst", "100000"];
    args.extend_from_slice(extra);
    on_redis(redis, &args)
}

#[async_std::test]
async fn messages_reach_every_instance_in_one_order() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let mut readers = live_members(&[&a, &b, &a, &b], "town").await;
    const EACH: usize = 150;
    let mut writers = Vec::new();
    for (n, server) in [&a, &b, &b].into_iter().enumerate() {
        let url = server.ws_url(&format!("?user=writer{n}"));
        writers.push(async_std::task::spawn(async move {
            let (mut w, _) = Client::welcomed(&url).await;
            for i in 0..EACH {
                w.send(json!({"type":"send","room":"town","text":format!("w{n}-{i}")}))
                    .await;
            }
            let mut acks = 0;
            while acks < EACH {
                if w.recv().await["type"] == "ack" {
                    acks += 1;
                }
            }
        }));
    }
    for w in writers {
        w.await;
    }
    let mut orders: Vec<Vec<(u64, String)>> = Vec::new();
    for reader in &mut readers {
        let got = messages(reader, "town", 3 * EACH).await;
        assert_eq!(ids(&got), (1..=(3 * EACH) as u64).collect::<Vec<_>>());
        orders.push(
            got.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap(),
                        m["text"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        );
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every client sees the same order"
    );
    // Each writer's own messages keep their order.
    for n in 0..3 {
        let mine: Vec<&String> = orders[0]
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(&format!("w{n}-")))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("w{n}-{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
}

#[async_std::test]
async fn a_client_reconnecting_to_the_other_instance_replays_what_it_missed() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let (mut alice, _) = Client::welcomed(&a.ws_url("?user=alice")).await;
    let (joined, _, _) = alice.join(json!({"type":"join","room":"r"})).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        post_json(
            &a.addr,
            "/rooms/r/messages",
            &json!({"user":"bot","text":format!("before {i}")}),
        );
    }
    let seen = messages(&mut alice, "r", 5).await;
    let last = seen.last().unwrap()["id"].as_u64().unwrap();
    drop(alice);
    for i in 1..=7 {
        post_json(
            &b.addr,
            "/rooms/r/messages",
            &json!({"user":"bot","text":format!("missed {i}")}),
        );
    }
    let (mut alice, _) = Client::welcomed(&b.ws_url("?user=alice")).await;
    let (joined, replay, replayed) = alice
        .join(json!({"type":"join","room":"r","since":last,"epoch":epoch}))
        .await;
    assert_eq!(joined["epoch"], epoch.as_str());
    assert_eq!(ids(&replay), (6..=12).collect::<Vec<_>>());
    assert_eq!(replay[0]["text"], "missed 1");
    assert_eq!(
        (replayed["count"].as_u64(), replayed["truncated"].as_bool()),
        (Some(7), Some(false))
    );
    // And live continues on the new instance, from either instance.
    post_json(
        &a.addr,
        "/rooms/r/messages",
        &json!({"user":"bot","text":"live"}),
    );
    assert_eq!(alice.recv().await["id"], 13);
}

#[async_std::test]
async fn joins_on_one_instance_while_another_publishes_miss_nothing() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &["--outbox", "128", "--replay-cap", "5000"]);
    const TOTAL: u64 = 1200;
    let publisher = spawn_publisher(a.ws_url("?user=publisher"), "race", TOTAL, 10);
    let url = |n| b.ws_url(&format!("?user=j{n}"));
    let joiners = spawn_joiners(url, "race", 10, Duration::from_millis(25), 30, TOTAL);
    publisher.await;
    for j in joiners {
        j.await;
    }
}

#[async_std::test]
async fn a_retry_on_another_instance_is_stored_once() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let first = post_json(
        &a.addr,
        "/rooms/r/messages",
        &json!({"user":"bot","text":"once","ref":"k1"}),
    )
    .json();
    let retry = post_json(
        &b.addr,
        "/rooms/r/messages",
        &json!({"user":"bot","text":"once","ref":"k1"}),
    )
    .json();
    assert_eq!(first, retry);
    let (mut c, _) = Client::welcomed(&b.ws_url("?user=bot")).await;
    let ack = c
        .request(json!({"type":"send","room":"r","text":"once","ref":"k1"}))
        .await;
    assert_eq!(ack["id"], first["id"]);
    let stored = get(&a.addr, "/rooms/r/messages").json();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 1);
}

#[async_std::test]
async fn trimmed_history_is_reported_as_truncated() {
    let redis = Redis::start();
    let a = instance(&redis, &["--history", "5"]);
    for i in 1..=12 {
        post_json(
            &a.addr,
            "/rooms/r/messages",
            &json!({"user":"bot","text":format!("m{i}")}),
        );
    }
    let page = get(&a.addr, "/rooms/r/messages?since=0").json();
    assert_eq!(
        ids(page["messages"].as_array().unwrap()),
        vec![8, 9, 10, 11, 12]
    );
    assert_eq!(page["truncated"], true);
    let (mut c, _) = Client::welcomed(&a.ws_url("?user=u")).await;
    let (_, replay, replayed) = c.join(json!({"type":"join","room":"r","since":3})).await;
    assert_eq!(ids(&replay), vec![8, 9, 10, 11, 12]);
    assert_eq!(replayed["truncated"], true);
    let (_, _, replayed) = c.join(json!({"type":"join","room":"r","since":7})).await;
    assert_eq!(replayed["truncated"], false);
    assert_eq!(redis.cli(&["XLEN", "parlor:{r}:stream"]).trim(), "5");
}

#[async_std::test]
async fn a_flushed_redis_starts_a_new_epoch() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let (mut live, _) = Client::welcomed(&b.ws_url("?user=live")).await;
    let (joined, _, _) = live.join(json!({"type":"join","room":"r"})).await;
    let old_epoch = joined["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        post_json(
            &a.addr,
            "/rooms/r/messages",
            &json!({"user":"bot","text":format!("old {i}")}),
        );
    }
    messages(&mut live, "r", 3).await;
    redis.cli(&["FLUSHALL"]);
    let posted = post_json(
        &a.addr,
        "/rooms/r/messages",
        &json!({"user":"bot","text":"new 1"}),
    )
    .json();
    assert_eq!(posted["id"], 1);
    let new_epoch = posted["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    // The joined connection is told, then gets the new epoch from id 1.
    let (rejoined, _) = live.recv_type("joined").await;
    assert_eq!(rejoined["epoch"], new_epoch.as_str());
    let m = live.recv().await;
    assert_eq!(
        (m["id"].as_u64(), m["text"].as_str()),
        (Some(1), Some("new 1"))
    );
    // A client coming back with the old epoch is told it has a gap.
    let (mut back, _) = Client::welcomed(&a.ws_url("?user=back")).await;
    let (joined, replay, replayed) = back
        .join(json!({"type":"join","room":"r","since":3,"epoch":old_epoch}))
        .await;
    assert_eq!(joined["epoch"], new_epoch.as_str());
    assert_eq!(ids(&replay), vec![1]);
    assert_eq!(replayed["truncated"], true);
}

#[async_std::test]
async fn killing_the_subscriber_connections_loses_nothing() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let mut readers = live_members(&[&a, &b], "k").await;
    const TOTAL: u64 = 600;
    let url = a.ws_url("?user=w");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_done = done.clone();
    let writer = async_std::task::spawn(async move {
        let (mut w, _) = Client::welcomed(&url).await;
        for i in 1..=TOTAL {
            w.send(json!({"type":"send","room":"k","text":format!("m{i}")}))
                .await;
            if i % 20 == 0 {
                async_std::task::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut acks = 0;
        while acks < TOTAL {
            if w.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
        writer_done.store(true, std::sync::atomic::Ordering::Release);
    });
    // Kill the subscriber connections over and over until the last message is
    // stored, so some messages are published while no feed is connected and
    // no later message reveals the gap: only the resync finds them.
    while !done.load(std::sync::atomic::Ordering::Acquire) {
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        async_std::task::sleep(Duration::from_millis(15)).await;
    }
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    writer.await;
    for reader in &mut readers {
        let got = messages(reader, "k", TOTAL as usize).await;
        assert!(
            ids(&got) == (1..=TOTAL).collect::<Vec<_>>(),
            "a reader missed or repeated messages"
        );
    }
    eprintln!("FAULT subscriber connections killed every 15 ms: acked {TOTAL}, each of 2 members got {TOTAL} in order, lost 0, duplicated 0");
    // The instances noticed, and repaired the room from its stream.
    let repairs: u64 = [&a, &b]
        .iter()
        .map(|server| {
            let metrics = get(&server.addr, "/metrics").body;
            let line = metrics
                .lines()
                .find(|l| l.starts_with("parlor_gap_repairs_total "))
                .unwrap()
                .to_owned();
            line.split(' ').nth(1).unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert!(repairs > 0, "no repair was counted");
}

#[async_std::test]
async fn readiness_follows_redis_and_a_missing_redis_fails_at_start() {
    let mut redis = Redis::start();
    let a = instance(&redis, &[]);
    assert_eq!(get(&a.addr, "/readyz").status, 200);
    // A member, so that the live feed has a connection to lose.
    let _member = live_members(&[&a], "r").await;
    redis.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&a.addr, "/readyz").status != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed 200 with Redis down"
        );
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    let refused = post_json(
        &a.addr,
        "/rooms/r/messages",
        &json!({"user":"u","text":"t"}),
    );
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (503, "unavailable")
    );
    assert!(metric(&a.addr, "parlor_redis_errors_total") >= 1.0);
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get(&a.addr, "/readyz").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz did not recover"
        );
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&a.addr, "parlor_redis_feed_reconnects_total") >= 1.0);

    let unused = common::free_port();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args([
            "--port",
            "0",
            "--redis",
            &format!("redis://127.0.0.1:{unused}"),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

#[async_std::test]
async fn typing_crosses_instances() {
    let redis = Redis::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    let mut members = live_members(&[&a, &b], "t").await;
    members[1].send(json!({"type":"typing","room":"t"})).await;
    assert_eq!(
        members[0].recv().await,
        json!({"type":"typing","room":"t","user":"member1"})
    );
    let answer = members[1]
        .request(json!({"type":"history","room":"t","ref":"h"}))
        .await;
    assert_eq!(answer["messages"], json!([]), "the typist got nothing back");
}

#[async_std::test]
async fn redis_settings_that_cannot_work_are_one_clear_line() {
    // A cluster node that serves no slots, a standalone Redis told to be a
    // cluster, and seed nodes with --redis-mode standalone.
    let lonely_node = Redis::start_with(&["--cluster-enabled", "yes"]);
    let standalone = Redis::start();
    for (args, says) in [
        (vec!["--redis".to_owned(), lonely_node.url()], "Cluster"),
        (
            vec![
                "--redis".to_owned(),
                standalone.url(),
                "--redis-mode".into(),
                "cluster".into(),
            ],
            "Cluster",
        ),
        (
            vec![
                "--redis".to_owned(),
                format!("{},{}", standalone.url(), lonely_node.url()),
                "--redis-mode".into(),
                "standalone".into(),
            ],
            "standalone",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(["--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // --redis-mode standalone on a standalone Redis runs.
    let server = on_redis(&standalone, &["--redis-mode", "standalone"]);
    assert_eq!(get(&server.addr, "/readyz").status, 200);
}

#[async_std::test]
async fn a_user_password_and_database_in_the_url_hold_on_every_connection() {
    // Only alice may do more than PING; the test's own redis-cli logs in as
    // her too.
    let redis = Redis::start_with(&[
        "--user", "default", "on", "nopass", "-@all", "+ping", "--user", "alice", "on", ">s3cret",
        "~*", "&*", "+@all",
    ]);
    let alice = |args: &[&str]| {
        let mut all = vec!["--user", "alice", "--pass", "s3cret", "--no-auth-warning"];
        all.extend_from_slice(args);
        redis.cli(&all)
    };
    let url = format!("redis://alice:s3cret@127.0.0.1:{}/3", redis.port);
    let flags = ["--redis", url.as_str(), "--rate", "1000", "--burst", "1000"];
    let (a, b) = (Server::start(&flags), Server::start(&flags));
    let mut readers = live_members(&[&a, &b], "vault").await;
    let (mut writer, _) = Client::welcomed(&a.ws_url("?user=w")).await;
    writer.say("vault", "one").await;
    // Every connection parlor made is dropped: the feed's, the appends'
    // and the commands'. Each new one must log in and select again.
    for kind in ["pubsub", "normal"] {
        alice(&["CLIENT", "KILL", "TYPE", kind]);
    }
    // The first send after the kill may find its connection gone and be
    // answered `unavailable`; a client repeats it with its ref.
    let send = json!({"type":"send","room":"vault","text":"two","ref":"two"});
    let mut answer = writer.request(send.clone()).await;
    for _ in 0..3 {
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        async_std::task::sleep(Duration::from_millis(200)).await;
        answer = writer.request(send.clone()).await;
    }
    assert_eq!(answer["type"], "ack", "{answer}");
    for reader in &mut readers {
        let got = messages(reader, "vault", 2).await;
        assert_eq!(ids(&got), vec![1, 2]);
    }
    assert_ne!(alice(&["-n", "3", "DBSIZE"]).trim(), "0", "nothing in db 3");
    assert_eq!(alice(&["-n", "0", "DBSIZE"]).trim(), "0", "keys in db 0");
}
