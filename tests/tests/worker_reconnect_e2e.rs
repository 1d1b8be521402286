//! Server loss: the `voice-agent dev` worker notices the server is gone (health
//! turns 503), reconnects with backoff and registers again (health 200, one
//! reconnect in the metrics), and is then dispatched to a new room.

use std::time::{Duration, Instant};

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, err, http_get, init_logging, llm_stand_in,
    token,
};

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
    let llm = llm_stand_in("Hello.").await?;
    let llm_url = llm.url.clone();
    let AgentProcess {
        child: mut agent,
        http_port,
        dir,
        log_path,
    } = AgentProcess::start(&server, "reconnect-e2e", &llm_url, 5.0, &[]).await?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

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
    human
        .wait_agent(Duration::from_secs(15))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    human.kill().await;
    let _ = agent.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
