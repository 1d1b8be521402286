//! The agent's LLM stage: streaming chat completions for Kimi (K2.6 by
//! default) through LiveKit Inference, Baseten directly, or any
//! OpenAI-compatible endpoint (Moonshot's API, vLLM, SGLang…).
//! [`KimiLlm`] implements [`agent::Llm`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use agent::{ChatMessage, JobContext, Llm, LlmRequest};
//! use futures::StreamExt;
//! let llm = kimi::KimiLlm::new(&kimi::KimiConfig::default(), &|k| std::env::var(k).ok())?;
//! let request = LlmRequest {
//!     messages: vec![ChatMessage::user("hello")],
//!     tools: vec![],
//!     job: JobContext::default(),
//!     options: Default::default(),
//! };
//! let mut reply = llm.chat(request).await?;
//! while let Some(chunk) = reply.next().await {
//!     println!("{:?}", chunk?);
//! }
//! # Ok(()) }
//! ```
//!
//! # Kimi's tool calling, exactly
//!
//! - Tool-call ids (`functions.NAME:0`) are kept verbatim, from the stream to
//!   the follow-up request's `tool_call_id`; id, name and argument fragments
//!   are assembled by `index` in whatever order and interleaving they come
//!   ([`decode`]).
//! - K2.5/K2.6 reasoning streams as [`agent::LlmChunk::Reasoning`], never as
//!   text; an assistant message with tool calls and
//!   [`agent::ChatMessage::reasoning`] set goes back with its
//!   `reasoning_content` ([`request`]), which Moonshot requires of a thinking
//!   model.
//! - `thinking` in `[llm]` turns thinking on or off in the form the server
//!   takes, and K2.5/K2.6 get the only sampling they accept for the mode in
//!   force ([`config`], [`params`], [`catalogue`]).
//! - The agent's [`agent::LlmOptions`] go on the wire as OpenAI spells them:
//!   `tool_choice` and `parallel_tool_calls` with tools only, `extra` over
//!   the configured `extra_kwargs` ([`params`]).
//!
//! # Layout
//!
//! - [`config`]: the `[llm]` section ([`KimiConfig`]), its defaults, and the
//!   thinking switch's wire formats ([`ThinkingFormat`]).
//! - [`client`]: [`KimiLlm`] (`client/mod.rs`: the stage, its construction
//!   and the shared HTTP client; `client/target.rs`: each (backend, model)
//!   target's endpoint, credentials, headers and body fields;
//!   `client/driver.rs`: one request's attempts, retries, fallbacks, timeouts
//!   and the stream that delivers chunks).
//! - `auth` (private): which credentials each backend takes from the
//!   environment, and each request's bearer token (for LiveKit Inference a
//!   JWT minted by `livekit-plumbing`, which also holds the secrets and their
//!   redaction, shared with `speech`).
//! - [`params`]: the body fields of a target (thinking switch, fixed
//!   sampling, `extra_kwargs`) and of a request (the agent's options).
//! - [`request`]: the JSON body (messages, tools) and endpoint URL.
//! - [`sse`]: the sans-IO server-sent-events parser.
//! - [`decode`]: completion chunks → [`agent::LlmChunk`]s (reasoning,
//!   tool-call assembly, usage, finish reason).
//! - [`think`]: `<think>…</think>` removal across chunk splits.
//! - [`retry`]: the wait `Retry-After` asks for, as a pure function (the
//!   backoff between retries is `livekit_plumbing::Backoff`).
//! - [`catalogue`]: known Kimi models as data (retired, thinking default,
//!   fixed sampling) and the retired-model warning.
//! - [`error`]: [`KimiError`] and its mapping to [`agent::StageError`].
//!
//! No key, secret or token appears in a log line, a `Debug` output or an
//! error message: secrets live in a redacting wrapper, and text from servers
//! is scrubbed of them before it is shown.

mod auth;
pub mod catalogue;
pub mod client;
pub mod config;
pub mod decode;
pub mod error;
pub mod params;
pub mod request;
pub mod retry;
pub mod sse;
pub mod think;

pub use auth::TOKEN_TTL;
pub use client::KimiLlm;
pub use config::{Backend, FallbackConfig, KimiConfig, ThinkingFormat};
pub use error::KimiError;
