//! The request as the wire sees it: the chat-completions JSON body (messages,
//! tools, `stream`, `stream_options`, and the fields [`crate::params`]
//! resolved) and the endpoint's path. Pure functions, tested on their output.

use agent::{ChatMessage, Role, ToolSpec};
use serde_json::{Map, Value, json};

/// The conversation in OpenAI's `messages` shape: system, user and assistant
/// text; assistant `tool_calls` (with the ids verbatim, and with
/// `reasoning_content` when the message carries its reasoning: Moonshot
/// refuses a thinking model's tool-call turn without it); tool results with
/// their `tool_call_id`. Reasoning on other messages is not sent.
pub fn messages_json(messages: &[ChatMessage]) -> Value {
    Value::Array(messages.iter().map(message_json).collect())
}

fn message_json(m: &ChatMessage) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut obj = Map::new();
    obj.insert("role".into(), Value::from(role));
    match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            // OpenAI wants null rather than "" beside tool calls.
            let content = if m.content.is_empty() {
                Value::Null
            } else {
                Value::from(m.content.as_str())
            };
            obj.insert("content".into(), content);
            let calls = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            obj.insert("tool_calls".into(), Value::Array(calls));
            if let Some(reasoning) = &m.reasoning {
                obj.insert("reasoning_content".into(), Value::from(reasoning.as_str()));
            }
        }
        Role::Tool => {
            obj.insert("content".into(), Value::from(m.content.as_str()));
            obj.insert(
                "tool_call_id".into(),
                Value::from(m.tool_call_id.clone().unwrap_or_default()),
            );
        }
        _ => {
            obj.insert("content".into(), Value::from(m.content.as_str()));
        }
    }
    Value::Object(obj)
}

/// The tools as `{"type":"function","function":{name, description, parameters}}`.
pub fn tools_json(tools: &[ToolSpec]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                })
            })
            .collect(),
    )
}

/// The full body for one request to one target. `tools` is left out when
/// empty (some servers refuse an empty list). `fields` are the target's
/// resolved fields with the request's options
/// ([`crate::params::TargetParams::request_fields`]); the client's own keys
/// are written after them, so they can never be overridden.
pub fn body(model: &str, messages: &Value, tools: &Value, fields: &Map<String, Value>) -> Vec<u8> {
    let mut obj = fields.clone();
    obj.insert("model".into(), Value::from(model));
    obj.insert("messages".into(), messages.clone());
    if tools.as_array().is_some_and(|t| !t.is_empty()) {
        obj.insert("tools".into(), tools.clone());
    } else {
        obj.remove("tools");
    }
    obj.insert("stream".into(), Value::Bool(true));
    obj.insert("stream_options".into(), json!({"include_usage": true}));
    obj.remove("provider");
    // Serializing a Value with string keys cannot fail.
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}

/// The endpoint under the base URL (`{base}/chat/completions`; the URL is
/// built by `livekit_plumbing::service_url`, whatever slashes `base` has).
pub const ENDPOINT_PATH: &str = "chat/completions";

#[cfg(test)]
mod tests {
    use super::*;
    use agent::ToolCall;

    #[test]
    fn body_has_everything_and_merges_the_fields() {
        let messages = messages_json(&[
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather in Paris?"),
            ChatMessage::assistant_tool_calls(
                "",
                vec![ToolCall {
                    id: "functions.get_weather:0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
            ),
            ChatMessage::tool_result("functions.get_weather:0", "sunny, 21°C"),
            ChatMessage::assistant("It is sunny."),
        ]);
        let tools = tools_json(&[ToolSpec {
            name: "get_weather".into(),
            description: "Weather for a city".into(),
            parameters: json!({"type":"object","properties":{"city":{"type":"string"}}}),
        }]);
        let mut extra = Map::new();
        extra.insert("temperature".into(), json!(0.6));
        extra.insert("max_completion_tokens".into(), json!(256));
        let bytes = body("moonshotai/kimi-k2.6", &messages, &tools, &extra);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["model"], "moonshotai/kimi-k2.6");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["temperature"], 0.6);
        assert_eq!(v["max_completion_tokens"], 256);
        assert!(v.get("provider").is_none());
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[0], json!({"role":"system","content":"Be brief."}));
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(m[2]["tool_calls"][0]["type"], "function");
        assert_eq!(
            m[3],
            json!({"role":"tool","content":"sunny, 21°C","tool_call_id":"functions.get_weather:0"})
        );
        assert_eq!(v["tools"][0]["function"]["parameters"]["type"], "object");
    }

    #[test]
    fn reasoning_goes_back_only_on_assistant_tool_call_messages() {
        let call = ToolCall {
            id: "functions.get_weather:0".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        };
        let mut with = ChatMessage::assistant_tool_calls("Let me check.", vec![call.clone()]);
        with.reasoning = Some("The user wants the weather.".into());
        let without = ChatMessage::assistant_tool_calls("", vec![call]);
        let mut plain = ChatMessage::assistant("It is sunny.");
        plain.reasoning = Some("Say it briefly.".into());
        let mut user = ChatMessage::user("hi");
        user.reasoning = Some("never".into());
        let m = messages_json(&[with, without, plain, user]);
        assert_eq!(m[0]["reasoning_content"], "The user wants the weather.");
        assert_eq!(m[0]["content"], "Let me check.");
        assert_eq!(m[0]["tool_calls"][0]["id"], "functions.get_weather:0");
        assert!(m[1].get("reasoning_content").is_none());
        assert_eq!(
            m[2],
            json!({"role": "assistant", "content": "It is sunny."})
        );
        assert_eq!(m[3], json!({"role": "user", "content": "hi"}));
    }

    #[test]
    fn the_clients_own_keys_win_over_fields() {
        let mut fields = Map::new();
        fields.insert("model".into(), json!("evil"));
        fields.insert("stream".into(), json!(false));
        fields.insert("tools".into(), json!([{"x": 1}]));
        fields.insert("provider".into(), json!("p"));
        fields.insert("thinking".into(), json!({"type": "disabled"}));
        let v: Value = serde_json::from_slice(&body("m", &json!([]), &json!([]), &fields)).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["stream"], true);
        assert!(v.get("tools").is_none());
        assert!(v.get("provider").is_none());
        assert_eq!(v["thinking"], json!({"type": "disabled"}));
    }

    #[test]
    fn empty_tools_are_left_out() {
        let v: Value =
            serde_json::from_slice(&body("m", &json!([]), &json!([]), &Map::new())).unwrap();
        assert!(v.get("tools").is_none());
    }

    #[test]
    fn endpoint_joins_cleanly() {
        use livekit_plumbing::{Scheme, service_url};
        for base in ["http://h/v1/", "http://h/v1", " http://h/v1// "] {
            let url = service_url(base, Scheme::Http, ENDPOINT_PATH).unwrap();
            assert_eq!(url.as_str(), "http://h/v1/chat/completions", "{base}");
        }
    }
}
