//! Auth and origins over the real wire: tokens checked before the upgrade and
//! on every HTTP request, the token's user and rooms enforced, a token that
//! expires while connected closing with 1008 (even while its client floods
//! requests), `parlor token`, and
//! `--allowed-origins` for browser pages.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::Message;
use common::{get, http, http_raw, Client, Server, WAIT};
use futures_util::StreamExt;
use serde_json::json;

const SECRET: &str = "correct horse battery staple, twice over";

fn token(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["token", "--secret", SECRET])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A handshake with extra headers; returns the response status and body.
fn handshake(addr: &str, query: &str, headers: &str) -> common::Response {
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    common::Response {
        status,
        headers: Vec::new(),
        body,
    }
}

/// A token with `claims`, signed here (not by parlor) with HS256, or HS512
/// when `alg` says so, and `secret`.
/// (RS256 is signed with HMAC-SHA256 too: the attack of a token that names
/// an asymmetric algorithm but is signed with the shared secret.)
fn signed_with(claims: serde_json::Value, alg: &str, secret: &[u8]) -> String {
    signed_under(json!({"alg":alg,"typ":"JWT"}), claims, secret)
}

/// A token with its own `header`, signed as `signed_with` says.
fn signed_under(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let alg = header["alg"].as_str().unwrap_or_default().to_owned();
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = match alg.as_str() {
        "HS512" => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn signed(claims: serde_json::Value, alg: &str) -> String {
    signed_with(claims, alg, SECRET.as_bytes())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[async_std::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = Server::start(&["--secret", SECRET]);
    let expired = signed(json!({"sub":"alice","exp":now() - 60}), "HS256");
    let hs512 = signed(json!({"sub":"alice","exp":now() + 60}), "HS512");
    let rs256 = signed(json!({"sub":"alice","exp":now() + 60}), "RS256");
    let no_exp = signed(json!({"sub":"alice"}), "HS256");
    let crit = signed_under(
        json!({"alg":"HS256","crit":["exp"]}),
        json!({"sub":"alice","exp":now() + 60}),
        SECRET.as_bytes(),
    );
    // {"alg":"none"} with a valid-looking payload and no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let other_secret = signed_with(
        json!({"sub":"alice","exp":now() + 60}),
        "HS256",
        b"another secret",
    );
    let not_yet = signed(
        json!({"sub":"alice","exp":now() + 7200,"nbf":now() + 3600}),
        "HS256",
    );
    let padded = signed(json!({"sub":"  alice\u{a0}","exp":now() + 60}), "HS256");
    let override_ = signed(
        json!({"sub":"alice\u{202e}nimda","exp":now() + 60}),
        "HS256",
    );
    for (what, query) in [
        ("no token", "?user=alice&room=general".to_owned()),
        ("garbage", "?token=garbage".to_owned()),
        ("expired", format!("?token={expired}")),
        ("HS512", format!("?token={hs512}")),
        ("no exp", format!("?token={no_exp}")),
        ("RS256 with the secret", format!("?token={rs256}")),
        ("a crit header", format!("?token={crit}")),
        ("alg none", format!("?token={none}")),
        ("another secret", format!("?token={other_secret}")),
        ("nbf an hour away", format!("?token={not_yet}")),
        ("a sub to trim", format!("?token={padded}")),
        (
            "a sub with a right-to-left override",
            format!("?token={override_}"),
        ),
    ] {
        let response = handshake(&server.addr, &query, "");
        assert_eq!(response.status, 401, "{what}: {}", response.body);
        assert!(
            response.body.contains("\"unauthorized\""),
            "{what}: {}",
            response.body
        );
    }
    // Nothing reached a room.
    let good = token(&["--sub", "reader"]);
    let read = http_raw(
        &server.addr,
        format!("GET /rooms/general/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {good}\r\n\r\n").as_bytes(),
    );
    assert_eq!(read.json()["messages"], json!([]));
}

#[async_std::test]
async fn the_token_decides_the_user_and_the_rooms() {
    let server = Server::start(&["--secret", SECRET]);
    let alice = token(&["--sub", "alice", "--rooms", "team-*,lobby", "--ttl", "1h"]);
    let (mut c, welcome) =
        Client::welcomed(&server.ws_url(&format!("?token={alice}&user=mallory"))).await;
    assert_eq!(welcome["user"], "alice", "the token's sub, not ?user=");
    c.join(json!({"type":"join","room":"team-red"})).await;
    c.join(json!({"type":"join","room":"lobby"})).await;
    for frame in [
        json!({"type":"join","room":"secret","ref":"j"}),
        json!({"type":"send","room":"secret","text":"hi","ref":"s"}),
        json!({"type":"history","room":"lobby2","ref":"h"}),
    ] {
        let answer = c.request(frame.clone()).await;
        assert_eq!(answer["code"], "forbidden", "{frame} -> {answer}");
    }
    assert_eq!(c.say("team-red", "allowed").await, 1);
    let m = c.recv().await;
    assert_eq!(
        (m["user"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("allowed"))
    );
    // A forbidden ?room= is refused before the upgrade.
    let refused = handshake(&server.addr, &format!("?token={alice}&room=secret"), "");
    assert_eq!(refused.status, 403);
    // "rooms": null, as an issuer's empty list may come out, is no room.
    let none = signed(
        json!({"sub":"nobody","exp":now() + 60,"rooms":null}),
        "HS256",
    );
    let (mut c, _) = Client::welcomed(&server.ws_url(&format!("?token={none}"))).await;
    let answer = c
        .request(json!({"type":"join","room":"lobby","ref":"j"}))
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    // Header fields parlor does not use (a key id, a key URL) change nothing.
    let keyed = signed_under(
        json!({"alg":"HS256","kid":"other","jku":"https://evil.example/keys"}),
        json!({"sub":"carol","exp":now() + 60,"rooms":["lobby"]}),
        SECRET.as_bytes(),
    );
    let (mut c, welcome) = Client::welcomed(&server.ws_url(&format!("?token={keyed}"))).await;
    assert_eq!(welcome["user"], "carol");
    c.join(json!({"type":"join","room":"lobby"})).await;
}

#[async_std::test]
async fn http_requests_need_a_bearer_token() {
    let server = Server::start(&["--secret", SECRET]);
    let a = &server.addr;
    let bot = token(&["--sub", "bot", "--rooms", "news"]);
    let post = |path: &str, auth: Option<&str>| {
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let body = r#"{"user":"someone else","text":"hi"}"#;
        http_raw(
            a,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let missing = post("/rooms/news/messages", None);
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (401, "unauthorized")
    );
    let forbidden = post("/rooms/sports/messages", Some(&bot));
    assert_eq!(
        (forbidden.status, forbidden.error_code().as_str()),
        (403, "forbidden")
    );
    let created = post("/rooms/news/messages", Some(&bot));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(get(a, "/rooms/news/messages").status, 401);
    let read = http_raw(
        a,
        format!("GET /rooms/news/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {bot}\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        read.json()["messages"][0]["user"],
        "bot",
        "the token's user, not the body's"
    );
    let plain = http(
        a,
        "POST",
        "/rooms/news/messages?user=x",
        Some("text/plain"),
        b"hi",
    );
    assert_eq!(plain.status, 401);
}

#[async_std::test]
async fn a_token_that_expires_while_connected_closes_with_1008() {
    let server = Server::start(&["--secret", SECRET]);
    let short = token(&["--sub", "brief", "--ttl", "2s"]);
    let (mut c, _) = Client::welcomed(&server.ws_url(&format!("?token={short}"))).await;
    assert_eq!(c.closed().await, 1008);
}

#[async_std::test]
async fn a_token_expires_even_while_its_client_floods_requests() {
    let server = Server::start(&["--secret", SECRET]);
    let short = token(&["--sub", "flood", "--ttl", "2s"]);
    let (mut client, _) = Client::welcomed(&server.ws_url(&format!("?token={short}"))).await;
    client
        .join(json!({"type":"join","room":"lobby","history":0}))
        .await;
    let (mut sink, mut stream) = client.into_inner().split();
    // Frames as fast as the socket takes them, so one is always ready to be
    // read, until the server closes the connection. Typing beyond its rate
    // is answered `rate_limited`, which is no misbehaviour that would close
    // the connection by itself.
    let flood = async_std::task::spawn(async move {
        let typing = json!({"type":"typing","room":"lobby"}).to_string();
        let mut sent = 0u64;
        while sink.send(Message::text(typing.clone())).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let deadline = Instant::now() + Duration::from_secs(2) + WAIT;
    let code = loop {
        assert!(
            Instant::now() < deadline,
            "still open long after the token expired"
        );
        match async_std::future::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    drop(stream);
    assert!(flood.await > 100, "the client did flood");
}

#[async_std::test]
async fn parlor_token_needs_a_secret_and_sane_values() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(args)
            .env_remove("PARLOR_SECRET")
            .output()
            .unwrap()
    };
    let no_secret = run(&["token", "--sub", "alice"]);
    assert_eq!(no_secret.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("--secret"));
    assert_eq!(
        run(&["token", "--secret", "s", "--sub", "alice", "--ttl", "soon"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["token", "--secret", "s", "--sub", "a\u{1}b"])
            .status
            .code(),
        Some(2)
    );
    let from_env = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["token", "--sub", "alice"])
        .env("PARLOR_SECRET", "s")
        .output()
        .unwrap();
    assert!(from_env.status.success());
    assert_eq!(
        String::from_utf8_lossy(&from_env.stdout)
            .matches('.')
            .count(),
        2,
        "a JWT has three parts"
    );
}

#[async_std::test]
async fn pages_from_origins_not_listed_cannot_connect() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://chat.example.com, https://other.example.com/",
    ]);
    let a = &server.addr;
    assert_eq!(
        handshake(a, "", "Origin: https://evil.example.com\r\n").status,
        403
    );
    assert_eq!(
        handshake(a, "", "Origin: https://chat.example.com\r\n").status,
        101
    );
    assert_eq!(
        handshake(a, "", "Origin: https://other.example.com\r\n").status,
        101
    );
    assert_eq!(
        handshake(a, "", &format!("Origin: http://{a}\r\n")).status,
        101,
        "its own page"
    );
    assert_eq!(handshake(a, "", "").status, 101, "not a browser");
}

#[async_std::test]
async fn an_open_server_says_so() {
    let server = Server::start(&[]);
    let deadline = std::time::Instant::now() + common::WAIT;
    while !server.log().contains("parlor is open") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The status of a WebSocket handshake whose other header lines (`Host`
/// among them) are `lines`, bytes as they go on the wire.
fn upgrade_status(addr: &str, lines: &[u8]) -> u16 {
    let head = upgrade_head(addr, lines);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The response head of such a handshake.
fn upgrade_head(addr: &str, lines: &[u8]) -> String {
    let mut request = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        .to_vec();
    request.extend_from_slice(lines);
    request.extend_from_slice(b"\r\n");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    stream.write_all(&request).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

/// A text/plain POST, as an HTML form can make one, with extra `lines`.
fn form_post(addr: &str, room: &str, lines: &str) -> common::Response {
    let body = "forged";
    common::http_raw(
        addr,
        format!(
            "POST /rooms/{room}/messages?user=ceo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n{lines}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[async_std::test]
async fn origins_are_decided_by_configuration_never_by_the_host_header() {
    let server = Server::start(&["--allowed-origins", "https://good.example"]);
    let a = &server.addr;
    // DNS rebinding: the attacker's page names its own host in both headers.
    let rebound = b"Host: evil.example:9402\r\nOrigin: http://evil.example:9402\r\n";
    assert_eq!(upgrade_status(a, rebound), 403);
    // An Origin that is not ASCII is foreign, not absent.
    let mut odd = format!("Host: {a}\r\nOrigin: https://g").into_bytes();
    odd.extend_from_slice(b"\xf6\xf6d.example\r\n");
    assert_eq!(upgrade_status(a, &odd), 403);
    assert_eq!(
        upgrade_status(a, format!("Host: {a}\r\nOrigin: null\r\n").as_bytes()),
        403
    );
    let good = format!("Host: {a}\r\nOrigin: https://good.example\r\n");
    assert_eq!(upgrade_status(a, good.as_bytes()), 101);
    // Changes over HTTP follow the same rule: a forged form post is refused.
    for lines in [
        "Origin: https://evil.example\r\n",
        "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
    ] {
        let forged = form_post(a, "x", lines);
        assert_eq!(forged.status, 403, "{lines:?}: {}", forged.body);
        assert_eq!(forged.error_code(), "forbidden");
    }
    assert_eq!(
        form_post(a, "x", "Origin: https://good.example\r\n").status,
        201
    );
    assert_eq!(form_post(a, "x", "").status, 201, "curl sends no Origin");
    let stored: serde_json::Value = common::get(a, "/rooms/x/messages").json();
    assert_eq!(
        stored["messages"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
}

#[async_std::test]
async fn a_public_url_is_the_only_host_name_and_the_page_origin() {
    let server = Server::start(&["--public-url", "https://chat.example.com"]);
    let a = &server.addr;
    let get_as = |host: &str, path: &str| {
        common::http_raw(
            a,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let rebound = get_as("evil.example:8080", "/rooms/x/messages");
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(
        rebound.body.contains("chat.example.com"),
        "{}",
        rebound.body
    );
    assert_eq!(get_as("chat.example.com", "/rooms/x/messages").status, 200);
    assert_eq!(
        get_as(a, "/rooms/x/messages").status,
        200,
        "an address is no rebinding"
    );
    assert_eq!(
        get_as("evil.example", "/healthz").status,
        200,
        "load balancers' checks"
    );
    let page = b"Host: chat.example.com\r\nOrigin: https://chat.example.com\r\n";
    assert_eq!(upgrade_status(a, page), 101);
    let local = format!("Host: {a}\r\nOrigin: http://{a}\r\n");
    assert_eq!(
        upgrade_status(a, local.as_bytes()),
        403,
        "not the public origin"
    );
}

#[async_std::test]
async fn an_open_server_lets_pages_connect_but_refuses_forged_changes() {
    let server = Server::start(&[]);
    let a = &server.addr;
    let foreign = format!("Host: {a}\r\nOrigin: https://elsewhere.example\r\n");
    assert_eq!(upgrade_status(a, foreign.as_bytes()), 101);
    let forged = form_post(
        a,
        "y",
        "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(
        form_post(a, "y", "Sec-Fetch-Site: same-origin\r\n").status,
        201
    );
}

#[async_std::test]
async fn a_secret_comes_from_a_file_and_a_weak_one_is_named_at_start() {
    let dir = std::env::temp_dir().join(format!("parlor-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let path = file.to_str().unwrap();
    let server = Server::start(&["--secret-file", path]);
    let alice = token(&["--sub", "alice"]);
    let (_c, welcome) = Client::welcomed(&server.ws_url(&format!("?token={alice}"))).await;
    assert_eq!(
        welcome["user"], "alice",
        "the file's secret, without its line break"
    );
    let weak = Server::start(&["--secret", "s3cret"]);
    let deadline = std::time::Instant::now() + common::WAIT;
    while !weak.log().contains("the secret is 6 bytes") {
        assert!(std::time::Instant::now() < deadline, "{}", weak.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!server.log().contains("the secret is"), "{}", server.log());
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(args)
            .env_remove("PARLOR_SECRET")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--secret", "x", "--secret-file", path]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not both"), "{stderr}");
    let (code, stderr) = run(&["--secret-file", "/nonexistent/parlor-secret"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/parlor-secret"),
        "{stderr}"
    );
    let (code, stderr) = run(&["token", "--secret-file", path, "--sub", "bob"]);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A browser's WebSocket cannot send headers: it names the token as a
/// sub-protocol, which keeps it out of URLs. And a deployment may ask for
/// an issuer and an audience.
#[async_std::test]
async fn a_token_may_come_as_a_sub_protocol_and_issuer_and_audience_are_checked() {
    let server = Server::start(&[
        "--secret",
        SECRET,
        "--issuer",
        "https://id.example",
        "--audience",
        "chat",
    ]);
    let a = &server.addr;
    let good = token(&[
        "--sub",
        "alice",
        "--issuer",
        "https://id.example",
        "--audience",
        "chat",
    ]);
    let head = upgrade_head(
        a,
        format!("Host: {a}\r\nSec-WebSocket-Protocol: parlor, parlor.token.{good}\r\n").as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: parlor\r\n"),
        "the server names the protocol it chose: {head}"
    );
    assert_eq!(handshake(a, &format!("?token={good}"), "").status, 101);
    let unnamed = token(&["--sub", "alice"]);
    let wrong = token(&[
        "--sub",
        "alice",
        "--issuer",
        "https://evil.example",
        "--audience",
        "chat",
    ]);
    for bad in [unnamed, wrong] {
        let refused = handshake(a, &format!("?token={bad}"), "");
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.body.contains("--issuer"), "{}", refused.body);
    }
}
