//! # rtc — a LiveKit room participant in pure Rust
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
//! # async fn demo() -> Result<(), rtc::RtcError> {
//! use rtc::{AudioFrame, ConnectOptions, RoomEvent};
//! let (room, mut events) = rtc::connect("wss://example.livekit.cloud", "<token>", ConnectOptions::default()).await?;
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
//! speaker.capture_frame(AudioFrame { data: vec![0; 480], sample_rate: 24_000 }).await?;
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
//! through pkg-config by `audiopus_sys`; nothing is downloaded) rather than the
//! pure-Rust `opus-rs`: it is what every LiveKit client uses, so interoperability is
//! not in question, and it is the fastest implementation available. Measured on the
//! project's 2-core machine with `cargo run --release -p rtc@0.1.0 --example
//! opus_cost` (espeak-ng speech, 20 ms mono frames at 48 kHz, best of 5 passes; the
//! table is in `opus_enc.rs`): in VoIP mode (SILK or hybrid, what libwebrtc uses for
//! speech) encoding costs 79 µs at complexity 0, 130 µs at 3 and 303 µs at libopus's
//! default 10, decoding 36–39 µs; CELT only ([`OpusApplication::LowDelay`]) costs
//! 23 µs at 0, 39 µs at 3 and 84 µs at 10, decoding 21–26 µs, at about the same
//! bitrate (51 kbit/s) and with a waveform closer to the input. Published tracks
//! are CELT only at complexity 3 ([`ConnectOptions::opus_application`],
//! [`ConnectOptions::opus_complexity`]): the encoder is a stream's largest single
//! cost, and this cuts it to a third, with 4 ms less codec delay; the price is
//! SILK's in-band FEC (a lost packet is recovered by NACK instead), so `Voip` stays
//! available for lossy links. Both are set through a small wrapper over libopus's C
//! API because the `opus` crate exposes neither.
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
//! and the listener nothing to forward and decode. A subscribed stream whose sender
//! is quiet goes on in silent frames, filled in real time, so a VAD downstream hears
//! the pause as it happens.
//!
//! ## Cost per stream (benchmark)
//!
//! `cargo bench -j2 -p e2e-tests --bench rtc_streams`: N participants in one process,
//! each publishing one track (PCM → Opus → SRTP, paced) and decoding one (SRTP →
//! Opus → PCM at 48 kHz), against the real server on loopback; the far ends run in a
//! child process (complexity 0, to load the machine less) and are not counted. CPU is
//! our process's own (`/proc/self/stat`) over 10 s; jitter is the p99 of
//! |interval − 20 ms| between consecutive frames, at our sender and as decoded by the
//! far ends. On the shared 2-core machine, in two conditions: quiet (other work
//! took < 10 % of the machine) and loaded by other engineers' builds (load average
//! in brackets):
//!
//! | streams | CPU per stream (% of one core) | memory per stream | sent | jitter p99 at sender / receivers |
//! |---|---|---|---|---|
//! | 1, quiet | 1.70 %, 1.90 % (the wake-ups of an idle process: see below) | 7.3 MB (one-time setup) | 50.0 frames/s | 1.0 ms / 1.0 ms |
//! | 10, quiet | 1.11 %, 1.16 %, 1.17 % | 1.1–1.8 MB | 50.0 frames/s | 1.3 ms / 1.3–1.5 ms |
//! | 50, quiet (the bench alone keeps the machine 116 % busy) | 0.87 % | 1.1 MB | 50.0 frames/s, none skipped | 1.5 ms / 2.0 ms |
//!
//! With CELT-only encoding; the same runs in VoIP mode at complexity 3 gave 1.64–1.73 %
//! at 10 streams and 1.37 % at 50 (1.44–1.50 % at 10 with complexity 1, 1.41 % with
//! 0). Per packet, what remains is webrtc-rs's SRTP, RTCP, UDP and the tasks'
//! wake-ups, and the decoder. A lone stream costs more per stream because every
//! packet wakes an idle runtime thread (epoll, futex); with more streams, one wake
//! serves several packets. All rooms received in every run.
//!
//! Memory meets the 2 MB target, and CPU the 1.5 % target at 10 and 50 streams. The
//! send cadence meets the 5 ms target at 50 streams whenever the process gets the CPU
//! it needs. On a machine loaded by other builds (earlier runs, VoIP mode), 50
//! streams skipped 20 % of their slots: the bench alone then needed ~1.6 of the 2
//! cores and the process was starved for tens of milliseconds at a time, so its
//! pacers fell more than 60 ms behind; at `nice -10` none were skipped (jitter
//! 2.8 ms / 3.8 ms).
//!
//! Until the fix below, the bench intermittently showed rooms (0–3 of 10, 0–22 of
//! 50, once the single room of a 1-stream run) where one side never received the
//! other's track. Cause: once connecting on loopback got fast (no STUN gathering),
//! a new track's first RTP reached the SFU before the offer announcing it; with no
//! MID header extension on audio the SFU could not place the SSRC and dropped that
//! stream for good. A published track's sink is now held until the server has
//! answered the offer that carries it. After the fix: 0 of 10 and 0 of 50 rooms
//! receiving nothing, in every run since. Memory per stream at 10 varies between
//! runs (1.1 or 1.8 MB), with the allocator's per-thread arenas.
//!
//! ## Logging
//!
//! Through `tracing`. Note that webrtc-rs's core crate is also called `rtc`: filter
//! on `rtc::engine`, `rtc::audio` for this crate only.
//!
//! ## Layout
//!
//! | file | owns |
//! |---|---|
//! | `room.rs` | the public API: [`connect`], [`Room`], [`RoomEvent`], [`ConnectOptions`] |
//! | `engine.rs` | the engine task: signal loop, peer connections, negotiation, participants, reconnect |
//! | `signal.rs` | signal URL building and the WebSocket framing |
//! | `audio.rs` | PCM frames, Opus, the real-time pacer, the decoder task |
//! | `data.rs` | data packets, text-stream chunking and reassembly (pure) |
//! | `backoff.rs` | the reconnect schedule (pure) |
//! | `msid.rs` | mapping a media stream to participant and track (pure) |
//! | `opus_enc.rs` | the Opus encoder (libopus C API, for complexity and CELT-only mode) |
//! | `pacer.rs` | the pacer's 20 ms grid and cadence histograms (pure) |
//! | `error.rs` | [`RtcError`] |

mod audio;
mod backoff;
pub mod data;
mod engine;
mod error;
mod msid;
mod opus_enc;
mod pacer;
mod room;
pub mod signal;

pub use audio::{
    AudioFrame, AudioStream, FRAME_DURATION, LocalAudioTrack, OPUS_RATES, PacerStats,
    RemoteAudioTrack,
};
pub use backoff::{ReconnectKind, ReconnectPolicy};
pub use data::TextStream;
pub use error::RtcError;
pub use msid::parse_msid;
pub use opus_enc::OpusApplication;
pub use pacer::{CADENCE_BUCKET, CadenceHistogram};
pub use room::{ConnectOptions, DataKind, DisconnectReason, Participant, Room, RoomEvent, connect};
