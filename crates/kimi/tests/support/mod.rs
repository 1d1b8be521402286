//! A local stand-in for LiveKit Inference's gateway (and for Baseten / any
//! OpenAI-compatible server), bound to 127.0.0.1:0. It checks what the real
//! gateway checks — the HS256 JWT's signature and claims, the headers, the
//! body — and answers from a script of replies: event streams delivered in
//! arbitrary pieces with pauses, cuts, and error statuses.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const KEY: &str = "APItestKey123";
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const BASETEN_KEY: &str = "bt-key-0123456789abcdef";

/// How the server authenticates requests.
#[derive(Clone, Debug)]
pub enum Auth {
    /// LiveKit Inference: HS256 JWT signed with `secret`, `iss` = `key`.
    Livekit { key: String, secret: String },
    /// A static bearer key.
    Bearer(String),
    /// No check.
    None,
}

/// One piece of a streamed reply.
#[derive(Clone, Debug)]
pub enum Step {
    Bytes(Vec<u8>),
    Sleep(Duration),
    /// Abort the connection (a body error makes hyper drop it).
    Cut,
}

#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 `text/event-stream` with these steps.
    Stream(Vec<Step>),
    /// Any status, headers and body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: hyper::HeaderMap,
    pub body: Value,
    /// Verified JWT claims (LiveKit auth only).
    pub claims: Option<Value>,
    /// The raw bearer token, to check it never leaks.
    pub bearer: Option<String>,
    /// Why the gateway refused the request, if it did.
    pub refused: Option<String>,
}

struct State {
    auth: Auth,
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Fired when a streamed body is dropped (finished or the client left).
    body_dropped: Mutex<Vec<oneshot::Sender<()>>>,
}

pub struct Gateway {
    pub base_url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    pub async fn start(auth: Auth, script: Vec<Reply>) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            auth,
            script: Mutex::new(script.into()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            body_dropped: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gateway {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// A receiver fired when the next streamed body is dropped by the server
    /// (after it is fully sent, or when the client went away).
    pub fn on_body_dropped(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.state.body_dropped.lock().unwrap().push(tx);
        rx
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: u16, headers: &[(String, String)], body: String) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(k.as_str(), v.as_str());
    }
    r.header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("response")
}

struct DropGuard(Option<oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let mut seen = Seen {
        headers: parts.headers.clone(),
        body: body.clone(),
        claims: None,
        bearer: bearer.clone(),
        refused: None,
    };

    if parts.method != hyper::Method::POST || parts.uri.path() != "/v1/chat/completions" {
        seen.refused = Some(format!("{} {}", parts.method, parts.uri.path()));
        st.seen.lock().unwrap().push(seen);
        return Ok(full(
            404,
            &[],
            r#"{"error":{"message":"not found"}}"#.into(),
        ));
    }

    // Authentication, as the gateway does it.
    let auth_result = match &st.auth {
        Auth::Livekit { key, secret } => match bearer.as_deref() {
            None => Err("missing bearer token".to_string()),
            Some(token) => verify_jwt(token, key, secret).map(|claims| {
                seen.claims = Some(claims);
            }),
        },
        Auth::Bearer(key) => match bearer.as_deref() {
            Some(b) if b == key => Ok(()),
            _ => Err("invalid api key".to_string()),
        },
        Auth::None => Ok(()),
    };
    if let Err(why) = auth_result {
        seen.refused = Some(why.clone());
        st.seen.lock().unwrap().push(seen);
        return Ok(full(
            401,
            &[],
            json!({"error": {"message": format!("unauthorized: {why}")}}).to_string(),
        ));
    }

    // The body, as the gateway checks it.
    if let Err(why) = check_body(&body) {
        seen.refused = Some(why.clone());
        st.seen.lock().unwrap().push(seen);
        return Ok(full(
            400,
            &[],
            json!({"error": {"message": why}}).to_string(),
        ));
    }
    st.seen.lock().unwrap().push(seen);

    let reply = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::Stream(vec![Step::Bytes(hello_stream().into_bytes())]));
    match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => Ok(full(status, &headers, body)),
        Reply::Stream(steps) => {
            let guard = DropGuard(st.body_dropped.lock().unwrap().pop());
            let steps: VecDeque<Step> = steps.into();
            let stream = futures::stream::unfold((steps, guard), |(mut steps, guard)| async move {
                loop {
                    match steps.pop_front()? {
                        Step::Bytes(b) => {
                            return Some((Ok(Frame::data(Bytes::from(b))), (steps, guard)));
                        }
                        Step::Sleep(d) => tokio::time::sleep(d).await,
                        Step::Cut => {
                            return Some((
                                Err(std::io::Error::other("cut")),
                                (VecDeque::new(), guard),
                            ));
                        }
                    }
                }
            });
            Ok(Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("x-livekit-inference-rpm-remaining", "99")
                .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
                .expect("response"))
        }
    }
}

/// Verifies an HS256 JWT the way LiveKit does: signature with the secret,
/// `iss` = key, a subject, the nbf/exp window, `inference.perform`.
pub fn verify_jwt(token: &str, key: &str, secret: &str) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token".into());
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|_| "header b64")?)
            .map_err(|_| "header json")?;
    if header["alg"] != "HS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "hmac key")?;
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "sig b64")?;
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "claims b64")?)
            .map_err(|_| "claims json")?;
    if claims["iss"] != key {
        return Err("iss is not the api key".into());
    }
    if claims["sub"].as_str().is_none_or(str::is_empty) {
        return Err("no sub".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nbf = claims["nbf"].as_i64().ok_or("no nbf")?;
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if nbf > now + 5 {
        return Err("not yet valid".into());
    }
    if exp <= now {
        return Err("expired".into());
    }
    if !(595..=605).contains(&(exp - nbf)) {
        return Err(format!("ttl {} is not 600 s", exp - nbf));
    }
    if claims["inference"]["perform"] != true {
        return Err("no inference.perform grant".into());
    }
    Ok(claims)
}

fn check_body(body: &Value) -> Result<(), String> {
    if !body["model"].is_string() {
        return Err("model is required".into());
    }
    if body["messages"].as_array().is_none_or(|m| m.is_empty()) {
        return Err("messages are required".into());
    }
    if body["stream"] != true {
        return Err("stream must be true".into());
    }
    if body["stream_options"]["include_usage"] != true {
        return Err("stream_options.include_usage must be true".into());
    }
    if body.get("provider").is_some() {
        return Err("provider is not a body field".into());
    }
    Ok(())
}

// ------------------------------------------------------------ replies

pub fn event(json: Value) -> String {
    format!("data: {json}\n\n")
}

pub fn content(text: &str) -> String {
    event(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "moonshotai/kimi-k2-instruct",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
    }))
}

pub fn finish(reason: &str) -> String {
    event(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]
    }))
}

pub fn usage(prompt: u64, completion: u64, cached: u64) -> String {
    event(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}}
    }))
}

pub const DONE: &str = "data: [DONE]\n\n";

/// A complete Kimi-style reply, as one string.
pub fn hello_stream() -> String {
    [
        event(json!({"id":"chatcmpl-1","object":"chat.completion.chunk",
            "choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})),
        content("Hello"),
        content("! How can"),
        content(" I help?"),
        finish("stop"),
        usage(21, 7, 16),
        DONE.to_string(),
    ]
    .concat()
}

pub fn stream_of(parts: &[String]) -> Reply {
    Reply::Stream(
        parts
            .iter()
            .map(|p| Step::Bytes(p.clone().into_bytes()))
            .collect(),
    )
}
