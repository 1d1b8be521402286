//! LiveKit Inference TTS: `wss://…/v1/tts?model=M`.
//!
//! # Wire protocol
//! Client: `session.create` `{sample_rate: "24000", encoding: "pcm_s16le",
//! model, voice, language, extra}` once per connection; then per segment
//! (sentence) `input_transcript` `{transcript}` and `session.flush`.
//! Server: `session.created`, `output_audio` `{audio: base64 PCM}`,
//! `output_alignment` `{words: [{word, start, end}]}`, `done` (the flushed
//! text is spoken), `session.closed`, `error` `{message, code?}`.
//!
//! # One stream (one reply)
//! A task owns one connection taken from the pool (or opened) and the
//! segments sent and not yet `done`, oldest first. Audio belongs to the
//! oldest; it goes out in frames of at most 100 ms the moment it arrives, so
//! the first audio waits only for the provider's first chunk. Text is
//! attached to frames as the audio covers it (by the alignment's word times,
//! else by a speaking-rate estimate, on word boundaries); `done` attaches
//! what is left, so a segment's frames always add up to its text.
//!
//! Dropping `output` (an interruption) ends the task at once and closes the
//! connection: audio still in flight must not leak into the next reply. A
//! clean end (input dropped, every segment `done`) returns the connection to
//! the pool. Pooled connections are replaced once `max_session` old
//! ([`TTS_MAX_SESSION`], as the reference clients do).
//!
//! Failures (`error`, a dropped connection, no message for `idle_timeout`
//! while audio is owed) end the stream with one `Err` on `output`. A pooled
//! connection found dead before any audio came is replaced once, silently.
//!
//! Known limit: a provider that splits one flush into several generations
//! (several `done`s) ends a segment at its first `done`; with one flush per
//! sentence that split is not expected. Its late audio cannot leak into the
//! next reply: audio or `done` owed to no segment marks the connection
//! unusable, and a pooled connection with anything waiting to be read is
//! replaced rather than reused.
//!
//! One file (~620 lines before its tests): the wire protocol above, the pool
//! and the one task that speaks it are read together, as in `stt`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{AudioFrame, JobContext, StageError, Tts, TtsAudio, TtsInput, TtsStream};
use async_trait::async_trait;
use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{
    Credentials, InferenceOptions, Ws, connect, endpoint, error_event, recv_json, send_json,
};
use crate::error::SpeechError;

const SERVICE: &str = "LiveKit Inference TTS";
/// The rate asked for in `session.create`.
pub const SAMPLE_RATE: u32 = 24_000;
/// A pooled connection older than this is closed instead of reused.
pub const TTS_MAX_SESSION: Duration = Duration::from_secs(300);
/// Idle connections kept at most.
const POOL_MAX: usize = 4;
/// Samples per output frame: 100 ms.
const FRAME_SAMPLES: usize = SAMPLE_RATE as usize / 10;
/// Speaking rate used to place text when the provider sends no alignment.
const CHARS_PER_SECOND: f64 = 14.0;

/// What to ask the gateway for.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceTtsOptions {
    /// e.g. `cartesia/sonic-2`.
    pub model: String,
    /// The provider's voice id.
    pub voice: Option<String>,
    pub language: Option<String>,
    /// Provider options, sent as `extra`.
    pub extra: serde_json::Map<String, Value>,
    /// Pooled connections older than this are replaced ([`TTS_MAX_SESSION`]).
    pub max_session: Duration,
    pub common: InferenceOptions,
}

impl Default for InferenceTtsOptions {
    fn default() -> Self {
        Self {
            model: "cartesia/sonic-2".into(),
            voice: None,
            language: Some("en".into()),
            extra: serde_json::Map::new(),
            max_session: TTS_MAX_SESSION,
            common: InferenceOptions::default(),
        }
    }
}

/// LiveKit Inference TTS behind [`Tts`]. Cheap to clone; clones share the
/// connection pool.
#[derive(Clone)]
pub struct InferenceTts {
    shared: Arc<Shared>,
}

struct Shared {
    options: InferenceTtsOptions,
    creds: Credentials,
    url: String,
    /// Idle connections, each ready for a new reply. Locked only to push or
    /// pop, never across an await.
    pool: Mutex<Vec<Pooled>>,
}

struct Pooled {
    ws: Ws,
    job: JobContext,
    opened: Instant,
}

impl InferenceTts {
    /// Resolves credentials and the URL from `env` (by variable name).
    pub fn new(
        options: InferenceTtsOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SpeechError> {
        let (creds, url) = endpoint(SERVICE, &options.common, "tts", &options.model, env)?;
        Ok(Self {
            shared: Arc::new(Shared {
                options,
                creds,
                url,
                pool: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn model(&self) -> &str {
        &self.shared.options.model
    }

    /// Idle connections in the pool (for tests and metrics).
    pub fn pooled(&self) -> usize {
        self.shared.pool.lock().map_or(0, |p| p.len())
    }
}

impl Shared {
    fn session_create(&self) -> Value {
        let mut msg = json!({
            "type": "session.create",
            "sample_rate": SAMPLE_RATE.to_string(),
            "encoding": "pcm_s16le",
            "model": self.options.model,
            "extra": Value::Object(self.options.extra.clone()),
        });
        if let Some(v) = &self.options.voice {
            msg["voice"] = json!(v);
        }
        if let Some(l) = &self.options.language {
            msg["language"] = json!(l);
        }
        msg
    }

    async fn open(&self, job: &JobContext) -> Result<(Ws, Instant), SpeechError> {
        let timeout = self.options.common.connect_timeout;
        let mut ws = connect(SERVICE, &self.url, &self.creds, job, timeout).await?;
        send_json(SERVICE, &mut ws, &self.session_create()).await?;
        Ok((ws, Instant::now()))
    }

    /// A fresh idle connection for `job`, if the pool has one. A pooled
    /// connection with anything waiting to be read is not reused: it is
    /// closed by the server, or still carries audio of an earlier reply (a
    /// provider that split a flush into several generations).
    fn take(&self, job: &JobContext) -> Option<(Ws, Instant)> {
        loop {
            let mut p = {
                let mut pool = self.pool.lock().ok()?;
                let now = Instant::now();
                // Expired connections are dropped (closed) here.
                pool.retain(|p| now.duration_since(p.opened) < self.options.max_session);
                let i = pool.iter().rposition(|p| &p.job == job)?;
                pool.swap_remove(i)
            };
            match recv_json(SERVICE, &mut p.ws).now_or_never() {
                None => return Some((p.ws, p.opened)),
                Some(stale) => {
                    let what = match stale {
                        Ok(Some(msg)) => format!("a {} message", msg["type"]),
                        Ok(None) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::debug!(%what, "pooled TTS connection is not idle; closing it");
                }
            }
        }
    }

    fn give_back(&self, ws: Ws, job: JobContext, opened: Instant) {
        if opened.elapsed() >= self.options.max_session {
            return;
        }
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL_MAX
        {
            pool.push(Pooled { ws, job, opened });
        }
    }
}

#[async_trait]
impl Tts for InferenceTts {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    /// Takes a pooled connection or opens one (so the connect overlaps the
    /// LLM's first token).
    async fn stream(&self, job: &JobContext) -> Result<TtsStream, StageError> {
        let (ws, opened, pooled) = match self.shared.take(job) {
            Some((ws, opened)) => (ws, opened, true),
            None => {
                let (ws, opened) = self.shared.open(job).await?;
                (ws, opened, false)
            }
        };
        let (input, input_rx) = mpsc::channel(32);
        let (output_tx, output) = mpsc::channel(16);
        let (sink, stream) = ws.split();
        let task = Task {
            shared: self.shared.clone(),
            job: job.clone(),
            input: input_rx,
            input_open: true,
            output: output_tx,
            conn: Conn {
                sink,
                stream,
                opened,
            },
            pooled,
            audio_seen: false,
            reusable: true,
            queue: VecDeque::new(),
            stall_at: None,
        };
        // Owned by the stream's channels: it ends when input is dropped and
        // all is spoken, or at once when output is dropped.
        tokio::spawn(task.run());
        Ok(TtsStream { input, output })
    }
}

struct Conn {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    opened: Instant,
}

/// A segment sent (or, if blank, not sent) and not yet `done`.
struct Segment {
    text: String,
    /// Whitespace only: nothing is sent, the text goes out with no audio.
    blank: bool,
    /// Samples sent out for it so far.
    samples: u64,
    /// Bytes of `text` already attached to a frame.
    text_out: usize,
    /// A byte left over from an odd-length chunk.
    odd: Option<u8>,
    /// From `output_alignment`: (start seconds, byte end in `text`) per word.
    words: Vec<(f64, usize)>,
    /// Byte position words are matched from.
    word_cursor: usize,
}

impl Segment {
    fn new(text: String) -> Self {
        Self {
            blank: text.trim().is_empty(),
            text,
            samples: 0,
            text_out: 0,
            odd: None,
            words: Vec::new(),
            word_cursor: 0,
        }
    }

    /// Byte position in `text` the audio up to `samples` has spoken.
    fn spoken_until(&self) -> usize {
        let secs = self.samples as f64 / SAMPLE_RATE as f64;
        // Never give away the last word: `done` attaches it, so the text is
        // complete only when the audio is.
        let last_word = self
            .text
            .trim_end()
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + 1);
        let until = if self.words.is_empty() {
            let chars = (secs * CHARS_PER_SECOND) as usize;
            let target = self
                .text
                .char_indices()
                .nth(chars)
                .map_or(self.text.len(), |(i, _)| i)
                .min(last_word);
            // Back to the start of the word being spoken.
            self.text[..target]
                .rfind(char::is_whitespace)
                .map_or(0, |i| i + 1)
        } else {
            let end = self
                .words
                .iter()
                .filter(|(start, _)| *start <= secs)
                .map(|&(_, end)| end)
                .max()
                .unwrap_or(0);
            // The word started: take it and the space after it.
            let rest = &self.text[end..];
            (end + (rest.len() - rest.trim_start().len())).min(last_word)
        };
        until.max(self.text_out)
    }

    /// Matches aligned words to byte positions in `text`, in order.
    fn align(&mut self, words: &[Value]) {
        for w in words {
            let (Some(word), Some(start)) = (
                w.get("word").and_then(Value::as_str),
                w.get("start").and_then(Value::as_f64),
            ) else {
                continue;
            };
            let word = word.trim();
            if word.is_empty() {
                continue;
            }
            if let Some(i) = self.text[self.word_cursor..].find(word) {
                let end = self.word_cursor + i + word.len();
                self.word_cursor = end;
                self.words.push((start, end));
            }
        }
    }
}

struct Task {
    shared: Arc<Shared>,
    job: JobContext,
    /// Dropped by the session after the last segment.
    input: mpsc::Receiver<TtsInput>,
    input_open: bool,
    /// Dropped by the session to interrupt; dropped here at the end.
    output: mpsc::Sender<Result<TtsAudio, StageError>>,
    /// Dropped (closed) on failure or interruption, pooled on a clean end.
    conn: Conn,
    /// The connection came from the pool (it may have died while idle).
    pooled: bool,
    /// Some audio arrived on this stream.
    audio_seen: bool,
    /// Nothing unexpected happened on the connection: it may be pooled.
    reusable: bool,
    queue: VecDeque<Segment>,
    /// Audio is owed and the server has been silent since this deadline.
    stall_at: Option<Instant>,
}

enum Wake {
    Input(Option<TtsInput>),
    Message(Result<Option<Value>, SpeechError>),
    Stalled,
    Interrupted,
}

/// Why the stream stopped early.
enum Stop {
    /// The session dropped `output`.
    Interrupted,
    Failed(SpeechError),
}

impl From<SpeechError> for Stop {
    fn from(e: SpeechError) -> Self {
        Stop::Failed(e)
    }
}

impl Task {
    async fn run(mut self) {
        match self.serve().await {
            Ok(()) => {
                if self.reusable {
                    let Conn {
                        sink,
                        stream,
                        opened,
                    } = self.conn;
                    if let Ok(ws) = sink.reunite(stream) {
                        self.shared.give_back(ws, self.job, opened);
                    }
                }
            }
            Err(Stop::Interrupted) => {}
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, "LiveKit Inference TTS failed mid-reply");
                let _ = self.output.send(Err(StageError::from(e))).await;
            }
        }
    }

    async fn serve(&mut self) -> Result<(), Stop> {
        loop {
            if !self.input_open && self.queue.is_empty() {
                return Ok(());
            }
            let stall_at = self.stall_at;
            let wake = tokio::select! {
                biased;
                _ = self.output.closed() => Wake::Interrupted,
                msg = recv_json(SERVICE, &mut self.conn.stream) => Wake::Message(msg),
                input = self.input.recv(), if self.input_open => Wake::Input(input),
                _ = sleep_until(stall_at) => Wake::Stalled,
            };
            let result = match wake {
                Wake::Interrupted => return Err(Stop::Interrupted),
                Wake::Input(None) => {
                    self.input_open = false;
                    Ok(())
                }
                Wake::Input(Some(TtsInput::Segment(text))) => self.on_segment(text).await,
                Wake::Message(Ok(Some(msg))) => self.on_message(msg).await,
                Wake::Message(Ok(None)) => Err(Stop::Failed(SpeechError::Connection {
                    service: SERVICE,
                    message: "the server closed the connection".into(),
                })),
                Wake::Message(Err(e)) => Err(Stop::Failed(e)),
                Wake::Stalled => Err(Stop::Failed(SpeechError::Timeout {
                    service: SERVICE,
                    message: format!("no audio for {:?}", self.shared.options.common.idle_timeout),
                })),
            };
            match result {
                Ok(()) => {}
                Err(Stop::Failed(e)) if self.pooled && !self.audio_seen => {
                    // A pooled connection that died while idle: replace it
                    // once and resend what it was given.
                    tracing::debug!(error = %e, "pooled TTS connection was dead; reconnecting");
                    self.pooled = false;
                    self.reconnect().await?;
                }
                Err(stop) => return Err(stop),
            }
        }
    }

    async fn reconnect(&mut self) -> Result<(), Stop> {
        let (ws, opened) = self.shared.open(&self.job).await?;
        let (sink, stream) = ws.split();
        self.conn = Conn {
            sink,
            stream,
            opened,
        };
        let texts: Vec<String> = self
            .queue
            .iter()
            .filter(|s| !s.blank)
            .map(|s| s.text.clone())
            .collect();
        for text in texts {
            self.send_segment(&text).await?;
        }
        Ok(())
    }

    async fn send_segment(&mut self, text: &str) -> Result<(), SpeechError> {
        let sink = &mut self.conn.sink;
        send_json(
            SERVICE,
            sink,
            &json!({"type": "input_transcript", "transcript": text}),
        )
        .await?;
        send_json(SERVICE, sink, &json!({"type": "session.flush"})).await?;
        if self.stall_at.is_none() {
            self.stall_at = Some(Instant::now() + self.shared.options.common.idle_timeout);
        }
        Ok(())
    }

    async fn on_segment(&mut self, text: String) -> Result<(), Stop> {
        let segment = Segment::new(text);
        if !segment.blank {
            self.send_segment(&segment.text).await?;
        }
        self.queue.push_back(segment);
        self.finish_blank().await
    }

    /// Sends out blank segments at the front: they have no audio to wait for.
    async fn finish_blank(&mut self) -> Result<(), Stop> {
        while self.queue.front().is_some_and(|s| s.blank) {
            if let Some(s) = self.queue.pop_front() {
                self.emit(Vec::new(), s.text).await?;
            }
        }
        if self.queue.is_empty() {
            self.stall_at = None;
        }
        Ok(())
    }

    async fn emit(&self, samples: Vec<i16>, text: String) -> Result<(), Stop> {
        let frame = AudioFrame::new(samples, SAMPLE_RATE, 1);
        self.output
            .send(Ok(TtsAudio { frame, text }))
            .await
            .map_err(|_| Stop::Interrupted)
    }

    async fn on_message(&mut self, msg: Value) -> Result<(), Stop> {
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        if self.stall_at.is_some() {
            self.stall_at = Some(Instant::now() + self.shared.options.common.idle_timeout);
        }
        match kind {
            "output_audio" => {
                let Some(b64) = msg.get("audio").and_then(Value::as_str) else {
                    return Err(protocol("output_audio without audio"));
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| protocol(&format!("output_audio is not base64: {e}")))?;
                self.on_audio(bytes).await
            }
            "output_alignment" => {
                if let Some(seg) = self.queue.front_mut()
                    && let Some(words) = msg.get("words").and_then(Value::as_array)
                {
                    seg.align(words);
                }
                Ok(())
            }
            "done" => {
                let Some(seg) = self.queue.pop_front() else {
                    // More `done`s than flushes: do not trust this connection.
                    self.reusable = false;
                    return Ok(());
                };
                let rest = seg.text[seg.text_out..].to_string();
                if !rest.is_empty() {
                    self.emit(Vec::new(), rest).await?;
                }
                self.finish_blank().await
            }
            "session.closed" => {
                self.reusable = false;
                if self.queue.is_empty() {
                    Ok(())
                } else {
                    Err(Stop::Failed(SpeechError::Connection {
                        service: SERVICE,
                        message: "the server closed the session mid-reply".into(),
                    }))
                }
            }
            "error" => Err(Stop::Failed(error_event(SERVICE, &self.shared.creds, &msg))),
            _ => Ok(()),
        }
    }

    async fn on_audio(&mut self, bytes: Vec<u8>) -> Result<(), Stop> {
        self.audio_seen = true;
        let Some(seg) = self.queue.front_mut() else {
            // Audio nobody asked for (left from an earlier reply?).
            self.reusable = false;
            return Ok(());
        };
        let mut data = Vec::with_capacity(bytes.len() + 1);
        data.extend(seg.odd.take());
        data.extend_from_slice(&bytes);
        if data.len() % 2 == 1 {
            seg.odd = data.pop();
        }
        let pcm: Vec<i16> = data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        for chunk in pcm.chunks(FRAME_SAMPLES) {
            let Some(seg) = self.queue.front_mut() else {
                break;
            };
            seg.samples += chunk.len() as u64;
            let until = seg.spoken_until();
            let text = seg.text[seg.text_out..until].to_string();
            seg.text_out = until;
            self.emit(chunk.to_vec(), text).await?;
        }
        Ok(())
    }
}

fn protocol(message: &str) -> Stop {
    Stop::Failed(SpeechError::Protocol {
        service: SERVICE,
        message: message.into(),
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_follows_the_audio_on_word_boundaries_and_keeps_the_last_word() {
        let mut s = Segment::new("One two three four five six seven.".into());
        s.samples = SAMPLE_RATE as u64; // 1 s ≈ 14 chars
        let until = s.spoken_until();
        assert_eq!(&s.text[..until], "One two three ");
        s.samples = 60 * SAMPLE_RATE as u64;
        let until = s.spoken_until();
        assert_eq!(&s.text[until..], "seven.");
    }

    #[test]
    fn alignment_places_words() {
        let mut s = Segment::new("Hello there, friend.".into());
        s.align(&[
            json!({"word": "Hello", "start": 0.0, "end": 0.3}),
            json!({"word": "there,", "start": 0.3, "end": 0.6}),
            json!({"word": "friend.", "start": 0.6, "end": 1.0}),
        ]);
        s.samples = (0.4 * SAMPLE_RATE as f64) as u64;
        let until = s.spoken_until();
        assert_eq!(&s.text[..until], "Hello there, ");
    }
}
