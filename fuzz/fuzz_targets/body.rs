//! The bodies of `POST /rooms/{room}/messages` and `PATCH
//! /rooms/{room}/messages/{id}`, through the functions parlor reads them
//! with: `room_api::declares_json` on the content type (the first byte picks
//! one) and `room_api::parse_text_body` on the bytes (JSON when declared or
//! when it opens with `{`, otherwise the text itself), then the pure public
//! functions the handlers pass the body's fields through: `User::parse`, `Text::parse`, `Ref::parse`, and for the
//! paths of edits and reactions `room_api::message_id` and
//! `room_api::emoji`. Nothing panics, and what each accepts follows
//! PROTOCOL.md's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::fields::{Ref, Text, User};
use parlor::room_api::{declares_json, emoji, message_id, parse_text_body};

const MAX_TEXT: usize = 4096;

/// Content types a client may send, the first byte of the input picking one.
const TYPES: [Option<&str>; 6] = [
    Some("application/json"),
    Some("text/plain; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    None,
    Some("Application/JSON ; charset=utf-8"),
    Some("image/png"),
];

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
    let content_type = TYPES[usize::from(kind) % TYPES.len()];
    let Ok(declared_json) = declares_json(content_type) else {
        assert_eq!(content_type, Some("image/png"));
        return;
    };
    let parsed = parse_text_body(declared_json, body);
    let Ok(body) = std::str::from_utf8(body) else {
        assert!(parsed.is_err(), "a body that is not UTF-8 was taken");
        return;
    };
    match parsed {
        Ok(parsed) => {
            if !declared_json && !body.trim_start().starts_with('{') {
                assert_eq!(parsed.text, body, "a text body is the text itself");
            }
            if let Some(user) = &parsed.user {
                check_user(user);
            }
            check_text(&parsed.text);
            if let Some(reference) = &parsed.reference {
                check_ref(reference);
            }
        }
        Err(_) => assert!(declared_json || body.trim_start().starts_with('{')),
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
