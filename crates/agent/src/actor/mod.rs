//! The session actor's task: the one `select!` that feeds the turn machine,
//! the reply ledger and the playout, and the stages' tasks it owns (see
//! [`crate::session`] for who stops what). This file holds the loop, the
//! commands, the agent's entry and the user's turns; `replies` the reply
//! side.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::agents::Agent;
use crate::chat::{ChatContext, ChatMessage};
use crate::clock::Clock;
use crate::input::{TurnAudio, VoiceEvent, listen};
use crate::ledger::{Heard, Ledger, PartId};
use crate::playout::{PlaybackEvent, PlayoutControl, PlayoutWriter};
use crate::reply::{ReplyEvent, ReplyKind};
use crate::session::{
    AudioIo, Command, SessionEvent, SessionHandle, SessionOptions, SpeechDone, Stages,
};
use crate::stage::{JobContext, StageError, SttEvent, TurnInput};
use crate::tool::SessionContext;
use crate::turn::{Action, AgentState, Input, ReplyId, TurnMachine, TurnTiming};
use crate::vad::{VadEvent, VoiceDetector};

mod replies;

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

/// The reply in progress.
struct ActiveReply {
    task: JoinHandle<()>,
    utterance: Option<u64>,
    ledger: Ledger,
    /// Interrupted: its events are ignored, its end is awaited.
    cancelled: bool,
    /// The handle of a `say`/`generate_reply` that asked for this reply.
    done: Option<oneshot::Sender<SpeechDone>>,
    /// Tools' `say`s within it, by part, not yet played.
    waiters: Vec<(PartId, oneshot::Sender<SpeechDone>)>,
    /// The part whose text was shown last (text deltas of a new part get a
    /// space before them).
    shown_part: Option<PartId>,
}

/// A speech waiting in the turn machine's queue.
struct Queued {
    kind: ReplyKind,
    done: oneshot::Sender<SpeechDone>,
}

struct Actor {
    stages: Stages,
    options: SessionOptions,
    machine: TurnMachine,
    chat: ChatContext,
    agent: Agent,
    job: Arc<JobContext>,
    events: mpsc::Sender<SessionEvent>,
    output: Option<(PlayoutWriter, PlayoutControl)>,
    reply: Option<ActiveReply>,
    queued: HashMap<ReplyId, Queued>,
    /// Replies report here, tagged with their id; stale ids are ignored.
    reply_tx: mpsc::Sender<(ReplyId, ReplyEvent)>,
    eou_tx: mpsc::Sender<(u64, Result<f32, StageError>)>,
    eou_task: Option<JoinHandle<()>>,
    turn_audio: Arc<Mutex<TurnAudio>>,
    draining: Option<oneshot::Sender<()>>,
    panics: mpsc::Sender<Panic>,
    /// For the handles of tools and hooks (they do not keep the session alive).
    inside: mpsc::WeakSender<Command>,
    /// Running `on_enter` hooks; aborted when the session ends.
    hooks: JoinSet<()>,
    entered: bool,
}

pub(crate) async fn run(
    stages: Stages,
    options: SessionOptions,
    audio: AudioIo,
    mut commands: mpsc::Receiver<Command>,
    inside: mpsc::WeakSender<Command>,
    events: mpsc::Sender<SessionEvent>,
) {
    let clock = options.clock.clone();
    let (reply_tx, mut reply_rx) = mpsc::channel(64);
    let (eou_tx, mut eou_rx) = mpsc::channel(4);
    let (heard_tx, mut heard_rx) = mpsc::channel::<VoiceEvent>(64);
    let (panic_tx, mut panic_rx) = mpsc::channel::<Panic>(1);
    let turn_audio = Arc::new(Mutex::new(TurnAudio::default()));

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

    let agent = options.agent.clone();
    let mut actor = Actor {
        machine: TurnMachine::new(options.turn.clone(), stages.turn_detector.is_some()),
        chat: ChatContext::with_instructions(agent.instructions()),
        agent,
        job: Arc::new(options.job.clone()),
        stages,
        options,
        events,
        output: audio.output,
        reply: None,
        queued: HashMap::new(),
        reply_tx,
        eou_tx,
        eou_task: None,
        turn_audio,
        draining: None,
        panics: panic_tx,
        inside,
        hooks: JoinSet::new(),
        entered: false,
    };
    actor.machine.start();
    if !actor.options.defer_enter {
        actor.enter(false).await;
    }
    actor.apply_actions().await;

    let mut panicked = None;
    loop {
        let deadline = actor.machine.poll_timeout();
        let has_output = actor.output.is_some();
        tokio::select! {
            command = commands.recv() => match command {
                None => break, // every handle is gone
                Some(Command::Drain(done)) => {
                    actor.draining = Some(done);
                    if actor.reply.is_none() {
                        break;
                    }
                }
                Some(command) => actor.on_command(command).await,
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
    actor.hooks.shutdown().await;
    drop(stt_events);
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
    for (_, queued) in actor.queued.drain() {
        let _ = queued.done.send(SpeechDone::dropped());
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

impl Actor {
    async fn emit(&self, event: SessionEvent) {
        // Bounded: a consumer that stops reading slows the session rather
        // than growing memory. A consumer that is gone is fine.
        let _ = self.events.send(event).await;
    }

    fn context(&self) -> SessionContext {
        SessionContext::new(
            SessionHandle::inside(&self.inside),
            self.options.userdata.clone(),
            self.job.clone(),
        )
    }

    async fn on_command(&mut self, command: Command) {
        let now = self.options.clock.now();
        match command {
            Command::UserText(text) => self.machine.handle_input(now, Input::UserText { text }),
            Command::Speak {
                kind,
                allow_interruptions,
                done,
            } => {
                if self.draining.is_some() {
                    let _ = done.send(SpeechDone::dropped());
                    return;
                }
                let id = self.machine.queue_reply(allow_interruptions);
                self.queued.insert(id, Queued { kind, done });
            }
            Command::Interrupt => self.machine.interrupt(),
            Command::History(reply) => {
                let _ = reply.send(self.chat.clone());
            }
            Command::UpdateAgent(agent) => self.switch_agent(agent).await,
            Command::Enter => self.enter(false).await,
            Command::Entered(agent) => self.emit(SessionEvent::AgentEntered { agent }).await,
            // Handled by the loop.
            Command::Drain(_) => {}
        }
    }

    /// Runs the agent's `on_enter` (once at the start; again on each
    /// handoff). An agent handed over to without a hook answers at once.
    async fn enter(&mut self, handoff: bool) {
        if !handoff {
            if self.entered {
                return;
            }
            self.entered = true;
        }
        // Hooks that are done leave the set.
        while self.hooks.try_join_next().is_some() {}
        let agent = self.agent.name().to_string();
        match self.agent.enter_hook().cloned() {
            Some(hook) => {
                let ctx = self.context();
                let done = SessionHandle::inside(&self.inside);
                self.hooks.spawn(async move {
                    if AssertUnwindSafe(hook(ctx)).catch_unwind().await.is_err() {
                        error!(agent, "the agent's on_enter hook panicked");
                    }
                    // Behind the hook's own commands on the same channel.
                    let _ = done.commands.send(Command::Entered(agent)).await;
                });
                return;
            }
            None if handoff => {
                let (done, _) = oneshot::channel();
                let id = self.machine.queue_reply(true);
                self.queued.insert(
                    id,
                    Queued {
                        kind: ReplyKind::Generate(None),
                        done,
                    },
                );
            }
            None => {}
        }
        self.emit(SessionEvent::AgentEntered { agent }).await;
    }

    async fn switch_agent(&mut self, agent: Agent) {
        info!(from = self.agent.name(), to = agent.name(), "agent handoff");
        self.chat.set_instructions(agent.instructions());
        self.agent = agent;
        self.emit(SessionEvent::AgentChanged {
            agent: self.agent.name().to_string(),
        })
        .await;
        self.enter(true).await;
    }

    fn on_heard(&mut self, heard: VoiceEvent) {
        let VoiceEvent { event, at } = heard;
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
                Action::StartReply { reply } => {
                    let Some(queued) = self.queued.remove(&reply) else {
                        continue;
                    };
                    self.start_reply(reply, queued.kind, None, Some(queued.done))
                        .await;
                }
                Action::DropReply { reply } => {
                    if let Some(queued) = self.queued.remove(&reply) {
                        let _ = queued.done.send(SpeechDone::dropped());
                    }
                }
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
            let heard = match (&self.output, old.utterance) {
                (Some((_, control)), Some(g)) => Heard::Parts(control.played_parts(g)),
                _ => Heard::All,
            };
            self.finish_reply(heard, true).await;
        }
        info!(reply = id, user = %text, "user turn");
        self.chat.push(ChatMessage::user(text.clone()));
        self.bound_history();
        self.emit(SessionEvent::UserTurn { reply: id, text }).await;
        self.start_reply(id, ReplyKind::Answer, Some(timing), None)
            .await;
    }
}
