//! What every client of a LiveKit service writes before it sends a byte:
//! secrets that never show, credentials read from the environment, access
//! tokens, service URLs, and the wait before a retry.
//!
//! `kimi` (the LLM through LiveKit Inference), `speech` (Inference STT and
//! TTS), `worker` (the `/agent` socket), `mcp` (reconnects, header and
//! environment secrets) and `room` (the signal socket) take these from here
//! rather than each keeping a copy of its own. It is a leaf of the workspace: it
//! depends on nothing of ours and does no I/O (no socket, no runtime, no
//! clock other than the token's `nbf`), so `agent` stays free of I/O and
//! `room` need not know `agent` to use it.
//!
//! ```
//! use livekit_plumbing::{ApiCredentials, Backoff, Scheme, service_url, set_query};
//! use std::time::Duration;
//!
//! let env = |name: &str| match name {
//!     "LIVEKIT_API_KEY" => Some("APIkey".to_string()),
//!     "LIVEKIT_API_SECRET" => Some("a-long-secret-value".to_string()),
//!     _ => None,
//! };
//! let creds = ApiCredentials::inference_from_env(&env)?;
//! let token = creds.inference_token("agent", Duration::from_secs(600))?;
//! assert_eq!(format!("{token:?}"), "[redacted]");
//!
//! let mut url = service_url("https://gw.example/v1/", Scheme::WebSocket, "stt")?;
//! set_query(&mut url, [("model", "deepgram/nova-3")]);
//! assert_eq!(url.as_str(), "wss://gw.example/v1/stt?model=deepgram/nova-3");
//!
//! let retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
//! assert_eq!(retry.delay(1, 1.0), Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `secret.rs` | [`Secret`] (`Debug` is `[redacted]`, no `Display`) and [`Redactor`] (scrubs known secrets and JWTs from outside text, then truncates) |
//! | `env.rs` | [`ApiCredentials`] from `LIVEKIT_INFERENCE_API_KEY`/`SECRET` or `LIVEKIT_API_KEY`/`SECRET`, [`var`], [`inference_base_url`], [`MissingCredentials`] |
//! | `token.rs` | the access tokens: LiveKit Inference (`inference.perform`), the worker's (`agent`), a room's; [`TokenError`] |
//! | `url.rs` | [`service_url`] (`http(s)` → `ws(s)`, a path under the base), [`set_query`] and [`encode_query_value`]; [`UrlError`] |
//! | `backoff.rs` | [`Backoff`]: exponential, capped, with jitter, a pure function; [`jitter`] draws the randomness |
//!
//! # Errors
//!
//! Three small error types rather than one enum: each function fails in one
//! way only, and each caller wraps that failure into its own enum with
//! `#[from]` (or with its own context: which backend, which service). One
//! enum would make every caller match variants that cannot happen. None of
//! them holds a key, a secret or a token.
//!
//! # What is not here
//!
//! Retry timing that only one client has: `Retry-After` stays in `kimi`, and
//! `room`'s resume-then-rejoin schedule (quadratic, no jitter, two kinds of
//! attempt) stays in `room`.

mod backoff;
mod env;
mod secret;
mod token;
mod url;

pub use backoff::{Backoff, jitter};
pub use env::{
    ApiCredentials, DEFAULT_INFERENCE_URL, INFERENCE_CREDENTIAL_VARS, INFERENCE_URL_VAR,
    MissingCredentials, SERVER_CREDENTIAL_VARS, inference_base_url, var,
};
pub use secret::{MIN_SECRET_LEN, REDACTED, Redactor, Secret};
pub use token::{INFERENCE_TOKEN_TTL, TokenError};
pub use url::{Scheme, UrlError, encode_query_value, service_url, set_query};

/// The URL type of [`service_url`] (the `url` crate's, which `reqwest`
/// re-exports too).
pub use ::url::Url;
