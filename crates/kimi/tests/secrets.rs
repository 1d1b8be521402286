//! No key, secret or token in a log line, a `Debug` output or an error
//! message, across a run that logs retries, a fallback, an auth failure and
//! the retired-model warning. Alone in its binary so that the once-per-process
//! warning is seen here.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use agent::{ChatMessage, JobContext, Llm, LlmRequest};
use e2e_tests::inference::chat::*;
use futures::StreamExt;
use kimi::{Backend, FallbackConfig, KimiConfig, KimiLlm};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A minimal subscriber that records every event and span field as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = format!("span {}", span.metadata().name());
        span.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = String::from("record");
        values.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn no_secret_in_logs_debug_or_errors() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let gw = Gateway::start(
        Auth::Livekit {
            key: KEY.into(),
            secret: SECRET.into(),
        },
        vec![
            // Primary: a 500 (retried), then a 401 that echoes the token.
            Reply::Status {
                status: 500,
                headers: vec![],
                body: format!(r#"{{"error":{{"message":"boom, key {KEY}"}}}}"#),
            },
            Reply::Status {
                status: 401,
                headers: vec![],
                body: format!(r#"{{"error":{{"message":"secret {SECRET} refused"}}}}"#),
            },
        ],
    )
    .await;
    let env = |name: &str| match name {
        "LIVEKIT_API_KEY" => Some(KEY.to_string()),
        "LIVEKIT_API_SECRET" => Some(SECRET.to_string()),
        "BASETEN_API_KEY" => Some(BASETEN_KEY.to_string()),
        _ => None,
    };
    // The retired K2 Instruct, so that the once-per-process warning is logged.
    let cfg = KimiConfig {
        model: "moonshotai/kimi-k2-instruct".into(),
        base_url: Some(gw.base_url.clone()),
        retry_base_delay_ms: 5,
        idle_timeout_ms: 2_000,
        fallback: vec![FallbackConfig {
            backend: Backend::Baseten,
            model: "moonshotai/Kimi-K2-Instruct".into(),
            provider: None,
            base_url: Some(gw.base_url.clone()),
            api_key_env: None,
            extra_kwargs: None,
            thinking: None,
            thinking_format: None,
        }],
        ..KimiConfig::default()
    };
    let llm = KimiLlm::new(&cfg, &env).unwrap();
    let request = LlmRequest {
        messages: vec![ChatMessage::user("hello")],
        tools: vec![],
        job: JobContext::default(),
        options: Default::default(),
    };
    // Primary: 500, retry, 401 (echoing the secret) → fallback to Baseten,
    // whose bearer key the LiveKit-auth gateway refuses (echoed token too).
    let err = llm.chat(request.clone()).await.err().expect("must fail");
    // A later successful request, for the debug/info lines of a normal run.
    let gw_ok = Gateway::start(
        Auth::Livekit {
            key: KEY.into(),
            secret: SECRET.into(),
        },
        vec![],
    )
    .await;
    let ok_cfg = KimiConfig {
        model: "moonshotai/kimi-k2-instruct".into(),
        base_url: Some(gw_ok.base_url.clone()),
        ..KimiConfig::default()
    };
    let ok = KimiLlm::new(&ok_cfg, &env).unwrap();
    let mut stream = ok.chat(request).await.unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }

    let mut tokens: Vec<String> = gw.seen().iter().filter_map(|s| s.bearer.clone()).collect();
    tokens.extend(gw_ok.seen().iter().filter_map(|s| s.bearer.clone()));
    assert!(tokens.len() >= 3, "requests were made: {tokens:?}");

    let logs = capture.0.lock().unwrap().join("\n");
    let texts = [
        ("logs", logs.clone()),
        ("error", err.to_string()),
        ("error debug", format!("{err:?}")),
        ("llm debug", format!("{llm:?}")),
        ("config debug", format!("{cfg:?}")),
    ];
    for (what, text) in &texts {
        for secret in [KEY, SECRET, BASETEN_KEY] {
            assert!(!text.contains(secret), "{what} holds a secret:\n{text}");
        }
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "{what} holds a token:\n{text}"
            );
        }
        assert!(!text.contains("eyJ"), "{what} holds a JWT:\n{text}");
    }
    // The run did log: retries, the fallback, and the retired-model warning
    // (once, though two clients use the retired model).
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains("trying LLM fallback"), "{logs}");
    assert_eq!(
        logs.matches("is retired on LiveKit Inference").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("moonshotai/kimi-k2.6"), "{logs}");
    // The error is the primary's auth failure, with the echoed secret redacted.
    assert!(err.message.contains("[redacted]"), "{err}");
}
