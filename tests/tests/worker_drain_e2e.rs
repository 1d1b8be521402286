//! Drain: SIGTERM while the agent is answering → health turns 503, the reply
//! is still finished (its final transcription arrives), the process exits 0.

use std::time::{Duration, Instant};

use e2e_tests::{
    API_KEY, API_SECRET, HarnessError, Human, LiveKitServer, espeak, free_port, http_get,
    init_logging, llm_stand_in, token, voice_agent_bin,
};
use tokio::process::Command;

const REPLY: &str = "The capital of France is Paris. It is a lovely city.";

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError::Other(msg.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_reply_finishes_the_reply_and_exits_zero() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let (llm_url, _) = llm_stand_in(REPLY).await?;
    let dir = std::env::temp_dir().join(format!("va-drain-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let http_port = free_port(false)?;
    let config = format!(
        "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{llm_url}\"\nmax_retries = 0\n\
         [tts]\nengine = \"espeak\"\n\
         [turn]\ndetector = \"none\"\n\
         [worker]\nhttp_port = {http_port}\ndrain_timeout = 20.0\n"
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

    // Healthy once registered (stages load first: whisper, espeak).
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
    eprintln!("worker registered after {:?}", started.elapsed());

    let question = dir.join("question.wav");
    espeak("What is the capital of France?", &question).await?;
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "drain-e2e")?,
        &[
            "--publish-wav",
            question.to_str().ok_or_else(|| err("path"))?,
            "--text-topic",
            "lk.transcription",
            "--duration",
            "60",
        ],
    )
    .await?;
    // Wait for the agent to start answering.
    loop {
        let v = human
            .wait_event("attributes", Duration::from_secs(40))
            .await
            .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
        let state = v["attributes"]["lk.agent.state"]
            .as_str()
            .unwrap_or_default();
        if state == "thinking" || state == "speaking" {
            break;
        }
    }
    let pid = agent.id().ok_or_else(|| err("no pid"))?;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        return Err(err("kill -TERM failed"));
    }
    // The reply still ends: its final transcription arrives.
    loop {
        let v = human
            .wait_event("text", Duration::from_secs(30))
            .await
            .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
        if v["attributes"]["lk.transcription_final"] == "true"
            && v["text"].as_str().is_some_and(|t| t.contains("Paris"))
        {
            break;
        }
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .map_err(|_| err(format!("no exit after SIGTERM; log:\n{}", agent_log())))??;
    eprintln!("exited {exit} {:?} after SIGTERM", signalled.elapsed());
    if !exit.success() {
        return Err(err(format!(
            "exit {exit} after SIGTERM; log:\n{}",
            agent_log()
        )));
    }
    human.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
