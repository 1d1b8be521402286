//! The crate's one error type, [`KimiError`], and its mapping onto the
//! session's [`StageError`]. No variant ever holds a key, secret or token:
//! messages that come from a server are passed through `Redactor` first.

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
            KimiError::MissingCredentials { .. } | KimiError::Config(_) | KimiError::Client(_) => {
                ErrorKind::Config
            }
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

/// Removes known secrets from text that came from outside (server messages,
/// transport errors) before it goes into an error or a log line.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub(crate) fn add(&mut self, secret: &str) {
        // Very short strings would redact ordinary words; real keys are long.
        if secret.len() >= 4 && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
        }
    }

    pub(crate) fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        redact_jwts(&out)
    }
}

/// Replaces anything shaped like a JWT (`eyJ…​.…​.…`) with `[redacted]`: a
/// server may echo the token it refused.
fn redact_jwts(text: &str) -> String {
    if !text.contains("eyJ") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let candidate = &tail[..len];
        if candidate.matches('.').count() >= 2 {
            out.push_str("[redacted]");
        } else {
            out.push_str(candidate);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
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
    }

    #[test]
    fn redactor_removes_secrets_and_jwts() {
        let mut r = Redactor::default();
        r.add("s3cr3t-value");
        r.add("ab"); // too short to redact safely
        let text = "bad key s3cr3t-value; token eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJrIn0.sig_-x ok; eyJnot-a-jwt ab";
        let clean = r.clean(text);
        assert!(!clean.contains("s3cr3t-value"));
        assert!(!clean.contains("eyJhbGciOiJIUzI1NiJ9"));
        assert!(clean.contains("eyJnot-a-jwt"));
        assert!(clean.ends_with(" ab"));
    }
}
