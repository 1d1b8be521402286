//! The session actor: one per conversation. A private task owns the turn
//! machine, the chat history, the agent in charge, the stage streams and the
//! reply in progress (with its [`Ledger`]); a cloneable [`SessionHandle`]
//! talks to it over a bounded channel.
//!
//! Tasks and who stops them:
//! - the session task: ends when every handle its owner holds is dropped
//!   (cancelling everything at once), or after [`SessionHandle::drain`] once
//!   the current reply is over; its `JoinHandle` is returned by [`start`].
//!   Handles given to tools and hooks do not keep it alive;
//! - the audio input task (VAD, STT feeding): owned by the session task,
//!   aborted when it ends; it also ends when the audio source closes;
//! - the STT stream's task: ends when the input task drops its sender;
//! - the reply task (LLM steps, tools, TTS): aborted on interruption or when
//!   the session ends; aborting it cancels its running tools;
//! - end-of-turn predictions: aborted when stale or when the session ends;
//! - `on_enter` hooks: in a set the session task aborts when it ends.
//!
//! A panic in a stage (a child task) ends the session: the children are
//! stopped, then the panic is resumed on the session task, so whoever owns it
//! (a worker job) sees a panicked task and fails that one job. A panicking
//! tool is that tool's error; a panicking hook is logged.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agents::Agent;
use crate::audio::AudioFrame;
use crate::chat::{ChatContext, HistoryLimit, ToolCall};
use crate::clock::Clock;
use crate::playout::{PlayoutControl, PlayoutWriter};
use crate::reply::{ReplyKind, ReplyScope, ScopedSay};
use crate::rpc::{RpcCall, RpcError, RpcMethods};
use crate::stage::{JobContext, Llm, StageError, Stt, Tts, TurnDetector, VadFactory};
use crate::tool::{SessionContext, Userdata};
use crate::turn::{AgentState, ReplyId, TurnOptions};
use crate::vad::VadOptions;

/// The engines a session runs on.
#[derive(Clone)]
pub struct Stages {
    /// The LLM of agents that bring none of their own.
    pub llm: Arc<dyn Llm>,
    /// `None`: text only (typed turns).
    pub stt: Option<Arc<dyn Stt>>,
    /// `None`: replies are text only.
    pub tts: Option<Arc<dyn Tts>>,
    /// Needed with audio input.
    pub vad: Option<Arc<dyn VadFactory>>,
    pub turn_detector: Option<Arc<dyn TurnDetector>>,
}

/// How tool calls run.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOptions {
    /// The longest a call may run, for tools that set no timeout of their
    /// own; the timeout is then the call's result.
    pub timeout: Duration,
    /// Calls of one step that run; the model is told the others were not.
    pub max_calls_per_step: usize,
    /// A longer result is cut (on a character boundary) before the model
    /// reads it.
    pub max_result_chars: usize,
}

impl Default for ToolOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_calls_per_step: 8,
            max_result_chars: 16_000,
        }
    }
}

#[derive(Clone)]
pub struct SessionOptions {
    /// The agent in charge at the start.
    pub agent: Agent,
    /// The session's own data, for tools and hooks.
    pub userdata: Userdata,
    pub turn: TurnOptions,
    pub vad: VadOptions,
    /// Tool-call rounds per reply; the answer after the last one is words only.
    pub max_tool_steps: usize,
    pub tools: ToolOptions,
    pub history: HistoryLimit,
    pub job: JobContext,
    /// Spoken when the LLM fails before saying anything; empty: say nothing.
    pub error_message: String,
    pub clock: Clock,
    /// Run the agent's `on_enter` only on [`SessionHandle::enter`] (a room
    /// job waits until the user can hear it), not at once.
    pub defer_enter: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            agent: Agent::default(),
            userdata: Userdata::default(),
            turn: TurnOptions::default(),
            vad: VadOptions::default(),
            max_tool_steps: 3,
            tools: ToolOptions::default(),
            history: HistoryLimit::default(),
            job: JobContext::default(),
            error_message: "Sorry, I can't answer right now. Please try again in a moment."
                .to_string(),
            clock: Clock::realtime(),
            defer_enter: false,
        }
    }
}

/// What a session starts with: the agent in charge and the session's own
/// data. What a per-room entrypoint returns (an [`Agent`] alone converts).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SessionSetup {
    pub agent: Agent,
    pub userdata: Userdata,
    /// Methods the user's frontend may call (LiveKit RPC).
    pub rpc: RpcMethods,
}

impl SessionSetup {
    pub fn new(agent: Agent) -> Self {
        Self {
            agent,
            userdata: Userdata::default(),
            rpc: RpcMethods::default(),
        }
    }

    /// Answers RPC method `name` (see [`RpcMethods::add`]).
    pub fn with_rpc<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(SessionContext, RpcCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, RpcError>> + Send + 'static,
    {
        self.rpc.add(name, handler);
        self
    }

    /// The session's own data, for its tools and hooks (`ctx.userdata::<T>()`).
    pub fn with_userdata<T: Any + Send + Sync>(mut self, data: T) -> Self {
        self.userdata = Userdata::new(data);
        self
    }
}

impl From<Agent> for SessionSetup {
    fn from(agent: Agent) -> Self {
        Self::new(agent)
    }
}

impl SessionOptions {
    /// These options with `setup`'s agent and data.
    pub fn with_setup(mut self, setup: SessionSetup) -> Self {
        self.agent = setup.agent;
        self.userdata = setup.userdata;
        self
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
    pub usage: crate::stage::Usage,
    pub interrupted: bool,
}

#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Reply text as it is generated (and what tools say, as it is queued).
    AgentText {
        reply: ReplyId,
        delta: String,
    },
    /// Reply text as its audio reaches the output, in order: what the user
    /// hears, as they hear it (for transcriptions that follow the audio).
    AgentHeard {
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
    /// The model asked for these tools.
    ToolCalls {
        reply: ReplyId,
        calls: Vec<ToolCall>,
    },
    /// A tool call's result, as the model reads it.
    ToolResult {
        reply: ReplyId,
        call_id: String,
        output: String,
    },
    /// This agent is now in charge (a handoff, or `update_agent`).
    AgentChanged {
        agent: String,
    },
    /// The agent's `on_enter` is done (what it asked to say is queued by
    /// now); also sent for an agent without one.
    AgentEntered {
        agent: String,
    },
    Metrics(TurnMetrics),
    /// A stage failed; the session goes on.
    Error {
        stage: &'static str,
        error: StageError,
    },
}

/// How a speech ended: what the user heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpeechDone {
    pub heard: String,
    pub interrupted: bool,
}

impl SpeechDone {
    pub(crate) fn dropped() -> Self {
        Self {
            heard: String::new(),
            interrupted: true,
        }
    }
}

/// A speech the session was asked for ([`SessionHandle::say`],
/// [`SessionHandle::generate_reply`]). Dropping it changes nothing.
#[derive(Debug)]
pub struct SpeechHandle {
    done: oneshot::Receiver<SpeechDone>,
}

impl SpeechHandle {
    /// Waits until the speech is over: played to its end, interrupted, or
    /// dropped unplayed (a user turn came first).
    pub async fn wait(self) -> Result<SpeechDone, SessionClosed> {
        self.done.await.map_err(|_| SessionClosed)
    }
}

pub(crate) enum Command {
    UserText(String),
    Speak {
        kind: ReplyKind,
        allow_interruptions: bool,
        done: oneshot::Sender<SpeechDone>,
    },
    Interrupt,
    History(oneshot::Sender<ChatContext>),
    UpdateAgent(Agent),
    Enter,
    /// An `on_enter` hook of this agent finished (sent by its task, after
    /// whatever it asked for).
    Entered(String),
    Drain(oneshot::Sender<()>),
}

/// Talks to a session. The session ends when the last handle its owner holds
/// is dropped; the handles tools and hooks get do not keep it alive.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) commands: CommandSender,
    /// Set for a tool's handle: its `say` is spoken within the tool's reply.
    scope: Option<ReplyScope>,
}

#[derive(Clone)]
pub(crate) enum CommandSender {
    /// The owner's: keeps the session alive.
    Owner(mpsc::Sender<Command>),
    /// Code running inside the session (tools, hooks).
    Inside(mpsc::WeakSender<Command>),
}

impl CommandSender {
    pub(crate) async fn send(&self, command: Command) -> Result<(), SessionClosed> {
        let sender = match self {
            CommandSender::Owner(tx) => tx.clone(),
            CommandSender::Inside(weak) => weak.upgrade().ok_or(SessionClosed)?,
        };
        sender.send(command).await.map_err(|_| SessionClosed)
    }
}

/// The session task is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session has ended")]
pub struct SessionClosed;

impl SessionHandle {
    /// A handle to no session: every call answers [`SessionClosed`].
    pub fn detached() -> Self {
        let (tx, _) = mpsc::channel(1);
        Self {
            commands: CommandSender::Inside(tx.downgrade()),
            scope: None,
        }
    }

    /// A handle of the same session for code running inside it.
    pub(crate) fn inside(commands: &mpsc::WeakSender<Command>) -> Self {
        Self {
            commands: CommandSender::Inside(commands.clone()),
            scope: None,
        }
    }

    pub(crate) fn scoped(&self, scope: ReplyScope) -> Self {
        Self {
            commands: self.commands.clone(),
            scope: Some(scope),
        }
    }

    /// This handle, not keeping the session alive (for code that runs on the
    /// session's behalf, like a tool's).
    pub fn downgrade(&self) -> SessionHandle {
        let commands = match &self.commands {
            CommandSender::Owner(tx) => CommandSender::Inside(tx.downgrade()),
            CommandSender::Inside(weak) => CommandSender::Inside(weak.clone()),
        };
        Self {
            commands,
            scope: None,
        }
    }

    /// A typed user turn, committed at once (it interrupts the agent).
    pub async fn user_text(&self, text: impl Into<String>) -> Result<(), SessionClosed> {
        self.commands.send(Command::UserText(text.into())).await
    }

    /// Speaks `text` as is and keeps it in the history. From a tool, while
    /// its reply's tools run, it is spoken at once, within that reply; else
    /// it is queued behind the reply in progress. `allow_interruptions`:
    /// whether the user's speech may cut it short.
    pub async fn say(
        &self,
        text: impl Into<String>,
        allow_interruptions: bool,
    ) -> Result<SpeechHandle, SessionClosed> {
        let text = text.into();
        let (done, rx) = oneshot::channel();
        let done = match &self.scope {
            Some(scope) if scope.open.load(std::sync::atomic::Ordering::SeqCst) => {
                match scope.says.try_send(ScopedSay { text, done }) {
                    Ok(()) => return Ok(SpeechHandle { done: rx }),
                    // Closed or full: the reply is past its tools.
                    Err(mpsc::error::TrySendError::Full(say))
                    | Err(mpsc::error::TrySendError::Closed(say)) => (say.text, say.done),
                }
            }
            _ => (text, done),
        };
        self.commands
            .send(Command::Speak {
                kind: ReplyKind::Say(done.0),
                allow_interruptions,
                done: done.1,
            })
            .await?;
        Ok(SpeechHandle { done: rx })
    }

    /// A reply without a user turn (e.g. a greeting, or after a handoff),
    /// queued behind the reply in progress. `instructions` are added to the
    /// agent's for this reply only ("" adds none).
    pub async fn generate_reply(
        &self,
        instructions: impl Into<String>,
    ) -> Result<SpeechHandle, SessionClosed> {
        let instructions = instructions.into();
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Speak {
                kind: ReplyKind::Generate(
                    (!instructions.trim().is_empty()).then_some(instructions),
                ),
                allow_interruptions: true,
                done,
            })
            .await?;
        Ok(SpeechHandle { done: rx })
    }

    /// Cuts the reply in progress short (even one that disallows
    /// interruptions) and drops the queued ones.
    pub async fn interrupt(&self) -> Result<(), SessionClosed> {
        self.commands.send(Command::Interrupt).await
    }

    /// The chat history as the next request would carry it.
    pub async fn history(&self) -> Result<ChatContext, SessionClosed> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::History(tx)).await?;
        rx.await.map_err(|_| SessionClosed)
    }

    /// Puts `agent` in charge: the history carries over, its instructions
    /// and tools apply from the next request, and its `on_enter` runs.
    pub async fn update_agent(&self, agent: Agent) -> Result<(), SessionClosed> {
        self.commands.send(Command::UpdateAgent(agent)).await
    }

    /// Runs the agent's `on_enter`, for a session started with
    /// [`SessionOptions::defer_enter`]; once.
    pub async fn enter(&self) -> Result<(), SessionClosed> {
        self.commands.send(Command::Enter).await
    }

    /// Stops taking turns; resolves once the reply in progress (if any) is
    /// over and the session has ended.
    pub async fn drain(&self) -> Result<(), SessionClosed> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Drain(tx)).await?;
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
    let inside = cmd_tx.downgrade();
    let task = tokio::spawn(crate::actor::run(
        stages, options, audio, cmd_rx, inside, event_tx,
    ));
    (
        SessionHandle {
            commands: CommandSender::Owner(cmd_tx),
            scope: None,
        },
        event_rx,
        task,
    )
}
