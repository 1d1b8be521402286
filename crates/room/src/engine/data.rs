//! Data packets and text streams, out and in, over the publisher's `_reliable` and
//! `_lossy` data channels (the pure encoding, chunking and reassembly are in the
//! crate's `data.rs`). Outgoing packets wait in a bounded queue while their channel
//! is not open (joining, reconnecting) and go out in order once it is. Incoming
//! packets are read by one task per data channel, owned by the session.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use livekit_protocol as proto;
use prost::Message as _;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use super::{Engine, Internal, OwnedTask, now_ms, random_id};
use crate::RtcError;
use crate::data::{self, Sequencer};
use crate::room::{DataKind, RoomEvent};

/// Label of the ordered, retransmitted data channel.
pub(super) const RELIABLE_LABEL: &str = "_reliable";
/// Label of the unordered data channel without retransmits.
pub(super) const LOSSY_LABEL: &str = "_lossy";

/// Outgoing data packets held while the publisher data channel is not open yet.
const MAX_PENDING_DATA: usize = 1024;

/// Outgoing data: the reliable sequence, and what waits for a channel to open.
#[derive(Default)]
pub(super) struct Outbox {
    /// Encoded packets in send order; cleared on rejoin (not replayed, see the
    /// crate docs' known limits).
    pending: VecDeque<(DataKind, Vec<u8>)>,
    sequencer: Sequencer,
}

impl Outbox {
    /// Forget what was waiting (the connection it was for is gone).
    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }
}

impl Engine {
    /// `Room::send_data`.
    pub(super) async fn send_user_data(
        &mut self,
        payload: Vec<u8>,
        kind: DataKind,
        topic: Option<String>,
        destinations: Vec<String>,
    ) -> Result<(), RtcError> {
        let packet = data::user_packet(
            &self.participants.local().identity,
            payload,
            topic.as_deref(),
            &destinations,
        );
        self.send_packet(packet, kind).await
    }

    /// `Room::send_text`: header, chunks and trailer on the reliable channel; returns
    /// the stream id.
    pub(super) async fn send_text(
        &mut self,
        topic: String,
        text: String,
        attributes: HashMap<String, String>,
        destinations: Vec<String>,
    ) -> Result<String, RtcError> {
        let stream_id = random_id("");
        let spec = data::TextStreamSpec {
            stream_id: &stream_id,
            topic: &topic,
            text: &text,
            attributes: &attributes,
            destination_identities: &destinations,
            timestamp_ms: now_ms(),
        };
        for packet in data::text_stream_packets(&spec, &self.participants.local().identity) {
            self.send_packet(packet, DataKind::Reliable).await?;
        }
        Ok(stream_id)
    }

    /// Encode and send one data packet, or hold it until the channel opens.
    async fn send_packet(
        &mut self,
        mut packet: proto::DataPacket,
        kind: DataKind,
    ) -> Result<(), RtcError> {
        // `kind` is deprecated in the protocol (the channel says it) but older servers
        // and clients still read it.
        #[allow(deprecated)]
        match kind {
            DataKind::Reliable => {
                packet.kind = proto::data_packet::Kind::Reliable as i32;
                packet.sequence = self.outbox.sequencer.next_sequence();
            }
            DataKind::Lossy => packet.kind = proto::data_packet::Kind::Lossy as i32,
        }
        packet.participant_sid = self.participants.local().sid.clone();
        let bytes = packet.encode_to_vec();
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
        let (dc, open) = match kind {
            DataKind::Reliable => (&s.reliable, s.reliable_open),
            DataKind::Lossy => (&s.lossy, s.lossy_open),
        };
        if open && self.outbox.pending.is_empty() {
            match dc.send(BytesMut::from(&bytes[..])).await {
                Ok(()) => return Ok(()),
                // Reported open but not sendable (yet or any more): hold the packet and
                // retry from the timer.
                Err(e) => tracing::debug!(error = %e, "data channel not sendable; packet queued"),
            }
        }
        if self.outbox.pending.len() >= MAX_PENDING_DATA {
            return Err(RtcError::DataQueueFull);
        }
        self.outbox.pending.push_back((kind, bytes));
        Ok(())
    }

    /// Send held packets in order while their channel takes them.
    pub(super) async fn flush_pending_data(&mut self) {
        while let Some((kind, bytes)) = self.outbox.pending.pop_front() {
            let Some(s) = self.session.as_ref() else {
                return;
            };
            let (dc, open) = match kind {
                DataKind::Reliable => (&s.reliable, s.reliable_open),
                DataKind::Lossy => (&s.lossy, s.lossy_open),
            };
            if !open {
                self.outbox.pending.push_front((kind, bytes));
                return;
            }
            if let Err(e) = dc.send(BytesMut::from(&bytes[..])).await {
                tracing::debug!(error = %e, "data channel not sendable yet");
                self.outbox.pending.push_front((kind, bytes));
                return;
            }
        }
    }

    /// One of the current session's data channels opened.
    pub(super) async fn on_dc_open(&mut self, label: &str) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let reliable = label == RELIABLE_LABEL;
        if reliable {
            s.reliable_open = true;
        } else if label == LOSSY_LABEL {
            s.lossy_open = true;
        }
        if s.reliable_open && s.lossy_open {
            s.driver_nudge = None;
        }
        if reliable {
            self.joined();
        }
        self.flush_pending_data().await;
    }

    /// A data packet from a data channel: a user packet is reported; stream packets
    /// are reassembled and a finished text stream reported.
    pub(super) async fn on_data(&mut self, packet: proto::DataPacket, kind: DataKind) {
        use proto::data_packet::Value;
        let identity = packet.participant_identity;
        match packet.value {
            Some(Value::User(u)) => {
                self.events
                    .emit(RoomEvent::DataReceived {
                        participant_identity: identity,
                        topic: u.topic,
                        payload: u.payload,
                        kind,
                    })
                    .await;
            }
            Some(Value::StreamHeader(h)) => self.assembler.header(&identity, h),
            Some(Value::StreamChunk(c)) => self.assembler.chunk(c),
            Some(Value::StreamTrailer(t)) => {
                if let Some(stream) = self.assembler.trailer(t) {
                    self.events
                        .emit(RoomEvent::TextStreamReceived(stream))
                        .await;
                }
            }
            _ => {}
        }
    }
}

/// Read one data channel: decode `DataPacket`s and report opening. Ends when the
/// channel closes, the engine is gone, or its owner (the session) drops it.
pub(super) fn spawn_dc_reader(
    dc: Arc<dyn DataChannel>,
    kind: DataKind,
    session_id: u64,
    tx: mpsc::Sender<Internal>,
) -> OwnedTask {
    OwnedTask::spawn(async move {
        let label = dc.label().await.unwrap_or_default();
        while let Some(ev) = dc.poll().await {
            let msg = match ev {
                DataChannelEvent::OnOpen => Internal::DcOpen {
                    session_id,
                    label: label.clone(),
                },
                DataChannelEvent::OnMessage(m) => {
                    match proto::DataPacket::decode(m.data.as_ref()) {
                        Ok(packet) => Internal::Data {
                            packet: Box::new(packet),
                            kind,
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "undecodable data packet");
                            continue;
                        }
                    }
                }
                DataChannelEvent::OnClose => break,
                _ => continue,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    })
}
