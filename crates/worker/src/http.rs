//! The health and metrics HTTP server: `GET /` answers 200 while registered and
//! not draining, else 503; `GET /metrics` the Prometheus text. A deliberately
//! small HTTP/1.1 responder (one request per connection, 8 KiB request bound,
//! 5 s read timeout): it serves probes and scrapers, nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::metrics::Metrics;

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves. Each connection runs in a task owned by
/// this function's `JoinSet`, aborted when it returns.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let metrics = metrics.clone();
                    conns.spawn(async move {
                        let _ = tokio::time::timeout(READ_TIMEOUT, handle(stream, &metrics)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "health server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/") => {
            if metrics.healthy() {
                respond(&mut stream, 200, "text/plain", "OK\n").await
            } else {
                respond(&mut stream, 503, "text/plain", "unavailable\n").await
            }
        }
        ("GET" | "HEAD", "/metrics") => {
            let body = metrics.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(port: u16, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn health_follows_registration_and_metrics_render() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), async {
            let _ = rx.await;
        }));
        assert!(get(port, "/").await.starts_with("HTTP/1.1 503"));
        metrics.set_registered(true);
        assert!(get(port, "/").await.starts_with("HTTP/1.1 200"));
        let m = get(port, "/metrics").await;
        assert!(m.contains("voice_agent_worker_registered 1"), "{m}");
        assert!(get(port, "/nope").await.starts_with("HTTP/1.1 404"));
        metrics.set_draining();
        assert!(get(port, "/").await.starts_with("HTTP/1.1 503"));
        let _ = tx.send(());
        server.await.expect("server ends");
    }
}
