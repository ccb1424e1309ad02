//! Silent faults: the path between an instance and Redis stops carrying
//! bytes without closing anything (a partition, a dropped conntrack entry,
//! a paused VM), made with a proxy that swallows everything and leaves the
//! connections that were open dead for good. The instance notices within
//! seconds, opens fresh connections once the path is back, and every acked
//! message reaches every member once, in order. A slow path (tens of
//! milliseconds each way) keeps order and gap-free joins, with no time
//! limit firing; connections reset at once lose nothing.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{
    http, messages, metric, on_redis, spawn_joiners, spawn_publisher, Client, Redis, Server,
};
use serde_json::json;

const TIMEOUT: &str = "500";

/// Posts `text` (its own ref) until acked, for up to `patience`.
fn post_acked(addr: &str, room: &str, text: &str, patience: Duration) -> Option<u64> {
    common::post_until_acked(addr, room, text, text, patience)
}

async fn member(server: &Server, room: &str) -> Client {
    let (mut c, _) = Client::welcomed(&server.ws_url("?user=member")).await;
    c.join(json!({"type":"join","room":room,"history":0})).await;
    c
}

fn ids(frames: &[serde_json::Value]) -> Vec<u64> {
    frames.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

/// Instance b reaches Redis through the proxy, a directly. While b's path
/// is silent a keeps storing; b's member gets everything, the messages of
/// the silence included, once the path is back.
#[async_std::test]
async fn a_silent_feed_is_noticed_and_nothing_published_meanwhile_is_lost() {
    let redis = Redis::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", redis.port));
    let a = on_redis(&redis, &["--redis-timeout-ms", TIMEOUT]);
    let b = Server::start(&["--redis", &proxy.url(), "--redis-timeout-ms", TIMEOUT]);
    let mut on_b = member(&b, "hush").await;
    let patience = Duration::from_secs(10);
    for i in 1..=20 {
        post_acked(&a.addr, "hush", &format!("m{i}"), patience).unwrap();
    }
    proxy.silence();
    let silent_since = Instant::now();
    for i in 21..=60 {
        post_acked(&a.addr, "hush", &format!("m{i}"), patience).unwrap();
        async_std::task::sleep(Duration::from_millis(50)).await;
    }
    async_std::task::sleep(Duration::from_secs(3).saturating_sub(silent_since.elapsed())).await;
    proxy.speak();
    for i in 61..=80 {
        post_acked(&a.addr, "hush", &format!("m{i}"), patience).unwrap();
    }
    let got = messages(&mut on_b, "hush", 80).await;
    assert_eq!(ids(&got), (1..=80).collect::<Vec<_>>());
    assert!(b.log().contains("the connection is silent"), "{}", b.log());
}

/// Instance a reaches Redis through the proxy. While its path is silent,
/// sends are answered `unavailable`; once the path is back, a fresh command
/// connection carries them again (the old one would hold them until the
/// kernel gives up on it, a quarter of an hour later).
#[async_std::test]
async fn a_silent_command_connection_is_replaced_and_sends_go_through_again() {
    let redis = Redis::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", redis.port));
    let a = Server::start(&["--redis", &proxy.url(), "--redis-timeout-ms", TIMEOUT]);
    let mut on_a = member(&a, "calm").await;
    let patience = Duration::from_secs(10);
    assert_eq!(post_acked(&a.addr, "calm", "before", patience), Some(1));
    proxy.silence();
    async_std::task::sleep(Duration::from_millis(1500)).await;
    let refused = http(
        &a.addr,
        "POST",
        "/rooms/calm/messages?user=writer",
        Some("text/plain"),
        b"while silent",
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    proxy.speak();
    let spoke = Instant::now();
    let id = post_acked(&a.addr, "calm", "after", patience);
    assert!(
        id.is_some(),
        "no send went through in {patience:?} after the path came back"
    );
    let got = messages(&mut on_a, "calm", 2).await;
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["before", "after"],
        "nothing of the silence reached Redis"
    );
    eprintln!(
        "a send went through {:.1} s after the path came back",
        spoke.elapsed().as_secs_f64()
    );
}

/// A slow Redis, 25 ms each way, for instance b: its publisher's pipelined
/// sends are stored in order, joins on b while it publishes miss nothing
/// and repeat nothing, and no time limit fires (no Redis error, no
/// connection taken for silent) at the default `--redis-timeout-ms`.
#[async_std::test]
async fn a_slow_redis_keeps_order_and_gap_free_joins_without_timeouts() {
    let redis = Redis::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", redis.port));
    proxy.delay(Duration::from_millis(25));
    let b = Server::start(&[
        "--redis",
        &proxy.url(),
        "--rate",
        "100000",
        "--burst",
        "100000",
    ]);
    const TOTAL: u64 = 600;
    let started = Instant::now();
    let publisher = spawn_publisher(b.ws_url("?user=publisher"), "slow", TOTAL, 10);
    let url = |n| b.ws_url(&format!("?user=j{n}"));
    let joiners = spawn_joiners(url, "slow", 5, Duration::from_millis(100), 60, TOTAL);
    publisher.await;
    for j in joiners {
        j.await;
    }
    eprintln!(
        "{TOTAL} sends over a 50 ms round trip took {:?}",
        started.elapsed()
    );
    assert_eq!(metric(&b.addr, "parlor_redis_errors_total"), 0.0);
    assert_eq!(
        metric(&b.addr, "parlor_redis_silent_connections_total"),
        0.0
    );
}

/// Every connection of instance b to Redis is reset at once (a middlebox
/// restart): b connects again by itself and its member gets everything a
/// published meanwhile once, in order.
#[async_std::test]
async fn connections_reset_at_once_lose_nothing() {
    let redis = Redis::start();
    let proxy = Proxy::start(&format!("127.0.0.1:{}", redis.port));
    let a = on_redis(&redis, &["--redis-timeout-ms", TIMEOUT]);
    let b = Server::start(&["--redis", &proxy.url(), "--redis-timeout-ms", TIMEOUT]);
    let mut on_b = member(&b, "reset").await;
    let patience = Duration::from_secs(10);
    for i in 1..=40 {
        post_acked(&a.addr, "reset", &format!("m{i}"), patience).unwrap();
        if i % 10 == 0 {
            proxy.reset();
        }
    }
    let got = messages(&mut on_b, "reset", 40).await;
    assert_eq!(ids(&got), (1..=40).collect::<Vec<_>>());
    assert!(metric(&b.addr, "parlor_redis_feed_reconnects_total") >= 1.0);
}
