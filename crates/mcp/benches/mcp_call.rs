//! The cost of a tool call through MCP over stdio, against the real
//! `@modelcontextprotocol/server-everything` (installed by `tests/setup.sh`),
//! next to the same tool as an in-process `agent::tool`: p50 and p99 of
//! `get-sum` calls made one after another through the agent's `Tool` trait.
//! Figures are printed, never asserted.
//!
//! `cargo bench -p mcp --bench mcp_call` (`MCP_BENCH_CALLS` sets the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{JobContext, Tool, ToolContext, ToolError, ToolProvider, Userdata};
use e2e_tests::mcp_everything;
use mcp::{McpServer, McpServerConfig};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

const WARMUP: usize = 200;

#[derive(Deserialize, JsonSchema)]
struct Sum {
    a: f64,
    b: f64,
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mcp_call: no runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("mcp_call: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let calls: usize = std::env::var("MCP_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
        .max(1);
    let index = everything()?;
    let server = McpServer::start(
        &McpServerConfig::stdio("everything", "node").args([index.as_str(), "stdio"]),
    )
    .map_err(|e| e.to_string())?;
    server
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let over_mcp = server
        .tools()
        .into_iter()
        .find(|t| t.spec().name == "get-sum")
        .ok_or("server-everything offers no get-sum")?;
    let in_process: Arc<dyn Tool> = Arc::new(agent::tool(
        "get_sum",
        "Returns the sum of two numbers",
        |_ctx: ToolContext, s: Sum| async move {
            Ok::<_, ToolError>(format!("The sum of {} and {} is {}.", s.a, s.b, s.a + s.b))
        },
    ));

    let mcp = measure(&over_mcp, calls).await?;
    let direct = measure(&in_process, calls).await?;
    println!("mcp_call: {calls} sequential get-sum calls through agent::Tool::call");
    report("MCP over stdio (server-everything)", &mcp);
    report("in-process agent::tool", &direct);
    println!(
        "mcp_call: MCP stdio overhead: p50 {:.0} µs, p99 {:.0} µs",
        micros(percentile(&mcp, 0.50)) - micros(percentile(&direct, 0.50)),
        micros(percentile(&mcp, 0.99)) - micros(percentile(&direct, 0.99)),
    );
    server.shutdown().await;
    Ok(())
}

/// Per-call times of `calls` calls after a warm-up, sorted.
async fn measure(tool: &Arc<dyn Tool>, calls: usize) -> Result<Vec<Duration>, String> {
    let ctx = ToolContext::standalone(JobContext::default(), Userdata::default());
    for i in 0..WARMUP {
        call(tool, &ctx, i).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        call(tool, &ctx, i).await?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(times)
}

async fn call(tool: &Arc<dyn Tool>, ctx: &ToolContext, i: usize) -> Result<(), String> {
    let out = tool
        .call(ctx.clone(), json!({"a": i, "b": 1}))
        .await
        .map_err(|e| e.to_string())?;
    let text = out.to_model_text();
    if !text.starts_with("The sum of") {
        return Err(format!("unexpected result: {text}"));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (sorted.len() as f64 * q) as usize;
    sorted
        .get(rank.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(what: &str, sorted: &[Duration]) {
    let total: Duration = sorted.iter().sum();
    let mean = total.checked_div(sorted.len() as u32).unwrap_or_default();
    println!(
        "mcp_call: {what:<36} p50 {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs",
        micros(percentile(sorted, 0.50)),
        micros(percentile(sorted, 0.99)),
        micros(mean),
    );
}

/// server-everything's `dist/index.js` in the test cache.
fn everything() -> Result<String, String> {
    mcp_everything()
        .map(|index| index.display().to_string())
        .map_err(|e| e.to_string())
}
