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

use std::sync::Arc;
use std::time::Duration;

use agent::session::{self, AudioIo, SessionOptions, Stages};
use agent::stage::JobContext;
use room::RoomEvent;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::JobError;
use crate::metrics::Metrics;

pub use crate::room_writer::{AGENT_STATE_ATTRIBUTE, TRANSCRIPTION_TOPIC};
use crate::room_writer::{RoomWriter, state_attr};

mod bridge;
mod entrypoint;
mod link;

use bridge::{Bridge, output_pump};
use entrypoint::run_entrypoint;
pub use entrypoint::{BoxError, ENTRYPOINT_TIMEOUT, Entrypoint, entrypoint, fixed};
pub use link::links_to;
use link::{Linked, link_user};

/// The text-stream topic of chat messages (livekit-client's `sendText`, as
/// components' `useChat` sends them).
pub const CHAT_TOPIC: &str = "lk.chat";
/// Rate at which the user's audio is decoded for the session.
const INPUT_RATE: u32 = 16_000;
/// Frames between the input pump and the session (1 s of 20 ms frames).
const INPUT_FRAMES: usize = 50;
/// Frames the session may queue for playout ahead of the track (20 ms+ each).
const PLAYOUT_FRAMES: usize = 32;

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
            link_user(&mut room_events, &room.local_participant().identity, &options, &mut stop, &job.job_id).await?
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
            agent_sent_at: None,
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
                    // Typed chat from the user (components' useChat): a turn
                    // of its own, interrupting the agent. Others' are ignored.
                    Some(RoomEvent::TextStreamReceived(t))
                        if t.topic == CHAT_TOPIC && t.participant_identity == bridge.user =>
                    {
                        if let Some(h) = handle.clone() {
                            requests.spawn(async move { let _ = h.user_text(t.text).await; });
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
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
