//! The rules of order for one room on one instance, as a plain state machine
//! with no I/O and no clock: which events each local member gets, in which
//! order, and what must be read from history to keep the promise that every
//! member sees every event of the room once, in id order, with no gap.
//!
//! `rooms.rs` drives it: it hands in what the live feed delivers and what
//! history reads return, performs the reads it asks for, and pushes the
//! frames it returns. `tests/order_model.rs` checks it against a model under
//! random interleavings, losses, duplicates, delays, joins, leaves and epoch
//! changes.
//!
//! The room keeps a *cursor*, the epoch and id of the last event it delivered
//! in order. A delivery that is exactly next goes to every live member; one
//! beyond the next is a gap, and a *repair* reads the missing ids from history
//! before anything newer goes out; one at or below the cursor is a duplicate
//! when its nonce is the one delivered under that id. Every read tells the
//! store the highest id the room handed out, with its nonce (`Seen`): a store
//! that went back to an older snapshot finds its head behind it, or another
//! event under it, and starts a new epoch rather than give an id twice.
//!
//! A member *joins* in steps: registered, it reads history (the replay), the
//! frames are pushed, then `try_live` either makes it live, with the
//! deliveries held back for it meanwhile, or says what to read next. It never
//! goes live behind what its last read showed of the room, and never with a
//! hole between its replay and what it is handed live.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::fields::{Room, User};
use crate::log::{Epoch, Event, Mark, Page, Read, Seen, Slice};
use crate::protocol::{self, Frame, Replay};

/// Identifies a connection within this instance.
pub type ConnId = u64;

/// How many reads one join makes before it gives up on a room that changes
/// faster than it can be read.
pub const MAX_JOIN_READS: usize = 16;
/// How many delivered ids keep their nonce, to tell a duplicate from an
/// event that reuses an id.
const NONCES: usize = 512;

/// What happened to a frame offered to a member's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// The connection is too far behind and is being closed (1013).
    TooSlow,
    /// The connection is closing anyway.
    Closed,
}

/// A member's connection as the rules see it: somewhere to offer frames
/// without waiting.
pub trait Sink {
    fn offer(&self, frame: Frame) -> Offered;
}

/// Sizes the rules work with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most deliveries held back for one joining member; beyond it, the
    /// join reads from history instead.
    pub pending: usize,
    /// Most events a `since` join replays, and an epoch change delivers.
    pub replay_cap: usize,
    /// How many ids one catch-up or repair read asks for.
    pub page: usize,
}

/// One room's order on this instance.
pub struct RoomOrder<S> {
    room: Room,
    limits: Limits,
    cursor: Option<Mark>,
    /// What this instance handed out in the room (delivered, replayed to a
    /// joiner, or announced by the feed): what reads tell the store.
    handed: Handed,
    /// A reuse of an id was found: what the next read tells the store about
    /// that id, so that it compares and starts a new epoch.
    tell: Option<Seen>,
    /// A repair read is on its way.
    repair: Option<Repairing>,
    members: HashMap<ConnId, Member<S>>,
    /// Live connections per user: a user arrives with its first and
    /// departs with its last.
    users: HashMap<User, usize>,
}

struct Member<S> {
    sink: S,
    user: User,
    /// Counted in `users`: it went live at least once.
    counted: bool,
    state: State,
    /// A re-join whose first read is on its way: the member stays live
    /// until it returns, so a re-join that fails changes nothing.
    rejoin: Option<Box<Join>>,
}

enum State {
    /// Gets every delivery with an id above `after`.
    Live {
        after: u64,
    },
    Joining(Box<Join>),
}

/// A repair in progress: what its read in flight may not have seen.
#[derive(Default)]
struct Repairing {
    /// The highest id announced while the read was on its way, in the
    /// cursor's epoch.
    announced: u64,
    /// The feed lost deliveries after the read left: the store may hold
    /// events the read did not see and no later delivery will announce.
    feed_lost: bool,
}

/// A join in progress.
struct Join {
    replay: Replay,
    phase: Phase,
    /// The epoch of what was pushed so far (`None` before the first page).
    epoch: Option<Epoch>,
    /// The member has everything it wants up to this id.
    pos: u64,
    /// The nonce of the event at `pos`, when the member holds that event
    /// (not when `pos` is a `since` beyond what was read).
    pos_nonce: Option<u32>,
    /// The room's head when history was last read, and its nonce.
    head: u64,
    head_nonce: Option<u32>,
    truncated: bool,
    count: usize,
    /// Deliveries held back while joining, by id, all of `pending_epoch`.
    pending: BTreeMap<u64, Event>,
    pending_epoch: Option<Epoch>,
    /// Some deliveries were not held back (too many, or the feed lost
    /// some): history must be read before going live.
    stale: bool,
    reads: usize,
    /// What the join's read in flight asked for.
    asked: Slice,
    /// The epoch of the join's read when it last waited for the room's
    /// repair: a mismatch with the room in that epoch again is the join's
    /// to resolve, by reading the room's epoch from its start; a read in
    /// another epoch (the store moved on since) waits for a repair again,
    /// which brings the room's members there too.
    waited: Option<Epoch>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The replay's read.
    First,
    /// The client's epoch is not the room's: the newest events from the
    /// start of the room's epoch.
    Restart,
    /// What came after the replay.
    CatchUp,
}

/// What a join's read means for the member.
#[derive(Debug, PartialEq)]
pub enum JoinPage {
    /// Push these frames (waiting while the connection is busy), then call
    /// `try_live`.
    Push(Vec<Frame>),
    /// Read this instead.
    Read(Read),
}

/// The next step of a join, decided under the room's lock.
#[derive(Debug, PartialEq)]
pub enum LiveStep {
    /// The member is live: its `replayed` and the held-back deliveries that
    /// follow its replay were offered. `arrived` is its user when this is
    /// the user's first live connection here.
    Live {
        arrived: Option<User>,
        count: usize,
        truncated: bool,
        /// A repair to start: held-back deliveries showed that more exists.
        repair: Option<Read>,
    },
    /// Read this, push what it gives, and try again.
    Read(Read),
    /// The room is repairing; try again when it is done (`start`: a repair
    /// the driver must start now).
    Wait { start: Option<Read> },
    /// The join gives up; tell the client.
    Failed(&'static str),
}

/// What leaving did.
#[derive(Debug, Default, PartialEq)]
pub struct Left {
    pub was_member: bool,
    /// The user's last live connection here left.
    pub departed: Option<User>,
    /// Nobody is left: the room can go.
    pub empty: bool,
}

/// What a delivery did.
#[derive(Debug, Default, PartialEq)]
pub struct Delivered {
    pub queued: u64,
    pub too_slow: u64,
    /// A repair to start.
    pub repair: Option<Read>,
}

/// What the driver does after a repair read.
#[derive(Debug, PartialEq)]
pub enum RepairStep {
    /// Read this next, at once.
    Read(Read),
    /// Read this next, after a short pause: an id was announced that the
    /// store did not show yet.
    ReadSoon(Read),
    /// Read this again after a pause: the store failed.
    Retry(Read),
    /// The cursor has caught up; joiners waiting for it may try again.
    Done,
}

/// What a repair read did, with notes for the log.
#[derive(Debug, PartialEq)]
pub struct Repaired {
    pub step: RepairStep,
    pub delivered: Delivered,
    /// Ids that left history before this instance could deliver them.
    pub skipped: Option<(u64, u64)>,
    /// The room's history began again under this epoch.
    pub new_epoch: Option<Epoch>,
}

impl<S: Sink> RoomOrder<S> {
    pub fn new(room: Room, limits: Limits) -> RoomOrder<S> {
        RoomOrder {
            room,
            limits,
            cursor: None,
            handed: Handed::default(),
            tell: None,
            repair: None,
            members: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// What this room has seen, for appends to tell the store too.
    pub fn seen(&self) -> Vec<Seen> {
        self.handed.seen()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_member(&self, conn: ConnId) -> bool {
        self.members.contains_key(&conn)
    }

    /// Whether `conn` is live in the room.
    pub fn is_live(&self, conn: ConnId) -> bool {
        self.members
            .get(&conn)
            .is_some_and(|m| matches!(m.state, State::Live { .. }))
    }

    /// A read that tells the store what this room has seen, and first the
    /// reuse it found, if any.
    fn read(&mut self, slice: Slice) -> Read {
        let mut known: Vec<Seen> = self.tell.take().into_iter().collect();
        known.extend(self.handed.seen());
        Read {
            slice,
            known,
            create: true,
            fold: false,
            marker_of: None,
        }
    }

    /// A join's read: as a repair's, but with messages as reads show them
    /// and the joiner's read marker.
    fn join_read(&mut self, slice: Slice, user: User) -> Read {
        Read {
            fold: true,
            marker_of: Some(user),
            ..self.read(slice)
        }
    }

    /// Notes that an id was handed out.
    fn note(&mut self, epoch: &Epoch, id: u64, nonce: Option<u32>) {
        self.handed.note(epoch, id, nonce);
    }

    // ---- joins ---------------------------------------------------------

    /// Registers `conn` as joining (a live member re-joining stays live
    /// until its first read comes back) and returns the replay's read.
    pub fn join(&mut self, conn: ConnId, sink: S, user: User, replay: Replay) -> Read {
        let joiner = user.clone();
        let slice = match &replay {
            Replay::Recent(n) => Slice::newest_after(0, *n),
            Replay::Since { since, .. } => Slice::newest_after(*since, self.limits.replay_cap),
        };
        let join = Box::new(Join::new(replay, slice));
        match self.members.get_mut(&conn) {
            Some(member) if matches!(member.state, State::Live { .. }) => {
                member.sink = sink;
                member.rejoin = Some(join);
            }
            _ => {
                let counted = self.members.get(&conn).is_some_and(|m| m.counted);
                let state = State::Joining(join);
                let rejoin = None;
                let member = Member {
                    sink,
                    user,
                    counted,
                    state,
                    rejoin,
                };
                self.members.insert(conn, member);
            }
        }
        self.join_read(slice, joiner)
    }

    /// A join's read came back. `None` when `conn` is no longer joining.
    pub fn join_page(&mut self, conn: ConnId, page: &Page) -> Option<JoinPage> {
        let cap = self.limits.replay_cap;
        let room = self.room.clone();
        let member = self.members.get_mut(&conn)?;
        let user = member.user.clone();
        if let Some(join) = member.rejoin.take() {
            // The re-join's first answer: from here on it replaces the
            // earlier membership.
            member.state = State::Joining(join);
        }
        let State::Joining(join) = &mut member.state else {
            return None;
        };
        let conflict = self.handed.conflict(page);
        let next = if conflict.is_some() {
            // The page gives an id that was handed out as another event:
            // read again, telling the store, which starts a new epoch if
            // it went back, or shows its own event if the page was stale.
            Err(join.asked)
        } else {
            match join.phase {
                Phase::First => join.first_page(&room, page, cap),
                Phase::Restart => Ok(join.restart_page(&room, page)),
                Phase::CatchUp => join.catch_up_page(page, cap),
            }
        };
        match next {
            Ok(frames) => {
                let epoch = join.epoch.clone().expect("set by a page");
                let (pos, pos_nonce) = (join.pos, join.pos_nonce);
                for event in &page.events {
                    self.note(&epoch, event.id, Some(event.nonce));
                }
                if pos_nonce.is_some() {
                    self.note(&epoch, pos, pos_nonce);
                }
                Some(JoinPage::Push(frames))
            }
            Err(slice) => {
                join.reads += 1;
                join.asked = slice;
                self.tell = conflict;
                Some(JoinPage::Read(self.join_read(slice, user)))
            }
        }
    }

    /// After the frames of a join's read were pushed: makes the member live
    /// if nothing is missing between its replay and what it would get live,
    /// or says what to read. `None` when `conn` is no longer joining.
    pub fn try_live(&mut self, conn: ConnId) -> Option<LiveStep> {
        let page = self.limits.page;
        let cap = self.limits.replay_cap;
        let cursor = self.cursor.clone();
        let member = self.members.get_mut(&conn)?;
        let State::Joining(join) = &mut member.state else {
            return None;
        };
        let epoch = join.epoch.clone()?;
        if join.reads > MAX_JOIN_READS {
            return Some(LiveStep::Failed(
                "the room changed faster than it could be replayed; join again",
            ));
        }
        let behind = join.stale || join.pos < join.head;
        let held = join.pending_epoch.as_ref() == Some(&epoch);
        let (slice, phase) = match &cursor {
            _ if behind => (Slice::oldest_after(join.pos, page), Phase::CatchUp),
            // The join's read and the room disagree on the epoch: a repair
            // finds out which is current; if the room's still is after it,
            // the join starts again in it.
            Some(cursor) if cursor.epoch != epoch && join.waited.as_ref() != Some(&epoch) => {
                join.waited = Some(epoch);
                join.reads += 1;
                let start = self.start_repair();
                return Some(LiveStep::Wait { start });
            }
            Some(cursor) if cursor.epoch != epoch => (Slice::newest_after(0, cap), Phase::Restart),
            Some(cursor) if join.pos >= cursor.id => return Some(self.go_live(conn, epoch, None)),
            Some(cursor) if held && covers(&join.pending, join.pos, cursor.id) => {
                return Some(self.go_live(conn, epoch, Some(cursor.id)))
            }
            Some(_) => (Slice::oldest_after(join.pos, page), Phase::CatchUp),
            None => return Some(self.go_live(conn, epoch, None)),
        };
        join.phase = phase;
        join.stale = false;
        join.pending.clear();
        join.pending_epoch = None;
        join.reads += 1;
        join.asked = slice;
        let user = member.user.clone();
        Some(LiveStep::Read(self.join_read(slice, user)))
    }

    /// Makes a joining member live: `replayed`, then the held-back
    /// deliveries after its position (up to `until`, when the room's cursor
    /// exists; all that continue it, when this member starts the cursor).
    fn go_live(&mut self, conn: ConnId, epoch: Epoch, until: Option<u64>) -> LiveStep {
        let room = self.room.clone();
        let member = self.members.get_mut(&conn).expect("checked by try_live");
        let State::Joining(join) = std::mem::replace(&mut member.state, State::Live { after: 0 })
        else {
            unreachable!("checked by try_live");
        };
        let _ = member
            .sink
            .offer(protocol::replayed(&room, join.count, join.truncated));
        let held = join.pending_epoch.as_ref() == Some(&epoch);
        let mut after = join.pos;
        let mut offered = Vec::new();
        for (&id, event) in join.pending.iter().filter(|_| held) {
            if id == after + 1 && until.is_none_or(|until| id <= until) {
                let _ = member.sink.offer(event.frame.clone());
                after = id;
                offered.push((id, event.nonce));
            }
        }
        member.state = State::Live { after };
        for (id, nonce) in offered {
            self.note(&epoch, id, Some(nonce));
        }
        let repair = match &self.cursor {
            None => self.start_cursor(&join, epoch),
            // The member is ahead of what the room delivered: a repair
            // brings the room up, and its read shows the store the
            // member's position (a store that went back behind it starts a
            // new epoch rather than give those ids again).
            Some(cursor) if after > cursor.id => self.start_repair(),
            Some(_) => None,
        };
        LiveStep::Live {
            arrived: self.count_in(conn),
            count: join.count,
            truncated: join.truncated,
            repair,
        }
    }

    /// The first member to go live tells the room where it stands: where
    /// history stood, and what was held back after it (not a `since` beyond
    /// it, which is only the client's word). Anything held back beyond a
    /// hole, or of another epoch, is read by a repair.
    fn start_cursor(&mut self, join: &Join, epoch: Epoch) -> Option<Read> {
        let held = join.pending_epoch.as_ref() == Some(&epoch);
        let mut id = join.head;
        self.note(&epoch, id, join.head_nonce);
        while let Some(event) = join.pending.get(&(id + 1)).filter(|_| held) {
            id += 1;
            self.note(&epoch, id, Some(event.nonce));
        }
        self.cursor = Some(Mark {
            epoch: epoch.clone(),
            id,
        });
        let beyond = join.pending.keys().next_back().is_some_and(|&b| b > id);
        let other_epoch = join.pending_epoch.is_some() && !held;
        if beyond || other_epoch {
            self.start_repair()
        } else {
            None
        }
    }

    fn count_in(&mut self, conn: ConnId) -> Option<User> {
        let member = self.members.get_mut(&conn)?;
        if member.counted {
            return None;
        }
        member.counted = true;
        let count = self.users.entry(member.user.clone()).or_insert(0);
        *count += 1;
        (*count == 1).then(|| member.user.clone())
    }

    /// A join could not go on (the store failed, or the connection is
    /// closing). A re-join that had not sent anything leaves the earlier
    /// membership as it was; otherwise `conn` leaves the room.
    pub fn join_failed(&mut self, conn: ConnId) -> Left {
        if let Some(member) = self.members.get_mut(&conn) {
            if member.rejoin.take().is_some() {
                return Left {
                    was_member: true,
                    departed: None,
                    empty: false,
                };
            }
        }
        self.leave(conn)
    }

    /// Removes `conn` from the room.
    pub fn leave(&mut self, conn: ConnId) -> Left {
        let Some(member) = self.members.remove(&conn) else {
            return Left {
                empty: self.members.is_empty(),
                ..Left::default()
            };
        };
        let mut departed = None;
        if member.counted {
            let count = self.users.entry(member.user.clone()).or_insert(1);
            *count -= 1;
            if *count == 0 {
                self.users.remove(&member.user);
                departed = Some(member.user);
            }
        }
        Left {
            was_member: true,
            departed,
            empty: self.members.is_empty(),
        }
    }

    // ---- the live feed -------------------------------------------------

    /// Offers a signal (typing, member, read) to the live members but
    /// `except`, its sender.
    pub fn signal(&self, frame: &Frame, except: Option<ConnId>) {
        for (conn, member) in &self.members {
            if matches!(member.state, State::Live { .. }) && Some(*conn) != except {
                let _ = member.sink.offer(frame.clone());
            }
        }
    }

    /// Puts one delivery of the live feed in order.
    pub fn deliver(&mut self, epoch: &Epoch, event: &Event) -> Delivered {
        let Some(cursor) = self.cursor.clone() else {
            // Nobody is live yet: the joiners sort it out from what they hold.
            self.hold_back(epoch, event);
            return Delivered::default();
        };
        let id = event.id;
        if *epoch != cursor.epoch {
            return self.want_repair(0);
        }
        match self.handed.get(epoch, id) {
            Some(nonce) if nonce != event.nonce => {
                // Another event was handed out under this id: the store went
                // back. The repair's read tells it, and it starts a new epoch.
                self.tell = Some(Seen {
                    epoch: epoch.clone(),
                    id,
                    nonce: Some(nonce),
                });
                return self.want_repair(0);
            }
            Some(_) if id <= cursor.id => return Delivered::default(),
            _ => {}
        }
        // Announced: the store handed it out, whether or not it goes out now.
        self.note(epoch, id, Some(event.nonce));
        if self.repair.is_some() || id != cursor.id + 1 {
            // A gap, or an id at or below the cursor whose event is no
            // longer remembered: the repair reads and tells the store.
            return self.want_repair(id);
        }
        self.deliver_next(epoch, event)
    }

    /// The live feed may have lost deliveries for this room (its
    /// subscription was made again, its connection was replaced).
    pub fn feed_lost(&mut self) -> Option<Read> {
        for member in self.members.values_mut() {
            if let State::Joining(join) = &mut member.state {
                join.stale = true;
            }
        }
        if let Some(repairing) = &mut self.repair {
            repairing.feed_lost = true;
        }
        self.want_repair(0).repair
    }

    /// Makes sure a repair runs and reads at least up to `target`.
    fn want_repair(&mut self, target: u64) -> Delivered {
        let repair = self.start_repair();
        if let Some(current) = &mut self.repair {
            current.announced = current.announced.max(target);
        }
        Delivered {
            repair,
            ..Delivered::default()
        }
    }

    /// Starts a repair unless one is on its way; returns its first read.
    fn start_repair(&mut self) -> Option<Read> {
        if self.repair.is_some() {
            return None;
        }
        let after = self.cursor.as_ref()?.id;
        self.repair = Some(Repairing::default());
        Some(self.read(Slice::oldest_after(after, self.limits.page)))
    }

    /// Delivers the event that comes right after the cursor.
    fn deliver_next(&mut self, epoch: &Epoch, event: &Event) -> Delivered {
        let mut delivered = Delivered::default();
        if let Some(cursor) = &mut self.cursor {
            cursor.id = event.id;
        }
        self.note(epoch, event.id, Some(event.nonce));
        for member in self.members.values() {
            match member.state {
                State::Live { after } if event.id > after => {
                    match member.sink.offer(event.frame.clone()) {
                        Offered::Queued => delivered.queued += 1,
                        Offered::TooSlow => delivered.too_slow += 1,
                        Offered::Closed => {}
                    }
                }
                State::Live { .. } | State::Joining(_) => {}
            }
        }
        self.hold_back(epoch, event);
        delivered
    }

    /// Holds a delivery back for every member that is still joining.
    fn hold_back(&mut self, epoch: &Epoch, event: &Event) {
        let limit = self.limits.pending;
        for member in self.members.values_mut() {
            let State::Joining(join) = &mut member.state else {
                continue;
            };
            if join.stale {
                continue;
            }
            if join.pending_epoch.is_none() {
                join.pending_epoch = Some(epoch.clone());
            }
            if join.pending_epoch.as_ref() != Some(epoch) || join.pending.len() >= limit {
                join.stale = true;
                join.pending.clear();
                join.pending_epoch = None;
            } else {
                join.pending.insert(event.id, event.clone());
            }
        }
    }

    /// A repair's read came back (`Err` when the store failed).
    pub fn repair_page(&mut self, page: Result<&Page, ()>) -> Repaired {
        let mut repaired = Repaired {
            step: RepairStep::Done,
            delivered: Delivered::default(),
            skipped: None,
            new_epoch: None,
        };
        let (Some(repairing), Some(cursor)) = (self.repair.as_mut(), self.cursor.clone()) else {
            self.repair = None;
            return repaired;
        };
        // Every step but `Done` makes a read after this one, so that read
        // comes after the loss.
        let lost = std::mem::take(&mut repairing.feed_lost);
        let announced = repairing.announced;
        let page_size = self.limits.page;
        let Ok(page) = page else {
            repaired.step = RepairStep::Retry(self.read(Slice::oldest_after(cursor.id, page_size)));
            return repaired;
        };
        if page.epoch != cursor.epoch {
            self.switch_epoch(page);
            repaired.new_epoch = Some(page.epoch.clone());
            let after = self.cursor.as_ref().map_or(0, |c| c.id);
            repaired.step = RepairStep::Read(self.read(Slice::oldest_after(after, page_size)));
            return repaired;
        }
        let behind = self
            .handed
            .seen()
            .into_iter()
            .find(|seen| seen.epoch == page.epoch && seen.id > page.head);
        if let Some(tell) = behind.or_else(|| self.handed.conflict(page)) {
            // The store shows less than this room saw handed out, or
            // another event under an id it handed out (the read may have
            // left before): read again, telling it, and it decides.
            self.tell = Some(tell);
            repaired.step = RepairStep::Read(self.read(Slice::oldest_after(cursor.id, page_size)));
            return repaired;
        }
        if page.trimmed_after(cursor.id) {
            repaired.skipped = Some((cursor.id + 1, page.first - 1));
            self.skip_to(page.first - 1);
        }
        for event in &page.events {
            if self.cursor.as_ref().is_some_and(|c| event.id == c.id + 1) {
                let one = self.deliver_next(&page.epoch, event);
                repaired.delivered.queued += one.queued;
                repaired.delivered.too_slow += one.too_slow;
            }
        }
        let last = self.cursor.as_ref().map_or(0, |c| c.id);
        let next = self.read(Slice::oldest_after(last, page_size));
        repaired.step = if last < page.head || lost {
            RepairStep::Read(next)
        } else if last < announced {
            // An id was announced while this read was on its way, and was
            // left to the repair: it is read again rather than lost.
            RepairStep::ReadSoon(next)
        } else {
            self.repair = None;
            RepairStep::Done
        };
        repaired
    }

    /// Moves the cursor past ids that history no longer has.
    fn skip_to(&mut self, id: u64) {
        if let Some(cursor) = &mut self.cursor {
            cursor.id = id;
            let epoch = cursor.epoch.clone();
            self.note(&epoch, id, None);
        }
    }

    /// The room's history began again under `page.epoch`: live members are
    /// told with `joined` and get the new epoch's events (its newest, up to
    /// the replay cap).
    fn switch_epoch(&mut self, page: &Page) {
        let start = page
            .head
            .saturating_sub(self.limits.replay_cap as u64)
            .max(page.first.saturating_sub(1));
        // Read markers start afresh with an epoch.
        let joined = protocol::joined(&self.room, &page.epoch, page.head, 0);
        for member in self.members.values_mut() {
            match &mut member.state {
                State::Live { after } => {
                    *after = 0;
                    let _ = member.sink.offer(joined.clone());
                }
                State::Joining(join) => {
                    join.stale = true;
                    join.pending.clear();
                    join.pending_epoch = None;
                }
            }
        }
        self.cursor = Some(Mark {
            epoch: page.epoch.clone(),
            id: start,
        });
        self.handed.note(&page.epoch, page.head, page.head_nonce);
        self.tell = None;
        self.repair = Some(Repairing {
            announced: page.head,
            feed_lost: false,
        });
    }
}

impl Join {
    fn new(replay: Replay, asked: Slice) -> Join {
        Join {
            asked,
            replay,
            phase: Phase::First,
            epoch: None,
            pos: 0,
            pos_nonce: None,
            head: 0,
            head_nonce: None,
            truncated: false,
            count: 0,
            pending: BTreeMap::new(),
            pending_epoch: None,
            stale: false,
            reads: 1,
            waited: None,
        }
    }

    /// The replay's page: `joined`, then the events, and where the member
    /// stands; or, when the client's epoch is not the room's, the read of
    /// the room's epoch from its start.
    fn first_page(&mut self, room: &Room, page: &Page, cap: usize) -> Result<Vec<Frame>, Slice> {
        match &self.replay {
            Replay::Recent(_) => {
                self.pos = page.head;
            }
            Replay::Since { epoch: Some(e), .. } if *e != page.epoch => {
                // The client's ids belong to a history that was lost: it
                // gets this epoch from its start, and is told of the gap.
                self.phase = Phase::Restart;
                return Err(Slice::newest_after(0, cap));
            }
            Replay::Since { since, .. } => {
                let since = *since;
                self.truncated = page.head > since
                    && page
                        .events
                        .first()
                        .is_none_or(|e| e.id > since.saturating_add(1));
                // A client ahead of what this read saw still gets only what
                // comes after its `since`.
                self.pos = page.head.max(since);
            }
        }
        Ok(self.start(room, page))
    }

    /// `joined` and the page's events, as the member's new start.
    fn start(&mut self, room: &Room, page: &Page) -> Vec<Frame> {
        self.epoch = Some(page.epoch.clone());
        self.head = page.head;
        self.head_nonce = page.head_nonce;
        self.pos_nonce = page.head_nonce.filter(|_| self.pos == page.head);
        self.count += page.events.len();
        let mut frames = Vec::with_capacity(page.events.len() + 1);
        frames.push(protocol::joined(room, &page.epoch, page.head, page.marker));
        frames.extend(page.events.iter().map(|e| e.frame.clone()));
        frames
    }

    fn restart_page(&mut self, room: &Room, page: &Page) -> Vec<Frame> {
        self.truncated = true;
        self.pos = page.head;
        self.phase = Phase::CatchUp;
        self.start(room, page)
    }

    /// What came after the replay: the events beyond the member's position,
    /// or a restart when the room's history began again meanwhile.
    fn catch_up_page(&mut self, page: &Page, cap: usize) -> Result<Vec<Frame>, Slice> {
        if self.epoch.as_ref() != Some(&page.epoch) {
            self.phase = Phase::Restart;
            return Err(Slice::newest_after(0, cap));
        }
        self.head = page.head;
        self.head_nonce = page.head_nonce;
        self.truncated |= page.trimmed_after(self.pos);
        let fresh: Vec<&Event> = page.events.iter().filter(|e| e.id > self.pos).collect();
        match fresh.last() {
            Some(last) => {
                self.pos = last.id;
                self.pos_nonce = Some(last.nonce);
            }
            None if page.head > self.pos => {
                self.pos = page.head;
                self.pos_nonce = page.head_nonce;
            }
            None => {}
        }
        self.count += fresh.len();
        Ok(fresh.into_iter().map(|e| e.frame.clone()).collect())
    }
}

/// Whether `pending` holds every id from `after + 1` to `until`.
fn covers(pending: &BTreeMap<u64, Event>, after: u64, until: u64) -> bool {
    let wanted = until - after;
    pending.range(after + 1..=until).count() as u64 == wanted
}

/// What this instance handed out of a room, in the last few epochs it saw:
/// the nonce of each of the last ids, and the highest id of each epoch.
#[derive(Default)]
struct Handed {
    /// Oldest first.
    epochs: VecDeque<Handout>,
}

struct Handout {
    epoch: Epoch,
    top: u64,
    nonces: BTreeMap<u64, u32>,
}

/// How many epochs of a room `Handed` remembers.
const EPOCHS: usize = 3;

impl Handed {
    /// Notes an id (and its nonce, when known).
    fn note(&mut self, epoch: &Epoch, id: u64, nonce: Option<u32>) {
        let index = match self.epochs.iter().position(|h| h.epoch == *epoch) {
            Some(index) => index,
            None => {
                if self.epochs.len() == EPOCHS {
                    self.epochs.pop_front();
                }
                self.epochs.push_back(Handout {
                    epoch: epoch.clone(),
                    top: 0,
                    nonces: BTreeMap::new(),
                });
                self.epochs.len() - 1
            }
        };
        let handout = &mut self.epochs[index];
        handout.top = handout.top.max(id);
        if let Some(nonce) = nonce {
            handout.nonces.insert(id, nonce);
            if handout.nonces.len() > NONCES {
                handout.nonces.pop_first();
            }
        }
    }

    /// The nonce handed out under `id` in `epoch`, while remembered.
    fn get(&self, epoch: &Epoch, id: u64) -> Option<u32> {
        let handout = self.epochs.iter().find(|h| h.epoch == *epoch)?;
        handout.nonces.get(&id).copied()
    }

    /// What a read tells the store: the highest id of each epoch, with its
    /// nonce.
    fn seen(&self) -> Vec<Seen> {
        self.epochs
            .iter()
            .rev()
            .map(|h| Seen {
                epoch: h.epoch.clone(),
                id: h.top,
                nonce: h.nonces.get(&h.top).copied(),
            })
            .collect()
    }

    /// An event of `page` under an id that was handed out as another event:
    /// what was handed out, for the store to compare with its own.
    fn conflict(&self, page: &Page) -> Option<Seen> {
        let mine = |id: u64, nonce: u32| {
            let other = self.get(&page.epoch, id).filter(|&n| n != nonce)?;
            Some(Seen {
                epoch: page.epoch.clone(),
                id,
                nonce: Some(other),
            })
        };
        page.events
            .iter()
            .find_map(|e| mine(e.id, e.nonce))
            .or_else(|| mine(page.head, page.head_nonce?))
    }
}
