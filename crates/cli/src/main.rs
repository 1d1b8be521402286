//! `voice-agent`: the binary. Parses the command line, loads the config,
//! builds the stages it names and runs the chosen mode.
//!
//! # Layout
//! - `main.rs`: commands and logging.
//! - `serve`: `start`, `dev` and `connect` (the LiveKit worker), signals.
//! - `config`: `agent-config/agent.toml`.
//! - `stages`: config → the engines a session runs on.

mod config;
mod serve;
mod stages;

use std::path::PathBuf;
use std::process::ExitCode;

use agent::session::{self, AudioIo};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "voice-agent",
    version,
    about = "A real-time voice agent: STT → Kimi → TTS"
)]
struct Cli {
    /// Config file (default: agent-config/agent.toml when present).
    #[arg(long, global = true, env = "VOICE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Talk to the agent locally.
    Console(ConsoleArgs),
    /// Run the worker for production (JSON logs): register with LiveKit
    /// (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) and take jobs.
    Start,
    /// Run the worker with readable logs.
    Dev,
    /// Join one room directly, minting a token from the API key and secret.
    Connect {
        /// The room to join.
        #[arg(long)]
        room: String,
        /// The agent's participant identity.
        #[arg(long, default_value = "voice-agent")]
        identity: String,
    },
    /// Fetch the local models (VAD, end of turn, STT, TTS, ONNX runtime).
    DownloadFiles {
        /// Cache directory (default: models.cache_dir, $VOICE_AGENT_CACHE, or ~/.cache/voice-agent).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false, id = "mode")]
struct ConsoleMode {
    /// Text only: each line on stdin is a user turn; replies go to stdout.
    #[arg(long)]
    text: bool,
    /// A WAV file as the microphone (any rate and channel count).
    #[arg(long, value_name = "IN.wav", requires = "output_file")]
    input_file: Option<PathBuf>,
}

#[derive(Args)]
struct ConsoleArgs {
    #[command(flatten)]
    mode: ConsoleMode,
    /// Where the agent's speech goes, with --input-file.
    #[arg(long, value_name = "OUT.wav", requires = "input_file")]
    output_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Start | Command::Dev | Command::Connect { .. } => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if matches!(cli.command, Command::Start) {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let loaded = config::load(cli.config.as_deref())?;
    match &loaded.path {
        Some(path) => tracing::info!(config = %path.display(), "config loaded"),
        None => tracing::info!("no config file: built-in defaults"),
    }
    let config = loaded.config;
    match cli.command {
        Command::Start | Command::Dev => serve::worker(&config).await,
        Command::Connect { room, identity } => serve::connect(&config, &room, &identity).await,
        Command::DownloadFiles { cache_dir } => {
            let cache = stages::model_cache(cache_dir.or(config.models.cache_dir.clone()));
            eprintln!("model cache: {}", cache.root().display());
            tokio::task::spawn_blocking(move || {
                cache.download(&[], &mut |line: &str| eprintln!("{line}"))
            })
            .await
            .context("download task failed")?
            .context("download-files failed")?;
            eprintln!("all model files are in place");
            Ok(())
        }
        Command::Console(args) => {
            if args.mode.text {
                console_text(&config).await
            } else if let (Some(input), Some(output)) = (args.mode.input_file, args.output_file) {
                console_file(&config, input, output).await
            } else {
                anyhow::bail!("give --text, or --input-file with --output-file")
            }
        }
    }
}

async fn console_text(config: &config::Config) -> Result<()> {
    let stages = stages::text_only(config)?;
    let (handle, events, task) = session::start(
        stages,
        config.session_options(),
        AudioIo {
            input: None,
            output: None,
        },
    );
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let result = console::text::run(handle, events, stdin, tokio::io::stdout()).await;
    // The handle went with `run`; the session ends once its reply is over.
    let _ = task.await;
    result.context("console")?;
    Ok(())
}

async fn console_file(config: &config::Config, input: PathBuf, output: PathBuf) -> Result<()> {
    let stages = stages::build(config).await?;
    let summary = console::file::run(
        stages,
        config.session_options(),
        console::file::FileOptions {
            input,
            output,
            output_rate: config.tts.output_sample_rate,
        },
        tokio::io::stdout(),
    )
    .await
    .context("console")?;
    tracing::info!(
        turns = summary.turns.len(),
        media_s = summary.duration.as_secs_f64(),
        wall_s = summary.wall.as_secs_f64(),
        "file processed"
    );
    Ok(())
}
