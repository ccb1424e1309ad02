//! The errors a client can be told about, with their wire codes and HTTP statuses.
//!
//! One type serves WebSocket `error` frames and HTTP error bodies alike, so a
//! rule broken over either path reads the same to the user.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

/// What went wrong, as PROTOCOL.md names it. Each code tells the client what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or incomplete request: fix the request.
    BadRequest,
    /// A room or user name breaks the naming rules: fix the name.
    InvalidName,
    /// Text or body over the size limit: send less.
    TooLarge,
    /// `leave` or `typing` for a room the connection has not joined: join first.
    NotJoined,
    /// Too many requests: slow down.
    RateLimited,
    /// Auth rules refuse this room.
    Forbidden,
    /// No valid credentials.
    Unauthorized,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The message store cannot be reached in time: retry, with the same `ref`.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidName | ErrorCode::NotJoined => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// An error for the client: a code and a short human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorCode::BadRequest, message)
    }

    /// The HTTP body for this error: `{"error":{"code":"...","message":"..."}}`.
    pub fn http_body(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: ErrorCode,
            message: &'a str,
        }
        serde_json::to_string(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .expect("an error body always serializes")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::InvalidName,
            ErrorCode::TooLarge,
            ErrorCode::NotJoined,
            ErrorCode::RateLimited,
            ErrorCode::Forbidden,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn http_body_has_code_and_message() {
        let body = Error::new(ErrorCode::TooLarge, "too \"big\"").http_body();
        assert_eq!(
            body,
            r#"{"error":{"code":"too_large","message":"too \"big\""}}"#
        );
    }
}
