//! A connection's outbox: the bounded queue of frames waiting for its
//! socket, and the rule of who writes them.
//!
//! A WebSocket's outbox writes a frame to the socket itself, at once, from
//! the task that hands it over (the fan-out, or the connection's reader for
//! its own answers), when nothing is queued before it and its writer task
//! is idle: a delivery then costs one `send` and no task wake-up. What
//! the socket does not take at once (all of it, or the rest of the frame) is
//! queued, and the writer (`writer.rs`) writes it when the socket can take
//! more; until the queue is empty again every frame goes behind it, so
//! frames leave in the order they were handed over, and whole. The decision
//! and the write are made under the outbox's lock.
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
//! Fan-out of several events at once (the live feed read more than one off
//! its socket) runs `corked`: the frames offered meanwhile on that thread are
//! queued instead of written, and each connection's writer then writes them
//! in one gathered write, not one `send` a frame. The acks of a batch of
//! sends and a join's replay go the same way (`push_all`).
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

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_std::net::TcpStream;
use event_listener::Event;
use futures_lite::{AsyncWrite, FutureExt};

use crate::lock::lock;
use crate::protocol::Frame;
use crate::writer::{Batch, Writer};
use crate::ws_frame::{self, Reply};

thread_local! {
    /// Whether fan-out on this thread is `corked`.
    static CORKED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `deliver`, which hands over `count` events (or frames), corked when
/// there are several: frames offered on this thread meanwhile are queued for
/// their connections' writers, which write each connection's frames together
/// once `deliver` is done, rather than one `send` each. One alone is written
/// at once, which saves its writer a wake-up.
pub fn corked<T>(count: usize, deliver: impl FnOnce() -> T) -> T {
    /// Puts the thread's cork back as it was, also if `deliver` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CORKED.with(|corked| corked.set(self.0));
        }
    }
    if count <= 1 {
        return deliver();
    }
    let _restore = Restore(CORKED.with(|corked| corked.replace(true)));
    deliver()
}

/// Most bytes of replies to the client's control frames waiting for the
/// writer: a client's pings are limited, so only a broken peer gets near.
const CONTROL_BYTES: usize = 4096;

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
    /// The WebSocket's socket, written at once while nothing is queued; an
    /// event stream's outbox has none (its body takes the frames).
    socket: Option<TcpStream>,
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
    /// Bytes of the first queued frame written already, by a write at once
    /// that the socket took only part of.
    front_written: usize,
    /// Replies to the client's control frames (pongs), ahead of the frames.
    control: Vec<u8>,
    /// The writer holds frames it has not finished writing: whatever comes
    /// now goes behind them.
    busy: bool,
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
    /// An outbox of at most `limit` frames and `byte_limit` bytes of them,
    /// taken one at a time by `poll_item` (an event stream's).
    pub fn new(limit: usize, byte_limit: usize, patience: Duration) -> Outbox {
        Outbox::of(limit, byte_limit, patience, None)
    }

    /// A WebSocket's outbox on its socket, and the writer task's side.
    pub fn on_socket(
        limit: usize,
        byte_limit: usize,
        patience: Duration,
        socket: TcpStream,
    ) -> (Outbox, Writer) {
        let outbox = Outbox::of(limit, byte_limit, patience, Some(socket.clone()));
        let writer = Writer {
            outbox: outbox.clone(),
            socket,
        };
        (outbox, writer)
    }

    fn of(
        limit: usize,
        byte_limit: usize,
        patience: Duration,
        socket: Option<TcpStream>,
    ) -> Outbox {
        Outbox(Arc::new(Shared {
            state: Mutex::new(State::default()),
            socket,
            queued: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            limit,
            byte_limit,
            patience,
            ping: AtomicBool::new(false),
            unblocked: AtomicU64::new(0),
            drained: Event::new(),
        }))
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
        self.wait_for_room().await?;
        if self.enqueue([frame]) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    /// Queues several of the connection's own frames (the acks of a batch
    /// of sends, a join's replay) as `push` does, in parts of at most a
    /// quarter of either limit, waiting for room before each: the outbox
    /// stays under three quarters full, and a part of more than one frame
    /// goes out corked, in gathered writes, not one `send` a frame.
    pub async fn push_all(&self, frames: Vec<Frame>) -> Result<(), Closed> {
        let (most, most_bytes) = (self.0.limit / 4, self.0.byte_limit / 4);
        let mut frames = frames.into_iter().peekable();
        while frames.peek().is_some() {
            self.wait_for_room().await?;
            let mut bytes = 0;
            let mut part = Vec::new();
            while let Some(frame) = frames.next_if(|f| {
                part.is_empty() || (part.len() < most && bytes + f.len() <= most_bytes)
            }) {
                bytes += frame.len();
                part.push(frame);
            }
            if !corked(part.len(), || self.enqueue(part)) {
                return Err(Closed);
            }
        }
        Ok(())
    }

    /// Waits while the outbox is half full; a client that reads nothing for
    /// `patience` is closed with 1013.
    async fn wait_for_room(&self) -> Result<(), Closed> {
        let room = async {
            self.room_for_more().await;
            true
        };
        let waited_out = async {
            async_std::task::sleep(self.0.patience).await;
            false
        };
        if room.or(waited_out).await {
            return Ok(());
        }
        log::info!(
            "a client read nothing for {:?}; closing with 1013",
            self.0.patience
        );
        self.close_now(
            TRY_AGAIN_LATER,
            "not reading: reconnect and rejoin with since",
        );
        Err(Closed)
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

    /// Appends frames, in order, unless the outbox is closed; returns whether it did.
    fn enqueue(&self, frames: impl IntoIterator<Item = Frame>) -> bool {
        let mut state = lock(&self.0.state);
        if state.closed {
            return false;
        }
        for frame in frames {
            self.append(&mut state, Item::Frame(frame));
        }
        true
    }

    /// Writes a frame at once when nothing is before it, and queues for
    /// the writer what the socket did not take.
    fn append(&self, state: &mut State, item: Item) {
        if let Item::Frame(frame) = &item {
            if let Some(socket) = self.free_socket(state) {
                let written = write_now(socket, frame);
                if written == frame.wire().len() {
                    return;
                }
                state.front_written = written;
            }
            self.0.queued.fetch_add(1, Ordering::AcqRel);
            self.0.bytes.fetch_add(frame.len(), Ordering::AcqRel);
        }
        state.items.push_back(item);
        state.wake_writer();
    }

    /// The socket, if a frame may go to it now: fan-out is not corked,
    /// nothing is queued or held by the writer, and no ping or reply is due
    /// before it.
    fn free_socket(&self, state: &State) -> Option<&TcpStream> {
        let free = !CORKED.with(Cell::get)
            && !state.busy
            && state.items.is_empty()
            && state.control.is_empty()
            && state.urgent.is_none()
            && !self.0.ping.load(Ordering::Acquire);
        self.0.socket.as_ref().filter(|_| free)
    }

    /// Takes what the connection's WebSocket library wrote while reading
    /// (replies to the client's control frames): a pong goes out ahead of
    /// the queued frames; its answer to a close is dropped, since the
    /// connection answers the close itself (`answer_close`).
    pub fn control(&self, bytes: &[u8]) -> Result<(), Closed> {
        match ws_frame::replies(bytes) {
            Some(Reply::Close) => Ok(()),
            Some(Reply::Control) => {
                let mut state = lock(&self.0.state);
                if state.closed || state.control.len() + bytes.len() > CONTROL_BYTES {
                    return Err(Closed);
                }
                state.control.extend_from_slice(bytes);
                state.wake_writer();
                Ok(())
            }
            None => Err(Closed),
        }
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

    /// Answers the client's close frame: at once, with its code (RFC 6455,
    /// 5.5.1), and nothing more after it.
    pub fn answer_close(&self, code: Option<u16>) {
        self.close_now(code.unwrap_or(NORMAL), "");
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

    /// Takes everything queued into the writer's `batch` (written out by
    /// now), waiting until there is something; the writer is busy until it
    /// comes back for more and finds nothing. Once an urgent close was
    /// requested it takes nothing more (`urgent_close` is ready then). Both
    /// queues are given back before waiting: a connection between bursts
    /// holds no queue space.
    pub async fn take(&self, batch: &mut Batch) {
        poll_fn(|cx| {
            let mut state = lock(&self.0.state);
            if state.urgent.is_some() {
                return Poll::Pending;
            }
            let ping = self.0.ping.load(Ordering::Acquire);
            if state.items.is_empty() && state.control.is_empty() && !ping {
                state.busy = false;
                batch.items = VecDeque::new();
                batch.lead = Vec::new();
                state.items = VecDeque::new();
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            state.busy = true;
            std::mem::swap(&mut state.items, &mut batch.items);
            batch.front_at = std::mem::take(&mut state.front_written);
            // Nothing goes between the parts of a frame written part way;
            // the writer sends the ping at the next frame boundary then.
            if batch.front_at == 0 {
                std::mem::swap(&mut state.control, &mut batch.lead);
            }
            Poll::Ready(())
        })
        .await
    }

    /// Hands the writer a frame written part way at once, if one is first
    /// in the queue and the writer holds nothing: closing, the writer
    /// finishes it before the close frame.
    pub fn unfinished(&self, batch: &mut Batch) {
        let mut state = lock(&self.0.state);
        if batch.at_boundary() && state.front_written > 0 {
            if let Some(item) = state.items.pop_front() {
                batch.items.push_front(item);
                batch.front_at = std::mem::take(&mut state.front_written);
            }
        }
    }

    /// Whether a ping is wanted, forgetting it: the writer sends it now.
    pub fn ping_wanted(&self) -> bool {
        self.0.ping.swap(false, Ordering::AcqRel)
    }

    pub fn patience(&self) -> Duration {
        self.0.patience
    }

    /// Counts a write that had to wait for the peer and went through.
    pub fn unblocked_once(&self) {
        self.0.unblocked.fetch_add(1, Ordering::AcqRel);
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
                    self.taken(1, frame.len());
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

    /// Counts `frames` of `bytes` out, and wakes a waiting `push` once the
    /// outbox is below half full (the notification costs an atomic load
    /// while nobody listens: idle connections never pay).
    pub fn taken(&self, frames: usize, bytes: usize) {
        if frames == 0 {
            return;
        }
        self.0.queued.fetch_sub(frames, Ordering::AcqRel);
        self.0.bytes.fetch_sub(bytes, Ordering::AcqRel);
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

    pub async fn urgent_close(&self) -> (u16, &'static str) {
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

/// Writes a frame without waiting (one `send`); how many of its bytes the
/// socket took (none if it is full or failed: the writer finds out which).
fn write_now(socket: &TcpStream, frame: &Frame) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut &*socket).poll_write(&mut cx, frame.wire()) {
        Poll::Ready(Ok(written)) => written,
        Poll::Ready(Err(_)) | Poll::Pending => 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::io::ReadExt;
    use async_std::net::TcpListener;

    const PATIENCE: Duration = Duration::from_secs(5);

    /// An outbox on one end of a loopback connection, its writer not yet
    /// running, and the other end.
    async fn pair() -> (Outbox, Writer, TcpStream) {
        pair_of(64).await
    }

    /// An outbox of `limit` frames on one end of a TCP connection, its
    /// writer, and the other end.
    async fn pair_of(limit: usize) -> (Outbox, Writer, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let (outbox, writer) = Outbox::on_socket(limit, 1 << 20, PATIENCE, socket);
        (outbox, writer, peer)
    }

    fn queued(outbox: &Outbox) -> usize {
        outbox.0.queued.load(Ordering::Acquire)
    }

    /// Reads exactly the wire bytes of `frames` off `peer`.
    async fn read_frames(peer: &mut TcpStream, frames: &[Frame]) {
        let want: Vec<u8> = frames.iter().flat_map(|f| f.wire().to_vec()).collect();
        let mut got = vec![0; want.len()];
        async_std::future::timeout(PATIENCE, peer.read_exact(&mut got))
            .await
            .expect("the frames are written")
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn corked_frames_wait_for_the_writer_and_leave_whole_and_in_order() {
        async_std::task::block_on(async {
            let (outbox, writer, mut peer) = pair().await;
            let frames: Vec<Frame> = (0..6).map(|n| format!("frame {n}").into()).collect();
            outbox.offer(frames[0].clone()).unwrap();
            assert_eq!(queued(&outbox), 0, "not corked: written at once");
            read_frames(&mut peer, &frames[..1]).await;
            corked(4, || {
                for frame in &frames[1..5] {
                    outbox.offer(frame.clone()).unwrap();
                }
            });
            assert_eq!(queued(&outbox), 4, "corked: left to the writer");
            // Once uncorked, a frame goes behind the ones queued.
            outbox.offer(frames[5].clone()).unwrap();
            assert_eq!(queued(&outbox), 5);
            async_std::task::spawn(writer.run());
            read_frames(&mut peer, &frames[1..]).await;
        });
    }

    #[test]
    fn a_pushed_batch_goes_to_the_writer_whole_and_in_order() {
        async_std::task::block_on(async {
            let (outbox, writer, mut peer) = pair().await;
            let acks: Vec<Frame> = (0..3).map(|n| format!("ack {n}").into()).collect();
            outbox.push_all(acks[..1].to_vec()).await.unwrap();
            assert_eq!(queued(&outbox), 0, "one alone is written at once");
            outbox.push_all(acks[1..].to_vec()).await.unwrap();
            assert_eq!(queued(&outbox), 2, "several are left to the writer");
            async_std::task::spawn(writer.run());
            read_frames(&mut peer, &acks).await;
        });
    }

    #[test]
    fn a_long_push_goes_in_parts_that_keep_the_outbox_under_three_quarters() {
        async_std::task::block_on(async {
            let (outbox, writer, mut peer) = pair_of(8).await;
            let frames: Vec<Frame> = (0..20).map(|n| format!("replayed {n}").into()).collect();
            let pushing = async_std::task::spawn({
                let (outbox, frames) = (outbox.clone(), frames.clone());
                async move { outbox.push_all(frames).await }
            });
            // The push stops once half is queued; wait for it to get there,
            // then give it time to go past, which it must not.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while queued(&outbox) < 4 && std::time::Instant::now() < deadline {
                async_std::task::sleep(Duration::from_millis(5)).await;
            }
            async_std::task::sleep(Duration::from_millis(50)).await;
            assert_eq!(queued(&outbox), 4, "parts of 2 until half of 8 is queued");
            async_std::task::spawn(writer.run());
            read_frames(&mut peer, &frames).await;
            pushing.await.unwrap();
        });
    }
}
