//! [`McpServer`], the handle, and the supervisor task it owns, which
//! connects, lists tools, watches the connection and reconnects.
//!
//! The supervisor is the only writer of two `watch` channels: the
//! connection ([`Link`]: status, and an rmcp peer while connected), read by
//! every tool's call, and the offered tools, read by
//! [`ToolProvider::tools`]. Tools report transport errors back on a bounded
//! `nudge` channel (`try_send`, capacity 1), so nothing ever waits on the
//! supervisor and no channel forms a cycle.
//!
//! One connection ([`Session`]) lives inside [`Supervisor::serve`]; it ends
//! when rmcp's service loop ends (the child exited, the transport failed), a
//! ping goes unanswered, or the handle stops the supervisor. Dropping a
//! session closes rmcp's service and kills the child's process group.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Tool, ToolOutput, ToolProvider};
use livekit_plumbing::{Backoff, Redactor};
use process_wrap::tokio::CommandWrap;
use rmcp::model::{ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest};
use rmcp::service::{NotificationContext, QuitReason, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::TokioChildProcess;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, Peer, ServiceError, ServiceExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{McpServerConfig, Transport, process_env};
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
/// The longest line of a child's stderr logged as one line.
const MAX_STDERR_LINE: u64 = 8 * 1024;

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

/// The task behind an [`McpServer`]: it owns the connection.
struct Supervisor {
    name: Arc<str>,
    transport: Transport,
    /// Cloned into each listed tool.
    caller: Caller,
    link: watch::Sender<Link>,
    tools: watch::Sender<ToolList>,
    /// Tools' reports of transport errors.
    nudge: mpsc::Receiver<()>,
    /// Cancelled when the handle drops or shuts down.
    stop: CancellationToken,
    /// Scrubs the configured secrets from errors and from the child's stderr.
    redactor: Redactor,
}

/// How one connection ended.
enum Ended {
    /// The handle stopped the supervisor.
    Stopped,
    /// The connection broke: what happened.
    Lost(String),
}

impl Supervisor {
    async fn run(mut self) {
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

    /// Starts the server (stdio) or reaches it (HTTP) and does the MCP
    /// handshake.
    async fn connect(&self) -> Result<Session, McpError> {
        let (changed_tx, changed_rx) = mpsc::channel(1);
        let handler = Handler {
            list_changed: changed_tx,
        };
        let failed =
            |what: &str, source: Box<dyn std::error::Error + Send + Sync>| McpError::Connect {
                server: self.name.to_string(),
                what: what.to_string(),
                source,
            };
        match &self.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                // A group of its own (the child leads it), so that what it
                // starts can be killed with it. Set here rather than with
                // process-wrap's `ProcessGroup`, whose debug span records the
                // command, `env` values included.
                cmd.args(args)
                    .envs(env.iter().map(|(k, v)| (k, v.expose())))
                    .process_group(0)
                    .kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let (child, stderr) = TokioChildProcess::builder(CommandWrap::from(cmd))
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| failed(&format!("could not start `{command}`"), Box::new(e)))?;
                // From here on, dropping the session (or this future) kills
                // the whole group.
                let group = child.id().map(ProcessGroupKill);
                let stderr = stderr.map(|s| {
                    let (name, redactor) = (self.name.clone(), self.redactor.clone());
                    AbortOnDrop(tokio::spawn(log_stderr(name, redactor, s)))
                });
                let running = handler
                    .serve(child)
                    .await
                    .map_err(|e| failed("the MCP handshake failed", Box::new(e)))?;
                Ok(Session {
                    running,
                    list_changed: changed_rx,
                    _group: group,
                    _stderr: stderr,
                })
            }
            Transport::Http { url, headers } => {
                install_crypto_provider();
                let client = reqwest::Client::builder()
                    // Never replay the headers (credentials) to another place.
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(Duration::from_secs(10))
                    .pool_max_idle_per_host(0)
                    .build()
                    .map_err(|e| failed("could not build the HTTP client", Box::new(e)))?;
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers.clone())
                    // A session the server forgot (it restarted) is a lost
                    // connection: reconnect and list the tools anew.
                    .reinit_on_expired_session(false);
                let transport = StreamableHttpClientTransport::with_client(client, config);
                let running = handler
                    .serve(transport)
                    .await
                    .map_err(|e| failed("the MCP handshake failed", Box::new(e)))?;
                Ok(Session {
                    running,
                    list_changed: changed_rx,
                    _group: None,
                    _stderr: None,
                })
            }
        }
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

/// One live connection. Field order is drop order: rmcp's service first
/// (it starts closing the transport), then the process group is killed.
struct Session {
    running: RunningService<RoleClient, Handler>,
    /// `notifications/tools/list_changed`, from [`Handler`].
    list_changed: mpsc::Receiver<()>,
    /// A stdio server's process group.
    _group: Option<ProcessGroupKill>,
    /// Logs a stdio server's stderr; aborted with the session.
    _stderr: Option<AbortOnDrop>,
}

/// rmcp's client handler: passes `tools/list_changed` on, declines the rest
/// (sampling, elicitation) as rmcp's defaults do.
struct Handler {
    list_changed: mpsc::Sender<()>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // One pending re-list covers any number of changes.
        let _ = self.list_changed.try_send(());
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("voice-agent", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// Kills a stdio server's whole process group when dropped, so that
/// processes it started do not outlive it: rmcp's close and tokio's
/// kill-on-drop reach only the child itself.
///
/// The group id cannot have been reused while any member lives; if none
/// does, the kill finds no group and does nothing.
struct ProcessGroupKill(u32);

impl Drop for ProcessGroupKill {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.0) else {
            return;
        };
        if pgid > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a child's stderr line by line (lines cut at [`MAX_STDERR_LINE`]),
/// the configured secrets scrubbed (a child may print its environment).
async fn log_stderr(server: Arc<str>, redactor: Redactor, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = redactor.clean(&String::from_utf8_lossy(&line));
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::info!(target: "mcp::stderr", server = %server, "{text}");
                }
            }
        }
    }
}

/// reqwest's rustls needs a process-wide crypto provider: ring, as the rest
/// of the workspace uses. Installing twice is harmless.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
