//! Drain: SIGTERM while the agent is answering → health turns 503, the reply
//! is still finished (its final transcription arrives), the process exits 0.

use std::time::{Duration, Instant};

use tokio::process::Command;

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, err, espeak, init_logging, llm_stand_in,
    token,
};

const REPLY: &str = "The capital of France is Paris. It is a lovely city.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_reply_finishes_the_reply_and_exits_zero() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let llm = llm_stand_in(REPLY).await?;
    let llm_url = llm.url.clone();
    let AgentProcess {
        child: mut agent,
        http_port: _,
        dir,
        log_path,
    } = AgentProcess::start(&server, "drain-e2e", &llm_url, 20.0, &[]).await?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

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
