//! A client of server-sent event streams over a raw socket, for the tests
//! of `GET /rooms/{room}/events`: the response head, then the chunked body
//! parsed into events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::Value;

use super::WAIT;

/// One event of a stream: its `id`, `event` and `data` lines, or a comment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
    pub comment: Option<String>,
    pub retry: Option<u64>,
}

/// A client of an event stream over a raw socket: the response head, then
/// the chunked body, parsed into events.
pub struct Stream {
    pub reader: BufReader<TcpStream>,
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunk_left: usize,
}

impl Stream {
    pub fn open(addr: &str, path: &str, headers: &str) -> Stream {
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(socket);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        Stream {
            reader,
            status,
            headers,
            body: Vec::new(),
            chunk_left: 0,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body of an answer that is not a stream.
    pub fn text(mut self) -> String {
        let mut out = String::new();
        while let Some(chunk) = self.chunk() {
            out.push_str(&String::from_utf8_lossy(&chunk));
        }
        out
    }

    /// The next chunk of the body, or `None` at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.header("content-length").is_some() {
            let len: usize = self.header("content-length").unwrap().parse().unwrap();
            if len == 0 || self.chunk_left == usize::MAX {
                return None;
            }
            let mut body = vec![0; len];
            self.reader.read_exact(&mut body).unwrap();
            self.chunk_left = usize::MAX;
            return Some(body);
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).ok()?;
        data.truncate(size);
        (size > 0).then_some(data)
    }

    /// The next event, or `None` once the stream ended.
    pub fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.body.drain(..end + 2).collect();
                return Some(parse(&String::from_utf8(block).unwrap()));
            }
            let chunk = self.chunk()?;
            self.body.extend_from_slice(&chunk);
        }
    }

    /// Events until one of `kind`; returns them all, that one last.
    pub fn until(&mut self, kind: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self
                .next()
                .unwrap_or_else(|| panic!("the stream ended before {kind}: {events:?}"));
            let done = event.event == kind;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn parse(block: &str) -> Event {
    let mut event = Event::default();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
        } else if let Some((name, value)) = line.split_once(": ") {
            match name {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = value.to_owned(),
                "data" => event.data = serde_json::from_str(value).unwrap(),
                "retry" => event.retry = value.parse().ok(),
                other => panic!("unexpected line {other}"),
            }
        }
    }
    event
}
