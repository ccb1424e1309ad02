//! The ordering core (`parlor::order::RoomOrder`) against a model of one
//! room: random interleavings of publishes (from this instance and from
//! others), live deliveries that are duplicated, reordered and delayed, a
//! feed connection that breaks (everything on it is lost until the feed
//! notices and says so),
//! history reads that run late, answer late or fail, joins of every replay
//! form, re-joins and leaves, and a store that is flushed or goes back to an
//! older snapshot. After the run, the feed notices any loss and everything
//! settles; then what every member saw must be what the contract says, and
//! again after one more event is published and settles:
//! within an epoch, ids in order with no gap and no duplicate, each id one
//! event, exactly one `replayed` per join, a `since` join that is not
//! truncated continuing right after its `since`, and every live member
//! ending exactly at the room's head.
//!
//! `PROPTEST_CASES` sets the number of runs (default 1000 here).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use parlor::fields::{Room, User};
use parlor::log::{End, Epoch, Event, Page, Read, Seen};
use parlor::order::{
    ConnId, Delivered, JoinPage, Limits, LiveStep, Offered, RepairStep, RoomOrder, Sink,
};
use parlor::protocol::{self, Frame, Replay};
use proptest::prelude::*;
use serde_json::Value;

const SLOTS: usize = 3;

/// A member's connection that records what it is offered.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<Frame>>>);

impl Sink for Recorder {
    fn offer(&self, frame: Frame) -> Offered {
        self.0.borrow_mut().push(frame);
        Offered::Queued
    }
}

impl Recorder {
    fn push(&self, frames: Vec<Frame>) {
        self.0.borrow_mut().extend(frames);
    }
}

/// The room's history as the store keeps it, with the same rules as the
/// real stores: epochs created on first use, a new epoch when a reader
/// knows of more than the store has, or of another event under an id.
struct Store {
    room: Room,
    epoch: Option<Epoch>,
    events: Vec<Event>,
    head: u64,
    epochs: u64,
    texts: u64,
    /// Every event ever given an id, by (epoch, id): its text.
    assigned: HashMap<(Epoch, u64), HashSet<String>>,
}

impl Store {
    fn fresh(&mut self) -> Epoch {
        self.epochs += 1;
        Epoch::from(format!("e{}", self.epochs))
    }

    fn ensure(&mut self) -> Epoch {
        if self.epoch.is_none() {
            let epoch = self.fresh();
            self.epoch = Some(epoch);
            self.events.clear();
            self.head = 0;
        }
        self.epoch.clone().unwrap()
    }

    fn check_known(&mut self, known: &[Seen]) {
        let went_back = |k: &Seen| {
            let other = |e: &Event| e.id == k.id && k.nonce.is_some_and(|n| n != e.nonce);
            self.epoch.as_ref() == Some(&k.epoch)
                && (self.head < k.id || self.events.iter().any(other))
        };
        if known.iter().any(went_back) {
            let epoch = self.fresh();
            for event in &self.events {
                self.assigned
                    .entry((epoch.clone(), event.id))
                    .or_default()
                    .insert(text_of(&event.frame));
            }
            self.epoch = Some(epoch);
        }
    }

    fn append(&mut self, known: &[Seen]) -> (Epoch, Event) {
        self.ensure();
        self.check_known(known);
        let epoch = self.epoch.clone().unwrap();
        self.texts += 1;
        self.head += 1;
        let text = format!("t{}", self.texts);
        let event = Event {
            id: self.head,
            frame: protocol::message(&self.room, self.head, "u", &text, 0),
            nonce: self.texts as u32,
        };
        self.assigned
            .entry((epoch.clone(), self.head))
            .or_default()
            .insert(text);
        self.events.push(event.clone());
        (epoch, event)
    }

    fn read(&mut self, read: &Read) -> Page {
        let epoch = match (&self.epoch, read.create) {
            (Some(_), _) | (None, true) => self.ensure(),
            (None, false) => self.fresh(),
        };
        self.check_known(&read.known);
        let epoch = self.epoch.clone().unwrap_or(epoch);
        let s = read.slice;
        let range: Vec<Event> = self
            .events
            .iter()
            .filter(|e| e.id > s.after && e.id < s.before)
            .cloned()
            .collect();
        let events = match s.from {
            End::Oldest => range.into_iter().take(s.limit).collect(),
            End::Newest => {
                let skip = range.len().saturating_sub(s.limit);
                range.into_iter().skip(skip).collect()
            }
        };
        Page {
            epoch,
            head: self.head,
            first: self.events.first().map_or(self.head + 1, |e| e.id),
            events,
            head_nonce: self.events.last().map(|e| e.nonce),
            marker: 0,
        }
    }

    /// The store comes back from an older snapshot: its newest events are gone.
    fn rollback(&mut self, lost: u64) {
        let lost = lost.min(self.head);
        self.head -= lost;
        self.events.retain(|e| e.id <= self.head);
    }
}

fn text_of(frame: &Frame) -> String {
    let value: Value = serde_json::from_str(frame.as_str()).unwrap();
    value["text"].as_str().unwrap().to_owned()
}

#[derive(Clone, Debug)]
enum JoinKind {
    Recent(u8),
    /// Resume from the last event the member saw, with its epoch.
    Resume,
    /// `since` with no epoch, or ahead of what the member saw.
    SinceAhead(u8),
    /// `since` with an epoch the room never had.
    OtherEpoch(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Publish,
    PublishHere,
    Deliver(usize),
    Duplicate(usize),
    /// The feed's connection breaks: what is on its way is lost, and so is
    /// everything published until `Lose`.
    Cut,
    /// The feed notices (a probe, a reconnect) and says the room may have
    /// lost deliveries.
    Lose,
    Run(usize),
    Answer(usize),
    Fail(usize),
    Join(usize, JoinKind),
    Leave(usize),
    Step(usize),
    Rollback(u8),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let join = prop_oneof![
        (0u8..6).prop_map(JoinKind::Recent),
        Just(JoinKind::Resume),
        Just(JoinKind::Resume),
        (0u8..4).prop_map(JoinKind::SinceAhead),
        (0u8..4).prop_map(JoinKind::OtherEpoch),
    ];
    prop_oneof![
        8 => Just(Op::Publish),
        2 => Just(Op::PublishHere),
        12 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Duplicate),
        1 => Just(Op::Cut),
        2 => Just(Op::Lose),
        6 => any::<usize>().prop_map(Op::Run),
        6 => any::<usize>().prop_map(Op::Answer),
        1 => any::<usize>().prop_map(Op::Fail),
        3 => (slot.clone(), join).prop_map(|(s, j)| Op::Join(s, j)),
        1 => slot.clone().prop_map(Op::Leave),
        8 => slot.prop_map(Op::Step),
        1 => (1u8..4).prop_map(Op::Rollback),
        1 => Just(Op::Flush),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Join(usize, u64),
    Repair,
}

struct PendingRead {
    owner: Owner,
    read: Read,
    answer: Option<Result<Page, ()>>,
}

#[derive(Debug, PartialEq)]
enum Task {
    Out,
    Reading,
    Pushing(Vec<Frame>),
    Trying,
    Waiting,
    Live,
}

struct Slot {
    conn: ConnId,
    user: User,
    recorder: Recorder,
    task: Task,
    /// Bumped by every join and leave, so late answers of an earlier join
    /// are told apart.
    generation: u64,
    /// What the join in progress asked for.
    asking: Option<Replay>,
    /// The join in progress is a re-join of a live member whose first read
    /// has not come back: if it fails, the member must still be live.
    rejoining: bool,
    /// Joins that went live: where their `replayed` is in the recording,
    /// and what they asked for.
    lived: Vec<(usize, Replay)>,
}

struct World {
    store: Store,
    order: RoomOrder<Recorder>,
    feed: Vec<(Epoch, Event)>,
    /// The feed's connection is broken.
    cut: bool,
    reads: Vec<PendingRead>,
    slots: Vec<Slot>,
    repairing: bool,
}

impl World {
    fn new(limits: Limits) -> World {
        let room = Room::parse("r").unwrap();
        World {
            store: Store {
                room: room.clone(),
                epoch: None,
                events: Vec::new(),
                head: 0,
                epochs: 0,
                texts: 0,
                assigned: HashMap::new(),
            },
            order: RoomOrder::new(room, limits),
            feed: Vec::new(),
            cut: false,
            reads: Vec::new(),
            slots: (0..SLOTS)
                .map(|n| Slot {
                    conn: n as ConnId + 1,
                    user: User::parse(&format!("user{}", n % 2)).unwrap(),
                    recorder: Recorder::default(),
                    task: Task::Out,
                    generation: 0,
                    asking: None,
                    rejoining: false,
                    lived: Vec::new(),
                })
                .collect(),
            repairing: false,
        }
    }

    fn start_repair(&mut self, request: Option<Read>) {
        if let Some(request) = request {
            assert!(!self.repairing, "a second repair while one runs");
            self.repairing = true;
            self.read(Owner::Repair, request);
        }
    }

    fn delivered(&mut self, delivered: Delivered) {
        self.start_repair(delivered.repair);
    }

    fn read(&mut self, owner: Owner, read: Read) {
        self.reads.push(PendingRead {
            owner,
            read,
            answer: None,
        });
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Publish | Op::PublishHere => {
                let known = match op {
                    Op::PublishHere => self.order.seen(),
                    _ => Vec::new(),
                };
                let delivery = self.store.append(&known);
                if !self.cut {
                    self.feed.push(delivery);
                }
            }
            Op::Deliver(i) if !self.feed.is_empty() => {
                let (epoch, event) = self.feed.remove(i % self.feed.len());
                let delivered = self.order.deliver(&epoch, &event);
                self.delivered(delivered);
            }
            Op::Cut => {
                self.feed.clear();
                self.cut = true;
            }
            Op::Duplicate(i) if !self.feed.is_empty() => {
                let copy = self.feed[i % self.feed.len()].clone();
                self.feed.push(copy);
            }
            Op::Lose => {
                self.cut = false;
                let repair = self.order.feed_lost();
                self.start_repair(repair);
            }
            Op::Run(i) => {
                let waiting: Vec<usize> = (0..self.reads.len())
                    .filter(|&n| self.reads[n].answer.is_none())
                    .collect();
                if let Some(&n) = waiting.get(i % waiting.len().max(1)) {
                    let page = self.store.read(&self.reads[n].read);
                    self.reads[n].answer = Some(Ok(page));
                }
            }
            Op::Answer(i) => {
                let run: Vec<usize> = (0..self.reads.len())
                    .filter(|&n| self.reads[n].answer.is_some())
                    .collect();
                if let Some(&n) = run.get(i % run.len().max(1)) {
                    let read = self.reads.remove(n);
                    self.answer(read.owner, read.answer.unwrap());
                }
            }
            Op::Fail(i) if !self.reads.is_empty() => {
                let read = self.reads.remove(i % self.reads.len());
                self.answer(read.owner, Err(()));
            }
            Op::Join(slot, kind) => self.join(slot, kind),
            Op::Leave(slot) => self.leave(slot),
            Op::Step(slot) => self.step(slot),
            Op::Rollback(lost) => {
                // A Redis that restarts from an older snapshot drops every
                // connection, the feed's too.
                self.store.rollback(lost as u64);
                self.apply(Op::Cut);
            }
            Op::Flush => {
                self.store.epoch = None;
                self.store.events.clear();
                self.store.head = 0;
            }
            Op::Deliver(_) | Op::Duplicate(_) | Op::Fail(_) => {}
        }
    }

    fn answer(&mut self, owner: Owner, answer: Result<Page, ()>) {
        match owner {
            Owner::Repair => {
                let repaired = self.order.repair_page(answer.as_ref().map_err(|_| ()));
                self.delivered(repaired.delivered);
                match repaired.step {
                    RepairStep::Read(next)
                    | RepairStep::ReadSoon(next)
                    | RepairStep::Retry(next) => self.read(Owner::Repair, next),
                    RepairStep::Done => self.repairing = false,
                }
            }
            Owner::Join(slot, generation) => {
                if self.slots[slot].generation != generation {
                    return;
                }
                let conn = self.slots[slot].conn;
                let rejoining = std::mem::take(&mut self.slots[slot].rejoining);
                match answer {
                    Err(()) => {
                        let left = self.order.join_failed(conn);
                        if rejoining {
                            assert!(
                                self.order.is_live(conn),
                                "a failed re-join dropped the membership"
                            );
                        }
                        let slot = &mut self.slots[slot];
                        slot.task = if left.was_member && self.order.is_live(conn) {
                            Task::Live
                        } else {
                            Task::Out
                        };
                    }
                    Ok(page) => match self.order.join_page(conn, &page) {
                        Some(JoinPage::Push(frames)) => {
                            self.slots[slot].task = Task::Pushing(frames)
                        }
                        Some(JoinPage::Read(next)) => self.read(owner, next),
                        None => panic!("a join's read came back for a member that is not joining"),
                    },
                }
            }
        }
    }

    fn join(&mut self, n: usize, kind: JoinKind) {
        if !matches!(self.slots[n].task, Task::Out | Task::Live) {
            return;
        }
        let seen = last_seen(&self.slots[n].recorder);
        let replay = match kind {
            JoinKind::Recent(count) => Replay::Recent(count as usize),
            JoinKind::Resume => match seen {
                Some((epoch, id)) => Replay::Since {
                    since: id,
                    epoch: Some(epoch),
                },
                None => Replay::Since {
                    since: 0,
                    epoch: None,
                },
            },
            JoinKind::SinceAhead(ahead) => Replay::Since {
                since: seen.map_or(0, |(_, id)| id) + ahead as u64,
                epoch: None,
            },
            JoinKind::OtherEpoch(since) => Replay::Since {
                since: since as u64,
                epoch: Some(Epoch::from("never")),
            },
        };
        let slot = &mut self.slots[n];
        slot.rejoining = slot.task == Task::Live;
        slot.generation += 1;
        slot.task = Task::Reading;
        slot.asking = Some(replay.clone());
        let owner = Owner::Join(n, slot.generation);
        let (conn, recorder, user) = (slot.conn, slot.recorder.clone(), slot.user.clone());
        let request = self.order.join(conn, recorder, user, replay);
        self.read(owner, request);
    }

    fn leave(&mut self, n: usize) {
        let slot = &mut self.slots[n];
        if slot.task == Task::Out {
            return;
        }
        slot.generation += 1;
        slot.task = Task::Out;
        self.order.leave(slot.conn);
        // A connection that leaves and joins again is a new one as far as
        // its recording goes.
        slot.conn += SLOTS as ConnId;
        slot.recorder = Recorder::default();
        slot.asking = None;
        slot.lived.clear();
    }

    fn step(&mut self, n: usize) {
        let conn = self.slots[n].conn;
        match std::mem::replace(&mut self.slots[n].task, Task::Trying) {
            Task::Pushing(frames) => self.slots[n].recorder.push(frames),
            Task::Trying => self.try_live(n, conn),
            Task::Waiting if !self.repairing => self.try_live(n, conn),
            other => self.slots[n].task = other,
        }
    }

    fn try_live(&mut self, n: usize, conn: ConnId) {
        let at = self.slots[n].recorder.0.borrow().len();
        match self.order.try_live(conn).expect("a joining member") {
            LiveStep::Live { repair, .. } => {
                let slot = &mut self.slots[n];
                slot.task = Task::Live;
                slot.lived.push((at, slot.asking.take().unwrap()));
                self.start_repair(repair);
            }
            LiveStep::Read(next) => {
                self.slots[n].task = Task::Reading;
                let owner = Owner::Join(n, self.slots[n].generation);
                self.read(owner, next);
            }
            LiveStep::Wait { start } => {
                self.slots[n].task = Task::Waiting;
                self.start_repair(start);
            }
            LiveStep::Failed(_) => {
                self.order.join_failed(conn);
                self.slots[n].task = if self.order.is_live(conn) {
                    Task::Live
                } else {
                    Task::Out
                };
            }
        }
    }

    /// Runs everything that is on its way until nothing is left to do.
    fn settle(&mut self) {
        for round in 0..100_000 {
            if round > 99_990 {
                eprintln!(
                    "round {round}: feed {:?}, reads {:?}, tasks {:?}, repairing {}",
                    self.feed
                        .iter()
                        .map(|(e, ev)| (e.clone(), ev.id))
                        .collect::<Vec<_>>(),
                    self.reads
                        .iter()
                        .map(|r| (
                            r.owner,
                            r.read.clone(),
                            r.answer.as_ref().map(|a| a.as_ref().map(|p| (
                                p.epoch.clone(),
                                p.head,
                                p.events.len()
                            )))
                        ))
                        .collect::<Vec<_>>(),
                    self.slots
                        .iter()
                        .map(|s| format!("{:?}", s.task))
                        .collect::<Vec<_>>(),
                    self.repairing
                );
            }
            if !self.feed.is_empty() {
                self.apply(Op::Deliver(0));
            } else if let Some(n) = self.reads.iter().position(|r| r.answer.is_none()) {
                let page = self.store.read(&self.reads[n].read);
                self.reads[n].answer = Some(Ok(page));
            } else if !self.reads.is_empty() {
                self.apply(Op::Answer(0));
            } else if let Some(n) = (0..SLOTS).find(|&n| {
                matches!(self.slots[n].task, Task::Pushing(_) | Task::Trying)
                    || (self.slots[n].task == Task::Waiting && !self.repairing)
            }) {
                self.step(n);
            } else {
                return;
            }
        }
        panic!("the room did not settle");
    }
}

/// The epoch and id of the last event in a recording.
fn last_seen(recorder: &Recorder) -> Option<(Epoch, u64)> {
    let mut epoch = None;
    let mut last = None;
    for frame in recorder.0.borrow().iter() {
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        match value["type"].as_str().unwrap() {
            "joined" => epoch = Some(Epoch::from(value["epoch"].as_str().unwrap())),
            "message" => last = Some((epoch.clone().unwrap(), value["id"].as_u64().unwrap())),
            _ => {}
        }
    }
    last
}

/// What one member saw, checked against the contract and the store.
fn check(slot: &Slot, store: &Store) {
    let frames: Vec<Value> = slot
        .recorder
        .0
        .borrow()
        .iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect();
    let mut epoch: Option<Epoch> = None;
    let mut last: Option<u64> = None;
    // Where the member is: the head its `joined` named, then each message.
    let mut reached: Option<u64> = None;
    let mut meaning: HashMap<(Epoch, u64), String> = HashMap::new();
    let mut replayed = 0;
    for frame in &frames {
        match frame["type"].as_str().unwrap() {
            "joined" => {
                epoch = Some(Epoch::from(frame["epoch"].as_str().unwrap()));
                last = None;
                reached = frame["head"].as_u64();
            }
            "replayed" => replayed += 1,
            "message" => {
                let epoch = epoch.clone().expect("a message before any joined");
                let id = frame["id"].as_u64().unwrap();
                if let Some(last) = last {
                    assert_eq!(
                        id,
                        last + 1,
                        "a gap or a duplicate in {epoch:?}: {frames:?}"
                    );
                }
                last = Some(id);
                reached = Some(id);
                let text = frame["text"].as_str().unwrap().to_owned();
                assert!(
                    store.assigned[&(epoch.clone(), id)].contains(&text),
                    "({epoch:?}, {id}) was never {text}"
                );
                let before = meaning.insert((epoch.clone(), id), text.clone());
                assert!(
                    before.is_none_or(|b| b == text),
                    "({epoch:?}, {id}) meant two events: {frames:?}"
                );
            }
            other => panic!("unexpected frame {other}"),
        }
    }
    assert_eq!(
        replayed,
        slot.lived.len(),
        "one replayed per join: {frames:?}"
    );
    for (at, replay) in &slot.lived {
        check_since(*at, replay, &frames);
    }
    let ahead = slot.lived.last().is_some_and(
        |(_, replay)| matches!(replay, Replay::Since { since, .. } if *since >= store.head),
    );
    if slot.task == Task::Live && !ahead {
        assert_eq!(epoch, store.epoch, "a live member ends in the room's epoch");
        assert_eq!(
            reached,
            Some(store.head),
            "a live member ends at the head: {frames:?}"
        );
    }
}

/// A `since` join that says it is not truncated continues right after its
/// `since`, within the epoch the client named. `at` is its `replayed`.
fn check_since(at: usize, replay: &Replay, frames: &[Value]) {
    let Replay::Since { since, epoch } = replay else {
        return;
    };
    assert_eq!(frames[at]["type"], "replayed", "{frames:?}");
    if frames[at]["truncated"] == true {
        return;
    }
    let joined = (0..at)
        .rev()
        .find(|&n| frames[n]["type"] == "joined")
        .expect("a joined before replayed");
    if let Some(epoch) = epoch {
        assert_eq!(
            frames[joined]["epoch"],
            epoch.as_str(),
            "not truncated, so the same epoch"
        );
    }
    let next = frames[joined + 1..]
        .iter()
        .take_while(|f| f["type"] != "joined")
        .find(|f| f["type"] == "message");
    if let Some(next) = next {
        assert_eq!(
            next["id"],
            since + 1,
            "not truncated, so right after since: {frames:?}"
        );
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_member_sees_the_room_in_order_without_gaps(
        ops in prop::collection::vec(op(), 1..160),
        (pending, replay_cap, page) in (1usize..6, 1usize..8, 1usize..6),
    ) {
        let mut world = World::new(Limits { pending, replay_cap, page });
        let trace = std::env::var("MODEL_TRACE").is_ok();
        for op in ops {
            if trace {
                eprintln!("{op:?}: store {:?} head {} seen {:?}", world.store.epoch, world.store.head, world.order.seen());
            }
            world.apply(op);
        }
        world.apply(Op::Lose);
        world.settle();
        for slot in &world.slots {
            check(slot, &world.store);
        }
        world.apply(Op::Publish);
        world.settle();
        for slot in &world.slots {
            check(slot, &world.store);
        }
    }
}
