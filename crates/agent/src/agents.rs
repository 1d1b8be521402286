//! Agents: what a session runs. An [`Agent`] is instructions, tools, an
//! optional LLM (and request options) of its own, and an `on_enter` hook. A
//! tool may hand the conversation to another agent
//! ([`ToolOutput::Handoff`](crate::ToolOutput)), or code may switch agents
//! with [`SessionHandle::update_agent`](crate::SessionHandle::update_agent):
//! the history carries over, the new agent's instructions and tools apply
//! from the next request on, and its `on_enter` runs.
//!
//! ```
//! use agent::{Agent, NoArgs, ToolContext, tool};
//!
//! let specialist = Agent::new("You are a wine expert. Answer in one sentence.")
//!     .named("sommelier");
//! let host = Agent::new("You greet guests and hand wine questions to the sommelier.")
//!     .named("host")
//!     .tool(tool("ask_sommelier", "Hand the guest to the wine expert",
//!         move |_ctx: ToolContext, _: NoArgs| {
//!             let next = specialist.clone();
//!             async move { Ok(next) }
//!         }))
//!     .on_enter(|ctx| async move {
//!         let _ = ctx.session().say("Welcome! How can I help?", true).await;
//!     });
//! # let _ = host;
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::stage::Llm;
use crate::tool::{SessionContext, Tool, ToolProvider, ToolSet};

/// An `on_enter` hook.
pub(crate) type Hook = Arc<dyn Fn(SessionContext) -> BoxFuture<'static, ()> + Send + Sync>;

/// Which tool the model must (or must not) call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// No tool calls: words only.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Function(String),
}

/// Per-request options an agent may set; `None`/empty leaves the LLM's own
/// configuration in force.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LlmOptions {
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    /// Body fields merged over the LLM's configured ones (e.g.
    /// `max_completion_tokens`).
    pub extra: Map<String, Value>,
}

impl LlmOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    pub fn with_parallel_tool_calls(mut self, parallel: bool) -> Self {
        self.parallel_tool_calls = Some(parallel);
        self
    }

    pub fn with_extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
}

/// Instructions, tools, an optional LLM of its own and hooks. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    name: Arc<str>,
    instructions: Arc<str>,
    tools: ToolSet,
    llm: Option<Arc<dyn Llm>>,
    llm_options: LlmOptions,
    on_enter: Option<Hook>,
}

impl Agent {
    /// An agent with these instructions (its system prompt), named "agent".
    pub fn new(instructions: impl Into<String>) -> Self {
        Self {
            name: Arc::from("agent"),
            instructions: Arc::from(instructions.into()),
            tools: ToolSet::new(),
            llm: None,
            llm_options: LlmOptions::default(),
            on_enter: None,
        }
    }

    /// Its name, for logs and the default handoff result ("Transferred to NAME.").
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools.add(Arc::new(tool));
        self
    }

    /// Adds a shared tool, or tools that come and go (an MCP server).
    pub fn tools(mut self, tools: &ToolSet) -> Self {
        self.tools.extend(tools);
        self
    }

    pub fn tool_provider(mut self, provider: Arc<dyn ToolProvider>) -> Self {
        self.tools.add_provider(provider);
        self
    }

    /// Answers with this LLM instead of the session's.
    pub fn llm(mut self, llm: Arc<dyn Llm>) -> Self {
        self.llm = Some(llm);
        self
    }

    pub fn llm_options(mut self, options: LlmOptions) -> Self {
        self.llm_options = options;
        self
    }

    /// Runs when the agent takes over a session (at its start, or on a
    /// handoff), e.g. to greet. Without one, an agent handed over to answers
    /// at once (a `generate_reply`), so the user is not left in silence.
    pub fn on_enter<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(SessionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_enter = Some(Arc::new(move |ctx| Box::pin(hook(ctx))));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    pub fn tool_set(&self) -> &ToolSet {
        &self.tools
    }

    pub(crate) fn own_llm(&self) -> Option<&Arc<dyn Llm>> {
        self.llm.as_ref()
    }

    pub(crate) fn options(&self) -> &LlmOptions {
        &self.llm_options
    }

    pub(crate) fn enter_hook(&self) -> Option<&Hook> {
        self.on_enter.as_ref()
    }
}

impl Default for Agent {
    fn default() -> Self {
        Self::new("")
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("tools", &self.tools)
            .field("own_llm", &self.llm.is_some())
            .field("on_enter", &self.on_enter.is_some())
            .finish_non_exhaustive()
    }
}
