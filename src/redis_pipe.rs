//! A pipelined connection to one Redis node with no task between a caller
//! and its socket: the caller writes its own command, and one reader task
//! hands each reply to its waiter in the order the commands went out. The
//! appends use it: the redis crate's multiplexed connection runs its driver
//! on smol's executor, a thread of its own, so each of its calls crossed to
//! that thread and back; here a call costs one wake-up, its reply's.
//!
//! It implements the redis crate's `ConnectionLike`, so scripts and
//! commands run on it as on any connection, and their replies are parsed
//! by the crate. A write that fails, or that its caller's time limit cuts
//! off, may leave part of a command on the wire: the connection is then
//! shut, every waiter is failed, and every later call fails at once, so the
//! caller drops it and opens another.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_std::io::{BufReader, WriteExt};
use async_std::net::TcpStream;
use futures_util::future::FutureExt;
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::lock::lock;
use crate::resp::{self, Login};

/// One connection; clones share it. It shuts when the last clone goes.
#[derive(Clone)]
pub struct RedisPipe {
    shared: Arc<Shared>,
}

struct Shared {
    /// Held while a command is queued and written, so that commands go out
    /// whole and in the order of their waiters.
    writer: async_std::sync::Mutex<TcpStream>,
    waiters: Arc<Mutex<Waiters>>,
    db: i64,
}

#[derive(Default)]
struct Waiters {
    queue: VecDeque<Waiter>,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

struct Waiter {
    replies: usize,
    got: Vec<Value>,
    answer: async_channel::Sender<RedisResult<Vec<Value>>>,
}

impl RedisPipe {
    /// Connects to `addr` and logs in; the caller bounds the time it takes.
    pub async fn open(addr: &str, login: &Login) -> RedisResult<RedisPipe> {
        let stream = resp::open(addr, login).await.map_err(|e| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                e,
            ))
        })?;
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        async_std::task::spawn(read_replies(stream.clone(), waiters.clone()));
        Ok(RedisPipe {
            shared: Arc::new(Shared {
                writer: async_std::sync::Mutex::new(stream),
                waiters,
                db: login.db,
            }),
        })
    }

    /// Sends `packed`, holding `replies` replies, and returns them.
    async fn request(&self, packed: &[u8], replies: usize) -> RedisResult<Vec<Value>> {
        let (answer, answered) = async_channel::bounded(1);
        {
            let stream = self.shared.writer.lock().await;
            {
                let mut waiters = lock(&self.shared.waiters);
                if let Some(why) = &waiters.broken {
                    return Err(broken(why));
                }
                waiters.queue.push_back(Waiter {
                    replies,
                    got: Vec::with_capacity(replies),
                    answer,
                });
            }
            let cut = CutOff(Some(&*stream));
            (&*stream).write_all(packed).await?;
            std::mem::forget(cut);
        }
        answered
            .recv()
            .await
            .unwrap_or_else(|_| Err(broken("the connection ended")))
    }
}

/// Shuts the socket unless forgotten: a write that did not finish leaves
/// the connection unusable.
struct CutOff<'a>(Option<&'a TcpStream>);

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.writer.get_mut().shutdown(std::net::Shutdown::Both);
    }
}

fn broken(why: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "the Redis connection is broken",
        why.to_owned(),
    ))
}

/// Reads replies until the connection ends, each to the oldest waiter;
/// then fails every waiter left.
async fn read_replies(stream: TcpStream, waiters: Arc<Mutex<Waiters>>) {
    let mut reader = BufReader::new(stream.clone());
    let why = loop {
        let raw = match resp::read_value(&mut reader).await {
            Ok(raw) => raw,
            Err(e) => break e,
        };
        let value = match redis::parse_redis_value(&raw) {
            Ok(value) => value,
            Err(e) => break format!("a reply redis could not parse: {e}"),
        };
        if let Err(e) = hand_over(&waiters, value) {
            break e;
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut waiters = lock(&waiters);
    for waiter in waiters.queue.drain(..) {
        let _ = waiter.answer.try_send(Err(broken(&why)));
    }
    waiters.broken = Some(why);
}

/// Gives a reply to the oldest waiter, and answers it once it has all its
/// replies.
fn hand_over(waiters: &Mutex<Waiters>, value: Value) -> Result<(), String> {
    let mut waiters = lock(waiters);
    let waiter = waiters
        .queue
        .front_mut()
        .ok_or("a reply nobody asked for")?;
    waiter.got.push(value);
    if waiter.got.len() >= waiter.replies {
        if let Some(waiter) = waiters.queue.pop_front() {
            // A waiter whose caller gave up has gone: its reply is dropped.
            let _ = waiter.answer.try_send(Ok(waiter.got));
        }
    }
    Ok(())
}

impl ConnectionLike for RedisPipe {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let mut replies = self.request(&cmd.get_packed_command(), 1).await?;
            replies
                .pop()
                .ok_or_else(|| broken("no reply"))?
                .extract_error()
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let replies = self
                .request(&pipeline.get_packed_pipeline(), offset + count)
                .await?;
            Ok(replies.into_iter().skip(offset).collect())
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::net::TcpListener;
    use std::time::Duration;

    /// A node that answers `ECHO x` with `x`, after a pause for `slow`, and
    /// closes the connection on `QUIT`.
    async fn echo_node() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        async_std::task::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream.clone());
            while let Ok(raw) = resp::read_value(&mut reader).await {
                let Ok(Value::Array(args)) = redis::parse_redis_value(&raw) else {
                    return;
                };
                let Some(Value::BulkString(word)) = args.last() else {
                    return;
                };
                match word.as_slice() {
                    b"QUIT" => return,
                    b"slow" => async_std::task::sleep(Duration::from_millis(300)).await,
                    _ => {}
                }
                let reply = format!("${}\r\n{}\r\n", word.len(), String::from_utf8_lossy(word));
                (&stream).write_all(reply.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    async fn echo(pipe: &RedisPipe, word: &str) -> RedisResult<String> {
        redis::cmd("ECHO")
            .arg(word)
            .query_async(&mut pipe.clone())
            .await
    }

    #[async_std::test]
    async fn concurrent_callers_each_get_their_own_reply() {
        let pipe = RedisPipe::open(&echo_node().await, &Login::default())
            .await
            .unwrap();
        let calls: Vec<_> = (0..100)
            .map(|n| {
                let pipe = pipe.clone();
                async_std::task::spawn(async move { (n, echo(&pipe, &format!("w{n}")).await) })
            })
            .collect();
        for call in calls {
            let (n, got) = call.await;
            assert_eq!(got.unwrap(), format!("w{n}"));
        }
        // A pipeline's replies come back together, in order.
        let both: (String, String) = redis::pipe()
            .cmd("ECHO")
            .arg("a")
            .cmd("ECHO")
            .arg("b")
            .query_async(&mut pipe.clone())
            .await
            .unwrap();
        assert_eq!(both, ("a".to_owned(), "b".to_owned()));
    }

    #[async_std::test]
    async fn a_caller_that_gave_up_does_not_shift_the_replies() {
        let pipe = RedisPipe::open(&echo_node().await, &Login::default())
            .await
            .unwrap();
        let gave_up =
            async_std::future::timeout(Duration::from_millis(50), echo(&pipe, "slow")).await;
        assert!(gave_up.is_err(), "the slow call should have timed out");
        assert_eq!(echo(&pipe, "next").await.unwrap(), "next");
    }

    #[async_std::test]
    async fn a_closed_connection_fails_its_waiters_and_every_later_call() {
        let pipe = RedisPipe::open(&echo_node().await, &Login::default())
            .await
            .unwrap();
        assert!(echo(&pipe, "QUIT").await.is_err(), "no reply came");
        let later = echo(&pipe, "after").await.unwrap_err();
        assert!(later.to_string().contains("broken"), "{later}");
    }
}
