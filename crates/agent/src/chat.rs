//! The conversation as the LLM sees it: messages, tool calls and their
//! results, and the bound on how much of it is kept.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A call the model asked for. `arguments` is the JSON text as the model wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Set on assistant messages that asked for tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Set on tool results: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant reply cut short by the user; `content` holds only what was played.
    #[serde(default)]
    pub interrupted: bool,
    /// The model's reasoning for this assistant message (Kimi K2.5/K2.6's
    /// `reasoning_content`). Never spoken; kept on messages that carry tool
    /// calls, which must be sent back with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

impl ChatMessage {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            interrupted: false,
            reasoning: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// The chat history of one session, oldest first. The system instructions are
/// the first message when set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatContext {
    pub messages: Vec<ChatMessage>,
}

impl ChatContext {
    pub fn with_instructions(instructions: &str) -> Self {
        let mut ctx = Self::default();
        if !instructions.trim().is_empty() {
            ctx.messages.push(ChatMessage::system(instructions));
        }
        ctx
    }

    pub fn push(&mut self, message: ChatMessage) {
        self.messages.push(message);
    }

    pub fn last(&self) -> Option<&ChatMessage> {
        self.messages.last()
    }

    /// Puts `instructions` in force: the leading system message is replaced
    /// (or added, or removed when `instructions` is blank). The rest of the
    /// history is kept, as on a handoff.
    pub fn set_instructions(&mut self, instructions: &str) {
        let has_system = self
            .messages
            .first()
            .is_some_and(|m| m.role == Role::System);
        match (has_system, instructions.trim().is_empty()) {
            (true, true) => {
                self.messages.remove(0);
            }
            (true, false) => {
                if let Some(first) = self.messages.first_mut() {
                    first.content = instructions.to_string();
                }
            }
            (false, false) => self.messages.insert(0, ChatMessage::system(instructions)),
            (false, true) => {}
        }
    }

    /// Drops the oldest turns until the history is within `limit`, and
    /// returns how many messages went. The leading system message always
    /// stays; an assistant message that asked for tools goes together with
    /// their results, so every call the model sees still has its answer; the
    /// newest unit is kept even if it alone is over the limit.
    pub fn truncate(&mut self, limit: &HistoryLimit) -> usize {
        let start = usize::from(
            self.messages
                .first()
                .is_some_and(|m| m.role == Role::System),
        );
        let mut chars: usize = self.messages.iter().map(message_chars).sum();
        let mut count = self.messages.len();
        let mut cut = start;
        let over = |count: usize, chars: usize| {
            limit.max_messages.is_some_and(|max| count > max)
                || limit.max_chars.is_some_and(|max| chars > max)
        };
        while over(count, chars) {
            let Some(end) = unit_end(&self.messages, cut) else {
                break;
            };
            if end >= self.messages.len() {
                break; // the newest unit stays
            }
            for m in &self.messages[cut..end] {
                chars = chars.saturating_sub(message_chars(m));
            }
            count -= end - cut;
            cut = end;
        }
        let dropped = cut - start;
        self.messages.drain(start..cut);
        dropped
    }
}

/// How much history a session keeps; `None` is no bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimit {
    /// Messages, the system message included.
    pub max_messages: Option<usize>,
    /// Characters of content, tool arguments and reasoning.
    pub max_chars: Option<usize>,
}

impl Default for HistoryLimit {
    fn default() -> Self {
        Self {
            max_messages: Some(200),
            max_chars: Some(200_000),
        }
    }
}

fn message_chars(m: &ChatMessage) -> usize {
    m.content.chars().count()
        + m.tool_calls
            .iter()
            .map(|c| c.arguments.chars().count() + c.name.len())
            .sum::<usize>()
        + m.reasoning.as_deref().map_or(0, |r| r.chars().count())
}

/// The end (exclusive) of the unit starting at `at`: an assistant message
/// with tool calls and the tool results that follow it, or one message.
fn unit_end(messages: &[ChatMessage], at: usize) -> Option<usize> {
    let first = messages.get(at)?;
    let mut end = at + 1;
    if first.role == Role::Assistant && !first.tool_calls.is_empty() {
        while messages.get(end).is_some_and(|m| m.role == Role::Tool) {
            end += 1;
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "f".into(),
            arguments: "{}".into(),
        }
    }

    fn history() -> ChatContext {
        let mut c = ChatContext::with_instructions("be brief");
        c.push(ChatMessage::user("one"));
        c.push(ChatMessage::assistant_tool_calls(
            "",
            vec![call("functions.f:0"), call("functions.f:1")],
        ));
        c.push(ChatMessage::tool_result("functions.f:0", "a"));
        c.push(ChatMessage::tool_result("functions.f:1", "b"));
        c.push(ChatMessage::assistant("done one"));
        c.push(ChatMessage::user("two"));
        c.push(ChatMessage::assistant("done two"));
        c
    }

    /// Every tool result follows the call that asked for it.
    fn pairs_intact(c: &ChatContext) -> bool {
        let mut open: Vec<&str> = Vec::new();
        for m in &c.messages {
            match m.role {
                Role::Tool => match m.tool_call_id.as_deref() {
                    Some(id) if open.contains(&id) => open.retain(|o| *o != id),
                    _ => return false,
                },
                _ => {
                    if !open.is_empty() {
                        return false;
                    }
                    open = m.tool_calls.iter().map(|c| c.id.as_str()).collect();
                }
            }
        }
        open.is_empty()
    }

    #[test]
    fn oldest_turns_go_first_and_calls_go_with_their_results() {
        let mut c = history();
        let limit = HistoryLimit {
            max_messages: Some(5),
            max_chars: None,
        };
        let dropped = c.truncate(&limit);
        assert_eq!(dropped, 4, "the user turn, then the call with both results");
        assert_eq!(c.messages[0].role, Role::System);
        assert_eq!(c.messages[1].content, "done one");
        assert!(c.messages.len() <= 5);
        assert!(pairs_intact(&c));
    }

    #[test]
    fn every_limit_keeps_the_system_message_and_valid_pairs() {
        for max in 0..10 {
            let mut c = history();
            c.truncate(&HistoryLimit {
                max_messages: Some(max),
                max_chars: None,
            });
            assert_eq!(c.messages[0].content, "be brief", "max {max}");
            assert!(pairs_intact(&c), "max {max}: {:?}", c.messages);
            assert_eq!(c.last().map(|m| m.content.as_str()), Some("done two"));
        }
        for max in [0, 10, 20, 40, 1000] {
            let mut c = history();
            c.truncate(&HistoryLimit {
                max_messages: None,
                max_chars: Some(max),
            });
            assert!(pairs_intact(&c), "chars {max}");
            let chars: usize = c.messages.iter().map(message_chars).sum();
            assert!(chars <= max.max(8 + 8), "chars {max}: {chars}");
        }
    }

    #[test]
    fn no_limit_keeps_everything_and_instructions_are_replaced() {
        let mut c = history();
        let n = c.messages.len();
        assert_eq!(
            c.truncate(&HistoryLimit {
                max_messages: None,
                max_chars: None
            }),
            0
        );
        assert_eq!(c.messages.len(), n);
        c.set_instructions("you are the sommelier");
        assert_eq!(c.messages[0].content, "you are the sommelier");
        assert_eq!(c.messages.len(), n);
        c.set_instructions(" ");
        assert_eq!(c.messages[0].role, Role::User);
        c.set_instructions("back");
        assert_eq!(c.messages[0].role, Role::System);
    }
}
