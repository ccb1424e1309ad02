//! The terminal client of `examples/client.rs` as a user runs it: two runs
//! one after the other each store their first line (a ref that repeats
//! across processes would make the second an old message's retry), and
//! its commands edit, react to and delete a message.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, Server};

/// Runs the example client with `lines` on its standard input, waits until
/// the room shows `until` stored events, and returns what it printed.
fn run_client(server: &Server, lines: &[&str], until: u64) -> String {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let client = examples.join("client");
    assert!(
        client.exists(),
        "{} is missing: build the examples (cargo test --all-targets)",
        client.display()
    );
    let mut child = Command::new(client)
        .args([
            "--url",
            &format!("ws://{}", server.addr),
            "--room",
            "ex",
            "--user",
            "alice",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + common::WAIT;
    while head(server) < until {
        assert!(
            Instant::now() < deadline,
            "the room has {} events, not {until}",
            head(server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

fn head(server: &Server) -> u64 {
    let page = get(&server.addr, "/rooms/ex/messages?limit=1").json();
    page["messages"][0]["id"].as_u64().unwrap_or(0)
}

#[test]
fn each_run_of_the_client_stores_its_lines_and_its_commands_work() {
    let server = Server::start(&[]);
    run_client(&server, &["first run"], 1);
    let printed = run_client(
        &server,
        &[
            "second run",
            "/edit 2 second run, fixed",
            "/react 1 👍",
            "/delete 1",
        ],
        5,
    );
    let page = get(&server.addr, "/rooms/ex/messages?since=0").json();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages[1]["text"], "second run, fixed", "{page}");
    assert_eq!(
        (messages[0]["deleted"].as_bool(), &messages[0]["reactions"]),
        (Some(true), &serde_json::json!({"👍":["alice"]}))
    );
    for line in [
        "[1] alice: first run",
        "[3] alice edited [2]: second run, fixed",
        "[4] alice reacted 👍 to [1]",
        "[5] alice deleted [1]",
    ] {
        assert!(printed.contains(line), "{line:?} not in {printed}");
    }
}
