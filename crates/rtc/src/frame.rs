//! What both directions of audio share: the PCM frame, Opus's native rates, and the
//! RTP clock of Opus.

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

/// Mono 16-bit PCM audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// Interleaved samples; mono, so one per instant.
    pub data: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl AudioFrame {
    /// Duration of the frame.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.data.len() as f64 / self.sample_rate as f64)
    }
}

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
        let f = AudioFrame {
            data: vec![0; 480],
            sample_rate: 24_000,
        };
        assert_eq!(f.duration(), FRAME_DURATION);
        let f = AudioFrame {
            data: vec![0; 480],
            sample_rate: 0,
        };
        assert_eq!(f.duration(), Duration::ZERO);
    }
}
