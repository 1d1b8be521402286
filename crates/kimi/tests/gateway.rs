//! `KimiLlm` against a local server speaking LiveKit Inference's protocol (and
//! Baseten's / a plain OpenAI-compatible server's), checking what the gateway
//! checks, with realistic streams and faults.

mod common;

use std::time::{Duration, Instant};

use agent::{
    ChatMessage, ErrorKind, JobContext, Llm, LlmChunk, LlmRequest, StageError, ToolCall, ToolSpec,
    Usage,
};
use common::collect;
use e2e_tests::inference::chat::*;
use futures::StreamExt;
use kimi::{Backend, FallbackConfig, KimiConfig, KimiError, KimiLlm};
use serde_json::json;

/// The shipped config pointed at the local gateway, with short timeouts.
fn config(gw: &Gateway) -> KimiConfig {
    KimiConfig {
        base_url: Some(gw.base_url.clone()),
        idle_timeout_ms: 400,
        connect_timeout_ms: 500,
        retry_base_delay_ms: 10,
        retry_max_delay_ms: 2_000,
        ..KimiConfig::default()
    }
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![
            ChatMessage::system("You are a helpful voice assistant."),
            ChatMessage::user("hello"),
        ],
        tools: vec![],
        job: JobContext::default(),
        options: Default::default(),
    }
}

fn text_of(items: &[Result<LlmChunk, StageError>]) -> String {
    items
        .iter()
        .filter_map(|c| match c {
            Ok(LlmChunk::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn livekit_request_is_what_the_gateway_expects_and_the_reply_streams() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let mut cfg = config(&gw);
    cfg.extra_kwargs = json!({"temperature": 0.6, "max_completion_tokens": 300,
                              "tool_choice": "auto", "parallel_tool_calls": false})
    .as_object()
    .unwrap()
    .clone();
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    let mut req = request();
    req.job = JobContext {
        room_id: Some("RM_abc".into()),
        job_id: Some("AJ_def".into()),
        agent_id: Some("AW_ghi".into()),
        room_name: Some("lobby".into()),
        job_metadata: "{\"plan\":\"pro\"}".into(),
        ..JobContext::default()
    };
    req.tools = vec![ToolSpec {
        name: "get_weather".into(),
        description: "Current weather".into(),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
    }];
    let items = collect(&llm, req).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    let tail: Vec<LlmChunk> = items[items.len() - 2..]
        .iter()
        .map(|c| c.clone().unwrap())
        .collect();
    assert_eq!(
        tail,
        vec![
            LlmChunk::Usage(Usage {
                prompt_tokens: 21,
                completion_tokens: 7,
                cached_tokens: 16
            }),
            LlmChunk::Done {
                finish_reason: Some("stop".into())
            }
        ]
    );

    let seen = gw.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.refused, None);
    // JWT verified by the server; claims as LiveKit mints them.
    let claims = s.claims.as_ref().unwrap();
    assert_eq!(claims["iss"], KEY);
    assert_eq!(claims["sub"], "agent");
    assert_eq!(claims["inference"]["perform"], true);
    // Headers.
    let h = |n: &str| {
        s.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        h("x-livekit-inference-provider").as_deref(),
        Some("baseten")
    );
    assert_eq!(h("x-livekit-room-id").as_deref(), Some("RM_abc"));
    assert_eq!(h("x-livekit-job-id").as_deref(), Some("AJ_def"));
    assert_eq!(h("x-livekit-agent-id").as_deref(), Some("AW_ghi"));
    // Only the three ids travel; the room name and metadata stay home.
    let lk: Vec<&str> = s
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-livekit"))
        .collect();
    assert_eq!(lk.len(), 4, "{lk:?}");
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    // Body.
    let b = &s.body;
    assert_eq!(b["model"], "moonshotai/kimi-k2.6");
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"], json!({"include_usage": true}));
    // K2.6 on LiveKit (Baseten behind it): thinking is off unless asked for,
    // so 0.6 is the accepted temperature; the client adds the fixed top_p.
    assert_eq!(b["temperature"], 0.6);
    assert_eq!(b["top_p"], 0.95);
    assert!(
        b.get("chat_template_args").is_none(),
        "no switch unless set"
    );
    assert_eq!(b["max_completion_tokens"], 300);
    assert_eq!(b["tool_choice"], "auto");
    assert_eq!(b["parallel_tool_calls"], false);
    assert!(b.get("provider").is_none());
    assert_eq!(
        b["messages"][1],
        json!({"role": "user", "content": "hello"})
    );
    assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn each_request_gets_a_fresh_token_and_the_connection_is_reused() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    for _ in 0..3 {
        let items = collect(&llm, request()).await.unwrap();
        assert_eq!(text_of(&items), "Hello! How can I help?");
    }
    let seen = gw.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.claims.is_some()));
    assert_eq!(
        gw.connections(),
        1,
        "one pooled connection for three requests"
    );
}

#[tokio::test]
async fn one_byte_at_a_time_with_utf8_think_and_tool_calls() {
    let body = [
        content("<think>The user"),
        content(" wants weather.</th"),
        content("ink>\n\nLet me check — un instant, señor 🌦️."),
        event(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"id":"functions.get_weather:0","type":"function",
             "function":{"name":"get_weather","arguments":""}}]}}]})),
        event(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"function":{"arguments":"{\"city\": \"São"}}]}}]})),
        event(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":1,"id":"functions.get_time:1","type":"function",
             "function":{"name":"get_time","arguments":"{\"tz\":"}}]}}]})),
        event(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":0,"function":{"arguments":" Paulo\"}"}}]}}]})),
        event(json!({"choices":[{"index":0,"delta":{"tool_calls":[
            {"index":1,"function":{"arguments":"\"America/Sao_Paulo\"}"}}]}}]})),
        ": keep-alive\r\n\r\n".to_string(),
        finish("tool_calls"),
        usage(120, 42, 0),
        DONE.to_string(),
    ]
    .concat()
    .replace("\n\n", "\r\n\r\n");
    let steps: Vec<Step> = body
        .into_bytes()
        .into_iter()
        .flat_map(|b| {
            [
                Step::Bytes(vec![b]),
                Step::Sleep(Duration::from_micros(200)),
            ]
        })
        .collect();
    let gw = Gateway::start(lk_auth(), vec![Reply::Stream(steps)]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Let me check — un instant, señor 🌦️.");
    let calls: Vec<ToolCall> = items
        .iter()
        .filter_map(|c| match c {
            Ok(LlmChunk::ToolCall(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ToolCall {
                id: "functions.get_weather:0".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "São Paulo"}"#.into()
            },
            ToolCall {
                id: "functions.get_time:1".into(),
                name: "get_time".into(),
                arguments: r#"{"tz":"America/Sao_Paulo"}"#.into()
            },
        ]
    );
    assert!(
        items
            .iter()
            .any(|c| matches!(c, Ok(LlmChunk::Usage(u)) if u.completion_tokens == 42))
    );
    assert!(matches!(
        items.last(),
        Some(Ok(LlmChunk::Done { finish_reason: Some(r) })) if r == "tool_calls"
    ));
}

#[tokio::test]
async fn history_with_tool_calls_and_results_is_sent() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let mut req = request();
    req.messages.push(ChatMessage::assistant_tool_calls(
        "",
        vec![ToolCall {
            id: "functions.get_weather:0".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }],
    ));
    req.messages
        .push(ChatMessage::tool_result("functions.get_weather:0", "sunny"));
    collect(&llm, req).await.unwrap();
    let m = &gw.seen()[0].body["messages"];
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["tool_calls"][0]["id"], "functions.get_weather:0");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(
        m[3],
        json!({"role":"tool","tool_call_id":"functions.get_weather:0","content":"sunny"})
    );
}

#[tokio::test]
async fn wrong_secret_is_a_one_line_auth_error_without_secrets() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let env = |name: &str| match name {
        "LIVEKIT_API_KEY" => Some(KEY.to_string()),
        "LIVEKIT_API_SECRET" => Some("the-wrong-secret-value".to_string()),
        _ => None,
    };
    let llm = KimiLlm::new(&config(&gw), &env).unwrap();
    let err = collect(&llm, request()).await.expect_err("must fail");
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(!err.retryable);
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("401"), "{text}");
    assert!(
        !text.contains("the-wrong-secret-value") && !text.contains(KEY),
        "{text}"
    );
    // Not retried: an auth failure will not get better.
    assert_eq!(gw.seen().len(), 1);
    assert_eq!(gw.seen()[0].refused.as_deref(), Some("bad signature"));
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_honoured_then_succeeds() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Status {
            status: 429,
            headers: vec![
                ("retry-after".into(), "1".into()),
                ("x-livekit-inference-rpm-limit".into(), "60".into()),
            ],
            body: r#"{"error":{"message":"rate limit exceeded"}}"#.into(),
        }],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let start = Instant::now();
    let items = collect(&llm, request()).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(text_of(&items), "Hello! How can I help?");
    assert_eq!(gw.seen().len(), 2);
}

#[tokio::test]
async fn rate_limit_that_persists_carries_the_quota_headers() {
    let limited = || Reply::Status {
        status: 429,
        headers: vec![
            ("retry-after".into(), "0".into()),
            ("x-livekit-inference-rpm-limit".into(), "60".into()),
            ("x-livekit-inference-rpm-remaining".into(), "0".into()),
            ("x-livekit-inference-tpm-limit".into(), "100000".into()),
        ],
        body: r#"{"error":{"message":"rate limit exceeded"}}"#.into(),
    };
    let gw = Gateway::start(lk_auth(), vec![limited(), limited(), limited()]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let err = llm.stream(request()).await.err().expect("must fail");
    match &err {
        KimiError::RateLimit { quota, message, .. } => {
            assert_eq!(message, "rate limit exceeded");
            assert!(quota.contains(&("x-livekit-inference-rpm-remaining".into(), "0".into())));
            assert!(quota.contains(&("x-livekit-inference-tpm-limit".into(), "100000".into())));
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(gw.seen().len(), 3, "1 try + max_retries (2)");
    let stage: StageError = err.into();
    assert_eq!(stage.kind, ErrorKind::RateLimit);
    assert!(stage.message.contains("x-livekit-inference-rpm-limit=60"));
}

#[tokio::test]
async fn retry_after_longer_than_the_cap_is_not_waited_for() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Status {
            status: 429,
            headers: vec![("retry-after".into(), "30".into())],
            body: "{}".into(),
        }],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let start = Instant::now();
    let err = llm.stream(request()).await.err().expect("must fail");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Status {
            status: 500,
            headers: vec![],
            body: r#"{"error":{"message":"internal"}}"#.into(),
        }],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    assert_eq!(gw.seen().len(), 2);
}

#[tokio::test]
async fn bad_request_carries_the_server_message_and_is_not_retried() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Status {
            status: 400,
            headers: vec![],
            body: r#"{"error":{"message":"max_completion_tokens must be positive"}}"#.into(),
        }],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let err = collect(&llm, request()).await.expect_err("must fail");
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message
            .contains("max_completion_tokens must be positive"),
        "{err}"
    );
    assert_eq!(gw.seen().len(), 1);
}

#[tokio::test]
async fn a_stall_mid_stream_is_a_timeout_not_a_hang() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Stream(vec![
            Step::Bytes(content("Hello").into_bytes()),
            Step::Sleep(Duration::from_secs(30)),
            Step::Bytes(content(" never").into_bytes()),
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let start = Instant::now();
    let items = collect(&llm, request()).await.unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(text_of(&items), "Hello");
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    // Text was spoken: no retry.
    assert_eq!(gw.seen().len(), 1);
}

#[tokio::test]
async fn a_stall_before_the_first_byte_is_a_timeout() {
    // The server accepts but the reply never starts: a stream that stalls
    // before its first byte.
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Stream(vec![Step::Sleep(Duration::from_secs(30))])],
    )
    .await;
    let mut cfg = config(&gw);
    cfg.max_retries = 0;
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    let start = Instant::now();
    // The response head arrives (hyper flushes it), so the failure surfaces
    // from the stream, before any chunk.
    let items = collect(&llm, request()).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(items.len(), 1, "{items:?}");
    let err = items[0].as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(gw.seen().len(), 1, "idle timeouts are not retried");
}

#[tokio::test]
async fn a_cut_mid_stream_after_text_is_a_connection_error_and_not_retried() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Stream(vec![
            Step::Bytes(content("Hello").into_bytes()),
            Step::Sleep(Duration::from_millis(20)),
            Step::Bytes(b"data: {\"choices\":[{\"delta\":{\"cont".to_vec()),
            Step::Cut,
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello");
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert_eq!(gw.seen().len(), 1);
}

#[tokio::test]
async fn a_cut_before_the_first_token_is_retried_and_text_comes_once() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Stream(vec![
            Step::Bytes(b": warming up\n\n".to_vec()),
            Step::Cut,
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(gw.seen().len(), 2);
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error() {
    let gw = Gateway::start(
        lk_auth(),
        vec![stream_of(&[
            content("Hi"),
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}\n\n".to_string(),
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hi");
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn an_error_event_in_the_stream_is_reported() {
    let gw = Gateway::start(
        lk_auth(),
        vec![stream_of(&[
            content("Hi"),
            event(json!({"error": {"message": "upstream provider failed", "code": 502}})),
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert!(err.message.contains("upstream provider failed"), "{err}");
}

#[tokio::test]
async fn fallback_is_used_when_the_primary_fails_before_its_first_token() {
    // The retired K2 Instruct as primary, K2.6 as its fallback.
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Status {
            status: 503,
            headers: vec![],
            body: "overloaded".into(),
        }],
    )
    .await;
    let mut cfg = config(&gw);
    cfg.model = "moonshotai/kimi-k2-instruct".into();
    cfg.max_retries = 0;
    cfg.fallback = vec![FallbackConfig {
        backend: Backend::Livekit,
        model: "moonshotai/kimi-k2.6".into(),
        provider: None,
        base_url: Some(gw.base_url.clone()),
        api_key_env: None,
        extra_kwargs: None,
        thinking: None,
        thinking_format: None,
    }];
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    assert_eq!(
        llm.targets(),
        vec![
            "livekit/moonshotai/kimi-k2-instruct",
            "livekit/moonshotai/kimi-k2.6"
        ]
    );
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    let seen = gw.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body["model"], "moonshotai/kimi-k2-instruct");
    assert_eq!(seen[1].body["model"], "moonshotai/kimi-k2.6");
    assert!(
        seen[0].body.get("top_p").is_none(),
        "K2 Instruct's sampling is free"
    );
    assert_eq!(seen[1].body["top_p"], 0.95, "K2.6's is fixed");
    assert!(
        seen[1]
            .headers
            .get("x-livekit-inference-provider")
            .is_none()
    );
}

#[tokio::test]
async fn when_every_target_fails_the_primary_error_is_returned() {
    let gw = Gateway::start(
        lk_auth(),
        vec![
            Reply::Status {
                status: 404,
                headers: vec![],
                body: r#"{"error":{"message":"model not found"}}"#.into(),
            },
            Reply::Status {
                status: 500,
                headers: vec![],
                body: "{}".into(),
            },
        ],
    )
    .await;
    let mut cfg = config(&gw);
    cfg.max_retries = 0;
    cfg.fallback = vec![FallbackConfig {
        backend: Backend::Livekit,
        model: "moonshotai/kimi-k2.5".into(),
        provider: None,
        base_url: Some(gw.base_url.clone()),
        api_key_env: None,
        extra_kwargs: None,
        thinking: None,
        thinking_format: None,
    }];
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    let err = collect(&llm, request()).await.expect_err("must fail");
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(err.message.contains("model not found"));
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection_at_once() {
    let mut steps = vec![Step::Bytes(content("Hello").into_bytes())];
    for i in 0..500 {
        steps.push(Step::Sleep(Duration::from_millis(10)));
        steps.push(Step::Bytes(content(&format!(" word{i}")).into_bytes()));
    }
    let gw = Gateway::start(lk_auth(), vec![Reply::Stream(steps)]).await;
    let dropped = gw.on_body_dropped();
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let mut stream = llm.chat(request()).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, LlmChunk::Text("Hello".into()));
    drop(stream);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), dropped)
        .await
        .expect("the server kept streaming to a dropped request")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn baseten_direct_uses_its_bearer_key() {
    let gw = Gateway::start(Auth::Bearer(BASETEN_KEY.into()), vec![]).await;
    let cfg = KimiConfig {
        backend: Backend::Baseten,
        model: "moonshotai/Kimi-K2-Instruct".into(),
        provider: None,
        ..config(&gw)
    };
    let env = |n: &str| (n == "BASETEN_API_KEY").then(|| BASETEN_KEY.to_string());
    let llm = KimiLlm::new(&cfg, &env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    let s = &gw.seen()[0];
    assert_eq!(s.body["model"], "moonshotai/Kimi-K2-Instruct");
    assert!(s.headers.get("x-livekit-inference-provider").is_none());
}

#[tokio::test]
async fn openai_compatible_without_a_key_sends_no_authorization() {
    let gw = Gateway::start(Auth::None, vec![]).await;
    let cfg = KimiConfig {
        backend: Backend::OpenaiCompatible,
        model: "kimi-k2".into(),
        provider: None,
        ..config(&gw)
    };
    let llm = KimiLlm::new(&cfg, &|_| None).unwrap();
    collect(&llm, request()).await.unwrap();
    assert!(gw.seen()[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error_after_retries() {
    // Bind then drop to get a port with nothing behind it.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = KimiConfig {
        base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        retry_base_delay_ms: 5,
        ..KimiConfig::default()
    };
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), llm.stream(request()))
        .await
        .unwrap()
        .err()
        .expect("must fail");
    assert!(matches!(err, KimiError::Connect { .. }), "{err}");
    assert!(
        !err.to_string().contains("http://"),
        "no URL in errors: {err}"
    );
}

#[tokio::test]
async fn livekit_inference_url_is_used_when_no_base_url_is_set() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let url = gw.base_url.clone();
    let env = move |name: &str| match name {
        "LIVEKIT_INFERENCE_URL" => Some(url.clone()),
        "LIVEKIT_INFERENCE_API_KEY" => Some(KEY.into()),
        "LIVEKIT_INFERENCE_API_SECRET" => Some(SECRET.into()),
        _ => None,
    };
    let cfg = KimiConfig {
        idle_timeout_ms: 2_000,
        ..KimiConfig::default()
    };
    let llm = KimiLlm::new(&cfg, &env).unwrap();
    let items = collect(&llm, request()).await.unwrap();
    assert_eq!(text_of(&items), "Hello! How can I help?");
    assert_eq!(gw.seen().len(), 1);
}

#[test]
fn the_llm_section_parses_from_toml() {
    #[derive(serde::Deserialize)]
    struct File {
        llm: KimiConfig,
    }
    let text = r#"
        [llm]
        backend = "livekit"
        model = "moonshotai/kimi-k2-instruct"
        provider = "baseten"
        idle_timeout_ms = 8000
        extra_kwargs = { temperature = 0.6, max_completion_tokens = 512, parallel_tool_calls = false }

        [[llm.fallback]]
        model = "moonshotai/kimi-k2.6"

        [[llm.fallback]]
        backend = "openai-compatible"
        model = "kimi-k2"
        base_url = "http://127.0.0.1:8080/v1"
        api_key_env = "LOCAL_LLM_KEY"
    "#;
    let file: File = toml::from_str(text).unwrap();
    let c = file.llm;
    assert_eq!(c.provider.as_deref(), Some("baseten"));
    assert_eq!(c.idle_timeout_ms, 8000);
    assert_eq!(
        c.connect_timeout_ms,
        KimiConfig::default().connect_timeout_ms
    );
    assert_eq!(
        serde_json::Value::Object(c.extra_kwargs.clone()),
        json!({"temperature": 0.6, "max_completion_tokens": 512, "parallel_tool_calls": false})
    );
    assert_eq!(c.fallback.len(), 2);
    assert_eq!(c.fallback[1].backend, Backend::OpenaiCompatible);
    assert_eq!(c.fallback[1].api_key_env.as_deref(), Some("LOCAL_LLM_KEY"));

    let bad = toml::from_str::<File>("[llm]\nmodel = \"m\"\ntemprature = 1\n");
    assert!(bad.is_err(), "unknown keys are refused");

    // The fallback's key variable is resolved at construction: a clear error.
    let err = KimiLlm::new(&c, &livekit_env).unwrap_err();
    assert!(err.to_string().contains("LOCAL_LLM_KEY"), "{err}");
}

#[tokio::test]
async fn a_connect_that_never_completes_is_a_connect_timeout() {
    // A listener that never accepts, with its backlog filled: further SYNs
    // are dropped, so a connect hangs until our timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let cfg = KimiConfig {
        base_url: Some(format!("http://{addr}/v1")),
        connect_timeout_ms: 150,
        idle_timeout_ms: 5_000,
        max_retries: 1,
        retry_base_delay_ms: 5,
        ..KimiConfig::default()
    };
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    let start = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), llm.stream(request()))
        .await
        .expect("hung")
        .err()
        .expect("must fail");
    assert!(matches!(err, KimiError::ConnectTimeout(..)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let stage: StageError = err.into();
    assert_eq!(stage.kind, ErrorKind::Timeout);
    drop(listener);
}
