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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisResult};

use crate::lock::lock;

pub struct Writers {
    /// How to reach a node: the first URL's settings (user, password,
    /// database), with the node's address.
    info: ConnectionInfo,
    timeout: Duration,
    open: Mutex<HashMap<String, MultiplexedConnection>>,
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
    pub async fn to(&self, addr: &str) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = lock(&self.open).get(addr) {
            return Ok(conn.clone());
        }
        let client = Client::open(self.info.clone().set_addr(tcp(addr)))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        lock(&self.open).insert(addr.to_owned(), conn.clone());
        Ok(conn)
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
