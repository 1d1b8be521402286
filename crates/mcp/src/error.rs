//! The crate's one error type, [`McpError`].
//!
//! Configuration variants carry the TOML key they are about (`mcp[0].url`),
//! so a program can say which key of which file is wrong. Call variants are
//! what a tool call can run into; they become the [`agent::ToolError`] the
//! model reads, with their whole `source()` chain. No variant ever holds a
//! header value or an environment variable's value.

use std::time::Duration;

/// What can go wrong configuring, starting or calling an MCP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// A configuration value is wrong. `key` names it, e.g. `mcp[0].url`.
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },

    /// A value `env:NAME` names an environment variable that is not set.
    #[error("{key}: environment variable {var} is not set")]
    EnvVarUnset { key: String, var: String },

    /// Starting or connecting to the server failed (logged by the connect
    /// loop, which retries; shown in [`McpStatus::Down`](crate::McpStatus)).
    #[error("MCP server \"{server}\": {what}")]
    Connect {
        server: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The server is not connected now: still starting, or down and being
    /// reconnected. `state` says which.
    #[error("MCP server \"{server}\" is not connected ({state})")]
    NotConnected { server: String, state: String },

    /// The server was shut down (its [`McpServer`](crate::McpServer) dropped).
    #[error("MCP server \"{server}\" has been shut down")]
    Stopped { server: String },

    /// [`McpServer::wait_ready`](crate::McpServer::wait_ready) gave up.
    #[error("MCP server \"{server}\" was not ready within {waited:?} ({state})")]
    NotReady {
        server: String,
        waited: Duration,
        state: String,
    },

    /// A direct call named a tool that `allowed_tools` leaves out.
    #[error("MCP server \"{server}\": tool \"{tool}\" is not in allowed_tools")]
    ToolNotAllowed { server: String, tool: String },

    /// The arguments of a call were not a JSON object.
    #[error("arguments of \"{tool}\" must be a JSON object, not {kind}")]
    InvalidArguments { tool: String, kind: &'static str },

    /// The call took longer than the server's `timeout`; it was cancelled on
    /// the wire.
    #[error("MCP server \"{server}\": tool \"{tool}\" timed out after {timeout:?}")]
    Timeout {
        server: String,
        tool: String,
        timeout: Duration,
    },

    /// The caller cancelled the call (the user interrupted, the session
    /// ended); it was cancelled on the wire.
    #[error("MCP server \"{server}\": tool \"{tool}\" was cancelled")]
    Cancelled { server: String, tool: String },

    /// The request failed: the transport broke, or the server answered with
    /// a JSON-RPC error.
    #[error("MCP server \"{server}\": calling \"{tool}\" failed")]
    Request {
        server: String,
        tool: String,
        #[source]
        source: rmcp::ServiceError,
    },

    /// The tool ran and reported an error (`isError: true`); `message` is its
    /// text, which is what the model reads.
    #[error("{message}")]
    ToolFailed {
        server: String,
        tool: String,
        message: String,
    },
}

impl McpError {
    /// The configuration key this error is about, for configuration errors.
    pub fn config_key(&self) -> Option<&str> {
        match self {
            McpError::Config { key, .. } | McpError::EnvVarUnset { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        McpError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `error` and its causes on one line, for logs and status text.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
