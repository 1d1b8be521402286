//! Agents as code in real rooms (real LiveKit server, the LiveKit Python SDK
//! as the user, speech made with espeak-ng, local whisper and espeak-ng TTS,
//! an LLM stand-in that streams tool calls as Kimi does and refuses invalid
//! tool histories with Moonshot's 400):
//! - the `restaurant` example: its greeting heard before the user speaks, a
//!   spoken question answered through its tool, and what the tool says while
//!   it works heard while it runs;
//! - the `handoff` example: the host hands the question to the sommelier,
//!   whose instructions and tools answer it;
//! - the stock binary with an MCP server from `agent.toml` alone (the real
//!   `@modelcontextprotocol/server-everything`): its greeting, its
//!   long-running tool cut short by the user speaking, and a valid history in
//!   the next request.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, LlmAnswer, LlmStandIn, agent_track_sid,
    envelope, err, espeak_turns, example_bin, final_transcriptions, init_logging, mcp_everything,
    path_str, read_wav, token, tool_names, tool_results,
};
use serde_json::{Value, json};

fn last_role(request: &Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["role"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A user in `room` who speaks `wav` (published once the agent is there)
/// and records the agent for `seconds`.
async fn user(
    server: &LiveKitServer,
    room: &str,
    wav: &Path,
    recorded: &Path,
    seconds: f64,
) -> Result<Human, HarnessError> {
    let seconds = seconds.to_string();
    Human::spawn(
        &server.url(),
        &token("human", room)?,
        &[
            "--publish-wav",
            path_str(wav)?,
            "--publish-delay",
            "0.5",
            "--record-wav",
            path_str(recorded)?,
            "--record-seconds",
            &seconds,
            "--text-topic",
            "lk.transcription",
            "--duration",
            "90",
        ],
    )
    .await
}

/// The share of 10 ms windows of the recording between `from` and `to`
/// seconds that carry the agent's voice.
fn voiced_share(recorded: &Path, from: f64, to: f64) -> Result<f64, HarnessError> {
    let pcm = read_wav(recorded)?;
    let env = envelope(&pcm);
    let (a, b) = ((from * 100.0) as usize, (to * 100.0) as usize);
    let window = env.get(a..b.min(env.len())).unwrap_or_default();
    if window.is_empty() {
        return Ok(0.0);
    }
    Ok(window.iter().filter(|&&e| e > 300.0).count() as f64 / window.len() as f64)
}

/// Seconds from the recording's first frame (as the test read it) to `t`.
fn at(record_start: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(record_start).as_secs_f64()
}

const GREETING: &str = "Luigi's, good evening! How can I help?";
const SAY: &str = "One moment while I write that down.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restaurant_greets_answers_through_its_tool_and_is_heard_while_the_tool_works()
-> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    // The question asks for a booking: the model books, then reads the
    // reference the tool returned.
    let llm = LlmStandIn::start(|request| {
        match tool_results(request)
            .iter()
            .find(|(id, _)| id.starts_with("functions.book_table"))
        {
            Some((_, result)) => {
                let reference = serde_json::from_str::<Value>(result)
                    .ok()
                    .and_then(|v| v["reference"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "missing".into());
                LlmAnswer::Reply(format!("You are booked. Your reference is {reference}."))
            }
            None => LlmAnswer::tool_calls(
                "",
                &[(
                    "book_table",
                    json!({"party_size": 2, "time": "19:30", "name": "Ana"}),
                )],
            ),
        }
    })
    .await?;
    let program = example_bin("restaurant")?;
    let agent = AgentProcess::start_program(
        &program,
        &server,
        "restaurant-e2e",
        &llm.url,
        5.0,
        &[],
        "",
        "",
    )
    .await?;
    let log = || std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    // The user waits 5 s (the greeting plays), then asks.
    let question = agent.dir.join("question.wav");
    espeak_turns(
        &[
            ("", 5.0),
            (
                "Please book a table for two at half past seven for Ana.",
                1.0,
            ),
        ],
        &question,
    )
    .await?;
    let recorded = agent.dir.join("agent.wav");
    let mut human = user(&server, "restaurant", &question, &recorded, 25.0).await?;
    human
        .wait_event("recorded", Duration::from_secs(80))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", log())))?;
    let agent_track = agent_track_sid(&human.seen).ok_or_else(|| err("no agent track"))?;
    let finals = final_transcriptions(&human.seen, &agent_track);
    eprintln!("agent said: {finals:?}");
    // The greeting, whole, before the user spoke.
    if finals.first().map(String::as_str) != Some(GREETING) {
        return Err(err(format!(
            "the greeting is not the first thing said: {finals:?}; log:\n{}",
            log()
        )));
    }
    let requests = llm.requests();
    let times = llm.request_times();
    if requests.len() != 2 {
        return Err(err(format!(
            "{} LLM requests: {requests:?}; log:\n{}",
            requests.len(),
            log()
        )));
    }
    let booked = tool_results(&requests[1]);
    let reference = booked
        .first()
        .and_then(|(_, r)| serde_json::from_str::<Value>(r).ok())
        .and_then(|v| v["reference"].as_str().map(str::to_string))
        .ok_or_else(|| err(format!("no booking result: {booked:?}")))?;
    // The answer used the tool's result, and the say is part of that reply.
    let answer = finals
        .iter()
        .find(|t| t.contains("reference"))
        .ok_or_else(|| err(format!("no answer: {finals:?}")))?;
    if !answer.contains(&reference) || !answer.starts_with(SAY) {
        return Err(err(format!(
            "answer {answer:?} lacks the say or the reference {reference}"
        )));
    }
    // Heard while the tool ran: the agent's voice reaches the user between the
    // tool call (first request answered) and its result (second request).
    let record_start = human
        .arrival("record_start")
        .ok_or_else(|| err("no record_start"))?;
    let (call, result) = (at(record_start, times[0]), at(record_start, times[1]));
    let during = voiced_share(&recorded, call + 0.3, result)?;
    eprintln!("tool ran {call:.2}–{result:.2} s of the recording; voiced {during:.2} of it");
    if result - call < 1.5 || during < 0.3 {
        return Err(err(format!(
            "not heard while the tool ran: call {call:.2} s, result {result:.2} s, voiced {during:.2}"
        )));
    }
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_hands_the_wine_question_to_the_sommelier() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let llm = LlmStandIn::start(|request| {
        let system = request["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        if system.starts_with("You are the sommelier") {
            LlmAnswer::Reply("I am the sommelier. A Chablis goes well with fish.".into())
        } else if last_role(request) == "user" {
            LlmAnswer::tool_calls("", &[("ask_sommelier", json!({}))])
        } else {
            LlmAnswer::Reply("Here is the sommelier.".into())
        }
    })
    .await?;
    let program = example_bin("handoff")?;
    let agent =
        AgentProcess::start_program(&program, &server, "handoff-e2e", &llm.url, 5.0, &[], "", "")
            .await?;
    let log = || std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    let question = agent.dir.join("question.wav");
    espeak_turns(&[("", 3.0), ("Which wine goes with fish?", 1.0)], &question).await?;
    let recorded = agent.dir.join("agent.wav");
    let mut human = user(&server, "handoff", &question, &recorded, 18.0).await?;
    human
        .wait_event("recorded", Duration::from_secs(70))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", log())))?;
    let agent_track = agent_track_sid(&human.seen).ok_or_else(|| err("no agent track"))?;
    let finals = final_transcriptions(&human.seen, &agent_track);
    eprintln!("agent said: {finals:?}");
    if !finals.iter().any(|t| t.contains("Chablis")) {
        return Err(err(format!(
            "the sommelier never answered: {finals:?}; log:\n{}",
            log()
        )));
    }
    let requests = llm.requests();
    let sommelier = requests
        .iter()
        .find(|r| {
            r["messages"][0]["content"]
                .as_str()
                .is_some_and(|s| s.starts_with("You are the sommelier"))
        })
        .ok_or_else(|| err("no request as the sommelier"))?;
    if tool_names(sommelier) != ["back_to_host", "wine_list"] {
        return Err(err(format!(
            "the sommelier's tools: {:?}",
            tool_names(sommelier)
        )));
    }
    // The history carried over: the user's words (as whisper heard them)
    // and the host's handoff call, answered.
    let users = sommelier["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "user").count())
        .unwrap_or(0);
    let handoff = tool_results(sommelier);
    if users != 1
        || handoff
            != [(
                "functions.ask_sommelier:0".to_string(),
                "Transferred to sommelier.".to_string(),
            )]
    {
        return Err(err(format!(
            "history not carried over: {} user messages, results {handoff:?}",
            users
        )));
    }
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_servers_long_tool_is_cancelled_when_the_user_speaks_and_the_history_stays_valid()
-> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let index = mcp_everything()?;
    let llm = LlmStandIn::start(|request| {
        let users = request["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "user").count())
            .unwrap_or(0);
        if users >= 2 {
            LlmAnswer::Reply("Okay, I stopped.".into())
        } else if last_role(request) == "user" {
            LlmAnswer::tool_calls(
                "Let me run that for you.",
                &[(
                    "trigger-long-running-operation",
                    json!({"duration": 30, "steps": 5}),
                )],
            )
        } else {
            LlmAnswer::Reply("It finished.".into())
        }
    })
    .await?;
    let sections = format!(
        "[session]\ngreeting = \"Hello, I run long operations.\"\n\
         [[mcp]]\nname = \"everything\"\ncommand = \"node\"\nargs = [{:?}, \"stdio\"]\n\
         allowed_tools = [\"trigger-long-running-operation\"]\ntimeout = 60.0\n",
        index.display().to_string()
    );
    let agent =
        AgentProcess::start_configured(&server, "mcp-e2e", &llm.url, 5.0, &[], "", &sections)
            .await?;
    let log = || std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    // Greeting, then the request, then (while the tool runs) "never mind".
    let speech = agent.dir.join("speech.wav");
    espeak_turns(
        &[
            ("", 4.0),
            ("Please run the long operation.", 6.0),
            ("Never mind, stop that please.", 1.0),
        ],
        &speech,
    )
    .await?;
    let recorded = agent.dir.join("agent.wav");
    let mut human = user(&server, "mcp", &speech, &recorded, 26.0).await?;
    human
        .wait_event("recorded", Duration::from_secs(80))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", log())))?;
    let agent_track = agent_track_sid(&human.seen).ok_or_else(|| err("no agent track"))?;
    let finals = final_transcriptions(&human.seen, &agent_track);
    eprintln!("agent said: {finals:?}");
    if finals.first().map(String::as_str) != Some("Hello, I run long operations.") {
        return Err(err(format!("no greeting first: {finals:?}")));
    }
    let requests = llm.requests();
    let answer = requests
        .iter()
        .find(|r| {
            r["messages"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["role"] == "user").count() >= 2)
        })
        .ok_or_else(|| {
            err(format!(
                "no request for the second turn: {requests:?}; log:\n{}",
                log()
            ))
        })?;
    // The stand-in answered 400 to any invalid history; this one passed, and
    // it says the call was cancelled.
    let results = tool_results(answer);
    let cancelled = results.iter().any(|(id, r)| {
        id == "functions.trigger-long-running-operation:0" && r.starts_with("cancelled")
    });
    if !cancelled {
        return Err(err(format!("results: {results:?}")));
    }
    if !finals.iter().any(|t| t == "Okay, I stopped.") {
        return Err(err(format!(
            "the second turn was not answered: {finals:?}; log:\n{}",
            log()
        )));
    }
    if requests.iter().any(|r| {
        tool_results(r)
            .iter()
            .any(|(_, c)| c.contains("Long running operation completed"))
    }) {
        return Err(err("the operation ran to its end"));
    }
    human.kill().await;
    Ok(())
}
