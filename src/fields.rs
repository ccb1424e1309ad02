//! Validated protocol fields: room names, user names, message text and client refs.
//!
//! Every value that comes from a client passes through one of these constructors
//! at the edge (WebSocket frame, query string or HTTP body), so the rest of the
//! server only ever holds values that already follow the rules of PROTOCOL.md.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorCode};

const NAME_MAX_CHARS: usize = 64;
const REF_MAX_BYTES: usize = 64;
const EMOJI_MAX_BYTES: usize = 32;

/// A room name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`, case-sensitive.
///
/// Cheap to clone, because every member, delivery and store key holds one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(Arc<str>);

impl Room {
    pub fn parse(raw: &str) -> Result<Room, Error> {
        let valid = !raw.is_empty()
            && raw.len() <= NAME_MAX_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if valid {
            Ok(Room(raw.into()))
        } else {
            Err(Error::new(
                ErrorCode::InvalidName,
                "room must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A user's display name: 1 to 64 characters of any Unicode except control
/// and invisible characters, with surrounding whitespace trimmed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct User(Arc<str>);

impl User {
    pub fn parse(raw: &str) -> Result<User, Error> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > NAME_MAX_CHARS || has_unseen(trimmed) {
            return Err(Error::new(
                ErrorCode::InvalidName,
                "user must be 1 to 64 characters, without control or invisible characters",
            ));
        }
        Ok(User(trimmed.into()))
    }

    /// A name for a connection that did not give one: `guest-` and four hex digits.
    pub fn guest() -> User {
        User(format!("guest-{:04x}", fastrand::u16(..)).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Whether `name` holds a control character or one that changes how it
/// reads without being seen. The one exception is a zero-width joiner
/// between two pictographs, which is how emoji such as 👩‍💻 are written.
fn has_unseen(name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    chars.iter().enumerate().any(|(i, &c)| {
        let in_emoji = c == '\u{200d}'
            && i > 0
            && chars.get(i + 1).is_some_and(|&next| is_pictograph(next))
            && is_pictograph(chars[i - 1]);
        c.is_control() || (is_invisible(c) && !in_emoji)
    })
}

/// Characters of the emoji blocks (and the variation selector that asks for
/// emoji presentation), the ones a zero-width joiner may join.
fn is_pictograph(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27bf}' | '\u{fe0f}' | '\u{1f000}'..='\u{1faff}')
}

/// Characters that change how a name reads without being seen: Unicode's
/// format characters (bidirectional overrides, zero-width joiners and
/// spaces, the byte order mark, the soft hyphen, …) and the line and
/// paragraph separators. A name holding one could pass for another.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0001}' | '\u{e0020}'..='\u{e007f}')
}

/// Message text: at most `max_bytes` of UTF-8 with at least one non-whitespace
/// character, kept exactly as sent (no trimming: what was typed is what is stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: String, max_bytes: usize) -> Result<Text, Error> {
        if raw.len() > max_bytes {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("text is {} bytes; the limit is {max_bytes}", raw.len()),
            ));
        }
        if raw.trim().is_empty() {
            return Err(Error::new(ErrorCode::BadRequest, "text is empty"));
        }
        Ok(Text(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's token for a request, 1 to 64 printable ASCII characters; it makes
/// a `send` idempotent and is echoed in the answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ref(String);

impl Ref {
    pub fn parse(raw: &str) -> Result<Ref, Error> {
        let valid = !raw.is_empty()
            && raw.len() <= REF_MAX_BYTES
            && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if valid {
            Ok(Ref(raw.to_owned()))
        } else {
            Err(Error::new(
                ErrorCode::BadRequest,
                "ref must be 1 to 64 printable ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction's key: 1 to 32 bytes of UTF-8 without whitespace or control
/// characters (any key, not only an emoji).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Emoji(String);

impl Emoji {
    pub fn parse(raw: &str) -> Result<Emoji, Error> {
        let valid = !raw.is_empty()
            && raw.len() <= EMOJI_MAX_BYTES
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(Emoji(raw.to_owned()))
        } else {
            Err(Error::bad_request(
                "emoji must be 1 to 32 bytes of UTF-8 without whitespace or control characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_rules() {
        for ok in ["general", "a", "A.b-c_9", &"x".repeat(64)] {
            assert_eq!(Room::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "with space", "ümlaut", "a/b", &"x".repeat(65), "{tag}"] {
            let err = Room::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidName, "{bad:?}");
        }
    }

    #[test]
    fn user_names_are_trimmed_and_refuse_control_and_invisible_characters() {
        assert_eq!(User::parse("  alice ").unwrap().as_str(), "alice");
        assert_eq!(User::parse("Zoë 🎉").unwrap().as_str(), "Zoë 🎉");
        assert_eq!(
            User::parse("dev 👩\u{200d}💻").unwrap().as_str(),
            "dev 👩\u{200d}💻"
        );
        assert_eq!(
            User::parse(&"é".repeat(64))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            64
        );
        let unseen = [
            "alice\u{202e}nimda",
            "al\u{200d}ice",
            "al\u{200b}ice",
            "para\u{2028}graph",
            "\u{feff}bom",
            "👩\u{200d}",
        ];
        for bad in ["", "   ", "a\u{7}b", "line\nbreak", &"é".repeat(65)]
            .into_iter()
            .chain(unseen)
        {
            assert_eq!(
                User::parse(bad).unwrap_err().code,
                ErrorCode::InvalidName,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn text_is_kept_exactly_and_bounded() {
        assert_eq!(Text::parse("  hi  ".into(), 10).unwrap().as_str(), "  hi  ");
        assert_eq!(Text::parse("x".repeat(10), 10).unwrap().as_str().len(), 10);
        assert_eq!(
            Text::parse("x".repeat(11), 10).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert_eq!(
            Text::parse(" \n\t".into(), 10).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            Text::parse(String::new(), 10).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn emoji_are_short_and_have_no_blanks() {
        for ok in ["👍", "+1", "🇫🇷", "ok_hand", &"x".repeat(32)] {
            assert_eq!(Emoji::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "two words",
            "tab\t",
            "\u{1}",
            &"x".repeat(33),
            &"👍".repeat(9),
        ] {
            assert_eq!(
                Emoji::parse(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refs_are_printable_ascii() {
        assert!(Ref::parse("c-1").is_ok());
        assert!(Ref::parse("a b~").is_ok());
        for bad in ["", "tab\there", "é", &"r".repeat(65)] {
            assert_eq!(
                Ref::parse(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad:?}"
            );
        }
    }
}
