//! The happy path over the real wire: welcome, joins with each replay form,
//! send and ack, fan-out, leave, history paging and the websocat shortcut.

mod common;

use common::{ids, Client, Server};
use serde_json::json;

#[async_std::test]
async fn two_clients_chat_in_a_room() {
    let server = Server::start(&["--instance", "inst-a"]);
    let (mut alice, welcome) = Client::welcomed(&server.ws_url("?user=alice")).await;
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["instance"], "inst-a");
    assert!(welcome["connection"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let (mut bob, _) = Client::welcomed(&server.ws_url("?user=bob")).await;

    let (joined, replay, replayed) = alice.join(json!({"type":"join","room":"general"})).await;
    assert!(joined["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(replay.is_empty());
    assert_eq!(
        replayed,
        json!({"type":"replayed","room":"general","count":0,"truncated":false})
    );
    bob.join(json!({"type":"join","room":"general"})).await;

    alice
        .send(json!({"type":"send","room":"general","text":"hello","ref":"c-1"}))
        .await;
    let mut ack = None;
    let mut seen = None;
    while ack.is_none() || seen.is_none() {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("ack") => ack = Some(frame),
            Some("message") => seen = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(
        ack.unwrap(),
        json!({"type":"ack","ref":"c-1","room":"general","id":1})
    );
    let message = bob.recv().await;
    assert_eq!(message, seen.unwrap());
    assert_eq!(message["type"], "message");
    assert_eq!(
        (message["room"].as_str(), message["id"].as_u64()),
        (Some("general"), Some(1))
    );
    assert_eq!(
        (message["user"].as_str(), message["text"].as_str()),
        (Some("alice"), Some("hello"))
    );
    assert!(message["ts"].as_u64().unwrap() > 1_700_000_000_000);
}

#[async_std::test]
async fn join_replays_recent_since_or_nothing() {
    let server = Server::start(&[]);
    let (mut writer, _) = Client::welcomed(&server.ws_url("?user=w")).await;
    for i in 1..=60 {
        assert_eq!(writer.say("r", &format!("m{i}")).await, i);
    }
    let (mut reader, _) = Client::welcomed(&server.ws_url("?user=r")).await;

    // No since: the last 50.
    let (joined, replay, replayed) = reader.join(json!({"type":"join","room":"r"})).await;
    assert_eq!(ids(&replay), (11..=60).collect::<Vec<_>>());
    assert_eq!(replayed["count"], 50);
    assert_eq!(replayed["truncated"], false);
    let epoch = joined["epoch"].as_str().unwrap().to_owned();

    // A given number, and zero.
    let (_, replay, _) = reader
        .join(json!({"type":"join","room":"r","history":3}))
        .await;
    assert_eq!(ids(&replay), vec![58, 59, 60]);
    let (_, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","history":0}))
        .await;
    assert!(replay.is_empty());
    assert_eq!(replayed["count"], 0);

    // Since an id, in the same epoch: exactly what came after.
    let (_, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","since":41,"epoch":epoch}))
        .await;
    assert_eq!(ids(&replay), (42..=60).collect::<Vec<_>>());
    assert_eq!(
        (replayed["count"].as_u64(), replayed["truncated"].as_bool()),
        (Some(19), Some(false))
    );
    let (_, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","since":60}))
        .await;
    assert!(replay.is_empty());
    assert_eq!(replayed["truncated"], false);

    // Since, in an epoch that is not the room's: the whole room, truncated.
    let (joined, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","since":41,"epoch":"stale"}))
        .await;
    assert_eq!(joined["epoch"], epoch.as_str());
    assert_eq!(ids(&replay), (1..=60).collect::<Vec<_>>());
    assert_eq!(replayed["truncated"], true);

    // And live messages follow the replay.
    writer.say("r", "live").await;
    let live = reader.recv().await;
    assert_eq!(
        (live["id"].as_u64(), live["text"].as_str()),
        (Some(61), Some("live"))
    );
}

#[async_std::test]
async fn since_beyond_the_replay_cap_or_history_is_truncated() {
    let server = Server::start(&["--history", "20", "--replay-cap", "5"]);
    let (mut writer, _) = Client::welcomed(&server.ws_url("?user=w")).await;
    for i in 1..=30 {
        writer.say("r", &i.to_string()).await;
    }
    let (mut reader, _) = Client::welcomed(&server.ws_url("?user=r")).await;
    // 26..30 fit the cap.
    let (_, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","since":25}))
        .await;
    assert_eq!(ids(&replay), vec![26, 27, 28, 29, 30]);
    assert_eq!(replayed["truncated"], false);
    // More were missed than the cap: the newest five, truncated.
    let (_, replay, replayed) = reader
        .join(json!({"type":"join","room":"r","since":15}))
        .await;
    assert_eq!(ids(&replay), vec![26, 27, 28, 29, 30]);
    assert_eq!(replayed["truncated"], true);
    // Missed ones left history (only 11..30 are kept).
    let (_, _, replayed) = reader
        .join(json!({"type":"join","room":"r","since":2}))
        .await;
    assert_eq!(replayed["truncated"], true);
    // History pages back only as far as history goes.
    reader
        .send(json!({"type":"history","room":"r","before":13,"limit":50}))
        .await;
    let page = reader.recv().await;
    assert_eq!(ids(page["messages"].as_array().unwrap()), vec![11, 12]);
    assert_eq!(page["more"], false);
}

#[async_std::test]
async fn history_pages_back_and_leave_stops_delivery() {
    let server = Server::start(&[]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    alice
        .join(json!({"type":"join","room":"h","history":0}))
        .await;
    for i in 1..=7 {
        alice.say("h", &format!("m{i}")).await;
        assert_eq!(alice.recv().await["id"], i);
    }
    alice
        .send(json!({"type":"history","room":"h","limit":3,"ref":"p1"}))
        .await;
    let page = alice.recv().await;
    assert_eq!(page["type"], "history");
    assert_eq!(page["ref"], "p1");
    assert_eq!(ids(page["messages"].as_array().unwrap()), vec![5, 6, 7]);
    assert_eq!(page["more"], true);
    alice
        .send(json!({"type":"history","room":"h","before":5,"limit":3}))
        .await;
    let page = alice.recv().await;
    assert_eq!(ids(page["messages"].as_array().unwrap()), vec![2, 3, 4]);
    assert_eq!(page["more"], true);
    alice
        .send(json!({"type":"history","room":"h","before":2,"limit":3}))
        .await;
    let page = alice.recv().await;
    assert_eq!(ids(page["messages"].as_array().unwrap()), vec![1]);
    assert_eq!(page["more"], false);

    alice.send(json!({"type":"leave","room":"h"})).await;
    assert_eq!(alice.recv().await, json!({"type":"left","room":"h"}));
    // Sending without being joined is allowed; the message is not delivered back.
    let id = alice.say("h", "after leaving").await;
    assert_eq!(id, 8);
    alice
        .send(json!({"type":"history","room":"h","limit":1}))
        .await;
    let page = alice.recv().await;
    assert_eq!(
        page["type"], "history",
        "nothing but the answer arrives: {page}"
    );
    assert_eq!(page["messages"][0]["text"], "after leaving");
}

#[async_std::test]
async fn websocat_style_plain_text_with_room_in_the_query() {
    let server = Server::start(&[]);
    let (mut bob, _) = Client::welcomed(&server.ws_url("?room=lobby&user=bob")).await;
    // ?room= joins at once.
    let (joined, _) = bob.recv_type("joined").await;
    assert_eq!(joined["room"], "lobby");
    bob.recv_type("replayed").await;

    let (mut alice, _) = Client::welcomed(&server.ws_url("?room=lobby&user=alice")).await;
    alice.recv_type("replayed").await;
    alice.send_text("hi bob, this is plain text").await;
    let message = bob.recv().await;
    assert_eq!(message["text"], "hi bob, this is plain text");
    assert_eq!(message["user"], "alice");
    let (ack, _) = alice.recv_type("ack").await;
    assert_eq!(ack, json!({"type":"ack","room":"lobby","id":1}));

    // Reconnecting with since replays exactly what was missed.
    drop(bob);
    alice.say("lobby", "while bob was away").await;
    let (mut bob, _) = Client::welcomed(&server.ws_url("?room=lobby&user=bob&since=1")).await;
    let (_, replay) = bob.recv_type("replayed").await;
    let texts: Vec<_> = replay
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("while bob was away")]);
}

#[async_std::test]
async fn a_retried_ref_is_stored_once_and_acked_with_the_first_id() {
    let server = Server::start(&[]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    alice
        .join(json!({"type":"join","room":"r","history":0}))
        .await;
    assert_eq!(alice.say("r", "once").await, 1);
    let ack = alice
        .request(json!({"type":"send","room":"r","text":"once","ref":"retry-me"}))
        .await;
    assert_eq!(ack["id"], 2);
    // The same ref again, even from another connection of the same user.
    let (mut again, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    again
        .send(json!({"type":"send","room":"r","text":"once","ref":"retry-me"}))
        .await;
    let ack = again.recv().await;
    assert_eq!(
        ack,
        json!({"type":"ack","ref":"retry-me","room":"r","id":2})
    );
    // Another user's identical ref is a different message.
    let (mut bob, _) = Client::welcomed(&server.ws_url("?user=bob")).await;
    bob.send(json!({"type":"send","room":"r","text":"mine","ref":"retry-me"}))
        .await;
    assert_eq!(bob.recv().await["id"], 3);
    // Alice saw each stored message once, whatever came before its ack.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = alice.recv().await;
        if frame["type"] == "message" {
            seen.push(frame["id"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, vec![1, 2, 3]);
    alice
        .send(json!({"type":"history","room":"r","limit":1}))
        .await;
    assert_eq!(alice.recv().await["type"], "history", "no fourth message");
}

#[async_std::test]
async fn rejoining_a_joined_room_replays_again_without_duplicating_live() {
    let server = Server::start(&[]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    alice.join(json!({"type":"join","room":"r"})).await;
    alice.say("r", "one").await;
    assert_eq!(alice.recv().await["id"], 1);
    let (_, replay, _) = alice.join(json!({"type":"join","room":"r"})).await;
    assert_eq!(ids(&replay), vec![1]);
    alice.say("r", "two").await;
    assert_eq!(alice.recv().await["id"], 2);
    alice
        .send(json!({"type":"history","room":"r","limit":1}))
        .await;
    assert_eq!(alice.recv().await["type"], "history", "message 2 came once");
}

#[async_std::test]
async fn since_beyond_the_newest_id_waits_for_ids_after_it() {
    let server = Server::start(&[]);
    let (mut writer, _) = Client::welcomed(&server.ws_url("?user=w")).await;
    writer.say("r", "one").await;
    let (mut ahead, _) = Client::welcomed(&server.ws_url("?user=ahead")).await;
    let (_, replay, replayed) = ahead
        .join(json!({"type":"join","room":"r","since":3}))
        .await;
    assert!(replay.is_empty());
    assert_eq!(replayed["truncated"], false);
    for text in ["two", "three", "four"] {
        writer.say("r", text).await;
    }
    // Ids 2 and 3 are at or below its since; 4 is the first it gets.
    let first = ahead.recv().await;
    assert_eq!(
        (first["id"].as_u64(), first["text"].as_str()),
        (Some(4), Some("four"))
    );
}

#[async_std::test]
async fn typing_goes_to_the_others_in_the_room_and_is_never_stored() {
    let server = Server::start(&[]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let (mut bob, _) = Client::welcomed(&server.ws_url("?user=bob")).await;
    let (mut carol, _) = Client::welcomed(&server.ws_url("?user=carol")).await;
    alice.join(json!({"type":"join","room":"t"})).await;
    bob.join(json!({"type":"join","room":"t"})).await;
    carol.join(json!({"type":"join","room":"elsewhere"})).await;
    bob.send(json!({"type":"typing","room":"t"})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"typing","room":"t","user":"bob"})
    );
    // Not to the typist, nor to another room; nothing stored, no id used.
    let answer = bob
        .request(json!({"type":"history","room":"t","ref":"h"}))
        .await;
    assert_eq!(
        answer["messages"],
        json!([]),
        "bob got nothing before his answer"
    );
    let answer = carol
        .request(json!({"type":"history","room":"elsewhere","ref":"h"}))
        .await;
    assert_eq!(answer["type"], "history");
    assert_eq!(alice.say("t", "first message").await, 1);
}

#[async_std::test]
async fn a_history_page_is_cut_to_its_byte_budget_and_pages_on() {
    // A quarter of a 1 MiB outbox: pages of at most 256 KiB of messages.
    let server = Server::start(&["--outbox-bytes", "1048576"]);
    for i in 1..=200 {
        let body = json!({"user":"bot","text":format!("{i:04}{}", "x".repeat(4000))});
        let response = common::post_json(&server.addr, "/rooms/long/messages", &body);
        assert_eq!(response.status, 201);
    }
    let (mut client, _) = Client::welcomed(&server.ws_url("?user=reader")).await;
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut ask = json!({"type":"history","room":"long","limit":1000,"ref":"page"});
        if let Some(before) = before {
            ask["before"] = json!(before);
        }
        let page = client.request(ask).await;
        let messages = page["messages"].as_array().unwrap().clone();
        assert!(
            page.to_string().len() <= 256 * 1024 + 1024,
            "a page within its budget"
        );
        let mut ids = ids(&messages);
        before = ids.first().copied();
        ids.extend(seen);
        seen = ids;
        if page["more"] == false {
            break;
        }
        assert!(messages.len() < 200, "cut short, with more to read");
    }
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<_>>(),
        "paging on reads every message once"
    );
    // Over HTTP, the same budget.
    let page = common::get(&server.addr, "/rooms/long/messages?since=0&limit=1000").json();
    let messages = page["messages"].as_array().unwrap();
    assert!(
        messages.len() < 200 && page["more"] == true,
        "{}",
        messages.len()
    );
    assert_eq!(messages[0]["id"], 1, "a since read keeps the oldest");
}
