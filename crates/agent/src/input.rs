//! The session's audio input task: each microphone frame goes to the VAD,
//! to the STT (converted to its rate) and to the end-of-turn detector's
//! buffer; VAD events go to the session, stamped with session time.
//!
//! Times: the VAD reports where in the stream speech started or ended
//! (stream time: the duration of all audio received so far); the session
//! needs when that was on its clock. A frame is taken to arrive as its last
//! sample is current, so an event at stream position `e`, seen while
//! handling the frame that ends at position `p` at session time `now`,
//! happened at `now - (p - e)`:
//!
//! ```text
//! stream:   0 ──────────────── e ──────── p      (audio received so far)
//!                              │          │
//! session:                 now-(p-e)     now     (this frame handled)
//! ```
//!
//! A change of input rate starts a new segment of stream time, so positions
//! stay monotonic across it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::audio::{AudioFrame, FrameConverter, duration_of};
use crate::clock::Clock;
use crate::stage::SttInput;
use crate::vad::{VadEvent, VoiceDetector};

/// Audio the end-of-turn detector may look at: the last 8 s at 16 kHz.
pub(crate) const TURN_AUDIO_RATE: u32 = 16_000;
const TURN_AUDIO_SECONDS: usize = 8;

/// The user's last seconds of audio, for the end-of-turn detector.
#[derive(Default)]
pub(crate) struct TurnAudio {
    pub(crate) samples: VecDeque<f32>,
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
pub(crate) struct VoiceEvent {
    pub(crate) event: VadEvent,
    pub(crate) at: Instant,
}

/// The audio input task: VAD, the STT feed and the end-of-turn audio buffer.
pub(crate) async fn listen(
    mut input: mpsc::Receiver<AudioFrame>,
    mut vad: VoiceDetector,
    stt: Option<(mpsc::Sender<SttInput>, u32)>,
    turn_audio: Arc<Mutex<TurnAudio>>,
    heard: mpsc::Sender<VoiceEvent>,
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
            if heard.send(VoiceEvent { event, at }).await.is_err() {
                return;
            }
        }
    }
}
