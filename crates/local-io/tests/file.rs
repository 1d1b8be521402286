//! File mode on the media clock, with stage doubles: the agent's speech must
//! land in the output file where it would have been heard, and the
//! transcript lines must name both sides.

use std::sync::Arc;
use std::time::Duration;

use agent::session::{SessionOptions, Stages};
use agent::*;
use async_trait::async_trait;
use local_io::file::{self, FileOptions};
use tokio::sync::mpsc;

const RATE: u32 = 16_000;

struct EnergyVad;

impl VadModel for EnergyVad {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    fn frame_len(&self) -> usize {
        320
    }
    fn score(&mut self, frame: &[i16]) -> f32 {
        let loud = frame.iter().filter(|s| s.unsigned_abs() > 1000).count();
        if loud > frame.len() / 2 { 1.0 } else { 0.0 }
    }
    fn reset(&mut self) {}
}

impl VadFactory for EnergyVad {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(EnergyVad))
    }
}

/// Finalizes every speech as "what time is it", 100 ms after its end.
struct FixedStt;

#[async_trait]
impl Stt for FixedStt {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    async fn stream(&self, _job: &JobContext) -> Result<SttStream, StageError> {
        let (in_tx, mut in_rx) = mpsc::channel::<SttInput>(16);
        let (ev_tx, ev_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(input) = in_rx.recv().await {
                if let SttInput::SpeechEnded(_) = input {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let t = Transcript {
                        text: "what time is it".into(),
                        ..Default::default()
                    };
                    if ev_tx.send(SttEvent::Final(t)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(SttStream {
            input: in_tx,
            events: ev_rx,
        })
    }
}

struct FixedLlm;

#[async_trait]
impl Llm for FixedLlm {
    async fn chat(&self, _request: LlmRequest) -> Result<LlmStream, StageError> {
        let chunks = vec![
            Ok(LlmChunk::Text("It is ".into())),
            Ok(LlmChunk::Text("noon.".into())),
            Ok(LlmChunk::Done {
                finish_reason: None,
            }),
        ];
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

/// One second of a loud square wave per segment, in 100 ms chunks.
struct ToneTts;

#[async_trait]
impl Tts for ToneTts {
    fn sample_rate(&self) -> u32 {
        RATE
    }
    async fn stream(&self, _job: &JobContext) -> Result<TtsStream, StageError> {
        let (in_tx, mut in_rx) = mpsc::channel::<TtsInput>(4);
        let (out_tx, out_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(TtsInput::Segment(text)) = in_rx.recv().await {
                for i in 0..10 {
                    let samples: Vec<i16> = (0..1600)
                        .map(|n| if (n / 20) % 2 == 0 { 6000 } else { -6000 })
                        .collect();
                    let text = if i == 0 { text.clone() } else { String::new() };
                    let frame = AudioFrame::new(samples, RATE, 1);
                    if out_tx.send(Ok(TtsAudio { frame, text })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(TtsStream {
            input: in_tx,
            output: out_rx,
        })
    }
}

fn write_input(path: &std::path::Path) {
    // 44.1 kHz stereo: 1 s silence, 1 s "speech" (loud noise-like square), 3 s silence.
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create input");
    for n in 0..44_100 * 5 {
        let loud = (44_100..88_200).contains(&n);
        let v: i16 = if loud && (n / 30) % 2 == 0 {
            9000
        } else if loud {
            -9000
        } else {
            0
        };
        w.write_sample(v).expect("write");
        w.write_sample(v).expect("write");
    }
    w.finalize().expect("finalize");
}

#[tokio::test(start_paused = true)]
async fn agent_speech_lands_where_it_would_have_been_heard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.wav");
    write_input(&input);
    let stages = Stages {
        llm: Arc::new(FixedLlm),
        stt: Some(Arc::new(FixedStt)),
        tts: Some(Arc::new(ToneTts)),
        vad: Some(Arc::new(EnergyVad)),
        turn_detector: None,
    };
    let mut transcript = Vec::new();
    let summary = file::run(
        stages,
        SessionOptions::default(),
        FileOptions {
            input,
            output: output.clone(),
            output_rate: 24_000,
        },
        &mut transcript,
    )
    .await
    .expect("file mode runs");

    let text = String::from_utf8(transcript).expect("utf-8");
    assert_eq!(text, "user: what time is it\nagent: It is noon.\n");
    assert_eq!(summary.turns.len(), 1);

    let reader = hound::WavReader::open(&output).expect("output wav");
    assert_eq!(reader.spec().sample_rate, 24_000);
    assert_eq!(reader.spec().channels, 1);
    let samples: Vec<i16> = reader.into_samples().map(|s| s.expect("sample")).collect();
    // The output covers the input and the agent's second of speech.
    assert!(samples.len() >= 24_000 * 5, "{} samples", samples.len());
    let first_loud = samples
        .iter()
        .position(|s| s.unsigned_abs() > 3000)
        .expect("agent audio in the output");
    let last_loud = samples
        .iter()
        .rposition(|s| s.unsigned_abs() > 3000)
        .expect("agent audio");
    let start = first_loud as f64 / 24_000.0;
    // Speech ends at 2.0 s; the turn commits 0.5 s later; the doubles answer
    // at once, so audio starts within a 20 ms tick or two of 2.5 s.
    assert!(
        (2.5..2.56).contains(&start),
        "agent audio starts at {start:.3} s"
    );
    let length = (last_loud - first_loud) as f64 / 24_000.0;
    assert!(
        (0.95..1.01).contains(&length),
        "agent audio lasts {length:.3} s"
    );
    let m = &summary.metrics[0];
    assert_eq!(m.end_of_utterance_delay, Some(Duration::from_millis(500)));
}

#[tokio::test]
async fn unreadable_input_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("not-a.wav");
    std::fs::write(&input, b"RIFF nonsense").expect("write");
    let stages = Stages {
        llm: Arc::new(FixedLlm),
        stt: None,
        tts: None,
        vad: None,
        turn_detector: None,
    };
    let err = file::run(
        stages,
        SessionOptions::default(),
        FileOptions {
            input: input.clone(),
            output: dir.path().join("out.wav"),
            output_rate: 24_000,
        },
        Vec::new(),
    )
    .await
    .expect_err("bad wav");
    assert!(err.to_string().contains("not-a.wav"), "{err}");
}
