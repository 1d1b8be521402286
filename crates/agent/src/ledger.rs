//! The bookkeeping of one reply, as a pure struct: what the reply generated,
//! part by part (each LLM step's text, each `say` made while its tools ran,
//! an apology); each step's tool calls and their results; what of it the
//! user heard; and from that, the messages the history keeps and the turn's
//! metrics.
//!
//! No I/O and no clock: the session feeds it the reply's events and the
//! playout's with the time, and at the end asks it what to record
//! ([`Ledger::finish`]). The rules:
//! - Messages follow play order, except that a step's tool results come
//!   right after the message that asked for them: `[assistant: step text +
//!   calls (+ reasoning)] [tool results…] [assistant: what was said while the
//!   tools ran…]`, and the final step's text last.
//! - Every call the history keeps is answered: a call whose tool had not
//!   finished when the user interrupted is answered "cancelled".
//! - Interrupted, a part keeps only what was heard of it, and a message with
//!   nothing heard and no calls is left out; the message cut short is marked
//!   interrupted. Without audio (text mode) what was generated counts as
//!   heard.

use std::time::{Duration, Instant};

use crate::chat::{ChatMessage, ToolCall};
use crate::session::TurnMetrics;
use crate::stage::Usage;
use crate::turn::{ReplyId, TurnTiming};

/// A part of a reply's speech, numbered in play order from 0.
pub(crate) type PartId = u32;

/// The result the history keeps for a call the interruption cut short.
pub(crate) const CANCELLED_RESULT: &str =
    "cancelled: the user interrupted before this tool finished";

/// What a reply reports, in order (`crate::reply` sends them; the session
/// feeds the bookkeeping ones to [`Ledger::record`]).
#[derive(Debug)]
pub(crate) enum Record {
    LlmRequested {
        at: Instant,
    },
    FirstToken {
        at: Instant,
    },
    /// Text of step `step`'s part `part`, as it streams.
    StepText {
        step: usize,
        part: PartId,
        delta: String,
    },
    Reasoning {
        step: usize,
        delta: String,
    },
    /// A sentence went to the TTS; `last_token` is when its last token arrived.
    SentenceToTts {
        last_token: Instant,
        sent: Instant,
    },
    FirstAudio {
        at: Instant,
    },
    /// Step `step` ended asking for these tools.
    ToolCalls {
        step: usize,
        calls: Vec<ToolCall>,
    },
    /// The result of call `index` of step `step`, as the model reads it.
    ToolResult {
        step: usize,
        index: usize,
        output: String,
    },
    /// Part `part`, spoken as is while step `step`'s tools ran (or the whole
    /// of a `say` reply, as step 0).
    Said {
        step: usize,
        part: PartId,
        text: String,
    },
    /// The LLM failed; `apology` is the part that tells the user, if any.
    Failed {
        apology: Option<(PartId, String)>,
    },
    Usage(Usage),
    /// All text is generated.
    Generated {
        at: Instant,
    },
}

#[derive(Debug, Default)]
struct Step {
    text_part: Option<PartId>,
    reasoning: String,
    calls: Vec<ToolCall>,
    results: Vec<Option<String>>,
    says: Vec<PartId>,
}

/// What of the reply the user heard.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Heard {
    /// Everything generated (played to the end, or text mode).
    All,
    /// These parts' text, from the playout (cut short).
    Parts(Vec<(PartId, String)>),
}

/// The reply's end, as the session records it.
#[derive(Debug, PartialEq)]
pub(crate) struct Outcome {
    /// To append to the history, in order.
    pub messages: Vec<ChatMessage>,
    /// What the user heard, all parts.
    pub spoken: String,
    /// Each part's heard text (for `say` waiters).
    pub parts: Vec<(PartId, String)>,
    pub interrupted: bool,
    pub metrics: TurnMetrics,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    id: ReplyId,
    /// Generated text by part id.
    parts: Vec<String>,
    steps: Vec<Step>,
    apology: Option<PartId>,
    timing: Option<TurnTiming>,
    metrics: TurnMetrics,
    llm_request_at: Option<Instant>,
    first_tts_request: Option<Instant>,
    /// Audio began playing (the sink took the first frame).
    playback_started: bool,
}

impl Ledger {
    /// `timing`: the user turn this reply answers, if it answers one.
    pub fn new(id: ReplyId, timing: Option<TurnTiming>) -> Self {
        let metrics = TurnMetrics {
            reply: id,
            end_of_utterance_delay: timing.and_then(|t| {
                t.speech_ended
                    .map(|e| t.committed.saturating_duration_since(e))
            }),
            transcription_delay: timing.and_then(|t| {
                t.speech_ended
                    .zip(t.transcribed)
                    .map(|(e, tr)| tr.saturating_duration_since(e))
            }),
            ..Default::default()
        };
        Self {
            id,
            parts: Vec::new(),
            steps: Vec::new(),
            apology: None,
            timing,
            metrics,
            llm_request_at: None,
            first_tts_request: None,
            playback_started: false,
        }
    }

    pub fn id(&self) -> ReplyId {
        self.id
    }

    pub fn playback_started(&self) -> bool {
        self.playback_started
    }

    pub fn record(&mut self, record: &Record) {
        match record {
            Record::LlmRequested { at } => {
                // Metrics time the first request; tool steps follow it.
                if self.llm_request_at.is_none() {
                    self.llm_request_at = Some(*at);
                    self.metrics.commit_to_llm_request = self
                        .timing
                        .map(|t| at.saturating_duration_since(t.committed));
                }
            }
            Record::FirstToken { at } => {
                if self.metrics.llm_ttft.is_none()
                    && let Some(request) = self.llm_request_at
                {
                    self.metrics.llm_ttft = Some(at.saturating_duration_since(request));
                }
            }
            Record::StepText { step, part, delta } => {
                self.step(*step).text_part = Some(*part);
                self.part(*part).push_str(delta);
            }
            Record::Reasoning { step, delta } => self.step(*step).reasoning.push_str(delta),
            Record::SentenceToTts { last_token, sent } => {
                self.first_tts_request.get_or_insert(*sent);
                self.metrics
                    .sentence_to_tts
                    .push(sent.saturating_duration_since(*last_token));
            }
            Record::FirstAudio { at } => {
                if let Some(first) = self.first_tts_request {
                    self.metrics.tts_ttfb = Some(at.saturating_duration_since(first));
                }
            }
            Record::ToolCalls { step, calls } => {
                let s = self.step(*step);
                s.calls.clone_from(calls);
                s.results = vec![None; calls.len()];
            }
            Record::ToolResult {
                step,
                index,
                output,
            } => {
                if let Some(slot) = self.step(*step).results.get_mut(*index) {
                    *slot = Some(output.clone());
                }
            }
            Record::Said { step, part, text } => {
                self.step(*step).says.push(*part);
                self.part(*part).push_str(text);
            }
            Record::Failed { apology } => {
                if let Some((part, text)) = apology {
                    self.apology = Some(*part);
                    self.part(*part).push_str(text);
                }
            }
            Record::Usage(u) => {
                let m = &mut self.metrics.usage;
                m.prompt_tokens += u.prompt_tokens;
                m.completion_tokens += u.completion_tokens;
                m.cached_tokens += u.cached_tokens;
            }
            Record::Generated { at } => {
                // Without audio the reply is "heard" when it is generated.
                if self.metrics.end_to_end.is_none() && !self.playback_started {
                    self.metrics.end_to_end = Some(self.since_turn_end(*at));
                }
            }
        }
    }

    /// The reply's first audio went to the sink.
    pub fn playback_started_at(&mut self, at: Instant) {
        self.playback_started = true;
        self.metrics.end_to_end = Some(self.since_turn_end(at));
    }

    /// The id of call `index` of step `step`, once recorded.
    pub fn call_id(&self, step: usize, index: usize) -> Option<String> {
        self.steps
            .get(step)
            .and_then(|s| s.calls.get(index))
            .map(|c| c.id.clone())
    }

    /// The generated text of `part` (what a `say` waiter hears when its part
    /// played through).
    pub fn part_text(&self, part: PartId) -> String {
        self.parts
            .get(part as usize)
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    fn since_turn_end(&self, at: Instant) -> Duration {
        let start = self.timing.map(|t| t.speech_ended.unwrap_or(t.committed));
        start.map_or(Duration::ZERO, |s| at.saturating_duration_since(s))
    }

    fn step(&mut self, step: usize) -> &mut Step {
        while self.steps.len() <= step {
            self.steps.push(Step::default());
        }
        &mut self.steps[step]
    }

    fn part(&mut self, part: PartId) -> &mut String {
        let i = part as usize;
        while self.parts.len() <= i {
            self.parts.push(String::new());
        }
        &mut self.parts[i]
    }

    /// The reply is over: what the history keeps, what the user heard.
    pub fn finish(mut self, heard: Heard, interrupted: bool) -> Outcome {
        let heard_of = |part: PartId| -> String {
            match &heard {
                Heard::All => self.parts.get(part as usize).cloned().unwrap_or_default(),
                Heard::Parts(played) => played
                    .iter()
                    .filter(|(p, _)| *p == part)
                    .map(|(_, t)| t.as_str())
                    .collect(),
            }
        };
        let generated_of = |part: PartId| self.parts.get(part as usize).map_or("", |t| t.as_str());
        let cut =
            |part: PartId, heard: &str| interrupted && heard.trim() != generated_of(part).trim();
        // A part spoken as its own message: that message (if anything of it
        // was heard) and what was heard.
        let spoken_part = |part: PartId| -> (Option<ChatMessage>, String) {
            let text = heard_of(part);
            let text = text.trim();
            let message = (!text.is_empty()).then(|| {
                let mut m = ChatMessage::assistant(text);
                m.interrupted = cut(part, text);
                m
            });
            (message, text.to_string())
        };
        let mut messages = Vec::new();
        let mut said = Vec::new();
        for step in &self.steps {
            if step.calls.is_empty() {
                if let Some(part) = step.text_part {
                    let (message, text) = spoken_part(part);
                    messages.extend(message);
                    said.push((part, text));
                }
            } else {
                let text = step.text_part.map(heard_of).unwrap_or_default();
                let text = text.trim();
                let mut m = ChatMessage::assistant_tool_calls(text, step.calls.clone());
                m.interrupted = step.text_part.is_some_and(|p| cut(p, text));
                if !step.reasoning.is_empty() {
                    m.reasoning = Some(step.reasoning.clone());
                }
                messages.push(m);
                for (call, result) in step.calls.iter().zip(&step.results) {
                    let output = result.as_deref().unwrap_or(CANCELLED_RESULT);
                    messages.push(ChatMessage::tool_result(&call.id, output));
                }
                if let Some(part) = step.text_part {
                    said.push((part, text.to_string()));
                }
            }
            for &part in &step.says {
                let (message, text) = spoken_part(part);
                messages.extend(message);
                said.push((part, text));
            }
        }
        if let Some(part) = self.apology {
            let (message, text) = spoken_part(part);
            messages.extend(message);
            said.push((part, text));
        }
        if interrupted && heard == Heard::All {
            // Text mode: what was generated was seen, but the reply stopped
            // early; its last words are where it was cut.
            if let Some(last) = messages
                .iter_mut()
                .rev()
                .find(|m| m.role == crate::chat::Role::Assistant && m.tool_calls.is_empty())
            {
                last.interrupted = true;
            }
        }
        said.sort_by_key(|(part, _)| *part);
        let spoken = join(said.iter().map(|(_, t)| t.as_str()));
        self.metrics.interrupted = interrupted;
        Outcome {
            messages,
            spoken,
            parts: said,
            interrupted,
            metrics: self.metrics,
        }
    }
}

/// Texts joined by single spaces, blanks left out.
fn join<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for t in texts.map(str::trim).filter(|t| !t.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Role;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call(name: &str, i: usize) -> ToolCall {
        ToolCall {
            id: format!("functions.{name}:{i}"),
            name: name.into(),
            arguments: "{}".into(),
        }
    }

    fn text(step: usize, part: PartId, delta: &str) -> Record {
        Record::StepText {
            step,
            part,
            delta: delta.into(),
        }
    }

    /// "Let me check." + two calls (reasoning kept), a say while they run,
    /// then "It is free at seven."
    fn tool_reply() -> Ledger {
        let mut l = Ledger::new(1, None);
        l.record(&text(0, 0, "Let me "));
        l.record(&text(0, 0, "check."));
        l.record(&Record::Reasoning {
            step: 0,
            delta: "need availability".into(),
        });
        l.record(&Record::ToolCalls {
            step: 0,
            calls: vec![call("availability", 0), call("weather", 1)],
        });
        l.record(&Record::Said {
            step: 0,
            part: 1,
            text: "One moment.".into(),
        });
        l.record(&Record::ToolResult {
            step: 0,
            index: 1,
            output: "sunny".into(),
        });
        l.record(&Record::ToolResult {
            step: 0,
            index: 0,
            output: "free at 19:00".into(),
        });
        l.record(&text(1, 2, "It is free at seven."));
        l
    }

    fn shape(messages: &[ChatMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m.role {
                Role::Tool => format!(
                    "tool {}={}",
                    m.tool_call_id.as_deref().unwrap_or("?"),
                    m.content
                ),
                _ if !m.tool_calls.is_empty() => format!(
                    "calls[{}] {:?}{}",
                    m.tool_calls
                        .iter()
                        .map(|c| c.id.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    m.content,
                    if m.interrupted { " (cut)" } else { "" }
                ),
                _ => format!(
                    "{:?}{}",
                    m.content,
                    if m.interrupted { " (cut)" } else { "" }
                ),
            })
            .collect()
    }

    #[test]
    fn a_whole_tool_reply_is_recorded_in_play_order_with_results_after_their_calls() {
        let out = tool_reply().finish(Heard::All, false);
        assert_eq!(
            shape(&out.messages),
            vec![
                "calls[functions.availability:0,functions.weather:1] \"Let me check.\"",
                "tool functions.availability:0=free at 19:00",
                "tool functions.weather:1=sunny",
                "\"One moment.\"",
                "\"It is free at seven.\"",
            ]
        );
        assert_eq!(
            out.messages[0].reasoning.as_deref(),
            Some("need availability")
        );
        assert_eq!(out.spoken, "Let me check. One moment. It is free at seven.");
        assert!(!out.interrupted);
    }

    #[test]
    fn an_interruption_during_the_tools_answers_every_call_and_keeps_what_was_heard() {
        let mut l = Ledger::new(1, None);
        l.record(&text(0, 0, "Let me check that for you."));
        l.record(&Record::ToolCalls {
            step: 0,
            calls: vec![call("slow", 0), call("fast", 1)],
        });
        l.record(&Record::ToolResult {
            step: 0,
            index: 1,
            output: "done".into(),
        });
        let out = l.finish(Heard::Parts(vec![(0, "Let me check ".into())]), true);
        assert_eq!(
            shape(&out.messages),
            vec![
                "calls[functions.slow:0,functions.fast:1] \"Let me check\" (cut)",
                &format!("tool functions.slow:0={CANCELLED_RESULT}"),
                "tool functions.fast:1=done",
            ]
        );
        assert_eq!(out.spoken, "Let me check");
        assert!(out.interrupted && out.metrics.interrupted);
    }

    #[test]
    fn unheard_parts_are_left_out_and_the_part_cut_short_is_marked() {
        let out = tool_reply().finish(
            Heard::Parts(vec![(0, "Let me check.".into()), (1, "One".into())]),
            true,
        );
        let shape = shape(&out.messages);
        assert_eq!(
            shape[0],
            "calls[functions.availability:0,functions.weather:1] \"Let me check.\""
        );
        assert_eq!(shape[3], "\"One\" (cut)");
        assert_eq!(shape.len(), 4, "the final text was never heard: {shape:?}");
        assert_eq!(out.spoken, "Let me check. One");
        assert_eq!(
            out.parts,
            vec![
                (0, "Let me check.".into()),
                (1, "One".into()),
                (2, String::new())
            ]
        );
    }

    #[test]
    fn text_mode_counts_what_was_generated_and_a_say_reply_is_one_message() {
        let mut l = Ledger::new(3, None);
        l.record(&Record::Said {
            step: 0,
            part: 0,
            text: "Welcome to Luigi's!".into(),
        });
        let out = l.finish(Heard::All, false);
        assert_eq!(shape(&out.messages), vec!["\"Welcome to Luigi's!\""]);
        // An interrupted text reply keeps what was generated (shown) so far.
        let mut l = Ledger::new(4, None);
        l.record(&text(0, 0, "Half a sent"));
        let out = l.finish(Heard::All, true);
        assert_eq!(shape(&out.messages), vec!["\"Half a sent\" (cut)"]);
    }

    #[test]
    fn a_failure_before_any_text_records_the_apology() {
        let mut l = Ledger::new(5, None);
        l.record(&Record::Failed {
            apology: Some((0, "Sorry, I can't answer right now.".into())),
        });
        let out = l.finish(Heard::All, false);
        assert_eq!(
            shape(&out.messages),
            vec!["\"Sorry, I can't answer right now.\""]
        );
        // Nothing heard of it: nothing kept.
        let mut l = Ledger::new(6, None);
        l.record(&Record::Failed {
            apology: Some((0, "Sorry.".into())),
        });
        assert!(l.finish(Heard::Parts(vec![]), true).messages.is_empty());
    }

    #[test]
    fn metrics_time_the_first_request_token_and_audio_from_the_turn() {
        let t0 = Instant::now();
        let timing = TurnTiming {
            speech_ended: Some(t0),
            transcribed: Some(t0 + ms(200)),
            committed: t0 + ms(500),
        };
        let mut l = Ledger::new(7, Some(timing));
        l.record(&Record::LlmRequested { at: t0 + ms(501) });
        l.record(&Record::FirstToken { at: t0 + ms(700) });
        l.record(&Record::SentenceToTts {
            last_token: t0 + ms(750),
            sent: t0 + ms(751),
        });
        l.record(&Record::LlmRequested { at: t0 + ms(900) });
        l.record(&Record::FirstAudio { at: t0 + ms(850) });
        l.record(&Record::Usage(Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_tokens: 0,
        }));
        l.record(&Record::Usage(Usage {
            prompt_tokens: 20,
            completion_tokens: 4,
            cached_tokens: 8,
        }));
        l.playback_started_at(t0 + ms(860));
        let m = l.finish(Heard::All, false).metrics;
        assert_eq!(m.end_of_utterance_delay, Some(ms(500)));
        assert_eq!(m.transcription_delay, Some(ms(200)));
        assert_eq!(m.commit_to_llm_request, Some(ms(1)));
        assert_eq!(m.llm_ttft, Some(ms(199)));
        assert_eq!(m.sentence_to_tts, vec![ms(1)]);
        assert_eq!(m.tts_ttfb, Some(ms(99)));
        assert_eq!(m.end_to_end, Some(ms(860)));
        assert_eq!(m.usage.prompt_tokens, 30);
        assert_eq!(m.usage.cached_tokens, 8);
    }
}
