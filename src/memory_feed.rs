//! The embedded store's live feed: one bounded channel in this process, fed
//! by the memory log (in id order, under its lock) and by signals. Nothing
//! to subscribe to: an instance alone hears everything.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::feed::{Events, Feed, FeedEvent, Signal};
use crate::fields::Room;
use crate::log::StoreError;
use crate::outbox;

/// How many feed events wait for the rooms before publishers wait.
const CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct MemoryFeed {
    sender: async_channel::Sender<FeedEvent>,
}

impl MemoryFeed {
    /// The feed and its receiving end.
    pub fn new() -> (MemoryFeed, async_channel::Receiver<FeedEvent>) {
        let (sender, receiver) = async_channel::bounded(CAPACITY);
        (MemoryFeed { sender }, receiver)
    }

    /// The feed, with a task that hands its events to `events` in the
    /// order they were sent: with each one it waited for, those already
    /// waiting too, delivered `corked` (each connection's frames in one
    /// write).
    pub fn start(events: Events) -> MemoryFeed {
        let (feed, receiver) = MemoryFeed::new();
        async_std::task::spawn(async move {
            while let Ok(event) = receiver.recv().await {
                let mut waiting = vec![event];
                while waiting.len() < CAPACITY {
                    match receiver.try_recv() {
                        Ok(event) => waiting.push(event),
                        Err(_) => break,
                    }
                }
                outbox::corked(waiting.len(), || {
                    waiting.into_iter().for_each(|event| events.send(event))
                });
            }
        });
        feed
    }

    /// Hands an event to the rooms, waiting while they are behind. The
    /// receiver lives as long as the server; if it is gone the process is
    /// shutting down and nobody is left to deliver to.
    pub async fn send(&self, event: FeedEvent) {
        let _ = self.sender.send(event).await;
    }
}

impl Feed for MemoryFeed {
    fn subscribe<'a>(&'a self, _room: &'a Room) -> BoxFuture<'a, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn unsubscribe(&self, _room: &Room) {}

    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.send(FeedEvent::Signal(signal)).await;
            Ok(())
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }
}
