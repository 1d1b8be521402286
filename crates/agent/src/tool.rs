//! Tools the model may call: the [`Tool`] trait, typed tools made from an
//! async function ([`tool`]), what a call gets ([`ToolContext`]) and returns
//! ([`ToolOutput`], [`ToolError`]), and the tools an agent offers ([`ToolSet`]).
//!
//! A typed tool's arguments are a serde struct; its JSON schema is derived
//! with `schemars` (doc comments become descriptions), so the schema the
//! model sees and the struct the tool gets cannot drift apart:
//!
//! ```
//! use agent::{tool, ToolContext, ToolError};
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Weather {
//!     /// The city, e.g. "Paris".
//!     city: String,
//! }
//!
//! let weather = tool("get_weather", "Today's weather in a city", |_ctx: ToolContext, args: Weather| async move {
//!     if args.city.is_empty() {
//!         return Err(ToolError::new("which city?"));
//!     }
//!     Ok(format!("It is sunny in {}.", args.city))
//! });
//! # let _ = weather;
//! ```
//!
//! A tool's failure (an `Err`, bad arguments, a timeout) goes back to the
//! model as the tool's result, so it can recover; it never ends the session.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agents::Agent;
use crate::session::SessionHandle;
use crate::stage::JobContext;

/// What the model is told about a tool: name, description and a JSON schema of
/// its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A function the model may call.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    fn spec(&self) -> ToolSpec;
    /// The longest one call may run; `None` takes the session's
    /// [`ToolOptions::timeout`](crate::session::ToolOptions).
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// Runs one call. `arguments` is the JSON object the model wrote (`{}`
    /// when it wrote nothing).
    async fn call(&self, ctx: ToolContext, arguments: Value) -> Result<ToolOutput, ToolError>;
}

/// Tools whose list changes while a session runs (an MCP server that comes
/// and goes). Asked before each LLM request.
pub trait ToolProvider: Send + Sync + 'static {
    /// The tools offered now.
    fn tools(&self) -> Vec<Arc<dyn Tool>>;
}

/// What a tool hands back.
#[derive(Clone)]
#[non_exhaustive]
pub enum ToolOutput {
    /// Text the model reads as the result.
    Text(String),
    /// JSON the model reads as the result (serialized).
    Json(Value),
    /// Hand the conversation to another agent: the history carries over, the
    /// new agent's instructions and tools apply from the next request on.
    /// `message` is the result the model's history keeps for this call.
    Handoff {
        agent: Agent,
        message: Option<String>,
    },
}

impl ToolOutput {
    /// A handoff to `agent`.
    pub fn handoff(agent: Agent) -> Self {
        ToolOutput::Handoff {
            agent,
            message: None,
        }
    }

    /// The result text the model reads.
    pub fn to_model_text(&self) -> String {
        match self {
            ToolOutput::Text(t) => t.clone(),
            ToolOutput::Json(v) => v.to_string(),
            ToolOutput::Handoff { agent, message } => message
                .clone()
                .unwrap_or_else(|| format!("Transferred to {}.", agent.name())),
        }
    }
}

impl fmt::Debug for ToolOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolOutput::Text(t) => f.debug_tuple("Text").field(t).finish(),
            ToolOutput::Json(v) => f.debug_tuple("Json").field(v).finish(),
            ToolOutput::Handoff { agent, message } => f
                .debug_struct("Handoff")
                .field("agent", &agent.name())
                .field("message", message)
                .finish(),
        }
    }
}

impl From<String> for ToolOutput {
    fn from(text: String) -> Self {
        ToolOutput::Text(text)
    }
}

impl From<&str> for ToolOutput {
    fn from(text: &str) -> Self {
        ToolOutput::Text(text.to_string())
    }
}

impl From<Value> for ToolOutput {
    fn from(value: Value) -> Self {
        ToolOutput::Json(value)
    }
}

impl From<Agent> for ToolOutput {
    fn from(agent: Agent) -> Self {
        ToolOutput::handoff(agent)
    }
}

/// A tool's failure, as the model will read it. Any error converts into it
/// (so `?` works in a tool), keeping its whole `source()` chain in the text.
pub struct ToolError {
    message: String,
}

impl ToolError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ToolError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { message }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ToolError").field(&self.message).finish()
    }
}

/// Arguments of a tool that takes none.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
pub struct NoArgs {}

/// Per-session data of the user's own type, shared by the session's tools and
/// hooks (handoffs keep it). Put what tools change behind a `Mutex`.
#[derive(Clone, Default)]
pub struct Userdata(Option<Arc<dyn Any + Send + Sync>>);

impl Userdata {
    pub fn new<T: Any + Send + Sync>(data: T) -> Self {
        Self(Some(Arc::new(data)))
    }

    /// The data, if it is a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|d| d.downcast_ref::<T>())
    }
}

impl fmt::Debug for Userdata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Userdata(..)"
        } else {
            "Userdata(None)"
        })
    }
}

/// What user code running inside a session gets (hooks such as
/// [`Agent::on_enter`]): the session, its user data and the job.
#[derive(Clone)]
pub struct SessionContext {
    session: SessionHandle,
    userdata: Userdata,
    job: Arc<JobContext>,
}

impl SessionContext {
    /// A context for code the session's owner runs on its behalf (an RPC
    /// handler a worker calls): give it [`SessionHandle::downgrade`]d.
    pub fn new(session: SessionHandle, userdata: Userdata, job: Arc<JobContext>) -> Self {
        Self {
            session,
            userdata,
            job,
        }
    }

    /// The same context, with the session handle scoped to a reply (its
    /// `say` is spoken within the reply while its tools run).
    pub(crate) fn scoped(&self, scope: crate::reply::ReplyScope) -> Self {
        Self {
            session: self.session.scoped(scope),
            userdata: self.userdata.clone(),
            job: self.job.clone(),
        }
    }

    /// The session: `say`, `generate_reply`, `interrupt`, `history`, …
    pub fn session(&self) -> &SessionHandle {
        &self.session
    }

    /// The session's user data, if it is a `T`.
    pub fn userdata<T: Any + Send + Sync>(&self) -> Result<&T, ToolError> {
        self.userdata.get::<T>().ok_or_else(|| {
            ToolError::new(format!(
                "the session's user data is not a {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The room and job this session runs for (empty in console mode).
    pub fn job(&self) -> &JobContext {
        &self.job
    }
}

/// What one tool call gets: the session (to `say` something while it works),
/// the user data, the job, and a cancellation token that fires when the call
/// is cancelled (the user interrupted, the call timed out, the session ended).
#[derive(Clone)]
pub struct ToolContext {
    base: SessionContext,
    cancel: CancellationToken,
    call_id: String,
}

impl ToolContext {
    pub(crate) fn new(base: SessionContext, cancel: CancellationToken, call_id: String) -> Self {
        Self {
            base,
            cancel,
            call_id,
        }
    }

    /// A context outside any session, for calling a tool directly (tests,
    /// benchmarks): its session handle answers [`SessionClosed`](crate::SessionClosed).
    pub fn standalone(job: JobContext, userdata: Userdata) -> Self {
        Self::new(
            SessionContext::new(SessionHandle::detached(), userdata, Arc::new(job)),
            CancellationToken::new(),
            String::new(),
        )
    }

    pub fn session(&self) -> &SessionHandle {
        self.base.session()
    }

    pub fn userdata<T: Any + Send + Sync>(&self) -> Result<&T, ToolError> {
        self.base.userdata()
    }

    pub fn job(&self) -> &JobContext {
        self.base.job()
    }

    /// Fires when the call is cancelled; long work should stop then.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The model's id for this call (Kimi's look like `functions.NAME:0`).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }
}

/// A tool made by [`tool`] from an async function of typed arguments.
pub struct FunctionTool<A, F, R> {
    spec: ToolSpec,
    timeout: Option<Duration>,
    function: F,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, F, R> FunctionTool<A, F, R> {
    /// The longest one call may run (the session's default otherwise).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A tool from an async function `f(ctx, args)`. `A`'s JSON schema (derived
/// with `schemars`) is what the model is told; the model's arguments are
/// deserialized into `A`, and arguments that do not fit go back to the model
/// as an error without calling `f`.
pub fn tool<A, F, Fut, R>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> FunctionTool<A, F, R>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(ToolContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ToolError>> + Send + 'static,
    R: Into<ToolOutput> + 'static,
{
    FunctionTool {
        spec: ToolSpec {
            name: name.into(),
            description: description.into(),
            parameters: parameters_schema::<A>(),
        },
        timeout: None,
        function: f,
        _types: PhantomData,
    }
}

/// `A`'s JSON schema as tool parameters: subschemas inlined (some providers
/// do not follow `$ref`), without the `$schema` and `title` keys.
pub fn parameters_schema<A: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<A>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
        // A struct without fields: say so, or strict servers refuse it.
        if obj.get("type") == Some(&Value::from("object")) && !obj.contains_key("properties") {
            obj.insert("properties".into(), Value::Object(Default::default()));
        }
    }
    schema
}

#[async_trait]
impl<A, F, Fut, R> Tool for FunctionTool<A, F, R>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(ToolContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ToolError>> + Send + 'static,
    R: Into<ToolOutput> + 'static,
{
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    async fn call(&self, ctx: ToolContext, arguments: Value) -> Result<ToolOutput, ToolError> {
        let args: A = serde_json::from_value(arguments)
            .map_err(|e| ToolError::new(format!("invalid arguments: {e}")))?;
        (self.function)(ctx, args).await.map(Into::into)
    }
}

/// The tools of an agent: fixed ones by name, and providers whose tools are
/// listed anew before each request. A fixed tool wins over a provider's tool
/// of the same name.
#[derive(Clone, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    providers: Vec<Arc<dyn ToolProvider>>,
}

impl ToolSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; one of the same name is replaced.
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.spec().name, tool);
    }

    pub fn add_provider(&mut self, provider: Arc<dyn ToolProvider>) {
        self.providers.push(provider);
    }

    /// Adds everything `other` holds.
    pub fn extend(&mut self, other: &ToolSet) {
        for tool in other.tools.values() {
            self.add(tool.clone());
        }
        self.providers.extend(other.providers.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.providers.is_empty()
    }

    /// The tools offered now, for one LLM request and its calls.
    pub fn snapshot(&self) -> ToolSnapshot {
        let mut tools = self.tools.clone();
        for provider in &self.providers {
            for tool in provider.tools() {
                let name = tool.spec().name;
                if tools.contains_key(&name) {
                    tracing::debug!(tool = %name, "a tool of this name is already offered");
                    continue;
                }
                tools.insert(name, tool);
            }
        }
        ToolSnapshot { tools }
    }
}

impl fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolSet")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("providers", &self.providers.len())
            .finish()
    }
}

/// The tools of one LLM step: what the model was offered, and what its calls
/// run against.
#[derive(Clone, Default)]
pub struct ToolSnapshot {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl ToolSnapshot {
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// The arguments text of a call as JSON: empty text is `{}`.
pub(crate) fn parse_arguments(text: &str) -> Result<Value, ToolError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text)
        .map_err(|e| ToolError::new(format!("arguments are not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Booking {
        /// How many people.
        party_size: u32,
        /// When, e.g. "19:30".
        time: String,
        /// Where to sit.
        seating: Option<Seating>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Seating {
        Inside,
        Terrace,
    }

    #[test]
    fn schema_is_an_inlined_object_with_descriptions() {
        let schema = parameters_schema::<Booking>();
        assert_eq!(schema["type"], "object");
        assert!(schema.get("$schema").is_none());
        assert!(schema.get("title").is_none());
        assert!(!schema.to_string().contains("$ref"), "{schema}");
        assert_eq!(
            schema["properties"]["party_size"]["description"],
            "How many people."
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(required, vec!["party_size", "time"]);
        assert!(schema.to_string().contains("terrace"), "{schema}");
        let empty = parameters_schema::<NoArgs>();
        assert_eq!(empty["type"], "object");
        assert_eq!(empty["properties"], serde_json::json!({}));
    }

    #[tokio::test]
    async fn typed_tool_gets_its_struct_and_bad_arguments_never_reach_it() {
        let book = tool(
            "book",
            "Book a table",
            |_ctx: ToolContext, b: Booking| async move { Ok(format!("{} at {}", b.party_size, b.time)) },
        );
        let ctx = ToolContext::standalone(JobContext::default(), Userdata::default());
        let out = book
            .call(
                ctx.clone(),
                serde_json::json!({"party_size": 4, "time": "19:30"}),
            )
            .await
            .expect("valid call");
        assert_eq!(out.to_model_text(), "4 at 19:30");
        let err = book
            .call(ctx, serde_json::json!({"party_size": "four"}))
            .await
            .expect_err("bad arguments");
        assert!(err.message().starts_with("invalid arguments"), "{err}");
    }

    #[test]
    fn errors_keep_their_causes_and_userdata_is_typed() {
        #[derive(Debug, thiserror::Error)]
        #[error("lookup failed")]
        struct Outer(#[source] std::io::Error);
        let e: ToolError = Outer(std::io::Error::other("disk gone")).into();
        assert_eq!(e.message(), "lookup failed: disk gone");

        let data = Userdata::new(42u32);
        assert_eq!(data.get::<u32>(), Some(&42));
        assert_eq!(data.get::<String>(), None);
        let ctx = ToolContext::standalone(JobContext::default(), data);
        assert_eq!(ctx.userdata::<u32>().ok(), Some(&42));
        assert!(ctx.userdata::<i64>().is_err());
    }

    #[test]
    fn empty_arguments_are_an_empty_object() {
        assert_eq!(parse_arguments("  ").ok(), Some(serde_json::json!({})));
        assert!(parse_arguments("{\"a\":").is_err());
    }
}
