//! The stock agent: everything from `agent.toml`, no code — the
//! instructions, the greeting, and the tools of the configured MCP servers.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, SessionSetup};
use anyhow::{Context, Result};
use worker::Entrypoint;

use crate::config::Config;

/// What the stock agent's sessions share and the program keeps alive (the
/// MCP servers' connections and child processes).
pub(crate) type Keep = Vec<Arc<dyn Any + Send + Sync>>;

/// How long the start waits for the MCP servers before going on without
/// the ones not up yet (they join when they are).
const MCP_START_WAIT: Duration = Duration::from_secs(5);

/// The stock agent's entrypoint: the same agent in every room.
pub(crate) async fn entrypoint(config: &Config) -> Result<(Entrypoint, Keep)> {
    let mut agent = Agent::new(config.instructions.clone()).named("assistant");
    let greeting = config.session.greeting.trim().to_string();
    if !greeting.is_empty() {
        agent = agent.on_enter(move |ctx| {
            let greeting = greeting.clone();
            async move {
                let _ = ctx.session().say(greeting, true).await;
            }
        });
    }
    let mut keep: Keep = Vec::new();
    let mut servers = Vec::new();
    for (i, server) in config.mcp.iter().enumerate() {
        let started = mcp::McpServer::start(server)
            .with_context(|| format!("cannot start MCP server mcp[{i}] ({})", server.name))?;
        agent = agent.tool_provider(started.clone());
        servers.push(started.clone());
        keep.push(started);
    }
    let waits = servers.iter().map(|s| async move {
        match s.wait_ready(MCP_START_WAIT).await {
            Ok(()) => tracing::info!(server = s.name(), status = %s.status(), "MCP server ready"),
            Err(e) => tracing::warn!(
                server = s.name(),
                error = %e,
                "MCP server not up yet: the agent starts without its tools and retries"
            ),
        }
    });
    futures::future::join_all(waits).await;
    Ok((worker::fixed(SessionSetup::new(agent)), keep))
}
