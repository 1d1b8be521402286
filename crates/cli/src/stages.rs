//! Config → the engines a session runs on. Loading models reads files and
//! initialises runtimes, so it runs off the async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::chat::ToolSet;
use agent::session::Stages;
use agent::stage::{Llm, Stt, Tts, TurnDetector, VadFactory};
use anyhow::{Context, Result};
use speech::ModelCache;
use speech::whisper::{WhisperModel, WhisperOptions, WhisperStt};

use crate::config::{Config, SttEngine, TtsEngine, TurnDetectorKind, VadEngine};

pub fn model_cache(dir: Option<PathBuf>) -> ModelCache {
    ModelCache::new(dir.unwrap_or_else(ModelCache::default_root))
}

pub fn llm(config: &Config) -> Result<Arc<dyn Llm>> {
    let llm = kimi::KimiLlm::new(&config.llm, &|k| std::env::var(k).ok())
        .context("cannot set up the LLM ([llm] in the config)")?;
    Ok(Arc::new(llm))
}

/// Just the LLM: typed turns in, text out.
pub fn text_only(config: &Config) -> Result<Stages> {
    Ok(Stages {
        llm: llm(config)?,
        stt: None,
        tts: None,
        vad: None,
        turn_detector: None,
        tools: ToolSet::new(),
    })
}

/// Every stage the config names.
pub async fn build(config: &Config) -> Result<Stages> {
    let llm = llm(config)?;
    let config = config.clone();
    tokio::task::spawn_blocking(move || load_speech(&config, llm))
        .await
        .context("model loading task failed")?
}

fn load_speech(config: &Config, llm: Arc<dyn Llm>) -> Result<Stages> {
    let cache = model_cache(config.models.cache_dir.clone());
    let stt: Arc<dyn Stt> = match config.stt.engine {
        SttEngine::Whisper => {
            let model = WhisperModel::load(&cache).context("cannot load the whisper STT")?;
            let interim = config.stt.interim_interval;
            let options = WhisperOptions {
                interim_interval: (interim > 0.0).then(|| Duration::from_secs_f64(interim)),
                ..WhisperOptions::default()
            };
            Arc::new(WhisperStt::new(Arc::new(model), options))
        }
    };
    let tts: Arc<dyn Tts> = match config.tts.engine {
        TtsEngine::Piper => Arc::new(
            speech::PiperTts::new(&cache)
                .context("cannot load the Piper TTS")?
                .with_speed(config.tts.speed),
        ),
        TtsEngine::Espeak => {
            let voice = speech::EspeakVoice {
                name: config.tts.voice.clone(),
                rate: (175.0 * config.tts.speed).round() as u32,
                ..Default::default()
            };
            Arc::new(speech::EspeakTts::new(voice).context("cannot start espeak-ng")?)
        }
    };
    let vad: Arc<dyn VadFactory> = match config.vad.engine {
        VadEngine::Earshot => Arc::new(speech::EarshotVadFactory),
        VadEngine::Silero => {
            Arc::new(speech::SileroVadFactory::new(&cache).context("cannot load the Silero VAD")?)
        }
    };
    let turn_detector: Option<Arc<dyn TurnDetector>> = match config.turn.detector {
        TurnDetectorKind::None => None,
        TurnDetectorKind::SmartTurn => {
            let mut model =
                speech::SmartTurn::new(&cache).context("cannot load the Smart Turn model")?;
            if let Some(t) = config.turn.unlikely_threshold {
                model = model.with_threshold(t);
            }
            Some(Arc::new(model))
        }
    };
    Ok(Stages {
        llm,
        stt: Some(stt),
        tts: Some(tts),
        vad: Some(vad),
        turn_detector,
        tools: ToolSet::new(),
    })
}
