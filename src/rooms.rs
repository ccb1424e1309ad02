//! The local room registry: which connections of this instance are in which
//! room, and the driving of each room's rules of order (`order.rs`). What the
//! live feed delivers and what history reads return goes in under the room's
//! lock; the reads the rules ask for are made here, and the frames they
//! return are offered (live) or pushed (a join's replay, which waits while
//! the connection is busy).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;

use crate::error::{Error, ErrorCode};
use crate::feed::{Delivery, Feed, FeedEvent, Signal};
use crate::fields::{Room, User};
use crate::lock::lock;
use crate::log::{Log, Read, Seen, StoreError};
use crate::metrics::Metrics;
use crate::order::{
    self, ConnId, Delivered, JoinPage, LiveStep, Offered, RepairStep, RoomOrder, Sink,
};
use crate::outbox::{Closed, Outbox, Refused};
use crate::presence::Presence;
use crate::protocol::Replay;

/// How long a repair waits before reading again after the store failed.
const REPAIR_BACKOFF: Duration = Duration::from_millis(250);
/// Pause before reading again when an id announced during a repair's read
/// was not in it yet.
const REPAIR_AGAIN: Duration = Duration::from_millis(5);

/// The registry, a cheap-clone handle shared by connections and the feed task.
#[derive(Clone)]
pub struct Rooms(Arc<Inner>);

/// What the registry needs.
pub struct RoomsSetup {
    pub log: Arc<dyn Log>,
    pub feed: Arc<dyn Feed>,
    /// This instance's name, which tells its own signals from others'.
    pub instance: String,
    pub presence: Presence,
    pub limits: order::Limits,
    pub metrics: Metrics,
    /// Longest a join waits for a room's repair.
    pub timeout: Duration,
}

struct Inner {
    /// Rooms with at least one local member. The map's lock is only held to
    /// find, add or remove a room; each room has its own lock for its order.
    rooms: Mutex<HashMap<Room, Arc<Slot>>>,
    setup: RoomsSetup,
}

/// One room of the registry.
struct Slot {
    room: Room,
    order: Mutex<RoomOrder<Outbox>>,
    subscription: Mutex<Subscription>,
    /// Notified when the room's subscription settles.
    subscribed: Event,
    /// Notified when a repair of the room ends.
    repaired: Event,
    /// The room left the registry; tasks still holding it stop.
    removed: AtomicBool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    #[default]
    None,
    Pending,
    Active,
}

impl Sink for Outbox {
    fn offer(&self, frame: crate::protocol::Frame) -> Offered {
        match Outbox::offer(self, frame) {
            Ok(()) => Offered::Queued,
            Err(Refused::TooSlow) => Offered::TooSlow,
            Err(Refused::Closed) => Offered::Closed,
        }
    }
}

/// How a member went: its user's departure is told at once after a
/// goodbye, and after the grace otherwise (see `Presence::drop_out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parting {
    /// The client asked: a `leave`, or a WebSocket close frame.
    Goodbye,
    /// The connection ended otherwise: the network, a timeout, a server's
    /// close, an event stream's end.
    Dropped,
}

/// Why a join did not complete.
#[derive(Debug)]
pub enum JoinError {
    /// The connection is closing; nothing more can be sent to it.
    Closed,
    /// Tell the client.
    Refused(Error),
}

impl From<Closed> for JoinError {
    fn from(_: Closed) -> JoinError {
        JoinError::Closed
    }
}

impl From<Error> for JoinError {
    fn from(e: Error) -> JoinError {
        JoinError::Refused(e)
    }
}

impl From<StoreError> for JoinError {
    fn from(e: StoreError) -> JoinError {
        JoinError::Refused(e.into())
    }
}

impl Rooms {
    pub fn new(setup: RoomsSetup) -> Rooms {
        Rooms(Arc::new(Inner {
            rooms: Mutex::new(HashMap::new()),
            setup,
        }))
    }

    /// What this instance has seen of `room`, for an append to tell the store.
    pub fn seen(&self, room: &Room) -> Vec<Seen> {
        self.slot(room)
            .map(|slot| lock(&slot.order).seen())
            .unwrap_or_default()
    }

    /// Whether `conn` is a member of `room` (live or joining).
    pub fn is_member(&self, conn: ConnId, room: &Room) -> bool {
        self.slot(room)
            .is_some_and(|slot| lock(&slot.order).is_member(conn))
    }

    /// The origin of signals sent by `conn` of this instance.
    pub fn origin(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.0.setup.instance)
    }

    fn slot(&self, room: &Room) -> Option<Arc<Slot>> {
        lock(&self.0.rooms).get(room).cloned()
    }

    /// Joins `conn` to `room`: `joined`, the replay, `replayed`, then live
    /// events, with no gap and no duplicate. On error the connection keeps
    /// an earlier membership if nothing of the re-join was sent yet, and
    /// is not a member otherwise.
    pub async fn join(
        &self,
        conn: ConnId,
        outbox: &Outbox,
        room: &Room,
        user: &User,
        replay: Replay,
    ) -> Result<(), JoinError> {
        let slot = self.register(room);
        let read = lock(&slot.order).join(conn, outbox.clone(), user.clone(), replay);
        let result = self.run_join(&slot, conn, outbox, read).await;
        if result.is_err() {
            let left = lock(&slot.order).join_failed(conn);
            self.left(&slot, left, Parting::Goodbye);
        }
        result
    }

    fn register(&self, room: &Room) -> Arc<Slot> {
        let limits = self.0.setup.limits;
        lock(&self.0.rooms)
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    room: room.clone(),
                    order: Mutex::new(RoomOrder::new(room.clone(), limits)),
                    subscription: Mutex::default(),
                    subscribed: Event::new(),
                    repaired: Event::new(),
                    removed: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// The steps of a join, as the room's order says: read, push, try.
    async fn run_join(
        &self,
        slot: &Arc<Slot>,
        conn: ConnId,
        outbox: &Outbox,
        mut read: Read,
    ) -> Result<(), JoinError> {
        self.subscribed(slot).await?;
        loop {
            let page = self.0.setup.log.read(&slot.room, read).await?;
            let frames = match lock(&slot.order).join_page(conn, &page) {
                Some(JoinPage::Push(frames)) => frames,
                Some(JoinPage::Read(next)) => {
                    read = next;
                    continue;
                }
                None => return Err(JoinError::Closed),
            };
            outbox.push_all(frames).await?;
            match self.go_live(slot, conn).await? {
                Some(next) => read = next,
                None => return Ok(()),
            }
        }
    }

    /// Tries to make a joiner live, waiting for the room's repair when the
    /// order says so; returns the read to make when it is not live yet.
    async fn go_live(&self, slot: &Arc<Slot>, conn: ConnId) -> Result<Option<Read>, JoinError> {
        loop {
            // Listening before asking, so that a repair that ends in between
            // is not missed.
            let repaired = slot.repaired.listen();
            let step = lock(&slot.order).try_live(conn);
            match step.ok_or(JoinError::Closed)? {
                LiveStep::Live {
                    arrived,
                    count,
                    truncated,
                    repair,
                } => {
                    self.0.setup.metrics.replayed(count, truncated);
                    if let Some(user) = arrived {
                        self.0.setup.presence.arrive(&slot.room, &user);
                    }
                    if let Some(read) = repair {
                        self.spawn_repair(slot, read);
                    }
                    return Ok(None);
                }
                LiveStep::Read(next) => return Ok(Some(next)),
                LiveStep::Wait { start } => {
                    if let Some(read) = start {
                        self.spawn_repair(slot, read);
                    }
                    let waited = async_std::future::timeout(self.0.setup.timeout, repaired).await;
                    if waited.is_err() {
                        return Err(unavailable(
                            "the room's history could not be read in time; join again",
                        )
                        .into());
                    }
                }
                LiveStep::Failed(why) => return Err(unavailable(why).into()),
            }
        }
    }

    /// Waits until the room's live feed runs on this instance, starting it if
    /// nobody else is: history read after this point misses nothing that the
    /// feed will not bring.
    async fn subscribed(&self, slot: &Arc<Slot>) -> Result<(), Error> {
        loop {
            let listener = {
                let mut subscription = lock(&slot.subscription);
                match *subscription {
                    Subscription::Active => return Ok(()),
                    Subscription::Pending => Some(slot.subscribed.listen()),
                    Subscription::None => {
                        *subscription = Subscription::Pending;
                        None
                    }
                }
            };
            if let Some(listener) = listener {
                listener.await;
                continue;
            }
            let result = self.0.setup.feed.subscribe(&slot.room).await;
            *lock(&slot.subscription) = if result.is_ok() {
                Subscription::Active
            } else {
                Subscription::None
            };
            slot.subscribed.notify(usize::MAX);
            return result.map_err(Error::from);
        }
    }

    /// Removes `conn` from `room`; returns whether it was a member.
    pub fn leave(&self, conn: ConnId, room: &Room, parting: Parting) -> bool {
        let Some(slot) = self.slot(room) else {
            return false;
        };
        let left = lock(&slot.order).leave(conn);
        let was_member = left.was_member;
        self.left(&slot, left, parting);
        was_member
    }

    /// After a member went: its user departs when it was the last of it
    /// (after the grace, when it went without a goodbye), and an empty room
    /// leaves the registry and the live feed (whatever became of its
    /// subscription).
    fn left(&self, slot: &Arc<Slot>, left: order::Left, parting: Parting) {
        if let Some(user) = left.departed {
            match parting {
                Parting::Goodbye => self.0.setup.presence.depart(&slot.room, &user),
                Parting::Dropped => self.0.setup.presence.drop_out(&slot.room, &user),
            }
        }
        if !left.empty {
            return;
        }
        let mut rooms = lock(&self.0.rooms);
        // Checked again under the registry's lock: a joiner may have come.
        if !lock(&slot.order).is_empty() {
            return;
        }
        if rooms.get(&slot.room).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            rooms.remove(&slot.room);
            slot.removed.store(true, Ordering::Release);
            self.0.setup.feed.unsubscribe(&slot.room);
            slot.subscribed.notify(usize::MAX);
            slot.repaired.notify(usize::MAX);
        }
    }

    /// Takes an event of the live feed: hands a delivery to its room's
    /// order, and repairs a room when deliveries may have been lost.
    pub fn on_feed(&self, event: FeedEvent) {
        match event {
            FeedEvent::Delivery(delivery) => self.deliver(delivery),
            FeedEvent::Signal(signal) => self.signal(signal),
            FeedEvent::Repair(room) => {
                if let Some(slot) = self.slot(&room) {
                    let repair = lock(&slot.order).feed_lost();
                    if let Some(read) = repair {
                        self.spawn_repair(&slot, read);
                    }
                }
            }
        }
    }

    fn deliver(&self, delivery: Delivery) {
        let Some(slot) = self.slot(&delivery.room) else {
            return;
        };
        let delivered = lock(&slot.order).deliver(&delivery.epoch, &delivery.event);
        self.delivered(&slot, delivered);
    }

    fn delivered(&self, slot: &Arc<Slot>, delivered: Delivered) {
        let metrics = &self.0.setup.metrics;
        metrics.delivered(delivered.queued);
        for _ in 0..delivered.too_slow {
            metrics.slow_close();
        }
        if let Some(read) = delivered.repair {
            self.spawn_repair(slot, read);
        }
    }

    /// Hands a signal to the room's live members, but not to the connection
    /// it came from.
    fn signal(&self, signal: Signal) {
        let Some(slot) = self.slot(&signal.room) else {
            return;
        };
        let sender = signal
            .origin
            .strip_prefix(self.0.setup.instance.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|conn| conn.parse::<ConnId>().ok());
        lock(&slot.order).signal(&signal.frame, sender);
    }

    fn spawn_repair(&self, slot: &Arc<Slot>, read: Read) {
        self.0.setup.metrics.gap();
        let rooms = self.clone();
        let slot = slot.clone();
        async_std::task::spawn(async move { rooms.repair(slot, read).await });
    }

    /// Makes the reads a room's repair asks for until the order says it is
    /// done.
    async fn repair(&self, slot: Arc<Slot>, mut read: Read) {
        loop {
            if slot.removed.load(Ordering::Acquire) {
                return;
            }
            let page = self.0.setup.log.read(&slot.room, read).await;
            if let Err(e) = &page {
                log::warn!("repairing room {} failed, retrying: {e}", slot.room);
            }
            let repaired = lock(&slot.order).repair_page(page.as_ref().map_err(|_| ()));
            if let Some((from, to)) = repaired.skipped {
                log::warn!(
                    "room {}: ids {from}..{to} left history before this instance could deliver them",
                    slot.room
                );
            }
            if let Some(epoch) = &repaired.new_epoch {
                log::warn!(
                    "room {} has a new epoch {epoch:?}: its history began again",
                    slot.room
                );
            }
            self.delivered(&slot, repaired.delivered);
            read = match repaired.step {
                RepairStep::Read(next) => next,
                RepairStep::ReadSoon(next) => {
                    async_std::task::sleep(REPAIR_AGAIN).await;
                    next
                }
                RepairStep::Retry(next) => {
                    async_std::task::sleep(REPAIR_BACKOFF).await;
                    next
                }
                RepairStep::Done => {
                    slot.repaired.notify(usize::MAX);
                    return;
                }
            };
        }
    }
}

fn unavailable(why: &'static str) -> Error {
    Error::new(ErrorCode::Unavailable, why)
}
