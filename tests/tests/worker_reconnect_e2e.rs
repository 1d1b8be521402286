//! Server loss: the `voice-agent dev` worker notices the server is gone (health
//! turns 503), reconnects with backoff and registers again (health 200, one
//! reconnect in the metrics), and is then dispatched to a new room.

use std::time::{Duration, Instant};

use e2e_tests::{
    API_KEY, API_SECRET, HarnessError, Human, LiveKitServer, free_port, http_get, init_logging,
    llm_stand_in, token, voice_agent_bin,
};
use tokio::process::Command;

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError::Other(msg.into())
}

async fn wait_health(port: u16, want: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok((status, _)) = http_get(port, "/").await
            && status == want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_registers_again_after_server_restart() -> Result<(), HarnessError> {
    init_logging();
    let mut server = LiveKitServer::start().await?;
    let (llm_url, _) = llm_stand_in("Hello.").await?;
    let dir = std::env::temp_dir().join(format!("va-reconnect-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let http_port = free_port(false)?;
    let config = format!(
        "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{llm_url}\"\n\
         [tts]\nengine = \"espeak\"\n[turn]\ndetector = \"none\"\n\
         [worker]\nhttp_port = {http_port}\ndrain_timeout = 5.0\n"
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut agent = Command::new(voice_agent_bin()?)
        .arg("--config")
        .arg(&config_path)
        .arg("dev")
        .env("LIVEKIT_URL", server.url())
        .env("LIVEKIT_API_KEY", API_KEY)
        .env("LIVEKIT_API_SECRET", API_SECRET)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(http_port, "/").await {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err(err(format!(
                "worker never became healthy; log:\n{}",
                agent_log()
            )));
        }
        if let Ok(Some(status)) = agent.try_wait() {
            return Err(err(format!(
                "voice-agent exited ({status}); log:\n{}",
                agent_log()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Kill first and see the worker notice, then bring the server back.
    server.kill().await?;
    if !wait_health(http_port, 503, Duration::from_secs(20)).await {
        return Err(err(format!(
            "health never went 503 after the server died; log:\n{}",
            agent_log()
        )));
    }
    server.restart().await?;
    let lost = Instant::now();
    if !wait_health(http_port, 200, Duration::from_secs(40)).await {
        return Err(err(format!(
            "worker never registered again; log:\n{}",
            agent_log()
        )));
    }
    eprintln!("re-registered {:?} after the restart", lost.elapsed());
    let (_, metrics) = http_get(http_port, "/metrics").await?;
    if !metrics.contains("voice_agent_worker_reconnects_total 1") {
        return Err(err(format!("metrics: {metrics}")));
    }
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "after-restart")?,
        &["--duration", "20"],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(30)).await?;
    loop {
        let p = human
            .wait_event("participant", Duration::from_secs(15))
            .await
            .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
        if p["identity"]
            .as_str()
            .is_some_and(|i| i.starts_with("agent-"))
        {
            break;
        }
    }
    human.kill().await;
    let _ = agent.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
