//! A stand-in for LiveKit Inference's STT and TTS websockets, on loopback
//! port 0. It checks what the gateway checks — the token at the upgrade
//! ([`super::verify_jwt`] with [`KEY`] and [`SECRET`]), the
//! `session.create` fields, base64 PCM of the declared rate in 50 ms chunks —
//! and records every violation in `Conn::problems`. It fails the way real
//! services fail, as scripted per connection: an HTTP status at the upgrade,
//! an `error` event, a dropped connection, a stall.
//!
//! STT answers each `session.finalize` with the next scripted transcript
//! (`start_of_speech`, `interim_transcript`, `final_transcript`,
//! `session.finalized`), or only `session.finalized` when none is left.
//! TTS answers each `session.flush` with the PCM its `synth` function makes
//! for the text (the tests use espeak-ng), in 100 ms `output_audio` chunks,
//! then `done`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

pub use super::{KEY, SECRET, livekit_env};

/// What the server does instead of answering, once.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `{"type":"error","message":…,"code":…}`, then the connection closes.
    Error { code: u16, message: String },
    /// The TCP connection is cut without a close frame.
    Drop,
    /// Keeps reading, never answers.
    Stall,
}

/// The plan for one connection, in the order connections arrive. When the
/// plans run out, connections are served normally.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Refuse the upgrade with this HTTP status.
    pub reject: Option<u16>,
    /// Applied to the n-th trigger (`session.finalize` / `session.flush`),
    /// counted from 0 on this connection.
    pub faults: Vec<(usize, Fault)>,
    /// TTS: audio chunks sent before a fault of the same trigger strikes.
    pub chunks_before_fault: usize,
    /// TTS: after each flush's `done`, 50 ms later, one more generation
    /// (100 ms of a constant 1234, then `done`), as providers that split a
    /// flush do.
    pub trailing_generation: bool,
}

impl Plan {
    /// The fault planned for the `n`-th trigger, if any.
    fn fault(&self, n: usize) -> Option<Fault> {
        self.faults
            .iter()
            .find(|(i, _)| *i == n)
            .map(|(_, f)| f.clone())
    }
}

/// What one connection saw.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub path: String,
    pub query_model: Option<String>,
    pub headers: Vec<(String, String)>,
    pub claims: Option<Value>,
    pub session_create: Option<Value>,
    /// STT: every `input_audio` chunk's size in bytes.
    pub chunk_bytes: Vec<usize>,
    /// STT: the PCM received.
    pub audio: Vec<i16>,
    /// STT: samples received when each `session.finalize` came.
    pub finalize_at: Vec<usize>,
    /// TTS: each `input_transcript`'s text.
    pub transcripts: Vec<String>,
    pub flushes: usize,
    /// TTS: PCM samples sent.
    pub sent_samples: usize,
    /// Anything the real gateway would refuse.
    pub problems: Vec<String>,
    /// Set when the client's side of the connection ended.
    pub closed_at: Option<Instant>,
}

impl Conn {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What TTS answers a flush's text with: PCM at the session's rate (24 kHz mono).
pub type Synth = Arc<dyn Fn(&str) -> Vec<i16> + Send + Sync>;

#[derive(Default)]
struct State {
    plans: VecDeque<Plan>,
    transcripts: VecDeque<String>,
    conns: Vec<Conn>,
    /// Time from a trigger's arrival to its first answer being handed to
    /// the socket (the stand-in's own delay).
    own_delays: Vec<Duration>,
    /// Extra delay before answering a trigger.
    answer_delay: Duration,
    /// TTS: pause between audio chunks.
    chunk_gap: Duration,
}

/// The running stand-in; stops when dropped.
pub struct Gateway {
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Aborted (with every connection task) when the gateway drops.
    _server: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub async fn start(synth: Synth) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let server = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let _ = tcp.set_nodelay(true);
                conns.spawn(serve(tcp, st.clone(), synth.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Gateway {
            addr,
            state,
            _server: server,
        }
    }

    /// The base URL a client is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn plan(&self, plans: Vec<Plan>) {
        self.state.lock().unwrap().plans.extend(plans);
    }

    pub fn script(&self, transcripts: &[&str]) {
        self.state
            .lock()
            .unwrap()
            .transcripts
            .extend(transcripts.iter().map(|s| s.to_string()));
    }

    pub fn set_answer_delay(&self, d: Duration) {
        self.state.lock().unwrap().answer_delay = d;
    }

    pub fn set_chunk_gap(&self, d: Duration) {
        self.state.lock().unwrap().chunk_gap = d;
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.state.lock().unwrap().conns.clone()
    }

    pub fn own_delays(&self) -> Vec<Duration> {
        std::mem::take(&mut self.state.lock().unwrap().own_delays)
    }

    /// Panics listing every protocol problem any connection saw.
    pub fn assert_clean(&self) {
        for (i, c) in self.conns().iter().enumerate() {
            assert!(c.problems.is_empty(), "connection {i}: {:?}", c.problems);
        }
    }
}

fn refuse(status: u16, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    r
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<State>>, synth: Synth) {
    let index;
    let plan;
    {
        let mut st = state.lock().unwrap();
        plan = st.plans.pop_front().unwrap_or_default();
        index = st.conns.len();
        st.conns.push(Conn::default());
    }
    let st = state.clone();
    let reject = plan.reject;
    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let mut st = st.lock().unwrap();
        let conn = &mut st.conns[index];
        conn.path = req.uri().path().to_string();
        conn.query_model = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("model=").map(str::to_string))
        });
        conn.headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        if let Some(status) = reject {
            return Err(refuse(status, r#"{"error":"scripted refusal"}"#));
        }
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.map(|t| super::verify_jwt(t, KEY, SECRET)) {
            Some(Ok(claims)) => conn.claims = Some(claims),
            Some(Err(e)) => return Err(refuse(401, &format!("invalid token: {e}"))),
            None => return Err(refuse(401, "missing token")),
        }
        Ok(resp)
    };
    // A small read buffer: tungstenite zero-fills all of it before each read, and
    // the rooms bench runs hundreds of these connections beside the worker.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let path = state.lock().unwrap().conns[index].path.clone();
    if path.ends_with("/stt") {
        serve_stt(ws, state.clone(), index, plan).await;
    } else if path.ends_with("/tts") {
        serve_tts(ws, state.clone(), index, plan, synth).await;
    } else {
        state.lock().unwrap().conns[index]
            .problems
            .push(format!("unknown path {path}"));
    }
    state.lock().unwrap().conns[index].closed_at = Some(Instant::now());
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn problem(state: &Mutex<State>, index: usize, p: String) {
    state.lock().unwrap().conns[index].problems.push(p);
}

/// The next text message as JSON, with when it arrived; `None` once the
/// connection ends. Text that is not JSON is a problem, and skipped.
async fn next_json(ws: &mut Ws, state: &Mutex<State>, index: usize) -> Option<(Instant, Value)> {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let arrived = Instant::now();
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => return Some((arrived, v)),
            Err(_) => problem(state, index, "not JSON".into()),
        }
    }
    None
}

/// Applies a fault; returns true if the connection must end now.
async fn strike(ws: &mut Ws, fault: &Fault) -> bool {
    match fault {
        Fault::Error { code, message } => {
            let _ = ws
                .send(Message::Text(
                    json!({"type": "error", "message": message, "code": code})
                        .to_string()
                        .into(),
                ))
                .await;
            let _ = ws.close(None).await;
            true
        }
        Fault::Drop => true,
        Fault::Stall => false,
    }
}

async fn serve_stt(mut ws: Ws, state: Arc<Mutex<State>>, index: usize, plan: Plan) {
    let mut created = false;
    let mut finalizes = 0usize;
    let mut stalled = false;
    let mut utterance_from = 0usize;
    while let Some((arrived, v)) = next_json(&mut ws, &state, index).await {
        match v["type"].as_str().unwrap_or_default() {
            "session.create" => {
                let model = state.lock().unwrap().conns[index].query_model.clone();
                let s = &v["settings"];
                let mut bad = Vec::new();
                if v["model"].as_str() != model.as_deref() {
                    bad.push(format!("model {} is not the query's {model:?}", v["model"]));
                }
                if s["sample_rate"] != "16000" {
                    bad.push(format!("sample_rate {}", s["sample_rate"]));
                }
                if s["encoding"] != "pcm_s16le" {
                    bad.push(format!("encoding {}", s["encoding"]));
                }
                if !s["extra"].is_object() {
                    bad.push("settings.extra is not an object".into());
                }
                if !open_session(&mut ws, &state, index, &mut created, &v, bad, "stt").await {
                    return;
                }
            }
            "input_audio" => {
                if !created {
                    problem(&state, index, "audio before session.create".into());
                }
                match v["audio"].as_str().map(|a| STANDARD.decode(a)) {
                    Some(Ok(bytes)) => {
                        let mut st = state.lock().unwrap();
                        let c = &mut st.conns[index];
                        c.chunk_bytes.push(bytes.len());
                        if bytes.len() != 1600 {
                            c.problems.push(format!(
                                "chunk of {} bytes, not 50 ms at 16 kHz",
                                bytes.len()
                            ));
                        }
                        c.audio.extend(
                            bytes
                                .chunks_exact(2)
                                .map(|b| i16::from_le_bytes([b[0], b[1]])),
                        );
                    }
                    _ => problem(&state, index, "input_audio without base64 audio".into()),
                }
            }
            "session.finalize" => {
                let n = finalizes;
                finalizes += 1;
                let (received, delay, next) = {
                    let mut st = state.lock().unwrap();
                    let received = st.conns[index].audio.len();
                    st.conns[index].finalize_at.push(received);
                    let fault = plan.fault(n);
                    let next = match fault {
                        Some(f) => Err(f),
                        None if stalled => Err(Fault::Stall),
                        None => Ok(st.transcripts.pop_front()),
                    };
                    (received, st.answer_delay, next)
                };
                match next {
                    Err(fault) => {
                        if matches!(fault, Fault::Stall) {
                            stalled = true;
                        }
                        if strike(&mut ws, &fault).await {
                            return;
                        }
                        continue;
                    }
                    Ok(transcript) => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let start = utterance_from as f64 / 16_000.0;
                        let duration = (received - utterance_from) as f64 / 16_000.0;
                        utterance_from = received;
                        let mut first = true;
                        let mut out = Vec::new();
                        if let Some(t) = transcript {
                            let first_word =
                                t.split_whitespace().next().unwrap_or_default().to_string();
                            out.push(json!({"type": "start_of_speech"}));
                            out.push(json!({"type": "interim_transcript", "transcript": first_word,
                                "language": "en", "start": start, "duration": duration / 2.0, "confidence": 0.5}));
                            let words: Vec<Value> = t.split_whitespace().enumerate().map(|(i, w)| json!({
                                "word": w, "start": start + i as f64 * 0.2, "end": start + i as f64 * 0.2 + 0.18, "confidence": 0.97
                            })).collect();
                            out.push(json!({"type": "final_transcript", "transcript": t, "language": "en",
                                "start": start, "duration": duration, "confidence": 0.97, "words": words}));
                        }
                        out.push(json!({"type": "session.finalized"}));
                        for m in out {
                            if first {
                                first = false;
                                state.lock().unwrap().own_delays.push(arrived.elapsed());
                            }
                            if send(&mut ws, m).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            other => problem(&state, index, format!("unexpected STT message {other:?}")),
        }
    }
}

/// Ends a `session.create` check: a second one is a problem too. With no
/// problem the session is created (`true`); otherwise the connection gets a
/// 400 `error` event and must end (`false`).
async fn open_session(
    ws: &mut Ws,
    state: &Mutex<State>,
    index: usize,
    created: &mut bool,
    v: &Value,
    mut bad: Vec<String>,
    kind: &str,
) -> bool {
    if *created {
        bad.push("second session.create".into());
    }
    *created = true;
    state.lock().unwrap().conns[index].session_create = Some(v.clone());
    if !bad.is_empty() {
        let msg = bad.join("; ");
        problem(state, index, msg.clone());
        let _ = strike(
            ws,
            &Fault::Error {
                code: 400,
                message: msg,
            },
        )
        .await;
        return false;
    }
    let _ = send(
        ws,
        json!({"type": "session.created", "session_id": format!("{kind}-{index}")}),
    )
    .await;
    true
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), ()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|_| ())
}

async fn serve_tts(mut ws: Ws, state: Arc<Mutex<State>>, index: usize, plan: Plan, synth: Synth) {
    let mut created = false;
    let mut pending = String::new();
    let mut flushes = 0usize;
    let mut stalled = false;
    while let Some((arrived, v)) = next_json(&mut ws, &state, index).await {
        match v["type"].as_str().unwrap_or_default() {
            "session.create" => {
                let model = state.lock().unwrap().conns[index].query_model.clone();
                let mut bad = Vec::new();
                if v["model"].as_str() != model.as_deref() {
                    bad.push(format!("model {} is not the query's {model:?}", v["model"]));
                }
                if v["sample_rate"] != "24000" {
                    bad.push(format!("sample_rate {}", v["sample_rate"]));
                }
                if v["encoding"] != "pcm_s16le" {
                    bad.push(format!("encoding {}", v["encoding"]));
                }
                if !open_session(&mut ws, &state, index, &mut created, &v, bad, "tts").await {
                    return;
                }
            }
            "input_transcript" => {
                if !created {
                    problem(
                        &state,
                        index,
                        "input_transcript before session.create".into(),
                    );
                }
                let t = v["transcript"].as_str().unwrap_or_default().to_string();
                state.lock().unwrap().conns[index]
                    .transcripts
                    .push(t.clone());
                pending.push_str(&t);
            }
            "session.flush" => {
                let n = flushes;
                flushes += 1;
                let (delay, gap, fault) = {
                    let mut st = state.lock().unwrap();
                    st.conns[index].flushes += 1;
                    let fault = plan.fault(n);
                    (st.answer_delay, st.chunk_gap, fault)
                };
                let text = std::mem::take(&mut pending);
                if stalled {
                    continue;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let pcm = synth(&text);
                let mut first = true;
                for (i, chunk) in pcm.chunks(2400).enumerate() {
                    if let Some(f) = &fault
                        && i == plan.chunks_before_fault
                    {
                        if strike(&mut ws, f).await {
                            return;
                        }
                        break;
                    }
                    let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let m = json!({"type": "output_audio", "audio": STANDARD.encode(&bytes), "session_id": format!("tts-{index}")});
                    if first {
                        first = false;
                        state.lock().unwrap().own_delays.push(arrived.elapsed());
                    }
                    if send(&mut ws, m).await.is_err() {
                        return;
                    }
                    state.lock().unwrap().conns[index].sent_samples += chunk.len();
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                }
                if matches!(fault, Some(Fault::Stall)) {
                    stalled = true;
                    continue;
                }
                if send(
                    &mut ws,
                    json!({"type": "done", "session_id": format!("tts-{index}")}),
                )
                .await
                .is_err()
                {
                    return;
                }
                if plan.trailing_generation {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let bytes: Vec<u8> = [1234i16; 2400]
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect();
                    let m = json!({"type": "output_audio", "audio": STANDARD.encode(&bytes), "session_id": format!("tts-{index}")});
                    let done = json!({"type": "done", "session_id": format!("tts-{index}")});
                    if send(&mut ws, m).await.is_err() || send(&mut ws, done).await.is_err() {
                        return;
                    }
                }
            }
            other => problem(&state, index, format!("unexpected TTS message {other:?}")),
        }
    }
}
