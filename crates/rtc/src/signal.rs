//! The signal connection: URL building (pure, tested) and a WebSocket carrying
//! binary protobuf `SignalRequest`s out and `SignalResponse`s in.
//!
//! The access token travels only in the `Authorization: Bearer` header, never in
//! the URL, so it cannot leak through URL logging; errors never include it.

use futures::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::RtcError;

/// The LiveKit signal protocol version we speak.
pub const PROTOCOL_VERSION: u32 = 16;
/// Client protocol advertised to other participants: 1 = data streams (v1 format) and RPC.
pub const CLIENT_PROTOCOL: u32 = 1;

/// Parameters of the signal URL.
#[derive(Debug, Clone, Default)]
pub struct UrlParams<'a> {
    /// Subscribe to every track automatically.
    pub auto_subscribe: bool,
    /// `Some((participant sid, reason))` to resume a session.
    pub reconnect: Option<(&'a str, i32)>,
}

/// Build `ws(s)://host[/prefix]/rtc?...` from a server URL (`ws`, `wss`, `http`, `https`).
pub fn signal_url(base: &str, params: &UrlParams<'_>) -> Result<String, RtcError> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| RtcError::InvalidUrl("missing scheme".into()))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(RtcError::InvalidUrl(format!(
                "unsupported scheme {other:?}"
            )));
        }
    };
    // Drop any query or fragment the caller passed; keep a path prefix.
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(RtcError::InvalidUrl("missing host".into()));
    }
    let mut url = format!("{scheme}://{host}");
    if !path.is_empty() {
        url.push('/');
        url.push_str(path);
    }
    url.push_str("/rtc?sdk=rust");
    url.push_str(&format!(
        "&version={}&protocol={PROTOCOL_VERSION}&client_protocol={CLIENT_PROTOCOL}",
        env!("CARGO_PKG_VERSION")
    ));
    url.push_str(if params.auto_subscribe {
        "&auto_subscribe=1"
    } else {
        "&auto_subscribe=0"
    });
    url.push_str("&adaptive_stream=0");
    if let Some((sid, reason)) = params.reconnect {
        url.push_str("&reconnect=1&sid=");
        url.push_str(&percent_encode(sid));
        url.push_str(&format!("&reconnect_reason={reason}"));
    }
    Ok(url)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Local UDP bind addresses for ICE when the caller gave none: loopback for a server
/// on loopback (a wildcard bind skips the loopback interface), else every interface.
pub fn default_udp_addrs(server_url: &str) -> Vec<String> {
    let rest = server_url
        .split_once("://")
        .map(|x| x.1)
        .unwrap_or(server_url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map(|x| x.0).unwrap_or(authority)
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        if host.contains(':') {
            vec!["[::1]:0".to_owned()]
        } else {
            vec!["127.0.0.1:0".to_owned()]
        }
    } else {
        vec!["0.0.0.0:0".to_owned()]
    }
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type WsSink = futures::stream::SplitSink<Ws, Message>;
pub(crate) type WsStream = futures::stream::SplitStream<Ws>;

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every
/// read, including each poll that finds nothing to read: with a socket per session
/// that was the worker's hottest function, and RSS it never needed. Our messages
/// are small; a larger one just takes several reads.
fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Open the signal WebSocket.
pub(crate) async fn connect(url: &str, token: &str) -> Result<(WsSink, WsStream), RtcError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| RtcError::InvalidUrl(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        RtcError::InvalidArgument("token has characters not allowed in a header".into())
    })?;
    request.headers_mut().insert("Authorization", auth);
    let (ws, _resp) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).chars().take(200).collect())
                        .unwrap_or_default();
                    RtcError::Refused { status, body }
                }
                other => RtcError::SignalConnect(other.to_string()),
            })?;
    Ok(ws.split())
}

/// Send one request.
pub(crate) async fn send(
    sink: &mut WsSink,
    msg: proto::signal_request::Message,
) -> Result<(), RtcError> {
    let req = proto::SignalRequest { message: Some(msg) };
    sink.send(Message::Binary(req.encode_to_vec().into()))
        .await
        .map_err(|e| RtcError::SignalClosed(e.to_string()))
}

/// The next response; `Err` when the connection is gone or sent garbage.
pub(crate) async fn recv(
    stream: &mut WsStream,
) -> Result<proto::signal_response::Message, RtcError> {
    loop {
        let msg = match stream.next().await {
            None => return Err(RtcError::SignalClosed("end of stream".into())),
            Some(Err(e)) => return Err(RtcError::SignalClosed(e.to_string())),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(b) => {
                let resp = proto::SignalResponse::decode(b.as_ref())?;
                if let Some(m) = resp.message {
                    return Ok(m);
                }
            }
            Message::Close(frame) => {
                return Err(RtcError::SignalClosed(
                    frame
                        .map(|f| f.reason.to_string())
                        .unwrap_or_else(|| "closed".into()),
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_join_url() {
        let u = signal_url(
            "http://127.0.0.1:7880",
            &UrlParams {
                auto_subscribe: true,
                reconnect: None,
            },
        )
        .unwrap();
        assert!(u.starts_with("ws://127.0.0.1:7880/rtc?sdk=rust&"), "{u}");
        assert!(
            u.contains("&protocol=16&client_protocol=1&auto_subscribe=1&adaptive_stream=0"),
            "{u}"
        );
        assert!(!u.contains("reconnect"));
    }

    #[test]
    fn builds_resume_url_and_keeps_prefix() {
        let u = signal_url(
            "wss://example.test/base/?x=1",
            &UrlParams {
                auto_subscribe: false,
                reconnect: Some(("PA_a b", 1)),
            },
        )
        .unwrap();
        assert!(u.starts_with("wss://example.test/base/rtc?"), "{u}");
        assert!(
            u.ends_with("&reconnect=1&sid=PA_a%20b&reconnect_reason=1"),
            "{u}"
        );
        assert!(u.contains("auto_subscribe=0"));
    }

    #[test]
    fn udp_addrs_follow_the_server() {
        assert_eq!(
            default_udp_addrs("ws://127.0.0.1:7880"),
            vec!["127.0.0.1:0"]
        );
        assert_eq!(
            default_udp_addrs("http://localhost:7880/x"),
            vec!["127.0.0.1:0"]
        );
        assert_eq!(default_udp_addrs("ws://[::1]:7880"), vec!["[::1]:0"]);
        assert_eq!(
            default_udp_addrs("wss://example.livekit.cloud"),
            vec!["0.0.0.0:0"]
        );
        assert_eq!(default_udp_addrs("wss://10.0.0.1:443"), vec!["0.0.0.0:0"]);
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(signal_url("ftp://x", &UrlParams::default()).is_err());
        assert!(signal_url("nohost", &UrlParams::default()).is_err());
        assert!(signal_url("ws://", &UrlParams::default()).is_err());
    }
}
