//! [`KimiLlm`]: the [`Llm`] implementation. Owns the HTTP client and the
//! resolved targets (primary, then fallbacks); this file holds the stage, its
//! construction and the process's shared HTTP client, `target` resolves each
//! (backend, model) pair from the config and the environment, and `driver` is
//! the request state machine that connects, retries, falls back and streams
//! decoded chunks.
//!
//! A request's life: [`Llm::chat`] builds a `Driver` and runs its connect
//! phase until a target answers 200 (or every target has failed: the first
//! failure is returned). Each target's body is its resolved fields
//! ([`TargetParams`](crate::params::TargetParams): `extra_kwargs`, thinking
//! switch, fixed sampling) with the request's [`agent::LlmOptions`] on top.
//! The stream then reads the body chunk by chunk, each read bounded by the
//! idle timeout, feeding the [`Decoder`](crate::decode::Decoder). A failure
//! before the first text, reasoning or tool call goes back to the connect
//! phase (retry, then the next fallback); after it, the error is delivered
//! and the stream ends, so nothing is ever delivered (or spoken) twice.
//! Dropping the stream drops the response and so closes the connection.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent::{Llm, LlmRequest, LlmStream, StageError};
use async_trait::async_trait;
use livekit_plumbing::{Backoff, Redactor};

use crate::catalogue;
use crate::config::{Backend, KimiConfig};
use crate::error::KimiError;

mod driver;
mod target;

use driver::Driver;
use target::{Target, TargetSpec};

/// At most this many characters of a server's text go into an error (cut
/// after the secrets are removed).
const MAX_SERVER_TEXT: usize = 200;

/// The LLM stage. Cheap to clone: clones share the HTTP client (and its
/// connection pool) and the resolved targets. Build one per process.
#[derive(Clone)]
pub struct KimiLlm {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// Primary first, then the fallbacks in configured order.
    targets: Vec<Target>,
    redactor: Redactor,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_retries: u32,
    /// The wait before a retry that the server set no `Retry-After` for; a
    /// `Retry-After` longer than its cap moves on to the next target.
    retry: Backoff,
    strip_think: bool,
}

impl Inner {
    /// A server's text (an error body, a bad event) as it may appear in an
    /// error: secrets and tokens removed, then shortened. Transport errors
    /// (ours, short) are only cleaned.
    fn scrub(&self, text: &str) -> String {
        self.redactor.clean_truncated(text, MAX_SERVER_TEXT)
    }
}

impl fmt::Debug for KimiLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self
            .inner
            .targets
            .iter()
            .map(|t| t.label.as_str())
            .collect();
        f.debug_struct("KimiLlm")
            .field("targets", &labels)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("max_retries", &self.inner.max_retries)
            .finish_non_exhaustive()
    }
}

impl KimiLlm {
    /// Validates `config`, resolves credentials through `env` (pass
    /// `&|k| std::env::var(k).ok()`), and gets the process's HTTP client.
    /// Missing credentials fail with [`KimiError::MissingCredentials`], which
    /// names the variables to set; `extra_kwargs` a model refuses (a
    /// `temperature` or `top_p` Kimi K2.5/K2.6 do not accept, a reserved key)
    /// fail with [`KimiError::Config`], which names the key.
    pub fn new(
        config: &KimiConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, KimiError> {
        let mut redactor = Redactor::default();
        let mut targets = Vec::with_capacity(1 + config.fallback.len());
        targets.push(Target::resolve(
            TargetSpec {
                backend: config.backend,
                model: &config.model,
                provider: config.provider.as_deref(),
                base_url: config.base_url.as_deref(),
                api_key_env: config.api_key_env.as_deref(),
                extra_kwargs: &config.extra_kwargs,
                thinking: config.thinking,
                thinking_format: config.thinking_format,
            },
            &config.identity,
            env,
            &mut redactor,
        )?);
        for fb in &config.fallback {
            targets.push(Target::resolve(
                TargetSpec {
                    backend: fb.backend,
                    model: &fb.model,
                    provider: fb.provider.as_deref(),
                    base_url: fb.base_url.as_deref(),
                    api_key_env: fb.api_key_env.as_deref(),
                    extra_kwargs: fb.extra_kwargs.as_ref().unwrap_or(&config.extra_kwargs),
                    thinking: fb.thinking.or(config.thinking),
                    thinking_format: fb.thinking_format,
                },
                &config.identity,
                env,
                &mut redactor,
            )?);
        }
        if config.idle_timeout_ms == 0 || config.connect_timeout_ms == 0 {
            return Err(KimiError::Config(
                "connect_timeout_ms and idle_timeout_ms must be above 0".into(),
            ));
        }
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let client = shared_client(connect_timeout)?;
        for t in &targets {
            if t.backend == Backend::Livekit {
                catalogue::warn_if_retired(&t.model);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                targets,
                redactor,
                connect_timeout,
                idle_timeout: Duration::from_millis(config.idle_timeout_ms),
                max_retries: config.max_retries,
                retry: Backoff::new(
                    Duration::from_millis(config.retry_base_delay_ms),
                    Duration::from_millis(config.retry_max_delay_ms),
                ),
                strip_think: config.strip_think,
            }),
        })
    }

    /// Starts a streaming completion; the typed-error form of [`Llm::chat`].
    pub async fn stream(&self, request: LlmRequest) -> Result<LlmStream, KimiError> {
        let mut driver = Driver::new(self.inner.clone(), request);
        driver.connect().await?;
        Ok(Box::pin(futures::stream::unfold(
            driver,
            |mut d| async move { d.next().await.map(|item| (item, d)) },
        )))
    }

    /// The `backend/model` labels of the targets, primary first.
    pub fn targets(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.label.clone()).collect()
    }

    /// The thinking mode in force for each target, primary first (`None`
    /// when unknown: a model the catalogue does not know, and no switch set).
    pub fn thinking(&self) -> Vec<Option<bool>> {
        self.inner
            .targets
            .iter()
            .map(|t| t.params.thinking())
            .collect()
    }
}

#[async_trait]
impl Llm for KimiLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmStream, StageError> {
        self.stream(request).await.map_err(StageError::from)
    }
}

/// The process's HTTP clients, one per connect timeout (in practice one).
fn shared_client(connect_timeout: Duration) -> Result<reqwest::Client, KimiError> {
    static CLIENTS: OnceLock<Mutex<Vec<(Duration, reqwest::Client)>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(|| Mutex::new(Vec::new()));
    let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = clients.iter().find(|(t, _)| *t == connect_timeout) {
        return Ok(c.clone());
    }
    // reqwest is built without a bundled crypto provider; use ring unless the
    // process already chose one. Losing the race to another installer is fine.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("voice-agent-kimi/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| KimiError::Client(error_chain(&e)))?;
    clients.push((connect_timeout, client.clone()));
    Ok(client)
}

/// An error and its sources, `a: b: c`, without the URL reqwest adds.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = match err.downcast_ref::<reqwest::Error>() {
            Some(re) if re.url().is_some() => {
                // reqwest's Display appends " for url (…)"; cut it.
                let full = re.to_string();
                match full.find(" for url (") {
                    Some(at) => full[..at].to_string(),
                    None => full,
                }
            }
            _ => err.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn openai_compatible_needs_a_base_url_and_no_key() {
        let config = KimiConfig {
            backend: Backend::OpenaiCompatible,
            model: "llama".into(),
            provider: None,
            ..KimiConfig::default()
        };
        let e = KimiLlm::new(&config, &env_none).unwrap_err();
        assert!(matches!(e, KimiError::Config(_)), "{e}");
        let config = KimiConfig {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..config
        };
        let llm = KimiLlm::new(&config, &env_none).unwrap();
        assert_eq!(llm.targets(), vec!["openai-compatible/llama"]);
    }

    #[test]
    fn reserved_extra_kwargs_and_bad_urls_are_refused() {
        let env = |k: &str| (k == "BASETEN_API_KEY").then(|| "k-123456".to_string());
        let mut config = KimiConfig {
            backend: Backend::Baseten,
            model: "moonshotai/Kimi-K2-Instruct".into(),
            ..KimiConfig::default()
        };
        config
            .extra_kwargs
            .insert("provider".into(), Value::from("baseten"));
        let e = KimiLlm::new(&config, &env).unwrap_err();
        assert!(e.to_string().contains("provider"), "{e}");
        config.extra_kwargs.clear();
        config.base_url = Some("ftp://x".into());
        assert!(matches!(
            KimiLlm::new(&config, &env),
            Err(KimiError::Config(_))
        ));
        config.base_url = None;
        assert!(KimiLlm::new(&config, &env).is_ok());
    }

    #[test]
    fn sampling_k2_6_refuses_fails_construction_for_primary_and_fallbacks() {
        let env = |k: &str| {
            k.starts_with("LIVEKIT_API")
                .then(|| "value-1234".to_string())
        };
        let mut config = KimiConfig::default();
        config
            .extra_kwargs
            .insert("temperature".into(), Value::from(0.7));
        let e = KimiLlm::new(&config, &env).unwrap_err();
        let KimiError::Config(m) = &e else {
            panic!("{e}")
        };
        assert!(m.contains("extra_kwargs.temperature = 0.7"), "{m}");
        assert!(m.contains("only temperature = 0.6"), "{m}");
        assert!(m.starts_with("livekit/moonshotai/kimi-k2.6"), "{m}");

        // Thinking on: 1.0 is the accepted value, for the primary…
        config.thinking = Some(true);
        config
            .extra_kwargs
            .insert("temperature".into(), Value::from(1.0));
        let llm = KimiLlm::new(&config, &env).unwrap();
        assert_eq!(llm.thinking(), vec![Some(true)]);
        // …and a fallback inherits the switch, so its own 0.6 is refused.
        let mut fb_kwargs = Map::new();
        fb_kwargs.insert("temperature".into(), Value::from(0.6));
        config.fallback = vec![crate::FallbackConfig {
            backend: Backend::Livekit,
            model: "moonshotai/kimi-k2.5".into(),
            provider: None,
            base_url: None,
            api_key_env: None,
            extra_kwargs: Some(fb_kwargs),
            thinking: None,
            thinking_format: None,
        }];
        let e = KimiLlm::new(&config, &env).unwrap_err();
        assert!(
            e.to_string().contains("livekit/moonshotai/kimi-k2.5"),
            "names the fallback: {e}"
        );
        // Unless the fallback turns thinking off itself.
        config.fallback[0].thinking = Some(false);
        let llm = KimiLlm::new(&config, &env).unwrap();
        assert_eq!(llm.thinking(), vec![Some(true), Some(false)]);
    }

    #[test]
    fn provider_naming_a_backend_is_refused() {
        let env = |k: &str| {
            k.starts_with("LIVEKIT_API")
                .then(|| "value-1234".to_string())
        };
        let config = KimiConfig {
            provider: Some("openai-compatible".into()),
            ..KimiConfig::default()
        };
        let e = KimiLlm::new(&config, &env).unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
    }
}
