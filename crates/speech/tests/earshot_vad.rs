//! earshot, through the session's voice detector, on espeak-ng speech after long
//! digital silence (what a DTX sender's gaps become), where the detector stops
//! running the model once its score has settled.

mod common;

use std::time::Duration;

use agent::vad::{VadEvent, VoiceDetector};
use agent::{AudioFrame, VadOptions};
use speech::EarshotVad;

const RATE: usize = 16_000;

fn pcm(audio: &[f32]) -> Vec<i16> {
    audio.iter().map(|&v| (v * 32767.0) as i16).collect()
}

/// Speech start and end events, in seconds of stream time, fed 20 ms at a time.
fn events(audio: &[i16]) -> Vec<(&'static str, f32)> {
    let mut vad = VoiceDetector::new(Box::new(EarshotVad::new()), VadOptions::default());
    let mut out = Vec::new();
    for chunk in audio.chunks(RATE / 50) {
        vad.push(
            &AudioFrame::new(chunk.to_vec(), RATE as u32, 1),
            |e| match e {
                VadEvent::SpeechStarted { at } => out.push(("start", at.as_secs_f32())),
                VadEvent::SpeechEnded { at } => out.push(("end", at.as_secs_f32())),
                VadEvent::SpeechProgress { .. } => {}
            },
        );
    }
    out
}

#[test]
fn speech_after_long_digital_silence_is_heard_as_after_noise() {
    let speech = common::espeak_speech_16k("What is the capital of France?");
    let (on, off) = common::audible_span(&speech, RATE as u32);
    let gap = 4 * RATE;
    // Two questions, each after 4 s: of zeros (skipped once settled), or of noise
    // at ±3 (scored all the way).
    let build = |silence: &dyn Fn(usize) -> i16| {
        let mut audio: Vec<i16> = (0..gap).map(silence).collect();
        audio.extend(pcm(&speech));
        audio.extend((0..gap).map(silence));
        audio.extend(pcm(&speech));
        audio.extend((0..RATE).map(silence));
        audio
    };
    let zeros = events(&build(&|_| 0));
    let noise = events(&build(&|i| if i % 2 == 0 { 3 } else { -3 }));
    eprintln!("speech {on:.2}..{off:.2} s in each; after zeros {zeros:?}; after noise {noise:?}");

    let second = (gap * 2 + speech.len()) as f32 / RATE as f32;
    let first = gap as f32 / RATE as f32;
    assert_eq!(zeros.len(), 4, "{zeros:?}");
    for (k, base) in [first, second].into_iter().enumerate() {
        let (start, end) = (zeros[2 * k], zeros[2 * k + 1]);
        assert_eq!((start.0, end.0), ("start", "end"));
        assert!((start.1 - (base + on)).abs() <= 0.1, "{zeros:?}");
        assert!((end.1 - (base + off)).abs() <= 0.35, "{zeros:?}");
    }
    // The same events, within a frame, as when the model scores every window.
    assert_eq!(noise.len(), zeros.len(), "{noise:?} vs {zeros:?}");
    for (z, n) in zeros.iter().zip(&noise) {
        assert_eq!(z.0, n.0);
        assert!(
            (z.1 - n.1).abs() <= Duration::from_millis(16).as_secs_f32() + 1e-3,
            "{zeros:?} vs {noise:?}"
        );
    }
}
