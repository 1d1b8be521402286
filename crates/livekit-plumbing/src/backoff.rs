//! How long to wait before the next attempt: exponential backoff with jitter,
//! capped. [`Backoff::delay`] is a pure function of the attempt number and a
//! jitter sample, so it is tested without a clock; [`jitter`] draws the
//! sample (`rand`'s thread-local generator: not for cryptography, and not
//! needed to be).
//!
//! The jitter is "equal jitter": the wait spreads over the upper half of the
//! nominal one, `[nominal / 2, nominal]`, so clients that failed together do
//! not retry together, yet none retries much sooner than planned.
//!
//! Hand-written on purpose: `backon` runs the retry loop with its own sleep,
//! and `backoff` (unmaintained) keeps state and reads the clock, where each
//! caller here waits inside its own `select!` (shutdown, a `Retry-After`) and
//! needs the wait alone: a pure function of a dozen lines, tested without a clock.

use std::time::Duration;

/// A backoff schedule: `initial`, doubling per attempt, never over `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal wait before the first retry.
    pub initial: Duration,
    /// The longest wait, jitter included.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait before retry number `attempt` (0 for the first), given
    /// `jitter` drawn uniformly from `[0, 1)`: `initial · 2^attempt` capped at
    /// `max`, scaled by `0.5 + 0.5 · jitter`. Any `attempt` and any `jitter`
    /// (out of range, NaN, infinite: clamped, NaN as 0.5) are fine.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 1u32 << attempt.min(31);
        let nominal = self.initial.saturating_mul(factor).min(self.max);
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // In integers (millionths of the nominal wait): `Duration::mul_f64`
        // panics when rounding carries a huge wait past `Duration::MAX`.
        let millionths = (500_000.0 + 500_000.0 * jitter).round() as u128;
        let nanos = nominal.as_nanos() * millionths / 1_000_000;
        // At most `nominal`, so the seconds fit.
        Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// [`delay`](Self::delay) with a fresh [`jitter`] sample.
    pub fn delay_jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt, jitter())
    }
}

/// A uniform sample in `[0, 1)` for [`Backoff::delay`].
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const RECONNECT: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let nominal: Vec<Duration> = (0..10).map(|a| RECONNECT.delay(a, 1.0)).collect();
        assert_eq!(nominal[0], MS(500));
        assert_eq!(nominal[1], MS(1000));
        assert_eq!(nominal[2], MS(2000));
        assert_eq!(nominal[5], MS(16_000));
        assert_eq!(nominal[6], RECONNECT.max);
        assert_eq!(nominal[9], RECONNECT.max);
        assert!(nominal.windows(2).all(|w| w[0] <= w[1]), "{nominal:?}");
        let b = Backoff::new(MS(100), MS(1000));
        assert_eq!(b.delay(3, 1.0), MS(800));
        assert_eq!(b.delay(4, 1.0), MS(1000));
    }

    #[test]
    fn jitter_spreads_over_the_upper_half_and_never_exceeds_the_cap() {
        assert_eq!(RECONNECT.delay(0, 0.0), MS(250));
        assert_eq!(RECONNECT.delay(3, 0.0), MS(2000));
        assert_eq!(RECONNECT.delay(3, 0.5), MS(3000));
        for attempt in [0, 1, 7, 31, 32, 1000, u32::MAX] {
            for jitter in [0.0, 0.25, 0.999, 1.0, -3.0, 7.0, f64::NAN, f64::INFINITY] {
                let d = RECONNECT.delay(attempt, jitter);
                assert!(d <= RECONNECT.max, "{attempt} {jitter} {d:?}");
                assert!(d >= RECONNECT.initial / 2, "{attempt} {jitter} {d:?}");
            }
        }
        assert_eq!(RECONNECT.delay(u32::MAX, 0.0), RECONNECT.max / 2);
        assert_eq!(RECONNECT.delay(2, f64::NAN), RECONNECT.delay(2, 0.5));
        assert_eq!(RECONNECT.delay(2, f64::INFINITY), RECONNECT.delay(2, 1.0));
        // Huge steps saturate instead of overflowing.
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.delay(40, 1.0), Duration::MAX);
        assert_eq!(huge.delay(0, 0.0), Duration::MAX / 4);
    }

    #[test]
    fn samples_stay_in_range_and_differ() {
        let a: Vec<f64> = (0..20).map(|_| jitter()).collect();
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)), "{a:?}");
        assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
        for _ in 0..100 {
            let d = RECONNECT.delay_jittered(1);
            assert!(d >= MS(500) && d <= MS(1000), "{d:?}");
        }
    }
}
