//! The agent side as a user runs it: [`AgentProcess`] is a real `voice-agent
//! dev` worker (or a program built on the library, [`example_bin`])
//! configured against a [`LiveKitServer`] and an LLM stand-in; the binaries
//! cargo builds next to the tests; the MCP reference server the agents
//! use; and readers of what an agent process prints and serves (its logs
//! without colours, its Prometheus metrics).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::http::http_get;
use crate::server::{API_KEY, API_SECRET, LiveKitServer, free_port};
use crate::{HarnessError, cache_dir};

/// A real `voice-agent dev` process, registered with `server` and healthy:
/// the LLM is the stand-in at `llm_url`, speech is local (whisper, espeak-ng),
/// turns end on silence alone. Killed when dropped.
pub struct AgentProcess {
    /// The process; dropping it kills it (`kill_on_drop`).
    pub child: Child,
    /// Its health and metrics port.
    pub http_port: u16,
    /// Scratch directory holding its config and log.
    pub dir: PathBuf,
    /// Everything it wrote to stdout and stderr.
    pub log_path: PathBuf,
}

impl AgentProcess {
    /// Writes the config, starts the process with `env` added, and waits
    /// (up to 90 s) until its health check answers 200.
    pub async fn start(
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
    ) -> Result<Self, HarnessError> {
        Self::start_configured(server, name, llm_url, drain_timeout_s, env, "", "").await
    }

    /// [`AgentProcess::start`] with `llm_keys` added to the `[llm]` table and
    /// `sections` (whole TOML tables) appended to the config.
    pub async fn start_configured(
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
        llm_keys: &str,
        sections: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_program(
            &voice_agent_bin()?,
            server,
            name,
            llm_url,
            drain_timeout_s,
            env,
            llm_keys,
            sections,
        )
        .await
    }

    /// [`AgentProcess::start_configured`] for another program built on the
    /// `voice-agent` library (an example, see [`example_bin`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_program(
        program: &Path,
        server: &LiveKitServer,
        name: &str,
        llm_url: &str,
        drain_timeout_s: f64,
        env: &[(&str, &str)],
        llm_keys: &str,
        sections: &str,
    ) -> Result<Self, HarnessError> {
        let dir = std::env::temp_dir().join(format!("va-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let http_port = free_port(false)?;
        let config = format!(
            "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{llm_url}\"\nmax_retries = 0\n{llm_keys}\n\
             [tts]\nengine = \"espeak\"\n\
             [turn]\ndetector = \"none\"\n\
             [worker]\nhttp_port = {http_port}\ndrain_timeout = {drain_timeout_s:?}\n{sections}\n"
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(program)
            .arg("--config")
            .arg(&config_path)
            .arg("dev")
            .env("LIVEKIT_URL", server.url())
            .env("LIVEKIT_API_KEY", API_KEY)
            .env("LIVEKIT_API_SECRET", API_SECRET)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // Healthy once registered (stages load first: whisper, espeak).
        let started = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = http_get(http_port, "/").await {
                break;
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(HarnessError::Other(format!(
                    "worker never became healthy; log:\n{}",
                    read_log()
                )));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HarnessError::Other(format!(
                    "voice-agent exited ({status}); log:\n{}",
                    read_log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("worker registered after {:?}", started.elapsed());
        Ok(Self {
            child,
            http_port,
            dir,
            log_path,
        })
    }
}

/// The `voice-agent` binary next to this test executable (`target/<profile>/voice-agent`).
/// `cargo test --workspace` builds it; for `cargo test -p e2e-tests` run
/// `cargo build -p voice-agent` first.
pub fn voice_agent_bin() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/voice-agent
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("voice-agent"))
        .ok_or_else(|| HarnessError::Other("no target directory".into()))?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(format!(
            "{} (build it with `cargo build -p voice-agent`)",
            p.display()
        )))
    }
}

/// A cargo example of the `voice-agent` crate, built next to the test
/// (`cargo test` builds the examples).
pub fn example_bin(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join(name))
        .ok_or_else(|| HarnessError::Other("no target directory".into()))?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(format!(
            "{} (build it with `cargo build -p voice-agent --examples`)",
            p.display()
        )))
    }
}

/// The version of `@modelcontextprotocol/server-everything` that
/// `tests/setup.sh` installs.
pub const MCP_EVERYTHING_VERSION: &str = "2026.8.31";

/// The reference MCP server `@modelcontextprotocol/server-everything`, as
/// `tests/setup.sh` installs it: its `dist/index.js`, if the installed
/// version is [`MCP_EVERYTHING_VERSION`].
pub fn mcp_everything() -> Result<PathBuf, HarnessError> {
    let dir = cache_dir().join("npm/node_modules/@modelcontextprotocol/server-everything");
    let index = dir.join("dist/index.js");
    let package = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
    let version = serde_json::from_str::<serde_json::Value>(&package)
        .ok()
        .and_then(|p| p["version"].as_str().map(str::to_string));
    if index.is_file() && version.as_deref() == Some(MCP_EVERYTHING_VERSION) {
        Ok(index)
    } else {
        Err(HarnessError::Missing(format!(
            "@modelcontextprotocol/server-everything@{MCP_EVERYTHING_VERSION} in {} \
             (found version {version:?})",
            dir.display()
        )))
    }
}

/// `text` without ANSI colour sequences (the agent's readable logs have them).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the Prometheus sample `name` (exact series text, labels
/// included) in `metrics`.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}
