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
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisResult};

use crate::lock::lock;

pub struct Writers {
    /// How to reach a node: the first URL's settings (user, password,
    /// database), with the node's address.
    info: ConnectionInfo,
    timeout: Duration,
    open: Mutex<HashMap<String, Writer>>,
}

/// One append connection and the group commit of its `WAIT`s.
#[derive(Clone)]
pub struct Writer {
    pub conn: MultiplexedConnection,
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
    pub fn new(first: &Client, timeout: Duration) -> Writers {
        Writers {
            info: first.get_connection_info().clone(),
            timeout,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to the master at `addr` (`host:port`), opened if
    /// there is none.
    pub async fn to(&self, addr: &str) -> RedisResult<Writer> {
        if let Some(writer) = lock(&self.open).get(addr) {
            return Ok(writer.clone());
        }
        let client = Client::open(self.info.clone().set_addr(tcp(addr)))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
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

/// `host:port`, or `[v6]:port`, as an address to connect to.
fn tcp(addr: &str) -> ConnectionAddr {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ConnectionAddr::Tcp(host.to_owned(), port.parse().unwrap_or(6379))
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

    #[test]
    fn addresses_of_both_kinds_connect() {
        let ConnectionAddr::Tcp(host, port) = tcp("10.0.0.7:7001") else {
            panic!()
        };
        assert_eq!((host.as_str(), port), ("10.0.0.7", 7001));
        let ConnectionAddr::Tcp(host, port) = tcp("[::1]:6380") else {
            panic!()
        };
        assert_eq!((host.as_str(), port), ("::1", 6380));
    }
}
