//! The presence changes this instance still has to tell the store, as a
//! pure type: at most one pending change per (room, user), holding the state
//! it should end in, so that a user who joins and leaves a thousand times
//! while the store is slow costs one entry and at most one call, not a
//! thousand. What the store was last told is kept too: a change that would
//! tell it what it already knows is dropped, and heartbeats refresh exactly
//! the users told to be here.
//!
//! The queue holds at most one entry per (room, user) that this instance has
//! had a connection of, so it is bounded by connections × `--max-rooms`.
//! Changes of different keys leave in the order they first became pending;
//! the changes told for one key alternate, arrival and departure.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

use crate::fields::{Room, User};

/// A user in a room.
pub type Key = (Room, User);

#[derive(Debug, Default)]
pub struct PresenceQueue {
    /// Pending keys, in the order they first became pending.
    order: VecDeque<Key>,
    /// Whether each pending key should end here (`true`) or gone.
    wanted: HashMap<Key, bool>,
    /// The keys the store was last told are here.
    told: HashSet<Key>,
    /// Whether a change taken by `take` is still being told.
    telling: bool,
}

impl PresenceQueue {
    /// The user should end `here` in the room (or not), whatever was asked
    /// before and not told yet.
    pub fn want(&mut self, key: Key, here: bool) {
        match self.wanted.entry(key) {
            Entry::Occupied(mut pending) => {
                pending.insert(here);
            }
            Entry::Vacant(free) => {
                self.order.push_back(free.key().clone());
                free.insert(here);
            }
        }
    }

    /// The next change to tell the store (an arrival when `true`), taken
    /// as told; `done` says when the telling is over.
    pub fn take(&mut self) -> Option<(Key, bool)> {
        while let Some(key) = self.order.pop_front() {
            let here = self.wanted.remove(&key).expect("a pending key has a state");
            let changed = if here {
                self.told.insert(key.clone())
            } else {
                self.told.remove(&key)
            };
            if changed {
                self.telling = true;
                return Some((key, here));
            }
        }
        None
    }

    /// The change last taken by `take` has been told (or failed).
    pub fn done(&mut self) {
        self.telling = false;
    }

    /// Whether every change asked for has been told.
    pub fn settled(&self) -> bool {
        self.order.is_empty() && !self.telling
    }

    /// Whether the store was told `key` is here.
    pub fn is_told(&self, key: &Key) -> bool {
        self.told.contains(key)
    }

    /// The keys the store was told are here, for a heartbeat.
    pub fn told(&self) -> Vec<Key> {
        self.told.iter().cloned().collect()
    }

    /// Pending changes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> Key {
        (
            Room::parse(&format!("r{}", n % 3)).unwrap(),
            User::parse(&format!("u{n}")).unwrap(),
        )
    }

    #[derive(Clone, Debug)]
    enum Step {
        Want(u8, bool),
        Tell,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, any::<bool>()).prop_map(|(k, here)| Step::Want(k, here)),
            Just(Step::Tell),
        ]
    }

    proptest! {
        /// Against a model of what the store must end up knowing: every
        /// key's last wish, once drained; each key told alternately; never
        /// more pending than keys; order of first wishes kept.
        #[test]
        fn the_store_ends_knowing_each_users_last_wish(steps in prop::collection::vec(step(), 0..200)) {
            let mut queue = PresenceQueue::default();
            let mut last: HashMap<Key, bool> = HashMap::new();
            let mut store: HashMap<Key, bool> = HashMap::new();
            let tell = |queue: &mut PresenceQueue, store: &mut HashMap<Key, bool>| {
                let (key, here) = queue.take()?;
                let before = store.get(&key).copied().unwrap_or(false);
                assert_ne!(before, here, "{key:?} told what the store knew");
                store.insert(key, here);
                queue.done();
                Some(())
            };
            for s in steps {
                match s {
                    Step::Want(k, here) => {
                        queue.want(key(k), here);
                        last.insert(key(k), here);
                    }
                    Step::Tell => {
                        tell(&mut queue, &mut store);
                    }
                }
                prop_assert!(queue.len() <= 6);
            }
            while tell(&mut queue, &mut store).is_some() {}
            prop_assert!(queue.settled());
            for (k, here) in &last {
                prop_assert_eq!(store.get(k).copied().unwrap_or(false), *here);
                prop_assert_eq!(queue.is_told(k), *here);
            }
            let mut told = queue.told();
            told.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
            let mut expected: Vec<Key> = last.iter().filter(|(_, h)| **h).map(|(k, _)| k.clone()).collect();
            expected.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
            prop_assert_eq!(told, expected);
        }
    }

    #[test]
    fn churn_collapses_and_keys_keep_their_first_place() {
        let mut queue = PresenceQueue::default();
        for _ in 0..1000 {
            queue.want(key(1), true);
            queue.want(key(1), false);
        }
        queue.want(key(2), true);
        queue.want(key(1), true);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.take(), Some((key(1), true)));
        assert!(!queue.settled(), "still telling");
        queue.done();
        assert_eq!(queue.take(), Some((key(2), true)));
        queue.done();
        // A join and a leave before anything was told: nothing to tell.
        queue.want(key(3), true);
        queue.want(key(3), false);
        assert_eq!(queue.take(), None);
        assert!(queue.settled());
    }
}
