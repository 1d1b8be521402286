//! `voice-agent console` on real (virtual) audio devices.
//!
//! Each test starts its own PulseAudio server (Debian `pulseaudio`, installed
//! by `tests/run.sh`) on a private socket, with one null sink, `room`: the
//! agent's speaker is `room`, its microphone is `room.monitor`, and the
//! question (espeak-ng) is played into `room` too. So the microphone hears the
//! user and, as a laptop's microphone hears its speakers, the agent's own
//! voice — through a fixed path, as an acoustic one is. The test records
//! `room.monitor` to check what the agent said aloud. The LLM is a local
//! OpenAI-compatible stand-in; speech is local (whisper in, espeak-ng out).
//!
//! With echo cancellation the agent answers without hearing itself; without
//! it, it takes its own voice for the user's and interrupts itself.
//!
//! (PulseAudio's `module-loopback` from a speaker sink into a microphone sink
//! is no stand-in for that path: it keeps re-adjusting its rate and latency,
//! so the echo moves under the canceller all the time; see `local_io::echo`.)
//!
//! A PulseAudio that cannot be started fails the test, with its log.
//! The tests run one at a time (they load whisper; the machine has 2 cores).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// One device test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const QUESTION: &str = "What is the capital of France?";
const REPLY: &str = "The capital of France is Paris. It has been the largest city of the country for centuries, and it sits on the river Seine.";

/// A private PulseAudio server with the `room` null sink.
struct Pulse {
    child: std::process::Child,
    /// Holds the socket, the server's state and its log.
    dir: tempfile::TempDir,
}

impl Pulse {
    fn start() -> Pulse {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("native");
        let log_path = dir.path().join("pulseaudio.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        // A 44.1 kHz stereo server: the devices' rate and channels differ
        // from every format the console uses inside (16 kHz mono session,
        // 22.05 kHz espeak-ng).
        let conf = dir.path().join("pulse");
        std::fs::create_dir_all(&conf).expect("config dir");
        std::fs::write(conf.join("daemon.conf"), "default-sample-rate = 44100\n")
            .expect("daemon.conf");
        let spawned = std::process::Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "--system=false",
                "--log-target=stderr",
                // As a desktop's audio server runs: ahead of the tests'
                // other work (root may; elsewhere the server goes on without).
                "--high-priority=yes",
                "--realtime=yes",
            ])
            .arg("-L")
            .arg(format!(
                "module-native-protocol-unix socket={} auth-anonymous=1",
                socket.display()
            ))
            .args([
                "-L",
                "module-null-sink sink_name=room rate=44100 channels=2",
            ])
            .env("HOME", dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start pulseaudio ({e}): install Debian's pulseaudio and pulseaudio-utils (tests/run.sh does)"
            ),
        };
        let mut pulse = Pulse { child, dir };
        let started = Instant::now();
        loop {
            let ok = std::process::Command::new("pactl")
                .arg("info")
                .env("PULSE_SERVER", pulse.server())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return pulse;
            }
            let exited = pulse.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > Duration::from_secs(15) {
                panic!(
                    "PulseAudio did not start ({exited:?}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server(&self) -> String {
        format!("unix:{}", self.dir.path().join("native").display())
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, llm_url: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{llm_url}\"\nmax_retries = 0\n\
             [tts]\nengine = \"espeak\"\n\
             [turn]\ndetector = \"none\"\n"
        ),
    )
    .expect("write config");
    path
}

/// espeak-ng's `en-us` voice at 175 words a minute: the agent's voice too.
async fn espeak(text: &str, path: &Path) {
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "175"])
        .arg("-w")
        .arg(path)
        .arg(text)
        .status()
        .await
        .expect("espeak-ng runs (tests/run.sh installs it)");
    assert!(status.success(), "espeak-ng failed");
}

/// A running `voice-agent console` and the lines it has printed.
struct Console {
    child: Child,
    lines: tokio::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_path: PathBuf,
}

impl Console {
    fn start(pulse: &Pulse, config: &Path, dir: &Path, extra: &[&str]) -> Console {
        let stderr_path = dir.join("console.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_voice-agent"))
            .arg("--config")
            .arg(config)
            .args([
                "console",
                "--input-device",
                "room.monitor",
                "--output-device",
                "room",
            ])
            .args(extra)
            .env("PULSE_SERVER", pulse.server())
            .env("RUST_LOG", "warn,pulseaudio=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn voice-agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for a line matching `want`; fails with everything seen.
    async fn wait_line(&mut self, what: &str, within: Duration, want: impl Fn(&str) -> bool) {
        self.wait_until(what, within, |seen| seen.iter().any(|l| want(l)))
            .await
    }

    /// Waits until `done` holds for everything printed so far (checked after
    /// each line, and once at the start).
    async fn wait_until(&mut self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        if done(&self.seen) {
            return;
        }
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line);
                    if done(&self.seen) {
                        return;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no {what} within {within:?}; console printed:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Ctrl-C, then everything it printed until it exited, and its status.
    async fn interrupt(mut self) -> (Vec<String>, std::process::ExitStatus, String) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("console exits within 30 s of Ctrl-C")
            .expect("wait");
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let stderr = self.stderr();
        (self.seen, status, stderr)
    }
}

/// Records a PulseAudio source as 44.1 kHz mono s16le until finished (at
/// the sinks' rate: a stream at another rate would make the server switch
/// the sink to it).
struct Recorder {
    child: Child,
    path: PathBuf,
}

impl Recorder {
    fn start(pulse: &Pulse, source: &str, path: PathBuf) -> Recorder {
        let file = std::fs::File::create(&path).expect("capture file");
        let child = Command::new("parec")
            .args([
                "-d",
                source,
                "--rate=44100",
                "--channels=1",
                "--format=s16le",
                "--latency-msec=20",
            ])
            .env("PULSE_SERVER", pulse.server())
            .stdout(file)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("parec runs (Debian pulseaudio-utils)");
        Recorder { child, path }
    }

    /// What was recorded, at 16 kHz.
    async fn finish(mut self) -> Vec<i16> {
        let _ = self.child.kill().await;
        let bytes = std::fs::read(&self.path).expect("capture");
        let samples: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        resample_16k(&samples, 44_100)
    }
}

async fn play_into_room(pulse: &Pulse, wav: &Path) {
    let status = Command::new("paplay")
        .args(["-d", "room"])
        .arg(wav)
        .env("PULSE_SERVER", pulse.server())
        .status()
        .await
        .expect("paplay runs (Debian pulseaudio-utils)");
    assert!(status.success(), "paplay failed");
}

/// RMS in 10 ms windows.
fn envelope(samples: &[i16], rate: u32) -> Vec<f64> {
    samples
        .chunks((rate / 100) as usize)
        .map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

/// Seconds between the first and last 10 ms window above 5 % of the peak
/// (and the peak itself).
fn voiced_span(samples: &[i16], rate: u32) -> (f64, f64) {
    let env = envelope(samples, rate);
    let peak = env.iter().cloned().fold(0.0, f64::max);
    let thr = (peak * 0.05).max(30.0);
    match (
        env.iter().position(|&e| e > thr),
        env.iter().rposition(|&e| e > thr),
    ) {
        (Some(a), Some(b)) => ((b - a + 1) as f64 / 100.0, peak),
        _ => (0.0, peak),
    }
}

/// Best Pearson correlation of `reference`'s voiced envelope against `got`'s,
/// at any shift.
fn envelope_match(reference: &[i16], got: &[i16], rate: u32) -> f64 {
    let er = envelope(reference, rate);
    let eg = envelope(got, rate);
    let first = |e: &[f64]| {
        let peak = e.iter().cloned().fold(0.0, f64::max);
        e.iter().position(|&v| v > peak * 0.05)
    };
    let (Some(r0), Some(_)) = (first(&er), first(&eg)) else {
        return 0.0;
    };
    let r = &er[r0..];
    let mut best = f64::MIN;
    for start in 0..eg.len() {
        if start >= eg.len() {
            break;
        }
        let g = &eg[start..(start + r.len()).min(eg.len())];
        if g.len() < 50 {
            continue;
        }
        // Over `g`'s length; 0 where either side is flat.
        best = best.max(e2e_tests::correlation(r, g));
    }
    best
}

fn resample_16k(samples: &[i16], rate: u32) -> Vec<i16> {
    let mut r = agent::audio::Resampler::new(rate, 16_000);
    let mut out = Vec::new();
    r.process_into(samples, &mut out);
    out
}

/// The mean input-to-output buffering the console reported, in ms.
fn mean_buffering_ms(lines: &[String]) -> f64 {
    let line = lines
        .iter()
        .find(|l| l.starts_with("audio buffering"))
        .unwrap_or_else(|| panic!("no buffering report in:\n{}", lines.join("\n")));
    line.split("mean ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable buffering report: {line}"))
}

struct Conversation {
    lines: Vec<String>,
    status: std::process::ExitStatus,
    stderr: String,
    /// What the room heard after the question (the agent), 16 kHz mono.
    speaker: Vec<i16>,
}

/// Seconds recorded so far.
fn room_position(recorder: &Recorder) -> f64 {
    std::fs::metadata(&recorder.path).map_or(0.0, |m| m.len() as f64 / 2.0 / 44_100.0)
}

/// A console line to wait for: what it is, and the test.
/// What to wait for, and when it has come: a test of every line printed so far.
type Until = (&'static str, fn(&[String]) -> bool);

/// Plays the question into the room, waits for `until`, then presses Ctrl-C.
async fn converse(pulse: &Pulse, dir: &Path, extra: &[&str], until: Until) -> Conversation {
    // The e2e harness's OpenAI-compatible stand-in; stops when dropped.
    let llm = e2e_tests::llm_stand_in(REPLY).await.expect("LLM stand-in");
    let config = write_config(dir, &llm.url);
    let question = dir.join("question.wav");
    espeak(QUESTION, &question).await;

    let room = Recorder::start(pulse, "room.monitor", dir.join("room.raw"));
    let mut console = Console::start(pulse, &config, dir, extra);
    // Whisper loads first: slow on a busy machine.
    console
        .wait_line("listening state", Duration::from_secs(180), |l| {
            l == "state: listening"
        })
        .await;
    play_into_room(pulse, &question).await;
    let question_done = room_position(&room);
    console
        .wait_until(until.0, Duration::from_secs(120), until.1)
        .await;
    // Let the last of the speech leave the speaker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (lines, status, stderr) = console.interrupt().await;
    let heard = room.finish().await;
    // What the room heard after the question (and the recorder's lag): the
    // agent, who cannot answer sooner than the end of turn delay.
    let from = ((question_done + 0.4) * 16_000.0) as usize;
    let speaker = heard.get(from..).unwrap_or_default().to_vec();
    Conversation {
        lines,
        status,
        stderr,
        speaker,
    }
}

fn report(c: &Conversation) -> String {
    format!(
        "exit {:?}\nconsole printed:\n{}\nstderr:\n{}",
        c.status,
        c.lines.join("\n"),
        c.stderr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn spoken_question_is_answered_on_the_speaker_and_echo_is_cancelled() {
    let _serial = SERIAL.lock().await;
    let pulse = Pulse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("both.wav");
    let record_arg = record.display().to_string();
    let c = converse(
        &pulse,
        dir.path(),
        &["--record", &record_arg],
        ("the agent's reply", |seen| {
            seen.iter().any(|l| l.starts_with("agent:"))
        }),
    )
    .await;
    let all = report(&c);

    assert!(c.status.success(), "{all}");
    assert!(!c.stderr.contains("panicked"), "{all}");
    assert!(
        c.lines
            .iter()
            .any(|l| l.starts_with("microphone: room.monitor:") && l.contains("(44100 Hz, 2 ch")),
        "{all}"
    );
    assert!(
        c.lines
            .iter()
            .any(|l| l.starts_with("speaker: room:") && l.contains("(44100 Hz, 2 ch")),
        "{all}"
    );
    assert!(
        c.lines.iter().any(|l| l == "echo cancellation: on"),
        "{all}"
    );

    // The question was heard and answered once, and the answer was not cut.
    let turns: Vec<&String> = c.lines.iter().filter(|l| l.starts_with("turn:")).collect();
    assert_eq!(turns.len(), 1, "{all}");
    let asked = turns[0].to_lowercase();
    // (whisper tiny hears espeak-ng's "France" as "on rise" or "and
    // friends" now and then; "capital" it always gets.)
    assert!(asked.contains("capital"), "{all}");
    let answer = c
        .lines
        .iter()
        .find(|l| l.starts_with("agent:"))
        .expect("agent line");
    assert_eq!(answer, &format!("agent: {REPLY}"), "{all}");

    // (So echo cancellation held: the agent's voice in the microphone
    // neither interrupted the reply nor became a turn of its own.)

    // The speaker played the reply: espeak-ng's rendering of the same text
    // (what the room heard after the question).
    // The TTS speaks sentence by sentence, so the pause between sentences
    // differs from espeak-ng reading the whole text: the first sentence is
    // matched for shape, the whole for length.
    let first_sentence = REPLY.split_inclusive('.').next().unwrap_or(REPLY);
    let mut spans = Vec::new();
    for (name, text) in [("reference.wav", REPLY), ("first.wav", first_sentence)] {
        let path = dir.path().join(name);
        espeak(text, &path).await;
        let pcm = local_io::wav::read(&path).expect("reference");
        spans.push(resample_16k(&pcm.samples, pcm.sample_rate));
    }
    let (want_s, _) = voiced_span(&spans[0], 16_000);
    let (got_s, peak) = voiced_span(&c.speaker, 16_000);
    assert!(
        peak > 1000.0 && got_s > 0.9 * want_s && got_s < want_s + 2.0,
        "speaker: {got_s:.2} s of speech (peak {peak:.0}), expected about {want_s:.2} s\n{all}"
    );
    let corr = envelope_match(&spans[1], &c.speaker, 16_000);
    assert!(
        corr > 0.7,
        "speaker audio does not match the reply (envelope correlation {corr:.2})\n{all}"
    );

    // Buffering, measured by the console: the target.
    let buffering = mean_buffering_ms(&c.lines);
    eprintln!(
        "{}",
        c.lines
            .iter()
            .find(|l| l.starts_with("audio buffering"))
            .map_or("", String::as_str)
    );
    assert!(buffering <= 60.0, "buffering {buffering} ms\n{all}");

    // The recording: microphone left (the question, then the echo), agent right.
    let recording = local_io::wav::read(&record).expect("recording");
    assert_eq!((recording.channels, recording.sample_rate), (2, 16_000));
    let left: Vec<i16> = recording.samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = recording
        .samples
        .iter()
        .skip(1)
        .step_by(2)
        .copied()
        .collect();
    let (right_s, right_peak) = voiced_span(&right, 16_000);
    assert!(
        right_peak > 1000.0 && right_s > 0.9 * want_s && right_s < want_s + 2.0,
        "recorded agent side: {right_s:.2} s (peak {right_peak:.0}), expected about {want_s:.2} s"
    );
    let (_, left_peak) = voiced_span(&left, 16_000);
    assert!(left_peak > 1000.0, "recorded microphone side is silent");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_echo_cancellation_the_agent_interrupts_itself() {
    let _serial = SERIAL.lock().await;
    let pulse = Pulse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // The agent takes its own voice for the user's: a second turn, committed
    // over its reply (turns are only committed over a reply being cancelled).
    let c = converse(
        &pulse,
        dir.path(),
        &["--no-aec"],
        // Counted, not recognised by its words: whisper may mishear either.
        ("a second turn", |seen| {
            seen.iter().filter(|l| l.starts_with("turn:")).count() >= 2
        }),
    )
    .await;
    let all = report(&c);
    assert!(c.status.success(), "{all}");
    assert!(
        c.lines.iter().any(|l| l == "echo cancellation: off"),
        "{all}"
    );
    let turns: Vec<&String> = c.lines.iter().filter(|l| l.starts_with("turn:")).collect();
    assert!(turns.len() >= 2, "{all}");
    assert!(
        !c.lines.iter().any(|l| l == &format!("agent: {REPLY}")),
        "the reply was heard out despite the echo\n{all}"
    );
    assert!(
        c.lines.iter().any(|l| l.starts_with("vad: user started")
            && c.lines.iter().any(|s| s == "state: speaking")),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_listed_and_missing_ones_are_named() {
    let _serial = SERIAL.lock().await;
    let pulse = Pulse::start();
    let bin = env!("CARGO_BIN_EXE_voice-agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "http://127.0.0.1:9/v1");

    let out = Command::new(bin)
        .args(["console", "--list-devices"])
        .env("PULSE_SERVER", pulse.server())
        .output()
        .await
        .expect("run");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}");
    assert!(listing.contains("audio host: PulseAudio"), "{listing}");
    assert!(listing.contains("  room.monitor"), "{listing}");
    assert!(listing.contains("  room [default]"), "{listing}");

    // A device name that is not there.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["console", "--input-device", "no-such-mic"])
        .env("PULSE_SERVER", pulse.server())
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-mic")
            && stderr.contains("no such input device")
            && stderr.contains("--text")
            && stderr.contains("--input-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // No audio server, and an ALSA configuration without devices: a
    // machine with no audio at all.
    let empty = tempfile::tempdir().expect("tempdir");
    let alsa_conf = empty.path().join("asound.conf");
    std::fs::write(&alsa_conf, "").expect("write");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("console")
        .env(
            "PULSE_SERVER",
            format!("unix:{}/none", empty.path().display()),
        )
        .env("XDG_RUNTIME_DIR", empty.path())
        .env("ALSA_CONFIG_PATH", &alsa_conf)
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: console: ")
            && last.contains("device")
            && last.contains("--text")
            && last.contains("--input-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
