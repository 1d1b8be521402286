//! The request state machine behind one [`LlmStream`](agent::LlmStream):
//! attempts up to the response head, retries and fallbacks before the first
//! token, the mapping of HTTP statuses and transport failures to
//! [`KimiError`]s, and the body read chunk by chunk into the decoder.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent::{JobContext, LlmChunk, LlmOptions, LlmRequest, StageError};
use bytes::Bytes;
use reqwest::header;
use serde_json::Value;

use super::target::{PROVIDER_HEADER, Target};
use super::{Inner, error_chain};
use crate::decode::{self, DecodeError, Decoder};
use crate::error::KimiError;
use crate::request;
use crate::retry;

/// Response headers with this prefix are LiveKit Inference quota figures.
const QUOTA_PREFIX: &str = "x-livekit-inference-";
/// At most this much of an error body is read.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest wait for the end of a body after `[DONE]`.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The request state machine behind one [`LlmStream`](agent::LlmStream).
pub(super) struct Driver {
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
    pub(super) fn new(inner: Arc<Inner>, request: LlmRequest) -> Self {
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
    pub(super) async fn connect(&mut self) -> Result<(), KimiError> {
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
    pub(super) async fn next(&mut self) -> Option<Result<LlmChunk, StageError>> {
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
