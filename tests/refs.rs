//! What a room keeps of its refs in Redis, seen from the wire and from
//! Redis itself: one hash per room (not a key per ref) that, once the
//! room's next sends have forgotten the old ones, holds the refs of the
//! last `--ref-memory`, however many were sent before, while a retry within
//! that window still gets the first answer; and the room's ref data goes
//! with the room's other keys after `--retention`.

mod common;

use std::time::Duration;

use common::{on_redis, Client, Redis};
use serde_json::{json, Value};

/// Sends `count` messages with refs `{tag}{n}` to `room` in one go, then
/// waits for every ack; returns the acked ids in order.
async fn send_all(client: &mut Client, room: &str, tag: &str, count: usize) -> Vec<u64> {
    for n in 0..count {
        let frame = json!({"type":"send","room":room,"text":format!("{tag} {n}"),"ref":format!("{tag}{n}")});
        client.send(frame).await;
    }
    let mut ids = Vec::new();
    while ids.len() < count {
        let ack = client.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ids.push(ack["id"].as_u64().unwrap());
    }
    ids
}

fn count_of(redis: &Redis, command: &str, key: &str) -> i64 {
    redis.cli(&[command, key]).trim().parse().unwrap()
}

/// How many refs the room's hash (apart from its `~` field, which says
/// the hash was there before) and its order hold.
fn refs_held(redis: &Redis, room: &str) -> (i64, i64) {
    let refs = format!("parlor:{{{room}}}:refs");
    let marker: i64 = redis.cli(&["HEXISTS", &refs, "~"]).trim().parse().unwrap();
    (
        count_of(redis, "HLEN", &refs) - marker,
        count_of(redis, "XLEN", &format!("parlor:{{{room}}}:ref-order")),
    )
}

async fn resend(client: &mut Client, room: &str, reference: &str) -> Value {
    client
        .request(json!({"type":"send","room":room,"text":"again","ref":reference}))
        .await
}

#[async_std::test]
async fn a_room_holds_the_refs_of_its_window_and_a_retry_in_it_gets_the_first_id() {
    let redis = Redis::start();
    let server = on_redis(
        &redis,
        &[
            "--ref-memory",
            "3s",
            "--rate",
            "100000",
            "--burst",
            "100000",
        ],
    );
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let window = Duration::from_secs(3);

    let busy = send_all(&mut alice, "r", "busy", 1500).await;
    assert_eq!(busy, (1..=1500).collect::<Vec<u64>>());
    assert_eq!(refs_held(&redis, "r"), (1500, 1500));
    // No key per ref: the room's six keys at most.
    let keys: i64 = redis.cli(&["DBSIZE"]).trim().parse().unwrap();
    assert!(keys <= 6, "{keys} keys");

    // Once the window has passed, the next sends leave only their own refs.
    async_std::task::sleep(window + Duration::from_millis(500)).await;
    let calm = send_all(&mut alice, "r", "calm", 50).await;
    assert_eq!(refs_held(&redis, "r"), (50, 50));
    // A retry within the window is acked with the first id, stored once.
    let again = resend(&mut alice, "r", "calm7").await;
    assert_eq!(
        again,
        json!({"type":"ack","ref":"calm7","room":"r","id":calm[7]})
    );
    // One from before the window is a new message.
    let late = resend(&mut alice, "r", "busy3").await;
    assert_eq!(late["id"], 1551, "{late}");

    // And so again once this window has passed, for fewer refs.
    async_std::task::sleep(window + Duration::from_millis(500)).await;
    let last = send_all(&mut alice, "r", "last", 20).await;
    assert_eq!(refs_held(&redis, "r"), (20, 20));
    assert_eq!(resend(&mut alice, "r", "last19").await["id"], last[19]);
    let history = alice
        .request(json!({"type":"history","room":"r","limit":3,"ref":"h"}))
        .await;
    let ids: Vec<u64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1569, 1570, 1571], "each retry stored nothing");
}

#[async_std::test]
async fn a_rooms_refs_expire_with_its_other_keys() {
    let redis = Redis::start();
    let server = on_redis(&redis, &["--retention", "2s"]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    assert_eq!(send_all(&mut alice, "kept", "k", 3).await, [1, 2, 3]);
    let keys: Vec<String> = ["meta", "stream", "refs", "ref-order"]
        .iter()
        .map(|name| format!("parlor:{{kept}}:{name}"))
        .collect();
    for key in &keys {
        // --retention and at most a sixteenth more.
        let ttl = count_of(&redis, "PTTL", key);
        assert!(ttl > 0 && ttl <= 2125, "{key} expires in {ttl} ms");
    }
    async_std::task::sleep(Duration::from_millis(2500)).await;
    for key in &keys {
        assert_eq!(
            count_of(&redis, "EXISTS", key),
            0,
            "{key} outlived the room"
        );
    }
}

/// Each of the room's six keys that exists, with the milliseconds it has
/// left (-1: none).
fn expiries(redis: &Redis, room: &str) -> Vec<(String, i64)> {
    ["meta", "stream", "fold", "read", "refs", "ref-order"]
        .iter()
        .map(|name| format!("parlor:{{{room}}}:{name}"))
        .map(|key| {
            let ttl = count_of(redis, "PTTL", &key);
            (key, ttl)
        })
        .filter(|(_, ttl)| *ttl != -2)
        .collect()
}

/// A room's keys get their expiry again only once the meta has less than
/// `--retention` left, so a key that a call creates must get its own in
/// that call: the first join's meta, the stream of the first message, the
/// refs of the first send with one (and after the room forgot them all), a
/// fold (its first edit, or one after the last of its fields left), the
/// read markers. Whatever the room goes through, no key of it
/// is ever without an expiry.
#[async_std::test]
async fn no_key_of_a_room_is_left_without_an_expiry() {
    let redis = Redis::start();
    let server = on_redis(
        &redis,
        &[
            "--retention",
            "120s",
            "--ref-memory",
            "1s",
            "--history",
            "4",
        ],
    );
    // Alice is joined; bob, who is not, writes.
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let (mut bob, _) = Client::welcomed(&server.ws_url("?user=bob")).await;
    let check = |step: &str| {
        let expiries = expiries(&redis, "x");
        assert!(!expiries.is_empty(), "{step}: no key");
        for (key, ttl) in expiries {
            assert!(
                ttl > 0 && ttl <= 127_500,
                "{step}: {key} expires in {ttl} ms"
            );
        }
    };
    alice.join(json!({"type":"join","room":"x"})).await;
    check("a join of a new room");
    let post = |text: &str| {
        let body = json!({"user":"bob","text":text});
        let posted = common::post_json(&server.addr, "/rooms/x/messages", &body);
        assert_eq!(posted.status, 201, "{}", posted.body);
        posted.json()["id"].as_u64().unwrap()
    };
    let ids = [post("first, no ref"), post("second")];
    check("the first messages");
    send_all(&mut bob, "x", "a", 2).await;
    check("sends with refs");
    let edit = json!({"type":"edit","room":"x","id":ids[0],"text":"fixed","ref":"e1"});
    assert_eq!(bob.request(edit).await["type"], "ack");
    check("an edit");
    bob.send(json!({"type":"read","room":"x","id":ids[1]}))
        .await;
    alice.recv_type("read").await;
    check("a read marker");
    // The edited message leaves history, and its fold with it; the next
    // reaction makes the fold again.
    let later = send_all(&mut bob, "x", "b", 4).await;
    let react = json!({"type":"react","room":"x","id":later[3],"emoji":"👍","ref":"r1"});
    assert_eq!(bob.request(react).await["type"], "ack");
    check("a fold made again");
    // Once the refs are older than --ref-memory, the sends that hand out a
    // sixteenth id forget them all; the next send remembers its ref anew.
    async_std::task::sleep(Duration::from_millis(1_500)).await;
    for n in 0..16 {
        post(&format!("no ref {n}"));
    }
    assert_eq!(refs_held(&redis, "x"), (0, 0), "the old refs are forgotten");
    send_all(&mut bob, "x", "c", 1).await;
    check("refs remembered anew");
}
