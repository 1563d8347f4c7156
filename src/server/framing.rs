//! The transport's first line of defence: splits the client's byte stream into messages, checks
//! each is a JSON-RPC message the protocol layer accepts, and turns anything else into an error
//! answer instead of the end of the session.
//!
//! tower-lsp-server's own codec stops reading after its first decode error, so one malformed
//! message from an editor (or a plugin) would end the server. Here a message that cannot be used
//! becomes a JSON-RPC error (parse error -32700 with `id: null` when its JSON cannot be read,
//! invalid request -32600 with its id when it has one), and reading resumes at the next
//! `Content-Length` header. Header names are matched without regard to case; unknown headers
//! are ignored.
//!
//! Invariants: every byte pushed is either part of a message handed on, part of a message
//! answered with an error, or skipped while looking for the next header (and then reported
//! once); nothing here allocates more than `MAX_MESSAGE_BYTES` for one message.

use serde::Deserialize;
use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::{Request, Response};

/// The largest message accepted (an editor sends whole documents in `didOpen`).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Headers longer than this without their blank line are not headers.
const MAX_HEADER_BYTES: usize = 8 << 10;

/// One step of the input stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A well-formed message body, to hand to the protocol layer.
    Message(Vec<u8>),
    /// A message that cannot be used: the error response to send, and why (for the log).
    Invalid { response: Value, reason: String },
}

/// Splits bytes into frames; feed it with `push`, drain it with `next_frame`.
#[derive(Default)]
pub struct Deframer {
    buffer: Vec<u8>,
    /// Bytes skipped while looking for a header, not yet reported.
    skipped: usize,
    /// How much of the current message's body is known to hold no header name, so a body
    /// that arrives in many reads is searched once.
    body_scanned: usize,
}

impl Deframer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a frame.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<Frame> {
        // Resynchronise: the stream must continue with a header line.
        let start = match find_header_start(&self.buffer) {
            Some(start) => start,
            None => {
                // Keep a tail that may be the beginning of a header split across reads.
                let drop = self.buffer.len() - partial_header_suffix(&self.buffer);
                if drop > 0 && !self.buffer[..drop].iter().all(u8::is_ascii_whitespace) {
                    self.skipped += drop;
                }
                self.buffer.drain(..drop);
                if self.skipped > 0 {
                    let skipped = std::mem::take(&mut self.skipped);
                    return Some(invalid(Value::Null, -32700, format!("{skipped} bytes that are not a message (no Content-Length header) were skipped")));
                }
                return None;
            }
        };
        if start > 0 {
            if !self.buffer[..start].iter().all(u8::is_ascii_whitespace) {
                self.skipped += start;
            }
            self.buffer.drain(..start);
        }
        if self.skipped > 0 {
            let skipped = std::mem::take(&mut self.skipped);
            return Some(invalid(Value::Null, -32700, format!("{skipped} bytes that are not a message (no Content-Length header) were skipped")));
        }
        let Some(header_end) = header_block_end(&self.buffer) else {
            if self.buffer.len() > MAX_HEADER_BYTES {
                self.drop_one_byte();
                return Some(invalid(Value::Null, -32700, "a header without its blank line".to_string()));
            }
            return None;
        };
        let separator = if self.buffer[header_end..].starts_with(b"\r\n\r\n") { 4 } else { 2 };
        let length = match content_length(&self.buffer[..header_end]) {
            Ok(length) => length,
            Err(reason) => {
                self.drop_one_byte();
                return Some(invalid(Value::Null, -32700, reason));
            }
        };
        let body_start = header_end + separator;
        // A header block inside the body means the length was wrong and the next message
        // has begun: the body ends there. (Raw line breaks cannot be inside a JSON string,
        // so a valid body never holds a header block.) The search looks past the claimed
        // length, so a length too short for its body still finds a header cut by it.
        let (found, scanned) = find_complete_header(&self.buffer[body_start..], self.body_scanned);
        let cut = found.filter(|&at| at < length);
        if cut.is_none() && self.buffer.len() < body_start + length {
            self.body_scanned = scanned;
            return None;
        }
        self.body_scanned = 0;
        let body_len = cut.unwrap_or(length);
        let body: Vec<u8> = self.buffer[body_start..body_start + body_len].to_vec();
        self.buffer.drain(..body_start + body_len);
        // A body cut short by the next header that is still a whole message goes on: the
        // length was wrong, the message is not.
        Some(match check_body(&body) {
            Ok(normalized) => Frame::Message(normalized),
            Err(frame) => frame,
        })
    }

    /// Moves past a header that cannot be used, so the search finds the next one.
    fn drop_one_byte(&mut self) {
        self.buffer.drain(..1);
    }
}

fn invalid(id: Value, code: i64, reason: String) -> Frame {
    let message = match code {
        -32700 => format!("parse error: {reason}"),
        _ => format!("invalid request: {reason}"),
    };
    Frame::Invalid { response: json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}), reason }
}

/// The body as the protocol layer gets it, if it is a message tower-lsp-server takes (a
/// request, a notification or a response to one of the server's requests), else the error to
/// answer. The body is written anew from the parsed value, so what was checked is what goes on
/// (a repeated key, which a JSON value keeps once, would make the protocol layer's own decoder
/// fail and end its read loop).
fn check_body(body: &[u8]) -> Result<Vec<u8>, Frame> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return Err(invalid(Value::Null, -32700, format!("the body is not JSON: {err}"))),
    };
    if Request::deserialize(&value).is_ok() || Response::deserialize(&value).is_ok() {
        return serde_json::to_vec(&value).map_err(|err| invalid(Value::Null, -32700, format!("the body cannot be written again: {err}")));
    }
    // Answer with the message's id when it has a usable one.
    let id = match value.get("id") {
        Some(Value::String(id)) => Value::String(id.clone()),
        Some(Value::Number(number)) if number.as_i64().is_some() => Value::Number(number.clone()),
        _ => Value::Null,
    };
    let what = match &value {
        Value::Array(_) => "batches are not supported".to_string(),
        Value::Object(object) if object.get("jsonrpc") != Some(&json!("2.0")) => "`jsonrpc` must be \"2.0\"".to_string(),
        Value::Object(object) if object.get("id").is_some_and(|id| !id.is_string() && !id.is_i64() && !id.is_null()) => {
            "`id` must be an integer or a string".to_string()
        }
        Value::Object(object) if object.get("method").is_some_and(|method| !method.is_string()) => "`method` must be a string".to_string(),
        Value::Object(_) => "not a request, a notification or a response".to_string(),
        _ => format!("a message must be a JSON object, got {}", kind(&value)),
    };
    Err(invalid(id, -32600, what))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body length from the header block (names in any case; unknown headers ignored).
fn content_length(headers: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(headers).map_err(|_| "headers that are not text".to_string())?;
    let mut length = None;
    for line in text.split('\n').map(|line| line.trim_end_matches('\r')) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line without a colon: {:?}", truncate(line)));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            let parsed: usize = value.parse().map_err(|_| format!("Content-Length {:?} is not a number", truncate(value)))?;
            if parsed > MAX_MESSAGE_BYTES {
                return Err(format!("Content-Length {parsed} is larger than the limit of {MAX_MESSAGE_BYTES} bytes"));
            }
            length = Some(parsed);
        }
    }
    length.ok_or_else(|| "a header without Content-Length".to_string())
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Where the header block ends: the earlier of a blank line in CRLF or in bare LF.
fn header_block_end(buffer: &[u8]) -> Option<usize> {
    match (find(buffer, b"\r\n\r\n"), find(buffer, b"\n\n")) {
        (Some(crlf), Some(lf)) => Some(crlf.min(lf)),
        (crlf, lf) => crlf.or(lf),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

const HEADER_NAMES: [&[u8]; 2] = [b"content-length", b"content-type"];

fn header_name_at(buffer: &[u8], at: usize) -> bool {
    HEADER_NAMES.iter().any(|name| buffer.len() >= at + name.len() && buffer[at..at + name.len()].eq_ignore_ascii_case(name))
}

/// Where the next header block starts: a `Content-Length` or `Content-Type` header name, any case.
fn find_header_start(buffer: &[u8]) -> Option<usize> {
    (0..buffer.len()).find(|&at| header_name_at(buffer, at))
}

/// The length of the longest end of `buffer` that begins a header name (cut by a read).
fn partial_header_suffix(buffer: &[u8]) -> usize {
    let longest = HEADER_NAMES.iter().map(|name| name.len()).max().unwrap_or(0);
    (1..longest.min(buffer.len() + 1))
        .rev()
        .find(|&len| {
            let tail = &buffer[buffer.len() - len..];
            HEADER_NAMES.iter().any(|name| name.len() > len && name[..len].eq_ignore_ascii_case(tail))
        })
        .unwrap_or(0)
}

/// Where a whole header block with a usable Content-Length starts in `buffer`, searching from
/// `from` (earlier positions hold no header name); also how far the next search may start.
fn find_complete_header(buffer: &[u8], from: usize) -> (Option<usize>, usize) {
    let longest = HEADER_NAMES.iter().map(|name| name.len()).max().unwrap_or(0);
    let decided = buffer.len().saturating_sub(longest);
    let mut next_from = decided.max(from);
    for at in from..buffer.len() {
        if !header_name_at(buffer, at) {
            continue;
        }
        let rest = &buffer[at..buffer.len().min(at + MAX_HEADER_BYTES)];
        match header_block_end(rest) {
            Some(end) if content_length(&rest[..end]).is_ok() => return (Some(at), at),
            Some(_) => {}
            // A header name whose block has not ended yet: search from it again next time.
            None if rest.len() < MAX_HEADER_BYTES => next_from = next_from.min(at),
            None => {}
        }
    }
    (None, next_from)
}

/// How many bytes at the start of `output` are whole framed messages (the protocol layer's own
/// output, always `Content-Length: N\r\n\r\n` and N bytes), so they can be written without
/// splitting a message.
pub fn complete_frames_len(output: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header_end) = find(&output[at..], b"\r\n\r\n") {
        let Ok(length) = content_length(&output[at..at + header_end]) else { return output.len() };
        let end = at + header_end + 4 + length;
        if end > output.len() {
            break;
        }
        at = end;
    }
    at
}

/// Frames a body for the wire.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut framed = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    framed.extend_from_slice(body);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut deframer = Deframer::default();
        deframer.push(input);
        std::iter::from_fn(|| deframer.next_frame()).collect()
    }

    fn message(body: &str) -> Vec<u8> {
        encode(body.as_bytes())
    }

    /// The frame of a valid body: as the protocol layer gets it (written anew from its value).
    fn msg(body: &str) -> Frame {
        Frame::Message(serde_json::to_vec(&serde_json::from_str::<Value>(body).unwrap()).unwrap())
    }

    const STATS_1: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ghostline/stats","params":{}}"#;
    const STATS_2: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ghostline/stats","params":{}}"#;

    fn error_code(frame: &Frame) -> (i64, Value) {
        match frame {
            Frame::Invalid { response, .. } => (response["error"]["code"].as_i64().unwrap(), response["id"].clone()),
            Frame::Message(body) => panic!("expected an error, got {}", String::from_utf8_lossy(body)),
        }
    }

    /// Each bad message of the report, followed by a good one: the bad one is answered, the
    /// good one arrives intact.
    #[test]
    fn every_kind_of_bad_message_is_answered_and_the_next_one_arrives() {
        let cases: Vec<(Vec<u8>, i64, Value)> = vec![
            (b"Content-Length: 2\r\n\r\n42".to_vec(), -32600, Value::Null),
            (b"Content-Length: 4\r\n\r\nnull".to_vec(), -32600, Value::Null),
            (message("[1,2]"), -32600, Value::Null),
            (message(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#), -32600, Value::Null),
            (message(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#), -32600, Value::Null),
            (message(r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"x"}"#), -32600, Value::Null),
            (message(r#"{"id":7,"method":"x"}"#), -32600, json!(7)),
            (message(r#"{"jsonrpc":"2.0","id":"a","method":5}"#), -32600, json!("a")),
            (message(r#"{"jsonrpc":"2.0","id":1,"method":"x""#), -32700, Value::Null),
            (b"Content-Length: 3\r\n\r\n\xff\xfe{".to_vec(), -32700, Value::Null),
            (b"Content-Length: abc\r\n\r\n{}".to_vec(), -32700, Value::Null),
            (b"Content-Type: application/vscode-jsonrpc\r\n\r\n{}".to_vec(), -32700, Value::Null),
            (b"garbage bytes\r\n".to_vec(), -32700, Value::Null),
            (format!("Content-Length: 5\r\n\r\n{STATS_1}").into_bytes(), -32700, Value::Null),
            (b"Content-Length: 500\r\n\r\n{\"jsonrpc\"".to_vec(), -32700, Value::Null),
        ];
        for (bad, code, id) in cases {
            let mut input = bad.clone();
            input.extend(message(STATS_2));
            let got = frames(&input);
            assert!(got.len() >= 2, "{:?}: {got:?}", String::from_utf8_lossy(&bad));
            assert_eq!(error_code(&got[0]), (code, id), "{:?}", String::from_utf8_lossy(&bad));
            assert_eq!(got.last().unwrap(), &msg(STATS_2), "{:?}", String::from_utf8_lossy(&bad));
            assert!(got[1..got.len() - 1].iter().all(|frame| matches!(frame, Frame::Invalid { .. })), "{got:?}");
        }
    }

    #[test]
    fn what_goes_on_is_what_was_checked() {
        // A repeated key: the value keeps the last; the protocol layer would reject the bytes.
        let got = frames(&message(r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"ghostline/stats"}"#));
        let Frame::Message(body) = &got[0] else { panic!("{got:?}") };
        let value: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(value, json!({"jsonrpc": "2.0", "id": 1, "method": "ghostline/stats"}));
        assert!(serde_json::from_slice::<Request>(body).is_ok());
    }

    #[test]
    fn a_whole_message_with_a_length_too_long_still_goes_on() {
        let input = [format!("Content-Length: 500\r\n\r\n{STATS_1}").into_bytes(), message(STATS_2)].concat();
        assert_eq!(frames(&input), vec![msg(STATS_1), msg(STATS_2)]);
    }

    #[test]
    fn bare_lf_framing_followed_by_crlf_framing() {
        let input = [format!("Content-Length: {}\n\n{STATS_1}", STATS_1.len()).into_bytes(), message(STATS_2)].concat();
        assert_eq!(frames(&input), vec![msg(STATS_1), msg(STATS_2)]);
    }

    #[test]
    fn header_names_in_any_case_and_unknown_headers_are_accepted() {
        for header in [
            format!("content-length: {}\r\n\r\n", STATS_1.len()),
            format!("CONTENT-LENGTH:{}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\nX-Other: 1\r\n\r\n", STATS_1.len()),
            format!("Content-Type: application/vscode-jsonrpc; charset=latin1\r\nContent-Length: {}\r\n\r\n", STATS_1.len()),
            format!("Content-Length: {}\n\n", STATS_1.len()),
        ] {
            let got = frames(format!("{header}{STATS_1}").as_bytes());
            assert_eq!(got, vec![msg(STATS_1)], "{header:?}");
        }
    }

    #[test]
    fn garbage_is_reported_at_once_but_a_header_cut_by_a_read_is_kept() {
        let mut deframer = Deframer::default();
        deframer.push(b"\x00garbage\r\n");
        assert_eq!(error_code(&deframer.next_frame().expect("reported without waiting")).0, -32700);
        assert_eq!(deframer.pending(), 0);
        deframer.push(b"\r\nConten");
        assert_eq!(deframer.next_frame(), None);
        assert_eq!(deframer.pending(), 6);
        deframer.push(&message(STATS_1)[6..]);
        assert_eq!(deframer.next_frame(), Some(msg(STATS_1)));
    }

    #[test]
    fn output_is_written_in_whole_messages() {
        let output = [message(STATS_1), message(STATS_2)].concat();
        assert_eq!(complete_frames_len(&output), output.len());
        let first = message(STATS_1).len();
        for cut in 0..output.len() {
            let expected = if cut >= output.len() { output.len() } else if cut >= first { first } else { 0 };
            assert_eq!(complete_frames_len(&output[..cut]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn responses_and_notifications_pass() {
        for body in [
            r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":null}"#,
            r#"{"jsonrpc":"2.0","id":"x","error":{"code":-1,"message":"no"}}"#,
        ] {
            assert_eq!(frames(&message(body)), vec![msg(body)], "{body}");
        }
    }

    #[test]
    fn messages_split_across_reads_at_every_byte_arrive_whole() {
        let input = [message(STATS_1), b"Content-Length: 2\r\n\r\n42".to_vec(), message(STATS_2)].concat();
        for split in 0..input.len() {
            let mut deframer = Deframer::default();
            let mut got = Vec::new();
            deframer.push(&input[..split]);
            got.extend(std::iter::from_fn(|| deframer.next_frame()));
            deframer.push(&input[split..]);
            got.extend(std::iter::from_fn(|| deframer.next_frame()));
            assert_eq!(got.len(), 3, "split at {split}: {got:?}");
            assert_eq!(got[0], msg(STATS_1), "split at {split}");
            assert_eq!(error_code(&got[1]).0, -32600, "split at {split}");
            assert_eq!(got[2], msg(STATS_2), "split at {split}");
            assert_eq!(deframer.pending(), 0);
        }
    }

    #[test]
    fn a_header_that_claims_the_next_header_as_its_body_loses_only_itself() {
        let input = [b"Content-Length: 5\r\n\r\n".to_vec(), message(STATS_1)].concat();
        let got = frames(&input);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(error_code(&got[0]).0, -32700);
        assert_eq!(got[1], msg(STATS_1));
    }

    /// Random bytes and random cuts of valid traffic never panic, never hold more than the
    /// input, and a valid message sent afterwards always arrives.
    #[test]
    fn noise_never_stops_the_stream() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = message(STATS_1);
        for _ in 0..2000 {
            let mut noise = Vec::new();
            for _ in 0..(next() % 6) {
                match next() % 4 {
                    0 => noise.extend((0..next() % 40).map(|_| next() as u8)),
                    1 => noise.extend_from_slice(&valid[..(next() as usize) % valid.len()]),
                    2 => noise.extend_from_slice(format!("Content-Length: {}\r\n\r\n", next() % 300).as_bytes()),
                    _ => noise.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":9}"),
                }
            }
            let mut deframer = Deframer::default();
            deframer.push(&noise);
            while deframer.next_frame().is_some() {}
            // A message long enough to finish any Content-Length the noise left open.
            let padding = " ".repeat(300);
            let body = format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ghostline/stats\",\"params\":{{}}}}{padding}");
            deframer.push(&message(&body));
            deframer.push(&message(STATS_2));
            let got: Vec<Frame> = std::iter::from_fn(|| deframer.next_frame()).collect();
            assert_eq!(got.last(), Some(&msg(STATS_2)), "noise {:?}: {got:?}", String::from_utf8_lossy(&noise));
        }
    }
}
