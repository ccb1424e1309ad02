//! The message store interface: where messages get their ids, where history is
//! kept, and where the live feed of every instance comes from.
//!
//! `Store` is an enum over the backends rather than a trait object: there are
//! few of them, they are all known here, and a `match` keeps async methods
//! simple. Every backend keeps the same semantics, so the rest of parlor cannot
//! tell which one it runs on:
//! - `publish` stores a message under the room's next id (1, 2, 3, … with no
//!   holes), remembers its `ref` for five minutes so that a retry gets the same
//!   id, and hands it to the live feed in id order;
//! - a room's history keeps the newest `--history` messages and has an epoch,
//!   which changes only when the history was lost and numbering began again;
//! - the live feed may lose deliveries (a dropped Redis connection does), but
//!   never reorders them, and says `Repair` for a room that may have lost some.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorCode};
use crate::fields::{Ref, Room, Text, User};
use crate::memory_store::MemoryStore;
use crate::protocol::Frame;
use crate::redis_store::RedisStore;

/// How long a `ref` is remembered, so that a retried send is stored once.
pub const REF_MEMORY: Duration = Duration::from_secs(5 * 60);

/// The identity of a room's history; ids mean something only within one epoch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A fresh epoch: eight random characters of `0-9a-z`.
    pub fn random() -> Epoch {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let s: String = (0..8)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        Epoch(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Epoch {
    fn from(s: String) -> Epoch {
        Epoch(s.into())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A stored message: its id and its `message` frame, encoded once.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: u64,
    pub frame: Frame,
}

/// A message on the live feed, with what is needed to put it in order.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub room: Room,
    pub epoch: Epoch,
    pub message: Message,
}

/// A frame for a room's members that is not a stored message (typing): it
/// has no id, is never replayed, and goes to everyone but its sender.
#[derive(Clone, Debug)]
pub struct Signal {
    pub room: Room,
    /// The sending connection, as `instance/connection`, which does not get it.
    pub origin: String,
    pub frame: Frame,
}

/// What the live feed carries to this instance's rooms.
#[derive(Debug)]
pub enum FeedEvent {
    Delivery(Delivery),
    Signal(Signal),
    /// Deliveries to this room may have been lost (its subscription was
    /// made again): it must read what it missed from history before
    /// delivering on.
    Repair(Room),
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct Draft {
    pub room: Room,
    pub user: User,
    pub text: Text,
    pub reference: Option<Ref>,
}

/// Where a draft was stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub epoch: Epoch,
    pub id: u64,
    pub ts: u64,
}

/// Which end of a range a read starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Oldest,
    Newest,
}

/// A range of ids to read: those strictly between `after` and `before`, at most
/// `limit` of them, taken from the `from` end. Messages come back oldest first
/// either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub after: u64,
    pub before: u64,
    pub limit: usize,
    pub from: End,
}

impl Slice {
    /// The newest `limit` messages after `after`.
    pub fn newest_after(after: u64, limit: usize) -> Slice {
        Slice {
            after,
            before: u64::MAX,
            limit,
            from: End::Newest,
        }
    }

    /// The oldest `limit` messages after `after`.
    pub fn oldest_after(after: u64, limit: usize) -> Slice {
        Slice {
            after,
            before: u64::MAX,
            limit,
            from: End::Oldest,
        }
    }

    /// The newest `limit` messages before `before`.
    pub fn newest_before(before: u64, limit: usize) -> Slice {
        Slice {
            after: 0,
            before,
            limit,
            from: End::Newest,
        }
    }
}

/// The answer to a read: the messages and where they stand in the room's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub epoch: Epoch,
    /// The room's last id in this epoch (0 when nothing was published yet).
    pub head: u64,
    /// The oldest id still in history (`head + 1` when history is empty).
    pub first: u64,
    /// Oldest first.
    pub messages: Vec<Message>,
}

impl Page {
    /// Whether messages after `after` existed but are missing from this page
    /// because history no longer has them (the page itself may still be cut
    /// short by its limit; that is for the caller to judge).
    pub fn trimmed_after(&self, after: u64) -> bool {
        after < self.head && self.first > after + 1
    }
}

/// The store could not answer; the client may retry.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::new(
            ErrorCode::Unavailable,
            format!("the message store is unavailable ({e}); retry with the same ref"),
        )
    }
}

/// The message store of this instance.
pub enum Store {
    Memory(MemoryStore),
    Redis(Box<RedisStore>),
}

impl Store {
    /// Stores a draft (or finds it stored already, by its `ref`) and returns
    /// where it went. The live feed gets it in id order.
    pub async fn publish(&self, draft: Draft) -> Result<Stored, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.publish(draft).await),
            Store::Redis(store) => store.publish(draft).await,
        }
    }

    /// Sends a signal to the room's members on every instance, without
    /// storing it. Best effort: a signal lost in a fault is not repaired.
    pub async fn signal(&self, signal: Signal) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.signal(signal).await;
                Ok(())
            }
            Store::Redis(store) => store.signal(signal).await,
        }
    }

    /// Records that `user` has a live connection in `room` on this instance
    /// (or still has: it is the heartbeat too); announces `member` join when
    /// the user was not in the room anywhere.
    pub async fn presence_join(&self, room: &Room, user: &User) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.presence_join(room, user).await;
                Ok(())
            }
            Store::Redis(store) => store.presence_op("join", room, Some(user)).await,
        }
    }

    /// Records that `user` left `room` on this instance; announces `member`
    /// leave when it has no connection left there anywhere.
    pub async fn presence_leave(&self, room: &Room, user: &User) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.presence_leave(room, user).await;
                Ok(())
            }
            Store::Redis(store) => store.presence_op("leave", room, Some(user)).await,
        }
    }

    /// Removes the entries of instances that stopped refreshing them, and
    /// announces the users who thereby left.
    pub async fn presence_sweep(&self, room: &Room) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.presence_op("sweep", room, None).await,
        }
    }

    /// The users joined to `room` on any instance, each once, sorted.
    pub async fn presence(&self, room: &Room) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.presence(room)),
            Store::Redis(store) => store.presence(room).await,
        }
    }

    /// Reads part of a room's history.
    pub async fn read(&self, room: &Room, slice: Slice) -> Result<Page, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.read(room, slice).await),
            Store::Redis(store) => store.read(room, slice).await,
        }
    }

    /// Starts the live feed for a room on this instance; returns once deliveries
    /// published from now on will arrive.
    pub async fn subscribe(&self, room: &Room) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.subscribe(room).await,
        }
    }

    /// Stops the live feed for a room that has no local members any more.
    pub fn unsubscribe(&self, room: &Room) {
        match self {
            Store::Memory(_) => {}
            Store::Redis(store) => store.unsubscribe(room),
        }
    }

    /// Whether the store answers and the live feed is connected.
    pub fn is_ready(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(store) => store.is_ready(),
        }
    }

    /// One line for the log at start: which store this is.
    pub fn describe(&self) -> String {
        match self {
            Store::Memory(_) => {
                "embedded in-memory store: this instance runs alone; start with --redis URL to share rooms with other instances".to_owned()
            }
            Store::Redis(store) => store.describe(),
        }
    }
}

/// Milliseconds since the Unix epoch, the `ts` of a stored message.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
