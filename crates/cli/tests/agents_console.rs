//! Agents as a user runs them in `console --text`: the examples (a tools
//! agent with user data, a handoff) and the stock binary with MCP servers
//! from `agent.toml` alone — the real `@modelcontextprotocol/server-everything`
//! over stdio and Streamable HTTP, also missing at start and killed mid-session.
//! The LLM is a stand-in that streams tool calls the way Kimi does and refuses
//! (400) a request whose tool history Moonshot would refuse.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::{
    LlmAnswer, LlmStandIn, example_bin, free_port, mcp_everything, tool_names, tool_results,
};
use serde_json::{Value, json};

/// The last message of a request, and its role.
fn last_message(request: &Value) -> (String, String) {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    (
        last["role"].as_str().unwrap_or_default().to_string(),
        last["content"].as_str().unwrap_or_default().to_string(),
    )
}

/// Runs `program --config CONFIG console --text` with `stdin`, to its end.
fn console(program: &Path, config: &str, dir: &Path, stdin: &str) -> std::process::Output {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(program)
        .arg("--config")
        .arg(&path)
        .args(["console", "--text"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("wait")
}

fn llm_config(url: &str) -> String {
    format!(
        "[llm]\nbackend = \"openai-compatible\"\nmodel = \"kimi-test\"\nbase_url = \"{url}\"\nmax_retries = 0\n"
    )
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restaurant_example_answers_through_its_tools_with_its_greeting_first() {
    let llm = LlmStandIn::start(|body| match last_message(body) {
        (role, content) if role == "tool" => {
            LlmAnswer::Reply(format!("The table for four at seven thirty is {content}."))
        }
        _ => LlmAnswer::tool_calls(
            "",
            &[(
                "check_availability",
                json!({"party_size": 4, "time": "19:30"}),
            )],
        ),
    })
    .await
    .expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let program = example_bin("restaurant").expect("example built");
    let config = llm_config(&llm.url);
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            console(
                &program,
                &config,
                &dir,
                "Is there a table for four at half past seven?\n",
            )
        }
    })
    .await
    .expect("join");
    let stdout = stdout_of(&out);
    assert_eq!(
        stdout,
        "Luigi's, good evening! How can I help?\nThe table for four at seven thirty is free.\n"
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        tool_names(&requests[0]),
        ["book_table", "check_availability", "current_booking"]
    );
    // The example's own function answered, under Kimi's verbatim call id.
    assert_eq!(
        tool_results(&requests[1]),
        vec![(
            "functions.check_availability:0".to_string(),
            "free".to_string()
        )]
    );
    let history = requests[1]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        history[1]["content"],
        "Luigi's, good evening! How can I help?"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handoff_example_hands_wine_questions_to_the_sommelier() {
    let llm = LlmStandIn::start(|body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        if system.starts_with("You are the sommelier") {
            LlmAnswer::Reply("Good evening, I am the sommelier: a Chablis goes with fish.".into())
        } else {
            LlmAnswer::tool_calls("", &[("ask_sommelier", json!({}))])
        }
    })
    .await
    .expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let program = example_bin("handoff").expect("example built");
    let config = llm_config(&llm.url);
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || console(&program, &config, &dir, "Which wine goes with fish?\n")
    })
    .await
    .expect("join");
    assert_eq!(
        stdout_of(&out),
        "Welcome to Luigi's!\nGood evening, I am the sommelier: a Chablis goes with fish.\n",
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(tool_names(&requests[0]), ["ask_sommelier"]);
    assert_eq!(tool_names(&requests[1]), ["back_to_host", "wine_list"]);
    let system = requests[1]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        system.contains("Introduce yourself as the sommelier"),
        "on_enter's instructions apply to its reply: {system}"
    );
    // The history carried over: the greeting, the question, the handoff.
    assert_eq!(
        tool_results(&requests[1]),
        vec![(
            "functions.ask_sommelier:0".to_string(),
            "Transferred to sommelier.".to_string()
        )]
    );
    let roles: Vec<&str> = requests[1]["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["role"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(roles, ["system", "assistant", "user", "assistant", "tool"]);
}

/// Sums the stand-in asks for, and the answer it gives: the tool's result
/// read back, so the printed answer shows what the MCP server computed.
fn summing_llm() -> impl Fn(&Value) -> LlmAnswer + Send + Sync + 'static {
    |body| match last_message(body) {
        (role, content) if role == "tool" => LlmAnswer::Reply(format!("Result: {content}")),
        _ if tool_names(body).iter().any(|t| t == "get-sum") => {
            LlmAnswer::tool_calls("", &[("get-sum", json!({"a": 2, "b": 3}))])
        }
        _ => LlmAnswer::Reply("I have no tools right now.".into()),
    }
}

fn node() -> String {
    "node".to_string()
}

fn stdio_server(index_js: &Path) -> String {
    format!(
        "[[mcp]]\nname = \"everything\"\ncommand = \"{}\"\nargs = [{:?}, \"stdio\"]\nallowed_tools = [\"get-sum\", \"echo\"]\ntimeout = 10.0\n",
        node(),
        index_js.display().to_string()
    )
}

/// `server-everything` over Streamable HTTP on `port`, killed when dropped.
struct HttpServer(Child);

impl HttpServer {
    fn start(index_js: &Path, port: u16) -> Self {
        let child = Command::new(node())
            .arg(index_js)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        Self(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server-everything never listened on {port}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stock_agent_uses_an_mcp_servers_tools_from_the_config_alone_over_stdio() {
    let index = mcp_everything().expect("tests/setup.sh installs server-everything");
    let llm = LlmStandIn::start(summing_llm()).await.expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!("{}{}", llm_config(&llm.url), stdio_server(&index));
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            console(
                Path::new(env!("CARGO_BIN_EXE_voice-agent")),
                &config,
                &dir,
                "What is two plus three?\n",
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(stdout_of(&out), "Result: The sum of 2 and 3 is 5.\n");
    let requests = llm.requests();
    assert_eq!(
        tool_names(&requests[0]),
        ["echo", "get-sum"],
        "allowed_tools"
    );
    assert_eq!(
        tool_results(&requests[1]),
        vec![(
            "functions.get-sum:0".to_string(),
            "The sum of 2 and 3 is 5.".to_string()
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_streamable_http_a_server_missing_at_start_joins_later_and_a_killed_one_is_an_error_to_the_model()
 {
    let index = mcp_everything().expect("tests/setup.sh installs server-everything");
    let port = free_port(false).expect("port");
    // Nothing listens yet: the agent starts without the tools. Once `kill`
    // is set, the stand-in kills the server as the next turn begins.
    let server: Arc<Mutex<Option<HttpServer>>> = Arc::default();
    let kill = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let llm = {
        let (server, kill) = (server.clone(), kill.clone());
        let answer = summing_llm();
        LlmStandIn::start(move |body| {
            if last_message(body).0 == "user"
                && kill.load(std::sync::atomic::Ordering::SeqCst)
                && let Ok(mut s) = server.lock()
            {
                *s = None;
            }
            answer(body)
        })
        .await
        .expect("stand-in")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{}[[mcp]]\nname = \"everything\"\nurl = \"http://127.0.0.1:{port}/mcp\"\nallowed_tools = [\"get-sum\"]\n",
        llm_config(&llm.url)
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_voice-agent"))
        .arg("--config")
        .arg(&path)
        .args(["console", "--text"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut input = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ask = async |q: &str| -> String {
        input
            .write_all(format!("{q}\n").as_bytes())
            .await
            .expect("write");
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("an answer within a minute")
            .expect("read")
            .expect("a line")
    };
    assert_eq!(
        ask("What is two plus three?").await,
        "I have no tools right now."
    );
    if let Ok(mut s) = server.lock() {
        *s = Some(HttpServer::start(&index, port));
    }
    wait_listening(port).await;
    // The agent reconnects with backoff (0.5 s, 1 s, 2 s, …): ask until the
    // tools are back.
    let mut answer = String::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        answer = ask("What is two plus three?").await;
        if answer != "I have no tools right now." {
            break;
        }
    }
    assert_eq!(answer, "Result: The sum of 2 and 3 is 5.");
    // Killed as this turn begins: the call's result is an error the model
    // reads, and the agent goes on.
    kill.store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = ask("And two plus three again?").await;
    assert!(
        answer.starts_with("Result: ") && answer.contains("everything"),
        "the model read the failure: {answer}"
    );
    drop(input);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits at the end of input")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("not up yet"),
        "the log says the server was down at start:\n{stderr}"
    );
    let last = llm.requests().last().cloned().unwrap_or_default();
    assert!(e2e_tests::check_tool_history(&last).is_ok());
}
