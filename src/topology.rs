//! Where each room lives in Redis: which node owns the slot of the room's
//! hash tag, and how many replicas that node has online. The live feed uses
//! it to subscribe each room on the node that publishes it, and publishing
//! uses the replica count to decide what to `WAIT` for.
//!
//! A standalone Redis is a topology of one node that owns every slot, so the
//! feed and the publish path have one shape for both deployments.

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of a key or channel, by Redis Cluster's rule: CRC16 (XMODEM)
/// of the part inside the first non-empty `{…}`, else of the whole name.
pub fn slot_of(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// A node that owns slots (a master).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// `host:port` as the cluster announces it.
    pub addr: String,
    /// Replicas of this master that are up and linked.
    pub replicas: usize,
    /// Inclusive slot ranges.
    ranges: Vec<(u16, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    shards: Vec<Shard>,
    /// A cluster refuses one `SSUBSCRIBE` across slots; a standalone
    /// Redis takes any channels in one.
    cluster: bool,
}

impl Topology {
    /// One node that owns every slot.
    pub fn standalone(addr: String, replicas: usize) -> Topology {
        Topology {
            shards: vec![Shard {
                addr,
                replicas,
                ranges: vec![(0, SLOTS - 1)],
            }],
            cluster: false,
        }
    }

    /// Reads the answer of `CLUSTER NODES`: one line per node, `id
    /// ip:port@cport[,hostname] flags master ping pong epoch link slot…`.
    /// A master marked failing owns nothing here: until a replica takes its
    /// slots over, those slots have no usable owner.
    pub fn from_cluster_nodes(text: &str) -> Result<Topology, String> {
        struct Node<'a> {
            id: &'a str,
            addr: &'a str,
            master: bool,
            up: bool,
            master_id: &'a str,
            slots: Vec<&'a str>,
        }
        let mut nodes = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(format!("unexpected CLUSTER NODES line: {line}"));
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let addr = fields[1].split(['@', ',']).next().unwrap_or("");
            nodes.push(Node {
                id: fields[0],
                addr,
                master: flags.contains(&"master"),
                up: !flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr"))
                    && fields[7] == "connected"
                    && !addr.starts_with(':')
                    && !addr.is_empty(),
                master_id: fields[3],
                slots: fields[8..].to_vec(),
            });
        }
        let mut shards = Vec::new();
        for node in nodes.iter().filter(|n| n.master && n.up) {
            let mut ranges = Vec::new();
            for slot in &node.slots {
                // `[slot->-id]` and `[slot-<-id]` are migrations in progress;
                // the slot still belongs to the node that lists it plainly.
                if slot.starts_with('[') {
                    continue;
                }
                let (lo, hi) = slot.split_once('-').unwrap_or((slot, slot));
                let parse = |s: &str| {
                    s.parse::<u16>()
                        .ok()
                        .filter(|&n| n < SLOTS)
                        .ok_or_else(|| format!("unexpected slot range {slot} in CLUSTER NODES"))
                };
                ranges.push((parse(lo)?, parse(hi)?));
            }
            if ranges.is_empty() {
                continue;
            }
            let replicas = nodes
                .iter()
                .filter(|r| !r.master && r.up && r.master_id == node.id)
                .count();
            shards.push(Shard {
                addr: node.addr.to_owned(),
                replicas,
                ranges,
            });
        }
        Ok(Topology {
            shards,
            cluster: true,
        })
    }

    /// Which channels may share one `SSUBSCRIBE`: those of one slot on a
    /// cluster, any on a standalone Redis.
    pub fn batch_of(&self, slot: u16) -> u16 {
        if self.cluster {
            slot
        } else {
            0
        }
    }

    /// The master that owns `slot`, if one is up.
    pub fn owner(&self, slot: u16) -> Option<&Shard> {
        self.shards.iter().find(|shard| {
            shard
                .ranges
                .iter()
                .any(|&(lo, hi)| lo <= slot && slot <= hi)
        })
    }

    /// Whether every slot has an owner that is up.
    pub fn covers_all(&self) -> bool {
        let mut ranges: Vec<(u16, u16)> = self
            .shards
            .iter()
            .flat_map(|s| s.ranges.iter().copied())
            .collect();
        ranges.sort_unstable();
        let mut next = 0u32;
        for (lo, hi) in ranges {
            if u32::from(lo) > next {
                return false;
            }
            next = next.max(u32::from(hi) + 1);
        }
        next == u32::from(SLOTS)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values given by `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("parlor:{general}:live"), slot_of("general"));
        assert_eq!(slot_of("parlor:{general}:meta"), slot_of("general"));
        // An empty tag does not count: the whole name is hashed.
        assert_eq!(
            slot_of("a{}b"),
            crc16::State::<crc16::XMODEM>::calculate(b"a{}b") % SLOTS
        );
    }

    const NODES: &str = "\
3acc 127.0.0.1:7101@17101 master - 0 1 2 connected 5461-10922
cf40 127.0.0.1:7102@17102 master - 0 1 3 connected 10923-16383
5154 127.0.0.1:7103@17103 slave 4aa6 0 1 1 connected
dac8 127.0.0.1:7105@17105 slave cf40 0 1 3 connected
4aa6 127.0.0.1:7100@17100 myself,master - 0 0 1 connected 0-5460
7197 127.0.0.1:7104@17104 slave,fail 3acc 0 1 2 disconnected
";

    #[test]
    fn cluster_nodes_give_owners_and_online_replicas() {
        let topology = Topology::from_cluster_nodes(NODES).unwrap();
        assert!(topology.covers_all());
        let owner = topology.owner(0).unwrap();
        assert_eq!((owner.addr.as_str(), owner.replicas), ("127.0.0.1:7100", 1));
        let owner = topology.owner(6000).unwrap();
        assert_eq!((owner.addr.as_str(), owner.replicas), ("127.0.0.1:7101", 0));
        assert_eq!(topology.owner(16383).unwrap().addr, "127.0.0.1:7102");
    }

    #[test]
    fn a_failed_master_owns_nothing_until_its_replica_takes_over() {
        let failed = NODES.replace("myself,master", "myself,master,fail");
        let topology = Topology::from_cluster_nodes(&failed).unwrap();
        assert!(topology.owner(0).is_none());
        assert!(!topology.covers_all());
        assert!(Topology::from_cluster_nodes("garbage").is_err());
        assert!(Topology::standalone("h:1".into(), 0).covers_all());
    }
}
