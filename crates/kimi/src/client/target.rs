//! One (backend, model) pair resolved from the config and the environment:
//! its endpoint, credentials, LiveKit Inference provider header and the body
//! fields every request to it carries, and the headers each request sends.

use agent::JobContext;
use livekit_plumbing::{Redactor, Scheme, service_url};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::auth::Credentials;
use crate::config::{BASETEN_URL, Backend, ThinkingFormat};
use crate::error::KimiError;
use crate::params::TargetParams;
use crate::request;

pub(super) const PROVIDER_HEADER: &str = "x-livekit-inference-provider";
const ROOM_HEADER: &str = "x-livekit-room-id";
const JOB_HEADER: &str = "x-livekit-job-id";
const AGENT_HEADER: &str = "x-livekit-agent-id";

/// One (backend, model) pair with everything needed to call it.
pub(super) struct Target {
    pub(super) backend: Backend,
    pub(super) model: String,
    /// `backend/model`, for errors and logs (never the URL, which could hold
    /// credentials a user pasted into it).
    pub(super) label: String,
    pub(super) endpoint: reqwest::Url,
    pub(super) credentials: Credentials,
    /// The `X-LiveKit-Inference-Provider` value (LiveKit only).
    provider: Option<HeaderValue>,
    /// The body fields every request to this target carries.
    pub(super) params: TargetParams,
}

pub(super) struct TargetSpec<'a> {
    pub(super) backend: Backend,
    pub(super) model: &'a str,
    pub(super) provider: Option<&'a str>,
    pub(super) base_url: Option<&'a str>,
    pub(super) api_key_env: Option<&'a str>,
    pub(super) extra_kwargs: &'a Map<String, Value>,
    pub(super) thinking: Option<bool>,
    pub(super) thinking_format: Option<ThinkingFormat>,
}

impl Target {
    pub(super) fn resolve(
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

    pub(super) fn headers(&self, job: &JobContext) -> HeaderMap {
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
