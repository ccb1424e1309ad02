//! A connection's outbox: the bounded queue of frames waiting for its socket,
//! and the writer task that alone writes them.
//!
//! Fan-out must never wait for one slow client, so it only `offer`s: when a
//! connection already has `limit` frames queued, its reader is too far behind
//! and the connection is closed with 1013 (it rejoins with `since` and loses
//! nothing). The connection's own answers (acks, replays) `push`, which waits
//! while the outbox is half full, so a client that asks for a lot without
//! reading slows down only itself and fan-out keeps room to deliver.
//!
//! The queue is an unbounded channel with a counter in front rather than a
//! bounded channel, because a bounded channel allocates all its slots up front
//! and most connections are idle with nothing queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::WebSocketSender;
use event_listener::Event;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use futures_util::SinkExt;

use crate::flag::Flag;
use crate::protocol::Frame;

/// How many queued frames a writer sends before it flushes the socket.
const BATCH: usize = 64;
/// How long a close frame may take to get out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close codes parlor sends (PROTOCOL.md, "Close codes").
pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const TRY_AGAIN_LATER: u16 = 1013;

enum Item {
    Frame(Frame),
    /// A WebSocket ping, to find out whether the peer is still there.
    Ping,
    /// Close after the frames queued before it.
    Close(u16, &'static str),
}

/// The sending side, shared by the connection and every room it joined.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

struct Shared {
    queue: async_channel::Sender<Item>,
    queued: AtomicUsize,
    limit: usize,
    /// Set once a close is requested; later frames are refused.
    closed: Flag,
    /// A close that skips whatever is still queued, and its code and reason.
    urgent: Flag,
    urgent_close: OnceLock<(u16, &'static str)>,
    /// Notified when the writer takes frames or the outbox closes.
    drained: Event,
}

/// The outbox is closed: the connection is going away.
#[derive(Debug)]
pub struct Closed;

impl Outbox {
    pub fn new(limit: usize) -> (Outbox, Writer) {
        let (queue, items) = async_channel::unbounded();
        let outbox = Outbox(Arc::new(Shared {
            queue,
            queued: AtomicUsize::new(0),
            limit,
            closed: Flag::default(),
            urgent: Flag::default(),
            urgent_close: OnceLock::new(),
            drained: Event::new(),
        }));
        let writer = Writer {
            outbox: outbox.clone(),
            items,
        };
        (outbox, writer)
    }

    /// Queues a frame without waiting. A connection whose queue is full is
    /// closed with 1013 instead.
    pub fn offer(&self, frame: Frame) -> Result<(), Refused> {
        if self.is_closed() {
            return Err(Refused::Closed);
        }
        if self.0.queued.load(Ordering::Relaxed) >= self.0.limit {
            self.close_now(
                TRY_AGAIN_LATER,
                "too far behind: reconnect and rejoin with since",
            );
            return Err(Refused::TooSlow);
        }
        if self.enqueue(frame) {
            Ok(())
        } else {
            Err(Refused::Closed)
        }
    }

    /// Queues one of the connection's own frames, waiting while the outbox is
    /// half full.
    pub async fn push(&self, frame: Frame) -> Result<(), Closed> {
        loop {
            if self.is_closed() {
                return Err(Closed);
            }
            if self.0.queued.load(Ordering::Acquire) < self.0.limit / 2 {
                break;
            }
            let listener = self.0.drained.listen();
            // Checked again after listening, so a wake-up between the check and
            // the listen is not missed.
            if self.0.queued.load(Ordering::Acquire) < self.0.limit / 2 || self.is_closed() {
                continue;
            }
            listener.await;
        }
        if self.enqueue(frame) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    fn enqueue(&self, frame: Frame) -> bool {
        self.0.queued.fetch_add(1, Ordering::AcqRel);
        self.0.queue.try_send(Item::Frame(frame)).is_ok()
    }

    /// Queues a ping; the peer's pong (or anything else it sends) shows it is
    /// still there.
    pub fn ping(&self) {
        if !self.is_closed() {
            let _ = self.0.queue.try_send(Item::Ping);
        }
    }

    /// Closes the connection after the frames already queued (a graceful close).
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.0.closed.set() {
            let _ = self.0.queue.try_send(Item::Close(code, reason));
            self.0.drained.notify(usize::MAX);
        }
    }

    /// Closes the connection at once, dropping what is still queued.
    pub fn close_now(&self, code: u16, reason: &'static str) {
        if self.0.urgent_close.set((code, reason)).is_ok() {
            // The writer may be blocked on a full socket; this wakes it.
            self.0.urgent.set();
        }
        self.close(code, reason);
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.is_set()
    }

    /// Resolves once a close has been requested.
    pub async fn closed(&self) {
        self.0.closed.wait().await
    }

    async fn urgent_close(&self) -> (u16, &'static str) {
        self.0.urgent.wait().await;
        *self.0.urgent_close.get().expect("set before the flag")
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The connection is closing anyway.
    Closed,
    /// The connection fell too far behind and is now being closed with 1013.
    TooSlow,
}

/// The receiving side: drains the outbox into the socket.
pub struct Writer {
    outbox: Outbox,
    items: async_channel::Receiver<Item>,
}

impl Writer {
    /// Writes queued frames until the outbox closes or the socket fails. Frames
    /// are sent in batches with one flush each, so a burst costs one syscall
    /// rather than one per frame.
    pub async fn run<S>(self, mut socket: WebSocketSender<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let close = async {
            // Grown on use: an idle connection keeps no batch space.
            let mut batch = Vec::new();
            loop {
                let Ok(first) = self.items.recv().await else {
                    return None;
                };
                batch.push(first);
                while batch.len() < BATCH {
                    match self.items.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                for item in batch.drain(..) {
                    match item {
                        Item::Frame(frame) => {
                            self.taken();
                            if socket.feed(WsMessage::Text(frame)).await.is_err() {
                                return None;
                            }
                        }
                        Item::Ping => {
                            if socket
                                .feed(WsMessage::Ping(Default::default()))
                                .await
                                .is_err()
                            {
                                return None;
                            }
                        }
                        Item::Close(code, reason) => return Some((code, reason)),
                    }
                }
                if socket.flush().await.is_err() {
                    return None;
                }
            }
        }
        .or(async { Some(self.outbox.urgent_close().await) })
        .await;
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = async_std::future::timeout(CLOSE_TIMEOUT, socket.close(Some(frame))).await;
        }
        // Nothing more will be written: refuse further frames and free the queue.
        self.outbox.0.closed.set();
        self.outbox.0.drained.notify(usize::MAX);
        self.items.close();
    }

    fn taken(&self) {
        self.outbox.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.outbox.0.drained.notify(usize::MAX);
    }
}
