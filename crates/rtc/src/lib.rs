//! # rtc — a LiveKit room participant in pure Rust
//!
//! (Full documentation below is filled in as the crate settles.)

mod audio;
mod backoff;
pub mod data;
mod engine;
mod error;
mod msid;
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
pub use room::{ConnectOptions, DataKind, DisconnectReason, Participant, Room, RoomEvent, connect};
