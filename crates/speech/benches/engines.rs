//! Real-time factor and first-result latency of the local engines (Silero
//! VAD, Smart Turn, Piper, espeak-ng), one session alone and four at once.
//!
//! `cargo bench -p speech --bench engines` (needs `voice-agent download-files`
//! and the `espeak-ng` binary for the speech fixture).
//!
//! Targets: VAD RTF ≤ 0.01; Smart Turn ≤ 100 ms per decision; Piper first
//! audio ≤ 150 ms and RTF ≤ 0.2.
//!
//! Measured 2026-11-25 on the 2-core build machine (load average ~2.7 from
//! other builds; wall figures roughly double at load ~6, CPU figures do not):
//!
//! ```text
//! engine                        RTF    CPU RTF   first result
//! silero vad x1              0.0044     0.0070         1.0 ms
//! silero vad x4              0.0065     0.0080         0.6 ms
//! smart turn x1                   -          -          75 ms   (max 83 ms; CPU 78 ms per decision)
//! smart turn x4                   -          -         158 ms   (max 236 ms; CPU 78 ms per decision)
//! smart turn features             -          -         2.5 ms   (log-mel features alone)
//! piper x1                   0.0968     0.0968        50.2 ms
//! piper x4                   0.2124     0.0970       114.1 ms
//! espeak-ng x1               0.0011     0.0012         2.4 ms
//! espeak-ng x4               0.0036     0.0009         7.2 ms
//! ```

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{JobContext, Tts, TtsInput, VadFactory};
use speech::{EspeakTts, EspeakVoice, ModelCache, PiperTts, SileroVadFactory, SmartTurn};

const REPLY: [&str; 3] = [
    "Sure, I can help you with that. ",
    "The next train to Boston leaves at seven fifteen tomorrow morning, from platform four. ",
    "Would you like me to book a seat for you?",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn run() -> Res<()> {
    let cache = ModelCache::new(ModelCache::default_root());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("speech engine benchmark ({cores} cores; release build recommended)\n");
    let speech = fixture_16k()?;
    println!(
        "fixture: {:.1} s of espeak-ng speech at 16 kHz\n",
        speech.len() as f32 / 16_000.0
    );
    println!(
        "{:<22} {:>10} {:>10} {:>14}",
        "engine", "RTF", "CPU RTF", "first result"
    );

    // ------------------------------------------------------------ VAD
    let factory = SileroVadFactory::new(&cache)?;
    let pcm: Arc<[i16]> = speech.iter().map(|&v| (v * 32767.0) as i16).collect();
    for sessions in [1, 4] {
        let cpu0 = cpu_time();
        let mut handles = Vec::new();
        for _ in 0..sessions {
            let mut vad = factory.create()?;
            let pcm = pcm.clone();
            handles.push(std::thread::spawn(move || {
                let t = Instant::now();
                let mut first = None;
                for f in pcm.chunks_exact(512) {
                    vad.score(f);
                    first.get_or_insert_with(|| t.elapsed());
                }
                (t.elapsed(), first.unwrap_or_default())
            }));
        }
        let audio = Duration::from_secs_f32(pcm.len() as f32 / 16_000.0);
        let results: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        let cpu = cpu_time().saturating_sub(cpu0);
        report(
            &format!("silero vad x{sessions}"),
            &results,
            audio,
            cpu,
            sessions,
        );
    }

    // ------------------------------------------------------------ Smart Turn
    let turn = SmartTurn::new(&cache)?;
    let window: Arc<[f32]> = speech[speech.len().saturating_sub(8 * 16_000)..].into();
    rt.block_on(turn.predict(window.clone()))?; // warm up
    for sessions in [1, 4] {
        let per_session = 5;
        let cpu0 = cpu_time();
        let times = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..sessions {
                let turn = turn.clone();
                let window = window.clone();
                tasks.push(tokio::spawn(async move {
                    let mut times = Vec::new();
                    for _ in 0..per_session {
                        let t = Instant::now();
                        turn.predict(window.clone()).await?;
                        times.push(t.elapsed());
                    }
                    Ok::<_, speech::SpeechError>(times)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await??);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(all)
        })?;
        let cpu = cpu_time().saturating_sub(cpu0);
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let max = sorted[sorted.len() - 1];
        println!(
            "{:<22} {:>10} {:>10} {:>14}   (max {:.0} ms; CPU {:.0} ms per decision)",
            format!("smart turn x{sessions}"),
            "-",
            "-",
            format!("{:.0} ms", median.as_secs_f64() * 1e3),
            max.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3 / times.len() as f64
        );
    }

    let mel = speech::smart_turn::LogMel::new();
    let t = Instant::now();
    for _ in 0..5 {
        std::hint::black_box(mel.features(&window));
    }
    println!(
        "{:<22} {:>10} {:>10} {:>14}   (log-mel features alone)",
        "smart turn features",
        "-",
        "-",
        format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3 / 5.0)
    );

    // ------------------------------------------------------------ TTS
    let piper = PiperTts::new(&cache)?;
    let espeak = EspeakTts::new(EspeakVoice::default())?;
    for (name, tts) in [
        ("piper", Arc::new(piper) as Arc<dyn Tts>),
        ("espeak-ng", Arc::new(espeak) as Arc<dyn Tts>),
    ] {
        rt.block_on(tts_run(tts.clone(), 1))?; // warm up
        for sessions in [1, 4] {
            let cpu0 = cpu_time();
            let results = rt.block_on(tts_run(tts.clone(), sessions))?;
            let cpu = cpu_time().saturating_sub(cpu0);
            let audio = results.iter().map(|r| r.2).max().unwrap_or_default();
            let pairs: Vec<_> = results.iter().map(|r| (r.0, r.1)).collect();
            report(&format!("{name} x{sessions}"), &pairs, audio, cpu, sessions);
        }
    }
    println!(
        "\nRTF = wall time / audio time, worst session (for TTS: until the last frame, \
         the reader taking frames as fast as they come).\n\
         CPU RTF = process CPU time / audio time / sessions: the figure on an idle \
         machine, whatever else is running.\n\
         first result = first VAD score / Smart Turn median decision / first TTS frame \
         (worst session)."
    );
    Ok(())
}

/// One reply per session at once: (total time, first audio, audio length).
async fn tts_run(tts: Arc<dyn Tts>, sessions: usize) -> Res<Vec<(Duration, Duration, Duration)>> {
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let tts = tts.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tts.stream(&JobContext::default()).await?;
            let t = Instant::now();
            for s in REPLY {
                stream.input.send(TtsInput::Segment(s.into())).await.ok();
            }
            drop(stream.input);
            let mut first = None;
            let mut audio = Duration::ZERO;
            while let Some(a) = stream.output.recv().await {
                let a = a?;
                first.get_or_insert_with(|| t.elapsed());
                audio += a.frame.duration();
            }
            Ok::<_, agent::StageError>((t.elapsed(), first.unwrap_or_default(), audio))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

fn report(
    name: &str,
    results: &[(Duration, Duration)],
    audio: Duration,
    cpu: Duration,
    sessions: usize,
) {
    let worst = results.iter().map(|r| r.0).max().unwrap_or_default();
    let first = results.iter().map(|r| r.1).max().unwrap_or_default();
    let audio = audio.as_secs_f64().max(1e-9);
    println!(
        "{:<22} {:>10.4} {:>10.4} {:>14}",
        name,
        worst.as_secs_f64() / audio,
        cpu.as_secs_f64() / audio / sessions as f64,
        format!("{:.1} ms", first.as_secs_f64() * 1e3)
    );
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`
/// (Linux clock ticks of 10 ms); zero where unavailable.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// ~10 s of espeak-ng speech, resampled to 16 kHz.
fn fixture_16k() -> Res<Vec<f32>> {
    let path = std::env::temp_dir().join(format!("speech-bench-{}.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(REPLY.concat())
        .status()?;
    if !status.success() {
        return Err("espeak-ng failed".into());
    }
    let bytes = std::fs::read(&path)?;
    let _ = std::fs::remove_file(&path);
    // espeak-ng writes a 44-byte header, 16-bit mono at 22050 Hz.
    let data = bytes.get(44..).ok_or("short wav")?;
    let pcm: Vec<i16> = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut r = agent::Resampler::new(22_050, 16_000);
    let mut out = Vec::new();
    r.process_into(&pcm, &mut out);
    let mut audio: Vec<f32> = out.iter().map(|&s| s as f32 / 32768.0).collect();
    // Pad to ~10 s with silence so the VAD figure covers pauses too.
    audio.resize(audio.len().max(10 * 16_000), 0.0);
    Ok(audio)
}
