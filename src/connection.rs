//! One WebSocket session: the reader loop that turns client frames into
//! actions, with the outbox and writer task that carry everything back.
//!
//! The reader handles one request at a time, so a client's answers come in the
//! order of its requests. It is the only task that changes the connection's
//! set of joined rooms; rooms hold its outbox to deliver live messages.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::error::CapacityError;
use async_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use async_tungstenite::{WebSocketReceiver, WebSocketStream};
use futures_lite::{FutureExt, StreamExt};
use futures_util::stream::FuturesOrdered;

use crate::app::App;
use crate::auth::Identity;
use crate::bucket::TokenBucket;
use crate::error::{Error, ErrorCode};
use crate::fields::{Ref, Room};
use crate::outbox::{Closed, Outbox, GOING_AWAY, NORMAL, POLICY, TOO_BIG};
use crate::protocol::{self, Decoded, Rejected, Replay, Request};
use crate::rooms::{ConnId, JoinError};
use crate::store::{Draft, Signal, Slice, Stored};

/// How long a closing connection waits for its writer to finish and the
/// client to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bad requests a connection may make in a burst, and per second after it,
/// before it is closed with 1008. Generous: a client with a bug should see
/// its errors, not lose its connection.
const ABUSE_BURST: u32 = 100;
const ABUSE_RATE: u32 = 10;
/// Typing frames a connection may send in a burst, and per second after it.
const SIGNAL_BURST: u32 = 10;
const SIGNAL_RATE: u32 = 5;
/// Sends of one connection that may be on their way to the store at once.
/// They are dispatched in the order they came, on one store connection, so
/// they are stored in that order; their answers go out in that order too.
const SENDS_IN_FLIGHT: usize = 32;

/// What the upgrade request's query asked for.
pub struct Params {
    /// Who the connection speaks for, and which rooms its token allows.
    pub identity: Identity,
    /// The room of `?room=`: joined at once, and the target of plain-text frames.
    pub room: Option<Room>,
    pub replay: Replay,
}

/// Serves one upgraded WebSocket until it closes: starts its writer task and
/// returns the reader's future. Not an `async fn`, whose future would carry
/// the whole `WebSocketStream` argument for the connection's life after
/// splitting it.
pub fn serve(
    app: Arc<App>,
    ws: WebSocketStream<TcpStream>,
    params: Params,
) -> impl std::future::Future<Output = ()> + Send {
    let (outbox, writer) = Outbox::new(app.config.outbox);
    let (sender, receiver) = ws.split();
    let writer = async_std::task::spawn(writer.run(sender));
    read(app, outbox, writer, receiver, params)
}

async fn read(
    app: Arc<App>,
    outbox: Outbox,
    writer: async_std::task::JoinHandle<()>,
    mut receiver: WebSocketReceiver<TcpStream>,
    params: Params,
) {
    let id = app.connections.add(&outbox);
    app.metrics.connection_opened();
    let mut session = Session {
        app: app.clone(),
        id,
        outbox: outbox.clone(),
        identity: params.identity,
        default_room: params.room.clone(),
        joined: HashSet::new(),
        sends: TokenBucket::new(app.config.rate, app.config.burst),
        signals: TokenBucket::new(SIGNAL_RATE, SIGNAL_BURST),
        abuse: TokenBucket::new(ABUSE_RATE, ABUSE_BURST),
        sending: InFlight::default(),
    };
    log::debug!("connection {id} opened for {}", session.identity.user);

    let welcome = protocol::welcome(
        &session.identity.user,
        &app.config.instance,
        &format!("c{id:x}"),
    );
    // A token that expires while connected ends the connection with 1008.
    let expires_at = session
        .identity
        .expiry()
        .map(|left| std::time::Instant::now() + left);
    let mut open = outbox.push(welcome).await.is_ok();
    if let (true, Some(room)) = (open, params.room) {
        open = Box::pin(session.join(None, room, params.replay))
            .await
            .is_ok();
    }
    // Silence is answered with a ping; silence through a whole interval after
    // it means the peer is gone (a half-open connection), and it is dropped.
    let ping_interval = Duration::from_millis(app.config.ping_interval_ms);
    let mut last_heard = std::time::Instant::now();
    let mut pinged = false;
    while open {
        // One timer for both deadlines: each costs an idle connection memory.
        let quiet_at = last_heard + ping_interval;
        let wake_at = expires_at.map_or(quiet_at, |at| at.min(quiet_at));
        let next = async { Next::Frame(receiver.next().await) }
            .or(async {
                // A close requested elsewhere, or the server draining.
                outbox.stopped().await;
                Next::Stop
            })
            .or(async {
                async_std::task::sleep(
                    wake_at.saturating_duration_since(std::time::Instant::now()),
                )
                .await;
                Next::Timer
            })
            .or(async {
                match session.sending.next().await {
                    Some(sent) => Next::Sent(sent),
                    None => std::future::pending().await,
                }
            })
            .await;
        let frame = match next {
            Next::Stop | Next::Frame(None) => break,
            Next::Sent(sent) => {
                open = Box::pin(session.answer(sent)).await.is_ok();
                continue;
            }
            Next::Timer if expires_at.is_some_and(|at| at <= std::time::Instant::now()) => {
                log::info!("connection {id}: token expired; closing with 1008");
                outbox.close(POLICY, "token expired");
                break;
            }
            Next::Timer if std::time::Instant::now() < quiet_at => continue,
            Next::Timer if pinged => {
                log::info!("connection {id}: no answer to a ping; dropping it");
                break;
            }
            Next::Timer => {
                outbox.ping();
                pinged = true;
                last_heard = std::time::Instant::now();
                continue;
            }
            Next::Frame(Some(frame)) => frame,
        };
        last_heard = std::time::Instant::now();
        pinged = false;
        open = match frame {
            // Boxed: handling a request is a large future that an idle
            // connection would otherwise carry inline all its life.
            Ok(WsMessage::Text(text)) => Box::pin(session.handle(text.as_str())).await.is_ok(),
            Ok(WsMessage::Binary(_)) => Box::pin(session.refuse(
                None,
                Error::bad_request("binary frames are not supported; send JSON text frames"),
            ))
            .await
            .is_ok(),
            Ok(WsMessage::Close(_)) => false,
            Ok(_) => true,
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                log::info!("connection {id}: message of {size} bytes over the {max_size} limit; closing with 1009");
                outbox.close_now(TOO_BIG, "message too large");
                false
            }
            Err(e) => {
                log::debug!("connection {id}: {e}");
                false
            }
        };
    }

    // What was read is answered, as far as the connection still takes it.
    let _ = Box::pin(session.settle()).await;
    for room in session.joined.drain() {
        app.rooms.leave(id, &room);
    }
    // Unless a close was requested already (then this one changes nothing),
    // the server is draining or the client is leaving or gone.
    if app.shutdown.is_set() {
        outbox.close(GOING_AWAY, "server shutting down");
    } else {
        outbox.close(NORMAL, "");
    }
    // The closing handshake: while the writer sends what is queued and the
    // close frame, what the client still sends is read and dropped until it
    // answers the close. Dropping the socket with unread data would reset it,
    // and the client might never see the close code.
    let drain = async { while let Some(Ok(_)) = receiver.next().await {} };
    let _ = async_std::future::timeout(CLOSE_GRACE, futures_lite::future::zip(writer, drain)).await;
    app.connections.remove(id);
    app.metrics.connection_closed();
    log::debug!("connection {id} closed");
}

/// What woke the reader loop.
enum Next {
    Frame(Option<Result<WsMessage, WsError>>),
    /// Shutdown, or a close requested elsewhere.
    Stop,
    /// The token expired, or nothing was heard from the client for a ping
    /// interval.
    Timer,
    /// A send in flight was stored, or failed.
    Sent(Sent),
}

/// A send on its way to the store, and where it ended.
type Sending = Pin<Box<dyn Future<Output = Sent> + Send>>;

struct Sent {
    reference: Option<Ref>,
    room: Room,
    result: Result<Stored, Error>,
}

/// The connection's sends in flight, oldest first. Boxed and made on the
/// first send: an idle connection carries one pointer.
#[derive(Default)]
struct InFlight(Option<Box<FuturesOrdered<Sending>>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |sends| sends.len())
    }

    fn push(&mut self, send: Sending) {
        self.0.get_or_insert_with(Default::default).push_back(send);
    }

    /// The oldest send once it has ended; `None` when none is in flight.
    async fn next(&mut self) -> Option<Sent> {
        let sends = self.0.as_mut()?;
        let sent = sends.next().await;
        if sends.is_empty() {
            self.0 = None;
        }
        sent
    }
}

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
    abuse: TokenBucket,
    sending: InFlight,
}

impl Session {
    /// Handles one text frame. `Err` means the connection is closing.
    async fn handle(&mut self, text: &str) -> Result<(), Closed> {
        let decoded = protocol::decode(text, self.default_room.as_ref(), &self.app.limits);
        // Anything but a send waits for the sends before it, so that answers
        // keep the order of requests.
        if !matches!(
            decoded,
            Ok(Decoded {
                request: Request::Send { .. },
                ..
            })
        ) {
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
            Request::Leave { room } => {
                if self.joined.remove(&room) {
                    self.app.rooms.leave(self.id, &room);
                    self.outbox.push(protocol::left(&room)).await
                } else {
                    self.refuse(reference, not_joined(&room)).await
                }
            }
            Request::Send { room, text } => {
                if !self.sends.take() {
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
                if self.sending.len() >= SENDS_IN_FLIGHT {
                    if let Some(sent) = self.sending.next().await {
                        self.answer(sent).await?;
                    }
                }
                let draft = Draft {
                    room: room.clone(),
                    user: self.identity.user.clone(),
                    text,
                    reference: reference.cloned(),
                };
                let app = self.app.clone();
                let reference = reference.cloned();
                self.sending.push(Box::pin(async move {
                    let result = app.publish(draft).await;
                    Sent {
                        reference,
                        room,
                        result,
                    }
                }));
                Ok(())
            }
            Request::History {
                room,
                before,
                limit,
            } => {
                let slice = match before {
                    Some(before) => Slice::newest_before(before, limit),
                    None => Slice::newest_after(0, limit),
                };
                match self.app.read(&room, slice).await {
                    Ok(page) => {
                        let more = page.messages.first().is_some_and(|m| m.id > page.first);
                        self.outbox
                            .push(protocol::history(reference, &room, &page.messages, more))
                            .await
                    }
                    Err(error) => self.refuse(reference, error).await,
                }
            }
            Request::Typing { room } => {
                if !self.joined.contains(&room) {
                    return self.refuse(reference, not_joined(&room)).await;
                }
                if !self.signals.take() {
                    let error = Error::new(
                        ErrorCode::RateLimited,
                        format!("more than {SIGNAL_RATE} typing frames per second; send one every few seconds"),
                    );
                    return self.refuse(reference, error).await;
                }
                let signal = Signal {
                    origin: self.app.rooms.origin(self.id),
                    frame: protocol::typing(&room, &self.identity.user),
                    room,
                };
                match self.app.store.signal(signal).await {
                    Ok(()) => Ok(()),
                    Err(e) => self.refuse(reference, e.into()).await,
                }
            }
            Request::Presence { room } => match self.app.store.presence(&room).await {
                Ok(users) => {
                    self.outbox
                        .push(protocol::presence(reference, &room, &users))
                        .await
                }
                Err(e) => self.refuse(reference, e.into()).await,
            },
        }
    }

    async fn join(
        &mut self,
        reference: Option<&Ref>,
        room: Room,
        replay: Replay,
    ) -> Result<(), Closed> {
        if !self.joined.contains(&room) && self.joined.len() >= self.app.config.max_rooms {
            let error = Error::bad_request(format!(
                "this connection has joined {} rooms, the limit; leave one first",
                self.joined.len()
            ));
            return self.refuse(reference, error).await;
        }
        match self
            .app
            .rooms
            .join(self.id, &self.outbox, &room, &self.identity.user, replay)
            .await
        {
            Ok(()) => {
                self.joined.insert(room);
                Ok(())
            }
            Err(JoinError::Closed) => Err(Closed),
            Err(JoinError::Refused(error)) => {
                self.joined.remove(&room);
                self.refuse(reference, error).await
            }
        }
    }

    /// Answers a send that ended: `ack`, or the error.
    async fn answer(&mut self, sent: Sent) -> Result<(), Closed> {
        let reference = sent.reference.as_ref();
        match sent.result {
            Ok(stored) => {
                self.outbox
                    .push(protocol::ack(reference, &sent.room, stored.id))
                    .await
            }
            Err(error) => self.refuse(reference, error).await,
        }
    }

    /// Waits for every send in flight and answers each, oldest first.
    async fn settle(&mut self) -> Result<(), Closed> {
        while let Some(sent) = self.sending.next().await {
            self.answer(sent).await?;
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
        if !blameless && !self.abuse.take() {
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

fn not_joined(room: &Room) -> Error {
    Error::new(ErrorCode::NotJoined, format!("not joined to room {room}"))
}
