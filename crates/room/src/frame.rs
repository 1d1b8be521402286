//! What both directions of audio share: the PCM frame (the `pcm` crate's),
//! Opus's native rates, and the RTP clock of Opus.

use std::time::Duration;

use crate::RtcError;

/// Sample rates Opus encodes from and decodes to natively.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// Duration of one Opus frame as we send it.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// The RTP clock of Opus (RFC 7587: always 48 kHz, whatever the input rate).
pub(crate) const RTP_CLOCK_HZ: u32 = 48_000;

/// RTP ticks in a 20 ms frame.
pub(crate) const FRAME_TICKS: u32 = RTP_CLOCK_HZ / 50;

/// PCM audio, the frame every crate of voice-agent passes (tracks are mono:
/// a published track down-mixes, a subscribed one decodes to one channel).
pub use pcm::AudioFrame;

/// `rate` is one of [`OPUS_RATES`]: Opus codes it without a resampler.
pub(crate) fn check_rate(rate: u32) -> Result<(), RtcError> {
    if OPUS_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(RtcError::UnsupportedSampleRate(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert!(check_rate(48_000).is_ok());
        assert!(check_rate(16_000).is_ok());
        assert!(check_rate(44_100).is_err());
    }

    #[test]
    fn durations() {
        let f = AudioFrame::new(vec![0; 480], 24_000, 1);
        assert_eq!(f.duration(), FRAME_DURATION);
        let f = AudioFrame::new(vec![0; 480], 0, 1);
        assert_eq!(f.duration(), Duration::ZERO);
    }
}
