//! Numbers picked out of server frames without parsing them as JSON, which
//! would cost the load generators more than the servers they measure;
//! shared by the examples that read frames (included with `#[path]`).

/// The digits right after `key` in `text`, as a number.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}
