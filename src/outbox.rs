//! A connection's outbox: the bounded queue of frames waiting for its socket,
//! and the writer task that alone writes them.
//!
//! Fan-out must never wait for one slow client, so it only `offer`s: when a
//! connection already has `limit` frames or `byte_limit` bytes queued, its
//! reader is too far behind and the connection is closed with 1013 (it
//! rejoins with `since` and loses nothing). The connection's own answers
//! (acks, replays, history pages, each cut to a quarter of the bytes)
//! `push`, which waits while the outbox is half full, so a client that asks
//! for a lot without reading slows down only itself, fan-out keeps room to
//! deliver, and what one connection holds is bounded in bytes.
//!
//! The queue is a `VecDeque` under a mutex, with the writer's waker beside
//! it: an idle connection holds no queue space, no channel and no listener,
//! which is most of what a connection costs when there are many of them.
//!
//! A peer is given `patience` (two ping intervals) for everything: a write
//! to its socket that makes no progress for that long, or an answer that
//! cannot be queued for that long because it reads nothing, ends the
//! connection. A ping goes out ahead of the queued frames, so a client that
//! reads slowly but reads is not taken for gone.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::WebSocketSender;
use event_listener::Event;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use futures_util::SinkExt;

use crate::lock::lock;
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

/// What the outbox holds for its writer.
pub enum Item {
    Frame(Frame),
    /// Close after the frames queued before it.
    Close(u16, &'static str),
}

/// The sending side, shared by the connection and every room it joined.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Frames queued and not yet written, and their bytes, for the limits.
    queued: AtomicUsize,
    bytes: AtomicUsize,
    limit: usize,
    byte_limit: usize,
    /// How long the peer may take anything: see the module's header.
    patience: Duration,
    /// A WebSocket ping is wanted, ahead of the queued frames.
    ping: AtomicBool,
    /// Writes that had to wait for the peer and then went through: the peer
    /// is reading, even if its pong is still behind what it has to read.
    unblocked: AtomicU64,
    /// Notified when the writer takes frames or the outbox closes; only a
    /// `push` that waits listens, so it costs nothing otherwise.
    drained: Event,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Set once a close is requested; later frames are refused.
    closed: bool,
    /// A close that skips whatever is still queued, and its code and reason.
    urgent: Option<(u16, &'static str)>,
    /// The server is draining: the reader should finish what it is doing.
    stop: bool,
    /// The writer, waiting for items or an urgent close.
    writer: Option<Waker>,
    /// The reader, waiting in `stopped`.
    reader: Option<Waker>,
}

impl State {
    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
}

/// The outbox is closed: the connection is going away.
#[derive(Debug)]
pub struct Closed;

impl Outbox {
    /// An outbox of at most `limit` frames and `byte_limit` bytes of them.
    pub fn new(limit: usize, byte_limit: usize, patience: Duration) -> (Outbox, Writer) {
        let outbox = Outbox(Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            limit,
            byte_limit,
            patience,
            ping: AtomicBool::new(false),
            unblocked: AtomicU64::new(0),
            drained: Event::new(),
        }));
        let writer = Writer {
            outbox: outbox.clone(),
        };
        (outbox, writer)
    }

    /// Queues a frame without waiting. A connection whose queue is full (in
    /// frames, or in bytes with this one) is closed with 1013 instead.
    pub fn offer(&self, frame: Frame) -> Result<(), Refused> {
        let mut state = lock(&self.0.state);
        if state.closed {
            return Err(Refused::Closed);
        }
        let bytes = self.0.bytes.load(Ordering::Relaxed) + frame.len();
        if self.0.queued.load(Ordering::Relaxed) >= self.0.limit || bytes > self.0.byte_limit {
            drop(state);
            self.close_now(
                TRY_AGAIN_LATER,
                "too far behind: reconnect and rejoin with since",
            );
            return Err(Refused::TooSlow);
        }
        self.append(&mut state, Item::Frame(frame));
        Ok(())
    }

    /// Queues one of the connection's own frames, waiting while the outbox is
    /// half full; a client that reads nothing for `patience` is closed with
    /// 1013.
    pub async fn push(&self, frame: Frame) -> Result<(), Closed> {
        let room = async {
            self.room_for_more().await;
            true
        };
        let waited_out = async {
            async_std::task::sleep(self.0.patience).await;
            false
        };
        if !room.or(waited_out).await {
            log::info!(
                "a client read nothing for {:?}; closing with 1013",
                self.0.patience
            );
            self.close_now(
                TRY_AGAIN_LATER,
                "not reading: reconnect and rejoin with since",
            );
            return Err(Closed);
        }
        if self.enqueue(Item::Frame(frame)) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    /// Resolves once less than half of either limit is queued, or on close.
    async fn room_for_more(&self) {
        loop {
            if self.is_closed() || !self.half_full() {
                return;
            }
            let listener = self.0.drained.listen();
            // Checked again after listening, so a wake-up between the check and
            // the listen is not missed.
            if !self.half_full() || self.is_closed() {
                continue;
            }
            listener.await;
        }
    }

    /// Whether half the frames or half the bytes the outbox may hold are
    /// queued: a connection's own answers wait then.
    fn half_full(&self) -> bool {
        self.0.queued.load(Ordering::Acquire) >= self.0.limit / 2
            || self.0.bytes.load(Ordering::Acquire) >= self.0.byte_limit / 2
    }

    /// Appends an item unless the outbox is closed; returns whether it did.
    fn enqueue(&self, item: Item) -> bool {
        let mut state = lock(&self.0.state);
        if state.closed {
            return false;
        }
        self.append(&mut state, item);
        true
    }

    fn append(&self, state: &mut State, item: Item) {
        if let Item::Frame(frame) = &item {
            self.0.queued.fetch_add(1, Ordering::AcqRel);
            self.0.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        }
        state.items.push_back(item);
        state.wake_writer();
    }

    /// How many writes had to wait for the peer and then went through; if
    /// it moved, the peer is reading.
    pub fn unblocked(&self) -> u64 {
        self.0.unblocked.load(Ordering::Acquire)
    }

    /// Asks for a ping, ahead of what is queued; the peer's pong (or
    /// anything else it sends) shows it is still there.
    pub fn ping(&self) {
        self.0.ping.store(true, Ordering::Release);
        lock(&self.0.state).wake_writer();
    }

    /// Closes the connection after the frames already queued (a graceful close).
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = lock(&self.0.state);
        if state.closed {
            return;
        }
        state.items.push_back(Item::Close(code, reason));
        state.closed = true;
        state.wake_writer();
        state.wake_reader();
        drop(state);
        self.0.drained.notify(usize::MAX);
    }

    /// Closes the connection at once, dropping what is still queued.
    pub fn close_now(&self, code: u16, reason: &'static str) {
        {
            let mut state = lock(&self.0.state);
            if state.urgent.is_none() {
                // The writer may be blocked on a full socket; this wakes it.
                state.urgent = Some((code, reason));
                state.wake_writer();
            }
        }
        self.close(code, reason);
    }

    fn is_closed(&self) -> bool {
        lock(&self.0.state).closed
    }

    /// Asks the connection's reader to finish the request in hand and stop
    /// (the server is draining); see `stopped`.
    pub fn stop(&self) {
        let mut state = lock(&self.0.state);
        state.stop = true;
        state.wake_reader();
    }

    /// Resolves once a close or a stop has been requested. For the
    /// connection's reader only: it keeps one waker.
    pub async fn stopped(&self) {
        poll_fn(|cx| {
            let mut state = lock(&self.0.state);
            if state.closed || state.stop {
                Poll::Ready(())
            } else {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Takes everything queued into `into` (which is empty), waiting until
    /// there is something. Once an urgent close was requested it takes
    /// nothing more (`urgent_close` is ready then). Both buffers are given
    /// back before waiting: a connection between bursts holds no queue space.
    async fn take(&self, into: &mut VecDeque<Item>) {
        poll_fn(|cx| {
            let mut state = lock(&self.0.state);
            if state.urgent.is_some() {
                return Poll::Pending;
            }
            if self.0.ping.load(Ordering::Acquire) {
                std::mem::swap(&mut state.items, into);
                return Poll::Ready(());
            }
            if state.items.is_empty() {
                *into = VecDeque::new();
                state.items = VecDeque::new();
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut state.items, into);
            Poll::Ready(())
        })
        .await
    }

    /// The next item for a writer that takes one at a time (the event
    /// stream's body): an urgent close before anything still queued, and
    /// `None` once closed with nothing left.
    pub fn poll_item(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<Item>> {
        let mut state = lock(&self.0.state);
        if let Some((code, reason)) = state.urgent.take() {
            state.items.clear();
            return Poll::Ready(Some(Item::Close(code, reason)));
        }
        match state.items.pop_front() {
            Some(item) => {
                drop(state);
                if let Item::Frame(frame) = &item {
                    self.taken(frame.len());
                }
                Poll::Ready(Some(item))
            }
            None if state.closed => Poll::Ready(None),
            None => {
                state.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Counts a frame of `len` bytes out, and wakes a waiting `push` once
    /// the outbox is below half full (the notification costs an atomic load
    /// while nobody listens: idle connections never pay).
    fn taken(&self, len: usize) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.bytes.fetch_sub(len, Ordering::AcqRel);
        if !self.half_full() {
            self.0.drained.notify(usize::MAX);
        }
    }

    /// Nothing more will be written (the writer ended, or the client went
    /// away): refuse further frames, free the queue, wake the reader.
    pub fn writer_gone(&self) {
        let mut state = lock(&self.0.state);
        state.closed = true;
        state.items = VecDeque::new();
        state.wake_reader();
        drop(state);
        self.0.queued.store(0, Ordering::Release);
        self.0.bytes.store(0, Ordering::Release);
        self.0.drained.notify(usize::MAX);
    }

    async fn urgent_close(&self) -> (u16, &'static str) {
        poll_fn(|cx| {
            let mut state = lock(&self.0.state);
            match state.urgent {
                Some(close) => Poll::Ready(close),
                None => {
                    state.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
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
}

impl Writer {
    /// Writes queued frames until the outbox closes or the socket fails. Frames
    /// are sent in batches with one flush each, so a burst costs one syscall
    /// rather than one per frame; a ping wanted goes out before the next
    /// batch. A write that makes no progress for `patience` ends it.
    pub async fn run<S>(self, mut socket: WebSocketSender<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let close = async {
            // Swapped with the outbox's queue: the writer takes a whole burst
            // under one lock, and while bursts follow each other the two
            // buffers are reused.
            let mut batch = VecDeque::new();
            loop {
                self.outbox.take(&mut batch).await;
                let mut fed = 0;
                self.ping_if_wanted(&mut socket).await?;
                while let Some(item) = batch.pop_front() {
                    match item {
                        Item::Frame(frame) => {
                            let len = frame.len();
                            within(&self.outbox.0, socket.feed(WsMessage::Text(frame))).await?;
                            self.outbox.taken(len);
                        }
                        Item::Close(code, reason) => return Some((code, reason)),
                    }
                    fed += 1;
                    if fed % BATCH == 0 {
                        within(&self.outbox.0, socket.flush()).await?;
                        self.ping_if_wanted(&mut socket).await?;
                    }
                }
                within(&self.outbox.0, socket.flush()).await?;
            }
        }
        .or(async { Some(self.outbox.urgent_close().await) })
        .await;
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Boxed, as it happens once: an idle writer carries none of it.
            let closing = async_std::future::timeout(CLOSE_TIMEOUT, socket.close(Some(frame)));
            let _ = Box::pin(closing).await;
        }
        self.outbox.writer_gone();
    }

    /// Feeds a ping if one is wanted; `None` if the socket failed.
    async fn ping_if_wanted<S>(&self, socket: &mut WebSocketSender<S>) -> Option<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.outbox.0.ping.swap(false, Ordering::AcqRel) {
            let ping = socket.feed(WsMessage::Ping(Default::default()));
            within(&self.outbox.0, ping).await?;
        }
        Some(())
    }
}

/// A write to the peer, given `patience`: `None` if it failed or took
/// longer. One that had to wait and then went through is counted in
/// `unblocked`.
async fn within<E>(shared: &Shared, write: impl Future<Output = Result<(), E>>) -> Option<()> {
    let mut write = std::pin::pin!(write);
    let mut waited = false;
    let counted = poll_fn(|cx| {
        let poll = write.as_mut().poll(cx);
        waited |= poll.is_pending();
        poll
    });
    let result = async_std::future::timeout(shared.patience, counted)
        .await
        .ok()?;
    if waited && result.is_ok() {
        shared.unblocked.fetch_add(1, Ordering::AcqRel);
    }
    result.ok()
}
