//! Joins while others publish: every client sees each message after its
//! starting point exactly once, in id order, across the replay and live.

mod common;

use common::{follow, spawn_publisher, Client, Server};
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
    let publisher = spawn_publisher(server.ws_url("?user=publisher"), "race", MESSAGES, 10);

    let mut joiners = Vec::new();
    for n in 0..JOINERS {
        let url = server.ws_url(&format!("?user=joiner{n}"));
        joiners.push(async_std::task::spawn(async move {
            // Each joiner starts at a different point while the publisher runs.
            async_std::task::sleep(std::time::Duration::from_millis(n as u64 * 20)).await;
            let since = if n % 3 == 0 {
                // Start from half of whatever is newest right now.
                let (mut probe, _) = Client::welcomed(&url).await;
                let (_, replay, _) = probe
                    .join(json!({"type":"join","room":"race","history":1}))
                    .await;
                replay.last().map_or(0, |m| m["id"].as_u64().unwrap()) / 2
            } else {
                (n as u64) * 40
            };
            let (got, _) = follow(&url, "race", since, MESSAGES).await;
            assert!(
                got == ((since + 1)..=MESSAGES).collect::<Vec<_>>(),
                "joiner {n} from {since}: {} ids, first {:?}",
                got.len(),
                got.first()
            );
        }));
    }
    publisher.await;
    for joiner in joiners {
        joiner.await;
    }
}

#[async_std::test]
async fn a_join_without_since_continues_live_from_its_replay() {
    let server = Server::start(&["--rate", "100000", "--burst", "100000", "--outbox", "128"]);
    let publisher = spawn_publisher(server.ws_url("?user=publisher"), "recent", MESSAGES, 10);
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
