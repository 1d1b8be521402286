//! Speech segmentation: turns a [`VadModel`]'s per-frame scores into speech
//! start, progress and end events with hysteresis, on stream time.

use std::time::Duration;

use crate::audio::{AudioFrame, FrameConverter, duration_of};
use crate::stage::VadModel;

/// Segmentation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct VadOptions {
    /// A frame scoring at least this is voiced.
    pub activation_threshold: f32,
    /// While speaking, a frame scoring below this is silent (hysteresis).
    pub deactivation_threshold: f32,
    /// Voiced time needed before speech is reported as started.
    pub min_speech_duration: Duration,
    /// Silence needed before speech is reported as ended.
    pub min_silence_duration: Duration,
}

impl Default for VadOptions {
    fn default() -> Self {
        Self {
            activation_threshold: 0.5,
            deactivation_threshold: 0.35,
            min_speech_duration: Duration::from_millis(80),
            min_silence_duration: Duration::from_millis(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VadEvent {
    /// Speech began at stream time `at`.
    SpeechStarted { at: Duration },
    /// Speech continues; `voiced` is its voiced time so far.
    SpeechProgress { voiced: Duration },
    /// Speech ended at stream time `at` (the end of the last voiced frame);
    /// reported `min_silence_duration` later.
    SpeechEnded { at: Duration },
}

/// The hysteresis state machine, fed one score per frame.
pub struct Segmenter {
    opts: VadOptions,
    speaking: bool,
    /// Consecutive voiced time while not yet speaking.
    pending_voiced: Duration,
    pending_start: Duration,
    voiced: Duration,
    silence: Duration,
    last_voiced_end: Duration,
}

impl Segmenter {
    pub fn new(opts: VadOptions) -> Self {
        Self {
            opts,
            speaking: false,
            pending_voiced: Duration::ZERO,
            pending_start: Duration::ZERO,
            voiced: Duration::ZERO,
            silence: Duration::ZERO,
            last_voiced_end: Duration::ZERO,
        }
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds the score of the frame spanning `[end - len, end)` of stream time.
    pub fn push(&mut self, score: f32, end: Duration, len: Duration) -> Option<VadEvent> {
        let start = end.saturating_sub(len);
        if !self.speaking {
            if score >= self.opts.activation_threshold {
                if self.pending_voiced.is_zero() {
                    self.pending_start = start;
                }
                self.pending_voiced += len;
                if self.pending_voiced >= self.opts.min_speech_duration {
                    self.speaking = true;
                    self.voiced = self.pending_voiced;
                    self.silence = Duration::ZERO;
                    self.last_voiced_end = end;
                    self.pending_voiced = Duration::ZERO;
                    return Some(VadEvent::SpeechStarted {
                        at: self.pending_start,
                    });
                }
            } else {
                self.pending_voiced = Duration::ZERO;
            }
            return None;
        }
        if score >= self.opts.deactivation_threshold {
            self.voiced += len;
            self.silence = Duration::ZERO;
            self.last_voiced_end = end;
            Some(VadEvent::SpeechProgress {
                voiced: self.voiced,
            })
        } else {
            self.silence += len;
            if self.silence >= self.opts.min_silence_duration {
                self.speaking = false;
                self.voiced = Duration::ZERO;
                Some(VadEvent::SpeechEnded {
                    at: self.last_voiced_end,
                })
            } else {
                None
            }
        }
    }
}

/// A model plus segmenter that takes frames of any rate and length.
pub struct VoiceDetector {
    model: Box<dyn VadModel>,
    segmenter: Segmenter,
    converter: FrameConverter,
    /// Samples waiting to fill the model's next frame.
    pending: Vec<i16>,
    /// Stream time of the end of the audio scored so far.
    scored: Duration,
    frame_duration: Duration,
}

impl VoiceDetector {
    pub fn new(model: Box<dyn VadModel>, opts: VadOptions) -> Self {
        let rate = model.sample_rate();
        let frame_duration = duration_of(model.frame_len(), rate);
        Self {
            segmenter: Segmenter::new(opts),
            converter: FrameConverter::new(rate),
            pending: Vec::with_capacity(model.frame_len() * 2),
            scored: Duration::ZERO,
            frame_duration,
            model,
        }
    }

    /// Feeds audio; calls `on_event` for each event it produces.
    pub fn push(&mut self, frame: &AudioFrame, mut on_event: impl FnMut(VadEvent)) {
        let converted = self.converter.convert(frame);
        self.pending.extend_from_slice(&converted.samples);
        let n = self.model.frame_len();
        let mut offset = 0;
        while self.pending.len() - offset >= n {
            let score = self.model.score(&self.pending[offset..offset + n]);
            offset += n;
            self.scored += self.frame_duration;
            if let Some(e) = self.segmenter.push(score, self.scored, self.frame_duration) {
                on_event(e);
            }
        }
        self.pending.drain(..offset);
    }

    pub fn is_speaking(&self) -> bool {
        self.segmenter.is_speaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn run(scores: &[f32]) -> Vec<(u64, VadEvent)> {
        let mut s = Segmenter::new(VadOptions::default());
        let mut out = Vec::new();
        for (i, &score) in scores.iter().enumerate() {
            let end = ms(10 * (i as u64 + 1));
            if let Some(e) = s.push(score, end, ms(10))
                && !matches!(e, VadEvent::SpeechProgress { .. })
            {
                out.push((10 * (i as u64 + 1), e));
            }
        }
        out
    }

    #[test]
    fn speech_is_bracketed_by_its_voiced_frames() {
        // 200 ms silence, 500 ms voice, 500 ms silence (10 ms frames).
        let mut scores = vec![0.0; 20];
        scores.extend(vec![0.9; 50]);
        scores.extend(vec![0.0; 50]);
        let events = run(&scores);
        assert_eq!(
            events,
            vec![
                (280, VadEvent::SpeechStarted { at: ms(200) }),
                (1000, VadEvent::SpeechEnded { at: ms(700) }),
            ]
        );
    }

    #[test]
    fn blips_shorter_than_min_speech_are_ignored() {
        let mut scores = vec![0.0; 10];
        scores.extend(vec![0.9; 5]);
        scores.extend(vec![0.0; 50]);
        assert!(run(&scores).is_empty());
    }

    #[test]
    fn short_pauses_do_not_end_speech() {
        let mut scores = vec![0.9; 30];
        scores.extend(vec![0.0; 20]); // 200 ms pause < 300 ms
        scores.extend(vec![0.9; 30]);
        scores.extend(vec![0.0; 40]);
        let events = run(&scores);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].1, VadEvent::SpeechEnded { at: ms(800) });
    }
}
