//! Who is in which room, across instances: one part of the store, with a
//! memory and a Redis implementation. `presence.rs` is the task that keeps
//! it current for this instance.
//!
//! A user is present in a room while any instance has a live connection of
//! it there. Each change that makes a user arrive or depart is announced
//! once, by whoever made it, as a `member` signal on the room's feed.

use futures_util::future::BoxFuture;

use crate::fields::{Room, User};
use crate::log::StoreError;

pub trait PresenceStore: Send + Sync {
    /// `user` has a live connection in `room` on this instance (or still
    /// has: a heartbeat); announces `member` join when it was nowhere there.
    fn arrive<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// `user` has no live connection left in `room` on this instance;
    /// announces `member` leave when it has none anywhere.
    fn depart<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The heartbeat of one room: refreshes the entries of `users` on this
    /// instance (announcing `member` join for any that expired meanwhile),
    /// then removes the entries of instances that stopped refreshing
    /// theirs and announces the users who thereby left. One call per room
    /// (and per few hundred users), whatever the room's size.
    fn beat<'a>(
        &'a self,
        room: &'a Room,
        users: &'a [User],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The users present in `room`, each once, sorted.
    fn users<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}
