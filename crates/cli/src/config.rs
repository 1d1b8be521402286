//! `agent-config/agent.toml`: what the agent says and hears with, and how it
//! takes turns. Every section is optional and defaults to the shipped values;
//! an unknown key, a wrong type or a bad value is an error naming the key and
//! the file. Secrets never live here: only in environment variables.
//!
//! One file (~600 lines before its tests): each section's type, its defaults
//! and its checks in `validate` are read side by side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::HistoryLimit;
use agent::session::{SessionOptions, ToolOptions};
use agent::turn::TurnOptions;
use agent::vad::VadOptions;
use anyhow::{Context, bail};
use serde::Deserialize;

/// Where the config is looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "agent-config/agent.toml";

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The system prompt.
    pub instructions: String,
    pub llm: kimi::KimiConfig,
    pub stt: SttConfig,
    pub tts: TtsConfig,
    pub vad: VadConfig,
    pub turn: TurnConfig,
    pub interruption: InterruptionConfig,
    pub session: SessionConfig,
    pub models: ModelsConfig,
    pub worker: WorkerConfig,
    /// `[[mcp]]`: MCP servers whose tools the stock agent offers.
    pub mcp: Vec<mcp::McpServerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instructions: "You are a helpful voice assistant. Answer in one or two short \
                           sentences of plain spoken English: no lists, no markdown, no emoji."
                .into(),
            llm: kimi::KimiConfig::default(),
            stt: SttConfig::default(),
            tts: TtsConfig::default(),
            vad: VadConfig::default(),
            turn: TurnConfig::default(),
            interruption: InterruptionConfig::default(),
            session: SessionConfig::default(),
            models: ModelsConfig::default(),
            worker: WorkerConfig::default(),
            mcp: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SttEngine {
    /// Local whisper tiny.en (needs `voice-agent download-files`).
    Whisper,
    /// LiveKit Inference (streaming, e.g. `deepgram/nova-3`), with the LLM's
    /// credentials.
    Livekit,
}

impl SttEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            SttEngine::Whisper => "whisper",
            SttEngine::Livekit => "livekit",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SttConfig {
    pub engine: SttEngine,
    /// Seconds between interim transcripts while the user speaks; 0 for
    /// final transcripts only (engine `whisper`).
    pub interim_interval: f64,
    /// The model on LiveKit Inference (engine `livekit`).
    pub model: String,
    /// Language code sent to the provider; "" lets it detect (engine `livekit`).
    pub language: String,
    /// Provider options sent as-is (engine `livekit`).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Engines tried in order when the one before fails (e.g. `["whisper"]`).
    pub fallback: Vec<SttEngine>,
    /// Time allowed to open the websocket (engine `livekit`).
    pub connect_timeout_ms: u64,
    /// Longest wait for an answer the provider owes before reconnecting.
    pub idle_timeout_ms: u64,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            engine: SttEngine::Whisper,
            interim_interval: 1.0,
            model: "deepgram/nova-3".into(),
            language: "en".into(),
            extra: serde_json::Map::new(),
            fallback: Vec::new(),
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtsEngine {
    /// Local Piper voice (needs `voice-agent download-files`).
    Piper,
    /// espeak-ng: robotic, but no download at all.
    Espeak,
    /// LiveKit Inference (streaming, e.g. `cartesia/sonic-2`), with the LLM's
    /// credentials.
    Livekit,
}

impl TtsEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            TtsEngine::Piper => "piper",
            TtsEngine::Espeak => "espeak",
            TtsEngine::Livekit => "livekit",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    pub engine: TtsEngine,
    /// The voice: an espeak-ng voice name (engine `espeak`, default
    /// `en-us`), or the provider's voice id (engine `livekit`, default the
    /// provider's).
    pub voice: Option<String>,
    /// Speaking rate of the local engines: 1.0 is the voice's own.
    pub speed: f32,
    /// Sample rate of the agent's audio output.
    pub output_sample_rate: u32,
    /// The model on LiveKit Inference (engine `livekit`).
    pub model: String,
    /// Language code sent to the provider; "" for the provider's default.
    pub language: String,
    /// Provider options sent as-is (engine `livekit`).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Engines tried in order when the one before fails (e.g. `["piper"]`).
    pub fallback: Vec<TtsEngine>,
    /// Time allowed to open the websocket (engine `livekit`).
    pub connect_timeout_ms: u64,
    /// Longest silence from the provider while audio is owed.
    pub idle_timeout_ms: u64,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            engine: TtsEngine::Piper,
            voice: None,
            speed: 1.0,
            output_sample_rate: 24_000,
            model: "cartesia/sonic-2".into(),
            language: "en".into(),
            extra: serde_json::Map::new(),
            fallback: Vec::new(),
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VadEngine {
    /// Pure Rust, weights built in.
    Earshot,
    /// Silero VAD (needs `voice-agent download-files`).
    Silero,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    pub engine: VadEngine,
    pub activation_threshold: f32,
    pub deactivation_threshold: f32,
    /// Seconds of voice before speech counts as started.
    pub min_speech_duration: f64,
    /// Seconds of silence before speech counts as ended.
    pub min_silence_duration: f64,
}

impl Default for VadConfig {
    fn default() -> Self {
        let d = VadOptions::default();
        Self {
            engine: VadEngine::Earshot,
            activation_threshold: d.activation_threshold,
            deactivation_threshold: d.deactivation_threshold,
            min_speech_duration: d.min_speech_duration.as_secs_f64(),
            min_silence_duration: d.min_silence_duration.as_secs_f64(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TurnDetectorKind {
    /// Smart Turn v3.2 on the user's audio (needs `voice-agent download-files`).
    SmartTurn,
    /// Endpointing by silence alone (`min_endpointing_delay`).
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    pub detector: TurnDetectorKind,
    /// Below this end-of-turn probability the turn is judged unfinished.
    pub unlikely_threshold: Option<f32>,
    /// Seconds of silence before a likely-finished turn is committed.
    pub min_endpointing_delay: f64,
    /// Seconds of silence before a likely-unfinished turn is committed.
    pub max_endpointing_delay: f64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let d = TurnOptions::default();
        Self {
            detector: TurnDetectorKind::SmartTurn,
            unlikely_threshold: None,
            min_endpointing_delay: d.min_endpointing_delay.as_secs_f64(),
            max_endpointing_delay: d.max_endpointing_delay.as_secs_f64(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterruptionConfig {
    pub enabled: bool,
    /// Seconds of user speech that interrupt the agent.
    pub min_duration: f64,
    /// Words the user must say to interrupt (0: any speech).
    pub min_words: usize,
    /// Resume a paused reply when the user said no words within this many
    /// seconds of falling silent.
    pub false_interruption_timeout: f64,
    pub resume_false_interruption: bool,
}

impl Default for InterruptionConfig {
    fn default() -> Self {
        let d = TurnOptions::default();
        Self {
            enabled: d.allow_interruptions,
            min_duration: d.min_interruption_duration.as_secs_f64(),
            min_words: d.min_interruption_words,
            false_interruption_timeout: d
                .false_interruption_timeout
                .map_or(2.0, |t| t.as_secs_f64()),
            resume_false_interruption: d.false_interruption_timeout.is_some(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Said as is once the user can hear it (their audio is subscribed, or
    /// the console session starts), before they speak; "" says nothing.
    pub greeting: String,
    /// Tool-call rounds per reply; the answer after the last is words only.
    pub max_tool_steps: usize,
    /// Seconds a tool call may run (MCP servers set their own `timeout`).
    pub tool_timeout: f64,
    /// Tool calls of one step that run.
    pub max_tool_calls_per_step: usize,
    /// A longer tool result is cut before the model reads it.
    pub max_tool_result_chars: usize,
    /// The history keeps at most this many messages (0: no bound); the
    /// oldest turns go first, the instructions and call/result pairs stay.
    pub max_history_messages: usize,
    /// … and at most this many characters (0: no bound).
    pub max_history_chars: usize,
    /// Spoken when the LLM fails before saying anything ("" says nothing).
    pub error_message: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let d = SessionOptions::default();
        Self {
            greeting: String::new(),
            max_tool_steps: d.max_tool_steps,
            tool_timeout: d.tools.timeout.as_secs_f64(),
            max_tool_calls_per_step: d.tools.max_calls_per_step,
            max_tool_result_chars: d.tools.max_result_chars,
            max_history_messages: d.history.max_messages.unwrap_or(0),
            max_history_chars: d.history.max_chars.unwrap_or(0),
            error_message: d.error_message,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Model cache directory; default `$VOICE_AGENT_CACHE`, else the XDG
    /// cache directory.
    pub cache_dir: Option<PathBuf>,
}

/// `voice-agent start` / `dev` / `connect`: how the worker takes jobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Empty: automatic dispatch to every new room; else explicit dispatch
    /// only. `LIVEKIT_AGENT_NAME` overrides it.
    pub agent_name: String,
    /// Sessions one process runs at most.
    pub max_sessions: usize,
    /// CPU load (0–1) at or above which the worker reports itself full.
    pub load_threshold: f32,
    /// Seconds running sessions get to finish after SIGTERM/SIGINT.
    pub drain_timeout: f64,
    /// Health (`/`) and metrics (`/metrics`) HTTP port; 0 disables it.
    pub http_port: u16,
    /// End the session when the user leaves the room.
    pub end_on_user_leave: bool,
    /// Talk to this participant only; "" links to the first person who
    /// joins (a standard client, a SIP caller or a connector).
    pub participant_identity: String,
    /// Local UDP addresses for media; empty: every interface (loopback only
    /// when the server URL is on loopback).
    pub udp_addrs: Vec<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            agent_name: String::new(),
            max_sessions: 20,
            load_threshold: 0.7,
            drain_timeout: 600.0,
            http_port: 8081,
            end_on_user_leave: true,
            participant_identity: String::new(),
            udp_addrs: Vec::new(),
        }
    }
}

/// A config file and where it came from.
pub struct Loaded {
    pub config: Config,
    /// `None`: no file, built-in defaults.
    pub path: Option<PathBuf>,
}

/// Loads `path`, or [`DEFAULT_PATH`] if it exists, or the defaults.
pub fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    if !required && !path.exists() {
        return Ok(Loaded {
            config: Config::default(),
            path: None,
        });
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let config = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Loaded {
        config,
        path: Some(path),
    })
}

/// Parses and validates config text. Errors name the offending key.
pub fn parse(text: &str) -> anyhow::Result<Config> {
    let config: Config = toml::from_str(text).map_err(|e| {
        // toml's message already names the key and shows the line.
        anyhow::anyhow!("{}", e.to_string().trim_end())
    })?;
    validate(&config)?;
    Ok(config)
}

fn check_seconds(key: &str, v: f64, max: f64) -> anyhow::Result<()> {
    if !v.is_finite() || v < 0.0 || v > max {
        bail!("key `{key}`: {v} is out of range (0 to {max} seconds)");
    }
    Ok(())
}

fn check_unit(key: &str, v: f32) -> anyhow::Result<()> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        bail!("key `{key}`: {v} is out of range (0 to 1)");
    }
    Ok(())
}

/// The engine chain `[engine, fallback…]` has no repeats; a cloud engine
/// has a model; timeouts are sane.
#[allow(clippy::too_many_arguments)]
fn check_speech_stage(
    stage: &str,
    engine: &str,
    fallback: &[&str],
    cloud: bool,
    model: &str,
    connect_timeout_ms: u64,
    idle_timeout_ms: u64,
) -> anyhow::Result<()> {
    let mut seen = vec![engine];
    for f in fallback {
        if seen.contains(f) {
            bail!(
                "key `{stage}.fallback`: engine {f:?} is already in the chain ({stage}.engine and the fallbacks before it)"
            );
        }
        seen.push(f);
    }
    let uses_cloud = cloud || fallback.contains(&"livekit");
    if uses_cloud && model.trim().is_empty() {
        bail!("key `{stage}.model`: must name a LiveKit Inference model for engine \"livekit\"");
    }
    if !(100..=60_000).contains(&connect_timeout_ms) {
        bail!(
            "key `{stage}.connect_timeout_ms`: {connect_timeout_ms} is out of range (100 to 60000)"
        );
    }
    if !(100..=120_000).contains(&idle_timeout_ms) {
        bail!("key `{stage}.idle_timeout_ms`: {idle_timeout_ms} is out of range (100 to 120000)");
    }
    Ok(())
}

fn validate(c: &Config) -> anyhow::Result<()> {
    mcp::validate_all(&c.mcp).map_err(|e| anyhow::anyhow!("key `{e}`"))?;
    check_seconds("stt.interim_interval", c.stt.interim_interval, 30.0)?;
    let stt_fallback: Vec<&str> = c.stt.fallback.iter().map(|e| e.as_str()).collect();
    check_speech_stage(
        "stt",
        c.stt.engine.as_str(),
        &stt_fallback,
        c.stt.engine == SttEngine::Livekit,
        &c.stt.model,
        c.stt.connect_timeout_ms,
        c.stt.idle_timeout_ms,
    )?;
    let tts_fallback: Vec<&str> = c.tts.fallback.iter().map(|e| e.as_str()).collect();
    check_speech_stage(
        "tts",
        c.tts.engine.as_str(),
        &tts_fallback,
        c.tts.engine == TtsEngine::Livekit,
        &c.tts.model,
        c.tts.connect_timeout_ms,
        c.tts.idle_timeout_ms,
    )?;
    if c.tts.voice.as_deref().is_some_and(|v| v.trim().is_empty()) {
        bail!("key `tts.voice`: must not be empty (leave it out for the default voice)");
    }
    check_unit("vad.activation_threshold", c.vad.activation_threshold)?;
    check_unit("vad.deactivation_threshold", c.vad.deactivation_threshold)?;
    if c.vad.deactivation_threshold > c.vad.activation_threshold {
        bail!("key `vad.deactivation_threshold`: must not exceed vad.activation_threshold");
    }
    check_seconds("vad.min_speech_duration", c.vad.min_speech_duration, 5.0)?;
    check_seconds("vad.min_silence_duration", c.vad.min_silence_duration, 5.0)?;
    check_seconds(
        "turn.min_endpointing_delay",
        c.turn.min_endpointing_delay,
        30.0,
    )?;
    check_seconds(
        "turn.max_endpointing_delay",
        c.turn.max_endpointing_delay,
        30.0,
    )?;
    if c.turn.min_endpointing_delay > c.turn.max_endpointing_delay {
        bail!("key `turn.min_endpointing_delay`: must not exceed turn.max_endpointing_delay");
    }
    if let Some(t) = c.turn.unlikely_threshold {
        check_unit("turn.unlikely_threshold", t)?;
    }
    check_seconds(
        "interruption.min_duration",
        c.interruption.min_duration,
        10.0,
    )?;
    check_seconds(
        "interruption.false_interruption_timeout",
        c.interruption.false_interruption_timeout,
        30.0,
    )?;
    if !(0.25..=4.0).contains(&c.tts.speed) {
        bail!(
            "key `tts.speed`: {} is out of range (0.25 to 4)",
            c.tts.speed
        );
    }
    if !(8_000..=48_000).contains(&c.tts.output_sample_rate) {
        bail!(
            "key `tts.output_sample_rate`: {} is out of range (8000 to 48000)",
            c.tts.output_sample_rate
        );
    }
    if c.worker.max_sessions == 0 || c.worker.max_sessions > 10_000 {
        bail!(
            "key `worker.max_sessions`: {} is out of range (1 to 10000)",
            c.worker.max_sessions
        );
    }
    if !c.worker.load_threshold.is_finite()
        || c.worker.load_threshold <= 0.0
        || c.worker.load_threshold > 1.0
    {
        bail!(
            "key `worker.load_threshold`: {} is out of range (above 0, at most 1)",
            c.worker.load_threshold
        );
    }
    check_seconds("worker.drain_timeout", c.worker.drain_timeout, 86_400.0)?;
    if c.session.max_tool_steps > 100 {
        bail!(
            "key `session.max_tool_steps`: {} is more than 100",
            c.session.max_tool_steps
        );
    }
    if !c.session.tool_timeout.is_finite()
        || c.session.tool_timeout < 0.1
        || c.session.tool_timeout > 3600.0
    {
        bail!(
            "key `session.tool_timeout`: {} is out of range (0.1 to 3600 seconds)",
            c.session.tool_timeout
        );
    }
    if !(1..=64).contains(&c.session.max_tool_calls_per_step) {
        bail!(
            "key `session.max_tool_calls_per_step`: {} is out of range (1 to 64)",
            c.session.max_tool_calls_per_step
        );
    }
    if !(100..=1_000_000).contains(&c.session.max_tool_result_chars) {
        bail!(
            "key `session.max_tool_result_chars`: {} is out of range (100 to 1000000)",
            c.session.max_tool_result_chars
        );
    }
    Ok(())
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

impl Config {
    pub fn session_options(&self) -> SessionOptions {
        let i = &self.interruption;
        SessionOptions {
            agent: agent::Agent::new(self.instructions.clone()),
            turn: TurnOptions {
                min_endpointing_delay: secs(self.turn.min_endpointing_delay),
                max_endpointing_delay: secs(self.turn.max_endpointing_delay),
                allow_interruptions: i.enabled,
                min_interruption_duration: secs(i.min_duration),
                min_interruption_words: i.min_words,
                false_interruption_timeout: i
                    .resume_false_interruption
                    .then(|| secs(i.false_interruption_timeout)),
            },
            vad: VadOptions {
                activation_threshold: self.vad.activation_threshold,
                deactivation_threshold: self.vad.deactivation_threshold,
                min_speech_duration: secs(self.vad.min_speech_duration),
                min_silence_duration: secs(self.vad.min_silence_duration),
            },
            max_tool_steps: self.session.max_tool_steps,
            tools: ToolOptions {
                timeout: secs(self.session.tool_timeout),
                max_calls_per_step: self.session.max_tool_calls_per_step,
                max_result_chars: self.session.max_tool_result_chars,
            },
            history: HistoryLimit {
                max_messages: (self.session.max_history_messages > 0)
                    .then_some(self.session.max_history_messages),
                max_chars: (self.session.max_history_chars > 0)
                    .then_some(self.session.max_history_chars),
            },
            error_message: self.session.error_message.clone(),
            ..SessionOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_matches_the_defaults_it_documents() {
        let text = include_str!("../../../agent-config/agent.toml");
        let c = parse(text).expect("shipped config is valid");
        assert_eq!(c.llm.model, "moonshotai/kimi-k2.6");
        assert_eq!(c.llm.provider.as_deref(), Some("baseten"));
        assert_eq!(c.stt.engine, SttEngine::Whisper);
        assert_eq!(c.tts.engine, TtsEngine::Piper);
        assert_eq!(c.turn.detector, TurnDetectorKind::SmartTurn);
        let o = c.session_options();
        assert_eq!(o.turn, TurnOptions::default());
        assert_eq!(o.max_tool_steps, 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[turn]\nmin_delay = 0.5\n").expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.contains("min_delay"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("[interruption]\nmin_words = \"two\"\n").expect_err("wrong type");
        let msg = e.to_string();
        assert!(msg.contains("min_words"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            (
                "[turn]\nmin_endpointing_delay = 4.0\n",
                "turn.min_endpointing_delay",
            ),
            (
                "[vad]\nactivation_threshold = 1.5\n",
                "vad.activation_threshold",
            ),
            (
                "[interruption]\nmin_duration = -1.0\n",
                "interruption.min_duration",
            ),
            ("[tts]\nengine = \"festival\"\n", "festival"),
            ("[llm]\nbackend = \"nope\"\n", "nope"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains(key), "{text} → {msg}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[stt]\nengine = \"deepgram\"\n").expect("write");
        let msg = load(Some(&path)).err().expect("invalid").to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("deepgram"), "{msg}");
        let missing = dir.path().join("nope.toml");
        let msg = format!("{:#}", load(Some(&missing)).err().expect("missing"));
        assert!(msg.contains("nope.toml"), "{msg}");
    }

    #[test]
    fn worker_section_parses_and_is_checked() {
        let c = parse("[worker]\nagent_name = \"kimi\"\nmax_sessions = 3\nhttp_port = 9000\n")
            .expect("valid");
        assert_eq!(c.worker.agent_name, "kimi");
        assert_eq!(c.worker.max_sessions, 3);
        assert_eq!(c.worker.http_port, 9000);
        assert!((c.worker.load_threshold - 0.7).abs() < 1e-6);
        for (text, key) in [
            ("[worker]\nmax_sessions = 0\n", "worker.max_sessions"),
            ("[worker]\nload_threshold = 1.5\n", "worker.load_threshold"),
            ("[worker]\ndrain_timeout = -1.0\n", "worker.drain_timeout"),
            ("[worker]\nsessions = 2\n", "sessions"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains(key), "{text} → {msg}");
        }
    }

    #[test]
    fn livekit_speech_sections_parse() {
        let c = parse(
            "[stt]\nengine = \"livekit\"\nmodel = \"assemblyai/universal-streaming\"\n\
             language = \"fr\"\nfallback = [\"whisper\"]\n[stt.extra]\nformat_turns = true\n\
             [tts]\nengine = \"livekit\"\nmodel = \"elevenlabs/eleven_flash_v2_5\"\n\
             voice = \"Xb7hH8MSUJpSbSDYk0k2\"\nfallback = [\"piper\", \"espeak\"]\n\
             idle_timeout_ms = 3000\n",
        )
        .expect("valid");
        assert_eq!(c.stt.engine, SttEngine::Livekit);
        assert_eq!(c.stt.model, "assemblyai/universal-streaming");
        assert_eq!(c.stt.language, "fr");
        assert_eq!(c.stt.fallback, vec![SttEngine::Whisper]);
        assert_eq!(c.stt.extra["format_turns"], true);
        assert_eq!(c.tts.engine, TtsEngine::Livekit);
        assert_eq!(c.tts.voice.as_deref(), Some("Xb7hH8MSUJpSbSDYk0k2"));
        assert_eq!(c.tts.fallback, vec![TtsEngine::Piper, TtsEngine::Espeak]);
        assert_eq!(c.tts.idle_timeout_ms, 3000);
        // The defaults name the models the examples use.
        let d = Config::default();
        assert_eq!(d.stt.model, "deepgram/nova-3");
        assert_eq!(d.tts.model, "cartesia/sonic-2");
    }

    #[test]
    fn bad_speech_chains_are_named() {
        for (text, key) in [
            (
                "[stt]\nengine = \"livekit\"\nfallback = [\"livekit\"]\n",
                "stt.fallback",
            ),
            (
                "[tts]\nengine = \"piper\"\nfallback = [\"espeak\", \"espeak\"]\n",
                "tts.fallback",
            ),
            ("[stt]\nengine = \"livekit\"\nmodel = \"\"\n", "stt.model"),
            (
                "[tts]\nfallback = [\"livekit\"]\nmodel = \" \"\n",
                "tts.model",
            ),
            ("[tts]\nconnect_timeout_ms = 0\n", "tts.connect_timeout_ms"),
            ("[stt]\nidle_timeout_ms = 10\n", "stt.idle_timeout_ms"),
            ("[tts]\nvoice = \"\"\n", "tts.voice"),
            ("[stt]\nfallback = [\"deepgram\"]\n", "deepgram"),
            ("[tts]\nprovider = \"cartesia\"\n", "provider"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains(key), "{text} → {msg}");
        }
    }

    #[test]
    fn mcp_servers_and_session_keys_parse_and_are_checked() {
        let c = parse(
            "[session]\ngreeting = \"Welcome!\"\ntool_timeout = 5.0\nmax_history_messages = 0\n\
             [[mcp]]\nname = \"everything\"\ncommand = \"node\"\nargs = [\"dist/index.js\", \"stdio\"]\n\
             allowed_tools = [\"get-sum\"]\ntimeout = 10.0\n\
             [[mcp]]\nname = \"remote\"\nurl = \"http://127.0.0.1:3001/mcp\"\n\
             headers = { Authorization = \"env:MCP_TOKEN\" }\n",
        )
        .expect("valid");
        assert_eq!(c.mcp.len(), 2);
        assert_eq!(c.mcp[0].name, "everything");
        assert_eq!(c.mcp[1].url.as_deref(), Some("http://127.0.0.1:3001/mcp"));
        assert_eq!(c.session.greeting, "Welcome!");
        let o = c.session_options();
        assert_eq!(o.tools.timeout, Duration::from_secs(5));
        assert_eq!(o.history.max_messages, None, "0 is no bound");
        for (text, key) in [
            ("[[mcp]]\nname = \"x\"\n", "mcp[0]"),
            (
                "[[mcp]]\nname = \"x\"\ncommand = \"a\"\n[[mcp]]\nname = \"x\"\ncommand = \"b\"\n",
                "mcp[1].name",
            ),
            ("[[mcp]]\nname = \"x\"\ncommand = \"a\"\nport = 1\n", "port"),
            ("[session]\ntool_timeout = 0.0\n", "session.tool_timeout"),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains(key), "{text} → {msg}");
        }
    }

    #[test]
    fn no_resume_disables_the_false_interruption_timer() {
        let c = parse("[interruption]\nresume_false_interruption = false\n").expect("valid");
        assert_eq!(c.session_options().turn.false_interruption_timeout, None);
    }
}
