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

/// How many refs the room's hash and its order hold.
fn refs_held(redis: &Redis, room: &str) -> (i64, i64) {
    (
        count_of(redis, "HLEN", &format!("parlor:{{{room}}}:refs")),
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
        let ttl = count_of(&redis, "PTTL", key);
        assert!(ttl > 0 && ttl <= 2000, "{key} expires in {ttl} ms");
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
