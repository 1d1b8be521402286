//! Acoustic echo cancellation: the agent's voice, played by the speaker and
//! picked up again by the microphone, is removed from the microphone signal
//! before the session hears it, so the agent does not interrupt itself.
//!
//! # The choice: `aec3`, a pure-Rust port of WebRTC's AEC3
//!
//! Candidates, as found on this project's machines (Debian 12) and registry:
//! - Debian's `libwebrtc-audio-processing-dev` is version 0.3 (a 2016
//!   snapshot): it predates AEC3 and has only the legacy AEC and AECM. The
//!   binding that links it through pkg-config (`webrtc-audio-processing`
//!   0.5) generates its bindings with bindgen, so every build would need
//!   libclang, and it brings a C++ shim and the long-abandoned `failure` crate.
//! - `webrtc-audio-processing` 2.x wraps the modern library (AEC3) but links
//!   `webrtc-audio-processing-2`, which Debian 12 does not package; its
//!   `bundled` feature builds with meson and fetches abseil from the network
//!   when abseil ≥ 20240722 is not installed (Debian 12 has 20220623), which
//!   our builds cannot do.
//! - `aec3` (0.4): a port of that same AEC3 (adaptive filter with delay
//!   estimation, residual echo suppression, comfort noise) plus the WebRTC
//!   high-pass filter, in Rust with one small dependency. Nothing to link,
//!   nothing fetched at build time, same algorithm the modern WebRTC uses.
//!
//! Measured here (see the tests):
//! - synthetic (this module): with a speaker-to-microphone path of 40 ms
//!   delay, a 0.6 gain and some low-pass colouring, echo alone comes out
//!   about 70 dB quieter once converged (the residual suppressor mutes what
//!   the linear filter leaves); near-end speech during double talk keeps its
//!   level within 4 dB, and without far-end audio within 0.5 dB;
//! - through the pump on a simulated sound card (`pump` tests): the agent's
//!   echo 30 ms later comes out 64 dB down once the first-convergence guard
//!   has let go;
//! - on PulseAudio (the device tests, `crates/cli/tests/console_audio.rs`):
//!   with the microphone hearing the speaker's own mix the agent answers
//!   without taking its voice for the user's; with `--no-aec` it interrupts
//!   itself within a second.
//!
//! What it does not survive is an echo path that moves: PulseAudio's
//! `module-loopback`, which keeps re-tuning its rate and latency, left the
//! echo within a few dB after a second or two, and so does a reference that
//! is not in step with the microphone. Hence the pump's design: the reference
//! is what the output callback actually played, fed by the streams' sample
//! clocks; and after a glitch (a late pump, a speaker that ran dry) and during
//! the first 2 s of agent speech the pump mutes the microphone while the agent
//! is audible (see `pump`). On a machine that stalls often (a loaded 2-core
//! VM: pump gaps of 100 ms) that guard, not the canceller, does most of the
//! work, and a user cannot talk over the agent.
//!
//! The canceller runs at 16 kHz mono, the rate the session listens at, in the
//! audio pump thread (never in a device callback).

use aec3::nodes::audio::AudioFormat;
use aec3::pipelines::linear::{self, LinearPipeline};

/// Sample rate the canceller (and the pump's session-side audio) runs at.
pub const ECHO_RATE: u32 = 16_000;

/// Samples in one 10 ms block at [`ECHO_RATE`].
pub const BLOCK: usize = (ECHO_RATE / 100) as usize;

/// A render-reference-plus-capture echo canceller over 10 ms blocks of
/// [`ECHO_RATE`] mono audio, samples in [-1, 1].
pub struct EchoCanceller {
    pipeline: LinearPipeline,
}

#[derive(Debug, thiserror::Error)]
#[error("echo canceller: {0}")]
pub struct EchoError(String);

impl EchoCanceller {
    /// The canceller finds the speaker-to-microphone delay itself. It is
    /// given no first guess: a guess longer than the real delay delays the
    /// reference past the echo, which it then cannot cancel (measured on a
    /// device recording: a 40 ms guess for a 28 ms path left the echo within
    /// 1 dB, where no guess took it 40 dB down).
    pub fn new() -> Result<Self, EchoError> {
        let format = AudioFormat::ten_ms(ECHO_RATE, 1);
        let pipeline = linear::builder(format, format)
            .enable_high_pass_filter(true)
            // The session's VAD and STT want the voice as it is: no noise
            // suppression or gain control beyond removing the echo.
            .enable_noise_suppression(false)
            .enable_gain_controller2(false)
            .enable_post_filter(false)
            .build()
            .map_err(|e| EchoError(e.to_string()))?;
        Ok(Self { pipeline })
    }

    /// What the speaker is about to play: one block.
    pub fn render(&mut self, block: &[f32]) -> Result<(), EchoError> {
        self.pipeline
            .handle_render_frame(block)
            .map_err(|e| EchoError(e.to_string()))
    }

    /// What the microphone heard: one block in, the block without the echo
    /// out (silence until the canceller has produced its first block).
    pub fn capture(&mut self, block: &[f32], out: &mut [f32]) -> Result<(), EchoError> {
        self.pipeline
            .process_capture_frame(block, out)
            .map(|_| ())
            .map_err(|e| EchoError(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic speech-like signal: noise shaped by a syllable-rate
    /// envelope, in [-amp, amp].
    fn babble(seconds: f32, seed: u64, amp: f32) -> Vec<f32> {
        babble_at(seconds, seed, amp, 4.0)
    }

    fn babble_at(seconds: f32, seed: u64, amp: f32, syllable_hz: f32) -> Vec<f32> {
        babble_at_rate(seconds, seed, amp, syllable_hz, ECHO_RATE)
    }

    /// [`babble_at`] at any sample rate.
    pub(crate) fn babble_at_rate(
        seconds: f32,
        seed: u64,
        amp: f32,
        syllable_hz: f32,
        rate: u32,
    ) -> Vec<f32> {
        let n = (seconds * rate as f32) as usize;
        let mut state = seed;
        let mut lp = 0.0f32;
        (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Top 32 bits, centred: white noise in [-1, 1) with no DC.
                let white = ((state >> 32) as f32 / (1u64 << 31) as f32) - 1.0;
                lp = 0.7 * lp + 0.3 * white;
                let t = i as f32 / rate as f32;
                let syllables =
                    (0.5 + 0.5 * (2.0 * std::f32::consts::PI * syllable_hz * t).sin()).powi(2);
                amp * lp * syllables * 3.0
            })
            .collect()
    }

    /// The microphone's view of `far`: delayed, attenuated and low-passed.
    fn echo_path(far: &[f32], delay: usize, gain: f32) -> Vec<f32> {
        let mut out = vec![0.0; far.len()];
        let mut lp = 0.0f32;
        for i in delay..far.len() {
            lp = 0.6 * lp + 0.4 * far[i - delay];
            out[i] = gain * lp;
        }
        out
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64
    }

    fn db(ratio: f64) -> f64 {
        10.0 * ratio.max(1e-12).log10()
    }

    /// Runs `far` (played) and `mic` (heard) through a canceller block by block.
    fn cancel(far: &[f32], mic: &[f32]) -> Vec<f32> {
        let mut aec = EchoCanceller::new().expect("canceller");
        let mut out = vec![0.0; mic.len()];
        for (i, (f, m)) in far
            .chunks_exact(BLOCK)
            .zip(mic.chunks_exact(BLOCK))
            .enumerate()
        {
            aec.render(f).expect("render");
            aec.capture(m, &mut out[i * BLOCK..(i + 1) * BLOCK])
                .expect("capture");
        }
        out
    }

    #[test]
    fn echo_alone_is_removed_after_convergence() {
        let far = babble(6.0, 7, 0.3);
        let mic = echo_path(&far, 640, 0.6);
        let out = cancel(&far, &mic);
        let tail = 3 * ECHO_RATE as usize..;
        let erle = db(energy(&mic[tail.clone()]) / energy(&out[tail]));
        eprintln!("echo return loss enhancement: {erle:.1} dB");
        assert!(erle > 30.0, "echo return loss enhancement {erle:.1} dB");
    }

    #[test]
    fn near_end_speech_survives_double_talk() {
        let far = babble(6.0, 7, 0.3);
        let near = babble_at(6.0, 99, 0.2, 2.7);
        let echo = echo_path(&far, 640, 0.6);
        // The user starts talking over the agent after 3 s.
        let start = 3 * ECHO_RATE as usize;
        let mic: Vec<f32> = echo
            .iter()
            .zip(&near)
            .enumerate()
            .map(|(i, (e, n))| e + if i >= start { *n } else { 0.0 })
            .collect();
        let out = cancel(&far, &mic);
        let kept = db(energy(&out[start + 8000..]) / energy(&near[start + 8000..]));
        eprintln!("near-end level during double talk: {kept:.1} dB");
        assert!(kept > -8.0, "near-end speech attenuated by {:.1} dB", -kept);
    }

    #[test]
    fn near_end_alone_passes_unchanged_in_level() {
        let far = vec![0.0; 4 * ECHO_RATE as usize];
        let near = babble_at(4.0, 5, 0.2, 2.7);
        let out = cancel(&far, &near);
        let tail = ECHO_RATE as usize..;
        let kept = db(energy(&out[tail.clone()]) / energy(&near[tail]));
        eprintln!("near-end level without far end: {kept:.1} dB");
        assert!(kept.abs() < 3.0, "near-end speech changed by {kept:.1} dB");
    }
}
