//! The presence changes this instance still has to tell the store, as a
//! pure type: at most one pending change per (room, user), holding the state
//! it should end in, so that a user who joins and leaves a thousand times
//! while the store is slow costs one entry and at most one call, not a
//! thousand. What the store was last told is kept too: a change that would
//! tell it what it already knows is dropped, and heartbeats refresh exactly
//! the users told to be here.
//!
//! A departure may be held until a time (`depart_at`): a user whose
//! connection dropped and who is back before then, on this instance or
//! another, never departs, so the room sees no `leave` and `join` for a
//! network blip. Time is the caller's: `release` is told what time it is.
//!
//! The queue holds at most one entry per (room, user) that this instance has
//! had a connection of, so it is bounded by connections × `--max-rooms`.
//! Changes of different keys leave in the order they first became pending;
//! the changes told for one key alternate, arrival and departure.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

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
    /// Held departures by (due time, sequence), and each one's place there.
    held: BTreeMap<(Instant, u64), Key>,
    holding: HashMap<Key, (Instant, u64)>,
    holds: u64,
}

impl PresenceQueue {
    /// The user should end `here` in the room (or not), whatever was asked
    /// before and not told yet.
    pub fn want(&mut self, key: Key, here: bool) {
        if let Some(place) = self.holding.remove(&key) {
            self.held.remove(&place);
        }
        self.pend(key, here);
    }

    /// The user should end gone from the room, but not before `due`: an
    /// arrival before then takes the departure back, and nothing is told.
    pub fn depart_at(&mut self, key: Key, due: Instant) {
        if !self.told.contains(&key) {
            // Its arrival was never told: going at once tells nothing.
            self.want(key, false);
            return;
        }
        if let Some(pending) = self.wanted.get_mut(&key) {
            // Told here already, so this tells nothing; a departure in
            // its place would go before its time.
            *pending = true;
        }
        if let Some(place) = self.holding.remove(&key) {
            self.held.remove(&place);
        }
        self.holds += 1;
        self.held.insert((due, self.holds), key.clone());
        self.holding.insert(key, (due, self.holds));
    }

    /// Makes the held departures due by `now` pending.
    pub fn release(&mut self, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                return;
            }
            let key = entry.remove();
            self.holding.remove(&key);
            self.pend(key, false);
        }
    }

    /// When the first held departure is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.first_key_value().map(|((due, _), _)| *due)
    }

    fn pend(&mut self, key: Key, here: bool) {
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

    /// Whether every change asked for has been told, held ones included.
    pub fn settled(&self) -> bool {
        self.order.is_empty() && !self.telling && self.held.is_empty()
    }

    /// Whether the store was told `key` is here.
    pub fn is_told(&self, key: &Key) -> bool {
        self.told.contains(key)
    }

    /// The keys the store was told are here, for a heartbeat.
    pub fn told(&self) -> Vec<Key> {
        self.told.iter().cloned().collect()
    }

    /// Pending changes, held ones not counted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no change is pending (held ones wait for their time).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Held departures.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
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
        /// A departure held for this many milliseconds.
        DepartIn(u8, u8),
        /// The clock moves on this many milliseconds.
        Wait(u8),
        Tell,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, any::<bool>()).prop_map(|(k, here)| Step::Want(k, here)),
            (0u8..6, 0u8..50).prop_map(|(k, ms)| Step::DepartIn(k, ms)),
            (0u8..30).prop_map(Step::Wait),
            Just(Step::Tell),
        ]
    }

    /// What the model says a user should end as.
    #[derive(Clone, Copy, Debug)]
    enum Wish {
        Here,
        Gone,
        /// Gone from this time on (ms), unless it is back before.
        GoneAt(u64),
    }

    impl Wish {
        /// Whether the store should count the user here at `now`.
        fn here(self, now: u64) -> bool {
            match self {
                Wish::Here => true,
                Wish::Gone => false,
                Wish::GoneAt(due) => now < due,
            }
        }
    }

    proptest! {
        /// Against a model of what the store must be told: each change told
        /// is the user's wish at that moment (so a held departure is never
        /// told before its time, nor at all when the user came back first);
        /// each key told alternately; never more pending than keys; every
        /// key's last wish known once the time has passed and all is told.
        #[test]
        fn the_store_is_told_each_users_wish_and_no_departure_early(steps in prop::collection::vec(step(), 0..200)) {
            let start = Instant::now();
            let at = |ms: u64| start + std::time::Duration::from_millis(ms);
            let mut now = 0u64;
            let mut queue = PresenceQueue::default();
            let mut wish: HashMap<Key, Wish> = HashMap::new();
            let mut store: HashMap<Key, bool> = HashMap::new();
            let tell = |queue: &mut PresenceQueue, store: &mut HashMap<Key, bool>, wish: &HashMap<Key, Wish>, now: u64| {
                let (key, here) = queue.take()?;
                let before = store.get(&key).copied().unwrap_or(false);
                assert_ne!(before, here, "{key:?} told what the store knew");
                assert_eq!(here, wish[&key].here(now), "{key:?} told against its wish at {now} ms");
                store.insert(key, here);
                queue.done();
                Some(())
            };
            for s in steps {
                match s {
                    Step::Want(k, here) => {
                        queue.want(key(k), here);
                        wish.insert(key(k), if here { Wish::Here } else { Wish::Gone });
                    }
                    Step::DepartIn(k, ms) => {
                        queue.depart_at(key(k), at(now + u64::from(ms)));
                        // A user the store does not count goes at once.
                        let told_here = queue.is_told(&key(k));
                        let due = if told_here { Wish::GoneAt(now + u64::from(ms)) } else { Wish::Gone };
                        wish.insert(key(k), due);
                    }
                    Step::Wait(ms) => {
                        now += u64::from(ms);
                        queue.release(at(now));
                    }
                    Step::Tell => {
                        tell(&mut queue, &mut store, &wish, now);
                    }
                }
                prop_assert!(queue.len() <= 6 && queue.held() <= 6);
            }
            now += 1_000;
            queue.release(at(now));
            while tell(&mut queue, &mut store, &wish, now).is_some() {}
            prop_assert!(queue.settled());
            for (k, w) in &wish {
                prop_assert_eq!(store.get(k).copied().unwrap_or(false), w.here(now));
                prop_assert_eq!(queue.is_told(k), w.here(now));
            }
            let mut told = queue.told();
            told.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
            let mut expected: Vec<Key> = wish.iter().filter(|(_, w)| w.here(now)).map(|(k, _)| k.clone()).collect();
            expected.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
            prop_assert_eq!(told, expected);
        }
    }

    #[test]
    fn a_held_departure_is_told_at_its_time_or_never_when_the_user_is_back() {
        let start = Instant::now();
        let at = |ms: u64| start + std::time::Duration::from_millis(ms);
        let mut queue = PresenceQueue::default();
        queue.want(key(1), true);
        assert_eq!(queue.take(), Some((key(1), true)));
        queue.done();
        // Dropped, and back within the grace: nothing to tell, ever.
        queue.depart_at(key(1), at(100));
        assert!(!queue.settled(), "a held departure is not settled");
        queue.release(at(99));
        assert_eq!(queue.take(), None);
        queue.want(key(1), true);
        queue.release(at(1_000));
        assert_eq!(queue.take(), None);
        assert!(queue.settled());
        // Dropped and not back: told once its time has come.
        queue.depart_at(key(1), at(1_100));
        assert_eq!(queue.next_due(), Some(at(1_100)));
        queue.release(at(1_099));
        assert_eq!(queue.take(), None);
        queue.release(at(1_100));
        assert_eq!(queue.take(), Some((key(1), false)));
        queue.done();
        assert!(queue.settled());
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
