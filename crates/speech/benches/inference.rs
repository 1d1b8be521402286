//! Added latency of the LiveKit Inference clients, against the stand-in
//! gateway of the tests on loopback: the time from our send to our receipt of
//! the first result, minus the stand-in's own delay (from its receipt of the
//! trigger to its first answer on the socket). What is left is our client's
//! work both ways plus loopback TCP and websocket framing. Target: p99 ≤ 2 ms.
//!
//! - STT: `SttInput::SpeechEnded` sent on the stream → first event of the
//!   answer (`StartOfSpeech`) out of the stream; also → the `Final`.
//! - TTS: `TtsInput::Segment` sent on a (pooled) stream → first audio frame
//!   out of the stream.
//!
//! `cargo bench -p speech --bench inference`. Two runs on the project's
//! 2-core machine (busy with other builds), release, 1000 STT / 500 TTS
//! iterations after 30 warm-up; ranges are over the runs:
//!
//! | path | p50 | p90 | p99 | max |
//! |---|---|---|---|---|
//! | STT finalize → first event | 0.125–0.131 ms | 0.18–0.20 ms | 0.27–0.34 ms | 0.9–4.2 ms |
//! | STT finalize → final transcript | 0.140 ms | 0.19–0.23 ms | 0.29–0.39 ms | 1.0–4.2 ms |
//! | TTS segment → first audio | 0.371–0.378 ms | 0.41–0.52 ms | 0.46–0.97 ms | 0.5–2.4 ms |
//!
//! The TTS figure includes two messages out (`input_transcript`,
//! `session.flush`) and decoding 100 ms of base64 PCM into a frame.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{AudioFrame, JobContext, Resampler, Stt, SttEvent, SttInput, Tts, TtsInput};
use e2e_tests::inference::speech::{Gateway, livekit_env};
use speech::{
    InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts, InferenceTtsOptions,
};

const WARMUP: usize = 30;
const STT_ITERATIONS: usize = 1000;
const TTS_ITERATIONS: usize = 500;

fn options(gw: &Gateway) -> InferenceOptions {
    InferenceOptions {
        base_url: Some(gw.base_url()),
        ..InferenceOptions::default()
    }
}

fn report(name: &str, mut added: Vec<Duration>) {
    added.sort();
    let pct = |p: f64| {
        let i = ((added.len() as f64 - 1.0) * p).round() as usize;
        added[i].as_secs_f64() * 1e3
    };
    println!(
        "{name:<32} n={:<5} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        added.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}

async fn bench_stt() {
    let gw = Gateway::start(Arc::new(|_: &str| Vec::new())).await;
    let total = WARMUP + STT_ITERATIONS;
    let script: Vec<String> = (0..total)
        .map(|i| format!("utterance number {i}"))
        .collect();
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    gw.script(&script);
    let stt = InferenceStt::new(
        InferenceSttOptions {
            common: options(&gw),
            ..InferenceSttOptions::default()
        },
        &livekit_env,
    )
    .expect("stt");
    let mut s = stt.stream(&JobContext::default()).await.expect("stream");
    let mut first = Vec::new();
    let mut finals = Vec::new();
    let mut t = Duration::ZERO;
    for i in 0..total {
        s.input
            .send(SttInput::SpeechStarted(t))
            .await
            .expect("send");
        for _ in 0..10 {
            let f = AudioFrame::new(vec![100i16; 160], 16_000, 1);
            s.input.send(SttInput::Audio(f)).await.expect("send");
            t += Duration::from_millis(10);
        }
        // Let the audio go out first: only the finalize is timed.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let _ = gw.own_delays();
        let t0 = Instant::now();
        s.input.send(SttInput::SpeechEnded(t)).await.expect("send");
        let mut t_first = None;
        loop {
            let e = s.events.recv().await.expect("event");
            t_first.get_or_insert_with(|| t0.elapsed());
            match e {
                SttEvent::Final(_) => break,
                SttEvent::Empty | SttEvent::Error(_) => panic!("unexpected {e:?}"),
                _ => {}
            }
        }
        let t_final = t0.elapsed();
        let own = gw.own_delays().first().copied().unwrap_or_default();
        if i >= WARMUP {
            first.push(t_first.unwrap_or(t_final).saturating_sub(own));
            finals.push(t_final.saturating_sub(own));
        }
    }
    gw.assert_clean();
    report("STT finalize → first event", first);
    report("STT finalize → final transcript", finals);
}

async fn bench_tts() {
    let (pcm, rate) = common::espeak_speech("Sure, I can help with that.");
    let mut r = Resampler::new(rate, 24_000);
    let mut speech = Vec::new();
    r.process_into(&pcm, &mut speech);
    let gw = Gateway::start(Arc::new(move |_: &str| speech.clone())).await;
    let tts = InferenceTts::new(
        InferenceTtsOptions {
            common: options(&gw),
            ..InferenceTtsOptions::default()
        },
        &livekit_env,
    )
    .expect("tts");
    let mut first = Vec::new();
    for i in 0..WARMUP + TTS_ITERATIONS {
        let mut s = tts.stream(&JobContext::default()).await.expect("stream");
        let _ = gw.own_delays();
        let t0 = Instant::now();
        s.input
            .send(TtsInput::Segment("Sure, I can help with that.".into()))
            .await
            .expect("send");
        drop(s.input);
        let audio = s.output.recv().await.expect("audio").expect("no error");
        let elapsed = t0.elapsed();
        assert!(!audio.frame.samples.is_empty());
        while s.output.recv().await.is_some() {}
        let own = gw.own_delays().first().copied().unwrap_or_default();
        if i >= WARMUP {
            first.push(elapsed.saturating_sub(own));
        }
    }
    assert_eq!(
        gw.conns().len(),
        1,
        "every reply reused the pooled connection"
    );
    gw.assert_clean();
    report("TTS segment → first audio", first);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        bench_stt().await;
        bench_tts().await;
    });
}
