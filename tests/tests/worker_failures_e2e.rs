//! The LLM gateway failing mid-session: in one room the user asks three
//! questions; the gateway answers the first with a 500 and stalls on the
//! second (no byte after the response head, until the idle timeout). The session survives both, tells the user each time (the configured
//! apology, spoken and transcribed), and answers the third. Meanwhile a second
//! room on the same worker is answered normally.

use std::time::Duration;

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, LlmAnswer, LlmStandIn, agent_track_sid, err,
    espeak, espeak_turns, final_transcriptions, http_get, init_logging, messages_of, path_str,
    token,
};

const APOLOGY: &str = "Sorry, I can't answer right now. Please try again in a moment.";
const ANSWER: &str = "The capital of France is Paris.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_failures_are_survived_and_told_while_other_rooms_go_on() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    // Whatever whisper makes of the espeak questions, the France question is
    // answered; room A's first other question gets a 500, its second a stall.
    let llm = LlmStandIn::start(|request| {
        let users = messages_of(request, "user");
        match users.last() {
            Some(q) if q.to_lowercase().contains("france") => LlmAnswer::Reply(ANSWER.to_owned()),
            _ if users.len() == 1 => LlmAnswer::Status(500),
            _ => LlmAnswer::Stall,
        }
    })
    .await?;
    let agent = AgentProcess::start_configured(
        &server,
        "failures-e2e",
        &llm.url,
        5.0,
        &[],
        "idle_timeout_ms = 2000",
        "",
    )
    .await?;
    let agent_log = || std::fs::read_to_string(&agent.log_path).unwrap_or_default();

    // Room A: 500, stall, then a question the gateway answers. The gaps leave
    // room for each apology to be spoken before the next question.
    let questions = agent.dir.join("questions.wav");
    espeak_turns(
        &[
            ("Hello there, how are you?", 9.0),
            ("What time is it now?", 10.0),
            ("What is the capital of France?", 1.0),
        ],
        &questions,
    )
    .await?;
    let recorded_a = agent.dir.join("a.wav");
    let mut human_a = Human::spawn(
        &server.url(),
        &token("human-a", "failures-a")?,
        &[
            "--publish-wav",
            path_str(&questions)?,
            "--record-wav",
            path_str(&recorded_a)?,
            "--record-seconds",
            "45",
            "--text-topic",
            "lk.transcription",
            "--duration",
            "70",
        ],
    )
    .await?;
    // Room B, at the same time: one question, answered.
    let question = agent.dir.join("question.wav");
    espeak("What is the capital of France?", &question).await?;
    let mut human_b = Human::spawn(
        &server.url(),
        &token("human-b", "failures-b")?,
        &[
            "--publish-wav",
            path_str(&question)?,
            "--publish-delay",
            "8",
            "--text-topic",
            "lk.transcription",
            "--duration",
            "40",
        ],
    )
    .await?;

    human_b
        .wait_event("done", Duration::from_secs(90))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    human_a
        .wait_event("done", Duration::from_secs(120))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;

    let track_a = agent_track_sid(&human_a.seen).ok_or_else(|| {
        err(format!(
            "room A: no agent track in {:?}; log:\n{}",
            human_a.seen,
            agent_log()
        ))
    })?;
    let said_a = final_transcriptions(&human_a.seen, &track_a);
    eprintln!("room A, agent said: {said_a:?}");
    let apologies: Vec<usize> = said_a
        .iter()
        .enumerate()
        .filter(|(_, t)| t.as_str() == APOLOGY)
        .map(|(i, _)| i)
        .collect();
    let answered = said_a.iter().position(|t| t.contains("Paris"));
    match (apologies.as_slice(), answered) {
        ([_, second, ..], Some(answer)) if answer > *second => {}
        _ => {
            return Err(err(format!(
                "room A: expected two apologies, then the answer; the agent said {said_a:?}; log:\n{}",
                agent_log()
            )));
        }
    }
    let pcm = e2e_tests::read_wav(&recorded_a)?;
    if e2e_tests::voiced(&e2e_tests::envelope(&pcm)).is_none() {
        return Err(err("room A: the agent's audio is silent"));
    }

    let track_b = agent_track_sid(&human_b.seen).ok_or_else(|| {
        err(format!(
            "room B: no agent track in {:?}; log:\n{}",
            human_b.seen,
            agent_log()
        ))
    })?;
    let said_b = final_transcriptions(&human_b.seen, &track_b);
    eprintln!("room B, agent said: {said_b:?}");
    if !said_b.iter().any(|t| t.contains("Paris")) {
        return Err(err(format!(
            "room B was not answered: {said_b:?}; log:\n{}",
            agent_log()
        )));
    }

    // Both failures are counted; the worker is still serving.
    let (status, metrics) = http_get(agent.http_port, "/metrics").await?;
    let llm_errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("voice_agent_errors_total") && l.contains("stage=\"llm\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if status != 200 || llm_errors < 2.0 {
        return Err(err(format!(
            "metrics should count two LLM errors: {metrics}"
        )));
    }
    let (health, _) = http_get(agent.http_port, "/").await?;
    if health != 200 {
        return Err(err(format!(
            "worker unhealthy after the failures: {health}"
        )));
    }
    if llm.count() < 4 {
        return Err(err(format!(
            "the gateway saw {} requests, want ≥ 4",
            llm.count()
        )));
    }
    let _ = std::fs::remove_dir_all(&agent.dir);
    Ok(())
}
