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
