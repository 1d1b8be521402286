//! The command line every voice-agent program has: `console`, `dev`,
//! `start`, `connect`, `download-files`; logging; the async runtime.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use agent::session::{self, AudioIo, SessionOptions};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use worker::Entrypoint;

use crate::{config, serve, stages, stock};

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
#[group(required = false, multiple = false, id = "mode")]
struct ConsoleMode {
    /// Text only: each line on stdin is a user turn; replies go to stdout.
    #[arg(long)]
    text: bool,
    /// A WAV file as the microphone (any rate and channel count).
    #[arg(long, value_name = "IN.wav", requires = "output_file")]
    input_file: Option<PathBuf>,
    /// List the audio devices and exit.
    #[arg(long)]
    list_devices: bool,
}

/// Without a mode flag, the console talks through the audio devices.
#[derive(Args)]
struct ConsoleArgs {
    #[command(flatten)]
    mode: ConsoleMode,
    /// Where the agent's speech goes, with --input-file.
    #[arg(long, value_name = "OUT.wav", requires = "input_file")]
    output_file: Option<PathBuf>,
    /// Microphone, by name or a unique part of it (see --list-devices).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["text", "input_file", "list_devices"])]
    input_device: Option<String>,
    /// Speaker, by name or a unique part of it (see --list-devices).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["text", "input_file", "list_devices"])]
    output_device: Option<String>,
    /// Turn echo cancellation off (with headphones, or to hear the
    /// difference: the agent then hears, and interrupts, itself).
    #[arg(long, conflicts_with_all = ["text", "input_file", "list_devices"])]
    no_aec: bool,
    /// Record both sides to a stereo WAV (microphone left, agent right).
    #[arg(long, value_name = "FILE.wav", conflicts_with_all = ["text", "input_file", "list_devices"])]
    record: Option<PathBuf>,
}

/// What a worker logs unless `RUST_LOG` says otherwise: our own `info`, and only
/// errors from webrtc-rs's internals. They warn of routine steps at every join
/// (ICE checks before the server's candidates come, SCTP's first packet), and
/// 0.21 cannot parse the SDES that LiveKit's SFU sends with every sender report
/// (a MID item, RFC 8843): a warning per session every 3 s, 65 a second at 200
/// sessions. Our engine logs connection changes itself.
/// rmcp logs every message it receives at `info`.
const ROOM_LOGS: &str = "info,rtc::peer_connection=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error,rmcp=warn";

/// Where a program's agents come from.
pub(crate) enum Source {
    /// The stock agent, from `agent.toml` alone.
    Stock,
    /// The program's own entrypoint.
    Program(Entrypoint),
}

pub(crate) fn main<I, T>(source: Source, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let default_filter = match cli.command {
        Command::Start | Command::Dev | Command::Connect { .. } => ROOM_LOGS,
        // The PulseAudio client logs its own disconnection at exit as an error.
        Command::Console(_) => "warn,pulseaudio=off",
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
    let result = runtime.block_on(run(cli, source));
    // Model loading and other blocking work may still be running on the
    // runtime's threads: stop them before the process exits.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, source: Source) -> Result<()> {
    let loaded = config::load(cli.config.as_deref())?;
    match &loaded.path {
        Some(path) => tracing::info!(config = %path.display(), "config loaded"),
        None => tracing::info!("no config file: built-in defaults"),
    }
    let config = loaded.config;
    if let Command::DownloadFiles { cache_dir } = cli.command {
        // Without the `local-speech` feature: nothing to download.
        return stages::download_files(&config, cache_dir).await;
    }
    if let Command::Console(ConsoleArgs {
        mode: ConsoleMode {
            list_devices: true, ..
        },
        ..
    }) = cli.command
    {
        let list = tokio::task::spawn_blocking(local_io::devices::list)
            .await
            .context("device listing task failed")?
            .context("cannot list the audio devices")?;
        print!("{list}");
        return Ok(());
    }
    // The stock agent's MCP servers live as long as the program.
    let (entrypoint, _servers) = match source {
        Source::Program(entrypoint) => (entrypoint, Vec::new()),
        Source::Stock => stock::entrypoint(&config).await?,
    };
    match cli.command {
        Command::Start | Command::Dev => serve::worker(&config, entrypoint).await,
        Command::Connect { room, identity } => {
            serve::connect(&config, entrypoint, &room, &identity).await
        }
        Command::DownloadFiles { .. } => Ok(()),
        Command::Console(args) => {
            let options = console_session(&config, &entrypoint).await?;
            if args.mode.text {
                console_text(&config, options).await
            } else if let (Some(input), Some(output)) = (&args.mode.input_file, &args.output_file) {
                console_file(&config, options, input.clone(), output.clone()).await
            } else {
                console_devices(&config, options, args).await
            }
        }
    }
}

/// The console's one session: the entrypoint runs as for a room with no
/// room (an empty job context).
async fn console_session(
    config: &config::Config,
    entrypoint: &Entrypoint,
) -> Result<SessionOptions> {
    let setup = entrypoint(agent::JobContext::default())
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the agent's entrypoint failed")?;
    Ok(config.session_options().with_setup(setup))
}

async fn console_text(config: &config::Config, options: SessionOptions) -> Result<()> {
    let stages = stages::text_only(config)?;
    let (handle, events, task) = session::start(
        stages,
        options,
        AudioIo {
            input: None,
            output: None,
        },
    );
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let result = local_io::text::run(handle, events, stdin, tokio::io::stdout()).await;
    // The handle went with `run`; the session ends once its reply is over.
    let _ = task.await;
    result.context("console")?;
    Ok(())
}

async fn console_devices(
    config: &config::Config,
    options: SessionOptions,
    args: ConsoleArgs,
) -> Result<()> {
    use std::io::IsTerminal;
    // Find the devices before loading models: a machine without them is
    // told so at once.
    let (input, output) = (args.input_device.clone(), args.output_device.clone());
    tokio::task::spawn_blocking(move || {
        local_io::devices::probe(input.as_deref(), output.as_deref())
    })
    .await
    .context("device probe task failed")?
    .context("console")?;
    let stages = stages::build(config).await?;
    let shutdown = async {
        // Ctrl-C (or SIGTERM) ends the conversation; a signal handler that
        // cannot be installed leaves the other.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
    };
    let summary = local_io::live::run(
        stages,
        options,
        local_io::live::DeviceOptions {
            input_device: args.input_device,
            output_device: args.output_device,
            echo_cancellation: !args.no_aec,
            record: args.record,
            tty: std::io::stdout().is_terminal(),
        },
        tokio::io::stdout(),
        shutdown,
    )
    .await
    .context("console")?;
    tracing::info!(
        turns = summary.metrics.len(),
        mean_buffering_ms = summary.audio.mean_buffering.as_secs_f64() * 1000.0,
        "console ended"
    );
    Ok(())
}

async fn console_file(
    config: &config::Config,
    options: SessionOptions,
    input: PathBuf,
    output: PathBuf,
) -> Result<()> {
    let stages = stages::build(config).await?;
    let summary = local_io::file::run(
        stages,
        options,
        local_io::file::FileOptions {
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
