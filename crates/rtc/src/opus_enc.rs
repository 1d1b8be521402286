//! A minimal safe Opus encoder over libopus's C API, for the one setting the `opus`
//! crate does not expose: complexity. The encoder is the largest single cost of a
//! published stream, and complexity sets it: on the project's 2-core machine one
//! 20 ms frame of 48 kHz mono speech costs 79 µs at complexity 0, 130 µs at 3,
//! 169 µs at 5 and 307 µs at libopus's default 10 (`examples/opus_cost.rs`, espeak-ng
//! speech, automatic bitrate ≈ 47 kbit/s). What it buys is small for speech: the
//! decoded waveform's SNR is 11.52 dB at 3, 11.70 dB at 5 and 11.79 dB at 10
//! (segmental 8.89, 9.11, 9.18 dB). Published tracks use complexity 3: about a
//! quarter less encoder CPU than 5 (what libwebrtc uses on mobile) for 0.2 dB; below
//! 3 SILK drops to its simplest pitch search and the loss grows (11.29 dB at 1).
//! Decoding uses the `opus` crate as is (36–39 µs per frame to 48 kHz).

use std::os::raw::c_int;
use std::ptr::NonNull;

use audiopus_sys as ffi;

use crate::RtcError;

/// Encoder complexity used for published tracks (0–10; libopus default 10).
pub const DEFAULT_COMPLEXITY: i32 = 3;

/// An Opus encoder for mono 16-bit PCM, VoIP mode, voice signal, in-band FEC on.
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
    pub(crate) fn new(sample_rate: u32, complexity: i32) -> Result<Self, RtcError> {
        let mut err: c_int = 0;
        // SAFETY: plain constructor; `err` is a valid out-pointer for its duration.
        let st = unsafe {
            ffi::opus_encoder_create(sample_rate as i32, 1, ffi::OPUS_APPLICATION_VOIP, &mut err)
        };
        check(err, "opus_encoder_create")?;
        let st = NonNull::new(st)
            .ok_or_else(|| RtcError::Opus("opus_encoder_create returned null".into()))?;
        let enc = Self { st };
        for (req, val) in [
            (ffi::OPUS_SET_COMPLEXITY_REQUEST, complexity.clamp(0, 10)),
            (ffi::OPUS_SET_INBAND_FEC_REQUEST, 1),
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
    fn encodes_and_decodes() {
        let mut enc = Encoder::new(48_000, DEFAULT_COMPLEXITY).unwrap();
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut out = [0u8; 1500];
        let mut pcm = vec![0i16; 5760];
        let frame = tone(960);
        for _ in 0..10 {
            let n = enc.encode(&frame, &mut out).unwrap();
            assert!(n > 2);
            assert_eq!(dec.decode(&out[..n], &mut pcm, false).unwrap(), 960);
        }
        assert!(
            enc.encode(&frame[..100], &mut out).is_err(),
            "bad frame size is an error"
        );
    }
}
