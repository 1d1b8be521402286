//! `voice-agent console --text` as a user runs it, against a local stand-in
//! for the LiveKit Inference gateway that checks the request's JWT the way
//! the gateway does (`e2e_tests::inference::verify_jwt`: HS256 signature with
//! the API secret, issuer, subject, validity, the inference grant) and
//! answers with a streamed completion, or 401.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use e2e_tests::http::read_request;
use e2e_tests::inference::verify_jwt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const KEY: &str = "devkey";
const SECRET: &str = "the-real-secret-7f3a";

/// What the stand-in saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    provider: Option<String>,
    body: serde_json::Value,
}

/// Serves until the test ends; returns the base URL and the request log.
async fn gateway() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut sock).await else {
                    return;
                };
                log.lock().expect("log").push(Seen {
                    path: request.path().to_string(),
                    provider: request
                        .header("x-livekit-inference-provider")
                        .map(str::to_string),
                    body: request.json(),
                });
                let token = request
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                let response = if verify_jwt(token, KEY, SECRET).is_ok() {
                    let mut r = String::from(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                    );
                    for piece in ["Hello", " there!", " How can", " I help?"] {
                        let event = serde_json::json!({
                            "id": "c1", "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]
                        });
                        r.push_str(&format!("data: {event}\n\n"));
                    }
                    r.push_str("data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":6,\"total_tokens\":18}}\n\n");
                    r.push_str("data: [DONE]\n\n");
                    r
                } else {
                    let body = r#"{"error":{"message":"invalid token signature"}}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// Runs the binary with only the given environment, `stdin` piped in.
fn voice_agent(args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voice-agent"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn voice-agent");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("voice-agent exits")
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_is_answered_through_the_gateway() {
    let (url, seen) = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(
        &dir,
        "[llm]\nmodel = \"moonshotai/kimi-k2.6\"\nprovider = \"baseten\"\n[llm.extra_kwargs]\nmax_completion_tokens = 77\n",
    );
    let out = tokio::task::spawn_blocking(move || {
        voice_agent(
            &["--config", &cfg, "console", "--text"],
            &[
                ("LIVEKIT_INFERENCE_URL", &url),
                ("LIVEKIT_API_KEY", KEY),
                ("LIVEKIT_API_SECRET", SECRET),
            ],
            "hello\n",
        )
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {stderr}",
        out.status
    );
    assert_eq!(stdout, "Hello there! How can I help?\n");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.provider.as_deref(), Some("baseten"));
    assert_eq!(req.body["model"], "moonshotai/kimi-k2.6");
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["max_completion_tokens"], 77, "extra_kwargs merged");
    // K2.6 takes only its fixed sampling; the client sends it (thinking off).
    assert_eq!(req.body["temperature"], 0.6);
    assert_eq!(req.body["top_p"], 0.95);
    assert!(
        req.body.get("provider").is_none(),
        "provider leaked into the body"
    );
    let messages = req.body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages.last().expect("user")["content"], "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_is_a_one_line_auth_error() {
    let (url, seen) = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(&dir, "[llm]\nmodel = \"moonshotai/kimi-k2.6\"\n");
    let wrong = "not-the-secret-0000";
    let out = tokio::task::spawn_blocking(move || {
        voice_agent(
            &["--config", &cfg, "console", "--text"],
            &[
                ("LIVEKIT_INFERENCE_URL", &url),
                ("LIVEKIT_API_KEY", KEY),
                ("LIVEKIT_API_SECRET", wrong),
            ],
            "hello\nare you there?\n",
        )
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.to_lowercase().contains("auth"), "{stderr}");
    assert!(!stderr.contains(wrong), "the secret leaked: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Auth failures are not retried, and the console stops at the first.
    assert_eq!(seen.lock().expect("log").len(), 1);
}

#[test]
fn missing_credentials_name_the_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(&dir, "[llm]\nmodel = \"moonshotai/kimi-k2.6\"\n");
    let out = voice_agent(&["--config", &cfg, "console", "--text"], &[], "hello\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("LIVEKIT_API_KEY"), "{stderr}");
}

#[test]
fn bad_config_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(&dir, "[turn]\nmin_endpointing_delay = \"soon\"\n");
    let out = voice_agent(&["--config", &cfg, "console", "--text"], &[], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("min_endpointing_delay"), "{stderr}");
    assert!(stderr.contains("agent.toml"), "{stderr}");
}
