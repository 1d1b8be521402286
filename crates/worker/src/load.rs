//! The load a worker reports: a moving average of this process's CPU use as a
//! share of the machine's cores (0–1). The arithmetic ([`LoadAverage`]) is pure;
//! [`CpuSampler`] reads `/proc/self/stat` on Linux and reports zero elsewhere.

use std::time::Instant;

/// Exponential moving average of CPU samples.
#[derive(Clone, Debug)]
pub struct LoadAverage {
    /// Weight of the newest sample (0–1).
    alpha: f32,
    value: Option<f32>,
}

impl LoadAverage {
    /// `alpha` is the weight of each new sample; 0.5 with a 2.5 s report
    /// interval forgets a burst within about 10 s.
    pub fn new(alpha: f32) -> Self {
        Self {
            alpha: alpha.clamp(0.01, 1.0),
            value: None,
        }
    }

    /// Adds one sample: `cpu_seconds` used over `wall_seconds` on `cores` cores.
    pub fn sample(&mut self, cpu_seconds: f64, wall_seconds: f64, cores: usize) -> f32 {
        let x = if wall_seconds > 0.0 && cores > 0 && cpu_seconds.is_finite() {
            (cpu_seconds / (wall_seconds * cores as f64)).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
        let v = match self.value {
            None => x,
            Some(prev) => prev + self.alpha * (x - prev),
        };
        self.value = Some(v);
        v
    }

    pub fn value(&self) -> f32 {
        self.value.unwrap_or(0.0)
    }
}

/// Samples this process's CPU time.
#[derive(Debug)]
pub struct CpuSampler {
    last: Option<(Instant, f64)>,
    cores: usize,
    average: LoadAverage,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    pub fn new() -> Self {
        Self {
            last: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            average: LoadAverage::new(0.5),
        }
    }

    /// Takes a sample now and returns the moving average.
    pub fn sample(&mut self, now: Instant) -> f32 {
        let Some(cpu) = process_cpu_seconds() else {
            return self.average.value();
        };
        if let Some((t, c)) = self.last.replace((now, cpu)) {
            let wall = now.saturating_duration_since(t).as_secs_f64();
            return self.average.sample(cpu - c, wall, self.cores);
        }
        self.average.value()
    }
}

/// User plus system CPU seconds of this process (`/proc/self/stat` fields 14
/// and 15, in clock ticks of 1/100 s, the Linux `USER_HZ`).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_seconds(&stat)
}

fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_follows_samples() {
        let mut a = LoadAverage::new(0.5);
        assert_eq!(a.value(), 0.0);
        assert!((a.sample(1.0, 2.0, 2) - 0.25).abs() < 1e-6);
        assert!((a.sample(4.0, 2.0, 2) - 0.625).abs() < 1e-6);
        assert!(
            (a.sample(0.0, 0.0, 2) - 0.3125).abs() < 1e-6,
            "no wall time counts as idle"
        );
        assert!(a.sample(100.0, 1.0, 1) <= 1.0, "clamped");
    }

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let stat = "1234 (voice agent) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu_seconds(stat), Some(4.0));
        assert_eq!(parse_stat_cpu_seconds("garbage"), None);
    }

    #[test]
    fn sampler_reports_a_share() {
        let mut s = CpuSampler::new();
        let t0 = Instant::now();
        let _ = s.sample(t0);
        let v = s.sample(t0 + std::time::Duration::from_millis(100));
        assert!((0.0..=1.0).contains(&v));
    }
}
