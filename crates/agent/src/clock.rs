//! The session's clock: real time (tokio's, so tests can pause it), or media
//! time driven by an audio file being processed faster than real time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Clock {
    media: Option<Arc<Media>>,
}

struct Media {
    base: Instant,
    /// Elapsed media time in nanoseconds; advanced by the [`MediaClockDriver`].
    elapsed: watch::Receiver<u64>,
}

/// Advances a media clock. Dropping it freezes the clock.
pub struct MediaClockDriver {
    elapsed: watch::Sender<u64>,
}

impl MediaClockDriver {
    /// Sets media time to `elapsed` since the clock's start (never backwards).
    pub fn advance_to(&self, elapsed: Duration) {
        let nanos = elapsed.as_nanos() as u64;
        self.elapsed.send_if_modified(|cur| {
            let moved = nanos > *cur;
            if moved {
                *cur = nanos;
            }
            moved
        });
    }
}

impl Clock {
    /// Real time, read from tokio (so `tokio::time::pause` applies).
    pub fn realtime() -> Self {
        Self { media: None }
    }

    /// A clock that moves only when the returned driver advances it.
    pub fn media() -> (Self, MediaClockDriver) {
        let (tx, rx) = watch::channel(0u64);
        let clock = Self {
            media: Some(Arc::new(Media {
                base: tokio::time::Instant::now().into_std(),
                elapsed: rx,
            })),
        };
        (clock, MediaClockDriver { elapsed: tx })
    }

    pub fn is_media(&self) -> bool {
        self.media.is_some()
    }

    pub fn now(&self) -> Instant {
        match &self.media {
            None => tokio::time::Instant::now().into_std(),
            Some(m) => m.base + Duration::from_nanos(*m.elapsed.borrow()),
        }
    }

    /// Waits until `deadline` on this clock.
    pub async fn sleep_until(&self, deadline: Instant) {
        match &self.media {
            None => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
            Some(m) => {
                let mut rx = m.elapsed.clone();
                loop {
                    if m.base + Duration::from_nanos(*rx.borrow_and_update()) >= deadline {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        // The driver is gone: media time never moves again.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn media_clock_wakes_sleepers_when_advanced() {
        let (clock, driver) = Clock::media();
        let t0 = clock.now();
        let deadline = t0 + Duration::from_millis(500);
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(deadline).await });
        driver.advance_to(Duration::from_millis(400));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        driver.advance_to(Duration::from_millis(500));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke")
            .expect("joined");
        assert_eq!(clock.now() - t0, Duration::from_millis(500));
    }
}
