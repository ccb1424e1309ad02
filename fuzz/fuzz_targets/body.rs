//! The bodies of `POST /rooms/{room}/messages` and `PATCH
//! /rooms/{room}/messages/{id}`. parlor reads them in `room_api::text_body`,
//! a private async function over a hyper request, so this target runs the
//! same decision on the raw body (JSON when declared or when it opens with
//! `{`, with the same fields and `deny_unknown_fields`; otherwise the text
//! itself) and then the pure public functions the handlers pass the body's
//! fields through: `User::parse`, `Text::parse`, `Ref::parse`, and for the
//! paths of edits and reactions `room_api::message_id` and
//! `room_api::emoji`. The first byte picks the content type. Nothing
//! panics, and what each accepts follows PROTOCOL.md's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::fields::{Ref, Text, User};
use parlor::room_api::{emoji, message_id};
use serde::Deserialize;

const MAX_TEXT: usize = 4096;

/// The shape of `room_api::TextBody`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TextBody {
    user: Option<String>,
    text: String,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

fn check_user(raw: &str) {
    if let Ok(user) = User::parse(raw) {
        let name = user.as_str();
        assert_eq!(name, raw.trim());
        assert!((1..=64).contains(&name.chars().count()));
        assert!(!name.chars().any(char::is_control));
    }
}

fn check_text(raw: &str) {
    if let Ok(text) = Text::parse(raw.to_owned(), MAX_TEXT) {
        assert_eq!(text.as_str(), raw);
        assert!(raw.len() <= MAX_TEXT && !raw.trim().is_empty());
    } else {
        assert!(raw.len() > MAX_TEXT || raw.trim().is_empty());
    }
}

fn check_ref(raw: &str) {
    let valid = (1..=64).contains(&raw.len()) && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
    assert_eq!(Ref::parse(raw).is_ok(), valid, "{raw:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    // application/json, or text/plain, form or no content type.
    let declared_json = kind % 2 == 0;
    if declared_json || body.trim_start().starts_with('{') {
        if let Ok(parsed) = serde_json::from_str::<TextBody>(body) {
            if let Some(user) = &parsed.user {
                check_user(user);
            }
            check_text(&parsed.text);
            if let Some(reference) = &parsed.reference {
                check_ref(reference);
            }
        }
    } else {
        check_text(body);
    }

    // The same bytes as a ?user= or ?ref= and as the parts of a path.
    check_user(body);
    check_ref(body);
    if let Ok(id) = message_id(body) {
        assert!(id >= 1);
        assert_eq!(body.parse::<u64>().ok(), Some(id));
    }
    if let Ok(emoji) = emoji(body) {
        let key = emoji.as_str();
        assert!((1..=32).contains(&key.len()));
        assert!(!key.chars().any(|c| c.is_whitespace() || c.is_control()));
    }
});
