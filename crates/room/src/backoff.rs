//! Reconnect policy: a pure function from the attempt number to what to try next
//! and how long to wait first. No clock, no I/O, unit-tested.
//!
//! The shape follows LiveKit's clients: the first attempts try to *resume* the
//! session (same participant sid, `reconnect=1&sid=…`, ICE restart), which keeps
//! subscriptions and published tracks; when resuming fails (the server no longer
//! knows the session, e.g. it restarted) the following attempts do a *full rejoin*
//! (fresh join, new peer connections, republish). After the last attempt the room
//! reports `Disconnected`.

use std::time::Duration;

/// What a reconnect attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectKind {
    /// Reconnect the signal with `reconnect=1&sid=…` and restart ICE.
    Resume,
    /// Join again from scratch, new peer connections, republish local tracks.
    Rejoin,
}

/// The reconnect schedule.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// How many resume attempts before switching to full rejoins.
    pub resume_attempts: u32,
    /// Total attempts (resume + rejoin) before giving up.
    pub max_attempts: u32,
    /// Delay before attempt `n` is `base * n²`, capped at `max_delay` (attempt 0 is immediate).
    pub base_delay: Duration,
    /// Upper bound on one delay.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            resume_attempts: 2,
            max_attempts: 10,
            base_delay: Duration::from_millis(300),
            max_delay: Duration::from_secs(7),
        }
    }
}

impl ReconnectPolicy {
    /// What attempt number `attempt` (0-based) should do and how long to wait before it,
    /// or `None` when the policy gives up. `resume_possible` is false when resuming makes
    /// no sense (the server said so, or we never fully joined); then every attempt rejoins.
    pub fn next(&self, attempt: u32, resume_possible: bool) -> Option<(ReconnectKind, Duration)> {
        if attempt >= self.max_attempts {
            return None;
        }
        let kind = if resume_possible && attempt < self.resume_attempts {
            ReconnectKind::Resume
        } else {
            ReconnectKind::Rejoin
        };
        let n = attempt.min(1_000);
        let delay = self
            .base_delay
            .saturating_mul(n.saturating_mul(n))
            .min(self.max_delay);
        Some((kind, delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_first_then_rejoins_then_gives_up() {
        let p = ReconnectPolicy::default();
        assert_eq!(
            p.next(0, true),
            Some((ReconnectKind::Resume, Duration::ZERO))
        );
        assert_eq!(
            p.next(1, true),
            Some((ReconnectKind::Resume, Duration::from_millis(300)))
        );
        assert_eq!(
            p.next(2, true),
            Some((ReconnectKind::Rejoin, Duration::from_millis(1200)))
        );
        assert_eq!(
            p.next(3, true),
            Some((ReconnectKind::Rejoin, Duration::from_millis(2700)))
        );
        assert_eq!(
            p.next(9, true),
            Some((ReconnectKind::Rejoin, Duration::from_secs(7)))
        );
        assert_eq!(p.next(10, true), None);
    }

    #[test]
    fn no_resume_when_not_possible() {
        let p = ReconnectPolicy::default();
        assert_eq!(
            p.next(0, false),
            Some((ReconnectKind::Rejoin, Duration::ZERO))
        );
    }

    #[test]
    fn delays_never_overflow() {
        let p = ReconnectPolicy {
            max_attempts: u32::MAX,
            ..Default::default()
        };
        assert_eq!(
            p.next(u32::MAX - 1, true).map(|x| x.1),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn total_schedule_is_bounded() {
        let p = ReconnectPolicy::default();
        let total: Duration = (0..p.max_attempts)
            .filter_map(|a| p.next(a, true))
            .map(|x| x.1)
            .sum();
        assert!(total < Duration::from_secs(60), "{total:?}");
    }
}
