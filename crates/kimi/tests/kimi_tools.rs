//! Kimi's tool calling, exactly: `KimiLlm` against a stand-in that streams
//! tool calls and thinking the way Kimi does and refuses what Moonshot
//! refuses — a tool call without its result, a thinking model's tool-call
//! turn without its `reasoning_content`, sampling K2.5/K2.6 do not accept —
//! with HTTP 400 and an OpenAI-style error body.

mod common;

use std::time::Duration;

use agent::{
    ChatMessage, ErrorKind, JobContext, LlmChunk, LlmOptions, LlmRequest, StageError, ToolCall,
    ToolChoice, ToolSpec, Usage,
};
use common::collect;
use e2e_tests::inference::chat::*;
use kimi::{Backend, KimiConfig, KimiError, KimiLlm, ThinkingFormat};
use serde_json::{Value, json};

/// The shipped config (K2.6 on LiveKit) pointed at `gw`.
fn config(gw: &Gateway) -> KimiConfig {
    KimiConfig {
        base_url: Some(gw.base_url.clone()),
        idle_timeout_ms: 2_000,
        retry_base_delay_ms: 5,
        ..KimiConfig::default()
    }
}

/// K2.6 on a Moonshot-like server (`openai-compatible`, Moonshot's switch).
fn moonshot_config(gw: &Gateway, thinking: Option<bool>) -> KimiConfig {
    KimiConfig {
        backend: Backend::OpenaiCompatible,
        model: "kimi-k2.6".into(),
        provider: None,
        thinking,
        thinking_format: Some(ThinkingFormat::Moonshot),
        ..config(gw)
    }
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Current weather for a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}),
    }
}

fn request(messages: Vec<ChatMessage>) -> LlmRequest {
    LlmRequest {
        messages,
        tools: vec![weather_tool()],
        job: JobContext::default(),
        options: LlmOptions::default(),
    }
}

fn first_turn() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a helpful voice assistant."),
        ChatMessage::user("Weather in Paris and Rome?"),
    ]
}

/// What a reply decoded to.
#[derive(Debug, Default)]
struct Decoded {
    text: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    usages: Vec<Usage>,
    finish_reason: Option<String>,
}

fn decoded(items: &[Result<LlmChunk, StageError>]) -> Decoded {
    let mut d = Decoded::default();
    for item in items {
        match item {
            Ok(LlmChunk::Text(t)) => d.text.push_str(t),
            Ok(LlmChunk::Reasoning(r)) => d.reasoning.push_str(r),
            Ok(LlmChunk::ToolCall(c)) => d.calls.push(c.clone()),
            Ok(LlmChunk::Usage(u)) => d.usages.push(*u),
            Ok(LlmChunk::Done { finish_reason }) => d.finish_reason = finish_reason.clone(),
            Err(e) => panic!("stream error: {e}"),
        }
    }
    d
}

/// The two-city thinking turn as Kimi streams it, with arguments in 3-byte
/// fragments interleaved by index.
fn two_city_turn() -> Reply {
    stream_of(&kimi_tool_turn(
        &[
            "The user wants ",
            "two cities; ",
            "I will call get_weather twice.",
        ],
        "Let me check.",
        &[
            ("get_weather", json!({"city": "Paris"})),
            ("get_weather", json!({"city": "Rome"})),
        ],
        3,
    ))
}

fn expected_calls() -> Vec<ToolCall> {
    vec![
        ToolCall {
            id: "functions.get_weather:0".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        },
        ToolCall {
            id: "functions.get_weather:1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Rome"}"#.into(),
        },
    ]
}

/// The follow-up request built from a decoded turn, as the session builds it.
fn follow_up(d: &Decoded, with_reasoning: bool, results: &[(&str, &str)]) -> LlmRequest {
    let mut messages = first_turn();
    let mut call_msg = ChatMessage::assistant_tool_calls(d.text.clone(), d.calls.clone());
    if with_reasoning {
        call_msg.reasoning = Some(d.reasoning.clone());
    }
    messages.push(call_msg);
    for (id, content) in results {
        messages.push(ChatMessage::tool_result(*id, *content));
    }
    request(messages)
}

#[tokio::test]
async fn parallel_tool_calls_and_reasoning_decode_exactly_as_kimi_streams_them() {
    let gw = Gateway::start(lk_auth(), vec![two_city_turn()]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request(first_turn())).await.unwrap();
    let d = decoded(&items);
    assert_eq!(
        d.reasoning,
        "The user wants two cities; I will call get_weather twice."
    );
    assert_eq!(d.text, "Let me check.", "reasoning never reaches the text");
    assert_eq!(
        d.calls,
        expected_calls(),
        "ids verbatim, fragments by index"
    );
    assert_eq!(
        d.usages,
        vec![Usage {
            prompt_tokens: 180,
            completion_tokens: 60,
            cached_tokens: 0
        }],
        "usage inside choices[0], counted once"
    );
    assert_eq!(d.finish_reason.as_deref(), Some("tool_calls"));
    // Reasoning came before anything else, and Done is last.
    assert!(matches!(items.first(), Some(Ok(LlmChunk::Reasoning(_)))));
    assert!(matches!(items.last(), Some(Ok(LlmChunk::Done { .. }))));
}

#[tokio::test]
async fn a_cut_after_reasoning_is_not_retried_so_nothing_comes_twice() {
    let gw = Gateway::start(
        lk_auth(),
        vec![Reply::Stream(vec![
            Step::Bytes(reasoning("Thinking about it").into_bytes()),
            Step::Sleep(Duration::from_millis(20)),
            Step::Cut,
        ])],
    )
    .await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let items = collect(&llm, request(first_turn())).await.unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(&items[0], Ok(LlmChunk::Reasoning(r)) if r == "Thinking about it"));
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert_eq!(
        gw.seen().len(),
        1,
        "not retried after reasoning was delivered"
    );
}

#[tokio::test]
async fn thinking_round_trip_is_accepted_by_a_moonshot_like_server() {
    let gw = Gateway::start_as(Flavour::Moonshot, Auth::None, vec![two_city_turn()]).await;
    let llm = KimiLlm::new(&moonshot_config(&gw, None), &|_| None).unwrap();
    assert_eq!(
        llm.thinking(),
        vec![Some(true)],
        "Moonshot thinks by default"
    );

    let d = decoded(&collect(&llm, request(first_turn())).await.unwrap());
    assert_eq!(d.calls, expected_calls());
    let results = [
        ("functions.get_weather:0", "sunny, 21°C"),
        ("functions.get_weather:1", "rain, 14°C"),
    ];
    let items = collect(&llm, follow_up(&d, true, &results)).await.unwrap();
    // The scripted turn is used up: the server answers with its default text.
    assert_eq!(decoded(&items).text, "Hello! How can I help?");

    let seen = gw.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.refused.is_none()), "{seen:?}");
    let first = &seen[0].body;
    assert_eq!(first["temperature"], 1.0, "the thinking temperature");
    assert_eq!(first["top_p"], 0.95);
    assert!(first.get("thinking").is_none(), "unset: no switch");
    let m = &seen[1].body["messages"];
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["content"], "Let me check.");
    assert_eq!(
        m[2]["reasoning_content"],
        "The user wants two cities; I will call get_weather twice."
    );
    assert_eq!(m[2]["tool_calls"][0]["id"], "functions.get_weather:0");
    assert_eq!(m[2]["tool_calls"][1]["id"], "functions.get_weather:1");
    assert_eq!(
        m[2]["tool_calls"][1]["function"]["arguments"],
        r#"{"city":"Rome"}"#
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny, 21°C"})
    );
    assert_eq!(m[4]["tool_call_id"], "functions.get_weather:1");
    assert!(m[0].get("reasoning_content").is_none());
}

#[tokio::test]
async fn a_thinking_tool_call_turn_without_its_reasoning_is_refused() {
    let gw = Gateway::start_as(Flavour::Moonshot, Auth::None, vec![two_city_turn()]).await;
    let llm = KimiLlm::new(&moonshot_config(&gw, Some(true)), &|_| None).unwrap();
    let d = decoded(&collect(&llm, request(first_turn())).await.unwrap());
    let results = [
        ("functions.get_weather:0", "sunny"),
        ("functions.get_weather:1", "rain"),
    ];
    let err = collect(&llm, follow_up(&d, false, &results))
        .await
        .expect_err("Moonshot refuses it");
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err}");
    assert!(
        err.message
            .contains("reasoning_content is missing in assistant tool call message at index 2"),
        "{err}"
    );
    let seen = gw.seen();
    assert_eq!(seen.len(), 2, "a 400 is not retried");
    assert_eq!(seen[0].body["thinking"], json!({"type": "enabled"}));
}

#[tokio::test]
async fn tool_results_must_answer_every_call_with_its_verbatim_id() {
    let gw = Gateway::start_as(Flavour::Moonshot, Auth::None, vec![two_city_turn()]).await;
    let llm = KimiLlm::new(&moonshot_config(&gw, None), &|_| None).unwrap();
    let d = decoded(&collect(&llm, request(first_turn())).await.unwrap());

    // One result missing.
    let err = collect(
        &llm,
        follow_up(&d, true, &[("functions.get_weather:0", "sunny")]),
    )
    .await
    .expect_err("a call without its result");
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(err.message.contains("functions.get_weather:1"), "{err}");

    // An id rewritten (as a client that normalises ids would).
    let err = collect(
        &llm,
        follow_up(
            &d,
            true,
            &[("call_0", "sunny"), ("functions.get_weather:1", "rain")],
        ),
    )
    .await
    .expect_err("a result for no call");
    assert!(err.message.contains("\"call_0\""), "{err}");

    // A tool result with no call before it.
    let mut messages = first_turn();
    messages.push(ChatMessage::tool_result("functions.get_weather:0", "sunny"));
    let err = collect(&llm, request(messages))
        .await
        .expect_err("an orphan result");
    assert!(err.message.contains("role 'tool'"), "{err}");

    // And the verbatim ids pass.
    let results = [
        ("functions.get_weather:0", "sunny"),
        ("functions.get_weather:1", "rain"),
    ];
    collect(&llm, follow_up(&d, true, &results)).await.unwrap();
    let refused: Vec<bool> = gw.seen().iter().map(|s| s.refused.is_some()).collect();
    assert_eq!(refused, vec![false, true, true, true, false]);
}

#[tokio::test]
async fn thinking_off_needs_no_reasoning_and_gets_the_instant_sampling() {
    let gw = Gateway::start_as(
        Flavour::Moonshot,
        Auth::None,
        vec![stream_of(&kimi_tool_turn(
            &[],
            "",
            &[("get_weather", json!({"city": "Oslo"}))],
            4,
        ))],
    )
    .await;
    let llm = KimiLlm::new(&moonshot_config(&gw, Some(false)), &|_| None).unwrap();
    let d = decoded(&collect(&llm, request(first_turn())).await.unwrap());
    assert_eq!(d.reasoning, "");
    assert_eq!(d.calls[0].id, "functions.get_weather:0");
    collect(
        &llm,
        follow_up(&d, false, &[("functions.get_weather:0", "snow")]),
    )
    .await
    .unwrap();
    let seen = gw.seen();
    assert!(seen.iter().all(|s| s.refused.is_none()), "{seen:?}");
    for s in &seen {
        assert_eq!(s.body["thinking"], json!({"type": "disabled"}));
        assert_eq!(s.body["temperature"], 0.6);
        assert_eq!(s.body["top_p"], 0.95);
    }
    assert_eq!(
        seen[1].body["messages"][2]["content"],
        Value::Null,
        "no text beside the calls: null"
    );
}

#[tokio::test]
async fn the_thinking_switch_reaches_each_server_in_its_own_form() {
    struct Case {
        backend: Backend,
        thinking: Option<bool>,
        format: Option<ThinkingFormat>,
        want: Value,
        temperature: f64,
    }
    let cases = [
        // LiveKit (Baseten behind it): opt-in, so unset means instant.
        Case {
            backend: Backend::Livekit,
            thinking: None,
            format: None,
            want: json!({}),
            temperature: 0.6,
        },
        Case {
            backend: Backend::Livekit,
            thinking: Some(true),
            format: None,
            want: json!({"chat_template_args": {"enable_thinking": true}}),
            temperature: 1.0,
        },
        Case {
            backend: Backend::Baseten,
            thinking: Some(false),
            format: None,
            want: json!({"chat_template_args": {"enable_thinking": false}}),
            temperature: 0.6,
        },
        // A vLLM/SGLang deployment on our own address.
        Case {
            backend: Backend::OpenaiCompatible,
            thinking: Some(false),
            format: None,
            want: json!({"chat_template_kwargs": {"thinking": false}}),
            temperature: 0.6,
        },
        Case {
            backend: Backend::OpenaiCompatible,
            thinking: None,
            format: None,
            want: json!({}),
            temperature: 1.0,
        },
        Case {
            backend: Backend::Livekit,
            thinking: Some(false),
            format: Some(ThinkingFormat::Moonshot),
            want: json!({"thinking": {"type": "disabled"}}),
            temperature: 0.6,
        },
    ];
    for case in cases {
        let (flavour, auth) = match case.backend {
            Backend::Livekit => (Flavour::Livekit, lk_auth()),
            Backend::Baseten => (Flavour::Livekit, Auth::Bearer(BASETEN_KEY.into())),
            Backend::OpenaiCompatible => (Flavour::Vllm, Auth::None),
        };
        let gw = Gateway::start_as(flavour, auth, vec![]).await;
        let cfg = KimiConfig {
            backend: case.backend,
            model: "moonshotai/Kimi-K2.6".into(),
            thinking: case.thinking,
            thinking_format: case.format,
            ..config(&gw)
        };
        let env = |n: &str| match n {
            "BASETEN_API_KEY" => Some(BASETEN_KEY.to_string()),
            other => livekit_env(other),
        };
        let llm = KimiLlm::new(&cfg, &env).unwrap();
        collect(&llm, request(vec![ChatMessage::user("hi")]))
            .await
            .unwrap();
        let body = &gw.seen()[0].body;
        let label = format!("{:?}/{:?}/{:?}", case.backend, case.thinking, case.format);
        for key in ["thinking", "chat_template_kwargs", "chat_template_args"] {
            assert_eq!(body.get(key), case.want.get(key), "{label}: {key}");
        }
        assert_eq!(body["temperature"], case.temperature, "{label}");
        assert_eq!(body["top_p"], 0.95, "{label}");
    }
}

#[tokio::test]
async fn guessing_the_mode_wrong_gets_moonshots_400() {
    // The LiveKit default (Baseten's instant mode, 0.6) sent to Moonshot,
    // which thinks by default: refused, as the real API refuses it.
    let gw = Gateway::start_as(Flavour::Moonshot, lk_auth(), vec![]).await;
    let llm = KimiLlm::new(&config(&gw), &livekit_env).unwrap();
    let err = collect(&llm, request(first_turn()))
        .await
        .expect_err("wrong temperature");
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message
            .contains("invalid temperature: only 1 is allowed for this model"),
        "{err}"
    );
    assert_eq!(gw.seen().len(), 1, "not retried");
    // Saying which server it is fixes it.
    let cfg = KimiConfig {
        thinking_format: Some(ThinkingFormat::Moonshot),
        ..config(&gw)
    };
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();
    collect(&llm, request(first_turn())).await.unwrap();
}

#[test]
fn the_stand_in_refuses_sampling_k2_6_does_not_accept() {
    let body = |extra: Value| {
        let mut b = json!({
            "model": "moonshotai/Kimi-K2.6", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
        });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    let moonshot = |extra| check_body(&body(extra), Flavour::Moonshot);
    assert_eq!(
        moonshot(json!({"top_p": 0.9})),
        Err("invalid top_p: only 0.95 is allowed for this model".into())
    );
    assert_eq!(
        moonshot(json!({"temperature": 0.6})),
        Err("invalid temperature: only 1 is allowed for this model".into())
    );
    assert_eq!(
        moonshot(json!({"temperature": 1.0, "thinking": {"type": "disabled"}})),
        Err("invalid temperature: only 0.6 is allowed for this model".into())
    );
    assert!(moonshot(json!({"temperature": 1, "top_p": 0.95})).is_ok());
    assert!(check_body(&body(json!({"temperature": 0.6})), Flavour::Livekit).is_ok());
    // Other models are free.
    let mut other = body(json!({"temperature": 0.2}));
    other["model"] = json!("moonshotai/kimi-k2-instruct");
    assert!(check_body(&other, Flavour::Moonshot).is_ok());
}

#[tokio::test]
async fn the_agents_options_go_on_the_wire_as_openai_spells_them() {
    let gw = Gateway::start(lk_auth(), vec![]).await;
    let mut cfg = config(&gw);
    cfg.extra_kwargs = json!({"max_completion_tokens": 300, "tool_choice": "auto"})
        .as_object()
        .cloned()
        .unwrap();
    let llm = KimiLlm::new(&cfg, &livekit_env).unwrap();

    let mut req = request(first_turn());
    req.options = LlmOptions::new()
        .with_tool_choice(ToolChoice::Function("get_weather".into()))
        .with_parallel_tool_calls(false)
        .with_extra("max_completion_tokens", json!(64))
        .with_extra("stop", json!(["\n\n"]))
        .with_extra("model", json!("someone/else"))
        .with_extra("temperature", json!(0.9));
    collect(&llm, req).await.unwrap();

    // No tools: neither tool key goes out, though config and options set them.
    let mut req = request(first_turn());
    req.tools.clear();
    req.options = LlmOptions::new()
        .with_tool_choice(ToolChoice::Required)
        .with_parallel_tool_calls(true);
    collect(&llm, req).await.unwrap();

    let seen = gw.seen();
    assert!(seen.iter().all(|s| s.refused.is_none()), "{seen:?}");
    let b = &seen[0].body;
    assert_eq!(
        b["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(b["parallel_tool_calls"], false);
    assert_eq!(
        b["max_completion_tokens"], 64,
        "options.extra over extra_kwargs"
    );
    assert_eq!(b["stop"], json!(["\n\n"]));
    assert_eq!(
        b["model"], "moonshotai/kimi-k2.6",
        "reserved keys stay the client's"
    );
    assert_eq!(b["temperature"], 0.6, "K2.6's fixed sampling stays");
    let b = &seen[1].body;
    assert!(b.get("tools").is_none());
    assert!(b.get("tool_choice").is_none() && b.get("parallel_tool_calls").is_none());
    assert_eq!(b["max_completion_tokens"], 300);
}

#[test]
fn sampling_k2_6_rejects_fails_at_construction_from_toml() {
    #[derive(serde::Deserialize)]
    struct File {
        llm: KimiConfig,
    }
    let env = |n: &str| (n == "BASETEN_API_KEY").then(|| BASETEN_KEY.to_string());
    let parse = |text: &str| toml::from_str::<File>(text).unwrap().llm;

    let c = parse(
        "[llm]\nbackend = \"baseten\"\nmodel = \"moonshotai/Kimi-K2.6\"\n\
         [llm.extra_kwargs]\ntemperature = 0.7\n",
    );
    let e = KimiLlm::new(&c, &env).unwrap_err();
    assert!(matches!(e, KimiError::Config(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("temperature = 0.7") && m.contains("only temperature = 0.6"),
        "{m}"
    );

    let c = parse(
        "[llm]\nbackend = \"baseten\"\nmodel = \"moonshotai/Kimi-K2.6\"\nthinking = true\n\
         [llm.extra_kwargs]\ntop_p = 1\n",
    );
    let m = KimiLlm::new(&c, &env).unwrap_err().to_string();
    assert!(
        m.contains("top_p = 1") && m.contains("only top_p = 0.95"),
        "{m}"
    );

    let c = parse(
        "[llm]\nbackend = \"baseten\"\nmodel = \"moonshotai/Kimi-K2.6\"\nthinking = true\n\
         [llm.extra_kwargs]\ntemperature = 1\ntop_p = 0.95\n",
    );
    assert!(KimiLlm::new(&c, &env).is_ok(), "the accepted values pass");
}

#[test]
fn the_shipped_llm_section_is_k2_6_and_sends_only_what_it_accepts() {
    let text = include_str!("../../../agent-config/agent.toml");
    let file: toml::Table = toml::from_str(text).unwrap();
    let llm: KimiConfig = file["llm"].clone().try_into().unwrap();
    assert_eq!(llm.model, "moonshotai/kimi-k2.6");
    assert_eq!(llm.provider.as_deref(), Some("baseten"));
    assert_eq!(llm.backend, Backend::Livekit);
    assert!(
        !llm.extra_kwargs.contains_key("temperature") && !llm.extra_kwargs.contains_key("top_p"),
        "the client picks K2.6's sampling"
    );
    assert!(llm.extra_kwargs.contains_key("max_completion_tokens"));
    let client = KimiLlm::new(&llm, &livekit_env).unwrap();
    assert_eq!(client.targets(), vec!["livekit/moonshotai/kimi-k2.6"]);
}
