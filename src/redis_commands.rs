//! The connection that parlor's Redis commands go over: one multiplexed
//! connection to a standalone Redis, or the redis crate's cluster connection,
//! which follows `MOVED` and refreshes its slot map by itself. Both reconnect
//! on their own after a connection closes; one that goes silent without
//! closing (a partition, a paused VM) is replaced by `Commands::replace`,
//! which the health check calls when a `PING` gets no answer in time. The
//! store and the live feed use this one type, so neither has a second code
//! path for the cluster.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::lock::lock;
use crate::topology::Topology;

/// Opens a connection like the first one.
pub type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<Connection, String>> + Send + Sync>;

/// The command connection in use, shared by every clone: a clone takes the
/// connection in place for each request, so a replacement reaches them all.
#[derive(Clone)]
pub struct Commands {
    current: Arc<Mutex<Connection>>,
    connect: Connect,
}

#[derive(Clone)]
pub enum Connection {
    /// One Redis; `addr` is its `host:port`, where the live feed connects.
    Standalone {
        conn: ConnectionManager,
        addr: String,
    },
    Cluster(ClusterConnection),
}

impl Commands {
    /// Opens the first connection with `connect`, which also opens the
    /// replacements.
    pub async fn open(connect: Connect) -> Result<Commands, String> {
        let first = connect().await?;
        Ok(Commands {
            current: Arc::new(Mutex::new(first)),
            connect,
        })
    }

    /// Opens a fresh connection and puts it in place of the current one,
    /// whose requests in flight run out their time limits.
    pub async fn replace(&self) -> Result<(), String> {
        let fresh = (self.connect)().await?;
        *lock(&self.current) = fresh;
        Ok(())
    }

    /// The connection in place, for one request or for requests that must
    /// go over one connection.
    pub fn connection(&self) -> Connection {
        lock(&self.current).clone()
    }

    /// Runs `cmd` on the master that owns `slot`.
    pub async fn on_slot<T: redis::FromRedisValue>(&self, cmd: &Cmd, slot: u16) -> RedisResult<T> {
        self.connection().on_slot(cmd, slot).await
    }

    /// Asks Redis where the slots are and how many replicas each owner has
    /// online.
    pub async fn topology(&self) -> Result<Topology, String> {
        self.connection().topology().await
    }

    /// `PING`s every master: whether each answers.
    pub async fn ping(&self) -> RedisResult<()> {
        match self.connection() {
            Connection::Standalone { mut conn, .. } => {
                redis::cmd("PING").query_async(&mut conn).await
            }
            Connection::Cluster(mut conn) => {
                let every_master = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                conn.route_command(redis::cmd("PING"), every_master)
                    .await
                    .map(|_| ())
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(*lock(&self.current), Connection::Cluster(_))
    }
}

/// Scripts and commands run on the connection in place.
impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.connection();
        Box::pin(async move { conn.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.connection();
        Box::pin(async move { conn.req_packed_commands(cmd, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.connection().get_db()
    }
}

impl Connection {
    /// Runs `cmd` on the master that owns `slot`. `WAIT` must go there: it
    /// counts the replicas that hold this connection's writes on that node.
    pub async fn on_slot<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        slot: u16,
    ) -> RedisResult<T> {
        match self {
            Connection::Standalone { conn, .. } => cmd.query_async(conn).await,
            Connection::Cluster(conn) => {
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
            Connection::Standalone { conn, addr } => {
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
            Connection::Cluster(conn) => {
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
}

/// Lets scripts and commands run on either kind of connection; the cluster
/// connection routes each by its first key.
impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone { conn, .. } => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone { conn, .. } => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone { conn, .. } => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}
