//! The wait a throttled response asks for: the server's `Retry-After` /
//! `retry-after-ms` headers, as a pure function. No clock is read here except
//! through the `now` argument, so the tests are exact. The backoff used when
//! a server names no wait is `livekit_plumbing::Backoff`, shared with the
//! other clients; this part is Kimi's own (only HTTP responses carry it).

use std::time::{Duration, SystemTime};

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
        // Capped as `Retry-After` is: `from_secs_f64` panics past `Duration::MAX`.
        return Some(Duration::from_secs_f64(ms.min(86_400_000.0) / 1000.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(None, Some("2"), now), Some(MS(2000)));
        assert_eq!(retry_after(None, Some(" 0.5 "), now), Some(MS(500)));
        assert_eq!(retry_after(Some("150"), Some("9"), now), Some(MS(150)));
        assert_eq!(retry_after(None, Some("-3"), now), None);
        assert_eq!(retry_after(None, Some("soon"), now), None);
        assert_eq!(retry_after(None, None, now), None);
        // A server's absurd value is capped at a day, not a panic.
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(retry_after(Some("1e300"), None, now), day);
        assert_eq!(retry_after(None, Some("1e300"), now), day);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(retry_after(None, Some(&later), now), Some(MS(3000)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(3));
        assert_eq!(retry_after(None, Some(&earlier), now), Some(Duration::ZERO));
    }
}
