//! Test support for the workspace, and the end-to-end tests with real parts.
//!
//! This library is the one place the tests and benches of every crate take
//! their real parts and stand-ins from (a dev-dependency). It depends on no
//! crate of the workspace, so any of them can use it without a dependency
//! cycle; the end-to-end tests and benches of this package (`tests/tests/`,
//! `tests/benches/`) use the workspace crates as dev-dependencies.
//!
//! # Layout
//!
//! - [`server`]: the real `livekit-server` ([`LiveKitServer`], built by
//!   `tests/setup.sh` into the cache) on free loopback ports with the dev keys,
//!   killed on drop and restartable on the same ports; access tokens
//!   ([`token`], [`token_dispatching`]); explicit dispatch
//!   ([`create_dispatch`]); [`free_port`].
//! - [`human`]: the user, the real LiveKit Python SDK running
//!   `tests/python/human.py` ([`Human`]), and readers of what it saw.
//! - [`audio`]: espeak-ng fixtures, WAV read and write, resampling, envelope
//!   correlation.
//! - [`proxy`]: [`TcpProxy`], to cut signal connections.
//! - [`http`]: one HTTP/1.1 request read, one `GET` sent.
//! - [`llm`]: [`LlmStandIn`], the OpenAI-compatible LLM the agent processes
//!   talk to, and readers of the requests it kept.
//! - [`agent_process`]: a real `voice-agent` process ([`AgentProcess`]), the
//!   binaries next to the tests, the MCP reference server, the agent's logs
//!   and metrics.
//! - [`inference`]: stand-ins for LiveKit Inference that check what the
//!   gateway checks: [`inference::chat`] (chat completions, also as Baseten,
//!   Moonshot or vLLM) and [`inference::speech`] (the STT and TTS websockets).
//! - here: [`HarnessError`] and its [`err`], [`init_logging`], [`cache_dir`],
//!   [`scratch`], [`path_str`].
//!
//! The names the end-to-end tests use are re-exported here (`use
//! e2e_tests::{…}`); the LiveKit Inference stand-ins (two `Gateway`s) and
//! the HTTP request reader are reached through their modules.
//! Everything that waits is bounded by a timeout; nothing here panics on a
//! missing tool — it returns an error that names `tests/setup.sh`.

pub mod agent_process;
pub mod audio;
pub mod http;
pub mod human;
pub mod inference;
pub mod llm;
pub mod proxy;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use agent_process::{
    AgentProcess, MCP_EVERYTHING_VERSION, example_bin, mcp_everything, metric, strip_ansi,
    voice_agent_bin,
};
pub use audio::{
    Pcm, correlation, envelope, espeak, espeak_pcm, espeak_turns, match_speech, read_wav, resample,
    voiced, write_wav,
};
pub use http::http_get;
pub use human::{Human, agent_track_sid, final_transcriptions, is_agent, python};
pub use llm::{
    LlmAnswer, LlmStandIn, check_tool_history, llm_stand_in, messages_of, tool_names, tool_results,
};
pub use proxy::TcpProxy;
pub use server::{
    API_KEY, API_SECRET, LIVEKIT_SERVER_VERSION, LiveKitServer, create_dispatch, free_port,
    server_bin, token, token_dispatching,
};

/// Harness errors.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A tool the tests need is not installed.
    #[error(
        "{0} not found: run `tests/setup.sh` first (it installs the LiveKit server, the Python SDK venv and espeak-ng)"
    )]
    Missing(String),
    /// Process or file trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A [`HarnessError::Other`] saying `msg`.
pub fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError::Other(msg.into())
}

/// `p` as the `&str` a script's argument needs.
pub fn path_str(p: &Path) -> Result<&str, HarnessError> {
    p.to_str().ok_or_else(|| err("non-UTF-8 path"))
}

/// Log to stderr per `RUST_LOG` (e.g. `RUST_LOG=rtc=debug`); call at the start of a test.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Where `tests/setup.sh` caches what the tests need: the server, the venv,
/// the npm packages (`$VOICE_AGENT_TEST_CACHE`, by default
/// `~/.cache/voice-agent-test`).
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VOICE_AGENT_TEST_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/voice-agent-test")
}

/// A new empty directory under the system's temporary directory, unique to
/// this call (process id and a counter) and named after `name`. Panics if it
/// cannot be made: nothing can be tested on such a machine.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("va-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot make the scratch directory {}: {e}", dir.display());
    }
    dir
}
