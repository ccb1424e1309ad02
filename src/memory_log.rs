//! The embedded store's event log: history, ids, epochs, refs, what later
//! events made of each message, and read markers, in this process's memory,
//! for a parlor that runs alone without Redis.
//!
//! It keeps exactly the semantics of the Redis log (`log.rs`), so the code
//! above it is the same program in both modes: a room nobody changed for
//! `--retention` is forgotten, as its keys expire in Redis. It cannot go back to an
//! older state, so what readers know (`Read::known`) never starts an epoch
//! here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_std::sync::Mutex;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::error::{Error, ErrorCode};
use crate::feed::{Delivery, FeedEvent, Signal};
use crate::fields::{Ref, Room, User};
use crate::log::{
    self, now_millis, Append, Change, End, Epoch, Event, Fold, Log, Marked, Outcome, Page, Read,
    Record, Seen, StoreError, Stored, REF_MEMORY,
};
use crate::memory_feed::MemoryFeed;
use crate::protocol;

pub struct MemoryLog {
    /// An async mutex, because `append` hands each event to the feed while
    /// holding it: that is what keeps the feed in id order, and it makes
    /// publishers wait when the feed falls behind instead of growing a queue.
    rooms: Mutex<Rooms>,
    history: usize,
    feed: MemoryFeed,
}

/// One event in history.
struct Entry {
    event: Event,
    record: Record,
    ts: u64,
}

struct RoomLog {
    /// The last append, mark or join, which starts the room's retention.
    touched: Instant,
    epoch: Epoch,
    head: u64,
    /// The newest `history` events; ids are contiguous, ending at `head`.
    entries: VecDeque<Entry>,
    /// What later events made of the messages in history, by id.
    folds: HashMap<u64, Fold>,
    refs: HashMap<(User, Ref), Stored>,
    /// When each ref was stored, oldest first, to forget them after five minutes.
    ref_times: VecDeque<(Instant, (User, Ref))>,
    /// The highest id each user marked as read.
    markers: HashMap<String, u64>,
}

impl RoomLog {
    fn new(now: Instant) -> RoomLog {
        RoomLog {
            touched: now,
            epoch: Epoch::random(),
            head: 0,
            entries: VecDeque::new(),
            folds: HashMap::new(),
            refs: HashMap::new(),
            ref_times: VecDeque::new(),
            markers: HashMap::new(),
        }
    }

    fn first(&self) -> u64 {
        self.head + 1 - self.entries.len() as u64
    }

    fn entry(&self, id: u64) -> Option<&Entry> {
        let index = id.checked_sub(self.first())?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    fn forget_old_refs(&mut self, now: Instant) {
        while let Some((at, _)) = self.ref_times.front() {
            if now.duration_since(*at) < REF_MEMORY {
                break;
            }
            let (_, key) = self.ref_times.pop_front().expect("front exists");
            self.refs.remove(&key);
        }
    }

    fn page(&self, room: &Room, read: &Read) -> Page {
        let slice = read.slice;
        // Clamp the range to what history holds; `lo..hi` are ids.
        let lo = slice.after.saturating_add(1).max(self.first());
        let hi = slice.before.min(self.head + 1);
        let count = (hi.saturating_sub(lo) as usize).min(slice.limit);
        let start = match slice.from {
            End::Oldest => lo,
            End::Newest => hi.saturating_sub(count as u64),
        };
        let events = (start..start + count as u64)
            .filter_map(|id| self.entry(id))
            .map(|entry| self.shown(room, entry, read.fold))
            .collect();
        Page {
            epoch: self.epoch.clone(),
            head: self.head,
            first: self.first(),
            events,
            head_nonce: self.entries.back().map(|e| e.event.nonce),
            marker: read
                .marker_of
                .as_ref()
                .and_then(|user| self.markers.get(user.as_str()).copied())
                .unwrap_or(0),
        }
    }

    /// An event as a read shows it: a message folded, when asked.
    fn shown(&self, room: &Room, entry: &Entry, fold: bool) -> Event {
        let id = entry.event.id;
        match self.folds.get(&id).filter(|_| fold) {
            Some(fold) => Event {
                frame: protocol::folded(room, id, &entry.record, entry.ts, fold),
                ..entry.event.clone()
            },
            None => entry.event.clone(),
        }
    }

    /// Checks an append against the rules of the room; `Ok(false)` for a
    /// reaction that would change nothing.
    fn allowed(&self, append: &Append) -> Result<bool, Error> {
        let target = match &append.change {
            Change::Message(_) => return Ok(true),
            Change::Edit { target, .. }
            | Change::Delete { target }
            | Change::React { target, .. } => *target,
        };
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                format!("there is no message {target} in this room's history (or it was deleted)"),
            )
        };
        let Some(Entry {
            record: Record::Message { user: author, .. },
            ..
        }) = self.entry(target)
        else {
            return Err(not_found());
        };
        let fold = self.folds.get(&target);
        if fold.is_some_and(|f| f.deleted) {
            return Err(not_found());
        }
        let own = author == append.user.as_str();
        match &append.change {
            Change::Edit { .. } if !own => Err(forbidden("edit", target, "its author")),
            Change::Delete { .. } if !own && !append.moderator => {
                Err(forbidden("delete", target, "its author or a moderator"))
            }
            Change::React { emoji, on, .. } => {
                let has = fold
                    .and_then(|f| f.reactions.get(emoji.as_str()))
                    .is_some_and(|users| users.contains(append.user.as_str()));
                Ok(has != *on)
            }
            _ => Ok(true),
        }
    }

    /// Stores one event (or finds it stored already, by its ref).
    fn append(
        &mut self,
        room: &Room,
        append: &Append,
        history: usize,
    ) -> Result<(Stored, Option<Event>), Error> {
        let now = Instant::now();
        self.forget_old_refs(now);
        let key = append
            .reference
            .as_ref()
            .map(|r| (append.user.clone(), r.clone()));
        if let Some(stored) = key.as_ref().and_then(|k| self.refs.get(k)) {
            return Ok((stored.clone(), None));
        }
        let changes = self.allowed(append)?;
        let ts = now_millis();
        let mut stored = Stored {
            epoch: self.epoch.clone(),
            id: None,
            ts,
        };
        let mut event = None;
        if changes {
            self.head += 1;
            stored.id = Some(self.head);
            let record = Record::of(&append.user, &append.change);
            let new = Event {
                id: self.head,
                frame: protocol::event(room, self.head, &record, ts),
                nonce: log::nonce(),
            };
            self.fold(&record, ts);
            self.entries.push_back(Entry {
                event: new.clone(),
                record,
                ts,
            });
            self.trim(history);
            event = Some(new);
        }
        if let Some(key) = key {
            self.refs.insert(key.clone(), stored.clone());
            self.ref_times.push_back((now, key));
        }
        Ok((stored, event))
    }

    /// What an event makes of the message it targets.
    fn fold(&mut self, record: &Record, ts: u64) {
        match record {
            Record::Message { .. } => {}
            Record::Edit { target, text, .. } => {
                self.folds.entry(*target).or_default().edited = Some((text.clone(), ts));
            }
            Record::Delete { target, .. } => self.folds.entry(*target).or_default().deleted = true,
            Record::Reaction {
                user,
                target,
                emoji,
                on,
            } => {
                let fold = self.folds.entry(*target).or_default();
                let users = fold.reactions.entry(emoji.clone()).or_default();
                if *on {
                    users.insert(user.clone());
                } else {
                    users.remove(user);
                }
                if users.is_empty() {
                    fold.reactions.remove(emoji);
                }
            }
        }
    }

    /// Keeps the newest `history` events; what was made of a message goes
    /// with it.
    fn trim(&mut self, history: usize) {
        while self.entries.len() > history {
            let gone = self.entries.pop_front().expect("not empty");
            self.folds.remove(&gone.event.id);
        }
    }
}

fn forbidden(what: &str, target: u64, who: &str) -> Error {
    Error::new(
        ErrorCode::Forbidden,
        format!("only {who} may {what} message {target}"),
    )
}

/// The rooms in memory, each forgotten `retention` after its last change,
/// the rule Redis keeps by expiring a room's keys.
struct Rooms {
    logs: HashMap<Room, RoomLog>,
    /// (last change, room), one entry per room, oldest first.
    by_age: BTreeSet<(Instant, Room)>,
    retention: Duration,
}

impl Rooms {
    fn new(retention: Duration) -> Rooms {
        Rooms {
            logs: HashMap::new(),
            by_age: BTreeSet::new(),
            retention,
        }
    }

    /// The room as a read sees it, once what is past its retention is gone.
    fn get(&mut self, room: &Room, now: Instant) -> Option<&RoomLog> {
        self.forget_idle(now);
        self.logs.get(room)
    }

    /// The room for a change, made when missing; the change restarts its
    /// retention.
    fn touch(&mut self, room: &Room, now: Instant) -> &mut RoomLog {
        self.forget_idle(now);
        if let Some(log) = self.logs.get(room) {
            self.by_age.remove(&(log.touched, room.clone()));
        }
        self.by_age.insert((now, room.clone()));
        let log = self
            .logs
            .entry(room.clone())
            .or_insert_with(|| RoomLog::new(now));
        log.touched = now;
        log
    }

    fn forget_idle(&mut self, now: Instant) {
        while let Some((at, _)) = self.by_age.first() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            let (_, room) = self.by_age.pop_first().expect("first exists");
            self.logs.remove(&room);
        }
    }
}

impl MemoryLog {
    /// A log that keeps the newest `history` events per room for
    /// `retention` after the room's last change, and hands new ones to `feed`.
    pub fn new(history: usize, retention: Duration, feed: MemoryFeed) -> MemoryLog {
        MemoryLog {
            rooms: Mutex::new(Rooms::new(retention)),
            history,
            feed,
        }
    }

    async fn append_all(&self, room: &Room, batch: &[Append]) -> Vec<Outcome> {
        let mut rooms = self.rooms.lock().await;
        let log = rooms.touch(room, Instant::now());
        let mut outcomes = Vec::with_capacity(batch.len());
        for append in batch {
            let outcome = log.append(room, append, self.history);
            if let Ok((stored, Some(event))) = &outcome {
                let delivery = Delivery {
                    room: room.clone(),
                    epoch: stored.epoch.clone(),
                    event: event.clone(),
                };
                self.feed.send(FeedEvent::Delivery(delivery)).await;
            }
            outcomes.push(outcome.map(|(stored, _)| stored));
        }
        outcomes
    }

    async fn read_page(&self, room: &Room, read: Read) -> Page {
        let mut rooms = self.rooms.lock().await;
        let now = Instant::now();
        if read.create {
            return rooms.touch(room, now).page(room, &read);
        }
        match rooms.get(room, now) {
            Some(log) => log.page(room, &read),
            // A read of a room nobody used creates nothing: it answers an
            // empty history under an epoch of its own.
            None => RoomLog::new(now).page(room, &read),
        }
    }

    async fn mark_read(&self, room: &Room, user: &User, id: u64, signal: Signal) -> Marked {
        let marked = {
            let mut rooms = self.rooms.lock().await;
            let now = Instant::now();
            let head = rooms.get(room, now).map_or(0, |log| log.head);
            if id > head {
                return Marked::Beyond;
            }
            let log = rooms.touch(room, now);
            let marker = log.markers.entry(user.as_str().to_owned()).or_insert(0);
            if id > *marker {
                *marker = id;
                Marked::Moved
            } else {
                Marked::Unchanged
            }
        };
        if marked == Marked::Moved {
            self.feed.send(FeedEvent::Signal(signal)).await;
        }
        marked
    }
}

impl Log for MemoryLog {
    fn append<'a>(
        &'a self,
        room: &'a Room,
        batch: &'a [Append],
        _known: &'a [Seen],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        async move { Ok(self.append_all(room, batch).await) }.boxed()
    }

    fn read<'a>(&'a self, room: &'a Room, read: Read) -> BoxFuture<'a, Result<Page, StoreError>> {
        async move { Ok(self.read_page(room, read).await) }.boxed()
    }

    fn mark<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
        id: u64,
        signal: Signal,
    ) -> BoxFuture<'a, Result<Marked, StoreError>> {
        async move { Ok(self.mark_read(room, user, id, signal).await) }.boxed()
    }

    fn markers<'a>(
        &'a self,
        room: &'a Room,
    ) -> BoxFuture<'a, Result<BTreeMap<String, u64>, StoreError>> {
        async move {
            let mut rooms = self.rooms.lock().await;
            let markers = rooms.get(room, Instant::now()).map(|log| &log.markers);
            Ok(markers
                .map(|m| m.iter().map(|(u, id)| (u.clone(), *id)).collect())
                .unwrap_or_default())
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "embedded in-memory store: this instance runs alone; start with --redis URL to share rooms with other instances".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Emoji, Text};
    use crate::log::Slice;
    use async_std::task::block_on;

    const DAY: Duration = Duration::from_secs(86_400);

    fn by(user: &str, change: Change, reference: Option<&str>) -> Append {
        Append {
            user: User::parse(user).unwrap(),
            change,
            reference: reference.map(|r| Ref::parse(r).unwrap()),
            moderator: false,
        }
    }

    fn append(text: &str, reference: Option<&str>) -> Append {
        by(
            "alice",
            Change::Message(Text::parse(text.into(), 100).unwrap()),
            reference,
        )
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.events.iter().map(|e| e.id).collect()
    }

    async fn read(log: &MemoryLog, name: &str, slice: Slice) -> Page {
        log.read(&room(name), Read::client(slice)).await.unwrap()
    }

    fn id(outcome: &Outcome) -> Option<u64> {
        outcome.as_ref().unwrap().id
    }

    #[test]
    fn ids_are_contiguous_per_room_and_history_is_trimmed() {
        block_on(async {
            let (feed, deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(3, DAY, feed);
            let batch: Vec<Append> = (0..5).map(|_| append("x", None)).collect();
            let stored = log.append(&room("a"), &batch, &[]).await.unwrap();
            let stored: Vec<Option<u64>> = stored.iter().map(id).collect();
            assert_eq!(stored, [1, 2, 3, 4, 5].map(Some));
            let b = log.append(&room("b"), &batch[..1], &[]).await.unwrap();
            assert_eq!(id(&b[0]), Some(1));
            let page = read(&log, "a", Slice::oldest_after(0, 10)).await;
            assert_eq!((page.head, page.first, ids(&page)), (5, 3, vec![3, 4, 5]));
            assert!(page.trimmed_after(1));
            assert!(!page.trimmed_after(2));
            assert_eq!(
                ids(&read(&log, "a", Slice::newest_after(0, 2)).await),
                [4, 5]
            );
            assert_eq!(ids(&read(&log, "a", Slice::oldest_after(3, 1)).await), [4]);
            assert_eq!(
                ids(&read(&log, "a", Slice::newest_before(5, 10)).await),
                [3, 4]
            );
            assert!(read(&log, "a", Slice::newest_before(2, 10))
                .await
                .events
                .is_empty());
            assert!(read(&log, "a", Slice::oldest_after(u64::MAX, 10))
                .await
                .events
                .is_empty());
            let delivered: Vec<u64> = std::iter::from_fn(|| deliveries.try_recv().ok())
                .map(|e| match e {
                    FeedEvent::Delivery(d) => d.event.id,
                    FeedEvent::Repair(_) | FeedEvent::Signal(_) => 0,
                })
                .collect();
            assert_eq!(delivered, vec![1, 2, 3, 4, 5, 1]);
        });
    }

    #[test]
    fn a_retried_ref_is_stored_once() {
        block_on(async {
            let (feed, deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(10, DAY, feed);
            let batch = [
                append("x", Some("r1")),
                append("x", Some("r1")),
                append("x", Some("r2")),
            ];
            let stored = log.append(&room("a"), &batch, &[]).await.unwrap();
            assert_eq!(stored[0], stored[1]);
            assert_eq!(id(&stored[2]), Some(2));
            assert_eq!(deliveries.len(), 2);
        });
    }

    #[test]
    fn a_read_creates_nothing_but_a_join_fixes_the_epoch() {
        block_on(async {
            let (feed, _deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(10, DAY, feed);
            let a = read(&log, "a", Slice::newest_after(0, 50)).await;
            let b = read(&log, "a", Slice::newest_after(0, 50)).await;
            assert_eq!((a.head, a.first, a.events.len()), (0, 1, 0));
            assert_ne!(a.epoch, b.epoch, "nothing was stored for a client's read");
            let mut join = Read::client(Slice::newest_after(0, 50));
            join.create = true;
            let joined = log.read(&room("a"), join).await.unwrap();
            let stored = log
                .append(&room("a"), &[append("x", None)], &[])
                .await
                .unwrap();
            assert_eq!(stored[0].as_ref().unwrap().epoch, joined.epoch);
        });
    }

    #[test]
    fn events_follow_the_rules_and_reads_fold_them() {
        block_on(async {
            let (feed, _deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(10, DAY, feed);
            let text = |t: &str| Text::parse(t.into(), 100).unwrap();
            let react = |on| Change::React {
                target: 1,
                emoji: Emoji::parse("👍").unwrap(),
                on,
            };
            let batch = [
                append("hi", None),
                by(
                    "bob",
                    Change::Edit {
                        target: 1,
                        text: text("mine"),
                    },
                    None,
                ),
                by(
                    "alice",
                    Change::Edit {
                        target: 1,
                        text: text("hello"),
                    },
                    None,
                ),
                by("bob", react(true), None),
                by("bob", react(true), None),
                by("carol", react(false), None),
                by(
                    "alice",
                    Change::Edit {
                        target: 3,
                        text: text("x"),
                    },
                    None,
                ),
            ];
            let outcomes = log.append(&room("a"), &batch, &[]).await.unwrap();
            let codes: Vec<_> = outcomes
                .iter()
                .map(|o| o.as_ref().map(|s| s.id).map_err(|e| e.code))
                .collect();
            assert_eq!(
                codes,
                [
                    Ok(Some(1)),
                    Err(ErrorCode::Forbidden),
                    Ok(Some(2)),
                    Ok(Some(3)),
                    Ok(None),
                    Ok(None),
                    Err(ErrorCode::NotFound)
                ]
            );
            let page = read(&log, "a", Slice::oldest_after(0, 10)).await;
            let message: serde_json::Value =
                serde_json::from_str(page.events[0].frame.as_str()).unwrap();
            assert_eq!(message["text"], "hello");
            assert_eq!(message["reactions"], serde_json::json!({"👍": ["bob"]}));
            assert!(message["edited"].is_u64());
            let delete = by("bob", Change::Delete { target: 1 }, None);
            let refused = log
                .append(&room("a"), std::slice::from_ref(&delete), &[])
                .await
                .unwrap();
            assert_eq!(refused[0].as_ref().unwrap_err().code, ErrorCode::Forbidden);
            let moderated = Append {
                moderator: true,
                ..delete
            };
            let deleted = log.append(&room("a"), &[moderated], &[]).await.unwrap();
            assert_eq!(id(&deleted[0]), Some(4));
            let page = read(&log, "a", Slice::oldest_after(0, 1)).await;
            let message: serde_json::Value =
                serde_json::from_str(page.events[0].frame.as_str()).unwrap();
            assert_eq!(
                (message["text"].as_str(), message["deleted"].as_bool()),
                (Some(""), Some(true))
            );
            let again = log
                .append(&room("a"), &[by("bob", react(false), None)], &[])
                .await
                .unwrap();
            assert_eq!(again[0].as_ref().unwrap_err().code, ErrorCode::NotFound);
        });
    }

    #[test]
    fn a_room_is_forgotten_its_retention_after_its_last_change() {
        let mut rooms = Rooms::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let (a, b) = (room("a"), room("b"));
        let epoch = rooms.touch(&a, at(0)).epoch.clone();
        rooms.touch(&b, at(5));
        rooms.touch(&a, at(8));
        assert_eq!(rooms.get(&a, at(17)).map(|log| &log.epoch), Some(&epoch));
        assert!(rooms.get(&b, at(15)).is_none(), "b idle for 10 s");
        assert!(rooms.get(&a, at(17)).is_some(), "a changed at 8 s");
        assert!(rooms.get(&a, at(18)).is_none());
        assert!(rooms.logs.is_empty() && rooms.by_age.is_empty());
        assert_ne!(rooms.touch(&a, at(18)).epoch, epoch, "a new room");
        assert_eq!(rooms.by_age.len(), 1);
    }
}
