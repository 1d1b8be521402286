//! Smart Turn v3.2 (pipecat's end-of-turn model, ONNX) behind
//! [`TurnDetector`]: it hears the last 8 s of the user's audio and says how
//! likely it is that they have finished speaking.
//!
//! Features are whisper log-mels, computed exactly as pipecat's
//! `_whisper_features.py` does (checked against it, see the tests): the
//! waveform is normalised in f32 (numpy's pairwise f32 sums, which is what
//! the reference does and what the model was tuned on), then the spectrogram
//! and mel projection run in f64 and the result is cast to f32.
//!
//! Inference runs on tokio's blocking pool, at most one per core at once
//! ([`SessionPool`]), never on the async runtime.

use std::sync::Arc;

use agent::{StageError, TurnDetector, TurnInput};
use async_trait::async_trait;
use ort::session::Session;
use ort::value::Tensor;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::error::SpeechError;
use crate::models::{ModelCache, ModelFile};
use crate::onnx::{self, SessionPool};

const ENGINE: &str = "smart-turn";
const SAMPLE_RATE: usize = 16_000;
/// The model hears this many samples (8 s).
pub const WINDOW: usize = 8 * SAMPLE_RATE;
const N_FFT: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 80;
/// Frames the model takes (the 801st frame of the STFT is dropped).
pub const N_FRAMES: usize = 800;
const N_BINS: usize = N_FFT / 2 + 1;

/// Smart Turn v3.2 end-of-turn detector. Cheap to clone; clones share the
/// model sessions.
#[derive(Clone)]
pub struct SmartTurn {
    pool: Arc<SessionPool>,
    mel: Arc<LogMel>,
    threshold: f32,
}

impl SmartTurn {
    /// Below this probability a turn is judged unfinished (pipecat's own
    /// cut-off for "complete" is 0.5).
    pub const DEFAULT_THRESHOLD: f32 = 0.5;

    /// Loads the runtime and model from the cache. Up to one inference per
    /// available core runs at once.
    pub fn new(cache: &ModelCache) -> Result<Self, SpeechError> {
        let env = onnx::environment(cache)?;
        let model = onnx::read_model(cache, ModelFile::SmartTurn)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = SessionPool::new(ENGINE, env, model, cores)?;
        Ok(Self {
            pool,
            mel: Arc::new(LogMel::new()),
            threshold: Self::DEFAULT_THRESHOLD,
        })
    }

    /// Sets the probability below which a turn counts as unfinished.
    pub fn with_threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold.clamp(0.0, 1.0);
        self
    }

    /// The end-of-turn probability of 16 kHz mono audio (the last 8 s count).
    /// Runs on the blocking pool.
    pub async fn predict(&self, audio: Arc<[f32]>) -> Result<f32, SpeechError> {
        let mut slot = self.pool.acquire().await?;
        let mel = self.mel.clone();
        tokio::task::spawn_blocking(move || infer(&mel, slot.session()?, &audio))
            .await
            .map_err(|e| onnx::ort_error(ENGINE, e))?
    }

    /// The blocking form of [`predict`](Self::predict), for benchmarks and
    /// callers on their own threads.
    pub fn predict_blocking(&self, audio: &[f32]) -> Result<f32, SpeechError> {
        let mut slot = self.pool.acquire_blocking()?;
        infer(&self.mel, slot.session()?, audio)
    }
}

/// Features, then one inference: the probability that the turn is over.
fn infer(mel: &LogMel, session: &mut Session, audio: &[f32]) -> Result<f32, SpeechError> {
    let features = mel.features(audio);
    let input = Tensor::from_array(([1usize, N_MELS, N_FRAMES], features))
        .map_err(|e| onnx::ort_error(ENGINE, e))?;
    let outputs = session
        .run(ort::inputs!["input_features" => input])
        .map_err(|e| onnx::ort_error(ENGINE, e))?;
    let (_, p) = outputs[0]
        .try_extract_tensor::<f32>()
        .map_err(|e| onnx::ort_error(ENGINE, e))?;
    p.first()
        .map(|p| p.clamp(0.0, 1.0))
        .ok_or_else(|| onnx::ort_error(ENGINE, "empty output"))
}

#[async_trait]
impl TurnDetector for SmartTurn {
    async fn end_of_turn_probability(&self, input: TurnInput) -> Result<f32, StageError> {
        Ok(self.predict(input.audio).await?)
    }

    fn unlikely_threshold(&self) -> f32 {
        self.threshold
    }
}

/// Whisper log-mel features for an 8 s window, as pipecat computes them.
pub struct LogMel {
    /// Per mel band: the first FFT bin with a non-zero weight and the
    /// weights from there (Slaney scale and normalisation). Skipping the
    /// zeros changes no result: they add exact zeros.
    filters: Vec<(usize, Vec<f64>)>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMel {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(N_FFT);
        let filters = mel_filters()
            .into_iter()
            .map(|f| {
                let first = f.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = f.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, f[first..last].to_vec())
            })
            .collect();
        Self {
            filters,
            window,
            fft,
        }
    }

    /// `[80 × 800]` features, row-major, of the last 8 s of `audio`
    /// (zero-padded in front when shorter).
    pub fn features(&self, audio: &[f32]) -> Vec<f32> {
        // The last WINDOW samples, zero-padded at the start.
        let mut x = vec![0f32; WINDOW];
        let take = audio.len().min(WINDOW);
        x[WINDOW - take..].copy_from_slice(&audio[audio.len() - take..]);

        // Normalise in f32 the way numpy does: x.mean(), x.var() with
        // pairwise f32 sums.
        let n = WINDOW as f32;
        let mean = pairwise_sum(&x) / n;
        let centered: Vec<f32> = x.iter().map(|&v| v - mean).collect();
        let squares: Vec<f32> = centered.iter().map(|&v| v * v).collect();
        let var = pairwise_sum(&squares) / n;
        let std = (var + 1e-7f32).sqrt();
        let x: Vec<f64> = x.iter().map(|&v| ((v - mean) / std) as f64).collect();

        // Reflect-pad by N_FFT/2 (numpy "reflect": the edge is not repeated).
        let pad = N_FFT / 2;
        let len = x.len();
        let mut padded = Vec::with_capacity(len + 2 * pad);
        padded.extend((1..=pad).rev().map(|i| x[i]));
        padded.extend_from_slice(&x);
        padded.extend((0..pad).map(|i| x[len - 2 - i]));

        let frames = 1 + (padded.len() - N_FFT) / HOP; // 801
        let mut log_spec = vec![0f64; N_MELS * N_FRAMES];
        let mut buf = vec![Complex::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = [0f64; N_BINS];
        // The last frame is dropped, as the reference does.
        for t in 0..frames.min(N_FRAMES) {
            let start = t * HOP;
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex::new(padded[start + i] * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (k, p) in power.iter_mut().enumerate() {
                *p = buf[k].norm_sqr();
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let e: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(f, p)| f * p)
                    .sum();
                log_spec[m * N_FRAMES + t] = e.max(1e-10).log10();
            }
        }
        let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        log_spec
            .iter()
            .map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
            .collect()
    }
}

/// numpy's pairwise summation for contiguous f32 (`np.add.reduce`): blocks
/// of up to 128 summed with 8 accumulators, halves added recursively.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        let mut res = 0f32;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

fn hz_to_mel(f: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * logstep
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if m >= 15.0 {
        1000.0 * (logstep * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// Slaney-normalised triangular filters, as `_build_mel_filterbank`.
fn mel_filters() -> Vec<[f64; N_BINS]> {
    let mel_min = hz_to_mel(0.0);
    let mel_max = hz_to_mel(SAMPLE_RATE as f64 / 2.0);
    let n_points = N_MELS + 2;
    let filter_freqs: Vec<f64> = (0..n_points)
        .map(|i| mel_to_hz(linspace(mel_min, mel_max, n_points, i)))
        .collect();
    let fft_freqs: Vec<f64> = (0..N_BINS)
        .map(|i| linspace(0.0, (SAMPLE_RATE / 2) as f64, N_BINS, i))
        .collect();
    let mut out = vec![[0f64; N_BINS]; N_MELS];
    for (m, filter) in out.iter_mut().enumerate() {
        let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let down = -(filter_freqs[m] - f) / (filter_freqs[m + 1] - filter_freqs[m]);
            let up = (filter_freqs[m + 2] - f) / (filter_freqs[m + 2] - filter_freqs[m + 1]);
            filter[k] = 0f64.max(down.min(up)) * enorm;
        }
    }
    out
}

/// `np.linspace(start, stop, num)[i]`.
fn linspace(start: f64, stop: f64, num: usize, i: usize) -> f64 {
    if num <= 1 {
        return start;
    }
    let step = (stop - start) / (num - 1) as f64;
    if i == num - 1 {
        stop
    } else {
        start + i as f64 * step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_a_plain_sum_closely() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: f64 = a.iter().map(|&v| v as f64).sum();
        assert!((pairwise_sum(&a) as f64 - plain).abs() < 1e-4);
    }

    #[test]
    fn features_have_the_model_shape_and_range() {
        let audio: Vec<f32> = (0..16_000)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 16_000.0).sin() * 0.3)
            .collect();
        let f = LogMel::new().features(&audio);
        assert_eq!(f.len(), N_MELS * N_FRAMES);
        assert!(f.iter().all(|v| v.is_finite() && *v >= -1.5 && *v <= 2.5));
    }
}
