//! Local I/O for a session: typed text on stdin/stdout, and WAV files in and
//! out processed faster than real time on a media clock.
//!
//! # Layout
//! - [`text`]: `console --text`: each stdin line is a user turn.
//! - [`file`]: `console --input-file IN.wav --output-file OUT.wav`.
//! - [`wav`]: reading any WAV into PCM frames, writing the agent's speech.

pub mod file;
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
