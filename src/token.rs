//! HS256 JSON Web Tokens: the one kind of token parlor reads (auth) and
//! writes (`parlor token`), and nothing else of JWT. Encoding is base64url;
//! the signature is HMAC-SHA256 from RustCrypto, checked in constant time.
//!
//! A token is refused unless its header says `"alg":"HS256"` (so `none` and
//! every other algorithm are out) and has no `crit`, its signature matches,
//! its `exp` is not past, its `nbf`, if any, has come, and its `iss` and
//! `aud` are what the deployment expects, when it expects any. `rooms` that is
//! `null` means no room, as `[]` does: an issuer whose empty list serialises
//! as `null` must not grant every room.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a token says.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// The last second (Unix time) the token is good for.
    pub exp: u64,
    /// The first second it is good for, if not at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Rooms or prefixes ending in `*`; absent: every room.
    #[serde(
        default,
        deserialize_with = "null_is_no_room",
        skip_serializing_if = "Option::is_none"
    )]
    pub rooms: Option<Vec<String>>,
    /// A moderator may delete anyone's messages.
    #[serde(default, rename = "mod", skip_serializing_if = "std::ops::Not::not")]
    pub moderator: bool,
    /// Who issued the token, checked against `--issuer` when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whom the token is for, one name or several, checked against
    /// `--audience` when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: one name or a list of them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, name: &str) -> bool {
        match self {
            Audience::One(one) => one == name,
            Audience::Many(many) => many.iter().any(|n| n == name),
        }
    }
}

/// What a deployment requires of a token beyond its signature and times:
/// an `iss` and an audience in `aud`, when configured.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// `"rooms": null` is no room at all, never every room.
fn null_is_no_room<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Some(
        Option::<Vec<String>>::deserialize(d)?.unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// Extensions the verifier must understand; parlor understands none.
    crit: Option<serde_json::Value>,
}

/// Signs `claims` with `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signed = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, &signed).finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// The claims of a token signed with `secret` and good at `now` (Unix
/// seconds), or why it is not.
pub fn verify(
    secret: &[u8],
    token: &str,
    now: u64,
    expect: &Expect,
) -> Result<Claims, &'static str> {
    let mut parts = token.split('.');
    let (Some(head), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a token is three base64url parts separated by dots");
    };
    let header: Header = decode(head).ok_or("its header is not base64url JSON")?;
    if header.alg != "HS256" || header.crit.is_some() {
        return Err("only HS256 tokens are accepted");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "its signature is not base64url")?;
    let signed = &token[..head.len() + 1 + payload.len()];
    mac(secret, signed)
        .verify_slice(&signature)
        .map_err(|_| "its signature does not match this server's secret")?;
    let claims: Claims = decode(payload).ok_or("its claims need a string sub and a number exp")?;
    if claims.exp < now {
        return Err("it has expired");
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err("it is not good yet (nbf)");
    }
    if expect.issuer.is_some() && claims.iss != expect.issuer {
        return Err("its iss is not the issuer this server accepts (--issuer)");
    }
    if let Some(audience) = &expect.audience {
        if !claims.aud.as_ref().is_some_and(|aud| aud.names(audience)) {
            return Err("its aud does not name this server's audience (--audience)");
        }
    }
    Ok(claims)
}

fn mac(secret: &[u8], signed: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed.as_bytes());
    mac
}

fn decode<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: NOW + 60,
            nbf: None,
            rooms: Some(vec!["team-*".into()]),
            moderator: true,
            iss: None,
            aud: None,
        }
    }

    /// A token with any header and payload, signed with HMAC-SHA256.
    fn forged(header: &str, payload: &str, secret: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = URL_SAFE_NO_PAD.encode(mac(secret, &signed).finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    #[test]
    fn a_signed_token_verifies_to_its_claims() {
        let token = sign(b"secret", &claims());
        assert_eq!(
            verify(b"secret", &token, NOW, &Expect::default()),
            Ok(claims())
        );
        assert_eq!(
            verify(b"secret", &token, NOW + 60, &Expect::default()),
            Ok(claims()),
            "good through its exp second"
        );
        assert!(verify(b"secret", &token, NOW + 61, &Expect::default()).is_err());
        assert!(verify(b"other", &token, NOW, &Expect::default()).is_err());
    }

    #[test]
    fn what_fails_is_refused() {
        let payload = r#"{"sub":"alice","exp":1800000060}"#;
        let refused = [
            forged(r#"{"alg":"HS512"}"#, payload, b"secret"),
            forged(r#"{"alg":"none"}"#, payload, b"secret"),
            forged(r#"{"alg":"HS256","crit":["b64"]}"#, payload, b"secret"),
            forged(r#"{"alg":"HS256"}"#, r#"{"sub":"alice"}"#, b"secret"),
            forged(r#"{"alg":"HS256"}"#, r#"{"exp":1800000060}"#, b"secret"),
            forged(
                r#"{"alg":"HS256"}"#,
                r#"{"sub":"alice","exp":1.8e9}"#,
                b"secret",
            ),
            forged(
                r#"{"alg":"HS256"}"#,
                r#"{"sub":"alice","exp":1800000060,"nbf":1800000001}"#,
                b"secret",
            ),
            format!("{}.", forged(r#"{"alg":"HS256"}"#, payload, b"secret")),
            "garbage".into(),
            "a.b.c".into(),
        ];
        for token in refused {
            assert!(
                verify(b"secret", &token, NOW, &Expect::default()).is_err(),
                "{token}"
            );
        }
        let good = forged(r#"{"alg":"HS256","kid":"ignored"}"#, payload, b"secret");
        assert!(verify(b"secret", &good, NOW, &Expect::default()).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_expected() {
        let expect = Expect {
            issuer: Some("https://id.example".into()),
            audience: Some("parlor".into()),
        };
        let token = |payload: &str| forged(r#"{"alg":"HS256"}"#, payload, b"secret");
        let good = token(
            r#"{"sub":"a","exp":1800000060,"iss":"https://id.example","aud":["x","parlor"]}"#,
        );
        assert!(verify(b"secret", &good, NOW, &expect).is_ok());
        let one =
            token(r#"{"sub":"a","exp":1800000060,"iss":"https://id.example","aud":"parlor"}"#);
        assert!(verify(b"secret", &one, NOW, &expect).is_ok());
        for bad in [
            r#"{"sub":"a","exp":1800000060,"aud":"parlor"}"#,
            r#"{"sub":"a","exp":1800000060,"iss":"https://evil.example","aud":"parlor"}"#,
            r#"{"sub":"a","exp":1800000060,"iss":"https://id.example"}"#,
            r#"{"sub":"a","exp":1800000060,"iss":"https://id.example","aud":["other"]}"#,
        ] {
            assert!(
                verify(b"secret", &token(bad), NOW, &expect).is_err(),
                "{bad}"
            );
        }
        assert!(verify(
            b"secret",
            &token(r#"{"sub":"a","exp":1800000060}"#),
            NOW,
            &Expect::default()
        )
        .is_ok());
    }

    #[test]
    fn rooms_null_is_no_room_and_absent_is_every_room() {
        let null = forged(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060,"rooms":null}"#,
            b"s",
        );
        assert_eq!(
            verify(b"s", &null, NOW, &Expect::default()).unwrap().rooms,
            Some(vec![])
        );
        let absent = forged(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060}"#,
            b"s",
        );
        assert_eq!(
            verify(b"s", &absent, NOW, &Expect::default())
                .unwrap()
                .rooms,
            None
        );
    }
}
