//! The engine task: one per room. It owns the session (signal transport, two peer
//! connections, data channels), the published tracks and the participant table, and
//! turns everything into [`RoomEvent`]s. One task, one `select!` ([`Engine::serve`]):
//!
//! - commands from [`Room`] handles (bounded channel; the task ends when every
//!   handle is dropped or `Close` arrives),
//! - signal responses (offers, answers, trickle, participant updates, leave, pong),
//! - internal events from webrtc-rs callbacks and data-channel readers, tagged with
//!   the session id so events of a torn-down session are ignored,
//! - the ping timer (`ping_interval`; no message for `ping_timeout` = signal lost),
//! - room in the event channel for events waiting in its backlog (`events.rs`: the
//!   engine never waits for a slow consumer).
//!
//! Signal or transport loss runs the reconnect loop (`reconnect.rs`), which either
//! gets the room back or ends the engine. Ending ([`Engine::shutdown`]) leaves the
//! room if we chose to, tears the session down, stops the pacers, reports
//! `Disconnected` and answers every command still queued.
//!
//! Ownership: every task the engine spawns (data-channel readers, the driver nudge,
//! track pacers) is an [`OwnedTask`] held by the session or the publication it serves,
//! aborted when that is dropped, so no task outlives the engine, even an aborted
//! engine. Channels point one way: handles → engine (commands), webrtc-rs and readers
//! → engine (internal), engine → consumer (events), engine → pacers (sink watch);
//! the engine replies on oneshots and never waits on a channel that waits on it.
//!
//! ## Layout
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the engine's state, its loop and dispatch, commands, ending |
//! | `join.rs` | a session: signal, `JoinResponse`, peer connections, data channels; webrtc-rs callbacks |
//! | `negotiation.rs` | SDP/ICE negotiation state: offers, answers, queued candidates, held sinks (pure) |
//! | `sdp.rs` | carrying out the negotiation's actions on the peer connections and the signal |
//! | `participants.rs` | the participant table: server updates in, `RoomEvent`s out (pure) |
//! | `publish.rs` | publishing tracks, their sinks and pacers, republishing |
//! | `data.rs` | data packets and text streams out and in; data-channel readers |
//! | `reconnect.rs` | resume and rejoin |
//! | `events.rs` | the event channel: shedding, backlog, the dropped counter |
//! | `tests.rs` | the engine driven over channel transports, the test playing the server |

mod data;
mod events;
mod join;
mod negotiation;
mod participants;
mod publish;
mod reconnect;
mod sdp;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::data::Outbox;
use self::events::EventSink;
use self::join::{JoinProgress, PcEvent, Session};
use self::negotiation::Target;
use self::participants::Participants;
use self::publish::Publications;
use crate::RtcError;
use crate::data::StreamAssembler;
use crate::error::SignalLoss;
use crate::room::{COMMAND_CAPACITY, Command, ConnectOptions, DisconnectReason, Room, RoomEvent};
use crate::signal::{Connector, Req, Resp, WsConnector};

/// Internal events buffered between webrtc-rs callbacks and the engine.
const INTERNAL_CAPACITY: usize = 1024;
/// Bound on each step of closing (leave, socket close, peer connections, last event).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the ping timer checks the signal (the server's `ping_interval` is
/// seconds; this is its resolution).
const PING_CHECK: Duration = Duration::from_secs(1);

/// A spawned task owned by whoever holds this: aborted when it is dropped, so a task
/// never outlives its owner, however the owner ends (even aborted itself).
pub(crate) struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// From webrtc-rs callbacks and data-channel readers to the engine.
enum Internal {
    Pc {
        session_id: u64,
        target: Target,
        event: PcEvent,
    },
    Data {
        packet: Box<proto::DataPacket>,
        kind: crate::room::DataKind,
    },
    DcOpen {
        session_id: u64,
        label: String,
    },
}

/// Why the connection is being re-established (logged).
enum Loss {
    /// The signal connection broke, closed, or went silent.
    Signal(RtcError),
    /// A peer connection reported `Failed`.
    PeerConnectionFailed(Target),
    /// The server's `LeaveRequest` asked us to resume.
    ResumeAsked,
    /// The server's `LeaveRequest` asked for a full reconnect.
    ReconnectAsked,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Signal(e) => write!(f, "{e}"),
            Loss::PeerConnectionFailed(target) => write!(f, "{target:?} peer connection failed"),
            Loss::ResumeAsked => f.write_str("server asked to resume"),
            Loss::ReconnectAsked => f.write_str("server asked to reconnect"),
        }
    }
}

/// What a signal message means for the loop.
enum Flow {
    Continue,
    /// Reconnect, resuming if possible.
    Lost(Loss),
    /// Reconnect with a full rejoin.
    Rejoin(Loss),
    /// The server sent us away (its `DisconnectReason`).
    Leave(i32),
}

/// How the engine ends.
struct End {
    reason: DisconnectReason,
    /// Tell the server we leave (we chose to end).
    send_leave: bool,
}

impl End {
    fn left() -> Self {
        End {
            reason: DisconnectReason::ClientInitiated,
            send_leave: true,
        }
    }
}

/// One turn of the loop.
enum Step {
    Cmd(Option<Command>),
    Signal(Result<Box<Resp>, RtcError>),
    Internal(Internal),
    Ping,
    Delivered,
}

/// The engine's state. Owned by its task; nothing else touches it.
struct Engine {
    /// The server URL as given to `connect`.
    url: String,
    /// The access token, replaced when the server refreshes it. Never logged.
    token: String,
    options: ConnectOptions,
    /// Opens signal connections (the WebSocket; channels in tests).
    connector: Box<dyn Connector>,
    /// Requests from `Room` handles; the engine ends when every sender is dropped.
    cmd_rx: mpsc::Receiver<Command>,
    /// Commands taken while reconnecting, served right after.
    deferred: VecDeque<Command>,
    /// To the consumer; dropped with the engine, which ends their stream.
    events: EventSink,
    /// Cloned into every callback handler and data-channel reader; with the
    /// receiver here, the channel is open as long as the engine runs.
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    /// The connection; `None` only between a rejoin's teardown and its new join.
    session: Option<Session>,
    /// Generation of the next session.
    next_session_id: u64,
    participants: Participants,
    publications: Publications,
    outbox: Outbox,
    /// Text streams being received.
    assembler: StreamAssembler,
    /// Id of the last `UpdateParticipantMetadata`.
    request_id: u32,
    progress: JoinProgress,
    room_name: String,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random id: `prefix` and 32 hex digits.
fn random_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{n:032x}")
}

/// Join a room (see [`crate::connect`]): the first join runs here, then the engine
/// task; returns once the publisher's reliable data channel is open.
pub(crate) async fn connect(
    url: &str,
    token: &str,
    options: ConnectOptions,
) -> Result<(Room, mpsc::Receiver<RoomEvent>), RtcError> {
    let connect_timeout = options.connect_timeout;
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (mut engine, dropped) = Engine::new(
        Box::new(WsConnector),
        url,
        token,
        options,
        cmd_rx,
        events_tx,
        Some(ready_tx),
    );
    let join = tokio::time::timeout(connect_timeout, engine.join(false))
        .await
        .map_err(|_| RtcError::Timeout {
            what: "join response",
            after: connect_timeout,
        })??;
    let room = Room {
        cmd: cmd_tx,
        local: engine.participants.local().clone(),
        room_name: join.room.map(|r| r.name).unwrap_or_default(),
        dropped_events: dropped,
    };
    let task = tokio::spawn(engine.run());
    match tokio::time::timeout(connect_timeout, ready_rx).await {
        Ok(Ok(())) => Ok((room, events_rx)),
        // The engine ended before the reliable channel opened: why it ended.
        Ok(Err(_)) => Err(match task.await {
            Ok(reason) => RtcError::Disconnected(reason),
            Err(_) => RtcError::Closed,
        }),
        Err(_) => {
            // Dropping the engine drops its tasks too (`OwnedTask`).
            task.abort();
            Err(RtcError::Timeout {
                what: "publisher data channel to open",
                after: connect_timeout,
            })
        }
    }
}

impl Engine {
    /// An engine with no session yet, and the counter of events it sheds.
    fn new(
        connector: Box<dyn Connector>,
        url: &str,
        token: &str,
        options: ConnectOptions,
        cmd_rx: mpsc::Receiver<Command>,
        events: mpsc::Sender<RoomEvent>,
        ready: Option<oneshot::Sender<()>>,
    ) -> (Engine, Arc<std::sync::atomic::AtomicU64>) {
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
        let (events, dropped) = EventSink::new(events);
        let engine = Engine {
            url: url.to_owned(),
            token: token.to_owned(),
            options,
            connector,
            cmd_rx,
            deferred: VecDeque::new(),
            events,
            internal_tx,
            internal_rx,
            session: None,
            next_session_id: 0,
            participants: Participants::default(),
            publications: Publications::default(),
            outbox: Outbox::default(),
            assembler: StreamAssembler::default(),
            request_id: 0,
            progress: JoinProgress::new(ready),
            room_name: String::new(),
        };
        (engine, dropped)
    }

    /// Serve the room until it ends, then shut down; returns why it ended.
    async fn run(mut self) -> DisconnectReason {
        let end = self.serve().await;
        self.shutdown(&end).await;
        end.reason
    }

    /// The loop. Ends on close, on a final server leave, or when reconnecting fails.
    async fn serve(&mut self) -> End {
        let mut ping = tokio::time::interval(PING_CHECK);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            if let Some(cmd) = self.deferred.pop_front() {
                if !self.handle_command(cmd).await {
                    return End::left();
                }
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                // A rejoin tore the session down and did not get a new one; the
                // reconnect loop reports that as its own end, so this is defensive.
                return End {
                    reason: DisconnectReason::ReconnectFailed,
                    send_leave: false,
                };
            };
            let step = tokio::select! {
                cmd = self.cmd_rx.recv() => Step::Cmd(cmd),
                msg = session.signal.recv() => Step::Signal(msg.map(Box::new)),
                Some(ev) = self.internal_rx.recv() => Step::Internal(ev),
                _ = ping.tick() => Step::Ping,
                () = self.events.deliver_one(), if self.events.has_backlog() => Step::Delivered,
            };
            let (loss, resume_possible) = match step {
                Step::Cmd(None) => return End::left(),
                Step::Cmd(Some(cmd)) => {
                    if !self.handle_command(cmd).await {
                        return End::left();
                    }
                    continue;
                }
                Step::Signal(Ok(msg)) => match self.handle_signal(*msg).await {
                    Ok(Flow::Continue) => continue,
                    Ok(Flow::Lost(loss)) => (loss, true),
                    Ok(Flow::Rejoin(loss)) => (loss, false),
                    Ok(Flow::Leave(reason)) => {
                        return End {
                            reason: DisconnectReason::ServerLeave(reason),
                            send_leave: false,
                        };
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "signal message handling failed");
                        continue;
                    }
                },
                Step::Signal(Err(e)) => (Loss::Signal(e), true),
                Step::Internal(ev) => match self.handle_internal(ev).await {
                    Some(loss) => (loss, true),
                    None => continue,
                },
                Step::Ping => {
                    self.publications.expire(Instant::now());
                    self.flush_pending_data().await;
                    match self.keepalive(&mut last_ping).await {
                        Some(loss) => (loss, true),
                        None => continue,
                    }
                }
                Step::Delivered => continue,
            };
            if let Some(end) = self.reconnect(loss, resume_possible).await {
                return end;
            }
        }
    }

    /// Send a ping when one is due; a server silent for `ping_timeout` is lost.
    async fn keepalive(&mut self, last_ping: &mut Instant) -> Option<Loss> {
        let s = self.session.as_mut()?;
        if s.last_recv.elapsed() > s.ping_timeout {
            return Some(Loss::Signal(SignalLoss::Silent(s.ping_timeout).into()));
        }
        if last_ping.elapsed() >= s.ping_interval {
            *last_ping = Instant::now();
            let ping = proto::Ping {
                timestamp: now_ms(),
                rtt: s.rtt_ms,
            };
            if let Err(e) = s.signal.send(Req::PingReq(ping)).await {
                tracing::debug!(error = %e, "ping failed");
            }
        }
        None
    }

    /// Returns false when the engine must stop (close requested).
    async fn handle_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Close { reply } => {
                let _ = reply.send(());
                return false;
            }
            Command::RemoteParticipants { reply } => {
                let _ = reply.send(self.participants.remote());
            }
            Command::PublishAudio {
                name,
                sample_rate,
                reply,
            } => self.publish_audio(name, sample_rate, reply).await,
            Command::SendData {
                payload,
                kind,
                topic,
                destinations,
                reply,
            } => {
                let result = self
                    .send_user_data(payload, kind, topic, destinations)
                    .await;
                let _ = reply.send(result);
            }
            Command::SendText {
                topic,
                text,
                attributes,
                destinations,
                reply,
            } => {
                let result = self.send_text(topic, text, attributes, destinations).await;
                let _ = reply.send(result);
            }
            Command::SetAttributes { attributes, reply } => {
                let _ = reply.send(self.set_attributes(attributes).await);
            }
        }
        true
    }

    /// `UpdateParticipantMetadata` with our new attributes (merged by the server).
    async fn set_attributes(
        &mut self,
        attributes: HashMap<String, String>,
    ) -> Result<(), RtcError> {
        self.request_id = self.request_id.wrapping_add(1).max(1);
        let req = proto::UpdateParticipantMetadata {
            attributes,
            request_id: self.request_id,
            ..Default::default()
        };
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
        s.signal.send(Req::UpdateMetadata(req)).await
    }

    async fn handle_signal(&mut self, msg: Resp) -> Result<Flow, RtcError> {
        if let Some(s) = self.session.as_mut() {
            s.last_recv = Instant::now();
        }
        match msg {
            Resp::Answer(a) => self.on_answer(a).await?,
            Resp::Offer(o) => self.on_offer(o).await?,
            Resp::Trickle(t) => self.on_trickle(t).await?,
            Resp::Update(u) => self.apply_participants(&u.participants, false).await,
            Resp::TrackPublished(tp) => self.on_track_published(tp).await?,
            Resp::Leave(l) => {
                use proto::leave_request::Action;
                let action = Action::try_from(l.action).unwrap_or(if l.can_reconnect {
                    Action::Reconnect
                } else {
                    Action::Disconnect
                });
                return Ok(match action {
                    Action::Disconnect => Flow::Leave(l.reason),
                    Action::Resume => Flow::Lost(Loss::ResumeAsked),
                    Action::Reconnect => Flow::Rejoin(Loss::ReconnectAsked),
                });
            }
            Resp::PongResp(p) => {
                if let Some(s) = self.session.as_mut() {
                    s.rtt_ms = now_ms().saturating_sub(p.last_ping_timestamp).max(0);
                }
            }
            Resp::RefreshToken(t) if !t.is_empty() => self.token = t,
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// Returns why the connection is lost, if it is.
    async fn handle_internal(&mut self, ev: Internal) -> Option<Loss> {
        let current = self.session.as_ref().map(|s| s.session_id);
        match ev {
            Internal::Pc {
                session_id,
                target,
                event,
            } if Some(session_id) == current => {
                return self.on_pc_event(session_id, target, event).await;
            }
            Internal::DcOpen { session_id, label } if Some(session_id) == current => {
                self.on_dc_open(&label).await;
            }
            Internal::Data { packet, kind } => self.on_data(*packet, kind).await,
            // From a session torn down since.
            Internal::Pc { .. } | Internal::DcOpen { .. } => {}
        }
        None
    }

    /// Apply a participant list (join response or update; `full` after a rejoin) and
    /// report the differences.
    async fn apply_participants(&mut self, list: &[proto::ParticipantInfo], full: bool) {
        self.participants.apply(list, full);
        while let Some(event) = self.participants.poll_event() {
            if let RoomEvent::ParticipantLeft(p) = &event {
                self.assembler.participant_left(&p.identity);
            }
            self.events.emit(event).await;
        }
    }

    /// Leave (if we chose to end), tear everything down, report `Disconnected`, and
    /// answer every command still queued so that no caller waits forever.
    async fn shutdown(&mut self, end: &End) {
        if let Some(mut s) = self.session.take() {
            if end.send_leave {
                let leave = proto::LeaveRequest {
                    can_reconnect: false,
                    reason: proto::DisconnectReason::ClientInitiated as i32,
                    action: proto::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.signal.send(Req::Leave(leave))).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.signal.close()).await;
            }
            s.teardown().await;
        }
        self.publications.close();
        // Bounded: a consumer that stopped reading must not keep this task alive.
        let last = RoomEvent::Disconnected(end.reason.clone());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.events.finish(last)).await;
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            reject(cmd);
        }
        for cmd in self.deferred.drain(..) {
            reject(cmd);
        }
    }
}

/// Answer a command that will never be served.
fn reject(cmd: Command) {
    match cmd {
        Command::PublishAudio { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::SendData { reply, .. } | Command::SetAttributes { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::SendText { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::RemoteParticipants { reply } => {
            let _ = reply.send(Vec::new());
        }
        Command::Close { reply } => {
            let _ = reply.send(());
        }
    }
}
