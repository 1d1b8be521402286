//! How long the connect loop waits before its next attempt: exponential
//! backoff with jitter, capped. A pure function, so it is tested without a
//! clock; the caller supplies the randomness.

use std::time::Duration;

/// The wait before the first retry (before jitter).
pub(crate) const INITIAL: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
pub(crate) const MAX: Duration = Duration::from_secs(30);

/// The wait before retry number `attempt` (0 for the first retry), given
/// `jitter` drawn uniformly from `[0, 1)`.
///
/// The nominal wait doubles from [`INITIAL`] up to [`MAX`]; jitter spreads
/// it over `[nominal / 2, nominal]`, so servers restarted together are not
/// hammered in lockstep. Never more than [`MAX`], never less than
/// `INITIAL / 2`; any `attempt` and any `jitter` (even NaN) are fine.
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    // 2^6 * 0.5 s = 32 s is past the cap already: larger exponents add nothing.
    let factor = 1u32 << attempt.min(6);
    let nominal = INITIAL.saturating_mul(factor).min(MAX);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    nominal.mul_f64(0.5 + 0.5 * jitter).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_half_a_second_up_to_the_cap() {
        let nominal: Vec<Duration> = (0..10).map(|a| backoff(a, 1.0)).collect();
        assert_eq!(nominal[0], Duration::from_millis(500));
        assert_eq!(nominal[1], Duration::from_secs(1));
        assert_eq!(nominal[2], Duration::from_secs(2));
        assert_eq!(nominal[5], Duration::from_secs(16));
        assert_eq!(nominal[6], MAX);
        assert_eq!(nominal[9], MAX);
        assert!(nominal.windows(2).all(|w| w[0] <= w[1]), "{nominal:?}");
    }

    #[test]
    fn jitter_spreads_over_the_upper_half_and_never_exceeds_the_cap() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(3));
        for attempt in [0, 1, 7, 31, 32, 1000, u32::MAX] {
            for jitter in [0.0, 0.25, 0.999, 1.0, -3.0, 7.0, f64::NAN, f64::INFINITY] {
                let d = backoff(attempt, jitter);
                assert!(d <= MAX, "{attempt} {jitter} {d:?}");
                assert!(d >= INITIAL / 2, "{attempt} {jitter} {d:?}");
            }
        }
        assert_eq!(backoff(u32::MAX, 0.0), MAX / 2);
        assert_eq!(backoff(2, f64::NAN), backoff(2, 0.5));
    }
}
