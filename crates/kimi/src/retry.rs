//! Retry timing as pure functions: exponential backoff with jitter, and the
//! server's `Retry-After` / `retry-after-ms` headers. No clock is read here
//! except through the `now` argument, so the tests are exact.

use std::time::{Duration, SystemTime};

/// Delay before retry number `retry` (0 for the first retry): `base · 2^retry`
/// capped at `max`, then scaled by a jitter factor in `[0.5, 1.0]` taken from
/// `jitter` (a uniform sample in `[0, 1)`), so that clients that failed
/// together do not retry together.
pub fn backoff(retry: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(retry.min(16));
    let raw = base.saturating_mul(factor).min(max);
    raw.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The wait a 429 (or 503) response asks for: `retry-after-ms` (milliseconds,
/// as OpenAI-style servers send) wins over `Retry-After`, which is either
/// delta-seconds or an HTTP date (compared with `now`).
pub fn retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = retry_after?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A cheap uniform sample in `[0, 1)` for jitter, seeded from the standard
/// library's per-process random hasher keys. Not for cryptography.
pub fn jitter_sample() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        assert_eq!(backoff(0, MS(100), MS(1000), 1.0), MS(100));
        assert_eq!(backoff(1, MS(100), MS(1000), 1.0), MS(200));
        assert_eq!(backoff(2, MS(100), MS(1000), 1.0), MS(400));
        assert_eq!(backoff(5, MS(100), MS(1000), 1.0), MS(1000));
        assert_eq!(backoff(40, MS(100), MS(1000), 1.0), MS(1000));
        assert_eq!(backoff(1, MS(100), MS(1000), 0.0), MS(100));
        for _ in 0..100 {
            let d = backoff(1, MS(100), MS(1000), jitter_sample());
            assert!(d >= MS(100) && d <= MS(200), "{d:?}");
        }
    }

    #[test]
    fn jitter_samples_differ_and_stay_in_range() {
        let a: Vec<f64> = (0..20).map(|_| jitter_sample()).collect();
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(None, Some("2"), now), Some(MS(2000)));
        assert_eq!(retry_after(None, Some(" 0.5 "), now), Some(MS(500)));
        assert_eq!(retry_after(Some("150"), Some("9"), now), Some(MS(150)));
        assert_eq!(retry_after(None, Some("-3"), now), None);
        assert_eq!(retry_after(None, Some("soon"), now), None);
        assert_eq!(retry_after(None, None, now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(retry_after(None, Some(&later), now), Some(MS(3000)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(3));
        assert_eq!(retry_after(None, Some(&earlier), now), Some(Duration::ZERO));
    }
}
