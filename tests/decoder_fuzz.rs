//! Property tests of everything that parses what a client sends: the frame
//! decoder, the field validators, the query and path parsers, the token
//! reader and the origin policy. Arbitrary input never panics, and whatever
//! is accepted follows PROTOCOL.md's rules. The case count is bounded so
//! that `make test` stays quick; `make fuzz-props` runs them for longer
//! (`PROPTEST_CASES`), and `make fuzz` runs the coverage-guided targets of
//! `fuzz/` on the same parsers; a failure proptest finds is saved in
//! `tests/decoder_fuzz.proptest-regressions`, to be kept in the repository
//! and run first by every later run.

use parlor::fields::{Ref, Room, Text, User};
use parlor::origin::{Act, Origins};
use parlor::protocol::{decode, Limits, Request};
use parlor::query::{path_segment, Query};
use parlor::token::{self, Expect};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// 2,000 runs of each property, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

fn limits() -> Limits {
    Limits {
        max_text_bytes: 4096,
        max_page: 1000,
        default_page: 50,
    }
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,8}", inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Frames that look like requests: a known type and a random mix of the
/// protocol's field names with random values.
fn request_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("send"),
        Just("edit"),
        Just("delete"),
        Just("react"),
        Just("unreact"),
        Just("read"),
        Just("history"),
        Just("typing"),
        Just("presence"),
        Just("other"),
    ];
    let field = prop_oneof![
        Just("room"),
        Just("text"),
        Just("ref"),
        Just("since"),
        Just("epoch"),
        Just("history"),
        Just("before"),
        Just("limit"),
        Just("id"),
        Just("emoji"),
        Just("extra"),
    ];
    (kind, prop::collection::vec((field, json_value()), 0..6)).prop_map(|(kind, fields)| {
        let mut object = Map::new();
        object.insert("type".into(), json!(kind));
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        Value::Object(object).to_string()
    })
}

fn check_accepted(frame: &str) {
    let room = Room::parse("general").unwrap();
    if let Ok(decoded) = decode(frame, Some(&room), &limits()) {
        if let Some(reference) = &decoded.reference {
            assert!((1..=64).contains(&reference.as_str().len()));
        }
        match decoded.request {
            Request::Send { room, text } | Request::Edit { room, text, .. } => {
                assert!(Room::parse(room.as_str()).is_ok());
                assert!(text.as_str().len() <= 4096 && !text.as_str().trim().is_empty());
            }
            Request::Delete { id, .. } => assert!(id >= 1),
            Request::React { id, emoji, .. } => {
                assert!(id >= 1);
                assert!((1..=32).contains(&emoji.as_str().len()));
                assert!(!emoji
                    .as_str()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control()));
            }
            Request::History { limit, .. } => assert!((1..=1000).contains(&limit)),
            Request::Join { room, .. }
            | Request::Leave { room }
            | Request::Typing { room }
            | Request::Presence { room }
            | Request::Read { room, .. } => assert!(Room::parse(room.as_str()).is_ok()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(frame in ".{0,300}") {
        check_accepted(&frame);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        check_accepted(&value.to_string());
    }

    #[test]
    fn request_like_frames_are_decoded_or_refused_cleanly(frame in request_like()) {
        check_accepted(&frame);
    }

    #[test]
    fn validators_accept_only_what_the_rules_allow(raw in ".{0,100}") {
        if let Ok(room) = Room::parse(&raw) {
            prop_assert!((1..=64).contains(&room.as_str().len()));
            prop_assert!(room.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
        }
        if let Ok(user) = User::parse(&raw) {
            prop_assert!((1..=64).contains(&user.as_str().chars().count()));
            prop_assert!(!user.as_str().chars().any(char::is_control));
            prop_assert_eq!(user.as_str(), raw.trim());
        }
        if let Ok(reference) = Ref::parse(&raw) {
            prop_assert!(reference.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
        if let Ok(text) = Text::parse(raw.clone(), 50) {
            prop_assert_eq!(text.as_str(), raw.as_str());
            prop_assert!(text.as_str().len() <= 50);
        }
    }

    #[test]
    fn queries_and_paths_parse_or_refuse_cleanly(raw in "[a-z=&%+0-9A-F.~-]{0,80}|.{0,80}") {
        if let Ok(query) = Query::parse(Some(&raw)) {
            for name in ["since", "before", "limit", "history"] {
                let _ = query.integer(name);
            }
        }
        let _ = path_segment(&raw);
    }

    #[test]
    fn tokens_of_any_shape_are_refused_unless_signed(
        head in ".{0,40}", body in ".{0,80}", sig in "[A-Za-z0-9_-]{0,60}",
    ) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for raw in [format!("{head}.{body}.{sig}"), format!("{}.{}.{sig}", b64.encode(&head), b64.encode(&body))] {
            prop_assert!(token::verify(b"secret", &raw, 1_800_000_000, &Expect::default()).is_err());
        }
    }

    #[test]
    fn origins_of_any_shape_are_judged_without_panic(origin in proptest::collection::vec(any::<u8>(), 0..60), site in ".{0,20}") {
        let strict = Origins::new(&[], Some(&["https://good.example".to_owned()]), 8080).unwrap();
        let open = Origins::new(&[], None, 8080).unwrap();
        for act in [Act::Connect, Act::Change] {
            let judged = strict.check(Some(&origin), Some(site.as_bytes()), act);
            if judged.is_ok() {
                let shown = String::from_utf8_lossy(&origin);
                prop_assert!(shown.to_ascii_lowercase().starts_with("https://good.example") || shown.starts_with("http://"), "{shown}");
            }
            let _ = open.check(Some(&origin), Some(site.as_bytes()), act);
        }
        let _ = strict.check_host(std::str::from_utf8(&origin).ok());
    }
}
