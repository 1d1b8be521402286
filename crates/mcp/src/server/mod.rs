//! [`McpServer`], the handle, and what it publishes: [`McpStatus`] and the
//! connection ([`Link`]) every tool's call reads. The supervisor task the
//! handle owns lives in `supervisor` (the loop that connects, lists tools,
//! watches the connection and reconnects) and `connect` (one connection:
//! spawning the child or reaching the HTTP server, the MCP handshake, the
//! process group and the child's stderr).
//!
//! The supervisor is the only writer of two `watch` channels: the
//! connection ([`Link`]: status, and an rmcp peer while connected), read by
//! every tool's call, and the offered tools, read by
//! [`ToolProvider::tools`]. Tools report transport errors back on a bounded
//! `nudge` channel (`try_send`, capacity 1), so nothing ever waits on the
//! supervisor and no channel forms a cycle.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Tool, ToolOutput, ToolProvider};
use rmcp::Peer;
use rmcp::service::RoleClient;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{McpServerConfig, process_env};
use crate::error::McpError;
use crate::tool::Caller;

mod connect;
mod supervisor;

use supervisor::Supervisor;

/// Where a server stands, as [`McpServer::status`] reports it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum McpStatus {
    /// Starting or connecting; `attempt` counts the failures before it.
    Connecting { attempt: u32 },
    /// Connected; `tools` of its tools are offered.
    Ready { tools: usize },
    /// Not reachable: what failed, and when the next attempt starts.
    Down { error: String, retry_in: Duration },
    /// Shut down for good.
    Stopped,
}

impl fmt::Display for McpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpStatus::Connecting { attempt: 0 } => f.write_str("connecting"),
            McpStatus::Connecting { attempt } => {
                write!(f, "connecting, attempt {}", attempt.saturating_add(1))
            }
            McpStatus::Ready { tools } => write!(f, "ready, {tools} tools"),
            McpStatus::Down { error, retry_in } => {
                write!(
                    f,
                    "down: {error}; retrying in {:.1} s",
                    retry_in.as_secs_f64()
                )
            }
            McpStatus::Stopped => f.write_str("stopped"),
        }
    }
}

/// The connection as the supervisor publishes it.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) status: McpStatus,
    /// Set while connected; requests go through it.
    pub(crate) peer: Option<Peer<RoleClient>>,
}

type ToolList = Arc<[Arc<dyn Tool>]>;

/// An MCP server whose tools an agent offers: started with
/// [`McpServer::start`], it connects in the background and keeps
/// reconnecting, and implements [`ToolProvider`] with the tools of its last
/// successful listing. Dropping the last `Arc` (or [`shutdown`](Self::shutdown))
/// stops it and kills a stdio server's processes.
pub struct McpServer {
    name: Arc<str>,
    /// The call path of [`call`](Self::call); a clone sits in every tool.
    caller: Caller,
    /// The offered tools; the supervisor writes them.
    tools: watch::Receiver<ToolList>,
    /// Stops the supervisor; cancelled by `_stop_on_drop` when this drops.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    /// The supervisor task; taken and awaited by `shutdown`.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl McpServer {
    /// Checks `config`, reads its `env:NAME` values, and starts connecting in
    /// a background task; returns at once. Configuration errors (keys named
    /// `mcp[NAME].…`) are the only errors: a server that cannot be reached is
    /// logged and retried, and offers no tools until it answers.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn start(config: &McpServerConfig) -> Result<Arc<McpServer>, McpError> {
        let resolved = config.resolve(&process_env)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| McpError::Connect {
            server: resolved.name.clone(),
            what: "McpServer::start needs a Tokio runtime".into(),
            source: Box::new(e),
        })?;
        let name: Arc<str> = resolved.name.into();
        let (link_tx, link_rx) = watch::channel(Link {
            status: McpStatus::Connecting { attempt: 0 },
            peer: None,
        });
        let (tools_tx, tools_rx) = watch::channel(ToolList::from(Vec::new()));
        let (nudge_tx, nudge_rx) = mpsc::channel(1);
        let caller = Caller {
            server: name.clone(),
            timeout: resolved.timeout,
            allowed: resolved
                .allowed_tools
                .map(|t| Arc::new(t.into_iter().collect::<HashSet<_>>())),
            link: link_rx,
            nudge: nudge_tx,
        };
        let stop = CancellationToken::new();
        let supervisor = Supervisor {
            name: name.clone(),
            transport: resolved.transport,
            caller: caller.clone(),
            link: link_tx,
            tools: tools_tx,
            nudge: nudge_rx,
            stop: stop.clone(),
            redactor: resolved.redactor,
        };
        let task = runtime.spawn(supervisor.run());
        Ok(Arc::new(McpServer {
            name,
            caller,
            tools: tools_rx,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// The server's name from its configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the server stands now.
    pub fn status(&self) -> McpStatus {
        self.caller.link.borrow().status.clone()
    }

    /// Waits until the server is connected and its tools are listed, at most
    /// `timeout`. The error says what state it is in (the last failure).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), McpError> {
        let mut link = self.caller.link.clone();
        let _ = tokio::time::timeout(
            timeout,
            link.wait_for(|l| matches!(l.status, McpStatus::Ready { .. } | McpStatus::Stopped)),
        )
        .await;
        match self.status() {
            McpStatus::Ready { .. } => Ok(()),
            McpStatus::Stopped => Err(McpError::Stopped {
                server: self.name.to_string(),
            }),
            other => Err(McpError::NotReady {
                server: self.name.to_string(),
                waited: timeout,
                state: other.to_string(),
            }),
        }
    }

    /// Calls tool `tool` with `arguments` (a JSON object, or null for none),
    /// bounded by the configured timeout, as the agent's tools do, without a
    /// session (benchmarks, checks). A tool left out by `allowed_tools` is
    /// refused.
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<ToolOutput, McpError> {
        if !self.caller.is_allowed(tool) {
            return Err(McpError::ToolNotAllowed {
                server: self.name.to_string(),
                tool: tool.to_string(),
            });
        }
        self.caller.call(tool, arguments, None).await
    }

    /// Stops the server and waits until its connection is closed and a stdio
    /// server's processes are gone (a few seconds at most).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl ToolProvider for McpServer {
    fn tools(&self) -> Vec<Arc<dyn Tool>> {
        self.tools.borrow().to_vec()
    }
}

impl fmt::Debug for McpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish()
    }
}
