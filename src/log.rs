//! The event log of every room: where events get their ids, where history
//! is kept, and what a read of it returns. One part of the store (beside the
//! live feed, `feed.rs`, and presence, `presence_store.rs`), with a memory
//! and a Redis implementation that keep the same semantics:
//!
//! - `append` stores events under the room's next ids (1, 2, 3, … with no
//!   holes), in the order given, remembers each `ref` for five minutes so
//!   that a retry gets the same answer, and hands the events to the live
//!   feed in id order;
//! - a room's history keeps the newest `--history` events and has an epoch,
//!   which changes when numbering began again (history lost) or when the
//!   store's head went back behind an id that was handed out (a restart from
//!   an older snapshot): an id never names two events within one epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::error::{Error, ErrorCode};
use crate::fields::{Emoji, Ref, Room, Text, User};
use crate::protocol::Frame;

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

impl From<&str> for Epoch {
    fn from(s: &str) -> Epoch {
        Epoch(s.into())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A place in a room's history: an id within an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub epoch: Epoch,
    pub id: u64,
}

/// What a reader has seen of a room: the highest id handed out in an epoch,
/// and the nonce of the event under it, when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub epoch: Epoch,
    pub id: u64,
    pub nonce: Option<u32>,
}

/// A stored event: its id and its frame, encoded once.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: u64,
    pub frame: Frame,
    /// A random number the event got when it was stored: another event
    /// under the same id (a store that went back and gave the id again) has
    /// another nonce, so a duplicate can be told from a reuse.
    pub nonce: u32,
}

/// A fresh nonce for an event about to be stored.
pub fn nonce() -> u32 {
    fastrand::u32(..)
}

/// What a client asks to add to a room.
#[derive(Clone, Debug)]
pub struct Append {
    pub user: User,
    pub change: Change,
    pub reference: Option<Ref>,
    /// The user may delete others' messages (a token with `"mod": true`).
    pub moderator: bool,
}

/// The kinds of event a client can add. All but a message target a message
/// of the room (`target`, its id), which must still be in history and not
/// deleted: only its author may edit it, its author or a moderator delete
/// it, and anyone react to it.
#[derive(Clone, Debug)]
pub enum Change {
    Message(Text),
    Edit {
        target: u64,
        text: Text,
    },
    Delete {
        target: u64,
    },
    /// `on`: react; otherwise take the reaction back. Reactions are sets:
    /// one that changes nothing stores nothing.
    React {
        target: u64,
        emoji: Emoji,
        on: bool,
    },
}

/// A stored event as history keeps it, from which its frames are made.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Message {
        user: String,
        text: String,
    },
    Edit {
        user: String,
        target: u64,
        text: String,
    },
    Delete {
        user: String,
        target: u64,
    },
    Reaction {
        user: String,
        target: u64,
        emoji: String,
        on: bool,
    },
}

impl Record {
    /// The record of an append by `user`.
    pub fn of(user: &User, change: &Change) -> Record {
        let user = user.as_str().to_owned();
        match change {
            Change::Message(text) => Record::Message {
                user,
                text: text.as_str().to_owned(),
            },
            Change::Edit { target, text } => Record::Edit {
                user,
                target: *target,
                text: text.as_str().to_owned(),
            },
            Change::Delete { target } => Record::Delete {
                user,
                target: *target,
            },
            Change::React { target, emoji, on } => Record::Reaction {
                user,
                target: *target,
                emoji: emoji.as_str().to_owned(),
                on: *on,
            },
        }
    }
}

/// What the events after a message made of it, as reads show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fold {
    /// The latest text and when it was set, once edited.
    pub edited: Option<(String, u64)>,
    pub deleted: bool,
    /// For each reaction, the users who reacted, sorted, each once.
    pub reactions: BTreeMap<String, BTreeSet<String>>,
}

impl Fold {
    pub fn is_empty(&self) -> bool {
        self.edited.is_none() && !self.deleted && self.reactions.is_empty()
    }
}

/// Where an event was stored; `id` is `None` for a reaction that changed
/// nothing, which stores nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub epoch: Epoch,
    pub id: Option<u64>,
    pub ts: u64,
}

/// What a read marker did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// The marker moved up; the room's members were told.
    Moved,
    /// It was at or beyond this id already.
    Unchanged,
    /// The id is beyond the room's last one.
    Beyond,
}

/// The answer to one append of a batch: stored, or refused by the rules of
/// the room (the batch as a whole failing is a `StoreError`).
pub type Outcome = Result<Stored, Error>;

/// Which end of a range a read starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Oldest,
    Newest,
}

/// A range of ids to read: those strictly between `after` and `before`, at most
/// `limit` of them, taken from the `from` end. Events come back oldest first
/// either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub after: u64,
    pub before: u64,
    pub limit: usize,
    pub from: End,
}

impl Slice {
    /// The newest `limit` events after `after`.
    pub fn newest_after(after: u64, limit: usize) -> Slice {
        Slice {
            after,
            before: u64::MAX,
            limit,
            from: End::Newest,
        }
    }

    /// The oldest `limit` events after `after`.
    pub fn oldest_after(after: u64, limit: usize) -> Slice {
        Slice {
            after,
            before: u64::MAX,
            limit,
            from: End::Oldest,
        }
    }

    /// The newest `limit` events before `before`.
    pub fn newest_before(before: u64, limit: usize) -> Slice {
        Slice {
            after: 0,
            before,
            limit,
            from: End::Newest,
        }
    }
}

/// A read of history, and what the reader already knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    pub slice: Slice,
    /// What this instance has seen of the room, in the epochs it knows: if
    /// the store's head is behind what it saw in the store's epoch, or its
    /// event under that id has another nonce, the store went back (an older
    /// snapshot) and the read starts a new epoch instead of letting ids be
    /// given twice.
    pub known: Vec<Seen>,
    /// Whether a room that does not exist yet gets its epoch now (joins and
    /// the live feed's repairs). Reads by clients change nothing.
    pub create: bool,
    /// Whether messages come with what later events made of them (clients'
    /// reads and replays), or as they were first delivered (repairs of the
    /// live feed).
    pub fold: bool,
    /// The user whose read marker the page carries (a join's).
    pub marker_of: Option<User>,
}

impl Read {
    /// A client's read: creates nothing, knows nothing, folds.
    pub fn client(slice: Slice) -> Read {
        Read {
            slice,
            known: Vec::new(),
            create: false,
            fold: true,
            marker_of: None,
        }
    }
}

/// The answer to a read: the events and where they stand in the room's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub epoch: Epoch,
    /// The room's last id in this epoch (0 when nothing was published yet).
    pub head: u64,
    /// The oldest id still in history (`head + 1` when history is empty).
    pub first: u64,
    /// Oldest first.
    pub events: Vec<Event>,
    /// The nonce of the event at `head`, when history has it.
    pub head_nonce: Option<u32>,
    /// The read marker of `Read::marker_of` (0 when none).
    pub marker: u64,
}

impl Page {
    /// Whether events after `after` existed but are missing from this page
    /// because history no longer has them (the page itself may still be cut
    /// short by its limit; that is for the caller to judge).
    pub fn trimmed_after(&self, after: u64) -> bool {
        after < self.head && self.first > after.saturating_add(1)
    }

    /// Whether older events than this page's exist in history.
    pub fn more_before(&self) -> bool {
        self.events.first().is_some_and(|e| e.id > self.first)
    }

    /// Whether newer events than this page's exist.
    pub fn more_after(&self) -> bool {
        self.events.last().is_some_and(|e| e.id < self.head)
    }

    /// Cuts the page to at most `max_bytes` of frames, keeping the events at
    /// the `from` end of its slice (and always one): a client's page is one
    /// frame, and its size is what the connection's budget must hold.
    /// `more_before` and `more_after` then say that there is more.
    pub fn fit(&mut self, max_bytes: usize, from: End) {
        let mut total = 0;
        let mut fits = |event: &Event| {
            total += event.frame.len();
            total <= max_bytes
        };
        let kept = match from {
            End::Oldest => self.events.iter().take_while(|e| fits(e)).count(),
            End::Newest => self.events.iter().rev().take_while(|e| fits(e)).count(),
        }
        .max(1)
        .min(self.events.len());
        match from {
            End::Oldest => self.events.truncate(kept),
            End::Newest => {
                self.events.drain(..self.events.len() - kept);
            }
        }
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
    fn from(_: StoreError) -> Error {
        Error::new(
            ErrorCode::Unavailable,
            "the message store did not answer in time; retry (with the same ref for a send)",
        )
    }
}

/// The event log, as the rest of parlor uses it.
pub trait Log: Send + Sync {
    /// Stores `batch` in `room`, in order, in one step: the events of one
    /// batch take consecutive ids (refused ones take none). `known` is what
    /// this instance has seen of the room (see `Read::known`).
    fn append<'a>(
        &'a self,
        room: &'a Room,
        batch: &'a [Append],
        known: &'a [Seen],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>>;

    /// Reads part of a room's history.
    fn read<'a>(&'a self, room: &'a Room, read: Read) -> BoxFuture<'a, Result<Page, StoreError>>;

    /// Moves `user`'s read marker in `room` up to `id`, and when it moved,
    /// tells the room's members on every instance with `signal` (a `read`
    /// frame, sent with the change so that it is told once).
    fn mark<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
        id: u64,
        signal: crate::feed::Signal,
    ) -> BoxFuture<'a, Result<Marked, StoreError>>;

    /// Every read marker of a room, by user.
    fn markers<'a>(
        &'a self,
        room: &'a Room,
    ) -> BoxFuture<'a, Result<BTreeMap<String, u64>, StoreError>>;

    /// Whether the log answers now.
    fn is_ready(&self) -> bool;

    /// One line for the log at start: which store this is.
    fn describe(&self) -> String;
}

/// Milliseconds since the Unix epoch, the `ts` of a stored event.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of events 1..=count, each frame `size` bytes.
    fn page(count: u64, size: usize) -> Page {
        Page {
            epoch: Epoch::random(),
            head: count,
            first: 1,
            events: (1..=count)
                .map(|id| Event {
                    id,
                    frame: "x".repeat(size).into(),
                    nonce: 0,
                })
                .collect(),
            head_nonce: None,
            marker: 0,
        }
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_page_is_cut_to_its_bytes_from_the_end_it_was_read_from() {
        let mut newest = page(10, 100);
        newest.fit(350, End::Newest);
        assert_eq!(ids(&newest), [8, 9, 10]);
        assert!(newest.more_before() && !newest.more_after());
        let mut oldest = page(10, 100);
        oldest.fit(350, End::Oldest);
        assert_eq!(ids(&oldest), [1, 2, 3]);
        assert!(oldest.more_after() && !oldest.more_before());
        // Always one, however large; a page that fits is left as it is.
        let mut huge = page(3, 1000);
        huge.fit(10, End::Newest);
        assert_eq!(ids(&huge), [3]);
        let mut small = page(3, 10);
        small.fit(30, End::Oldest);
        assert_eq!(ids(&small), [1, 2, 3]);
        let mut empty = page(0, 10);
        empty.fit(10, End::Oldest);
        assert!(empty.events.is_empty());
    }
}
