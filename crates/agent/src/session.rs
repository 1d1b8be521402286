//! The session actor: one per conversation. A private task owns the turn
//! machine, the chat context, the stage streams and the reply in progress; a
//! cloneable [`SessionHandle`] talks to it over a bounded channel.
//!
//! Tasks and who stops them:
//! - the session task: ends when every handle is dropped (cancelling
//!   everything at once), or after [`SessionHandle::drain`] once the current
//!   reply is over; its `JoinHandle` is returned by [`start`];
//! - the audio input task (VAD, STT feeding): owned by the session task,
//!   aborted when it ends; it also ends when the audio source closes;
//! - the STT stream's task: ends when the input task drops its sender;
//! - the reply task: aborted on interruption or when the session ends;
//! - end-of-turn predictions: aborted when stale or when the session ends.
//!
//! A panic in a child task (a stage implementation's bug) ends the session:
//! the children are stopped, then the panic is resumed on the session task, so
//! whoever owns it (a worker job) sees a panicked task and fails that one job.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::audio::{AudioFrame, FrameConverter, duration_of};
use crate::chat::{ChatContext, ChatMessage, ToolSet};
use crate::clock::Clock;
use crate::playout::{PlaybackEvent, PlayoutControl, PlayoutWriter};
use crate::reply::{self, ReplyEvent, ReplyJob};
use crate::stage::{
    JobContext, Llm, StageError, Stt, SttEvent, SttInput, Tts, TurnDetector, TurnInput, Usage,
    VadFactory,
};
use crate::turn::{Action, AgentState, Input, ReplyId, TurnMachine, TurnOptions, TurnTiming};
use crate::vad::{VadEvent, VadOptions, VoiceDetector};

/// The engines a session runs on.
#[derive(Clone)]
pub struct Stages {
    pub llm: Arc<dyn Llm>,
    /// `None`: text only (typed turns).
    pub stt: Option<Arc<dyn Stt>>,
    /// `None`: replies are text only.
    pub tts: Option<Arc<dyn Tts>>,
    /// Needed with audio input.
    pub vad: Option<Arc<dyn VadFactory>>,
    pub turn_detector: Option<Arc<dyn TurnDetector>>,
    pub tools: ToolSet,
}

#[derive(Clone)]
pub struct SessionOptions {
    pub instructions: String,
    pub turn: TurnOptions,
    pub vad: VadOptions,
    /// Tool-call rounds per reply before the reply is cut off.
    pub max_tool_steps: usize,
    pub job: JobContext,
    /// Spoken when the LLM fails before saying anything; empty: say nothing.
    pub error_message: String,
    pub clock: Clock,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            instructions: String::new(),
            turn: TurnOptions::default(),
            vad: VadOptions::default(),
            max_tool_steps: 3,
            job: JobContext::default(),
            error_message: "Sorry, I can't answer right now. Please try again in a moment."
                .to_string(),
            clock: Clock::realtime(),
        }
    }
}

/// The session's audio: microphone frames in, the playout queue out.
pub struct AudioIo {
    /// Frames of any rate and channel count. The session ends its input
    /// task when this closes.
    pub input: Option<mpsc::Receiver<AudioFrame>>,
    pub output: Option<(PlayoutWriter, PlayoutControl)>,
}

/// Latency of one turn, each measured on the session clock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnMetrics {
    pub reply: ReplyId,
    /// User speech end → turn committed.
    pub end_of_utterance_delay: Option<Duration>,
    /// User speech end → final transcript.
    pub transcription_delay: Option<Duration>,
    /// Turn committed → LLM request issued.
    pub commit_to_llm_request: Option<Duration>,
    /// LLM request → first token (first step).
    pub llm_ttft: Option<Duration>,
    /// First sentence to the TTS → its first audio.
    pub tts_ttfb: Option<Duration>,
    /// Each sentence: its last LLM token → its TTS request.
    pub sentence_to_tts: Vec<Duration>,
    /// User speech end (or the typed turn) → agent audio started.
    pub end_to_end: Option<Duration>,
    pub usage: Usage,
    pub interrupted: bool,
}

#[derive(Clone, Debug)]
pub enum SessionEvent {
    AgentState(AgentState),
    UserSpeaking(bool),
    UserTranscript {
        text: String,
        is_final: bool,
    },
    /// The user's turn was committed; reply `reply` answers it.
    UserTurn {
        reply: ReplyId,
        text: String,
    },
    /// Reply text as it is generated.
    AgentText {
        reply: ReplyId,
        delta: String,
    },
    /// A reply is over: `text` is what the user heard (all of it unless
    /// interrupted), as stored in the chat.
    AgentSpoke {
        reply: ReplyId,
        text: String,
        interrupted: bool,
    },
    Metrics(TurnMetrics),
    /// A stage failed; the session goes on.
    Error {
        stage: &'static str,
        error: StageError,
    },
}

enum Command {
    UserText(String),
    ChatContext(oneshot::Sender<ChatContext>),
    Drain(oneshot::Sender<()>),
}

/// Talks to a session. The session ends when the last handle is dropped.
#[derive(Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
}

/// The session task is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session has ended")]
pub struct SessionClosed;

impl SessionHandle {
    /// A typed user turn, committed at once.
    pub async fn user_text(&self, text: impl Into<String>) -> Result<(), SessionClosed> {
        self.commands
            .send(Command::UserText(text.into()))
            .await
            .map_err(|_| SessionClosed)
    }

    pub async fn chat_context(&self) -> Result<ChatContext, SessionClosed> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ChatContext(tx))
            .await
            .map_err(|_| SessionClosed)?;
        rx.await.map_err(|_| SessionClosed)
    }

    /// Stops taking turns; resolves once the reply in progress (if any) is
    /// over and the session has ended.
    pub async fn drain(&self) -> Result<(), SessionClosed> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain(tx))
            .await
            .map_err(|_| SessionClosed)?;
        rx.await.map_err(|_| SessionClosed)
    }
}

/// Starts a session. Returns its handle, its events (bounded: read them), and
/// the task, which ends when the session does.
pub fn start(
    stages: Stages,
    options: SessionOptions,
    audio: AudioIo,
) -> (SessionHandle, mpsc::Receiver<SessionEvent>, JoinHandle<()>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (event_tx, event_rx) = mpsc::channel(256);
    let task = tokio::spawn(run(stages, options, audio, cmd_rx, event_tx));
    (SessionHandle { commands: cmd_tx }, event_rx, task)
}

/// Audio the end-of-turn detector may look at: the last 8 s at 16 kHz.
const TURN_AUDIO_RATE: u32 = 16_000;
const TURN_AUDIO_SECONDS: usize = 8;

struct TurnAudio {
    samples: VecDeque<f32>,
}

impl TurnAudio {
    fn push(&mut self, frame: &[i16]) {
        let cap = TURN_AUDIO_RATE as usize * TURN_AUDIO_SECONDS;
        self.samples
            .extend(frame.iter().map(|&s| s as f32 / 32768.0));
        let excess = self.samples.len().saturating_sub(cap);
        self.samples.drain(..excess);
    }
}

/// What the input task tells the session: a VAD event, at session time.
struct Heard {
    event: VadEvent,
    at: Instant,
}

/// A child task's panic payload, carried to the session task.
type Panic = Box<dyn Any + Send>;

/// Spawns a child of the session whose panic is reported on `panics` instead
/// of vanishing with its `JoinHandle`.
fn spawn_child(
    panics: &mpsc::Sender<Panic>,
    child: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let panics = panics.clone();
    tokio::spawn(async move {
        if let Err(payload) = AssertUnwindSafe(child).catch_unwind().await {
            // One report is enough to end the session.
            let _ = panics.try_send(payload);
        }
    })
}

struct ActiveReply {
    id: ReplyId,
    task: JoinHandle<()>,
    generation: Option<u64>,
    /// Text of the reply's final step so far.
    text: String,
    generated: Option<String>,
    playback_started: bool,
    cancelled: bool,
    timing: TurnTiming,
    metrics: TurnMetrics,
    llm_request_at: Option<Instant>,
    first_tts_request: Option<Instant>,
}

struct Actor {
    stages: Stages,
    options: SessionOptions,
    machine: TurnMachine,
    chat: ChatContext,
    events: mpsc::Sender<SessionEvent>,
    output: Option<(PlayoutWriter, PlayoutControl)>,
    reply: Option<ActiveReply>,
    /// Replies report here, tagged with their id; stale ids are ignored.
    reply_tx: mpsc::Sender<(ReplyId, ReplyEvent)>,
    eou_tx: mpsc::Sender<(u64, Result<f32, StageError>)>,
    eou_task: Option<JoinHandle<()>>,
    turn_audio: Arc<Mutex<TurnAudio>>,
    draining: Option<oneshot::Sender<()>>,
    panics: mpsc::Sender<Panic>,
}

async fn run(
    stages: Stages,
    options: SessionOptions,
    audio: AudioIo,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<SessionEvent>,
) {
    let clock = options.clock.clone();
    let (reply_tx, mut reply_rx) = mpsc::channel(64);
    let (eou_tx, mut eou_rx) = mpsc::channel(4);
    let (heard_tx, mut heard_rx) = mpsc::channel::<Heard>(64);
    let (panic_tx, mut panic_rx) = mpsc::channel::<Panic>(1);
    let turn_audio = Arc::new(Mutex::new(TurnAudio {
        samples: VecDeque::new(),
    }));

    // STT stream: the input task feeds it, this task reads its events.
    let mut stt_input = None;
    let mut stt_events = None;
    if let (Some(stt), Some(_)) = (&stages.stt, &audio.input) {
        match stt.stream(&options.job).await {
            Ok(s) => {
                stt_input = Some((s.input, stt.sample_rate()));
                stt_events = Some(s.events);
            }
            Err(error) => {
                warn!(%error, "STT failed to open; the session hears nothing");
                let _ = events
                    .send(SessionEvent::Error {
                        stage: "stt",
                        error,
                    })
                    .await;
            }
        }
    }
    let input_task = match (audio.input, &stages.vad) {
        (Some(input), Some(vad)) => match vad.create() {
            Ok(model) => Some(spawn_child(
                &panic_tx,
                listen(
                    input,
                    VoiceDetector::new(model, options.vad.clone()),
                    stt_input,
                    turn_audio.clone(),
                    heard_tx,
                    clock.clone(),
                ),
            )),
            Err(error) => {
                let _ = events
                    .send(SessionEvent::Error {
                        stage: "vad",
                        error,
                    })
                    .await;
                None
            }
        },
        (Some(_), None) => {
            warn!("audio input without a VAD: turns cannot be detected");
            None
        }
        _ => None,
    };

    let mut actor = Actor {
        machine: TurnMachine::new(options.turn.clone(), stages.turn_detector.is_some()),
        chat: ChatContext::with_instructions(&options.instructions),
        stages,
        options,
        events,
        output: audio.output,
        reply: None,
        reply_tx,
        eou_tx,
        eou_task: None,
        turn_audio,
        draining: None,
        panics: panic_tx,
    };
    actor.machine.start();
    actor.apply_actions().await;

    let mut panicked = None;
    loop {
        let deadline = actor.machine.poll_timeout();
        let has_output = actor.output.is_some();
        tokio::select! {
            command = commands.recv() => match command {
                None => break, // every handle is gone
                Some(Command::UserText(text)) => {
                    let now = clock.now();
                    actor.machine.handle_input(now, Input::UserText { text });
                }
                Some(Command::ChatContext(reply)) => {
                    let _ = reply.send(actor.chat.clone());
                }
                Some(Command::Drain(done)) => {
                    actor.draining = Some(done);
                    if actor.reply.is_none() {
                        break;
                    }
                }
            },
            Some(heard) = heard_rx.recv() => actor.on_heard(heard),
            event = recv_opt(&mut stt_events) => match event {
                Some(event) => actor.on_stt(clock.now(), event).await,
                None => {
                    warn!("STT stream closed");
                    stt_events = None;
                }
            },
            Some((id, event)) = reply_rx.recv() => actor.on_reply(id, event).await,
            Some((seq, result)) = eou_rx.recv() => actor.on_end_of_turn(clock.now(), seq, result).await,
            event = playback_event(&actor.output), if has_output => actor.on_playback(clock.now(), event).await,
            _ = sleep_opt(&clock, deadline) => actor.machine.handle_timeout(clock.now()),
            Some(payload) = panic_rx.recv() => {
                error!("a stage panicked: ending the session");
                panicked = Some(payload);
                break;
            }
        }
        actor.apply_actions().await;
        if actor.draining.is_some() && actor.reply.is_none() {
            break;
        }
    }

    // Shut down: everything this session started stops here.
    if let Some(reply) = actor.reply.take() {
        reply.task.abort();
        let _ = reply.task.await;
    }
    if let Some(task) = actor.eou_task.take() {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = input_task {
        task.abort();
        let _ = task.await;
    }
    drop(stt_events);
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
    if let Some(done) = actor.draining.take() {
        let _ = done.send(());
    }
    let _ = actor
        .events
        .send(SessionEvent::AgentState(AgentState::Idle))
        .await;
    debug!("session ended");
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(clock: &Clock, deadline: Option<Instant>) {
    match deadline {
        Some(d) => clock.sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn playback_event(output: &Option<(PlayoutWriter, PlayoutControl)>) -> PlaybackEvent {
    match output {
        Some((_, control)) => control.event().await,
        None => std::future::pending().await,
    }
}

/// The audio input task: VAD, the STT feed and the end-of-turn audio buffer.
async fn listen(
    mut input: mpsc::Receiver<AudioFrame>,
    mut vad: VoiceDetector,
    stt: Option<(mpsc::Sender<SttInput>, u32)>,
    turn_audio: Arc<Mutex<TurnAudio>>,
    heard: mpsc::Sender<Heard>,
    clock: Clock,
) {
    let mut to_stt = stt.as_ref().map(|(_, rate)| FrameConverter::new(*rate));
    let mut to_turn = FrameConverter::new(TURN_AUDIO_RATE);
    // Stream time: the duration of all audio received so far.
    let mut samples_in: u64 = 0;
    let mut rate_in: u32 = 0;
    let mut elapsed_before_rate_change = Duration::ZERO;
    let mut stt_alive = stt.is_some();
    while let Some(frame) = input.recv().await {
        if frame.sample_rate == 0 || frame.samples.is_empty() {
            continue;
        }
        if frame.sample_rate != rate_in {
            elapsed_before_rate_change += duration_of(samples_in as usize, rate_in.max(1));
            samples_in = 0;
            rate_in = frame.sample_rate;
        }
        samples_in += frame.samples_per_channel() as u64;
        let position = elapsed_before_rate_change + duration_of(samples_in as usize, rate_in);
        let now = clock.now();

        if stt_alive
            && let (Some((tx, _)), Some(conv)) = (&stt, &mut to_stt)
            && tx
                .send(SttInput::Audio(conv.convert(&frame)))
                .await
                .is_err()
        {
            stt_alive = false;
        }
        let turn_frame = to_turn.convert(&frame);
        if let Ok(mut buf) = turn_audio.lock() {
            buf.push(&turn_frame.samples);
        }

        let mut found = Vec::new();
        vad.push(&frame, |e| found.push(e));
        for event in found {
            let stream_at = match event {
                VadEvent::SpeechStarted { at } | VadEvent::SpeechEnded { at } => at,
                VadEvent::SpeechProgress { .. } => position,
            };
            if stt_alive && let Some((tx, _)) = &stt {
                let hint = match event {
                    VadEvent::SpeechStarted { at } => Some(SttInput::SpeechStarted(at)),
                    VadEvent::SpeechEnded { at } => Some(SttInput::SpeechEnded(at)),
                    VadEvent::SpeechProgress { .. } => None,
                };
                if let Some(hint) = hint
                    && tx.send(hint).await.is_err()
                {
                    stt_alive = false;
                }
            }
            let at = now
                .checked_sub(position.saturating_sub(stream_at))
                .unwrap_or(now);
            if heard.send(Heard { event, at }).await.is_err() {
                return;
            }
        }
    }
}

impl Actor {
    async fn emit(&self, event: SessionEvent) {
        // Bounded: a consumer that stops reading slows the session rather
        // than growing memory. A consumer that is gone is fine.
        let _ = self.events.send(event).await;
    }

    fn on_heard(&mut self, heard: Heard) {
        let Heard { event, at } = heard;
        let input = match event {
            VadEvent::SpeechStarted { .. } => Input::SpeechStarted { at },
            VadEvent::SpeechProgress { voiced } => Input::SpeechProgress { voiced },
            VadEvent::SpeechEnded { .. } => Input::SpeechEnded { at },
        };
        let now = self.options.clock.now();
        self.machine.handle_input(now.max(at), input);
    }

    async fn on_stt(&mut self, now: Instant, event: SttEvent) {
        match event {
            SttEvent::StartOfSpeech => {}
            SttEvent::Interim(t) => {
                self.emit(SessionEvent::UserTranscript {
                    text: t.text.clone(),
                    is_final: false,
                })
                .await;
                self.machine
                    .handle_input(now, Input::Interim { text: t.text });
            }
            SttEvent::Final(t) => {
                if !t.text.trim().is_empty() {
                    self.emit(SessionEvent::UserTranscript {
                        text: t.text.clone(),
                        is_final: true,
                    })
                    .await;
                }
                self.machine
                    .handle_input(now, Input::Final { text: t.text });
            }
            SttEvent::Empty => self.machine.handle_input(now, Input::FinalEmpty),
            SttEvent::Error(error) => {
                warn!(%error, "STT error");
                self.emit(SessionEvent::Error {
                    stage: "stt",
                    error,
                })
                .await;
            }
        }
    }

    async fn on_end_of_turn(&mut self, now: Instant, seq: u64, result: Result<f32, StageError>) {
        self.eou_task = None;
        let Some(detector) = &self.stages.turn_detector else {
            return;
        };
        let threshold = detector.unlikely_threshold();
        let probability = match result {
            Ok(p) => p,
            Err(error) => {
                // Without an answer, treat the turn as finished: the user
                // is better served by a reply than by a 3 s wait.
                warn!(%error, "end-of-turn detector failed");
                self.emit(SessionEvent::Error {
                    stage: "turn_detector",
                    error,
                })
                .await;
                1.0
            }
        };
        debug!(seq, probability, "end of turn probability");
        self.machine.handle_input(
            now,
            Input::EndOfTurn {
                seq,
                probability,
                unlikely_threshold: threshold,
            },
        );
    }

    async fn apply_actions(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::AgentState(state) => self.emit(SessionEvent::AgentState(state)).await,
                Action::UserSpeaking(speaking) => {
                    self.emit(SessionEvent::UserSpeaking(speaking)).await
                }
                Action::PredictEndOfTurn { seq, transcript } => self.predict(seq, transcript),
                Action::CommitUserTurn {
                    reply,
                    text,
                    timing,
                } => self.commit(reply, text, timing).await,
                Action::PauseOutput { .. } => {
                    if let Some((_, control)) = &self.output {
                        control.pause();
                    }
                }
                Action::ResumeOutput { .. } => {
                    if let Some((_, control)) = &self.output {
                        control.resume();
                    }
                }
                Action::Interrupt { reply } => self.interrupt(reply).await,
            }
        }
    }

    fn predict(&mut self, seq: u64, transcript: String) {
        let Some(detector) = self.stages.turn_detector.clone() else {
            return;
        };
        if let Some(old) = self.eou_task.take() {
            old.abort();
        }
        let mut chat = self.chat.messages.clone();
        chat.push(ChatMessage::user(transcript));
        let audio: Arc<[f32]> = self
            .turn_audio
            .lock()
            .map(|b| b.samples.iter().copied().collect())
            .unwrap_or_else(|_| Arc::from(Vec::new()));
        let tx = self.eou_tx.clone();
        self.eou_task = Some(spawn_child(&self.panics, async move {
            let result = detector
                .end_of_turn_probability(TurnInput { chat, audio })
                .await;
            let _ = tx.send((seq, result)).await;
        }));
    }

    async fn commit(&mut self, id: ReplyId, text: String, timing: TurnTiming) {
        if self.draining.is_some() {
            debug!("draining: not answering a new turn");
            return;
        }
        if let Some(old) = &self.reply {
            // The machine only commits over a reply it is cancelling, whose
            // sink may not have reported its end yet: it ends here, with what
            // was heard of it, before the user's words.
            let heard = match (&self.output, old.generation) {
                (Some((_, control)), Some(g)) => control.played_text(g),
                _ => old.text.clone(),
            };
            self.finish_reply(heard, true).await;
        }
        info!(reply = id, user = %text, "user turn");
        self.chat.push(ChatMessage::user(text.clone()));
        self.emit(SessionEvent::UserTurn { reply: id, text }).await;
        let output = self.output.as_ref().map(|(w, c)| (w.clone(), c.begin()));
        let generation = output.as_ref().map(|(_, g)| *g);
        let job = ReplyJob {
            id,
            llm: self.stages.llm.clone(),
            tts: self.stages.tts.clone(),
            tools: self.stages.tools.clone(),
            messages: self.chat.messages.clone(),
            max_tool_steps: self.options.max_tool_steps,
            job: self.options.job.clone(),
            output,
            error_message: self.options.error_message.clone(),
            clock: self.options.clock.clone(),
            events: self.reply_tx.clone(),
        };
        let task = spawn_child(&self.panics, reply::run(job));
        // Let the reply start its LLM request before this task goes on with
        // other work: the spawned task runs next on this worker.
        tokio::task::yield_now().await;
        self.reply = Some(ActiveReply {
            id,
            task,
            generation,
            text: String::new(),
            generated: None,
            playback_started: false,
            cancelled: false,
            timing,
            metrics: TurnMetrics {
                reply: id,
                end_of_utterance_delay: timing
                    .speech_ended
                    .map(|e| timing.committed.saturating_duration_since(e)),
                transcription_delay: timing
                    .speech_ended
                    .zip(timing.transcribed)
                    .map(|(e, t)| t.saturating_duration_since(e)),
                ..Default::default()
            },
            llm_request_at: None,
            first_tts_request: None,
        });
    }

    async fn interrupt(&mut self, id: ReplyId) {
        let Some(reply) = self.reply.as_mut().filter(|r| r.id == id) else {
            return;
        };
        reply.task.abort();
        reply.cancelled = true;
        reply.metrics.interrupted = true;
        let pending = self.output.as_ref().map(|(_, control)| {
            control.clear();
            // Events the sink emitted before the clear (a Started, say)
            // decide whether a Finished is still to come.
            std::iter::from_fn(|| control.try_event()).collect::<Vec<_>>()
        });
        match pending {
            Some(pending) => {
                for event in pending {
                    self.on_playback(self.options.clock.now(), event).await;
                }
                let still_playing = self
                    .reply
                    .as_ref()
                    .is_some_and(|r| r.id == id && r.playback_started);
                if !still_playing && self.reply.as_ref().is_some_and(|r| r.id == id) {
                    self.finish_reply(String::new(), true).await;
                }
            }
            None => {
                let text = reply.text.clone();
                self.finish_reply(text, true).await;
            }
        }
    }

    async fn on_reply(&mut self, id: ReplyId, event: ReplyEvent) {
        let Some(reply) = self.reply.as_mut().filter(|r| r.id == id && !r.cancelled) else {
            return; // from a cancelled reply
        };
        match event {
            ReplyEvent::LlmRequested { at } => {
                // Metrics time the first request; tool steps follow it.
                if reply.llm_request_at.is_none() {
                    reply.llm_request_at = Some(at);
                    reply.metrics.commit_to_llm_request =
                        Some(at.saturating_duration_since(reply.timing.committed));
                }
            }
            ReplyEvent::FirstToken { at } => reply.first_token(at),
            ReplyEvent::Text(delta) => {
                reply.text.push_str(&delta);
                self.emit(SessionEvent::AgentText { reply: id, delta })
                    .await;
            }
            ReplyEvent::SentenceToTts { last_token, sent } => {
                reply.first_tts_request.get_or_insert(sent);
                reply
                    .metrics
                    .sentence_to_tts
                    .push(sent.saturating_duration_since(last_token));
            }
            ReplyEvent::FirstAudio { at } => {
                if let Some(first) = reply.first_tts_request {
                    reply.metrics.tts_ttfb = Some(at.saturating_duration_since(first));
                }
            }
            ReplyEvent::ToolStep { call, results } => {
                reply.text.clear();
                self.chat.push(call);
                for r in results {
                    self.chat.push(r);
                }
            }
            ReplyEvent::Usage(u) => {
                let m = &mut reply.metrics.usage;
                m.prompt_tokens += u.prompt_tokens;
                m.completion_tokens += u.completion_tokens;
                m.cached_tokens += u.cached_tokens;
            }
            ReplyEvent::Failed { error } => {
                // Nothing said yet: the reply speaks the apology instead, and
                // that is what the user hears, sees and the history keeps.
                let apology = reply.text.is_empty() && !self.options.error_message.is_empty();
                let said = if apology {
                    self.options.error_message.clone()
                } else {
                    reply.text.clone()
                };
                reply.generated = Some(said.clone());
                self.emit(SessionEvent::Error {
                    stage: "llm",
                    error,
                })
                .await;
                if apology {
                    let delta = said.clone();
                    self.emit(SessionEvent::AgentText { reply: id, delta })
                        .await;
                }
                if self.output.is_none() {
                    self.finish_reply(said, false).await;
                }
            }
            ReplyEvent::Generated { text } => {
                reply.generated = Some(text.clone());
                if self.output.is_none() {
                    let now = self.options.clock.now();
                    if let Some(r) = self.reply.as_mut() {
                        r.metrics.end_to_end = r
                            .timing
                            .speech_ended
                            .or(Some(r.timing.committed))
                            .map(|s| now.saturating_duration_since(s));
                    }
                    self.finish_reply(text, false).await;
                }
            }
        }
    }

    async fn on_playback(&mut self, now: Instant, event: PlaybackEvent) {
        match event {
            PlaybackEvent::Started { generation } => {
                let Some(reply) = self
                    .reply
                    .as_mut()
                    .filter(|r| r.generation == Some(generation))
                else {
                    return;
                };
                reply.playback_started = true;
                let start = reply.timing.speech_ended.unwrap_or(reply.timing.committed);
                reply.metrics.end_to_end = Some(now.saturating_duration_since(start));
                let id = reply.id;
                self.machine
                    .handle_input(now, Input::PlaybackStarted { reply: id });
            }
            PlaybackEvent::Finished {
                generation,
                text,
                interrupted,
                ..
            } => {
                let Some(reply) = self
                    .reply
                    .as_ref()
                    .filter(|r| r.generation == Some(generation))
                else {
                    return;
                };
                let heard = if interrupted || reply.cancelled {
                    text
                } else {
                    reply.generated.clone().unwrap_or(text)
                };
                let interrupted = interrupted || reply.cancelled;
                self.finish_reply(heard, interrupted).await;
            }
        }
    }

    /// The reply is over: record what the user heard and tell the machine.
    async fn finish_reply(&mut self, heard: String, interrupted: bool) {
        let Some(mut reply) = self.reply.take() else {
            return;
        };
        if !reply.task.is_finished() && interrupted {
            reply.task.abort();
        }
        let heard = heard.trim().to_string();
        if !heard.is_empty() {
            let mut message = ChatMessage::assistant(heard.clone());
            message.interrupted = interrupted;
            self.chat.push(message);
        }
        info!(reply = reply.id, interrupted, agent = %heard, "agent turn");
        reply.metrics.interrupted = interrupted;
        let m = &reply.metrics;
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        info!(
            reply = reply.id,
            end_of_utterance_ms = ms(m.end_of_utterance_delay),
            transcription_ms = ms(m.transcription_delay),
            llm_ttft_ms = ms(m.llm_ttft),
            tts_ttfb_ms = ms(m.tts_ttfb),
            end_to_end_ms = ms(m.end_to_end),
            "turn metrics"
        );
        self.emit(SessionEvent::AgentSpoke {
            reply: reply.id,
            text: heard,
            interrupted,
        })
        .await;
        self.emit(SessionEvent::Metrics(reply.metrics.clone()))
            .await;
        let now = self.options.clock.now();
        self.machine
            .handle_input(now, Input::ReplyEnded { reply: reply.id });
    }
}

impl ActiveReply {
    fn first_token(&mut self, at: Instant) {
        if self.metrics.llm_ttft.is_none()
            && let Some(req) = self.llm_request_at
        {
            self.metrics.llm_ttft = Some(at.saturating_duration_since(req));
        }
    }
}
