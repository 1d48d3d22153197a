//! Incremental Server-Sent-Events parser for OpenAI-style chat streams. Pure: bytes in,
//! items out, no I/O.
//!
//! Handles lines split across network reads (and UTF-8 characters split across reads),
//! `\n`, `\r\n` and lone `\r` line ends (a `\r\n` split between two reads too), `data:` with or
//! without the space, comment lines (`:` keep-alives), `event:`/`id:`/`retry:` fields
//! (ignored), multi-line `data` (joined with `\n` as the SSE spec says), and `data: [DONE]`.
//! Anything it cannot use — a payload that is neither a chunk nor an error object, an unknown
//! field, invalid UTF-8, an over-long line — becomes [`SseItem::Malformed`]; parsing always
//! continues, so one bad line never loses the rest of the stream.

use crate::error::{truncate, ApiError};
use crate::types::ChatChunk;

/// Lines longer than this are reported malformed and skipped (bounds memory).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Longest malformed line kept in an [`SseItem::Malformed`].
const MAX_REPORTED: usize = 512;

/// One thing found in the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// A `chat.completion.chunk`.
    Chunk(Box<ChatChunk>),
    /// `data: [DONE]`: the server finished the stream.
    Done,
    /// An error object sent inside the stream (vLLM and llama.cpp do this on engine errors).
    Error(ApiError),
    /// Something unusable; `line` is the offending text (truncated), `reason` why.
    Malformed {
        /// The offending line or payload.
        line: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Incremental parser; feed it every body read with [`SseParser::push`], then call
/// [`SseParser::finish`] at end of body.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skipping_long_line: bool,
    after_cr: bool,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `bytes`, appending complete items to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseItem>) {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.extend_line(&rest[..pos], out);
            let ended_with_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if ended_with_cr {
                match rest {
                    [b'\n', tail @ ..] => rest = tail,
                    [] => self.after_cr = true,
                    _ => {}
                }
            }
            self.end_line(out);
        }
        self.extend_line(rest, out);
    }

    /// End of body: handles a last line without a line end and an event without the final
    /// blank line.
    pub fn finish(&mut self, out: &mut Vec<SseItem>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
        self.skipping_long_line = false;
        self.after_cr = false;
    }

    /// Convenience for tests and small bodies: all items of `bytes` as one complete body.
    pub fn parse_all(bytes: &[u8]) -> Vec<SseItem> {
        let mut parser = Self::new();
        let mut out = Vec::new();
        parser.push(bytes, &mut out);
        parser.finish(&mut out);
        out
    }

    fn extend_line(&mut self, part: &[u8], out: &mut Vec<SseItem>) {
        if self.skipping_long_line || part.is_empty() {
            return;
        }
        if self.line.len() + part.len() > MAX_LINE_BYTES {
            out.push(SseItem::Malformed {
                line: truncate(&String::from_utf8_lossy(&self.line), MAX_REPORTED),
                reason: format!("line longer than {MAX_LINE_BYTES} bytes; skipped"),
            });
            self.line.clear();
            self.skipping_long_line = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        if self.skipping_long_line {
            self.skipping_long_line = false;
            self.line.clear();
            return;
        }
        let raw = std::mem::take(&mut self.line);
        let line = match std::str::from_utf8(&raw) {
            Ok(line) => line,
            Err(e) => {
                out.push(SseItem::Malformed {
                    line: truncate(&String::from_utf8_lossy(&raw), MAX_REPORTED),
                    reason: format!("invalid UTF-8: {e}"),
                });
                return;
            }
        };
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                // A server that omits the blank line between events would otherwise have its
                // events glued together; a complete payload is dispatched on its own.
                if self.data.as_deref().is_some_and(is_complete_payload) {
                    self.dispatch(out);
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            "event" | "id" | "retry" => {}
            _ => out.push(SseItem::Malformed {
                line: truncate(line, MAX_REPORTED),
                reason: "not an SSE field this stream uses (expected `data:`)".to_owned(),
            }),
        }
        // Reuse the allocation for the next line.
        self.line = raw;
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        if let Some(data) = self.data.take() {
            out.push(decode_payload(&data));
        }
    }
}

fn is_complete_payload(data: &str) -> bool {
    data.trim() == "[DONE]" || serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
}

/// Turns one event's data into an item.
pub fn decode_payload(data: &str) -> SseItem {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return SseItem::Done;
    }
    match serde_json::from_str::<ChatChunk>(trimmed) {
        Ok(chunk) => SseItem::Chunk(Box::new(chunk)),
        Err(chunk_error) => {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed) {
                if let Some(error) = ApiError::from_json(&value) {
                    return SseItem::Error(error);
                }
            }
            SseItem::Malformed {
                line: truncate(data, MAX_REPORTED),
                reason: format!("not a chat.completion.chunk: {chunk_error}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#;
    const HELLO: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello é"},"logprobs":null,"finish_reason":null}]}"#;
    const USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}"#;

    fn body() -> String {
        format!(
            "data: {ROLE}\n\ndata: {HELLO}\n\n: keep-alive\n\ndata: {USAGE}\n\ndata: [DONE]\n\n"
        )
    }

    fn kinds(items: &[SseItem]) -> Vec<&'static str> {
        items
            .iter()
            .map(|i| match i {
                SseItem::Chunk(_) => "chunk",
                SseItem::Done => "done",
                SseItem::Error(_) => "error",
                SseItem::Malformed { .. } => "malformed",
            })
            .collect()
    }

    #[test]
    fn whole_body() {
        let items = SseParser::parse_all(body().as_bytes());
        assert_eq!(kinds(&items), ["chunk", "chunk", "chunk", "done"]);
        let SseItem::Chunk(hello) = &items[1] else {
            panic!()
        };
        assert_eq!(hello.choices[0].delta.content.as_deref(), Some("Hello é"));
        let SseItem::Chunk(usage) = &items[2] else {
            panic!()
        };
        assert_eq!(usage.usage.unwrap().total_tokens, 7);
    }

    #[test]
    fn every_split_point_gives_the_same_items() {
        let body = body();
        let bytes = body.as_bytes();
        let expected = SseParser::parse_all(bytes);
        // Splits inside "data:", inside JSON, inside the 2-byte "é", between "\n\n".
        for split in 1..bytes.len() {
            let mut parser = SseParser::new();
            let mut out = Vec::new();
            parser.push(&bytes[..split], &mut out);
            parser.push(&bytes[split..], &mut out);
            parser.finish(&mut out);
            assert_eq!(out, expected, "split at {split}");
        }
        // One byte at a time.
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for b in bytes {
            parser.push(std::slice::from_ref(b), &mut out);
        }
        parser.finish(&mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn crlf_and_lone_cr_including_crlf_split_across_reads() {
        let crlf = body().replace('\n', "\r\n");
        let expected = SseParser::parse_all(body().as_bytes());
        assert_eq!(SseParser::parse_all(crlf.as_bytes()), expected);
        let cr = body().replace('\n', "\r");
        assert_eq!(SseParser::parse_all(cr.as_bytes()), expected);
        for split in 1..crlf.len() {
            let mut parser = SseParser::new();
            let mut out = Vec::new();
            parser.push(&crlf.as_bytes()[..split], &mut out);
            parser.push(&crlf.as_bytes()[split..], &mut out);
            parser.finish(&mut out);
            assert_eq!(out, expected, "split at {split}");
        }
    }

    #[test]
    fn data_without_space_and_event_fields() {
        let body = format!("event: message\nid: 1\nretry: 10\ndata:{HELLO}\n\ndata:[DONE]\n\n");
        assert_eq!(
            kinds(&SseParser::parse_all(body.as_bytes())),
            ["chunk", "done"]
        );
    }

    #[test]
    fn malformed_lines_are_reported_and_parsing_continues() {
        let body = format!(
            "data: {HELLO}\n\ndata: {{\"id\":\"x\",\"choices\":[{{\"delta\":{{\"content\":\n\ngarbage line\n\ndata: {HELLO}\n\ndata: [DONE]\n\n"
        );
        let items = SseParser::parse_all(body.as_bytes());
        assert_eq!(
            kinds(&items),
            ["chunk", "malformed", "malformed", "chunk", "done"]
        );
        let SseItem::Malformed { line, .. } = &items[2] else {
            panic!()
        };
        assert_eq!(line, "garbage line");
    }

    #[test]
    fn error_objects_in_the_stream() {
        let old = r#"data: {"object":"error","message":"engine died","type":"InternalServerError","param":null,"code":500}"#;
        let new = r#"data: {"error":{"message":"boom","type":"server_error","code":500}}"#;
        let items = SseParser::parse_all(format!("{old}\n\n{new}\n\n").as_bytes());
        assert_eq!(kinds(&items), ["error", "error"]);
        let SseItem::Error(e) = &items[0] else {
            panic!()
        };
        assert_eq!(e.message, "engine died");
    }

    #[test]
    fn multi_line_data_and_missing_blank_line() {
        // Spec: two data lines of one event are joined with "\n" (valid JSON here).
        let split_json = "data: {\"id\":\"a\",\ndata: \"choices\":[]}\n\n";
        assert_eq!(
            kinds(&SseParser::parse_all(split_json.as_bytes())),
            ["chunk"]
        );
        // No blank line between events: each complete payload still stands alone.
        let glued = format!("data: {HELLO}\ndata: {HELLO}\ndata: [DONE]\n");
        assert_eq!(
            kinds(&SseParser::parse_all(glued.as_bytes())),
            ["chunk", "chunk", "done"]
        );
    }

    #[test]
    fn invalid_utf8_and_overlong_lines() {
        let mut body = b"data: \xff\xfe\n\n".to_vec();
        body.extend_from_slice(format!("data: {HELLO}\n\n").as_bytes());
        let items = SseParser::parse_all(&body);
        assert_eq!(kinds(&items), ["malformed", "chunk"]);

        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'x'; 1024 * 1024];
        parser.push(b"data: ", &mut out);
        for _ in 0..5 {
            parser.push(&big, &mut out);
        }
        parser.push(format!("\n\ndata: {HELLO}\n\n").as_bytes(), &mut out);
        parser.finish(&mut out);
        assert_eq!(kinds(&out), ["malformed", "chunk"]);
    }

    #[test]
    fn last_event_without_trailing_blank_line() {
        let body = format!("data: {HELLO}\n\ndata: [DONE]");
        assert_eq!(
            kinds(&SseParser::parse_all(body.as_bytes())),
            ["chunk", "done"]
        );
    }
}
