//! A minimal safe Opus encoder over libopus's C API, for the settings the `opus`
//! crate does not expose: complexity and the restricted low-delay application.
//!
//! The encoder is the largest single cost of a published stream. Measured on the
//! project's 2-core machine (`examples/opus_cost.rs`, espeak-ng speech, 20 ms mono
//! frames at 48 kHz, automatic bitrate, best of 5 passes):
//!
//! | application | complexity | encode | decode to 48 kHz | kbit/s | SNR / segmental SNR |
//! |---|---|---|---|---|---|
//! | VoIP (SILK/hybrid) | 0 | 79 µs | 36 µs | 47 | 10.6 / 7.9 dB |
//! | VoIP | 3 | 130 µs | 38 µs | 47 | 10.8 / 8.1 dB |
//! | VoIP | 5 | 166 µs | 39 µs | 48 | 10.9 / 8.2 dB |
//! | VoIP | 10 | 303 µs | 39 µs | 49 | 11.0 / 8.3 dB |
//! | low delay (CELT only) | 0 | 23 µs | 21 µs | 51 | 18.6 / 16.6 dB |
//! | low delay | 3 | 39 µs | 25 µs | 51 | 16.5 / 15.7 dB |
//! | low delay | 5 | 57 µs | 26 µs | 51 | 17.9 / 16.8 dB |
//!
//! Published tracks use CELT-only ([`OpusApplication::LowDelay`]) at complexity 3:
//! a third of the encoder CPU of VoIP mode, a cheaper decode for every listener, 4 ms
//! less algorithmic delay (2.5 ms look-ahead instead of 6.5 ms), and a waveform much
//! closer to the input at the same ~50 kbit/s (SNR is crude for a perceptual codec,
//! but a 6 dB gap is not noise). What it gives up is SILK's in-band FEC, which covers
//! a lost packet from the next one; the publisher still answers NACKs, so on a lossy
//! uplink a lost packet costs one round trip instead. [`OpusApplication::Voip`]
//! (SILK/hybrid, FEC on) is there for publishers on lossy links or far below
//! 32 kbit/s, where SILK sounds better.

use std::os::raw::c_int;
use std::ptr::NonNull;

use audiopus_sys as ffi;

use crate::RtcError;

/// Encoder complexity used for published tracks (0–10; libopus default 10).
pub const DEFAULT_COMPLEXITY: i32 = 3;

/// The Opus coding mode of a published track (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpusApplication {
    /// CELT only (`OPUS_APPLICATION_RESTRICTED_LOWDELAY`): the cheapest to encode and
    /// decode, the lowest delay, no in-band FEC.
    #[default]
    LowDelay,
    /// SILK or hybrid for speech (`OPUS_APPLICATION_VOIP`), in-band FEC on: better at
    /// low bitrates and under loss, about three times the encoder CPU.
    Voip,
}

/// An Opus encoder for mono 16-bit PCM with a voice signal hint.
pub(crate) struct Encoder {
    /// Owned libopus state; freed in `Drop`.
    st: NonNull<ffi::OpusEncoder>,
}

// SAFETY: the libopus encoder state has no thread affinity; it is only ever used
// through `&mut self`, so it is never touched from two threads at once.
unsafe impl Send for Encoder {}

fn check(code: c_int, what: &str) -> Result<c_int, RtcError> {
    if code < 0 {
        Err(RtcError::Opus(format!("{what}: libopus error {code}")))
    } else {
        Ok(code)
    }
}

impl Encoder {
    /// `sample_rate` must be an Opus rate (8, 12, 16, 24, 48 kHz); `complexity` 0–10.
    pub(crate) fn new(
        sample_rate: u32,
        complexity: i32,
        application: OpusApplication,
    ) -> Result<Self, RtcError> {
        let (application, fec) = match application {
            OpusApplication::LowDelay => (ffi::OPUS_APPLICATION_RESTRICTED_LOWDELAY, 0),
            OpusApplication::Voip => (ffi::OPUS_APPLICATION_VOIP, 1),
        };
        let mut err: c_int = 0;
        // SAFETY: plain constructor; `err` is a valid out-pointer for its duration.
        let st = unsafe { ffi::opus_encoder_create(sample_rate as i32, 1, application, &mut err) };
        check(err, "opus_encoder_create")?;
        let st = NonNull::new(st)
            .ok_or_else(|| RtcError::Opus("opus_encoder_create returned null".into()))?;
        let enc = Self { st };
        for (req, val) in [
            (ffi::OPUS_SET_COMPLEXITY_REQUEST, complexity.clamp(0, 10)),
            (ffi::OPUS_SET_INBAND_FEC_REQUEST, fec),
            (ffi::OPUS_SET_SIGNAL_REQUEST, ffi::OPUS_SIGNAL_VOICE),
        ] {
            // SAFETY: `st` is a live encoder; these SET requests take one `opus_int32`.
            let code = unsafe { ffi::opus_encoder_ctl(enc.st.as_ptr(), req, val) };
            check(code, "opus_encoder_ctl")?;
        }
        Ok(enc)
    }

    /// Encode one frame (2.5–60 ms of samples) into `out`; returns the packet length.
    pub(crate) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, RtcError> {
        // SAFETY: `st` is live; `pcm` holds `pcm.len()` samples (mono, so frame size =
        // len) and `out` is writable for `out.len()` bytes, both for the call.
        let n = unsafe {
            ffi::opus_encode(
                self.st.as_ptr(),
                pcm.as_ptr(),
                pcm.len() as c_int,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        Ok(check(n, "opus_encode")? as usize)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from `opus_encoder_create` and is freed exactly once.
        unsafe { ffi::opus_encoder_destroy(self.st.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (i as f64 * 0.0576).sin()) as i16)
            .collect()
    }

    #[test]
    fn encodes_and_decodes_in_both_applications() {
        for app in [OpusApplication::LowDelay, OpusApplication::Voip] {
            let mut enc = Encoder::new(48_000, DEFAULT_COMPLEXITY, app).unwrap();
            let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
            let mut out = [0u8; 1500];
            let mut pcm = vec![0i16; 5760];
            let frame = tone(960);
            for _ in 0..10 {
                let n = enc.encode(&frame, &mut out).unwrap();
                assert!(n > 2);
                // TOC byte (RFC 6716 §3.1): configurations 16–31 are CELT only.
                let celt = out[0] >> 3 >= 16;
                assert_eq!(celt, app == OpusApplication::LowDelay, "{app:?}");
                assert_eq!(dec.decode(&out[..n], &mut pcm, false).unwrap(), 960);
            }
            assert!(
                enc.encode(&frame[..100], &mut out).is_err(),
                "bad frame size is an error"
            );
        }
    }
}
