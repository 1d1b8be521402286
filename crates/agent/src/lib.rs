//! The voice agent core.
//!
//! # Layout
//! - [`audio`]: the PCM frame type and resampling between stage rates.
//! - [`chat`]: the chat context, tool calls and the tools a session offers.
//! - [`stage`]: the traits STT, LLM, TTS, VAD and end-of-turn engines implement.

pub mod audio;
pub mod chat;
pub mod stage;

pub use audio::{AudioFrame, FrameConverter, Resampler};
pub use chat::{ChatContext, ChatMessage, Role, Tool, ToolCall, ToolSet, ToolSpec};
pub use stage::{
    ErrorKind, JobContext, Llm, LlmChunk, LlmRequest, LlmStream, StageError, Stt, SttEvent,
    SttInput, SttStream, Transcript, Tts, TtsAudio, TtsInput, TtsStream, TurnDetector, TurnInput,
    Usage, VadFactory, VadModel,
};
