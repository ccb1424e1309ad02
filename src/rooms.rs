//! The local room registry: which connections of this instance are in which
//! room, and the per-room feed that puts deliveries in order for them.
//!
//! Each room keeps a cursor, the epoch and id of the last message it delivered.
//! The feed is never trusted blindly: a delivery that is not exactly the next
//! id is a duplicate (dropped) or a gap, and a gap is repaired by reading the
//! missing ids from history before anything newer goes out. After the feed
//! says a room may have lost deliveries (`Repair`), it repairs the same way.
//!
//! A join is gap-free and duplicate-free against concurrent publishers: the
//! member is registered first (its live deliveries are held back in `pending`),
//! then history is read and replayed, and the member goes live under the room's
//! lock with the held-back deliveries that come after what the replay covered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;

use crate::error::{Error, ErrorCode};
use crate::fields::{Room, User};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::outbox::{Closed, Outbox, Refused};
use crate::presence::Presence;
use crate::protocol::{self, Replay};
use crate::store::{Delivery, Epoch, FeedEvent, Message, Signal, Slice, Store};

/// How many catch-up reads a join makes before giving up on a room that is
/// changing faster than it can be read.
const MAX_CATCH_UP_READS: usize = 16;
/// How long a repair waits before reading again after the store failed.
const REPAIR_BACKOFF: Duration = Duration::from_millis(250);
/// Pause before reading again when an id announced during a repair's read
/// was not in it yet.
const REPAIR_AGAIN: Duration = Duration::from_millis(5);
/// How many ids one repair read asks for.
const REPAIR_PAGE: usize = 1000;

/// Identifies a connection within this instance.
pub type ConnId = u64;

/// The registry, a cheap-clone handle shared by connections and the feed task.
#[derive(Clone)]
pub struct Rooms(Arc<Inner>);

struct Inner {
    /// Rooms with at least one local member. The map's lock is only held to
    /// find, add or remove a room; each room has its own lock for delivery.
    rooms: Mutex<HashMap<Room, Arc<RoomFeed>>>,
    store: Arc<Store>,
    /// This instance's name, which tells its own signals from others'.
    instance: String,
    presence: Presence,
    /// Most live deliveries held back for a member while it joins; beyond it
    /// the join reads the rest from history instead.
    pending_limit: usize,
    /// Most messages a `since` join replays; where more were missed, the newest.
    replay_cap: usize,
    metrics: Metrics,
}

struct RoomFeed {
    room: Room,
    state: Mutex<FeedState>,
    /// Notified when the room's subscription settles.
    subscription: Event,
}

#[derive(Default)]
struct FeedState {
    /// The epoch and id of the last message delivered in order; `None` until
    /// the first member goes live and tells where history stood.
    cursor: Option<(Epoch, u64)>,
    /// A repair task is reading missed ids; deliveries wait for it.
    repairing: bool,
    /// The highest id the feed has announced: a repair reads up to at least it.
    target: u64,
    members: HashMap<ConnId, Member>,
    /// Live connections per user, for presence: a user arrives with its
    /// first and departs with its last.
    users: HashMap<User, usize>,
    subscription: Subscription,
    /// The room left the registry; tasks still holding it stop.
    removed: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    #[default]
    None,
    Pending,
    Active,
}

struct Member {
    outbox: Outbox,
    user: User,
    /// The member went live and counts in `FeedState::users`.
    counted: bool,
    state: MemberState,
}

enum MemberState {
    /// Replaying history; live deliveries are held back. `stale` means some may
    /// be missing (the feed lost deliveries, the epoch changed, or too many
    /// piled up), so the join must read from history before going live.
    Joining {
        pending: Vec<(Epoch, Message)>,
        stale: bool,
    },
    /// Receives every delivery with an id above `after`.
    Live { after: u64 },
}

impl Rooms {
    pub fn new(
        store: Arc<Store>,
        instance: &str,
        pending_limit: usize,
        replay_cap: usize,
        metrics: Metrics,
        presence: Presence,
    ) -> Rooms {
        Rooms(Arc::new(Inner {
            rooms: Mutex::new(HashMap::new()),
            store,
            instance: instance.to_owned(),
            presence,
            pending_limit,
            replay_cap,
            metrics,
        }))
    }

    /// Joins `conn` to `room`: `joined`, the replay, `replayed`, then live
    /// messages, with no gap and no duplicate. On error the connection is not
    /// a member (unless it was one already and the error is a closed outbox).
    pub async fn join(
        &self,
        conn: ConnId,
        outbox: &Outbox,
        room: &Room,
        user: &User,
        replay: Replay,
    ) -> Result<(), JoinError> {
        let feed = self.register(conn, outbox, room, user);
        let result = self.replay_and_go_live(&feed, conn, outbox, replay).await;
        if result.is_err() {
            self.leave(conn, room);
        }
        result
    }

    /// Removes `conn` from `room`; returns whether it was a member.
    pub fn leave(&self, conn: ConnId, room: &Room) -> bool {
        let mut rooms = lock(&self.0.rooms);
        let Some(feed) = rooms.get(room).cloned() else {
            return false;
        };
        let mut state = lock(&feed.state);
        let removed = state.members.remove(&conn);
        let was_member = removed.is_some();
        if let Some(member) = removed.filter(|m| m.counted) {
            let count = state.users.entry(member.user.clone()).or_insert(1);
            *count -= 1;
            if *count == 0 {
                state.users.remove(&member.user);
                self.0.presence.depart(room, &member.user);
            }
        }
        if state.members.is_empty() {
            state.removed = true;
            rooms.remove(room);
            if state.subscription != Subscription::None {
                self.0.store.unsubscribe(room);
            }
            feed.subscription.notify(usize::MAX);
        }
        was_member
    }

    fn register(&self, conn: ConnId, outbox: &Outbox, room: &Room, user: &User) -> Arc<RoomFeed> {
        let mut rooms = lock(&self.0.rooms);
        let feed = rooms
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(RoomFeed {
                    room: room.clone(),
                    state: Mutex::new(FeedState::default()),
                    subscription: Event::new(),
                })
            })
            .clone();
        let mut state = lock(&feed.state);
        // A connection joining again stays counted in presence meanwhile.
        let counted = state.members.get(&conn).is_some_and(|m| m.counted);
        state.members.insert(
            conn,
            Member {
                outbox: outbox.clone(),
                user: user.clone(),
                counted,
                state: MemberState::Joining {
                    pending: Vec::new(),
                    stale: false,
                },
            },
        );
        drop(state);
        feed
    }

    /// Waits until the room's live feed runs on this instance, starting it if
    /// nobody else is: history read after this point misses nothing that the
    /// feed will not bring.
    async fn subscribed(&self, feed: &Arc<RoomFeed>) -> Result<(), Error> {
        loop {
            let listener = {
                let mut state = lock(&feed.state);
                if state.removed {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        "the room was left while joining",
                    ));
                }
                match state.subscription {
                    Subscription::Active => return Ok(()),
                    Subscription::Pending => Some(feed.subscription.listen()),
                    Subscription::None => {
                        state.subscription = Subscription::Pending;
                        None
                    }
                }
            };
            if let Some(listener) = listener {
                listener.await;
                continue;
            }
            let result = self.0.store.subscribe(&feed.room).await;
            let mut state = lock(&feed.state);
            state.subscription = if result.is_ok() && !state.removed {
                Subscription::Active
            } else {
                Subscription::None
            };
            feed.subscription.notify(usize::MAX);
            return result.map_err(Error::from);
        }
    }

    async fn replay_and_go_live(
        &self,
        feed: &Arc<RoomFeed>,
        conn: ConnId,
        outbox: &Outbox,
        replay: Replay,
    ) -> Result<(), JoinError> {
        self.subscribed(feed).await?;
        let room = &feed.room;
        let store = &self.0.store;
        // `seen`: the id up to which the client has everything it wants, so
        // that live delivery starts after it.
        let (page, mut truncated, seen) = match replay {
            Replay::Recent(n) => {
                let page = store.read(room, Slice::newest_after(0, n)).await?;
                let head = page.head;
                (page, false, head)
            }
            Replay::Since { since, epoch } => {
                let page = store
                    .read(room, Slice::newest_after(since, self.0.replay_cap))
                    .await?;
                if epoch.is_some_and(|e| e != page.epoch) {
                    // The client's ids belong to a history that was lost: it
                    // gets this epoch from its start, and is told of the gap.
                    let page = store
                        .read(room, Slice::newest_after(0, self.0.replay_cap))
                        .await?;
                    let head = page.head;
                    (page, true, head)
                } else {
                    let missed =
                        page.head > since && page.messages.first().is_none_or(|m| m.id > since + 1);
                    // A client may be ahead of what this read saw; it still
                    // gets only what comes after its `since`.
                    let seen = page.head.max(since);
                    (page, missed, seen)
                }
            }
        };
        outbox.push(protocol::joined(room, &page.epoch)).await?;
        let mut progress = Progress {
            epoch: page.epoch.clone(),
            after: seen,
            head: page.head,
            count: send_all(outbox, &page.messages).await?,
        };

        for _ in 0..MAX_CATCH_UP_READS {
            let next = {
                let mut state = lock(&feed.state);
                match state.cursor.clone() {
                    Some((cursor_epoch, _)) if cursor_epoch != progress.epoch => {
                        CatchUp::EpochDiffers
                    }
                    cursor => {
                        let next = try_go_live(&mut state, room, conn, &progress, truncated)?;
                        if cursor.is_none() && next == CatchUp::Live {
                            // The first member to go live tells the feed where
                            // history stood when it was last read. Deliveries
                            // held back beyond that arrive again through a
                            // repair, and the members skip what they have.
                            state.cursor = Some((progress.epoch.clone(), progress.head));
                        }
                        if next == CatchUp::Live {
                            self.count_in(&mut state, room, conn);
                        }
                        next
                    }
                }
            };
            let page = match next {
                CatchUp::Live => {
                    self.0.metrics.replayed(progress.count, truncated);
                    return Ok(());
                }
                CatchUp::Gap => {
                    store
                        .read(room, Slice::oldest_after(progress.after, REPAIR_PAGE))
                        .await?
                }
                CatchUp::EpochDiffers => {
                    let page = store
                        .read(room, Slice::oldest_after(0, REPAIR_PAGE))
                        .await?;
                    if page.epoch == progress.epoch {
                        // The store agrees with this join: the room's feed is
                        // the one behind, so it moves to the store's epoch.
                        let mut state = lock(&feed.state);
                        if state
                            .cursor
                            .as_ref()
                            .is_some_and(|(e, _)| *e != progress.epoch)
                        {
                            self.switch_feed_epoch(&mut state, feed, progress.epoch.clone());
                        }
                        continue;
                    }
                    page
                }
            };
            if page.epoch == progress.epoch {
                truncated |= page.trimmed_after(progress.after);
                progress.after = page
                    .messages
                    .last()
                    .map_or(progress.after.max(page.head), |m| m.id);
            } else {
                // The room's history began again: `joined` with the new epoch,
                // then its messages from the start.
                outbox.push(protocol::joined(room, &page.epoch)).await?;
                progress.epoch = page.epoch.clone();
                progress.after = page.messages.last().map_or(0, |m| m.id);
            }
            progress.head = page.head;
            progress.count += send_all(outbox, &page.messages).await?;
        }
        Err(JoinError::Refused(Error::new(
            ErrorCode::Unavailable,
            "the room changed faster than it could be replayed; join again",
        )))
    }

    /// Runs the feed: puts each delivery in order for its room's members, and
    /// repairs rooms when deliveries may have been lost. Returns when the feed
    /// ends (the store shut down).
    pub async fn run_feed(self, events: async_channel::Receiver<FeedEvent>) {
        while let Ok(event) = events.recv().await {
            match event {
                FeedEvent::Delivery(delivery) => self.deliver(delivery),
                FeedEvent::Signal(signal) => self.signal(signal),
                FeedEvent::Repair(room) => self.repair_room(&room),
            }
        }
    }

    fn feed(&self, room: &Room) -> Option<Arc<RoomFeed>> {
        lock(&self.0.rooms).get(room).cloned()
    }

    fn deliver(&self, delivery: Delivery) {
        let Some(feed) = self.feed(&delivery.room) else {
            return;
        };
        let mut state = lock(&feed.state);
        let Some((epoch, last)) = state.cursor.clone() else {
            // Nobody is live yet: the joiners sort it out from what they hold.
            hold_back(
                &mut state,
                &delivery.epoch,
                &delivery.message,
                self.0.pending_limit,
            );
            return;
        };
        let id = delivery.message.id;
        if delivery.epoch != epoch || state.repairing || id > last + 1 {
            if delivery.epoch == epoch {
                state.target = state.target.max(id);
            }
            self.start_repair(&mut state, &feed);
            return;
        }
        if id <= last {
            return;
        }
        self.deliver_next(&mut state, &delivery.epoch, &delivery.message);
    }

    /// Delivers the message that comes right after the cursor.
    fn deliver_next(&self, state: &mut FeedState, epoch: &Epoch, message: &Message) {
        if let Some((_, last)) = &mut state.cursor {
            *last = message.id;
        }
        let mut delivered = 0;
        for member in state.members.values_mut() {
            match &mut member.state {
                MemberState::Live { after } if message.id > *after => {
                    match member.outbox.offer(message.frame.clone()) {
                        Ok(()) => delivered += 1,
                        Err(Refused::TooSlow) => self.0.metrics.slow_close(),
                        Err(Refused::Closed) => {}
                    }
                }
                MemberState::Live { .. } => {}
                MemberState::Joining { .. } => {}
            }
        }
        hold_back(state, epoch, message, self.0.pending_limit);
        self.0.metrics.delivered(delivered);
    }

    /// Counts a member that just went live in the room's presence: the
    /// user's first live connection here makes it arrive.
    fn count_in(&self, state: &mut FeedState, room: &Room, conn: ConnId) {
        let Some(member) = state.members.get_mut(&conn).filter(|m| !m.counted) else {
            return;
        };
        member.counted = true;
        let user = member.user.clone();
        let count = state.users.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.0.presence.arrive(room, &user);
        }
    }

    /// Hands a signal to the room's live members, but not to the connection
    /// it came from.
    fn signal(&self, signal: Signal) {
        let Some(feed) = self.feed(&signal.room) else {
            return;
        };
        let sender = signal
            .origin
            .strip_prefix(self.0.instance.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|conn| conn.parse::<ConnId>().ok());
        let state = lock(&feed.state);
        for (conn, member) in &state.members {
            if matches!(member.state, MemberState::Live { .. }) && Some(*conn) != sender {
                let _ = member.outbox.offer(signal.frame.clone());
            }
        }
    }

    /// The origin of signals sent by `conn` of this instance.
    pub fn origin(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.0.instance)
    }

    fn repair_room(&self, room: &Room) {
        let Some(feed) = self.feed(room) else {
            return;
        };
        let mut state = lock(&feed.state);
        mark_joiners_stale(&mut state);
        if state.cursor.is_some() {
            self.start_repair(&mut state, &feed);
        }
    }

    /// The room's history began again under `epoch`: live members are told
    /// with `joined` and get the new epoch's messages from id 1.
    fn switch_feed_epoch(&self, state: &mut FeedState, feed: &Arc<RoomFeed>, epoch: Epoch) {
        log::warn!(
            "room {} has a new epoch {epoch:?}: its history was lost",
            feed.room
        );
        let joined = protocol::joined(&feed.room, &epoch);
        for member in state.members.values_mut() {
            if let MemberState::Live { after } = &mut member.state {
                *after = 0;
                let _ = member.outbox.offer(joined.clone());
            }
        }
        mark_joiners_stale(state);
        state.cursor = Some((epoch, 0));
        state.target = 0;
        self.start_repair(state, feed);
    }

    fn start_repair(&self, state: &mut FeedState, feed: &Arc<RoomFeed>) {
        if state.repairing {
            return;
        }
        state.repairing = true;
        self.0.metrics.gap();
        let rooms = self.clone();
        let feed = feed.clone();
        async_std::task::spawn(async move { rooms.repair(feed).await });
    }

    /// Reads what the room missed from history and delivers it in order, until
    /// the cursor reaches the store's head and every announced id.
    async fn repair(&self, feed: Arc<RoomFeed>) {
        let mut read_again = false;
        loop {
            if std::mem::take(&mut read_again) {
                async_std::task::sleep(REPAIR_AGAIN).await;
            }
            let after = {
                let state = lock(&feed.state);
                if state.removed {
                    return;
                }
                state.cursor.as_ref().map_or(0, |(_, last)| *last)
            };
            let page = match self
                .0
                .store
                .read(&feed.room, Slice::oldest_after(after, REPAIR_PAGE))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    log::warn!("repairing room {} failed, retrying: {e}", feed.room);
                    async_std::task::sleep(REPAIR_BACKOFF).await;
                    continue;
                }
            };
            let mut state = lock(&feed.state);
            let Some((epoch, last)) = state.cursor.clone() else {
                state.repairing = false;
                return;
            };
            if last != after {
                continue;
            }
            if page.epoch != epoch {
                state.repairing = false;
                self.switch_feed_epoch(&mut state, &feed, page.epoch);
                return;
            }
            if page.trimmed_after(after) {
                log::warn!(
                    "room {}: ids {}..{} left history before this instance could deliver them",
                    feed.room,
                    after + 1,
                    page.first - 1
                );
                if let Some((_, last)) = &mut state.cursor {
                    *last = page.first - 1;
                }
            }
            for message in &page.messages {
                let last = state.cursor.as_ref().map_or(0, |(_, last)| *last);
                if message.id == last + 1 {
                    self.deliver_next(&mut state, &epoch, message);
                }
            }
            if page.messages.is_empty() {
                let last = state.cursor.as_ref().map_or(0, |(_, last)| *last);
                if state.target > last {
                    // A delivery came while this read was on its way, and was
                    // left to the repair: it is read again rather than lost.
                    read_again = true;
                    continue;
                }
                state.repairing = false;
                state.target = 0;
                return;
            }
        }
    }
}

/// How far a join has brought its client.
struct Progress {
    epoch: Epoch,
    /// The client has everything it asked for up to this id.
    after: u64,
    /// The room's head when history was last read.
    head: u64,
    /// Messages replayed so far.
    count: usize,
}

/// What a join does next.
#[derive(PartialEq, Eq)]
enum CatchUp {
    /// The member is live.
    Live,
    /// Something between the replay and the held-back deliveries is missing.
    Gap,
    /// The room's feed is on another epoch than the join's replay.
    EpochDiffers,
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

impl From<Refused> for JoinError {
    fn from(_: Refused) -> JoinError {
        JoinError::Closed
    }
}

impl From<Error> for JoinError {
    fn from(e: Error) -> JoinError {
        JoinError::Refused(e)
    }
}

impl From<crate::store::StoreError> for JoinError {
    fn from(e: crate::store::StoreError) -> JoinError {
        JoinError::Refused(e.into())
    }
}

/// Under the room's lock: if the held-back deliveries continue exactly where
/// the replay ended, sends `replayed` and them, and makes the member live.
/// Otherwise says what to read first.
fn try_go_live(
    state: &mut FeedState,
    room: &Room,
    conn: ConnId,
    progress: &Progress,
    truncated: bool,
) -> Result<CatchUp, JoinError> {
    let (epoch, after) = (&progress.epoch, progress.after);
    let member = state.members.get_mut(&conn).ok_or(JoinError::Closed)?;
    let MemberState::Joining { pending, stale } = &mut member.state else {
        return Err(JoinError::Closed);
    };
    let first_held = pending.iter().find(|(e, m)| e == epoch && m.id > after);
    if *stale || first_held.is_some_and(|(_, m)| m.id != after + 1) {
        *stale = false;
        pending.clear();
        return Ok(CatchUp::Gap);
    }
    member
        .outbox
        .offer(protocol::replayed(room, progress.count, truncated))?;
    let mut last = after;
    for (e, message) in pending.iter() {
        if e == epoch && message.id == last + 1 {
            member.outbox.offer(message.frame.clone())?;
            last = message.id;
        }
    }
    member.state = MemberState::Live { after: last };
    Ok(CatchUp::Live)
}

async fn send_all(outbox: &Outbox, messages: &[Message]) -> Result<usize, Closed> {
    for message in messages {
        outbox.push(message.frame.clone()).await?;
    }
    Ok(messages.len())
}

/// Holds a delivery back for every member that is still joining.
fn hold_back(state: &mut FeedState, epoch: &Epoch, message: &Message, limit: usize) {
    for member in state.members.values_mut() {
        if let MemberState::Joining { pending, stale } = &mut member.state {
            if *stale {
                continue;
            }
            if pending.len() >= limit {
                pending.clear();
                *stale = true;
            } else {
                pending.push((epoch.clone(), message.clone()));
            }
        }
    }
}

fn mark_joiners_stale(state: &mut FeedState) {
    for member in state.members.values_mut() {
        if let MemberState::Joining { pending, stale } = &mut member.state {
            pending.clear();
            *stale = true;
        }
    }
}
