//! The embedded store's event log: history, ids, epochs and refs in this
//! process's memory, for a parlor that runs alone without Redis.
//!
//! It keeps exactly the semantics of the Redis log (`log.rs`), so the code
//! above it is the same program in both modes. It cannot go back to an
//! older state, so what readers know (`Read::known`) never starts an epoch
//! here.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use async_std::sync::Mutex;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::feed::{Delivery, FeedEvent};
use crate::fields::{Ref, Room, User};
use crate::log::{
    self, now_millis, Append, Change, End, Epoch, Event, Log, Outcome, Page, Read, Seen, Slice,
    StoreError, Stored, REF_MEMORY,
};
use crate::memory_feed::MemoryFeed;
use crate::protocol;

pub struct MemoryLog {
    /// An async mutex, because `append` hands each event to the feed while
    /// holding it: that is what keeps the feed in id order, and it makes
    /// publishers wait when the feed falls behind instead of growing a queue.
    rooms: Mutex<HashMap<Room, RoomLog>>,
    history: usize,
    feed: MemoryFeed,
}

struct RoomLog {
    epoch: Epoch,
    head: u64,
    /// The newest `history` events; ids are contiguous, ending at `head`.
    events: VecDeque<Event>,
    refs: HashMap<(User, Ref), Stored>,
    /// When each ref was stored, oldest first, to forget them after five minutes.
    ref_times: VecDeque<(Instant, (User, Ref))>,
}

impl RoomLog {
    fn new() -> RoomLog {
        RoomLog {
            epoch: Epoch::random(),
            head: 0,
            events: VecDeque::new(),
            refs: HashMap::new(),
            ref_times: VecDeque::new(),
        }
    }

    fn first(&self) -> u64 {
        self.head + 1 - self.events.len() as u64
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

    fn page(&self, slice: Slice) -> Page {
        // Clamp the range to what history holds; `lo..hi` are ids.
        let lo = slice.after.saturating_add(1).max(self.first());
        let hi = slice.before.min(self.head + 1);
        let count = (hi.saturating_sub(lo) as usize).min(slice.limit);
        let start = match slice.from {
            End::Oldest => lo,
            End::Newest => hi.saturating_sub(count as u64),
        };
        let events = if count == 0 {
            Vec::new()
        } else {
            let offset = (start - self.first()) as usize;
            self.events.range(offset..offset + count).cloned().collect()
        };
        Page {
            epoch: self.epoch.clone(),
            head: self.head,
            first: self.first(),
            events,
            head_nonce: self.events.back().map(|e| e.nonce),
        }
    }

    /// Stores one event (or finds it stored already, by its ref).
    fn append(&mut self, room: &Room, append: &Append, history: usize) -> (Stored, Option<Event>) {
        let now = Instant::now();
        self.forget_old_refs(now);
        let key = append
            .reference
            .as_ref()
            .map(|r| (append.user.clone(), r.clone()));
        if let Some(stored) = key.as_ref().and_then(|k| self.refs.get(k)) {
            return (stored.clone(), None);
        }
        self.head += 1;
        let stored = Stored {
            epoch: self.epoch.clone(),
            id: self.head,
            ts: now_millis(),
        };
        let Change::Message(text) = &append.change;
        let frame = protocol::message(
            room,
            stored.id,
            append.user.as_str(),
            text.as_str(),
            stored.ts,
        );
        let event = Event {
            id: stored.id,
            frame,
            nonce: log::nonce(),
        };
        self.events.push_back(event.clone());
        if self.events.len() > history {
            self.events.pop_front();
        }
        if let Some(key) = key {
            self.refs.insert(key.clone(), stored.clone());
            self.ref_times.push_back((now, key));
        }
        (stored, Some(event))
    }
}

impl MemoryLog {
    /// A log that keeps the newest `history` events per room and hands new
    /// ones to `feed`.
    pub fn new(history: usize, feed: MemoryFeed) -> MemoryLog {
        MemoryLog {
            rooms: Mutex::new(HashMap::new()),
            history,
            feed,
        }
    }

    async fn append_all(&self, room: &Room, batch: &[Append]) -> Vec<Outcome> {
        let mut rooms = self.rooms.lock().await;
        let log = rooms.entry(room.clone()).or_insert_with(RoomLog::new);
        let mut outcomes = Vec::with_capacity(batch.len());
        for append in batch {
            let (stored, event) = log.append(room, append, self.history);
            if let Some(event) = event {
                let delivery = Delivery {
                    room: room.clone(),
                    epoch: stored.epoch.clone(),
                    event,
                };
                self.feed.send(FeedEvent::Delivery(delivery)).await;
            }
            outcomes.push(Ok(stored));
        }
        outcomes
    }

    async fn read_page(&self, room: &Room, read: Read) -> Page {
        let mut rooms = self.rooms.lock().await;
        match rooms.get(room) {
            Some(log) => log.page(read.slice),
            None if read.create => rooms
                .entry(room.clone())
                .or_insert_with(RoomLog::new)
                .page(read.slice),
            // A read of a room nobody used creates nothing: it answers an
            // empty history under an epoch of its own.
            None => RoomLog::new().page(read.slice),
        }
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
    use crate::fields::Text;
    use async_std::task::block_on;

    fn append(text: &str, reference: Option<&str>) -> Append {
        Append {
            user: User::parse("alice").unwrap(),
            change: Change::Message(Text::parse(text.into(), 100).unwrap()),
            reference: reference.map(|r| Ref::parse(r).unwrap()),
        }
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

    #[test]
    fn ids_are_contiguous_per_room_and_history_is_trimmed() {
        block_on(async {
            let (feed, deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(3, feed);
            let batch: Vec<Append> = (0..5).map(|_| append("x", None)).collect();
            let stored = log.append(&room("a"), &batch, &[]).await.unwrap();
            let stored: Vec<u64> = stored.into_iter().map(|o| o.unwrap().id).collect();
            assert_eq!(stored, vec![1, 2, 3, 4, 5]);
            let b = log.append(&room("b"), &batch[..1], &[]).await.unwrap();
            assert_eq!(b[0].as_ref().unwrap().id, 1);
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
            let log = MemoryLog::new(10, feed);
            let batch = [
                append("x", Some("r1")),
                append("x", Some("r1")),
                append("x", Some("r2")),
            ];
            let stored = log.append(&room("a"), &batch, &[]).await.unwrap();
            assert_eq!(stored[0], stored[1]);
            assert_eq!(stored[2].as_ref().unwrap().id, 2);
            assert_eq!(deliveries.len(), 2);
        });
    }

    #[test]
    fn a_read_creates_nothing_but_a_join_fixes_the_epoch() {
        block_on(async {
            let (feed, _deliveries) = MemoryFeed::new();
            let log = MemoryLog::new(10, feed);
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
}
