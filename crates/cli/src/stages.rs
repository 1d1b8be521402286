//! Config → the engines a session runs on. Loading models reads files and
//! initialises runtimes, so it runs off the async runtime.
//!
//! The local engines (whisper, Piper, espeak-ng, Silero VAD, Smart Turn) and
//! the model cache exist with feature `local-speech` only: everything that
//! depends on it sits in [`local`], which a build without the feature
//! replaces by one whose engines are start-up errors naming the config keys.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::session::Stages;
use agent::stage::{Llm, Stt, Tts, TurnDetector, VadFactory};
use anyhow::{Context, Result};
use speech::{
    FallbackStt, FallbackTts, InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts,
    InferenceTtsOptions,
};

use crate::config::{Config, SttEngine, TtsEngine, TurnDetectorKind, VadEngine};
use local::Models;

/// Where the local engines load their files from: `dir`, else the default
/// cache directory.
pub fn model_cache(dir: Option<PathBuf>) -> Models {
    local::model_cache(dir)
}

/// `download-files`: fetches every model file into the cache (`dir`, else
/// the config's `models.cache_dir`, else the default).
pub async fn download_files(config: &Config, dir: Option<PathBuf>) -> Result<()> {
    local::download_files(model_cache(dir.or(config.models.cache_dir.clone()))).await
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
    local::check(config)?;
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
        VadEngine::Silero => local::silero(config, &cache)?,
    };
    let turn_detector: Option<Arc<dyn TurnDetector>> = match config.turn.detector {
        TurnDetectorKind::None => None,
        TurnDetectorKind::SmartTurn => Some(local::smart_turn(config, &cache)?),
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
    cache: &Models,
    env: Env,
    engine: SttEngine,
) -> Result<Arc<dyn Stt>> {
    let c = &config.stt;
    Ok(match engine {
        SttEngine::Whisper => local::whisper(config, cache)?,
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
fn stt_chain(config: &Config, cache: &Models, env: Env) -> Result<Arc<dyn Stt>> {
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
    cache: &Models,
    env: Env,
    engine: TtsEngine,
) -> Result<Arc<dyn Tts>> {
    let c = &config.tts;
    Ok(match engine {
        TtsEngine::Piper => local::piper(config, cache)?,
        TtsEngine::Espeak => local::espeak(config)?,
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
fn tts_chain(config: &Config, cache: &Models, env: Env) -> Result<Arc<dyn Tts>> {
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

/// The local engines, loaded from the model cache.
#[cfg(feature = "local-speech")]
mod local {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use agent::stage::{Stt, Tts, TurnDetector, VadFactory};
    use anyhow::{Context, Result};
    use speech::whisper::{WhisperModel, WhisperOptions, WhisperStt};

    use crate::config::Config;

    pub type Models = speech::ModelCache;

    pub fn model_cache(dir: Option<PathBuf>) -> Models {
        Models::new(dir.unwrap_or_else(Models::default_root))
    }

    /// Every engine the config may name is built in.
    pub fn check(_config: &Config) -> Result<()> {
        Ok(())
    }

    pub async fn download_files(cache: Models) -> Result<()> {
        eprintln!("model cache: {}", cache.root().display());
        tokio::task::spawn_blocking(move || {
            cache.download(&[], &mut |line: &str| eprintln!("{line}"))
        })
        .await
        .context("download task failed")?
        .context("download-files failed")?;
        eprintln!("all model files are in place");
        Ok(())
    }

    pub fn whisper(config: &Config, cache: &Models) -> Result<Arc<dyn Stt>> {
        let model = WhisperModel::load(cache).context("cannot load the whisper STT")?;
        let interim = config.stt.interim_interval;
        let options = WhisperOptions {
            interim_interval: (interim > 0.0).then(|| Duration::from_secs_f64(interim)),
            ..WhisperOptions::default()
        };
        Ok(Arc::new(WhisperStt::new(Arc::new(model), options)))
    }

    pub fn piper(config: &Config, cache: &Models) -> Result<Arc<dyn Tts>> {
        Ok(Arc::new(
            speech::PiperTts::new(cache)
                .context("cannot load the Piper TTS")?
                .with_speed(config.tts.speed),
        ))
    }

    pub fn espeak(config: &Config) -> Result<Arc<dyn Tts>> {
        let c = &config.tts;
        let voice = speech::EspeakVoice {
            name: c.voice.clone().unwrap_or_else(|| "en-us".into()),
            rate: (175.0 * c.speed).round() as u32,
            ..Default::default()
        };
        Ok(Arc::new(
            speech::EspeakTts::new(voice).context("cannot start espeak-ng")?,
        ))
    }

    pub fn silero(_config: &Config, cache: &Models) -> Result<Arc<dyn VadFactory>> {
        Ok(Arc::new(
            speech::SileroVadFactory::new(cache).context("cannot load the Silero VAD")?,
        ))
    }

    pub fn smart_turn(config: &Config, cache: &Models) -> Result<Arc<dyn TurnDetector>> {
        let mut model =
            speech::SmartTurn::new(cache).context("cannot load the Smart Turn model")?;
        if let Some(t) = config.turn.unlikely_threshold {
            model = model.with_threshold(t);
        }
        Ok(Arc::new(model))
    }
}

/// A build without the `local-speech` feature: no model cache, and a local
/// engine in the config is an error at start naming the keys that ask for
/// one (all of them, so that one edit fixes the config).
#[cfg(not(feature = "local-speech"))]
mod local {
    use std::path::PathBuf;
    use std::sync::Arc;

    use agent::stage::{Stt, Tts, TurnDetector, VadFactory};
    use anyhow::Result;

    use crate::config::{Config, SttEngine, TtsEngine, TurnDetectorKind, VadEngine};

    /// Nothing to load from.
    pub struct Models;

    pub fn model_cache(_dir: Option<PathBuf>) -> Models {
        Models
    }

    /// The config keys naming a local engine, with their values.
    pub fn local_keys(config: &Config) -> Vec<String> {
        let mut keys = Vec::new();
        if config.stt.engine != SttEngine::Livekit {
            keys.push(format!("`stt.engine` = {:?}", config.stt.engine.as_str()));
        }
        let stt: Vec<&str> = (config.stt.fallback.iter())
            .filter(|&&e| e != SttEngine::Livekit)
            .map(|e| e.as_str())
            .collect();
        if !stt.is_empty() {
            keys.push(format!("`stt.fallback` = {stt:?}"));
        }
        if config.tts.engine != TtsEngine::Livekit {
            keys.push(format!("`tts.engine` = {:?}", config.tts.engine.as_str()));
        }
        let tts: Vec<&str> = (config.tts.fallback.iter())
            .filter(|&&e| e != TtsEngine::Livekit)
            .map(|e| e.as_str())
            .collect();
        if !tts.is_empty() {
            keys.push(format!("`tts.fallback` = {tts:?}"));
        }
        if config.vad.engine == VadEngine::Silero {
            keys.push("`vad.engine` = \"silero\"".into());
        }
        if config.turn.detector == TurnDetectorKind::SmartTurn {
            keys.push("`turn.detector` = \"smart-turn\"".into());
        }
        keys
    }

    fn not_built(config: &Config) -> anyhow::Error {
        let keys = local_keys(config);
        anyhow::anyhow!(
            "the config names local speech engines ({}; a key left out takes its local \
             default), but this program was built without the `local-speech` feature: use \
             \"livekit\" for `stt.engine`, `tts.engine` and their fallbacks, \
             `vad.engine = \"earshot\"` and `turn.detector = \"none\"`, or build with the \
             `local-speech` feature",
            keys.join(", ")
        )
    }

    /// Fails if the config names a local engine.
    pub fn check(config: &Config) -> Result<()> {
        if local_keys(config).is_empty() {
            Ok(())
        } else {
            Err(not_built(config))
        }
    }

    pub async fn download_files(_cache: Models) -> Result<()> {
        eprintln!(
            "nothing to download: this program was built without the `local-speech` feature, \
             so it has no local speech engines and needs no model files"
        );
        Ok(())
    }

    pub fn whisper(config: &Config, _cache: &Models) -> Result<Arc<dyn Stt>> {
        Err(not_built(config))
    }

    pub fn piper(config: &Config, _cache: &Models) -> Result<Arc<dyn Tts>> {
        Err(not_built(config))
    }

    pub fn espeak(config: &Config) -> Result<Arc<dyn Tts>> {
        Err(not_built(config))
    }

    pub fn silero(config: &Config, _cache: &Models) -> Result<Arc<dyn VadFactory>> {
        Err(not_built(config))
    }

    pub fn smart_turn(config: &Config, _cache: &Models) -> Result<Arc<dyn TurnDetector>> {
        Err(not_built(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livekit_engines_need_credentials_and_name_the_variables() {
        let none = |_: &str| None;
        let cache = model_cache(Some(std::env::temp_dir().join("voice-agent-no-models")));
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

    fn env(k: &str) -> Option<String> {
        match k {
            "LIVEKIT_API_KEY" => Some("APIkey".to_string()),
            "LIVEKIT_API_SECRET" => Some("a-secret-of-some-length-0123456789".to_string()),
            _ => None,
        }
    }

    #[cfg(feature = "local-speech")]
    #[test]
    fn livekit_engines_build_with_credentials_and_chain_their_fallbacks() {
        let cache = model_cache(Some(std::env::temp_dir().join("voice-agent-no-models")));
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

    #[cfg(not(feature = "local-speech"))]
    #[test]
    fn local_engines_fail_at_start_naming_the_keys_and_the_feature() {
        // The built-in defaults are local.
        let msg = format!("{:#}", local::check(&Config::default()).unwrap_err());
        for part in [
            "`stt.engine` = \"whisper\", `tts.engine` = \"piper\", \
             `turn.detector` = \"smart-turn\";",
            "built without the `local-speech` feature",
        ] {
            assert!(msg.contains(part), "{part} in {msg}");
        }

        let config = crate::config::parse(
            "[stt]\nengine = \"livekit\"\nfallback = [\"whisper\"]\n\
             [tts]\nengine = \"livekit\"\nfallback = [\"piper\", \"espeak\"]\n\
             [vad]\nengine = \"silero\"\n[turn]\ndetector = \"none\"\n",
        )
        .expect("valid");
        assert_eq!(
            local::local_keys(&config),
            [
                "`stt.fallback` = [\"whisper\"]",
                "`tts.fallback` = [\"piper\", \"espeak\"]",
                "`vad.engine` = \"silero\"",
            ]
        );
        assert!(local::check(&config).is_err());
        // A chain built without the check fails the same way.
        let cache = model_cache(None);
        let msg = format!(
            "{:#}",
            stt_chain(&config, &cache, &env).err().expect("no whisper")
        );
        assert!(msg.contains("`stt.fallback` = [\"whisper\"]"), "{msg}");
        assert!(msg.contains("`local-speech`"), "{msg}");
    }

    #[cfg(not(feature = "local-speech"))]
    #[test]
    fn cloud_only_config_builds_without_local_speech() {
        let cache = model_cache(None);
        let config = crate::config::parse(
            "[stt]\nengine = \"livekit\"\n[tts]\nengine = \"livekit\"\n\
             [turn]\ndetector = \"none\"\n",
        )
        .expect("valid");
        local::check(&config).expect("nothing local");
        assert_eq!(
            stt_chain(&config, &cache, &env).expect("stt").sample_rate(),
            16_000
        );
        assert_eq!(
            tts_chain(&config, &cache, &env).expect("tts").sample_rate(),
            24_000
        );
    }
}
