//! Scale out: two `voice-agent dev` workers register with the same server; ten
//! rooms are spread across both by the server's dispatch, each worker's
//! reported sessions matching the rooms it was given. One worker is killed
//! with SIGKILL: its agents leave their rooms, the other worker's stay, and new
//! rooms all go to the survivor.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e_tests::{
    AgentProcess, HarnessError, Human, LiveKitServer, err, http_get, init_logging, llm_stand_in,
    metric, strip_ansi, token,
};

/// Users joining `rooms` from one Python process (no media).
async fn users(server: &LiveKitServer, rooms: &[String]) -> Result<Human, HarnessError> {
    let mut args = vec!["--url".to_owned(), server.url()];
    for (i, room) in rooms.iter().enumerate() {
        args.push("--join".into());
        args.push(format!("{room}={}", token(&format!("user-{i}"), room)?));
    }
    args.extend(["--duration".into(), "120".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Human::spawn_script("rooms.py", &args).await
}

/// Waits until every room in `rooms` has an agent; returns room → agent identity.
async fn agents_in(
    users: &mut Human,
    rooms: &[String],
) -> Result<BTreeMap<String, String>, HarnessError> {
    let mut found = BTreeMap::new();
    let scan = |seen: &[serde_json::Value], found: &mut BTreeMap<String, String>| {
        for v in seen.iter().filter(|v| v["event"] == "participant") {
            if let (Some(room), Some(id)) = (v["room"].as_str(), v["identity"].as_str())
                && id.starts_with("agent-")
            {
                found.insert(room.to_owned(), id.to_owned());
            }
        }
    };
    scan(&users.seen, &mut found);
    while !rooms.iter().all(|r| found.contains_key(r)) {
        users
            .wait_event("participant", Duration::from_secs(60))
            .await?;
        scan(&users.seen, &mut found);
    }
    Ok(found)
}

/// The rooms a worker's log says it was assigned.
fn assigned(agent: &AgentProcess) -> BTreeSet<String> {
    let log = strip_ansi(&std::fs::read_to_string(&agent.log_path).unwrap_or_default());
    log.lines()
        .filter(|l| l.contains("job assigned"))
        .filter_map(|l| l.split("room=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

async fn sessions_active(agent: &AgentProcess) -> Result<f64, HarnessError> {
    let (_, metrics) = http_get(agent.http_port, "/metrics").await?;
    let load = metric(&metrics, "voice_agent_worker_load")
        .ok_or_else(|| err(format!("no load gauge: {metrics}")))?;
    if !(0.0..=1.0).contains(&load) {
        return Err(err(format!("load {load} outside 0..1")));
    }
    metric(&metrics, "voice_agent_sessions_active").ok_or_else(|| err("no sessions gauge"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_two_workers_and_a_killed_one_is_replaced() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start().await?;
    let llm = llm_stand_in("Hello.").await?;
    let mut a = AgentProcess::start(&server, "scale-a", &llm.url, 5.0, &[]).await?;
    let b = AgentProcess::start(&server, "scale-b", &llm.url, 5.0, &[]).await?;

    let first: Vec<String> = (0..10).map(|i| format!("scale-{i}")).collect();
    let mut users_1 = users(&server, &first).await?;
    let agents = agents_in(&mut users_1, &first).await.map_err(|e| {
        err(format!(
            "{e}; server log:\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    let (on_a, on_b) = (assigned(&a), assigned(&b));
    eprintln!("worker A has {on_a:?}, worker B has {on_b:?}");
    if on_a.is_empty()
        || on_b.is_empty()
        || on_a.len() + on_b.len() != 10
        || !on_a.is_disjoint(&on_b)
    {
        return Err(err(format!(
            "ten rooms should be spread over both workers: A {on_a:?}, B {on_b:?}"
        )));
    }
    // Each worker reports the sessions it runs (allow a report interval).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (sa, sb) = (sessions_active(&a).await?, sessions_active(&b).await?);
        if sa == on_a.len() as f64 && sb == on_b.len() as f64 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!(
                "sessions reported A {sa}, B {sb}; assigned A {}, B {}",
                on_a.len(),
                on_b.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // SIGKILL worker A: no drain, no goodbye.
    a.child
        .start_kill()
        .map_err(|e| err(format!("kill: {e}")))?;
    let _ = a.child.wait().await;
    let killed_at = tokio::time::Instant::now();
    let mut left: BTreeSet<String> = BTreeSet::new();
    let scan_left = |seen: &[serde_json::Value], left: &mut BTreeSet<String>| {
        for v in seen.iter().filter(|v| v["event"] == "participant_left") {
            if let (Some(room), Some(id)) = (v["room"].as_str(), v["identity"].as_str())
                && agents.get(room).map(String::as_str) == Some(id)
            {
                left.insert(room.to_owned());
            }
        }
    };
    while !on_a.iter().all(|r| left.contains(r)) {
        users_1
            .wait_event("participant_left", Duration::from_secs(90))
            .await
            .map_err(|e| {
                err(format!(
                    "{e}; agents of A still in {:?}",
                    on_a.difference(&left)
                ))
            })?;
        scan_left(&users_1.seen, &mut left);
    }
    eprintln!(
        "SIGKILL: the killed worker's {} agents left their rooms after {:?}",
        on_a.len(),
        killed_at.elapsed()
    );
    if !left.is_disjoint(&on_b) {
        return Err(err(format!(
            "the survivor's agents left too: {:?}",
            left.intersection(&on_b)
        )));
    }

    // New rooms go to the survivor.
    let second: Vec<String> = (10..13).map(|i| format!("scale-{i}")).collect();
    let mut users_2 = users(&server, &second).await?;
    agents_in(&mut users_2, &second).await?;
    let on_b_now = assigned(&b);
    if !second.iter().all(|r| on_b_now.contains(r)) {
        return Err(err(format!(
            "new rooms should all go to the survivor, which has {on_b_now:?}"
        )));
    }
    if let Ok(v) = users_1
        .wait_event("participant_left", Duration::from_millis(100))
        .await
    {
        return Err(err(format!("unexpected departure: {v}")));
    }
    users_1.kill().await;
    users_2.kill().await;
    let _ = std::fs::remove_dir_all(&a.dir);
    let _ = std::fs::remove_dir_all(&b.dir);
    Ok(())
}
