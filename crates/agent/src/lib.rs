//! The voice agent core: the session actor, turn taking, the chat context and
//! the stage traits. It does no I/O of its own — it is driven through channels
//! and traits — so its timing logic runs under tokio's paused clock in tests.
//!
//! # Layout
//! - [`audio`]: the PCM frame type and resampling between stage rates.
//! - [`chat`]: the chat context, tool calls and the tools a session offers.
//! - [`stage`]: the traits STT, LLM, TTS, VAD and end-of-turn engines implement.
//! - [`vad`]: per-frame voice scores → speech start, progress and end.
//! - [`turn`]: the turn-taking state machine (pure: events in, actions out).
//! - [`sentence`]: streaming sentence splitting for the TTS.
//! - [`playout`]: the agent's outgoing audio queue: pause, clear, what was played.
//! - [`clock`]: real time, or media time for files processed faster than real time.
//! - [`session`]: the session actor that ties them together.
//! - `reply` (private): one reply's LLM → TTS → playout task.

pub mod audio;
pub mod chat;
pub mod clock;
pub mod playout;
mod reply;
pub mod sentence;
pub mod session;
pub mod stage;
pub mod turn;
pub mod vad;

pub use audio::{AudioFrame, FrameConverter, Resampler};
pub use chat::{ChatContext, ChatMessage, Role, Tool, ToolCall, ToolSet, ToolSpec};
pub use clock::{Clock, MediaClockDriver};
pub use playout::{PlaybackEvent, Playout, PlayoutControl, PlayoutReader, PlayoutWriter, playout};
pub use session::{
    AudioIo, SessionClosed, SessionEvent, SessionHandle, SessionOptions, Stages, TurnMetrics,
};
pub use stage::{
    ErrorKind, JobContext, Llm, LlmChunk, LlmRequest, LlmStream, StageError, Stt, SttEvent,
    SttInput, SttStream, Transcript, Tts, TtsAudio, TtsInput, TtsStream, TurnDetector, TurnInput,
    Usage, VadFactory, VadModel,
};
pub use turn::{AgentState, ReplyId, TurnOptions};
pub use vad::{VadEvent, VadOptions};
