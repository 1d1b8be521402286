//! Piper and espeak-ng TTS: the audio is speech of a plausible length, the
//! stream follows the trait's contract (text attached, queued segments
//! finished after `input` drops, prompt stop when `output` drops).

mod common;

use std::time::{Duration, Instant};

use agent::{JobContext, Tts, TtsAudio, TtsInput};
use speech::{EspeakTts, EspeakVoice, ModelFile, PiperTts};

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog.";

fn piper() -> PiperTts {
    let cache = common::require(&[
        ModelFile::PiperVoice,
        ModelFile::PiperVoiceConfig,
        ModelFile::OnnxRuntime,
    ]);
    PiperTts::new(&cache).unwrap_or_else(|e| panic!("{e}"))
}

fn espeak() -> EspeakTts {
    EspeakTts::new(EspeakVoice::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `segments`, drops input, collects everything until output closes.
async fn speak(tts: &dyn Tts, segments: &[&str]) -> (Vec<TtsAudio>, Duration) {
    let mut stream = tts.stream(&JobContext::default()).await.expect("stream");
    let t0 = Instant::now();
    for s in segments {
        stream
            .input
            .send(TtsInput::Segment(s.to_string()))
            .await
            .expect("send");
    }
    drop(stream.input);
    let mut out = Vec::new();
    let mut first = None;
    while let Some(item) = stream.output.recv().await {
        let audio = item.expect("tts error");
        first.get_or_insert_with(|| t0.elapsed());
        out.push(audio);
    }
    (out, first.unwrap_or_default())
}

/// Checks the audio of one sentence is plausible speech.
fn check_speech(frames: &[TtsAudio], rate: u32, text: &str) -> Vec<i16> {
    assert!(!frames.is_empty());
    let pcm: Vec<i16> = frames
        .iter()
        .flat_map(|a| a.frame.samples.iter().copied())
        .collect();
    for a in frames {
        assert_eq!(a.frame.sample_rate, rate);
        assert_eq!(a.frame.channels, 1);
        assert!(a.frame.duration() <= Duration::from_millis(101));
    }
    let secs = pcm.len() as f32 / rate as f32;
    // ~9 words: between 1.5 and 6 s of speech.
    assert!((1.5..6.0).contains(&secs), "{secs} s for {text:?}");
    let level = common::dbfs(&pcm);
    assert!(level > -30.0, "too quiet: {level} dBFS");
    // Speech has pauses: not a constant tone or noise.
    let f32s: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
    let win = rate as usize / 50;
    let rms: Vec<f32> = f32s
        .chunks(win)
        .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let loud = rms.iter().filter(|&&r| r > 0.02).count() as f32 / rms.len() as f32;
    assert!((0.4..0.98).contains(&loud), "loud fraction {loud}");
    let text_back: String = frames.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(text_back, text);
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speaks_a_sentence() {
    let tts = piper();
    assert_eq!(tts.sample_rate(), 22_050);
    let (frames, first) = speak(&tts, &[SENTENCE]).await;
    eprintln!(
        "piper: first audio after {first:?}, {} frames",
        frames.len()
    );
    check_speech(&frames, 22_050, SENTENCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_speaks_a_sentence() {
    let tts = espeak();
    assert_eq!(tts.sample_rate(), 22_050);
    let (frames, first) = speak(&tts, &[SENTENCE]).await;
    eprintln!(
        "espeak: first audio after {first:?}, {} frames",
        frames.len()
    );
    check_speech(&frames, 22_050, SENTENCE);
}

#[test]
fn piper_phonemes_follow_the_voice_map() {
    let tts = piper();
    let ids = tts.phoneme_ids("Hello, world!").expect("ids");
    // ^ _ ... $ with the pad after every phoneme, punctuation kept.
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ids[1], 0);
    assert!(ids.contains(&8), "comma kept: {ids:?}");
    assert!(ids.contains(&4), "exclamation kept: {ids:?}");
    assert!(ids.len() > 20, "{ids:?}");
}

/// Segments queued before `input` drops are all spoken, in order, and the
/// text attached to the frames is exactly the text sent.
async fn finishes_queued_segments(tts: &dyn Tts) {
    let segments = [
        "First sentence here. ",
        "And a second one, ",
        "then the end.",
    ];
    let (frames, _) = speak(tts, &segments).await;
    let text: String = frames.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(text, segments.concat());
    let secs: f32 = frames
        .iter()
        .map(|a| a.frame.duration().as_secs_f32())
        .sum();
    assert!(secs > 2.0, "{secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_finishes_queued_segments() {
    finishes_queued_segments(&piper()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_finishes_queued_segments() {
    finishes_queued_segments(&espeak()).await;
}

/// Dropping `output` mid-reply stops the stream at once: its input closes
/// within 200 ms, and a new stream gets its first audio without waiting for
/// the abandoned reply's synthesis (loose bound: the tests run in parallel
/// on two cores; that a running inference is terminated is checked by the
/// unit tests of `piper` and `tts_stream`).
async fn cancels_when_output_drops(tts: &dyn Tts) {
    let long = "This is a long reply that goes on and on. It has many sentences. \
                Each of them takes a while to synthesize, on and on and on. \
                Nobody will ever hear the end of it, because it is cancelled. ";
    let mut stream = tts.stream(&JobContext::default()).await.expect("stream");
    for _ in 0..4 {
        stream
            .input
            .send(TtsInput::Segment(long.into()))
            .await
            .expect("send");
    }
    let first = stream.output.recv().await.expect("audio").expect("ok");
    assert!(!first.frame.samples.is_empty());
    let input = stream.input;
    drop(stream.output);
    let t = Instant::now();
    tokio::time::timeout(Duration::from_millis(200), input.closed())
        .await
        .expect("stream did not stop within 200 ms of dropping output");
    eprintln!("stopped {:?} after output dropped", t.elapsed());

    // The engine is free again: a fresh short reply starts promptly.
    let t = Instant::now();
    let mut s2 = tts.stream(&JobContext::default()).await.expect("stream");
    s2.input
        .send(TtsInput::Segment("Okay.".into()))
        .await
        .expect("send");
    drop(s2.input);
    let a = s2.output.recv().await.expect("audio").expect("ok");
    assert!(!a.frame.samples.is_empty());
    eprintln!("next reply's first audio after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_cancels_when_output_drops() {
    cancels_when_output_drops(&piper()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_cancels_when_output_drops() {
    cancels_when_output_drops(&espeak()).await;
}

/// Piper's output (resampled to 16 kHz) is heard as speech by Silero VAD,
/// from shortly after it starts until shortly before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_output_is_heard_as_speech() {
    use agent::VadFactory;
    let cache = common::require(&[ModelFile::SileroVad]);
    let (frames, _) = speak(&piper(), &[SENTENCE]).await;
    let pcm: Vec<i16> = frames
        .iter()
        .flat_map(|a| a.frame.samples.iter().copied())
        .collect();
    let audio = common::to_16k_f32(&pcm, 22_050);
    let pcm16: Vec<i16> = audio.iter().map(|&v| (v * 32767.0) as i16).collect();
    let factory = speech::SileroVadFactory::new(&cache).expect("vad");
    let mut vad = factory.create().expect("vad");
    let scores: Vec<f32> = pcm16.chunks_exact(512).map(|f| vad.score(f)).collect();
    let speechy = scores.iter().filter(|&&p| p > 0.5).count() as f32 / scores.len() as f32;
    assert!(
        speechy > 0.6,
        "VAD hears speech in {speechy:.2} of Piper's output"
    );
}

/// The words whisper tiny.en hears in `pcm` (22.05 kHz), lower-cased.
fn transcribe(pcm: &[i16]) -> String {
    let cache = common::require(&[
        ModelFile::WhisperModel,
        ModelFile::WhisperTokenizer,
        ModelFile::WhisperConfig,
    ]);
    let model = speech::whisper::WhisperModel::load(&cache).unwrap_or_else(|e| panic!("{e}"));
    let audio = common::to_16k_f32(pcm, 22_050);
    let t = model.transcribe(&audio).expect("transcribe");
    t.text.to_lowercase()
}

/// Transcribed by the whisper STT, each engine's speech of `sentence`
/// contains at least 4 of its 5 key words. (espeak-ng's voice says "the
/// quick brown fox" so that whisper tiny.en hears "roundfark stump", with
/// the `espeak-ng` binary too; its sentence is one whisper can follow.)
async fn stt_hears_key_words(tts: &dyn Tts, name: &str, sentence: &str, keys: [&str; 5]) {
    let (frames, _) = speak(tts, &[sentence]).await;
    let pcm: Vec<i16> = frames
        .iter()
        .flat_map(|a| a.frame.samples.iter().copied())
        .collect();
    let text = tokio::task::spawn_blocking(move || transcribe(&pcm))
        .await
        .expect("join");
    let heard = keys.iter().filter(|k| text.contains(*k)).count();
    eprintln!("{name}: whisper heard {text:?} ({heard}/5 key words)");
    assert!(heard >= 4, "{name}: whisper heard {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speech_is_understood_by_the_stt() {
    let keys = ["quick", "brown", "fox", "lazy", "dog"];
    stt_hears_key_words(&piper(), "piper", SENTENCE, keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_speech_is_understood_by_the_stt() {
    let sentence = "Please call Stella and ask her to bring these things with her from the store.";
    let keys = ["call", "stella", "bring", "things", "store"];
    stt_hears_key_words(&espeak(), "espeak", sentence, keys).await;
}
