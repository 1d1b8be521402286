//! LiveKit Inference STT: `wss://…/v1/stt?model=M`.
//!
//! # Wire protocol
//! Client: `session.create` `{model, settings: {sample_rate: "16000",
//! encoding: "pcm_s16le", language, extra}}` once per connection, then
//! `input_audio` `{audio: base64}` with exactly 50 ms of PCM each (800
//! samples), and `session.finalize` when the VAD says the user stopped.
//! Server: `session.created`, `start_of_speech`, `interim_transcript`,
//! `preflight_transcript`, `final_transcript` `{transcript, language, start,
//! duration, confidence, words}` (seconds from the connection's first audio),
//! `session.finalized`, `session.closed`, `error` `{message, code?}`.
//!
//! # One stream
//! One task per session owns the connection (kept across turns) and the
//! audio not yet safe to forget: from the start of the utterance being heard
//! (or still owed a final), else the last second. When the connection drops,
//! stalls, or the server sends `error`, the task reconnects (at once, then
//! with backoff) and replays that audio and any `session.finalize` still
//! unanswered, so the current turn loses nothing. Transcript times are mapped
//! back to stream time through the replayed audio's position. After
//! `max_retries` failed reconnects in a row, or a failure no retry can fix
//! (auth, bad request), it sends `SttEvent::Error` and ends, closing `events`
//! (a [`crate::fallback::FallbackStt`] takes over from there).
//!
//! Per `SpeechEnded` exactly one answer goes out: the first non-empty
//! `final_transcript` after the `session.finalize`, or `Empty` when
//! `session.finalized` comes first. Finals the provider sends on its own
//! endpointing pass through as they come.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use agent::audio::duration_of;
use agent::{
    FrameConverter, JobContext, StageError, Stt, SttEvent, SttInput, SttStream, Transcript,
};
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{SplitSink, SplitStream};
use livekit_plumbing::Backoff;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{
    Credentials, InferenceOptions, Ws, connect, endpoint, error_event, is_retryable, recv_json,
    send_json,
};
use crate::error::SpeechError;

const SERVICE: &str = "LiveKit Inference STT";
/// The rate the gateway is told in `session.create`.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per `input_audio` message: 50 ms.
pub const CHUNK_SAMPLES: usize = SAMPLE_RATE as usize / 20;
/// Audio kept before the VAD's speech start (its start is already late).
const PRE_ROLL: u64 = SAMPLE_RATE as u64 * 3 / 10;
/// Audio kept while no one speaks, for the next utterance's pre-roll.
const IDLE_HISTORY: u64 = SAMPLE_RATE as u64;
/// Most audio kept for a replay, however long the user speaks without the
/// VAD ending the utterance.
const MAX_KEEP: u64 = SAMPLE_RATE as u64 * 60;
/// The wait before the second reconnect in a row (the first is immediate):
/// 200 ms doubling, capped at 5 s, with jitter.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// What to ask the gateway for.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceSttOptions {
    /// e.g. `deepgram/nova-3`.
    pub model: String,
    /// e.g. `en`; `None` lets the provider decide.
    pub language: Option<String>,
    /// Provider options, sent as `settings.extra`.
    pub extra: serde_json::Map<String, Value>,
    pub common: InferenceOptions,
}

impl Default for InferenceSttOptions {
    fn default() -> Self {
        Self {
            model: "deepgram/nova-3".into(),
            language: Some("en".into()),
            extra: serde_json::Map::new(),
            common: InferenceOptions::default(),
        }
    }
}

/// LiveKit Inference STT behind [`Stt`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InferenceStt {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: InferenceSttOptions,
    creds: Credentials,
    url: String,
}

impl InferenceStt {
    /// Resolves credentials and the URL from `env` (by variable name).
    pub fn new(
        options: InferenceSttOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SpeechError> {
        let (creds, url) = endpoint(SERVICE, &options.common, "stt", &options.model, env)?;
        Ok(Self {
            shared: Arc::new(Shared {
                options,
                creds,
                url,
            }),
        })
    }

    pub fn model(&self) -> &str {
        &self.shared.options.model
    }
}

impl Shared {
    fn session_create(&self) -> Value {
        let mut settings = json!({
            "sample_rate": SAMPLE_RATE.to_string(),
            "encoding": "pcm_s16le",
            "extra": Value::Object(self.options.extra.clone()),
        });
        if let Some(lang) = &self.options.language {
            settings["language"] = json!(lang);
        }
        json!({
            "type": "session.create",
            "model": self.options.model,
            "settings": settings,
        })
    }

    /// Connects and sends `session.create`.
    async fn open(self: Arc<Self>, job: JobContext) -> Result<Ws, SpeechError> {
        let timeout = self.options.common.connect_timeout;
        let mut ws = connect(SERVICE, &self.url, &self.creds, &job, timeout).await?;
        send_json(SERVICE, &mut ws, &self.session_create()).await?;
        Ok(ws)
    }
}

#[async_trait]
impl Stt for InferenceStt {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    /// Connects at once, so bad credentials or an unreachable gateway fail
    /// here rather than on the user's first words.
    async fn stream(&self, job: &JobContext) -> Result<SttStream, StageError> {
        let ws = self.shared.clone().open(job.clone()).await?;
        let (input_tx, input) = mpsc::channel(128);
        let (events, events_rx) = mpsc::channel(32);
        let (sink, stream) = ws.split();
        let task = Task {
            shared: self.shared.clone(),
            job: job.clone(),
            input,
            events,
            conn: Some(Conn { sink, stream }),
            connecting: None,
            reconnect_at: None,
            failures: 0,
            converter: FrameConverter::new(SAMPLE_RATE),
            audio: VecDeque::new(),
            base: 0,
            received: 0,
            sent: 0,
            conn_base: 0,
            speech_start: None,
            owed: VecDeque::new(),
            last_final_end: 0,
            stall_at: None,
        };
        // Owned by `input_tx`: the task ends when the session drops it.
        tokio::spawn(task.run());
        Ok(SttStream {
            input: input_tx,
            events: events_rx,
        })
    }
}

struct Conn {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

/// A `session.finalize` the server has not answered yet.
struct Owed {
    /// Stream sample where the utterance began (for replay).
    start: u64,
    /// Stream sample where it ended: the finalize follows this audio.
    end: u64,
    /// A final transcript answered it; waiting only for `session.finalized`.
    answered: bool,
}

struct Task {
    shared: Arc<Shared>,
    job: JobContext,
    /// Dropped by the session to end the stream.
    input: mpsc::Receiver<SttInput>,
    /// Dropped when this task ends, which closes the session's receiver.
    events: mpsc::Sender<SttEvent>,
    /// The live connection; dropped (closed) on failure and at the end.
    conn: Option<Conn>,
    /// A reconnect in flight, polled by the task's select.
    connecting: Option<BoxFuture<'static, Result<Ws, SpeechError>>>,
    /// When the next reconnect starts (backoff).
    reconnect_at: Option<Instant>,
    /// Failures since the last answer from the server.
    failures: u32,
    converter: FrameConverter,
    /// Samples from stream position `base` to `received`.
    audio: VecDeque<i16>,
    base: u64,
    received: u64,
    /// Next sample to send on this connection.
    sent: u64,
    /// Stream sample at the connection's time zero.
    conn_base: u64,
    speech_start: Option<u64>,
    owed: VecDeque<Owed>,
    /// End of the last final transcript (stream samples): never replayed.
    last_final_end: u64,
    /// An answer is owed and the server has been silent since this deadline.
    stall_at: Option<Instant>,
}

enum Wake {
    Input(Option<SttInput>),
    Message(Result<Option<Value>, SpeechError>),
    Connected(Result<Box<Ws>, SpeechError>),
    Reconnect,
    Stalled,
    EventsClosed,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self) {
        loop {
            let wake = tokio::select! {
                input = self.input.recv() => Wake::Input(input),
                msg = recv_opt(&mut self.conn) => Wake::Message(msg),
                ws = connect_opt(&mut self.connecting) => Wake::Connected(ws.map(Box::new)),
                _ = sleep_until(self.reconnect_at) => Wake::Reconnect,
                _ = sleep_until(self.stall_at) => Wake::Stalled,
                _ = self.events.closed() => Wake::EventsClosed,
            };
            let result = match wake {
                Wake::Input(None) | Wake::EventsClosed => break,
                Wake::Input(Some(input)) => self.on_input(input).await,
                Wake::Message(Ok(Some(msg))) => self.on_message(msg).await,
                Wake::Message(Ok(None)) => Err(SpeechError::Connection {
                    service: SERVICE,
                    message: "the server closed the connection".into(),
                }),
                Wake::Message(Err(e)) => Err(e),
                Wake::Connected(Ok(ws)) => self.on_connected(*ws).await,
                Wake::Connected(Err(e)) => {
                    self.connecting = None;
                    Err(e)
                }
                Wake::Reconnect => {
                    self.reconnect_at = None;
                    let open = self.shared.clone().open(self.job.clone());
                    self.connecting = Some(Box::pin(open));
                    Ok(())
                }
                Wake::Stalled => Err(SpeechError::Timeout {
                    service: SERVICE,
                    message: format!(
                        "no answer to session.finalize within {:?}",
                        self.shared.options.common.idle_timeout
                    ),
                }),
            };
            if let Err(e) = result
                && !self.on_failure(e).await
            {
                break;
            }
        }
        if let Some(mut conn) = self.conn.take() {
            // A polite close; the server may already be gone.
            let _ = futures::SinkExt::close(&mut conn.sink).await;
        }
    }

    /// Drops the connection and schedules a reconnect; false when the
    /// stream must end (fatal error, retries spent, session gone).
    async fn on_failure(&mut self, e: SpeechError) -> bool {
        self.conn = None;
        self.connecting = None;
        self.stall_at = None;
        self.failures += 1;
        let fatal = !is_retryable(&e) || self.failures > self.shared.options.common.max_retries;
        tracing::warn!(error = %e, failures = self.failures, fatal, "LiveKit Inference STT failed");
        let sent = self
            .events
            .send(SttEvent::Error(StageError::from(e)))
            .await
            .is_ok();
        if fatal || !sent {
            return false;
        }
        let delay = match self.failures.checked_sub(2) {
            None => Duration::ZERO,
            Some(retry) => RECONNECT.delay_jittered(retry),
        };
        self.reconnect_at = Some(Instant::now() + delay);
        true
    }

    async fn on_connected(&mut self, ws: Ws) -> Result<(), SpeechError> {
        self.connecting = None;
        let (sink, stream) = ws.split();
        self.conn = Some(Conn { sink, stream });
        // Replay what the turn still needs, then any finalize still owed.
        let from = self.keep_from().clamp(self.base, self.received);
        self.sent = from;
        self.conn_base = from;
        let owed: Vec<u64> = self
            .owed
            .iter()
            .filter(|o| !o.answered)
            .map(|o| o.end)
            .collect();
        self.owed.retain(|o| !o.answered);
        for end in owed {
            self.send_audio(end).await?;
            self.send_finalize().await?;
        }
        self.send_audio(self.received).await
    }

    async fn on_input(&mut self, input: SttInput) -> Result<(), SpeechError> {
        match input {
            SttInput::Audio(frame) => {
                if frame.sample_rate == 0 || frame.channels == 0 {
                    return Ok(());
                }
                let frame = self.converter.convert(&frame);
                self.audio.extend(frame.samples.iter().copied());
                self.received += frame.samples.len() as u64;
                self.send_audio(self.received).await?;
                self.trim();
                Ok(())
            }
            SttInput::SpeechStarted(at) => {
                if self.speech_start.is_none() {
                    let at = self.samples(at).min(self.received);
                    self.speech_start = Some(at.saturating_sub(PRE_ROLL));
                }
                Ok(())
            }
            SttInput::SpeechEnded(at) => {
                let start = self.speech_start.take().unwrap_or(self.received);
                let end = self.samples(at).min(self.received);
                self.owed.push_back(Owed {
                    start,
                    end: end.max(start),
                    answered: false,
                });
                // Keep answered entries bounded if `session.finalized` never comes.
                while self.owed.len() > 8 && self.owed.front().is_some_and(|o| o.answered) {
                    self.owed.pop_front();
                }
                if self.conn.is_some() {
                    self.send_finalize().await?;
                }
                Ok(())
            }
        }
    }

    fn samples(&self, t: Duration) -> u64 {
        (t.as_secs_f64() * SAMPLE_RATE as f64).round() as u64
    }

    fn time(samples: u64) -> Duration {
        duration_of(samples as usize, SAMPLE_RATE)
    }

    /// Sends whole 50 ms chunks up to `until` (never past what was received).
    async fn send_audio(&mut self, until: u64) -> Result<(), SpeechError> {
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        let chunk = CHUNK_SAMPLES as u64;
        let mut bytes = Vec::with_capacity(CHUNK_SAMPLES * 2);
        while self.sent + chunk <= self.received && self.sent < until {
            let from = (self.sent - self.base) as usize;
            bytes.clear();
            for &s in self.audio.range(from..from + CHUNK_SAMPLES) {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            let msg = json!({
                "type": "input_audio",
                "audio": base64::engine::general_purpose::STANDARD.encode(&bytes),
            });
            send_timed(&self.shared, conn, &msg).await?;
            self.sent += chunk;
        }
        Ok(())
    }

    async fn send_finalize(&mut self) -> Result<(), SpeechError> {
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        send_timed(&self.shared, conn, &json!({"type": "session.finalize"})).await?;
        self.stall_at = Some(Instant::now() + self.shared.options.common.idle_timeout);
        Ok(())
    }

    /// The first sample a reconnect would have to replay.
    fn keep_from(&self) -> u64 {
        let mut from = self
            .received
            .saturating_sub(IDLE_HISTORY)
            .max(self.last_final_end);
        if let Some(s) = self.speech_start {
            from = from.min(s);
        }
        for o in self.owed.iter().filter(|o| !o.answered) {
            from = from.min(o.start);
        }
        from.max(self.received.saturating_sub(MAX_KEEP))
    }

    /// Forgets audio no replay can need (in steps of a second).
    fn trim(&mut self) {
        let keep = self.keep_from().min(self.sent);
        let excess = keep.saturating_sub(self.base) as usize;
        if excess >= SAMPLE_RATE as usize {
            let excess = excess.min(self.audio.len());
            self.audio.drain(..excess);
            self.base += excess as u64;
        }
    }

    fn transcript(&self, msg: &Value) -> Transcript {
        let secs = |k: &str| msg.get(k).and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
        let offset = Self::time(self.conn_base);
        let start = offset + Duration::from_secs_f64(secs("start"));
        Transcript {
            text: msg
                .get("transcript")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_string(),
            language: msg
                .get("language")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| self.shared.options.language.clone()),
            start,
            end: start + Duration::from_secs_f64(secs("duration")),
            confidence: msg.get("confidence").and_then(Value::as_f64).unwrap_or(1.0) as f32,
        }
    }

    async fn emit(&mut self, event: SttEvent) -> Result<(), SpeechError> {
        // A closed receiver ends the loop through `events.closed()`.
        let _ = self.events.send(event).await;
        Ok(())
    }

    async fn on_message(&mut self, msg: Value) -> Result<(), SpeechError> {
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        if self.stall_at.is_some() {
            // The server is alive: restart the stall clock.
            self.stall_at = Some(Instant::now() + self.shared.options.common.idle_timeout);
        }
        match kind {
            "session.created" | "session.closed" => Ok(()),
            "start_of_speech" => {
                self.failures = 0;
                self.emit(SttEvent::StartOfSpeech).await
            }
            "interim_transcript" | "preflight_transcript" => {
                self.failures = 0;
                let t = self.transcript(&msg);
                if t.text.is_empty() {
                    return Ok(());
                }
                self.emit(SttEvent::Interim(t)).await
            }
            "final_transcript" => {
                self.failures = 0;
                let t = self.transcript(&msg);
                if t.text.is_empty() {
                    return Ok(());
                }
                self.last_final_end = self
                    .last_final_end
                    .max(self.samples(t.end))
                    .min(self.received);
                if let Some(o) = self.owed.iter_mut().find(|o| !o.answered) {
                    o.answered = true;
                }
                self.update_stall();
                self.emit(SttEvent::Final(t)).await
            }
            "session.finalized" => {
                self.failures = 0;
                let unanswered = self.owed.pop_front().is_some_and(|o| !o.answered);
                self.update_stall();
                if unanswered {
                    self.emit(SttEvent::Empty).await
                } else {
                    Ok(())
                }
            }
            "error" => Err(error_event(SERVICE, &self.shared.creds, &msg)),
            _ => Ok(()), // newer events are ignored, as the reference clients do
        }
    }

    fn update_stall(&mut self) {
        if !self.owed.iter().any(|o| !o.answered) {
            self.stall_at = None;
        }
    }
}

async fn send_timed(shared: &Shared, conn: &mut Conn, msg: &Value) -> Result<(), SpeechError> {
    let limit = shared.options.common.idle_timeout;
    match tokio::time::timeout(limit, send_json(SERVICE, &mut conn.sink, msg)).await {
        Ok(r) => r,
        Err(_) => Err(SpeechError::Timeout {
            service: SERVICE,
            message: format!("a send took longer than {limit:?}"),
        }),
    }
}

async fn recv_opt(conn: &mut Option<Conn>) -> Result<Option<Value>, SpeechError> {
    match conn {
        Some(c) => recv_json(SERVICE, &mut c.stream).await,
        None => std::future::pending().await,
    }
}

async fn connect_opt(
    connecting: &mut Option<BoxFuture<'static, Result<Ws, SpeechError>>>,
) -> Result<Ws, SpeechError> {
    match connecting {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}
