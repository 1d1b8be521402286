//! Whisper's log-mel spectrogram, computed in f32 the way the reference
//! (`whisper/audio.py`) does: 400-point STFT with a periodic Hann window and
//! reflect padding, hop 160, power spectrum, Slaney mel filters (librosa's
//! defaults), `log10` clamped at 1e-10, floor at max − 8, then `(x + 4) / 4`.

use std::sync::Arc;

use rustfft::{Fft, FftPlanner, num_complex::Complex32};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
const N_BINS: usize = N_FFT / 2 + 1;

/// Filters and FFT plan, built once per model.
pub struct MelFilters {
    n_mels: usize,
    /// Per mel band: first FFT bin with a non-zero weight and the weights.
    bands: Vec<(usize, Vec<f32>)>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for MelFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFilters")
            .field("n_mels", &self.n_mels)
            .finish()
    }
}

fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels) with Slaney scale and
/// norm, as a dense `[n_mels][N_BINS]` table.
pub fn mel_filter_bank(n_mels: usize) -> Vec<Vec<f32>> {
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|i| i as f64 * sr / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|m| {
            let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
                    let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

impl MelFilters {
    pub fn new(n_mels: usize) -> Self {
        let bands = mel_filter_bank(n_mels)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).unwrap_or(0);
                let weights = if last >= first {
                    row[first..=last].to_vec()
                } else {
                    Vec::new()
                };
                (first, weights)
            })
            .collect();
        let window = (0..N_FFT)
            .map(|i| {
                let x = 2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        let fft = FftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            bands,
            window,
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of `samples` (16 kHz, [-1, 1]): `[n_mels][frames]` row-major,
    /// `frames = samples.len() / HOP`. Returns the values and `frames`.
    pub fn log_mel(&self, samples: &[f32]) -> (Vec<f32>, usize) {
        let frames = samples.len() / HOP;
        let mut out = vec![0f32; self.n_mels * frames];
        if frames == 0 {
            return (out, 0);
        }
        let pad = N_FFT / 2;
        let n = samples.len() as isize;
        // Reflect padding (numpy "reflect": the edge sample is not repeated).
        let at = |i: isize| -> f32 {
            let mut j = i;
            if n <= 1 {
                return samples.first().copied().unwrap_or(0.0);
            }
            loop {
                if j < 0 {
                    j = -j;
                } else if j >= n {
                    j = 2 * (n - 1) - j;
                } else {
                    break;
                }
            }
            samples[j as usize]
        };
        let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0f32; N_BINS];
        for t in 0..frames {
            let start = (t * HOP) as isize - pad as isize;
            for (k, slot) in buf.iter_mut().enumerate() {
                *slot = Complex32::new(at(start + k as isize) * self.window[k], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            for (m, (first, weights)) in self.bands.iter().enumerate() {
                let s: f32 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out[m * frames + t] = s.max(1e-10).log10();
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut out {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        (out, frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_bank_matches_librosa_shape() {
        let fb = mel_filter_bank(80);
        assert_eq!(fb.len(), 80);
        assert_eq!(fb[0].len(), 201);
        // librosa: first band peaks at bin 1 with weight ≈ 0.02486.
        assert!((fb[0][1] - 0.024_862).abs() < 1e-4, "{}", fb[0][1]);
        assert!(fb.iter().all(|row| row.iter().all(|&w| w >= 0.0)));
    }

    #[test]
    fn silence_is_flat_and_frames_follow_hop() {
        let mel = MelFilters::new(80);
        let (v, frames) = mel.log_mel(&vec![0.0; 16_000]);
        assert_eq!(frames, 100);
        assert!(v.iter().all(|&x| (x - (-1.5)).abs() < 1e-6));
    }
}
