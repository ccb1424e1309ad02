//! parlor on a Redis Cluster of three masters with a replica each, started
//! here on free ports: rooms on every shard deliver across instances over
//! sharded Pub/Sub only, edits, reactions and read markers work there as on
//! one Redis, and a master killed or failed over on purpose loses nothing
//! that was acked, duplicates nothing and never gives one id to two
//! messages.

mod common;

use std::time::{Duration, Instant};

use common::{live_members, Client, Cluster, Server};
use serde_json::json;

fn instance(cluster: &Cluster) -> Server {
    Server::start(&[
        "--redis",
        &cluster.urls(),
        "--rate",
        "10000",
        "--burst",
        "10000",
    ])
}

#[async_std::test]
async fn rooms_on_every_shard_deliver_across_instances_over_sharded_pubsub() {
    let cluster = Cluster::start();
    let a = instance(&cluster);
    let b = instance(&cluster);
    assert!(
        a.log()
            .contains("cluster mode (asked the server), 3 shard(s)"),
        "{}",
        a.log()
    );
    let rooms = cluster.rooms_on_every_shard("room", 2);
    for room in &rooms {
        let mut members = live_members(&[&a, &b], room).await;
        for (n, text) in ["from a", "from b"].iter().enumerate() {
            let id = members[n].say(room, text).await;
            for member in &mut members {
                let frame = member.recv().await;
                assert_eq!(
                    (frame["id"].as_u64(), frame["text"].as_str()),
                    (Some(id), Some(*text)),
                    "room {room}: {frame}"
                );
            }
        }
        // The room's channel lives on the shard of its slot, with one
        // subscription per instance, and nowhere else; nothing uses the
        // classic Pub/Sub that every node would copy.
        let channel = format!("parlor:{{{room}}}:live");
        let owner = cluster.owner_of(&channel);
        for master in cluster.masters() {
            let out = cluster.nodes[master].cli(&["PUBSUB", "SHARDNUMSUB", &channel]);
            let count: u64 = out.lines().nth(1).unwrap().trim().parse().unwrap();
            let expected = if master == owner { 2 } else { 0 };
            assert_eq!(count, expected, "room {room} on node {master}: {out}");
            let classic = cluster.nodes[master].cli(&["PUBSUB", "NUMSUB", &channel]);
            assert_eq!(classic.lines().nth(1).unwrap().trim(), "0", "{classic}");
        }
    }
}

#[async_std::test]
async fn events_and_read_markers_on_every_shard() {
    let cluster = Cluster::start();
    let a = instance(&cluster);
    let b = instance(&cluster);
    for room in cluster.rooms_on_every_shard("events", 1) {
        let mut members = live_members(&[&a, &b], &room).await;
        let id = members[0].say(&room, "hello").await;
        let edit = json!({"type":"edit","room":room,"id":id,"text":"hello, fixed","ref":"e"});
        assert_eq!(members[0].request(edit).await["type"], "ack");
        let react = json!({"type":"react","room":room,"id":id,"emoji":"👍","ref":"r"});
        assert_eq!(members[1].request(react).await["type"], "ack");
        members[1]
            .send(json!({"type":"read","room":room,"id":id + 2}))
            .await;
        for member in &mut members {
            let mut kinds = Vec::new();
            for _ in 0..3 {
                kinds.push(member.recv().await["type"].as_str().unwrap().to_owned());
            }
            assert_eq!(kinds, ["message", "edit", "reaction"], "room {room}");
        }
        let (read, _) = members[0].recv_type("read").await;
        assert_eq!(read["id"], id + 2);
        let page = common::get(&b.addr, &format!("/rooms/{room}/messages?since=0")).json();
        let message = &page["messages"][0];
        assert_eq!(message["text"], "hello, fixed", "room {room}");
        assert_eq!(message["reactions"], json!({"👍":["member1"]}));
        let markers = common::get(&a.addr, &format!("/rooms/{room}/read")).json();
        assert_eq!(markers, json!({"users":{"member1": id + 2}}));
    }
}

#[async_std::test]
async fn a_killed_master_loses_nothing_acked() {
    let figures = survive(Fault::Kill).await;
    println!("SIGKILL of a master: {figures}");
}

#[async_std::test]
async fn a_graceful_failover_loses_nothing() {
    let figures = survive(Fault::Failover).await;
    println!("CLUSTER FAILOVER: {figures}");
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL of the master; its replica is promoted.
    Kill,
    /// `CLUSTER FAILOVER` on the replica: master and replica trade places.
    Failover,
}

/// Messages each room's publisher sends, one every `GAP`: about 8 s of
/// traffic, with the fault 2 s in.
const MESSAGES: u64 = 160;
const GAP: Duration = Duration::from_millis(50);

/// Publishes in rooms on every shard while `fault` hits the master of the
/// first room, then checks what every member got against what was acked.
/// Returns the figures as one line.
async fn survive(fault: Fault) -> String {
    let mut cluster = Cluster::start();
    let a = instance(&cluster);
    let b = instance(&cluster);
    let rooms = cluster.rooms_on_every_shard("r", 2);
    let victim = cluster.owner_of(&format!("parlor:{{{}}}:live", rooms[0]));

    let mut readers = Vec::new();
    for room in &rooms {
        for member in live_members(&[&a, &b], room).await {
            readers.push(async_std::task::spawn(read_all(member, room.clone())));
        }
    }
    let mut publishers = Vec::new();
    for (n, room) in rooms.iter().enumerate() {
        let url = [&a, &b][n % 2].ws_url("?user=publisher");
        publishers.push(async_std::task::spawn(publish(url, room.clone())));
    }

    async_std::task::sleep(Duration::from_secs(2)).await;
    let struck = Instant::now();
    match fault {
        Fault::Kill => cluster.nodes[victim].kill(),
        Fault::Failover => {
            let replica = cluster.replica_of(victim);
            assert_eq!(
                cluster.nodes[replica].cli(&["CLUSTER", "FAILOVER"]).trim(),
                "OK"
            );
        }
    }
    let down = match fault {
        Fault::Kill => vec![cluster.nodes[victim].port],
        Fault::Failover => vec![],
    };

    let mut acked = Vec::new();
    for publisher in publishers {
        acked.push(publisher.await);
    }
    cluster.wait_ok(&down);
    let mut received = Vec::new();
    for reader in readers {
        received.push(reader.await);
    }

    // Every member of a room got exactly what was acked there, in id order.
    let mut delivered = 0;
    let mut back_after = Duration::ZERO;
    for (room, frames) in &received {
        let n = rooms.iter().position(|r| r == room).unwrap();
        let expected: Vec<(u64, String)> = acked[n]
            .iter()
            .map(|(id, text)| (*id, text.clone()))
            .collect();
        let got: Vec<(u64, String)> = frames
            .iter()
            .map(|(id, text, _)| (*id, text.clone()))
            .collect();
        assert_eq!(
            got, expected,
            "room {room}: a member's messages differ from what was acked"
        );
        delivered += got.len();
        // The member's longest silence after the fault: how long its room
        // went without deliveries while the cluster failed over (messages
        // are published every 50 ms).
        let mut previous = struck;
        for (_, _, at) in frames.iter().filter(|(_, _, at)| *at > struck) {
            back_after = back_after.max(*at - previous);
            previous = *at;
        }
    }
    let acked_total: usize = acked.iter().map(Vec::len).sum();
    // After the failover every room still delivers.
    for room in &rooms {
        let mut members = live_members(&[&a, &b], room).await;
        let id = members[0].say(room, "after").await;
        for member in &mut members {
            assert_eq!(member.recv().await["id"].as_u64(), Some(id), "room {room}");
        }
    }
    format!(
        "the longest pause in any room: {:.2} s; {} rooms on 3 shards, 2 members each: acked {acked_total}, delivered {delivered} of {} expected, lost 0, duplicated 0",
        back_after.as_secs_f64(),
        rooms.len(),
        acked_total * 2
    )
}

/// Sends `MESSAGES` messages to `room`, each with a ref, and like any client
/// sends one again with the same ref after `unavailable`. Returns (id, text)
/// of each, in order.
async fn publish(url: String, room: String) -> Vec<(u64, String)> {
    let (mut client, _) = Client::welcomed(&url).await;
    let mut acked = Vec::new();
    for i in 1..=MESSAGES {
        let text = format!("m{i}");
        let reference = format!("{room}-{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .request(json!({"type":"send","room":room,"text":text,"ref":reference}))
                .await;
            if answer["type"] == "ack" {
                acked.push((answer["id"].as_u64().unwrap(), text.clone()));
                break;
            }
            assert_eq!(answer["code"], "unavailable", "{answer}");
            assert!(Instant::now() < deadline, "room {room}: {text} never acked");
            async_std::task::sleep(Duration::from_millis(100)).await;
        }
        async_std::task::sleep(GAP).await;
    }
    acked
}

/// Reads a member's messages until the last one is in. A `joined` here
/// would mean a new epoch: the room's history would have been lost.
async fn read_all(mut member: Client, room: String) -> (String, Vec<(u64, String, Instant)>) {
    let last = format!("m{MESSAGES}");
    let mut frames = Vec::new();
    loop {
        let frame = member.recv().await;
        assert_eq!(frame["type"], "message", "room {room}: {frame}");
        let text = frame["text"].as_str().unwrap().to_owned();
        frames.push((frame["id"].as_u64().unwrap(), text.clone(), Instant::now()));
        if text == last {
            return (room, frames);
        }
    }
}
