//! Who a client is and which rooms it may use: HS256 JWTs signed with the
//! server's secret, checked before a WebSocket upgrade or an HTTP request does
//! anything.
//!
//! Claims: `sub` (the user), `exp`, and optionally `nbf`, `rooms` (a list of
//! room names or prefixes ending in `*`) and `mod`; `token.rs` reads and
//! signs them. Expiry has no leeway: a token is good until its `exp` second
//! and not after. A `sub` must be a user name as it is (not one that becomes
//! a name once trimmed): one user is one string everywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorCode};
use crate::fields::{Room, User};
use crate::token::{self, Audience, Claims, Expect};

/// How requests are let in: open, as in the demo, or by token.
pub enum Access {
    Open,
    /// Tokens signed with this secret, with the issuer and audience asked.
    Token {
        secret: Vec<u8>,
        expect: Expect,
    },
}

/// A client as its token describes it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: User,
    rooms: Option<Vec<String>>,
    /// The token says `"mod": true`: the user may delete others' messages.
    pub moderator: bool,
    /// When the token stops being good, in seconds since the Unix epoch.
    pub expires: u64,
}

impl Identity {
    /// Someone on an open server who gave no name: `guest-` and four hex digits.
    pub fn guest() -> Identity {
        Identity {
            user: User::guest(),
            rooms: None,
            moderator: false,
            expires: u64::MAX,
        }
    }

    /// When the token expires, if it does.
    pub fn expiry(&self) -> Option<Duration> {
        (self.expires != u64::MAX).then(|| self.remaining())
    }

    /// Whether the token lets its holder join, read and send in `room`.
    pub fn may(&self, room: &Room) -> bool {
        match &self.rooms {
            None => true,
            Some(rules) => rules.iter().any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => room.as_str().starts_with(prefix),
                None => rule == room.as_str(),
            }),
        }
    }

    /// Refuses `room` with `forbidden` unless the token allows it.
    pub fn check(&self, room: &Room) -> Result<(), Error> {
        if self.may(room) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Forbidden,
                format!("your token does not allow room {room}"),
            ))
        }
    }

    /// How long until the token expires (zero if it has).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.expires.saturating_sub(now_secs()))
    }
}

impl Access {
    pub fn new(secret: Option<&str>, expect: Expect) -> Access {
        match secret {
            None => Access::Open,
            Some(secret) => Access::Token {
                secret: secret.as_bytes().to_vec(),
                expect,
            },
        }
    }

    /// The identity a request may act as: from its token when auth is on
    /// (`unauthorized` without a good one), or the user it names when open.
    /// `None` from an open server means the request named no user.
    pub fn identify(
        &self,
        token: Option<&str>,
        claimed_user: Option<&str>,
    ) -> Result<Option<Identity>, Error> {
        match self {
            Access::Open => Ok(match claimed_user {
                None => None,
                Some(user) => Some(Identity {
                    user: User::parse(user)?,
                    rooms: None,
                    moderator: false,
                    expires: u64::MAX,
                }),
            }),
            Access::Token { secret, expect } => verify(secret, expect, token).map(Some),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }
}

/// The identity of a token signed with `secret`, or `unauthorized`.
fn verify(secret: &[u8], expect: &Expect, token: Option<&str>) -> Result<Identity, Error> {
    let unauthorized = |why: String| Error::new(ErrorCode::Unauthorized, why);
    let token = token.ok_or_else(|| {
        unauthorized("a token is required: ?token= on /ws, Authorization: Bearer over HTTP".into())
    })?;
    let claims = token::verify(secret, token, now_secs(), expect)
        .map_err(|why| unauthorized(format!("the token is not valid: {why}")))?;
    let user = User::parse(&claims.sub)
        .ok()
        .filter(|user| user.as_str() == claims.sub)
        .ok_or_else(|| {
            unauthorized("the token's sub is not a user name as it stands (1 to 64 characters, no control or invisible ones, nothing to trim)".into())
        })?;
    Ok(Identity {
        user,
        rooms: claims.rooms,
        moderator: claims.moderator,
        expires: claims.exp,
    })
}

/// What a token says of its user.
pub struct Grant {
    pub sub: String,
    /// Rooms (or prefixes ending in `*`) the user may use; `None`: every room.
    pub rooms: Option<Vec<String>>,
    pub moderator: bool,
    pub ttl: Duration,
    /// The `iss` and `aud` claims, for a server that asks for them.
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Signs a token for a grant.
pub fn issue(secret: &str, grant: Grant) -> Result<String, String> {
    User::parse(&grant.sub).map_err(|e| format!("--sub: {}", e.message))?;
    if User::parse(&grant.sub).is_ok_and(|user| user.as_str() != grant.sub) {
        return Err("--sub: a user name has nothing to trim around it".into());
    }
    let claims = Claims {
        sub: grant.sub,
        exp: now_secs().saturating_add(grant.ttl.as_secs()),
        nbf: None,
        rooms: grant.rooms,
        moderator: grant.moderator,
        iss: grant.issuer,
        aud: grant.audience.map(Audience::One),
    };
    Ok(token::sign(secret.as_bytes(), &claims))
}

/// Reads a time-to-live such as `90`, `90s`, `30m`, `1h` or `7d`.
pub fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("--ttl {raw:?}: expected a number with s, m, h or d, such as 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("--ttl {raw:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    #[test]
    fn a_signed_token_identifies_its_user_and_rooms() {
        let token = issue(
            "s3cret",
            Grant {
                sub: "alice".into(),
                rooms: Some(vec!["team-*".into(), "lobby".into()]),
                moderator: true,
                ttl: Duration::from_secs(60),
                issuer: None,
                audience: None,
            },
        )
        .unwrap();
        let access = Access::new(Some("s3cret"), Expect::default());
        let who = access
            .identify(Some(&token), Some("mallory"))
            .unwrap()
            .unwrap();
        assert_eq!((who.user.as_str(), who.moderator), ("alice", true));
        assert!(who.may(&room("team-red")) && who.may(&room("lobby")));
        assert!(!who.may(&room("lobby2")) && !who.may(&room("other")));
        assert_eq!(
            who.check(&room("other")).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(
            who.remaining() <= Duration::from_secs(60) && who.remaining() > Duration::from_secs(50)
        );
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let access = Access::new(Some("s3cret"), Expect::default());
        let grant = Grant {
            sub: "alice".into(),
            rooms: None,
            moderator: false,
            ttl: Duration::from_secs(60),
            issuer: None,
            audience: None,
        };
        let other_key = issue("other", grant).unwrap();
        let expired = token::sign(
            b"s3cret",
            &Claims {
                sub: "alice".into(),
                exp: now_secs() - 10,
                nbf: None,
                rooms: None,
                moderator: false,
                iss: None,
                aud: None,
            },
        );
        let padded = issue(
            "s3cret",
            Grant {
                sub: " alice ".into(),
                rooms: None,
                moderator: false,
                ttl: Duration::from_secs(60),
                issuer: None,
                audience: None,
            },
        );
        assert!(padded.is_err(), "a sub with spaces around it is not signed");
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        for token in [
            None,
            Some("garbage"),
            Some(other_key.as_str()),
            Some(expired.as_str()),
            Some(none),
        ] {
            let err = access.identify(token, Some("alice")).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{token:?}");
        }
    }

    #[test]
    fn an_open_server_takes_the_claimed_user() {
        let access = Access::new(None, Expect::default());
        assert!(access.is_open());
        let who = access.identify(None, Some(" bob ")).unwrap().unwrap();
        assert_eq!(who.user.as_str(), "bob");
        assert!(who.may(&room("anything")));
        assert!(access.identify(None, None).unwrap().is_none());
        assert_eq!(
            access.identify(None, Some("a\u{1}")).unwrap_err().code,
            ErrorCode::InvalidName
        );
    }

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("5y").is_err());
    }
}
