//! Smart Turn v3.2 on espeak-ng speech: a finished question scores higher
//! than the same question cut off mid-phrase; features match pipecat's.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{TurnDetector, TurnInput};
use speech::smart_turn::LogMel;
use speech::{ModelFile, SmartTurn};

const RATE: usize = 16_000;

fn with_silence(mut speech: Vec<f32>, secs: f32) -> Arc<[f32]> {
    speech.extend(std::iter::repeat_n(0f32, (secs * RATE as f32) as usize));
    speech.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_question_scores_higher_than_cut_off() {
    let cache = common::require(&[ModelFile::SmartTurn, ModelFile::OnnxRuntime]);
    let turn = SmartTurn::new(&cache).unwrap_or_else(|e| panic!("{e}"));
    let full = common::espeak_speech_16k("What time does the train to Boston leave tomorrow?");
    // The same audio cut at 55 %: mid-phrase ("...the train to").
    let (start, end) = common::audible_span(&full, RATE as u32);
    let cut_at = ((start + (end - start) * 0.55) * RATE as f32) as usize;
    let cut = full[..cut_at].to_vec();
    // The prefix spoken as if it were all ("What time does the train to").
    let prefix = common::espeak_speech_16k("What time does the train to");

    let mut scores = Vec::new();
    for audio in [full.clone(), cut, prefix] {
        let input = TurnInput {
            chat: Vec::new(),
            audio: with_silence(audio, 0.2),
        };
        let t = Instant::now();
        let p = turn.end_of_turn_probability(input).await.expect("predict");
        eprintln!("p = {p:.3} in {:?}", t.elapsed());
        scores.push(p);
    }
    let (finished, cut, prefix) = (scores[0], scores[1], scores[2]);
    assert!(finished > cut, "finished {finished} vs cut {cut}");
    assert!(finished > prefix, "finished {finished} vs prefix {prefix}");
    assert!(finished >= turn.unlikely_threshold(), "finished {finished}");
    assert!(prefix < turn.unlikely_threshold(), "prefix {prefix}");
}

/// A decision takes well under 100 ms once warm (debug builds are slower in
/// the feature code; the bound here is loose, the benchmark has the figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_is_fast() {
    let cache = common::require(&[ModelFile::SmartTurn, ModelFile::OnnxRuntime]);
    let turn = SmartTurn::new(&cache).unwrap_or_else(|e| panic!("{e}"));
    let audio: Arc<[f32]> = with_silence(common::espeak_speech_16k("Is it going to rain?"), 0.2);
    turn.predict(audio.clone()).await.expect("warm up");
    let t = Instant::now();
    turn.predict(audio).await.expect("predict");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
}

/// Golden values from pipecat 1.14.0's `compute_whisper_log_mel_features`
/// on the same synthetic signal (see INSTALL.md for how they were made).
#[test]
fn features_match_pipecat() {
    let audio: Vec<f32> = (0..3 * RATE)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin()
                + 0.05 * (2.0 * std::f32::consts::PI * 3000.0 * t).sin()
        })
        .collect();
    let f = LogMel::new().features(&audio);
    let golden = golden();
    for &(idx, want) in &golden.points {
        assert!(
            (f[idx] - want).abs() < 1e-4,
            "feature {idx}: {} vs pipecat {want}",
            f[idx]
        );
    }
    let sum: f64 = f.iter().map(|&v| v as f64).sum();
    assert!(
        (sum - golden.sum).abs() < 0.05,
        "sum {sum} vs pipecat {}",
        golden.sum
    );
}

struct Golden {
    points: Vec<(usize, f32)>,
    sum: f64,
}

include!("data/smart_turn_golden.rs");
