//! README's memory formula against many hostile clients at once: it starts
//! a parlor (release build) with the given `--outbox-bytes` and
//! `--max-frame`, fills a room with 300 messages of 24 KB of JSON, then
//! opens `--clients` WebSockets that never read a byte: half ask for 40
//! pages of that history, half send all but the last byte of a frame of the
//! largest size. Once parlor's
//! memory has settled it compares the growth of its resident memory (and
//! its peak) with `C × (2 × O + F)`, and exits 1 when it is over.
//! `make bench-hostile` runs it with 19,000 clients, the most that fit
//! under this machine's limit of 20,000 open files per process.
//!
//! ```text
//! cargo run --release --example hostile -- --clients 19000
//! ```
//! Needs `ulimit -n` above twice the clients (parlor is started with the
//! limit this process has).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_std::net::TcpStream;
use async_std::task;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use futures_util::SinkExt;

#[path = "common/procfs.rs"]
mod procfs;
use procfs::status_kib;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Many clients that read nothing, against README's memory formula.
#[derive(FromArgs)]
struct Args {
    /// hostile clients at once (19,000: parlor holds one descriptor per
    /// client under a hard limit of 20,000 here)
    #[argh(option, default = "19000")]
    clients: u64,
    /// parlor's --outbox-bytes (O)
    #[argh(option, default = "65536")]
    outbox_bytes: u64,
    /// parlor's --max-frame (F)
    #[argh(option, default = "65536")]
    max_frame: u64,
    /// the parlor binary
    #[argh(option, default = "String::from(\"./target/release/parlor\")")]
    parlor: String,
    /// the port parlor listens on
    #[argh(option, default = "19900")]
    port: u16,
}

/// Source addresses the clients spread over (127.0.0.1 to 127.0.0.8), so
/// that no one address runs out of ephemeral ports.
const SPREAD: u64 = 8;

fn main() -> Result<()> {
    let args: Args = argh::from_env();
    let mut parlor = start(&args)?;
    let result = task::block_on(measure(&args, parlor.id()));
    let _ = parlor.kill();
    let _ = parlor.wait();
    let over = result?;
    std::process::exit(i32::from(over));
}

fn start(args: &Args) -> Result<Child> {
    let limit = args.clients + 100;
    let child = Command::new(&args.parlor)
        .args(["--port", &args.port.to_string()])
        .args(["--outbox-bytes", &args.outbox_bytes.to_string()])
        .args(["--max-frame", &args.max_frame.to_string()])
        .args(["--max-connections", &limit.to_string()])
        // Long enough that nobody is let go for not reading while measured.
        .args(["--ping-interval-ms", "600000", "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", args.port)).is_err() {
        if Instant::now() > deadline {
            return Err("parlor did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Fills, attacks, and says whether memory went over the formula.
async fn measure(args: &Args, pid: u32) -> Result<bool> {
    for _ in 0..300 {
        post(args.port, "big", &"\u{1}".repeat(4000))?;
    }
    let before = status_kib(pid, "VmRSS:")?;
    let start = Instant::now();
    let mut held = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        held.push(hostile(args, i).await?);
    }
    let opened = start.elapsed();
    let settled = settle(pid).await?;
    let peak = status_kib(pid, "VmHWM:")?;
    let per_client = 2 * args.outbox_bytes + args.max_frame;
    let formula = args.clients * per_client;
    let grown = settled.saturating_sub(before) * 1024;
    let peak_grown = peak.saturating_sub(before) * 1024;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    println!(
        "{} hostile clients opened in {:.1} s (O = {} KiB, F = {} KiB): parlor's RSS {:.1} MiB before, grew by {:.1} MiB (peak: by {:.1} MiB); the formula C × (2 × O + F) allows {:.1} MiB ({:.1} KiB per client), measured {:.1} KiB per client",
        args.clients,
        opened.as_secs_f64(),
        args.outbox_bytes / 1024,
        args.max_frame / 1024,
        mib(before * 1024),
        mib(grown),
        mib(peak_grown),
        mib(formula),
        per_client as f64 / 1024.0,
        peak_grown as f64 / args.clients as f64 / 1024.0,
    );
    drop(held);
    let over = peak_grown > formula;
    if over {
        eprintln!("over the formula");
    }
    Ok(over)
}

/// One client. Half of them ask for 40 pages of history and read none (what
/// waits for them is their outbox, O, and what their writer has in hand);
/// the other half send all but the last byte of a frame of the largest size
/// (what parlor holds of a frame being read, F).
async fn hostile(args: &Args, i: u64) -> Result<async_tungstenite::WebSocketStream<TcpStream>> {
    let addr = format!("127.0.0.{}:{}", 1 + i % SPREAD, args.port);
    let tcp = TcpStream::from(small_window(&addr)?);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let url = format!("ws://{addr}/ws?user=hostile-{i}");
    let (mut ws, _) = async_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    if i % 2 == 0 {
        let ask = r#"{"type":"history","room":"big","limit":1000}"#;
        for _ in 0..40 {
            ws.feed(Message::text(ask)).await?;
        }
        ws.flush().await?;
    } else {
        unfinished_frame(ws.get_mut(), args.max_frame as usize).await?;
    }
    Ok(ws)
}

/// Writes the header of a masked text frame of `len` bytes and all of its
/// payload but the last byte.
async fn unfinished_frame(tcp: &mut TcpStream, len: usize) -> Result<()> {
    use futures_lite::AsyncWriteExt;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + len - 1, b' ');
    tcp.write_all(&frame).await?;
    Ok(())
}

/// A connected socket with a receive buffer of 4 KiB: what parlor cannot
/// write waits in parlor, not in the kernel, whose memory for TCP (about
/// 2 GiB here) 19,000 connections with the default buffers would fill.
fn small_window(addr: &str) -> Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = addr.parse()?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_recv_buffer_size(4096)?;
    socket.connect(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Parlor's resident memory once it has not grown for three seconds (at
/// most a minute).
async fn settle(pid: u32) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = status_kib(pid, "VmRSS:")?;
    let mut steady = Instant::now();
    while Instant::now() < deadline && steady.elapsed() < Duration::from_secs(3) {
        task::sleep(Duration::from_millis(250)).await;
        let now = status_kib(pid, "VmRSS:")?;
        if now > last {
            steady = Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// Posts one message over HTTP.
fn post(port: u16, room: &str, text: &str) -> Result<()> {
    let body = serde_json::json!({"user": "bot", "text": text}).to_string();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        socket,
        "POST /rooms/{room}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 201") {
        return Err(format!("the fill was refused: {answer}").into());
    }
    Ok(())
}
