//! Process-wide counters, gauges and latency histograms, rendered as
//! OpenMetrics text for `GET /metrics`. One [`Metrics`] is shared (`Arc`) by
//! the worker loop, every job and the HTTP server; every update is an atomic
//! (or a short lock inside a labelled family), never a lock across a render.
//!
//! The registry and its text encoding are `prometheus-client`'s (the
//! Prometheus project's own Rust client) rather than hand-written: the
//! exposition format's details (counter `_total` suffixes, cumulative
//! buckets, `+Inf`, number formatting, label-value escaping — stage error
//! kinds are free text — and `# EOF`) are its job.
//!
//! Series (names, labels) are part of the worker's interface: the e2e tests,
//! the benches and the README read them.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `voice_agent_sessions_active` | gauge | |
//! | `voice_agent_worker_registered`, `voice_agent_worker_draining` | gauge (0/1) | |
//! | `voice_agent_worker_load` | gauge | |
//! | `voice_agent_sessions_total` | counter | |
//! | `voice_agent_jobs_ended_total` | counter | `result` = `success` \| `failed` |
//! | `voice_agent_turns_total`, `voice_agent_interruptions_total` | counter | |
//! | `voice_agent_audio_frames_total`, `voice_agent_audio_frames_late_total` | counter | |
//! | `voice_agent_worker_reconnects_total` | counter | |
//! | `voice_agent_errors_total` | counter | `stage`, `kind` |
//! | `voice_agent_latency_seconds` | histogram | `stage` |

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use agent::session::TurnMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// A frame leaving more than one frame period after its slot is late: the
/// receiver's jitter buffer has had to wait for it.
pub const LATE_FRAME: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    stage: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The worker's metrics. Each field is a handle on a metric the registry
/// also holds (they share their atomics): the registry renders, the fields
/// update.
pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    registered: Gauge,
    draining: Gauge,
    load: Gauge<f64, AtomicU64>,
    sessions: Counter,
    jobs_ended: Family<ResultLabel, Counter>,
    turns: Counter,
    interruptions: Counter,
    /// Agent audio frames sent, and those that left late (see [`LATE_FRAME`]).
    audio_frames: Counter,
    audio_frames_late: Counter,
    reconnects: Counter,
    /// Stage errors by (stage, kind).
    errors: Family<ErrorLabels, Counter>,
    /// Latency histograms by stage name.
    latency: Family<StageLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            sessions_active: Gauge::default(),
            registered: Gauge::default(),
            draining: Gauge::default(),
            load: Gauge::default(),
            sessions: Counter::default(),
            jobs_ended: Family::default(),
            turns: Counter::default(),
            interruptions: Counter::default(),
            audio_frames: Counter::default(),
            audio_frames_late: Counter::default(),
            reconnects: Counter::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        m.register_all();
        m
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("sessions_active", &self.sessions_active.get())
            .field("registered", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric (names as in the module doc; the encoder adds
    /// `_total` to counters and `_seconds` for the unit, and a full stop to
    /// each help text) in exposition order.
    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "voice_agent_sessions_active",
            "Sessions running now",
            self.sessions_active.clone(),
        );
        r.register(
            "voice_agent_worker_registered",
            "1 while registered with the server",
            self.registered.clone(),
        );
        r.register(
            "voice_agent_worker_draining",
            "1 once draining",
            self.draining.clone(),
        );
        r.register(
            "voice_agent_worker_load",
            "Reported load (CPU moving average, 0-1)",
            self.load.clone(),
        );
        r.register(
            "voice_agent_sessions",
            "Sessions started",
            self.sessions.clone(),
        );
        r.register(
            "voice_agent_jobs_ended",
            "Jobs ended, by result",
            self.jobs_ended.clone(),
        );
        r.register("voice_agent_turns", "Agent replies", self.turns.clone());
        r.register(
            "voice_agent_interruptions",
            "Replies interrupted by the user",
            self.interruptions.clone(),
        );
        r.register(
            "voice_agent_audio_frames",
            "Agent audio frame slots (20 ms each: sent or skipped; a quiet track's keep-alives not counted), counted when a session ends",
            self.audio_frames.clone(),
        );
        r.register(
            "voice_agent_audio_frames_late",
            "Agent audio frames sent more than 20 ms after their slot, or skipped",
            self.audio_frames_late.clone(),
        );
        r.register(
            "voice_agent_worker_reconnects",
            "Connections to the server after the first",
            self.reconnects.clone(),
        );
        r.register(
            "voice_agent_errors",
            "Stage errors, by stage and kind",
            self.errors.clone(),
        );
        r.register_with_unit(
            "voice_agent_latency",
            "Per-turn latency by stage",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    pub fn session_started(&self) {
        self.sessions_active.inc();
        self.sessions.inc();
    }

    pub fn session_ended(&self, ok: bool) {
        self.sessions_active.dec();
        let result = if ok { "success" } else { "failed" };
        self.jobs_ended.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn turn(&self, t: &TurnMetrics) {
        self.turns.inc();
        if t.interrupted {
            self.interruptions.inc();
        }
        for (stage, v) in [
            ("end_of_utterance", t.end_of_utterance_delay),
            ("transcription", t.transcription_delay),
            ("llm_ttft", t.llm_ttft),
            ("tts_ttfb", t.tts_ttfb),
            ("end_to_end", t.end_to_end),
        ] {
            if let Some(d) = v {
                self.latency
                    .get_or_create(&StageLabel { stage })
                    .observe(d.as_secs_f64());
            }
        }
    }

    pub fn error(&self, stage: &str, kind: &str) {
        let labels = ErrorLabels {
            stage: stage.to_owned(),
            kind: kind.to_owned(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    pub fn set_registered(&self, registered: bool) {
        self.registered.set(i64::from(registered));
    }

    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    pub fn set_load(&self, load: f32) {
        self.load.set(f64::from(load));
    }

    /// Adds the pacing record of a session's published track (at its end).
    pub fn audio_sent(&self, stats: &room::PacerStats) {
        // A skipped slot is a frame that should have left: count it in both. A
        // quiet track's keep-alives are not on the cadence: in neither.
        self.audio_frames
            .inc_by(stats.cadence_frames() + stats.slots_skipped);
        self.audio_frames_late
            .inc_by(stats.lateness.count_over(LATE_FRAME) + stats.slots_skipped);
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// 200 once registered, 503 while draining or disconnected.
    pub fn healthy(&self) -> bool {
        self.registered.get() == 1 && self.draining.get() == 0
    }

    /// Sessions running now.
    pub fn active_sessions(&self) -> i64 {
        self.sessions_active.get()
    }

    /// The OpenMetrics text exposition (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a failing label encoder would
        // only cut the text short.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `series` (name and labels, as printed).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.session_started();
        m.turn(&TurnMetrics {
            end_to_end: Some(Duration::from_millis(400)),
            interrupted: true,
            ..Default::default()
        });
        m.error("llm", "http \"500\"\nnext\\");
        m.error("llm", "rate_limit");
        m.error("llm", "rate_limit");
        let mut stats = room::PacerStats {
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
        m.reconnected();
        m.set_load(0.25);
        let text = m.render();
        for (series, want) in [
            ("voice_agent_sessions_total", 1.0),
            ("voice_agent_sessions_active", 0.0),
            ("voice_agent_turns_total", 1.0),
            ("voice_agent_interruptions_total", 1.0),
            ("voice_agent_worker_reconnects_total", 1.0),
            ("voice_agent_worker_registered", 0.0),
            ("voice_agent_worker_draining", 0.0),
            ("voice_agent_worker_load", 0.25),
            ("voice_agent_audio_frames_total", 101.0),
            // 25 and 60 ms late, and one skipped slot.
            ("voice_agent_audio_frames_late_total", 3.0),
            ("voice_agent_jobs_ended_total{result=\"failed\"}", 1.0),
            (
                "voice_agent_errors_total{stage=\"llm\",kind=\"rate_limit\"}",
                2.0,
            ),
            (
                "voice_agent_latency_seconds_bucket{le=\"0.3\",stage=\"end_to_end\"}",
                0.0,
            ),
            (
                "voice_agent_latency_seconds_bucket{le=\"0.5\",stage=\"end_to_end\"}",
                1.0,
            ),
            (
                "voice_agent_latency_seconds_bucket{le=\"10.0\",stage=\"end_to_end\"}",
                1.0,
            ),
            (
                "voice_agent_latency_seconds_bucket{le=\"+Inf\",stage=\"end_to_end\"}",
                1.0,
            ),
            (
                "voice_agent_latency_seconds_count{stage=\"end_to_end\"}",
                1.0,
            ),
            ("voice_agent_latency_seconds_sum{stage=\"end_to_end\"}", 0.4),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        // Label values are escaped; the exposition is complete.
        assert!(
            text.contains("kind=\"http \\\"500\\\"\\nnext\\\\\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE voice_agent_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No stage without a measurement gets a histogram.
        assert!(!text.contains("stage=\"llm_ttft\""), "{text}");
    }

    #[test]
    fn healthy_only_when_registered_and_not_draining() {
        let m = Metrics::default();
        assert!(!m.healthy());
        m.set_registered(true);
        assert!(m.healthy());
        m.set_registered(false);
        assert!(!m.healthy());
        m.set_registered(true);
        m.set_draining();
        assert!(!m.healthy());
        assert!(m.render().contains("voice_agent_worker_draining 1\n"));
    }

    #[test]
    fn active_sessions_follow_starts_and_ends() {
        let m = Metrics::default();
        m.session_started();
        m.session_started();
        m.session_ended(true);
        assert_eq!(m.active_sessions(), 1);
        let text = m.render();
        assert_eq!(value(&text, "voice_agent_sessions_active"), Some(1.0));
        assert_eq!(
            value(&text, "voice_agent_jobs_ended_total{result=\"success\"}"),
            Some(1.0)
        );
    }
}
