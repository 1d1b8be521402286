//! Process-wide counters and latency histograms, rendered in the Prometheus text
//! format for `GET /metrics`. One [`Metrics`] is shared (`Arc`) by the worker
//! loop, every job and the HTTP server; each update takes a short mutex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use agent::session::TurnMetrics;

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

#[derive(Debug, Default)]
struct Inner {
    sessions_active: i64,
    sessions_total: u64,
    /// Ended jobs by result ("success", "failed").
    jobs_ended: BTreeMap<&'static str, u64>,
    turns_total: u64,
    interrupted_total: u64,
    /// Stage errors by (stage, kind).
    errors: BTreeMap<(String, String), u64>,
    /// Latency histograms by stage name.
    latency: BTreeMap<&'static str, Histogram>,
    registered: bool,
    draining: bool,
    load: f32,
    reconnects_total: u64,
    /// Agent audio frames sent, and those that left late (see [`LATE_FRAME`]).
    audio_frames_total: u64,
    audio_frames_late_total: u64,
}

/// A frame leaving more than one frame period after its slot is late: the
/// receiver's jitter buffer has had to wait for it.
pub const LATE_FRAME: std::time::Duration = std::time::Duration::from_millis(20);

/// The worker's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut g) = self.inner.lock() {
            f(&mut g);
        }
    }

    pub fn session_started(&self) {
        self.with(|m| {
            m.sessions_active += 1;
            m.sessions_total += 1;
        });
    }

    pub fn session_ended(&self, ok: bool) {
        self.with(|m| {
            m.sessions_active -= 1;
            *m.jobs_ended
                .entry(if ok { "success" } else { "failed" })
                .or_default() += 1;
        });
    }

    pub fn turn(&self, t: &TurnMetrics) {
        self.with(|m| {
            m.turns_total += 1;
            if t.interrupted {
                m.interrupted_total += 1;
            }
            for (name, v) in [
                ("end_of_utterance", t.end_of_utterance_delay),
                ("transcription", t.transcription_delay),
                ("llm_ttft", t.llm_ttft),
                ("tts_ttfb", t.tts_ttfb),
                ("end_to_end", t.end_to_end),
            ] {
                if let Some(d) = v {
                    m.latency.entry(name).or_default().observe(d);
                }
            }
        });
    }

    pub fn error(&self, stage: &str, kind: &str) {
        self.with(|m| {
            *m.errors
                .entry((stage.to_owned(), kind.to_owned()))
                .or_default() += 1;
        });
    }

    pub fn set_registered(&self, registered: bool) {
        self.with(|m| m.registered = registered);
    }

    pub fn set_draining(&self) {
        self.with(|m| m.draining = true);
    }

    pub fn set_load(&self, load: f32) {
        self.with(|m| m.load = load);
    }

    /// Adds the pacing record of a session's published track (at its end).
    pub fn audio_sent(&self, stats: &rtc::PacerStats) {
        self.with(|m| {
            // A skipped slot is a frame that should have left: count it in both. A
            // quiet track's keep-alives are not on the cadence: in neither.
            m.audio_frames_total += stats.cadence_frames() + stats.slots_skipped;
            m.audio_frames_late_total +=
                stats.lateness.count_over(LATE_FRAME) + stats.slots_skipped;
        });
    }

    pub fn reconnected(&self) {
        self.with(|m| m.reconnects_total += 1);
    }

    /// 200 once registered, 503 while draining or disconnected.
    pub fn healthy(&self) -> bool {
        self.inner
            .lock()
            .map(|m| m.registered && !m.draining)
            .unwrap_or(false)
    }

    /// Sessions running now.
    pub fn active_sessions(&self) -> i64 {
        self.inner.lock().map(|m| m.sessions_active).unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let Ok(m) = self.inner.lock() else {
            return String::new();
        };
        let mut o = String::new();
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "voice_agent_sessions_active",
            "Sessions running now.",
            m.sessions_active as f64,
        );
        gauge(
            &mut o,
            "voice_agent_worker_registered",
            "1 while registered with the server.",
            u8::from(m.registered) as f64,
        );
        gauge(
            &mut o,
            "voice_agent_worker_draining",
            "1 once draining.",
            u8::from(m.draining) as f64,
        );
        gauge(
            &mut o,
            "voice_agent_worker_load",
            "Reported load (CPU moving average, 0-1).",
            f64::from(m.load),
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_sessions_total Sessions started.\n# TYPE voice_agent_sessions_total counter\nvoice_agent_sessions_total {}",
            m.sessions_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_jobs_ended_total Jobs ended, by result.\n# TYPE voice_agent_jobs_ended_total counter"
        );
        for (result, n) in &m.jobs_ended {
            let _ = writeln!(o, "voice_agent_jobs_ended_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP voice_agent_turns_total Agent replies.\n# TYPE voice_agent_turns_total counter\nvoice_agent_turns_total {}",
            m.turns_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_interruptions_total Replies interrupted by the user.\n# TYPE voice_agent_interruptions_total counter\nvoice_agent_interruptions_total {}",
            m.interrupted_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_audio_frames_total Agent audio frame slots (20 ms each: sent or skipped; a quiet track's keep-alives not counted), counted when a session ends.\n# TYPE voice_agent_audio_frames_total counter\nvoice_agent_audio_frames_total {}",
            m.audio_frames_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_audio_frames_late_total Agent audio frames sent more than 20 ms after their slot, or skipped.\n# TYPE voice_agent_audio_frames_late_total counter\nvoice_agent_audio_frames_late_total {}",
            m.audio_frames_late_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_worker_reconnects_total Connections to the server after the first.\n# TYPE voice_agent_worker_reconnects_total counter\nvoice_agent_worker_reconnects_total {}",
            m.reconnects_total
        );
        let _ = writeln!(
            o,
            "# HELP voice_agent_errors_total Stage errors, by stage and kind.\n# TYPE voice_agent_errors_total counter"
        );
        for ((stage, kind), n) in &m.errors {
            let _ = writeln!(
                o,
                "voice_agent_errors_total{{stage=\"{}\",kind=\"{}\"}} {n}",
                escape(stage),
                escape(kind)
            );
        }
        let _ = writeln!(
            o,
            "# HELP voice_agent_latency_seconds Per-turn latency by stage.\n# TYPE voice_agent_latency_seconds histogram"
        );
        for (stage, h) in &m.latency {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "voice_agent_latency_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "voice_agent_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "voice_agent_latency_seconds_sum{{stage=\"{stage}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "voice_agent_latency_seconds_count{{stage=\"{stage}\"}} {}",
                h.count
            );
        }
        o
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.session_started();
        m.turn(&TurnMetrics {
            end_to_end: Some(Duration::from_millis(400)),
            ..Default::default()
        });
        m.error("llm", "http \"500\"");
        let mut stats = rtc::PacerStats {
            frames_sent: 110,
            keepalive_frames: 10,
            slots_skipped: 1,
            ..Default::default()
        };
        for ms in [5u64, 19, 25, 60] {
            stats.lateness.record(Duration::from_millis(ms));
        }
        m.audio_sent(&stats);
        m.session_ended(false);
        let text = m.render();
        assert!(text.contains("voice_agent_sessions_total 1"), "{text}");
        assert!(text.contains("voice_agent_sessions_active 0"), "{text}");
        assert!(
            text.contains("voice_agent_audio_frames_total 101"),
            "{text}"
        );
        // 25 and 60 ms late, and one skipped slot.
        assert!(
            text.contains("voice_agent_audio_frames_late_total 3"),
            "{text}"
        );
        assert!(
            text.contains("voice_agent_jobs_ended_total{result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("voice_agent_latency_seconds_bucket{stage=\"end_to_end\",le=\"0.3\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("voice_agent_latency_seconds_bucket{stage=\"end_to_end\",le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("voice_agent_latency_seconds_bucket{stage=\"end_to_end\",le=\"10\"} 1"),
            "{text}"
        );
        assert!(text.contains("kind=\"http \\\"500\\\"\""), "{text}");
    }

    #[test]
    fn healthy_only_when_registered_and_not_draining() {
        let m = Metrics::default();
        assert!(!m.healthy());
        m.set_registered(true);
        assert!(m.healthy());
        m.set_draining();
        assert!(!m.healthy());
    }
}
