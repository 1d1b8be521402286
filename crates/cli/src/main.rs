//! `voice-agent`: the stock agent, configured in `agent-config/agent.toml`.

fn main() -> std::process::ExitCode {
    voice_agent::run_stock()
}
