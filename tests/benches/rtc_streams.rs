//! CPU and memory per bidirectional audio stream, and the 20 ms send cadence.
//!
//! `cargo bench -j2 -p e2e-tests --bench rtc_streams` (needs `tests/setup.sh`).
//!
//! A stream is one `room` participant that publishes a track (PCM → Opus → SRTP,
//! paced every 20 ms) and subscribes to one (SRTP → Opus → PCM at 48 kHz). For N
//! streams the measured process hosts N such participants, each in its own room; the
//! other end of every room is a peer participant doing the same, hosted by a child
//! process (this binary with `--peer`) so that its cost is not counted; it encodes at
//! Opus complexity 0 (`RTC_BENCH_PEER_COMPLEXITY`) to load the machine less. The
//! server is the real livekit-server on loopback. `RTC_BENCH_COMPLEXITY` sets ours
//! (default: the crate's), `RTC_BENCH_STREAMS=1,10` the counts.
//!
//! Measurement starts once every participant on both sides receives audio (or after
//! 60 s; those that never do are counted as "receiving nothing"), plus 3 s. Reported
//! per N over a 10 s window:
//! - the load average, the whole machine's busy CPU (of 200 % on two cores) and how
//!   much of it was our process, the peers' process and the server;
//! - our process's CPU (`/proc/self/stat`, all its threads) as a percentage of one
//!   core, divided by N; resident memory added by the N participants, divided by N;
//! - at our senders (when a frame has been encoded and handed to the RTP sender):
//!   frames/s per stream, the p99 and max of |interval − 20 ms| between consecutive
//!   frames (jitter), lateness behind the 20 ms grid, and slots skipped;
//! - at the receivers (the peers decoding our frames, and we decoding theirs): frames/s
//!   per stream and the p99 of |inter-arrival interval − 20 ms|.
//!
//! ## Results and their history
//!
//! Our process's CPU is measured over 10 s; jitter is the p99 of |interval − 20 ms|
//! between consecutive frames, at our sender and as decoded by the far ends. On the
//! shared 2-core machine, in two conditions: quiet (other work took < 10 % of the
//! machine) and loaded by other engineers' builds:
//!
//! | streams | CPU per stream (% of one core) | memory per stream | sent | jitter p99 at sender / receivers |
//! |---|---|---|---|---|
//! | 1, quiet | 1.70 %, 1.90 % (the wake-ups of an idle process: see below) | 7.3 MB (one-time setup) | 50.0 frames/s | 1.0 ms / 1.0 ms |
//! | 10, quiet | 1.11 %, 1.16 %, 1.17 % | 1.1–1.8 MB | 50.0 frames/s | 1.3 ms / 1.3–1.5 ms |
//! | 50, quiet (the bench alone keeps the machine 116 % busy) | 0.87 % | 1.1 MB | 50.0 frames/s, none skipped | 1.5 ms / 2.0 ms |
//!
//! With CELT-only encoding; the same runs in VoIP mode at complexity 3 gave 1.64–1.73 %
//! at 10 streams and 1.37 % at 50 (1.44–1.50 % at 10 with complexity 1, 1.41 % with
//! 0). Per packet, what remains is webrtc-rs's SRTP, RTCP, UDP and the tasks'
//! wake-ups, and the decoder. A lone stream costs more per stream because every
//! packet wakes an idle runtime thread (epoll, futex); with more streams, one wake
//! serves several packets. All rooms received in every run.
//!
//! Memory meets the 2 MB target, and CPU the 1.5 % target at 10 and 50 streams. The
//! send cadence meets the 5 ms target at 50 streams whenever the process gets the CPU
//! it needs. On a machine loaded by other builds (earlier runs, VoIP mode), 50
//! streams skipped 20 % of their slots: the bench alone then needed ~1.6 of the 2
//! cores and the process was starved for tens of milliseconds at a time, so its
//! pacers fell more than 60 ms behind; at `nice -10` none were skipped (jitter
//! 2.8 ms / 3.8 ms).
//!
//! Until a fix in the engine, the bench intermittently showed rooms (0–3 of 10, 0–22
//! of 50, once the single room of a 1-stream run) where one side never received the
//! other's track. Cause: once connecting on loopback got fast (no STUN gathering),
//! a new track's first RTP reached the SFU before the offer announcing it; with no
//! MID header extension on audio the SFU could not place the SSRC and dropped that
//! stream for good. A published track's sink is now held until the server has
//! answered the offer that carries it (`room`'s `engine/negotiation.rs`, held sinks).
//! After the fix: 0 of 10 and 0 of 50 rooms receiving nothing, in every run since.
//! Memory per stream at 10 varies between runs (1.1 or 1.8 MB), with the allocator's
//! per-thread arenas.
//!
//! Output of a run on the shared 2-core machine while it was otherwise quiet
//! (published tracks CELT only, the default):
//!
//! ```text
//! streams   1 (opus complexity 3, peers' 0; load average 1.52 0.94 1.04 → 1.29 0.91 1.02; machine 1 % of 200 %: ours 2 %, peers 2 %, server 2 %)
//!   cpu 1.90 % of a core per stream, memory 7.30 MB per stream (7.3 MB total)
//!   sent: 49.99 frames/s per stream (mean interval 20.00 ms), interval jitter p99 1.00 ms max 1.25 ms, lateness behind the grid p50 1.50 p99 2.00 max 2.00 ms, 0 slots skipped
//!   received by the peers: 49.99 frames/s per stream, inter-arrival jitter p99 1.00 ms max 1.00 ms (0 of them receiving nothing)
//!   received by us: 49.99 frames/s per stream, inter-arrival jitter p99 1.00 ms (0 of us receiving nothing)
//! streams  10 (opus complexity 3, peers' 0; load average 1.18 0.89 1.02 → 1.00 0.86 1.01; machine 23 % of 200 %: ours 11 %, peers 10 %, server 12 %)
//!   cpu 1.11 % of a core per stream, memory 1.12 MB per stream (11.2 MB total)
//!   sent: 50.01 frames/s per stream (mean interval 20.00 ms), interval jitter p99 1.25 ms max 1.50 ms, lateness behind the grid p50 1.25 p99 2.25 max 2.50 ms, 0 slots skipped
//!   received by the peers: 50.02 frames/s per stream, inter-arrival jitter p99 1.25 ms max 4.00 ms (0 of them receiving nothing)
//!   received by us: 50.01 frames/s per stream, inter-arrival jitter p99 1.50 ms (0 of us receiving nothing)
//! streams  50 (opus complexity 3, peers' 0; load average 1.48 0.97 1.04 → 1.79 1.05 1.06; machine 116 % of 200 %: ours 43 %, peers 40 %, server 38 %)
//!   cpu 0.87 % of a core per stream, memory 1.07 MB per stream (53.4 MB total)
//!   sent: 50.01 frames/s per stream (mean interval 20.00 ms), interval jitter p99 1.50 ms max 4.25 ms, lateness behind the grid p50 1.25 p99 2.50 max 4.75 ms, 0 slots skipped
//!   received by the peers: 50.01 frames/s per stream, inter-arrival jitter p99 2.00 ms max 5.75 ms (0 of them receiving nothing)
//!   received by us: 50.01 frames/s per stream, inter-arrival jitter p99 2.00 ms (0 of us receiving nothing)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::{LiveKitServer, token};
use room::{AudioFrame, CadenceHistogram, ConnectOptions, LocalAudioTrack, Room, RoomEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

type R<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MEASURE: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(3);
const FRAME: Duration = Duration::from_millis(20);

/// utime + stime of a process (`self` or a pid), in seconds (clock ticks of 100 Hz).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// (busy, total) clock ticks of the whole machine, all cores.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pid of the livekit-server started by this process (its config directory is
/// named after our pid and its port).
fn server_pid(server: &LiveKitServer) -> Option<String> {
    let tag = format!("lk-test-{}-{}", std::process::id(), server.port);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (name.chars().all(|c| c.is_ascii_digit())
            && cmd.contains("livekit-server")
            && cmd.contains(&tag))
        .then_some(name)
    })
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

fn complexity(var: &str, default: i32) -> i32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(Duration::MAX) => ">100".into(),
        Some(d) => format!("{:.2}", d.as_secs_f64() * 1000.0),
    }
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

/// What the receiving side of one participant counts.
#[derive(Default)]
struct Received {
    /// Tracks subscribed.
    subscribed: AtomicU64,
    frames: AtomicU64,
    /// |inter-arrival interval − 20 ms| of the decoded frames.
    jitter: Mutex<CadenceHistogram>,
}

impl Received {
    fn jitter(&self) -> CadenceHistogram {
        self.jitter.lock().map(|h| *h).unwrap_or_default()
    }
}

struct Participant {
    room: Room,
    track: LocalAudioTrack,
    received: Arc<Received>,
}

/// Join `room` as `identity`, publish a track fed with a speech-like signal, and decode
/// whatever is subscribed.
async fn participant(
    url: &str,
    room: &str,
    identity: &str,
    opus_complexity: i32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> R<Participant> {
    let opts = ConnectOptions {
        udp_addrs: vec!["127.0.0.1:0".into()],
        opus_complexity,
        ..Default::default()
    };
    let (room, mut events) = room::connect(url, &token(identity, room)?, opts).await?;
    let track = room.publish_audio("bench", 48_000).await?;
    let received = Arc::new(Received::default());
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
                            received.subscribed.fetch_add(1, Ordering::Relaxed);
                            let Ok(mut s) = t.into_stream(48_000) else { continue };
                            let received = received.clone();
                            let mut stop = stop.clone();
                            tokio::spawn(async move {
                                let mut last: Option<Instant> = None;
                                loop {
                                    tokio::select! {
                                        _ = stop.changed() => return,
                                        f = s.recv() => match f {
                                            Some(_) => {
                                                let now = Instant::now();
                                                received.frames.fetch_add(1, Ordering::Relaxed);
                                                if let (Some(l), Ok(mut h)) = (last, received.jitter.lock()) {
                                                    h.record((now - l).abs_diff(FRAME));
                                                }
                                                last = Some(now);
                                            }
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
                    r = track.capture_frame(AudioFrame::new(data, 48_000, 1)) => if r.is_err() { return },
                }
            }
        });
    }
    Ok(Participant {
        room,
        track,
        received,
    })
}

/// Wait until every participant has received a frame (or `limit`); returns how many
/// have not.
async fn all_receiving(parts: &[Participant], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let silent = parts
            .iter()
            .filter(|p| p.received.frames.load(Ordering::Relaxed) == 0)
            .count();
        if silent == 0 || Instant::now() > deadline {
            return silent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn merged_jitter(parts: &[Participant]) -> CadenceHistogram {
    let mut h = CadenceHistogram::default();
    for p in parts {
        h.add(&p.received.jitter());
    }
    h
}

/// The far ends: `count` participants. On stdin, `mark` starts a measurement window
/// and `report` prints what they received since: `recv <frames> <p50> <p99> <max>`
/// (inter-arrival deviation from 20 ms, ms).
async fn peer_main(url: String, prefix: String, count: usize, opus_complexity: i32) -> R {
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut parts = Vec::new();
    for i in 0..count {
        parts.push(
            participant(
                &url,
                &format!("{prefix}-{i}"),
                "peer",
                opus_complexity,
                stop_rx.clone(),
            )
            .await?,
        );
    }
    let silent = all_receiving(&parts, Duration::from_secs(60)).await;
    if silent > 0 {
        let unsubscribed = parts
            .iter()
            .filter(|p| p.received.subscribed.load(Ordering::Relaxed) == 0)
            .count();
        eprintln!(
            "{silent} of {count} peers receive nothing; {unsubscribed} have no track subscribed"
        );
    }
    println!("peers-ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut mark = (0u64, CadenceHistogram::default());
    // Live until the parent closes our stdin or kills us.
    while let Ok(Some(l)) = lines.next_line().await {
        let frames: u64 = parts
            .iter()
            .map(|p| p.received.frames.load(Ordering::Relaxed))
            .sum();
        let jitter = merged_jitter(&parts);
        match l.trim() {
            "mark" => mark = (frames, jitter),
            "report" => {
                let j = jitter.since(&mark.1);
                let silent = parts
                    .iter()
                    .filter(|p| p.received.frames.load(Ordering::Relaxed) == 0)
                    .count();
                println!(
                    "recv {} {} {} {} {silent}",
                    frames - mark.0,
                    ms(j.percentile(50.0)),
                    ms(j.percentile(99.0)),
                    ms(j.percentile(100.0))
                );
            }
            _ => {}
        }
    }
    Ok(())
}

async fn run(server: &LiveKitServer, n: usize) -> R {
    let ours = complexity(
        "RTC_BENCH_COMPLEXITY",
        ConnectOptions::default().opus_complexity,
    );
    let theirs = complexity("RTC_BENCH_PEER_COMPLEXITY", 0);
    let prefix = format!("bench{n}-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut peer = tokio::process::Command::new(exe)
        .args(["--peer", &server.url(), &prefix, &n.to_string()])
        .env("RTC_BENCH_PEER_COMPLEXITY", theirs.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let peer_pid = peer.id().map(|p| p.to_string()).unwrap_or_default();
    let server_pid = server_pid(server).unwrap_or_default();
    let mut peer_in = peer.stdin.take().ok_or("peer stdin")?;
    let mut peer_out = tokio::io::BufReader::new(peer.stdout.take().ok_or("peer stdout")?).lines();
    let rss0 = rss_bytes();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut parts = Vec::new();
    for i in 0..n {
        parts.push(
            participant(
                &server.url(),
                &format!("{prefix}-{i}"),
                "agent",
                ours,
                stop_rx.clone(),
            )
            .await?,
        );
    }
    // Wait for the peers, then for media to flow everywhere.
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(l)) = peer_out.next_line().await {
            if l == "peers-ready" {
                break;
            }
            eprintln!("peer: {l}");
        }
    })
    .await?;
    let silent = all_receiving(&parts, Duration::from_secs(60)).await;
    tokio::time::sleep(WARMUP).await;
    let load0 = loadavg();
    let stats0: Vec<_> = parts.iter().map(|p| p.track.stats()).collect();
    let recv0: u64 = parts
        .iter()
        .map(|p| p.received.frames.load(Ordering::Relaxed))
        .sum();
    let jitter0 = merged_jitter(&parts);
    peer_in.write_all(b"mark\n").await?;
    let (cpu0, peer0, srv0, m0, t0) = (
        cpu_seconds("self"),
        cpu_seconds(&peer_pid),
        cpu_seconds(&server_pid),
        machine_ticks(),
        Instant::now(),
    );
    tokio::time::sleep(MEASURE).await;
    let (cpu1, peer1, srv1, m1, t1) = (
        cpu_seconds("self"),
        cpu_seconds(&peer_pid),
        cpu_seconds(&server_pid),
        machine_ticks(),
        Instant::now(),
    );
    peer_in.write_all(b"report\n").await?;
    let rss1 = rss_bytes();
    let load1 = loadavg();
    let recv1: u64 = parts
        .iter()
        .map(|p| p.received.frames.load(Ordering::Relaxed))
        .sum();
    let jitter_in = merged_jitter(&parts).since(&jitter0);
    let peer_report = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = peer_out.next_line().await {
            if let Some(r) = l.strip_prefix("recv ") {
                return r.to_owned();
            }
        }
        String::new()
    })
    .await
    .unwrap_or_default();
    let wall = (t1 - t0).as_secs_f64();
    let pct = |a: f64, b: f64| (b - a) / wall * 100.0;
    let cpu_pct = pct(cpu0, cpu1);
    let machine_pct = if m1.1 > m0.1 {
        (m1.0 - m0.0) / (m1.1 - m0.1) * 100.0 * 2.0
    } else {
        0.0
    };
    let mut frames = 0u64;
    let mut skipped = 0u64;
    let mut lateness = CadenceHistogram::default();
    let mut deviation = CadenceHistogram::default();
    for (p, s0) in parts.iter().zip(stats0) {
        let s = p.track.stats();
        frames += s.frames_sent - s0.frames_sent;
        skipped += s.slots_skipped - s0.slots_skipped;
        lateness.add(&s.lateness.since(&s0.lateness));
        deviation.add(&s.interval_deviation.since(&s0.interval_deviation));
    }
    let sent_fps = frames as f64 / wall / n as f64;
    let mut peer_fields = peer_report.split_whitespace();
    let peer_frames: f64 = peer_fields
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    let peer_p99 = peer_fields.nth(1).unwrap_or("-").to_owned();
    let peer_max = peer_fields.next().unwrap_or("-").to_owned();
    let peer_silent = peer_fields.next().unwrap_or("?").to_owned();
    println!(
        "streams {n:>3} (opus complexity {ours}, peers' {theirs}; load average {load0} → {load1}; machine {machine_pct:.0} % of 200 %: \
         ours {cpu_pct:.0} %, peers {:.0} %, server {:.0} %)\n  \
         cpu {:.2} % of a core per stream, memory {:.2} MB per stream ({:.1} MB total)\n  \
         sent: {sent_fps:.2} frames/s per stream (mean interval {:.2} ms), interval jitter p99 {} ms max {} ms, \
         lateness behind the grid p50 {} p99 {} max {} ms, {skipped} slots skipped\n  \
         received by the peers: {:.2} frames/s per stream, inter-arrival jitter p99 {peer_p99} ms max {peer_max} ms \
         ({peer_silent} of them receiving nothing)\n  \
         received by us: {:.2} frames/s per stream, inter-arrival jitter p99 {} ms ({silent} of us receiving nothing)",
        pct(peer0, peer1),
        pct(srv0, srv1),
        cpu_pct / n as f64,
        rss1.saturating_sub(rss0) as f64 / n as f64 / 1e6,
        rss1.saturating_sub(rss0) as f64 / 1e6,
        if sent_fps > 0.0 {
            1000.0 / sent_fps
        } else {
            0.0
        },
        ms(deviation.percentile(99.0)),
        ms(deviation.percentile(100.0)),
        ms(lateness.percentile(50.0)),
        ms(lateness.percentile(99.0)),
        ms(lateness.percentile(100.0)),
        peer_frames / wall / n as f64,
        (recv1 - recv0) as f64 / wall / n as f64,
        ms(jitter_in.percentile(99.0)),
    );
    let _ = stop_tx.send(true);
    for p in parts {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.room.close()).await;
    }
    drop(peer_in);
    let _ = peer.kill().await;
    Ok(())
}

fn main() -> R {
    e2e_tests::init_logging();
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(i) = args.iter().position(|a| a == "--peer") {
        let url = args.get(i + 1).cloned().ok_or("url")?;
        let prefix = args.get(i + 2).cloned().ok_or("prefix")?;
        let count: usize = args.get(i + 3).ok_or("count")?.parse()?;
        let theirs = complexity("RTC_BENCH_PEER_COMPLEXITY", 0);
        return rt.block_on(peer_main(url, prefix, count, theirs));
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
