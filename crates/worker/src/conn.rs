//! The `/agent` WebSocket: URL, token, framing (binary protobuf `WorkerMessage`
//! out, `ServerMessage` in) and the reconnect backoff (pure).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::WorkerError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type WsSink = futures::stream::SplitSink<Ws, Message>;
pub(crate) type WsStream = futures::stream::SplitStream<Ws>;

/// `ws(s)://HOST/agent` from the server URL (`http(s)` or `ws(s)`).
pub fn agent_url(server: &str) -> Result<String, WorkerError> {
    let s = server.trim().trim_end_matches('/');
    let rest = if let Some(r) = s.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = s.strip_prefix("http://") {
        format!("ws://{r}")
    } else if s.starts_with("wss://") || s.starts_with("ws://") {
        s.to_owned()
    } else {
        return Err(WorkerError::InvalidUrl(
            "the URL must start with ws://, wss://, http:// or https://".into(),
        ));
    };
    Ok(format!("{rest}/agent"))
}

/// A token for `/agent`: video grant `agent = true`, valid for `ttl`.
pub fn worker_token(api_key: &str, api_secret: &str, ttl: Duration) -> Result<String, WorkerError> {
    livekit_api::access_token::AccessToken::with_api_key(api_key, api_secret)
        .with_ttl(ttl)
        .with_grants(livekit_api::access_token::VideoGrants {
            agent: true,
            ..Default::default()
        })
        .to_jwt()
        .map_err(|e| WorkerError::Token(e.to_string()))
}

/// A room token for `connect --room`: join, publish, subscribe, data, own attributes.
pub fn room_token(
    api_key: &str,
    api_secret: &str,
    identity: &str,
    room: &str,
    ttl: Duration,
) -> Result<String, WorkerError> {
    livekit_api::access_token::AccessToken::with_api_key(api_key, api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_kind("agent")
        .with_ttl(ttl)
        .with_grants(livekit_api::access_token::VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            agent: true,
            ..Default::default()
        })
        .to_jwt()
        .map_err(|e| WorkerError::Token(e.to_string()))
}

/// Opens the WebSocket; the token goes in `Authorization`, never in the URL.
pub(crate) async fn connect(url: &str, token: &str) -> Result<(WsSink, WsStream), WorkerError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| WorkerError::InvalidUrl(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| WorkerError::Token("not a valid header value".into()))?;
    request.headers_mut().insert("Authorization", auth);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => WorkerError::Refused {
                status: resp.status().as_u16(),
            },
            other => WorkerError::Connect(other.to_string()),
        })?;
    Ok(ws.split())
}

pub(crate) async fn send(
    sink: &mut WsSink,
    msg: proto::worker_message::Message,
) -> Result<(), WorkerError> {
    let m = proto::WorkerMessage { message: Some(msg) };
    sink.send(Message::Binary(m.encode_to_vec().into()))
        .await
        .map_err(|e| WorkerError::Lost(e.to_string()))
}

/// The next server message; `Err` when the connection is gone or sent garbage.
pub(crate) async fn recv(
    stream: &mut WsStream,
) -> Result<proto::server_message::Message, WorkerError> {
    loop {
        match stream.next().await {
            None => return Err(WorkerError::Lost("end of stream".into())),
            Some(Err(e)) => return Err(WorkerError::Lost(e.to_string())),
            Some(Ok(Message::Binary(b))) => {
                let m = proto::ServerMessage::decode(b.as_ref())
                    .map_err(|e| WorkerError::Lost(format!("undecodable message: {e}")))?;
                if let Some(m) = m.message {
                    return Ok(m);
                }
            }
            Some(Ok(Message::Close(f))) => {
                return Err(WorkerError::Lost(
                    f.map(|f| f.reason.to_string())
                        .unwrap_or_else(|| "closed".into()),
                ));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Delay before reconnect attempt `attempt` (0-based): 0.5 s doubling to a
/// 30 s cap, scaled by `jitter` (0.5–1.5 keeps a fleet from reconnecting in step).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(16) as i32);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.5, 1.5)
    } else {
        1.0
    };
    Duration::from_secs_f64(base.min(30.0) * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_url_from_any_scheme() {
        assert_eq!(
            agent_url("http://h:7880").ok().as_deref(),
            Some("ws://h:7880/agent")
        );
        assert_eq!(
            agent_url("https://h/").ok().as_deref(),
            Some("wss://h/agent")
        );
        assert_eq!(agent_url("ws://h").ok().as_deref(), Some("ws://h/agent"));
        assert!(agent_url("h:7880").is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(10, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, 9.0), Duration::from_secs(45));
        assert_eq!(backoff(0, f64::NAN), Duration::from_millis(500));
    }

    #[test]
    fn worker_token_has_the_agent_grant_and_no_secret() {
        let t = worker_token("key", "a-very-secret-value", Duration::from_secs(60)).expect("token");
        assert!(!t.contains("a-very-secret-value"));
        let payload = t.split('.').nth(1).expect("jwt");
        // base64url of `"agent":true` inside the video grant is not stable to grep;
        // decode instead.
        let bytes = decode_b64url(payload);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\"agent\":true"), "{text}");
    }

    fn decode_b64url(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes() {
            let Some(v) = A.iter().position(|&x| x == c) else {
                continue;
            };
            acc = (acc << 6) | v as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}
