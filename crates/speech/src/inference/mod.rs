//! LiveKit Inference speech: streaming STT and TTS over the gateway's
//! websockets, with the same credentials and base URL as the LLM.
//!
//! # Layout
//! - this file: [`InferenceOptions`] (base URL, identity, timeouts), the
//!   endpoint and credentials of a client, the per-connection HS256 JWT, and
//!   `connect` (the websocket upgrade, its errors mapped onto [`SpeechError`]).
//!   Secrets, the environment's variables, the token and the URL building are
//!   `livekit-plumbing`'s, shared with `kimi`.
//! - [`stt`]: [`InferenceStt`]: `/stt?model=M`, one connection per session
//!   kept across turns, transparent reconnect that replays the turn's audio.
//! - [`tts`]: [`InferenceTts`]: `/tts?model=M`, a pool of connections across
//!   replies, refreshed after [`TTS_MAX_SESSION`].
//!
//! # Secrets
//! Keys live in `livekit_plumbing::Secret`, whose `Debug` is `[redacted]` and
//! which has no `Display`. Text that comes from a server (HTTP bodies at the
//! upgrade, `error` events, transport errors) goes through the credentials'
//! redactor — key, secret and any JWT removed, then cut to 300 characters —
//! before it can reach an error or a log line.

pub mod stt;
pub mod tts;

use std::time::Duration;

use agent::JobContext;
use futures::{SinkExt, StreamExt};
use livekit_plumbing::{
    ApiCredentials, INFERENCE_TOKEN_TTL, Redactor, Scheme, Secret, inference_base_url, service_url,
    set_query,
};
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
pub const DEFAULT_URL: &str = livekit_plumbing::DEFAULT_INFERENCE_URL;
/// Lifetime of a connection's token: it is checked at the upgrade only.
pub const TOKEN_TTL: Duration = INFERENCE_TOKEN_TTL;

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

/// The API key and secret tokens are signed with, the identity they name,
/// and a redactor that knows both (for text a server sends back).
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    api: ApiCredentials,
    identity: String,
    redactor: Redactor,
}

/// Most of a server's text kept in an error.
const MAX_SERVER_TEXT: usize = 300;

impl Credentials {
    /// `LIVEKIT_INFERENCE_API_KEY`/`_SECRET`, each falling back to
    /// `LIVEKIT_API_KEY`/`_SECRET`.
    pub(crate) fn from_env(
        service: &'static str,
        identity: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SpeechError> {
        let api = ApiCredentials::inference_from_env(env).map_err(|missing| {
            SpeechError::MissingCredentials {
                service,
                vars: missing.vars,
            }
        })?;
        Ok(Self {
            redactor: api.redactor(),
            api,
            identity: identity.to_string(),
        })
    }

    /// A fresh HS256 JWT: `iss` = key, `sub` = identity, `nbf` = now, `exp` =
    /// now + [`TOKEN_TTL`], `inference: {perform: true}`.
    pub(crate) fn token(&self) -> Result<Secret, SpeechError> {
        Ok(self.api.inference_token(&self.identity, TOKEN_TTL)?)
    }

    /// Text a server sent, with the key, the secret and any JWT removed, then
    /// cut to [`MAX_SERVER_TEXT`] characters (in that order: a secret
    /// straddling the cut would otherwise leave its prefix).
    pub(crate) fn clean(&self, text: &str) -> String {
        self.redactor.clean_truncated(text, MAX_SERVER_TEXT)
    }
}

/// What a client connects to: the websocket URL of `path` (`stt`, `tts`)
/// under the base from the options, then `LIVEKIT_INFERENCE_URL`, then
/// [`DEFAULT_URL`] (`http(s)` turned into `ws(s)`), asking for `model`; and
/// the credentials from `env`.
pub(crate) fn endpoint(
    service: &'static str,
    common: &InferenceOptions,
    path: &str,
    model: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Credentials, String), SpeechError> {
    if model.trim().is_empty() {
        return Err(SpeechError::Config(format!("{service} needs a model")));
    }
    let creds = Credentials::from_env(service, &common.identity, env)?;
    let base = inference_base_url(common.base_url.as_deref(), env);
    let mut url = service_url(&base, Scheme::WebSocket, path)?;
    set_query(&mut url, [("model", model)]);
    Ok((creds, url.into()))
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
    // ring (as crates/room and crates/kimi) unless one is installed already.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| SpeechError::Config(format!("{service}: bad URL: {e}")))?;
    let token = creds.token()?;
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

    fn options(base_url: Option<&str>) -> InferenceOptions {
        InferenceOptions {
            base_url: base_url.map(str::to_string),
            ..InferenceOptions::default()
        }
    }

    const KEYS: &[(&str, &str)] = &[
        ("LIVEKIT_API_KEY", "k-123"),
        ("LIVEKIT_API_SECRET", "s-456"),
    ];

    #[test]
    fn endpoint_prefers_options_then_env_then_default() {
        let e = env(&[
            ("LIVEKIT_INFERENCE_URL", "http://127.0.0.1:9/v1/"),
            ("LIVEKIT_API_KEY", "k-123"),
            ("LIVEKIT_API_SECRET", "s-456"),
        ]);
        let url = |o: &InferenceOptions, env: &dyn Fn(&str) -> Option<String>| {
            endpoint("stt", o, "stt", "deepgram/nova-3", env).map(|(_, url)| url)
        };
        assert_eq!(
            url(&options(None), &e).unwrap(),
            "ws://127.0.0.1:9/v1/stt?model=deepgram/nova-3"
        );
        assert_eq!(
            url(&options(Some("https://gw.example/v1")), &e).unwrap(),
            "wss://gw.example/v1/stt?model=deepgram/nova-3"
        );
        let keys_only = env(KEYS);
        assert_eq!(
            url(&options(None), &keys_only).unwrap(),
            "wss://agent-gateway.livekit.cloud/v1/stt?model=deepgram/nova-3"
        );
        assert!(matches!(
            url(&options(Some("ftp://x")), &keys_only),
            Err(SpeechError::Url(_))
        ));
        // A model id with characters a query cannot hold is escaped.
        let (_, odd) = endpoint("tts", &options(None), "tts", "a b&c", &keys_only).unwrap();
        assert!(odd.ends_with("/tts?model=a%20b%26c"), "{odd}");
        assert!(matches!(
            endpoint("tts", &options(None), "tts", " ", &keys_only),
            Err(SpeechError::Config(_))
        ));
    }

    #[test]
    fn credentials_fall_back_per_variable_and_never_show() {
        let e = env(&[
            ("LIVEKIT_INFERENCE_API_KEY", "ikey"),
            ("LIVEKIT_API_SECRET", "the-secret-value"),
        ]);
        let c = Credentials::from_env("stt", "agent", &e).unwrap();
        assert_eq!(c.api.api_key().expose(), "ikey");
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
    fn a_secret_straddling_the_cut_leaves_no_prefix() {
        const SECRET: &str = "the-secret-value-that-straddles";
        let secret = SECRET;
        let e = env(&[
            ("LIVEKIT_API_KEY", "ikey-0000"),
            ("LIVEKIT_API_SECRET", SECRET),
        ]);
        let c = Credentials::from_env("stt", "agent", &e).unwrap();
        // The secret starts 10 characters before the 300-character cut.
        let body = format!("{}{secret} trailing text", "x".repeat(MAX_SERVER_TEXT - 10));
        let clean = c.clean(&body);
        assert!(!clean.contains("the-secret"), "{clean}");
        assert!(!clean.contains(&secret[..5]), "{clean}");
        assert!(clean.chars().count() <= MAX_SERVER_TEXT + 1, "{clean}");
        // An echoed token goes too.
        let token = c.token().unwrap();
        let echoed = c.clean(&format!("refused {}", token.expose()));
        assert_eq!(echoed, "refused [redacted]");
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
    }
}
