//! Whisper tiny.en STT: the CTranslate2 reader and BPE decoder on small
//! synthetic files, and the real model through the `Stt` stream on speech made
//! with espeak-ng at test time.
//!
//! The model comes from the cache (`voice-agent download-files`); when it is
//! missing these tests fail with the cache's message, they do not skip.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent::{AudioFrame, JobContext, Resampler, Stt, SttEvent, SttInput, Transcript};
use e2e_tests::{espeak_pcm, scratch};
use speech::whisper::ct2::{Ct2Dtype, Ct2Model, Ct2Variable};
use speech::whisper::tokenizer::Tokenizer;
use speech::whisper::{DecodeLimiter, WhisperModel, WhisperOptions, WhisperStt};
use speech::{ModelCache, SpeechError};

/// Mean word error rate bound over [`SENTENCES`], espeak-ng voice en-us at
/// 160 words/min. Measured on this machine: 0.111 — the three other sentences
/// come out word for word, the fox sentence as "The quick round-fark stump
/// over the lazy nog." (WER 0.444). CTranslate2 itself, greedy on the same
/// weights and audio, returns the same fox transcript: tiny.en hears
/// espeak's voice that way. The bound leaves room for about one more wrong
/// word per sentence.
const MAX_MEAN_WER: f64 = 0.2;

const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Please book a table for two people at seven o'clock tomorrow evening.",
    "What is the weather going to be like in London this weekend?",
    "I would like to change my flight to Monday morning.",
];

fn model() -> Arc<WhisperModel> {
    static MODEL: OnceLock<Arc<WhisperModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let cache = ModelCache::new(ModelCache::default_root());
            match WhisperModel::load(&cache) {
                Ok(m) => Arc::new(m),
                Err(e) => panic!("whisper model not available: {e}"),
            }
        })
        .clone()
}

/// Speech for `text` from espeak-ng, mono 16 kHz.
fn espeak(text: &str) -> Vec<i16> {
    let pcm = espeak_pcm(text, &["-v", "en-us", "-s", "160"]).unwrap_or_else(|e| panic!("{e}"));
    let mut resampler = Resampler::new(pcm.sample_rate, 16_000);
    let frame = resampler.process(&AudioFrame::new(pcm.samples, pcm.sample_rate, 1));
    frame.samples.to_vec()
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word error rate: word-level edit distance over the reference's length.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

const RATE: u32 = 16_000;
const FRAME: usize = 320; // 20 ms

fn frames(samples: &[i16]) -> impl Iterator<Item = SttInput> + '_ {
    samples
        .chunks(FRAME)
        .map(|c| SttInput::Audio(AudioFrame::new(c.to_vec(), RATE, 1)))
}

fn secs(samples: usize) -> Duration {
    Duration::from_secs_f64(samples as f64 / RATE as f64)
}

/// Feeds `lead` of silence, the speech with VAD hints around it, `tail` of
/// silence, then `SpeechEnded`; returns every event up to the first
/// Final/Empty.
async fn utterance(
    stt: &WhisperStt,
    speech: &[i16],
    pace: Option<Duration>,
) -> (Vec<SttEvent>, Option<Transcript>) {
    let mut stream = stt.stream(&JobContext::default()).await.unwrap();
    let lead = vec![0i16; RATE as usize / 2];
    let tail = vec![0i16; RATE as usize / 2];
    for f in frames(&lead) {
        stream.input.send(f).await.unwrap();
    }
    stream
        .input
        .send(SttInput::SpeechStarted(secs(lead.len())))
        .await
        .unwrap();
    for f in frames(speech) {
        stream.input.send(f).await.unwrap();
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    for f in frames(&tail) {
        stream.input.send(f).await.unwrap();
    }
    stream
        .input
        .send(SttInput::SpeechEnded(secs(lead.len() + speech.len())))
        .await
        .unwrap();
    let mut events = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.events.recv())
            .await
            .expect("no final within 60 s")
            .expect("stream ended before its final");
        match &ev {
            SttEvent::Final(t) => {
                let t = t.clone();
                events.push(ev);
                return (events, Some(t));
            }
            SttEvent::Empty => {
                events.push(ev);
                return (events, None);
            }
            _ => events.push(ev),
        }
    }
}

// ---------------------------------------------------------------- synthetic

fn tiny_ct2() -> Ct2Model {
    let mut m = Ct2Model {
        version: 6,
        spec: "WhisperSpec".into(),
        revision: 3,
        ..Default::default()
    };
    let f16_ones: Vec<u8> = (0..8).flat_map(|_| 0x3c00u16.to_le_bytes()).collect();
    m.variables.insert(
        "encoder/conv1/weight".into(),
        Ct2Variable {
            shape: vec![2, 4],
            dtype: Ct2Dtype::F16,
            data: f16_ones,
        },
    );
    m.variables.insert(
        "decoder/num_heads".into(),
        Ct2Variable {
            shape: vec![],
            dtype: Ct2Dtype::I16,
            data: 6i16.to_le_bytes().to_vec(),
        },
    );
    m.aliases.insert(
        "decoder/projection/weight".into(),
        "encoder/conv1/weight".into(),
    );
    m
}

#[test]
fn ct2_reader_reads_a_synthetic_file() {
    let dir = scratch("ct2");
    let path = dir.join("model.bin");
    let model = tiny_ct2();
    std::fs::write(&path, model.to_bytes()).unwrap();
    let parsed = Ct2Model::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(parsed.spec, "WhisperSpec");
    assert_eq!(parsed.revision, 3);
    let w = parsed.get("encoder/conv1/weight").unwrap();
    assert_eq!(
        (w.shape.as_slice(), w.dtype),
        (&[2usize, 4][..], Ct2Dtype::F16)
    );
    assert_eq!(&w.data[..2], &[0x00, 0x3c]);
    assert_eq!(parsed.get("decoder/projection/weight"), Some(w));
    assert_eq!(
        parsed.get("decoder/num_heads").unwrap().scalar_i64(),
        Some(6)
    );
    assert_eq!(parsed, model);
}

#[test]
fn malformed_model_files_are_typed_errors() {
    let dir = scratch("bad");
    let (bin, tok, cfg) = (
        dir.join("model.bin"),
        dir.join("tokenizer.json"),
        dir.join("config.json"),
    );
    std::fs::write(&tok, "{}").unwrap();
    std::fs::write(&cfg, "{}").unwrap();
    let bytes = tiny_ct2().to_bytes();
    // Truncated, garbage, and well-formed but not a whisper network.
    for content in [&bytes[..bytes.len() - 3], b"not a model".as_slice(), &bytes] {
        std::fs::write(&bin, content).unwrap();
        match WhisperModel::load_from(&bin, &tok, &cfg) {
            Err(SpeechError::InvalidModel { path, .. }) => assert_eq!(path, bin),
            other => panic!("expected InvalidModel, got {other:?}"),
        }
    }
    let missing = ModelCache::new(dir.join("empty-cache"));
    match WhisperModel::load(&missing) {
        Err(SpeechError::MissingModel { hint, .. }) => {
            assert!(hint.contains("download-files"), "{hint}")
        }
        other => panic!("expected MissingModel, got {other:?}"),
    }
}

#[test]
fn bpe_decoder_maps_bytes_back() {
    let mut vocab = HashMap::new();
    for (i, t) in ["Ġhello", "Ġw", "orld", "Ġcaf", "Ã", "©", "!"]
        .iter()
        .enumerate()
    {
        vocab.insert(t.to_string(), i);
    }
    let json = serde_json::json!({
        "model": { "type": "BPE", "vocab": vocab, "merges": [] },
        "added_tokens": [
            { "id": 50256, "content": "<|endoftext|>", "special": true },
            { "id": 50257, "content": "<|startoftranscript|>", "special": true },
            { "id": 50361, "content": "<|nocaptions|>", "special": true },
            { "id": 50362, "content": "<|notimestamps|>", "special": true },
        ],
    });
    let tok = Tokenizer::from_json(&json.to_string()).unwrap();
    assert_eq!(tok.specials.end_of_text, 50256);
    assert_eq!(tok.specials.no_speech, Some(50361));
    // Specials and unknown ids (timestamps) are skipped; "é" spans two tokens.
    let ids = [50257, 50362, 0, 1, 2, 3, 4, 5, 6, 50400, 50256];
    assert_eq!(tok.decode(&ids), " hello world café!");
    assert!(Tokenizer::from_json("{\"model\":{}}").is_err());
    let no_specials = serde_json::json!({ "model": { "vocab": {} } });
    assert!(Tokenizer::from_json(&no_specials.to_string()).is_err());
}

// ---------------------------------------------------------------- real model

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribes_espeak_sentences_within_the_wer_bound() {
    let stt = WhisperStt::new(model(), WhisperOptions::default());
    assert_eq!(stt.sample_rate(), 16_000);
    let mut total = 0.0;
    for sentence in SENTENCES {
        let speech = espeak(sentence);
        let (events, final_) = utterance(&stt, &speech, None).await;
        assert!(matches!(events.first(), Some(SttEvent::StartOfSpeech)));
        let t = final_.unwrap_or_else(|| panic!("no transcript for {sentence:?}: {events:?}"));
        let e = wer(sentence, &t.text);
        eprintln!(
            "WER {e:.3}  {sentence:?} -> {:?} (conf {:.2})",
            t.text, t.confidence
        );
        assert_eq!(t.text, t.text.trim());
        assert_eq!(t.language.as_deref(), Some("en"));
        assert!(t.start < Duration::from_millis(500) && t.end > t.start);
        assert!(t.confidence > 0.0 && t.confidence <= 1.0);
        total += e;
    }
    let mean = total / SENTENCES.len() as f64;
    eprintln!("mean WER {mean:.3} (bound {MAX_MEAN_WER})");
    assert!(mean <= MAX_MEAN_WER, "mean WER {mean:.3} > {MAX_MEAN_WER}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_gives_empty_and_dropping_input_ends_the_stream() {
    let stt = WhisperStt::new(model(), WhisperOptions::default());
    let silence = vec![0i16; RATE as usize];
    let (events, final_) = utterance(&stt, &silence, None).await;
    assert!(final_.is_none(), "{events:?}");

    // An end without a start is an Empty too.
    let mut stream = stt.stream(&JobContext::default()).await.unwrap();
    stream
        .input
        .send(SttInput::SpeechEnded(Duration::ZERO))
        .await
        .unwrap();
    assert!(matches!(stream.events.recv().await, Some(SttEvent::Empty)));
    drop(stream.input);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.events.recv()).await;
    assert!(matches!(end, Ok(None)), "stream did not end: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interims_while_speaking_and_long_speech_is_cut_into_windows() {
    // Fed in real time, a 4 s sentence gets interim results. Its own decode
    // limiter: the process-wide one is shared with the tests running beside
    // it, whose finals hold interims back.
    let stt = WhisperStt::with_limiter(model(), WhisperOptions::default(), DecodeLimiter::new(1));
    let sentence = "Please book a table for two people at seven o'clock tomorrow evening.";
    let speech = espeak(sentence);
    let (events, final_) = utterance(&stt, &speech, Some(Duration::from_millis(20))).await;
    let interims = events
        .iter()
        .filter(|e| matches!(e, SttEvent::Interim(_)))
        .count();
    assert!(interims >= 1, "no interim in {events:?}");
    assert!(wer(sentence, &final_.unwrap().text) <= 0.25);

    // Without an end, speech is finalized every `max_segment`.
    let stt = WhisperStt::new(
        model(),
        WhisperOptions {
            interim_interval: None,
            max_segment: Duration::from_secs(3),
            ..Default::default()
        },
    );
    let mut stream = stt.stream(&JobContext::default()).await.unwrap();
    stream
        .input
        .send(SttInput::SpeechStarted(Duration::ZERO))
        .await
        .unwrap();
    let long = [espeak(SENTENCES[2]), espeak(SENTENCES[3])].concat();
    assert!(long.len() > 2 * 3 * RATE as usize);
    for f in frames(&long) {
        stream.input.send(f).await.unwrap();
    }
    let mut finals = Vec::new();
    while finals.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(60), stream.events.recv()).await {
            Ok(Some(SttEvent::Final(t))) => finals.push(t),
            Ok(Some(SttEvent::Empty | SttEvent::StartOfSpeech)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(finals[0].start, Duration::ZERO);
    assert_eq!(finals[0].end, Duration::from_secs(3));
    assert_eq!(finals[1].start, Duration::from_secs(3));
    assert!(!finals[0].text.is_empty());
}
