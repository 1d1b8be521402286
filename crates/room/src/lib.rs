//! # room — a LiveKit room participant in pure Rust
//!
//! Joins a LiveKit room the way LiveKit's own SDKs do, built only from crates that
//! build from the Rust package registry: the official `livekit` crate cannot be used
//! here because its `webrtc-sys` build script downloads a prebuilt libwebrtc.
//!
//! - signalling: our own WebSocket client (`tokio-tungstenite`, rustls) carrying the
//!   protobuf messages of `livekit-protocol`;
//! - media: `webrtc` 0.21.1 (webrtc-rs) and its Sans-I/O core `rtc`, pinned exactly;
//! - Opus: libopus (Debian `libopus-dev`) through the `opus` crate (see "Opus" below).
//!
//! ## Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), room::RtcError> {
//! use room::{AudioFrame, ConnectOptions, RoomEvent};
//! let (room, mut events) = room::connect("wss://example.livekit.cloud", "<token>", ConnectOptions::default()).await?;
//! let speaker = room.publish_audio("agent", 24_000).await?;          // PCM in, Opus out
//! while let Some(event) = events.recv().await {
//!     match event {
//!         RoomEvent::TrackSubscribed(track) => {
//!             let mut pcm = track.into_stream(16_000)?;                  // Opus in, PCM out
//!             while let Some(frame) = pcm.recv().await { let _ = frame; }
//!         }
//!         RoomEvent::Disconnected(_) => break,
//!         _ => {}
//!     }
//! }
//! speaker.capture_frame(AudioFrame::new(vec![0; 480], 24_000, 1)).await?;
//! speaker.clear_queue();                                                   // interruption
//! room.set_attributes([("lk.agent.state".to_owned(), "listening".to_owned())].into()).await?;
//! room.send_text("lk.transcription", "hello", Default::default(), &[]).await?;
//! room.close().await?;                                                     // LeaveRequest
//! # Ok(()) }
//! ```
//!
//! ## Connection sequence
//!
//! 1. WebSocket to `ws(s)://HOST/rtc?sdk=rust&version=…&protocol=16&client_protocol=1&
//!    auto_subscribe=1&adaptive_stream=0`, token in `Authorization: Bearer` (never in
//!    the URL). Binary protobuf `SignalRequest` out, `SignalResponse` in.
//! 2. Wait for `JoinResponse`: our participant, the others (reported as
//!    `ParticipantJoined`), ICE servers, `ping_interval`/`ping_timeout`.
//! 3. Two peer connections with the given ICE servers. The **publisher** creates
//!    data channels `_reliable` (ordered) and `_lossy` (unordered, `max_retransmits`
//!    0) and always offers (`SignalRequest::Offer` → `SignalResponse::Answer`). The
//!    **subscriber** answers the server's offers. Local candidates are trickled as
//!    `TrickleRequest{candidate_init JSON, target}`; remote candidates that arrive
//!    before the remote description are queued and applied after it.
//! 4. [`connect`] returns once the publisher's `_reliable` channel is open (ICE,
//!    DTLS and SCTP all up), bounded by `ConnectOptions::connect_timeout`.
//! 5. Publishing audio: `AddTrackRequest{cid, type AUDIO, source MICROPHONE,
//!    disable_red}` → `TrackPublishedResponse` → a send Opus track whose track id is
//!    the cid → a new publisher offer → answer. Opus at 48 kHz, 20 ms frames, paced
//!    in real time.
//! 6. Subscribing: the server's offer brings tracks whose stream id is
//!    `PA_…|TR_…` ([`parse_msid`]); audio tracks are reported as
//!    [`RoomEvent::TrackSubscribed`] and decoded on demand.
//! 7. Data: one `DataPacket` per message; reliable ones carry a sequence number.
//!    Text streams are `StreamHeader` → `StreamChunk`s (≤ 15000 bytes, cut on UTF-8
//!    boundaries) → `StreamTrailer` on the reliable channel; received ones are
//!    reassembled ([`data::StreamAssembler`]) and reported whole. We advertise
//!    `client_protocol=1` (v1 stream format, no inline or compressed streams).
//! 8. Attributes: `UpdateParticipantMetadata{attributes}` (the token needs
//!    `canUpdateOwnMetadata`); changes of others' attributes are reported.
//! 9. `PingReq` every `ping_interval`; no message at all for `ping_timeout` means
//!    the signal is lost. Leaving sends `LeaveRequest{reason CLIENT_INITIATED,
//!    action DISCONNECT}`.
//!
//! ## Reconnecting
//!
//! On signal loss (socket closed, ping timeout), a failed peer connection, or a
//! server `LeaveRequest` asking to resume/reconnect, the room reports
//! [`RoomEvent::Reconnecting`] and follows [`ReconnectPolicy`]: first **resume**
//! attempts (`reconnect=1&sid=…` → `ReconnectResponse`, `SyncState` with our
//! subscriber answer, publications and subscriptions, then a publisher offer with
//! ICE restart; subscriptions and publications survive), then **full rejoins**
//! (fresh join, new peer connections, every published track republished on the
//! same `LocalAudioTrack` handle; remote tracks arrive again as `TrackSubscribed`).
//! Success is `Reconnected { resumed }`; giving up is
//! `Disconnected(ReconnectFailed)`. Every wait is bounded; nothing panics.
//!
//! ## Known limits
//!
//! - webrtc-rs 0.21 has **no TURN over TCP or TLS**: UDP TURN, STUN, and ICE-TCP to
//!   passive candidates work. Networks that only allow TURN/TLS on 443 cannot carry
//!   media.
//! - Audio only (no video); mono; sample rates are Opus's native ones (8, 12, 16, 24,
//!   48 kHz) so that no resampler sits in the path.
//! - No end-to-end encryption, no data tracks, no RPC helpers, no v2 (inline or
//!   compressed) data streams.
//! - After a full rejoin, [`LocalAudioTrack::sid`] still shows the first sid.
//! - Reliable data is not retransmitted across a reconnect (LiveKit's clients buffer
//!   and replay it; we drop what was in flight).
//!
//! ## Opus
//!
//! libopus (the reference implementation; Debian's `libopus-dev`, linked dynamically
//! through pkg-config by `audiopus_sys` under the `opus` crate; nothing is downloaded)
//! rather than the pure-Rust `opus-rs`: it is what every LiveKit client uses, so
//! interoperability is not in question, and it is the fastest implementation
//! available. Published tracks are CELT only at complexity 3
//! ([`ConnectOptions::opus_application`], [`ConnectOptions::opus_complexity`]): the
//! encoder is a stream's largest single cost, and this cuts it to a third of VoIP
//! mode's, with 4 ms less codec delay; the price is SILK's in-band FEC (a lost packet
//! is recovered by NACK instead), so `Voip` stays available for lossy links. Why, in
//! figures: `local_track.rs` ("The encoder") and `examples/opus_cost.rs`, which
//! measures every application and complexity.
//!
//! ## Pacing
//!
//! Each published track has one pacer task on a fixed grid: slot `n` leaves at
//! `start + n · 20 ms`, so a late wake never shifts later slots. Up to 3 slots
//! (60 ms) behind, it sends the missed slots back to back; further behind it skips to
//! the current slot and plays the queued audio on from there (none is dropped). A
//! packet's RTP timestamp is its slot's due time, so skipped slots show in RTP time.
//! [`LocalAudioTrack::stats`] counts frames, skipped slots, and histograms of
//! lateness behind the grid and of interval jitter, taken when a frame has been
//! encoded and handed to the RTP sender. The encoder runs inline in the pacer task:
//! one frame per slot, 20–250 µs, which is less than a cross-thread hand-off per frame
//! would add in CPU.
//!
//! Between utterances a track goes quiet, as Opus DTX does ([`ConnectOptions::dtx`],
//! on by default): after 200 ms of silence the pacer sends one silent frame every
//! 400 ms (subscribers built like webrtc-rs learn of a track from its packets) and
//! sleeps in between; the next talkspurt leaves at once with the RTP marker bit set.
//! An agent that listens then costs about 5 % of a talking one to send, and the SFU
//! and the listener nothing to forward and decode. A subscribed stream whose
//! sender is quiet goes on in silent frames, filled in real time (`timeline.rs`), so a
//! VAD downstream hears the pause as it happens.
//!
//! A published track's RTP sink is held until the server has answered the offer
//! that carries it: RTP that reaches the SFU before it has applied the offer carries
//! an SSRC it cannot place (no MID header extension on audio), and it drops that
//! stream for good.
//!
//! ## Events under pressure
//!
//! The engine does not wait for the event reader, so a slow consumer cannot stall
//! the signal connection or its pings. When the event channel is full, data packets,
//! text streams and attribute changes are dropped and counted
//! ([`Room::dropped_events`], and a warning at most every 10 s); every other event
//! waits inside the engine, in order, until the reader makes room. Only a reader
//! stuck for good (1024 such events waiting) makes the engine wait for it.
//!
//! ## Cost per stream
//!
//! What a stream costs in CPU and memory and how steady its 20 ms cadence is, on the
//! project's 2-core machine against the real server, with the history of those
//! figures: `tests/benches/rtc_streams.rs`.
//!
//! ## Logging
//!
//! Through `tracing`. webrtc-rs's core crate is called `rtc`: filter
//! on `room::engine`, `room::local_track`, `room::remote_track` for this crate only
//! (`room::engine=debug` logs each join's steps and their times).
//!
//! ## Layout
//!
//! | file | owns |
//! |---|---|
//! | `room.rs` | the public API: [`connect`], [`Room`], [`RoomEvent`], [`ConnectOptions`] |
//! | `engine/` | the engine task: its loop (`mod.rs`), `join`, `negotiation` (pure), `sdp`, `participants` (pure), `publish`, `data`, `reconnect`, `events` |
//! | `signal.rs` | signal URL building, the signal transport trait and its WebSocket |
//! | `local_track.rs` | publishing: [`LocalAudioTrack`], the Opus encoder, the pacer task |
//! | `remote_track.rs` | subscribing: [`RemoteAudioTrack`], [`AudioStream`], the decoder task |
//! | `timeline.rs` | a received stream's RTP sequence and time: loss, duplicates, DTX gaps (pure) |
//! | `pacer.rs` | the pacer's 20 ms grid and cadence histograms (pure) |
//! | `frame.rs` | [`AudioFrame`], Opus's rates, the RTP clock |
//! | `data.rs` | data packets, text-stream chunking and reassembly (pure) |
//! | `backoff.rs` | the reconnect schedule (pure) |
//! | `msid.rs` | mapping a media stream to participant and track (pure) |
//! | `error.rs` | [`RtcError`] and the causes it chains |

#![forbid(unsafe_code)]

mod backoff;
pub mod data;
mod engine;
mod error;
mod frame;
mod local_track;
mod msid;
mod pacer;
mod remote_track;
mod room;
pub mod signal;
mod timeline;

pub use backoff::{ReconnectKind, ReconnectPolicy};
pub use data::TextStream;
pub use error::{RtcError, SignalLoss, UrlError, WsError};
pub use frame::{AudioFrame, FRAME_DURATION, OPUS_RATES};
pub use local_track::{LocalAudioTrack, OpusApplication, PacerStats};
pub use msid::parse_msid;
pub use pacer::{CADENCE_BUCKET, CadenceHistogram};
pub use remote_track::{AudioStream, RemoteAudioTrack};
pub use room::{ConnectOptions, DataKind, DisconnectReason, Participant, Room, RoomEvent, connect};
