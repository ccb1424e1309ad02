//! The embedded store's presence: who is in which room of this instance,
//! in memory. Nothing expires here: the instance that would have to sweep
//! is the only one.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::feed::{FeedEvent, Signal};
use crate::fields::{Room, User};
use crate::lock::lock;
use crate::log::StoreError;
use crate::memory_feed::MemoryFeed;
use crate::presence_store::PresenceStore;
use crate::protocol;

pub struct MemoryPresence {
    /// Users with a live connection, per room.
    present: Mutex<HashMap<Room, HashSet<User>>>,
    feed: MemoryFeed,
}

impl MemoryPresence {
    pub fn new(feed: MemoryFeed) -> MemoryPresence {
        MemoryPresence {
            present: Mutex::default(),
            feed,
        }
    }

    async fn announce(&self, room: &Room, user: &User, event: &str) {
        let signal = Signal {
            room: room.clone(),
            origin: "-".into(),
            frame: protocol::member(room, user, event),
        };
        self.feed.send(FeedEvent::Signal(signal)).await;
    }
}

impl PresenceStore for MemoryPresence {
    fn arrive<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let arrived = lock(&self.present)
                .entry(room.clone())
                .or_default()
                .insert(user.clone());
            if arrived {
                self.announce(room, user, "join").await;
            }
            Ok(())
        }
        .boxed()
    }

    fn depart<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
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
            Ok(())
        }
        .boxed()
    }

    /// Nothing expires here, so a beat has nothing to refresh or sweep.
    fn beat<'a>(
        &'a self,
        _room: &'a Room,
        _users: &'a [User],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn users<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let mut users: Vec<String> = lock(&self.present)
                .get(room)
                .map(|users| users.iter().map(|u| u.as_str().to_owned()).collect())
                .unwrap_or_default();
            users.sort();
            Ok(users)
        }
        .boxed()
    }
}
