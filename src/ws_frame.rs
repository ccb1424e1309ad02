//! WebSocket framing of what the server writes (RFC 6455, section 5.2):
//! a server's frames are unmasked, so a text frame is a header of 2 to 10
//! bytes before the payload. parlor frames by hand what it writes, so that
//! one message's payload, encoded once, goes to every member's socket as it
//! is, without a copy per member; tungstenite reads the client's frames.

/// A text frame's header, and how many of its bytes are used.
pub type Header = ([u8; HEADER_ROOM], usize);

const FIN_TEXT: u8 = 0x81;
const FIN_CLOSE: u8 = 0x88;
const FIN_PING: u8 = 0x89;
/// The opcode of a close frame, in the low bits of a frame's first byte.
const CLOSE: u8 = 0x8;
/// Control frames carry at most this many payload bytes.
const CONTROL_MAX: usize = 125;

/// Room for the longest header, left free in front of a frame's text.
pub const HEADER_ROOM: usize = 10;

/// How long the header at the start of `frame` is.
pub fn header_len(frame: &[u8]) -> usize {
    match frame.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// The header of a final text frame of `len` payload bytes.
pub fn text_header(len: usize) -> Header {
    let mut head = [0u8; HEADER_ROOM];
    head[0] = FIN_TEXT;
    let used = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, used)
}

/// An empty ping.
pub const PING: [u8; 2] = [FIN_PING, 0];

/// A close frame with `code` and `reason` (cut to what a control frame holds).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(CONTROL_MAX - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut frame = Vec::with_capacity(4 + cut);
    frame.push(FIN_CLOSE);
    frame.push((2 + cut) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&reason.as_bytes()[..cut]);
    frame
}

/// What the server's WebSocket library wrote while reading: its replies to
/// the client's control frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Control frames to write as they are (pongs).
    Control,
    /// A close frame answering the client's (the connection's reader
    /// answers that itself, with the outbox's close).
    Close,
}

/// Reads what the library wrote: whole, unmasked control frames. `None` if
/// it is anything else (then the connection is not to be trusted on).
pub fn replies(mut bytes: &[u8]) -> Option<Reply> {
    let mut reply = Reply::Control;
    while !bytes.is_empty() {
        let (&first, rest) = bytes.split_first()?;
        let (&second, rest) = rest.split_first()?;
        let len = usize::from(second);
        if first & 0x08 == 0 || len > CONTROL_MAX || rest.len() < len {
            return None;
        }
        if first & 0x0f == CLOSE {
            reply = Reply::Close;
        }
        bytes = &rest[len..];
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use async_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

    fn encoded(frame: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.format(&mut out).expect("formats into a Vec");
        out
    }

    #[test]
    fn text_frames_are_framed_as_tungstenite_frames_them() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            let (head, used) = text_header(len);
            let mut ours = head[..used].to_vec();
            ours.extend_from_slice(payload.as_bytes());
            let theirs = encoded(Frame::message(payload, OpCode::Data(Data::Text), true));
            assert_eq!(ours, theirs, "a text frame of {len} bytes");
        }
    }

    #[test]
    fn close_and_ping_frames_are_framed_as_tungstenite_frames_them() {
        let close_frame = |code: u16, reason: &str| {
            Frame::close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
        };
        assert_eq!(close(1013, "slow"), encoded(close_frame(1013, "slow")));
        assert_eq!(close(1000, ""), encoded(close_frame(1000, "")));
        assert_eq!(PING.to_vec(), encoded(Frame::ping(Vec::new())));
        let long = "é".repeat(100);
        let cut = close(1008, &long);
        assert!(
            cut.len() <= 2 + CONTROL_MAX,
            "a control frame holds 125 bytes"
        );
        assert!(std::str::from_utf8(&cut[4..]).is_ok(), "cut on a character");
    }

    #[test]
    fn replies_tell_pongs_from_a_close() {
        let pong = encoded(Frame::pong(b"abc".to_vec()));
        assert_eq!(replies(&pong), Some(Reply::Control));
        let mut both = pong.clone();
        both.extend(close(1001, "bye"));
        assert_eq!(replies(&both), Some(Reply::Close));
        assert_eq!(replies(&encoded(Frame::close(None))), Some(Reply::Close));
        assert_eq!(replies(&pong[..pong.len() - 1]), None, "a cut frame");
        let text = encoded(Frame::message("hi", OpCode::Data(Data::Text), true));
        assert_eq!(replies(&text), None, "not a control frame");
    }
}
