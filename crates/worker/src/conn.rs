//! The `/agent` WebSocket: URL, token, framing (binary protobuf `WorkerMessage`
//! out, `ServerMessage` in) and the reconnect schedule. The URL building, the
//! tokens and the backoff function are `livekit-plumbing`'s.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use livekit_plumbing::{ApiCredentials, Backoff, Scheme, Secret, TokenError, service_url};
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

/// How long the worker waits before reconnecting: 0.5 s doubling to a 30 s
/// cap, spread over the upper half by jitter so that a fleet restarted
/// together does not reconnect in step.
pub(crate) const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// `ws(s)://HOST[/prefix]/agent` from the server URL (`http(s)` or `ws(s)`).
pub fn agent_url(server: &str) -> Result<String, WorkerError> {
    Ok(service_url(server, Scheme::WebSocket, "agent")?.into())
}

/// A room token for `connect --room`: join, publish, subscribe, data, own attributes.
pub fn room_token(
    api_key: &str,
    api_secret: &str,
    identity: &str,
    room: &str,
    ttl: Duration,
) -> Result<String, WorkerError> {
    let creds = ApiCredentials::new(api_key, api_secret);
    Ok(creds.room_token(identity, room, ttl)?.into_exposed())
}

/// Opens the WebSocket; the token goes in `Authorization`, never in the URL.
pub(crate) async fn connect(url: &str, token: &Secret) -> Result<(WsSink, WsStream), WorkerError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| WorkerError::Connect(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        WorkerError::Token(TokenError {
            reason: "not a valid header value".into(),
        })
    })?;
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
        assert_eq!(
            agent_url("https://h.example/lk/").ok().as_deref(),
            Some("wss://h.example/lk/agent")
        );
        assert!(matches!(
            agent_url("h:7880"),
            Err(WorkerError::InvalidUrl(_))
        ));
    }

    #[test]
    fn reconnects_back_off_to_a_cap() {
        assert_eq!(RECONNECT.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(RECONNECT.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(RECONNECT.delay(10, 1.0), Duration::from_secs(30));
        assert_eq!(RECONNECT.delay(u32::MAX, 9.0), Duration::from_secs(30));
        assert_eq!(RECONNECT.delay(0, 0.0), Duration::from_millis(250));
    }
}
