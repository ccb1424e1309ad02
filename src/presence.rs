//! Who is in which room, as this instance tells the store: the task that
//! announces users arriving in and departing from rooms, keeps their entries
//! alive with a heartbeat, and sweeps away the entries of instances that died
//! without a goodbye.
//!
//! Changes wait in a `PresenceQueue` (one per (room, user), coalesced, so
//! churn costs nothing it does not need) told by one task, so the store sees
//! each user's arrivals and departures in the order they happened. Every
//! call is idempotent, so a failed one is made good by the next heartbeat
//! (an arrival) or by expiry and the sweep (a departure). A heartbeat lets
//! waiting changes go first every few calls, so a long one holds none back.
//!
//! A user whose connection ended without a goodbye departs only after the
//! grace (`--leave-grace-ms`), and not at all if it is back by then, here or
//! on another instance (whose arrival the store then counts as a second
//! connection): a dropped network costs its room no `leave` and `join`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt;

use crate::fields::{Room, User};
use crate::lock::lock;
use crate::presence_queue::{Key, PresenceQueue};
use crate::presence_store::PresenceStore;

/// Heartbeat calls between two looks at the waiting changes.
const BEATS_PER_TURN: usize = 32;
/// Users of one room refreshed by one heartbeat call.
const USERS_PER_BEAT: usize = 500;
/// Changes told before the task looks at the clock for a heartbeat.
const CHANGES_PER_TURN: usize = 256;

/// The asking side, held by the room registry.
#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<PresenceQueue>,
    /// Notified when a change is asked for.
    asked: Event,
    /// Notified when the queue has settled.
    settled: Event,
    /// How long the departure of a user who left without a goodbye waits.
    grace: Duration,
}

impl Presence {
    /// Starts the presence task; entries expire `ttl` after their last
    /// heartbeat, and heartbeats and sweeps come every third of it; a
    /// departure without a goodbye waits `grace`.
    pub fn start(store: Arc<dyn PresenceStore>, ttl: Duration, grace: Duration) -> Presence {
        let shared = Arc::new(Shared {
            queue: Mutex::new(PresenceQueue::default()),
            asked: Event::new(),
            settled: Event::new(),
            grace,
        });
        async_std::task::spawn(run(store, ttl, Arc::downgrade(&shared)));
        Presence { shared }
    }

    /// `user` has its first live connection in `room` on this instance.
    pub fn arrive(&self, room: &Room, user: &User) {
        self.want((room.clone(), user.clone()), true);
    }

    /// `user` has no live connection left in `room` on this instance.
    pub fn depart(&self, room: &Room, user: &User) {
        self.want((room.clone(), user.clone()), false);
    }

    /// `user` has no live connection left in `room` on this instance, the
    /// last one gone without a goodbye: it departs after the grace unless
    /// it is back by then.
    pub fn drop_out(&self, room: &Room, user: &User) {
        let due = Instant::now() + self.shared.grace;
        lock(&self.shared.queue).depart_at((room.clone(), user.clone()), due);
        self.shared.asked.notify(1);
    }

    fn want(&self, key: Key, here: bool) {
        lock(&self.shared.queue).want(key, here);
        self.shared.asked.notify(1);
    }

    /// Waits until every change so far is recorded, held departures at
    /// their time: on shutdown, so that the users of a draining instance
    /// leave then rather than on expiry.
    pub async fn flush(&self) {
        loop {
            let settled = self.shared.settled.listen();
            if lock(&self.shared.queue).settled() {
                return;
            }
            self.shared.asked.notify(1);
            settled.await;
        }
    }
}

async fn run(store: Arc<dyn PresenceStore>, ttl: Duration, weak: Weak<Shared>) {
    let beat = ttl / 3;
    let mut next_beat = Instant::now() + beat;
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        tell(&*store, &shared).await;
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + beat;
            heartbeat(&*store, &shared).await;
            continue;
        }
        let asked = shared.asked.listen();
        let (idle, due) = {
            let queue = lock(&shared.queue);
            (queue.is_empty(), queue.next_due())
        };
        if idle {
            let wake = due.map_or(next_beat, |due| due.min(next_beat));
            let wait = wake.saturating_duration_since(Instant::now());
            asked
                .or(async {
                    async_std::task::sleep(wait).await;
                })
                .await;
        }
    }
}

/// Tells the store the waiting changes, in order, up to a turn's worth:
/// however fast changes come, heartbeats get their turn. Held departures
/// whose time has come are waiting changes.
async fn tell(store: &dyn PresenceStore, shared: &Shared) {
    lock(&shared.queue).release(Instant::now());
    for _ in 0..CHANGES_PER_TURN {
        let next = lock(&shared.queue).take();
        let Some(((room, user), here)) = next else {
            shared.settled.notify(usize::MAX);
            return;
        };
        if here {
            if let Err(e) = store.arrive(&room, &user).await {
                log::warn!("presence of {user} in {room} not recorded yet ({e}); the next heartbeat retries");
            }
        } else if let Err(e) = store.depart(&room, &user).await {
            log::warn!("departure of {user} from {room} not recorded ({e}); it expires instead");
        }
        lock(&shared.queue).done();
    }
}

/// Refreshes every entry of this instance (an entry that expired meanwhile
/// comes back, and says so) and sweeps the entries of instances that
/// stopped beating: one call per room and few hundred users. Waiting
/// changes go first every few calls.
async fn heartbeat(store: &dyn PresenceStore, shared: &Shared) {
    let mut rooms: HashMap<Room, Vec<User>> = HashMap::new();
    for (room, user) in lock(&shared.queue).told() {
        rooms.entry(room).or_default().push(user);
    }
    let mut calls = 0;
    for (room, users) in &rooms {
        for chunk in users.chunks(USERS_PER_BEAT) {
            if calls % BEATS_PER_TURN == 0 {
                tell(store, shared).await;
            }
            calls += 1;
            // Only users still here: one who left meanwhile stays gone.
            let here: Vec<User> = {
                let queue = lock(&shared.queue);
                chunk
                    .iter()
                    .filter(|user| queue.is_told(&(room.clone(), (*user).clone())))
                    .cloned()
                    .collect()
            };
            if let Err(e) = store.beat(room, &here).await {
                log::debug!("presence heartbeat of {room} failed: {e}");
                return;
            }
        }
    }
}
