//! The pacer's clock and its cadence statistics (pure: no I/O, no tasks).
//!
//! Slot `n` of a published track is due at `start + n · 20 ms`, a fixed grid: a late
//! wake never shifts the slots after it (no drift, unlike a ticker that sleeps 20 ms
//! from its last wake). What a late pacer does is chosen on purpose, between tokio's
//! `MissedTickBehavior::Burst` and `Skip`:
//!
//! - up to [`MAX_CATCH_UP`] slots behind (60 ms), it sends the missed slots back to
//!   back: the receiver's jitter buffer absorbs a short burst, and no audio or RTP
//!   time is lost;
//! - further behind (the process was starved of CPU for longer), it skips the missed
//!   slots and resumes on the grid at the current slot. A burst of that many frames
//!   would overflow receivers' jitter buffers and be thrown away anyway. Queued audio
//!   is not dropped: it plays on from the current slot, later. A packet's RTP
//!   timestamp is its slot's due time, so the skipped time shows in RTP time, which
//!   keeps following the wall clock like a microphone's, without a gap in sequence
//!   numbers that receivers would take for loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds in one 20 ms slot.
const SLOT_NS: u64 = 20_000_000;

/// Slots a late pacer sends back to back to catch up; further behind it skips.
pub(crate) const MAX_CATCH_UP: u64 = 3;

/// A fixed 20 ms grid of send slots.
#[derive(Debug)]
pub(crate) struct Schedule {
    start: Instant,
    /// Index of the next slot to send.
    next: u64,
}

/// The slot to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Index on the grid (`due = start + index · 20 ms`).
    pub(crate) index: u64,
    /// When this slot was due.
    pub(crate) due: Instant,
    /// Slots skipped right before this one (the pacer was too far behind).
    pub(crate) skipped: u64,
}

impl Schedule {
    /// A grid whose slot 0 is due at `start`.
    pub(crate) fn new(start: Instant) -> Self {
        Self { start, next: 0 }
    }

    fn due(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos(index.saturating_mul(SLOT_NS))
    }

    /// When the next slot is due: sleep until then.
    pub(crate) fn next_due(&self) -> Instant {
        self.due(self.next)
    }

    /// Take the slot to send, woken at `now` (at or after [`Self::next_due`]; earlier
    /// it is simply the next slot, sent early). Up to [`MAX_CATCH_UP`] slots behind,
    /// the missed slots are returned one by one, each due in the past (a burst);
    /// further behind, they are skipped and the slot due at `now` is returned.
    pub(crate) fn take(&mut self, now: Instant) -> Slot {
        let behind_ns = now.saturating_duration_since(self.next_due()).as_nanos();
        let behind = u64::try_from(behind_ns).unwrap_or(u64::MAX) / SLOT_NS;
        let skipped = if behind > MAX_CATCH_UP { behind } else { 0 };
        self.next = self.next.saturating_add(skipped);
        let slot = Slot {
            index: self.next,
            due: self.next_due(),
            skipped,
        };
        self.next = self.next.saturating_add(1);
        slot
    }
}

/// Width of a [`CadenceHistogram`] bucket.
pub const CADENCE_BUCKET: Duration = Duration::from_micros(250);
/// Buckets of a [`CadenceHistogram`]: 0–100 ms in 250 µs steps, and one for the rest.
const BUCKETS: usize = 401;

/// A histogram of durations (0–100 ms in 250 µs buckets, longer ones in one overflow
/// bucket): how late frames left, or how far the interval between two frames was
/// from 20 ms. Take two snapshots and [`Self::since`] for a window.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CadenceHistogram {
    counts: [u64; BUCKETS],
}

impl Default for CadenceHistogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

impl std::fmt::Debug for CadenceHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CadenceHistogram")
            .field("count", &self.count())
            .field("p50", &self.percentile(50.0))
            .field("p99", &self.percentile(99.0))
            .field("max", &self.percentile(100.0))
            .finish()
    }
}

fn bucket(d: Duration) -> usize {
    let i = d.as_micros() / CADENCE_BUCKET.as_micros();
    usize::try_from(i).unwrap_or(usize::MAX).min(BUCKETS - 1)
}

impl CadenceHistogram {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `p`-th percentile (0–100), as the upper edge of its bucket (so at most
    /// 250 µs high); `None` when empty. A percentile in the overflow bucket reads as
    /// `Duration::MAX`: more than 100 ms.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0 * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                if i == BUCKETS - 1 {
                    return Some(Duration::MAX);
                }
                return Some(CADENCE_BUCKET * (i as u32 + 1));
            }
        }
        Some(Duration::MAX)
    }

    /// Values recorded in buckets wholly above `threshold` (so within one
    /// 250 µs bucket of exact): frames later than a receiver can absorb, say.
    pub fn count_over(&self, threshold: Duration) -> u64 {
        let first = bucket(threshold) + 1;
        self.counts.iter().skip(first).sum()
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        for (o, e) in out.counts.iter_mut().zip(earlier.counts.iter()) {
            *o = o.saturating_sub(*e);
        }
        out
    }

    /// Add `other`'s counts (to merge the histograms of several tracks).
    pub fn add(&mut self, other: &Self) {
        for (o, e) in self.counts.iter_mut().zip(other.counts.iter()) {
            *o = o.saturating_add(*e);
        }
    }

    /// Record one value.
    pub fn record(&mut self, d: Duration) {
        self.counts[bucket(d)] += 1;
    }
}

/// The shared, lock-free form of a [`CadenceHistogram`].
pub(crate) struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, d: Duration) {
        if let Some(c) = self.counts.get(bucket(d)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> CadenceHistogram {
        let mut h = CadenceHistogram::default();
        for (o, c) in h.counts.iter_mut().zip(self.counts.iter()) {
            *o = c.load(Ordering::Relaxed);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_over_counts_the_buckets_above_the_threshold() {
        let mut h = CadenceHistogram::default();
        for ms in [1u64, 5, 19, 20, 21, 40, 500] {
            h.record(Duration::from_millis(ms));
        }
        // 20 ms sits in the bucket [20, 20.25): not over; 21, 40 and 500 are.
        assert_eq!(h.count_over(Duration::from_millis(20)), 3);
        assert_eq!(h.count_over(Duration::ZERO), 7);
        assert_eq!(h.count_over(Duration::from_secs(1)), 0);
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slots_are_on_a_fixed_grid() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        for n in 0..5u32 {
            assert_eq!(s.next_due(), t0 + 20 * MS * n);
            // Woken a little late every time: the grid does not move.
            let slot = s.take(t0 + 20 * MS * n + 3 * MS);
            assert_eq!(slot.index, u64::from(n));
            assert_eq!(slot.due, t0 + 20 * MS * n);
            assert_eq!(slot.skipped, 0);
        }
        assert_eq!(s.next_due(), t0 + 100 * MS);
    }

    #[test]
    fn a_short_stall_is_caught_up_in_a_burst() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.take(t0);
        // Slot 1 was due at 20 ms; woken at 75 ms: 2 more slots (40, 60) are due too.
        let now = t0 + 75 * MS;
        let burst: Vec<Slot> = (0..3).map(|_| s.take(now)).collect();
        assert_eq!(burst.iter().map(|x| x.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(burst.iter().all(|x| x.skipped == 0));
        assert_eq!(burst[2].due, t0 + 60 * MS);
        // Then back on the grid: no drift from the late wake.
        assert_eq!(s.next_due(), t0 + 80 * MS);
    }

    #[test]
    fn a_long_stall_skips_to_the_current_slot() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.take(t0);
        // Slot 1 due at 20 ms; woken at 1.005 s: slot 50 is the current one.
        let slot = s.take(t0 + 1005 * MS);
        assert_eq!(slot.index, 50);
        assert_eq!(slot.skipped, 49);
        assert_eq!(slot.due, t0 + 1000 * MS);
        assert_eq!(s.next_due(), t0 + 1020 * MS);
        // Exactly MAX_CATCH_UP slots behind is still a burst.
        let mut s = Schedule::new(t0);
        let slot = s.take(t0 + 20 * MS * MAX_CATCH_UP as u32 + MS);
        assert_eq!((slot.index, slot.skipped), (0, 0));
    }

    #[test]
    fn histogram_percentiles_and_windows() {
        let mut h = CadenceHistogram::default();
        assert_eq!(h.percentile(99.0), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(1));
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), Some(CADENCE_BUCKET));
        assert_eq!(h.percentile(98.0), Some(CADENCE_BUCKET));
        assert_eq!(h.percentile(99.0), Some(Duration::from_micros(3250)));
        assert_eq!(h.percentile(100.0), Some(Duration::MAX));
        let early = h;
        h.record(Duration::from_millis(7));
        let w = h.since(&early);
        assert_eq!(w.count(), 1);
        assert_eq!(w.percentile(50.0), Some(Duration::from_micros(7250)));
        let a = AtomicHistogram::default();
        a.record(Duration::from_millis(2));
        assert_eq!(
            a.snapshot().percentile(100.0),
            Some(Duration::from_micros(2250))
        );
    }
}
