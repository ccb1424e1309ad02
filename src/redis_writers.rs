//! The connections appends go over: one per master, straight to the node
//! that owns the room's slot, used for nothing else.
//!
//! Three things follow. An append's script, its `WAIT` and its announcement
//! go over one connection, so `WAIT` counts exactly the writes it follows
//! (a `WAIT` sent on a fresh connection counts nothing and returns at once:
//! a false "replicated"). A `WAIT` that blocks, say on a paused replica,
//! holds only appends: reads, presence and the live feed never queue behind
//! it. And no client library resends an append by itself after a timeout or
//! a reconnect: a failed append is the caller's to repeat, with its refs, so
//! an append without a ref is never stored twice by a retry it did not ask
//! for. A node that does not own the slot answers `MOVED`, which stores
//! nothing. A connection that fails or times out is dropped, so the next
//! append opens a fresh one.
//!
//! `WAIT`s are group commits: Redis counts a `WAIT` from the client's last
//! write, so one `WAIT` on a connection covers every append whose script
//! was answered on it before the `WAIT` went out. Appends that need one
//! take turns; an append whose write an earlier `WAIT` already covered
//! takes that `WAIT`'s answer instead of sending its own, so concurrent
//! sends share one instead of queueing one each behind a slow replica.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use redis::RedisResult;

use crate::lock::lock;
use crate::redis_pipe::RedisPipe;
use crate::resp::Login;

pub struct Writers {
    /// The first URL's user, password and database, for every node.
    login: Login,
    open: Mutex<HashMap<String, Writer>>,
}

/// One append connection and the group commit of its `WAIT`s.
#[derive(Clone)]
pub struct Writer {
    pub conn: RedisPipe,
    pub commits: Arc<GroupCommit>,
}

/// The turns of one connection's `WAIT`s.
#[derive(Default)]
pub struct GroupCommit {
    turn: async_std::sync::Mutex<()>,
    book: Mutex<Commits>,
}

/// Which writes on a connection a `WAIT` has covered, and its answer: the
/// rule of the group commit, without I/O.
#[derive(Default, Debug)]
pub struct Commits {
    /// Writes answered on the connection so far.
    written: u64,
    /// The writes the last finished `WAIT` covered, how many replicas it
    /// asked for, and how many it reached.
    covered: u64,
    asked: usize,
    reached: usize,
}

impl Commits {
    /// A write was answered: its ticket for `answer`.
    pub fn wrote(&mut self) -> u64 {
        self.written += 1;
        self.written
    }

    /// What a finished `WAIT` said of the write with `ticket`, if one
    /// covered it and asked for at least `replicas`.
    pub fn answer(&self, ticket: u64, replicas: usize) -> Option<usize> {
        (ticket <= self.covered && self.asked >= replicas).then_some(self.reached)
    }

    /// A `WAIT` goes out now: the writes it covers.
    pub fn begin(&self) -> u64 {
        self.written
    }

    /// The `WAIT` that began at `covers` reached `reached` of `asked`.
    pub fn finish(&mut self, covers: u64, asked: usize, reached: usize) {
        if covers >= self.covered {
            (self.covered, self.asked, self.reached) = (covers, asked, reached);
        }
    }
}

impl GroupCommit {
    /// Records a write answered on the connection; call it as soon as the
    /// script's answer arrives, before anything else is sent for it.
    pub fn wrote(&self) -> u64 {
        lock(&self.book).wrote()
    }

    /// How many replicas hold the write with `ticket`: the answer of a
    /// `WAIT` that covers it, sending one (`wait`) only when none has.
    /// A turn is held at most as long as one `WAIT`, which `wait` bounds.
    pub async fn replicas<E, F: Future<Output = Result<usize, E>>>(
        &self,
        ticket: u64,
        replicas: usize,
        wait: impl FnOnce() -> F,
    ) -> Result<usize, E> {
        let _turn = self.turn.lock().await;
        if let Some(reached) = lock(&self.book).answer(ticket, replicas) {
            return Ok(reached);
        }
        let covers = lock(&self.book).begin();
        let reached = wait().await?;
        lock(&self.book).finish(covers, replicas, reached);
        Ok(reached)
    }
}

impl Writers {
    pub fn new(login: Login) -> Writers {
        Writers {
            login,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to the master at `addr` (`host:port`), opened if
    /// there is none. The caller bounds the time it takes.
    pub async fn to(&self, addr: &str) -> RedisResult<Writer> {
        if let Some(writer) = lock(&self.open).get(addr) {
            return Ok(writer.clone());
        }
        let conn = RedisPipe::open(addr, &self.login).await?;
        let writer = Writer {
            conn,
            commits: Arc::default(),
        };
        lock(&self.open).insert(addr.to_owned(), writer.clone());
        Ok(writer)
    }

    /// Forgets the connection to `addr` after it failed or timed out; the
    /// appends still on it run out their time limits.
    pub fn drop_connection(&self, addr: &str) {
        lock(&self.open).remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_covers_the_writes_answered_before_it_went_out() {
        let mut book = Commits::default();
        let (first, second) = (book.wrote(), book.wrote());
        assert_eq!(book.answer(first, 1), None, "no WAIT yet");
        let covers = book.begin();
        let late = book.wrote();
        book.finish(covers, 1, 1);
        assert_eq!(book.answer(first, 1), Some(1));
        assert_eq!(book.answer(second, 1), Some(1));
        assert_eq!(
            book.answer(late, 1),
            None,
            "written after the WAIT went out"
        );
        assert_eq!(book.answer(first, 2), None, "it asked for fewer replicas");
    }

    #[test]
    fn a_wait_that_fell_short_answers_every_write_it_covered() {
        let mut book = Commits::default();
        let ticket = book.wrote();
        let covers = book.begin();
        book.finish(covers, 1, 0);
        assert_eq!(book.answer(ticket, 1), Some(0));
        // An older WAIT finishing late does not take back a newer answer.
        let newer = book.wrote();
        let covers = book.begin();
        book.finish(covers, 1, 1);
        book.finish(1, 1, 0);
        assert_eq!(book.answer(newer, 1), Some(1));
    }
}
