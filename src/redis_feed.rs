//! The live feed from Redis: sharded Pub/Sub, one connection per node that
//! owns slots, each room subscribed on the node that owns the room's slot.
//! Rooms placed together go out in one write per node, as one `SSUBSCRIBE`
//! per batch of channels the node takes together (one slot on a cluster,
//! any on a standalone Redis).
//!
//! The set of rooms this instance wants is the truth, kept here, not in a
//! client library: after a connection drops, a node says `sunsubscribe`
//! without being asked (its slots moved, as in a failover), or a
//! subscription is refused (`MOVED`), the room is subscribed again where
//! the topology now says it lives, and the rooms are told to repair from
//! their streams (`FeedEvent::Repair`), so nothing published meanwhile is
//! skipped. Every few seconds the topology is read again and every
//! subscription asserted again, which catches what no event announced.
//!
//! The connections speak RESP2 in subscribed mode, whose replies are flat
//! arrays, so the little reader here is all the protocol they need.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::io::{BufReader, WriteExt};
use async_std::net::TcpStream;
use futures_lite::{AsyncBufRead, FutureExt};
use redis::Value;

use futures_util::future::BoxFuture;

use crate::feed::{Delivery, Events, Feed, FeedEvent, Signal};
use crate::fields::Room;
use crate::log::{Epoch, Event, StoreError};
use crate::outbox;
use crate::redis::Redis;
use crate::redis_keys::Keys;
use crate::resp;
use crate::topology::{slot_of, Topology};

/// How often unplaced rooms are retried and the topology may be re-read.
const TICK: Duration = Duration::from_millis(100);
/// How often every subscription is asserted again.
const REASSERT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

enum Command {
    Subscribe(Room, async_channel::Sender<Result<(), StoreError>>),
    Unsubscribe(Room),
}

/// The rooms' handle on the feed task.
pub struct RedisFeed {
    redis: Arc<Redis>,
    commands: async_channel::Sender<Command>,
}

impl RedisFeed {
    /// Starts the feed task, which hands what it hears to `events`.
    pub fn start(redis: Arc<Redis>, events: Events) -> RedisFeed {
        let (commands, received) = async_channel::unbounded();
        let setup = FeedSetup {
            redis: redis.clone(),
            events,
        };
        async_std::task::spawn(run(setup, received));
        RedisFeed { redis, commands }
    }

    async fn subscribe_room(&self, room: &Room) -> Result<(), StoreError> {
        let (reply, answer) = async_channel::bounded(1);
        let stopped = || StoreError("the live feed task has stopped".into());
        self.commands
            .send(Command::Subscribe(room.clone(), reply))
            .await
            .map_err(|_| stopped())?;
        match async_std::future::timeout(self.redis.timeout, answer.recv()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(StoreError(format!("subscribing to room {room} timed out"))),
        }
    }

    /// Publishes a signal on the room's channel as `~origin frame`; the `~`
    /// sets it apart from events, whose payload starts with their epoch.
    async fn publish_signal(&self, signal: Signal) -> Result<(), StoreError> {
        let payload = format!("~{} {}", signal.origin, signal.frame.as_str());
        let channel = self.redis.keys.channel(&signal.room);
        let mut publish = redis::cmd("SPUBLISH");
        publish.arg(&channel).arg(payload);
        let conn = &self.redis.commands;
        self.redis
            .bounded("signal", conn.on_slot::<i64>(&publish, slot_of(&channel)))
            .await
            .map(|_| ())
    }
}

impl Feed for RedisFeed {
    fn subscribe<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.subscribe_room(room))
    }

    fn unsubscribe(&self, room: &Room) {
        let _ = self.commands.try_send(Command::Unsubscribe(room.clone()));
    }

    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.publish_signal(signal))
    }

    fn is_ready(&self) -> bool {
        self.redis.health.feed_ready()
    }
}

/// What the feed task works with.
struct FeedSetup {
    redis: Arc<Redis>,
    events: Events,
}

/// A room this instance wants, and where it stands.
#[derive(Default)]
struct Want {
    /// The link its `SSUBSCRIBE` went out on.
    link: Option<u64>,
    subscribed: bool,
    /// Subscribed before: a new subscription may have missed messages.
    ever: bool,
    waiters: Vec<async_channel::Sender<Result<(), StoreError>>>,
}

/// One connection to one node.
struct Link {
    id: u64,
    addr: String,
    stream: TcpStream,
    /// Requests in the order sent; each gets one reply, in order.
    pending: VecDeque<Pending>,
    /// Channels subscribed on it, as the node last counted them.
    count: i64,
    /// Since when a request has waited for its reply with none coming: a
    /// link silent for the time limit is taken for dead, even though
    /// nothing closed it (a partition, a paused VM). Every subscription is
    /// asserted again every few seconds, so a link that carries rooms is
    /// asked something that often.
    waiting_since: Option<Instant>,
    /// How long a write or a reply may take.
    timeout: Duration,
    /// When the link was last probed with a `PING`.
    probed: Instant,
    /// `SSUBSCRIBE` commands sent on it, which names each.
    commands: u64,
}

impl Link {
    /// A reply came: the link lives.
    fn answered(&mut self) {
        self.waiting_since = (!self.pending.is_empty()).then(Instant::now);
    }
}

enum Pending {
    /// One channel of an `SSUBSCRIBE`, and which command it went in: a
    /// refusal is one reply for the whole command.
    Subscribe(Room, u64),
    Unsubscribe(Room),
    Ping,
}

enum LinkEvent {
    Subscribed(u64, Room, i64),
    Unsubscribed(u64, Room, i64),
    Refused(u64, String),
    Pong(u64),
    Closed(u64, String),
    Opened(String, Result<TcpStream, String>),
}

enum Wake {
    Command(Option<Command>),
    Link(LinkEvent),
    Tick,
}

async fn run(setup: FeedSetup, commands: async_channel::Receiver<Command>) {
    let (link_tx, link_rx) = async_channel::unbounded();
    let mut feed = FeedTask {
        setup,
        wanted: HashMap::new(),
        links: HashMap::new(),
        opening: HashSet::new(),
        link_tx,
        next_link: 0,
        stale: true,
        retry_at: Instant::now(),
        backoff: RETRY_MIN,
        reasserted: Instant::now(),
        outage: false,
    };
    let mut next_tick = Instant::now() + TICK;
    loop {
        let event = async { Wake::Command(commands.recv().await.ok()) }
            .or(async {
                match link_rx.recv().await {
                    Ok(event) => Wake::Link(event),
                    Err(_) => std::future::pending().await,
                }
            })
            .or(async {
                async_std::task::sleep(next_tick.saturating_duration_since(Instant::now())).await;
                Wake::Tick
            })
            .await;
        match event {
            Wake::Command(None) => return,
            Wake::Command(Some(Command::Subscribe(room, reply))) => {
                feed.subscribe(room, reply).await
            }
            Wake::Command(Some(Command::Unsubscribe(room))) => feed.unsubscribe(&room).await,
            Wake::Link(event) => feed.on_link(event).await,
            Wake::Tick => {
                next_tick = Instant::now() + TICK;
                feed.tick().await;
            }
        }
    }
}

struct FeedTask {
    setup: FeedSetup,
    wanted: HashMap<Room, Want>,
    links: HashMap<String, Link>,
    /// Addresses whose link is being opened.
    opening: HashSet<String>,
    link_tx: async_channel::Sender<LinkEvent>,
    next_link: u64,
    /// The topology may be out of date: read it before placing rooms.
    stale: bool,
    retry_at: Instant,
    backoff: Duration,
    reasserted: Instant,
    /// Rooms went unsubscribed: said once, and once when it is over.
    outage: bool,
}

impl FeedTask {
    async fn subscribe(
        &mut self,
        room: Room,
        reply: async_channel::Sender<Result<(), StoreError>>,
    ) {
        let want = self.wanted.entry(room.clone()).or_default();
        if want.subscribed {
            let _ = reply.try_send(Ok(()));
            return;
        }
        want.waiters.push(reply);
        if want.link.is_none() {
            let topology = self.topology();
            self.place(&[room], &topology).await;
        }
    }

    async fn unsubscribe(&mut self, room: &Room) {
        let Some(want) = self.wanted.remove(room) else {
            return;
        };
        let mut cmd = redis::cmd("SUNSUBSCRIBE");
        cmd.arg(self.setup.redis.keys.channel(room));
        let Some(link) = want.link.and_then(|id| self.link_mut(id)) else {
            return;
        };
        link.pending.push_back(Pending::Unsubscribe(room.clone()));
        let id = link.id;
        if send(link, &cmd.get_packed_command()).await.is_err() {
            self.close(id, "write failed").await;
        }
    }

    /// Subscribes rooms on the nodes that own their slots: one connection
    /// and one write per node, one `SSUBSCRIBE` per batch of channels the
    /// node takes together. Rooms that cannot be placed now are `unplaced`;
    /// returns how many.
    async fn place(&mut self, rooms: &[Room], topology: &Topology) -> usize {
        let mut by_node: HashMap<String, Vec<Room>> = HashMap::new();
        let mut failed = 0;
        for room in rooms {
            let slot = slot_of(&self.setup.redis.keys.channel(room));
            match topology.owner(slot) {
                Some(owner) => by_node
                    .entry(owner.addr.clone())
                    .or_default()
                    .push(room.clone()),
                None => {
                    failed += 1;
                    self.unplaced(room, "no node owns the room's slot right now");
                }
            }
        }
        for (addr, rooms) in by_node {
            // Without a link yet, the rooms wait for it to open.
            let Some(placed) = self.link_to(&addr) else {
                continue;
            };
            if let Err(e) = self.subscribe_on(placed, &rooms, topology).await {
                failed += rooms.len();
                rooms.iter().for_each(|room| self.unplaced(room, &e));
                continue;
            }
            for room in &rooms {
                if let Some(want) = self.wanted.get_mut(room) {
                    want.link = Some(placed);
                }
            }
        }
        failed
    }

    /// Sends `SSUBSCRIBE`s for `rooms` on one link, in one write: a link
    /// that takes no bytes is closed.
    async fn subscribe_on(
        &mut self,
        id: u64,
        rooms: &[Room],
        topology: &Topology,
    ) -> Result<(), String> {
        let keys = &self.setup.redis.keys;
        // Batches in the order first met, each with its rooms in order.
        let mut batches: Vec<Vec<(String, &Room)>> = Vec::new();
        let mut index: HashMap<u16, usize> = HashMap::new();
        for room in rooms {
            let channel = keys.channel(room);
            let batch = topology.batch_of(slot_of(&channel));
            let at = *index.entry(batch).or_insert_with(|| {
                batches.push(Vec::new());
                batches.len() - 1
            });
            batches[at].push((channel, room));
        }
        let link = self.links.values_mut().find(|link| link.id == id);
        let link = link.ok_or("the connection closed")?;
        // Each channel is answered on its own, in the order sent.
        let mut packed = Vec::new();
        for members in batches {
            link.commands += 1;
            let mut cmd = redis::cmd("SSUBSCRIBE");
            for (channel, room) in members {
                cmd.arg(channel);
                link.pending
                    .push_back(Pending::Subscribe(room.clone(), link.commands));
            }
            packed.extend(cmd.get_packed_command());
        }
        let sent = send(link, &packed).await;
        if sent.is_err() {
            self.close(id, "write failed").await;
        }
        sent
    }

    /// The room could not be placed now: whoever waits for it is answered
    /// (the client may join again), and the tick keeps trying.
    fn unplaced(&mut self, room: &Room, why: &str) {
        self.stale = true;
        if let Some(want) = self.wanted.get_mut(room) {
            want.link = None;
            want.subscribed = false;
            for waiter in want.waiters.drain(..) {
                let _ = waiter.try_send(Err(StoreError(format!(
                    "the Redis live feed cannot subscribe room {room} now ({why})"
                ))));
            }
        }
    }

    /// The link to `addr` if it is open. Otherwise it is opened in a task
    /// of its own, once per address, which answers with `LinkEvent::Opened`:
    /// a node that drops packets holds up nothing else.
    fn link_to(&mut self, addr: &str) -> Option<u64> {
        if let Some(link) = self.links.get(addr) {
            return Some(link.id);
        }
        if self.opening.insert(addr.to_owned()) {
            let (addr, redis, tx) = (
                addr.to_owned(),
                self.setup.redis.clone(),
                self.link_tx.clone(),
            );
            async_std::task::spawn(async move {
                let opened = bounded(redis.timeout, resp::open(&addr, &redis.login)).await;
                let _ = tx.send(LinkEvent::Opened(addr, opened)).await;
            });
        }
        None
    }

    /// A link opened, or could not be: the rooms waiting for it are placed
    /// on it, or answered and tried again later.
    async fn opened(&mut self, addr: String, opened: Result<TcpStream, String>) {
        self.opening.remove(&addr);
        let topology = self.topology();
        let waiting: Vec<Room> = self
            .wanted
            .iter()
            .filter(|(_, w)| w.link.is_none())
            .map(|(room, _)| room.clone())
            .filter(|room| {
                let slot = slot_of(&self.setup.redis.keys.channel(room));
                topology.owner(slot).is_some_and(|owner| owner.addr == addr)
            })
            .collect();
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                waiting.iter().for_each(|room| self.unplaced(room, &e));
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
                return;
            }
        };
        self.next_link += 1;
        let id = self.next_link;
        async_std::task::spawn(read_link(
            id,
            stream.clone(),
            self.setup.redis.keys.clone(),
            self.link_tx.clone(),
            self.setup.events.clone(),
        ));
        log::debug!("Redis live feed connected to {addr}");
        let link = Link {
            id,
            addr: addr.clone(),
            stream,
            pending: VecDeque::new(),
            count: 0,
            waiting_since: None,
            timeout: self.setup.redis.timeout,
            probed: Instant::now(),
            commands: 0,
        };
        self.links.insert(addr, link);
        self.place(&waiting, &topology).await;
    }

    fn link_mut(&mut self, id: u64) -> Option<&mut Link> {
        self.links.values_mut().find(|link| link.id == id)
    }

    /// A node refused a request: a refused `SSUBSCRIBE` (one reply for all
    /// its channels) leaves its rooms to be placed again.
    fn refused(&mut self, id: u64, error: &str) {
        let Some(link) = self.link_mut(id) else {
            return;
        };
        let addr = link.addr.clone();
        let refused = link.pending.pop_front();
        let mut rooms = Vec::new();
        if let Some(Pending::Subscribe(room, command)) = refused {
            rooms.push(room);
            while let Some(Pending::Subscribe(_, c)) = link.pending.front() {
                if *c != command {
                    break;
                }
                if let Some(Pending::Subscribe(room, _)) = link.pending.pop_front() {
                    rooms.push(room);
                }
            }
        } else {
            log::warn!("Redis node {addr} refused a live feed request: {error}");
        }
        link.answered();
        // One line per refused command, however many rooms it carried.
        if let Some(first) = rooms.first() {
            let count = rooms.len();
            log::info!("Redis node {addr} refused the subscription of {count} room(s), {first} first ({error}); reading the topology again");
        }
        for room in rooms {
            if self.wanted.get(&room).is_some_and(|w| w.link == Some(id)) {
                self.unplaced(&room, error);
            }
        }
    }

    async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Subscribed(id, room, count) => {
                let Some(link) = self.link_mut(id) else {
                    return;
                };
                if matches!(link.pending.front(), Some(Pending::Subscribe(r, _)) if *r == room) {
                    link.pending.pop_front();
                }
                link.answered();
                let fresh = count > link.count;
                link.count = count;
                let Some(want) = self.wanted.get_mut(&room).filter(|w| w.link == Some(id)) else {
                    return;
                };
                want.subscribed = true;
                for waiter in want.waiters.drain(..) {
                    let _ = waiter.try_send(Ok(()));
                }
                let repair = want.ever && fresh;
                want.ever = true;
                if repair {
                    self.setup.events.send(FeedEvent::Repair(room));
                }
            }
            LinkEvent::Unsubscribed(id, room, count) => {
                let Some(link) = self.link_mut(id) else {
                    return;
                };
                link.count = count;
                if matches!(link.pending.front(), Some(Pending::Unsubscribe(r)) if *r == room) {
                    link.pending.pop_front();
                    link.answered();
                    return;
                }
                link.answered();
                // Not asked for: the node no longer serves the room's slot.
                let addr = link.addr.clone();
                if self.wanted.get(&room).is_some_and(|w| w.link == Some(id)) {
                    log::info!("Redis node {addr} dropped room {room}'s subscription (its slot moved); subscribing where it lives now");
                    self.unplaced(&room, "its slot moved");
                }
            }
            LinkEvent::Refused(id, error) => self.refused(id, &error),
            LinkEvent::Pong(id) => {
                if let Some(link) = self.link_mut(id) {
                    if matches!(link.pending.front(), Some(Pending::Ping)) {
                        link.pending.pop_front();
                    }
                    link.answered();
                }
            }
            LinkEvent::Closed(id, why) => self.close(id, &why).await,
            LinkEvent::Opened(addr, opened) => self.opened(addr, opened).await,
        }
    }

    /// Forgets the link; its rooms are placed again by the next tick.
    async fn close(&mut self, id: u64, why: &str) {
        let Some(addr) = self
            .links
            .iter()
            .find(|(_, link)| link.id == id)
            .map(|(addr, _)| addr.clone())
        else {
            return;
        };
        if let Some(link) = self.links.remove(&addr) {
            let _ = link.stream.shutdown(std::net::Shutdown::Both);
        }
        let rooms: Vec<Room> = self
            .wanted
            .iter()
            .filter(|(_, w)| w.link == Some(id))
            .map(|(room, _)| room.clone())
            .collect();
        if !rooms.is_empty() {
            self.setup.redis.health.metrics.redis_reconnect();
            if !self.outage {
                log::warn!(
                    "Redis live feed to {addr} lost ({why}): {} room(s) to subscribe again",
                    rooms.len()
                );
            }
            self.outage = true;
        }
        for room in rooms {
            self.unplaced(&room, why);
        }
        self.stale = true;
    }

    /// Places rooms that have no subscription, and now and then reads the
    /// topology and asserts every subscription again.
    async fn tick(&mut self) {
        let now = Instant::now();
        self.close_silent(now).await;
        let unplaced: Vec<Room> = self
            .wanted
            .iter()
            .filter(|(_, w)| w.link.is_none())
            .map(|(room, _)| room.clone())
            .collect();
        let reassert = now.duration_since(self.reasserted) >= REASSERT;
        if (unplaced.is_empty() || now < self.retry_at) && !reassert {
            return;
        }
        if reassert {
            self.reasserted = now;
        }
        if self.stale || reassert {
            match self.setup.redis.commands.clone().topology().await {
                Ok(topology) => {
                    self.setup.redis.health.set_topology(topology);
                    self.stale = false;
                }
                Err(e) => log::debug!("Redis topology unavailable: {e}"),
            }
        }
        let topology = self.topology();
        let failed = self.place(&unplaced, &topology).await;
        if reassert {
            self.reassert(&topology).await;
        }
        if failed > 0 {
            self.retry_at = now + self.backoff;
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        } else {
            self.backoff = RETRY_MIN;
        }
        let settled = self.wanted.values().all(|w| w.link.is_some()) && topology.covers_all();
        if settled && self.outage {
            self.outage = false;
            log::info!(
                "Redis live feed is back: {} room(s) subscribed, and repaired from their streams",
                self.wanted.len()
            );
        }
        self.setup.redis.health.set_feed(settled);
    }

    /// Closes the links that have left a request unanswered for the time
    /// limit: their rooms are placed again on fresh connections and
    /// repaired from their streams.
    async fn close_silent(&mut self, now: Instant) {
        self.probe(now).await;
        let limit = self.setup.redis.timeout;
        let silent: Vec<u64> = self
            .links
            .values()
            .filter(|link| {
                link.waiting_since
                    .is_some_and(|since| now.duration_since(since) >= limit)
            })
            .map(|link| link.id)
            .collect();
        for id in silent {
            self.setup.redis.health.metrics.redis_silent();
            let why = format!("no reply within {limit:?}: the connection is silent");
            self.close(id, &why).await;
        }
    }

    /// `PING`s every link with nothing outstanding that was not probed for
    /// `--redis-probe-ms`: a link that carries rooms but hears nothing is
    /// otherwise indistinguishable from a quiet one.
    async fn probe(&mut self, now: Instant) {
        let every = self.setup.redis.probe;
        let mut failed = Vec::new();
        for link in self.links.values_mut() {
            if link.waiting_since.is_some() || now.duration_since(link.probed) < every {
                continue;
            }
            link.probed = now;
            link.pending.push_back(Pending::Ping);
            if send(link, &redis::cmd("PING").get_packed_command())
                .await
                .is_err()
            {
                failed.push(link.id);
            }
        }
        for id in failed {
            self.close(id, "write failed").await;
        }
    }

    /// Moves rooms whose slot changed owner, subscribes the others again
    /// where they are when the node's count of a link's channels disagrees
    /// with the rooms placed on it (a no-op for Redis when nothing was
    /// lost), and closes links that no longer carry anything. A link whose
    /// count agrees is sent nothing: its probe says it lives.
    async fn reassert(&mut self, topology: &Topology) {
        let placed: Vec<(Room, u64)> = self
            .wanted
            .iter()
            .filter_map(|(room, w)| Some((room.clone(), w.link?)))
            .collect();
        let mut on_link: HashMap<u64, i64> = HashMap::new();
        for (room, id) in &placed {
            let subscribed = self.wanted.get(room).is_some_and(|w| w.subscribed);
            *on_link.entry(*id).or_default() += i64::from(subscribed);
        }
        let mut again: HashMap<u64, Vec<Room>> = HashMap::new();
        let mut moved = Vec::new();
        for (room, id) in placed {
            let channel = self.setup.redis.keys.channel(&room);
            let owner = topology.owner(slot_of(&channel)).map(|s| s.addr.clone());
            let Some(link) = self.link_mut(id) else {
                continue;
            };
            if owner.as_deref() != Some(link.addr.as_str()) {
                moved.push((room, id));
                continue;
            }
            let settled = link.pending.iter().all(|p| matches!(p, Pending::Ping));
            if !settled || on_link.get(&id) != Some(&link.count) {
                again.entry(id).or_default().push(room);
            }
        }
        for (id, rooms) in again {
            let _ = self.subscribe_on(id, &rooms, topology).await;
        }
        self.move_rooms(moved, topology).await;
        let idle: Vec<u64> = self
            .links
            .values()
            .filter(|link| link.pending.is_empty() && link.count == 0)
            .filter(|link| !self.wanted.values().any(|w| w.link == Some(link.id)))
            .map(|link| link.id)
            .collect();
        for id in idle {
            self.close(id, "no rooms left on it").await;
        }
    }

    /// Rooms whose slot has another owner now: unsubscribed where they
    /// were and placed where they are.
    async fn move_rooms(&mut self, moved: Vec<(Room, u64)>, topology: &Topology) {
        let mut rooms = Vec::new();
        for (room, id) in moved {
            let mut cmd = redis::cmd("SUNSUBSCRIBE");
            cmd.arg(self.setup.redis.keys.channel(&room));
            if let Some(link) = self.link_mut(id) {
                link.pending.push_back(Pending::Unsubscribe(room.clone()));
                if send(link, &cmd.get_packed_command()).await.is_err() {
                    self.close(id, "write failed").await;
                }
            }
            self.unplaced(&room, "its slot moved");
            rooms.push(room);
        }
        self.place(&rooms, topology).await;
    }

    fn topology(&self) -> Arc<Topology> {
        self.setup.redis.health.topology()
    }
}

/// Writes a request on the link, within the time limit: a node that takes
/// no bytes (its socket buffer full on a silent path) fails the write
/// rather than holding the feed task.
async fn send(link: &mut Link, packed: &[u8]) -> Result<(), String> {
    link.waiting_since.get_or_insert_with(Instant::now);
    let timeout = link.timeout;
    let write = async {
        link.stream
            .write_all(packed)
            .await
            .map_err(|e| format!("cannot write to {}: {e}", link.addr))
    };
    bounded(timeout, write).await
}

/// Reads one link until it ends: messages go straight to the rooms, in the
/// order the node sent them; everything else to the feed task. The replies
/// already read whole off the socket with one are taken with it, and their
/// messages delivered `corked` (each connection's frames in one write).
async fn read_link(
    id: u64,
    stream: TcpStream,
    keys: Keys,
    links: async_channel::Sender<LinkEvent>,
    events: Events,
) {
    let mut reader = BufReader::new(stream);
    let why = loop {
        let mut replies = match resp::read_value(&mut reader).await {
            Ok(raw) => vec![parsed(&raw)],
            Err(e) => break e,
        };
        while let Some(len) = resp::whole_reply(reader.buffer()) {
            replies.push(parsed(&reader.buffer()[..len]));
            Pin::new(&mut reader).consume(len);
        }
        let (told, failed) =
            outbox::corked(replies.len(), || take_replies(id, &keys, &events, replies));
        for event in told {
            if links.send(event).await.is_err() {
                return;
            }
        }
        if let Some(why) = failed {
            break why;
        }
    };
    let _ = links.send(LinkEvent::Closed(id, why)).await;
}

/// A reply as the redis crate parses it, or why the link must end.
fn parsed(raw: &[u8]) -> Result<Value, String> {
    redis::parse_redis_value(raw).map_err(|e| format!("a reply redis could not parse: {e}"))
}

/// Replies of link `id`, in order: what the feed task must know of them,
/// and why the link must end, if one could not be parsed.
fn take_replies(
    id: u64,
    keys: &Keys,
    events: &Events,
    replies: Vec<Result<Value, String>>,
) -> (Vec<LinkEvent>, Option<String>) {
    let mut told = Vec::new();
    for reply in replies {
        match reply {
            Ok(reply) => told.extend(take_reply(id, keys, events, reply)),
            Err(why) => return (told, Some(why)),
        }
    }
    (told, None)
}

/// One reply of link `id`: a message goes to the rooms; what the feed task
/// must know of comes back.
fn take_reply(id: u64, keys: &Keys, events: &Events, reply: Value) -> Option<LinkEvent> {
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(payload)]
                if kind == b"smessage" =>
            {
                let channel = String::from_utf8_lossy(channel);
                if let Some(event) = event_of(keys, &channel, payload) {
                    events.send(event);
                }
                None
            }
            [Value::BulkString(kind), Value::BulkString(_)] if kind == b"pong" => {
                Some(LinkEvent::Pong(id))
            }
            [Value::BulkString(kind), Value::BulkString(channel), Value::Int(count)] => {
                let room = keys.room_of_channel(&String::from_utf8_lossy(channel))?;
                match kind.as_slice() {
                    b"ssubscribe" => Some(LinkEvent::Subscribed(id, room, *count)),
                    b"sunsubscribe" => Some(LinkEvent::Unsubscribed(id, room, *count)),
                    _ => None,
                }
            }
            _ => None,
        },
        Value::ServerError(e) => Some(LinkEvent::Refused(id, e.to_string())),
        // A connection subscribed to nothing is out of subscribed mode,
        // and answers a PING the plain way.
        Value::SimpleString(text) if text.eq_ignore_ascii_case("pong") => Some(LinkEvent::Pong(id)),
        _ => None,
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    async_std::future::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Decodes a published payload: `epoch id nonce frame` for an event,
/// `~origin frame` for a signal.
fn event_of(keys: &Keys, channel: &str, payload: &[u8]) -> Option<FeedEvent> {
    let room = keys.room_of_channel(channel)?;
    let payload = std::str::from_utf8(payload).ok()?;
    if let Some(signal) = payload.strip_prefix('~') {
        let (origin, frame) = signal.split_once(' ')?;
        return Some(FeedEvent::Signal(Signal {
            room,
            origin: origin.to_owned(),
            frame: frame.to_owned().into(),
        }));
    }
    let mut parts = payload.splitn(4, ' ');
    let epoch = parts.next()?;
    let id: u64 = parts.next()?.parse().ok()?;
    let nonce: u32 = parts.next()?.parse().ok()?;
    let frame = parts.next()?;
    Some(FeedEvent::Delivery(Delivery {
        room,
        epoch: Epoch::from(epoch),
        event: Event {
            id,
            frame: frame.to_owned().into(),
            nonce,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_into_deliveries_and_signals() {
        let keys = Keys::new("p");
        let payload = br#"k3j2xq0a 42 7 {"type":"message","id":42}"#;
        let Some(FeedEvent::Delivery(d)) = event_of(&keys, "p:{r}:live", payload) else {
            panic!("a message payload decodes into a delivery");
        };
        assert_eq!(
            (d.room.as_str(), d.epoch.as_str(), d.event.id, d.event.nonce),
            ("r", "k3j2xq0a", 42, 7)
        );
        assert_eq!(d.event.frame.as_str(), r#"{"type":"message","id":42}"#);
        let payload = br#"~inst/7 {"type":"typing","room":"r","user":"bob"}"#;
        let Some(FeedEvent::Signal(signal)) = event_of(&keys, "p:{r}:live", payload) else {
            panic!("a ~ payload decodes into a signal");
        };
        assert_eq!(signal.origin, "inst/7");
        assert_eq!(
            signal.frame.as_str(),
            r#"{"type":"typing","room":"r","user":"bob"}"#
        );
        assert!(event_of(&keys, "p:{r}:live", b"garbage").is_none());
    }
}
