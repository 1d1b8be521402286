//! The `[llm]` section of `agent-config/agent.toml`: which endpoint, which
//! model, what extra request parameters, which fallbacks, and the timeouts and
//! retry budget. Plain data with serde defaults; [`crate::KimiLlm::new`]
//! validates it and resolves credentials.
//!
//! ```toml
//! [llm]
//! backend = "livekit"                   # livekit | baseten | openai-compatible
//! model = "moonshotai/kimi-k2-instruct"
//! provider = "baseten"                  # LiveKit Inference only: sent as a header
//! extra_kwargs = { temperature = 0.6, max_completion_tokens = 512 }
//!
//! [[llm.fallback]]
//! model = "moonshotai/kimi-k2.6"
//! ```

use serde::Deserialize;

/// LiveKit Inference's gateway, used when neither `base_url` nor
/// `LIVEKIT_INFERENCE_URL` says otherwise.
pub const LIVEKIT_INFERENCE_URL: &str = "https://agent-gateway.livekit.cloud/v1";
/// Baseten's OpenAI-compatible endpoint.
pub const BASETEN_URL: &str = "https://inference.baseten.co/v1";

/// Where requests go. Each speaks the same OpenAI chat-completions wire format;
/// they differ in base URL and authentication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// LiveKit Inference: a fresh HS256 JWT per request from
    /// `LIVEKIT_INFERENCE_API_KEY`/`_SECRET` (or `LIVEKIT_API_KEY`/`_SECRET`);
    /// base URL from `LIVEKIT_INFERENCE_URL` or the gateway's.
    #[default]
    Livekit,
    /// Baseten directly: bearer key from `BASETEN_API_KEY` (or `api_key_env`).
    Baseten,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, Ollama…): `base_url` is
    /// required; a bearer key is sent only when `api_key_env` is set.
    OpenaiCompatible,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Livekit => "livekit",
            Backend::Baseten => "baseten",
            Backend::OpenaiCompatible => "openai-compatible",
        }
    }
}

/// The `[llm]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KimiConfig {
    /// Which endpoint serves the model (default `livekit`).
    pub backend: Backend,
    /// The model id as the endpoint knows it, e.g. `moonshotai/kimi-k2-instruct`
    /// on LiveKit Inference or `moonshotai/Kimi-K2-Instruct` on Baseten.
    pub model: String,
    /// LiveKit Inference's upstream provider for the model (e.g. `baseten`),
    /// as LiveKit documents it. Sent only as the `X-LiveKit-Inference-Provider`
    /// header, never in the body; ignored by the other backends. When the key
    /// is absent from the section it is unset (the gateway chooses), even though
    /// [`KimiConfig::default`] sets `baseten`: a provider belongs to a model, so
    /// changing `model` must not silently keep the default's provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Overrides the backend's base URL (the part before `/chat/completions`).
    /// For `livekit` it also wins over `LIVEKIT_INFERENCE_URL`; required for
    /// `openai-compatible`.
    pub base_url: Option<String>,
    /// Name of the environment variable holding a bearer key, for `baseten`
    /// (default `BASETEN_API_KEY`) and `openai-compatible` (default: no key).
    /// Holds the variable's name, never the key.
    pub api_key_env: Option<String>,
    /// Extra top-level fields merged into every request body, e.g.
    /// `temperature`, `max_completion_tokens`, `tool_choice`,
    /// `parallel_tool_calls`. May not override `model`, `messages`, `tools`,
    /// `stream`, `stream_options` or `provider`.
    pub extra_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Other (backend, model) pairs tried in order when a request fails
    /// before its first token.
    pub fallback: Vec<FallbackConfig>,
    /// The JWT subject (identity) for LiveKit Inference.
    pub identity: String,
    /// Time allowed to open the TCP (and TLS) connection, per attempt.
    pub connect_timeout_ms: u64,
    /// Longest silence allowed while waiting for the response head and between
    /// two body chunks; a stream that stalls longer fails with a timeout.
    pub idle_timeout_ms: u64,
    /// Retries per target on connect errors, 429 and 5xx, before the first token.
    pub max_retries: u32,
    /// First retry delay; doubles per retry, with jitter.
    pub retry_base_delay_ms: u64,
    /// Cap on one retry delay, including a server's `Retry-After`: a longer
    /// `Retry-After` is not waited for (the next fallback is tried instead).
    pub retry_max_delay_ms: u64,
    /// Remove `<think>…</think>` blocks from the reply text.
    pub strip_think: bool,
}

/// One entry of `[[llm.fallback]]`. Unset fields other than `model` take the
/// primary's value where it makes sense (`backend` defaults to `livekit`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Endpoint for this fallback (default `livekit`).
    #[serde(default)]
    pub backend: Backend,
    /// Model id on that endpoint.
    pub model: String,
    /// LiveKit Inference upstream provider header, as for the primary.
    #[serde(default)]
    pub provider: Option<String>,
    /// Base URL override, as for the primary.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Bearer key variable name, as for the primary.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Body fields for this fallback; when unset the primary's `extra_kwargs`
    /// are used.
    #[serde(default)]
    pub extra_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for KimiConfig {
    /// The shipped configuration: Kimi K2 Instruct through LiveKit Inference,
    /// served by Baseten (the example LiveKit documents).
    fn default() -> Self {
        Self {
            backend: Backend::Livekit,
            model: "moonshotai/kimi-k2-instruct".to_string(),
            provider: Some("baseten".to_string()),
            base_url: None,
            api_key_env: None,
            extra_kwargs: serde_json::Map::new(),
            fallback: Vec::new(),
            identity: "agent".to_string(),
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 15_000,
            max_retries: 2,
            retry_base_delay_ms: 250,
            retry_max_delay_ms: 5_000,
            strip_think: true,
        }
    }
}

/// Body fields `extra_kwargs` may not set: the client owns them.
pub(crate) const RESERVED_BODY_KEYS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "stream",
    "stream_options",
    "provider",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_shipped_config() {
        let c = KimiConfig::default();
        assert_eq!(c.backend, Backend::Livekit);
        assert_eq!(c.model, "moonshotai/kimi-k2-instruct");
        assert_eq!(c.provider.as_deref(), Some("baseten"));
    }

    #[test]
    fn empty_section_is_the_default_without_a_provider() {
        let c: KimiConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            c,
            KimiConfig {
                provider: None,
                ..KimiConfig::default()
            }
        );
        let c: KimiConfig = serde_json::from_str(r#"{"model":"openai/gpt-4.1-mini"}"#).unwrap();
        assert_eq!(c.provider, None, "the default's provider is not inherited");
    }

    #[test]
    fn full_section_parses_and_unknown_keys_are_refused() {
        let c: KimiConfig = serde_json::from_value(serde_json::json!({
            "backend": "openai-compatible",
            "model": "kimi",
            "base_url": "http://127.0.0.1:8080/v1",
            "api_key_env": "MY_KEY",
            "extra_kwargs": {"temperature": 0.5, "tool_choice": "auto"},
            "fallback": [{"model": "moonshotai/kimi-k2.6"},
                         {"backend": "baseten", "model": "moonshotai/Kimi-K2-Instruct"}],
            "idle_timeout_ms": 100
        }))
        .unwrap();
        assert_eq!(c.backend, Backend::OpenaiCompatible);
        assert_eq!(c.fallback.len(), 2);
        assert_eq!(c.fallback[0].backend, Backend::Livekit);
        assert_eq!(c.fallback[1].backend, Backend::Baseten);
        assert_eq!(c.extra_kwargs["temperature"], 0.5);
        assert_eq!(c.idle_timeout_ms, 100);
        assert_eq!(c.max_retries, 2);

        let err = serde_json::from_str::<KimiConfig>(r#"{"modle":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
        let err = serde_json::from_str::<KimiConfig>(r#"{"backend":"azure"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"));
    }
}
