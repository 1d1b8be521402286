//! One MCP tool as an [`agent::Tool`] ([`McpTool`]), the call path shared
//! with [`McpServer::call`](crate::McpServer::call) ([`Caller`]), and the
//! pure conversions: an MCP tool's description into a [`ToolSpec`], a
//! `tools/call` result into a [`ToolOutput`].
//!
//! Cancellation: rmcp sends `notifications/cancelled` for a request whose
//! future is dropped before its response (`Peer::call_tool` arms a guard
//! that does so on drop). A call therefore races the request against the
//! caller's cancellation token and the timeout, and dropping the losing
//! request is what cancels it on the wire.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agent::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};
use async_trait::async_trait;
use rmcp::ServiceError;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ResourceContents};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::McpError;
use crate::server::{Link, McpStatus};

/// The longest text of an embedded resource passed on to the model.
const MAX_RESOURCE_TEXT: usize = 4000;

/// What a call needs: the current connection and where to report that it
/// looks broken. Cloned into every tool of a server.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) server: Arc<str>,
    pub(crate) timeout: Duration,
    /// `None`: every tool is offered.
    pub(crate) allowed: Option<Arc<HashSet<String>>>,
    /// The connection the supervisor publishes (a peer while connected).
    pub(crate) link: watch::Receiver<Link>,
    /// Tells the supervisor a call hit a transport error, so it checks the
    /// connection now instead of at its next ping. `try_send`: one pending
    /// nudge is enough.
    pub(crate) nudge: mpsc::Sender<()>,
}

impl Caller {
    pub(crate) fn is_allowed(&self, tool: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(tool))
    }

    /// Calls `tool` once, bounded by the timeout and `cancel`.
    pub(crate) async fn call(
        &self,
        tool: &str,
        arguments: Value,
        cancel: Option<&CancellationToken>,
    ) -> Result<ToolOutput, McpError> {
        let arguments = match arguments {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(McpError::InvalidArguments {
                    tool: tool.to_string(),
                    kind: json_kind(&other),
                });
            }
        };
        let peer = {
            let link = self.link.borrow();
            match (&link.peer, &link.status) {
                (Some(peer), _) => peer.clone(),
                (None, McpStatus::Stopped) => {
                    return Err(McpError::Stopped {
                        server: self.server.to_string(),
                    });
                }
                (None, status) => {
                    return Err(McpError::NotConnected {
                        server: self.server.to_string(),
                        state: status.to_string(),
                    });
                }
            }
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let request = tokio::time::timeout(self.timeout, peer.call_tool(params));
        let outcome = tokio::select! {
            biased;
            _ = cancelled(cancel) => {
                // `request` is dropped here: rmcp sends notifications/cancelled.
                return Err(McpError::Cancelled {
                    server: self.server.to_string(),
                    tool: tool.to_string(),
                });
            }
            outcome = request => outcome,
        };
        match outcome {
            Err(_elapsed) => Err(McpError::Timeout {
                server: self.server.to_string(),
                tool: tool.to_string(),
                timeout: self.timeout,
            }),
            Ok(Err(source)) => {
                if !matches!(source, ServiceError::McpError(_)) {
                    // Not the server's answer: the connection may be gone.
                    let _ = self.nudge.try_send(());
                }
                Err(McpError::Request {
                    server: self.server.to_string(),
                    tool: tool.to_string(),
                    source,
                })
            }
            Ok(Ok(result)) => convert_result(result).map_err(|message| McpError::ToolFailed {
                server: self.server.to_string(),
                tool: tool.to_string(),
                message,
            }),
        }
    }
}

/// Waits for `cancel`, or forever without one.
async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One tool of an MCP server, as the agent sees it.
pub(crate) struct McpTool {
    spec: ToolSpec,
    caller: Caller,
}

impl McpTool {
    pub(crate) fn new(tool: &rmcp::model::Tool, caller: Caller) -> Self {
        Self {
            spec: tool_spec(tool),
            caller,
        }
    }
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.caller.timeout)
    }

    async fn call(&self, ctx: ToolContext, arguments: Value) -> Result<ToolOutput, ToolError> {
        match self
            .caller
            .call(&self.spec.name, arguments, Some(ctx.cancellation()))
            .await
        {
            Ok(output) => Ok(output),
            // The model reads the tool's own words.
            Err(McpError::ToolFailed { message, .. }) => Err(ToolError::new(message)),
            Err(e) => Err(e.into()),
        }
    }
}

/// An MCP tool's name, description and input schema as a [`ToolSpec`].
pub(crate) fn tool_spec(tool: &rmcp::model::Tool) -> ToolSpec {
    let description = tool
        .description
        .as_deref()
        .or(tool.title.as_deref())
        .unwrap_or_default()
        .to_string();
    ToolSpec {
        name: tool.name.to_string(),
        description,
        parameters: object_schema(tool.input_schema.as_ref().clone()),
    }
}

/// The schema as tool parameters: an object schema (`type` and `properties`
/// present, as strict providers want), without the `$schema` key.
pub(crate) fn object_schema(mut schema: Map<String, Value>) -> Value {
    schema.remove("$schema");
    match schema.get("type") {
        None => {
            schema.insert("type".into(), Value::from("object"));
        }
        Some(t) if t == "object" => {}
        Some(_) => {
            // Not an object schema: MCP requires one; offer no parameters
            // rather than a schema providers reject.
            schema.clear();
            schema.insert("type".into(), Value::from("object"));
        }
    }
    if !schema.get("properties").is_some_and(Value::is_object) {
        schema.insert("properties".into(), Value::Object(Map::new()));
    }
    Value::Object(schema)
}

/// A `tools/call` result as what the model reads: `Err(text)` when the tool
/// reported an error.
pub(crate) fn convert_result(result: CallToolResult) -> Result<ToolOutput, String> {
    let text = content_text(&result.content);
    if result.is_error == Some(true) {
        return Err(if text.is_empty() {
            "the tool reported an error without a message".to_string()
        } else {
            text
        });
    }
    match result.structured_content {
        Some(value) if !value.is_null() => Ok(ToolOutput::Json(value)),
        _ if text.is_empty() => Ok(ToolOutput::Text("(the tool returned no content)".into())),
        _ => Ok(ToolOutput::Text(text)),
    }
}

/// Text blocks as they are, other blocks summarized, one per line.
fn content_text(content: &[ContentBlock]) -> String {
    let parts: Vec<String> = content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => {
                format!("[image: {}, {} bytes]", i.mime_type, base64_len(&i.data))
            }
            ContentBlock::Audio(a) => {
                format!("[audio: {}, {} bytes]", a.mime_type, base64_len(&a.data))
            }
            ContentBlock::Resource(r) => match &r.resource {
                ResourceContents::TextResourceContents { uri, text, .. } => {
                    format!("[resource {uri}]\n{}", truncate(text, MAX_RESOURCE_TEXT))
                }
                ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => format!(
                    "[resource {uri}: {}, {} bytes]",
                    mime_type.as_deref().unwrap_or("binary"),
                    base64_len(blob)
                ),
                _ => "[a resource of an unknown kind]".to_string(),
            },
            ContentBlock::ResourceLink(link) => match &link.description {
                Some(d) => format!("[resource link \"{}\" {}: {d}]", link.name, link.uri),
                None => format!("[resource link \"{}\" {}]", link.name, link.uri),
            },
            _ => "[content of an unknown kind]".to_string(),
        })
        .collect();
    parts.join("\n")
}

/// The decoded size of base64 text (approximately: padding ignored).
fn base64_len(data: &str) -> usize {
    data.len() / 4 * 3
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!(
        "{}… ({} bytes in all)",
        text.get(..end).unwrap_or_default(),
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(value: Value) -> CallToolResult {
        serde_json::from_value(value).expect("a CallToolResult")
    }

    #[test]
    fn text_is_joined_and_other_content_summarized() {
        let out = convert_result(result(json!({
            "content": [
                {"type": "text", "text": "Here's the image:"},
                {"type": "image", "data": "AAAAAAAA", "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "demo://a", "text": "hello"}},
                {"type": "resource", "resource": {"uri": "demo://b", "blob": "AAAA", "mimeType": "application/zip"}},
                {"type": "resource_link", "uri": "demo://c", "name": "c", "description": "the third"},
                {"type": "text", "text": "done"}
            ]
        })))
        .map(|o| o.to_model_text());
        assert_eq!(
            out.as_deref(),
            Ok(
                "Here's the image:\n[image: image/png, 6 bytes]\n[resource demo://a]\nhello\n\
                [resource demo://b: application/zip, 3 bytes]\n\
                [resource link \"c\" demo://c: the third]\ndone"
            )
        );
    }

    #[test]
    fn structured_content_is_json_and_errors_are_errors() {
        let out = convert_result(result(json!({
            "content": [{"type": "text", "text": "{\"t\":33}"}],
            "structuredContent": {"t": 33}
        })));
        assert!(matches!(out, Ok(ToolOutput::Json(ref v)) if v == &json!({"t": 33})));

        let err = convert_result(result(json!({
            "content": [{"type": "text", "text": "b must be a number"}],
            "isError": true
        })));
        assert_eq!(err.err().as_deref(), Some("b must be a number"));
        let bare = convert_result(result(json!({"content": [], "isError": true})));
        assert!(bare.is_err());
        let empty = convert_result(result(json!({"content": []}))).map(|o| o.to_model_text());
        assert_eq!(empty.as_deref(), Ok("(the tool returned no content)"));
    }

    #[test]
    fn schemas_become_object_schemas() {
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let zod = object_schema(obj(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"a": {"type": "number"}},
            "required": ["a"]
        })));
        assert_eq!(
            zod,
            json!({"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]})
        );
        assert_eq!(
            object_schema(Map::new()),
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(
            object_schema(obj(json!({"type": "string"}))),
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn long_resource_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(3000);
        let cut = truncate(&text, 4001);
        assert!(cut.starts_with(&"é".repeat(2000)), "{}", cut.len());
        assert!(cut.ends_with("(6000 bytes in all)"), "{cut}");
        assert_eq!(truncate("short", 10), "short");
    }
}
