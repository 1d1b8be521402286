//! The LLM the agent processes talk to in end-to-end tests: [`LlmStandIn`], a
//! local OpenAI-compatible chat-completions server answering each request as
//! the test routes it ([`LlmAnswer`]: text, Kimi-style tool calls, an error
//! status, a stall) and refusing, like Moonshot, a tool history it would
//! refuse ([`check_tool_history`]); and readers of the requests it kept
//! ([`messages_of`], [`tool_results`], [`tool_names`]).

use std::time::Instant;

use tokio::io::AsyncWriteExt;

use crate::HarnessError;
use crate::http::read_request;

/// How the LLM stand-in answers one request.
#[derive(Clone, Debug)]
pub enum LlmAnswer {
    /// Streams this text (two words a chunk), then usage and `[DONE]`.
    Reply(String),
    /// A tool-call turn streamed the way Kimi streams it: `reasoning` (if
    /// any) as `reasoning_content` deltas, `text` (two words a chunk), then
    /// each call opened by a delta with its `index`, id `functions.NAME:INDEX`
    /// (INDEX: its place in `calls`), `type` and name with empty arguments,
    /// then the arguments (the JSON text of the value) in fragments of a few
    /// bytes, the calls' fragments interleaved by index; `finish_reason`
    /// `tool_calls` with the usage inside `choices[0]` (as Moonshot puts it);
    /// `[DONE]`.
    ToolCalls {
        text: String,
        reasoning: Option<String>,
        /// Tool name and arguments, in call order.
        calls: Vec<(String, serde_json::Value)>,
    },
    /// Fails with this HTTP status and an OpenAI-style error body.
    Status(u16),
    /// Sends the response head, then nothing, ever (a stalled provider).
    Stall,
}

impl LlmAnswer {
    /// A [`LlmAnswer::ToolCalls`] turn without reasoning: `text`, then these
    /// calls (tool name and arguments).
    pub fn tool_calls(text: &str, calls: &[(&str, serde_json::Value)]) -> Self {
        LlmAnswer::ToolCalls {
            text: text.to_string(),
            reasoning: None,
            calls: calls
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
        }
    }
}

/// A local OpenAI-compatible chat-completions server. Each request is answered
/// as `route` says, given the request body; every request body is kept for the
/// test to inspect. A request whose tool history Moonshot would refuse
/// ([`check_tool_history`]) is answered 400 with an OpenAI-style error body,
/// without asking `route`. Stops when dropped.
pub struct LlmStandIn {
    /// Base URL (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    /// Each request body with when it arrived.
    requests: std::sync::Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>,
    /// Requests received (refused ones included).
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The accept loop, owning every connection's task; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LlmStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LlmStandIn {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(
        route: impl Fn(&serde_json::Value) -> LlmAnswer + Send + Sync + 'static,
    ) -> Result<Self, HarnessError> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let route = std::sync::Arc::new(route);
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (kept, served) = (requests.clone(), count.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let (route, kept, served) = (route.clone(), kept.clone(), served.clone());
                connections.spawn(async move {
                    let Some(request) = read_request(&mut sock).await else {
                        return;
                    };
                    let body = request.json();
                    let answer = check_tool_history(&body).map(|()| route(&body));
                    if let Ok(mut kept) = kept.lock() {
                        kept.push((Instant::now(), body));
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(why) => {
                            let body = serde_json::json!({"error": {
                                "message": why, "type": "invalid_request_error"}})
                            .to_string();
                            let r = format!(
                                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = sock.write_all(r.as_bytes()).await;
                            let _ = sock.shutdown().await;
                            return;
                        }
                    };
                    let r = match answer {
                        LlmAnswer::Reply(reply) => {
                            let mut r = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                            );
                            let words: Vec<&str> = reply.split_inclusive(' ').collect();
                            for piece in words.chunks(2) {
                                let event = serde_json::json!({
                                    "id": "c1", "object": "chat.completion.chunk",
                                    "choices": [{"index": 0, "delta": {"content": piece.concat()}, "finish_reason": null}]
                                });
                                r.push_str(&format!("data: {event}\n\n"));
                            }
                            r.push_str("data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":6,\"total_tokens\":18}}\n\n");
                            r.push_str("data: [DONE]\n\n");
                            r
                        }
                        LlmAnswer::ToolCalls {
                            text,
                            reasoning,
                            calls,
                        } => {
                            let mut r = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                            );
                            for event in kimi_tool_call_events(&text, reasoning.as_deref(), &calls) {
                                r.push_str(&format!("data: {event}\n\n"));
                            }
                            r.push_str("data: [DONE]\n\n");
                            r
                        }
                        LlmAnswer::Status(status) => {
                            let body = r#"{"error":{"message":"upstream failure","type":"server_error"}}"#;
                            format!(
                                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        LlmAnswer::Stall => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                                .await;
                            std::future::pending::<()>().await;
                            return;
                        }
                    };
                    let _ = sock.write_all(r.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
                // Reap finished connections as we go.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            url: format!("http://{addr}/v1"),
            requests,
            count,
            task,
        })
    }

    /// The request bodies received so far, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .map(|r| r.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// When each request arrived, in order.
    pub fn request_times(&self) -> Vec<Instant> {
        self.requests
            .lock()
            .map(|r| r.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An [`LlmStandIn`] that streams `reply` to every request.
pub async fn llm_stand_in(reply: &'static str) -> Result<LlmStandIn, HarnessError> {
    LlmStandIn::start(move |_| LlmAnswer::Reply(reply.to_owned())).await
}

/// The messages of a chat-completions request with this role, in order.
pub fn messages_of<'a>(request: &'a serde_json::Value, role: &str) -> Vec<&'a str> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == role)
                .filter_map(|m| m["content"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the tools a chat-completions request offers, in order.
pub fn tool_names(request: &serde_json::Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The tool results of a chat-completions request, in order: each `tool`
/// message's `tool_call_id` and content.
pub fn tool_results(request: &serde_json::Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| {
                    let id = m["tool_call_id"].as_str().unwrap_or_default().to_owned();
                    let content = match &m["content"] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (id, content)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a chat-completions request's tool history the way Moonshot (and
/// OpenAI) do: every assistant tool call is answered by a `tool` message with
/// the same `tool_call_id` among the messages right after it, and no `tool`
/// message stands without its call. The error says what is wrong, as the
/// 400's message.
pub fn check_tool_history(request: &serde_json::Value) -> Result<(), String> {
    let empty = Vec::new();
    let messages = request["messages"].as_array().unwrap_or(&empty);
    let mut i = 0;
    while let Some(m) = messages.get(i) {
        let calls = m["tool_calls"].as_array().filter(|c| !c.is_empty());
        match (m["role"].as_str(), calls) {
            (Some("assistant"), Some(calls)) => {
                let ids: Vec<&str> = calls
                    .iter()
                    .map(|c| c["id"].as_str().unwrap_or(""))
                    .collect();
                let mut answered = Vec::new();
                let mut j = i + 1;
                while let Some(t) = messages.get(j).filter(|t| t["role"] == "tool") {
                    let id = t["tool_call_id"].as_str().unwrap_or("");
                    if !ids.contains(&id) {
                        return Err(format!(
                            "tool_call_id {id:?} at index {j} is not found in the preceding \
                             assistant message's tool_calls"
                        ));
                    }
                    answered.push(id);
                    j += 1;
                }
                let missing: Vec<&str> = ids
                    .iter()
                    .copied()
                    .filter(|id| !answered.contains(id))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "an assistant message with 'tool_calls' must be followed by tool \
                         messages responding to each 'tool_call_id'; missing: {missing:?} \
                         (assistant message at index {i})"
                    ));
                }
                i = j;
            }
            (Some("tool"), _) => {
                return Err(format!(
                    "a message with role 'tool' at index {i} must follow an assistant \
                     message with 'tool_calls'"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The chunks of an [`LlmAnswer::ToolCalls`] turn, in order.
fn kimi_tool_call_events(
    text: &str,
    reasoning: Option<&str>,
    calls: &[(String, serde_json::Value)],
) -> Vec<serde_json::Value> {
    use serde_json::json;
    /// Bytes per argument fragment (on character boundaries).
    const FRAGMENT: usize = 4;
    let delta = |delta: serde_json::Value| {
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "moonshotai/kimi-k2.6",
               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    let mut out = Vec::new();
    if let Some(reasoning) = reasoning {
        let words: Vec<&str> = reasoning.split_inclusive(' ').collect();
        for piece in words.chunks(2) {
            out.push(delta(json!({"reasoning_content": piece.concat()})));
        }
    }
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    for piece in words.chunks(2) {
        out.push(delta(json!({"content": piece.concat()})));
    }
    let mut fragments: Vec<Vec<String>> = Vec::new();
    for (index, (name, arguments)) in calls.iter().enumerate() {
        out.push(delta(json!({"tool_calls": [{
            "index": index, "id": format!("functions.{name}:{index}"), "type": "function",
            "function": {"name": name, "arguments": ""}}]})));
        fragments.push(split_bytes(&arguments.to_string(), FRAGMENT));
    }
    let rounds = fragments.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        for (index, pieces) in fragments.iter().enumerate() {
            if let Some(piece) = pieces.get(round) {
                out.push(delta(json!({"tool_calls": [{
                    "index": index, "function": {"arguments": piece}}]})));
            }
        }
    }
    out.push(json!({"id": "c1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls",
                     "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}}]}));
    out
}

/// `text` in pieces of about `n` bytes, on character boundaries (how the
/// stand-ins cut tool-call arguments into fragments).
pub fn split_bytes(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if cur.len() >= n.max(1) {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn tool_call_answers_stream_as_kimi_does() {
        let calls = vec![
            ("get_weather".to_string(), json!({"city": "Paris"})),
            ("get_time".to_string(), json!({"tz": "Europe/Rome"})),
        ];
        let events = kimi_tool_call_events("One moment.", Some("Two tools needed."), &calls);
        let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
        let reasoning: String = deltas
            .iter()
            .filter_map(|d| d["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "Two tools needed.");
        let text: String = deltas
            .iter()
            .filter_map(|d| d["content"].as_str())
            .collect();
        assert_eq!(text, "One moment.");
        // Each call opens with index, id, type and name, arguments empty.
        let opens: Vec<&Value> = deltas
            .iter()
            .filter_map(|d| d["tool_calls"].get(0))
            .filter(|c| c.get("id").is_some())
            .collect();
        assert_eq!(opens.len(), 2);
        assert_eq!(
            *opens[0],
            json!({"index": 0, "id": "functions.get_weather:0", "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(opens[1]["id"], "functions.get_time:1");
        // Fragments: a few bytes each, interleaved, whole again by index.
        let fragments: Vec<(u64, &str)> = deltas
            .iter()
            .filter_map(|d| d["tool_calls"].get(0))
            .filter(|c| c.get("id").is_none())
            .filter_map(|c| Some((c["index"].as_u64()?, c["function"]["arguments"].as_str()?)))
            .collect();
        assert!(fragments.iter().all(|(_, f)| f.len() <= 4));
        assert_eq!(fragments[0].0, 0);
        assert_eq!(fragments[1].0, 1, "interleaved");
        for (index, (_, args)) in calls.iter().enumerate() {
            let whole: String = fragments
                .iter()
                .filter(|(i, _)| *i == index as u64)
                .map(|(_, f)| *f)
                .collect();
            assert_eq!(
                serde_json::from_str::<Value>(&whole).ok().as_ref(),
                Some(args)
            );
        }
        let last = events.last().map(|e| &e["choices"][0]);
        assert_eq!(
            last.map(|c| &c["finish_reason"]),
            Some(&json!("tool_calls"))
        );
        assert_eq!(
            last.map(|c| &c["usage"]["completion_tokens"]),
            Some(&json!(20))
        );
    }

    fn with(messages: Value) -> Value {
        json!({"model": "m", "messages": messages})
    }

    #[test]
    fn tool_history_is_checked_as_moonshot_checks_it() {
        let call = |id: &str| {
            json!({"id": id, "type": "function",
                                     "function": {"name": "f", "arguments": "{}"}})
        };
        let user = json!({"role": "user", "content": "hi"});
        let asks = json!({"role": "assistant", "content": null,
                          "tool_calls": [call("functions.f:0"), call("functions.f:1")]});
        let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "ok"});
        let ok = with(
            json!([user, asks, result("functions.f:1"), result("functions.f:0"),
                             {"role": "assistant", "content": "done"}]),
        );
        assert_eq!(check_tool_history(&ok), Ok(()));
        assert_eq!(
            tool_results(&ok),
            vec![
                ("functions.f:1".to_string(), "ok".to_string()),
                ("functions.f:0".to_string(), "ok".to_string())
            ]
        );
        let missing = with(json!([user, asks, result("functions.f:0")]));
        let e = check_tool_history(&missing).unwrap_err();
        assert!(e.contains("functions.f:1"), "{e}");
        let wrong = with(json!([
            user,
            asks,
            result("functions.f:0"),
            result("call_1")
        ]));
        assert!(check_tool_history(&wrong).unwrap_err().contains("call_1"));
        let orphan = with(json!([user, result("functions.f:0")]));
        assert!(
            check_tool_history(&orphan)
                .unwrap_err()
                .contains("role 'tool'")
        );
        // A result separated from its call by another message is an orphan.
        let late = with(json!([user, asks, user, result("functions.f:0")]));
        assert!(check_tool_history(&late).is_err());
        assert_eq!(check_tool_history(&json!({})), Ok(()));
        assert!(tool_results(&json!({})).is_empty());
    }
}
