//! The `[llm]` section of `agent-config/agent.toml`: which endpoint, which
//! model, thinking on or off, what extra request parameters, which fallbacks,
//! and the timeouts and retry budget. Plain data with serde defaults;
//! [`crate::KimiLlm::new`] validates it and resolves credentials.
//!
//! ```toml
//! [llm]
//! backend = "livekit"                   # livekit | baseten | openai-compatible
//! model = "moonshotai/kimi-k2.6"
//! provider = "baseten"                  # LiveKit Inference only: sent as a header
//! thinking = false                      # unset: the model's (and server's) default
//! # thinking_format = "baseten"         # moonshot | chat-template-kwargs | baseten
//! extra_kwargs = { max_completion_tokens = 512 }
//!
//! [[llm.fallback]]
//! backend = "openai-compatible"
//! model = "moonshotai/Kimi-K2.6"
//! base_url = "http://10.0.0.5:8000/v1"  # a vLLM deployment: chat-template-kwargs
//! ```
//!
//! # Thinking
//!
//! Kimi K2.5 and K2.6 think before they answer (the reasoning streams as
//! `reasoning_content`, never spoken) unless told not to. `thinking` says
//! which: unset sends no switch, so the model runs in its server's default
//! mode; `false` turns thinking off (lower latency, what a voice agent
//! usually wants) and `true` turns it on. There is no common wire form for the
//! switch, so `thinking_format` says which one the server understands:
//!
//! | `thinking_format` | body field | default mode | used by |
//! |---|---|---|---|
//! | `moonshot` | `"thinking": {"type": "enabled"\|"disabled"}` | on | Moonshot's API (`api.moonshot.ai`/`.cn`) |
//! | `chat-template-kwargs` | `"chat_template_kwargs": {"thinking": bool}` | on | vLLM, SGLang |
//! | `baseten` | `"chat_template_args": {"enable_thinking": bool}` | off (opt-in) | Baseten's Model APIs |
//!
//! Unset, it follows the backend: `baseten` for `baseten` and for `livekit`
//! (LiveKit Inference serves Kimi from Baseten, and LiveKit's own clients send
//! no switch of their own, only what `extra_kwargs` holds); for
//! `openai-compatible`, `moonshot` when `base_url` is Moonshot's API and
//! `chat-template-kwargs` otherwise. A switch may also be written by hand in
//! `extra_kwargs` when `thinking` is unset; the client reads it to know the
//! mode.
//!
//! # Sampling
//!
//! K2.5 and K2.6 accept one `temperature` per mode (1.0 thinking, 0.6 not)
//! and `top_p` 0.95, and answer HTTP 400 to anything else. When
//! `extra_kwargs` sets neither, the client sends the accepted values for the
//! mode in force; a value these models reject fails [`crate::KimiLlm::new`]
//! with a [`crate::KimiError::Config`] naming the key and the accepted value.
//! The catalogue ([`crate::catalogue`]) says which models this applies to.

use serde::Deserialize;

/// LiveKit Inference's gateway, used when neither `base_url` nor
/// `LIVEKIT_INFERENCE_URL` says otherwise (the same for STT and TTS).
pub const LIVEKIT_INFERENCE_URL: &str = livekit_plumbing::DEFAULT_INFERENCE_URL;
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
    /// The name as written in `[llm]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Livekit => "livekit",
            Backend::Baseten => "baseten",
            Backend::OpenaiCompatible => "openai-compatible",
        }
    }
}

/// How the thinking switch is written into the request body (see the
/// module docs for which server takes which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThinkingFormat {
    /// Moonshot's API: `"thinking": {"type": "enabled" | "disabled"}`.
    Moonshot,
    /// vLLM and SGLang (the model's chat template):
    /// `"chat_template_kwargs": {"thinking": true | false}`.
    ChatTemplateKwargs,
    /// Baseten's Model APIs: `"chat_template_args": {"enable_thinking":
    /// true | false}`. Thinking is off unless asked for.
    Baseten,
}

impl ThinkingFormat {
    /// The name as written in `[llm]`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThinkingFormat::Moonshot => "moonshot",
            ThinkingFormat::ChatTemplateKwargs => "chat-template-kwargs",
            ThinkingFormat::Baseten => "baseten",
        }
    }

    /// The format a target uses when `thinking_format` is unset: Baseten's
    /// for `baseten` and `livekit` (LiveKit Inference serves Kimi from
    /// Baseten); for `openai-compatible`, Moonshot's when `base_url` is
    /// Moonshot's API, else the chat-template form vLLM and SGLang take.
    pub fn default_for(backend: Backend, base_url: Option<&str>) -> Self {
        match backend {
            Backend::Livekit | Backend::Baseten => ThinkingFormat::Baseten,
            Backend::OpenaiCompatible => {
                if base_url.and_then(url_host).is_some_and(is_moonshot_host) {
                    ThinkingFormat::Moonshot
                } else {
                    ThinkingFormat::ChatTemplateKwargs
                }
            }
        }
    }

    /// Whether the server thinks when no switch is sent, for a model whose
    /// own default is `model_default` (`None`: no thinking mode). Baseten
    /// makes thinking opt-in; the others follow the model.
    pub fn default_thinking(self, model_default: Option<bool>) -> Option<bool> {
        match self {
            ThinkingFormat::Baseten => model_default.map(|_| false),
            ThinkingFormat::Moonshot | ThinkingFormat::ChatTemplateKwargs => model_default,
        }
    }
}

/// The host of an `http(s)://host[:port]/…` URL, lower-cased.
fn url_host(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn is_moonshot_host(host: String) -> bool {
    ["moonshot.ai", "moonshot.cn"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// The `[llm]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KimiConfig {
    /// Which endpoint serves the model (default `livekit`).
    pub backend: Backend,
    /// The model id as the endpoint knows it, e.g. `moonshotai/kimi-k2.6` on
    /// LiveKit Inference or `moonshotai/Kimi-K2.6` on Baseten.
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
    /// Thinking on (`true`) or off (`false`) for models that think (Kimi
    /// K2.5/K2.6); unset sends no switch, leaving the server's default. Also
    /// decides the sampling these models accept.
    pub thinking: Option<bool>,
    /// How the thinking switch is written; unset: the backend's usual form
    /// ([`ThinkingFormat::default_for`]).
    pub thinking_format: Option<ThinkingFormat>,
    /// Extra top-level fields merged into every request body, e.g.
    /// `max_completion_tokens`, `tool_choice`, `parallel_tool_calls`,
    /// `temperature` (for K2.5/K2.6 only the accepted value). May not override
    /// `model`, `messages`, `tools`, `stream`, `stream_options` or `provider`.
    /// `tool_choice` and `parallel_tool_calls` are sent only with tools.
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
    /// Thinking on or off for this fallback; unset: the primary's `thinking`.
    #[serde(default)]
    pub thinking: Option<bool>,
    /// Thinking switch format; unset: the default for this fallback's own
    /// backend and base URL (not the primary's format).
    #[serde(default)]
    pub thinking_format: Option<ThinkingFormat>,
    /// Body fields for this fallback; when unset the primary's `extra_kwargs`
    /// are used.
    #[serde(default)]
    pub extra_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for KimiConfig {
    /// The shipped configuration: Kimi K2.6 through LiveKit Inference, served
    /// by Baseten (the model LiveKit lists as current), thinking left to the
    /// server's default, sampling chosen by the client.
    fn default() -> Self {
        Self {
            backend: Backend::Livekit,
            model: crate::catalogue::CURRENT_KIMI_MODEL.to_string(),
            provider: Some("baseten".to_string()),
            base_url: None,
            api_key_env: None,
            thinking: None,
            thinking_format: None,
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
        assert_eq!(c.model, "moonshotai/kimi-k2.6");
        assert_eq!(c.provider.as_deref(), Some("baseten"));
        assert_eq!(c.thinking, None, "the model's default unless set");
        assert_eq!(c.thinking_format, None);
        assert!(c.extra_kwargs.is_empty(), "no sampling K2.6 could refuse");
    }

    #[test]
    fn thinking_keys_parse_and_unknown_formats_are_refused() {
        let c: KimiConfig = serde_json::from_value(serde_json::json!({
            "thinking": false,
            "thinking_format": "chat-template-kwargs",
            "fallback": [{"model": "kimi-k2.6", "thinking": true, "thinking_format": "moonshot"}]
        }))
        .unwrap();
        assert_eq!(c.thinking, Some(false));
        assert_eq!(c.thinking_format, Some(ThinkingFormat::ChatTemplateKwargs));
        assert_eq!(c.fallback[0].thinking, Some(true));
        assert_eq!(
            c.fallback[0].thinking_format,
            Some(ThinkingFormat::Moonshot)
        );
        let c: KimiConfig =
            serde_json::from_value(serde_json::json!({"thinking_format": "baseten"})).unwrap();
        assert_eq!(c.thinking_format, Some(ThinkingFormat::Baseten));
        let err = serde_json::from_str::<KimiConfig>(r#"{"thinking_format":"vllm"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err = serde_json::from_str::<KimiConfig>(r#"{"thinking":"off"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn thinking_format_follows_the_backend_and_host() {
        use ThinkingFormat::*;
        assert_eq!(ThinkingFormat::default_for(Backend::Livekit, None), Baseten);
        assert_eq!(ThinkingFormat::default_for(Backend::Baseten, None), Baseten);
        let oc = |url| ThinkingFormat::default_for(Backend::OpenaiCompatible, Some(url));
        assert_eq!(oc("https://api.moonshot.ai/v1"), Moonshot);
        assert_eq!(oc("https://API.Moonshot.cn:443/v1/"), Moonshot);
        assert_eq!(oc("http://127.0.0.1:8000/v1"), ChatTemplateKwargs);
        assert_eq!(oc("http://notmoonshot.ai/v1"), ChatTemplateKwargs);
        assert_eq!(oc("http://moonshot.ai.evil.example/v1"), ChatTemplateKwargs);
        assert_eq!(oc("not a url"), ChatTemplateKwargs);
        assert_eq!(
            ThinkingFormat::default_for(Backend::OpenaiCompatible, None),
            ChatTemplateKwargs
        );
    }

    #[test]
    fn servers_default_thinking_differs_by_format() {
        use ThinkingFormat::*;
        assert_eq!(Moonshot.default_thinking(Some(true)), Some(true));
        assert_eq!(ChatTemplateKwargs.default_thinking(Some(true)), Some(true));
        assert_eq!(Baseten.default_thinking(Some(true)), Some(false), "opt-in");
        assert_eq!(Baseten.default_thinking(None), None, "no thinking mode");
        assert_eq!(Moonshot.default_thinking(None), None);
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
