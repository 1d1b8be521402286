//! The worker side of the agent protocol as a plain state machine: no tokio, no
//! sockets, never reads the clock. The socket loop (`worker.rs`) feeds it what
//! happened — connected, a `ServerMessage`, a load sample, a job that started or
//! ended, a drain — with the current time, then drains [`Output`]s in order.
//!
//! What it decides:
//! - registration (`register{JT_ROOM, agent_name, version}`) on every new connection;
//! - availability answers: accept while not draining, below the session cap (jobs
//!   running plus jobs accepted but not yet assigned) and below the load threshold;
//! - assignments → [`Output::StartJob`]; terminations → [`Output::StopJob`];
//! - job status updates (`JS_RUNNING`, `JS_SUCCESS`, `JS_FAILED`);
//! - worker status reports: `WS_FULL` when draining, at the cap or above the threshold.
//!
//! Accepted jobs whose assignment never comes are forgotten after
//! [`ASSIGNMENT_TIMEOUT`] (the server gives up after 10 s). A registration
//! unanswered for [`REGISTER_TIMEOUT`] gives up the connection
//! ([`Output::Reconnect`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use proto::{server_message, worker_message};

/// How long an accepted job waits for its assignment before it is forgotten.
pub const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a registration may go unanswered before the connection is given up.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The participant attribute naming the agent.
pub const AGENT_NAME_ATTRIBUTE: &str = "lk.agent.name";

/// What the machine is configured with.
#[derive(Clone, Debug)]
pub struct ProtocolOptions {
    /// Empty: automatic dispatch to every new room.
    pub agent_name: String,
    /// Reported at registration.
    pub version: String,
    /// Sessions this worker runs at most.
    pub max_jobs: usize,
    /// Load (0–1) at or above which the worker reports FULL and declines jobs.
    pub load_threshold: f32,
}

/// A job to start: join `room_name` at `url` (or the worker's own URL) with `token`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStart {
    pub job_id: String,
    pub room_name: String,
    pub room_sid: String,
    /// The server's URL for the room, when it differs from the worker's.
    pub url: Option<String>,
    /// Room token minted by the server for the identity we answered with.
    pub token: String,
    pub participant_identity: String,
    /// What the dispatch set (API or token room configuration).
    pub job_metadata: String,
    pub room_metadata: String,
}

/// What the socket loop must do, in order.
#[derive(Clone, Debug, PartialEq)]
// Outputs live a moment in a small queue and are drained one by one: boxing the
// message would cost an allocation per send for no gain.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Send this message to the server (dropped when disconnected).
    Send(worker_message::Message),
    /// The server confirmed the registration.
    Registered { worker_id: String },
    /// Join a room and run a session there.
    StartJob(JobStart),
    /// End this job now (server termination).
    StopJob { job_id: String },
    /// Give up this connection and connect again (the server never answered
    /// the registration).
    Reconnect,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobResult {
    Success,
    /// Failed; the text goes to the server (never a secret).
    Failed(String),
}

/// The worker protocol state machine.
#[derive(Debug)]
pub struct WorkerProtocol {
    options: ProtocolOptions,
    /// Worker id once registered on the current connection.
    worker_id: Option<String>,
    connected: bool,
    /// When the unanswered registration on this connection was sent.
    registering_since: Option<Instant>,
    /// Jobs accepted (availability answered yes) awaiting their assignment.
    pending: HashMap<String, Instant>,
    /// Jobs assigned and not yet ended.
    running: HashSet<String>,
    load: f32,
    draining: bool,
    /// Monotonic per registration (`UpdateWorkerStatus.seq`).
    seq: u64,
    out: VecDeque<Output>,
}

impl WorkerProtocol {
    pub fn new(options: ProtocolOptions) -> Self {
        Self {
            options,
            worker_id: None,
            connected: false,
            registering_since: None,
            pending: HashMap::new(),
            running: HashSet::new(),
            load: 0.0,
            draining: false,
            seq: 0,
            out: VecDeque::new(),
        }
    }

    /// A new connection is up: register on it.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.registering_since = Some(now);
        self.worker_id = None;
        self.seq = 0;
        self.out
            .push_back(Output::Send(worker_message::Message::Register(
                proto::RegisterWorkerRequest {
                    r#type: proto::JobType::JtRoom as i32,
                    agent_name: self.options.agent_name.clone(),
                    version: self.options.version.clone(),
                    allowed_permissions: Some(proto::ParticipantPermission {
                        can_subscribe: true,
                        can_publish: true,
                        can_publish_data: true,
                        can_update_metadata: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )));
    }

    /// The connection is gone. Running jobs keep running; accepted jobs
    /// awaiting their assignment are forgotten (the server reassigns them).
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.registering_since = None;
        self.worker_id = None;
        self.pending.clear();
    }

    /// Registered on the current connection.
    pub fn is_registered(&self) -> bool {
        self.worker_id.is_some()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Jobs accepted or running.
    pub fn job_count(&self) -> usize {
        self.running.len() + self.pending.len()
    }

    /// Jobs assigned and not yet ended.
    pub fn running_jobs(&self) -> usize {
        self.running.len()
    }

    fn full(&self) -> bool {
        self.draining
            || self.job_count() >= self.options.max_jobs
            || self.load >= self.options.load_threshold
    }

    /// A message from the server.
    pub fn handle_server(&mut self, now: Instant, msg: server_message::Message) {
        match msg {
            server_message::Message::Register(r) => {
                self.registering_since = None;
                self.worker_id = Some(r.worker_id.clone());
                self.out.push_back(Output::Registered {
                    worker_id: r.worker_id,
                });
                self.push_status();
            }
            server_message::Message::Availability(req) => self.availability(now, req),
            server_message::Message::Assignment(a) => self.assignment(a),
            server_message::Message::Termination(t) => {
                self.pending.remove(&t.job_id);
                if self.running.contains(&t.job_id) {
                    self.out.push_back(Output::StopJob { job_id: t.job_id });
                }
            }
            server_message::Message::Pong(_) | server_message::Message::GoAway(_) => {}
        }
    }

    fn availability(&mut self, now: Instant, req: proto::AvailabilityRequest) {
        let Some(job) = req.job else { return };
        let accept =
            !self.full() && !self.pending.contains_key(&job.id) && !self.running.contains(&job.id);
        let name = if self.options.agent_name.is_empty() {
            "agent".to_owned()
        } else {
            self.options.agent_name.clone()
        };
        let response = if accept {
            self.pending.insert(job.id.clone(), now);
            proto::AvailabilityResponse {
                job_id: job.id.clone(),
                available: true,
                participant_identity: format!("agent-{}", job.id),
                participant_name: name,
                participant_attributes: [(
                    AGENT_NAME_ATTRIBUTE.to_owned(),
                    self.options.agent_name.clone(),
                )]
                .into(),
                ..Default::default()
            }
        } else {
            proto::AvailabilityResponse {
                job_id: job.id.clone(),
                available: false,
                ..Default::default()
            }
        };
        self.out
            .push_back(Output::Send(worker_message::Message::Availability(
                response,
            )));
        if accept {
            // The count changed: tell the server at once rather than at the next report.
            self.push_status();
        }
    }

    fn assignment(&mut self, a: proto::JobAssignment) {
        let Some(job) = a.job else { return };
        if self.pending.remove(&job.id).is_none() {
            // Not one we accepted (or it timed out): still honour it if there is
            // room, as the server already counts it against us.
            if self.running.len() >= self.options.max_jobs || self.draining {
                self.out
                    .push_back(Output::Send(worker_message::Message::UpdateJob(
                        proto::UpdateJobStatus {
                            job_id: job.id,
                            status: proto::JobStatus::JsFailed as i32,
                            error: "worker has no room for this job".into(),
                        },
                    )));
                return;
            }
        }
        if !self.running.insert(job.id.clone()) {
            return;
        }
        let room = job.room.unwrap_or_default();
        let participant_identity = job
            .state
            .map(|s| s.participant_identity)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("agent-{}", job.id));
        self.out.push_back(Output::StartJob(JobStart {
            job_id: job.id,
            room_name: room.name,
            room_sid: room.sid,
            url: a.url.filter(|u| !u.is_empty()),
            token: a.token,
            participant_identity,
            job_metadata: job.metadata,
            room_metadata: room.metadata,
        }));
    }

    /// The job joined its room.
    pub fn job_running(&mut self, job_id: &str) {
        if self.running.contains(job_id) {
            self.push_job(job_id, proto::JobStatus::JsRunning, String::new());
        }
    }

    /// The job is over (its task ended).
    pub fn job_ended(&mut self, job_id: &str, result: JobResult) {
        if !self.running.remove(job_id) {
            return;
        }
        match result {
            JobResult::Success => self.push_job(job_id, proto::JobStatus::JsSuccess, String::new()),
            JobResult::Failed(e) => self.push_job(job_id, proto::JobStatus::JsFailed, e),
        }
        self.push_status();
    }

    fn push_job(&mut self, job_id: &str, status: proto::JobStatus, error: String) {
        self.out
            .push_back(Output::Send(worker_message::Message::UpdateJob(
                proto::UpdateJobStatus {
                    job_id: job_id.to_owned(),
                    status: status as i32,
                    error,
                },
            )));
    }

    /// A new load sample (0–1); reported with the next status.
    pub fn set_load(&mut self, load: f32) {
        self.load = if load.is_finite() {
            load.clamp(0.0, 1.0)
        } else {
            0.0
        };
    }

    /// The periodic report: give up an unanswered registration, forget stale
    /// accepted jobs, then send the status.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(since) = self.registering_since
            && now.saturating_duration_since(since) >= REGISTER_TIMEOUT
        {
            self.disconnected();
            self.out.push_back(Output::Reconnect);
        }
        self.pending
            .retain(|_, at| now.saturating_duration_since(*at) < ASSIGNMENT_TIMEOUT);
        self.push_status();
    }

    /// Stop taking jobs (reported as FULL with `draining`).
    pub fn drain(&mut self) {
        if !self.draining {
            self.draining = true;
            self.push_status();
        }
    }

    fn push_status(&mut self) {
        if !self.is_registered() {
            return;
        }
        self.seq += 1;
        let status = if self.full() {
            proto::WorkerStatus::WsFull
        } else {
            proto::WorkerStatus::WsAvailable
        };
        self.out
            .push_back(Output::Send(worker_message::Message::UpdateWorker(
                proto::UpdateWorkerStatus {
                    status: Some(status as i32),
                    load: self.load,
                    job_count: self.job_count() as u32,
                    draining: self.draining,
                    seq: self.seq,
                },
            )));
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(max_jobs: usize) -> WorkerProtocol {
        WorkerProtocol::new(ProtocolOptions {
            agent_name: String::new(),
            version: "test".into(),
            max_jobs,
            load_threshold: 0.7,
        })
    }

    fn drain(m: &mut WorkerProtocol) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn register(m: &mut WorkerProtocol, now: Instant) {
        m.connected(now);
        m.handle_server(
            now,
            server_message::Message::Register(proto::RegisterWorkerResponse {
                worker_id: "AW_1".into(),
                ..Default::default()
            }),
        );
    }

    fn offer(m: &mut WorkerProtocol, now: Instant, id: &str) -> bool {
        m.handle_server(
            now,
            server_message::Message::Availability(proto::AvailabilityRequest {
                job: Some(proto::Job {
                    id: id.into(),
                    ..Default::default()
                }),
                resuming: false,
            }),
        );
        drain(m).into_iter().any(|o| {
            matches!(o, Output::Send(worker_message::Message::Availability(r)) if r.available && r.job_id == id)
        })
    }

    fn assign(m: &mut WorkerProtocol, now: Instant, id: &str) -> Vec<Output> {
        m.handle_server(
            now,
            server_message::Message::Assignment(proto::JobAssignment {
                job: Some(proto::Job {
                    id: id.into(),
                    room: Some(proto::Room {
                        name: "room".into(),
                        sid: "RM_1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                url: None,
                token: "tok".into(),
            }),
        );
        drain(m)
    }

    fn last_status(out: &[Output]) -> Option<proto::UpdateWorkerStatus> {
        out.iter().rev().find_map(|o| match o {
            Output::Send(worker_message::Message::UpdateWorker(u)) => Some(*u),
            _ => None,
        })
    }

    #[test]
    fn registers_as_a_room_worker_with_its_agent_name() {
        let mut m = WorkerProtocol::new(ProtocolOptions {
            agent_name: "kimi".into(),
            version: "1".into(),
            max_jobs: 4,
            load_threshold: 0.7,
        });
        m.connected(Instant::now());
        let out = drain(&mut m);
        let [Output::Send(worker_message::Message::Register(r))] = out.as_slice() else {
            panic!("expected one register, got {out:?}");
        };
        assert_eq!(r.r#type, proto::JobType::JtRoom as i32);
        assert_eq!(r.agent_name, "kimi");
        assert!(!m.is_registered());
        m.handle_server(
            Instant::now(),
            server_message::Message::Register(proto::RegisterWorkerResponse {
                worker_id: "AW_x".into(),
                ..Default::default()
            }),
        );
        let out = drain(&mut m);
        assert_eq!(
            out[0],
            Output::Registered {
                worker_id: "AW_x".into()
            }
        );
        assert!(m.is_registered());
        let s = last_status(&out).expect("status after register");
        assert_eq!(s.status, Some(proto::WorkerStatus::WsAvailable as i32));
    }

    #[test]
    fn accepts_up_to_the_cap_counting_jobs_awaiting_assignment() {
        let t0 = Instant::now();
        let mut m = machine(2);
        register(&mut m, t0);
        drain(&mut m);
        assert!(offer(&mut m, t0, "J1"));
        assert!(offer(&mut m, t0, "J2"));
        assert!(!offer(&mut m, t0, "J3"), "cap of 2 reached");
        let out = assign(&mut m, t0, "J1");
        assert!(
            matches!(&out[0], Output::StartJob(j) if j.job_id == "J1" && j.token == "tok" && j.room_name == "room")
        );
        m.handle_timeout(t0);
        let s = last_status(&drain(&mut m)).expect("status");
        assert_eq!(s.job_count, 2);
        assert_eq!(s.status, Some(proto::WorkerStatus::WsFull as i32));
        m.job_ended("J1", JobResult::Success);
        let out = drain(&mut m);
        assert!(out.iter().any(|o| matches!(o,
            Output::Send(worker_message::Message::UpdateJob(u))
                if u.job_id == "J1" && u.status == proto::JobStatus::JsSuccess as i32)));
        assert!(offer(&mut m, t0, "J3"), "room again after J1 ended");
    }

    #[test]
    fn answer_carries_identity_and_agent_name_attribute() {
        let t0 = Instant::now();
        let mut m = WorkerProtocol::new(ProtocolOptions {
            agent_name: "kimi".into(),
            version: "1".into(),
            max_jobs: 1,
            load_threshold: 0.7,
        });
        register(&mut m, t0);
        drain(&mut m);
        m.handle_server(
            t0,
            server_message::Message::Availability(proto::AvailabilityRequest {
                job: Some(proto::Job {
                    id: "AJ_9".into(),
                    ..Default::default()
                }),
                resuming: false,
            }),
        );
        let out = drain(&mut m);
        let Output::Send(worker_message::Message::Availability(r)) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(r.available);
        assert_eq!(r.participant_identity, "agent-AJ_9");
        assert_eq!(r.participant_name, "kimi");
        assert_eq!(
            r.participant_attributes
                .get(AGENT_NAME_ATTRIBUTE)
                .map(String::as_str),
            Some("kimi")
        );
    }

    #[test]
    fn declines_above_the_load_threshold_and_reports_full() {
        let t0 = Instant::now();
        let mut m = machine(10);
        register(&mut m, t0);
        m.set_load(0.9);
        m.handle_timeout(t0);
        let s = last_status(&drain(&mut m)).expect("status");
        assert_eq!(s.status, Some(proto::WorkerStatus::WsFull as i32));
        assert!((s.load - 0.9).abs() < 1e-6);
        assert!(!offer(&mut m, t0, "J1"));
        m.set_load(0.2);
        assert!(offer(&mut m, t0, "J1"));
        m.set_load(f32::NAN);
        assert!(offer(&mut m, t0, "J2"), "a NaN sample counts as idle");
    }

    #[test]
    fn unassigned_jobs_expire() {
        let t0 = Instant::now();
        let mut m = machine(1);
        register(&mut m, t0);
        assert!(offer(&mut m, t0, "J1"));
        assert!(!offer(&mut m, t0, "J2"));
        m.handle_timeout(t0 + ASSIGNMENT_TIMEOUT);
        drain(&mut m);
        assert!(offer(&mut m, t0 + ASSIGNMENT_TIMEOUT, "J2"));
    }

    #[test]
    fn termination_stops_a_running_job_and_failure_is_reported() {
        let t0 = Instant::now();
        let mut m = machine(3);
        register(&mut m, t0);
        assert!(offer(&mut m, t0, "J1"));
        assign(&mut m, t0, "J1");
        m.job_running("J1");
        let out = drain(&mut m);
        assert!(out.iter().any(|o| matches!(o,
            Output::Send(worker_message::Message::UpdateJob(u)) if u.status == proto::JobStatus::JsRunning as i32)));
        m.handle_server(
            t0,
            server_message::Message::Termination(proto::JobTermination {
                job_id: "J1".into(),
            }),
        );
        assert_eq!(
            drain(&mut m),
            vec![Output::StopJob {
                job_id: "J1".into()
            }]
        );
        m.job_ended("J1", JobResult::Failed("session panicked".into()));
        let out = drain(&mut m);
        assert!(
            out.iter().any(|o| matches!(o,
            Output::Send(worker_message::Message::UpdateJob(u))
                if u.status == proto::JobStatus::JsFailed as i32 && u.error == "session panicked"))
        );
        m.job_ended("J1", JobResult::Success);
        assert!(drain(&mut m).is_empty(), "a job ends once");
    }

    #[test]
    fn reconnect_keeps_running_jobs_and_registers_again() {
        let t0 = Instant::now();
        let mut m = machine(3);
        register(&mut m, t0);
        assert!(offer(&mut m, t0, "J1"));
        assign(&mut m, t0, "J1");
        assert!(offer(&mut m, t0, "J2"));
        m.disconnected();
        assert!(!m.is_registered());
        m.handle_timeout(t0);
        assert!(drain(&mut m).is_empty(), "nothing sent while unregistered");
        register(&mut m, t0);
        let out = drain(&mut m);
        assert!(matches!(
            &out[0],
            Output::Send(worker_message::Message::Register(_))
        ));
        let s = last_status(&out).expect("status");
        assert_eq!(s.job_count, 1, "J1 still runs, J2 was forgotten");
        assert_eq!(s.seq, 1, "seq restarts per registration");
    }

    #[test]
    fn an_unanswered_registration_gives_up_the_connection() {
        let t0 = Instant::now();
        let mut m = machine(3);
        m.connected(t0);
        drain(&mut m);
        m.handle_timeout(t0 + REGISTER_TIMEOUT - Duration::from_millis(1));
        assert!(!drain(&mut m).contains(&Output::Reconnect), "not yet");
        m.handle_timeout(t0 + REGISTER_TIMEOUT);
        assert_eq!(drain(&mut m), vec![Output::Reconnect]);
        m.handle_timeout(t0 + REGISTER_TIMEOUT * 2);
        assert!(drain(&mut m).is_empty(), "once per connection");
        // An answered registration never times out.
        register(&mut m, t0);
        drain(&mut m);
        m.handle_timeout(t0 + REGISTER_TIMEOUT * 3);
        assert!(!drain(&mut m).contains(&Output::Reconnect));
    }

    #[test]
    fn drain_reports_full_and_declines() {
        let t0 = Instant::now();
        let mut m = machine(3);
        register(&mut m, t0);
        drain(&mut m);
        m.drain();
        let s = last_status(&drain(&mut m)).expect("status");
        assert!(s.draining);
        assert_eq!(s.status, Some(proto::WorkerStatus::WsFull as i32));
        assert!(!offer(&mut m, t0, "J1"));
    }
}
