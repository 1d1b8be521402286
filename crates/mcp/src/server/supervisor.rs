//! The task behind an [`McpServer`](super::McpServer): connect, list the
//! tools, watch the connection (rmcp's service loop, pings, tools' nudges,
//! `tools/list_changed`) and reconnect with backoff, publishing each state.
//!
//! One connection ([`Session`]) lives inside [`Supervisor::serve`]; it ends
//! when rmcp's service loop ends (the child exited, the transport failed), a
//! ping goes unanswered, or the handle stops the supervisor. Dropping a
//! session closes rmcp's service and kills the child's process group.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agent::Tool;
use livekit_plumbing::{Backoff, Redactor};
use rmcp::model::{ClientRequest, PingRequest};
use rmcp::service::{QuitReason, RoleClient, RunningService};
use rmcp::{Peer, ServiceError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{Handler, Session};
use super::{Link, McpStatus, ToolList};
use crate::config::Transport;
use crate::error::{McpError, chain};
use crate::tool::{Caller, McpTool};

/// The longest a start (spawn or HTTP connect, then the MCP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a `tools/list` (all pages) may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection is checked with a ping.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// The longest a ping may go unanswered before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the next connect attempt: 0.5 s doubling to 30 s, with
/// jitter, so that servers restarted together are not hammered in lockstep.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// On shutdown, how long rmcp may close the connection gracefully (stdin
/// closed, then SIGTERM) before the process group is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The task behind an [`McpServer`](super::McpServer): it owns the connection.
pub(super) struct Supervisor {
    pub(super) name: Arc<str>,
    pub(super) transport: Transport,
    /// Cloned into each listed tool.
    pub(super) caller: Caller,
    pub(super) link: watch::Sender<Link>,
    pub(super) tools: watch::Sender<ToolList>,
    /// Tools' reports of transport errors.
    pub(super) nudge: mpsc::Receiver<()>,
    /// Cancelled when the handle drops or shuts down.
    pub(super) stop: CancellationToken,
    /// Scrubs the configured secrets from errors and from the child's stderr.
    pub(super) redactor: Redactor,
}

/// How one connection ended.
enum Ended {
    /// The handle stopped the supervisor.
    Stopped,
    /// The connection broke: what happened.
    Lost(String),
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            self.publish(McpStatus::Connecting { attempt }, None);
            let connected = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => connected,
            };
            let error = match connected {
                Err(_elapsed) => {
                    format!("could not connect within {} s", CONNECT_TIMEOUT.as_secs())
                }
                // The log line and the status name the server already.
                Ok(Err(McpError::Connect { what, source, .. })) => {
                    format!("{what}: {}", chain(source.as_ref()))
                }
                Ok(Err(e)) => chain(&e),
                Ok(Ok(session)) => {
                    let started = Instant::now();
                    match self.serve(session).await {
                        Ended::Stopped => break,
                        Ended::Lost(error) => {
                            if started.elapsed() >= STABLE_AFTER {
                                attempt = 0;
                            }
                            error
                        }
                    }
                }
            };
            let error = self.redactor.clean(&error);
            let retry_in = RECONNECT.delay_jittered(attempt);
            tracing::warn!(
                server = %self.name,
                transport = %self.transport.describe(),
                "MCP server unavailable: {error}; retrying in {:.1} s",
                retry_in.as_secs_f64()
            );
            self.publish(McpStatus::Down { error, retry_in }, None);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(retry_in) => {}
            }
            attempt = attempt.saturating_add(1);
        }
        self.publish(McpStatus::Stopped, None);
        tracing::debug!(server = %self.name, "MCP server stopped");
    }

    fn publish(&self, status: McpStatus, peer: Option<Peer<RoleClient>>) {
        self.link.send_replace(Link { status, peer });
    }

    /// Runs one connection until it breaks or the supervisor is stopped.
    async fn serve(&mut self, session: Session) -> Ended {
        let Session {
            running,
            mut list_changed,
            _group,
            _stderr,
        } = session;
        let peer = running.peer().clone();
        let listed = match self.until_stopped(self.list_tools(&peer)).await {
            None => return self.close(running).await,
            Some(listed) => listed,
        };
        let tools = match listed {
            Ok(tools) => tools,
            Err(e) => return Ended::Lost(format!("listing its tools failed: {e}")),
        };
        let server_info = peer
            .peer_info()
            .and_then(|info| info.server_info.clone())
            .map(|i| format!("{} {}", i.name, i.version))
            .unwrap_or_else(|| "unnamed server".to_string());
        tracing::info!(
            server = %self.name,
            transport = %self.transport.describe(),
            "MCP server ready ({server_info}): {tools} tools"
        );
        self.publish(McpStatus::Ready { tools }, Some(peer.clone()));
        // Drain a nudge left from the previous connection.
        let _ = self.nudge.try_recv();

        let service = running.cancellation_token();
        let waiting = running.waiting();
        tokio::pin!(waiting);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    service.cancel();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut waiting).await;
                    return Ended::Stopped;
                }
                quit = &mut waiting => {
                    return Ended::Lost(match quit {
                        Ok(QuitReason::Closed) => "the connection closed (did the server exit?)".into(),
                        Ok(QuitReason::Cancelled) => "the connection was cancelled".into(),
                        Ok(other) => format!("the connection ended: {other:?}"),
                        Err(e) => format!("the connection task failed: {e}"),
                    });
                }
                Some(()) = list_changed.recv() => {
                    tracing::debug!(server = %self.name, "tool list changed");
                    match self.until_stopped(self.list_tools(&peer)).await {
                        None => continue,
                        Some(Ok(tools)) => self.publish(McpStatus::Ready { tools }, Some(peer.clone())),
                        Some(Err(e)) => tracing::warn!(server = %self.name, "listing the changed tools failed: {e}"),
                    }
                }
                Some(()) = self.nudge.recv() => {
                    if let Some(Err(e)) = self.until_stopped(check_alive(&peer)).await {
                        return Ended::Lost(format!("after a failed call, {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Some(Err(e)) = self.until_stopped(check_alive(&peer)).await {
                        return Ended::Lost(e);
                    }
                }
            }
        }
    }

    /// Closes a connection that is not yet being watched.
    async fn close(&self, mut running: RunningService<RoleClient, Handler>) -> Ended {
        let _ = running.close_with_timeout(SHUTDOWN_GRACE).await;
        Ended::Stopped
    }

    /// `f`'s output, or `None` once the supervisor is stopped.
    async fn until_stopped<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            out = f => Some(out),
        }
    }

    /// Lists the tools (all pages), publishes the allowed ones, returns how
    /// many.
    async fn list_tools(&self, peer: &Peer<RoleClient>) -> Result<usize, String> {
        let listed = match tokio::time::timeout(LIST_TIMEOUT, peer.list_all_tools()).await {
            Err(_elapsed) => {
                return Err(format!("no answer within {} s", LIST_TIMEOUT.as_secs()));
            }
            Ok(Err(e)) => return Err(chain(&e)),
            Ok(Ok(listed)) => listed,
        };
        let mut seen = HashSet::with_capacity(listed.len());
        let mut offered: Vec<Arc<dyn Tool>> = Vec::with_capacity(listed.len());
        for tool in &listed {
            if self.caller.is_allowed(&tool.name) && seen.insert(tool.name.to_string()) {
                offered.push(Arc::new(McpTool::new(tool, self.caller.clone())));
            }
        }
        if let Some(allowed) = &self.caller.allowed {
            let mut missing: Vec<&str> = allowed
                .iter()
                .filter(|name| !listed.iter().any(|t| t.name == name.as_str()))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                missing.sort_unstable();
                tracing::warn!(
                    server = %self.name,
                    "allowed_tools names tools the server does not offer: {}",
                    missing.join(", ")
                );
            }
        }
        let count = offered.len();
        self.tools.send_replace(offered.into());
        Ok(count)
    }
}

/// Pings; a JSON-RPC error answer still proves the server is there.
async fn check_alive(peer: &Peer<RoleClient>) -> Result<(), String> {
    let ping = peer.send_request(ClientRequest::PingRequest(PingRequest::default()));
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Err(_elapsed) => Err(format!(
            "it did not answer a ping within {} s",
            PING_TIMEOUT.as_secs()
        )),
        Ok(Ok(_)) | Ok(Err(ServiceError::McpError(_))) => Ok(()),
        Ok(Err(e)) => Err(format!("a ping failed: {}", chain(&e))),
    }
}
