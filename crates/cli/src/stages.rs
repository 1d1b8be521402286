//! Config → the engines a session runs on. Loading models reads files and
//! initialises runtimes, so it runs off the async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::session::Stages;
use agent::stage::{Llm, Stt, Tts, TurnDetector, VadFactory};
use anyhow::{Context, Result};
use speech::whisper::{WhisperModel, WhisperOptions, WhisperStt};
use speech::{
    FallbackStt, FallbackTts, InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts,
    InferenceTtsOptions, ModelCache,
};

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
    let stt = stt_chain(config, &cache, &process_env)?;
    let tts = tts_chain(config, &cache, &process_env)?;
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
    })
}

/// What the LiveKit Inference clients share with the LLM: the gateway's base
/// URL override (when the LLM goes through LiveKit too) and the token subject.
fn inference_options(config: &Config, connect_ms: u64, idle_ms: u64) -> InferenceOptions {
    let llm = &config.llm;
    InferenceOptions {
        base_url: (llm.backend == kimi::Backend::Livekit)
            .then(|| llm.base_url.clone())
            .flatten(),
        identity: llm.identity.clone(),
        connect_timeout: Duration::from_millis(connect_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        ..InferenceOptions::default()
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Reads credentials by variable name (tests pass their own).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn stt_engine(
    config: &Config,
    cache: &ModelCache,
    env: Env,
    engine: SttEngine,
) -> Result<Arc<dyn Stt>> {
    let c = &config.stt;
    Ok(match engine {
        SttEngine::Whisper => {
            let model = WhisperModel::load(cache).context("cannot load the whisper STT")?;
            let interim = c.interim_interval;
            let options = WhisperOptions {
                interim_interval: (interim > 0.0).then(|| Duration::from_secs_f64(interim)),
                ..WhisperOptions::default()
            };
            Arc::new(WhisperStt::new(Arc::new(model), options))
        }
        SttEngine::Livekit => {
            let options = InferenceSttOptions {
                model: c.model.clone(),
                language: non_empty(&c.language),
                extra: c.extra.clone(),
                common: inference_options(config, c.connect_timeout_ms, c.idle_timeout_ms),
            };
            Arc::new(
                InferenceStt::new(options, env)
                    .context("cannot set up the LiveKit Inference STT ([stt] in the config)")?,
            )
        }
    })
}

/// `[stt] engine` wrapped in its fallbacks, in order.
fn stt_chain(config: &Config, cache: &ModelCache, env: Env) -> Result<Arc<dyn Stt>> {
    let mut chain = vec![config.stt.engine];
    chain.extend(config.stt.fallback.iter().copied());
    let mut engines = chain.iter().rev();
    let Some(&last) = engines.next() else {
        anyhow::bail!("no STT engine");
    };
    let mut stt = stt_engine(config, cache, env, last)?;
    let mut after = last;
    for &engine in engines {
        let primary = stt_engine(config, cache, env, engine)?;
        stt = Arc::new(FallbackStt::new(
            primary,
            stt,
            (engine.as_str(), after.as_str()),
        ));
        after = engine;
    }
    Ok(stt)
}

fn tts_engine(
    config: &Config,
    cache: &ModelCache,
    env: Env,
    engine: TtsEngine,
) -> Result<Arc<dyn Tts>> {
    let c = &config.tts;
    Ok(match engine {
        TtsEngine::Piper => Arc::new(
            speech::PiperTts::new(cache)
                .context("cannot load the Piper TTS")?
                .with_speed(c.speed),
        ),
        TtsEngine::Espeak => {
            let voice = speech::EspeakVoice {
                name: c.voice.clone().unwrap_or_else(|| "en-us".into()),
                rate: (175.0 * c.speed).round() as u32,
                ..Default::default()
            };
            Arc::new(speech::EspeakTts::new(voice).context("cannot start espeak-ng")?)
        }
        TtsEngine::Livekit => {
            let options = InferenceTtsOptions {
                model: c.model.clone(),
                voice: c.voice.clone(),
                language: non_empty(&c.language),
                extra: c.extra.clone(),
                common: inference_options(config, c.connect_timeout_ms, c.idle_timeout_ms),
                ..InferenceTtsOptions::default()
            };
            Arc::new(
                InferenceTts::new(options, env)
                    .context("cannot set up the LiveKit Inference TTS ([tts] in the config)")?,
            )
        }
    })
}

/// `[tts] engine` wrapped in its fallbacks, in order.
fn tts_chain(config: &Config, cache: &ModelCache, env: Env) -> Result<Arc<dyn Tts>> {
    let mut chain = vec![config.tts.engine];
    chain.extend(config.tts.fallback.iter().copied());
    let mut engines = chain.iter().rev();
    let Some(&last) = engines.next() else {
        anyhow::bail!("no TTS engine");
    };
    let mut tts = tts_engine(config, cache, env, last)?;
    let mut after = last;
    for &engine in engines {
        let primary = tts_engine(config, cache, env, engine)?;
        tts = Arc::new(FallbackTts::new(
            primary,
            tts,
            (engine.as_str(), after.as_str()),
        ));
        after = engine;
    }
    Ok(tts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livekit_engines_need_credentials_and_name_the_variables() {
        let none = |_: &str| None;
        let cache = ModelCache::new(std::env::temp_dir().join("voice-agent-no-models"));
        let config = crate::config::parse("[stt]\nengine = \"livekit\"\n").expect("valid");
        let msg = format!(
            "{:#}",
            stt_chain(&config, &cache, &none)
                .err()
                .expect("no credentials")
        );
        assert!(msg.contains("LIVEKIT_API_KEY"), "{msg}");
        let config = crate::config::parse("[tts]\nengine = \"livekit\"\n").expect("valid");
        let msg = format!(
            "{:#}",
            tts_chain(&config, &cache, &none)
                .err()
                .expect("no credentials")
        );
        assert!(msg.contains("LIVEKIT_INFERENCE_API_SECRET"), "{msg}");
    }

    #[test]
    fn livekit_engines_build_with_credentials_and_chain_their_fallbacks() {
        let env = |k: &str| match k {
            "LIVEKIT_API_KEY" => Some("APIkey".to_string()),
            "LIVEKIT_API_SECRET" => Some("a-secret-of-some-length-0123456789".to_string()),
            _ => None,
        };
        let cache = ModelCache::new(std::env::temp_dir().join("voice-agent-no-models"));
        let config = crate::config::parse(
            "[tts]\nengine = \"livekit\"\nfallback = [\"espeak\"]\n[stt]\nengine = \"livekit\"\n",
        )
        .expect("valid");
        let tts = tts_chain(&config, &cache, &env).expect("tts");
        assert_eq!(
            tts.sample_rate(),
            24_000,
            "the cloud engine leads the chain"
        );
        let stt = stt_chain(&config, &cache, &env).expect("stt");
        assert_eq!(stt.sample_rate(), 16_000);
        // A fallback whose model files are missing fails at start-up, naming it.
        let config =
            crate::config::parse("[stt]\nengine = \"livekit\"\nfallback = [\"whisper\"]\n")
                .expect("valid");
        let msg = format!(
            "{:#}",
            stt_chain(&config, &cache, &env).err().expect("no whisper")
        );
        assert!(msg.contains("whisper"), "{msg}");
    }
}
