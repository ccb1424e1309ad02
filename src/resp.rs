//! RESP2 on parlor's own Redis connections (the live feed's and the
//! appends'): opening one as the URL says, and reading one whole reply off
//! the wire, bounded in bytes, for the redis crate to parse.

use async_std::io::{BufReader, ReadExt, WriteExt};
use async_std::net::TcpStream;
use futures_lite::AsyncBufReadExt;
use redis::{RedisConnectionInfo, Value};

/// A reply larger than this ends the connection: nothing parlor sends or
/// stores comes near it.
pub const MAX_REPLY: usize = 16 << 20;

/// What a connection says before its first command: the URL's user,
/// password and database.
#[derive(Clone, Debug, Default)]
pub struct Login {
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

impl Login {
    pub fn of(settings: &RedisConnectionInfo) -> Login {
        Login {
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        }
    }

    /// `AUTH` and `SELECT` as the URL asks, packed: empty when it asks
    /// for neither.
    fn commands(&self) -> (Vec<u8>, usize) {
        let mut packed = Vec::new();
        let mut count = 0;
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = &self.username {
                auth.arg(username);
            }
            auth.arg(password);
            packed.extend(auth.get_packed_command());
            count += 1;
        }
        if self.db != 0 {
            packed.extend(redis::cmd("SELECT").arg(self.db).get_packed_command());
            count += 1;
        }
        (packed, count)
    }
}

/// Opens a connection to `addr` (`host:port`) and logs in as the URL says.
/// The caller bounds the time it takes.
pub async fn open(addr: &str, login: &Login) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (packed, count) = login.commands();
    if count == 0 {
        return Ok(stream);
    }
    stream
        .write_all(&packed)
        .await
        .map_err(|e| format!("cannot write to {addr}: {e}"))?;
    let mut reader = BufReader::new(stream.clone());
    for _ in 0..count {
        let reply = read_value(&mut reader).await?;
        if let Err(e) = redis::parse_redis_value(&reply).and_then(Value::extract_error) {
            return Err(format!("{addr} refused the URL's login: {e}"));
        }
    }
    if !reader.buffer().is_empty() {
        return Err(format!("{addr}: unexpected data after the login"));
    }
    Ok(stream)
}

/// Reads one whole reply, nested arrays and all, and returns its bytes.
pub async fn read_value(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    // Items still to read: an array header adds its length.
    let mut items: u64 = 1;
    while items > 0 {
        items -= 1;
        let start = raw.len();
        let budget = (MAX_REPLY - start.min(MAX_REPLY)) as u64;
        let n = (&mut *reader)
            .take(budget)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the node closed the connection".into());
        }
        let line = raw[start..]
            .strip_suffix(b"\r\n")
            .ok_or("a reply line without CRLF, or a reply too large")?;
        let (&kind, rest) = line.split_first().ok_or("an empty reply line")?;
        let number = || {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(rest)))
        };
        match kind {
            b'+' | b'-' | b':' => {}
            b'*' => items += number()?.max(0) as u64,
            b'$' => {
                let Ok(len) = usize::try_from(number()?) else {
                    continue;
                };
                if raw.len() + len + 2 > MAX_REPLY {
                    return Err(format!("a {len}-byte reply is larger than parlor accepts"));
                }
                let at = raw.len();
                raw.resize(at + len + 2, 0);
                reader
                    .read_exact(&mut raw[at..])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unexpected reply type {:?}", other as char)),
        }
    }
    Ok(raw)
}

/// The length of the whole reply at the start of `buffer`, if all of it is
/// there: what a reader may take at once, without waiting for the socket.
pub fn whole_reply(buffer: &[u8]) -> Option<usize> {
    let mut at = 0;
    // Items still to read: an array header adds its length.
    let mut items: u64 = 1;
    while items > 0 {
        items -= 1;
        let end = at + buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let (&kind, rest) = buffer[at..end].split_first()?;
        let number = || std::str::from_utf8(rest).ok()?.parse::<i64>().ok();
        at = end + 2;
        match kind {
            b'+' | b'-' | b':' => {}
            b'*' => items += number()?.max(0) as u64,
            b'$' => {
                if let Ok(len) = usize::try_from(number()?) {
                    at = at.checked_add(len)?.checked_add(2)?;
                    if at > buffer.len() {
                        return None;
                    }
                }
            }
            _ => return None,
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_std::net::TcpListener;

    /// Writes `wire` from a peer and reads values off it until it ends.
    fn values(wire: &'static [u8]) -> Vec<Result<Vec<u8>, String>> {
        async_std::task::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            async_std::task::spawn(async move {
                let (mut peer, _) = listener.accept().await.unwrap();
                // A byte at a time, so every read is cut short.
                for byte in wire {
                    peer.write_all(&[*byte]).await.unwrap();
                }
            });
            let mut reader = BufReader::new(TcpStream::connect(addr).await.unwrap());
            let mut got = Vec::new();
            loop {
                let value = read_value(&mut reader).await;
                let end = value.is_err();
                got.push(value);
                if end {
                    return got;
                }
            }
        })
    }

    #[test]
    fn whole_replies_are_read_one_at_a_time() {
        let got = values(b"+OK\r\n*3\r\n:1\r\n*2\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n-MOVED 3 h:1\r\n");
        let parsed: Vec<Value> = got[..got.len() - 1]
            .iter()
            .map(|raw| redis::parse_redis_value(raw.as_ref().unwrap()).unwrap())
            .collect();
        assert_eq!(parsed[0], Value::Okay);
        assert_eq!(
            parsed[1],
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::BulkString(b"a\r\n".to_vec()), Value::Nil]),
                Value::Nil,
            ])
        );
        let moved = parsed[2].clone().extract_error().unwrap_err();
        assert_eq!(moved.code(), Some("MOVED"));
        assert_eq!(
            got.last().unwrap().as_ref().unwrap_err(),
            "the node closed the connection"
        );
    }

    #[test]
    fn whole_replies_are_found_in_a_buffer_and_partial_ones_are_not() {
        let wire = b"+OK\r\n*3\r\n:1\r\n*2\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n-MOVED 3 h:1\r\n";
        let mut lengths = Vec::new();
        let mut at = 0;
        while let Some(len) = whole_reply(&wire[at..]) {
            lengths.push(len);
            at += len;
        }
        assert_eq!(lengths, [5, 31, 14]);
        assert_eq!(at, wire.len());
        // A reply cut anywhere short of its end is not whole yet.
        let mut start = 0;
        for len in lengths {
            for cut in start..start + len {
                assert_eq!(whole_reply(&wire[start..cut]), None, "{start}..{cut}");
            }
            start += len;
        }
        assert_eq!(whole_reply(b"%1\r\n"), None);
        assert_eq!(whole_reply(b"$99999999999999999999\r\n"), None);
    }

    #[test]
    fn a_reply_beyond_the_budget_or_of_no_known_type_ends_the_reading() {
        let got = values(b"$99999999999\r\n");
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .contains("larger than parlor accepts"));
        let got = values(b"%1\r\n");
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .contains("unexpected reply type"));
    }

    #[test]
    fn the_login_is_auth_then_select_only_as_the_url_asks() {
        assert_eq!(Login::default().commands().1, 0);
        let login = Login {
            username: Some("u".into()),
            password: Some("p".into()),
            db: 2,
        };
        let (packed, count) = login.commands();
        assert_eq!(count, 2);
        assert_eq!(
            packed,
            b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
        );
    }
}
