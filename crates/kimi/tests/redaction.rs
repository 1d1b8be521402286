//! A refusal whose body echoes the secret and the token just where the
//! client shortens the message: secrets are removed before the cut, so not
//! even a prefix of either survives. Against a one-shot local HTTP server
//! (no gateway needed: only the error path is exercised).

use agent::{ChatMessage, JobContext, Llm, LlmRequest};
use kimi::{KimiConfig, KimiLlm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "APIstraddleKey01";
const SECRET: &str = "straddle-secret-value-0123456789abcdef";

/// Whether any 6 characters in a row of `secret` appear in `text`.
fn leaks(text: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(6)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}

/// Answers one request with a 401 whose message puts the token across the
/// 200th character, and the secret after it.
async fn refuse_once(listener: TcpListener) {
    let Ok((mut s, _)) = listener.accept().await else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("authorization: Bearer "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    // Read the body, so that closing does not reset the connection.
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let at = text.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
    let mut have = head.len() - at;
    while have < length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    let message = format!("{}{token} {SECRET}", "x".repeat(180));
    let body = format!(r#"{{"error":{{"message":"{message}"}}}}"#);
    let reply = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

#[tokio::test]
async fn a_token_straddling_the_cut_leaves_no_prefix() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(refuse_once(listener));
    let env = |name: &str| match name {
        "LIVEKIT_API_KEY" => Some(KEY.to_string()),
        "LIVEKIT_API_SECRET" => Some(SECRET.to_string()),
        _ => None,
    };
    let config = KimiConfig {
        base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        max_retries: 0,
        ..KimiConfig::default()
    };
    let llm = KimiLlm::new(&config, &env).expect("client");
    let request = LlmRequest {
        messages: vec![ChatMessage::user("hello")],
        tools: vec![],
        job: JobContext::default(),
        options: Default::default(),
    };
    let err = llm.chat(request).await.err().expect("refused");
    server.await.expect("the server ran");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("401"), "{shown}");
    assert!(shown.contains("xxxxxxxx[redacted]"), "{shown}");
    assert!(!shown.contains("eyJ"), "a token prefix survived: {shown}");
    assert!(!leaks(&shown, SECRET), "{shown}");
    assert!(!leaks(&shown, KEY), "{shown}");
}
