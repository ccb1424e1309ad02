//! Room events of contract version 2 over the real wire, on both stores and
//! across instances: edits, deletes and reactions get their own ids, follow
//! the author and moderator rules, replay and fold like messages; two
//! instances racing an edit and a delete agree on one outcome; reactions
//! stay sets under concurrent toggles; trimming takes what was made of a
//! message with it; read markers are kept, told and shown in `joined`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{get, http, live_members, on_redis, Client, Redis, Server};
use serde_json::{json, Value};

const FAST: [&str; 4] = ["--rate", "100000", "--burst", "100000"];

fn next_ref() -> String {
    format!("r{}", fastrand::u64(..))
}

/// Sends a request of `kind` about message `id` and returns its answer.
async fn ask(client: &mut Client, room: &str, kind: &str, id: u64, extra: Value) -> Value {
    let mut frame = json!({"type":kind,"room":room,"id":id,"ref":next_ref()});
    for (key, value) in extra.as_object().unwrap() {
        frame[key] = value.clone();
    }
    client.request(frame).await
}

fn acked(answer: &Value) -> Option<u64> {
    assert_eq!(answer["type"], "ack", "{answer}");
    answer["id"].as_u64()
}

fn refused(answer: &Value, code: &str) {
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some(code)),
        "{answer}"
    );
}

/// Applies events, in id order, to the messages they target: what a client
/// that keeps every event ends with.
fn fold(frames: &[Value]) -> BTreeMap<u64, Value> {
    let mut messages: BTreeMap<u64, Value> = BTreeMap::new();
    for frame in frames {
        let id = frame["id"].as_u64().unwrap();
        let target = frame["target"].as_u64().unwrap_or(0);
        match frame["type"].as_str().unwrap() {
            "message" => {
                messages.insert(id, frame.clone());
            }
            "edit" => {
                let m = messages.get_mut(&target).unwrap();
                m["text"] = frame["text"].clone();
                m["edited"] = frame["ts"].clone();
            }
            "delete" => {
                let m = messages.get_mut(&target).unwrap();
                m["text"] = json!("");
                m["deleted"] = json!(true);
            }
            "reaction" => {
                let m = messages.get_mut(&target).unwrap();
                let emoji = frame["emoji"].as_str().unwrap();
                let mut users: BTreeSet<String> = m["reactions"][emoji]
                    .as_array()
                    .map(|a| a.iter().map(|u| u.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                let user = frame["user"].as_str().unwrap().to_owned();
                if frame["on"] == true {
                    users.insert(user);
                } else {
                    users.remove(&user);
                }
                if m["reactions"].is_null() {
                    m["reactions"] = json!({});
                }
                if users.is_empty() {
                    m["reactions"].as_object_mut().unwrap().remove(emoji);
                } else {
                    m["reactions"][emoji] = json!(users);
                }
                if m["reactions"].as_object().unwrap().is_empty() {
                    m.as_object_mut().unwrap().remove("reactions");
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    messages
}

/// The rules of events, seen from a member on the other instance, from a
/// client that was away, and from fresh reads.
async fn events_follow_the_rules(a: &Server, b: &Server) {
    let (mut alice, _) = Client::welcomed(&a.ws_url("?user=alice")).await;
    let (mut bob, _) = Client::welcomed(&b.ws_url("?user=bob")).await;
    let mut carol = live_members(&[b], "ev").await.remove(0);
    let hello = acked(
        &alice
            .request(json!({"type":"send","room":"ev","text":"hello","ref":"h"}))
            .await,
    )
    .unwrap();
    refused(
        &ask(&mut bob, "ev", "edit", hello, json!({"text":"mine now"})).await,
        "forbidden",
    );
    let edit = acked(
        &ask(
            &mut alice,
            "ev",
            "edit",
            hello,
            json!({"text":"hello, fixed"}),
        )
        .await,
    );
    let thumbs = acked(&ask(&mut bob, "ev", "react", hello, json!({"emoji":"👍"})).await);
    assert_eq!(
        acked(&ask(&mut bob, "ev", "react", hello, json!({"emoji":"👍"})).await),
        None,
        "already in the set"
    );
    assert_eq!(
        acked(&ask(&mut alice, "ev", "unreact", hello, json!({"emoji":"👍"})).await),
        None,
        "not in the set"
    );
    let heart = json!({"type":"react","room":"ev","id":hello,"emoji":"❤️","ref":"heart"});
    let loved = acked(&alice.request(heart.clone()).await);
    assert_eq!(
        acked(&alice.request(heart).await),
        loved,
        "the same ref is stored once"
    );
    refused(
        &ask(&mut alice, "ev", "edit", 99, json!({"text":"x"})).await,
        "not_found",
    );
    refused(
        &ask(&mut alice, "ev", "edit", edit.unwrap(), json!({"text":"x"})).await,
        "not_found",
    );
    refused(
        &ask(&mut bob, "ev", "delete", hello, json!({})).await,
        "forbidden",
    );
    let deleted = acked(&ask(&mut alice, "ev", "delete", hello, json!({})).await);
    refused(
        &ask(&mut alice, "ev", "edit", hello, json!({"text":"back"})).await,
        "not_found",
    );
    refused(
        &ask(&mut bob, "ev", "react", hello, json!({"emoji":"👍"})).await,
        "not_found",
    );
    let ids: Vec<u64> = [Some(hello), edit, thumbs, loved, deleted]
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        ids,
        (1..=5).collect::<Vec<_>>(),
        "one sequence of ids, no holes"
    );

    // Live, on the other instance: every event once, in order.
    let mut live = Vec::new();
    while live.len() < 5 {
        let frame = carol.recv().await;
        if frame["type"] != "typing" && frame["id"].is_u64() {
            live.push(frame);
        }
    }
    let kinds: Vec<&str> = live.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "edit", "reaction", "reaction", "delete"]);
    assert_eq!(live[1]["target"], hello);
    assert_eq!(
        (
            live[2]["user"].as_str(),
            live[2]["emoji"].as_str(),
            live[2]["on"].as_bool()
        ),
        (Some("bob"), Some("👍"), Some(true))
    );

    // A client that was away replays the events, and ends where the server is.
    let (mut away, _) = Client::welcomed(&a.ws_url("?user=away")).await;
    let (_, replay, replayed) = away
        .join(json!({"type":"join","room":"ev","since":1}))
        .await;
    assert_eq!(replayed["truncated"], false);
    assert_eq!(common::ids(&replay), [2, 3, 4, 5]);
    let (mut fresh, _) = Client::welcomed(&b.ws_url("?user=fresh")).await;
    let (_, recent, _) = fresh.join(json!({"type":"join","room":"ev"})).await;
    let message = &recent[0];
    assert_eq!(
        (message["text"].as_str(), message["deleted"].as_bool()),
        (Some(""), Some(true)),
        "{message}"
    );
    assert_eq!(message["reactions"], json!({"👍":["bob"],"❤️":["alice"]}));
    assert!(message["edited"].is_u64());
    assert_eq!(
        common::ids(&recent),
        [1, 2, 3, 4, 5],
        "the events too, in their place"
    );
    assert_eq!(
        fold(&live)[&hello],
        *message,
        "events applied in order end in the server's state"
    );
    let read = get(&a.addr, "/rooms/ev/messages?since=0").json();
    assert_eq!(
        read["messages"][0], *message,
        "HTTP reads fold the same way"
    );
}

#[async_std::test]
async fn events_follow_the_rules_in_memory() {
    let server = Server::start(&FAST);
    events_follow_the_rules(&server, &server).await;
}

#[async_std::test]
async fn events_follow_the_rules_across_instances_on_redis() {
    let redis = Redis::start();
    let a = on_redis(&redis, &FAST);
    let b = on_redis(&redis, &FAST);
    events_follow_the_rules(&a, &b).await;
}

fn call(server: &Server, method: &str, path: &str, body: Option<Value>) -> common::Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type = (!body.is_empty()).then_some("application/json");
    http(&server.addr, method, path, content_type, body.as_bytes())
}

#[test]
fn the_http_routes_edit_delete_and_react() {
    let server = Server::start(&[]);
    let posted = call(
        &server,
        "POST",
        "/rooms/h/messages?user=ann",
        Some(json!({"text":"hi"})),
    );
    assert_eq!(posted.status, 201);
    let id = posted.json()["id"].as_u64().unwrap();
    let edited = call(
        &server,
        "PATCH",
        &format!("/rooms/h/messages/{id}?user=ann"),
        Some(json!({"text":"hi!","ref":"e1"})),
    );
    assert_eq!(
        (edited.status, edited.json()["id"].as_u64()),
        (200, Some(id + 1)),
        "{}",
        edited.body
    );
    assert!(edited.json()["epoch"].is_string() && edited.json()["ts"].is_u64());
    let again = call(
        &server,
        "PATCH",
        &format!("/rooms/h/messages/{id}?user=ann"),
        Some(json!({"text":"hi!","ref":"e1"})),
    );
    assert_eq!(
        again.json()["id"],
        edited.json()["id"],
        "the same ref is stored once"
    );
    let other = call(
        &server,
        "PATCH",
        &format!("/rooms/h/messages/{id}?user=ben"),
        Some(json!({"text":"no"})),
    );
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (403, "forbidden")
    );
    let path = format!("/rooms/h/messages/{id}/reactions/%F0%9F%91%8D?user=ben");
    let reacted = call(&server, "PUT", &path, None);
    assert_eq!(
        (reacted.status, reacted.json()["id"].as_u64()),
        (200, Some(id + 2)),
        "{}",
        reacted.body
    );
    let unchanged = call(&server, "PUT", &path, None);
    assert_eq!(
        (unchanged.status, &unchanged.json()["id"]),
        (200, &Value::Null)
    );
    assert_eq!(
        call(&server, "DELETE", &path, None).json()["id"].as_u64(),
        Some(id + 3)
    );
    let deleted = call(
        &server,
        "DELETE",
        &format!("/rooms/h/messages/{id}?user=ann"),
        None,
    );
    assert_eq!(
        (deleted.status, deleted.json()["id"].as_u64()),
        (200, Some(id + 4))
    );
    let gone = call(
        &server,
        "PATCH",
        &format!("/rooms/h/messages/{id}?user=ann"),
        Some(json!({"text":"x"})),
    );
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "not_found")
    );
    for (method, path, status) in [
        ("PATCH", "/rooms/h/messages/0?user=ann", 400),
        ("PATCH", "/rooms/h/messages/x?user=ann", 400),
        ("PUT", "/rooms/h/messages/1", 405),
        (
            "PUT",
            "/rooms/h/messages/1/reactions/two%20words?user=ann",
            400,
        ),
        ("POST", "/rooms/h/messages/1/reactions/x?user=ann", 405),
        ("POST", "/rooms/h/read", 405),
        ("DELETE", "/rooms/h/messages/1", 400),
    ] {
        assert_eq!(
            call(&server, method, path, None).status,
            status,
            "{method} {path}"
        );
    }
    let read = get(&server.addr, "/rooms/h/messages?since=0").json();
    let message = &read["messages"][0];
    assert_eq!(
        (message["text"].as_str(), message["deleted"].as_bool()),
        (Some(""), Some(true))
    );
}

#[async_std::test]
async fn an_edit_racing_a_delete_on_two_instances_has_one_outcome() {
    let redis = Redis::start();
    let a = on_redis(&redis, &FAST);
    let b = on_redis(&redis, &FAST);
    let mut members = live_members(&[&a, &b], "race").await;
    let (mut writer, _) = Client::welcomed(&a.ws_url("?user=w")).await;
    let mut edits_won = 0;
    for round in 0..30 {
        let id = acked(
            &writer
                .request(json!({"type":"send","room":"race","text":"x","ref":format!("m{round}")}))
                .await,
        )
        .unwrap();
        let (addr_a, addr_b) = (a.addr.clone(), b.addr.clone());
        let edit = std::thread::spawn(move || {
            let body = json!({"text":"edited"}).to_string();
            http(
                &addr_a,
                "PATCH",
                &format!("/rooms/race/messages/{id}?user=w"),
                Some("application/json"),
                body.as_bytes(),
            )
        });
        let delete = std::thread::spawn(move || {
            http(
                &addr_b,
                "DELETE",
                &format!("/rooms/race/messages/{id}?user=w"),
                None,
                b"",
            )
        });
        let (edit, delete) = (edit.join().unwrap(), delete.join().unwrap());
        assert_eq!(delete.status, 200, "{}", delete.body);
        let deleted_as = delete.json()["id"].as_u64().unwrap();
        match edit.status {
            200 => {
                edits_won += 1;
                assert!(
                    edit.json()["id"].as_u64().unwrap() < deleted_as,
                    "an edit after the delete won"
                );
            }
            404 => assert_eq!(edit.error_code(), "not_found"),
            other => panic!("edit answered {other}: {}", edit.body),
        }
    }
    // Every member saw one and the same sequence.
    let last = get(&a.addr, "/rooms/race/messages?limit=1").json()["messages"][0]["id"]
        .as_u64()
        .unwrap();
    let mut seen = Vec::new();
    for member in &mut members {
        let mut frames = Vec::new();
        while frames.last().and_then(|f: &Value| f["id"].as_u64()) != Some(last) {
            let frame = member.recv().await;
            if frame["id"].is_u64() {
                frames.push(frame);
            }
        }
        seen.push(frames);
    }
    assert_eq!(seen[0], seen[1]);
    eprintln!(
        "EDIT RACE: 30 rounds, the edit came first in {edits_won}, the delete in {}",
        30 - edits_won
    );
}

#[async_std::test]
async fn reactions_stay_sets_under_concurrent_toggles() {
    let redis = Redis::start();
    let a = on_redis(&redis, &FAST);
    let b = on_redis(&redis, &FAST);
    let mut member = live_members(&[&b], "set").await.remove(0);
    let (mut writer, _) = Client::welcomed(&a.ws_url("?user=alice")).await;
    let id = acked(
        &writer
            .request(json!({"type":"send","room":"set","text":"vote","ref":"v"}))
            .await,
    )
    .unwrap();
    let togglers: Vec<_> = [&a, &a, &b]
        .into_iter()
        .enumerate()
        .map(|(n, server)| {
            let url = server.ws_url("?user=alice");
            async_std::task::spawn(async move {
                let (mut client, _) = Client::welcomed(&url).await;
                let mut stored = 0;
                for i in 0..40 {
                    let kind = if fastrand::bool() { "react" } else { "unreact" };
                    let frame = json!({"type":kind,"room":"set","id":id,"emoji":"👍","ref":format!("t{n}-{i}")});
                    stored += usize::from(acked(&client.request(frame).await).is_some());
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for toggler in togglers {
        stored += toggler.await;
    }
    let mut on = Vec::new();
    while on.len() < stored {
        let frame = member.recv().await;
        if frame["type"] == "reaction" {
            on.push(frame["on"].as_bool().unwrap());
        }
    }
    assert!(
        on.windows(2).all(|w| w[0] != w[1]),
        "a reaction was stored twice in a row: {on:?}"
    );
    assert_eq!(on.first(), Some(&true));
    let read = get(&a.addr, "/rooms/set/messages?since=0&limit=1").json();
    let reactions = &read["messages"][0]["reactions"];
    if on.last() == Some(&true) {
        assert_eq!(*reactions, json!({"👍":["alice"]}));
    } else {
        assert!(reactions.is_null(), "{reactions}");
    }
    eprintln!(
        "REACTION SET: 120 toggles from 3 connections, {stored} stored, alternating on and off"
    );
}

#[async_std::test]
async fn trimming_takes_what_was_made_of_a_message_with_it() {
    let redis = Redis::start();
    let server = on_redis(&redis, &["--history", "5"]);
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let first = acked(
        &alice
            .request(json!({"type":"send","room":"trim","text":"old","ref":"o"}))
            .await,
    )
    .unwrap();
    acked(
        &ask(
            &mut alice,
            "trim",
            "edit",
            first,
            json!({"text":"old, edited"}),
        )
        .await,
    );
    acked(&ask(&mut alice, "trim", "react", first, json!({"emoji":"👍"})).await);
    let fields = || redis.cli(&["HKEYS", "parlor:{trim}:fold"]);
    assert!(fields().contains(&format!("r:{first}")), "{}", fields());
    for i in 0..5 {
        acked(&alice.request(json!({"type":"send","room":"trim","text":format!("new {i}"),"ref":format!("n{i}")})).await);
    }
    assert_eq!(
        fields().trim(),
        "",
        "what was made of message {first} left with it"
    );
    refused(
        &ask(&mut alice, "trim", "edit", first, json!({"text":"again"})).await,
        "not_found",
    );
}

/// Read markers: kept per user, told to the room's other connections on
/// every instance, shown in `joined`, and never beyond the room's head.
async fn read_markers_are_kept_and_told(a: &Server, b: &Server) {
    let (mut alice, _) = Client::welcomed(&a.ws_url("?user=alice")).await;
    alice
        .join(json!({"type":"join","room":"rm","history":0}))
        .await;
    let (mut phone, _) = Client::welcomed(&b.ws_url("?user=alice")).await;
    phone
        .join(json!({"type":"join","room":"rm","history":0}))
        .await;
    let (mut bob, _) = Client::welcomed(&b.ws_url("?user=bob")).await;
    bob.join(json!({"type":"join","room":"rm","history":0}))
        .await;
    for i in 0..3 {
        acked(
            &alice
                .request(
                    json!({"type":"send","room":"rm","text":format!("m{i}"),"ref":format!("m{i}")}),
                )
                .await,
        );
    }
    alice.send(json!({"type":"read","room":"rm","id":2})).await;
    for client in [&mut phone, &mut bob] {
        let (told, _) = client.recv_type("read").await;
        assert_eq!(
            told,
            json!({"type":"read","room":"rm","user":"alice","id":2})
        );
    }
    alice.send(json!({"type":"read","room":"rm","id":1})).await;
    refused(
        &alice
            .request(json!({"type":"read","room":"rm","id":9,"ref":"far"}))
            .await,
        "bad_request",
    );
    // A lower marker changed nothing and told nobody; the next one does.
    bob.send(json!({"type":"read","room":"rm","id":3})).await;
    let (told, _) = phone.recv_type("read").await;
    assert_eq!(
        (told["user"].as_str(), told["id"].as_u64()),
        (Some("bob"), Some(3))
    );
    let markers = get(&a.addr, "/rooms/rm/read").json();
    assert_eq!(markers, json!({"users":{"alice":2,"bob":3}}));
    let (mut tablet, _) = Client::welcomed(&a.ws_url("?user=alice")).await;
    let (joined, _, _) = tablet
        .join(json!({"type":"join","room":"rm","history":0}))
        .await;
    assert_eq!(
        (joined["head"].as_u64(), joined["read"].as_u64()),
        (Some(3), Some(2)),
        "{joined}"
    );
    let (mut carol, _) = Client::welcomed(&b.ws_url("?user=carol")).await;
    carol.send(json!({"type":"read","room":"rm","id":1})).await;
    let (joined, _, _) = carol
        .join(json!({"type":"join","room":"rm","history":0}))
        .await;
    assert_eq!(joined["read"], 1, "read needs no join");
}

#[async_std::test]
async fn read_markers_in_memory() {
    let server = Server::start(&[]);
    read_markers_are_kept_and_told(&server, &server).await;
}

#[async_std::test]
async fn read_markers_across_instances_on_redis() {
    let redis = Redis::start();
    let a = on_redis(&redis, &[]);
    let b = on_redis(&redis, &[]);
    read_markers_are_kept_and_told(&a, &b).await;
}

#[async_std::test]
async fn a_moderator_may_delete_what_others_wrote() {
    const SECRET: &str = "correct horse battery staple, twice over";
    let token = |sub: &str, moderator: bool| {
        let mut args = vec!["token", "--secret", SECRET, "--sub", sub];
        if moderator {
            args.push("--mod");
        }
        let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let server = Server::start(&["--secret", SECRET]);
    let (mut alice, _) =
        Client::welcomed(&server.ws_url(&format!("?token={}", token("alice", false)))).await;
    let (mut bob, _) =
        Client::welcomed(&server.ws_url(&format!("?token={}", token("bob", false)))).await;
    let (mut moderator, _) =
        Client::welcomed(&server.ws_url(&format!("?token={}", token("mia", true)))).await;
    let id = acked(
        &alice
            .request(json!({"type":"send","room":"mod","text":"spam","ref":"s"}))
            .await,
    )
    .unwrap();
    refused(
        &ask(&mut bob, "mod", "delete", id, json!({})).await,
        "forbidden",
    );
    refused(
        &ask(&mut moderator, "mod", "edit", id, json!({"text":"ham"})).await,
        "forbidden",
    );
    assert!(acked(&ask(&mut moderator, "mod", "delete", id, json!({})).await).is_some());
}

/// A page of history over Redis folds in what was made of each message,
/// however far into the page it is (read.lua reads the folds of a few
/// hundred messages a call), and leaves the others as they were.
#[test]
fn a_long_page_folds_every_changed_message_and_no_other() {
    let redis = Redis::start();
    let server = on_redis(&redis, &FAST);
    let post = |text: String| {
        let posted = call(
            &server,
            "POST",
            "/rooms/long/messages?user=ann",
            Some(json!({"text":text})),
        );
        assert_eq!(posted.status, 201, "{}", posted.body);
        posted.json()["id"].as_u64().unwrap()
    };
    let ids: Vec<u64> = (0..1100).map(|n| post(format!("m{n}"))).collect();
    let changed = [ids[0], ids[499], ids[500], ids[777], ids[1099]];
    for (n, id) in changed.iter().enumerate() {
        let path = format!("/rooms/long/messages/{id}?user=ann");
        let edited = call(
            &server,
            "PATCH",
            &path,
            Some(json!({"text":format!("edited {n}")})),
        );
        assert_eq!(edited.status, 200, "{}", edited.body);
    }
    let page = get(&server.addr, "/rooms/long/messages?since=0&limit=1000").json();
    let messages: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "message")
        .collect();
    assert_eq!(
        messages.len(),
        1000,
        "{}",
        page["messages"].as_array().unwrap().len()
    );
    for (n, message) in messages.iter().enumerate() {
        let id = message["id"].as_u64().unwrap();
        let text = match changed.iter().position(|c| *c == id) {
            Some(k) => format!("edited {k}"),
            None => format!("m{n}"),
        };
        assert_eq!(message["text"], text, "{message}");
        assert_eq!(
            message["edited"].is_u64(),
            text.starts_with("edited"),
            "{message}"
        );
    }
}

/// What a reader is given back of every string it stored: quotes,
/// backslashes, slashes, control characters, characters beyond the Basic
/// Multilingual Plane, in texts, names, edits and reactions, in a join's
/// replay and in history, folded and not.
async fn any_text_comes_back_as_it_was_sent(server: &Server) {
    let odd =
        "say \"hi\" \\ / </script> \n\t\r \u{0} \u{1} \u{1f} \u{7f} é 😀 \u{2028} \u{fffd} \\u0041";
    let name = "zoë \"🙂\" \\";
    let (mut zoe, _) =
        Client::welcomed(&server.ws_url("?user=zo%C3%AB%20%22%F0%9F%99%82%22%20%5C")).await;
    let plain = zoe.say("odd", odd).await;
    let edited = zoe.say("odd", "to be edited").await;
    let later = format!("{odd} (edited)");
    acked(&ask(&mut zoe, "odd", "edit", edited, json!({"text":later})).await).unwrap();
    let emoji = "👍🏽\"\\";
    acked(&ask(&mut zoe, "odd", "react", plain, json!({"emoji":emoji})).await).unwrap();
    let bare = zoe.say("odd", "reacted, then not").await;
    acked(&ask(&mut zoe, "odd", "react", bare, json!({"emoji":"❤️"})).await).unwrap();
    acked(&ask(&mut zoe, "odd", "unreact", bare, json!({"emoji":"❤️"})).await).unwrap();

    let check = |messages: &[Value], how: &str| {
        let by_id: BTreeMap<u64, &Value> = messages
            .iter()
            .filter(|m| m["type"] == "message")
            .map(|m| (m["id"].as_u64().unwrap(), m))
            .collect();
        assert_eq!(by_id[&plain]["text"], odd, "{how}: {}", by_id[&plain]);
        assert_eq!(by_id[&plain]["user"], name, "{how}: {}", by_id[&plain]);
        assert_eq!(by_id[&plain]["reactions"], json!({emoji: [name]}), "{how}");
        assert_eq!(
            by_id[&edited]["text"],
            later.as_str(),
            "{how}: {}",
            by_id[&edited]
        );
        assert!(
            by_id[&edited]["edited"].is_u64(),
            "{how}: {}",
            by_id[&edited]
        );
        assert_eq!(by_id[&bare]["text"], "reacted, then not", "{how}");
        assert!(
            by_id[&bare].get("reactions").is_none(),
            "{how}: {}",
            by_id[&bare]
        );
    };
    let (mut reader, _) = Client::welcomed(&server.ws_url("?user=reader")).await;
    let (_, replayed, _) = reader
        .join(json!({"type":"join","room":"odd","since":0}))
        .await;
    check(&replayed, "replay");
    let page = get(&server.addr, "/rooms/odd/messages?since=0").json();
    check(page["messages"].as_array().unwrap(), "history");
}

#[async_std::test]
async fn any_text_comes_back_as_it_was_sent_in_memory() {
    any_text_comes_back_as_it_was_sent(&Server::start(&FAST)).await;
}

#[async_std::test]
async fn any_text_comes_back_as_it_was_sent_on_redis() {
    let redis = Redis::start();
    any_text_comes_back_as_it_was_sent(&on_redis(&redis, &FAST)).await;
}
