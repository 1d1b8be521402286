//! The worker end to end: the real `voice-agent dev` process registers with the
//! real livekit-server; the real LiveKit Python client joins a new room, which
//! dispatches the agent automatically; the client speaks an espeak-ng question
//! and gets the agent's spoken answer (local whisper STT, an OpenAI-compatible
//! LLM stand-in, espeak-ng TTS), both transcriptions on `lk.transcription`, and
//! `lk.agent.state` listening → thinking → speaking → listening. SIGTERM then
//! drains the worker and it exits 0.

use std::time::{Duration, Instant};

use tokio::process::Command;

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, err, espeak, http_get, init_logging,
    llm_stand_in, token,
};

const REPLY: &str = "The capital of France is Paris. It is a lovely city.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_worker_is_dispatched_answers_and_drains() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let llm = llm_stand_in(REPLY).await?;
    let llm_url = llm.url.clone();
    let AgentProcess {
        child: mut agent,
        http_port,
        dir,
        log_path,
    } = AgentProcess::start(&server, "worker-e2e", &llm_url, 20.0, &[]).await?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let question = dir.join("question.wav");
    espeak("What is the capital of France?", &question).await?;
    let recorded = dir.join("agent.wav");
    let user_token = token("human", "worker-e2e")?;
    let mut human = Human::spawn(
        &server.url(),
        &user_token,
        &[
            "--publish-wav",
            question.to_str().ok_or_else(|| err("path"))?,
            "--publish-delay",
            "1.0",
            "--record-wav",
            recorded.to_str().ok_or_else(|| err("path"))?,
            "--record-seconds",
            "25",
            "--text-topic",
            "lk.transcription",
            "--duration",
            "45",
        ],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(30)).await?;
    let joined = Instant::now();
    let agent_p = human
        .wait_agent(Duration::from_secs(20))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    let dispatch = joined.elapsed();
    eprintln!("dispatch: user joined → agent in the room after {dispatch:?}");
    let agent_identity = agent_p["identity"].as_str().unwrap_or_default().to_owned();

    // Everything the client saw up to the end of the recording.
    human
        .wait_event("recorded", Duration::from_secs(60))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    let seen = human.seen.clone();
    let states: Vec<String> = seen
        .iter()
        .filter(|v| v["identity"].as_str() == Some(agent_identity.as_str()))
        .filter_map(|v| {
            v["attributes"]["lk.agent.state"]
                .as_str()
                .map(str::to_owned)
        })
        .fold(Vec::new(), |mut acc, s| {
            if acc.last() != Some(&s) {
                acc.push(s);
            }
            acc
        });
    eprintln!("agent states: {states:?}");
    let pos = |from: usize, s: &str| states[from..].iter().position(|x| x == s).map(|p| p + from);
    let ok = pos(0, "listening")
        .and_then(|a| pos(a, "thinking"))
        .and_then(|b| pos(b, "speaking"))
        .and_then(|c| pos(c, "listening"));
    if ok.is_none() {
        return Err(err(format!(
            "states {states:?} lack listening → thinking → speaking → listening; log:\n{}",
            agent_log()
        )));
    }
    let texts: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|v| v["event"] == "text" && v["topic"] == "lk.transcription")
        .collect();
    eprintln!("transcriptions: {texts:?}");
    let finals = |pred: &dyn Fn(&str) -> bool| {
        texts.iter().any(|v| {
            v["attributes"]["lk.transcription_final"] == "true"
                && v["attributes"]["lk.segment_id"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
                && v["attributes"]["lk.transcribed_track_id"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("TR_"))
                && v["text"].as_str().is_some_and(pred)
        })
    };
    if !finals(&|t| t.contains("Paris")) {
        return Err(err(format!(
            "no final agent transcription with Paris: {texts:?}"
        )));
    }
    if !finals(&|t| t.to_lowercase().contains("capital") || t.to_lowercase().contains("france")) {
        return Err(err(format!(
            "no final user transcription of the question: {texts:?}"
        )));
    }
    let pcm = e2e_tests::read_wav(&recorded)?;
    let env = e2e_tests::envelope(&pcm);
    if e2e_tests::voiced(&env).is_none() {
        return Err(err("the agent's audio is silent"));
    }
    if llm.count() == 0 {
        return Err(err("the LLM stand-in was never asked"));
    }
    let (_, metrics) = http_get(http_port, "/metrics").await?;
    if !metrics.contains("voice_agent_sessions_total 1") {
        return Err(err(format!("metrics: {metrics}")));
    }

    // SIGTERM: drain, leave, exit 0.
    let pid = agent.id().ok_or_else(|| err("no pid"))?;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        return Err(err("kill -TERM failed"));
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .map_err(|_| err(format!("no exit after SIGTERM; log:\n{}", agent_log())))??;
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
