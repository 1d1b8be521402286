//! Secrets never reach the logs: with every target logging at TRACE (span
//! fields included), neither a header value nor a child's environment value
//! shows up while servers are started, found missing, called and shut down.
//! Runs on a current-thread runtime, so that the capturing subscriber set
//! for this thread sees every task.

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::mcp_everything;
use mcp::{McpServer, McpServerConfig};
use serde_json::json;
use tracing_subscriber::fmt::format::FmtSpan;

const HEADER_SECRET: &str = "hdr-5ecret-0f-the-test";
const ENV_SECRET: &str = "env-5ecret-0f-the-test";

/// Collects everything written to it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|all| String::from_utf8_lossy(&all).into_owned())
            .unwrap_or_default()
    }
}

/// server-everything's `dist/index.js`; panics naming `tests/setup.sh` if
/// that version is not installed.
fn everything() -> String {
    match mcp_everything() {
        Ok(index) => index.display().to_string(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn header_and_env_values_never_reach_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::FULL)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    // A variable of the child only (setting our own environment is unsafe
    // in a multi-threaded test binary).
    let stdio = McpServerConfig::stdio("with-env", "node")
        .args([everything(), "stdio".into()])
        .env_var("SOME_API_KEY", ENV_SECRET);
    let server = McpServer::start(&stdio).expect("valid config");
    server
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the stdio server starts");
    let out = server
        .call("get-sum", json!({"a": 1, "b": 2}))
        .await
        .expect("a call");
    assert_eq!(out.to_model_text(), "The sum of 1 and 2 is 3.");
    server.shutdown().await;

    // Nothing listens there: connection failures are logged, headers not.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let http = McpServerConfig::http("with-header", format!("http://127.0.0.1:{port}/mcp"))
        .header("Authorization", format!("Bearer {HEADER_SECRET}"));
    let server = McpServer::start(&http).expect("valid config");
    let not_ready = server.wait_ready(Duration::from_millis(1500)).await;
    let error = not_ready.expect_err("nothing listens");
    let call = server.call("get-sum", json!({"a": 1, "b": 2})).await;
    let call_error = call.expect_err("not connected");

    // Then the server comes up: requests carrying the header are logged at
    // TRACE by every layer, the value is not.
    let mut node = tokio::process::Command::new("node")
        .args([everything().as_str(), "streamableHttp"])
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    server
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the HTTP server comes up");
    let out = server
        .call("get-sum", json!({"a": 2, "b": 2}))
        .await
        .expect("a call over HTTP");
    assert_eq!(out.to_model_text(), "The sum of 2 and 2 is 4.");
    server.shutdown().await;
    let _ = node.kill().await;

    let logs = capture.text();
    assert!(
        logs.contains("with-env") && logs.contains("with-header"),
        "{logs}"
    );
    assert!(logs.contains("MCP server unavailable"), "{logs}");
    for secret in [HEADER_SECRET, ENV_SECRET] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
        for shown in [
            format!("{error}"),
            format!("{error:?}"),
            format!("{call_error}"),
            format!("{call_error:?}"),
            format!("{http:?}"),
            format!("{stdio:?}"),
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
    }
}
