//! The signal connection: URL building (public, pure, tested), and, inside the
//! crate, the transport the engine talks to the server through: `SignalTransport`
//! (send a `SignalRequest`, receive a `SignalResponse`) opened by a `Connector`. In
//! a room that is a WebSocket carrying binary protobuf (`WsConnector`); the engine's
//! tests plug in channels instead (`testing`), so negotiation and reconnects are
//! driven message by message without a server.
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

use livekit_plumbing::{Redactor, Scheme, Secret, service_url, set_query};

use crate::RtcError;
use crate::error::SignalLoss;

/// A request to the server.
pub(crate) type Req = proto::signal_request::Message;
/// A response from the server.
pub(crate) type Resp = proto::signal_response::Message;

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
    let mut url = service_url(base, Scheme::WebSocket, "rtc")?;
    let version = env!("CARGO_PKG_VERSION");
    let (protocol, client_protocol) = (PROTOCOL_VERSION.to_string(), CLIENT_PROTOCOL.to_string());
    let mut query = vec![
        ("sdk", "rust"),
        ("version", version),
        ("protocol", protocol.as_str()),
        ("client_protocol", client_protocol.as_str()),
        (
            "auto_subscribe",
            if params.auto_subscribe { "1" } else { "0" },
        ),
        ("adaptive_stream", "0"),
    ];
    let reason;
    if let Some((sid, r)) = params.reconnect {
        reason = r.to_string();
        query.extend([
            ("reconnect", "1"),
            ("sid", sid),
            ("reconnect_reason", reason.as_str()),
        ]);
    }
    set_query(&mut url, query);
    Ok(url.into())
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

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One signal connection: requests out, responses in. The engine owns it in its
/// session and drops it (closing the connection) with the session.
#[async_trait::async_trait]
pub(crate) trait SignalTransport: Send {
    /// Send one request.
    async fn send(&mut self, msg: Req) -> Result<(), RtcError>;
    /// The next response; `Err` when the connection is gone or sent garbage.
    /// Cancel-safe: the engine polls it in a `select!`.
    async fn recv(&mut self) -> Result<Resp, RtcError>;
    /// Close the connection politely (a WebSocket close frame).
    async fn close(&mut self);
}

/// Opens signal connections (the first join, resumes, rejoins).
#[async_trait::async_trait]
pub(crate) trait Connector: Send + Sync {
    /// Connect to the signal `url` with the access `token`.
    async fn connect(&self, url: &str, token: &str) -> Result<Box<dyn SignalTransport>, RtcError>;
}

/// The real thing: a WebSocket (TLS for `wss`) to the LiveKit server.
pub(crate) struct WsConnector;

#[async_trait::async_trait]
impl Connector for WsConnector {
    async fn connect(&self, url: &str, token: &str) -> Result<Box<dyn SignalTransport>, RtcError> {
        Ok(Box::new(WsTransport(connect(url, token).await?)))
    }
}

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every
/// read, including each poll that finds nothing to read: with a socket per session
/// that was the worker's hottest function, and RSS it never needed. Our messages
/// are small; a larger one just takes several reads.
fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Open the signal WebSocket.
async fn connect(url: &str, token: &str) -> Result<Ws, RtcError> {
    let mut request = url.into_client_request().map_err(RtcError::SignalConnect)?;
    let auth =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RtcError::InvalidToken)?;
    request.headers_mut().insert("Authorization", auth);
    let (ws, _resp) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true)
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    let status = resp.status().as_u16();
                    // A server may echo the token: redact it, then cut.
                    let mut redactor = Redactor::default();
                    redactor.add(&Secret::new(token));
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| redactor.clean_truncated(&String::from_utf8_lossy(b), 200))
                        .unwrap_or_default();
                    RtcError::Refused { status, body }
                }
                other => RtcError::SignalConnect(other),
            })?;
    Ok(ws)
}

/// Binary protobuf over a WebSocket.
struct WsTransport(Ws);

#[async_trait::async_trait]
impl SignalTransport for WsTransport {
    async fn send(&mut self, msg: Req) -> Result<(), RtcError> {
        let req = proto::SignalRequest { message: Some(msg) };
        self.0
            .send(Message::Binary(req.encode_to_vec().into()))
            .await
            .map_err(|e| SignalLoss::Socket(e).into())
    }

    async fn recv(&mut self) -> Result<Resp, RtcError> {
        loop {
            let msg = match self.0.next().await {
                None => return Err(SignalLoss::EndOfStream.into()),
                Some(Err(e)) => return Err(SignalLoss::Socket(e).into()),
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
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(SignalLoss::CloseFrame(reason).into());
                }
                _ => {}
            }
        }
    }

    async fn close(&mut self) {
        let _ = SinkExt::close(&mut self.0).await;
    }
}

/// Channel-backed transports for the engine's tests: the test plays the server.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Messages a test server end holds at most in each direction.
    const CAPACITY: usize = 256;

    /// The client end, handed to the engine.
    struct ChannelTransport {
        tx: mpsc::Sender<Req>,
        rx: mpsc::Receiver<Resp>,
    }

    #[async_trait::async_trait]
    impl SignalTransport for ChannelTransport {
        async fn send(&mut self, msg: Req) -> Result<(), RtcError> {
            self.tx
                .send(msg)
                .await
                .map_err(|_| SignalLoss::EndOfStream.into())
        }

        async fn recv(&mut self) -> Result<Resp, RtcError> {
            self.rx
                .recv()
                .await
                .ok_or(RtcError::SignalClosed(SignalLoss::EndOfStream))
        }

        async fn close(&mut self) {
            self.rx.close();
        }
    }

    /// The server end of one connection. Dropping it is a lost signal.
    pub(crate) struct ServerEnd {
        pub(crate) tx: mpsc::Sender<Resp>,
        pub(crate) rx: mpsc::Receiver<Req>,
    }

    /// A dial waiting for the test to accept or refuse it.
    pub(crate) struct Dial {
        /// The URL the client dialled (query included).
        pub(crate) url: String,
        reply: oneshot::Sender<Result<Box<dyn SignalTransport>, RtcError>>,
    }

    impl Dial {
        /// Accept: the connection is up.
        pub(crate) fn accept(self) -> ServerEnd {
            let (to_client, rx) = mpsc::channel(CAPACITY);
            let (tx, from_client) = mpsc::channel(CAPACITY);
            let _ = self.reply.send(Ok(Box::new(ChannelTransport { tx, rx })));
            ServerEnd {
                tx: to_client,
                rx: from_client,
            }
        }

        /// Refuse, as the server's HTTP upgrade would.
        pub(crate) fn refuse(self, error: RtcError) {
            let _ = self.reply.send(Err(error));
        }
    }

    /// Hands every dial to the test; a test that dropped its receiver refuses them.
    pub(crate) struct ChannelConnector {
        pub(crate) dials: mpsc::Sender<Dial>,
    }

    #[async_trait::async_trait]
    impl Connector for ChannelConnector {
        async fn connect(
            &self,
            url: &str,
            _token: &str,
        ) -> Result<Box<dyn SignalTransport>, RtcError> {
            let (reply, answer) = oneshot::channel();
            let dial = Dial {
                url: url.to_owned(),
                reply,
            };
            self.dials
                .send(dial)
                .await
                .map_err(|_| RtcError::from(SignalLoss::EndOfStream))?;
            answer
                .await
                .map_err(|_| RtcError::from(SignalLoss::EndOfStream))?
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
