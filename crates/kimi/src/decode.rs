//! Turns the bytes of an OpenAI-style streaming chat completion into
//! [`LlmChunk`]s: SSE framing ([`crate::sse`]), the JSON of each
//! `chat.completion.chunk`, content deltas (with `<think>` blocks removed, see
//! [`crate::think`]), reasoning deltas, tool-call fragments assembled by
//! index, the usage chunk, `finish_reason` and `data: [DONE]`. Sans-IO like
//! the SSE parser: the client's own per-token cost is all here, and the
//! benchmark measures it.
//!
//! Kimi's streams, as this decoder takes them:
//!
//! - Reasoning (K2.5/K2.6 thinking) comes as `delta.reasoning_content`
//!   (`delta.reasoning` on some OpenAI-compatible servers) and becomes
//!   [`LlmChunk::Reasoning`], never text.
//! - A tool call opens with a delta holding its `index`, its id
//!   (`functions.NAME:N`, kept verbatim), `type` and name with empty
//!   arguments; argument fragments follow under the same index, and parallel
//!   calls interleave by index. The id and the name may also come in
//!   separate deltas, in either order. Calls are delivered whole, in index
//!   order, when `finish_reason` arrives.
//! - Usage comes in the last chunk, at top level or (Moonshot) inside
//!   `choices[0]`; it is reported once.

use std::collections::{BTreeMap, VecDeque};

use agent::{LlmChunk, ToolCall, Usage};
use serde::Deserialize;

use crate::sse::SseParser;
use crate::think::ThinkFilter;

/// Why a stream could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `data:` payload that is not the JSON we expect.
    #[error("malformed stream chunk: {0}")]
    Malformed(String),
    /// The provider reported an error inside the stream.
    #[error("provider error in stream: {0}")]
    Provider(String),
    /// The body ended before `[DONE]` or a `finish_reason`.
    #[error("stream ended before the reply was complete")]
    Truncated,
}

/// Decoder state for one response body.
#[derive(Debug)]
pub struct Decoder {
    sse: SseParser,
    think: Option<ThinkFilter>,
    /// Tool calls being assembled, by the index the provider gives them.
    calls: BTreeMap<u32, PartialCall>,
    finish_reason: Option<String>,
    /// A `finish_reason` was seen: the tool calls and held text are flushed.
    finished: bool,
    usage_sent: bool,
    /// `[DONE]` (or the end of a finished body) was seen; nothing follows.
    done: bool,
    out: VecDeque<LlmChunk>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct ChunkJson {
    #[serde(default)]
    choices: Vec<ChoiceJson>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceJson {
    #[serde(default)]
    delta: Option<DeltaJson>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Moonshot puts the usage of a streamed reply on the choice of its last
    /// chunk.
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct DeltaJson {
    #[serde(default)]
    content: Option<String>,
    /// Kimi's (and DeepSeek's, vLLM's) reasoning delta.
    #[serde(default)]
    reasoning_content: Option<String>,
    /// The same under the name some OpenAI-compatible servers use; read only
    /// when `reasoning_content` is absent (a server sending both sends the
    /// same text twice).
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDeltaJson>>,
}

#[derive(Deserialize)]
struct ToolCallDeltaJson {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDeltaJson>,
}

#[derive(Deserialize)]
struct FunctionDeltaJson {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetailsJson>,
    /// Some servers (Moonshot's own API among them) report cache hits here.
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetailsJson {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl Decoder {
    /// `strip_think`: remove `<think>…</think>` blocks from the text.
    pub fn new(strip_think: bool) -> Self {
        Self {
            sse: SseParser::new(),
            think: strip_think.then(ThinkFilter::new),
            calls: BTreeMap::new(),
            finish_reason: None,
            finished: false,
            usage_sent: false,
            done: false,
            out: VecDeque::new(),
        }
    }

    /// Decodes the next bytes of the body. Chunks become available from
    /// [`next_chunk`](Self::next_chunk). After an error the decoder must not
    /// be fed again.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.sse.feed(bytes);
        self.drain_events()
    }

    /// The body ended. Returns an error when the reply was cut short.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        self.sse.finish();
        self.drain_events()?;
        if self.done {
            return Ok(());
        }
        if self.finished {
            // `finish_reason` arrived but the server closed without `[DONE]`;
            // the reply is whole, so accept it.
            self.complete();
            return Ok(());
        }
        Err(DecodeError::Truncated)
    }

    /// The next decoded chunk, in order.
    pub fn next_chunk(&mut self) -> Option<LlmChunk> {
        self.out.pop_front()
    }

    /// `[DONE]` was seen: the reply is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether text, reasoning or a tool call is decoded and not yet taken.
    pub fn has_queued_token(&self) -> bool {
        self.out.iter().any(|c| {
            matches!(
                c,
                LlmChunk::Text(_) | LlmChunk::Reasoning(_) | LlmChunk::ToolCall(_)
            )
        })
    }

    fn drain_events(&mut self) -> Result<(), DecodeError> {
        while let Some(event) = self.sse.next_event() {
            if self.done {
                continue; // anything after [DONE] is ignored
            }
            if event.event.as_deref() == Some("error") {
                return Err(DecodeError::Provider(error_message(&event.data)));
            }
            self.data(&event.data)?;
        }
        Ok(())
    }

    fn data(&mut self, data: &str) -> Result<(), DecodeError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.complete();
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: ChunkJson = serde_json::from_str(data)
            .map_err(|e| DecodeError::Malformed(format!("{e} in {data}")))?;
        if let Some(error) = chunk.error {
            return Err(DecodeError::Provider(error_value_message(&error)));
        }
        // Only the first choice is used (we never ask for n > 1).
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                if let Some(reasoning) = delta.reasoning_content.or(delta.reasoning)
                    && !reasoning.is_empty()
                {
                    self.out.push_back(LlmChunk::Reasoning(reasoning));
                }
                if let Some(text) = delta.content {
                    self.text(&text);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.tool_call_fragment(call);
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
                self.flush_reply()?;
            }
            if let Some(usage) = choice.usage {
                self.usage(usage);
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage(usage);
        }
        Ok(())
    }

    /// Reports the reply's usage, the first time only (a server may put it
    /// both on the choice and at top level).
    fn usage(&mut self, usage: UsageJson) {
        if self.usage_sent {
            return;
        }
        self.usage_sent = true;
        let cached = usage
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(usage.cached_tokens)
            .unwrap_or(0);
        self.out.push_back(LlmChunk::Usage(Usage {
            prompt_tokens: usage.prompt_tokens.unwrap_or(0),
            completion_tokens: usage.completion_tokens.unwrap_or(0),
            cached_tokens: cached,
        }));
    }

    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let text = match &mut self.think {
            Some(filter) => filter.push(text),
            None => text.to_string(),
        };
        if !text.is_empty() {
            self.out.push_back(LlmChunk::Text(text));
        }
    }

    fn tool_call_fragment(&mut self, call: ToolCallDeltaJson) {
        let id = call.id.filter(|id| !id.is_empty());
        // Servers that send whole calls often leave out the index; they send
        // one call per delta, so a missing index with an id other than the
        // last call's starts a call. An id for a call that has none yet (it
        // came after the name) belongs to that call.
        let index = match call.index {
            Some(i) => i,
            None => match (&id, self.calls.last_key_value()) {
                (Some(id), Some((&last, partial)))
                    if partial.id.as_deref().is_some_and(|p| p != id) =>
                {
                    last.saturating_add(1)
                }
                (_, Some((&last, _))) => last,
                (_, None) => 0,
            },
        };
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = id {
            // Verbatim, and the first one given: ids do not change mid-call.
            entry.id.get_or_insert(id);
        }
        if let Some(function) = call.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                // Some servers repeat the whole name on every delta; others
                // (rarely) split it. A repeat is not appended.
                if entry.name.is_empty() {
                    entry.name = name;
                } else if entry.name != name {
                    entry.name.push_str(&name);
                }
            }
            if let Some(arguments) = function.arguments {
                entry.arguments.push_str(&arguments);
            }
        }
    }

    /// A `finish_reason` arrived: release held text and the assembled calls.
    fn flush_reply(&mut self) -> Result<(), DecodeError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if let Some(filter) = &mut self.think {
            let rest = filter.finish();
            if !rest.is_empty() {
                self.out.push_back(LlmChunk::Text(rest));
            }
        }
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(DecodeError::Malformed(format!(
                    "tool call at index {index} has no function name"
                )));
            }
            self.out.push_back(LlmChunk::ToolCall(ToolCall {
                id: call.id.unwrap_or_else(|| format!("call_{index}")),
                name: call.name,
                arguments: call.arguments,
            }));
        }
        Ok(())
    }

    fn complete(&mut self) {
        if self.done {
            return;
        }
        // `[DONE]` without a finish_reason: still flush what we have. A call
        // without a name cannot be delivered; it is dropped rather than failing
        // a reply that the server says is complete.
        if !self.finished {
            self.calls.retain(|_, c| !c.name.is_empty());
            let _ = self.flush_reply();
        }
        self.done = true;
        self.out.push_back(LlmChunk::Done {
            finish_reason: self.finish_reason.take(),
        });
    }
}

/// The message of an OpenAI-style error body (`{"error":{"message":…}}`),
/// or the text when it is not one. Whole: the client removes secrets and
/// only then shortens it (cutting first could split a secret and leave its
/// prefix where the redactor no longer recognises it).
pub(crate) fn error_message(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => match value.get("error") {
            Some(error) => error_value_message(error),
            None => match value.get("message").and_then(|m| m.as_str()) {
                Some(m) => m.to_string(),
                None => body.trim().to_string(),
            },
        },
        Err(_) => body.trim().to_string(),
    }
}

fn error_value_message(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        other => match other.get("message").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(body: &str, strip: bool) -> Result<Vec<LlmChunk>, DecodeError> {
        let mut d = Decoder::new(strip);
        let mut out = Vec::new();
        d.feed(body.as_bytes())?;
        d.finish()?;
        while let Some(c) = d.next_chunk() {
            out.push(c);
        }
        Ok(out)
    }

    fn ev(json: &str) -> String {
        format!("data: {json}\n\n")
    }

    #[test]
    fn text_usage_and_done() {
        let body = [
            ev(r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"content":"lo!"},"finish_reason":null}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            ev(r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":8}}}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        assert_eq!(
            decode_all(&body, true).unwrap(),
            vec![
                LlmChunk::Text("Hel".into()),
                LlmChunk::Text("lo!".into()),
                LlmChunk::Usage(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3,
                    cached_tokens: 8
                }),
                LlmChunk::Done {
                    finish_reason: Some("stop".into())
                },
            ]
        );
    }

    #[test]
    fn tool_call_fragments_by_index_two_calls() {
        let body = [
            ev(r#"{"choices":[{"index":0,"delta":{"content":"Checking."}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"functions.get_weather:0","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"functions.get_time:1","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}]}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        assert_eq!(
            decode_all(&body, true).unwrap(),
            vec![
                LlmChunk::Text("Checking.".into()),
                LlmChunk::ToolCall(ToolCall {
                    id: "functions.get_weather:0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                }),
                LlmChunk::ToolCall(ToolCall {
                    id: "functions.get_time:1".into(),
                    name: "get_time".into(),
                    arguments: "{}".into()
                }),
                LlmChunk::Done {
                    finish_reason: Some("tool_calls".into())
                },
            ]
        );
    }

    fn calls_of(chunks: &[LlmChunk]) -> Vec<ToolCall> {
        chunks
            .iter()
            .filter_map(|c| match c {
                LlmChunk::ToolCall(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn tool_delta(call: &str) -> String {
        ev(&format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{call}]}}}}]}}"#
        ))
    }

    #[test]
    fn kimi_opens_a_call_with_index_id_type_and_name_then_streams_arguments() {
        let body = [
            tool_delta(
                r#"{"index":0,"id":"functions.get_weather:0","type":"function","function":{"name":"get_weather","arguments":""}}"#,
            ),
            tool_delta(r#"{"index":0,"function":{"arguments":"{\"ci"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"ty\": \"Par"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"is\"}"}}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let chunks = decode_all(&body, true).unwrap();
        assert_eq!(
            calls_of(&chunks),
            vec![call(
                "functions.get_weather:0",
                "get_weather",
                r#"{"city": "Paris"}"#
            )]
        );
        assert!(!chunks.iter().any(|c| matches!(c, LlmChunk::Text(_))));
    }

    #[test]
    fn id_then_name_in_separate_deltas() {
        let body = [
            tool_delta(r#"{"index":0,"id":"functions.get_weather:0","type":"function"}"#),
            tool_delta(r#"{"index":0,"function":{"name":"get_weather"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"{\"city\":"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"\"Oslo\"}"}}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
        ]
        .concat();
        assert_eq!(
            calls_of(&decode_all(&body, true).unwrap()),
            vec![call(
                "functions.get_weather:0",
                "get_weather",
                r#"{"city":"Oslo"}"#
            )]
        );
    }

    #[test]
    fn a_call_whose_id_arrives_after_its_name() {
        // With an index…
        let body = [
            tool_delta(r#"{"index":0,"function":{"name":"get_time","arguments":""}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"{\"tz\""}}"#),
            tool_delta(r#"{"index":0,"id":"functions.get_time:0"}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":":\"UTC\"}"}}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
        ]
        .concat();
        assert_eq!(
            calls_of(&decode_all(&body, true).unwrap()),
            vec![call("functions.get_time:0", "get_time", r#"{"tz":"UTC"}"#)]
        );
        // …and without one: the late id joins the call that has none.
        let body = [
            tool_delta(r#"{"function":{"name":"get_time","arguments":"{}"}}"#),
            tool_delta(r#"{"id":"functions.get_time:0"}"#),
            tool_delta(
                r#"{"id":"functions.get_date:1","function":{"name":"get_date","arguments":"{}"}}"#,
            ),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
        ]
        .concat();
        assert_eq!(
            calls_of(&decode_all(&body, true).unwrap()),
            vec![
                call("functions.get_time:0", "get_time", "{}"),
                call("functions.get_date:1", "get_date", "{}"),
            ]
        );
    }

    #[test]
    fn two_calls_whose_argument_fragments_interleave() {
        let body = [
            tool_delta(
                r#"{"index":0,"id":"functions.get_weather:0","type":"function","function":{"name":"get_weather","arguments":""}}"#,
            ),
            tool_delta(
                r#"{"index":1,"id":"functions.get_weather:1","type":"function","function":{"name":"get_weather","arguments":""}}"#,
            ),
            tool_delta(r#"{"index":1,"function":{"arguments":"{\"ci"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"{\"ci"}}"#),
            tool_delta(r#"{"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}"#),
            tool_delta(r#"{"index":1,"function":{"arguments":"ty\":\"Rome\"}"}}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        assert_eq!(
            calls_of(&decode_all(&body, true).unwrap()),
            vec![
                call(
                    "functions.get_weather:0",
                    "get_weather",
                    r#"{"city":"Paris"}"#
                ),
                call(
                    "functions.get_weather:1",
                    "get_weather",
                    r#"{"city":"Rome"}"#
                ),
            ],
            "same name, told apart by index; delivered in index order"
        );
    }

    #[test]
    fn a_name_repeated_on_every_delta_is_not_doubled() {
        let body = [
            tool_delta(
                r#"{"index":0,"id":"c0","function":{"name":"lookup","arguments":"{\"q\":"}}"#,
            ),
            tool_delta(r#"{"index":0,"id":"c0","function":{"name":"lookup","arguments":"1}"}}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
        ]
        .concat();
        assert_eq!(
            calls_of(&decode_all(&body, true).unwrap()),
            vec![call("c0", "lookup", r#"{"q":1}"#)]
        );
    }

    #[test]
    fn reasoning_deltas_are_reasoning_never_text() {
        let body = [
            ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"The user "}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"greets me."}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"","content":"Hi!"}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"reasoning":"(alias)"}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"once","reasoning":"once"}}]}"#),
            ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        assert_eq!(
            decode_all(&body, true).unwrap(),
            vec![
                LlmChunk::Reasoning("The user ".into()),
                LlmChunk::Reasoning("greets me.".into()),
                LlmChunk::Text("Hi!".into()),
                LlmChunk::Reasoning("(alias)".into()),
                LlmChunk::Reasoning("once".into()),
                LlmChunk::Done {
                    finish_reason: Some("stop".into())
                },
            ]
        );
        let mut d = Decoder::new(true);
        d.feed(ev(r#"{"choices":[{"delta":{"reasoning_content":"x"}}]}"#).as_bytes())
            .unwrap();
        assert!(d.has_queued_token(), "reasoning counts as delivered output");
    }

    #[test]
    fn usage_inside_the_choice_is_counted_once() {
        let usage =
            r#"{"prompt_tokens":30,"completion_tokens":9,"total_tokens":39,"cached_tokens":24}"#;
        let body = [
            ev(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#),
            ev(&format!(
                r#"{{"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","usage":{usage}}}]}}"#
            )),
            // Some gateways repeat it at top level; it is the same reply.
            ev(&format!(r#"{{"choices":[],"usage":{usage}}}"#)),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let chunks = decode_all(&body, true).unwrap();
        let usages: Vec<&LlmChunk> = chunks
            .iter()
            .filter(|c| matches!(c, LlmChunk::Usage(_)))
            .collect();
        assert_eq!(
            usages,
            vec![&LlmChunk::Usage(Usage {
                prompt_tokens: 30,
                completion_tokens: 9,
                cached_tokens: 24
            })]
        );
        // Nulls where numbers belong are taken as zero, not as an error.
        let body = ev(
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":null,"completion_tokens":2,"prompt_tokens_details":null}}"#,
        );
        assert!(
            decode_all(&body, true)
                .unwrap()
                .contains(&LlmChunk::Usage(Usage {
                    prompt_tokens: 0,
                    completion_tokens: 2,
                    cached_tokens: 0
                }))
        );
    }

    #[test]
    fn think_blocks_are_stripped_across_deltas() {
        let body = [
            ev(r#"{"choices":[{"delta":{"content":"<thi"}}]}"#),
            ev(r#"{"choices":[{"delta":{"content":"nk>hmm</th"}}]}"#),
            ev(r#"{"choices":[{"delta":{"content":"ink>\n\nSure."}}]}"#),
            ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let chunks = decode_all(&body, true).unwrap();
        assert_eq!(chunks[0], LlmChunk::Text("Sure.".into()));
        // With stripping off the text is passed through.
        let text: String = decode_all(&body, false)
            .unwrap()
            .into_iter()
            .filter_map(|c| match c {
                LlmChunk::Text(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(text, "<think>hmm</think>\n\nSure.");
    }

    #[test]
    fn malformed_json_is_an_error() {
        let body = ev(r#"{"choices":[{"delta":{"content":"hi"}"#);
        assert!(matches!(
            decode_all(&body, true),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn provider_error_in_stream() {
        let body = ev(r#"{"error":{"message":"upstream overloaded","code":503}}"#);
        assert_eq!(
            decode_all(&body, true),
            Err(DecodeError::Provider("upstream overloaded".into()))
        );
    }

    #[test]
    fn cut_before_finish_is_truncated_but_finish_without_done_is_whole() {
        let cut = ev(r#"{"choices":[{"delta":{"content":"hi"}}]}"#);
        assert_eq!(decode_all(&cut, true), Err(DecodeError::Truncated));
        let whole = cut + &ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        let chunks = decode_all(&whole, true).unwrap();
        assert_eq!(
            chunks.last(),
            Some(&LlmChunk::Done {
                finish_reason: Some("stop".into())
            })
        );
    }

    #[test]
    fn whole_calls_without_index_are_kept_apart() {
        let body = [
            ev(r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#),
            ev(r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let names: Vec<String> = decode_all(&body, true)
            .unwrap()
            .into_iter()
            .filter_map(|c| match c {
                LlmChunk::ToolCall(t) => Some(format!("{}:{}", t.id, t.name)),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["a:f", "b:g"]);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(r#"{"error":{"message":"invalid model"}}"#),
            "invalid model"
        );
        assert_eq!(error_message(r#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
