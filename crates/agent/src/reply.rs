//! One agent reply: the LLM request (and its tool steps), sentence by sentence
//! into the TTS, and the TTS audio into the playout queue. Runs as a task the
//! session owns; the session cancels it by aborting the task, which drops the
//! LLM stream (closing its connection) and the TTS stream at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::audio::FrameConverter;
use crate::chat::{ChatMessage, ToolCall, ToolSet};
use crate::clock::Clock;
use crate::playout::PlayoutWriter;
use crate::sentence::SentenceSplitter;

/// The longest frame handed to the playout queue.
const PLAYOUT_FRAME: Duration = Duration::from_millis(20);
use crate::stage::{JobContext, Llm, LlmChunk, LlmRequest, StageError, Tts, TtsInput, Usage};
use crate::turn::ReplyId;

/// What a reply reports to its session, in order.
#[derive(Debug)]
pub(crate) enum ReplyEvent {
    LlmRequested {
        at: Instant,
    },
    FirstToken {
        at: Instant,
    },
    /// Reply text as it streams from the LLM.
    Text(String),
    /// A sentence went to the TTS; `last_token` is when its last token arrived.
    SentenceToTts {
        last_token: Instant,
        sent: Instant,
    },
    FirstAudio {
        at: Instant,
    },
    /// A tool step: the assistant's call message and the results, to add to
    /// the chat in this order.
    ToolStep {
        call: ChatMessage,
        results: Vec<ChatMessage>,
    },
    Usage(Usage),
    /// The LLM failed (an apology is spoken if nothing was said yet).
    Failed {
        error: StageError,
    },
    /// All text is generated; `text` is the final step's whole reply text.
    Generated {
        text: String,
    },
}

pub(crate) struct ReplyJob {
    pub id: ReplyId,
    pub llm: Arc<dyn Llm>,
    pub tts: Option<Arc<dyn Tts>>,
    pub tools: ToolSet,
    pub messages: Vec<ChatMessage>,
    pub max_tool_steps: usize,
    pub job: JobContext,
    /// Where audio goes, with the generation to tag it; `None` in text mode.
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
}

/// Runs a reply to its end.
pub(crate) async fn run(job: ReplyJob) {
    // The TTS stream is opened while the LLM thinks, so its connection setup
    // is off the critical path.
    let (tts_tx, audio) = match (&job.tts, &job.output) {
        (Some(tts), Some((writer, generation))) => {
            let (tx, rx) = mpsc::channel::<(String, Instant)>(16);
            let audio = pump_audio(
                tts.clone(),
                rx,
                writer.clone(),
                *generation,
                job.job.clone(),
                job.clock.clone(),
                job.events.clone(),
                job.id,
            );
            (Some(tx), Some(audio))
        }
        _ => (None, None),
    };
    let text = generate(&job, tts_tx);
    match audio {
        Some(audio) => {
            // Both halves run concurrently within this task; `generate` drops
            // the sentence sender when done, which ends `pump_audio`.
            futures::join!(text, audio);
        }
        None => {
            text.await;
            if let Some((writer, generation)) = &job.output {
                let _ = writer.end(*generation).await;
            }
        }
    }
}

/// The LLM side: requests, tool steps, sentences out.
async fn generate(job: &ReplyJob, sentences: Option<mpsc::Sender<(String, Instant)>>) {
    let mut messages = job.messages.clone();
    let tools = job.tools.specs();
    let mut steps = 0usize;
    let mut splitter = SentenceSplitter::new();
    let mut said_anything = false;
    loop {
        let request = LlmRequest {
            messages: messages.clone(),
            tools: tools.clone(),
            job: job.job.clone(),
        };
        job.report(ReplyEvent::LlmRequested {
            at: job.clock.now(),
        })
        .await;
        let mut stream = match job.llm.chat(request).await {
            Ok(s) => s,
            Err(error) => {
                fail(job, &sentences, error, said_anything).await;
                return;
            }
        };
        let mut text = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut first = true;
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(LlmChunk::Text(delta)) => {
                    let now = job.clock.now();
                    if first {
                        first = false;
                        job.report(ReplyEvent::FirstToken { at: now }).await;
                    }
                    if delta.is_empty() {
                        continue;
                    }
                    said_anything = true;
                    text.push_str(&delta);
                    job.report(ReplyEvent::Text(delta.clone())).await;
                    for sentence in splitter.push(&delta) {
                        send_sentence(&sentences, sentence, now).await;
                    }
                }
                Ok(LlmChunk::ToolCall(call)) => {
                    if first {
                        first = false;
                        job.report(ReplyEvent::FirstToken {
                            at: job.clock.now(),
                        })
                        .await;
                    }
                    calls.push(call);
                }
                Ok(LlmChunk::Usage(usage)) => job.report(ReplyEvent::Usage(usage)).await,
                Ok(LlmChunk::Done { .. }) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(stream);
        if let Some(error) = failed {
            // What was already said stays said; flush it and report.
            if let Some(rest) = splitter.finish() {
                send_sentence(&sentences, rest, job.clock.now()).await;
            }
            fail(job, &sentences, error, said_anything).await;
            return;
        }
        if calls.is_empty() {
            if let Some(rest) = splitter.finish() {
                send_sentence(&sentences, rest, job.clock.now()).await;
            }
            job.report(ReplyEvent::Generated { text }).await;
            return;
        }
        if steps >= job.max_tool_steps {
            warn!(
                reply = job.id,
                max_tool_steps = job.max_tool_steps,
                "tool step limit reached; not running further tool calls"
            );
            if let Some(rest) = splitter.finish() {
                send_sentence(&sentences, rest, job.clock.now()).await;
            }
            job.report(ReplyEvent::Generated { text }).await;
            return;
        }
        steps += 1;
        let call_msg = ChatMessage::assistant_tool_calls(text, calls.clone());
        let mut results = Vec::with_capacity(calls.len());
        for call in &calls {
            debug!(reply = job.id, tool = %call.name, "running tool");
            let out = job.tools.run(call).await;
            results.push(ChatMessage::tool_result(&call.id, out));
        }
        messages.push(call_msg.clone());
        messages.extend(results.iter().cloned());
        job.report(ReplyEvent::ToolStep {
            call: call_msg,
            results,
        })
        .await;
    }
}

async fn send_sentence(
    sentences: &Option<mpsc::Sender<(String, Instant)>>,
    sentence: String,
    last_token: Instant,
) {
    if let Some(tx) = sentences {
        let _ = tx.send((sentence, last_token)).await;
    }
}

async fn fail(
    job: &ReplyJob,
    sentences: &Option<mpsc::Sender<(String, Instant)>>,
    error: StageError,
    said_anything: bool,
) {
    // Reported to the session as an event; whoever runs it decides how loud.
    debug!(reply = job.id, error = %error, "LLM failed");
    if !said_anything && !job.error_message.is_empty() {
        // Tell the user rather than leave them in silence.
        if let Some(tx) = sentences {
            let _ = tx.send((job.error_message.clone(), job.clock.now())).await;
        }
    }
    job.report(ReplyEvent::Failed { error }).await;
}

/// The TTS side: opens the stream, feeds it sentences, pushes its audio into
/// the playout queue at the output rate, then marks the generation's end.
#[allow(clippy::too_many_arguments)]
async fn pump_audio(
    tts: Arc<dyn Tts>,
    mut sentences: mpsc::Receiver<(String, Instant)>,
    writer: PlayoutWriter,
    generation: u64,
    job: JobContext,
    clock: Clock,
    events: mpsc::Sender<(ReplyId, ReplyEvent)>,
    id: ReplyId,
) {
    let stream = match tts.stream(&job).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(reply = id, error = %e, "TTS failed to open; the reply is text only");
            None
        }
    };
    if let Some(stream) = stream {
        let input = stream.input;
        let mut output = stream.output;
        let feed = async {
            while let Some((s, last_token)) = sentences.recv().await {
                if input.send(TtsInput::Segment(s)).await.is_err() {
                    break;
                }
                let sent = clock.now();
                let _ = events
                    .send((id, ReplyEvent::SentenceToTts { last_token, sent }))
                    .await;
            }
            drop(input);
            // Dropping `input` tells the TTS no more segments come.
        };
        let play = async {
            let mut converter = FrameConverter::new(writer.sample_rate());
            let mut first = true;
            // Whether the text queued so far needs a space before more: each
            // segment's text is a trimmed sentence.
            let mut needs_space = false;
            while let Some(chunk) = output.recv().await {
                match chunk {
                    Ok(audio) => {
                        if first {
                            first = false;
                            let _ = events
                                .send((id, ReplyEvent::FirstAudio { at: clock.now() }))
                                .await;
                        }
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
                        for (i, part) in frame.split(PLAYOUT_FRAME).into_iter().enumerate() {
                            let text = if i == 0 {
                                std::mem::take(&mut text)
                            } else {
                                String::new()
                            };
                            if writer.push(generation, part, text).await.is_err() {
                                return;
                            }
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
        // Drain so the LLM side never blocks on a full channel.
        while sentences.recv().await.is_some() {}
    }
    let _ = writer.end(generation).await;
}
