//! The query-string parser (`parlor::query::Query`) and the path-segment
//! decoder (`parlor::query::path_segment`) on arbitrary text, with the page
//! rules a query feeds (`protocol::page_size`, `protocol::before_bound`):
//! nothing panics, a number that parses is the one given, text without
//! escapes decodes to itself, and what the page rules accept is in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::{before_bound, page_size, Limits};
use parlor::query::{path_segment, Query};

const NAMES: [&str; 7] = [
    "since", "before", "limit", "history", "epoch", "user", "ref",
];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits {
        max_text_bytes: 4096,
        max_page: 1000,
        default_page: 50,
    };

    if let Ok(query) = Query::parse(Some(raw)) {
        for name in NAMES {
            let value = query.get(name);
            match query.integer(name) {
                Ok(Some(n)) => assert_eq!(value.and_then(|v| v.parse().ok()), Some(n)),
                Ok(None) => assert!(value.is_none()),
                Err(_) => assert!(value.is_some_and(|v| v.parse::<u64>().is_err())),
            }
            if let Ok(n) = query.integer(name) {
                if let Ok(size) = page_size(n, 1, &limits, name) {
                    assert!((1..=1000).contains(&size));
                }
                if let Ok(size) = page_size(n, 0, &limits, name) {
                    assert!(size <= 1000);
                }
                if let Ok(bound) = before_bound(n) {
                    assert_ne!(bound, Some(0));
                }
            }
        }
        // One pair with nothing to decode is found under its own name.
        if !raw.is_empty() && !raw.contains(['&', '%', '+']) {
            let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
            assert_eq!(query.get(name), Some(value));
        }
    } else {
        // Only an escape (bad UTF-8 once decoded) or a repeated name is refused.
        assert!(raw.contains('%') || raw.contains('&'), "{raw:?} refused");
    }

    match path_segment(raw) {
        Ok(segment) => {
            if !raw.contains('%') {
                assert_eq!(segment, raw);
            }
        }
        Err(_) => assert!(raw.contains('%')),
    }
});
