//! Audio fixtures and measures: speech made with espeak-ng ([`espeak`],
//! [`espeak_turns`], [`espeak_pcm`]), mono 16-bit WAV files ([`read_wav`],
//! [`write_wav`]), linear resampling, and the comparison of two recordings of
//! the same speech by their 10 ms RMS envelopes ([`match_speech`]).

use std::path::Path;

use tokio::process::Command;

use crate::{HarnessError, scratch};

/// Mono 16-bit PCM and its rate.
#[derive(Debug, Clone)]
pub struct Pcm {
    /// Samples.
    pub samples: Vec<i16>,
    /// Rate.
    pub sample_rate: u32,
}

impl Pcm {
    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Speak `text` with espeak-ng into `path` (22.05 kHz mono WAV).
pub async fn espeak(text: &str, path: &Path) -> Result<(), HarnessError> {
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(path)
        .arg(text)
        .status()
        .await
        .map_err(|_| HarnessError::Missing("espeak-ng".into()))?;
    if !status.success() {
        return Err(HarnessError::Other(format!("espeak-ng failed: {status}")));
    }
    Ok(())
}

/// Speech of `text` made by espeak-ng with these extra arguments (`["-v",
/// "en-us", "-s", "160"]`: voice and words a minute), read back from a
/// scratch WAV (22.05 kHz mono). Blocking, for tests and benches without a
/// runtime.
pub fn espeak_pcm(text: &str, args: &[&str]) -> Result<Pcm, HarnessError> {
    let dir = scratch("espeak");
    let wav = dir.join("speech.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .map_err(|_| HarnessError::Missing("espeak-ng".into()))?;
    if !status.success() {
        return Err(HarnessError::Other(format!("espeak-ng failed: {status}")));
    }
    let pcm = read_wav(&wav);
    let _ = std::fs::remove_dir_all(&dir);
    pcm
}

/// Speaks each text with espeak-ng, each followed by its seconds of silence,
/// into one WAV at `path` (22.05 kHz mono): a user asking several questions.
/// An empty text is silence only (a user who waits before speaking).
pub async fn espeak_turns(turns: &[(&str, f64)], path: &Path) -> Result<(), HarnessError> {
    let mut all = Pcm {
        samples: Vec::new(),
        sample_rate: 22_050,
    };
    for (i, (text, silence)) in turns.iter().enumerate() {
        if !text.is_empty() {
            let part = path.with_extension(format!("part{i}.wav"));
            espeak(text, &part).await?;
            let pcm = read_wav(&part)?;
            let _ = std::fs::remove_file(&part);
            all.sample_rate = pcm.sample_rate;
            all.samples.extend_from_slice(&pcm.samples);
        }
        let gap = (silence * f64::from(all.sample_rate)) as usize;
        all.samples.extend(std::iter::repeat_n(0i16, gap));
    }
    write_wav(path, &all)
}

/// Read a WAV (first channel).
pub fn read_wav(path: &Path) -> Result<Pcm, HarnessError> {
    let mut r = hound::WavReader::open(path)
        .map_err(|e| HarnessError::Other(format!("wav {}: {e}", path.display())))?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let samples: Vec<i16> = r
        .samples::<i16>()
        .step_by(ch)
        .collect::<Result<_, _>>()
        .map_err(|e| HarnessError::Other(format!("wav samples: {e}")))?;
    Ok(Pcm {
        samples,
        sample_rate: spec.sample_rate,
    })
}

/// Write mono 16-bit WAV.
pub fn write_wav(path: &Path, pcm: &Pcm) -> Result<(), HarnessError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: pcm.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w =
        hound::WavWriter::create(path, spec).map_err(|e| HarnessError::Other(e.to_string()))?;
    for &s in &pcm.samples {
        w.write_sample(s)
            .map_err(|e| HarnessError::Other(e.to_string()))?;
    }
    w.finalize().map_err(|e| HarnessError::Other(e.to_string()))
}

/// Linear resampling (good enough for envelopes and fixtures).
pub fn resample(pcm: &Pcm, rate: u32) -> Pcm {
    if pcm.sample_rate == rate || pcm.samples.is_empty() {
        return Pcm {
            samples: pcm.samples.clone(),
            sample_rate: rate,
        };
    }
    let n = (pcm.samples.len() as u64 * rate as u64 / pcm.sample_rate as u64) as usize;
    let step = pcm.sample_rate as f64 / rate as f64;
    let samples = (0..n)
        .map(|i| {
            let x = i as f64 * step;
            let j = x as usize;
            let f = x - j as f64;
            let a = pcm.samples[j.min(pcm.samples.len() - 1)] as f64;
            let b = pcm.samples[(j + 1).min(pcm.samples.len() - 1)] as f64;
            (a + (b - a) * f) as i16
        })
        .collect();
    Pcm {
        samples,
        sample_rate: rate,
    }
}

/// RMS envelope in 10 ms windows.
pub fn envelope(pcm: &Pcm) -> Vec<f64> {
    let w = (pcm.sample_rate / 100).max(1) as usize;
    pcm.samples
        .chunks(w)
        .map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// Index range of the voiced part: first and last window above 5 % of the peak.
pub fn voiced(env: &[f64]) -> Option<(usize, usize)> {
    let peak = env.iter().cloned().fold(0.0, f64::max);
    if peak <= 0.0 {
        return None;
    }
    let thr = peak * 0.05;
    let first = env.iter().position(|&e| e > thr)?;
    let last = env.iter().rposition(|&e| e > thr)?;
    Some((first, last))
}

/// Pearson correlation of two equally long series.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..n {
        num += (a[i] - ma) * (b[i] - mb);
        da += (a[i] - ma).powi(2);
        db += (b[i] - mb).powi(2);
    }
    if da == 0.0 || db == 0.0 {
        0.0
    } else {
        num / (da * db).sqrt()
    }
}

/// Best envelope correlation of `got` against `reference` over lags of ±`max_lag`
/// windows, after trimming both to their voiced parts. Returns (correlation, voiced
/// duration of `got` in seconds, voiced duration of `reference` in seconds).
pub fn match_speech(reference: &Pcm, got: &Pcm, max_lag: usize) -> (f64, f64, f64) {
    let er = envelope(reference);
    let eg = envelope(got);
    let (Some((r0, r1)), Some((g0, g1))) = (voiced(&er), voiced(&eg)) else {
        return (0.0, 0.0, 0.0);
    };
    let r = &er[r0..=r1];
    let mut best = f64::MIN;
    for lag in 0..=(2 * max_lag) {
        let start = (g0 + lag).saturating_sub(max_lag);
        if start >= eg.len() {
            break;
        }
        let end = (start + r.len()).min(eg.len());
        best = best.max(correlation(r, &eg[start..end]));
    }
    (
        best,
        (g1 - g0 + 1) as f64 / 100.0,
        (r1 - r0 + 1) as f64 / 100.0,
    )
}
