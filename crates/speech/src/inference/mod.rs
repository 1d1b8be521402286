//! LiveKit Inference speech: streaming STT and TTS over the gateway's
//! websockets, with the same credentials and base URL as the LLM.
//!
//! # Layout
//! - this file: [`InferenceOptions`] (base URL, identity, timeouts),
//!   credentials (`Secret`, env lookup), the per-connection HS256 JWT, and
//!   `connect` (the websocket upgrade, its errors mapped onto [`SpeechError`]).
//! - [`stt`]: [`InferenceStt`]: `/stt?model=M`, one connection per session
//!   kept across turns, transparent reconnect that replays the turn's audio.
//! - [`tts`]: [`InferenceTts`]: `/tts?model=M`, a pool of connections across
//!   replies, refreshed after [`TTS_MAX_SESSION`].
//!
//! # Secrets
//! Keys live in `Secret`, whose `Debug` is `[redacted]` and which has no
//! `Display`. Text that comes from a server (HTTP bodies at the upgrade,
//! `error` events) goes through `Redactor::clean` before it can reach an
//! error or a log line.

pub mod stt;
pub mod tts;

use std::fmt;
use std::time::Duration;

use agent::JobContext;
use futures::{SinkExt, StreamExt};
use livekit_token::{AccessToken, InferenceGrants};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::SpeechError;

pub use stt::{InferenceStt, InferenceSttOptions};
pub use tts::{InferenceTts, InferenceTtsOptions, TTS_MAX_SESSION};

/// The gateway used when neither `base_url` nor `LIVEKIT_INFERENCE_URL` is set
/// (the same default as the LLM's).
pub const DEFAULT_URL: &str = "https://agent-gateway.livekit.cloud/v1";
/// Lifetime of a connection's token: it is checked at the upgrade only.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// What both clients share: where the gateway is, who we are, how long we wait.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceOptions {
    /// Overrides `LIVEKIT_INFERENCE_URL` and the default gateway; `http(s)`
    /// is turned into `ws(s)`.
    pub base_url: Option<String>,
    /// The token's `sub`.
    pub identity: String,
    /// Time allowed for TCP, TLS and the websocket upgrade.
    pub connect_timeout: Duration,
    /// Longest silence from the server while an answer is owed (STT after
    /// `session.finalize`, TTS after `session.flush`): longer is a stall.
    pub idle_timeout: Duration,
    /// Reconnects in a row (without an answer in between) before a stream
    /// gives up and reports its failure.
    pub max_retries: u32,
}

impl Default for InferenceOptions {
    fn default() -> Self {
        Self {
            base_url: None,
            identity: "agent".into(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_retries: 2,
        }
    }
}

/// A string that must never be shown: `Debug` prints `[redacted]`, no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The API key and secret tokens are signed with.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    api_key: Secret,
    api_secret: Secret,
    identity: String,
}

fn lookup(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

impl Credentials {
    /// `LIVEKIT_INFERENCE_API_KEY`/`_SECRET`, each falling back to
    /// `LIVEKIT_API_KEY`/`_SECRET`.
    pub(crate) fn from_env(
        service: &'static str,
        identity: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SpeechError> {
        let key =
            lookup(env, "LIVEKIT_INFERENCE_API_KEY").or_else(|| lookup(env, "LIVEKIT_API_KEY"));
        let secret = lookup(env, "LIVEKIT_INFERENCE_API_SECRET")
            .or_else(|| lookup(env, "LIVEKIT_API_SECRET"));
        match (key, secret) {
            (Some(key), Some(secret)) => Ok(Self {
                api_key: Secret(key),
                api_secret: Secret(secret),
                identity: identity.to_string(),
            }),
            _ => Err(SpeechError::MissingCredentials {
                service,
                vars: "LIVEKIT_INFERENCE_API_KEY and LIVEKIT_INFERENCE_API_SECRET \
                       (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET)"
                    .into(),
            }),
        }
    }

    /// A fresh HS256 JWT: `iss` = key, `sub` = identity, `nbf` = now, `exp` =
    /// now + [`TOKEN_TTL`], `inference: {perform: true}`.
    pub(crate) fn token(&self, service: &'static str) -> Result<Secret, SpeechError> {
        AccessToken::with_api_key(self.api_key.expose(), self.api_secret.expose())
            .with_identity(&self.identity)
            .with_ttl(TOKEN_TTL)
            .with_inference_grants(InferenceGrants::default().with_perform())
            .to_jwt()
            .map(Secret)
            .map_err(|_| SpeechError::MissingCredentials {
                service,
                vars: "a LiveKit API key and secret that can sign a token".into(),
            })
    }

    /// Removes the key and secret from text a server sent.
    pub(crate) fn clean(&self, text: &str) -> String {
        let mut out: String = text.chars().take(300).collect();
        for s in [&self.api_key, &self.api_secret] {
            if !s.expose().is_empty() {
                out = out.replace(s.expose(), "[redacted]");
            }
        }
        out
    }
}

/// Resolves the websocket base (`ws(s)://…/v1`) from the options, then
/// `LIVEKIT_INFERENCE_URL`, then [`DEFAULT_URL`].
pub(crate) fn ws_base(
    base_url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SpeechError> {
    let base = base_url
        .map(str::to_string)
        .or_else(|| lookup(env, "LIVEKIT_INFERENCE_URL"))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let base = base.trim().trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("wss://") || base.starts_with("ws://") {
        base.to_string()
    } else {
        return Err(SpeechError::Config(format!(
            "LiveKit Inference base URL {base:?} is not http(s) or ws(s)"
        )));
    };
    Ok(ws)
}

/// Percent-encodes a query value, keeping what model ids use unescaped.
pub(crate) fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An 8 KiB read buffer: tungstenite zero-fills all of it (128 KiB by default)
/// before every read, even a poll that finds nothing, which made it the worker's
/// hottest function. A larger message just takes several reads.
fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Opens `url` with a fresh token and the job's headers, within `timeout`.
pub(crate) async fn connect(
    service: &'static str,
    url: &str,
    creds: &Credentials,
    job: &JobContext,
    timeout: Duration,
) -> Result<Ws, SpeechError> {
    // tokio-tungstenite's rustls needs a process-wide crypto provider; use
    // ring (as crates/rtc and crates/kimi) unless one is installed already.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| SpeechError::Config(format!("{service}: bad URL: {e}")))?;
    let token = creds.token(service)?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| SpeechError::Config(format!("{service}: the token is not a valid header")))?;
    let headers = request.headers_mut();
    headers.insert("Authorization", auth);
    headers.insert(
        "User-Agent",
        HeaderValue::from_static(concat!("voice-agent-speech/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in [
        ("X-LiveKit-Room-ID", &job.room_id),
        ("X-LiveKit-Job-ID", &job.job_id),
        ("X-LiveKit-Agent-ID", &job.agent_id),
    ] {
        if let Some(v) = value
            && let Ok(v) = HeaderValue::from_str(v)
        {
            headers.insert(name, v);
        }
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    let (ws, _) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(SpeechError::Timeout {
                service,
                message: format!("no connection within {timeout:?}"),
            });
        }
        Ok(Err(e)) => return Err(upgrade_error(service, creds, e)),
        Ok(Ok(ws)) => ws,
    };
    Ok(ws)
}

/// Maps a failed upgrade onto the error a caller must handle.
fn upgrade_error(service: &'static str, creds: &Credentials, e: tungstenite::Error) -> SpeechError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| creds.clean(&String::from_utf8_lossy(b)))
                .unwrap_or_default();
            status_error(service, status, body)
        }
        other => SpeechError::Connection {
            service,
            message: creds.clean(&other.to_string()),
        },
    }
}

/// An HTTP-like status (at the upgrade, or an error event's `code`) as a
/// typed error.
pub(crate) fn status_error(service: &'static str, status: u16, message: String) -> SpeechError {
    match status {
        401 | 403 => SpeechError::Auth {
            service,
            status,
            message,
        },
        429 => SpeechError::RateLimit { service, message },
        400..=499 => SpeechError::BadRequest {
            service,
            status,
            message,
        },
        _ => SpeechError::Server { service, message },
    }
}

/// An `error` event from the gateway: `{"type":"error","message":…,"code":…}`.
pub(crate) fn error_event(
    service: &'static str,
    creds: &Credentials,
    value: &serde_json::Value,
) -> SpeechError {
    let message = creds.clean(
        value
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("error event without a message"),
    );
    match value.get("code").and_then(serde_json::Value::as_u64) {
        Some(code) if (400..600).contains(&code) => status_error(service, code as u16, message),
        _ => SpeechError::Server { service, message },
    }
}

/// Sends one JSON message.
pub(crate) async fn send_json<S>(
    service: &'static str,
    sink: &mut S,
    value: &serde_json::Value,
) -> Result<(), SpeechError>
where
    S: futures::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    sink.send(Message::Text(value.to_string().into()))
        .await
        .map_err(|e| SpeechError::Connection {
            service,
            message: e.to_string(),
        })
}

/// The next JSON message, skipping pings and binary frames. `Ok(None)` when
/// the server closed the connection.
pub(crate) async fn recv_json<S>(
    service: &'static str,
    stream: &mut S,
) -> Result<Option<serde_json::Value>, SpeechError>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(SpeechError::Connection {
                    service,
                    message: e.to_string(),
                });
            }
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| SpeechError::Protocol {
                        service,
                        message: format!("not JSON: {e}"),
                    });
            }
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

/// Whether a stream may reconnect after `e` (rather than give up at once).
pub(crate) fn is_retryable(e: &SpeechError) -> bool {
    matches!(
        e,
        SpeechError::RateLimit { .. }
            | SpeechError::Server { .. }
            | SpeechError::Connection { .. }
            | SpeechError::Timeout { .. }
            | SpeechError::Protocol { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn base_url_prefers_options_then_env_then_default() {
        let e = env(&[("LIVEKIT_INFERENCE_URL", "http://127.0.0.1:9/v1/")]);
        assert_eq!(ws_base(None, &e).unwrap(), "ws://127.0.0.1:9/v1");
        assert_eq!(
            ws_base(Some("https://gw.example/v1"), &e).unwrap(),
            "wss://gw.example/v1"
        );
        let none = env(&[]);
        assert_eq!(
            ws_base(None, &none).unwrap(),
            "wss://agent-gateway.livekit.cloud/v1"
        );
        assert!(ws_base(Some("ftp://x"), &none).is_err());
    }

    #[test]
    fn credentials_fall_back_per_variable_and_never_show() {
        let e = env(&[
            ("LIVEKIT_INFERENCE_API_KEY", "ikey"),
            ("LIVEKIT_API_SECRET", "the-secret-value"),
        ]);
        let c = Credentials::from_env("stt", "agent", &e).unwrap();
        assert_eq!(c.api_key.expose(), "ikey");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("the-secret-value") && !shown.contains("ikey"),
            "{shown}"
        );
        assert_eq!(
            c.clean("oops the-secret-value leaked"),
            "oops [redacted] leaked"
        );
        let missing = Credentials::from_env("stt", "agent", &env(&[("LIVEKIT_API_KEY", "k")]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("LIVEKIT_API_SECRET"), "{missing}");
    }

    #[test]
    fn statuses_map_to_kinds() {
        use agent::{ErrorKind, StageError};
        let kind = |s| StageError::from(status_error("x", s, String::new())).kind;
        assert_eq!(kind(401), ErrorKind::Auth);
        assert_eq!(kind(403), ErrorKind::Auth);
        assert_eq!(kind(429), ErrorKind::RateLimit);
        assert_eq!(kind(404), ErrorKind::BadRequest);
        assert_eq!(kind(503), ErrorKind::Server);
        assert_eq!(query_escape("deepgram/nova-3"), "deepgram/nova-3");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }
}
