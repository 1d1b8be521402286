//! Helpers shared by the engine tests: the model cache, espeak-ng fixtures
//! resampled to 16 kHz, and simple signal measures. The model cache helpers
//! exist with feature `local` only. Speech, WAV reading and scratch
//! directories come from `e2e_tests`, shared with the other crates' tests.
#![allow(dead_code)]

#[cfg(feature = "local")]
use speech::{ModelCache, ModelFile};

/// The cache the engines load from. Tests fail (not skip) when a file is
/// missing: the project's test script runs `voice-agent download-files` first.
#[cfg(feature = "local")]
pub fn cache() -> ModelCache {
    ModelCache::new(ModelCache::default_root())
}

/// Panics with the cache's own message (which names `voice-agent
/// download-files`) if a file is missing.
#[cfg(feature = "local")]
pub fn require(files: &[ModelFile]) -> ModelCache {
    let cache = cache();
    for &f in files {
        if let Err(e) = cache.file(f) {
            panic!("{e}");
        }
    }
    cache
}

/// Speech of `text` made by the `espeak-ng` binary: (samples, rate).
pub fn espeak_speech(text: &str) -> (Vec<i16>, u32) {
    let pcm = e2e_tests::espeak_pcm(text, &[]).unwrap_or_else(|e| panic!("{e}"));
    (pcm.samples, pcm.sample_rate)
}

/// Speech of `text` at 16 kHz, as f32 in [-1, 1].
pub fn espeak_speech_16k(text: &str) -> Vec<f32> {
    let (pcm, rate) = espeak_speech(text);
    to_16k_f32(&pcm, rate)
}

pub fn to_16k_f32(pcm: &[i16], rate: u32) -> Vec<f32> {
    let pcm = if rate == 16_000 {
        pcm.to_vec()
    } else {
        let mut r = agent::Resampler::new(rate, 16_000);
        let mut out = Vec::new();
        r.process_into(pcm, &mut out);
        // Flush the resampler's delay line with silence.
        r.process_into(&vec![0i16; rate as usize / 10], &mut out);
        out
    };
    pcm.iter().map(|&s| s as f32 / 32768.0).collect()
}

/// RMS level in dBFS.
pub fn dbfs(pcm: &[i16]) -> f32 {
    agent::AudioFrame::new(pcm.to_vec(), 16_000, 1).level_dbfs()
}

/// Start and end (seconds) of the audible part: the first and last 10 ms
/// window whose RMS is above -40 dBFS.
pub fn audible_span(pcm: &[f32], rate: u32) -> (f32, f32) {
    let win = rate as usize / 100;
    let loud: Vec<bool> = pcm
        .chunks(win)
        .map(|c| {
            let rms = (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt();
            rms > 0.01
        })
        .collect();
    let first = loud.iter().position(|&l| l).expect("no audible audio");
    let last = loud.iter().rposition(|&l| l).expect("no audible audio");
    (first as f32 / 100.0, (last + 1) as f32 / 100.0)
}
