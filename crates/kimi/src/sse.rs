//! A sans-IO parser for server-sent events (the `text/event-stream` format of
//! the WHATWG HTML standard, §9.2): bytes in, events out. It owns no socket and
//! reads no clock, so it is tested by feeding the same stream split every
//! possible way.
//!
//! Correct whatever the chunk boundaries: a line, a `\r\n` pair or a UTF-8
//! character may be split across [`SseParser::feed`] calls. Lines end with
//! `\n`, `\r\n` or a lone `\r`; lines starting with `:` are comments (keep-alive
//! pings); several `data:` lines in one event are joined with `\n`; a blank line
//! dispatches the event. Invalid UTF-8 is replaced with U+FFFD, as the standard
//! asks.
//!
//! Hand-written on purpose: the crates for it (`eventsource-stream`,
//! `reqwest-eventsource`) are stream adapters that own the reading, where the
//! client needs a parser it feeds from its own loop (each read bounded by the
//! idle timeout, a stall told apart from an end) and measures in its bench;
//! the format is small and the split-anywhere tests below pin it down.

use std::collections::VecDeque;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the server set one (`None` means "message").
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if the server set one.
    pub id: Option<String>,
}

/// The parser. Feed it bytes with [`feed`](Self::feed), take events with
/// [`next_event`](Self::next_event); call [`finish`](Self::finish) at the end of
/// the stream.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The last byte fed was a `\r` ending a line: a `\n` that starts the next
    /// feed belongs to it and must not end another (empty) line.
    after_cr: bool,
    /// Whether the byte-order mark at the very start has been dealt with.
    bom_checked: bool,
    /// The event being built.
    data: String,
    /// Whether any `data:` line has been seen for the event being built (an
    /// event whose only data line is `data:` still dispatches, with empty data).
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    /// Events parsed and not yet taken.
    ready: VecDeque<SseEvent>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `bytes`, the next part of the stream. Complete events become
    /// available from [`next_event`](Self::next_event).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if !self.bom_checked {
            // The BOM may itself arrive split; hold bytes until we can tell.
            if self.partial.is_empty() && bytes.len() >= BOM.len() {
                self.bom_checked = true;
                if bytes.starts_with(BOM) {
                    bytes = &bytes[BOM.len()..];
                }
            } else {
                self.partial.extend_from_slice(bytes);
                if self.partial.len() < BOM.len() && BOM.starts_with(&self.partial) {
                    return;
                }
                self.bom_checked = true;
                let held = std::mem::take(&mut self.partial);
                let rest = held.strip_prefix(BOM).unwrap_or(&held);
                self.feed_lines(rest);
                return;
            }
        }
        self.feed_lines(bytes);
    }

    fn feed_lines(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return; // keeps `after_cr` for the bytes that do come next
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            let line_part = &bytes[..end];
            if self.partial.is_empty() {
                self.line(line_part);
            } else {
                self.partial.extend_from_slice(line_part);
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
                // Keep the allocation for the next partial line.
                self.partial = line;
                self.partial.clear();
            }
            let terminator = bytes[end];
            bytes = &bytes[end + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Ends the stream. A last line without its line ending is taken as a line,
    /// and an event without its blank line is dispatched: the standard would
    /// drop it, but servers that close right after `data: [DONE]` are common
    /// and the data is whole.
    pub fn finish(&mut self) {
        if !self.bom_checked {
            self.bom_checked = true;
            if BOM.starts_with(&self.partial) {
                self.partial.clear();
            }
        }
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.after_cr = false;
        self.dispatch();
    }

    /// The next complete event, oldest first.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// Processes one line, without its line ending.
    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                push_utf8(&mut self.data, value);
            }
            b"event" => self.event = Some(lossy(value)),
            // An id containing NUL is ignored, per the standard.
            b"id" if memchr::memchr(0, value).is_none() => self.id = Some(lossy(value)),
            // `retry` tunes EventSource reconnection, which a completion
            // stream never does; unknown fields are ignored.
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if !self.has_data {
            self.event = None;
            return;
        }
        self.has_data = false;
        self.ready.push_back(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        });
    }
}

fn push_utf8(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_split(input: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            p.feed(&input[start..cut]);
            while let Some(e) = p.next_event() {
                out.push(e);
            }
            start = cut;
        }
        p.feed(&input[start..]);
        p.finish();
        while let Some(e) = p.next_event() {
            out.push(e);
        }
        out
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    const STREAM: &str = "\u{feff}: keep-alive\r\n\r\ndata: {\"a\":\"héllo 世界 🎉\"}\r\n\r\n\
        event: ping\ndata: x\n\n\
        data: line one\ndata:line two\r\ndata\n\n\
        id: 7\rdata: cr only\r\r\
        :comment\n\
        data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                data: "{\"a\":\"héllo 世界 🎉\"}".into(),
                id: None,
            },
            SseEvent {
                event: Some("ping".into()),
                data: "x".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "line one\nline two\n".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "cr only".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
                id: Some("7".into()),
            },
        ]
    }

    #[test]
    fn whole_stream_in_one_feed() {
        assert_eq!(parse_split(STREAM.as_bytes(), &[]), expected());
    }

    #[test]
    fn every_single_split_point() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(parse_split(bytes, &[cut]), expected(), "cut at {cut}");
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        let bytes = STREAM.as_bytes();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                assert_eq!(parse_split(bytes, &[a, b]), expected(), "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let bytes = STREAM.as_bytes();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_split(bytes, &cuts), expected());
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_ending() {
        // "data: a\r" | "\n\r\n": had the \n counted as a second line ending,
        // the event would dispatch early; the result is the same here, so also
        // check that a following data line is not joined to a new event.
        let input = b"data: a\r\ndata: b\r\n\r\n";
        for cut in 0..=input.len() {
            assert_eq!(data(&parse_split(input, &[cut])), vec!["a\nb"], "cut {cut}");
        }
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert!(parse_split(b"\n\n\r\n: hi\n\nevent: x\n\n", &[]).is_empty());
    }

    #[test]
    fn missing_final_blank_line_still_dispatches_at_finish() {
        assert_eq!(data(&parse_split(b"data: [DONE]", &[])), vec!["[DONE]"]);
        assert_eq!(data(&parse_split(b"data: [DONE]\n", &[])), vec!["[DONE]"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse_split(b"data: a\xffb\n\n", &[]);
        assert_eq!(data(&events), vec!["a\u{fffd}b"]);
    }

    #[test]
    fn a_bom_only_at_the_start_is_stripped() {
        let events = parse_split(b"\xEF\xBB\xBFdata: x\n\n", &[1, 2]);
        assert_eq!(data(&events), vec!["x"]);
        // A stream shorter than the BOM that is a prefix of it.
        assert!(parse_split(b"\xEF\xBB", &[1]).is_empty());
        // Not a BOM: bytes kept.
        let events = parse_split(b"da", &[1]);
        assert!(events.is_empty());
        let events = parse_split(b"data: y\n\n", &[1, 2]);
        assert_eq!(data(&events), vec!["y"]);
    }

    #[test]
    fn field_without_space_and_with_two_spaces() {
        let events = parse_split(b"data:x\n\ndata:  y\n\n", &[]);
        assert_eq!(data(&events), vec!["x", " y"]);
    }

    /// A pseudo-random split of a long realistic stream, checked against the
    /// unsplit parse (a cheap property test with a fixed seed).
    #[test]
    fn random_splits_of_a_long_stream() {
        let mut input = String::new();
        for i in 0..200 {
            input.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"tök{i} 日本\"}}}}]}}\r\n\r\n"
            ));
            if i % 17 == 0 {
                input.push_str(": ping\n\n");
            }
        }
        input.push_str("data: [DONE]\n\n");
        let bytes = input.as_bytes();
        let whole = parse_split(bytes, &[]);
        assert_eq!(whole.len(), 201);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200 {
            let mut cuts = Vec::new();
            let mut at = 0usize;
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                at += (seed % 23) as usize;
                if at >= bytes.len() {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(parse_split(bytes, &cuts), whole);
        }
    }
}
