//! A TCP proxy that injects network faults: silence (what a partition, a
//! dropped conntrack entry or a paused VM looks like to the two ends),
//! resets and latency. While it is silenced, every byte on every
//! connection, old or new, is swallowed and nothing is closed; once it
//! speaks again, new connections work and the ones that were open stay
//! dead, as connections through a lost path do. The tests and `make soak`
//! (examples/soak.rs) share it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Proxy {
    pub addr: String,
    shared: Arc<Shared>,
}

struct Shared {
    /// Silenced now.
    silent: AtomicBool,
    /// Connections opened before this generation are dead for good.
    generation: AtomicU64,
    stopped: AtomicBool,
    /// Milliseconds each chunk waits before it is forwarded.
    latency: AtomicU64,
    /// Both ends of every connection, for resets.
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// A proxy on a free local port to `target` (`host:port`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            silent: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            latency: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let (target, accepting) = (target.to_owned(), shared.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let born = accepting.generation.load(Ordering::Acquire);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    let mut open = accepting.open.lock().unwrap();
                    open.retain(|stream| stream.peer_addr().is_ok());
                    open.extend([c, s]);
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let shared = accepting.clone();
                    thread::spawn(move || pump(from, to, born, &shared));
                }
            }
        });
        Proxy { addr, shared }
    }

    /// Swallows every byte from now on, closing nothing.
    pub fn silence(&self) {
        self.shared.silent.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forwards again, on connections opened from now on.
    pub fn speak(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.shared.silent.store(false, Ordering::Release);
    }

    /// Resets every connection open now, as a middlebox that restarts does.
    pub fn reset(&self) {
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Delays every chunk by `latency` each way from now on.
    pub fn delay(&self, latency: Duration) {
        self.shared
            .latency
            .store(latency.as_millis() as u64, Ordering::Release);
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to` while the path lives; a silenced path reads and
/// drops, so the sender sees its bytes taken and no answer ever.
fn pump(mut from: TcpStream, mut to: TcpStream, born: u64, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let dead = shared.silent.load(Ordering::Acquire)
            || shared.generation.load(Ordering::Acquire) != born;
        if dead {
            continue;
        }
        let latency = shared.latency.load(Ordering::Acquire);
        if latency > 0 {
            thread::sleep(Duration::from_millis(latency));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
