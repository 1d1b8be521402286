//! The agent's LLM stage: streaming chat completions for Kimi K2 through
//! LiveKit Inference, Baseten directly, or any OpenAI-compatible endpoint.
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
//! };
//! let mut reply = llm.chat(request).await?;
//! while let Some(chunk) = reply.next().await {
//!     println!("{:?}", chunk?);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`config`]: the `[llm]` section ([`KimiConfig`]) and its defaults.
//! - [`client`]: [`KimiLlm`], the HTTP client, targets, retries, fallbacks,
//!   timeouts and the stream that delivers chunks.
//! - `auth` (private): credentials from the environment; the LiveKit
//!   Inference JWT.
//! - [`request`]: the JSON body and endpoint URL.
//! - [`sse`]: the sans-IO server-sent-events parser.
//! - [`decode`]: completion chunks → [`agent::LlmChunk`]s (tool-call assembly,
//!   usage, finish reason).
//! - [`think`]: `<think>…</think>` removal across chunk splits.
//! - [`retry`]: backoff with jitter and `Retry-After`, as pure functions.
//! - [`catalogue`]: known Kimi model ids and the retired-model warning.
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
pub mod request;
pub mod retry;
pub mod sse;
pub mod think;

pub use auth::TOKEN_TTL;
pub use client::KimiLlm;
pub use config::{Backend, FallbackConfig, KimiConfig};
pub use error::KimiError;
