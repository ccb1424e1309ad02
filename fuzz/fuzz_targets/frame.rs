//! The WebSocket frame decoder (`parlor::protocol::decode`) on arbitrary
//! text: it never panics, what it accepts follows PROTOCOL.md's rules (as
//! tests/decoder_fuzz.rs checks), a JSON frame decodes the same with or
//! without a default room, and plain text is a `send` of the line to the
//! default room, refused without one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::fields::Room;
use parlor::protocol::{decode, Limits, Request};

const MAX_TEXT: usize = 4096;

fn limits() -> Limits {
    Limits {
        max_text_bytes: MAX_TEXT,
        max_page: 1000,
        default_page: 50,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    let limits = limits();
    let room = Room::parse("general").unwrap();
    let with_room = decode(frame, Some(&room), &limits);
    let without_room = decode(frame, None, &limits);

    if frame.trim_start().starts_with('{') {
        assert_eq!(
            with_room, without_room,
            "a JSON frame ignores the default room"
        );
    } else {
        assert!(without_room.is_err(), "plain text needs a default room");
        if let Ok(decoded) = &with_room {
            let line = frame
                .strip_suffix('\n')
                .map_or(frame, |t| t.strip_suffix('\r').unwrap_or(t));
            match &decoded.request {
                Request::Send { room: to, text } => {
                    assert_eq!(to, &room);
                    assert_eq!(text.as_str(), line);
                }
                other => panic!("plain text decoded as {other:?}"),
            }
            assert!(decoded.reference.is_none());
        }
    }

    let Ok(decoded) = with_room else {
        return;
    };
    if let Some(reference) = &decoded.reference {
        let r = reference.as_str();
        assert!((1..=64).contains(&r.len()));
        assert!(r.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }
    let request = &decoded.request;
    assert!(Room::parse(request.room().as_str()).is_ok());
    match request {
        Request::Send { text, .. } | Request::Edit { text, .. } => {
            assert!(text.as_str().len() <= MAX_TEXT);
            assert!(!text.as_str().trim().is_empty());
        }
        Request::Delete { id, .. } => assert!(*id >= 1),
        Request::React { id, emoji, .. } => {
            assert!(*id >= 1);
            assert!((1..=32).contains(&emoji.as_str().len()));
            assert!(!emoji
                .as_str()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()));
        }
        Request::History { limit, before, .. } => {
            assert!((1..=1000).contains(limit));
            assert_ne!(*before, Some(0));
        }
        Request::Join { .. }
        | Request::Leave { .. }
        | Request::Typing { .. }
        | Request::Presence { .. }
        | Request::Read { .. } => {}
    }
});
