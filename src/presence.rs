//! Who is in which room, as this instance tells the store: the task that
//! announces users arriving in and departing from rooms, keeps their entries
//! alive with a heartbeat, and sweeps away the entries of instances that died
//! without a goodbye.
//!
//! Changes go through one channel to one task, so the store sees each
//! instance's arrivals and departures in the order they happened. Every call
//! is idempotent, so a failed one is simply made good by the next heartbeat
//! (an arrival) or by expiry and the sweep (a departure).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use crate::fields::{Room, User};
use crate::presence_store::PresenceStore;

/// The sending side, held by the room registry.
#[derive(Clone)]
pub struct Presence {
    changes: async_channel::Sender<Change>,
}

enum Change {
    Arrive(Room, User),
    Depart(Room, User),
    /// Answered once every change before it is recorded.
    Flush(async_channel::Sender<()>),
}

impl Presence {
    /// Starts the presence task; entries expire `ttl` after their last
    /// heartbeat, and heartbeats and sweeps come every third of it.
    pub fn start(store: Arc<dyn PresenceStore>, ttl: Duration) -> Presence {
        let (changes, received) = async_channel::unbounded();
        async_std::task::spawn(run(store, ttl, received));
        Presence { changes }
    }

    /// `user` has its first live connection in `room` on this instance.
    pub fn arrive(&self, room: &Room, user: &User) {
        let _ = self
            .changes
            .try_send(Change::Arrive(room.clone(), user.clone()));
    }

    /// `user` has no live connection left in `room` on this instance.
    pub fn depart(&self, room: &Room, user: &User) {
        let _ = self
            .changes
            .try_send(Change::Depart(room.clone(), user.clone()));
    }

    /// Waits until every change so far is recorded: on shutdown, so that the
    /// users of a draining instance leave at once rather than on expiry.
    pub async fn flush(&self) {
        let (done, finished) = async_channel::bounded(1);
        if self.changes.send(Change::Flush(done)).await.is_ok() {
            let _ = finished.recv().await;
        }
    }
}

async fn run(
    store: Arc<dyn PresenceStore>,
    ttl: Duration,
    changes: async_channel::Receiver<Change>,
) {
    let mut here: HashSet<(Room, User)> = HashSet::new();
    let beat = ttl / 3;
    let mut next_beat = Instant::now() + beat;
    loop {
        let wait = next_beat.saturating_duration_since(Instant::now());
        let next = async { changes.recv().await.ok() }
            .or(async {
                async_std::task::sleep(wait).await;
                None
            })
            .await;
        match next {
            Some(Change::Arrive(room, user)) => {
                if let Err(e) = store.arrive(&room, &user).await {
                    log::warn!("presence of {user} in {room} not recorded yet ({e}); the next heartbeat retries");
                }
                here.insert((room, user));
            }
            Some(Change::Depart(room, user)) => {
                if let Err(e) = store.depart(&room, &user).await {
                    log::warn!(
                        "departure of {user} from {room} not recorded ({e}); it expires instead"
                    );
                }
                here.remove(&(room, user));
            }
            Some(Change::Flush(done)) => {
                let _ = done.try_send(());
            }
            None if changes.is_closed() => return,
            None => {
                next_beat = Instant::now() + beat;
                // Heartbeat: refresh every entry of this instance (an entry
                // that expired meanwhile comes back, and says so).
                for (room, user) in &here {
                    if let Err(e) = store.arrive(room, user).await {
                        log::debug!("presence heartbeat failed: {e}");
                        break;
                    }
                }
                // Sweep: entries of instances that stopped beating.
                let rooms: HashSet<&Room> = here.iter().map(|(room, _)| room).collect();
                for room in rooms {
                    if let Err(e) = store.sweep(room).await {
                        log::debug!("presence sweep failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}
