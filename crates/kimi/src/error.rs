//! The crate's one error type, [`KimiError`], and its mapping onto the
//! session's [`StageError`]. No variant ever holds a key, secret or token:
//! messages that come from a server are passed through a
//! `livekit_plumbing::Redactor` first.

use std::fmt;
use std::time::Duration;

use agent::{ErrorKind, StageError};

/// Why a request (or building the client) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KimiError {
    /// Credentials are not set. Names the variables, never their values.
    #[error("missing credentials for the {backend} LLM backend: set {vars}")]
    MissingCredentials {
        /// The backend that needs them.
        backend: &'static str,
        /// The environment variables to set, as a human-readable list.
        vars: String,
    },
    /// The `[llm]` configuration is not usable.
    #[error("invalid [llm] configuration: {0}")]
    Config(String),
    /// A LiveKit Inference token could not be signed with the credentials
    /// found (the secret is never shown).
    #[error("LiveKit Inference: {0}")]
    Token(#[from] livekit_plumbing::TokenError),
    /// The HTTP client could not be built (TLS setup).
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    /// HTTP 401/403: the key, secret or token was refused.
    #[error("authentication failed (HTTP {status}) at {target}: {message}")]
    Auth {
        /// The HTTP status.
        status: u16,
        /// `backend/model` of the target that refused.
        target: String,
        /// The server's message, secrets removed.
        message: String,
    },
    /// HTTP 429. `quota` holds the provider's quota headers
    /// (`X-LiveKit-Inference-*`), name and value.
    #[error(
        "rate limited (HTTP 429) at {target}: {message}{}",
        QuotaDisplay(quota)
    )]
    RateLimit {
        /// `backend/model` of the target that throttled.
        target: String,
        /// The server's message, secrets removed.
        message: String,
        /// The wait `Retry-After` (or `retry-after-ms`) asked for.
        retry_after: Option<Duration>,
        /// `X-LiveKit-Inference-*` response headers, lower-case name and value.
        quota: Vec<(String, String)>,
    },
    /// HTTP 400/404/422 and other 4xx: the request was refused as it stands.
    #[error("request rejected (HTTP {status}) at {target}: {message}")]
    BadRequest {
        /// The HTTP status.
        status: u16,
        /// `backend/model` of the target.
        target: String,
        /// The server's message, secrets removed.
        message: String,
    },
    /// HTTP 5xx.
    #[error("server error (HTTP {status}) at {target}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// `backend/model` of the target.
        target: String,
        /// The server's message, secrets removed.
        message: String,
    },
    /// Connecting took longer than `connect_timeout_ms` (the limit, and the
    /// target's `backend/model`).
    #[error("connect timeout after {0:?} at {1}")]
    ConnectTimeout(Duration, String),
    /// No response head, or no body bytes, for `idle_timeout_ms` (the limit,
    /// and the target's `backend/model`).
    #[error("no data for {0:?} from {1}: the stream stalled")]
    IdleTimeout(Duration, String),
    /// The connection could not be opened.
    #[error("could not connect to {target}: {message}")]
    Connect {
        /// `backend/model` of the target.
        target: String,
        /// What failed, secrets removed.
        message: String,
    },
    /// The connection broke after the request was sent (reset, cut mid-stream).
    #[error("connection lost with {target}: {message}")]
    Connection {
        /// `backend/model` of the target.
        target: String,
        /// What failed, secrets removed.
        message: String,
    },
    /// The server answered something that is not a valid completion stream,
    /// or reported an error inside the stream.
    #[error("protocol error from {target}: {message}")]
    Protocol {
        /// `backend/model` of the target.
        target: String,
        /// What failed, secrets removed.
        message: String,
    },
}

struct QuotaDisplay<'a>(&'a [(String, String)]);

impl fmt::Display for QuotaDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(" (quota:")?;
        for (name, value) in self.0 {
            write!(f, " {name}={value}")?;
        }
        f.write_str(")")
    }
}

impl KimiError {
    /// The session's error kind for this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KimiError::MissingCredentials { .. }
            | KimiError::Config(_)
            | KimiError::Token(_)
            | KimiError::Client(_) => ErrorKind::Config,
            KimiError::Auth { .. } => ErrorKind::Auth,
            KimiError::RateLimit { .. } => ErrorKind::RateLimit,
            KimiError::BadRequest { .. } => ErrorKind::BadRequest,
            KimiError::Server { .. } => ErrorKind::Server,
            KimiError::ConnectTimeout(..) | KimiError::IdleTimeout(..) => ErrorKind::Timeout,
            KimiError::Connect { .. } | KimiError::Connection { .. } => ErrorKind::Connection,
            KimiError::Protocol { .. } => ErrorKind::Protocol,
        }
    }

    /// Whether the same target may succeed when asked again (before the first
    /// token): connect failures, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KimiError::RateLimit { .. }
                | KimiError::Server { .. }
                | KimiError::ConnectTimeout(..)
                | KimiError::Connect { .. }
                | KimiError::Connection { .. }
        )
    }

    /// For 429: how long the server asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KimiError::RateLimit { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<KimiError> for StageError {
    fn from(e: KimiError) -> Self {
        StageError::new(e.kind(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_onto_stage_errors() {
        let e = KimiError::RateLimit {
            target: "livekit/m".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(1)),
            quota: vec![("x-livekit-inference-rpm-remaining".into(), "0".into())],
        };
        let s: StageError = e.into();
        assert_eq!(s.kind, ErrorKind::RateLimit);
        assert!(s.retryable);
        assert!(
            s.message.contains("x-livekit-inference-rpm-remaining=0"),
            "{}",
            s.message
        );

        let s: StageError = KimiError::Auth {
            status: 401,
            target: "t".into(),
            message: "bad token".into(),
        }
        .into();
        assert_eq!(s.kind, ErrorKind::Auth);
        assert!(!s.retryable);
        let s: StageError = KimiError::IdleTimeout(Duration::from_millis(5), "t".into()).into();
        assert_eq!(s.kind, ErrorKind::Timeout);
        let s: StageError = KimiError::MissingCredentials {
            backend: "livekit",
            vars: "A".into(),
        }
        .into();
        assert_eq!(s.kind, ErrorKind::Config);
        let e = KimiError::from(livekit_plumbing::TokenError {
            reason: "Invalid API Key or Secret Key".into(),
        });
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.is_retryable());
    }
}
