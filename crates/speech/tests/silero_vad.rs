//! Silero VAD on espeak-ng speech with silence around it.

mod common;

use agent::{VadFactory, VadModel};
use speech::{ModelFile, SileroVadFactory};

const RATE: usize = 16_000;

/// The speech segments the VAD finds: frames above 0.5 open a segment,
/// which closes after 300 ms below 0.35 (the usual silero hysteresis).
fn segments(vad: &mut dyn VadModel, pcm: &[i16]) -> Vec<(f32, f32)> {
    let n = vad.frame_len();
    let frame_s = n as f32 / RATE as f32;
    let mut out = Vec::new();
    let mut start: Option<f32> = None;
    let mut last_speech = 0f32;
    for (i, frame) in pcm.chunks_exact(n).enumerate() {
        let t = i as f32 * frame_s;
        let p = vad.score(frame);
        match start {
            None if p > 0.5 => {
                start = Some(t);
                last_speech = t + frame_s;
            }
            Some(_) if p > 0.35 => last_speech = t + frame_s,
            Some(s) if t - last_speech > 0.3 => {
                out.push((s, last_speech));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, last_speech));
    }
    out
}

#[test]
fn segments_match_the_speech() {
    let cache = common::require(&[ModelFile::SileroVad, ModelFile::OnnxRuntime]);
    let factory = SileroVadFactory::new(&cache).unwrap_or_else(|e| panic!("{e}"));
    let speech = common::espeak_speech_16k(
        "The weather in Paris is sunny today, with a light breeze from the west.",
    );
    let lead = RATE; // 1 s of silence before
    let mut audio = vec![0f32; lead];
    audio.extend_from_slice(&speech);
    audio.extend(std::iter::repeat_n(0f32, 3 * RATE / 2)); // 1.5 s after
    let (true_start, true_end) = common::audible_span(&audio, RATE as u32);
    let pcm: Vec<i16> = audio.iter().map(|&v| (v * 32767.0) as i16).collect();

    let mut vad = factory.create().expect("create");
    assert_eq!(vad.sample_rate(), 16_000);
    assert_eq!(vad.frame_len(), 512);
    let segs = segments(vad.as_mut(), &pcm);
    eprintln!("speech {true_start:.2}..{true_end:.2} s, VAD segments {segs:?}");
    assert_eq!(segs.len(), 1, "one utterance expected: {segs:?}");
    let (s, e) = segs[0];
    // Bounds: start within 100 ms of the audible start, end within 150 ms
    // before / 350 ms after the audible end.
    assert!((s - true_start).abs() <= 0.10, "start {s} vs {true_start}");
    assert!(
        e >= true_end - 0.15 && e <= true_end + 0.35,
        "end {e} vs {true_end}"
    );

    // Pure silence scores low, and reset() gives the same scores again.
    vad.reset();
    let silence = vec![0i16; 512];
    for _ in 0..20 {
        assert!(vad.score(&silence) < 0.1);
    }
    vad.reset();
    let again = segments(vad.as_mut(), &pcm);
    assert_eq!(again, segs, "reset must clear the state");
}

#[test]
fn sessions_are_independent() {
    let cache = common::require(&[ModelFile::SileroVad, ModelFile::OnnxRuntime]);
    let factory = SileroVadFactory::new(&cache).unwrap_or_else(|e| panic!("{e}"));
    let speech: Vec<i16> = common::espeak_speech_16k("Hello there, how are you?")
        .iter()
        .map(|&v| (v * 32767.0) as i16)
        .collect();
    let mut a = factory.create().expect("a");
    let mut b = factory.create().expect("b");
    let sa: Vec<f32> = speech.chunks_exact(512).map(|f| a.score(f)).collect();
    // b hears silence in between; its scores for the speech must match a's.
    for _ in 0..10 {
        b.score(&[0i16; 512]);
    }
    b.reset();
    let sb: Vec<f32> = speech.chunks_exact(512).map(|f| b.score(f)).collect();
    assert_eq!(sa, sb);
    assert!(
        sa.iter().any(|&p| p > 0.8),
        "speech should score high: {sa:?}"
    );
}
