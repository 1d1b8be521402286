//! [`KimiLlm`]: the [`Llm`] implementation. Owns the HTTP client, the resolved
//! targets (primary, then fallbacks) and the request driver that connects,
//! retries, falls back and streams decoded chunks.
//!
//! A request's life: [`Llm::chat`] builds a `Driver` and runs its connect
//! phase until a target answers 200 (or every target has failed: the first
//! failure is returned). Each target's body is its resolved fields
//! ([`TargetParams`]: `extra_kwargs`, thinking switch, fixed sampling) with
//! the request's [`agent::LlmOptions`] on top. The stream then reads the body
//! chunk by chunk, each read bounded by the idle timeout, feeding the
//! [`Decoder`]. A failure before the first text, reasoning or tool call goes
//! back to the connect phase (retry, then the next fallback); after it, the
//! error is delivered and the stream ends, so nothing is ever delivered (or
//! spoken) twice. Dropping the stream drops the response and so closes the
//! connection.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use agent::{JobContext, Llm, LlmChunk, LlmOptions, LlmRequest, LlmStream, StageError};
use async_trait::async_trait;
use bytes::Bytes;
use livekit_plumbing::{Backoff, Redactor, Scheme, service_url};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::auth::Credentials;
use crate::catalogue;
use crate::config::{BASETEN_URL, Backend, KimiConfig, ThinkingFormat};
use crate::decode::{self, DecodeError, Decoder};
use crate::error::KimiError;
use crate::params::TargetParams;
use crate::request;
use crate::retry;

const PROVIDER_HEADER: &str = "x-livekit-inference-provider";
const ROOM_HEADER: &str = "x-livekit-room-id";
const JOB_HEADER: &str = "x-livekit-job-id";
const AGENT_HEADER: &str = "x-livekit-agent-id";
/// Response headers with this prefix are LiveKit Inference quota figures.
const QUOTA_PREFIX: &str = "x-livekit-inference-";
/// At most this many characters of a server's text go into an error (cut
/// after the secrets are removed).
const MAX_SERVER_TEXT: usize = 200;
/// At most this much of an error body is read.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest wait for the end of a body after `[DONE]`.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

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

/// One (backend, model) pair with everything needed to call it.
struct Target {
    backend: Backend,
    model: String,
    /// `backend/model`, for errors and logs (never the URL, which could hold
    /// credentials a user pasted into it).
    label: String,
    endpoint: reqwest::Url,
    credentials: Credentials,
    /// The `X-LiveKit-Inference-Provider` value (LiveKit only).
    provider: Option<HeaderValue>,
    /// The body fields every request to this target carries.
    params: TargetParams,
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

struct TargetSpec<'a> {
    backend: Backend,
    model: &'a str,
    provider: Option<&'a str>,
    base_url: Option<&'a str>,
    api_key_env: Option<&'a str>,
    extra_kwargs: &'a Map<String, Value>,
    thinking: Option<bool>,
    thinking_format: Option<ThinkingFormat>,
}

impl Target {
    fn resolve(
        spec: TargetSpec<'_>,
        identity: &str,
        env: &dyn Fn(&str) -> Option<String>,
        redactor: &mut Redactor,
    ) -> Result<Self, KimiError> {
        let label = format!("{}/{}", spec.backend.as_str(), spec.model);
        if spec.model.trim().is_empty() {
            return Err(KimiError::Config(format!(
                "model is empty for the {} backend",
                spec.backend.as_str()
            )));
        }
        let base = match (spec.backend, spec.base_url) {
            (Backend::Livekit, explicit) => livekit_plumbing::inference_base_url(explicit, env),
            (_, Some(url)) => url.to_string(),
            (Backend::Baseten, None) => BASETEN_URL.to_string(),
            (Backend::OpenaiCompatible, None) => {
                return Err(KimiError::Config(
                    "base_url is required for the openai-compatible backend".into(),
                ));
            }
        };
        let endpoint = service_url(&base, Scheme::Http, request::ENDPOINT_PATH).map_err(|e| {
            KimiError::Config(format!("the base URL for {label} is not usable: {e}"))
        })?;
        let format = spec
            .thinking_format
            .unwrap_or_else(|| ThinkingFormat::default_for(spec.backend, Some(base.trim())));
        let params =
            TargetParams::resolve(&label, spec.model, format, spec.thinking, spec.extra_kwargs)?;
        let provider = match (spec.backend, spec.provider) {
            (Backend::Livekit, Some(p)) if !p.trim().is_empty() => {
                if matches!(p, "livekit" | "openai-compatible") {
                    return Err(KimiError::Config(format!(
                        "provider = {p:?} names a backend; set backend = {p:?} instead \
                         (provider is LiveKit Inference's upstream, e.g. \"baseten\")"
                    )));
                }
                Some(HeaderValue::from_str(p.trim()).map_err(|_| {
                    KimiError::Config(format!("provider {p:?} is not a valid header value"))
                })?)
            }
            _ => None,
        };
        let credentials =
            Credentials::resolve(spec.backend, spec.api_key_env, identity, env, redactor)?;
        Ok(Self {
            backend: spec.backend,
            model: spec.model.to_string(),
            label,
            endpoint,
            credentials,
            provider,
            params,
        })
    }

    fn headers(&self, job: &JobContext) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if self.backend == Backend::Livekit {
            if let Some(p) = &self.provider {
                h.insert(HeaderName::from_static(PROVIDER_HEADER), p.clone());
            }
            for (name, value) in [
                (ROOM_HEADER, &job.room_id),
                (JOB_HEADER, &job.job_id),
                (AGENT_HEADER, &job.agent_id),
            ] {
                // Ids from the server are plain ASCII; anything else is left out
                // rather than failing the request.
                if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(HeaderName::from_static(name), v);
                }
            }
        }
        h
    }
}

/// The request state machine behind one [`LlmStream`].
struct Driver {
    inner: Arc<Inner>,
    job: JobContext,
    messages: Value,
    tools: Value,
    /// The agent's per-request options, merged into each target's fields.
    options: LlmOptions,
    /// Index into `inner.targets` of the target being tried.
    target: usize,
    /// Retries already spent on the current target.
    retries: u32,
    /// The open response; dropping it closes the connection.
    response: Option<reqwest::Response>,
    decoder: Decoder,
    /// Text, reasoning or a tool call has been delivered: from then on, no
    /// retry (a consumer keeps all three, so none may come twice).
    delivered_token: bool,
    /// The primary's failure, reported if every target fails.
    first_error: Option<KimiError>,
    /// An error to deliver once the chunks decoded before it are out.
    pending_error: Option<KimiError>,
    finished: bool,
}

impl Driver {
    fn new(inner: Arc<Inner>, request: LlmRequest) -> Self {
        let strip = inner.strip_think;
        Self {
            inner,
            messages: request::messages_json(&request.messages),
            tools: request::tools_json(&request.tools),
            options: request.options,
            job: request.job,
            target: 0,
            retries: 0,
            response: None,
            decoder: Decoder::new(strip),
            delivered_token: false,
            first_error: None,
            pending_error: None,
            finished: false,
        }
    }

    /// Runs attempts until one gets a 200 response, or all targets failed.
    async fn connect(&mut self) -> Result<(), KimiError> {
        loop {
            let inner = self.inner.clone();
            let Some(target) = inner.targets.get(self.target) else {
                return Err(self.exhausted());
            };
            match self.attempt(target).await {
                Ok(response) => {
                    self.response = Some(response);
                    self.decoder = Decoder::new(inner.strip_think);
                    return Ok(());
                }
                Err(e) => self.failed(e).await?,
            }
        }
    }

    /// Handles a failure before the first token: waits and lets the caller
    /// retry the same target, or moves on to the next one. Errors when no
    /// target is left.
    async fn failed(&mut self, error: KimiError) -> Result<(), KimiError> {
        let inner = self.inner.clone();
        let label = inner
            .targets
            .get(self.target)
            .map(|t| t.label.as_str())
            .unwrap_or("?");
        if error.is_retryable() && self.retries < inner.max_retries {
            let delay = match error.retry_after() {
                Some(wait) if wait > inner.retry.max => None,
                Some(wait) => Some(wait),
                None => Some(inner.retry.delay_jittered(self.retries)),
            };
            if let Some(delay) = delay {
                self.retries += 1;
                tracing::warn!(
                    target_model = label,
                    retry = self.retries,
                    delay_ms = delay.as_millis() as u64,
                    "LLM request failed, retrying: {error}"
                );
                tokio::time::sleep(delay).await;
                return Ok(());
            }
        }
        if self.target + 1 < inner.targets.len() {
            tracing::warn!(target_model = label, "LLM request failed: {error}");
        } else {
            // The last target: the error goes back to the caller, who reports it.
            tracing::debug!(target_model = label, "LLM request failed: {error}");
        }
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
        self.target += 1;
        self.retries = 0;
        match inner.targets.get(self.target) {
            Some(next) => {
                tracing::info!(target_model = next.label.as_str(), "trying LLM fallback");
                Ok(())
            }
            None => Err(self.exhausted()),
        }
    }

    fn exhausted(&mut self) -> KimiError {
        self.finished = true;
        self.first_error
            .take()
            .unwrap_or_else(|| KimiError::Config("no LLM target configured".into()))
    }

    /// One HTTP request to `target`, up to the response head.
    async fn attempt(&self, target: &Target) -> Result<reqwest::Response, KimiError> {
        let inner = &self.inner;
        let has_tools = self.tools.as_array().is_some_and(|t| !t.is_empty());
        let (fields, dropped) = target.params.request_fields(&self.options, has_tools);
        for d in &dropped {
            tracing::warn!(
                target_model = target.label.as_str(),
                key = d.key.as_str(),
                "LLM request option not sent: {}",
                d.why
            );
        }
        let body = Bytes::from(request::body(
            &target.model,
            &self.messages,
            &self.tools,
            &fields,
        ));
        let mut req = inner
            .client
            .post(target.endpoint.clone())
            .headers(target.headers(&self.job))
            .body(body);
        if let Some(token) = target.credentials.bearer()? {
            // reqwest marks this header sensitive: it is never logged.
            req = req.bearer_auth(token.expose());
        }
        tracing::debug!(
            target_model = target.label.as_str(),
            retry = self.retries,
            "LLM request"
        );
        let response = match tokio::time::timeout(inner.idle_timeout, req.send()).await {
            Err(_) => {
                return Err(KimiError::IdleTimeout(
                    inner.idle_timeout,
                    target.label.clone(),
                ));
            }
            Ok(Err(e)) => return Err(self.transport_error(&e, target)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            let json_reply = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
            if json_reply {
                let body = read_error_body(response, inner.idle_timeout).await;
                return Err(KimiError::Protocol {
                    target: target.label.clone(),
                    message: inner.scrub(&format!("expected an event stream, got JSON: {body}")),
                });
            }
            return Ok(response);
        }
        Err(self.status_error(response, target).await)
    }

    async fn status_error(&self, response: reqwest::Response, target: &Target) -> KimiError {
        let inner = &self.inner;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = read_error_body(response, inner.idle_timeout).await;
        let mut message = if body.trim().is_empty() {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no message")
                .to_string()
        } else {
            decode::error_message(&body)
        };
        message = inner.scrub(&message);
        let label = target.label.clone();
        match status {
            401 | 403 => KimiError::Auth {
                status,
                target: label,
                message,
            },
            429 => {
                let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let retry_after = retry::retry_after(
                    header_str("retry-after-ms"),
                    header_str("retry-after"),
                    SystemTime::now(),
                );
                let quota = headers
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(QUOTA_PREFIX))
                    .filter(|(name, _)| name.as_str() != PROVIDER_HEADER)
                    .filter_map(|(name, value)| {
                        Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
                    })
                    .collect();
                KimiError::RateLimit {
                    target: label,
                    message,
                    retry_after,
                    quota,
                }
            }
            500..=599 => KimiError::Server {
                status,
                target: label,
                message,
            },
            400..=499 => KimiError::BadRequest {
                status,
                target: label,
                message,
            },
            _ => KimiError::Protocol {
                target: label,
                message: format!("unexpected HTTP status {status}: {message}"),
            },
        }
    }

    fn transport_error(&self, e: &reqwest::Error, target: &Target) -> KimiError {
        let message = self.inner.redactor.clean(&error_chain(e));
        let label = target.label.clone();
        if e.is_connect() {
            if e.is_timeout() {
                KimiError::ConnectTimeout(self.inner.connect_timeout, label)
            } else {
                KimiError::Connect {
                    target: label,
                    message,
                }
            }
        } else if e.is_timeout() {
            KimiError::IdleTimeout(self.inner.idle_timeout, label)
        } else {
            KimiError::Connection {
                target: label,
                message,
            }
        }
    }

    fn target_label(&self) -> String {
        self.inner
            .targets
            .get(self.target)
            .map(|t| t.label.clone())
            .unwrap_or_default()
    }

    fn decode_error(&self, e: DecodeError) -> KimiError {
        let target = self.target_label();
        match e {
            DecodeError::Truncated => KimiError::Connection {
                target,
                message: e.to_string(),
            },
            DecodeError::Malformed(_) | DecodeError::Provider(_) => KimiError::Protocol {
                target,
                message: self.inner.scrub(&e.to_string()),
            },
        }
    }

    /// The next item of the stream.
    async fn next(&mut self) -> Option<Result<LlmChunk, StageError>> {
        loop {
            if let Some(chunk) = self.decoder.next_chunk() {
                match &chunk {
                    LlmChunk::Text(_) | LlmChunk::Reasoning(_) | LlmChunk::ToolCall(_) => {
                        self.delivered_token = true
                    }
                    LlmChunk::Done { .. } => self.finished = true,
                    LlmChunk::Usage(_) => {}
                }
                return Some(Ok(chunk));
            }
            if let Some(e) = self.pending_error.take() {
                self.finished = true;
                return Some(Err(e.into()));
            }
            if self.finished {
                // Read the body to its end so the connection goes back to the
                // pool; a consumer that stops at `Done` just closes it.
                if let Some(mut response) = self.response.take() {
                    let wait = self.inner.idle_timeout.min(DRAIN_WAIT);
                    while let Ok(Ok(Some(_))) = tokio::time::timeout(wait, response.chunk()).await {
                    }
                }
                return None;
            }
            let idle = self.inner.idle_timeout;
            let response = self.response.as_mut()?;
            let result = match tokio::time::timeout(idle, response.chunk()).await {
                Err(_) => Err(KimiError::IdleTimeout(idle, self.target_label())),
                Ok(Err(e)) => {
                    let target = self.target_label();
                    Err(if e.is_timeout() {
                        KimiError::IdleTimeout(idle, target)
                    } else {
                        KimiError::Connection {
                            target,
                            message: self.inner.redactor.clean(&error_chain(&e)),
                        }
                    })
                }
                Ok(Ok(Some(bytes))) => self.decoder.feed(&bytes).map_err(|e| self.decode_error(e)),
                Ok(Ok(None)) => self.decoder.finish().map_err(|e| self.decode_error(e)),
            };
            let Err(error) = result else { continue };
            self.response = None;
            if !self.delivered_token && !self.decoder.has_queued_token() {
                // Nothing said yet: retry or fall back.
                let retried = match self.failed(error).await {
                    Ok(()) => self.connect().await,
                    Err(e) => Err(e),
                };
                match retried {
                    Ok(()) => continue,
                    Err(e) => {
                        self.finished = true;
                        return Some(Err(e.into()));
                    }
                }
            }
            self.pending_error = Some(error);
        }
    }
}

/// Reads up to [`MAX_ERROR_BODY`] bytes of a body, giving up on timeout or
/// error (the status alone then tells the story).
async fn read_error_body(mut response: reqwest::Response, idle: Duration) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&buf).into_owned()
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
