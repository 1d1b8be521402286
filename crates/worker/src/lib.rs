//! # worker — the LiveKit agent worker
//!
//! Registers with a LiveKit server over `/agent`, answers for jobs, joins the
//! rooms it is dispatched to and runs one session actor in each; reports its
//! load, survives server loss, drains on request, and serves health and
//! metrics over HTTP.
//!
//! ```no_run
//! # async fn demo(factory: std::sync::Arc<worker::SessionFactory>) -> Result<(), worker::WorkerError> {
//! use std::sync::Arc;
//! let options = worker::WorkerOptions {
//!     url: "ws://127.0.0.1:7880".into(),
//!     api_key: "devkey".into(),
//!     api_secret: "secret".into(),
//!     agent_name: String::new(), // automatic dispatch to every new room
//!     max_jobs: 20,
//!     load_threshold: 0.7,
//!     drain_timeout: std::time::Duration::from_secs(60),
//!     http_addr: Some(([127, 0, 0, 1], 8081).into()),
//!     report_interval: std::time::Duration::from_millis(2500),
//! };
//! let metrics = Arc::new(worker::Metrics::default());
//! worker::run(options, factory, Arc::new(worker::JobOptions::default()), metrics, async {
//!     let _ = tokio::signal::ctrl_c().await; // drain on Ctrl-C
//! })
//! .await
//! # }
//! ```
//!
//! ## Layout
//!
//! | file | owns |
//! |---|---|
//! | `protocol.rs` | the worker protocol as a pure state machine (register, availability, assignment, status) |
//! | `worker.rs` | the loop around it: socket, reconnect, jobs, load ticks, drain |
//! | `conn.rs` | the `/agent` URL, the room token, framing, the reconnect schedule (URL building, tokens and the backoff function are `livekit-plumbing`'s) |
//! | `job/mod.rs` | one job: join, link the user, run the entrypoint, the loop between room and session |
//! | `job/link.rs` | who the session talks to (participant kinds, a configured identity) |
//! | `job/entrypoint.rs` | the per-room entrypoint and how its failure stays in its job |
//! | `job/bridge.rs` | session events → room writes (state, transcriptions), audio both ways |
//! | `room_writer.rs` | the job's room writes (agent state, transcriptions) on their own task |
//! | `load.rs` | CPU moving average |
//! | `metrics.rs` | counters, gauges and histograms in a `prometheus-client` registry, OpenMetrics text |
//! | `http.rs` | `GET /` health and `GET /metrics`, served by hyper (connection cap, timeouts) |
//! | `error.rs` | [`WorkerError`], [`JobError`] |
//!
//! ## Known limits
//!
//! - The agent's transcription goes out as whole text streams (an interim one
//!   at each sentence end while generating, a final one when the reply is over),
//!   not as one stream with incremental chunks: `room` sends text streams whole.
//! - Load is this process's CPU share of the machine's cores, not system-wide CPU.

mod conn;
mod error;
mod http;
pub mod job;
mod load;
mod metrics;
pub mod protocol;
mod room_writer;
mod worker;

pub use conn::{agent_url, room_token};
pub use error::{JobError, WorkerError};
pub use job::{
    BoxError, Entrypoint, JobOptions, RoomJob, SessionFactory, Stop, entrypoint, fixed, links_to,
};
/// The type of [`WorkerOptions::api_secret`].
pub use livekit_plumbing::Secret;
pub use load::{CpuSampler, LoadAverage};
pub use metrics::Metrics;
pub use worker::{WorkerOptions, run};
