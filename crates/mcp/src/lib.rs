//! MCP servers as agent tools, over [`rmcp`], the official Rust MCP SDK.
//!
//! An [`McpServer`] is started from an [`McpServerConfig`] (a `[[mcp]]`
//! table of `agent.toml`): a stdio server started as a child process, or a
//! Streamable HTTP server. [`McpServer::start`] returns at once and connects
//! in a background task it owns; the agent starts and answers even while a
//! server is down. The task logs what failed, retries with capped
//! exponential backoff and jitter (0.5 s doubling to 30 s), notices a server
//! that dies mid-session (the child exits, requests fail, a ping goes
//! unanswered) and reconnects the same way, re-listing the tools on each
//! connection and on `notifications/tools/list_changed`.
//!
//! `McpServer` is an [`agent::ToolProvider`]: the agent asks it for tools
//! before each LLM request and gets those of the last successful listing,
//! filtered by `allowed_tools`, under the names the server gives them. A
//! call forwards `tools/call`; text content is joined, `structuredContent`
//! becomes [`agent::ToolOutput::Json`], `isError` a [`agent::ToolError`]
//! with the tool's text, other content is summarized. A call while the
//! server is down, a transport error or a timeout is a `ToolError` saying
//! so; a call whose [`ToolContext`](agent::ToolContext) is cancelled returns
//! at once and rmcp sends `notifications/cancelled` for it.
//!
//! Dropping the last `Arc<McpServer>` (or [`McpServer::shutdown`]) stops the
//! task and kills a stdio server's whole process group. Header values and
//! environment values may be secrets: they never appear in `Debug`, logs or
//! errors.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use agent::{Agent, ToolProvider};
//! use mcp::{McpServer, McpServerConfig};
//!
//! # async fn example() -> Result<(), mcp::McpError> {
//! let config = McpServerConfig::stdio("everything", "node")
//!     .args(["dist/index.js", "stdio"])
//!     .allowed_tools(["get-sum"])
//!     .timeout(Duration::from_secs(10));
//! let server = McpServer::start(&config)?;
//! // Not required: the agent works before the server is up.
//! if let Err(e) = server.wait_ready(Duration::from_secs(5)).await {
//!     eprintln!("{e}");
//! }
//! println!("{} tools", server.tools().len());
//! let agent = Agent::new("You add numbers.").tool_provider(server.clone());
//! # let _ = agent;
//! let sum = server.call("get-sum", serde_json::json!({"a": 2, "b": 3})).await?;
//! println!("{}", sum.to_model_text()); // The sum of 2 and 3 is 5.
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `config.rs`: [`McpServerConfig`] (serde, the `[[mcp]]` table), its
//!   checks ([`McpServerConfig::validate`], [`validate_all`]) and the
//!   resolution of `env:NAME` values.
//! - `server/mod.rs`: [`McpServer`], the handle, and what the supervisor
//!   publishes ([`McpStatus`], the connection every tool's call reads).
//! - `server/supervisor.rs`: the supervisor task the handle owns: listing
//!   tools, watching the connection (pings, failed calls, list changes),
//!   reconnecting with backoff.
//! - `server/connect.rs`: one connection: the child process in its own
//!   process group (and its stderr) or the HTTP transport, the MCP handshake,
//!   killing the process group.
//! - `tool.rs`: one MCP tool as an [`agent::Tool`], the call path with its
//!   timeout and cancellation, and the conversions of schemas and results.
//! - `error.rs`: [`McpError`], the crate's one error type.
//!
//! The reconnect backoff (a pure function), the secret type and the
//! redaction of secrets from what servers say are `livekit-plumbing`'s,
//! shared with the other clients of the workspace.

mod config;
mod error;
mod server;
mod tool;

pub use config::{DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS, McpServerConfig, validate_all};
pub use error::McpError;
pub use server::{McpServer, McpStatus};
