//! The session actor's own overhead, with 100 sessions in one process: the
//! time from a turn's commit to its LLM request leaving, from a sentence's
//! last LLM token to its TTS request, and each turn's tool round trip (the
//! model asks for a tool, then answers with its result): the call's last
//! fragment leaving the LLM → the tool invoked, and the tool's result → the
//! next LLM request. Stages are instant doubles and every session has live
//! audio in (20 ms frames) and out (played in real time), so the figures are
//! the framework's, not a model's.
//!
//! `cargo bench -p agent --bench actor` (SESSIONS and TURNS override the load).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::session::{self, AudioIo, SessionEvent, SessionOptions, Stages};
use agent::*;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

struct QuietVad;

impl VadModel for QuietVad {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn frame_len(&self) -> usize {
        256
    }
    fn score(&mut self, frame: &[i16]) -> f32 {
        // A real model's cost is not the actor's; keep a token amount of work.
        let e: i64 = frame.iter().map(|&s| (s as i64).abs()).sum();
        if e > 1_000_000 { 1.0 } else { 0.0 }
    }
    fn reset(&mut self) {}
}

impl VadFactory for QuietVad {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(QuietVad))
    }
}

/// One session's tool timings.
#[derive(Default)]
struct Probe {
    /// When the last tool-call fragment left the LLM.
    last_fragment: Mutex<Option<Instant>>,
    /// When the tool returned.
    returned: Mutex<Option<Instant>>,
    invoked: Mutex<Vec<Duration>>,
    next_request: Mutex<Vec<Duration>>,
}

fn elapsed_since(slot: &Mutex<Option<Instant>>) -> Option<Duration> {
    slot.lock().ok()?.take().map(|t| t.elapsed())
}

/// Asks for the tool first (after 5 ms); with its result, three sentences,
/// a token every 5 ms.
struct StreamingLlm {
    probe: Arc<Probe>,
}

#[async_trait]
impl Llm for StreamingLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmStream, StageError> {
        if request.messages.last().is_none_or(|m| m.role != Role::Tool) {
            let probe = self.probe.clone();
            return Ok(futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Ok(mut t) = probe.last_fragment.lock() {
                    *t = Some(Instant::now());
                }
                Ok(LlmChunk::ToolCall(ToolCall {
                    id: "functions.lookup:0".into(),
                    name: "lookup".into(),
                    arguments: "{}".into(),
                }))
            })
            .chain(futures::stream::iter([Ok(LlmChunk::Done {
                finish_reason: Some("tool_calls".into()),
            })]))
            .boxed());
        }
        if let (Some(d), Ok(mut v)) = (
            elapsed_since(&self.probe.returned),
            self.probe.next_request.lock(),
        ) {
            v.push(d);
        }
        let text = "Sure, here is the first sentence of my answer. And here comes a second one for you. Finally a third.";
        let tokens: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        Ok(futures::stream::iter(tokens)
            .then(|t| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(LlmChunk::Text(t))
            })
            .chain(futures::stream::iter([Ok(LlmChunk::Done {
                finish_reason: None,
            })]))
            .boxed())
    }
}

/// 200 ms of audio per segment, at once.
struct InstantTts;

#[async_trait]
impl Tts for InstantTts {
    fn sample_rate(&self) -> u32 {
        24_000
    }
    async fn stream(&self, _job: &JobContext) -> Result<TtsStream, StageError> {
        let (in_tx, mut in_rx) = mpsc::channel::<TtsInput>(8);
        let (out_tx, out_rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(TtsInput::Segment(text)) = in_rx.recv().await {
                for i in 0..2 {
                    let frame = AudioFrame::new(vec![100i16; 2400], 24_000, 1);
                    let text = if i == 0 { text.clone() } else { String::new() };
                    if out_tx.send(Ok(TtsAudio { frame, text })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(TtsStream {
            input: in_tx,
            output: out_rx,
        })
    }
}

/// Answers at once, noting when it was invoked and when it returned.
struct Lookup {
    probe: Arc<Probe>,
}

#[async_trait]
impl Tool for Lookup {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "lookup".into(),
            description: "looks things up".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        }
    }
    async fn call(
        &self,
        _ctx: ToolContext,
        _args: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        if let (Some(d), Ok(mut v)) = (
            elapsed_since(&self.probe.last_fragment),
            self.probe.invoked.lock(),
        ) {
            v.push(d);
        }
        if let Ok(mut t) = self.probe.returned.lock() {
            *t = Some(Instant::now());
        }
        Ok("found".into())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sessions = env_usize("SESSIONS", 100);
    let turns = env_usize("TURNS", 10);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (commit, sentence, invoked, next_request) = runtime.block_on(async move {
        let mut handles = Vec::new();
        for i in 0..sessions {
            // Conversations start 10 ms apart, as they would in a real
            // process, rather than all committing in the same millisecond.
            let start = Duration::from_millis(10 * i as u64);
            handles.push(tokio::spawn(async move {
                tokio::time::sleep(start).await;
                one_session(turns).await
            }));
        }
        let (mut commit, mut sentence, mut invoked, mut next_request) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for h in handles {
            let (c, s, probe) = h.await.expect("session task");
            commit.extend(c);
            sentence.extend(s);
            invoked.extend(probe.invoked.lock().map(|v| v.clone()).unwrap_or_default());
            next_request.extend(
                probe
                    .next_request
                    .lock()
                    .map(|v| v.clone())
                    .unwrap_or_default(),
            );
        }
        (commit, sentence, invoked, next_request)
    });
    let report = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        println!(
            "{name:<34} n={:<5} p50={:>8.1?} p99={:>8.1?} max={:>8.1?}",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    };
    println!("{sessions} sessions × {turns} turns, live audio in and out");
    report("commit → LLM request", commit);
    report("sentence last token → TTS request", sentence);
    report("tool call's last fragment → tool", invoked);
    report("tool result → next LLM request", next_request);
}

async fn one_session(turns: usize) -> (Vec<Duration>, Vec<Duration>, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let (mic_tx, mic_rx) = mpsc::channel(8);
    let (writer, control, mut reader) = playout(24_000, 32);
    let (handle, mut events, task) = session::start(
        Stages {
            llm: Arc::new(StreamingLlm {
                probe: probe.clone(),
            }),
            stt: None,
            tts: Some(Arc::new(InstantTts)),
            vad: Some(Arc::new(QuietVad)),
            turn_detector: None,
        },
        SessionOptions {
            agent: Agent::new("").tool(Lookup {
                probe: probe.clone(),
            }),
            ..SessionOptions::default()
        },
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );
    let mic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if mic_tx
                .send(AudioFrame::new(vec![0i16; 960], 48_000, 1))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let speaker = tokio::spawn(async move {
        while let Some(p) = reader.recv().await {
            if let Playout::Frame(f) = p {
                tokio::time::sleep(f.duration()).await;
            }
        }
    });
    let mut commit = Vec::new();
    let mut sentence = Vec::new();
    for _ in 0..turns {
        if handle.user_text("tell me something").await.is_err() {
            break;
        }
        while let Some(e) = events.recv().await {
            if let SessionEvent::Metrics(m) = e {
                commit.extend(m.commit_to_llm_request);
                sentence.extend(m.sentence_to_tts);
                break;
            }
        }
    }
    drop(handle);
    mic.abort();
    while events.recv().await.is_some() {}
    let _ = task.await;
    let _ = speaker.await;
    (commit, sentence, probe)
}
