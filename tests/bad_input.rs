//! Bad input over WebSocket and HTTP: each case gets the right error code,
//! changes nothing, and leaves the connection usable.

mod common;

use async_tungstenite::tungstenite::Message;
use common::{get, http, http_raw, post_json, Client, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Sends `frame` and expects an error with `code` (echoing `ref` when given),
/// then checks that the connection still answers.
async fn refused(client: &mut Client, frame: &str, code: &str, reference: Option<&str>) {
    client.send_text(frame).await;
    let error = client.recv().await;
    assert_eq!(error["type"], "error", "{frame} -> {error}");
    assert_eq!(error["code"], code, "{frame} -> {error}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    match reference {
        Some(r) => assert_eq!(error["ref"], r, "{frame} -> {error}"),
        None => assert!(error.get("ref").is_none(), "{frame} -> {error}"),
    }
    let answer = client
        .request(json!({"type":"history","room":"probe","ref":"still-usable"}))
        .await;
    assert_eq!(
        answer["type"], "history",
        "the connection is still usable after {frame}"
    );
}

#[async_std::test]
async fn every_bad_frame_gets_its_error_code() {
    let server = Server::start(&[]);
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let long_text = "x".repeat(4097);
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (r#"{"type":"send""#.into(), "bad_request", None),
        (
            r#"{"type":"shout","ref":"r1"}"#.into(),
            "bad_request",
            Some("r1"),
        ),
        (r#"{"room":"general"}"#.into(), "bad_request", None),
        (
            r#"{"type":"join","ref":"r2"}"#.into(),
            "bad_request",
            Some("r2"),
        ),
        (r#"{"type":"join","room":42}"#.into(), "bad_request", None),
        (
            r#"{"type":"join","room":"general","since":"seven"}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"join","room":"general","since":-3}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"join","room":"general","histroy":3}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"join","room":"no spaces","ref":"r3"}"#.into(),
            "invalid_name",
            Some("r3"),
        ),
        (
            format!(r#"{{"type":"join","room":"{}"}}"#, "a".repeat(65)),
            "invalid_name",
            None,
        ),
        (
            r#"{"type":"send","room":"general"}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"send","room":"general","text":" \n "}"#.into(),
            "bad_request",
            None,
        ),
        (
            format!(r#"{{"type":"send","room":"general","text":"{long_text}","ref":"r4"}}"#),
            "too_large",
            Some("r4"),
        ),
        (
            r#"{"type":"send","room":"general","text":"hi","ref":""}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"leave","room":"general","ref":"r5"}"#.into(),
            "not_joined",
            Some("r5"),
        ),
        (
            r#"{"type":"history","room":"general","limit":0}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"history","room":"general","limit":1001}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"history","room":"general","before":1e400}"#.into(),
            "bad_request",
            None,
        ),
        (
            r#"{"type":"typing","room":"general","ref":"t"}"#.into(),
            "not_joined",
            Some("t"),
        ),
        (
            format!(r#"{{"type":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000)),
            "bad_request",
            None,
        ),
        ("plain text without a room".into(), "bad_request", None),
    ];
    for (frame, code, reference) in &cases {
        refused(&mut c, frame, code, *reference).await;
    }
    // None of it stored anything.
    let page = get(&server.addr, "/rooms/general/messages");
    assert_eq!(page.json()["messages"], json!([]));

    // Binary frames are refused the same way.
    c.send_raw(Message::binary(vec![1, 2, 3])).await;
    let error = c.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
}

#[async_std::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let server = Server::start(&[]);
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let huge = format!(
        r#"{{"type":"send","room":"r","text":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    c.send_text(&huge).await;
    assert_eq!(c.closed().await, 1009);
}

#[async_std::test]
async fn bad_query_parameters_are_refused_before_the_upgrade() {
    let server = Server::start(&[]);
    for (query, code) in [
        ("?user=a%07b", "invalid_name"),
        ("?user=%20%20", "invalid_name"),
        ("?room=bad%20room", "invalid_name"),
        ("?room=r&since=soon", "bad_request"),
        ("?since=4", "bad_request"),
        ("?room=r&epoch=abc", "bad_request"),
        ("?user=%FF", "bad_request"),
    ] {
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let response = http_raw(&server.addr, request.as_bytes());
        assert_eq!(response.status, 400, "{query}: {response:?}");
        assert_eq!(response.error_code(), code, "{query}");
    }
    // A plain GET on /ws says how to connect.
    let response = get(&server.addr, "/ws");
    assert_eq!(response.status, 426);
    assert_eq!(response.error_code(), "bad_request");
}

#[async_std::test]
async fn sends_over_the_rate_are_refused_and_the_connection_stays() {
    let server = Server::start(&["--rate", "1", "--burst", "5"]);
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let answer = c
            .request(json!({"type":"send","room":"r","text":"hi","ref":format!("s{i}")}))
            .await;
        codes.push(
            answer["code"]
                .as_str()
                .unwrap_or(answer["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    assert_eq!(&codes[..5], ["ack", "ack", "ack", "ack", "ack"]);
    assert_eq!(
        &codes[5..],
        ["rate_limited", "rate_limited", "rate_limited"]
    );
    let stored = get(&server.addr, "/rooms/r/messages").json();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 5);
}

#[async_std::test]
async fn joins_beyond_the_room_limit_are_refused() {
    let server = Server::start(&["--max-rooms", "2"]);
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    c.join(json!({"type":"join","room":"a"})).await;
    c.join(json!({"type":"join","room":"b"})).await;
    refused(
        &mut c,
        r#"{"type":"join","room":"c","ref":"third"}"#,
        "bad_request",
        Some("third"),
    )
    .await;
    // Joining a joined room again is fine, and leaving makes room.
    c.join(json!({"type":"join","room":"a"})).await;
    c.send(json!({"type":"leave","room":"b"})).await;
    assert_eq!(c.recv().await["type"], "left");
    c.join(json!({"type":"join","room":"c"})).await;
}

#[async_std::test]
async fn repeated_abuse_closes_with_1008() {
    let server = Server::start(&[]);
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=alice")).await;
    for _ in 0..400 {
        c.send_text("{not json").await;
    }
    assert_eq!(c.closed().await, 1008);
}

#[async_std::test]
async fn a_flood_of_pings_closes_with_1008_and_others_are_served_meanwhile() {
    let server = Server::start(&[]);
    let mut flooders = Vec::new();
    for n in 0..2 {
        let (client, _) = Client::welcomed(&server.ws_url(&format!("?user=pinger{n}"))).await;
        let (mut sink, stream) = client.into_inner().split();
        let flood = async_std::task::spawn(async move {
            while sink.send(Message::Ping(Vec::new().into())).await.is_ok() {}
        });
        flooders.push((flood, stream));
    }
    // While they flood, a member and a reader over HTTP are served.
    let (mut other, _) = Client::welcomed(&server.ws_url("?user=calm")).await;
    other
        .join(json!({"type":"join","room":"calm","history":0}))
        .await;
    other.say("calm", "still here").await;
    assert_eq!(get(&server.addr, "/healthz").status, 200);
    for (flood, mut stream) in flooders {
        let code = loop {
            match async_std::future::timeout(common::WAIT, stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("the flooder was not closed: {other:?}"),
            }
        };
        assert_eq!(code, Some(1008));
        drop(stream);
        flood.await;
    }
}

fn error_of(response: &common::Response) -> (u16, String) {
    (response.status, response.error_code())
}

#[async_std::test]
async fn bad_http_requests_get_the_status_that_fits() {
    let server = Server::start(&["--max-body", "8192"]);
    let a = &server.addr;
    let p = "/rooms/general/messages";
    assert_eq!(error_of(&get(a, "/nowhere")), (404, "not_found".into()));
    let delete = http(a, "DELETE", "/healthz", None, b"");
    assert_eq!(error_of(&delete), (405, "method_not_allowed".into()));
    assert_eq!(delete.header("allow"), Some("GET"));
    assert_eq!(
        error_of(&http(a, "PUT", p, None, b"")),
        (405, "method_not_allowed".into())
    );
    assert_eq!(
        error_of(&post_json(
            a,
            "/rooms/bad%20room/messages",
            &json!({"user":"u","text":"t"})
        )),
        (400, "invalid_name".into())
    );
    assert_eq!(
        error_of(&http(a, "POST", p, Some("application/json"), b"{\"user\":")),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&post_json(a, p, &json!({"user":"u"}))),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&post_json(
            a,
            p,
            &json!({"user":"u","text":"t","colour":"red"})
        )),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&post_json(a, p, &json!({"user":"a\u{1}b","text":"t"}))),
        (400, "invalid_name".into())
    );
    assert_eq!(
        error_of(&post_json(a, p, &json!({"text":"who am i"}))),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&post_json(
            a,
            p,
            &json!({"user":"u","text":"x".repeat(4097)})
        )),
        (413, "too_large".into())
    );
    assert_eq!(
        error_of(&post_json(
            a,
            p,
            &json!({"user":"u","text":"t","ref":"\u{e9}"})
        )),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&http(
            a,
            "POST",
            &format!("{p}?user=u"),
            Some("text/plain"),
            b"caf\xe9"
        )),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_of(&http(
            a,
            "POST",
            &format!("{p}?user=u"),
            Some("text/plain"),
            &[b'x'; 9000]
        )),
        (413, "too_large".into())
    );
    assert_eq!(
        error_of(&http(
            a,
            "POST",
            &format!("{p}?user=u"),
            Some("image/png"),
            b"x"
        )),
        (400, "bad_request".into())
    );
    for query in [
        "limit=0",
        "limit=1001",
        "limit=99999999999999999999999",
        "since=-1",
        "since=1&before=4",
        "before=x",
        "epoch=e",
    ] {
        assert_eq!(
            error_of(&get(a, &format!("{p}?{query}"))),
            (400, "bad_request".into()),
            "{query}"
        );
    }
    // Nothing was stored by any of it.
    let stored: Value = get(a, p).json();
    assert_eq!(stored["messages"], json!([]));
    // A request head that never ends is cut off rather than kept forever.
    let huge_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    let response = http_raw(a, huge_head.as_bytes());
    assert_eq!(response.status, 431);
}

#[async_std::test]
async fn connections_beyond_the_limit_are_refused_before_the_upgrade() {
    let server = Server::start(&["--max-connections", "2"]);
    let (_a, _) = Client::welcomed(&server.ws_url("?user=a")).await;
    let (_b, _) = Client::welcomed(&server.ws_url("?user=b")).await;
    let refused = Client::try_connect(&server.ws_url("?user=c")).await;
    match refused {
        Err(async_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!(
            "expected a 503 answer, got {:?}",
            other.map(|_| "a connection")
        ),
    }
    drop(_a);
    // Once one leaves, a new one gets in.
    let deadline = std::time::Instant::now() + common::WAIT;
    while Client::try_connect(&server.ws_url("?user=d"))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a connection left"
        );
        async_std::task::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[async_std::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    let server = Server::start(&["--header-timeout-ms", "300"]);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut answer = Vec::new();
    // The server gives up on the request and closes the connection; reading
    // to the end returns instead of waiting for the client's next byte.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Meanwhile the server still serves everyone else.
    assert_eq!(get(&server.addr, "/healthz").status, 200);
}

/// Bounds at the edges of the id range, on both stores: `before` 0 is a
/// client's mistake (400), `before` 1 and a `since` past every id are
/// questions with empty answers (200), and none of them looks like a Redis
/// failure (no 503, no Redis error counted, which would trip an alert).
#[async_std::test]
async fn bounds_at_the_edges_are_answered_never_taken_for_redis_failures() {
    let redis = common::Redis::start();
    let memory = Server::start(&[]);
    let on_redis = Server::start(&["--redis", &redis.url()]);
    for server in [&memory, &on_redis] {
        let a = &server.addr;
        assert_eq!(
            post_json(a, "/rooms/edge/messages", &json!({"user":"u","text":"one"})).status,
            201
        );
        let p = "/rooms/edge/messages";
        let before_zero = get(a, &format!("{p}?before=0"));
        assert_eq!(before_zero.status, 400, "{}", before_zero.body);
        assert_eq!(before_zero.error_code(), "bad_request");
        for query in ["before=1", "since=18446744073709551615", "since=1"] {
            let page = get(a, &format!("{p}?{query}"));
            assert_eq!(page.status, 200, "{query}: {}", page.body);
            assert_eq!(page.json()["messages"], json!([]), "{query}");
        }
        let (mut c, _) = Client::welcomed(&server.ws_url("")).await;
        refused(
            &mut c,
            r#"{"type":"history","room":"edge","before":0,"ref":"b0"}"#,
            "bad_request",
            Some("b0"),
        )
        .await;
        let (joined, replayed, _) = c
            .join(json!({"type":"join","room":"edge","since":u64::MAX}))
            .await;
        assert_eq!(joined["head"], 1, "{joined}");
        assert!(replayed.is_empty(), "{replayed:?}");
        assert_eq!(common::metric(a, "parlor_redis_errors_total"), 0.0);
    }
}

#[async_std::test]
async fn a_body_that_trickles_is_cut_off_and_stores_nothing() {
    let server = Server::start(&["--header-timeout-ms", "300"]);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(
            b"POST /rooms/slow/messages?user=u HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 10\r\nConnection: close\r\n\r\nhel",
        )
        .unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    let stored: Value = get(&server.addr, "/rooms/slow/messages").json();
    assert_eq!(stored["messages"], json!([]));
}

/// HTTP connections count against --max-connections too: one over it is
/// answered 503 with the error body, and served again once others close.
#[async_std::test]
async fn http_connections_beyond_the_limit_are_turned_away() {
    let server = Server::start(&["--max-connections", "3"]);
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    // The server has accepted them once a fourth is turned away.
    let deadline = std::time::Instant::now() + common::WAIT;
    let turned_away = loop {
        let response = get(&server.addr, "/healthz");
        if response.status == 503 {
            break response;
        }
        assert!(std::time::Instant::now() < deadline, "never turned away");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(turned_away.error_code(), "unavailable");
    assert_eq!(turned_away.header("retry-after"), Some("1"));
    drop(idle);
    let deadline = std::time::Instant::now() + common::WAIT;
    while get(&server.addr, "/healthz").status != 200 {
        assert!(std::time::Instant::now() < deadline, "never served again");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// HTTP reads are budgeted per client address: a burst of four times
/// `--http-read-rate`, then 429 with Retry-After. Behind a trusted proxy
/// (loopback by default) the client is the one `X-Forwarded-For` names.
#[async_std::test]
async fn http_reads_beyond_a_clients_budget_are_refused_with_429() {
    let server = Server::start(&["--http-read-rate", "5"]);
    let a = &server.addr;
    let path = "/rooms/busy/messages";
    let statuses: Vec<u16> = (0..30).map(|_| get(a, path).status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    let refused = get(a, path);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let forwarded = http_raw(
        a,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(forwarded.status, 200, "another client behind the proxy");
    let posted = post_json(a, path, &json!({"user":"u","text":"sends are not reads"}));
    assert_eq!(posted.status, 201);
}
