//! A WebSocket's writer task: writes what its outbox queued when the
//! socket could not take it at once, and the close at the end.
//!
//! Most frames never reach it: while nothing is queued, the outbox writes a
//! frame to the socket itself, from the task that delivers it (`outbox.rs`).
//! What is queued (the socket was full, or the writer was already writing)
//! goes out here in gathered writes of up to `MOST_FRAMES` frames, each
//! frame as it was encoded once for every member. A write that
//! makes no progress for the peer's `patience` ends the connection; a ping
//! wanted goes out at the next frame boundary, ahead of the queued frames.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::time::Duration;

use async_std::net::TcpStream;
use futures_lite::{AsyncWrite, AsyncWriteExt, FutureExt};

use crate::outbox::{Item, Outbox};
use crate::ws_frame;

/// Most frames one gathered write takes.
const MOST_FRAMES: usize = 64;
/// How long a close frame may take to get out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the writer took from the outbox and has not written yet: control
/// frames that go first, then the queued frames (and a close after them),
/// with how far the first of each is written.
#[derive(Default)]
pub struct Batch {
    /// Whole control frames (a ping, replies to the client's pings).
    pub lead: Vec<u8>,
    lead_at: usize,
    pub items: VecDeque<Item>,
    /// Bytes of the first item written already (header and payload).
    pub front_at: usize,
}

/// Frames a write finished, and their payload bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub frames: usize,
    pub bytes: usize,
}

impl Batch {
    /// Whether the next byte written starts a frame.
    pub fn at_boundary(&self) -> bool {
        self.lead_at == self.lead.len() && self.front_at == 0
    }

    /// Whether nothing is left to write (a close may still be next).
    fn is_empty(&self) -> bool {
        self.lead_at == self.lead.len() && !matches!(self.items.front(), Some(Item::Frame(_)))
    }

    /// The close that comes next, once everything before it is written.
    fn close_next(&self) -> Option<(u16, &'static str)> {
        match self.items.front() {
            Some(Item::Close(code, reason)) if self.at_boundary() => Some((*code, reason)),
            _ => None,
        }
    }

    fn frames(&self) -> impl Iterator<Item = &crate::protocol::Frame> {
        self.items
            .iter()
            .map_while(|item| match item {
                Item::Frame(frame) => Some(frame),
                Item::Close(..) => None,
            })
            .take(MOST_FRAMES)
    }

    /// What the next write takes, from where the last one stopped.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        debug_assert!(
            self.lead.is_empty() || self.front_at == 0,
            "a lead cuts no frame"
        );
        let mut slices = Vec::with_capacity(1 + MOST_FRAMES);
        if self.lead_at < self.lead.len() {
            slices.push(IoSlice::new(&self.lead[self.lead_at..]));
        }
        let mut skip = self.front_at;
        for frame in self.frames() {
            slices.push(IoSlice::new(&frame.wire()[skip..]));
            skip = 0;
        }
        slices
    }

    /// Counts `written` bytes out, in the order `slices` gave them.
    pub fn advance(&mut self, mut written: usize) -> Finished {
        let lead = written.min(self.lead.len() - self.lead_at);
        self.lead_at += lead;
        written -= lead;
        if self.lead_at == self.lead.len() {
            self.lead.clear();
            self.lead_at = 0;
        }
        let mut finished = Finished::default();
        while written > 0 {
            let Some(Item::Frame(frame)) = self.items.front() else {
                break;
            };
            let left = frame.wire().len() - self.front_at;
            if written < left {
                self.front_at += written;
                break;
            }
            written -= left;
            self.front_at = 0;
            finished.frames += 1;
            finished.bytes += frame.len();
            self.items.pop_front();
        }
        finished
    }

    /// The bytes that end a frame written part way, so that a close can
    /// follow it; nothing at a frame boundary.
    fn rest_of_frame(&self) -> Vec<u8> {
        if self.lead_at < self.lead.len() {
            return self.lead[self.lead_at..].to_vec();
        }
        match self.items.front() {
            Some(Item::Frame(frame)) if self.front_at > 0 => frame.wire()[self.front_at..].to_vec(),
            _ => Vec::new(),
        }
    }
}

/// How the writer stops.
enum Ending {
    /// The socket failed or the peer took nothing for too long.
    Failed,
    Close(u16, &'static str),
}

/// The writing side of one WebSocket.
pub struct Writer {
    pub outbox: Outbox,
    pub socket: TcpStream,
}

impl Writer {
    /// Writes what the outbox queues until it closes or the socket fails.
    pub async fn run(self) {
        let outbox = &self.outbox;
        let mut batch = Batch::default();
        let ending = async {
            loop {
                outbox.take(&mut batch).await;
                // Boxed: a write's slices would take room in every idle writer.
                if let Some(ending) = Box::pin(self.write_out(&mut batch)).await {
                    return ending;
                }
            }
        }
        .or(async {
            let (code, reason) = outbox.urgent_close().await;
            Ending::Close(code, reason)
        })
        .await;
        if let Ending::Close(code, reason) = ending {
            outbox.unfinished(&mut batch);
            let mut last = batch.rest_of_frame();
            last.extend(ws_frame::close(code, reason));
            let mut socket = &self.socket;
            let closing = async_std::future::timeout(CLOSE_TIMEOUT, socket.write_all(&last));
            // Boxed, as it happens once: an idle writer carries none of it.
            let _ = Box::pin(closing).await;
        }
        outbox.writer_gone();
    }

    /// Writes the batch out, a ping first when one is wanted at a frame
    /// boundary; `Some` when the connection is to end.
    async fn write_out(&self, batch: &mut Batch) -> Option<Ending> {
        loop {
            if batch.at_boundary() && self.outbox.ping_wanted() {
                batch.lead.extend_from_slice(&ws_frame::PING);
            }
            if let Some((code, reason)) = batch.close_next() {
                return Some(Ending::Close(code, reason));
            }
            if batch.is_empty() {
                return None;
            }
            let slices = batch.slices();
            let write = poll_fn(|cx| Pin::new(&mut &self.socket).poll_write_vectored(cx, &slices));
            let written = match within(&self.outbox, write).await {
                Some(written) if written > 0 => written,
                _ => return Some(Ending::Failed),
            };
            let finished = batch.advance(written);
            self.outbox.taken(finished.frames, finished.bytes);
        }
    }
}

/// A write to the peer, given its `patience`: `None` if it failed or took
/// longer. One that had to wait and then went through is counted as a sign
/// that the peer reads.
async fn within<T, E>(outbox: &Outbox, write: impl Future<Output = Result<T, E>>) -> Option<T> {
    let mut write = std::pin::pin!(write);
    let mut waited = false;
    let counted = poll_fn(|cx| {
        let poll = write.as_mut().poll(cx);
        waited |= poll.is_pending();
        poll
    });
    let result = async_std::future::timeout(outbox.patience(), counted)
        .await
        .ok()?;
    if waited && result.is_ok() {
        outbox.unblocked_once();
    }
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire_bytes(payloads: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            let (head, used) = ws_frame::text_header(payload.len());
            out.extend_from_slice(&head[..used]);
            out.extend_from_slice(payload.as_bytes());
        }
        out
    }

    proptest! {
        /// However the socket cuts the writes, the bytes that reach it are
        /// the lead and then each frame whole, in order, and every frame is
        /// counted out once; a close cut into a frame finishes it first.
        #[test]
        fn writes_cut_anywhere_carry_every_frame_whole_and_in_order(
            lens in prop::collection::vec(prop_oneof![0usize..130, 60_000usize..70_000], 0..80),
            cuts in prop::collection::vec(1usize..9_000, 1..200),
            front_at in 0usize..4,
            close_after in prop::option::of(0usize..400_000),
        ) {
            let payloads: Vec<String> = lens.iter().enumerate()
                .map(|(at, len)| char::from(b'a' + (at % 26) as u8).to_string().repeat(*len))
                .collect();
            let whole = wire_bytes(&payloads);
            // A frame written part way already (by the outbox) leaves no
            // room for a lead before its rest.
            let front_at = match lens.first() {
                Some(len) => front_at.min(2 + len - 1),
                None => 0,
            };
            let lead = if front_at == 0 { ws_frame::PING.to_vec() } else { Vec::new() };
            let mut batch = Batch {
                lead: lead.clone(),
                lead_at: 0,
                items: payloads.iter().map(|p| Item::Frame(p.as_str().into())).collect(),
                front_at,
            };
            let mut want = lead;
            want.extend_from_slice(&whole[front_at..]);
            let mut boundaries = vec![want.len() - (whole.len() - front_at)];
            let mut at = 0;
            for len in &lens {
                at += ws_frame::text_header(*len).1 + len;
                boundaries.push(boundaries[0] + at - front_at);
            }
            let (mut out, mut finished) = (Vec::new(), Finished::default());
            let mut cuts = cuts.into_iter().cycle();
            while !batch.is_empty() {
                if close_after.is_some_and(|at| out.len() >= at) {
                    out.extend(batch.rest_of_frame());
                    prop_assert!(want.starts_with(&out));
                    prop_assert!(boundaries.contains(&out.len()), "a close comes at a frame boundary");
                    return Ok(());
                }
                let slices = batch.slices();
                let mut take = cuts.next().expect("cycled");
                let mut written = 0;
                for slice in &slices {
                    let part = take.min(slice.len());
                    out.extend_from_slice(&slice[..part]);
                    written += part;
                    take -= part;
                }
                drop(slices);
                let done = batch.advance(written);
                finished.frames += done.frames;
                finished.bytes += done.bytes;
            }
            prop_assert_eq!(out, want);
            prop_assert_eq!(finished.frames, payloads.len());
            prop_assert_eq!(finished.bytes, lens.iter().sum::<usize>());
            prop_assert!(batch.at_boundary());
        }
    }
}
