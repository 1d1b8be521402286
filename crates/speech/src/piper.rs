//! Piper TTS (VITS voices, ONNX) behind [`Tts`]: 22.05 kHz mono.
//!
//! Text → espeak-ng IPA phonemes (clause by clause, with the clause's
//! punctuation put back, as piper does) → ids through the voice's
//! `phoneme_id_map` (`^`, then each phoneme followed by the pad `_`, then
//! `$`) → one inference per piece → i16, peak-normalised per piece as
//! piper does.
//!
//! Each segment is cut into sentences, and long sentences into clauses
//! ([`tts_stream::split_pieces`]), so the first audio of a reply waits only
//! for its first short piece. Inference runs on tokio's blocking pool, at
//! most one per core at once; dropping the stream's output terminates a
//! running inference through its run options.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use agent::{JobContext, StageError, Tts, TtsStream};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use ort::value::Tensor;
use serde::Deserialize;

use crate::error::SpeechError;
use crate::espeak::Espeak;
use crate::models::{ModelCache, ModelFile};
use crate::onnx::{self, SessionPool};
use crate::tts_stream::{self, Cancel, Synthesizer};

const ENGINE: &str = "piper";
/// Sentences longer than this are cut at clause punctuation.
const MAX_PIECE_CHARS: usize = 60;
/// The first piece of a reply is at most this long (a few words, ~1 s of
/// audio), cut at a clause mark or word break: its inference is the reply's
/// time to first audio.
const FIRST_PIECE_CHARS: usize = 20;

/// The parts of a voice's `.onnx.json` we read.
#[derive(Clone, Debug, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub num_speakers: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    /// > 1 is slower speech.
    pub length_scale: f32,
    pub noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

impl VoiceConfig {
    pub fn load(path: &Path) -> Result<Self, SpeechError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpeechError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let config: VoiceConfig =
            serde_json::from_str(&text).map_err(|e| SpeechError::InvalidModel {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        for sym in ["^", "$", "_"] {
            if !config.phoneme_id_map.contains_key(sym) {
                return Err(SpeechError::InvalidModel {
                    path: path.to_path_buf(),
                    reason: format!("phoneme_id_map has no {sym:?}"),
                });
            }
        }
        if config.num_speakers > 1 {
            return Err(SpeechError::InvalidModel {
                path: path.to_path_buf(),
                reason: "multi-speaker voices are not supported".into(),
            });
        }
        Ok(config)
    }
}

/// Piper TTS. Cheap to clone; clones share the voice's sessions.
#[derive(Clone)]
pub struct PiperTts {
    inner: Arc<Piper>,
}

struct Piper {
    config: VoiceConfig,
    scales: [f32; 3],
    espeak: Espeak,
    pool: Arc<SessionPool>,
}

impl PiperTts {
    /// Loads the cached voice (`en_US-joe-medium`) and the ONNX runtime.
    pub fn new(cache: &ModelCache) -> Result<Self, SpeechError> {
        let config = VoiceConfig::load(&cache.file(ModelFile::PiperVoiceConfig)?)?;
        let env = onnx::environment(cache)?;
        let model = onnx::read_model(cache, ModelFile::PiperVoice)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = SessionPool::new(ENGINE, env, model, cores)?;
        let espeak = Espeak::global()?;
        let i = config.inference;
        Ok(Self {
            inner: Arc::new(Piper {
                scales: [i.noise_scale, i.length_scale, i.noise_w],
                config,
                espeak,
                pool,
            }),
        })
    }

    /// Speaking rate: 1.0 is the voice's own, 1.2 is 20 % faster.
    pub fn with_speed(self, speed: f32) -> Self {
        let p = &self.inner;
        let mut scales = p.scales;
        if speed > 0.1 {
            scales[1] = p.config.inference.length_scale / speed;
        }
        Self {
            inner: Arc::new(Piper {
                config: p.config.clone(),
                scales,
                espeak: p.espeak.clone(),
                pool: p.pool.clone(),
            }),
        }
    }

    /// The phoneme ids of `text`, as piper makes them.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<i64>, SpeechError> {
        self.inner.phoneme_ids(text)
    }

    /// The whole audio of `text`, blocking (for tests and benchmarks).
    pub fn synthesize_blocking(&self, text: &str) -> Result<Vec<i16>, SpeechError> {
        let ids = self.inner.phoneme_ids(text)?;
        let mut slot = self.inner.pool.acquire_blocking()?;
        self.inner.infer(&mut slot, ids, &Cancel::default())
    }
}

impl Piper {
    fn phoneme_ids(&self, text: &str) -> Result<Vec<i64>, SpeechError> {
        let phonemes = self.phonemes(text)?;
        let map = &self.config.phoneme_id_map;
        let id = |s: &str| map.get(s).and_then(|v| v.first().copied()).unwrap_or(0);
        let (bos, eos, pad) = (id("^"), id("$"), id("_"));
        let mut ids = vec![bos, pad];
        let mut buf = [0u8; 4];
        for c in phonemes.chars() {
            match map.get(c.encode_utf8(&mut buf) as &str) {
                Some(v) => {
                    ids.extend_from_slice(v);
                    ids.push(pad);
                }
                None => tracing::debug!(phoneme = %c, "phoneme not in the voice's map; skipped"),
            }
        }
        ids.push(eos);
        Ok(ids)
    }

    /// IPA phonemes with clause punctuation kept, as piper-phonemize does.
    fn phonemes(&self, text: &str) -> Result<String, SpeechError> {
        let mut out = String::new();
        let mut clause = String::new();
        let flush = |clause: &mut String, punct: Option<char>, out: &mut String| {
            let ph = if clause.trim().is_empty() {
                String::new()
            } else {
                self.espeak.phonemize(&self.config.espeak.voice, clause)?
            };
            clause.clear();
            if !out.is_empty() && !out.ends_with(' ') && !ph.is_empty() {
                out.push(' ');
            }
            out.push_str(&ph);
            if let Some(p) = punct {
                out.push(p);
                if !matches!(p, '.' | '!' | '?') {
                    out.push(' ');
                }
            }
            Ok::<(), SpeechError>(())
        };
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            // Punctuation ends a clause only before a space or the end, so
            // "3.50" and "7:15" reach espeak whole.
            let at_break = chars.peek().is_none_or(|n| n.is_whitespace());
            match c {
                '.' | ',' | ';' | ':' | '!' | '?' if at_break => {
                    flush(&mut clause, Some(c), &mut out)?
                }
                '…' if at_break => flush(&mut clause, Some('.'), &mut out)?,
                '—' | '–' => flush(&mut clause, Some(','), &mut out)?,
                _ => clause.push(c),
            }
        }
        flush(&mut clause, None, &mut out)?;
        Ok(out.trim().to_string())
    }

    /// One inference. Blocking.
    fn infer(
        &self,
        slot: &mut onnx::PooledSession,
        ids: Vec<i64>,
        cancel: &Cancel,
    ) -> Result<Vec<i16>, SpeechError> {
        let n = ids.len();
        let input =
            Tensor::from_array(([1usize, n], ids)).map_err(|e| onnx::ort_error(ENGINE, e))?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64]))
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        let scales = Tensor::from_array(([3usize], self.scales.to_vec()))
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        if cancel.is_cancelled() {
            return Ok(Vec::new());
        }
        let session = slot.session()?;
        let inputs = ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales];
        let run_options = cancel.run_options();
        let outputs = match &run_options {
            Some(ro) => session.run_with_options(inputs, ro),
            None => session.run(inputs),
        };
        let outputs = match outputs {
            Ok(o) => o,
            Err(_) if cancel.is_cancelled() => return Ok(Vec::new()),
            Err(e) => return Err(onnx::ort_error(ENGINE, e)),
        };
        let (_, audio) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        let peak = audio.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = 32767.0 / peak.max(0.01);
        Ok(audio
            .iter()
            .map(|&v| (v * scale).clamp(-32768.0, 32767.0) as i16)
            .collect())
    }
}

impl Synthesizer for Piper {
    fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    fn pieces(&self, text: &str, first: bool) -> Vec<String> {
        let pieces = tts_stream::split_pieces(text, MAX_PIECE_CHARS);
        if first {
            tts_stream::shorten_first(pieces, FIRST_PIECE_CHARS)
        } else {
            pieces
        }
    }

    fn synthesize(
        self: Arc<Self>,
        text: String,
        cancel: Arc<Cancel>,
    ) -> BoxFuture<'static, Result<Vec<i16>, SpeechError>> {
        async move {
            let mut slot = self.pool.acquire().await?;
            tokio::task::spawn_blocking(move || {
                if cancel.is_cancelled() {
                    return Ok(Vec::new());
                }
                let ids = self.phoneme_ids(&text)?;
                self.infer(&mut slot, ids, &cancel)
            })
            .await
            .map_err(|e| onnx::ort_error(ENGINE, e))?
        }
        .boxed()
    }
}

#[async_trait]
impl Tts for PiperTts {
    fn sample_rate(&self) -> u32 {
        self.inner.config.audio.sample_rate
    }

    async fn stream(&self, _job: &JobContext) -> Result<TtsStream, StageError> {
        Ok(tts_stream::open(self.inner.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Terminating the run options stops an inference part way: a long
    /// sentence cancelled 20 ms in returns well before its normal time.
    /// (Needs the model cache, like the integration tests.)
    #[test]
    fn cancel_terminates_a_running_inference() {
        let cache = ModelCache::new(ModelCache::default_root());
        let tts = PiperTts::new(&cache).unwrap_or_else(|e| panic!("{e}"));
        let text = "This is a rather long sentence, made only to keep the voice busy \
                    for a good while, so that cancelling it part way can be seen.";
        let ids = tts.phoneme_ids(text).expect("ids");
        let piper = &tts.inner;

        let mut slot = piper.pool.acquire_blocking().expect("slot");
        let t = Instant::now();
        let full = piper
            .infer(&mut slot, ids.clone(), &Cancel::default())
            .expect("infer");
        let normal = t.elapsed();
        assert!(!full.is_empty());

        let cancel = Arc::new(Cancel::default());
        let c = cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c.cancel();
        });
        let t = Instant::now();
        let cut = piper
            .infer(&mut slot, ids, &cancel)
            .expect("cancelled run is not an error");
        let cancelled = t.elapsed();
        let _ = canceller.join();
        assert!(cut.is_empty(), "a cancelled run gives no audio");
        assert!(
            cancelled < normal / 2,
            "cancelled run took {cancelled:?}, a full one {normal:?}"
        );
    }
}
