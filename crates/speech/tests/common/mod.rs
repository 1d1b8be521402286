//! Helpers shared by the engine tests: the model cache, espeak-ng fixtures,
//! WAV reading, resampling and simple signal measures. The model cache
//! helpers exist with feature `local` only.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A scratch directory unique to this test.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("speech-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Speech of `text` made by the `espeak-ng` binary: (samples, rate).
pub fn espeak_speech(text: &str) -> (Vec<i16>, u32) {
    let dir = scratch("espeak");
    let wav = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .expect("run espeak-ng (Debian package espeak-ng)");
    assert!(status.success(), "espeak-ng failed");
    let bytes = std::fs::read(&wav).expect("read espeak-ng wav");
    let _ = std::fs::remove_dir_all(&dir);
    read_wav(&bytes)
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

/// Reads a 16-bit PCM mono WAV: (samples, rate).
pub fn read_wav(bytes: &[u8]) -> (Vec<i16>, u32) {
    assert!(bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE");
    let mut pos = 12;
    let mut rate = 0;
    let mut channels = 1;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!(bits, 16, "16-bit WAV expected");
        } else if id == b"data" {
            let samples: Vec<i16> = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(channels, 1, "mono WAV expected");
            return (samples, rate);
        }
        pos += 8 + len + (len & 1);
    }
    panic!("WAV without data chunk");
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
