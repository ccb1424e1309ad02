//! The embedded store: history, ids, epochs and the live feed in this process's
//! memory, for a parlor that runs alone without Redis.
//!
//! It keeps exactly the semantics of the Redis store (see `store.rs`), so the
//! protocol code above it is the same program in both modes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use async_std::sync::Mutex;

use crate::fields::{Ref, Room, User};
use crate::lock::lock;
use crate::protocol;
use crate::store::{
    now_millis, Delivery, Draft, End, Epoch, FeedEvent, Message, Page, Signal, Slice, Stored,
    REF_MEMORY,
};

pub struct MemoryStore {
    /// An async mutex, because `publish` hands each message to the feed while
    /// holding it: that is what keeps the feed in id order, and it makes
    /// publishers wait when the feed falls behind instead of growing a queue.
    rooms: Mutex<HashMap<Room, RoomLog>>,
    history: usize,
    feed: async_channel::Sender<FeedEvent>,
    /// Users with a live connection, per room.
    present: std::sync::Mutex<HashMap<Room, HashSet<User>>>,
}

struct RoomLog {
    epoch: Epoch,
    head: u64,
    /// The newest `history` messages; ids are contiguous, ending at `head`.
    messages: VecDeque<Message>,
    refs: HashMap<(User, Ref), Stored>,
    /// When each ref was stored, oldest first, to forget them after five minutes.
    ref_times: VecDeque<(Instant, (User, Ref))>,
}

impl RoomLog {
    fn new() -> RoomLog {
        RoomLog {
            epoch: Epoch::random(),
            head: 0,
            messages: VecDeque::new(),
            refs: HashMap::new(),
            ref_times: VecDeque::new(),
        }
    }

    fn first(&self) -> u64 {
        self.head + 1 - self.messages.len() as u64
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
        let messages = if count == 0 {
            Vec::new()
        } else {
            let offset = (start - self.first()) as usize;
            self.messages
                .range(offset..offset + count)
                .cloned()
                .collect()
        };
        Page {
            epoch: self.epoch.clone(),
            head: self.head,
            first: self.first(),
            messages,
        }
    }
}

impl MemoryStore {
    /// A store that keeps the newest `history` messages per room, and the
    /// receiving end of its live feed.
    pub fn new(history: usize) -> (MemoryStore, async_channel::Receiver<FeedEvent>) {
        let (feed, deliveries) = async_channel::bounded(1024);
        let store = MemoryStore {
            rooms: Mutex::new(HashMap::new()),
            history,
            feed,
            present: Default::default(),
        };
        (store, deliveries)
    }

    pub async fn publish(&self, draft: Draft) -> Stored {
        let mut rooms = self.rooms.lock().await;
        let log = rooms.entry(draft.room.clone()).or_insert_with(RoomLog::new);
        let now = Instant::now();
        log.forget_old_refs(now);
        let key = draft.reference.map(|r| (draft.user.clone(), r));
        if let Some(stored) = key.as_ref().and_then(|k| log.refs.get(k)) {
            return stored.clone();
        }
        log.head += 1;
        let stored = Stored {
            epoch: log.epoch.clone(),
            id: log.head,
            ts: now_millis(),
        };
        let message = Message {
            id: stored.id,
            frame: protocol::message(
                &draft.room,
                stored.id,
                draft.user.as_str(),
                draft.text.as_str(),
                stored.ts,
            ),
        };
        log.messages.push_back(message.clone());
        if log.messages.len() > self.history {
            log.messages.pop_front();
        }
        if let Some(key) = key {
            log.refs.insert(key.clone(), stored.clone());
            log.ref_times.push_back((now, key));
        }
        let delivery = Delivery {
            room: draft.room,
            epoch: stored.epoch.clone(),
            message,
        };
        // The receiver lives as long as the server; if it is gone the process
        // is shutting down and nobody is left to deliver to.
        let _ = self.feed.send(FeedEvent::Delivery(delivery)).await;
        stored
    }

    pub async fn presence_join(&self, room: &Room, user: &User) {
        let arrived = lock(&self.present)
            .entry(room.clone())
            .or_default()
            .insert(user.clone());
        if arrived {
            self.announce(room, user, "join").await;
        }
    }

    pub async fn presence_leave(&self, room: &Room, user: &User) {
        let departed = {
            let mut present = lock(&self.present);
            let removed = present
                .get_mut(room)
                .is_some_and(|users| users.remove(user));
            if present.get(room).is_some_and(HashSet::is_empty) {
                present.remove(room);
            }
            removed
        };
        if departed {
            self.announce(room, user, "leave").await;
        }
    }

    pub fn presence(&self, room: &Room) -> Vec<String> {
        let mut users: Vec<String> = lock(&self.present)
            .get(room)
            .map(|users| users.iter().map(|u| u.as_str().to_owned()).collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    async fn announce(&self, room: &Room, user: &User, event: &str) {
        self.signal(Signal {
            room: room.clone(),
            origin: "-".into(),
            frame: protocol::member(room, user, event),
        })
        .await;
    }

    pub async fn signal(&self, signal: Signal) {
        let _ = self.feed.send(FeedEvent::Signal(signal)).await;
    }

    pub async fn read(&self, room: &Room, slice: Slice) -> Page {
        let mut rooms = self.rooms.lock().await;
        rooms
            .entry(room.clone())
            .or_insert_with(RoomLog::new)
            .page(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::Text;
    use async_std::task::block_on;

    fn draft(room: &str, text: &str, reference: Option<&str>) -> Draft {
        Draft {
            room: Room::parse(room).unwrap(),
            user: User::parse("alice").unwrap(),
            text: Text::parse(text.into(), 100).unwrap(),
            reference: reference.map(|r| Ref::parse(r).unwrap()),
        }
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn ids_are_contiguous_per_room_and_history_is_trimmed() {
        block_on(async {
            let (store, feed) = MemoryStore::new(3);
            for i in 1..=5 {
                assert_eq!(store.publish(draft("a", "x", None)).await.id, i);
            }
            assert_eq!(store.publish(draft("b", "x", None)).await.id, 1);
            let room = Room::parse("a").unwrap();
            let page = store.read(&room, Slice::oldest_after(0, 10)).await;
            assert_eq!((page.head, page.first, ids(&page)), (5, 3, vec![3, 4, 5]));
            assert!(page.trimmed_after(1));
            assert!(!page.trimmed_after(2));
            assert_eq!(
                ids(&store.read(&room, Slice::newest_after(0, 2)).await),
                vec![4, 5]
            );
            assert_eq!(
                ids(&store.read(&room, Slice::oldest_after(3, 1)).await),
                vec![4]
            );
            assert_eq!(
                ids(&store.read(&room, Slice::newest_before(5, 10)).await),
                vec![3, 4]
            );
            assert_eq!(
                ids(&store.read(&room, Slice::newest_before(2, 10)).await),
                Vec::<u64>::new()
            );
            assert_eq!(
                ids(&store.read(&room, Slice::oldest_after(u64::MAX, 10)).await),
                Vec::<u64>::new()
            );
            let delivered: Vec<u64> = std::iter::from_fn(|| feed.try_recv().ok())
                .map(|e| match e {
                    FeedEvent::Delivery(d) => d.message.id,
                    FeedEvent::Repair(_) | FeedEvent::Signal(_) => 0,
                })
                .collect();
            assert_eq!(delivered, vec![1, 2, 3, 4, 5, 1]);
        });
    }

    #[test]
    fn a_retried_ref_is_stored_once() {
        block_on(async {
            let (store, feed) = MemoryStore::new(10);
            let first = store.publish(draft("a", "x", Some("r1"))).await;
            let again = store.publish(draft("a", "x", Some("r1"))).await;
            let other = store.publish(draft("a", "x", Some("r2"))).await;
            assert_eq!(first, again);
            assert_eq!(other.id, 2);
            assert_eq!(feed.len(), 2);
        });
    }

    #[test]
    fn an_empty_room_has_an_epoch_that_publishing_keeps() {
        block_on(async {
            let (store, _feed) = MemoryStore::new(10);
            let room = Room::parse("a").unwrap();
            let page = store.read(&room, Slice::newest_after(0, 50)).await;
            assert_eq!((page.head, page.first, page.messages.len()), (0, 1, 0));
            assert_eq!(store.publish(draft("a", "x", None)).await.epoch, page.epoch);
        });
    }
}
