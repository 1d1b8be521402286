//! `start`, `dev` and `connect`: the LiveKit side. The server and keys come
//! from `LIVEKIT_URL`, `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` (never from
//! the config file; the secret is never logged). The first SIGTERM/SIGINT
//! drains (no new jobs, running sessions finish their reply up to
//! `worker.drain_timeout`, exit 0); a second one exits at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, oneshot, watch};
use worker::{Entrypoint, JobOptions, Metrics, RoomJob, SessionFactory, Stop, WorkerOptions};

use crate::config::Config;
use crate::stages;

/// Exit code when a second signal cuts the drain short.
const EXIT_INTERRUPTED: i32 = 130;

struct LiveKitEnv {
    url: String,
    api_key: String,
    api_secret: String,
}

fn livekit_env() -> Result<LiveKitEnv> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("{k} is not set"))
    };
    Ok(LiveKitEnv {
        url: get("LIVEKIT_URL")?,
        api_key: get("LIVEKIT_API_KEY")?,
        api_secret: get("LIVEKIT_API_SECRET")?,
    })
}

/// Whether the server URL's host is on loopback.
fn loopback_host(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
}

fn job_options(config: &Config, url: &str) -> JobOptions {
    let mut connect = room::ConnectOptions::default();
    if !config.worker.udp_addrs.is_empty() {
        connect.udp_addrs = config.worker.udp_addrs.clone();
    } else if loopback_host(url) {
        connect.udp_addrs = vec!["127.0.0.1:0".to_owned()];
    }
    JobOptions {
        connect,
        end_on_user_leave: config.worker.end_on_user_leave,
        user_identity: Some(config.worker.participant_identity.trim().to_owned())
            .filter(|i| !i.is_empty()),
        drain_timeout: Duration::from_secs_f64(config.worker.drain_timeout),
    }
}

async fn factory(config: &Config, entrypoint: Entrypoint) -> Result<Arc<SessionFactory>> {
    let rate = config.tts.output_sample_rate;
    if !room::OPUS_RATES.contains(&rate) {
        bail!(
            "key `tts.output_sample_rate`: {rate} is not an Opus rate (8000, 12000, 16000, 24000, 48000), needed in a room"
        );
    }
    Ok(Arc::new(SessionFactory {
        stages: stages::build(config).await?,
        options: config.session_options(),
        output_rate: rate,
        entrypoint,
    }))
}

/// Resolves on SIGTERM or SIGINT; never if neither can be watched.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return,
                r = tokio::signal::ctrl_c() => if r.is_ok() { return },
            }
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// First signal → `first`; second → exit at once.
fn watch_signals(first: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal: draining (a second signal exits at once)");
        first();
        signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(EXIT_INTERRUPTED);
    });
}

/// `start` / `dev`: the worker.
pub async fn worker(config: &Config, entrypoint: Entrypoint) -> Result<()> {
    let env = livekit_env()?;
    let factory = factory(config, entrypoint).await?;
    let agent_name = std::env::var("LIVEKIT_AGENT_NAME")
        .ok()
        .unwrap_or_else(|| config.worker.agent_name.clone());
    let http_addr = (config.worker.http_port != 0)
        .then(|| SocketAddr::from(([0, 0, 0, 0], config.worker.http_port)));
    let options = WorkerOptions {
        url: env.url.clone(),
        api_key: env.api_key,
        api_secret: env.api_secret.into(),
        agent_name: agent_name.clone(),
        max_jobs: config.worker.max_sessions,
        load_threshold: config.worker.load_threshold,
        drain_timeout: Duration::from_secs_f64(config.worker.drain_timeout),
        http_addr,
        report_interval: Duration::from_millis(2500),
    };
    tracing::info!(url = %env.url, agent_name = %agent_name, max_sessions = options.max_jobs, "starting the worker");
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    watch_signals(move || {
        let _ = drain_tx.send(());
    });
    let metrics = Arc::new(Metrics::default());
    worker::run(
        options,
        factory,
        Arc::new(job_options(config, &env.url)),
        metrics,
        async {
            // The sender lives in the signal task until the first signal.
            let _ = drain_rx.await;
        },
    )
    .await
    .context("worker")?;
    tracing::info!("drained: exiting");
    Ok(())
}

/// `connect --room NAME`: one session in one room, no worker registration.
pub async fn connect(
    config: &Config,
    entrypoint: Entrypoint,
    room: &str,
    identity: &str,
) -> Result<()> {
    let env = livekit_env()?;
    let factory = factory(config, entrypoint).await?;
    let token = worker::room_token(
        &env.api_key,
        &env.api_secret,
        identity,
        room,
        Duration::from_secs(6 * 3600),
    )?;
    let (stop_tx, stop_rx) = watch::channel(Stop::Run);
    watch_signals(move || {
        let _ = stop_tx.send(Stop::Drain);
    });
    let (joined_tx, mut joined_rx) = mpsc::channel(1);
    let job = RoomJob {
        job_id: format!("connect-{room}"),
        url: env.url.clone(),
        token,
        context: agent::JobContext {
            room_name: Some(room.to_owned()),
            ..Default::default()
        },
    };
    let options = Arc::new(job_options(config, &env.url));
    let metrics = Arc::new(Metrics::default());
    let run = worker::job::run(job, factory, options, metrics, stop_rx, joined_tx);
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        Some(_) = joined_rx.recv() => {
            tracing::info!(room, "joined");
            run.await
        }
    };
    result.with_context(|| format!("room {room}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_are_recognised() {
        assert!(loopback_host("ws://127.0.0.1:7880"));
        assert!(loopback_host("http://localhost:7880/"));
        assert!(!loopback_host("wss://example.org"));
    }
}
