//! One agent reply, as a task the session owns: its LLM steps (each step's
//! tool calls run concurrently, each within its timeout), what tools `say`
//! while they run, sentence by sentence into the TTS, and the TTS audio into
//! the playout queue, each frame tagged with its part. It reports what it did
//! as [`Record`]s for the session's [`Ledger`](crate::ledger::Ledger).
//!
//! The session cancels a reply by aborting this task: that drops the LLM
//! stream (closing its connection), the TTS stream and the running tools at
//! once, and fires the tools' cancellation token (its drop guard lives here).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agents::{Agent, ToolChoice};
use crate::audio::FrameConverter;
use crate::chat::{ChatMessage, Role, ToolCall};
use crate::clock::Clock;
use crate::ledger::{PartId, Record};
use crate::playout::PlayoutWriter;
use crate::sentence::SentenceSplitter;
use crate::session::{SpeechDone, ToolOptions};
use crate::stage::{Llm, LlmChunk, LlmRequest, StageError, Tts, TtsInput};
use crate::tool::{SessionContext, Tool, ToolContext, ToolOutput, parse_arguments};
use crate::turn::ReplyId;

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

/// What a step's tools left.
struct StepRun {
    /// One result per call, in call order, as the model reads it.
    results: Vec<String>,
    /// What tools said while they ran, in order.
    says: Vec<String>,
    handoff: Option<Agent>,
}

/// Runs a step's calls concurrently (at most `max_calls_per_step` of them),
/// speaking what their tools `say` meanwhile; reports each result as it comes.
async fn run_tools(
    job: &ReplyJob,
    tools: &crate::tool::ToolSnapshot,
    calls: &[ToolCall],
    step: usize,
    cancel: &CancellationToken,
    speaker: &Speaker,
    next_part: &mut PartId,
) -> StepRun {
    let limits = &job.tool_options;
    let (says_tx, mut says_rx) = mpsc::channel::<ScopedSay>(SAYS_IN_FLIGHT);
    let scope = ReplyScope {
        says: says_tx,
        open: Arc::new(AtomicBool::new(true)),
    };
    let mut results: Vec<Option<String>> = vec![None; calls.len()];
    let mut running = FuturesUnordered::new();
    for (index, call) in calls.iter().enumerate() {
        if index >= limits.max_calls_per_step {
            results[index] = Some(format!(
                "error: not run: at most {} tool calls are run per step",
                limits.max_calls_per_step
            ));
            continue;
        }
        debug!(reply = job.id, tool = %call.name, id = %call.id, "running tool");
        let ctx = ToolContext::new(
            job.context.scoped(scope.clone()),
            cancel.child_token(),
            call.id.clone(),
        );
        let tool = tools.get(&call.name).cloned();
        let default_timeout = limits.timeout;
        running
            .push(run_call(tool, call.clone(), ctx, default_timeout).map(move |out| (index, out)));
    }
    for (index, result) in results.iter().enumerate() {
        if let Some(output) = result {
            job.record(Record::ToolResult {
                step,
                index,
                output: output.clone(),
            })
            .await;
        }
    }
    let mut says = Vec::new();
    let mut handoff = None;
    while !running.is_empty() {
        tokio::select! {
            Some((index, outcome)) = running.next() => {
                let CallOutcome { text, handoff: next } = outcome;
                let output = truncate_result(text, limits.max_result_chars);
                if let Some(agent) = next {
                    if handoff.is_some() {
                        warn!(reply = job.id, "two tools of one step handed over; the first wins");
                    } else {
                        handoff = Some(agent);
                    }
                }
                job.record(Record::ToolResult { step, index, output: output.clone() }).await;
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(output);
                }
            }
            Some(say) = says_rx.recv() => {
                says.push(say_in_reply(job, speaker, step, next_part, say).await);
            }
        }
    }
    scope.open.store(false, Ordering::SeqCst);
    while let Ok(say) = says_rx.try_recv() {
        says.push(say_in_reply(job, speaker, step, next_part, say).await);
    }
    StepRun {
        results: results.into_iter().map(Option::unwrap_or_default).collect(),
        says,
        handoff,
    }
}

async fn say_in_reply(
    job: &ReplyJob,
    speaker: &Speaker,
    step: usize,
    next_part: &mut PartId,
    say: ScopedSay,
) -> String {
    let part = take_part(next_part);
    job.record(Record::Said {
        step,
        part,
        text: say.text.clone(),
    })
    .await;
    job.report(ReplyEvent::SayWaiter {
        part,
        done: say.done,
    })
    .await;
    speaker.speak(part, &say.text, job.clock.now()).await;
    say.text
}

/// One call's outcome: the text the model reads, and a handoff if any.
struct CallOutcome {
    text: String,
    handoff: Option<Agent>,
}

impl CallOutcome {
    fn error(text: String) -> Self {
        Self {
            text,
            handoff: None,
        }
    }
}

/// Runs one call within its timeout; every failure becomes its result.
async fn run_call(
    tool: Option<Arc<dyn Tool>>,
    call: ToolCall,
    ctx: ToolContext,
    default_timeout: Duration,
) -> CallOutcome {
    let Some(tool) = tool else {
        return CallOutcome::error(format!("error: no tool named {:?}", call.name));
    };
    let args = match parse_arguments(&call.arguments) {
        Ok(args) => args,
        Err(e) => return CallOutcome::error(format!("error: {e}")),
    };
    let limit = tool.timeout().unwrap_or(default_timeout);
    let cancel = ctx.cancellation().clone();
    let called = AssertUnwindSafe(tool.call(ctx, args)).catch_unwind();
    match tokio::time::timeout(limit, called).await {
        Err(_) => {
            cancel.cancel();
            warn!(tool = %call.name, ?limit, "tool timed out");
            CallOutcome::error(format!(
                "error: the tool did not finish within {:.1} s",
                limit.as_secs_f64()
            ))
        }
        Ok(Err(_panic)) => {
            warn!(tool = %call.name, "tool panicked");
            CallOutcome::error("error: the tool failed unexpectedly".into())
        }
        Ok(Ok(Err(e))) => CallOutcome::error(format!("error: {e}")),
        Ok(Ok(Ok(output))) => {
            let text = output.to_model_text();
            let handoff = match output {
                ToolOutput::Handoff { agent, .. } => Some(agent),
                _ => None,
            };
            CallOutcome { text, handoff }
        }
    }
}

/// At most `max` characters of a tool's result, cut on a character boundary.
fn truncate_result(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => {
            let dropped = text.len() - cut;
            let mut kept = text;
            kept.truncate(cut);
            kept.push_str(&format!(" … [{dropped} more bytes cut]"));
            kept
        }
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

/// Which part each TTS output belongs to, and when a part is over. The TTS
/// contract: summed over a segment, its outputs' text is the segment, so a
/// segment's outputs end when its text is used up.
#[derive(Default)]
struct Attribution {
    /// Segments sent and not yet fully spoken: part, text bytes left, and
    /// whether the part ends with it.
    pending: VecDeque<(PartId, usize, bool)>,
    /// The part of the last segment used up.
    last: PartId,
}

impl Attribution {
    fn sent(&mut self, part: PartId, len: usize) {
        if len > 0 {
            self.pending.push_back((part, len, false));
        }
    }

    /// `part` has no more segments. True when it is over already (nothing
    /// of it is pending); else it ends with its last pending segment.
    fn part_ended(&mut self, part: PartId) -> bool {
        match self.pending.iter_mut().rev().find(|(p, _, _)| *p == part) {
            Some(last) => {
                last.2 = true;
                false
            }
            None => true,
        }
    }

    /// The part of an output carrying `len` bytes of text, and whether that
    /// part is now over.
    fn take(&mut self, len: usize) -> (PartId, bool) {
        let Some(front) = self.pending.front_mut() else {
            return (self.last, false);
        };
        let part = front.0;
        front.1 = front.1.saturating_sub(len);
        if front.1 > 0 {
            return (part, false);
        }
        let ended = front.2;
        self.last = part;
        self.pending.pop_front();
        (part, ended)
    }
}

/// The TTS side: opens the stream, feeds it sentences, pushes its audio into
/// the playout queue at the output rate, then marks the utterance's end.
async fn pump_audio(
    tts: Arc<dyn Tts>,
    mut sentences: mpsc::Receiver<Speech>,
    writer: PlayoutWriter,
    utterance: u64,
    job: &ReplyJob,
) {
    let id = job.id;
    let stream = match tts.stream(job.context.job()).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(reply = id, error = %e, "TTS failed to open; the reply is text only");
            None
        }
    };
    if let Some(stream) = stream {
        let input = stream.input;
        let mut output = stream.output;
        let attribution = Mutex::new(Attribution::default());
        // Part ends go to the play side, the one writer of the playout, so
        // an end is queued after the part's last frame.
        let (ends_tx, mut ends_rx) = mpsc::channel::<PartId>(16);
        let feed = async {
            while let Some(speech) = sentences.recv().await {
                let (part, text, last_token) = match speech {
                    Speech::Sentence {
                        part,
                        text,
                        last_token,
                    } => (part, text, last_token),
                    Speech::PartEnd(part) => {
                        let _ = ends_tx.send(part).await;
                        continue;
                    }
                };
                if let Ok(mut a) = attribution.lock() {
                    a.sent(part, text.len());
                }
                if input.send(TtsInput::Segment(text)).await.is_err() {
                    break;
                }
                let sent = job.clock.now();
                job.record(Record::SentenceToTts { last_token, sent }).await;
            }
            // Dropping `input` tells the TTS no more segments come.
            drop(input);
            drop(ends_tx);
        };
        let play = async {
            let mut converter = FrameConverter::new(writer.sample_rate());
            let mut first = true;
            // Whether the text queued so far needs a space before more: each
            // segment's text is a trimmed sentence.
            let mut needs_space = false;
            let mut ends_open = true;
            loop {
                let chunk = tokio::select! {
                    chunk = output.recv() => match chunk {
                        Some(chunk) => chunk,
                        None => break,
                    },
                    part = ends_rx.recv(), if ends_open => {
                        match part {
                            Some(part) => {
                                let over = attribution.lock().is_ok_and(|mut a| a.part_ended(part));
                                if over && writer.end_part(utterance, part).await.is_err() {
                                    return;
                                }
                            }
                            None => ends_open = false,
                        }
                        continue;
                    }
                };
                match chunk {
                    Ok(audio) => {
                        if first {
                            first = false;
                            job.record(Record::FirstAudio {
                                at: job.clock.now(),
                            })
                            .await;
                        }
                        let (part, part_over) = attribution
                            .lock()
                            .map(|mut a| a.take(audio.text.len()))
                            .unwrap_or_default();
                        let mut text = audio.text;
                        if !text.is_empty() {
                            if needs_space && !text.starts_with(char::is_whitespace) {
                                text.insert(0, ' ');
                            }
                            needs_space = !text.ends_with(char::is_whitespace);
                        }
                        // Short frames keep a pause or a clear prompt in every
                        // sink, and the accounting of what was played exact.
                        let frame = converter.convert(&audio.frame);
                        for (i, piece) in frame.split(PLAYOUT_FRAME).into_iter().enumerate() {
                            let text = if i == 0 {
                                std::mem::take(&mut text)
                            } else {
                                String::new()
                            };
                            if writer.push(utterance, part, piece, text).await.is_err() {
                                return;
                            }
                        }
                        if part_over && writer.end_part(utterance, part).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(reply = id, error = %e, "TTS failed mid-reply");
                        return;
                    }
                }
            }
        };
        futures::join!(feed, play);
    } else {
        // Drain so the LLM side never blocks on a full channel; nothing is
        // played, so every part is over as soon as it ends.
        while let Some(speech) = sentences.recv().await {
            if let Speech::PartEnd(part) = speech {
                let _ = writer.end_part(utterance, part).await;
            }
        }
    }
    let _ = writer.end(utterance).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_attributed_to_the_segment_whose_text_they_carry() {
        let mut a = Attribution::default();
        a.sent(0, 6); // "Hello."
        a.sent(1, 11); // "One moment."
        a.sent(1, 5); // "Sure."
        assert!(!a.part_ended(1), "part 1 still has audio to come");
        // Leading audio without text belongs to the segment being spoken.
        assert_eq!(a.take(0), (0, false));
        assert_eq!(a.take(6), (0, false));
        assert_eq!(a.take(0), (1, false));
        assert_eq!(a.take(4), (1, false));
        assert_eq!(a.take(7), (1, false), "a segment of part 1 is left");
        assert_eq!(a.take(5), (1, true), "its last segment ends the part");
        // Nothing pending: trailing audio stays with the last part.
        assert_eq!(a.take(0), (1, false));
        assert_eq!(
            a.take(3),
            (1, false),
            "more text than promised is not a panic"
        );
        assert!(
            a.part_ended(2),
            "a part with nothing pending is over at once"
        );
    }

    #[test]
    fn long_results_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_result("short".into(), 10), "short");
        let cut = truncate_result("ééééé".into(), 2);
        assert!(cut.starts_with("éé …"), "{cut}");
        assert!(cut.contains("6 more bytes"), "{cut}");
    }

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
