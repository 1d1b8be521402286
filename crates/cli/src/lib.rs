//! # voice-agent: write your own voice agent in Rust
//!
//! A voice agent listens (speech to text), decides when the user has
//! finished their turn, answers with an LLM (Kimi K2 through LiveKit
//! Inference, Baseten or any OpenAI-compatible endpoint) and speaks (text to
//! speech), in a LiveKit room or locally in a terminal. This crate is the
//! framework: you write the agent — its instructions, its tools, its
//! handoffs — and [`run`] gives your program the same commands as the stock
//! `voice-agent` binary: `console` (microphone and speaker, a WAV file, or
//! `--text`), `dev` and `start` (the LiveKit worker), `connect --room`, and
//! `download-files`. Speech engines, the LLM and turn taking come from
//! `agent-config/agent.toml`.
//!
//! Two tools in a few lines (the arguments' JSON schema is derived from the
//! struct; doc comments become the model's descriptions):
//!
//! ```no_run
//! use voice_agent::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Table {
//!     /// How many people.
//!     party_size: u32,
//!     /// When, e.g. "19:30".
//!     time: String,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     voice_agent::run(|_job| async move {
//!         Ok(Agent::new("You take table bookings for Luigi's. Be brief.")
//!             .tool(tool("check_availability", "Is a table free?", |_ctx, t: Table| async move {
//!                 Ok(if t.party_size <= 6 { "free" } else { "no table that large" })
//!             }))
//!             .tool(tool("book", "Book a table", |_ctx, t: Table| async move {
//!                 Ok(format!("Booked for {} at {}.", t.party_size, t.time))
//!             })))
//!     })
//! }
//! ```
//!
//! The entrypoint runs once per room (once in console mode) with the job's
//! [`JobContext`]: room name, job and room metadata, the user's identity and
//! attributes. Return an [`Agent`], or a [`SessionSetup`] with typed
//! per-session data for the tools (`ctx.userdata::<T>()`). An error or a
//! panic in it fails that room's job only.
//!
//! A tool gets a [`ToolContext`]: the session (`ctx.session().say(..)` while
//! it works), the user data, the job, a cancellation token. Its error goes
//! back to the model as its result. Returning an [`Agent`] hands the
//! conversation over (history kept). The session handle also has
//! `generate_reply`, `interrupt`, `history` and `update_agent`.
//!
//! # Cargo features
//! - `local-speech` (default): the local speech engines — whisper STT, Piper
//!   and espeak-ng TTS, the Silero VAD, the Smart Turn detector — and
//!   `download-files`, which fetches their models. They bring candle, `ort`
//!   (ONNX) and libespeak-ng (`libespeak-ng-dev` at build time).
//!
//! A program whose speech is all LiveKit Inference (STT and TTS over
//! websockets, with the built-in earshot VAD) can leave them out, and builds
//! without any of them:
//!
//! ```toml
//! voice-agent = { path = "crates/cli", default-features = false }
//! ```
//!
//! Its config must then name no local engine — `stt.engine`, `tts.engine`
//! and their fallbacks `"livekit"`, `vad.engine = "earshot"`,
//! `turn.detector = "none"` — or the program fails at start with an error
//! naming the keys; `download-files` says there is nothing to download.
//!
//! # Layout
//! - this file: [`run`], [`run_with_args`] and [`run_stock`], the
//!   re-exported API and the [`prelude`].
//! - `main.rs`: the stock `voice-agent` binary ([`run_stock`]).
//! - `app`: the command line and the runtime.
//! - `config`: `agent-config/agent.toml`.
//! - `stages`: config → the engines a session runs on.
//! - `serve`: `start`, `dev` and `connect` (the LiveKit worker), signals.
//! - `stock`: the zero-code agent of the stock binary.

mod app;
mod config;
mod serve;
mod stages;
mod stock;

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;

pub use agent::{
    Agent, ChatContext, ChatMessage, FunctionTool, JobContext, LlmOptions, NoArgs, Participant,
    SessionContext, SessionHandle, SessionSetup, SpeechDone, SpeechHandle, Tool, ToolChoice,
    ToolContext, ToolError, ToolOutput, ToolProvider, ToolSet, ToolSpec, Userdata, tool,
};
/// MCP servers as tools: [`mcp::McpServer::start`], then
/// [`Agent::tool_provider`].
pub use mcp;
pub use worker::BoxError;

/// What an agent's program usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Agent, BoxError, JobContext, NoArgs, SessionContext, SessionSetup, ToolContext, ToolError,
        ToolOutput, tool,
    };
    pub use schemars::JsonSchema;
    pub use serde::Deserialize;
}

/// Runs the program with `entrypoint` giving each room's agent: parses the
/// command line (`console`, `dev`, `start`, `connect`, `download-files`),
/// loads the config and runs the chosen command. Call it from `main`.
pub fn run<F, Fut, S>(entrypoint: F) -> ExitCode
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Into<SessionSetup>,
{
    run_with_args(entrypoint, std::env::args_os())
}

/// [`run`] with the command line given (the first item is the program name).
pub fn run_with_args<F, Fut, S, I, T>(entrypoint: F, args: I) -> ExitCode
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Into<SessionSetup>,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    app::main(app::Source::Program(worker::entrypoint(entrypoint)), args)
}

/// Runs the stock agent: everything from `agent.toml` (instructions,
/// greeting, MCP servers' tools), no code. The `voice-agent` binary is this.
pub fn run_stock() -> ExitCode {
    app::main(app::Source::Stock, std::env::args_os())
}
