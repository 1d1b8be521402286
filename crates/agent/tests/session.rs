//! The session actor under tokio's paused clock, with scripted stage doubles:
//! audio is synthetic (loud = speech, zeros = silence), the VAD double scores
//! by energy, the STT double answers each speech with a scripted transcript,
//! the TTS double makes 200 ms of audio per word, and the sink plays frames
//! in real (paused-clock) time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::session::{self, AudioIo, SessionEvent, SessionOptions, Stages};
use agent::stage::split_text_by_duration;
use agent::*;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

const RATE: u32 = 16_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ------------------------------------------------------------ doubles

/// Scores a frame as speech when it is loud.
struct EnergyVad;

impl VadModel for EnergyVad {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    fn frame_len(&self) -> usize {
        320
    }
    fn score(&mut self, frame: &[i16]) -> f32 {
        let loud = frame.iter().filter(|s| s.unsigned_abs() > 1000).count();
        if loud > frame.len() / 2 { 1.0 } else { 0.0 }
    }
    fn reset(&mut self) {}
}

impl VadFactory for EnergyVad {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(EnergyVad))
    }
}

/// Answers each SpeechEnded with the next scripted transcript, `lag` later.
/// An empty script entry answers `Empty` (noise without words). While speech
/// goes on it sends the entry as an interim after `interim_after` of speech.
struct ScriptedStt {
    script: Arc<Mutex<VecDeque<&'static str>>>,
    lag: Duration,
    interim_after: Option<Duration>,
}

#[async_trait]
impl Stt for ScriptedStt {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    async fn stream(&self, _job: &JobContext) -> Result<SttStream, StageError> {
        let (in_tx, mut in_rx) = mpsc::channel::<SttInput>(64);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let script = self.script.clone();
        let lag = self.lag;
        let interim_after = self.interim_after;
        tokio::spawn(async move {
            let mut speech_start: Option<Duration> = None;
            let mut heard = Duration::ZERO;
            let mut interim_sent = false;
            while let Some(input) = in_rx.recv().await {
                match input {
                    SttInput::Audio(f) => {
                        heard += f.duration();
                        if let (Some(start), Some(after)) = (speech_start, interim_after)
                            && !interim_sent
                            && heard >= start + after
                        {
                            interim_sent = true;
                            let next = script.lock().unwrap().front().copied().unwrap_or("");
                            if !next.is_empty() {
                                let t = Transcript {
                                    text: next.split(' ').next().unwrap_or("").into(),
                                    ..Default::default()
                                };
                                let _ = ev_tx.send(SttEvent::Interim(t)).await;
                            }
                        }
                    }
                    SttInput::SpeechStarted(at) => {
                        speech_start = Some(at);
                        interim_sent = false;
                    }
                    SttInput::SpeechEnded(_) => {
                        speech_start = None;
                        let next = script.lock().unwrap().pop_front().unwrap_or("");
                        let tx = ev_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(lag).await;
                            let ev = if next.is_empty() {
                                SttEvent::Empty
                            } else {
                                SttEvent::Final(Transcript {
                                    text: next.into(),
                                    ..Default::default()
                                })
                            };
                            let _ = tx.send(ev).await;
                        });
                    }
                }
            }
        });
        Ok(SttStream {
            input: in_tx,
            events: ev_rx,
        })
    }
}

#[derive(Clone)]
enum Reply {
    Text(&'static str),
    ToolCall,
    /// Text (may be empty), then calls: (tool name, arguments), with
    /// Kimi-style ids `functions.NAME:INDEX`.
    Calls(&'static str, Vec<(&'static str, &'static str)>),
    Fail,
}

/// Streams scripted replies word by word, 10 ms a token, and records every
/// request with the (paused-clock) time it arrived.
#[derive(Clone, Default)]
struct ScriptedLlm {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<(Instant, LlmRequest)>>>,
}

impl ScriptedLlm {
    fn new(replies: Vec<Reply>) -> Self {
        Self {
            replies: Arc::new(Mutex::new(replies.into())),
            requests: Default::default(),
        }
    }
    fn requests(&self) -> Vec<(Instant, LlmRequest)> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl Llm for ScriptedLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmStream, StageError> {
        self.requests
            .lock()
            .unwrap()
            .push((Instant::now(), request));
        let reply = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Text("Okay."));
        let chunks: Vec<Result<LlmChunk, StageError>> = match reply {
            Reply::Text(text) => text
                .split_inclusive(' ')
                .map(|w| Ok(LlmChunk::Text(w.to_string())))
                .chain([Ok(LlmChunk::Done {
                    finish_reason: Some("stop".into()),
                })])
                .collect(),
            Reply::ToolCall => vec![
                Ok(LlmChunk::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "lookup".into(),
                    arguments: "{\"q\":\"x\"}".into(),
                })),
                Ok(LlmChunk::Done {
                    finish_reason: Some("tool_calls".into()),
                }),
            ],
            Reply::Calls(text, calls) => text
                .split_inclusive(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Ok(LlmChunk::Text(w.to_string())))
                .chain(calls.into_iter().enumerate().map(|(i, (name, args))| {
                    Ok(LlmChunk::ToolCall(ToolCall {
                        id: format!("functions.{name}:{i}"),
                        name: name.into(),
                        arguments: args.into(),
                    }))
                }))
                .chain([Ok(LlmChunk::Done {
                    finish_reason: Some("tool_calls".into()),
                })])
                .collect(),
            Reply::Fail => {
                return Err(StageError::new(ErrorKind::Server, "HTTP 500"));
            }
        };
        Ok(futures::stream::iter(chunks)
            .then(|c| async move {
                tokio::time::sleep(ms(10)).await;
                c
            })
            .boxed())
    }
}

/// 200 ms of loud-ish audio per word at 24 kHz, in 100 ms chunks, 50 ms
/// after each segment arrives. Records segments as they arrive.
#[derive(Clone, Default)]
struct WordTts {
    segments: Arc<Mutex<Vec<(Instant, String)>>>,
}

#[async_trait]
impl Tts for WordTts {
    fn sample_rate(&self) -> u32 {
        24_000
    }
    async fn stream(&self, _job: &JobContext) -> Result<TtsStream, StageError> {
        let (in_tx, mut in_rx) = mpsc::channel::<TtsInput>(16);
        let (out_tx, out_rx) = mpsc::channel(8);
        let segments = self.segments.clone();
        tokio::spawn(async move {
            while let Some(TtsInput::Segment(text)) = in_rx.recv().await {
                segments
                    .lock()
                    .unwrap()
                    .push((Instant::now(), text.clone()));
                tokio::time::sleep(ms(50)).await;
                let words = text.split_whitespace().count().max(1);
                let chunks = vec![2400usize; words * 2];
                // Like real engines: the segment's text, trimmed.
                let texts = split_text_by_duration(&text, &chunks);
                for (n, t) in chunks.iter().zip(texts) {
                    let frame = AudioFrame::new(vec![500i16; *n], 24_000, 1);
                    if out_tx.send(Ok(TtsAudio { frame, text: t })).await.is_err() {
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

struct FixedDetector(f32);

#[async_trait]
impl TurnDetector for FixedDetector {
    async fn end_of_turn_probability(&self, _input: TurnInput) -> Result<f32, StageError> {
        tokio::time::sleep(ms(20)).await;
        Ok(self.0)
    }
    fn unlikely_threshold(&self) -> f32 {
        0.5
    }
}

struct Lookup(Arc<AtomicUsize>);

#[async_trait]
impl Tool for Lookup {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "lookup".into(),
            description: "looks things up".into(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }
    async fn call(
        &self,
        _ctx: ToolContext,
        _args: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok("found".into())
    }
}

// ------------------------------------------------------------ harness

/// (start ms, end ms) spans of user speech.
type Speech = Vec<(u64, u64)>;

struct Run {
    llm: ScriptedLlm,
    tts: WordTts,
    events: Vec<(Instant, SessionEvent)>,
    chat: ChatContext,
    t0: Instant,
    /// How each `Act::Say`/`Act::Generate` ended, in the order they ended.
    speeches: Arc<Mutex<Vec<SpeechDone>>>,
}

struct Setup {
    speech: Speech,
    total_ms: u64,
    stt_script: Vec<&'static str>,
    interim_after: Option<Duration>,
    /// How long after the end of speech the STT answers.
    stt_lag: Duration,
    llm: Vec<Reply>,
    detector: Option<f32>,
    opts: SessionOptions,
    /// Done on the session's handle at these times (ms).
    actions: Vec<(u64, Act)>,
}

#[derive(Clone)]
enum Act {
    Say(&'static str, bool),
    Generate(&'static str),
    Interrupt,
    Text(&'static str),
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            speech: vec![],
            total_ms: 10_000,
            stt_script: vec![],
            interim_after: None,
            stt_lag: ms(100),
            llm: vec![],
            detector: None,
            opts: SessionOptions::default(),
            actions: vec![],
        }
    }
}

async fn run(setup: Setup) -> Run {
    let llm = ScriptedLlm::new(setup.llm);
    let tts = WordTts::default();
    let stages = Stages {
        llm: Arc::new(llm.clone()),
        stt: Some(Arc::new(ScriptedStt {
            script: Arc::new(Mutex::new(setup.stt_script.into())),
            lag: setup.stt_lag,
            interim_after: setup.interim_after,
        })),
        tts: Some(Arc::new(tts.clone())),
        vad: Some(Arc::new(EnergyVad)),
        turn_detector: setup
            .detector
            .map(|p| Arc::new(FixedDetector(p)) as Arc<dyn TurnDetector>),
    };
    let (mic_tx, mic_rx) = mpsc::channel(8);
    let (writer, control, mut reader) = playout(RATE, 64);
    let t0 = Instant::now();
    let (handle, mut events, task) = session::start(
        stages,
        setup.opts,
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );
    // The microphone: 20 ms frames in real time.
    let speech = setup.speech.clone();
    let total = setup.total_ms;
    let mic = tokio::spawn(async move {
        let mut t = 0;
        while t < total {
            let loud = speech.iter().any(|&(s, e)| t >= s && t < e);
            let frame = AudioFrame::new(vec![if loud { 8000i16 } else { 0 }; 320], RATE, 1);
            tokio::time::sleep_until(t0 + ms(t + 20)).await;
            if mic_tx.send(frame).await.is_err() {
                return;
            }
            t += 20;
        }
    });
    let speeches = Arc::new(Mutex::new(Vec::new()));
    let actor = {
        let handle = handle.clone();
        let speeches = speeches.clone();
        let actions = setup.actions.clone();
        tokio::spawn(async move {
            let mut waits = Vec::new();
            for (at, act) in actions {
                tokio::time::sleep_until(t0 + ms(at)).await;
                let speech = match act {
                    Act::Say(text, allow) => handle.say(text, allow).await.ok(),
                    Act::Generate(instructions) => handle.generate_reply(instructions).await.ok(),
                    Act::Interrupt => {
                        let _ = handle.interrupt().await;
                        None
                    }
                    Act::Text(text) => {
                        let _ = handle.user_text(text).await;
                        None
                    }
                };
                if let Some(speech) = speech {
                    let speeches = speeches.clone();
                    waits.push(tokio::spawn(async move {
                        if let Ok(done) = speech.wait().await {
                            speeches.lock().unwrap().push(done);
                        }
                    }));
                }
            }
            drop(handle);
            for w in waits {
                let _ = w.await;
            }
        })
    };
    // The speaker: plays each frame for its duration.
    let sink = tokio::spawn(async move {
        while let Some(p) = reader.recv().await {
            if let Playout::Frame(f) = p {
                tokio::time::sleep(f.duration()).await;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = t0 + ms(setup.total_ms);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(e) => log.push((Instant::now(), e)),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let chat = handle.history().await.expect("session alive");
    drop(handle);
    actor.abort();
    let _ = actor.await;
    mic.abort();
    let _ = mic.await;
    tokio::time::timeout(ms(1000), task)
        .await
        .expect("session ends when its handles drop")
        .expect("session task did not panic");
    while events.recv().await.is_some() {}
    tokio::time::timeout(ms(1000), sink)
        .await
        .expect("sink ends when the session is gone")
        .expect("sink did not panic");
    Run {
        llm,
        tts,
        events: log,
        chat,
        t0,
        speeches,
    }
}

impl Run {
    fn at(&self, i: Instant) -> u64 {
        (i - self.t0).as_millis() as u64
    }
    fn request_times(&self) -> Vec<u64> {
        self.llm
            .requests()
            .iter()
            .map(|(t, _)| self.at(*t))
            .collect()
    }
    fn assistant_messages(&self) -> Vec<ChatMessage> {
        self.chat
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .cloned()
            .collect()
    }
    /// Every `AgentSpoke`: (reply, text, interrupted).
    fn spoken(&self) -> Vec<(u64, String, bool)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEvent::AgentSpoke {
                    reply,
                    text,
                    interrupted,
                } => Some((*reply, text.clone(), *interrupted)),
                _ => None,
            })
            .collect()
    }
    /// TTS segments: (ms, text).
    fn segments(&self) -> Vec<(u64, String)> {
        self.tts
            .segments
            .lock()
            .unwrap()
            .iter()
            .map(|(t, s)| (self.at(*t), s.clone()))
            .collect()
    }
    /// The history without the system message, one line each.
    fn history(&self) -> Vec<String> {
        self.chat
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(describe)
            .collect()
    }
    fn states(&self) -> Vec<AgentState> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEvent::AgentState(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

fn describe(m: &ChatMessage) -> String {
    match m.role {
        Role::Tool => format!(
            "tool {}: {}",
            m.tool_call_id.as_deref().unwrap_or("?"),
            m.content
        ),
        Role::Assistant if !m.tool_calls.is_empty() => format!(
            "calls {:?} {:?}",
            m.tool_calls
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            m.content
        ),
        Role::Assistant => format!(
            "assistant: {}{}",
            m.content,
            if m.interrupted { " [cut]" } else { "" }
        ),
        Role::User => format!("user: {}", m.content),
        Role::System => format!("system: {}", m.content),
    }
}

/// Every tool call answered by the tool messages right after it, and no tool
/// message without its call: what Moonshot's API checks.
fn calls_answered(messages: &[ChatMessage]) -> bool {
    let mut open: Vec<&str> = Vec::new();
    for m in messages {
        if m.role == Role::Tool {
            let Some(id) = m.tool_call_id.as_deref() else {
                return false;
            };
            let Some(i) = open.iter().position(|o| *o == id) else {
                return false;
            };
            open.remove(i);
        } else {
            if !open.is_empty() {
                return false;
            }
            open = m.tool_calls.iter().map(|c| c.id.as_str()).collect();
        }
    }
    open.is_empty()
}

/// A tool that takes `delay` (or until cancelled), optionally saying
/// something first; it logs when it starts, finishes and is cancelled.
#[derive(Clone)]
struct SlowTool {
    name: &'static str,
    delay: Duration,
    say: Option<&'static str>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl SlowTool {
    fn new(name: &'static str, delay_ms: u64) -> Self {
        Self {
            name,
            delay: ms(delay_ms),
            say: None,
            log: Default::default(),
        }
    }
    fn saying(mut self, text: &'static str) -> Self {
        self.say = Some(text);
        self
    }
    fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }
}

#[async_trait]
impl Tool for SlowTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            description: "takes its time".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        }
    }
    async fn call(
        &self,
        ctx: ToolContext,
        _args: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let note = |e: String| self.log.lock().unwrap().push((Instant::now(), e));
        note(format!("{} started", self.name));
        // Like a tool whose work goes on in a task of its own: the token is
        // how it hears of the cancellation (the call's future is dropped).
        let (token, log, name) = (ctx.cancellation().clone(), self.log.clone(), self.name);
        tokio::spawn(async move {
            token.cancelled().await;
            log.lock()
                .unwrap()
                .push((Instant::now(), format!("{name} cancelled")));
        });
        if let Some(text) = self.say {
            let speech = ctx.session().say(text, true).await?;
            let done = speech.wait().await?;
            note(format!("{} heard {:?}", self.name, done.heard));
        }
        tokio::time::sleep(self.delay).await;
        note(format!("{} finished", self.name));
        Ok(format!("{} done", self.name).into())
    }
}

/// Waits (a second at most) for the runtime's live tasks to be back at
/// `before`: spawned stage tasks notice their channels closed within a few
/// polls.
async fn tasks_return_to(metrics: &tokio::runtime::RuntimeMetrics, before: usize) {
    for _ in 0..100 {
        if metrics.num_alive_tasks() == before {
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}

// ------------------------------------------------------------ tests

#[tokio::test(start_paused = true)]
async fn llm_request_leaves_exactly_min_delay_after_speech_ends() {
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 6000,
        stt_script: vec!["what time is it"],
        llm: vec![Reply::Text("It is noon.")],
        ..Default::default()
    })
    .await;
    // Speech ends at 2000 ms (the VAD's 20 ms frames); min delay 500 ms.
    assert_eq!(r.request_times(), vec![2500]);
    let (_, req) = &r.llm.requests()[0];
    assert_eq!(
        req.messages.last().map(|m| m.content.as_str()),
        Some("what time is it")
    );
    assert_eq!(
        r.states(),
        vec![
            AgentState::Listening,
            AgentState::Thinking,
            AgentState::Speaking,
            AgentState::Listening,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn unfinished_turn_waits_max_delay() {
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 8000,
        stt_script: vec!["I would like to"],
        detector: Some(0.05),
        ..Default::default()
    })
    .await;
    assert_eq!(r.request_times(), vec![5000]);
}

#[tokio::test(start_paused = true)]
async fn resumed_speech_cancels_the_pending_commit() {
    let r = run(Setup {
        // 400 ms pause: the VAD ends speech at 2300, a commit would be due at
        // 2500, but the user speaks again at 2400.
        speech: vec![(1000, 2000), (2400, 3000)],
        total_ms: 8000,
        stt_script: vec!["book a table", "for two"],
        ..Default::default()
    })
    .await;
    let times = r.request_times();
    assert!(
        !times.iter().any(|&t| t < 3500),
        "an LLM request left before the turn was complete: {times:?}"
    );
    assert_eq!(times, vec![3500]);
    let (_, req) = &r.llm.requests()[0];
    assert_eq!(
        req.messages.last().map(|m| m.content.as_str()),
        Some("book a table for two")
    );
}

#[tokio::test(start_paused = true)]
async fn first_sentence_reaches_the_tts_before_the_reply_is_generated() {
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 12_000,
        stt_script: vec!["tell me about the weather"],
        llm: vec![Reply::Text(
            "The weather today is sunny and warm. Later this evening it will rain a little. Bring an umbrella.",
        )],
        ..Default::default()
    })
    .await;
    let segments = r.tts.segments.lock().unwrap().clone();
    assert_eq!(segments.len(), 3, "{segments:?}");
    assert_eq!(segments[0].1, "The weather today is sunny and warm.");
    // 7 tokens at 10 ms ("warm. " carries the space that ends the
    // sentence): the first sentence is out 70 ms after the request, long
    // before the last of the 18 tokens.
    let req = r.request_times()[0];
    assert_eq!(r.at(segments[0].0), req + 70);
    let metrics = r
        .events
        .iter()
        .find_map(|(_, e)| match e {
            SessionEvent::Metrics(m) => Some(m.clone()),
            _ => None,
        })
        .expect("metrics");
    assert_eq!(metrics.end_of_utterance_delay, Some(ms(500)));
    assert_eq!(metrics.transcription_delay, Some(ms(400)));
    assert_eq!(metrics.llm_ttft, Some(ms(10)));
    assert_eq!(metrics.tts_ttfb, Some(ms(50)));
    assert_eq!(metrics.end_to_end, Some(ms(500 + 70 + 50)));
    assert!(metrics.sentence_to_tts.iter().all(|d| d.is_zero()));
}

#[tokio::test(start_paused = true)]
async fn interruption_keeps_only_the_played_text_in_history() {
    let reply = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen fifteen sixteen.";
    let r = run(Setup {
        speech: vec![(1000, 2000), (4000, 5000)],
        total_ms: 12_000,
        stt_script: vec!["count for me", "stop please"],
        interim_after: Some(ms(300)),
        llm: vec![Reply::Text(reply), Reply::Text("Okay, stopping.")],
        ..Default::default()
    })
    .await;
    let assistant = r.assistant_messages();
    assert_eq!(assistant.len(), 2, "{:?}", r.chat.messages);
    let cut = &assistant[0];
    assert!(cut.interrupted);
    // Audio starts at 2710 (500 + 16 tokens of 10 ms + 50 after speech end,
    // the reply being one sentence); 200 ms a word;
    // the user's speech is voiced for 500 ms at 4500 and its first word
    // arrives at 4300 → paused at 4500, confirmed right away. About
    // (4500 - 2710) / 200 ≈ 9 words were played.
    let words = cut.content.split_whitespace().count();
    assert!(
        (8..=10).contains(&words),
        "played {words} words: {:?}",
        cut.content
    );
    assert!(reply.starts_with(&cut.content), "{:?}", cut.content);
    assert!(!assistant[1].interrupted);
    let spoke = r.spoken().into_iter().next().map(|(_, t, i)| (t, i));
    assert_eq!(spoke, Some((cut.content.clone(), true)));
    // The user's interrupting words became the next turn.
    let users: Vec<_> = r
        .chat
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(users, vec!["count for me", "stop please"]);
}

#[tokio::test(start_paused = true)]
async fn false_interruption_resumes_playback() {
    let reply = "One two three four five six seven eight nine ten eleven twelve.";
    let r = run(Setup {
        // A cough-like 600 ms noise during playback; the STT finds no words.
        speech: vec![(1000, 2000), (3500, 4100)],
        total_ms: 14_000,
        stt_script: vec!["count for me", ""],
        llm: vec![Reply::Text(reply)],
        ..Default::default()
    })
    .await;
    let assistant = r.assistant_messages();
    assert_eq!(assistant.len(), 1);
    assert!(!assistant[0].interrupted);
    assert_eq!(assistant[0].content, reply);
    let states = r.states();
    // speaking → listening (paused) → speaking (resumed) → listening.
    assert_eq!(
        states,
        vec![
            AgentState::Listening,
            AgentState::Thinking,
            AgentState::Speaking,
            AgentState::Listening,
            AgentState::Speaking,
            AgentState::Listening,
        ]
    );
    assert_eq!(r.request_times().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn tool_loop_stops_at_max_steps() {
    let runs = Arc::new(AtomicUsize::new(0));
    let agent = Agent::new("").tool(Lookup(runs.clone()));
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 6000,
        stt_script: vec!["look it up"],
        llm: vec![Reply::ToolCall; 10],
        opts: SessionOptions {
            agent,
            max_tool_steps: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(r.request_times().len(), 4);
    // Each later request carries the previous calls and their results.
    let (_, last) = r.llm.requests().last().cloned().expect("requests");
    let results = last
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool && m.content == "found")
        .count();
    assert_eq!(results, 3);
    assert_eq!(last.tools.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn llm_failure_is_survived_and_the_user_is_told() {
    let r = run(Setup {
        speech: vec![(1000, 2000), (5000, 6000)],
        total_ms: 12_000,
        stt_script: vec!["hello", "hello again"],
        llm: vec![Reply::Fail, Reply::Text("Hi there, I am back.")],
        ..Default::default()
    })
    .await;
    assert!(r.events.iter().any(|(_, e)| matches!(
        e,
        SessionEvent::Error { stage: "llm", error } if error.kind == ErrorKind::Server
    )));
    let segments = r.tts.segments.lock().unwrap().clone();
    let apology = SessionOptions::default().error_message;
    assert_eq!(segments[0].1, apology);
    // What the user heard is what the transcript and the history say.
    assert!(r.events.iter().any(|(_, e)| matches!(
        e,
        SessionEvent::AgentSpoke { reply: 1, text, interrupted: false } if *text == apology
    )));
    assert_eq!(r.assistant_messages()[0].content, apology);
    assert_eq!(r.request_times(), vec![2500, 6500]);
    let assistant = r.assistant_messages();
    assert_eq!(
        assistant.last().map(|m| m.content.as_str()),
        Some("Hi there, I am back.")
    );
}

#[tokio::test]
async fn no_task_of_the_session_outlives_it() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let llm = ScriptedLlm::new(vec![Reply::Text(
        "A long answer that will still be playing when the session is dropped. It goes on and on.",
    )]);
    let (mic_tx, mic_rx) = mpsc::channel(8);
    let (writer, control, mut reader) = playout(RATE, 64);
    let (handle, mut events, task) = session::start(
        Stages {
            llm: Arc::new(llm.clone()),
            stt: Some(Arc::new(ScriptedStt {
                script: Default::default(),
                lag: ms(10),
                interim_after: None,
            })),
            tts: Some(Arc::new(WordTts::default())),
            vad: Some(Arc::new(EnergyVad)),
            turn_detector: Some(Arc::new(FixedDetector(0.9))),
        },
        SessionOptions::default(),
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );
    handle.user_text("talk to me").await.expect("alive");
    // Wait until audio is flowing: reply task, TTS task, STT task, input task
    // are all alive now.
    loop {
        match reader.recv().await {
            Some(Playout::Frame(_)) => break,
            Some(_) => {}
            None => panic!("output closed early"),
        }
    }
    assert!(metrics.num_alive_tasks() >= before + 4);
    drop(handle);
    drop(mic_tx);
    tokio::time::timeout(ms(2000), task)
        .await
        .expect("session ended")
        .expect("no panic");
    while events.recv().await.is_some() {}
    drop(reader);
    tasks_return_to(&metrics, before).await;
}

#[tokio::test(start_paused = true)]
async fn typed_turn_streams_text_and_drain_waits_for_the_reply() {
    let llm = ScriptedLlm::new(vec![Reply::Text("Hello! How can I help you today?")]);
    let (handle, mut events, task) = session::start(
        Stages {
            llm: Arc::new(llm.clone()),
            stt: None,
            tts: None,
            vad: None,
            turn_detector: None,
        },
        SessionOptions {
            agent: Agent::new("Be brief."),
            ..Default::default()
        },
        AudioIo {
            input: None,
            output: None,
        },
    );
    handle.user_text("hello").await.expect("alive");
    let drained = {
        let h = handle.clone();
        tokio::spawn(async move { h.drain().await })
    };
    let mut deltas = Vec::new();
    let mut spoke = None;
    while let Some(e) = events.recv().await {
        match e {
            SessionEvent::AgentText { delta, .. } => deltas.push(delta),
            SessionEvent::AgentSpoke { text, .. } => spoke = Some(text),
            _ => {}
        }
    }
    assert!(deltas.len() > 3, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), "Hello! How can I help you today?");
    assert_eq!(spoke.as_deref(), Some("Hello! How can I help you today?"));
    drained.await.expect("join").expect("drained");
    task.await.expect("no panic");
    let (_, req) = &llm.requests()[0];
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.messages[0].content, "Be brief.");
}

/// A stage with a bug: panics when asked for a completion.
struct PanickingLlm;

#[async_trait]
impl Llm for PanickingLlm {
    async fn chat(&self, _request: LlmRequest) -> Result<LlmStream, StageError> {
        panic!("bug in an LLM stage");
    }
}

/// Panics on the first loud frame.
struct PanickingVad;

impl VadModel for PanickingVad {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    fn frame_len(&self) -> usize {
        320
    }
    fn score(&mut self, frame: &[i16]) -> f32 {
        assert!(frame.iter().all(|&s| s == 0), "bug in a VAD stage");
        0.0
    }
    fn reset(&mut self) {}
}

impl VadFactory for PanickingVad {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(PanickingVad))
    }
}

/// A panic in a child task (the reply's LLM call, the input task's VAD) ends
/// the session as a panic on its own task, with every child stopped, instead
/// of leaving a session stuck thinking or deaf.
#[tokio::test]
async fn a_panicking_stage_ends_the_session_as_a_panic() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for (llm, vad) in [
        (
            Arc::new(PanickingLlm) as Arc<dyn Llm>,
            Arc::new(EnergyVad) as Arc<dyn VadFactory>,
        ),
        (
            Arc::new(ScriptedLlm::new(vec![])) as Arc<dyn Llm>,
            Arc::new(PanickingVad) as Arc<dyn VadFactory>,
        ),
    ] {
        let (mic_tx, mic_rx) = mpsc::channel(8);
        let (writer, control, _reader) = playout(RATE, 64);
        let (handle, _events, task) = session::start(
            Stages {
                llm,
                stt: Some(Arc::new(ScriptedStt {
                    script: Default::default(),
                    lag: ms(10),
                    interim_after: None,
                })),
                tts: Some(Arc::new(WordTts::default())),
                vad: Some(vad),
                turn_detector: None,
            },
            SessionOptions::default(),
            AudioIo {
                input: Some(mic_rx),
                output: Some((writer, control)),
            },
        );
        handle.user_text("hello").await.expect("alive");
        mic_tx
            .send(AudioFrame::new(vec![8000i16; 320], RATE, 1))
            .await
            .expect("input open");
        let ended = tokio::time::timeout(ms(2000), task)
            .await
            .expect("the session ends although a handle is still held");
        assert!(ended.is_err_and(|e| e.is_panic()));
        drop(handle);
    }
    tasks_return_to(&metrics, before).await;
}

/// A slow STT: the words of speech over the agent arrive only after the
/// endpointing delay, so the interruption and the new turn are decided at the
/// same moment. The interrupted reply still ends first, with what was heard of
/// it, and the history keeps the order assistant → user.
#[tokio::test(start_paused = true)]
async fn a_turn_committed_over_a_paused_reply_records_what_was_heard_first() {
    let reply = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen fifteen sixteen.";
    let r = run(Setup {
        speech: vec![(1000, 2000), (4000, 5000)],
        total_ms: 12_000,
        stt_script: vec!["count for me", "stop please"],
        stt_lag: ms(700),
        llm: vec![Reply::Text(reply), Reply::Text("Okay, stopping.")],
        ..Default::default()
    })
    .await;
    let spoke = r.spoken();
    assert_eq!(spoke.len(), 2, "{spoke:?}");
    let (first, heard, interrupted) = &spoke[0];
    assert_eq!(*first, 1);
    assert!(*interrupted);
    assert!(
        !heard.is_empty() && reply.starts_with(heard.as_str()) && heard.len() < reply.len(),
        "{heard:?}"
    );
    let roles: Vec<(Role, String)> = r
        .chat
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| (m.role, m.content.clone()))
        .collect();
    assert_eq!(
        roles,
        vec![
            (Role::User, "count for me".to_owned()),
            (Role::Assistant, heard.clone()),
            (Role::User, "stop please".to_owned()),
            (Role::Assistant, "Okay, stopping.".to_owned()),
        ]
    );
}

// ------------------------------------------------------------ agents and tools

/// One spoken question answered through tools (both at once) in a second LLM
/// request.
fn tool_question(agent: Agent, calls: Reply, total_ms: u64) -> Setup {
    Setup {
        speech: vec![(1000, 2000)],
        total_ms,
        stt_script: vec!["is a table free tonight"],
        llm: vec![calls, Reply::Text("Yes, at seven.")],
        opts: SessionOptions {
            agent,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_calls_of_one_step_run_concurrently_and_results_follow_their_calls() {
    let a = SlowTool::new("availability", 1000);
    let b = SlowTool::new("weather", 1000);
    let agent = Agent::new("You book tables.")
        .tool(a.clone())
        .tool(b.clone());
    let r = run(tool_question(
        agent,
        Reply::Calls("", vec![("availability", "{}"), ("weather", "{}")]),
        8000,
    ))
    .await;
    let times = r.request_times();
    assert_eq!(times.len(), 2, "{times:?}");
    // Both take a second; one after the other they would take two.
    let gap = times[1] - times[0];
    assert!(
        (1000..1100).contains(&gap),
        "second request {gap} ms after the first"
    );
    let (_, second) = r.llm.requests()[1].clone();
    assert!(calls_answered(&second.messages));
    assert_eq!(
        r.history(),
        vec![
            "user: is a table free tonight".to_string(),
            "calls [\"functions.availability:0\", \"functions.weather:1\"] \"\"".into(),
            "tool functions.availability:0: availability done".into(),
            "tool functions.weather:1: weather done".into(),
            "assistant: Yes, at seven.".into(),
        ]
    );
    assert!(r.events.iter().any(|(_, e)| matches!(e,
        SessionEvent::ToolResult { call_id, output, .. }
            if call_id == "functions.weather:1" && output == "weather done")));
}

#[tokio::test(start_paused = true)]
async fn a_tool_that_times_out_is_told_so_and_cancelled() {
    let slow = SlowTool::new("availability", 60_000);
    let mut setup = tool_question(
        Agent::new("").tool(slow.clone()),
        Reply::Calls("", vec![("availability", "{}")]),
        8000,
    );
    setup.opts.tools.timeout = ms(1500);
    let r = run(setup).await;
    let times = r.request_times();
    assert_eq!(times.len(), 2, "{times:?}");
    assert!((1500..1600).contains(&(times[1] - times[0])));
    let history = r.history();
    assert_eq!(
        history[2],
        "tool functions.availability:0: error: the tool did not finish within 1.5 s"
    );
    assert_eq!(history[3], "assistant: Yes, at seven.");
    assert_eq!(
        slow.log(),
        vec!["availability started", "availability cancelled"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_interruption_cancels_running_tools_and_every_call_keeps_an_answer() {
    let slow = SlowTool::new("availability", 20_000);
    let fast = SlowTool::new("weather", 10);
    let agent = Agent::new("").tool(slow.clone()).tool(fast.clone());
    let r = run(Setup {
        // The user talks over the tool's wait: long enough, with words.
        speech: vec![(1000, 2000), (5000, 6000)],
        total_ms: 12_000,
        stt_script: vec!["is a table free tonight", "never mind"],
        llm: vec![
            Reply::Calls(
                "Let me check that. ",
                vec![("availability", "{}"), ("weather", "{}")],
            ),
            Reply::Text("Okay."),
        ],
        opts: SessionOptions {
            agent,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    assert_eq!(
        slow.log(),
        vec!["availability started", "availability cancelled"]
    );
    let history = r.history();
    assert_eq!(
        history,
        vec![
            "user: is a table free tonight".to_string(),
            "calls [\"functions.availability:0\", \"functions.weather:1\"] \"Let me check that.\""
                .into(),
            "tool functions.availability:0: cancelled: the user interrupted before this tool finished"
                .into(),
            "tool functions.weather:1: weather done".into(),
            "user: never mind".into(),
            "assistant: Okay.".into(),
        ]
    );
    // The request answering the new turn carries a valid history.
    let (_, last) = r.llm.requests().last().cloned().expect("requests");
    assert!(calls_answered(&last.messages));
    assert_eq!(
        r.llm.requests().len(),
        2,
        "the cancelled step never asked again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tool_says_something_while_it_works_and_it_is_heard_before_its_result() {
    let lookup = SlowTool::new("availability", 3000).saying("One moment while I look.");
    let r = run(tool_question(
        Agent::new("").tool(lookup.clone()),
        Reply::Calls("", vec![("availability", "{}")]),
        10_000,
    ))
    .await;
    let segments = r.segments();
    let said = segments
        .iter()
        .find(|(_, s)| s == "One moment while I look.")
        .map(|(t, _)| *t)
        .expect("the say went to the TTS");
    let times = r.request_times();
    assert!(said < times[0] + 100, "spoken at once: {said} ms");
    assert_eq!(
        lookup.log(),
        vec![
            "availability started",
            "availability heard \"One moment while I look.\"",
            "availability finished"
        ],
        "the tool's wait ended when the words were played"
    );
    assert!(times[1] > said + 3000, "the result came after: {times:?}");
    let history = r.history();
    assert_eq!(
        &history[1..],
        &[
            "calls [\"functions.availability:0\"] \"\"".to_string(),
            "tool functions.availability:0: availability done".into(),
            "assistant: One moment while I look.".into(),
            "assistant: Yes, at seven.".into(),
        ]
    );
    let (_, second) = r.llm.requests()[1].clone();
    assert_eq!(
        second.messages.last().map(|m| m.content.as_str()),
        Some("One moment while I look."),
        "the next request knows what was said"
    );
    assert!(
        r.spoken()
            .iter()
            .any(|(_, t, _)| t == "One moment while I look. Yes, at seven."),
        "{:?}",
        r.spoken()
    );
}

#[tokio::test(start_paused = true)]
async fn a_tool_hands_over_and_the_next_agent_answers_with_its_instructions_and_tools() {
    let specialist = Agent::new("You are the sommelier.")
        .named("sommelier")
        .tool(SlowTool::new("pairing", 10));
    let host = Agent::new("You are the host.").named("host").tool(tool(
        "ask_sommelier",
        "Hand over to the wine expert",
        move |_ctx: ToolContext, _: NoArgs| {
            let next = specialist.clone();
            async move { Ok(next) }
        },
    ));
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 8000,
        stt_script: vec!["which wine goes with fish"],
        llm: vec![
            Reply::Calls("", vec![("ask_sommelier", "{}")]),
            Reply::Text("A white, such as a Chablis."),
        ],
        opts: SessionOptions {
            agent: host,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let requests = r.llm.requests();
    assert_eq!(requests.len(), 2);
    let (_, first) = &requests[0];
    assert_eq!(first.messages[0].content, "You are the host.");
    assert_eq!(
        first
            .tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["ask_sommelier"]
    );
    let (_, second) = &requests[1];
    assert_eq!(second.messages[0].content, "You are the sommelier.");
    assert_eq!(
        second
            .tools
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["pairing"]
    );
    assert!(calls_answered(&second.messages));
    assert_eq!(
        r.history(),
        vec![
            "user: which wine goes with fish".to_string(),
            "calls [\"functions.ask_sommelier:0\"] \"\"".into(),
            "tool functions.ask_sommelier:0: Transferred to sommelier.".into(),
            "assistant: A white, such as a Chablis.".into(),
        ]
    );
    assert_eq!(r.chat.messages[0].content, "You are the sommelier.");
    assert!(r.events.iter().any(|(_, e)| matches!(e,
        SessionEvent::AgentChanged { agent } if agent == "sommelier")));
}

#[tokio::test(start_paused = true)]
async fn on_enter_greets_before_the_user_speaks_and_the_greeting_is_kept() {
    let agent = Agent::new("You are the host.").on_enter(|ctx| async move {
        let _ = ctx.session().say("Welcome to Luigi's!", true).await;
    });
    let r = run(Setup {
        speech: vec![(3000, 4000)],
        total_ms: 8000,
        stt_script: vec!["a table for two"],
        llm: vec![Reply::Text("Of course.")],
        opts: SessionOptions {
            agent,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let segments = r.segments();
    assert_eq!(segments[0].1, "Welcome to Luigi's!");
    assert!(segments[0].0 < 100, "{segments:?}");
    assert_eq!(
        r.history(),
        vec![
            "assistant: Welcome to Luigi's!".to_string(),
            "user: a table for two".into(),
            "assistant: Of course.".into(),
        ]
    );
    assert_eq!(r.llm.requests().len(), 1, "a say asks no LLM");
}

#[tokio::test(start_paused = true)]
async fn generate_reply_adds_instructions_to_that_reply_only() {
    let r = run(Setup {
        total_ms: 4000,
        llm: vec![Reply::Text("Hello Ana, welcome back.")],
        opts: SessionOptions {
            agent: Agent::new("You are the host."),
            ..Default::default()
        },
        actions: vec![(100, Act::Generate("Greet the user by name: Ana."))],
        ..Default::default()
    })
    .await;
    let (_, request) = r.llm.requests()[0].clone();
    assert_eq!(
        request.messages[0].content,
        "You are the host.\n\nGreet the user by name: Ana."
    );
    assert_eq!(r.chat.messages[0].content, "You are the host.");
    assert_eq!(r.history(), vec!["assistant: Hello Ana, welcome back."]);
    let speeches = r.speeches.lock().unwrap().clone();
    assert_eq!(speeches.len(), 1);
    assert_eq!(speeches[0].heard, "Hello Ana, welcome back.");
    assert!(!speeches[0].interrupted);
}

#[tokio::test(start_paused = true)]
async fn says_queue_in_order_and_one_that_disallows_interruptions_is_not_cut_by_speech() {
    let long = "Please listen carefully, as our menu options have changed recently.";
    let r = run(Setup {
        // The user talks over the first say, long enough to interrupt anything else.
        speech: vec![(500, 1500)],
        total_ms: 12_000,
        stt_script: vec!["hello hello"],
        opts: SessionOptions::default(),
        actions: vec![
            (0, Act::Say(long, false)),
            (10, Act::Say("Thank you.", true)),
        ],
        ..Default::default()
    })
    .await;
    let speeches = r.speeches.lock().unwrap().clone();
    assert_eq!(speeches.len(), 2, "{speeches:?}");
    assert_eq!(speeches[0].heard, long);
    assert!(!speeches[0].interrupted);
    assert_eq!(speeches[1].heard, "Thank you.");
    let texts: Vec<String> = r.segments().into_iter().map(|(_, s)| s).collect();
    assert_eq!(texts, vec![long.to_string(), "Thank you.".into()]);
    assert!(
        r.llm.requests().is_empty(),
        "words over an uninterruptible say are not a turn"
    );
}

#[tokio::test(start_paused = true)]
async fn interrupt_cuts_the_reply_in_progress_and_drops_the_queue() {
    let long = "One two three four five six seven eight nine ten eleven twelve.";
    let r = run(Setup {
        total_ms: 8000,
        actions: vec![
            (0, Act::Say(long, false)),
            (10, Act::Say("Never heard.", true)),
            (1000, Act::Interrupt),
        ],
        ..Default::default()
    })
    .await;
    let speeches = r.speeches.lock().unwrap().clone();
    assert_eq!(speeches.len(), 2);
    let cut = speeches
        .iter()
        .find(|s| !s.heard.is_empty())
        .expect("the first");
    assert!(cut.interrupted && long.starts_with(&cut.heard) && cut.heard.len() < long.len());
    assert!(speeches.iter().any(|s| s.heard.is_empty() && s.interrupted));
    assert_eq!(r.history(), vec![format!("assistant: {} [cut]", cut.heard)]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_tool_is_an_error_result_and_the_session_goes_on() {
    let agent = Agent::new("").tool(tool(
        "buggy",
        "always panics",
        |_ctx: ToolContext, _: NoArgs| async move {
            if true {
                panic!("bug in a tool");
            }
            Ok("never")
        },
    ));
    let r = run(tool_question(
        agent,
        Reply::Calls("", vec![("buggy", "{}")]),
        6000,
    ))
    .await;
    assert_eq!(
        r.history()[2],
        "tool functions.buggy:0: error: the tool failed unexpectedly"
    );
    assert_eq!(r.history()[3], "assistant: Yes, at seven.");
}

#[tokio::test(start_paused = true)]
async fn calls_beyond_the_cap_are_answered_unrun_and_long_results_are_cut() {
    let big = tool(
        "big",
        "a huge result",
        |_ctx: ToolContext, _: NoArgs| async move { Ok("x".repeat(50)) },
    );
    let mut setup = tool_question(
        Agent::new("").tool(big),
        Reply::Calls("", vec![("big", "{}"), ("big", "{}"), ("big", "{}")]),
        6000,
    );
    setup.opts.tools.max_calls_per_step = 2;
    setup.opts.tools.max_result_chars = 10;
    let r = run(setup).await;
    let history = r.history();
    assert_eq!(
        history[2],
        "tool functions.big:0: xxxxxxxxxx … [40 more bytes cut]"
    );
    assert_eq!(
        history[3],
        "tool functions.big:1: xxxxxxxxxx … [40 more bytes cut]"
    );
    assert_eq!(
        history[4],
        "tool functions.big:2: error: not run: at most 2 tool calls are run per step"
    );
}

#[tokio::test(start_paused = true)]
async fn the_history_keeps_to_its_limit() {
    let r = run(Setup {
        total_ms: 6000,
        llm: vec![
            Reply::Text("One."),
            Reply::Text("Two."),
            Reply::Text("Three."),
        ],
        opts: SessionOptions {
            agent: Agent::new("Be brief."),
            history: HistoryLimit {
                max_messages: Some(3),
                max_chars: None,
            },
            ..Default::default()
        },
        actions: vec![
            (0, Act::Text("a")),
            (1500, Act::Text("b")),
            (3000, Act::Text("c")),
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(r.chat.messages[0].content, "Be brief.");
    assert_eq!(r.history(), vec!["user: c", "assistant: Three."]);
    // The last request carried what was kept.
    let (_, last) = r.llm.requests().last().cloned().expect("requests");
    assert_eq!(
        last.messages.iter().map(describe).collect::<Vec<_>>(),
        vec!["system: Be brief.", "assistant: Two.", "user: c"],
        "a request never carries more than the limit"
    );
}

#[tokio::test(start_paused = true)]
async fn what_the_user_hears_is_reported_as_the_audio_plays() {
    let reply = "One two three four five. Six seven eight nine ten.";
    let r = run(Setup {
        speech: vec![(1000, 2000)],
        total_ms: 10_000,
        stt_script: vec!["count for me"],
        llm: vec![Reply::Text(reply)],
        ..Default::default()
    })
    .await;
    let heard: Vec<(u64, String)> = r
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            SessionEvent::AgentHeard { delta, .. } => Some((r.at(*t), delta.clone())),
            _ => None,
        })
        .collect();
    let text: String = heard.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(text.trim(), reply, "{heard:?}");
    // Paced by the audio (200 ms a word), not all at once when generated.
    let (first, last) = (heard[0].0, heard[heard.len() - 1].0);
    assert!(last - first >= 1500, "{heard:?}");
    let generated = r
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SessionEvent::AgentText { .. }))
        .map(|(t, _)| r.at(*t))
        .max()
        .unwrap_or(0);
    assert!(last > generated + 1000, "heard long after it was generated");
}
