//! One WebSocket session: the reader loop that turns client frames into
//! requests, each handled in its own function, with the outbox and writer
//! task that carry everything back.
//!
//! The reader handles one request at a time, so a client's answers come in
//! the order of its requests. Sends are the exception that keeps a fast
//! client fast: they queue (`sends.rs`) and go to the store in batches, in
//! the order sent, while the reader goes on; any other request first waits
//! for the sends before it to be answered. The reader is the only task that
//! changes the connection's set of joined rooms; rooms hold its outbox to
//! deliver live events.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::error::CapacityError;
use async_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use async_tungstenite::WebSocketStream;
use futures_lite::{FutureExt, StreamExt};

use crate::app::App;
use crate::auth::Identity;
use crate::bucket::{Limit, TokenBucket};
use crate::error::{Error, ErrorCode};
use crate::feed::Signal;
use crate::fields::{Ref, Room};
use crate::log::{Append, Change, Marked, Slice, Stored};
use crate::order::ConnId;
use crate::outbox::{Closed, Outbox, GOING_AWAY, NORMAL, POLICY, TOO_BIG};
use crate::protocol::{self, Decoded, Rejected, Replay, Request};
use crate::rooms::{JoinError, Parting};
use crate::sends::{self, Sends};
use crate::wire::Wire;
use crate::writer::Writer;

/// The WebSocket as its reader holds it.
type Socket = WebSocketStream<Wire>;

/// How long a closing connection waits for its writer to finish and the
/// client to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bad requests a connection may make in a burst, and per second after it,
/// before it is closed with 1008. Generous: a client with a bug should see
/// its errors, not lose its connection.
const ABUSE: Limit = Limit::new(10, 100);
/// Typing frames a connection may send in a burst, and per second after it.
const SIGNAL_RATE: u32 = 5;
const SIGNALS: Limit = Limit::new(SIGNAL_RATE, 10);
/// Read markers a connection may send in a burst, and per second after it.
const MARK_RATE: u32 = 10;
const MARKS: Limit = Limit::new(MARK_RATE, 20);
/// Joins and leaves a connection may make per second after a burst (enough
/// to join and leave every room it may hold, `--max-rooms`, and a spare):
/// each one costs every member of the room a `member` frame.
const MOVE_RATE: u32 = 2;
/// Moves in the burst beyond joining and leaving every room once.
const MOVE_SPARE: u32 = 10;
/// History and presence reads a connection may make in a burst, and per
/// second after it: enough to page through scrollback, not to make the
/// store answer without end.
const READ_BURST: u32 = 100;
const READ_RATE: u32 = 20;
const READS: Limit = Limit::new(READ_RATE, READ_BURST);
/// WebSocket pings and pongs a client may send in a burst, and per second
/// after it, before it is closed with 1008: a client pings every few seconds
/// at most, and a flood of them would cost the server without end.
const CONTROL: Limit = Limit::new(5, 20);
/// Frames the reader handles in a row before it lets other tasks run: a
/// client that keeps its socket readable would otherwise hold an executor
/// thread.
const YIELD_EVERY: u32 = 16;
/// Most sends of one connection in one batch to the store.
const SENDS_BATCH: usize = 32;
/// Most sends of one connection in flight and waiting; beyond it the reader
/// waits for a batch to be answered before it reads on.
const SENDS_WAITING: usize = 2 * SENDS_BATCH;

/// What the upgrade request's query asked for.
pub struct Params {
    /// Who the connection speaks for, and which rooms its token allows.
    pub identity: Identity,
    /// The room of `?room=`: joined at once, and the target of plain-text frames.
    pub room: Option<Room>,
    pub replay: Replay,
}

/// The outbox of a WebSocket on `socket`, at the configured limits, and its
/// writer.
pub fn outbox(app: &App, socket: TcpStream) -> (Outbox, Writer) {
    Outbox::on_socket(
        app.config.outbox,
        app.config.outbox_bytes,
        app.config.patience(),
        socket,
    )
}

/// Serves one upgraded WebSocket until it closes: starts its writer task and
/// returns the reader's future. Not an `async fn`, whose future would carry
/// its arguments twice for the connection's life.
pub fn serve(
    app: Arc<App>,
    (outbox, writer): (Outbox, Writer),
    ws: Socket,
    params: Params,
) -> impl Future<Output = ()> + Send {
    let writer = async_std::task::spawn(writer.run());
    let opening = Box::pin(open(app, outbox, params));
    read(opening, writer, ws)
}

/// The start of a connection: counted, welcomed and joined to the URL's
/// room; whether it is still open. Boxed by `serve`, so that the reader
/// carries the parameters only until it is open.
async fn open(app: Arc<App>, outbox: Outbox, params: Params) -> (Session, bool) {
    let id = app.connections.add(&outbox);
    app.metrics.connection_opened();
    let mut session = Session::new(app.clone(), id, outbox.clone(), &params);
    log::debug!("connection {id} opened for {}", session.identity.user);
    let welcome = protocol::welcome(
        &session.identity.user,
        &app.config.instance,
        &format!("c{id:x}"),
    );
    let mut open = outbox.push(welcome).await.is_ok();
    if let (true, Some(room)) = (open, params.room) {
        open = Box::pin(session.join(None, room, params.replay))
            .await
            .is_ok();
    }
    (session, open)
}

/// Reads the connection until it closes. Not an `async fn`: one's arguments
/// are kept twice in its future (as given and as moved into its body), and
/// an idle connection would carry both copies.
#[allow(clippy::manual_async_fn)]
fn read(
    opening: Pin<Box<impl Future<Output = (Session, bool)> + Send>>,
    writer: async_std::task::JoinHandle<()>,
    mut receiver: Socket,
) -> impl Future<Output = ()> + Send {
    async move {
        let (mut session, open) = opening.await;
        if open {
            session.run(&mut receiver).await;
        }
        let (app, id) = (session.app.clone(), session.id);
        Box::pin(session.close(receiver, writer)).await;
        app.connections.remove(id);
        app.metrics.connection_closed();
        log::debug!("connection {id} closed");
    }
}

/// What woke the reader loop.
enum Next {
    Frame(Option<Result<WsMessage, WsError>>),
    /// Shutdown, or a close requested elsewhere.
    Stop,
    /// The token expired, or nothing was heard from the client for a ping
    /// interval.
    Timer,
    /// The batch of sends in flight was answered.
    Stored(Vec<Answered>),
}

/// A send waiting for the store.
struct Pending {
    room: Room,
    append: Append,
}

/// How a send ended.
struct Answered {
    reference: Option<Ref>,
    room: Room,
    result: Result<Stored, Error>,
}

/// A batch of sends on its way to the store.
type Storing = Pin<Box<dyn Future<Output = Vec<Answered>> + Send>>;

struct Session {
    app: Arc<App>,
    id: ConnId,
    outbox: Outbox,
    identity: Identity,
    default_room: Option<Room>,
    joined: HashSet<Room>,
    sends: TokenBucket,
    /// Typing frames, limited apart from messages so neither starves the other.
    signals: TokenBucket,
    /// Read markers, limited apart too.
    marks: TokenBucket,
    abuse: TokenBucket,
    /// Pings and pongs from the client.
    control: TokenBucket,
    /// Joins and leaves.
    moves: TokenBucket,
    /// History and presence reads.
    reads: TokenBucket,
    /// Frames handled since the reader last let other tasks run.
    in_a_row: u32,
    /// How the connection ends for its rooms: a goodbye once the client
    /// sent a close frame.
    parting: Parting,
    queue: Sends<Pending>,
    /// Boxed and made on the first send: an idle connection carries one
    /// pointer.
    storing: Option<Storing>,
    /// When the token stops being good, if it does.
    expires_at: Option<Instant>,
}

impl Session {
    fn new(app: Arc<App>, id: ConnId, outbox: Outbox, params: &Params) -> Session {
        let expires_at = params.identity.expiry().map(|left| Instant::now() + left);
        Session {
            sends: TokenBucket::default(),
            signals: TokenBucket::default(),
            marks: TokenBucket::default(),
            abuse: TokenBucket::default(),
            control: TokenBucket::default(),
            moves: TokenBucket::default(),
            reads: TokenBucket::default(),
            in_a_row: 0,
            parting: Parting::Dropped,
            app,
            id,
            outbox,
            identity: params.identity.clone(),
            default_room: params.room.clone(),
            joined: HashSet::new(),
            queue: Sends::new(SENDS_BATCH),
            storing: None,
            expires_at,
        }
    }

    /// Reads and handles frames until the connection is to close.
    async fn run(&mut self, receiver: &mut Socket) {
        // Silence is answered with a ping; silence through a whole interval
        // after it means the peer is gone (a half-open connection).
        let ping_interval = Duration::from_millis(self.app.config.ping_interval_ms);
        let mut last_heard = Instant::now();
        let mut pinged = false;
        let mut reading = self.outbox.unblocked();
        loop {
            let quiet_at = last_heard + ping_interval;
            let frame = match self.next(receiver, quiet_at).await {
                Next::Stop | Next::Frame(None) => return,
                Next::Stored(answered) => {
                    if Box::pin(self.answered(answered)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Next::Timer if self.expires_at.is_some_and(|at| at <= Instant::now()) => {
                    log::info!("connection {}: token expired; closing with 1008", self.id);
                    self.outbox.close(POLICY, "token expired");
                    return;
                }
                Next::Timer if Instant::now() < quiet_at => continue,
                // Its pong may be behind what it still has to read, but a
                // peer whose socket takes bytes again is reading.
                Next::Timer if pinged && self.outbox.unblocked() == reading => {
                    log::info!("connection {}: no answer to a ping; dropping it", self.id);
                    return;
                }
                Next::Timer => {
                    self.outbox.ping();
                    pinged = true;
                    reading = self.outbox.unblocked();
                    last_heard = Instant::now();
                    continue;
                }
                Next::Frame(Some(frame)) => frame,
            };
            last_heard = Instant::now();
            pinged = false;
            // Boxed: the handlers' futures are large, and an idle
            // connection, waiting in `next`, would carry their room.
            if Box::pin(self.frame(frame)).await.is_err() {
                return;
            }
            self.take_turns().await;
        }
    }

    /// Waits for whatever comes first: a frame, a stop, the timer, or the
    /// answer of the sends in flight.
    async fn next(&mut self, receiver: &mut Socket, quiet_at: Instant) -> Next {
        // One timer for both deadlines: each costs an idle connection memory.
        let wake_at = self.expires_at.map_or(quiet_at, |at| at.min(quiet_at));
        let outbox = &self.outbox;
        let storing = &mut self.storing;
        // `or` polls from the left: the client's frames come last, so that a
        // client that always has one ready cannot hold back a stop, its
        // token's expiry or the answers of its own sends.
        async {
            outbox.stopped().await;
            Next::Stop
        }
        .or(async {
            async_std::task::sleep(wake_at.saturating_duration_since(Instant::now())).await;
            Next::Timer
        })
        .or(async {
            match storing {
                Some(batch) => Next::Stored(batch.await),
                None => std::future::pending().await,
            }
        })
        .or(async { Next::Frame(receiver.next().await) })
        .await
    }

    /// Lets other tasks run after `YIELD_EVERY` frames in a row: a socket
    /// that is always readable never makes the reader wait by itself.
    async fn take_turns(&mut self) {
        self.in_a_row += 1;
        if self.in_a_row >= YIELD_EVERY {
            self.in_a_row = 0;
            async_std::task::yield_now().await;
        }
    }

    /// The shape of the joins-and-leaves budget: every room of
    /// `--max-rooms` joined and left once, and a spare, in a burst.
    fn move_limit(&self) -> Limit {
        Limit::new(MOVE_RATE, 2 * self.app.config.max_rooms as u32 + MOVE_SPARE)
    }

    /// Counts a ping or pong from the client; too many close the connection.
    fn control_frame(&mut self) -> Result<(), Closed> {
        if self.control.take(CONTROL) {
            return Ok(());
        }
        log::info!("connection {}: too many pings; closing with 1008", self.id);
        self.outbox.close(POLICY, "too many pings");
        Err(Closed)
    }

    /// Handles one WebSocket message. `Err` means the connection is closing.
    async fn frame(&mut self, frame: Result<WsMessage, WsError>) -> Result<(), Closed> {
        match frame {
            // Boxed: handling a request is a large future that an idle
            // connection would otherwise carry inline all its life.
            Ok(WsMessage::Text(text)) => Box::pin(self.handle(text.as_str())).await,
            Ok(WsMessage::Binary(_)) => {
                let error =
                    Error::bad_request("binary frames are not supported; send JSON text frames");
                Box::pin(self.refuse(None, error)).await
            }
            Ok(WsMessage::Close(frame)) => {
                self.parting = Parting::Goodbye;
                self.outbox
                    .answer_close(frame.map(|frame| u16::from(frame.code)));
                Err(Closed)
            }
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => self.control_frame(),
            Ok(WsMessage::Frame(_)) => Ok(()),
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                log::info!("connection {}: message of {size} bytes over the {max_size} limit; closing with 1009", self.id);
                self.outbox.close_now(TOO_BIG, "message too large");
                Err(Closed)
            }
            Err(e) => {
                log::debug!("connection {}: {e}", self.id);
                Err(Closed)
            }
        }
    }

    /// Answers what was read, leaves every room, and closes: while the
    /// writer sends what is queued and the close frame, what the client
    /// still sends is read and dropped until it answers the close (dropping
    /// the socket with unread data would reset it, and the client might
    /// never see the close code).
    async fn close(mut self, mut receiver: Socket, writer: async_std::task::JoinHandle<()>) {
        let _ = Box::pin(self.settle()).await;
        for room in self.joined.drain() {
            self.app.rooms.leave(self.id, &room, self.parting);
        }
        // Unless a close was requested already (then this one changes
        // nothing), the server is draining or the client is leaving or gone.
        if self.app.shutdown.is_set() {
            self.outbox.close(GOING_AWAY, "server shutting down");
        } else {
            self.outbox.close(NORMAL, "");
        }
        let drain = async { while let Some(Ok(_)) = receiver.next().await {} };
        let mut writer = writer;
        let both = futures_lite::future::zip(&mut writer, drain);
        if async_std::future::timeout(CLOSE_GRACE, both).await.is_err() {
            // A writer still stuck on a peer that takes nothing is stopped,
            // so that its half of the socket goes too.
            writer.cancel().await;
        }
    }

    /// Handles one text frame.
    async fn handle(&mut self, text: &str) -> Result<(), Closed> {
        let decoded = protocol::decode(text, self.default_room.as_ref(), &self.app.limits);
        // Anything but a send waits for the sends before it, so that answers
        // keep the order of requests.
        let sends = |request: &Request| {
            matches!(
                request,
                Request::Send { .. }
                    | Request::Edit { .. }
                    | Request::Delete { .. }
                    | Request::React { .. }
            )
        };
        if !matches!(&decoded, Ok(Decoded { request, .. }) if sends(request)) {
            self.settle().await?;
        }
        let Decoded { request, reference } = match decoded {
            Ok(decoded) => decoded,
            Err(Rejected { reference, error }) => {
                return self.refuse(reference.as_ref(), error).await
            }
        };
        let reference = reference.as_ref();
        // Leaving is always allowed; everything else needs the token to allow the room.
        if !matches!(request, Request::Leave { .. }) {
            if let Err(error) = self.identity.check(request.room()) {
                self.settle().await?;
                return self.refuse(reference, error).await;
            }
        }
        match request {
            Request::Join { room, replay } => self.join(reference, room, replay).await,
            Request::Leave { room } => self.leave(reference, room).await,
            Request::Send { room, text } => self.send(reference, room, Change::Message(text)).await,
            Request::Edit { room, id, text } => {
                self.send(reference, room, Change::Edit { target: id, text })
                    .await
            }
            Request::Delete { room, id } => {
                self.send(reference, room, Change::Delete { target: id })
                    .await
            }
            Request::React {
                room,
                id,
                emoji,
                on,
            } => {
                let change = Change::React {
                    target: id,
                    emoji,
                    on,
                };
                self.send(reference, room, change).await
            }
            Request::Read { room, id } => self.mark_read(reference, room, id).await,
            Request::History {
                room,
                before,
                limit,
            } => self.history(reference, room, before, limit).await,
            Request::Typing { room } => self.typing(reference, room).await,
            Request::Presence { room } => self.presence(reference, room).await,
        }
    }

    async fn join(
        &mut self,
        reference: Option<&Ref>,
        room: Room,
        replay: Replay,
    ) -> Result<(), Closed> {
        if !self.moves.take(self.move_limit()) {
            return self.refuse(reference, too_many_moves()).await;
        }
        if !self.joined.contains(&room) && self.joined.len() >= self.app.config.max_rooms {
            let error = Error::bad_request(format!(
                "this connection has joined {} rooms, the limit; leave one first",
                self.joined.len()
            ));
            return self.refuse(reference, error).await;
        }
        let user = self.identity.user.clone();
        match self
            .app
            .rooms
            .join(self.id, &self.outbox, &room, &user, replay)
            .await
        {
            Ok(()) => {
                self.joined.insert(room);
                Ok(())
            }
            Err(JoinError::Closed) => Err(Closed),
            Err(JoinError::Refused(error)) => {
                if !self.app.rooms.is_member(self.id, &room) {
                    self.joined.remove(&room);
                }
                self.refuse(reference, error).await
            }
        }
    }

    async fn leave(&mut self, reference: Option<&Ref>, room: Room) -> Result<(), Closed> {
        if !self.moves.take(self.move_limit()) {
            return self.refuse(reference, too_many_moves()).await;
        }
        if self.joined.remove(&room) {
            self.app.rooms.leave(self.id, &room, Parting::Goodbye);
            self.outbox.push(protocol::left(&room)).await
        } else {
            self.refuse(reference, not_joined(&room)).await
        }
    }

    /// Queues a send for the store; the reader goes on unless too many wait.
    async fn send(
        &mut self,
        reference: Option<&Ref>,
        room: Room,
        change: Change,
    ) -> Result<(), Closed> {
        if !self
            .sends
            .take(Limit::new(self.app.config.rate, self.app.config.burst))
        {
            let error = Error::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second (bursts of {}); slow down",
                    self.app.config.rate, self.app.config.burst
                ),
            );
            self.settle().await?;
            return self.refuse(reference, error).await;
        }
        if self.queue.len() >= SENDS_WAITING {
            self.settle_one().await?;
        }
        let append = Append {
            user: self.identity.user.clone(),
            change,
            reference: reference.cloned(),
            moderator: self.identity.moderator,
        };
        if let Some(batch) = self.queue.push(Pending { room, append }) {
            self.storing = Some(store(self.app.clone(), batch));
        }
        Ok(())
    }

    async fn history(
        &mut self,
        reference: Option<&Ref>,
        room: Room,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(), Closed> {
        if !self.reads.take(READS) {
            return self.refuse(reference, too_many_reads()).await;
        }
        let slice = match before {
            Some(before) => Slice::newest_before(before, limit),
            None => Slice::newest_after(0, limit),
        };
        match self.app.read(&room, slice).await {
            Ok(page) => {
                let frame = protocol::history(reference, &room, &page.events, page.more_before());
                self.outbox.push(frame).await
            }
            Err(error) => self.refuse(reference, error).await,
        }
    }

    async fn typing(&mut self, reference: Option<&Ref>, room: Room) -> Result<(), Closed> {
        if !self.joined.contains(&room) {
            return self.refuse(reference, not_joined(&room)).await;
        }
        if !self.signals.take(SIGNALS) {
            let error = Error::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {SIGNAL_RATE} typing frames per second; send one every few seconds"
                ),
            );
            return self.refuse(reference, error).await;
        }
        let signal = Signal {
            origin: self.app.rooms.origin(self.id),
            frame: protocol::typing(&room, &self.identity.user),
            room,
        };
        match self.app.store.feed.signal(signal).await {
            Ok(()) => Ok(()),
            Err(e) => self.refuse(reference, e.into()).await,
        }
    }

    /// Moves the user's read marker; answers only when the id is beyond
    /// the room's last one.
    async fn mark_read(
        &mut self,
        reference: Option<&Ref>,
        room: Room,
        id: u64,
    ) -> Result<(), Closed> {
        if !self.marks.take(MARKS) {
            let error = Error::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {MARK_RATE} read markers per second; send the latest now and then"
                ),
            );
            return self.refuse(reference, error).await;
        }
        let user = self.identity.user.clone();
        let signal = Signal {
            origin: self.app.rooms.origin(self.id),
            frame: protocol::read(&room, &user, id),
            room: room.clone(),
        };
        match self.app.store.log.mark(&room, &user, id, signal).await {
            Ok(Marked::Beyond) => {
                let error =
                    Error::bad_request(format!("id {id} is beyond the last id of room {room}"));
                self.refuse(reference, error).await
            }
            Ok(Marked::Moved | Marked::Unchanged) => Ok(()),
            Err(e) => self.refuse(reference, e.into()).await,
        }
    }

    async fn presence(&mut self, reference: Option<&Ref>, room: Room) -> Result<(), Closed> {
        if !self.reads.take(READS) {
            return self.refuse(reference, too_many_reads()).await;
        }
        match self.app.store.presence.users(&room).await {
            Ok(users) => {
                self.outbox
                    .push(protocol::presence(reference, &room, &users))
                    .await
            }
            Err(e) => self.refuse(reference, e.into()).await,
        }
    }

    /// Answers a batch of sends, in order, and sends the next one.
    async fn answered(&mut self, answered: Vec<Answered>) -> Result<(), Closed> {
        self.storing = self
            .queue
            .finished()
            .map(|batch| store(self.app.clone(), batch));
        // The acks of a run of stored sends go out together.
        let mut acks = Vec::new();
        for sent in answered {
            let reference = sent.reference.as_ref();
            match sent.result {
                Ok(stored) => acks.push(protocol::ack(reference, &sent.room, stored.id)),
                Err(error) => {
                    self.outbox.push_all(std::mem::take(&mut acks)).await?;
                    self.refuse(reference, error).await?
                }
            }
        }
        self.outbox.push_all(acks).await
    }

    /// Waits for the batch in flight, if any, and answers it.
    async fn settle_one(&mut self) -> Result<(), Closed> {
        match self.storing.as_mut() {
            Some(batch) => {
                let answered = batch.await;
                self.answered(answered).await
            }
            None => Ok(()),
        }
    }

    /// Waits for every send in flight and waiting, and answers each, in order.
    async fn settle(&mut self) -> Result<(), Closed> {
        while self.storing.is_some() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Answers a request with an error. A connection that keeps sending bad
    /// requests is closed with 1008; being throttled or finding the store
    /// down is not the client's fault and does not count.
    async fn refuse(&mut self, reference: Option<&Ref>, error: Error) -> Result<(), Closed> {
        self.app.metrics.refused(error.code);
        self.outbox.push(protocol::error(reference, &error)).await?;
        let blameless = matches!(error.code, ErrorCode::RateLimited | ErrorCode::Unavailable);
        if !blameless && !self.abuse.take(ABUSE) {
            log::info!(
                "connection {}: too many bad requests; closing with 1008",
                self.id
            );
            self.outbox.close(POLICY, "too many bad requests");
            return Err(Closed);
        }
        Ok(())
    }
}

/// Stores a batch of sends: one append per room, the rooms side by side,
/// and the answers back in the batch's order.
fn store(app: Arc<App>, batch: Vec<Pending>) -> Storing {
    Box::pin(async move {
        let count = batch.len();
        let parts = sends::by_room(batch, |pending| pending.room.clone());
        let stored = futures_util::future::join_all(parts.into_iter().map(|(room, sends)| {
            let app = app.clone();
            async move {
                let appends: Vec<Append> = sends.iter().map(|(_, p)| p.append.clone()).collect();
                let result = app.append(&room, &appends).await;
                (room, sends, result)
            }
        }))
        .await;
        let mut answers: Vec<Option<Answered>> = (0..count).map(|_| None).collect();
        for (room, sends, result) in stored {
            let mut outcomes = match result {
                Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
                Err(error) => vec![Some(Err(error)); sends.len()],
            };
            for ((at, pending), outcome) in sends.into_iter().zip(outcomes.iter_mut()) {
                answers[at] = Some(Answered {
                    reference: pending.append.reference,
                    room: room.clone(),
                    result: outcome.take().expect("one outcome per send"),
                });
            }
        }
        answers.into_iter().flatten().collect()
    })
}

fn too_many_moves() -> Error {
    Error::new(
        ErrorCode::RateLimited,
        format!("more than {MOVE_RATE} joins and leaves per second; stay in a room a while"),
    )
}

fn too_many_reads() -> Error {
    Error::new(
        ErrorCode::RateLimited,
        format!("more than {READ_RATE} history and presence requests per second (bursts of {READ_BURST}); slow down"),
    )
}

fn not_joined(room: &Room) -> Error {
    Error::new(ErrorCode::NotJoined, format!("not joined to room {room}"))
}
