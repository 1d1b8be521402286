//! The worker loop: one task owning the `/agent` connection, the protocol state
//! machine, the jobs and the load sampler. Each iteration waits for one thing
//! (a server message, a tick, a job joined or ended, the drain signal, a
//! connection attempt), feeds it to [`WorkerProtocol`], then carries out its
//! outputs in order.
//!
//! Tasks and who stops them:
//! - jobs: in a `JoinSet` owned by the loop; each is told to stop through its
//!   `watch` sender, and whatever is left when the loop returns is aborted;
//! - the health server: spawned by [`run`], stopped by a oneshot when it returns.
//!
//! Drain (the future passed in resolves): report FULL/draining, tell every job
//! to finish its reply and leave, wait for them up to `drain_timeout`, then stop
//! the rest; return `Ok`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use livekit_plumbing::{ApiCredentials, Secret};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::conn::{self, WsSink, WsStream};
use crate::error::{JobError, WorkerError};
use crate::job::{self, JobOptions, RoomJob, SessionFactory, Stop};
use crate::load::CpuSampler;
use crate::metrics::Metrics;
use crate::protocol::{JobResult, Output, ProtocolOptions, WorkerProtocol};

/// How the worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The LiveKit server (`ws(s)://` or `http(s)://`).
    pub url: String,
    pub api_key: String,
    /// Never logged nor shown by `Debug` (a [`Secret`]).
    pub api_secret: Secret,
    /// Empty: automatic dispatch to every new room.
    pub agent_name: String,
    pub max_jobs: usize,
    pub load_threshold: f32,
    /// How long running sessions may take to finish after a drain.
    pub drain_timeout: Duration,
    /// Health and metrics HTTP; `None`: no server.
    pub http_addr: Option<SocketAddr>,
    /// Status report interval (2.5 s).
    pub report_interval: Duration,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret)
            .field("agent_name", &self.agent_name)
            .field("max_jobs", &self.max_jobs)
            .field("load_threshold", &self.load_threshold)
            .field("drain_timeout", &self.drain_timeout)
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

impl WorkerOptions {
    fn credentials(&self) -> ApiCredentials {
        ApiCredentials::new(self.api_key.as_str(), self.api_secret.clone())
    }
}

/// Bound on opening the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Worker tokens live this long; a fresh one is minted per connection.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// After the drain timeout, how long stopped jobs get to leave their rooms.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// The wait before reconnect attempt `*attempt` (counted here).
fn next_backoff(attempt: &mut u32) -> Duration {
    let delay = conn::RECONNECT.delay_jittered(*attempt);
    *attempt = attempt.saturating_add(1);
    delay
}

type Connecting = Pin<Box<dyn Future<Output = Result<(WsSink, WsStream), WorkerError>> + Send>>;

/// Runs the worker until `drain` resolves and the jobs are done. Errors only
/// for what retrying cannot fix (a bad URL or key, an HTTP port in use).
pub async fn run(
    options: WorkerOptions,
    factory: Arc<SessionFactory>,
    job_options: Arc<JobOptions>,
    metrics: Arc<Metrics>,
    drain: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let url = conn::agent_url(&options.url)?;
    // Fail fast on a key that cannot sign.
    options.credentials().worker_token(TOKEN_TTL)?;
    let (http_stop, http_task) = match options.http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| WorkerError::Http { addr, source })?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "health and metrics HTTP");
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(crate::http::serve(listener, metrics.clone(), async {
                let _ = rx.await;
            }));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let mut lp = Loop {
        machine: WorkerProtocol::new(ProtocolOptions {
            agent_name: options.agent_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            max_jobs: options.max_jobs,
            load_threshold: options.load_threshold,
        }),
        sink: None,
        stream: None,
        jobs: JoinSet::new(),
        job_ids: HashMap::new(),
        stops: HashMap::new(),
        joined: mpsc::channel(64),
        metrics: metrics.clone(),
        factory,
        job_options,
        url: options.url.clone(),
        worker_id: String::new(),
    };
    let result = lp.run(&options, &url, drain).await;
    if let Some(tx) = http_stop {
        let _ = tx.send(());
    }
    if let Some(t) = http_task {
        let _ = t.await;
    }
    result
}

struct Loop {
    machine: WorkerProtocol,
    /// The connection's two halves; `None` while disconnected. Dropped on loss.
    sink: Option<WsSink>,
    stream: Option<WsStream>,
    /// Every job task; aborted when the loop ends.
    jobs: JoinSet<Result<(), JobError>>,
    /// Task id → job id, to report a panicked job.
    job_ids: HashMap<tokio::task::Id, String>,
    /// Each job's stop signal; removed when the job ends.
    stops: HashMap<String, watch::Sender<Stop>>,
    /// Jobs report "joined" here (the sender is cloned into each job).
    joined: (mpsc::Sender<String>, mpsc::Receiver<String>),
    metrics: Arc<Metrics>,
    factory: Arc<SessionFactory>,
    job_options: Arc<JobOptions>,
    /// The server URL rooms are joined at unless an assignment names another.
    url: String,
    worker_id: String,
}

async fn next_message(
    stream: &mut Option<WsStream>,
) -> Result<livekit_protocol::server_message::Message, WorkerError> {
    match stream {
        Some(s) => conn::recv(s).await,
        None => std::future::pending().await,
    }
}

async fn maybe(f: &mut Option<Connecting>) -> Result<(WsSink, WsStream), WorkerError> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Loop {
    async fn run(
        &mut self,
        options: &WorkerOptions,
        url: &str,
        drain: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        tokio::pin!(drain);
        let mut draining = false;
        let mut drain_deadline: Option<Instant> = None;
        let mut connecting: Option<Connecting> = None;
        let mut next_connect: Option<Instant> = Some(Instant::now());
        let mut attempt: u32 = 0;
        let mut connections: u64 = 0;
        let mut report = tokio::time::interval(options.report_interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cpu = CpuSampler::new();
        loop {
            tokio::select! {
                _ = &mut drain, if !draining => {
                    draining = true;
                    tracing::info!(jobs = self.stops.len(), timeout_s = options.drain_timeout.as_secs_f64(), "draining");
                    self.machine.drain();
                    self.metrics.set_draining();
                    for stop in self.stops.values() {
                        let _ = stop.send(Stop::Drain);
                    }
                    drain_deadline = Some(Instant::now() + options.drain_timeout);
                    next_connect = None;
                    connecting = None;
                }
                _ = sleep_until(drain_deadline) => {
                    tracing::warn!(jobs = self.stops.len(), "drain timeout: stopping the remaining sessions");
                    for stop in self.stops.values() {
                        let _ = stop.send(Stop::Now);
                    }
                    let _ = tokio::time::timeout(LEAVE_GRACE, async {
                        while self.jobs.join_next().await.is_some() {}
                    }).await;
                    self.jobs.abort_all();
                    break;
                }
                _ = sleep_until(next_connect), if connecting.is_none() && self.sink.is_none() => {
                    next_connect = None;
                    let token = options.credentials().worker_token(TOKEN_TTL)?;
                    let url = url.to_owned();
                    connecting = Some(Box::pin(async move {
                        tokio::time::timeout(CONNECT_TIMEOUT, conn::connect(&url, &token))
                            .await
                            .map_err(|_| WorkerError::Connect("timed out".into()))?
                    }));
                }
                res = maybe(&mut connecting) => {
                    connecting = None;
                    match res {
                        Ok((sink, stream)) => {
                            attempt = 0;
                            connections += 1;
                            if connections > 1 {
                                self.metrics.reconnected();
                            }
                            tracing::info!(url = %options.url, "connected to the agent endpoint");
                            self.sink = Some(sink);
                            self.stream = Some(stream);
                            self.machine.connected(std::time::Instant::now());
                        }
                        Err(e @ WorkerError::Refused { status: 401 | 403 }) if connections == 0 => return Err(e),
                        Err(e) => {
                            let delay = next_backoff(&mut attempt);
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the server");
                            next_connect = Some(Instant::now() + delay);
                        }
                    }
                }
                msg = next_message(&mut self.stream) => match msg {
                    Ok(m) => self.machine.handle_server(std::time::Instant::now(), m),
                    Err(e) => {
                        tracing::warn!(error = %e, running = self.machine.running_jobs(), "agent connection lost; sessions keep running");
                        self.lost();
                        if !draining {
                            let delay = next_backoff(&mut attempt);
                            next_connect = Some(Instant::now() + delay);
                        }
                    }
                },
                _ = report.tick() => {
                    let load = cpu.sample(std::time::Instant::now());
                    self.machine.set_load(load);
                    self.metrics.set_load(load);
                    self.machine.handle_timeout(std::time::Instant::now());
                }
                Some(id) = self.joined.1.recv() => {
                    tracing::info!(job = %id, "job running");
                    self.machine.job_running(&id);
                }
                Some(ended) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    let (task_id, result) = match ended {
                        Ok((id, r)) => (id, r.map_err(|e| e.to_string())),
                        Err(e) => (e.id(), Err(if e.is_panic() { "the job panicked".to_owned() } else { "the job was cancelled".to_owned() })),
                    };
                    if let Some(job_id) = self.job_ids.remove(&task_id) {
                        self.stops.remove(&job_id);
                        match &result {
                            Ok(()) => tracing::info!(job = %job_id, "job done"),
                            Err(e) => tracing::warn!(job = %job_id, error = %e, "job failed"),
                        }
                        self.machine.job_ended(&job_id, match result {
                            Ok(()) => JobResult::Success,
                            Err(e) => JobResult::Failed(e),
                        });
                    }
                }
            }
            self.carry_out().await;
            if draining && self.jobs.is_empty() {
                break;
            }
            // Lost while carrying out (a failed send, a registration never
            // answered): connect again.
            if self.sink.is_none() && connecting.is_none() && next_connect.is_none() && !draining {
                let delay = next_backoff(&mut attempt);
                next_connect = Some(Instant::now() + delay);
            }
        }
        if let Some(mut sink) = self.sink.take() {
            use futures::SinkExt;
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
        Ok(())
    }

    fn lost(&mut self) {
        self.sink = None;
        self.stream = None;
        self.machine.disconnected();
        self.metrics.set_registered(false);
    }

    async fn carry_out(&mut self) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Send(msg) => {
                    if let Some(sink) = &mut self.sink
                        && let Err(e) = conn::send(sink, msg).await
                    {
                        tracing::warn!(error = %e, "cannot send to the server");
                        self.lost();
                    }
                }
                Output::Registered { worker_id } => {
                    tracing::info!(worker_id = %worker_id, "registered");
                    self.worker_id = worker_id;
                    self.metrics.set_registered(true);
                }
                Output::StartJob(start) => {
                    tracing::info!(job = %start.job_id, room = %start.room_name, "job assigned");
                    let (stop_tx, stop_rx) = watch::channel(Stop::Run);
                    let room_job = RoomJob {
                        job_id: start.job_id.clone(),
                        url: start.url.unwrap_or_else(|| self.url.clone()),
                        token: start.token,
                        context: agent::JobContext {
                            room_id: Some(start.room_sid).filter(|s| !s.is_empty()),
                            job_id: Some(start.job_id.clone()),
                            agent_id: Some(self.worker_id.clone()).filter(|s| !s.is_empty()),
                            room_name: Some(start.room_name).filter(|s| !s.is_empty()),
                            job_metadata: start.job_metadata,
                            room_metadata: start.room_metadata,
                            participant: None,
                        },
                    };
                    let handle = self.jobs.spawn(job::run(
                        room_job,
                        self.factory.clone(),
                        self.job_options.clone(),
                        self.metrics.clone(),
                        stop_rx,
                        self.joined.0.clone(),
                    ));
                    self.job_ids.insert(handle.id(), start.job_id.clone());
                    self.stops.insert(start.job_id, stop_tx);
                }
                Output::Reconnect => {
                    tracing::warn!("the server never answered the registration: reconnecting");
                    self.lost();
                }
                Output::StopJob { job_id } => {
                    tracing::info!(job = %job_id, "job terminated by the server");
                    if let Some(stop) = self.stops.get(&job_id) {
                        let _ = stop.send(Stop::Now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_the_secret() {
        let options = WorkerOptions {
            url: "ws://127.0.0.1:7880".into(),
            api_key: "devkey".into(),
            api_secret: "a-very-secret-value".into(),
            agent_name: String::new(),
            max_jobs: 1,
            load_threshold: 0.7,
            drain_timeout: Duration::from_secs(1),
            http_addr: None,
            report_interval: Duration::from_secs(1),
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("a-very-secret-value"), "{shown}");
        assert!(shown.contains("api_secret: [redacted]"), "{shown}");
        assert_eq!(
            options.credentials().api_secret().expose(),
            "a-very-secret-value"
        );
    }

    #[test]
    fn each_backoff_counts_an_attempt_and_grows() {
        let mut attempt = 0;
        let first = next_backoff(&mut attempt);
        assert_eq!(attempt, 1);
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        for _ in 0..20 {
            next_backoff(&mut attempt);
        }
        let late = next_backoff(&mut attempt);
        assert_eq!(attempt, 22);
        assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
    }
}
