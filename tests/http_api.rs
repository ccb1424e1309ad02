//! The HTTP API: posting and reading messages, health, readiness, metrics and
//! the page, and how HTTP and WebSocket see the same rooms.

mod common;

use common::{get, http, post_json, Client, Server};
use serde_json::json;

#[async_std::test]
async fn posted_messages_reach_websocket_members_and_history() {
    let server = Server::start(&[]);
    let a = &server.addr;
    let (mut alice, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    alice.join(json!({"type":"join","room":"general"})).await;

    let created = post_json(
        a,
        "/rooms/general/messages",
        &json!({"user":"bot","text":"hi","ref":"r1"}),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let body = created.json();
    assert_eq!(
        (body["room"].as_str(), body["id"].as_u64()),
        (Some("general"), Some(1))
    );
    assert!(body["ts"].as_u64().is_some());
    let live = alice.recv().await;
    assert_eq!(
        (
            live["user"].as_str(),
            live["text"].as_str(),
            live["id"].as_u64()
        ),
        (Some("bot"), Some("hi"), Some(1))
    );

    // The same ref again is the same message.
    let again = post_json(
        a,
        "/rooms/general/messages",
        &json!({"user":"bot","text":"hi","ref":"r1"}),
    );
    assert_eq!((again.status, again.json()["id"].as_u64()), (201, Some(1)));

    // Plain text with the user in the query, as `curl -d 'hello' …?user=bot` sends it.
    let plain = http(
        a,
        "POST",
        "/rooms/general/messages?user=bot",
        Some("application/x-www-form-urlencoded"),
        b"hello",
    );
    assert_eq!((plain.status, plain.json()["id"].as_u64()), (201, Some(2)));
    let plain = http(
        a,
        "POST",
        "/rooms/general/messages?user=Zo%C3%AB",
        Some("text/plain; charset=utf-8"),
        "  spaced  ".as_bytes(),
    );
    assert_eq!(plain.status, 201);
    let live: Vec<_> = [alice.recv().await, alice.recv().await].to_vec();
    assert_eq!(live[0]["text"], "hello");
    assert_eq!(
        (live[1]["user"].as_str(), live[1]["text"].as_str()),
        (Some("Zoë"), Some("  spaced  "))
    );

    // Reading: the same objects as the WebSocket frames.
    let read = get(a, "/rooms/general/messages?since=1&limit=1");
    assert_eq!(read.status, 200);
    assert_eq!(read.header("content-type"), Some("application/json"));
    let body = read.json();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["messages"][0], live[0]);
    assert_eq!(
        (body["more"].as_bool(), body["truncated"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(body["epoch"].as_str().is_some_and(|e| !e.is_empty()));
}

#[async_std::test]
async fn reading_pages_forward_and_back() {
    let server = Server::start(&["--history", "10"]);
    let a = &server.addr;
    for i in 1..=15 {
        let r = post_json(
            a,
            "/rooms/r/messages",
            &json!({"user":"u","text":format!("m{i}")}),
        );
        assert_eq!(r.json()["id"], i);
    }
    let ids = |path: &str| -> (Vec<u64>, bool, bool, String) {
        let body = get(a, path).json();
        (
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_u64().unwrap())
                .collect(),
            body["more"].as_bool().unwrap(),
            body["truncated"].as_bool().unwrap(),
            body["epoch"].as_str().unwrap().to_owned(),
        )
    };
    let (latest, more, _, epoch) = ids("/rooms/r/messages?limit=3");
    assert_eq!((latest, more), (vec![13, 14, 15], true));
    assert_eq!(ids("/rooms/r/messages?since=12&limit=2").0, vec![13, 14]);
    assert!(ids("/rooms/r/messages?since=12&limit=2").1);
    assert!(!ids("/rooms/r/messages?since=12&limit=3").1);
    // Ids 1..5 left history (10 kept): reading after 2 is truncated.
    let (after2, _, truncated, _) = ids("/rooms/r/messages?since=2&limit=3");
    assert_eq!((after2, truncated), (vec![6, 7, 8], true));
    assert!(!ids("/rooms/r/messages?since=5&limit=3").2);
    // Scrollback.
    let (back, more, truncated, _) = ids("/rooms/r/messages?before=9&limit=2");
    assert_eq!((back, more, truncated), (vec![7, 8], true, false));
    assert_eq!(
        ids("/rooms/r/messages?before=8&limit=5"),
        (vec![6, 7], false, false, epoch.clone())
    );
    // Another epoch's since: from the start of this one, truncated.
    let (fresh, _, truncated, _) = ids("/rooms/r/messages?since=14&epoch=gone&limit=2");
    assert_eq!((fresh, truncated), (vec![6, 7], true));
    assert_eq!(
        ids(&format!("/rooms/r/messages?since=14&epoch={epoch}")).0,
        vec![15]
    );
    // An empty room reads as empty, with an epoch.
    let (none, more, truncated, _) = ids("/rooms/empty/messages");
    assert_eq!((none.len(), more, truncated), (0, false, false));
}

#[async_std::test]
async fn health_readiness_metrics_and_page() {
    let server = Server::start(&[]);
    let a = &server.addr;
    let health = get(a, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(a, "/readyz").status, 200);
    post_json(
        a,
        "/rooms/m/messages",
        &json!({"user":"u","text":"counted"}),
    );
    post_json(a, "/rooms/m/messages", &json!({"user":"u","text":""}));
    let metrics = get(a, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        metrics
            .body
            .contains("# TYPE parlor_messages_accepted_total counter"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("parlor_messages_accepted_total 1\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains(r#"parlor_requests_refused_total{code="bad_request"} 1"#),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("parlor_publish_seconds_bucket"),
        "{}",
        metrics.body
    );
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.header("content-security-policy").is_some());
    assert!(page.body.contains("<html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // An unchanged page costs a 304.
    let etag = page.header("etag").unwrap().to_owned();
    let again = common::http_raw(
        a,
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(again.status, 304);
    let script = get(a, "/app.js");
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.body.contains("textContent"));
    assert_eq!(
        get(a, "/app.css").header("content-type"),
        Some("text/css; charset=utf-8")
    );
}

/// With --admin-bind, readiness and metrics leave the public listener for
/// the admin one; both answer health checks.
#[async_std::test]
async fn an_admin_address_takes_readiness_and_metrics_off_the_public_one() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start(&["--admin-bind", &admin]);
    let public = &server.addr;
    assert_eq!(get(public, "/healthz").status, 200);
    for path in ["/metrics", "/readyz"] {
        let moved = get(public, path);
        assert_eq!(moved.status, 404, "{path}");
        assert!(moved.body.contains("--admin-bind"), "{}", moved.body);
    }
    assert_eq!(get(&admin, "/healthz").status, 200);
    assert_eq!(get(&admin, "/readyz").status, 200);
    let metrics = get(&admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("parlor_connections"),
        "{}",
        metrics.body
    );
    assert_eq!(
        get(&admin, "/rooms/x/messages").status,
        404,
        "no rooms on the admin address"
    );
    assert_eq!(
        post_json(
            public,
            "/rooms/x/messages",
            &json!({"user":"u","text":"hi"})
        )
        .status,
        201
    );
}

/// Reads of rooms nobody used leave nothing behind in Redis: a stranger's
/// curiosity must not cost memory for ever.
#[async_std::test]
async fn reads_of_rooms_nobody_used_create_no_keys() {
    let redis = common::Redis::start();
    let server = common::on_redis(&redis, &[]);
    let before = redis.cli(&["DBSIZE"]);
    for i in 0..200 {
        assert_eq!(
            get(&server.addr, &format!("/rooms/ghost-{i}/messages")).status,
            200
        );
        assert_eq!(
            get(&server.addr, &format!("/rooms/ghost-{i}/read")).status,
            200
        );
        assert_eq!(
            get(&server.addr, &format!("/rooms/ghost-{i}/presence")).status,
            200
        );
    }
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        before,
        "{}",
        redis.cli(&["KEYS", "*"])
    );
}

/// A room nobody changed for `--retention` is forgotten on both stores: its
/// history is gone and its next use starts a new epoch (in Redis, its keys
/// have expired).
#[async_std::test]
async fn a_room_idle_past_its_retention_is_forgotten_on_both_stores() {
    let redis = common::Redis::start();
    let on_redis = common::on_redis(&redis, &["--retention", "1s"]);
    let in_memory = Server::start(&["--retention", "1s"]);
    for server in [&in_memory, &on_redis] {
        let posted = post_json(
            &server.addr,
            "/rooms/r/messages",
            &json!({"user":"u","text":"hi"}),
        );
        assert_eq!(posted.status, 201, "{}", posted.body);
        let kept = get(&server.addr, "/rooms/r/messages").json();
        assert_eq!(kept["messages"].as_array().unwrap().len(), 1, "{kept}");
        std::thread::sleep(std::time::Duration::from_millis(1_300));
        let gone = get(&server.addr, "/rooms/r/messages").json();
        assert_eq!(gone["messages"], json!([]), "{gone}");
        assert_ne!(
            gone["epoch"], kept["epoch"],
            "a forgotten room has a new epoch"
        );
    }
    assert_eq!(
        redis.cli(&["DBSIZE"]).trim(),
        "0",
        "{}",
        redis.cli(&["KEYS", "*"])
    );
}
