//! A panicking session ends its own job and nothing else: a worker (in this
//! process, with a VAD stage that has a bug: it panics on speech) serves two
//! rooms. The user in one room speaks; that session panics, its agent leaves,
//! the server is told the job failed (`JS_FAILED`), and the metrics count one
//! failed job. The agent in the other room stays, the worker stays registered,
//! and a new room still gets an agent.

use std::sync::Arc;
use std::time::Duration;

use agent::session::{SessionOptions, Stages};
use agent::stage::{
    ErrorKind, JobContext, Llm, LlmRequest, LlmStream, StageError, Stt, SttStream, VadFactory,
    VadModel,
};
use async_trait::async_trait;
use e2e_tests::{
    API_KEY, API_SECRET, HarnessError, Human, LiveKitServer, err, espeak, init_logging, token,
};
use tokio::sync::{mpsc, oneshot};

/// Never asked: no turn completes before the VAD panics.
struct UnusedLlm;

#[async_trait]
impl Llm for UnusedLlm {
    async fn chat(&self, _request: LlmRequest) -> Result<LlmStream, StageError> {
        Err(StageError::new(ErrorKind::BadRequest, "not used"))
    }
}

/// Hears audio and says nothing.
struct SilentStt;

#[async_trait]
impl Stt for SilentStt {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    async fn stream(&self, _job: &JobContext) -> Result<SttStream, StageError> {
        let (input, mut rx) = mpsc::channel(64);
        let (_events_tx, events) = mpsc::channel(1);
        tokio::spawn(async move {
            let _keep = _events_tx;
            while rx.recv().await.is_some() {}
        });
        Ok(SttStream { input, events })
    }
}

/// The bug: panics on the first loud frame.
struct BuggyVad;

impl VadModel for BuggyVad {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn frame_len(&self) -> usize {
        320
    }
    fn score(&mut self, frame: &[i16]) -> f32 {
        let loud = frame.iter().any(|s| s.unsigned_abs() > 2000);
        assert!(!loud, "bug in a VAD stage: speech");
        0.0
    }
    fn reset(&mut self) {}
}

impl VadFactory for BuggyVad {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(BuggyVad))
    }
}

/// A worker in this process, registered with `server`.
struct Worker {
    metrics: Arc<worker::Metrics>,
    /// Stops it (drain, then exit).
    stop_tx: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

impl Worker {
    async fn start(
        server: &LiveKitServer,
        factory: Arc<worker::SessionFactory>,
    ) -> Result<Self, HarnessError> {
        let mut job_options = worker::JobOptions::default();
        job_options.connect.udp_addrs = vec!["127.0.0.1:0".into()];
        let metrics = Arc::new(worker::Metrics::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(worker::run(
            worker::WorkerOptions {
                url: server.url(),
                api_key: API_KEY.into(),
                api_secret: API_SECRET.into(),
                agent_name: String::new(),
                max_jobs: 10,
                load_threshold: 1.0,
                drain_timeout: Duration::from_secs(2),
                http_addr: None,
                report_interval: Duration::from_millis(500),
            },
            factory,
            Arc::new(job_options),
            metrics.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !metrics.healthy() {
            if tokio::time::Instant::now() > deadline {
                return Err(err("the worker never registered"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            metrics,
            stop_tx,
            run,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_fails_only_its_own_job() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start_logging("info").await?;
    let factory = Arc::new(worker::SessionFactory {
        stages: Stages {
            llm: Arc::new(UnusedLlm) as Arc<dyn Llm>,
            stt: Some(Arc::new(SilentStt)),
            tts: None,
            vad: Some(Arc::new(BuggyVad)),
            turn_detector: None,
        },
        options: SessionOptions::default(),
        output_rate: 48_000,
        entrypoint: worker::fixed(agent::SessionSetup::default()),
    });
    let Worker {
        metrics,
        stop_tx,
        run,
    } = Worker::start(&server, factory).await?;

    let dir = std::env::temp_dir().join(format!("va-panic-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let speech = dir.join("speech.wav");
    espeak("Hello, can you hear me?", &speech).await?;
    let speech = speech.to_str().ok_or_else(|| err("path"))?;

    // The quiet room first, then the room whose user speaks.
    let mut quiet = Human::spawn(
        &server.url(),
        &token("quiet", "panic-quiet")?,
        &["--duration", "60"],
    )
    .await?;
    let identity = |v: serde_json::Value| v["identity"].as_str().unwrap_or_default().to_owned();
    let quiet_agent = identity(quiet.wait_agent(Duration::from_secs(30)).await?);
    let mut loud = Human::spawn(
        &server.url(),
        &token("loud", "panic-loud")?,
        &["--publish-wav", speech, "--duration", "60"],
    )
    .await?;
    let loud_agent = identity(loud.wait_agent(Duration::from_secs(30)).await?);
    // The speaking user's agent panics and leaves.
    loop {
        let v = loud
            .wait_event("participant_left", Duration::from_secs(30))
            .await
            .map_err(|e| err(format!("the panicking session's agent stayed: {e}")))?;
        if v["identity"].as_str() == Some(loud_agent.as_str()) {
            break;
        }
    }
    // The server was told the job failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if log
            .lines()
            .any(|l| l.contains("job ended") && l.contains("JS_FAILED"))
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!("no JS_FAILED in the server log:\n{log}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rendered = metrics.render();
    if !rendered.contains("voice_agent_jobs_ended_total{result=\"failed\"} 1") {
        return Err(err(format!("one failed job expected: {rendered}")));
    }
    // Nothing else: the other agent is still there, the worker still serves.
    if let Ok(v) = quiet
        .wait_event("participant_left", Duration::from_secs(2))
        .await
    {
        return Err(err(format!("the other room lost its agent: {v}")));
    }
    if !metrics.healthy() || metrics.active_sessions() != 1 {
        return Err(err(format!(
            "worker healthy {}, sessions {} (want 1)",
            metrics.healthy(),
            metrics.active_sessions()
        )));
    }
    let mut fresh = Human::spawn(
        &server.url(),
        &token("fresh", "panic-fresh")?,
        &["--duration", "30"],
    )
    .await?;
    fresh.wait_agent(Duration::from_secs(30)).await?;
    eprintln!("panic isolated: {quiet_agent} stayed, {loud_agent} failed alone");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), run).await;
    quiet.kill().await;
    loud.kill().await;
    fresh.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The per-room entrypoint's failure is that room's alone: a worker whose
/// entrypoint fails for one room and panics for another fails those two jobs
/// (their agents join, then leave; `JS_FAILED` twice) and serves a third
/// room, whose entrypoint saw the room's name and the user who joined it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_entrypoint_fails_only_its_own_job() -> Result<(), HarnessError> {
    init_logging();
    let server = LiveKitServer::start_logging("info").await?;
    let seen: Arc<std::sync::Mutex<Vec<JobContext>>> = Arc::default();
    let entrypoint = {
        let seen = seen.clone();
        worker::entrypoint(move |job: JobContext| {
            if let Ok(mut s) = seen.lock() {
                s.push(job.clone());
            }
            async move {
                match job.room_name.as_deref() {
                    Some("ep-error") => Err("no menu for this room".into()),
                    Some("ep-panic") => panic!("bug in an entrypoint"),
                    _ => Ok(agent::Agent::new("You are fine.")),
                }
            }
        })
    };
    let factory = Arc::new(worker::SessionFactory {
        stages: Stages {
            llm: Arc::new(UnusedLlm) as Arc<dyn Llm>,
            stt: None,
            tts: None,
            vad: None,
            turn_detector: None,
        },
        options: SessionOptions::default(),
        output_rate: 48_000,
        entrypoint,
    });
    let Worker {
        metrics,
        stop_tx,
        run,
    } = Worker::start(&server, factory).await?;
    let identity = |v: serde_json::Value| v["identity"].as_str().unwrap_or_default().to_owned();
    let mut users = Vec::new();
    for room in ["ep-error", "ep-panic"] {
        let mut user = Human::spawn(
            &server.url(),
            &token(&format!("{room}-user"), room)?,
            &["--duration", "60"],
        )
        .await?;
        let agent = identity(user.wait_agent(Duration::from_secs(30)).await?);
        loop {
            let v = user
                .wait_event("participant_left", Duration::from_secs(30))
                .await
                .map_err(|e| err(format!("{room}: the agent stayed: {e}")))?;
            if v["identity"].as_str() == Some(agent.as_str()) {
                break;
            }
        }
        users.push(user);
    }
    let mut fine = Human::spawn(
        &server.url(),
        &token("fine-user", "ep-fine")?,
        &["--duration", "60"],
    )
    .await?;
    fine.wait_agent(Duration::from_secs(30)).await?;
    if let Ok(v) = fine
        .wait_event("participant_left", Duration::from_secs(3))
        .await
    {
        return Err(err(format!("the fine room lost its agent: {v}")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let failed = server
            .log()
            .lines()
            .filter(|l| l.contains("job ended") && l.contains("JS_FAILED"))
            .count();
        if failed == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!(
                "{failed} JS_FAILED in the server log, want 2:\n{}",
                server.log()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !metrics.healthy() || metrics.active_sessions() != 1 {
        return Err(err(format!(
            "worker healthy {}, sessions {} (want 1)",
            metrics.healthy(),
            metrics.active_sessions()
        )));
    }
    let contexts = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let fine_job = contexts
        .iter()
        .find(|c| c.room_name.as_deref() == Some("ep-fine"))
        .ok_or_else(|| err(format!("no job for ep-fine: {contexts:?}")))?;
    if fine_job.participant.as_ref().map(|p| p.identity.as_str()) != Some("fine-user")
        || fine_job.job_id.is_none()
        || fine_job.room_id.is_none()
    {
        return Err(err(format!("the entrypoint's context: {fine_job:?}")));
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), run).await;
    for u in users {
        u.kill().await;
    }
    fine.kill().await;
    Ok(())
}
