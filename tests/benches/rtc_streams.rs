//! CPU and memory per bidirectional audio stream, and the 20 ms send cadence jitter.
//!
//! `cargo bench -p e2e-tests --bench rtc_streams` (needs `tests/setup.sh`).
//!
//! A stream is one `rtc` participant that publishes a track (PCM → Opus → SRTP,
//! paced every 20 ms) and subscribes to one (SRTP → Opus → PCM at 48 kHz). For N
//! streams the measured process hosts N such participants, each in its own room; the
//! other end of every room is a peer participant doing the same, hosted by a child
//! process (this binary with `--peer`) so that its cost is not counted. The server
//! is the real livekit-server on loopback.
//!
//! Reported per N: CPU of the measured process over a 10 s window as a percentage of
//! one core, divided by N; resident memory added by the N participants, divided by
//! N; frames received per stream per second; and the pacer's lateness behind its
//! 20 ms grid (mean and max over all frames of all tracks) as the cadence jitter.
//!
//! Figures on the project's shared 2-core machine (load average 3–9 from other work),
//! Opus complexity 5 (`RTC_BENCH_COMPLEXITY` overrides; `RTC_BENCH_STREAMS=1,10`
//! picks the counts):
//!
//! ```text
//! streams   1: cpu 3.20 % of a core per stream, memory 7.77 MB per stream (one-time setup included), lateness mean 1.16 ms max 5.08 ms
//! streams  10: cpu 1.98 % of a core per stream, memory 1.17 MB per stream, lateness mean 1.27 ms max 32.88 ms
//! streams  50: cpu 1.12 % of a core per stream, memory 1.09 MB per stream, lateness mean 176 ms max 3.1 s (machine saturated:
//!              100 real-time participants + the SFU + other builds on 2 cores; 47 frames/s sent instead of 50)
//! ```

use std::time::{Duration, Instant};

use e2e_tests::{LiveKitServer, token};
use rtc::{AudioFrame, ConnectOptions, LocalAudioTrack, Room, RoomEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

type R<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MEASURE: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(3);

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Two seconds of a speech-like signal in 20 ms frames.
fn signal() -> Arc<Vec<Vec<i16>>> {
    let mut seed: u32 = 0x1234_5678;
    let frames = (0..100)
        .map(|f| {
            (0..960)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let t = (f * 960 + i) as f64 / 48_000.0;
                    let freq = 200.0 + 150.0 * (t * 3.1).sin();
                    let envelope = 0.5 + 0.5 * (t * 7.0).sin();
                    let noise = ((seed >> 16) as f64 / 65_536.0 - 0.5) * 2000.0;
                    (envelope * 6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin() + noise)
                        as i16
                })
                .collect()
        })
        .collect();
    Arc::new(frames)
}

/// Join `room` as `identity`, publish a track fed with a speech-like signal, and decode
/// whatever is subscribed. Returns the room, the track and the received-frame counter.
async fn participant(
    url: &str,
    room: &str,
    identity: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> R<(Room, LocalAudioTrack, Arc<AtomicU64>)> {
    let opts = ConnectOptions {
        udp_addrs: vec!["127.0.0.1:0".into()],
        ..Default::default()
    };
    let (room, mut events) = rtc::connect(url, &token(identity, room)?, opts).await?;
    let track = room.publish_audio("bench", 48_000).await?;
    let received = Arc::new(AtomicU64::new(0));
    {
        let received = received.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    ev = events.recv() => match ev {
                        None => return,
                        Some(RoomEvent::TrackSubscribed(t)) => {
                            let Ok(mut s) = t.into_stream(48_000) else { continue };
                            let received = received.clone();
                            let mut stop = stop.clone();
                            tokio::spawn(async move {
                                loop {
                                    tokio::select! {
                                        _ = stop.changed() => return,
                                        f = s.recv() => match f {
                                            Some(_) => { received.fetch_add(1, Ordering::Relaxed); }
                                            None => return,
                                        },
                                    }
                                }
                            });
                        }
                        Some(_) => {}
                    },
                }
            }
        });
    }
    {
        // A speech-like signal (gliding tone with noise), precomputed so that its
        // generation does not count as the stream's cost, sent in 20 ms frames forever.
        let track = track.clone();
        let mut stop = stop.clone();
        let signal = signal();
        tokio::spawn(async move {
            for i in 0.. {
                let data = signal[i % signal.len()].clone();
                tokio::select! {
                    _ = stop.changed() => return,
                    r = track.capture_frame(AudioFrame { data, sample_rate: 48_000 }) => if r.is_err() { return },
                }
            }
        });
    }
    Ok((room, track, received))
}

async fn peer_main(url: String, prefix: String, count: usize) -> R {
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut keep = Vec::new();
    for i in 0..count {
        keep.push(participant(&url, &format!("{prefix}-{i}"), "peer", stop_rx.clone()).await?);
    }
    println!("peers-ready");
    // Live until the parent kills us.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

async fn run(server: &LiveKitServer, n: usize) -> R {
    let prefix = format!("bench{n}-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut peer = tokio::process::Command::new(exe)
        .args(["--peer", &server.url(), &prefix, &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let rss0 = rss_bytes();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut parts = Vec::new();
    for i in 0..n {
        parts.push(
            participant(
                &server.url(),
                &format!("{prefix}-{i}"),
                "agent",
                stop_rx.clone(),
            )
            .await?,
        );
    }
    // Wait for the peers, then for media to flow everywhere.
    {
        use tokio::io::AsyncBufReadExt;
        let out = peer.stdout.take().ok_or("peer stdout")?;
        let mut lines = tokio::io::BufReader::new(out).lines();
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "peers-ready" {
                    break;
                }
            }
        })
        .await?;
    }
    tokio::time::sleep(WARMUP).await;
    let stats0: Vec<_> = parts.iter().map(|p| p.1.stats()).collect();
    let recv0: u64 = parts.iter().map(|p| p.2.load(Ordering::Relaxed)).sum();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(MEASURE).await;
    let (cpu1, t1) = (cpu_seconds(), Instant::now());
    let rss1 = rss_bytes();
    let recv1: u64 = parts.iter().map(|p| p.2.load(Ordering::Relaxed)).sum();
    let wall = (t1 - t0).as_secs_f64();
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    let mut frames = 0u64;
    let mut late_total = 0u64;
    let mut late_max = 0u64;
    for (p, s0) in parts.iter().zip(stats0) {
        let s = p.1.stats();
        frames += s.frames_sent - s0.frames_sent;
        late_total += s.total_lateness_us - s0.total_lateness_us;
        late_max = late_max.max(s.max_lateness_us);
    }
    let late_mean = if frames > 0 {
        late_total as f64 / frames as f64 / 1000.0
    } else {
        0.0
    };
    println!(
        "streams {n:>3}: cpu {:.2} % of a core per stream ({cpu_pct:.1} % total), memory {:.2} MB per stream ({:.1} MB total), \
         received {:.1} frames/s per stream, sent {:.1} frames/s per stream, cadence lateness mean {late_mean:.2} ms max {:.2} ms",
        cpu_pct / n as f64,
        rss1.saturating_sub(rss0) as f64 / n as f64 / 1e6,
        rss1.saturating_sub(rss0) as f64 / 1e6,
        (recv1 - recv0) as f64 / wall / n as f64,
        frames as f64 / wall / n as f64,
        late_max as f64 / 1000.0,
    );
    let _ = stop_tx.send(true);
    for (room, _, _) in parts {
        let _ = tokio::time::timeout(Duration::from_secs(5), room.close()).await;
    }
    let _ = peer.kill().await;
    Ok(())
}

fn main() -> R {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(i) = args.iter().position(|a| a == "--peer") {
        let url = args.get(i + 1).cloned().ok_or("url")?;
        let prefix = args.get(i + 2).cloned().ok_or("prefix")?;
        let count: usize = args.get(i + 3).ok_or("count")?.parse()?;
        return rt.block_on(peer_main(url, prefix, count));
    }
    let counts: Vec<usize> = std::env::var("RTC_BENCH_STREAMS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 50]);
    rt.block_on(async {
        let server = LiveKitServer::start().await?;
        for n in counts {
            run(&server, n).await?;
        }
        Ok(())
    })
}
