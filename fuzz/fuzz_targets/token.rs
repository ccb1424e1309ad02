//! The token reader (`parlor::token::verify`) with a fixed secret, on
//! arbitrary input as the token: nothing panics, and a token it accepts is
//! good now and says what `Expect` requires. When the input is JSON claims,
//! they are signed with `parlor::token::sign` and must verify back to the
//! same claims exactly when their times and `iss`/`aud` allow, and never
//! under another secret or with a changed signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::token::{sign, verify, Audience, Claims, Expect};

const SECRET: &[u8] = b"fuzzing-secret";
const NOW: u64 = 1_800_000_000;

fn strict() -> Expect {
    Expect {
        issuer: Some("parlor".into()),
        audience: Some("chat".into()),
    }
}

fn good_now(claims: &Claims) -> bool {
    claims.exp >= NOW && claims.nbf.is_none_or(|nbf| nbf <= NOW)
}

fn meets_strict(claims: &Claims) -> bool {
    claims.iss.as_deref() == Some("parlor")
        && match &claims.aud {
            Some(Audience::One(one)) => one == "chat",
            Some(Audience::Many(many)) => many.iter().any(|n| n == "chat"),
            None => false,
        }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        for expect in [Expect::default(), strict()] {
            if let Ok(claims) = verify(SECRET, token, NOW, &expect) {
                assert!(good_now(&claims));
                if expect.issuer.is_some() {
                    assert!(meets_strict(&claims));
                }
                // Only this secret signs it.
                assert!(verify(b"another secret", token, NOW, &expect).is_err());
            }
        }
    }

    let Ok(claims) = serde_json::from_slice::<Claims>(data) else {
        return;
    };
    let token = sign(SECRET, &claims);
    match verify(SECRET, &token, NOW, &Expect::default()) {
        Ok(back) => {
            assert!(good_now(&claims));
            assert_eq!(back, claims);
        }
        Err(why) => assert!(!good_now(&claims), "{why}"),
    }
    let strictly = verify(SECRET, &token, NOW, &strict());
    assert_eq!(strictly.is_ok(), good_now(&claims) && meets_strict(&claims));
    assert!(verify(b"another secret", &token, NOW, &Expect::default()).is_err());
    // A signature with its last character changed is refused.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(verify(SECRET, &forged, NOW, &Expect::default()).is_err());
});
