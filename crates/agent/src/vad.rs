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

/// A window whose samples are all within this is digital silence (−84 dBFS,
/// below any microphone's noise floor): a DTX sender's gaps filled with zeros, or
/// its keep-alive frames.
const SILENT_PEAK: u16 = 2;
/// Digital silence the model must have scored before its score may be taken as
/// settled, so that its recurrent state has settled too.
const SETTLE_TIME: Duration = Duration::from_secs(1);
/// Largest change between two scores of a settled model. earshot's score on
/// zeros drifts by 1e-3 a window after 1 s and 1e-5 after 3 s, towards 0.164:
/// nowhere near a threshold, and never settled to 1e-6.
const SETTLE_DELTA: f32 = 1e-3;

/// Most of what a listening agent hears is digital silence. Once the model has
/// scored a second of it and its score moves by less than [`SETTLE_DELTA`] a
/// window, it is not run on more of it: that score is reused until anything
/// louder comes. The model then meets the next speech in the state a second of
/// silence left it in, as silent as the state more silence would have.
struct SettledSilence {
    /// Silent windows to score before the score may count as settled.
    settle_frames: u32,
    /// Consecutive silent windows scored.
    frames: u32,
    last: f32,
    settled: Option<f32>,
}

impl SettledSilence {
    fn new(frame_duration: Duration) -> Self {
        let per_frame = frame_duration.as_secs_f64().max(1e-3);
        Self {
            settle_frames: (SETTLE_TIME.as_secs_f64() / per_frame).ceil() as u32,
            frames: 0,
            last: f32::NAN,
            settled: None,
        }
    }

    /// The score of a silent window: the settled one, or `run`'s.
    fn score(&mut self, run: impl FnOnce() -> f32) -> f32 {
        if let Some(score) = self.settled {
            return score;
        }
        let score = run();
        self.frames = self.frames.saturating_add(1);
        if self.frames >= self.settle_frames && (score - self.last).abs() <= SETTLE_DELTA {
            self.settled = Some(score);
        }
        self.last = score;
        score
    }

    /// A window that is not silent.
    fn broken(&mut self) {
        self.frames = 0;
        self.settled = None;
    }
}

/// A model plus segmenter that takes frames of any rate and length.
pub struct VoiceDetector {
    model: Box<dyn VadModel>,
    silence: SettledSilence,
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
            silence: SettledSilence::new(frame_duration),
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
            let window = &self.pending[offset..offset + n];
            let score = if window.iter().all(|s| s.unsigned_abs() <= SILENT_PEAK) {
                self.silence.score(|| self.model.score(window))
            } else {
                self.silence.broken();
                self.model.score(window)
            };
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

    /// Counts its runs. On silence its score decays towards 0 (as a recurrent
    /// model's does), unless `restless`, when it never settles.
    struct CountingModel {
        runs: std::sync::Arc<std::sync::atomic::AtomicU32>,
        score: f32,
        restless: bool,
    }

    impl VadModel for CountingModel {
        fn sample_rate(&self) -> u32 {
            16_000
        }
        fn frame_len(&self) -> usize {
            256
        }
        fn score(&mut self, frame: &[i16]) -> f32 {
            self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let loud = frame.iter().any(|s| s.unsigned_abs() > 1000);
            self.score = if loud {
                0.9
            } else if self.restless {
                0.3 - self.score
            } else {
                self.score * 0.9
            };
            self.score
        }
        fn reset(&mut self) {}
    }

    fn detector(restless: bool) -> (VoiceDetector, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let model = CountingModel {
            runs: runs.clone(),
            score: 0.3,
            restless,
        };
        (
            VoiceDetector::new(Box::new(model), VadOptions::default()),
            runs,
        )
    }

    fn feed(d: &mut VoiceDetector, sample: i16, windows: usize) -> Vec<VadEvent> {
        let mut events = Vec::new();
        let frame = AudioFrame::new(vec![sample; 256 * windows], 16_000, 1);
        d.push(&frame, |e| {
            if !matches!(e, VadEvent::SpeechProgress { .. }) {
                events.push(e)
            }
        });
        events
    }

    #[test]
    fn settled_digital_silence_is_not_scored_again() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut d, runs) = detector(false);
        // 4 s of zeros: scored until 1 s (63 windows) has passed and the score
        // has stopped moving.
        assert!(feed(&mut d, 0, 250).is_empty());
        assert_eq!(runs.load(Relaxed), 63);
        // Keep-alive frames' near-silence is silence too.
        feed(&mut d, 2, 50);
        assert_eq!(runs.load(Relaxed), 63);
        // Speech is scored, and heard.
        let events = feed(&mut d, 3000, 20);
        assert_eq!(runs.load(Relaxed), 83);
        assert_eq!(events, vec![VadEvent::SpeechStarted { at: ms(4_800) }]);
        // After it, silence must settle again before it is skipped.
        let events = feed(&mut d, 0, 250);
        assert!(matches!(events[..], [VadEvent::SpeechEnded { .. }]));
        assert_eq!(runs.load(Relaxed), 83 + 63);
        // Quiet noise above digital silence is always scored.
        feed(&mut d, 3, 10);
        assert_eq!(runs.load(Relaxed), 83 + 63 + 10);
    }

    #[test]
    fn a_score_that_keeps_moving_is_scored_every_window() {
        let (mut d, runs) = detector(true);
        feed(&mut d, 0, 300);
        assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 300);
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
