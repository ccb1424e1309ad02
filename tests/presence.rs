//! Presence and member frames over the real wire: who is in a room on any
//! instance, each user once; join and leave announced once per user, not per
//! connection; and the users of an instance killed without a goodbye leaving
//! when their entries expire.

mod common;

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use common::{get, on_redis, Client, Redis, Server};
use serde_json::{json, Value};

async fn member_event(client: &mut Client) -> (String, String) {
    let (frame, _) = client.recv_type("member").await;
    (
        frame["user"].as_str().unwrap().to_owned(),
        frame["event"].as_str().unwrap().to_owned(),
    )
}

/// Reads member frames until `user`'s `event`; returns the ones before it.
/// Announcements are best-effort and come from other tasks and instances,
/// so tests wait for the one they are about rather than assume an order.
async fn until_member(client: &mut Client, user: &str, event: &str) -> Vec<(String, String)> {
    let mut before = Vec::new();
    loop {
        let seen = member_event(client).await;
        if seen == (user.to_owned(), event.to_owned()) {
            return before;
        }
        before.push(seen);
    }
}

async fn presence(client: &mut Client, room: &str) -> Value {
    let answer = client
        .request(json!({"type":"presence","room":room,"ref":"p"}))
        .await;
    assert_eq!(answer["type"], "presence", "{answer}");
    answer["users"].clone()
}

async fn joined(server: &Server, user: &str, room: &str) -> Client {
    let (mut c, _) = Client::welcomed(&server.ws_url(&format!("?user={user}"))).await;
    c.watch_members();
    c.join(json!({"type":"join","room":room,"history":0})).await;
    c
}

#[async_std::test]
async fn presence_counts_users_not_connections() {
    let server = Server::start(&[]);
    let mut alice = joined(&server, "alice", "p").await;
    until_member(&mut alice, "alice", "join").await;
    let mut bob = joined(&server, "bob", "p").await;
    until_member(&mut alice, "bob", "join").await;
    // A second connection of alice's is not a second alice.
    let mut alice_again = joined(&server, "alice", "p").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
    assert_eq!(
        get(&server.addr, "/rooms/p/presence").json(),
        json!({"users":["alice","bob"]})
    );
    // One of alice's connections leaving is no leave…
    alice_again.send(json!({"type":"leave","room":"p"})).await;
    alice_again.recv_type("left").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
    // …the last one is.
    drop(alice);
    let before = until_member(&mut bob, "alice", "leave").await;
    assert!(!before.contains(&("alice".into(), "leave".into())));
    assert_eq!(presence(&mut bob, "p").await, json!(["bob"]));
    // Presence of a room without members, and a bad room name.
    assert_eq!(
        get(&server.addr, "/rooms/empty/presence").json(),
        json!({"users":[]})
    );
    assert_eq!(get(&server.addr, "/rooms/bad%20name/presence").status, 400);
}

#[async_std::test]
async fn presence_spans_instances() {
    let redis = Redis::start();
    let a = on_redis(&redis, &[]);
    let b = on_redis(&redis, &[]);
    let mut alice_a = joined(&a, "alice", "p").await;
    let mut bob_b = joined(&b, "bob", "p").await;
    until_member(&mut alice_a, "bob", "join").await;
    let alice_b = joined(&b, "alice", "p").await;
    assert_eq!(presence(&mut alice_a, "p").await, json!(["alice", "bob"]));
    assert_eq!(
        get(&b.addr, "/rooms/p/presence").json(),
        json!({"users":["alice","bob"]})
    );
    // Alice leaves instance B but is still on A: still present.
    drop(alice_b);
    assert_eq!(presence(&mut bob_b, "p").await, json!(["alice", "bob"]));
    // Her last connection going is one leave, seen on the other instance.
    drop(alice_a);
    until_member(&mut bob_b, "alice", "leave").await;
    assert_eq!(presence(&mut bob_b, "p").await, json!(["bob"]));
}

/// A user whose connection drops (no close frame) and who resumes on
/// another instance within the grace never left: the room sees no `leave`
/// and no `join` of hers. One who is not back leaves after the grace; one
/// who says goodbye with a close frame leaves at once, not after it.
#[async_std::test]
async fn a_dropped_user_back_within_the_grace_never_leaves() {
    let redis = Redis::start();
    // A grace far longer than any wait here: a leave seen before it ends
    // came from a goodbye.
    let long = ["--leave-grace-ms", "60000"];
    let a = on_redis(&redis, &long);
    let b = on_redis(&redis, &long);
    let mut bob = joined(&b, "bob", "p").await;
    let alice = joined(&a, "alice", "p").await;
    until_member(&mut bob, "alice", "join").await;
    // The network drops alice; she resumes on B.
    drop(alice);
    let _alice = joined(&b, "alice", "p").await;
    // Carol's join is told after anything A told of alice's drop (one task
    // of A's tells its changes in order, all on the room's one channel).
    let mut carol = joined(&a, "carol", "p").await;
    let before = until_member(&mut bob, "carol", "join").await;
    assert!(before.is_empty(), "alice flapped: {before:?}");
    assert_eq!(
        presence(&mut bob, "p").await,
        json!(["alice", "bob", "carol"])
    );
    // A close frame is a goodbye: carol's leave comes at once.
    carol.send_raw(Message::Close(None)).await;
    until_member(&mut bob, "carol", "leave").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
    // Dropped and not back: she leaves when the grace ends.
    let c = on_redis(&redis, &["--leave-grace-ms", "300"]);
    let dave = joined(&c, "dave", "p").await;
    until_member(&mut bob, "dave", "join").await;
    drop(dave);
    until_member(&mut bob, "dave", "leave").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
}

#[async_std::test]
async fn users_of_a_killed_instance_leave_when_their_entries_expire() {
    let redis = Redis::start();
    let mut a = on_redis(&redis, &["--presence-ttl-ms", "3000"]);
    let b = on_redis(&redis, &["--presence-ttl-ms", "3000"]);
    let mut alice = joined(&a, "alice", "p").await;
    let mut bob = joined(&b, "bob", "p").await;
    // Arrivals are recorded by a task of each instance: once each user has
    // heard its own, both are in.
    until_member(&mut alice, "alice", "join").await;
    until_member(&mut bob, "bob", "join").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    // No goodbye came from A; its entries expire and B's sweep says so.
    until_member(&mut bob, "alice", "leave").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["bob"]));
    // Bob, still connected, stays present past the expiry: heartbeats work.
    async_std::task::sleep(Duration::from_millis(3500)).await;
    assert_eq!(presence(&mut bob, "p").await, json!(["bob"]));
}

#[async_std::test]
async fn users_of_a_draining_instance_leave_at_once() {
    let redis = Redis::start();
    // The default expiry is 30 s, longer than any wait here: the leave
    // must come from the drain, not from expiry.
    let mut a = on_redis(&redis, &[]);
    let b = on_redis(&redis, &[]);
    let mut alice = joined(&a, "alice", "p").await;
    let mut bob = joined(&b, "bob", "p").await;
    // Arrivals are recorded by a task of each instance: once each user has
    // heard its own, both are in.
    until_member(&mut alice, "alice", "join").await;
    until_member(&mut bob, "bob", "join").await;
    assert_eq!(presence(&mut bob, "p").await, json!(["alice", "bob"]));
    a.signal("TERM");
    until_member(&mut bob, "alice", "leave").await;
    assert_eq!(a.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert_eq!(presence(&mut bob, "p").await, json!(["bob"]));
}

/// Two connections loop join and leave as fast as they can for two
/// seconds. Their moves are budgeted (`--max-rooms 5`: a burst of 20, then
/// 2 a second, each refused `rate_limited` beyond), presence changes
/// coalesce per user, so the room's members get a bounded number of
/// `member` frames, and a user who arrives after the churn is present at
/// once rather than behind a queue of thousands.
#[async_std::test]
async fn join_and_leave_churn_costs_members_little_and_delays_nobody() {
    use futures_util::StreamExt;
    let redis = Redis::start();
    let server = Server::start(&["--redis", &redis.url(), "--max-rooms", "5"]);
    let mut watcher = joined(&server, "watcher", "lobby").await;
    until_member(&mut watcher, "watcher", "join").await;
    let started = std::time::Instant::now();
    let mut churners = Vec::new();
    for name in ["churn-a", "churn-b"] {
        let client = Client::connect(&server.ws_url(&format!("?user={name}"))).await;
        let (mut sink, mut stream) = client.into_inner().split();
        // Until the server closes: it has handled every frame by then.
        let reader = async_std::task::spawn(async move {
            let (mut limited, mut taken) = (0, 0);
            while let Some(Ok(frame)) = stream.next().await {
                let frame: Value =
                    serde_json::from_str(frame.to_text().unwrap_or("")).unwrap_or_default();
                limited += (frame["code"] == "rate_limited") as usize;
                taken += (frame["type"] == "joined" || frame["type"] == "left") as usize;
            }
            (limited, taken)
        });
        let writer = async_std::task::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(2);
            let mut moves = 0;
            while std::time::Instant::now() < until {
                for kind in ["join", "leave"] {
                    let frame = json!({"type":kind,"room":"lobby"}).to_string();
                    sink.send(frame.into()).await.unwrap();
                    moves += 1;
                }
            }
            sink.close(None).await.unwrap();
            moves
        });
        churners.push((writer, reader));
    }
    let (mut moves, mut limited, mut accepted) = (0, 0, 0);
    for (writer, reader) in churners {
        moves += writer.await;
        let (refused, taken) = reader.await;
        limited += refused;
        accepted += taken;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(moves > 1000, "the churners did churn: {moves} moves");
    assert!(limited > 100, "only {limited} of {moves} moves refused");
    // 2 churners × (a burst of 2 × --max-rooms + 10, then 2 a second).
    let budget = 2.0 * (20.0 + 2.0 * seconds.ceil());
    assert!(
        accepted as f64 <= budget,
        "{accepted} of {moves} moves taken in {seconds:.1} s"
    );
    // Every member frame the churn caused, until the room is quiet: one
    // per accepted move at most (fewer where changes coalesced).
    let mut frames = 0;
    while async_std::future::timeout(Duration::from_secs(1), watcher.recv())
        .await
        .is_ok()
    {
        frames += 1;
    }
    assert!(
        frames <= accepted,
        "{frames} member frames for {accepted} moves"
    );
    eprintln!("{moves} moves in {seconds:.1} s: {accepted} taken, {limited} refused, {frames} member frames");
    let _late = joined(&server, "late", "lobby").await;
    let asked = std::time::Instant::now();
    let deadline = asked + Duration::from_secs(5);
    while !presence(&mut watcher, "lobby")
        .await
        .as_array()
        .unwrap()
        .contains(&json!("late"))
    {
        assert!(std::time::Instant::now() < deadline, "late never present");
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis's own time per `presence.lua` call (INFO commandstats) while users
/// join and leave `room`, each change waited for as `watcher` sees it.
async fn presence_call_usec(server: &Server, redis: &Redis, room: &str) -> f64 {
    let mut watcher = joined(server, "watcher", room).await;
    until_member(&mut watcher, "watcher", "join").await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for i in 0..30 {
        let user = format!("visitor-{i}");
        let mut visitor = joined(server, &user, room).await;
        until_member(&mut watcher, &user, "join").await;
        visitor.send(json!({"type":"leave","room":room})).await;
        until_member(&mut watcher, &user, "leave").await;
    }
    let stats = redis.cli(&["INFO", "commandstats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no EVALSHA in {stats}"));
    line.split(',')
        .find_map(|field| field.strip_prefix("usec_per_call="))
        .unwrap()
        .parse()
        .unwrap()
}

/// A presence change costs Redis no more in a room of 20,000 users than in
/// one of 20: both measured in the same run, the crowded room filled with
/// the entries of another instance as `presence.lua` lays them out.
#[async_std::test]
async fn a_presence_change_costs_no_more_in_a_crowded_room() {
    let redis = Redis::start();
    let server = on_redis(&redis, &[]);
    let fill = "for i = 1, tonumber(ARGV[1]) do \
        redis.call('ZADD', KEYS[1], ARGV[2], 'resident-' .. i .. '\\n' .. 'elsewhere') \
        redis.call('HSET', KEYS[2], 'resident-' .. i, 1) end";
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    for (room, residents) in [("crowded", "20000"), ("small", "20")] {
        let (set, counts) = (
            format!("parlor:{{{room}}}:presence"),
            format!("parlor:{{{room}}}:present"),
        );
        redis.cli(&["EVAL", fill, "2", &set, &counts, residents, &far]);
    }
    let crowded = presence_call_usec(&server, &redis, "crowded").await;
    let small = presence_call_usec(&server, &redis, "small").await;
    eprintln!(
        "Redis per presence call: {crowded:.1} µs among 20,000 users, {small:.1} µs among 20"
    );
    assert!(
        crowded < 5.0 * small,
        "{crowded:.1} µs per call among 20,000 users against {small:.1} µs among 20"
    );
}
