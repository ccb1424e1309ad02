//! How many HTTP reads each client may make: a token bucket per client
//! address, so that nobody can keep the store answering without end. The
//! address is the peer's, or, when the peer is a trusted proxy (the
//! loopback addresses by default: a reverse proxy on the same machine), the
//! last one its `X-Forwarded-For` names.
//!
//! At most `MAX_ADDRESSES` buckets are kept: when a new address would pass
//! that, buckets that have refilled (their clients quiet) are dropped, and
//! if none has, all are: a flood of addresses resets budgets rather than
//! growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::bucket::{Limit, TokenBucket};
use crate::lock::lock;

const MAX_ADDRESSES: usize = 10_000;

pub struct ReadBudget {
    limit: Limit,
    trusted: Vec<IpAddr>,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl ReadBudget {
    /// `rate` reads a second, bursts of four times that, per client.
    pub fn new(rate: u32, trusted: Vec<IpAddr>) -> ReadBudget {
        ReadBudget {
            limit: Limit::new(rate, rate.saturating_mul(4)),
            trusted,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The client behind a request from `peer` with this `X-Forwarded-For`.
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        if !self.trusted.contains(&peer) {
            return peer;
        }
        forwarded
            .and_then(|list| list.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok())
            .unwrap_or(peer)
    }

    /// Takes a read from `client`'s budget, if it has one left.
    pub fn take(&self, client: IpAddr) -> bool {
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| !bucket.is_full());
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        buckets.entry(client).or_default().take(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clients_are_peers_unless_a_trusted_proxy_names_them() {
        let budget = ReadBudget::new(1, vec![ip("127.0.0.1")]);
        assert_eq!(
            budget.client(ip("10.0.0.9"), Some("1.2.3.4")),
            ip("10.0.0.9")
        );
        assert_eq!(
            budget.client(ip("127.0.0.1"), Some("9.9.9.9, 1.2.3.4")),
            ip("1.2.3.4")
        );
        assert_eq!(
            budget.client(ip("127.0.0.1"), Some("garbage")),
            ip("127.0.0.1")
        );
        assert_eq!(budget.client(ip("127.0.0.1"), None), ip("127.0.0.1"));
    }

    #[test]
    fn each_client_has_its_own_burst_and_addresses_stay_bounded() {
        let budget = ReadBudget::new(1, Vec::new());
        assert_eq!((0..10).filter(|_| budget.take(ip("1.1.1.1"))).count(), 4);
        assert!(
            budget.take(ip("2.2.2.2")),
            "another client is not held back"
        );
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            budget.take(IpAddr::from(i.to_be_bytes()));
        }
        assert!(lock(&budget.buckets).len() <= MAX_ADDRESSES);
    }
}
