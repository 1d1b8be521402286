//! Local I/O for a session: the machine's microphone and speaker in real
//! time, typed text on stdin/stdout, and WAV files in and out processed
//! faster than real time on a media clock.
//!
//! # Layout
//! - [`live`]: `console` with audio devices: opens them, runs the session,
//!   the pump and the display until Ctrl-C.
//! - [`devices`]: cpal devices: listing, choosing by name, streams whose
//!   callbacks only move samples to and from lock-free rings.
//! - [`pump`]: the audio thread between those rings and the session:
//!   resampling, echo cancellation, meters, buffering measurement, recording.
//! - [`echo`]: the echo canceller (and why this one).
//! - [`display`]: the terminal status line, or plain lines when not a terminal.
//! - [`text`]: `console --text`: each stdin line is a user turn.
//! - [`file`](mod@file): `console --input-file IN.wav --output-file OUT.wav`.
//! - [`wav`]: reading any WAV into PCM frames, writing the agent's speech and
//!   the stereo recording.

pub mod devices;
pub mod display;
pub mod echo;
pub mod file;
pub mod live;
pub mod pump;
pub mod text;
pub mod wav;

use std::path::PathBuf;

use agent::StageError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{path}: {reason}")]
    Wav { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A stage failed in a way no retry fixes (bad credentials, bad
    /// configuration): the console stops.
    #[error("{stage} failed: {error}")]
    Stage {
        stage: &'static str,
        error: StageError,
    },
    /// The machine has no such device at all.
    #[error(
        "no audio {what} device found; to try the agent without audio devices use --text, or --input-file IN.wav --output-file OUT.wav"
    )]
    NoDevice { what: String },
    /// A device could not be found, opened, or failed while running.
    #[error(
        "{what}: {reason}; to try the agent without audio devices use --text, or --input-file IN.wav --output-file OUT.wav"
    )]
    Device { what: String, reason: String },
    #[error("the session ended unexpectedly")]
    SessionEnded,
}

/// Failures the console stops on rather than reporting and going on.
pub(crate) fn is_fatal(error: &StageError) -> bool {
    matches!(
        error.kind,
        agent::ErrorKind::Auth | agent::ErrorKind::Config
    )
}
