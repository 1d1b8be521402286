//! The stock agent: everything from `agent.toml`, no code — the
//! instructions, the greeting, and the tools of the configured MCP servers.

use std::any::Any;
use std::sync::Arc;

use agent::{Agent, SessionSetup};
use anyhow::Result;
use worker::Entrypoint;

use crate::config::Config;

/// What the stock agent's sessions share and the program keeps alive (the
/// MCP servers' connections and child processes).
pub(crate) type Keep = Vec<Arc<dyn Any + Send + Sync>>;

/// The stock agent's entrypoint: the same agent in every room.
pub(crate) fn entrypoint(config: &Config) -> Result<(Entrypoint, Keep)> {
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
    let keep: Keep = Vec::new();
    Ok((worker::fixed(SessionSetup::new(agent)), keep))
}
