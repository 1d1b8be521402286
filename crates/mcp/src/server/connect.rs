//! One connection to an MCP server: a stdio server started as a child in a
//! process group of its own (killed whole with the session, its stderr
//! logged with secrets scrubbed), or a Streamable HTTP server reached without
//! redirects; then the MCP handshake, with a client handler that passes
//! `tools/list_changed` on.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use livekit_plumbing::Redactor;
use process_wrap::tokio::CommandWrap;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::TokioChildProcess;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::supervisor::Supervisor;
use crate::config::Transport;
use crate::error::McpError;

/// The longest line of a child's stderr logged as one line.
const MAX_STDERR_LINE: u64 = 8 * 1024;

impl Supervisor {
    /// Starts the server (stdio) or reaches it (HTTP) and does the MCP
    /// handshake.
    pub(super) async fn connect(&self) -> Result<Session, McpError> {
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
}

/// One live connection. Field order is drop order: rmcp's service first
/// (it starts closing the transport), then the process group is killed.
pub(super) struct Session {
    pub(super) running: RunningService<RoleClient, Handler>,
    /// `notifications/tools/list_changed`, from [`Handler`].
    pub(super) list_changed: mpsc::Receiver<()>,
    /// A stdio server's process group.
    pub(super) _group: Option<ProcessGroupKill>,
    /// Logs a stdio server's stderr; aborted with the session.
    pub(super) _stderr: Option<AbortOnDrop>,
}

/// rmcp's client handler: passes `tools/list_changed` on, declines the rest
/// (sampling, elicitation) as rmcp's defaults do.
pub(super) struct Handler {
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
pub(super) struct ProcessGroupKill(u32);

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
pub(super) struct AbortOnDrop(JoinHandle<()>);

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
