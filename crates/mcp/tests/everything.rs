//! `McpServer` against the real `@modelcontextprotocol/server-everything`
//! (installed into the test cache by `tests/setup.sh`), over stdio and over
//! Streamable HTTP: listing and filtering tools, calls through the agent's
//! `Tool` trait, a server missing at start, a server killed mid-session,
//! cancellation and timeouts on the wire, and no process left behind.
//!
//! A missing server fails these tests with a message naming
//! `tests/setup.sh`; nothing is skipped.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{JobContext, Tool, ToolContext, ToolOutput, ToolProvider, Userdata};
use e2e_tests::{free_port, init_logging, mcp_everything, scratch};
use mcp::{McpError, McpServer, McpServerConfig, McpStatus};
use serde_json::{Value, json};

/// How long a (re)connection may take in these tests.
const READY: Duration = Duration::from_secs(30);
/// What "promptly" means for a failing call.
const PROMPT: Duration = Duration::from_secs(3);

/// server-everything's `dist/index.js`; panics naming `tests/setup.sh` if
/// that version is not installed.
fn everything() -> String {
    match mcp_everything() {
        Ok(index) => index.display().to_string(),
        Err(e) => panic!("{e}"),
    }
}

fn ctx() -> ToolContext {
    ToolContext::standalone(JobContext::default(), Userdata::default())
}

fn names(server: &McpServer) -> Vec<String> {
    let mut names: Vec<String> = server.tools().iter().map(|t| t.spec().name).collect();
    names.sort();
    names
}

fn tool(server: &McpServer, name: &str) -> Arc<dyn Tool> {
    server
        .tools()
        .into_iter()
        .find(|t| t.spec().name == name)
        .unwrap_or_else(|| panic!("no tool {name} in {:?}", names(server)))
}

fn text(output: ToolOutput) -> String {
    match output {
        ToolOutput::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

async fn ready(config: &McpServerConfig) -> Arc<McpServer> {
    let server = McpServer::start(config).expect("valid config");
    if let Err(e) = server.wait_ready(READY).await {
        panic!("{e}");
    }
    server
}

async fn sum(tool: &Arc<dyn Tool>, a: i64, b: i64) -> Result<String, String> {
    tool.call(ctx(), json!({"a": a, "b": b}))
        .await
        .map(|o| o.to_model_text())
        .map_err(|e| e.to_string())
}

/// Retries `get-sum` until it works (the server came back), at most `READY`.
async fn sum_eventually(server: &McpServer) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(out) = server.call("get-sum", json!({"a": 20, "b": 22})).await {
            assert_eq!(out.to_model_text(), "The sum of 20 and 22 is 42.");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < READY,
            "the server did not come back: {}",
            server.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// server-everything over Streamable HTTP on `port`, killed on drop.
struct HttpServer {
    child: tokio::process::Child,
}

impl HttpServer {
    async fn spawn(port: u16) -> Self {
        let child = tokio::process::Command::new("node")
            .args([everything().as_str(), "streamableHttp"])
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (tests/setup.sh installs it)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < READY,
                "the HTTP server did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child }
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/mcp")
}

async fn read_pid(path: &Path) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(started.elapsed() < READY, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` runs (a zombie does not count).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
    }
}

async fn wait_dead(pid: i32, within: Duration) {
    let started = Instant::now();
    while alive(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} outlived its server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kill9(pid: i32) {
    let status = tokio::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

#[tokio::test]
async fn stdio_lists_filters_and_calls_tools() {
    init_logging();
    let index = everything();
    let server =
        ready(&McpServerConfig::stdio("everything", "node").args([index.as_str(), "stdio"])).await;
    let all = names(&server);
    for expected in [
        "echo",
        "get-structured-content",
        "get-sum",
        "get-tiny-image",
        "trigger-long-running-operation",
    ] {
        assert!(
            all.iter().any(|n| n == expected),
            "{expected} missing from {all:?}"
        );
    }
    assert_eq!(server.status(), McpStatus::Ready { tools: all.len() });

    let get_sum = tool(&server, "get-sum");
    let spec = get_sum.spec();
    assert_eq!(spec.description, "Returns the sum of two numbers");
    assert_eq!(spec.parameters["type"], "object");
    assert_eq!(spec.parameters["properties"]["a"]["type"], "number");
    assert!(
        spec.parameters.get("$schema").is_none(),
        "{}",
        spec.parameters
    );
    assert_eq!(get_sum.timeout(), Some(Duration::from_secs(10)));
    assert_eq!(
        sum(&get_sum, 2, 3).await.as_deref(),
        Ok("The sum of 2 and 3 is 5.")
    );

    // A tool error (bad arguments) reaches the model as a ToolError.
    let bad = get_sum.call(ctx(), json!({"a": "two", "b": 3})).await;
    assert!(bad.is_err(), "{bad:?}");

    let weather = tool(&server, "get-structured-content")
        .call(ctx(), json!({"location": "Chicago"}))
        .await
        .expect("structured content");
    assert!(
        matches!(&weather, ToolOutput::Json(v) if v["temperature"] == 36),
        "{weather:?}"
    );
    let image = text(
        tool(&server, "get-tiny-image")
            .call(ctx(), json!({}))
            .await
            .expect("an image"),
    );
    assert!(image.contains("[image: image/png, "), "{image}");
    assert!(
        image.contains("The image above is the MCP logo."),
        "{image}"
    );
    let echo = server
        .call("echo", json!({"message": "hi there"}))
        .await
        .expect("echo");
    assert!(echo.to_model_text().contains("hi there"), "{echo:?}");
    let not_object = server.call("echo", json!(["hi"])).await;
    assert!(
        matches!(not_object, Err(McpError::InvalidArguments { .. })),
        "{not_object:?}"
    );

    // allowed_tools filters the listing and direct calls.
    let filtered = ready(
        &McpServerConfig::stdio("filtered", "node")
            .args([index.as_str(), "stdio"])
            .allowed_tools(["get-sum", "echo", "no-such-tool"])
            .timeout(Duration::from_secs(4)),
    )
    .await;
    assert_eq!(names(&filtered), vec!["echo", "get-sum"]);
    let refused = filtered.call("get-tiny-image", json!({})).await;
    assert!(
        matches!(refused, Err(McpError::ToolNotAllowed { .. })),
        "{refused:?}"
    );
    let get_sum = tool(&filtered, "get-sum");
    assert_eq!(get_sum.timeout(), Some(Duration::from_secs(4)));
    assert_eq!(
        sum(&get_sum, -1, 1).await.as_deref(),
        Ok("The sum of -1 and 1 is 0.")
    );
    filtered.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn http_lists_filters_and_calls_tools() {
    init_logging();
    let port = free_port(false).expect("a free port");
    let http = HttpServer::spawn(port).await;
    let all = ready(&McpServerConfig::http("remote", url(port))).await;
    assert!(names(&all).len() >= 5, "{:?}", names(&all));
    let server = ready(
        &McpServerConfig::http("remote-sum", url(port))
            .header("X-Test", "a-secret-value")
            .allowed_tools(["get-sum"]),
    )
    .await;
    assert_eq!(names(&server), vec!["get-sum"]);
    let get_sum = tool(&server, "get-sum");
    assert_eq!(
        sum(&get_sum, 40, 2).await.as_deref(),
        Ok("The sum of 40 and 2 is 42.")
    );
    let refused = server.call("echo", json!({"message": "x"})).await;
    assert!(
        matches!(refused, Err(McpError::ToolNotAllowed { .. })),
        "{refused:?}"
    );
    assert!(!format!("{server:?}").contains("a-secret-value"));
    server.shutdown().await;
    all.shutdown().await;
    http.kill().await;
}

#[tokio::test]
async fn stdio_server_missing_at_start_appears_once_installed() {
    init_logging();
    let dir = scratch("missing");
    let script = dir.join("server.sh");
    let server = McpServer::start(&McpServerConfig::stdio(
        "late",
        script.display().to_string(),
    ))
    .expect("valid config");
    // The agent goes on without it: no tools, calls fail at once.
    let not_ready = server.wait_ready(Duration::from_millis(700)).await;
    let message = not_ready.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("could not start"), "{message}");
    assert!(server.tools().is_empty());
    let started = Instant::now();
    let call = server.call("get-sum", json!({"a": 1, "b": 2})).await;
    assert!(
        matches!(call, Err(McpError::NotConnected { .. })),
        "{call:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));

    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec node '{}' stdio\n", everything()),
    )
    .expect("write the script");
    let status = tokio::process::Command::new("chmod")
        .args(["755", &script.display().to_string()])
        .status()
        .await
        .expect("chmod runs");
    assert!(status.success());
    server
        .wait_ready(READY)
        .await
        .expect("ready once installed");
    assert_eq!(
        sum(&tool(&server, "get-sum"), 1, 2).await.as_deref(),
        Ok("The sum of 1 and 2 is 3.")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http_server_missing_at_start_appears_once_started() {
    init_logging();
    let port = free_port(false).expect("a free port");
    let server =
        McpServer::start(&McpServerConfig::http("later", url(port))).expect("valid config");
    let not_ready = server.wait_ready(Duration::from_millis(700)).await;
    assert!(
        matches!(not_ready, Err(McpError::NotReady { .. })),
        "{not_ready:?}"
    );
    assert!(matches!(
        server.status(),
        McpStatus::Down { .. } | McpStatus::Connecting { .. }
    ));
    assert!(server.tools().is_empty());
    let started = Instant::now();
    let call = server.call("get-sum", json!({"a": 1, "b": 2})).await;
    assert!(
        matches!(call, Err(McpError::NotConnected { .. })),
        "{call:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));

    let http = HttpServer::spawn(port).await;
    server
        .wait_ready(READY)
        .await
        .expect("ready once the server listens");
    assert!(names(&server).iter().any(|n| n == "get-sum"));
    assert_eq!(
        sum(&tool(&server, "get-sum"), 5, 6).await.as_deref(),
        Ok("The sum of 5 and 6 is 11.")
    );
    server.shutdown().await;
    http.kill().await;
}

#[tokio::test]
async fn stdio_server_killed_mid_session_is_restarted() {
    init_logging();
    let dir = scratch("killed");
    let pidfile = dir.join("pid");
    let config = McpServerConfig::stdio("crashy", "sh")
        .args([
            "-c".to_string(),
            format!("echo $$ > \"$PIDFILE\"; exec node '{}' stdio", everything()),
        ])
        .env_var("PIDFILE", pidfile.display().to_string());
    let server = ready(&config).await;
    let get_sum = tool(&server, "get-sum");
    assert_eq!(
        sum(&get_sum, 1, 1).await.as_deref(),
        Ok("The sum of 1 and 1 is 2.")
    );

    let first = read_pid(&pidfile).await;
    std::fs::remove_file(&pidfile).expect("remove the pid file");
    kill9(first).await;
    let started = Instant::now();
    let failed = sum(&get_sum, 1, 2).await;
    assert!(failed.is_err(), "a call to a killed server: {failed:?}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());

    let took = sum_eventually(&server).await;
    let second = read_pid(&pidfile).await;
    assert_ne!(first, second, "a new process");
    assert!(took < READY, "{took:?}");
    // A tool listed before the crash works again too.
    assert_eq!(
        sum(&get_sum, 2, 2).await.as_deref(),
        Ok("The sum of 2 and 2 is 4.")
    );
    server.shutdown().await;
    wait_dead(second, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http_server_killed_mid_session_is_reconnected() {
    init_logging();
    let port = free_port(false).expect("a free port");
    let http = HttpServer::spawn(port).await;
    let server = ready(&McpServerConfig::http("flaky", url(port))).await;
    let get_sum = tool(&server, "get-sum");
    assert_eq!(
        sum(&get_sum, 3, 4).await.as_deref(),
        Ok("The sum of 3 and 4 is 7.")
    );

    http.kill().await;
    let started = Instant::now();
    let failed = sum(&get_sum, 3, 5).await;
    assert!(failed.is_err(), "a call to a killed server: {failed:?}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());

    let http = HttpServer::spawn(port).await;
    sum_eventually(&server).await;
    assert_eq!(
        sum(&get_sum, 3, 6).await.as_deref(),
        Ok("The sum of 3 and 6 is 9.")
    );
    server.shutdown().await;
    http.kill().await;
}

/// The JSON-RPC messages the client wrote, from the wire log.
fn wire_messages(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The ids of the `tools/call` requests for `tool`, in order.
fn call_ids(wire: &[Value], tool: &str) -> Vec<Value> {
    wire.iter()
        .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
        .map(|m| m["id"].clone())
        .collect()
}

/// Waits until the wire log shows `notifications/cancelled` for `id`.
async fn cancelled_on_the_wire(path: &Path, id: &Value) -> Value {
    let started = Instant::now();
    loop {
        if let Some(m) = wire_messages(path)
            .into_iter()
            .find(|m| m["method"] == "notifications/cancelled" && &m["params"]["requestId"] == id)
        {
            return m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no notifications/cancelled for request {id} in {:?}",
            wire_messages(path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancelled_and_timed_out_calls_are_cancelled_on_the_wire() {
    init_logging();
    let dir = scratch("cancel");
    let wire = dir.join("wire.jsonl");
    // `tee` records what the client sends to the real server.
    let config = McpServerConfig::stdio("long", "sh")
        .args([
            "-c".to_string(),
            format!("tee \"$WIRE\" | node '{}' stdio", everything()),
        ])
        .env_var("WIRE", wire.display().to_string())
        .timeout(Duration::from_secs(3));
    let server = ready(&config).await;
    let long = tool(&server, "trigger-long-running-operation");
    let get_sum = tool(&server, "get-sum");

    // Cancelled through the ToolContext's token.
    let ctx = ctx();
    let token = ctx.cancellation().clone();
    let call = {
        let long = long.clone();
        tokio::spawn(async move { long.call(ctx, json!({"duration": 30, "steps": 30})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_at = Instant::now();
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the call returns promptly once cancelled")
        .expect("the call task");
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("cancelled"), "{message}");
    assert!(cancelled_at.elapsed() < Duration::from_millis(500));
    let ids = call_ids(&wire_messages(&wire), "trigger-long-running-operation");
    assert_eq!(ids.len(), 1, "{ids:?}");
    cancelled_on_the_wire(&wire, &ids[0]).await;
    let started = Instant::now();
    assert_eq!(
        sum(&get_sum, 7, 8).await.as_deref(),
        Ok("The sum of 7 and 8 is 15.")
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // Timed out after the configured 3 s, and cancelled on the wire too.
    let started = Instant::now();
    let result = long
        .call(self::ctx(), json!({"duration": 30, "steps": 30}))
        .await;
    let elapsed = started.elapsed();
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("timed out"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let ids = call_ids(&wire_messages(&wire), "trigger-long-running-operation");
    assert_eq!(ids.len(), 2, "{ids:?}");
    cancelled_on_the_wire(&wire, &ids[1]).await;
    assert_eq!(
        sum(&get_sum, 8, 8).await.as_deref(),
        Ok("The sum of 8 and 8 is 16.")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_and_drop_leave_no_process_behind() {
    init_logging();
    let dir = scratch("cleanup");
    let config = |tag: &str| {
        McpServerConfig::stdio(format!("cleanup-{tag}"), "sh")
            .args([
                "-c".to_string(),
                // A process the server started itself: it must go too.
                format!(
                    "sleep 300 & echo $! > \"$DIR/{tag}.sleep\"; echo $$ > \"$DIR/{tag}.pid\"; exec node '{}' stdio",
                    everything()
                ),
            ])
            .env_var("DIR", dir.display().to_string())
    };

    let server = ready(&config("shutdown")).await;
    let node = read_pid(&dir.join("shutdown.pid")).await;
    let sleep = read_pid(&dir.join("shutdown.sleep")).await;
    assert!(alive(node) && alive(sleep));
    let get_sum = tool(&server, "get-sum");
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_dead(node, Duration::from_secs(2)).await;
    wait_dead(sleep, Duration::from_secs(2)).await;
    assert_eq!(server.status(), McpStatus::Stopped);
    let after = get_sum.call(ctx(), json!({"a": 1, "b": 1})).await;
    let message = after.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("shut down"), "{message}");

    let server = ready(&config("drop")).await;
    let node = read_pid(&dir.join("drop.pid")).await;
    let sleep = read_pid(&dir.join("drop.sleep")).await;
    assert!(alive(node) && alive(sleep));
    drop(server);
    wait_dead(node, Duration::from_secs(5)).await;
    wait_dead(sleep, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unset_env_reference_is_a_start_error_naming_the_variable() {
    let config = McpServerConfig::http("secure", "http://127.0.0.1:9/mcp")
        .header("Authorization", "env:MCP_TEST_TOKEN_THAT_IS_NOT_SET");
    let error = McpServer::start(&config).expect_err("the variable is unset");
    assert_eq!(
        error.config_key(),
        Some("mcp[secure].headers.Authorization")
    );
    assert!(
        error.to_string().contains("MCP_TEST_TOKEN_THAT_IS_NOT_SET"),
        "{error}"
    );
}
