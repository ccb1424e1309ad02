//! The floor of parlor's benchmark: about the least a server can do for the
//! fanout workload, so that parlor's CPU per delivery has a plain program to
//! be measured against. One thread, one level-triggered epoll, nonblocking
//! sockets, a hand-rolled WebSocket handshake and framing; no storage, no
//! Redis, no history, no limits but a buffer cap.
//!
//! It speaks just enough of parlor's protocol (docs/PROTOCOL.md) for
//! examples/bench.rs's `fanout` scenario to drive it as it drives parlor:
//! `welcome` on connecting, `join` answered by `joined` and `replayed`, `send`
//! answered by `ack`, and each message numbered in its room (ids from 1) and
//! delivered to every member as parlor's `message` frame, its `text` as sent.
//!
//! Each message's frame is encoded once and handed to each member with one
//! write to its socket (`send(2)`, as std's `TcpStream` writes). A member
//! whose socket would not take it all keeps the rest in a buffer of its own,
//! and frames after it queue there, in order, until the socket drains; a
//! member with more than 4 MiB waiting is closed. bench/run.py starts it for
//! `make bench`'s comparison "against the floor":
//!
//! ```text
//! ./target/release/examples/floor --port 19018
//! ```

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{SystemTime, UNIX_EPOCH};

use argh::FromArgs;
use base64::Engine;
use serde_json::Value;
use sha1::{Digest, Sha1};

/// The epoll token of the listening socket; connections have their index.
const LISTENER: u64 = u64::MAX;
/// Most bytes a member may have waiting before it is closed.
const MAX_WAITING: usize = 4 << 20;
/// Most bytes of a handshake request, and of a client frame's payload.
const MAX_REQUEST: usize = 8 * 1024;
const MAX_FRAME: usize = 64 * 1024;
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Serve the floor of parlor's benchmark (see bench/floor.rs).
#[derive(FromArgs)]
struct Args {
    /// port to listen on, on every address
    #[argh(option, default = "8080")]
    port: u16,
}

/// The connection is to be closed: it broke the protocol, went away, or
/// fell too far behind.
struct Close;

type Step<T = ()> = Result<T, Close>;

struct Conn {
    stream: TcpStream,
    /// Named by the handshake's `?user=`; the handshake is done once set.
    user: Option<String>,
    /// Bytes read and not yet a whole request or frame.
    input: Vec<u8>,
    /// Bytes the socket would not take yet, written once it is writable.
    waiting: Vec<u8>,
    rooms: Vec<String>,
}

#[derive(Default)]
struct Room {
    /// The id of the room's last message.
    head: u64,
    members: Vec<usize>,
}

struct Floor {
    epoll: RawFd,
    conns: Vec<Option<Conn>>,
    /// Indexes free for new connections; those closed during one batch of
    /// events wait in `closed` until it ends, so that a stale event of the
    /// batch cannot reach a newcomer.
    free: Vec<usize>,
    closed: Vec<usize>,
    rooms: HashMap<String, Room>,
    accepted: u64,
}

fn main() -> io::Result<()> {
    let args: Args = argh::from_env();
    let listener = TcpListener::bind(("0.0.0.0", args.port))?;
    listener.set_nonblocking(true)?;
    // std listens with a backlog of 128; raise it as parlor does (Linux
    // takes a second listen() as a new backlog).
    // SAFETY: a listening socket this function owns.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: no pointers; the descriptor lives as long as the process.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    control(
        epoll,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        LISTENER,
        false,
    )?;
    let mut floor = Floor {
        epoll,
        conns: Vec::new(),
        free: Vec::new(),
        closed: Vec::new(),
        rooms: HashMap::new(),
        accepted: 0,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` has room for as many events as it is told.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 1024, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        for event in &events[..ready as usize] {
            let (token, flags) = (event.u64, event.events);
            if token == LISTENER {
                floor.accept(&listener);
            } else {
                floor.on_event(token as usize, flags);
            }
        }
        floor.free.append(&mut floor.closed);
    }
}

/// Adds `fd` to `epoll` (or changes it) under `token`, for reading, and for
/// writing too when `writable`.
fn control(epoll: RawFd, op: i32, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
    let mut flags = libc::EPOLLIN;
    if writable {
        flags |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event {
        events: flags as u32,
        u64: token,
    };
    // SAFETY: `event` is valid for the call; epoll copies it.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener) {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("floor: accept: {e}");
                    return;
                }
            };
            let token = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let fd = stream.as_raw_fd();
            let ready = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true));
            if let Err(e) = ready
                .and_then(|()| control(self.epoll, libc::EPOLL_CTL_ADD, fd, token as u64, false))
            {
                eprintln!("floor: a new connection: {e}");
                self.free.push(token);
                continue;
            }
            self.conns[token] = Some(Conn {
                stream,
                user: None,
                input: Vec::new(),
                waiting: Vec::new(),
                rooms: Vec::new(),
            });
        }
    }

    fn on_event(&mut self, token: usize, flags: u32) {
        if self.conns.get(token).is_none_or(Option::is_none) {
            return;
        }
        let mut done = Ok(());
        if flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            done = Err(Close);
        }
        if done.is_ok() && flags & libc::EPOLLOUT as u32 != 0 {
            done = self.drain(token);
        }
        if done.is_ok() && flags & libc::EPOLLIN as u32 != 0 {
            done = self.read(token);
        }
        if done.is_err() {
            self.close(token);
        }
    }

    fn conn(&mut self, token: usize) -> Step<&mut Conn> {
        self.conns[token].as_mut().ok_or(Close)
    }

    /// Reads what there is, then answers every whole request and frame.
    fn read(&mut self, token: usize) -> Step {
        let mut buffer = [0; 16 * 1024];
        let conn = self.conn(token)?;
        let mut input = std::mem::take(&mut conn.input);
        let ended = loop {
            match conn.stream.read(&mut buffer) {
                Ok(0) => break true,
                Ok(n) => {
                    input.extend_from_slice(&buffer[..n]);
                    // A short read took all there was, and the epoll is
                    // level-triggered: more is another event.
                    if n < buffer.len() || input.len() > MAX_FRAME + MAX_REQUEST {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let used = self.handle(token, &input)?;
        input.drain(..used);
        self.conn(token)?.input = input;
        if ended {
            return Err(Close);
        }
        Ok(())
    }

    /// Answers the handshake, then each whole frame in `input`; returns how
    /// many bytes of it were used.
    fn handle(&mut self, token: usize, input: &[u8]) -> Step<usize> {
        let (epoll, mut used) = (self.epoll, 0);
        if self.conn(token)?.user.is_none() {
            used = self.handshake(token, input)?;
            if used == 0 {
                return Ok(0);
            }
        }
        while let Some((opcode, payload, length)) = parse_frame(&input[used..])? {
            used += length;
            match opcode {
                TEXT => self.on_text(token, &payload)?,
                PING => self
                    .conn(token)?
                    .send(epoll, token, &encode(PONG, &payload))?,
                PONG => {}
                CLOSE => {
                    let code = payload.get(..2).unwrap_or(&[]);
                    let _ = self.conn(token)?.send(epoll, token, &encode(CLOSE, code));
                    return Err(Close);
                }
                _ => return Err(Close),
            }
        }
        Ok(used)
    }

    /// The WebSocket upgrade and `welcome`, once the request is whole;
    /// returns its length, 0 while it is not.
    fn handshake(&mut self, token: usize, input: &[u8]) -> Step<usize> {
        let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if input.len() > MAX_REQUEST {
                Err(Close)
            } else {
                Ok(0)
            };
        };
        let request = std::str::from_utf8(&input[..end]).map_err(|_| Close)?;
        let mut lines = request.split("\r\n");
        let target = lines
            .next()
            .and_then(|line| line.strip_prefix("GET "))
            .and_then(|rest| rest.split(' ').next())
            .ok_or(Close)?;
        let key = lines
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim())
            })
            .ok_or(Close)?;
        let user = target
            .split_once('?')
            .and_then(|(_, query)| query.split('&').find_map(|pair| pair.strip_prefix("user=")))
            .unwrap_or("anonymous")
            .to_owned();
        let accept = base64::engine::general_purpose::STANDARD
            .encode(Sha1::digest(format!("{key}{WEBSOCKET_GUID}")));
        self.accepted += 1;
        let welcome = format!(
            r#"{{"type":"welcome","user":{},"instance":"floor","connection":"c{}"}}"#,
            quote(&user),
            self.accepted
        );
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        answer.extend(encode(TEXT, welcome.as_bytes()));
        let (epoll, conn) = (self.epoll, self.conn(token)?);
        conn.user = Some(user);
        conn.send(epoll, token, &answer)?;
        Ok(end + 4)
    }

    fn on_text(&mut self, token: usize, payload: &[u8]) -> Step {
        let request: Value = serde_json::from_slice(payload).unwrap_or_default();
        let room = request["room"].as_str().unwrap_or_default();
        match request["type"].as_str() {
            Some("join") if !room.is_empty() => self.join(token, room),
            Some("send") if !room.is_empty() => {
                let text = request["text"].as_str().unwrap_or_default();
                self.publish(token, room, text, request["ref"].as_str())
            }
            _ => self.reply(
                token,
                r#"{"type":"error","code":"bad_request","message":"the floor takes join and send, each with a room"}"#,
            ),
        }
    }

    fn reply(&mut self, token: usize, text: &str) -> Step {
        let frame = encode(TEXT, text.as_bytes());
        let epoll = self.epoll;
        self.conn(token)?.send(epoll, token, &frame)
    }

    fn join(&mut self, token: usize, room: &str) -> Step {
        let conn = self.conns[token].as_mut().ok_or(Close)?;
        let members = self.rooms.entry(room.to_owned()).or_default();
        if !conn.rooms.iter().any(|joined| joined == room) {
            conn.rooms.push(room.to_owned());
            members.members.push(token);
        }
        let (head, room) = (members.head, quote(room));
        self.reply(
            token,
            &format!(r#"{{"type":"joined","room":{room},"epoch":"floor","head":{head},"read":0}}"#),
        )?;
        self.reply(
            token,
            &format!(r#"{{"type":"replayed","room":{room},"count":0,"truncated":false}}"#),
        )
    }

    /// Numbers the message, acks it, and writes its one frame to every member.
    fn publish(&mut self, token: usize, room: &str, text: &str, reference: Option<&str>) -> Step {
        let user = quote(self.conn(token)?.user.as_deref().unwrap_or_default());
        let state = self.rooms.entry(room.to_owned()).or_default();
        state.head += 1;
        let (id, quoted) = (state.head, quote(room));
        let reference = reference.map_or(String::new(), |r| format!(r#""ref":{},"#, quote(r)));
        self.reply(
            token,
            &format!(r#"{{"type":"ack",{reference}"room":{quoted},"id":{id}}}"#),
        )?;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let message = format!(
            r#"{{"type":"message","room":{quoted},"id":{id},"user":{user},"text":{},"ts":{ts}}}"#,
            quote(text)
        );
        let frame = encode(TEXT, message.as_bytes());
        let mut behind = Vec::new();
        for &member in &self.rooms[room].members {
            if let Some(conn) = self.conns[member].as_mut() {
                if conn.send(self.epoll, member, &frame).is_err() {
                    behind.push(member);
                }
            }
        }
        for member in behind {
            self.close(member);
        }
        Ok(())
    }

    /// Writes what waited, once the socket is writable again.
    fn drain(&mut self, token: usize) -> Step {
        let epoll = self.epoll;
        let conn = self.conn(token)?;
        let written = write_some(&conn.stream, &conn.waiting)?;
        conn.waiting.drain(..written);
        if conn.waiting.is_empty() {
            let fd = conn.stream.as_raw_fd();
            control(epoll, libc::EPOLL_CTL_MOD, fd, token as u64, false).map_err(|_| Close)?;
        }
        Ok(())
    }

    /// Drops a connection and its memberships. Closing the socket takes it
    /// out of the epoll set.
    fn close(&mut self, token: usize) {
        let Some(conn) = self.conns[token].take() else {
            return;
        };
        for room in &conn.rooms {
            if let Some(state) = self.rooms.get_mut(room) {
                state.members.retain(|&member| member != token);
            }
        }
        self.closed.push(token);
    }
}

impl Conn {
    /// Hands `frame` to the socket with one write, or queues it behind what
    /// already waits; whatever the socket does not take waits for EPOLLOUT.
    fn send(&mut self, epoll: RawFd, token: usize, frame: &[u8]) -> Step {
        if !self.waiting.is_empty() {
            if self.waiting.len() + frame.len() > MAX_WAITING {
                return Err(Close);
            }
            self.waiting.extend_from_slice(frame);
            return Ok(());
        }
        let written = write_some(&self.stream, frame)?;
        if written < frame.len() {
            self.waiting.extend_from_slice(&frame[written..]);
            let fd = self.stream.as_raw_fd();
            control(epoll, libc::EPOLL_CTL_MOD, fd, token as u64, true).map_err(|_| Close)?;
        }
        Ok(())
    }
}

/// One write of `bytes` to `stream`: how many it took (0 if it would block).
fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> Step<usize> {
    loop {
        match stream.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(_) => return Err(Close),
        }
    }
}

/// `text` as a JSON string, quotes and escapes included.
fn quote(text: &str) -> String {
    Value::from(text).to_string()
}

/// A server frame (unmasked, final) of `opcode` with `payload`.
fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend((n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend((n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The first client frame in `data`: its opcode, unmasked payload and length
/// in `data`, or None while it is incomplete. Unmasked, fragmented and
/// oversized frames close the connection.
fn parse_frame(data: &[u8]) -> Step<Option<(u8, Vec<u8>, usize)>> {
    let [first, second, ..] = *data else {
        return Ok(None);
    };
    if first & 0x80 == 0 || second & 0x80 == 0 {
        return Err(Close);
    }
    let (length, start) = match second & 0x7f {
        126 if data.len() >= 4 => (usize::from(u16::from_be_bytes([data[2], data[3]])), 4),
        127 if data.len() >= 10 => {
            let bytes: [u8; 8] = data[2..10].try_into().map_err(|_| Close)?;
            (
                usize::try_from(u64::from_be_bytes(bytes)).map_err(|_| Close)?,
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if length > MAX_FRAME {
        return Err(Close);
    }
    let Some(body) = data.get(start + 4..start + 4 + length) else {
        return Ok(None);
    };
    let mask = &data[start..start + 4];
    let payload = body
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    Ok(Some((first & 0x0f, payload, start + 4 + length)))
}
