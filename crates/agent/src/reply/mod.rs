//! One agent reply, as a task the session owns: its LLM steps (each step's
//! tool calls run concurrently, each within its timeout), what tools `say`
//! while they run, sentence by sentence into the TTS, and the TTS audio into
//! the playout queue, each frame tagged with its part. It reports what it did
//! as [`Record`]s for the session's [`Ledger`](crate::ledger::Ledger).
//!
//! The session cancels a reply by aborting this task: that drops the LLM
//! stream (closing its connection), the TTS stream and the running tools at
//! once, and fires the tools' cancellation token (its drop guard lives here).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agents::{Agent, ToolChoice};
use crate::chat::{ChatMessage, Role, ToolCall};
use crate::clock::Clock;
use crate::ledger::{PartId, Record};
use crate::playout::PlayoutWriter;
use crate::sentence::SentenceSplitter;
use crate::session::{SpeechDone, ToolOptions};
use crate::stage::{Llm, LlmChunk, LlmRequest, StageError, Tts};
use crate::tool::SessionContext;
use crate::turn::ReplyId;

mod audio;
mod tools;

use audio::pump_audio;
use tools::run_tools;

/// The longest frame handed to the playout queue.
const PLAYOUT_FRAME: Duration = Duration::from_millis(20);
/// `say`s a tool may queue before its next one goes to the session instead.
const SAYS_IN_FLIGHT: usize = 8;

/// What the reply is for.
#[derive(Clone, Debug)]
pub(crate) enum ReplyKind {
    /// Answers the user's committed turn.
    Answer,
    /// Speaks this text as is (no LLM).
    Say(String),
    /// A reply without a user turn; these instructions are added to the
    /// agent's for this reply only.
    Generate(Option<String>),
}

/// What a reply reports to its session, in order.
#[derive(Debug)]
pub(crate) enum ReplyEvent {
    Record(Record),
    /// A tool's `say` became part `part`: its waiter.
    SayWaiter {
        part: PartId,
        done: oneshot::Sender<SpeechDone>,
    },
    /// A tool handed the conversation to this agent (its step's results are
    /// recorded; the reply says nothing more).
    Handoff(Agent),
    /// The LLM failed (an apology follows when nothing was said yet).
    LlmFailed(StageError),
}

/// A `say` from a tool of this reply, spoken within it.
pub(crate) struct ScopedSay {
    pub text: String,
    pub done: oneshot::Sender<SpeechDone>,
}

/// How a tool's session handle reaches its reply: `says` is read while the
/// reply's tools run (`open`); at other times a `say` goes to the session.
#[derive(Clone)]
pub(crate) struct ReplyScope {
    pub says: mpsc::Sender<ScopedSay>,
    pub open: Arc<AtomicBool>,
}

pub(crate) struct ReplyJob {
    pub id: ReplyId,
    pub kind: ReplyKind,
    /// The agent's own LLM, or the session's.
    pub llm: Arc<dyn Llm>,
    pub tts: Option<Arc<dyn Tts>>,
    pub agent: Agent,
    /// The history the first request carries.
    pub messages: Vec<ChatMessage>,
    pub max_tool_steps: usize,
    pub tool_options: ToolOptions,
    /// What tools get: the session (scoped to this reply), user data, job.
    pub context: SessionContext,
    /// Where audio goes, with the utterance to tag it; `None` in text mode.
    pub output: Option<(PlayoutWriter, u64)>,
    /// Spoken when the LLM fails before saying anything.
    pub error_message: String,
    pub clock: Clock,
    pub events: mpsc::Sender<(ReplyId, ReplyEvent)>,
}

impl ReplyJob {
    async fn report(&self, event: ReplyEvent) {
        // The session may be gone (shutting down); nothing to do then.
        let _ = self.events.send((self.id, event)).await;
    }

    async fn record(&self, record: Record) {
        self.report(ReplyEvent::Record(record)).await;
    }
}

/// What goes to the TTS side, in order.
enum Speech {
    /// A sentence of `part`; `last_token`: when its last token came.
    Sentence {
        part: PartId,
        text: String,
        last_token: Instant,
    },
    /// `part` has no more sentences (sent for the parts someone waits on).
    PartEnd(PartId),
}

/// Runs a reply to its end.
pub(crate) async fn run(job: ReplyJob) {
    // Aborting this task drops the guard: every tool's token fires. A reply
    // that runs to its end disarms it (nothing was cancelled).
    let cancel = CancellationToken::new();
    let cancel_on_abort = cancel.clone().drop_guard();
    // The TTS stream is opened while the LLM thinks, so its connection setup
    // is off the critical path.
    let (tts_tx, audio) = match (&job.tts, &job.output) {
        (Some(tts), Some((writer, utterance))) => {
            let (tx, rx) = mpsc::channel::<Speech>(16);
            let audio = pump_audio(tts.clone(), rx, writer.clone(), *utterance, &job);
            (Some(tx), Some(audio))
        }
        _ => (None, None),
    };
    let text = generate(&job, tts_tx, &cancel);
    match audio {
        Some(audio) => {
            // Both halves run concurrently within this task; `generate` drops
            // the sentence sender when done, which ends `pump_audio`.
            futures::join!(text, audio);
        }
        None => {
            text.await;
            if let Some((writer, utterance)) = &job.output {
                let _ = writer.end(*utterance).await;
            }
        }
    }
    cancel_on_abort.disarm();
}

/// Sends sentences to the TTS, if there is one.
struct Speaker {
    sentences: Option<mpsc::Sender<Speech>>,
}

impl Speaker {
    async fn send(&self, part: PartId, text: String, last_token: Instant) {
        if let Some(tx) = &self.sentences {
            let _ = tx
                .send(Speech::Sentence {
                    part,
                    text,
                    last_token,
                })
                .await;
        }
    }

    /// Speaks a whole text, sentence by sentence, and marks the part's end.
    async fn speak(&self, part: PartId, text: &str, now: Instant) {
        let mut splitter = SentenceSplitter::new();
        for sentence in splitter.push(text) {
            self.send(part, sentence, now).await;
        }
        if let Some(rest) = splitter.finish() {
            self.send(part, rest, now).await;
        }
        if let Some(tx) = &self.sentences {
            let _ = tx.send(Speech::PartEnd(part)).await;
        }
    }
}

/// The LLM side: requests, tool steps, sentences out.
async fn generate(
    job: &ReplyJob,
    sentences: Option<mpsc::Sender<Speech>>,
    cancel: &CancellationToken,
) {
    let speaker = Speaker { sentences };
    let mut next_part: PartId = 0;
    if let ReplyKind::Say(text) = &job.kind {
        job.record(Record::Said {
            step: 0,
            part: next_part,
            text: text.clone(),
        })
        .await;
        speaker.speak(next_part, text, job.clock.now()).await;
        job.record(Record::Generated {
            at: job.clock.now(),
        })
        .await;
        return;
    }
    let mut messages = job.messages.clone();
    if let ReplyKind::Generate(Some(extra)) = &job.kind {
        add_instructions(&mut messages, extra);
    }
    let mut said_anything = false;
    for step in 0usize.. {
        let tools = job.agent.tool_set().snapshot();
        let mut options = job.agent.options().clone();
        let last_step = step >= job.max_tool_steps;
        if last_step && !tools.is_empty() {
            // The step limit is reached: this answer is words only.
            options.tool_choice = Some(ToolChoice::None);
        }
        let request = LlmRequest {
            messages: messages.clone(),
            tools: tools.specs(),
            job: job.context.job().clone(),
            options,
        };
        job.record(Record::LlmRequested {
            at: job.clock.now(),
        })
        .await;
        let mut stream = match job.llm.chat(request).await {
            Ok(s) => s,
            Err(error) => {
                fail(job, &speaker, error, said_anything, &mut next_part).await;
                return;
            }
        };
        let mut splitter = SentenceSplitter::new();
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut text_part = None;
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut first = true;
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            let now = job.clock.now();
            if first && matches!(chunk, Ok(LlmChunk::Text(_) | LlmChunk::ToolCall(_))) {
                first = false;
                job.record(Record::FirstToken { at: now }).await;
            }
            match chunk {
                Ok(LlmChunk::Text(delta)) => {
                    if delta.is_empty() {
                        continue;
                    }
                    said_anything = true;
                    let part = *text_part.get_or_insert_with(|| take_part(&mut next_part));
                    text.push_str(&delta);
                    for sentence in splitter.push(&delta) {
                        speaker.send(part, sentence, now).await;
                    }
                    job.record(Record::StepText { step, part, delta }).await;
                }
                Ok(LlmChunk::Reasoning(delta)) => {
                    reasoning.push_str(&delta);
                    job.record(Record::Reasoning { step, delta }).await;
                }
                Ok(LlmChunk::ToolCall(call)) => calls.push(call),
                Ok(LlmChunk::Usage(usage)) => job.record(Record::Usage(usage)).await,
                Ok(LlmChunk::Done { .. }) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(stream);
        // What was said stays said: flush it (while any tools run).
        if let (Some(rest), Some(part)) = (splitter.finish(), text_part) {
            speaker.send(part, rest, job.clock.now()).await;
        }
        if let Some(error) = failed {
            fail(job, &speaker, error, said_anything, &mut next_part).await;
            return;
        }
        if !calls.is_empty() && last_step {
            warn!(
                reply = job.id,
                max_tool_steps = job.max_tool_steps,
                "tool step limit reached; the calls of this step are not run"
            );
            calls.clear();
        }
        if calls.is_empty() {
            job.record(Record::Generated {
                at: job.clock.now(),
            })
            .await;
            return;
        }
        job.record(Record::ToolCalls {
            step,
            calls: calls.clone(),
        })
        .await;
        let ran = run_tools(job, &tools, &calls, step, cancel, &speaker, &mut next_part).await;
        said_anything |= !ran.says.is_empty();
        let mut call_message = ChatMessage::assistant_tool_calls(text, calls.clone());
        if !reasoning.is_empty() {
            call_message.reasoning = Some(reasoning);
        }
        messages.push(call_message);
        for (call, result) in calls.iter().zip(ran.results) {
            messages.push(ChatMessage::tool_result(&call.id, result));
        }
        messages.extend(ran.says.into_iter().map(ChatMessage::assistant));
        if let Some(agent) = ran.handoff {
            job.report(ReplyEvent::Handoff(agent)).await;
            job.record(Record::Generated {
                at: job.clock.now(),
            })
            .await;
            return;
        }
    }
}

fn take_part(next: &mut PartId) -> PartId {
    let part = *next;
    *next = next.saturating_add(1);
    part
}

/// Adds `extra` to the system instructions of this request only.
fn add_instructions(messages: &mut Vec<ChatMessage>, extra: &str) {
    if extra.trim().is_empty() {
        return;
    }
    match messages.first_mut().filter(|m| m.role == Role::System) {
        Some(system) => {
            system.content.push_str("\n\n");
            system.content.push_str(extra);
        }
        None => messages.insert(0, ChatMessage::system(extra)),
    }
}

async fn fail(
    job: &ReplyJob,
    speaker: &Speaker,
    error: StageError,
    said_anything: bool,
    next_part: &mut PartId,
) {
    // Reported to the session as an event; whoever runs it decides how loud.
    debug!(reply = job.id, error = %error, "LLM failed");
    job.report(ReplyEvent::LlmFailed(error)).await;
    let apology = (!said_anything && !job.error_message.is_empty()).then(|| {
        // Tell the user rather than leave them in silence.
        (take_part(next_part), job.error_message.clone())
    });
    if let Some((part, text)) = &apology {
        speaker.send(*part, text.clone(), job.clock.now()).await;
    }
    job.record(Record::Failed { apology }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_instructions_extend_the_system_message_for_the_request() {
        let mut m = vec![ChatMessage::system("Be brief."), ChatMessage::user("hi")];
        add_instructions(&mut m, "Greet the user by name.");
        assert_eq!(m[0].content, "Be brief.\n\nGreet the user by name.");
        let mut m = vec![ChatMessage::user("hi")];
        add_instructions(&mut m, "Greet.");
        assert_eq!(m[0].role, Role::System);
        assert_eq!(m.len(), 2);
    }
}
