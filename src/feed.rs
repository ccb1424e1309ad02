//! The live feed: how events stored by any instance reach this instance's
//! rooms, and how signals (typing, member, read markers) that are never
//! stored reach every instance. One part of the store, with a memory and a
//! Redis implementation.
//!
//! The feed may lose deliveries (a dropped Redis connection does), and may
//! deliver the same event twice or out of order (announces after `WAIT`),
//! but it says `Repair` for a room whose subscription was made again or
//! whose connection was replaced: the rooms' order (`order.rs`) needs no
//! more than that to deliver every event once, in order.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use crate::fields::Room;
use crate::log::{Epoch, Event, StoreError};
use crate::protocol::Frame;

/// An event on the live feed, with what is needed to put it in order.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub room: Room,
    pub epoch: Epoch,
    pub event: Event,
}

/// A frame for a room's members that is not a stored event (typing,
/// member, read): it has no id, is never replayed, and goes to everyone
/// but its sender.
#[derive(Clone, Debug)]
pub struct Signal {
    pub room: Room,
    /// The sending connection, as `instance/connection`, which does not get
    /// it; `-` for signals of no connection.
    pub origin: String,
    pub frame: Frame,
}

/// What the live feed carries to this instance's rooms.
#[derive(Debug)]
pub enum FeedEvent {
    Delivery(Delivery),
    Signal(Signal),
    /// Deliveries to this room may have been lost: it must read what it
    /// missed from history before delivering on.
    Repair(Room),
}

/// Where the live feed hands its events: the rooms, which set it once
/// they exist. A feed calls it from the task that has the event, so a
/// delivery reaches its room's members with no hop to another task. Until
/// it is set nothing has subscribed, so an event before it has no member
/// to reach.
#[derive(Clone, Default)]
pub struct Events(Arc<OnceLock<Handler>>);

/// What the rooms do with one event of the feed.
type Handler = Box<dyn Fn(FeedEvent) + Send + Sync>;

impl Events {
    pub fn set(&self, handler: impl Fn(FeedEvent) + Send + Sync + 'static) {
        if self.0.set(Box::new(handler)).is_err() {
            log::error!("the live feed's events were given a second handler, which is ignored");
        }
    }

    pub fn send(&self, event: FeedEvent) {
        if let Some(handler) = self.0.get() {
            handler(event);
        }
    }
}

/// The live feed, as the rooms use it.
pub trait Feed: Send + Sync {
    /// Starts the live feed for a room on this instance; returns once
    /// events stored from now on will arrive.
    fn subscribe<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stops the live feed for a room that has no local members any more,
    /// or whose subscription was asked for by a join that failed.
    fn unsubscribe(&self, room: &Room);

    /// Sends a signal to the room's members on every instance, without
    /// storing it. Best effort: a signal lost in a fault is not repaired.
    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether the feed is connected.
    fn is_ready(&self) -> bool;
}
