//! Test harness for end-to-end tests with real parts.
//!
//! - [`LiveKitServer`]: the real `livekit-server` (built by `tests/setup.sh` into the
//!   cache) on free loopback ports, dev keys, killed on drop; can be killed and
//!   restarted on the same ports.
//! - [`token`]: access tokens signed with the dev keys.
//! - [`Human`]: the real LiveKit Python SDK running `tests/python/human.py`, whose
//!   JSON-lines output is read as [`serde_json::Value`]s.
//! - WAV and speech helpers: espeak-ng fixtures, WAV read/write, envelope correlation.
//!
//! Everything that waits is bounded by a timeout; nothing here panics on a missing
//! tool — it returns an error that names `tests/setup.sh`.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Version of the server `tests/setup.sh` builds.
pub const LIVEKIT_SERVER_VERSION: &str = "v1.13.5";
/// Dev API key of `livekit-server --dev`.
pub const API_KEY: &str = "devkey";
/// Dev API secret of `livekit-server --dev`.
pub const API_SECRET: &str = "secret";

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A tool the tests need is not installed.
    #[error(
        "{0} not found: run `tests/setup.sh` first (it installs the LiveKit server, the Python SDK venv and espeak-ng)"
    )]
    Missing(String),
    /// Process or file trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Log to stderr per `RUST_LOG` (e.g. `RUST_LOG=rtc=debug`); call at the start of a test.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Where `tests/setup.sh` caches the server and the venv.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VOICE_AGENT_TEST_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/voice-agent-test")
}

/// The cached server binary.
pub fn server_bin() -> Result<PathBuf, HarnessError> {
    let p = cache_dir().join(format!("bin/livekit-server-{LIVEKIT_SERVER_VERSION}"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(p.display().to_string()))
    }
}

/// The venv's Python.
pub fn python() -> Result<PathBuf, HarnessError> {
    let p = cache_dir().join("venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(p.display().to_string()))
    }
}

/// A free loopback TCP port (and, for `udp`, free for UDP too).
pub fn free_port(udp: bool) -> Result<u16, HarnessError> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !udp || UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(HarnessError::Other("no free port".into()))
}

/// A running `livekit-server --dev` on loopback.
pub struct LiveKitServer {
    child: Option<Child>,
    /// HTTP/WebSocket port.
    pub port: u16,
    /// ICE/TCP port.
    pub tcp_port: u16,
    /// ICE/UDP port (single port mux).
    pub udp_port: u16,
    dir: PathBuf,
}

impl LiveKitServer {
    /// Start on free ports and wait until it accepts connections (logging
    /// warnings and errors).
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_logging("warn").await
    }

    /// [`LiveKitServer::start`] with this log level (`info` logs job status
    /// updates, among much else).
    pub async fn start_logging(level: &str) -> Result<Self, HarnessError> {
        let bin = server_bin()?;
        let port = free_port(false)?;
        let tcp_port = free_port(false)?;
        let udp_port = free_port(true)?;
        let dir = std::env::temp_dir().join(format!("lk-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "port: {port}\nbind_addresses: [\"127.0.0.1\"]\nrtc:\n  tcp_port: {tcp_port}\n  udp_port: {udp_port}\n  node_ip: 127.0.0.1\n  use_external_ip: false\n  enable_loopback_candidate: true\nlogging:\n  level: {level}\n"
        );
        std::fs::write(dir.join("config.yaml"), config)?;
        let _ = bin;
        let mut s = Self {
            child: None,
            port,
            tcp_port,
            udp_port,
            dir,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let bin = server_bin()?;
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--config")
            .arg(self.dir.join("config.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "livekit-server did not listen on {} (log: {})",
                    self.port,
                    self.dir.join("server.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait for it to exit.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Start it again on the same ports.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await?;
        self.spawn().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// An access token for `identity` in `room`, valid for an hour, allowed to publish,
/// subscribe, send data and update its own attributes.
pub fn token(identity: &str, room: &str) -> Result<String, HarnessError> {
    livekit_api::access_token::AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_ttl(Duration::from_secs(3600))
        .with_grants(livekit_api::access_token::VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            ..Default::default()
        })
        .to_jwt()
        .map_err(|e| HarnessError::Other(format!("token: {e}")))
}

/// The human side: `tests/python/human.py` with the real LiveKit Python SDK.
pub struct Human {
    child: Child,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    /// Everything seen so far (for failure messages).
    pub seen: Vec<serde_json::Value>,
    /// When each of `seen` arrived (read off the script's stdout as it came).
    pub seen_at: Vec<Instant>,
}

impl Human {
    /// Start the script with these extra arguments.
    pub async fn spawn(url: &str, token: &str, args: &[&str]) -> Result<Self, HarnessError> {
        let mut all = vec!["--url", url, "--token", token];
        all.extend_from_slice(args);
        Self::spawn_script("human.py", &all).await
    }

    /// Start `python/<script>` with these arguments; it speaks the same
    /// one-JSON-object-a-line protocol.
    pub async fn spawn_script(script: &str, args: &[&str]) -> Result<Self, HarnessError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let mut child = Command::new(python()?)
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Other("no stdout".into()))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send((Instant::now(), v)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines: rx,
            seen: Vec::new(),
            seen_at: Vec::new(),
        })
    }

    /// The script's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for an agent (a participant whose identity starts with `agent-`)
    /// to be in the room; returns its `participant` event. Other participants'
    /// events are kept in `seen`.
    pub async fn wait_agent(
        &mut self,
        timeout: Duration,
    ) -> Result<serde_json::Value, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.wait_event("participant", left).await?;
            if is_agent(&v) {
                return Ok(v);
            }
        }
    }

    /// Wait for the next line whose `"event"` is `event` (earlier lines are kept in `seen`).
    pub async fn wait_event(
        &mut self,
        event: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (at, v) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| {
                    HarnessError::Timeout(format!("python event {event:?}; seen: {:?}", self.seen))
                })?
                .ok_or_else(|| {
                    HarnessError::Other(format!(
                        "python exited before {event:?}; seen: {:?}",
                        self.seen
                    ))
                })?;
            self.seen.push(v.clone());
            self.seen_at.push(at);
            if v.get("event").and_then(|e| e.as_str()) == Some("error") {
                return Err(HarnessError::Other(format!("python error: {v}")));
            }
            if v.get("event").and_then(|e| e.as_str()) == Some(event) {
                return Ok(v);
            }
        }
    }

    /// When the first event named `event` arrived, if it did.
    pub fn arrival(&self, event: &str) -> Option<Instant> {
        self.seen
            .iter()
            .position(|v| v["event"] == event)
            .and_then(|i| self.seen_at.get(i).copied())
    }

    /// Kill the script.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Mono 16-bit PCM and its rate.
#[derive(Debug, Clone)]
pub struct Pcm {
    /// Samples.
    pub samples: Vec<i16>,
    /// Rate.
    pub sample_rate: u32,
}

impl Pcm {
    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Speak `text` with espeak-ng into `path` (22.05 kHz mono WAV).
pub async fn espeak(text: &str, path: &Path) -> Result<(), HarnessError> {
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(path)
        .arg(text)
        .status()
        .await
        .map_err(|_| HarnessError::Missing("espeak-ng".into()))?;
    if !status.success() {
        return Err(HarnessError::Other(format!("espeak-ng failed: {status}")));
    }
    Ok(())
}

/// Speaks each text with espeak-ng, each followed by its seconds of silence,
/// into one WAV at `path` (22.05 kHz mono): a user asking several questions.
/// An empty text is silence only (a user who waits before speaking).
pub async fn espeak_turns(turns: &[(&str, f64)], path: &Path) -> Result<(), HarnessError> {
    let mut all = Pcm {
        samples: Vec::new(),
        sample_rate: 22_050,
    };
    for (i, (text, silence)) in turns.iter().enumerate() {
        if !text.is_empty() {
            let part = path.with_extension(format!("part{i}.wav"));
            espeak(text, &part).await?;
            let pcm = read_wav(&part)?;
            let _ = std::fs::remove_file(&part);
            all.sample_rate = pcm.sample_rate;
            all.samples.extend_from_slice(&pcm.samples);
        }
        let gap = (silence * f64::from(all.sample_rate)) as usize;
        all.samples.extend(std::iter::repeat_n(0i16, gap));
    }
    write_wav(path, &all)
}

/// The texts of the final `lk.transcription` streams a [`Human`] received that
/// transcribe the track `track_sid`, in arrival order.
pub fn final_transcriptions(seen: &[serde_json::Value], track_sid: &str) -> Vec<String> {
    seen.iter()
        .filter(|v| v["event"] == "text" && v["topic"] == "lk.transcription")
        .filter(|v| v["attributes"]["lk.transcription_final"] == "true")
        .filter(|v| v["attributes"]["lk.transcribed_track_id"] == track_sid)
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect()
}

/// The sid of the first audio track the [`Human`] subscribed to from a
/// participant whose identity starts with `agent-`.
pub fn agent_track_sid(seen: &[serde_json::Value]) -> Option<String> {
    seen.iter()
        .filter(|v| v["event"] == "track")
        .find(|v| {
            v["identity"]
                .as_str()
                .is_some_and(|i| i.starts_with("agent-"))
        })
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
}

/// Read a WAV (first channel).
pub fn read_wav(path: &Path) -> Result<Pcm, HarnessError> {
    let mut r = hound::WavReader::open(path)
        .map_err(|e| HarnessError::Other(format!("wav {}: {e}", path.display())))?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let samples: Vec<i16> = r
        .samples::<i16>()
        .step_by(ch)
        .collect::<Result<_, _>>()
        .map_err(|e| HarnessError::Other(format!("wav samples: {e}")))?;
    Ok(Pcm {
        samples,
        sample_rate: spec.sample_rate,
    })
}

/// Write mono 16-bit WAV.
pub fn write_wav(path: &Path, pcm: &Pcm) -> Result<(), HarnessError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: pcm.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w =
        hound::WavWriter::create(path, spec).map_err(|e| HarnessError::Other(e.to_string()))?;
    for &s in &pcm.samples {
        w.write_sample(s)
            .map_err(|e| HarnessError::Other(e.to_string()))?;
    }
    w.finalize().map_err(|e| HarnessError::Other(e.to_string()))
}

/// Linear resampling (good enough for envelopes and fixtures).
pub fn resample(pcm: &Pcm, rate: u32) -> Pcm {
    if pcm.sample_rate == rate || pcm.samples.is_empty() {
        return Pcm {
            samples: pcm.samples.clone(),
            sample_rate: rate,
        };
    }
    let n = (pcm.samples.len() as u64 * rate as u64 / pcm.sample_rate as u64) as usize;
    let step = pcm.sample_rate as f64 / rate as f64;
    let samples = (0..n)
        .map(|i| {
            let x = i as f64 * step;
            let j = x as usize;
            let f = x - j as f64;
            let a = pcm.samples[j.min(pcm.samples.len() - 1)] as f64;
            let b = pcm.samples[(j + 1).min(pcm.samples.len() - 1)] as f64;
            (a + (b - a) * f) as i16
        })
        .collect();
    Pcm {
        samples,
        sample_rate: rate,
    }
}

/// RMS envelope in 10 ms windows.
pub fn envelope(pcm: &Pcm) -> Vec<f64> {
    let w = (pcm.sample_rate / 100).max(1) as usize;
    pcm.samples
        .chunks(w)
        .map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// Index range of the voiced part: first and last window above 5 % of the peak.
pub fn voiced(env: &[f64]) -> Option<(usize, usize)> {
    let peak = env.iter().cloned().fold(0.0, f64::max);
    if peak <= 0.0 {
        return None;
    }
    let thr = peak * 0.05;
    let first = env.iter().position(|&e| e > thr)?;
    let last = env.iter().rposition(|&e| e > thr)?;
    Some((first, last))
}

/// Pearson correlation of two equally long series.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for i in 0..n {
        num += (a[i] - ma) * (b[i] - mb);
        da += (a[i] - ma).powi(2);
        db += (b[i] - mb).powi(2);
    }
    if da == 0.0 || db == 0.0 {
        0.0
    } else {
        num / (da * db).sqrt()
    }
}

/// Best envelope correlation of `got` against `reference` over lags of ±`max_lag`
/// windows, after trimming both to their voiced parts. Returns (correlation, voiced
/// duration of `got` in seconds, voiced duration of `reference` in seconds).
pub fn match_speech(reference: &Pcm, got: &Pcm, max_lag: usize) -> (f64, f64, f64) {
    let er = envelope(reference);
    let eg = envelope(got);
    let (Some((r0, r1)), Some((g0, g1))) = (voiced(&er), voiced(&eg)) else {
        return (0.0, 0.0, 0.0);
    };
    let r = &er[r0..=r1];
    let mut best = f64::MIN;
    for lag in 0..=(2 * max_lag) {
        let start = (g0 + lag).saturating_sub(max_lag);
        if start >= eg.len() {
            break;
        }
        let end = (start + r.len()).min(eg.len());
        best = best.max(correlation(r, &eg[start..end]));
    }
    (
        best,
        (g1 - g0 + 1) as f64 / 100.0,
        (r1 - r0 + 1) as f64 / 100.0,
    )
}

/// A loopback TCP proxy in front of the server's signal port, to cut signal
/// connections without touching the server (media does not go through it).
pub struct TcpProxy {
    /// Port to connect to instead of the server's.
    pub port: u16,
    accept: tokio::task::JoinHandle<()>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Forward `127.0.0.1:<new port>` to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Result<Self, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut v) = c.lock() {
                    v.push(task);
                }
            }
        });
        Ok(Self {
            port,
            accept,
            conns,
        })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Drop every connection open now (new ones are still accepted).
    pub fn sever(&self) {
        if let Ok(mut v) = self.conns.lock() {
            for t in v.drain(..) {
                t.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// The `voice-agent` binary next to this test executable (`target/<profile>/voice-agent`).
/// `cargo test --workspace` builds it; for `cargo test -p e2e-tests` run
/// `cargo build -p voice-agent` first.
pub fn voice_agent_bin() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/voice-agent
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("voice-agent"))
        .ok_or_else(|| HarnessError::Other("no target directory".into()))?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(format!(
            "{} (build it with `cargo build -p voice-agent`)",
            p.display()
        )))
    }
}

/// A cargo example of the `voice-agent` crate, built next to the test
/// (`cargo test` builds the examples).
pub fn example_bin(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join(name))
        .ok_or_else(|| HarnessError::Other("no target directory".into()))?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(format!(
            "{} (build it with `cargo build -p voice-agent --examples`)",
            p.display()
        )))
    }
}

/// The reference MCP server `@modelcontextprotocol/server-everything`, as
/// `tests/setup.sh` installs it: its `dist/index.js`.
pub fn mcp_everything() -> Result<PathBuf, HarnessError> {
    let p =
        cache_dir().join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(format!(
            "{} (run tests/setup.sh)",
            p.display()
        )))
    }
}

/// `GET path` on `127.0.0.1:port`: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), HarnessError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| HarnessError::Timeout(format!("GET {path}")))??;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HarnessError::Other(format!("not HTTP: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `text` without ANSI colour sequences (the agent's readable logs have them).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the Prometheus sample `name` (exact series text, labels
/// included) in `metrics`.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

/// Whether a Python event is about an agent participant (identity `agent-…`).
pub fn is_agent(event: &serde_json::Value) -> bool {
    event["identity"]
        .as_str()
        .is_some_and(|i| i.starts_with("agent-"))
}

/// How the LLM stand-in answers one request.
#[derive(Clone, Debug)]
pub enum LlmAnswer {
    /// Streams this text (two words a chunk), then usage and `[DONE]`.
    Reply(String),
    /// A tool-call turn streamed the way Kimi streams it: `reasoning` (if
    /// any) as `reasoning_content` deltas, `text` (two words a chunk), then
    /// each call opened by a delta with its `index`, id `functions.NAME:INDEX`
    /// (INDEX: its place in `calls`), `type` and name with empty arguments,
    /// then the arguments (the JSON text of the value) in fragments of a few
    /// bytes, the calls' fragments interleaved by index; `finish_reason`
    /// `tool_calls` with the usage inside `choices[0]` (as Moonshot puts it);
    /// `[DONE]`.
    ToolCalls {
        text: String,
        reasoning: Option<String>,
        /// Tool name and arguments, in call order.
        calls: Vec<(String, serde_json::Value)>,
    },
    /// Fails with this HTTP status and an OpenAI-style error body.
    Status(u16),
    /// Sends the response head, then nothing, ever (a stalled provider).
    Stall,
}

/// A local OpenAI-compatible chat-completions server. Each request is answered
/// as `route` says, given the request body; every request body is kept for the
/// test to inspect. A request whose tool history Moonshot would refuse
/// ([`check_tool_history`]) is answered 400 with an OpenAI-style error body,
/// without asking `route`. Stops when dropped.
pub struct LlmStandIn {
    /// Base URL (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    /// Each request body with when it arrived.
    requests: std::sync::Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LlmStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LlmStandIn {
    pub async fn start(
        route: impl Fn(&serde_json::Value) -> LlmAnswer + Send + Sync + 'static,
    ) -> Result<Self, HarnessError> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let route = std::sync::Arc::new(route);
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (kept, served) = (requests.clone(), count.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let (route, kept, served) = (route.clone(), kept.clone(), served.clone());
                connections.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: serde_json::Value = buf
                        .get(head_end..head_end + len)
                        .and_then(|b| serde_json::from_slice(b).ok())
                        .unwrap_or_default();
                    let answer = check_tool_history(&body).map(|()| route(&body));
                    if let Ok(mut kept) = kept.lock() {
                        kept.push((Instant::now(), body));
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(why) => {
                            let body = serde_json::json!({"error": {
                                "message": why, "type": "invalid_request_error"}})
                            .to_string();
                            let r = format!(
                                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = sock.write_all(r.as_bytes()).await;
                            let _ = sock.shutdown().await;
                            return;
                        }
                    };
                    let r = match answer {
                        LlmAnswer::Reply(reply) => {
                            let mut r = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                            );
                            let words: Vec<&str> = reply.split_inclusive(' ').collect();
                            for piece in words.chunks(2) {
                                let event = serde_json::json!({
                                    "id": "c1", "object": "chat.completion.chunk",
                                    "choices": [{"index": 0, "delta": {"content": piece.concat()}, "finish_reason": null}]
                                });
                                r.push_str(&format!("data: {event}\n\n"));
                            }
                            r.push_str("data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":6,\"total_tokens\":18}}\n\n");
                            r.push_str("data: [DONE]\n\n");
                            r
                        }
                        LlmAnswer::ToolCalls {
                            text,
                            reasoning,
                            calls,
                        } => {
                            let mut r = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                            );
                            for event in kimi_tool_call_events(&text, reasoning.as_deref(), &calls) {
                                r.push_str(&format!("data: {event}\n\n"));
                            }
                            r.push_str("data: [DONE]\n\n");
                            r
                        }
                        LlmAnswer::Status(status) => {
                            let body = r#"{"error":{"message":"upstream failure","type":"server_error"}}"#;
                            format!(
                                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        LlmAnswer::Stall => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                                .await;
                            std::future::pending::<()>().await;
                            return;
                        }
                    };
                    let _ = sock.write_all(r.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
                // Reap finished connections as we go.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            url: format!("http://{addr}/v1"),
            requests,
            count,
            task,
        })
    }

    /// The request bodies received so far, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .map(|r| r.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// When each request arrived, in order.
    pub fn request_times(&self) -> Vec<Instant> {
        self.requests
            .lock()
            .map(|r| r.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The messages of a chat-completions request with this role, in order.
pub fn messages_of<'a>(request: &'a serde_json::Value, role: &str) -> Vec<&'a str> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == role)
                .filter_map(|m| m["content"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The chunks of an [`LlmAnswer::ToolCalls`] turn, in order.
fn kimi_tool_call_events(
    text: &str,
    reasoning: Option<&str>,
    calls: &[(String, serde_json::Value)],
) -> Vec<serde_json::Value> {
    use serde_json::json;
    /// Bytes per argument fragment (on character boundaries).
    const FRAGMENT: usize = 4;
    let delta = |delta: serde_json::Value| {
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "moonshotai/kimi-k2.6",
               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    let mut out = Vec::new();
    if let Some(reasoning) = reasoning {
        let words: Vec<&str> = reasoning.split_inclusive(' ').collect();
        for piece in words.chunks(2) {
            out.push(delta(json!({"reasoning_content": piece.concat()})));
        }
    }
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    for piece in words.chunks(2) {
        out.push(delta(json!({"content": piece.concat()})));
    }
    let mut fragments: Vec<Vec<String>> = Vec::new();
    for (index, (name, arguments)) in calls.iter().enumerate() {
        out.push(delta(json!({"tool_calls": [{
            "index": index, "id": format!("functions.{name}:{index}"), "type": "function",
            "function": {"name": name, "arguments": ""}}]})));
        let mut pieces = Vec::new();
        let mut cur = String::new();
        for c in arguments.to_string().chars() {
            cur.push(c);
            if cur.len() >= FRAGMENT {
                pieces.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            pieces.push(cur);
        }
        fragments.push(pieces);
    }
    let rounds = fragments.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        for (index, pieces) in fragments.iter().enumerate() {
            if let Some(piece) = pieces.get(round) {
                out.push(delta(json!({"tool_calls": [{
                    "index": index, "function": {"arguments": piece}}]})));
            }
        }
    }
    out.push(json!({"id": "c1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls",
                     "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}}]}));
    out
}

/// Checks a chat-completions request's tool history the way Moonshot (and
/// OpenAI) do: every assistant tool call is answered by a `tool` message with
/// the same `tool_call_id` among the messages right after it, and no `tool`
/// message stands without its call. The error says what is wrong, as the
/// 400's message.
pub fn check_tool_history(request: &serde_json::Value) -> Result<(), String> {
    let empty = Vec::new();
    let messages = request["messages"].as_array().unwrap_or(&empty);
    let mut i = 0;
    while let Some(m) = messages.get(i) {
        let calls = m["tool_calls"].as_array().filter(|c| !c.is_empty());
        match (m["role"].as_str(), calls) {
            (Some("assistant"), Some(calls)) => {
                let ids: Vec<&str> = calls
                    .iter()
                    .map(|c| c["id"].as_str().unwrap_or(""))
                    .collect();
                let mut answered = Vec::new();
                let mut j = i + 1;
                while let Some(t) = messages.get(j).filter(|t| t["role"] == "tool") {
                    let id = t["tool_call_id"].as_str().unwrap_or("");
                    if !ids.contains(&id) {
                        return Err(format!(
                            "tool_call_id {id:?} at index {j} is not found in the preceding \
                             assistant message's tool_calls"
                        ));
                    }
                    answered.push(id);
                    j += 1;
                }
                let missing: Vec<&str> = ids
                    .iter()
                    .copied()
                    .filter(|id| !answered.contains(id))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "an assistant message with 'tool_calls' must be followed by tool \
                         messages responding to each 'tool_call_id'; missing: {missing:?} \
                         (assistant message at index {i})"
                    ));
                }
                i = j;
            }
            (Some("tool"), _) => {
                return Err(format!(
                    "a message with role 'tool' at index {i} must follow an assistant \
                     message with 'tool_calls'"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The tool results of a chat-completions request, in order: each `tool`
/// message's `tool_call_id` and content.
pub fn tool_results(request: &serde_json::Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| {
                    let id = m["tool_call_id"].as_str().unwrap_or_default().to_owned();
                    let content = match &m["content"] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (id, content)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An [`LlmStandIn`] that streams `reply` to every request.
pub async fn llm_stand_in(reply: &'static str) -> Result<LlmStandIn, HarnessError> {
    LlmStandIn::start(move |_| LlmAnswer::Reply(reply.to_owned())).await
}

/// Creates an explicit dispatch of `agent_name` into `room` through the real
/// AgentDispatch API (the Python `livekit-api` client, `python/dispatch.py`).
/// Returns the dispatch id.
pub async fn create_dispatch(
    server: &LiveKitServer,
    room: &str,
    agent_name: &str,
) -> Result<String, HarnessError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dispatch.py");
    let out = Command::new(python()?)
        .arg(script)
        .args([server.url().as_str(), API_KEY, API_SECRET, room, agent_name])
        .stdin(Stdio::null())
        .output()
        .await?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
        HarnessError::Other(format!(
            "dispatch.py: {e}: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    match (v["event"].as_str(), v["id"].as_str()) {
        (Some("dispatched"), Some(id)) if out.status.success() => Ok(id.to_owned()),
        _ => Err(HarnessError::Other(format!("dispatch failed: {v}"))),
    }
}

/// Like [`token`], with the room configuration asking for the agent `agent_name`
/// to be dispatched when the room is created (explicit dispatch through a token).
pub fn token_dispatching(
    identity: &str,
    room: &str,
    agent_name: &str,
) -> Result<String, HarnessError> {
    livekit_api::access_token::AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_ttl(Duration::from_secs(3600))
        .with_grants(livekit_api::access_token::VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            ..Default::default()
        })
        .with_room_config(livekit_protocol::RoomConfiguration {
            agents: vec![livekit_protocol::RoomAgentDispatch {
                agent_name: agent_name.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .to_jwt()
        .map_err(|e| HarnessError::Other(format!("token: {e}")))
}

/// A real `voice-agent dev` process, registered with `server` and healthy:
/// the LLM is the stand-in at `llm_url`, speech is local (whisper, espeak-ng),
/// turns end on silence alone. Killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    /// Its health and metrics port.
    pub http_port: u16,
    /// Scratch directory holding its config and log.
    pub dir: PathBuf,
    /// Everything it wrote to stdout and stderr.
    pub log_path: PathBuf,
}

impl AgentProcess {
    /// Writes the config, starts the process with `env` added, and waits
    /// (up to 90 s) until its health check answers 200.
    pub async fn start(
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
    ) -> Result<Self, HarnessError> {
        Self::start_configured(server, name, llm_url, drain_timeout_s, env, "", "").await
    }

    /// [`AgentProcess::start`] with `llm_keys` added to the `[llm]` table and
    /// `sections` (whole TOML tables) appended to the config.
    pub async fn start_configured(
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
        llm_keys: &str,
        sections: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_program(
            &voice_agent_bin()?,
            server,
            name,
            llm_url,
            drain_timeout_s,
            env,
            llm_keys,
            sections,
        )
        .await
    }

    /// [`AgentProcess::start_configured`] for another program built on the
    /// `voice-agent` library (an example, see [`example_bin`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_program(
        program: &Path,
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
        llm_keys: &str,
        sections: &str,
    ) -> Result<Self, HarnessError> {
        let dir = std::env::temp_dir().join(format!("va-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let http_port = free_port(false)?;
        let config = format!(
            "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{llm_url}\"\nmax_retries = 0\n{llm_keys}\n\
             [tts]\nengine = \"espeak\"\n\
             [turn]\ndetector = \"none\"\n\
             [worker]\nhttp_port = {http_port}\ndrain_timeout = {drain_timeout_s:?}\n{sections}\n"
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(program)
            .arg("--config")
            .arg(&config_path)
            .arg("dev")
            .env("LIVEKIT_URL", server.url())
            .env("LIVEKIT_API_KEY", API_KEY)
            .env("LIVEKIT_API_SECRET", API_SECRET)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // Healthy once registered (stages load first: whisper, espeak).
        let started = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = http_get(http_port, "/").await {
                break;
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(HarnessError::Other(format!(
                    "worker never became healthy; log:\n{}",
                    read_log()
                )));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HarnessError::Other(format!(
                    "voice-agent exited ({status}); log:\n{}",
                    read_log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("worker registered after {:?}", started.elapsed());
        Ok(Self {
            child,
            http_port,
            dir,
            log_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn tool_call_answers_stream_as_kimi_does() {
        let calls = vec![
            ("get_weather".to_string(), json!({"city": "Paris"})),
            ("get_time".to_string(), json!({"tz": "Europe/Rome"})),
        ];
        let events = kimi_tool_call_events("One moment.", Some("Two tools needed."), &calls);
        let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
        let reasoning: String = deltas
            .iter()
            .filter_map(|d| d["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "Two tools needed.");
        let text: String = deltas
            .iter()
            .filter_map(|d| d["content"].as_str())
            .collect();
        assert_eq!(text, "One moment.");
        // Each call opens with index, id, type and name, arguments empty.
        let opens: Vec<&Value> = deltas
            .iter()
            .filter_map(|d| d["tool_calls"].get(0))
            .filter(|c| c.get("id").is_some())
            .collect();
        assert_eq!(opens.len(), 2);
        assert_eq!(
            *opens[0],
            json!({"index": 0, "id": "functions.get_weather:0", "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(opens[1]["id"], "functions.get_time:1");
        // Fragments: a few bytes each, interleaved, whole again by index.
        let fragments: Vec<(u64, &str)> = deltas
            .iter()
            .filter_map(|d| d["tool_calls"].get(0))
            .filter(|c| c.get("id").is_none())
            .filter_map(|c| Some((c["index"].as_u64()?, c["function"]["arguments"].as_str()?)))
            .collect();
        assert!(fragments.iter().all(|(_, f)| f.len() <= 4));
        assert_eq!(fragments[0].0, 0);
        assert_eq!(fragments[1].0, 1, "interleaved");
        for (index, (_, args)) in calls.iter().enumerate() {
            let whole: String = fragments
                .iter()
                .filter(|(i, _)| *i == index as u64)
                .map(|(_, f)| *f)
                .collect();
            assert_eq!(
                serde_json::from_str::<Value>(&whole).ok().as_ref(),
                Some(args)
            );
        }
        let last = events.last().map(|e| &e["choices"][0]);
        assert_eq!(
            last.map(|c| &c["finish_reason"]),
            Some(&json!("tool_calls"))
        );
        assert_eq!(
            last.map(|c| &c["usage"]["completion_tokens"]),
            Some(&json!(20))
        );
    }

    fn with(messages: Value) -> Value {
        json!({"model": "m", "messages": messages})
    }

    #[test]
    fn tool_history_is_checked_as_moonshot_checks_it() {
        let call = |id: &str| {
            json!({"id": id, "type": "function",
                                     "function": {"name": "f", "arguments": "{}"}})
        };
        let user = json!({"role": "user", "content": "hi"});
        let asks = json!({"role": "assistant", "content": null,
                          "tool_calls": [call("functions.f:0"), call("functions.f:1")]});
        let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "ok"});
        let ok = with(
            json!([user, asks, result("functions.f:1"), result("functions.f:0"),
                             {"role": "assistant", "content": "done"}]),
        );
        assert_eq!(check_tool_history(&ok), Ok(()));
        assert_eq!(
            tool_results(&ok),
            vec![
                ("functions.f:1".to_string(), "ok".to_string()),
                ("functions.f:0".to_string(), "ok".to_string())
            ]
        );
        let missing = with(json!([user, asks, result("functions.f:0")]));
        let e = check_tool_history(&missing).unwrap_err();
        assert!(e.contains("functions.f:1"), "{e}");
        let wrong = with(json!([
            user,
            asks,
            result("functions.f:0"),
            result("call_1")
        ]));
        assert!(check_tool_history(&wrong).unwrap_err().contains("call_1"));
        let orphan = with(json!([user, result("functions.f:0")]));
        assert!(
            check_tool_history(&orphan)
                .unwrap_err()
                .contains("role 'tool'")
        );
        // A result separated from its call by another message is an orphan.
        let late = with(json!([user, asks, user, result("functions.f:0")]));
        assert!(check_tool_history(&late).is_err());
        assert_eq!(check_tool_history(&json!({})), Ok(()));
        assert!(tool_results(&json!({})).is_empty());
    }
}
