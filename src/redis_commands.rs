//! The connection that parlor's Redis commands go over: one multiplexed
//! connection to a standalone Redis, or the redis crate's cluster connection,
//! which follows `MOVED` and refreshes its slot map by itself. Both reconnect
//! on their own. The store and the live feed use this one type, so neither
//! has a second code path for the cluster.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisFuture, RedisResult, Value};

use crate::topology::Topology;

#[derive(Clone)]
pub enum Commands {
    /// One Redis; `addr` is its `host:port`, where the live feed connects.
    Standalone {
        conn: ConnectionManager,
        addr: String,
    },
    Cluster(ClusterConnection),
}

impl Commands {
    /// Runs `cmd` on the master that owns `slot`. `WAIT` must go there: it
    /// counts the replicas that hold this connection's writes on that node.
    pub async fn on_slot<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        slot: u16,
    ) -> RedisResult<T> {
        match self {
            Commands::Standalone { conn, .. } => cmd.query_async(conn).await,
            Commands::Cluster(conn) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                let value = conn
                    .route_command(cmd.clone(), RoutingInfo::SingleNode(route))
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// Asks Redis where the slots are and how many replicas each owner has
    /// online.
    pub async fn topology(&mut self) -> Result<Topology, String> {
        match self {
            Commands::Standalone { conn, addr } => {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(conn)
                    .await
                    .map_err(|e| e.to_string())?;
                // `slaveN:ip=…,port=…,state=online,offset=…,lag=…`
                let online = info
                    .lines()
                    .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                    .count();
                Ok(Topology::standalone(addr.clone(), online))
            }
            Commands::Cluster(conn) => {
                let value = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let text: String = redis::from_redis_value(value).map_err(|e| e.to_string())?;
                Topology::from_cluster_nodes(&text)
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
}

/// Lets scripts and commands run on either kind of connection; the cluster
/// connection routes each by its first key.
impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Standalone { conn, .. } => conn.req_packed_command(cmd),
            Commands::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Standalone { conn, .. } => conn.req_packed_commands(cmd, offset, count),
            Commands::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Standalone { conn, .. } => conn.get_db(),
            Commands::Cluster(conn) => conn.get_db(),
        }
    }
}
