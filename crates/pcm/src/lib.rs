//! PCM audio: the one frame type every crate of voice-agent passes (the
//! agent's stages, the room participant's tracks, local devices and files),
//! and a streaming resampler between their rates.
//!
//! The resampler is our own (windowed sinc, polyphase): the well-kept crates
//! for it (rubato, libsamplerate bindings) are float-only or C, and a stage
//! boundary needs i16 in, i16 out, any chunk length, no allocation per frame
//! after the first, and continuity across frames; it is about 130 lines,
//! pinned by the tests below.
//!
//! # Layout
//!
//! One file: [`AudioFrame`] and its duration helpers ([`samples_for`],
//! [`duration_of`]), the [`Resampler`], and [`FrameConverter`] (a frame of any
//! rate or channel count to one mono rate).

use std::sync::Arc;
use std::time::Duration;

/// Interleaved signed 16-bit PCM.
///
/// Samples sit behind an `Arc` so a frame fans out (to VAD, STT, the end-of-turn
/// buffer, a recorder) without copying.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioFrame {
    pub samples: Arc<[i16]>,
    pub sample_rate: u32,
    pub channels: u16,
}

impl AudioFrame {
    pub fn new(samples: impl Into<Arc<[i16]>>, sample_rate: u32, channels: u16) -> Self {
        Self {
            samples: samples.into(),
            sample_rate,
            channels,
        }
    }

    /// A frame of silence lasting `duration`.
    pub fn silence(duration: Duration, sample_rate: u32, channels: u16) -> Self {
        let n = samples_for(duration, sample_rate) * channels as usize;
        Self::new(vec![0i16; n], sample_rate, channels)
    }

    /// Samples per channel.
    pub fn samples_per_channel(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }

    pub fn duration(&self) -> Duration {
        duration_of(self.samples_per_channel(), self.sample_rate)
    }

    /// The frame cut into consecutive frames of at most `max` each (the last
    /// may be shorter); the frame itself when it is short enough.
    pub fn split(&self, max: Duration) -> Vec<AudioFrame> {
        let per = samples_for(max, self.sample_rate).max(1) * self.channels.max(1) as usize;
        if self.samples.len() <= per {
            return vec![self.clone()];
        }
        self.samples
            .chunks(per)
            .map(|c| AudioFrame::new(c, self.sample_rate, self.channels))
            .collect()
    }

    /// The frame down-mixed to one channel (a cheap clone when already mono).
    pub fn to_mono(&self) -> AudioFrame {
        if self.channels <= 1 {
            return self.clone();
        }
        let ch = self.channels as usize;
        let mono: Vec<i16> = self
            .samples
            .chunks_exact(ch)
            .map(|s| (s.iter().map(|&v| v as i32).sum::<i32>() / ch as i32) as i16)
            .collect();
        AudioFrame::new(mono, self.sample_rate, 1)
    }

    /// Root-mean-square level in dBFS (−100 for digital silence).
    pub fn level_dbfs(&self) -> f32 {
        if self.samples.is_empty() {
            return -100.0;
        }
        let sum: f64 = self.samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
        let rms = (sum / self.samples.len() as f64).sqrt() / 32768.0;
        if rms <= 1e-5 {
            -100.0
        } else {
            (20.0 * rms.log10()) as f32
        }
    }
}

/// Number of samples (per channel) in `duration` at `rate`.
pub fn samples_for(duration: Duration, rate: u32) -> usize {
    (duration.as_nanos() * rate as u128 / 1_000_000_000) as usize
}

/// Duration of `samples` (per channel) at `rate`.
pub fn duration_of(samples: usize, rate: u32) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((samples as u128 * 1_000_000_000 / rate as u128) as u64)
}

/// Half-width of the windowed-sinc kernel in zero crossings of the low-pass.
/// 16 keeps speech aliasing below −40 dB at a cost of ~1 ms of delay.
const ZERO_CROSSINGS: usize = 16;

/// Sub-sample positions at which the kernel is tabulated.
const PHASES: usize = 256;

/// A streaming mono resampler (windowed sinc, polyphase table with linear
/// interpolation between phases). Feed it frames of any length; it keeps the
/// tail it needs between calls, so output is continuous across frame edges.
pub struct Resampler {
    from: u32,
    to: u32,
    /// Input samples consumed per output sample.
    step: f64,
    /// Kernel half-width in input samples (wider when downsampling, so the
    /// low-pass sits at the output's Nyquist frequency).
    half: usize,
    /// Position of the next output sample, in input samples, relative to `history[0]`.
    pos: f64,
    /// Input not yet fully consumed (includes `half` samples of look-behind).
    history: Vec<f32>,
    /// `PHASES + 1` rows of `2 * half` taps.
    table: Vec<f32>,
}

impl Resampler {
    pub fn new(from: u32, to: u32) -> Self {
        let step = from as f64 / to.max(1) as f64;
        // Low-pass just inside the lower Nyquist frequency.
        let cutoff = 0.92 * (1.0 / step).min(1.0);
        let half = (ZERO_CROSSINGS as f64 / cutoff).ceil() as usize;
        let taps = 2 * half;
        let mut table = vec![0f32; (PHASES + 1) * taps];
        for (phase, row) in table.chunks_exact_mut(taps).enumerate() {
            let frac = phase as f64 / PHASES as f64;
            let mut sum = 0.0;
            for (tap, w) in row.iter_mut().enumerate() {
                // Distance from the output point to input sample `tap`.
                let x = tap as f64 - (half as f64 - 1.0) - frac;
                let sinc = if x.abs() < 1e-9 {
                    1.0
                } else {
                    let a = std::f64::consts::PI * x * cutoff;
                    a.sin() / a
                };
                // Blackman window over the kernel span.
                let n = (x + half as f64) / taps as f64;
                let window = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * n).cos()
                    + 0.08 * (4.0 * std::f64::consts::PI * n).cos();
                let v = sinc * window.max(0.0);
                *w = v as f32;
                sum += v;
            }
            // Unity gain at DC for every phase.
            for w in row.iter_mut() {
                *w = (*w as f64 / sum) as f32;
            }
        }
        Self {
            from,
            to,
            step,
            half,
            pos: (half - 1) as f64,
            history: vec![0.0; half - 1],
            table,
        }
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Resamples `input` (mono) and appends the output to `out`.
    pub fn process_into(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.from == self.to {
            out.extend_from_slice(input);
            return;
        }
        let (half, taps) = (self.half, 2 * self.half);
        self.history.extend(input.iter().map(|&s| s as f32));
        // The kernel around `pos` needs `half` samples after floor(pos).
        while self.pos + (half as f64) < self.history.len() as f64 {
            let base = self.pos.floor() as usize;
            let phase_f = (self.pos - base as f64) * PHASES as f64;
            let phase = phase_f as usize;
            let mix = (phase_f - phase as f64) as f32;
            let start = base + 1 - half;
            let window = &self.history[start..start + taps];
            let a = &self.table[phase * taps..(phase + 1) * taps];
            let mut acc = 0f32;
            if mix == 0.0 {
                // On a tabulated phase (always, for integer ratios like 48k→16k).
                for i in 0..taps {
                    acc += window[i] * a[i];
                }
            } else {
                let b = &self.table[(phase + 1) * taps..(phase + 2) * taps];
                for i in 0..taps {
                    acc += window[i] * (a[i] + (b[i] - a[i]) * mix);
                }
            }
            out.push(acc.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16);
            self.pos += self.step;
        }
        // Drop what no future output needs, keeping the look-behind.
        let keep_from = (self.pos.floor() as usize + 1).saturating_sub(half);
        if keep_from > 0 {
            self.history.drain(..keep_from);
            self.pos -= keep_from as f64;
        }
    }

    /// Resamples a whole frame (down-mixed to mono first).
    pub fn process(&mut self, frame: &AudioFrame) -> AudioFrame {
        let mono = frame.to_mono();
        let mut out = Vec::with_capacity(
            (mono.samples.len() as u64 * self.to as u64 / self.from.max(1) as u64) as usize + 2,
        );
        self.process_into(&mono.samples, &mut out);
        AudioFrame::new(out, self.to, 1)
    }
}

/// Converts frames of any rate and channel count to mono at one target rate,
/// building a resampler when the input rate changes.
pub struct FrameConverter {
    target: u32,
    resampler: Option<Resampler>,
}

impl FrameConverter {
    pub fn new(target_rate: u32) -> Self {
        Self {
            target: target_rate,
            resampler: None,
        }
    }

    pub fn target_rate(&self) -> u32 {
        self.target
    }

    pub fn convert(&mut self, frame: &AudioFrame) -> AudioFrame {
        if frame.sample_rate == self.target {
            return frame.to_mono();
        }
        let resampler = match &mut self.resampler {
            Some(r) if r.input_rate() == frame.sample_rate => r,
            slot => slot.insert(Resampler::new(frame.sample_rate, self.target)),
        };
        resampler.process(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmixes_interleaved_stereo() {
        let f = AudioFrame::new(vec![100i16, 300, -50, 50], 24_000, 2);
        assert_eq!(&*f.to_mono().samples, &[200, 0]);
        assert_eq!(f.to_mono().channels, 1);
        let m = AudioFrame::new(vec![1i16, 2, 3], 24_000, 1);
        assert_eq!(&*m.to_mono().samples, &[1, 2, 3]);
    }

    #[test]
    fn split_cuts_into_whole_frames_of_at_most_the_duration() {
        let f = AudioFrame::new(
            (0..2 * 1000).map(|i| i as i16).collect::<Vec<_>>(),
            16_000,
            2,
        );
        let parts = f.split(Duration::from_millis(20));
        // 1000 samples per channel at 16 kHz: 320 + 320 + 320 + 40.
        let lens: Vec<usize> = parts.iter().map(AudioFrame::samples_per_channel).collect();
        assert_eq!(lens, vec![320, 320, 320, 40]);
        let joined: Vec<i16> = parts
            .iter()
            .flat_map(|p| p.samples.iter().copied())
            .collect();
        assert_eq!(joined, f.samples.to_vec());
        assert_eq!(f.split(Duration::from_millis(100)), vec![f.clone()]);
    }

    fn sine(freq: f64, rate: u32, secs: f64) -> Vec<i16> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| {
                (10000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin())
                    as i16
            })
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn resampled_length_matches_ratio_across_odd_chunking() {
        for (from, to) in [
            (48000, 16000),
            (16000, 24000),
            (44100, 48000),
            (22050, 16000),
        ] {
            let input = sine(440.0, from, 1.0);
            let mut r = Resampler::new(from, to);
            let mut out = Vec::new();
            for chunk in input.chunks(317) {
                r.process_into(chunk, &mut out);
            }
            // What is held back is the kernel's look-ahead, in output samples.
            let held = (r.half as f64 * to as f64 / from as f64).ceil() as i64 + 2;
            assert!(
                (out.len() as i64 - to as i64).abs() <= held,
                "{from}->{to}: {} samples",
                out.len()
            );
        }
    }

    #[test]
    fn passband_tone_keeps_its_level_and_frequency() {
        let input = sine(1000.0, 48000, 0.5);
        let mut r = Resampler::new(48000, 16000);
        let mut out = Vec::new();
        r.process_into(&input, &mut out);
        let body = &out[200..out.len() - 200];
        let ratio = rms(body) / rms(&input);
        assert!((ratio - 1.0).abs() < 0.02, "gain {ratio}");
        // Zero crossings of a 1 kHz tone: 2000 per second.
        let crossings = body.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        let per_sec = crossings as f64 / (body.len() as f64 / 16000.0);
        assert!((per_sec - 2000.0).abs() < 20.0, "{per_sec} crossings/s");
    }

    #[test]
    fn tone_above_target_nyquist_is_removed() {
        // 10 kHz cannot exist at 16 kHz; it must not alias down to 6 kHz.
        let input = sine(10000.0, 48000, 0.5);
        let mut r = Resampler::new(48000, 16000);
        let mut out = Vec::new();
        r.process_into(&input, &mut out);
        let ratio = rms(&out[200..out.len() - 200]) / rms(&input);
        assert!(ratio < 0.01, "alias gain {ratio}");
    }

    #[test]
    fn converter_downmixes_stereo() {
        let frame = AudioFrame::new(vec![100i16, 300, 100, 300], 16000, 2);
        let mut c = FrameConverter::new(16000);
        let out = c.convert(&frame);
        assert_eq!(out.channels, 1);
        assert_eq!(&out.samples[..], &[200, 200]);
    }

    #[test]
    fn durations_round_trip() {
        let f = AudioFrame::silence(Duration::from_millis(20), 48000, 2);
        assert_eq!(f.samples.len(), 1920);
        assert_eq!(f.duration(), Duration::from_millis(20));
    }
}
