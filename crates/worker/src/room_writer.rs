//! A job's writes to its room — the `lk.agent.state` attribute and the
//! `lk.transcription` text streams — on a task of their own, so the job's
//! loop, which drains the room's and the session's events, never waits on a
//! room round trip.
//!
//! The state is latest-wins (a `watch`): a state the room has not taken yet
//! is replaced by a newer one, never queued. Transcriptions go through a
//! bounded queue; when the room is so slow that it fills, the newest are
//! shed and counted rather than stalling the job. The task ends when the
//! writer is dropped or finished, after sending what is queued.

use std::collections::HashMap;
use std::time::Duration;

use agent::AgentState;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The text-stream topic of transcriptions.
pub const TRANSCRIPTION_TOPIC: &str = "lk.transcription";
/// Our participant attribute holding the agent state.
pub const AGENT_STATE_ATTRIBUTE: &str = "lk.agent.state";
/// Transcriptions queued for the room before new ones are shed.
const QUEUED_TRANSCRIPTIONS: usize = 64;

/// One `lk.transcription` stream.
#[derive(Debug)]
pub(crate) struct Transcription {
    pub text: String,
    pub segment: String,
    pub track_sid: String,
    pub is_final: bool,
}

pub(crate) struct RoomWriter {
    /// Dropped (taken) to let the task finish.
    state: Option<watch::Sender<Option<AgentState>>>,
    texts: Option<mpsc::Sender<Transcription>>,
    /// Transcriptions shed because the queue was full.
    shed: u64,
    job_id: String,
    /// Owned here: awaited by [`RoomWriter::finish`], aborted on drop.
    task: JoinHandle<()>,
}

impl Drop for RoomWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn state_attr(state: AgentState) -> HashMap<String, String> {
    [(AGENT_STATE_ATTRIBUTE.to_owned(), state.as_str().to_owned())].into()
}

impl RoomWriter {
    pub fn start(room: room::Room, job_id: String) -> Self {
        let (state, state_rx) = watch::channel(None);
        let (texts, texts_rx) = mpsc::channel(QUEUED_TRANSCRIPTIONS);
        let task = tokio::spawn(write(room, state_rx, texts_rx, job_id.clone()));
        Self {
            state: Some(state),
            texts: Some(texts),
            shed: 0,
            job_id,
            task,
        }
    }

    pub fn set_state(&self, state: AgentState) {
        if let Some(tx) = &self.state {
            tx.send_replace(Some(state));
        }
    }

    pub fn transcription(&mut self, t: Transcription) {
        if t.text.is_empty() {
            return;
        }
        let Some(texts) = &self.texts else { return };
        if texts.try_send(t).is_err() {
            self.shed += 1;
            // The first, then every hundredth: a log line per shed stream
            // would be its own flood.
            if self.shed % 100 == 1 {
                tracing::warn!(job = %self.job_id, shed = self.shed, "the room is slow: transcriptions shed");
            }
        }
    }

    /// Sends what is queued (at most `within`), then stops.
    pub async fn finish(mut self, within: Duration) {
        self.state.take();
        self.texts.take();
        let _ = tokio::time::timeout(within, &mut self.task).await;
    }
}

async fn write(
    room: room::Room,
    mut state: watch::Receiver<Option<AgentState>>,
    mut texts: mpsc::Receiver<Transcription>,
    job_id: String,
) {
    let (mut state_open, mut texts_open) = (true, true);
    while state_open || texts_open {
        tokio::select! {
            changed = state.changed(), if state_open => {
                if changed.is_err() {
                    state_open = false;
                    continue;
                }
                let Some(s) = *state.borrow_and_update() else { continue };
                if let Err(e) = room.set_attributes(state_attr(s)).await {
                    tracing::warn!(job = %job_id, error = %e, "cannot set the agent state");
                }
            }
            t = texts.recv(), if texts_open => {
                let Some(t) = t else {
                    texts_open = false;
                    continue;
                };
                let attributes: HashMap<String, String> = [
                    ("lk.segment_id".to_owned(), t.segment),
                    ("lk.transcribed_track_id".to_owned(), t.track_sid),
                    ("lk.transcription_final".to_owned(), t.is_final.to_string()),
                ]
                .into();
                if let Err(e) = room.send_text(TRANSCRIPTION_TOPIC, &t.text, attributes, &[]).await {
                    tracing::warn!(job = %job_id, error = %e, "cannot send a transcription");
                }
            }
        }
    }
}
