//! The voice agent core: the session actor, turn taking, the chat context and
//! the stage traits. It does no I/O of its own — it is driven through channels
//! and traits — so its timing logic runs under tokio's paused clock in tests.
//!
//! # Layout
//! - [`agents`]: [`Agent`] — instructions, tools, an LLM of its own, hooks.
//! - [`tool`](mod@tool): the [`Tool`] trait, typed tools ([`tool()`]), their context and output.
//! - [`rpc`]: methods the user's frontend calls on the agent (LiveKit RPC).
//! - [`audio`]: the PCM frame and the resampler between stage rates, the
//!   `pcm` crate's (shared with the room participant and local I/O).
//! - [`chat`]: the chat history, tool calls, and the bound on what is kept.
//! - [`stage`]: the traits STT, LLM, TTS, VAD and end-of-turn engines implement.
//! - [`vad`]: per-frame voice scores → speech start, progress and end.
//! - [`turn`]: the turn-taking state machine (pure: events in, actions out).
//! - [`sentence`]: streaming sentence splitting for the TTS.
//! - [`playout`](mod@playout): the agent's outgoing audio queue: pause, clear, what was played.
//! - [`clock`]: real time, or media time for files processed faster than real time.
//! - [`session`]: the session: its handle, options, events and `start`.
//! - `actor` (private): the session's task and its one `select!`
//!   (`actor/mod.rs`: the loop, commands and turns; `actor/replies.rs`: the
//!   reply side).
//! - `input` (private): the audio input task (VAD, STT feed, end-of-turn
//!   audio) and how stream time maps to session time.
//! - `reply` (private): one reply's task (`reply/mod.rs`: LLM steps;
//!   `reply/tools.rs`: the calls of a step; `reply/audio.rs`: TTS into the
//!   playout by part).
//! - `ledger` (private): one reply's bookkeeping (pure): parts, calls and
//!   results, what was heard, what the history keeps, the turn's metrics.

mod actor;
pub mod agents;
pub mod audio;
pub mod chat;
pub mod clock;
mod input;
mod ledger;
pub mod playout;
mod reply;
pub mod rpc;
pub mod sentence;
pub mod session;
pub mod stage;
pub mod tool;
pub mod turn;
pub mod vad;

pub use agents::{Agent, LlmOptions, ToolChoice};
pub use audio::{AudioFrame, FrameConverter, Resampler};
pub use chat::{ChatContext, ChatMessage, HistoryLimit, Role, ToolCall};
pub use clock::{Clock, MediaClockDriver};
pub use playout::{PlaybackEvent, Playout, PlayoutControl, PlayoutReader, PlayoutWriter, playout};
pub use rpc::{RpcCall, RpcError, RpcHandler, RpcMethods};
pub use session::{
    AudioIo, SessionClosed, SessionEvent, SessionHandle, SessionOptions, SessionSetup, SpeechDone,
    SpeechHandle, Stages, ToolOptions, TurnMetrics,
};
pub use stage::{
    ErrorKind, JobContext, Llm, LlmChunk, LlmRequest, LlmStream, Participant, StageError, Stt,
    SttEvent, SttInput, SttStream, Transcript, Tts, TtsAudio, TtsInput, TtsStream, TurnDetector,
    TurnInput, Usage, VadFactory, VadModel,
};
pub use tool::{
    FunctionTool, NoArgs, SessionContext, Tool, ToolContext, ToolError, ToolOutput, ToolProvider,
    ToolSet, ToolSnapshot, ToolSpec, Userdata, tool,
};
pub use turn::{AgentState, ReplyId, TurnOptions};
pub use vad::{VadEvent, VadOptions};
