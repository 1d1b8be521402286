//! Explicit dispatch: a `voice-agent dev` worker registered with an agent name
//! (`LIVEKIT_AGENT_NAME`) is not sent to a room created without asking for it;
//! it is sent to a room whose creator's token asks for that agent, and to a
//! room a backend asks for through the AgentDispatch API.

use std::time::{Duration, Instant};

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, create_dispatch, err, init_logging, is_agent,
    llm_stand_in, token, token_dispatching,
};

fn agent_seen(seen: &[serde_json::Value]) -> Option<&serde_json::Value> {
    seen.iter()
        .find(|v| v["event"] == "participant" && is_agent(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_worker_comes_only_when_dispatched() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let llm = llm_stand_in("Hello.").await?;
    let llm_url = llm.url.clone();
    let AgentProcess {
        child: mut agent,
        http_port: _,
        dir,
        log_path,
    } = AgentProcess::start(
        &server,
        "dispatch-e2e",
        &llm_url,
        5.0,
        &[("LIVEKIT_AGENT_NAME", "kimi-e2e")],
    )
    .await?;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // A room nobody asked the agent into: no agent within 6 s.
    let mut plain = Human::spawn(
        &server.url(),
        &token("human", "no-dispatch")?,
        &["--duration", "6"],
    )
    .await?;
    plain.wait_event("done", Duration::from_secs(30)).await?;
    if let Some(p) = agent_seen(&plain.seen) {
        return Err(err(format!(
            "agent joined a room it was not dispatched to: {p}"
        )));
    }

    // A room whose token dispatches "kimi-e2e": the agent joins.
    let mut asked = Human::spawn(
        &server.url(),
        &token_dispatching("human", "dispatch", "kimi-e2e")?,
        &["--duration", "20"],
    )
    .await?;
    asked.wait_event("ready", Duration::from_secs(30)).await?;
    let joined = Instant::now();
    let p = asked
        .wait_agent(Duration::from_secs(15))
        .await
        .map_err(|e| err(format!("{e}; agent log:\n{}", agent_log())))?;
    eprintln!(
        "explicit dispatch: agent in the room after {:?}",
        joined.elapsed()
    );
    // The attribute may arrive with the join or just after it.
    let named = p["attributes"]["lk.agent.name"] == "kimi-e2e" || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = false;
        while Instant::now() < deadline {
            match asked.wait_event("attributes", Duration::from_secs(1)).await {
                Ok(v) if v["attributes"]["lk.agent.name"] == "kimi-e2e" => {
                    found = true;
                    break;
                }
                _ => {}
            }
        }
        found
    };
    if !named {
        return Err(err(format!(
            "no lk.agent.name = kimi-e2e on the agent: {p}"
        )));
    }
    asked.kill().await;

    // A room with a user in it and no agent, until a backend creates a
    // dispatch through the API.
    let mut api_room = Human::spawn(
        &server.url(),
        &token("human", "api-dispatch")?,
        &["--duration", "30"],
    )
    .await?;
    api_room
        .wait_event("ready", Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    while let Ok(v) = api_room
        .wait_event("participant", Duration::from_millis(10))
        .await
    {
        if is_agent(&v) {
            return Err(err(format!("agent joined before the API dispatch: {v}")));
        }
    }
    let dispatched = Instant::now();
    let id = create_dispatch(&server, "api-dispatch", "kimi-e2e").await?;
    api_room
        .wait_agent(Duration::from_secs(15))
        .await
        .map_err(|e| err(format!("{e}; dispatch {id}; agent log:\n{}", agent_log())))?;
    eprintln!(
        "API dispatch {id}: agent in the room {:?} after the request",
        dispatched.elapsed()
    );
    api_room.kill().await;
    let _ = agent.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
