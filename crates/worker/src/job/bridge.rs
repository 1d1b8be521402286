//! The job's bridge between session and room: session events become room
//! writes (agent state, transcriptions; queued, see [`RoomWriter`]); the
//! user's track feeds the session's input; the session's playout feeds our
//! track.

use std::sync::Arc;

use agent::playout::Playout;
use agent::session::SessionEvent;
use room::RtcError;
use tokio::sync::mpsc;

use super::{INPUT_RATE, Owned};

/// The longest an agent transcription lags its audio, and the fastest its
/// updates go out (each is a stream of three packets).
const AGENT_TRANSCRIPT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
use crate::metrics::Metrics;
use crate::room_writer::{RoomWriter, Transcription};

/// Turns session events into room writes (queued; see [`RoomWriter`]).
pub(super) struct Bridge {
    pub(super) writer: RoomWriter,
    pub(super) job_id: String,
    pub(super) agent_track_sid: String,
    /// The linked user's identity.
    pub(super) user: String,
    pub(super) user_track_sid: String,
    /// Numbers the user's transcript segments; bumped after each final one.
    pub(super) user_segment: u64,
    /// What the user has heard of the reply in progress.
    pub(super) agent_text: String,
    /// When the last interim agent transcription went out.
    pub(super) agent_sent_at: Option<std::time::Instant>,
    pub(super) metrics: Arc<Metrics>,
}

impl Bridge {
    /// Feeds the session from `track` if it is the user's; true if it is.
    pub(super) fn listen_to(
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

    pub(super) fn session_event(&mut self, event: SessionEvent) {
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
            // The agent's words as they are heard (they follow its audio):
            // each update is a whole stream with the segment's text so far,
            // at most every AGENT_TRANSCRIPT_EVERY.
            SessionEvent::AgentHeard { reply, delta } => {
                self.agent_text.push_str(&delta);
                let due = self
                    .agent_sent_at
                    .is_none_or(|at| at.elapsed() >= AGENT_TRANSCRIPT_EVERY);
                if due && !self.agent_text.trim().is_empty() {
                    self.agent_sent_at = Some(std::time::Instant::now());
                    self.writer.transcription(Transcription {
                        text: self.agent_text.trim().to_string(),
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
                self.agent_sent_at = None;
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
pub(super) async fn output_pump(mut reader: agent::PlayoutReader, track: room::LocalAudioTrack) {
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
