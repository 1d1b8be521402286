//! A stand-in for LiveKit Inference's chat completions (and for Baseten,
//! Moonshot or any OpenAI-compatible server), bound to 127.0.0.1:0. It checks
//! what the real servers check — the HS256 JWT's signature and claims, the
//! headers, the body, and like Moonshot the tool-call history, the
//! `reasoning_content` a thinking model's tool-call turns need and the
//! sampling K2.5/K2.6 accept — and answers from a script of replies: event
//! streams delivered in arbitrary pieces with pauses, cuts, and error
//! statuses. Refusals are HTTP 400 with an OpenAI-style error body, worded as
//! Moonshot words them. Served with hyper, so that clients meet real HTTP
//! (chunked bodies, keep-alive, connections dropped mid-body).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use super::{KEY, SECRET, livekit_env, verify_jwt};
pub use crate::llm::{check_tool_history, split_bytes};

/// A Baseten API key the stand-in accepts as a bearer key.
pub const BASETEN_KEY: &str = "bt-key-0123456789abcdef";

/// LiveKit Inference's authentication with [`KEY`] and [`SECRET`].
pub fn lk_auth() -> Auth {
    Auth::Livekit {
        key: KEY.into(),
        secret: SECRET.into(),
    }
}

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

/// Which server the stand-in plays, for what it does when a request sends no
/// thinking switch. Every flavour enforces Moonshot's rules for K2.5/K2.6
/// (stricter than LiveKit or vLLM may be: a client right here is right
/// everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// LiveKit Inference serving Kimi from Baseten: thinking is opt-in.
    Livekit,
    /// Moonshot's API: K2.5/K2.6 think unless `thinking.type` is
    /// `disabled`.
    Moonshot,
    /// A vLLM/SGLang deployment: the chat template thinks unless
    /// `chat_template_kwargs.thinking` is false.
    Vllm,
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
    flavour: Flavour,
    /// The replies still to give, in order; then [`hello_stream`].
    script: Mutex<VecDeque<Reply>>,
    /// Every request, refused ones included.
    seen: Mutex<Vec<Seen>>,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Fired when a streamed body is dropped (finished or the client left).
    body_dropped: Mutex<Vec<oneshot::Sender<()>>>,
}

/// The running stand-in; stops accepting when dropped.
pub struct Gateway {
    /// What a client is configured with: `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    state: Arc<State>,
    /// The accept loop; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    /// A LiveKit-Inference-like gateway.
    pub async fn start(auth: Auth, script: Vec<Reply>) -> Gateway {
        Self::start_as(Flavour::Livekit, auth, script).await
    }

    /// A gateway of the given flavour.
    pub async fn start_as(flavour: Flavour, auth: Auth, script: Vec<Reply>) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            auth,
            flavour,
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

    // The body, as the gateway (and Moonshot behind it) checks it.
    if let Err(why) = check_body(&body, st.flavour) {
        seen.refused = Some(why.clone());
        st.seen.lock().unwrap().push(seen);
        return Ok(full(
            400,
            &[],
            json!({"error": {"message": why, "type": "invalid_request_error"}}).to_string(),
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

/// Checks a body as the server does: the OpenAI basics, the tool-call
/// history, and for Kimi K2.5/K2.6 what Moonshot enforces.
pub fn check_body(body: &Value, flavour: Flavour) -> Result<(), String> {
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
    let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    for key in ["tool_choice", "parallel_tool_calls"] {
        if body.get(key).is_some() && !has_tools {
            return Err(format!("{key} is only allowed when tools are specified"));
        }
    }
    check_tool_history(body)?;
    check_kimi(body, flavour)
}

/// Whether the body's model is Kimi K2.5 or K2.6, in any spelling.
fn is_k2_5_or_k2_6(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    let m = m.strip_prefix("moonshotai/").unwrap_or(&m);
    m == "kimi-k2.5" || m == "kimi-k2.6"
}

/// Whether the server thinks for this request: a switch in any format, else
/// the flavour's default.
fn thinking_in_force(body: &Value, flavour: Flavour) -> bool {
    if let Some(kind) = body["thinking"]["type"].as_str() {
        return kind == "enabled";
    }
    if let Some(on) = body["chat_template_kwargs"]["thinking"].as_bool() {
        return on;
    }
    if let Some(on) = body["chat_template_args"]["enable_thinking"].as_bool() {
        return on;
    }
    matches!(flavour, Flavour::Moonshot | Flavour::Vllm)
}

/// Moonshot's own rules for K2.5/K2.6: fixed sampling per mode, and with
/// thinking on, `reasoning_content` on every assistant tool-call message.
fn check_kimi(body: &Value, flavour: Flavour) -> Result<(), String> {
    let model = body["model"].as_str().unwrap_or("");
    if !is_k2_5_or_k2_6(model) {
        return Ok(());
    }
    let thinking = thinking_in_force(body, flavour);
    let (temperature, shown) = if thinking { (1.0, "1") } else { (0.6, "0.6") };
    if let Some(t) = body.get("temperature")
        && t.as_f64().is_none_or(|t| (t - temperature).abs() > 1e-9)
    {
        return Err(format!(
            "invalid temperature: only {shown} is allowed for this model"
        ));
    }
    if let Some(p) = body.get("top_p")
        && p.as_f64().is_none_or(|p| (p - 0.95).abs() > 1e-9)
    {
        return Err("invalid top_p: only 0.95 is allowed for this model".into());
    }
    if thinking {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        for (i, m) in messages.iter().enumerate() {
            let calls = m["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
            if m["role"] == "assistant" && calls && !m["reasoning_content"].is_string() {
                return Err(format!(
                    "thinking is enabled but reasoning_content is missing in assistant \
                     tool call message at index {i}"
                ));
            }
        }
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

/// A chunk of Kimi's stream carrying `delta`.
pub fn delta(delta: Value) -> String {
    event(json!({
        "id": "chatcmpl-k", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "moonshotai/kimi-k2.6",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
    }))
}

/// A reasoning delta, as K2.5/K2.6 stream their thinking.
pub fn reasoning(text: &str) -> String {
    delta(json!({"reasoning_content": text}))
}

/// The delta that opens a tool call, exactly as Kimi sends it: index, id,
/// type and name, with empty arguments.
pub fn tool_open(index: u32, id: &str, name: &str) -> String {
    delta(
        json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                 "function": {"name": name, "arguments": ""}}]}),
    )
}

/// An argument fragment of the call at `index`.
pub fn tool_args(index: u32, fragment: &str) -> String {
    delta(json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
}

/// Moonshot's last chunk: the finish reason with the usage inside the choice.
pub fn finish_with_usage(reason: &str, prompt: u64, completion: u64, cached: u64) -> String {
    event(json!({
        "id": "chatcmpl-k", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason,
                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion, "cached_tokens": cached}}]
    }))
}

/// A thinking turn that calls tools, as Kimi streams it: the reasoning in
/// pieces, then `text`, then every call opened (id `functions.NAME:INDEX`,
/// name, empty arguments) with its arguments in fragments of `fragment`
/// bytes, the calls' fragments interleaved by index; `finish_reason`
/// `tool_calls` with the usage in the choice; `[DONE]`.
pub fn kimi_tool_turn(
    reasoning_parts: &[&str],
    text: &str,
    calls: &[(&str, Value)],
    fragment: usize,
) -> Vec<String> {
    let mut out: Vec<String> = reasoning_parts.iter().map(|r| reasoning(r)).collect();
    if !text.is_empty() {
        out.push(content(text));
    }
    let mut pending: Vec<(u32, Vec<String>)> = Vec::new();
    for (i, (name, arguments)) in calls.iter().enumerate() {
        let index = i as u32;
        out.push(tool_open(index, &format!("functions.{name}:{index}"), name));
        pending.push((index, split_bytes(&arguments.to_string(), fragment)));
    }
    // Round-robin over the calls, one fragment each.
    let mut round = 0;
    while pending.iter().any(|(_, f)| round < f.len()) {
        for (index, fragments) in &pending {
            if let Some(f) = fragments.get(round) {
                out.push(tool_args(*index, f));
            }
        }
        round += 1;
    }
    out.push(finish_with_usage("tool_calls", 180, 60, 0));
    out.push(DONE.to_string());
    out
}
