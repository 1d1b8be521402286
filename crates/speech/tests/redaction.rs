//! A refused websocket upgrade whose body echoes the API secret just where
//! the client cuts the server's text (300 characters): secrets are removed
//! before the cut, so not even a prefix survives.
//! Against a one-shot local server: only the refusal path is exercised.

use agent::{ErrorKind, JobContext, Stt};
use speech::{InferenceOptions, InferenceStt, InferenceSttOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const KEY: &str = "APIspeechStraddleKey";
const SECRET: &str = "speech-secret-value-0123456789abcdef";

/// The shortest prefix of `secret` (4 characters or more) found in `text`.
fn leaked_prefix<'a>(text: &str, secret: &'a str) -> Option<&'a str> {
    (4..=secret.len())
        .map(|n| &secret[..n])
        .find(|prefix| text.contains(prefix))
}

/// Refuses one upgrade with a 401 whose body puts the secret across the
/// 300th character.
async fn refuse_once(listener: TcpListener) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    // The request head ends with an empty line.
    while matches!(stream.read_line(&mut line).await, Ok(n) if n > 0) {
        if line == "\r\n" {
            break;
        }
        line.clear();
    }
    let body = format!("{}{SECRET} and more", "x".repeat(290));
    let reply = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.get_mut().write_all(reply.as_bytes()).await;
}

#[tokio::test]
async fn a_secret_straddling_the_cut_leaves_no_prefix() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let server = tokio::spawn(refuse_once(listener));
    let vars = [("LIVEKIT_API_KEY", KEY), ("LIVEKIT_API_SECRET", SECRET)];
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let stt = InferenceStt::new(
        InferenceSttOptions {
            common: InferenceOptions {
                base_url: Some(base_url),
                max_retries: 0,
                ..InferenceOptions::default()
            },
            ..InferenceSttOptions::default()
        },
        &env,
    )
    .expect("client");
    let e = stt
        .stream(&JobContext::default())
        .await
        .err()
        .expect("refused");
    server.await.expect("the server ran");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("xxxxxxxx[redacted]"), "{shown}");
    assert_eq!(leaked_prefix(&shown, SECRET), None, "{shown}");
    assert_eq!(leaked_prefix(&shown, KEY), None, "{shown}");
}
