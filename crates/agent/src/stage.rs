//! The stage traits a session is built from: STT, LLM, TTS, VAD and the
//! end-of-turn detector. Implementations live in other crates (`kimi`, `speech`);
//! this crate only drives them.
//!
//! Streaming stages (STT, TTS) are opened as a pair of bounded channels: the
//! session sends on `input` and reads `events`/`output`. Dropping the input
//! sender ends the stream; the implementation's task then finishes and closes
//! its side, so every task has an owner.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;

use crate::agents::LlmOptions;
use crate::audio::AudioFrame;
use crate::chat::{ChatMessage, ToolCall};
use crate::tool::ToolSpec;

/// What kind of failure a stage hit; the session counts errors by kind and
/// decides what to tell the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad or missing credentials (HTTP 401/403).
    Auth,
    /// The provider throttled us (HTTP 429).
    RateLimit,
    /// The provider rejected the request as malformed (HTTP 400/404/422).
    BadRequest,
    /// The provider failed (HTTP 5xx).
    Server,
    /// Connect timeout, or a stream that stalled.
    Timeout,
    /// The provider answered something we could not parse.
    Protocol,
    /// Network failure: refused, reset, cut mid-stream.
    Connection,
    /// Missing model files, bad local configuration.
    Config,
    /// A local engine failed.
    Engine,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Connection => "connection",
            ErrorKind::Config => "config",
            ErrorKind::Engine => "engine",
        }
    }
}

/// A stage failure as the session sees it. Implementations convert their own
/// typed errors into this; the message must never contain a secret.
#[derive(Clone, Debug)]
pub struct StageError {
    pub kind: ErrorKind,
    pub message: String,
    /// Where a retry may succeed (rate limits, server errors, timeouts).
    pub retryable: bool,
}

impl StageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retryable = matches!(
            kind,
            ErrorKind::RateLimit | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connection
        );
        Self {
            kind,
            message: message.into(),
            retryable,
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for StageError {}

/// The job a session runs for: set when it runs as a LiveKit job (empty in
/// console mode). Providers attribute usage with the ids (LiveKit Inference
/// takes them as headers); agents read the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobContext {
    /// The room's sid.
    pub room_id: Option<String>,
    pub job_id: Option<String>,
    /// The worker's id.
    pub agent_id: Option<String>,
    pub room_name: Option<String>,
    /// The job's metadata: what the dispatch (API or token room config) set.
    pub job_metadata: String,
    /// The room's metadata when the job was assigned.
    pub room_metadata: String,
    /// The participant the session talks to.
    pub participant: Option<Participant>,
}

/// A room participant as an agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Participant {
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: std::collections::BTreeMap<String, String>,
}

// ---------------------------------------------------------------- STT

/// A transcript with its timing in stream time (from the start of the audio
/// sent on this stream).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub language: Option<String>,
    pub start: Duration,
    pub end: Duration,
    pub confidence: f32,
}

#[derive(Clone, Debug)]
pub enum SttInput {
    /// Audio at the rate the STT asked for, mono.
    Audio(AudioFrame),
    /// The VAD heard speech begin (stream time). Segment-based engines use it
    /// to know where an utterance starts; streaming engines may ignore it.
    SpeechStarted(Duration),
    /// The VAD heard speech end: finalize the current utterance now.
    SpeechEnded(Duration),
}

#[derive(Clone, Debug)]
pub enum SttEvent {
    StartOfSpeech,
    Interim(Transcript),
    Final(Transcript),
    /// The engine finished an utterance that had no words.
    Empty,
    /// A failure the engine recovered from (or is recovering from); the
    /// stream stays open.
    Error(StageError),
}

/// An open STT stream. Drop `input` to end it.
pub struct SttStream {
    pub input: mpsc::Sender<SttInput>,
    pub events: mpsc::Receiver<SttEvent>,
}

#[async_trait]
pub trait Stt: Send + Sync + 'static {
    /// Sample rate of the mono PCM the stream takes.
    fn sample_rate(&self) -> u32;
    /// Opens one stream, kept for the whole session.
    async fn stream(&self, job: &JobContext) -> Result<SttStream, StageError>;
}

// ---------------------------------------------------------------- LLM

#[derive(Clone, Debug)]
pub struct LlmRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub job: JobContext,
    /// The agent's options for this request (tool choice, extra body fields).
    pub options: LlmOptions,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LlmChunk {
    /// Reply text, in order.
    Text(String),
    /// The model's reasoning (Kimi's `reasoning_content`), never spoken.
    Reasoning(String),
    /// A complete tool call (fragments already assembled).
    ToolCall(ToolCall),
    Usage(Usage),
    /// The model finished; no more chunks follow.
    Done {
        finish_reason: Option<String>,
    },
}

/// A reply being generated. Dropping it cancels the request at once.
pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmChunk, StageError>> + Send>>;

#[async_trait]
pub trait Llm: Send + Sync + 'static {
    /// Starts a streaming completion. Returns once the provider has accepted
    /// the request (or has failed it).
    async fn chat(&self, request: LlmRequest) -> Result<LlmStream, StageError>;
}

// ---------------------------------------------------------------- TTS

#[derive(Clone, Debug)]
pub enum TtsInput {
    /// One segment (usually a sentence) to speak, in order.
    Segment(String),
}

/// Synthesized audio and the text it speaks. Summed over a segment, `text`
/// is the whole segment; that is how the session knows what was played when it
/// stops part way.
#[derive(Clone, Debug)]
pub struct TtsAudio {
    pub frame: AudioFrame,
    pub text: String,
}

/// An open TTS stream for one reply. Drop `input` once the last segment is
/// sent: the stream then finishes and closes `output`. Dropping `output`
/// cancels all pending work.
pub struct TtsStream {
    pub input: mpsc::Sender<TtsInput>,
    pub output: mpsc::Receiver<Result<TtsAudio, StageError>>,
}

#[async_trait]
pub trait Tts: Send + Sync + 'static {
    /// Sample rate of the mono PCM the stream produces.
    fn sample_rate(&self) -> u32;
    async fn stream(&self, job: &JobContext) -> Result<TtsStream, StageError>;
}

/// Splits `text` over chunks of audio in proportion to their length, on word
/// boundaries, for engines that have no alignment of their own. Returns one
/// string per chunk; concatenated they give `text` back exactly.
pub fn split_text_by_duration(text: &str, chunk_samples: &[usize]) -> Vec<String> {
    let total: usize = chunk_samples.iter().sum();
    let mut out = Vec::with_capacity(chunk_samples.len());
    if total == 0 || chunk_samples.is_empty() {
        out.resize(chunk_samples.len(), String::new());
        if let Some(first) = out.first_mut() {
            *first = text.to_string();
        }
        return out;
    }
    // Word starts (byte offsets) — a chunk takes whole words.
    let mut cuts = Vec::new();
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() && prev_space && i > 0 {
            cuts.push(i);
        }
        prev_space = c.is_whitespace();
    }
    let len = text.len();
    let mut taken = 0usize;
    let mut acc = 0usize;
    for (n, &samples) in chunk_samples.iter().enumerate() {
        acc += samples;
        let end = if n + 1 == chunk_samples.len() {
            len
        } else {
            let target = len * acc / total;
            // The last word start at or before the target.
            cuts.iter()
                .copied()
                .rfind(|&c| c <= target && c >= taken)
                .unwrap_or(taken)
        };
        out.push(text[taken..end].to_string());
        taken = end;
    }
    out
}

// ---------------------------------------------------------------- VAD

/// A voice activity model: scores fixed-size frames of mono PCM. The session
/// turns scores into speech start/end events (see [`crate::vad`]). `score`
/// runs on the audio input task, so it must be cheap (RTF well under 0.01).
pub trait VadModel: Send + 'static {
    fn sample_rate(&self) -> u32;
    /// Samples per frame `score` takes.
    fn frame_len(&self) -> usize;
    /// Probability in [0, 1] that the frame holds speech.
    fn score(&mut self, frame: &[i16]) -> f32;
    fn reset(&mut self);
}

/// Makes one [`VadModel`] per session.
pub trait VadFactory: Send + Sync + 'static {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError>;
}

// ---------------------------------------------------------------- end of turn

/// What an end-of-turn detector may look at.
#[derive(Clone, Debug)]
pub struct TurnInput {
    /// The conversation so far, ending with the user's (uncommitted) words.
    pub chat: Vec<ChatMessage>,
    /// The user's last seconds of audio, mono 16 kHz f32 in [-1, 1].
    pub audio: Arc<[f32]>,
}

#[async_trait]
pub trait TurnDetector: Send + Sync + 'static {
    /// Probability in [0, 1] that the user has finished their turn.
    async fn end_of_turn_probability(&self, input: TurnInput) -> Result<f32, StageError>;
    /// Below this probability the turn is judged unfinished and the session
    /// waits `max_delay` instead of `min_delay`.
    fn unlikely_threshold(&self) -> f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_text_covers_the_text_exactly() {
        let text = "Hello there, how are you today?";
        let parts = split_text_by_duration(text, &[100, 100, 100, 100]);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), text);
        assert!(parts[0].starts_with("Hello"));
        // Proportional: the first quarter of the audio does not speak the last word.
        assert!(!parts[0].contains("today"));
        assert!(parts[3].contains("today?"));
    }

    #[test]
    fn split_text_handles_one_chunk_and_multibyte() {
        assert_eq!(split_text_by_duration("día señor", &[5]), vec!["día señor"]);
        let parts = split_text_by_duration("día señor café", &[1, 1, 1]);
        assert_eq!(parts.concat(), "día señor café");
    }
}
