//! Joins while others publish: every client sees each message after its
//! starting point exactly once, in id order, across the replay and live.

mod common;

use common::{Client, Server};
use serde_json::json;

const MESSAGES: u64 = 1500;
const JOINERS: usize = 12;

/// Reads message frames of `room` until `last`, asserting that ids run
/// contiguously from `from`.
async fn read_contiguous(client: &mut Client, room: &str, from: u64, last: u64) {
    let mut expected = from;
    while expected <= last {
        let frame = client.recv().await;
        if frame["type"] != "message" || frame["room"] != room {
            assert!(
                matches!(frame["type"].as_str(), Some("joined" | "replayed"))
                    && frame["room"] == room,
                "unexpected frame {frame}"
            );
            continue;
        }
        assert_eq!(
            frame["id"].as_u64(),
            Some(expected),
            "gap or duplicate: {frame}"
        );
        expected += 1;
    }
}

#[async_std::test]
async fn joins_during_publishing_see_every_message_once_in_order() {
    let server = Server::start(&[
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--replay-cap",
        "5000",
        "--outbox",
        "64",
    ]);
    let url = server.ws_url("?user=publisher");
    let publisher = async_std::task::spawn(async move {
        let (mut publisher, _) = Client::welcomed(&url).await;
        for i in 1..=MESSAGES {
            // Not waiting for each ack keeps many publishes in flight; the
            // pauses spread them over the time the joiners arrive in.
            publisher
                .send(json!({"type":"send","room":"race","text":format!("m{i}")}))
                .await;
            if i % 50 == 0 {
                async_std::task::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let mut acks = 0;
        while acks < MESSAGES {
            if publisher.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
    });

    let mut joiners = Vec::new();
    for n in 0..JOINERS {
        let url = server.ws_url(&format!("?user=joiner{n}"));
        joiners.push(async_std::task::spawn(async move {
            // Each joiner starts at a different point while the publisher runs.
            async_std::task::sleep(std::time::Duration::from_millis(n as u64 * 20)).await;
            let (mut client, _) = Client::welcomed(&url).await;
            let from = if n % 3 == 0 {
                // Join without since first, note the newest id, then rejoin
                // with since on a second connection.
                let (_, replay, _) = client
                    .join(json!({"type":"join","room":"race","history":1}))
                    .await;
                let newest = replay.last().map_or(0, |m| m["id"].as_u64().unwrap());
                let (mut second, _) = Client::welcomed(&url).await;
                second
                    .send(json!({"type":"join","room":"race","since":newest / 2}))
                    .await;
                read_contiguous(&mut second, "race", newest / 2 + 1, MESSAGES).await;
                newest + 1
            } else {
                let since = (n as u64) * 40;
                client
                    .send(json!({"type":"join","room":"race","since":since}))
                    .await;
                since + 1
            };
            read_contiguous(&mut client, "race", from, MESSAGES).await;
        }));
    }
    publisher.await;
    for joiner in joiners {
        joiner.await;
    }
}

#[async_std::test]
async fn a_join_without_since_continues_live_from_its_replay() {
    let server = Server::start(&["--rate", "100000", "--burst", "100000", "--outbox", "64"]);
    let url = server.ws_url("?user=publisher");
    let publisher = async_std::task::spawn(async move {
        let (mut publisher, _) = Client::welcomed(&url).await;
        for i in 1..=MESSAGES {
            publisher
                .send(json!({"type":"send","room":"recent","text":format!("m{i}")}))
                .await;
            if i % 50 == 0 {
                async_std::task::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let mut acks = 0;
        while acks < MESSAGES {
            if publisher.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
    });
    let mut joiners = Vec::new();
    for n in 0..JOINERS {
        let url = server.ws_url(&format!("?user=j{n}"));
        joiners.push(async_std::task::spawn(async move {
            async_std::task::sleep(std::time::Duration::from_millis(n as u64 * 10)).await;
            let (mut client, _) = Client::welcomed(&url).await;
            let (_, replay, replayed) = client
                .join(json!({"type":"join","room":"recent","history":10}))
                .await;
            assert_eq!(replayed["count"].as_u64(), Some(replay.len() as u64));
            let ids: Vec<u64> = replay.iter().map(|m| m["id"].as_u64().unwrap()).collect();
            assert!(
                ids.windows(2).all(|w| w[1] == w[0] + 1),
                "replay not contiguous: {ids:?}"
            );
            let next = ids.last().map_or(1, |id| id + 1);
            read_contiguous(&mut client, "recent", next, MESSAGES).await;
        }));
    }
    publisher.await;
    for joiner in joiners {
        joiner.await;
    }
}
