//! The crate's one error type, [`RtcError`], and the causes it chains.
//!
//! Variants are what a caller must tell apart: a refused token (`Refused`, with the
//! HTTP status), a dead room (`Closed`), a server that sent us away
//! (`Disconnected`), a wait that ran out (`Timeout`), bad arguments. Errors of the
//! libraries underneath (WebSocket, webrtc-rs, libopus, protobuf) are kept as typed
//! sources (`std::error::Error::source`), not flattened into strings. Each variant's
//! text also includes its cause's, because callers log errors with `Display` alone.
//!
//! The text never contains the access token or any other secret: the token travels
//! only in a request header, which none of these errors carry, and a token that
//! cannot go in a header is reported as [`RtcError::InvalidToken`] without it.

use std::time::Duration;

pub use livekit_plumbing::UrlError;

use crate::frame::OPUS_RATES;

/// The WebSocket library's error (tungstenite, under `tokio-tungstenite`).
pub type WsError = tokio_tungstenite::tungstenite::Error;

/// Everything that can go wrong in a room participant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcError {
    /// The server URL could not be used.
    #[error("invalid LiveKit URL: {0}")]
    InvalidUrl(#[from] UrlError),
    /// The access token has characters an HTTP header cannot carry.
    #[error("the access token has characters not allowed in an HTTP header")]
    InvalidToken,
    /// The WebSocket handshake with the signal server failed (DNS, TCP, TLS, HTTP).
    #[error("signal connection failed: {0}")]
    SignalConnect(#[source] WsError),
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
    SignalClosed(#[from] SignalLoss),
    /// A message from the server could not be decoded.
    #[error("protocol error: undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A message from the server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
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
    WebRtc(#[from] webrtc::error::Error),
    /// The Opus codec (libopus) reported an error.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// A sample rate Opus does not code natively.
    #[error("sample rate {0} Hz: use one of {OPUS_RATES:?} (Opus native rates)")]
    UnsupportedSampleRate(u32),
    /// A frame at another rate than its track takes.
    #[error("frame at {frame} Hz on a track taking {track} Hz")]
    SampleRateMismatch {
        /// The frame's rate.
        frame: u32,
        /// The track's rate.
        track: u32,
    },
    /// Too much data is waiting for a data channel to open.
    #[error("too much data queued while the data channel is not open")]
    DataQueueFull,
    /// The room has been closed (left, or disconnected for good); the handle is dead.
    #[error("room closed")]
    Closed,
    /// The room is gone: the server told us to leave, or reconnecting failed.
    #[error("disconnected: {0:?}")]
    Disconnected(crate::DisconnectReason),
}

/// How the signal connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalLoss {
    /// The stream ended without a close frame.
    #[error("end of stream")]
    EndOfStream,
    /// The server closed the WebSocket; its reason.
    #[error("closed by the server: {0:?}")]
    CloseFrame(String),
    /// The socket failed (I/O, TLS, WebSocket protocol).
    #[error("{0}")]
    Socket(#[source] WsError),
    /// No message at all from the server for the ping timeout it set.
    #[error("no message from the server for {0:?}")]
    Silent(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_chained_and_shown() {
        let e = RtcError::from(SignalLoss::Silent(Duration::from_secs(15)));
        assert_eq!(
            e.to_string(),
            "signal connection closed: no message from the server for 15s"
        );
        assert!(e.source().is_some_and(|s| s.is::<SignalLoss>()));
        let e = RtcError::from(UrlError::NoHost);
        assert_eq!(e.to_string(), "invalid LiveKit URL: the URL has no host");
        let e = RtcError::SignalConnect(WsError::ConnectionClosed);
        assert!(e.source().is_some_and(|s| s.is::<WsError>()));
    }

    #[test]
    fn errors_stay_small() {
        // Results of RtcError are returned on hot paths (every captured frame).
        assert!(
            std::mem::size_of::<RtcError>() <= 64,
            "{}",
            std::mem::size_of::<RtcError>()
        );
    }
}
