//! Data packets and text streams: pure encoding, chunking and reassembly, no I/O.
//!
//! - [`split_utf8`] cuts text into chunks of at most [`MAX_CHUNK_BYTES`] without
//!   splitting a UTF-8 sequence.
//! - [`text_stream_packets`] turns one text stream into the `DataPacket`s that go on
//!   the reliable channel: `StreamHeader`, `StreamChunk`s, `StreamTrailer`.
//! - [`StreamAssembler`] is the receiving state machine: headers, chunks and trailers
//!   in, finished [`TextStream`]s out, with bounds on streams in flight and bytes.
//! - [`Sequencer`] numbers reliable packets (1, 2, 3, …) as LiveKit clients do.

use std::collections::HashMap;

use livekit_protocol as proto;
use proto::data_packet::Value;

/// Largest chunk payload LiveKit clients send in one `StreamChunk`.
pub const MAX_CHUNK_BYTES: usize = 15_000;

/// Most text streams being received at once; the oldest is dropped beyond it.
pub const MAX_STREAMS_IN_FLIGHT: usize = 64;

/// Largest text stream accepted; bigger ones are dropped.
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

/// Attribute keys LiveKit agents put on `lk.transcription` streams.
pub mod attr {
    /// Topic of transcription text streams.
    pub const TOPIC_TRANSCRIPTION: &str = "lk.transcription";
    /// The track (sid) being transcribed.
    pub const TRANSCRIBED_TRACK_ID: &str = "lk.transcribed_track_id";
    /// Identifies one segment (utterance) across interim and final streams.
    pub const SEGMENT_ID: &str = "lk.segment_id";
    /// `"true"` on the final transcription of a segment.
    pub const TRANSCRIPTION_FINAL: &str = "lk.transcription_final";
    /// Participant attribute holding the agent's state.
    pub const AGENT_STATE: &str = "lk.agent.state";
}

/// Split `text` into pieces of at most `max` bytes, never inside a UTF-8 sequence.
/// `max` below 4 is raised to 4 so that every character fits.
pub fn split_utf8(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut out = Vec::with_capacity(text.len() / max + 1);
    let mut rest = text;
    while !rest.is_empty() {
        if rest.len() <= max {
            out.push(rest);
            break;
        }
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// Numbers reliable data packets: 1, 2, 3, … (0 means "unsequenced" to the receiver).
#[derive(Debug, Default)]
pub struct Sequencer {
    last: u32,
}

impl Sequencer {
    /// The next sequence number, wrapping past `u32::MAX` to 1.
    pub fn next_sequence(&mut self) -> u32 {
        self.last = self.last.wrapping_add(1);
        if self.last == 0 {
            self.last = 1;
        }
        self.last
    }
}

/// One outgoing text stream.
#[derive(Debug, Clone)]
pub struct TextStreamSpec<'a> {
    /// Unique id of the stream (any string; a random one is used by [`crate::Room::send_text`]).
    pub stream_id: &'a str,
    /// Topic, e.g. `lk.transcription`.
    pub topic: &'a str,
    /// The whole text.
    pub text: &'a str,
    /// Attributes carried in the header.
    pub attributes: &'a HashMap<String, String>,
    /// Only these identities receive it; empty means everyone.
    pub destination_identities: &'a [String],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The data packets of one text stream (header, chunks, trailer), without sequence numbers.
pub fn text_stream_packets(
    spec: &TextStreamSpec<'_>,
    sender_identity: &str,
) -> Vec<proto::DataPacket> {
    let chunks = split_utf8(spec.text, MAX_CHUNK_BYTES);
    let mut out = Vec::with_capacity(chunks.len() + 2);
    let header = proto::data_stream::Header {
        stream_id: spec.stream_id.to_owned(),
        timestamp: spec.timestamp_ms,
        topic: spec.topic.to_owned(),
        mime_type: "text/plain".to_owned(),
        total_length: Some(spec.text.len() as u64),
        attributes: spec.attributes.clone(),
        content_header: Some(proto::data_stream::header::ContentHeader::TextHeader(
            proto::data_stream::TextHeader {
                operation_type: proto::data_stream::OperationType::Create as i32,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    out.push(packet(
        sender_identity,
        spec.destination_identities,
        Value::StreamHeader(header),
    ));
    for (i, chunk) in chunks.into_iter().enumerate() {
        let c = proto::data_stream::Chunk {
            stream_id: spec.stream_id.to_owned(),
            chunk_index: i as u64,
            content: chunk.as_bytes().to_vec(),
            ..Default::default()
        };
        out.push(packet(
            sender_identity,
            spec.destination_identities,
            Value::StreamChunk(c),
        ));
    }
    let trailer = proto::data_stream::Trailer {
        stream_id: spec.stream_id.to_owned(),
        ..Default::default()
    };
    out.push(packet(
        sender_identity,
        spec.destination_identities,
        Value::StreamTrailer(trailer),
    ));
    out
}

/// A user data packet (`UserPacket`) with an optional topic.
pub fn user_packet(
    sender_identity: &str,
    payload: Vec<u8>,
    topic: Option<&str>,
    destination_identities: &[String],
) -> proto::DataPacket {
    let user = proto::UserPacket {
        payload,
        topic: topic.map(str::to_owned),
        ..Default::default()
    };
    packet(sender_identity, destination_identities, Value::User(user))
}

fn packet(sender_identity: &str, destinations: &[String], value: Value) -> proto::DataPacket {
    proto::DataPacket {
        participant_identity: sender_identity.to_owned(),
        destination_identities: destinations.to_vec(),
        value: Some(value),
        ..Default::default()
    }
}

/// A text stream received in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextStream {
    /// The stream id chosen by the sender.
    pub stream_id: String,
    /// Identity of the sending participant.
    pub participant_identity: String,
    /// Topic, e.g. `lk.transcription`.
    pub topic: String,
    /// Header attributes, updated by the trailer's.
    pub attributes: HashMap<String, String>,
    /// The whole text.
    pub text: String,
}

#[derive(Debug)]
struct Partial {
    identity: String,
    topic: String,
    attributes: HashMap<String, String>,
    chunks: Vec<(u64, Vec<u8>)>,
    bytes: usize,
    is_text: bool,
    /// Order of arrival, to drop the oldest stream when too many are in flight.
    opened: u64,
}

/// Receiving side of text streams: feed it stream packets, get finished streams.
#[derive(Debug, Default)]
pub struct StreamAssembler {
    partial: HashMap<String, Partial>,
    opened: u64,
    /// Streams dropped (too many in flight, too big, compressed, not UTF-8).
    pub dropped: u64,
}

impl StreamAssembler {
    /// Feed a stream header. Byte streams are tracked only to be ignored.
    pub fn header(&mut self, identity: &str, h: proto::data_stream::Header) {
        if self.partial.len() >= MAX_STREAMS_IN_FLIGHT
            && let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.opened)
                .map(|(k, _)| k.clone())
        {
            self.partial.remove(&oldest);
            self.dropped += 1;
        }
        let is_text = matches!(
            h.content_header,
            Some(proto::data_stream::header::ContentHeader::TextHeader(_))
        ) && h.compression == proto::data_stream::CompressionType::None as i32;
        let mut p = Partial {
            identity: identity.to_owned(),
            topic: h.topic,
            attributes: h.attributes,
            chunks: Vec::new(),
            bytes: 0,
            is_text,
            opened: self.opened,
        };
        self.opened += 1;
        if let Some(inline) = h.inline_content {
            p.bytes = inline.len();
            p.chunks.push((0, inline));
        }
        self.partial.insert(h.stream_id, p);
    }

    /// Feed a chunk. Chunks of unknown streams are ignored.
    pub fn chunk(&mut self, c: proto::data_stream::Chunk) {
        let Some(p) = self.partial.get_mut(&c.stream_id) else {
            return;
        };
        p.bytes += c.content.len();
        if p.bytes > MAX_STREAM_BYTES {
            self.partial.remove(&c.stream_id);
            self.dropped += 1;
            return;
        }
        p.chunks.push((c.chunk_index, c.content));
    }

    /// Feed a trailer; returns the finished stream if it was a text stream.
    pub fn trailer(&mut self, t: proto::data_stream::Trailer) -> Option<TextStream> {
        let mut p = self.partial.remove(&t.stream_id)?;
        if !p.is_text {
            return None;
        }
        p.chunks.sort_by_key(|(i, _)| *i);
        p.chunks.dedup_by_key(|(i, _)| *i);
        let mut bytes = Vec::with_capacity(p.bytes);
        for (_, c) in p.chunks {
            bytes.extend_from_slice(&c);
        }
        let Ok(text) = String::from_utf8(bytes) else {
            self.dropped += 1;
            return None;
        };
        p.attributes.extend(t.attributes);
        Some(TextStream {
            stream_id: t.stream_id,
            participant_identity: p.identity,
            topic: p.topic,
            attributes: p.attributes,
            text,
        })
    }

    /// Forget the streams of a participant who left.
    pub fn participant_left(&mut self, identity: &str) {
        self.partial.retain(|_, p| p.identity != identity);
    }

    /// Number of streams being received.
    pub fn in_flight(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_char_boundaries() {
        let s = "é".repeat(10); // 2 bytes each
        let parts = split_utf8(&s, 5);
        assert!(parts.iter().all(|p| p.len() <= 5 && !p.is_empty()));
        assert_eq!(parts.concat(), s);
        let s = "😀a😀"; // 4 + 1 + 4
        assert_eq!(split_utf8(s, 4), vec!["😀", "a", "😀"]);
        assert!(split_utf8("", 10).is_empty());
        assert_eq!(split_utf8("abc", 1), vec!["abc"]); // max raised to 4
    }

    #[test]
    fn split_big_multibyte_text() {
        let s = "日本語のテキスト🙂".repeat(2000);
        let parts = split_utf8(&s, MAX_CHUNK_BYTES);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.len() <= MAX_CHUNK_BYTES));
        assert_eq!(parts.concat(), s);
    }

    #[test]
    fn sequencer_skips_zero() {
        let mut s = Sequencer { last: u32::MAX - 1 };
        assert_eq!(s.next_sequence(), u32::MAX);
        assert_eq!(s.next_sequence(), 1);
    }

    fn roundtrip(text: &str) -> TextStream {
        let mut attrs = HashMap::new();
        attrs.insert(attr::SEGMENT_ID.to_owned(), "SG_1".to_owned());
        attrs.insert(attr::TRANSCRIPTION_FINAL.to_owned(), "true".to_owned());
        let spec = TextStreamSpec {
            stream_id: "s1",
            topic: attr::TOPIC_TRANSCRIPTION,
            text,
            attributes: &attrs,
            destination_identities: &[],
            timestamp_ms: 1,
        };
        let packets = text_stream_packets(&spec, "agent");
        let mut asm = StreamAssembler::default();
        let mut done = None;
        // Deliver chunks out of order to exercise sorting.
        let mut chunks = Vec::new();
        for p in packets {
            match p.value {
                Some(Value::StreamHeader(h)) => asm.header(&p.participant_identity, h),
                Some(Value::StreamChunk(c)) => chunks.push(c),
                Some(Value::StreamTrailer(t)) => {
                    for c in chunks.drain(..).rev() {
                        asm.chunk(c);
                    }
                    done = asm.trailer(t);
                }
                _ => panic!("unexpected packet"),
            }
        }
        done.expect("stream finished")
    }

    #[test]
    fn text_stream_roundtrip() {
        let text = "Grüße, 世界! 🎉 ".repeat(1500);
        assert!(text.len() > MAX_CHUNK_BYTES);
        let got = roundtrip(&text);
        assert_eq!(got.text, text);
        assert_eq!(got.topic, "lk.transcription");
        assert_eq!(got.participant_identity, "agent");
        assert_eq!(
            got.attributes.get(attr::SEGMENT_ID).map(String::as_str),
            Some("SG_1")
        );
        assert_eq!(roundtrip("").text, "");
    }

    #[test]
    fn assembler_bounds_streams_in_flight() {
        let mut asm = StreamAssembler::default();
        for i in 0..(MAX_STREAMS_IN_FLIGHT + 3) {
            asm.header(
                "p",
                proto::data_stream::Header {
                    stream_id: format!("s{i}"),
                    content_header: Some(proto::data_stream::header::ContentHeader::TextHeader(
                        Default::default(),
                    )),
                    ..Default::default()
                },
            );
        }
        assert_eq!(asm.in_flight(), MAX_STREAMS_IN_FLIGHT);
        assert_eq!(asm.dropped, 3);
        // The oldest were dropped.
        assert!(
            asm.trailer(proto::data_stream::Trailer {
                stream_id: "s0".into(),
                ..Default::default()
            })
            .is_none()
        );
        asm.participant_left("p");
        assert_eq!(asm.in_flight(), 0);
    }

    #[test]
    fn assembler_drops_oversized_and_byte_streams() {
        let mut asm = StreamAssembler::default();
        asm.header(
            "p",
            proto::data_stream::Header {
                stream_id: "b".into(),
                content_header: Some(proto::data_stream::header::ContentHeader::ByteHeader(
                    Default::default(),
                )),
                ..Default::default()
            },
        );
        asm.chunk(proto::data_stream::Chunk {
            stream_id: "b".into(),
            content: vec![1],
            ..Default::default()
        });
        assert!(
            asm.trailer(proto::data_stream::Trailer {
                stream_id: "b".into(),
                ..Default::default()
            })
            .is_none()
        );

        asm.header(
            "p",
            proto::data_stream::Header {
                stream_id: "big".into(),
                content_header: Some(proto::data_stream::header::ContentHeader::TextHeader(
                    Default::default(),
                )),
                ..Default::default()
            },
        );
        for i in 0..=(MAX_STREAM_BYTES / MAX_CHUNK_BYTES) {
            asm.chunk(proto::data_stream::Chunk {
                stream_id: "big".into(),
                chunk_index: i as u64,
                content: vec![b'a'; MAX_CHUNK_BYTES],
                ..Default::default()
            });
        }
        assert_eq!(asm.in_flight(), 0);
        assert_eq!(asm.dropped, 1);
    }
}
