//! Barge-in: the user asks for a long answer, then speaks over the agent. The
//! agent's audio stops (measured from the onset of the user's speech to the
//! last agent audio before the silence, in the user's own recording), and the
//! history holds only what was played: the next LLM request carries the
//! interrupted answer cut short, not the whole text the LLM produced.

use std::time::Duration;

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, LlmAnswer, LlmStandIn, agent_track_sid,
    envelope, err, espeak, final_transcriptions, http_get, init_logging, messages_of, path_str,
    read_wav, token,
};

const LONG: &str = "Let me tell you about Paris. It is the capital of France. \
    It has many museums, gardens and old bridges. The river Seine flows through the middle of the city. \
    Millions of people visit it every year to see its famous tower. \
    The food there is known all over the world, from bread to cheese.";
const STOPPED: &str = "Okay, I will stop.";

fn time_of(seen: &[serde_json::Value], event: &str) -> Result<f64, HarnessError> {
    seen.iter()
        .find(|v| v["event"] == event)
        .and_then(|v| v["t"].as_f64())
        .ok_or_else(|| err(format!("no {event} event: {seen:?}")))
}

/// Words of `text`, lowercased, without punctuation.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaking_over_the_agent_stops_it_and_keeps_only_what_was_played()
-> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    // The first request gets the long answer, the one after the barge-in the
    // short one.
    let llm = LlmStandIn::start(|request| {
        if messages_of(request, "user").len() > 1 {
            LlmAnswer::Reply(STOPPED.to_owned())
        } else {
            LlmAnswer::Reply(LONG.to_owned())
        }
    })
    .await?;
    let agent = AgentProcess::start(&server, "barge-in-e2e", &llm.url, 5.0, &[]).await?;
    let agent_log = || std::fs::read_to_string(&agent.log_path).unwrap_or_default();

    let question = agent.dir.join("question.wav");
    espeak("Tell me about Paris.", &question).await?;
    let barge = agent.dir.join("barge.wav");
    espeak("Stop, please stop talking now.", &barge).await?;
    let recorded = agent.dir.join("agent.wav");
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "barge-in")?,
        &[
            "--publish-wav",
            path_str(&question)?,
            "--barge-wav",
            path_str(&barge)?,
            "--barge-after",
            "2.5",
            "--record-wav",
            path_str(&recorded)?,
            "--record-seconds",
            "30",
            "--text-topic",
            "lk.transcription",
            "--duration",
            "45",
        ],
    )
    .await?;
    human
        .wait_event("done", Duration::from_secs(90))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    let seen = human.seen.clone();

    // Speech onset of the barge-in, on the recording's time line.
    let record_start = time_of(&seen, "record_start")?;
    let barge_at = time_of(&seen, "barge")?;
    let barge_pcm = read_wav(&barge)?;
    let barge_env = envelope(&barge_pcm);
    let (barge_lead, _) = e2e_tests::voiced(&barge_env).ok_or_else(|| err("silent barge-in"))?;
    // The first frame is captured 10 ms after playback of it began.
    let onset = barge_at - 0.010 - record_start + barge_lead as f64 * 0.010;

    // The agent's audio: where does it go silent after the onset?
    let pcm = read_wav(&recorded)?;
    let env = envelope(&pcm);
    let start = (onset * 100.0) as usize;
    if start >= env.len() {
        return Err(err(format!(
            "recording ({} windows) ends before the barge-in at {onset:.2} s",
            env.len()
        )));
    }
    if env[start.saturating_sub(20)..start]
        .iter()
        .all(|&e| e < 300.0)
    {
        return Err(err("the agent was not speaking when the user barged in"));
    }
    // 300 ms of silence ends the agent's speech.
    let quiet = 30;
    let stop = (start..env.len().saturating_sub(quiet))
        .find(|&i| env[i..i + quiet].iter().all(|&e| e < 300.0))
        .ok_or_else(|| err("the agent never stopped speaking"))?;
    let latency = stop as f64 * 0.010 - onset;
    eprintln!(
        "barge-in: agent audio stopped {:.0} ms after the user's speech onset",
        latency * 1000.0
    );
    if latency > 1.5 {
        return Err(err(format!(
            "the agent kept speaking {latency:.2} s after the user started"
        )));
    }

    // The history: the request answering the barge-in carries the interrupted
    // answer, cut to what was played.
    let requests = llm.requests();
    let second = requests.get(1).ok_or_else(|| {
        err(format!(
            "the barge-in was not answered: {} requests; log:\n{}",
            requests.len(),
            agent_log()
        ))
    })?;
    let assistant = second["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "assistant"))
        .and_then(|m| m["content"].as_str())
        .ok_or_else(|| err(format!("no assistant message in {second}")))?;
    let (played, full) = (words(assistant), words(LONG));
    eprintln!("history after barge-in: {assistant:?}");
    if played.is_empty() || played.len() >= full.len() || full[..played.len()] != played[..] {
        return Err(err(format!(
            "the history should hold a strict prefix of the answer, got {assistant:?}"
        )));
    }
    let track = agent_track_sid(&seen).ok_or_else(|| err("no agent track"))?;
    let said = final_transcriptions(&seen, &track);
    eprintln!("agent transcriptions: {said:?}");
    if !said.iter().any(|t| words(t) == played) {
        return Err(err(format!(
            "no final agent transcription equal to the played text: {said:?}"
        )));
    }
    if !said.iter().any(|t| t == STOPPED) {
        return Err(err(format!("the barge-in was not answered: {said:?}")));
    }
    let (_, metrics) = http_get(agent.http_port, "/metrics").await?;
    if !metrics.contains("voice_agent_interruptions_total 1") {
        return Err(err(format!(
            "metrics should count one interruption: {metrics}"
        )));
    }
    let _ = std::fs::remove_dir_all(&agent.dir);
    Ok(())
}
