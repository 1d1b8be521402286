//! Whisper tiny.en benchmark: real-time factor of one decode (trimmed and
//! full 30 s encoder window), and the latency from `SpeechEnded` to `Final`
//! for a ~3 s utterance through the `Stt` stream, one session and four at
//! once. Run: `cargo bench -p speech --bench whisper -j2` (needs the model
//! cache filled by `voice-agent download-files`, and espeak-ng).
//!
//! ## Results
//!
//! On the project's 2-core machine, busy with other builds (release): a 3 s
//! utterance decodes in ~250 ms (RTF ≈ 0.08) with the encoder cut to the
//! audio's length, against ~2.5 s with the full 30 s window (same words on the
//! test sentences; checked against CTranslate2's own greedy output). Loading
//! takes ~0.5 s and ~120 MB (f32 weights, f16 embeddings). Keeping the token
//! embeddings in f16, as the file has them, made the logits matmul (all 51864
//! rows every step) ~40 % faster than in f32 (that and the memory were
//! measured outside this bench, which prints the load time and the decodes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{AudioFrame, JobContext, Resampler, Stt, SttEvent, SttInput};
use e2e_tests::espeak_pcm;
use speech::ModelCache;
use speech::whisper::{WhisperModel, WhisperOptions, WhisperStt, Window};

const RATE: usize = 16_000;
const FRAME: usize = 320;
const SENTENCE: &str = "Please book a table for two at seven tonight.";

fn espeak(text: &str) -> Result<Vec<i16>, String> {
    let pcm = espeak_pcm(text, &["-v", "en-us", "-s", "160"]).map_err(|e| e.to_string())?;
    let frame = Resampler::new(pcm.sample_rate, RATE as u32).process(&AudioFrame::new(
        pcm.samples,
        pcm.sample_rate,
        1,
    ));
    Ok(frame.samples.to_vec())
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!(
        "median {:6.1} ms  mean {:6.1} ms  max {:6.1} ms  (n={})",
        v[v.len() / 2],
        mean,
        v[v.len() - 1],
        v.len()
    )
}

/// One utterance through a stream; returns ms from SpeechEnded to Final.
async fn session_latency(stt: WhisperStt, speech: Arc<Vec<i16>>, real_time: bool) -> f64 {
    let mut s = match stt.stream(&JobContext::default()).await {
        Ok(s) => s,
        Err(e) => panic!("stream: {e}"),
    };
    let lead = RATE / 2;
    let send = |input| {
        let tx = s.input.clone();
        async move { tx.send(input).await.is_ok() }
    };
    let frame = |c: &[i16]| SttInput::Audio(AudioFrame::new(c.to_vec(), RATE as u32, 1));
    for c in vec![0i16; lead].chunks(FRAME) {
        send(frame(c)).await;
    }
    send(SttInput::SpeechStarted(Duration::from_secs_f64(0.5))).await;
    let start = Instant::now();
    let mut fed = 0usize;
    // Speech plus the VAD's ~0.3 s of silence before it declares the end.
    let tail = vec![0i16; RATE * 3 / 10];
    for c in speech.chunks(FRAME).chain(tail.chunks(FRAME)) {
        send(frame(c)).await;
        fed += c.len();
        if real_time {
            let due = start + Duration::from_secs_f64(fed as f64 / RATE as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let end = Duration::from_secs_f64((lead + speech.len()) as f64 / RATE as f64);
    let t0 = Instant::now();
    send(SttInput::SpeechEnded(end)).await;
    loop {
        match s.events.recv().await {
            Some(SttEvent::Final(_)) | Some(SttEvent::Empty) => {
                return t0.elapsed().as_secs_f64() * 1e3;
            }
            Some(SttEvent::Error(e)) => panic!("stt error: {e}"),
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
}

fn main() {
    let cache = ModelCache::new(ModelCache::default_root());
    let t = Instant::now();
    let model = match WhisperModel::load(&cache) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("whisper bench: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "whisper tiny.en loaded in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let speech = match espeak(SENTENCE) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("whisper bench: {e}");
            std::process::exit(1);
        }
    };
    let secs = speech.len() as f64 / RATE as f64;
    println!("utterance: {secs:.2} s of espeak-ng speech: {SENTENCE:?}");
    let pcm: Vec<f32> = speech.iter().map(|&s| s as f32 / 32768.0).collect();
    // 0.3 s pre-padding as the stream adds.
    let padded: Vec<f32> = std::iter::repeat_n(0.0, RATE * 3 / 10)
        .chain(pcm.iter().copied())
        .collect();

    let mut model = model;
    for (name, window) in [
        ("trimmed window", Window::default()),
        ("full 30 s window", Window::Full),
    ] {
        model.set_window(window);
        let mut times = Vec::new();
        let mut text = String::new();
        for _ in 0..if window == Window::Full { 3 } else { 10 } {
            let t = Instant::now();
            match model.transcribe(&padded) {
                Ok(r) => text = r.text,
                Err(e) => panic!("transcribe: {e}"),
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let median = {
            let mut s = times.clone();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        println!(
            "decode, {name:16}: {}  RTF {:.3}  -> {text:?}",
            stats(times),
            median / 1e3 / secs
        );
    }
    model.set_window(Window::default());
    let model = Arc::new(model);

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let speech = Arc::new(speech);
    rt.block_on(async {
        let stt = WhisperStt::new(model.clone(), WhisperOptions::default());
        let finals_only = WhisperStt::new(
            model.clone(),
            WhisperOptions {
                interim_interval: None,
                ..Default::default()
            },
        );
        // Warm up.
        session_latency(finals_only.clone(), speech.clone(), false).await;
        for (name, stt, real_time, rounds) in [
            ("1 session, finals only", &finals_only, false, 10),
            ("1 session, real time, interims", &stt, true, 3),
        ] {
            let mut v = Vec::new();
            for _ in 0..rounds {
                v.push(session_latency(stt.clone(), speech.clone(), real_time).await);
            }
            println!("SpeechEnded -> Final, {name:34}: {}", stats(v));
        }
        for (name, stt) in [
            ("4 sessions, real time, finals only", &finals_only),
            ("4 sessions, real time, interims", &stt),
        ] {
            let mut v = Vec::new();
            for _ in 0..3 {
                let tasks: Vec<_> = (0..4)
                    .map(|_| tokio::spawn(session_latency(stt.clone(), speech.clone(), true)))
                    .collect();
                for t in tasks {
                    match t.await {
                        Ok(ms) => v.push(ms),
                        Err(e) => panic!("session: {e}"),
                    }
                }
            }
            println!("SpeechEnded -> Final, {name:34}: {}", stats(v));
        }
    });
}
