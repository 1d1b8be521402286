//! The health and metrics HTTP server: `GET /` (or `HEAD`) answers 200 while
//! registered and not draining, else 503; `GET /metrics` the OpenMetrics
//! text; anything else 404. It serves probes and scrapers, nothing else.
//!
//! HTTP/1.1 is hyper's (already in the graph through reqwest), not
//! hand-written: request parsing, `HEAD`, `Content-Length` and the error
//! answers (431 for a head over 8 KiB) are its job. What this file adds is
//! the robustness a port open to a network needs:
//!
//! - at most [`Limits::max_connections`] connections at once; past that, new
//!   ones wait in the listen backlog (a probe is answered as soon as one
//!   ends) instead of each costing a task;
//! - the request head must arrive within [`Limits::header_read_timeout`], and
//!   a connection (head read, answer written) lasts at most
//!   [`Limits::connection_timeout`]: a client that sends slowly or never reads
//!   its answer cannot hold a slot;
//! - one request per connection (no keep-alive): probes reconnect anyway,
//!   and an idle kept-alive connection would hold a slot.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::metrics::{self, Metrics};

/// Bounds on the server's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time allowed for the request head.
    pub header_read_timeout: Duration,
    /// Time allowed for a whole connection: head, answer, close.
    pub connection_timeout: Duration,
    /// Largest request head, bytes (hyper's floor is 8 KiB).
    pub max_header_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_header_size: 8 * 1024,
        }
    }
}

/// Serves until `shutdown` resolves, with the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with(listener, metrics, Limits::default(), shutdown).await;
}

/// Serves until `shutdown` resolves. Each connection runs in a task owned by
/// this function's `JoinSet` (its size is the connection count), aborted
/// when it returns.
pub(crate) async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_size);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < limits.max_connections => match accepted {
                Ok((stream, _)) => {
                    let metrics = metrics.clone();
                    let service = service_fn(move |req| {
                        let response = route(&req, &metrics);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let within = limits.connection_timeout;
                    conns.spawn(async move {
                        match tokio::time::timeout(within, conn).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "health connection failed"),
                            Err(_) => tracing::debug!("health connection cut after {within:?}"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "health server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The answer to one request.
fn route(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match (readable, req.uri().path()) {
        (true, "/") if metrics.healthy() => text(StatusCode::OK, "OK\n"),
        (true, "/") => text(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n"),
        (true, "/metrics") => answer(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    answer(status, "text/plain; charset=utf-8", body)
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    /// Sends `request` as is and reads the whole answer (the server closes).
    async fn raw(port: u16, request: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(port: u16, path: &str) -> String {
        raw(port, &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")).await
    }

    struct Server {
        port: u16,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(metrics: Arc<Metrics>, limits: Limits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(listener, metrics, limits, async {
                let _ = rx.await;
            }));
            Self {
                port,
                stop: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            tokio::time::timeout(Duration::from_secs(5), &mut self.task)
                .await
                .expect("the server stops when told")
                .expect("the server does not panic");
        }
    }

    #[tokio::test]
    async fn health_follows_registration_and_metrics_render() {
        let metrics = Arc::new(Metrics::default());
        let server = Server::start(metrics.clone(), Limits::default()).await;
        let port = server.port;
        let down = get(port, "/").await;
        assert!(down.starts_with("HTTP/1.1 503"), "{down}");
        assert!(down.ends_with("\r\n\r\nunavailable\n"), "{down}");
        metrics.set_registered(true);
        let up = get(port, "/?probe=1").await;
        assert!(up.starts_with("HTTP/1.1 200"), "{up}");
        assert!(
            up.to_ascii_lowercase().contains("connection: close"),
            "{up}"
        );
        assert!(up.ends_with("\r\n\r\nOK\n"), "{up}");
        let m = get(port, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(
            m.contains("content-type: application/openmetrics-text"),
            "{m}"
        );
        assert!(m.contains("\nvoice_agent_worker_registered 1\n"), "{m}");
        assert!(m.ends_with("# EOF\n"), "{m}");
        assert!(get(port, "/nope").await.starts_with("HTTP/1.1 404"));
        let post = raw(
            port,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
        // HEAD: the status and length, no body.
        let head = raw(port, "HEAD / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-length: 3"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        metrics.set_draining();
        assert!(get(port, "/").await.starts_with("HTTP/1.1 503"));
        server.stop().await;
    }

    /// What `tests/`' harness does: `http_get` (status = the second word,
    /// body = after the blank line) and `metric` (a `name value` line).
    async fn harness_get(port: u16, path: &str) -> (u16, String) {
        let out = raw(
            port,
            &format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"),
        )
        .await;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    }

    fn harness_metric(metrics: &str, name: &str) -> Option<f64> {
        metrics.lines().find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok())?
        })
    }

    #[tokio::test]
    async fn the_series_the_e2e_tests_and_benches_read_are_there() {
        let metrics = Arc::new(Metrics::default());
        let server = Server::start(metrics.clone(), Limits::default()).await;
        assert_eq!(harness_get(server.port, "/").await.0, 503);
        metrics.set_registered(true);
        metrics.session_started();
        metrics.reconnected();
        metrics.set_load(0.5);
        metrics.error("llm", "server");
        metrics.error("llm", "timeout");
        metrics.turn(&agent::session::TurnMetrics {
            interrupted: true,
            ..Default::default()
        });
        assert_eq!(harness_get(server.port, "/").await.0, 200);
        let (status, body) = harness_get(server.port, "/metrics").await;
        assert_eq!(status, 200);
        for (name, want) in [
            ("voice_agent_sessions_total", 1.0),
            ("voice_agent_sessions_active", 1.0),
            ("voice_agent_interruptions_total", 1.0),
            ("voice_agent_worker_reconnects_total", 1.0),
            ("voice_agent_worker_load", 0.5),
            ("voice_agent_audio_frames_total", 0.0),
            ("voice_agent_audio_frames_late_total", 0.0),
        ] {
            assert_eq!(harness_metric(&body, name), Some(want), "{name} in\n{body}");
        }
        // worker_failures_e2e sums the `stage="llm"` error lines.
        let llm_errors: f64 = body
            .lines()
            .filter(|l| l.starts_with("voice_agent_errors_total") && l.contains("stage=\"llm\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(llm_errors, 2.0, "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_or_garbled_request_is_refused() {
        let server = Server::start(Arc::new(Metrics::default()), Limits::default()).await;
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let answer = raw(server.port, &big).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let answer = raw(server.port, "\x16\x03\x01 not http\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn slow_clients_are_cut_and_the_cap_holds_the_rest_back() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_registered(true);
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let server = Server::start(metrics, limits).await;
        // Two clients that connect and never send: they fill the cap.
        let started = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(("127.0.0.1", server.port))
                .await
                .expect("connect");
            // Half a head, never finished.
            s.write_all(b"GET / HT").await.expect("write");
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A probe now waits in the backlog until a slot frees, then is answered.
        let probe = get(server.port, "/").await;
        let waited = started.elapsed();
        assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // The idle ones were closed by the server, without an answer.
        for mut s in idle {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "an idle connection stayed open");
            assert!(!String::from_utf8_lossy(&buf).contains(" 200 "), "{buf:?}");
        }
        server.stop().await;
    }
}
