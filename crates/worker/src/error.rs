//! The worker's errors: one enum for the worker loop, one for a job.

/// Why the worker stopped or could not connect.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server URL cannot be used.
    #[error("invalid server URL: {0}")]
    InvalidUrl(#[from] livekit_plumbing::UrlError),
    /// The API key or secret cannot sign a token (the secret is never shown).
    #[error("cannot mint the worker token: {0}")]
    Token(#[from] livekit_plumbing::TokenError),
    /// The `/agent` WebSocket could not be opened.
    #[error("cannot connect to the agent endpoint: {0}")]
    Connect(String),
    /// The server refused the connection (bad key, wrong URL, ...).
    #[error("the server refused the worker: HTTP {status}")]
    Refused { status: u16 },
    /// The connection broke or the server sent something undecodable.
    #[error("agent connection lost: {0}")]
    Lost(String),
    /// The health server could not bind.
    #[error("cannot listen for health checks on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Why a job ended other than normally (reported as `JS_FAILED`).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Joining or talking to the room failed.
    #[error("room: {0}")]
    Room(#[from] room::RtcError),
    /// The room connection is gone for good.
    #[error("the room connection was lost")]
    RoomLost,
    /// The session actor panicked.
    #[error("the session panicked")]
    SessionPanicked,
    /// The agent's entrypoint failed (its error's text, chained).
    #[error("the entrypoint failed: {0}")]
    Entrypoint(String),
    /// The agent's entrypoint panicked.
    #[error("the entrypoint panicked")]
    EntrypointPanicked,
    /// The entrypoint did not return within its time.
    #[error("the entrypoint did not return within {0:?}")]
    EntrypointTimeout(std::time::Duration),
}
