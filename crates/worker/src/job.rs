//! One job: join the room, run one session actor there, leave.
//!
//! The job task (spawned by the worker loop, which owns it in a `JoinSet`) owns:
//! - the room handle and its event receiver (the room is left on return);
//! - the session handle, its events and its task (a panic there ends this job
//!   as failed, nothing else);
//! - the input pump (user track PCM → session audio input), aborted when the
//!   user's track changes or the job ends;
//! - the output pump (session playout → our published track; `Cleared` drops
//!   the track's queue at once), aborted when the job ends.
//!
//! The user is the first participant of kind standard, SIP or connector
//! (never another agent, a recorder or an ingress), or the one named; a second
//! user joining later does not take the session over. The job's entrypoint
//! gives the session's agent; its failure fails this job only.
//! Transcriptions go out as `lk.transcription` text streams; the agent state
//! is kept in our `lk.agent.state` attribute.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use agent::playout::Playout;
use agent::session::{self, AudioIo, SessionEvent, SessionOptions, SessionSetup, Stages};
use agent::stage::JobContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use room::{RoomEvent, RtcError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::JobError;
use crate::metrics::Metrics;

pub use crate::room_writer::{AGENT_STATE_ATTRIBUTE, TRANSCRIPTION_TOPIC};
use crate::room_writer::{RoomWriter, Transcription, state_attr};

/// Rate at which the user's audio is decoded for the session.
const INPUT_RATE: u32 = 16_000;
/// Frames between the input pump and the session (1 s of 20 ms frames).
const INPUT_FRAMES: usize = 50;
/// Frames the session may queue for playout ahead of the track (20 ms+ each).
const PLAYOUT_FRAMES: usize = 32;

/// An error an entrypoint returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once per job with the job's context (room, metadata, the linked
/// user) and gives the session's agent and data.
pub type Entrypoint =
    Arc<dyn Fn(JobContext) -> BoxFuture<'static, Result<SessionSetup, BoxError>> + Send + Sync>;

/// An [`Entrypoint`] from an async function.
pub fn entrypoint<F, Fut, S>(f: F) -> Entrypoint
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Into<SessionSetup>,
{
    Arc::new(move |job| {
        let fut = f(job);
        Box::pin(async move { fut.await.map(Into::into) })
    })
}

/// An [`Entrypoint`] that gives every job the same agent.
pub fn fixed(setup: SessionSetup) -> Entrypoint {
    Arc::new(move |_job| {
        let setup = setup.clone();
        Box::pin(async move { Ok(setup) })
    })
}

/// What every session in this worker runs on.
#[derive(Clone)]
pub struct SessionFactory {
    pub stages: Stages,
    /// Template; the agent, its data and the job context are set per job.
    pub options: SessionOptions,
    /// Sample rate of the agent's published audio (an Opus rate: 8, 12, 16, 24, 48 kHz).
    pub output_rate: u32,
    /// Gives each job's agent.
    pub entrypoint: Entrypoint,
}

/// How jobs behave in their rooms.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// How rooms are joined (UDP addresses, timeouts, reconnect policy).
    pub connect: room::ConnectOptions,
    /// End the session when the user leaves.
    pub end_on_user_leave: bool,
    /// Talk to this identity only; `None`: the first participant [`links_to`] accepts.
    pub user_identity: Option<String>,
    /// How long a draining session may take to finish its reply.
    pub drain_timeout: Duration,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            connect: room::ConnectOptions::default(),
            end_on_user_leave: true,
            user_identity: None,
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// How a job is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    Run,
    /// Finish the reply in progress, then leave.
    Drain,
    /// Leave now.
    Now,
}

/// A room to join.
#[derive(Clone, Debug)]
pub struct RoomJob {
    pub job_id: String,
    pub url: String,
    pub token: String,
    pub context: JobContext,
}

/// Aborts the task when dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one job to its end. `joined` is told once the room is joined and the
/// agent's track is published. `Ok` when the session ended normally (the user
/// left, a drain, a termination).
///
/// Its steps: join and publish; wait for the user to link to (see
/// [`links_to`]); run the entrypoint with the job's context, which gives the
/// session's agent; run the session, starting the agent's `on_enter` once the
/// user's audio is subscribed (so the user hears it), or [`ENTER_WITHOUT_AUDIO`]
/// after the session started if the user publishes none.
pub async fn run(
    job: RoomJob,
    factory: Arc<SessionFactory>,
    options: Arc<JobOptions>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<Stop>,
    joined: mpsc::Sender<String>,
) -> Result<(), JobError> {
    let started = std::time::Instant::now();
    let (room, mut room_events) =
        room::connect(&job.url, &job.token, options.connect.clone()).await?;
    let connected = started.elapsed();
    let result = async {
        let track = room.publish_audio("agent", factory.output_rate).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            job = %job.job_id,
            connect_ms = ms(connected),
            publish_ms = ms(started.elapsed() - connected),
            "room joined, track published"
        );
        let _ = joined.send(job.job_id.clone()).await;
        let _ = room
            .set_attributes(state_attr(agent::AgentState::Initializing))
            .await;

        let Some(Linked { user, early_tracks }) =
            link_user(&mut room_events, &options, &mut stop, &job.job_id).await?
        else {
            return Ok(()); // told to stop before anyone came
        };
        tracing::info!(job = %job.job_id, user = %user.identity, "linked to the user");
        let mut context = job.context.clone();
        context.participant = Some(agent::Participant {
            identity: user.identity.clone(),
            name: user.name.clone(),
            metadata: user.metadata.clone(),
            attributes: user.attributes.clone().into_iter().collect(),
        });
        let setup = run_entrypoint(&factory.entrypoint, context.clone()).await?;

        let stages = factory.stages.clone();
        let (input_tx, input_rx) = mpsc::channel(INPUT_FRAMES);
        let input = stages.stt.is_some().then_some(input_rx);
        let (output, output_pump) = if stages.tts.is_some() {
            let (writer, control, reader) = agent::playout(factory.output_rate, PLAYOUT_FRAMES);
            let pump = Owned(tokio::spawn(output_pump(reader, track.clone())));
            (Some((writer, control)), Some(pump))
        } else {
            (None, None)
        };
        let mut session_options = factory.options.clone().with_setup(setup);
        session_options.job = context;
        session_options.defer_enter = true;
        let (handle, mut events, mut session_task) =
            session::start(stages, session_options, AudioIo { input, output });
        metrics.session_started();
        let mut bridge = Bridge {
            writer: RoomWriter::start(room.clone(), job.job_id.clone()),
            job_id: job.job_id.clone(),
            agent_track_sid: track.sid().to_owned(),
            user: user.identity.clone(),
            user_track_sid: String::new(),
            user_segment: 0,
            agent_text: String::new(),
            metrics: metrics.clone(),
        };
        let mut input_pump: Option<Owned> = None;
        let mut enter_at = Some(tokio::time::Instant::now() + ENTER_WITHOUT_AUDIO);
        for t in early_tracks {
            if bridge.listen_to(t, &mut input_pump, &input_tx, factory.stages.stt.is_some()) {
                enter_at = Some(tokio::time::Instant::now());
            }
        }
        let mut handle = Some(handle);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        // Requests to the session (enter, drain) wait on its command queue
        // here, not in the loop; the set aborts them when the job ends.
        let mut requests = tokio::task::JoinSet::new();
        let outcome = loop {
            tokio::select! {
                ended = &mut session_task => {
                    // Forward what the session said last (its final transcript).
                    while let Ok(event) = events.try_recv() {
                        bridge.session_event(event);
                    }
                    break match ended {
                        Ok(()) => Ok(()),
                        Err(e) if e.is_panic() => Err(JobError::SessionPanicked),
                        Err(_) => Ok(()),
                    };
                }
                Some(event) = events.recv() => bridge.session_event(event),
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
                event = room_events.recv() => match event {
                    None | Some(RoomEvent::Disconnected(_)) => break Err(JobError::RoomLost),
                    Some(RoomEvent::ParticipantLeft(p)) => {
                        if bridge.user == p.identity && options.end_on_user_leave {
                            tracing::info!(job = %job.job_id, user = %p.identity, "user left: ending the session");
                            break Ok(());
                        }
                    }
                    Some(RoomEvent::TrackSubscribed(t)) => {
                        if bridge.listen_to(t, &mut input_pump, &input_tx, factory.stages.stt.is_some()) {
                            enter_at = enter_at.map(|_| tokio::time::Instant::now());
                        }
                    }
                    Some(_) => {}
                },
                _ = sleep_until(enter_at) => {
                    enter_at = None;
                    if let Some(h) = handle.clone() {
                        requests.spawn(async move { let _ = h.enter().await; });
                    }
                }
                changed = stop.changed() => {
                    let now = if changed.is_err() { Stop::Now } else { *stop.borrow_and_update() };
                    match now {
                        Stop::Run => {}
                        Stop::Now => break Ok(()),
                        Stop::Drain => {
                            if let Some(h) = handle.take() {
                                // Resolves when the reply is over; the session task then ends.
                                requests.spawn(async move { let _ = h.drain().await; });
                            }
                            drain_deadline.get_or_insert(tokio::time::Instant::now() + options.drain_timeout);
                        }
                    }
                }
                _ = sleep_until(drain_deadline) => break Ok(()),
            }
        };
        drop(input_pump);
        drop(handle);
        drop(requests);
        session_task.abort();
        // What the session said last reaches the room before we leave.
        bridge.writer.finish(Duration::from_secs(2)).await;
        // Let the last audio leave before leaving the room (bounded).
        if outcome.is_ok() {
            let wait = track.queued_duration().min(Duration::from_secs(2));
            tokio::time::sleep(wait).await;
        }
        drop(output_pump);
        let stats = track.stats();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            job = %job.job_id,
            frames = stats.cadence_frames(),
            late_p99_ms = ms(stats.lateness.percentile(99.0)),
            late_max_ms = stats.max_lateness_us as f64 / 1000.0,
            skipped = stats.slots_skipped,
            "agent audio paced"
        );
        metrics.audio_sent(&stats);
        metrics.session_ended(outcome.is_ok());
        outcome
    }
    .await;
    let _ = room.close().await;
    result
}

/// How long after the session starts the agent enters (greets) when the user
/// publishes no audio (a text-only client).
pub const ENTER_WITHOUT_AUDIO: Duration = Duration::from_secs(2);
/// Tracks of the user kept while the entrypoint runs.
const EARLY_TRACKS: usize = 4;

/// Participant kinds a session talks to, as LiveKit Agents links them:
/// standard clients, SIP callers, connectors (`ParticipantInfo.Kind`).
const USER_KINDS: [i32; 3] = [0, 3, 7];

/// Whether the session links to `p`: a person (not an agent, a recorder or
/// an ingress), and the configured identity if one is set.
pub fn links_to(p: &room::Participant, wanted: Option<&str>) -> bool {
    USER_KINDS.contains(&p.kind) && wanted.is_none_or(|w| w == p.identity)
}

/// The user, and their audio tracks subscribed before the session started.
struct Linked {
    user: room::Participant,
    early_tracks: Vec<room::RemoteAudioTrack>,
}

/// Waits for the first participant the session links to. `None` when told to
/// stop first.
async fn link_user(
    room_events: &mut mpsc::Receiver<RoomEvent>,
    options: &JobOptions,
    stop: &mut watch::Receiver<Stop>,
    job_id: &str,
) -> Result<Option<Linked>, JobError> {
    let wanted = options.user_identity.as_deref();
    let mut tracks: Vec<room::RemoteAudioTrack> = Vec::new();
    loop {
        tokio::select! {
            event = room_events.recv() => match event {
                None | Some(RoomEvent::Disconnected(_)) => return Err(JobError::RoomLost),
                Some(RoomEvent::ParticipantJoined(p)) if links_to(&p, wanted) => {
                    tracks.retain(|t| t.participant_identity() == p.identity);
                    return Ok(Some(Linked { user: p, early_tracks: tracks }));
                }
                Some(RoomEvent::ParticipantJoined(p)) => {
                    tracing::debug!(job = %job_id, identity = %p.identity, kind = p.kind, "not a user to talk to");
                }
                Some(RoomEvent::TrackSubscribed(t)) => {
                    // Its publisher's join may come after it.
                    if tracks.len() < EARLY_TRACKS {
                        tracks.push(t);
                    }
                }
                Some(_) => {}
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow_and_update() != Stop::Run {
                    return Ok(None);
                }
            }
        }
    }
}

/// Runs the entrypoint; its failure, panic or hang fails this job only.
async fn run_entrypoint(
    entrypoint: &Entrypoint,
    context: JobContext,
) -> Result<SessionSetup, JobError> {
    let call = AssertUnwindSafe(entrypoint(context)).catch_unwind();
    match tokio::time::timeout(ENTRYPOINT_TIMEOUT, call).await {
        Err(_) => Err(JobError::EntrypointTimeout(ENTRYPOINT_TIMEOUT)),
        Ok(Err(_panic)) => {
            tracing::error!("the entrypoint panicked");
            Err(JobError::EntrypointPanicked)
        }
        Ok(Ok(Err(e))) => Err(JobError::Entrypoint(error_chain(e.as_ref()))),
        Ok(Ok(Ok(setup))) => Ok(setup),
    }
}

/// The longest an entrypoint may take to give its agent.
pub const ENTRYPOINT_TIMEOUT: Duration = Duration::from_secs(30);

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Turns session events into room writes (queued; see [`RoomWriter`]).
struct Bridge {
    writer: RoomWriter,
    job_id: String,
    agent_track_sid: String,
    /// The linked user's identity.
    user: String,
    user_track_sid: String,
    /// Numbers the user's transcript segments; bumped after each final one.
    user_segment: u64,
    /// The reply text streamed so far.
    agent_text: String,
    metrics: Arc<Metrics>,
}

impl Bridge {
    /// Feeds the session from `track` if it is the user's; true if it is.
    fn listen_to(
        &mut self,
        track: room::RemoteAudioTrack,
        pump: &mut Option<Owned>,
        input: &mpsc::Sender<agent::AudioFrame>,
        hears: bool,
    ) -> bool {
        if track.participant_identity() != self.user {
            return false;
        }
        if hears {
            self.user_track_sid = track.sid().to_owned();
            match track.into_stream(INPUT_RATE) {
                Ok(stream) => {
                    *pump = Some(Owned(tokio::spawn(input_pump_task(stream, input.clone()))));
                }
                Err(e) => {
                    tracing::warn!(job = %self.job_id, error = %e, "cannot decode the user's track")
                }
            }
        }
        true
    }

    fn session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::AgentState(s) => self.writer.set_state(s),
            SessionEvent::UserTranscript { text, is_final } => {
                let segment = format!("SG_{}_user_{}", self.job_id, self.user_segment);
                let track_sid = self.user_track_sid.clone();
                self.writer.transcription(Transcription {
                    text,
                    segment,
                    track_sid,
                    is_final,
                });
                if is_final {
                    self.user_segment += 1;
                }
            }
            SessionEvent::AgentText { reply, delta } => {
                self.agent_text.push_str(&delta);
                // Interim agent transcription at each sentence end.
                if delta.contains(['.', '!', '?']) {
                    self.writer.transcription(Transcription {
                        text: self.agent_text.clone(),
                        segment: format!("SG_{}_agent_{reply}", self.job_id),
                        track_sid: self.agent_track_sid.clone(),
                        is_final: false,
                    });
                }
            }
            SessionEvent::AgentSpoke {
                reply,
                text,
                interrupted,
            } => {
                self.agent_text.clear();
                tracing::info!(job = %self.job_id, reply, interrupted, "agent spoke");
                self.writer.transcription(Transcription {
                    text,
                    segment: format!("SG_{}_agent_{reply}", self.job_id),
                    track_sid: self.agent_track_sid.clone(),
                    is_final: true,
                });
            }
            SessionEvent::Metrics(m) => {
                tracing::info!(
                    job = %self.job_id,
                    end_to_end_ms = m.end_to_end.map(|d| d.as_millis() as u64),
                    llm_ttft_ms = m.llm_ttft.map(|d| d.as_millis() as u64),
                    tts_ttfb_ms = m.tts_ttfb.map(|d| d.as_millis() as u64),
                    "turn metrics"
                );
                self.metrics.turn(&m);
            }
            SessionEvent::Error { stage, error } => {
                tracing::warn!(job = %self.job_id, stage, kind = error.kind.as_str(), "stage error");
                self.metrics.error(stage, error.kind.as_str());
            }
            SessionEvent::ToolCalls { reply, calls } => {
                for call in calls {
                    tracing::info!(job = %self.job_id, reply, tool = %call.name, id = %call.id, "tool call");
                }
            }
            _ => {}
        }
    }
}

/// User PCM → session input. Ends when the track ends or the session's input closes.
async fn input_pump_task(mut stream: room::AudioStream, tx: mpsc::Sender<agent::AudioFrame>) {
    while let Some(frame) = stream.recv().await {
        if tx.send(frame).await.is_err() {
            break;
        }
    }
}

/// Session playout → our track, paced by the track's queue. `Cleared` (an
/// interruption) drops what the track has queued at once.
async fn output_pump(mut reader: agent::PlayoutReader, track: room::LocalAudioTrack) {
    let rate = track.sample_rate();
    while let Some(item) = reader.recv().await {
        match item {
            Playout::Cleared => track.clear_queue(),
            Playout::Frame(frame) => {
                if frame.sample_rate != rate {
                    tracing::warn!(
                        got = frame.sample_rate,
                        want = rate,
                        "playout frame at the wrong rate dropped"
                    );
                    continue;
                }
                // The track down-mixes to its one channel.
                match track.capture_frame(frame).await {
                    Ok(()) => {}
                    Err(RtcError::Closed) => break,
                    Err(e) => tracing::warn!(error = %e, "cannot queue agent audio"),
                }
            }
        }
    }
}
