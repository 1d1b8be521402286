//! The crate's one error type. Variants are what a caller must tell apart; the
//! text never contains the access token or any other secret.

use std::time::Duration;

/// Everything that can go wrong in a room participant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcError {
    /// The server URL could not be used (bad scheme, no host).
    #[error("invalid LiveKit URL: {0}")]
    InvalidUrl(String),
    /// The WebSocket handshake with the signal server failed.
    #[error("signal connection failed: {0}")]
    SignalConnect(String),
    /// The server refused the join (HTTP status from the WebSocket upgrade, e.g. 401 for a bad token).
    #[error("signal server refused the connection: HTTP {status}: {body}")]
    Refused {
        /// HTTP status code of the refused upgrade.
        status: u16,
        /// The server's explanation, truncated.
        body: String,
    },
    /// The signal connection closed or broke.
    #[error("signal connection closed: {0}")]
    SignalClosed(String),
    /// A message from the server could not be decoded or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The WebRTC stack (webrtc-rs) reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The Opus codec reported an error.
    #[error("opus: {0}")]
    Opus(String),
    /// An argument was out of range (sample rate, channel count, sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The room has been closed (left, or disconnected for good); the handle is dead.
    #[error("room closed")]
    Closed,
    /// The server told us to leave.
    #[error("disconnected by the server: {0:?}")]
    Disconnected(crate::DisconnectReason),
}

impl From<webrtc::error::Error> for RtcError {
    fn from(e: webrtc::error::Error) -> Self {
        RtcError::WebRtc(e.to_string())
    }
}

impl From<opus::Error> for RtcError {
    fn from(e: opus::Error) -> Self {
        RtcError::Opus(e.to_string())
    }
}

impl From<prost::DecodeError> for RtcError {
    fn from(e: prost::DecodeError) -> Self {
        RtcError::Protocol(format!("protobuf decode: {e}"))
    }
}
