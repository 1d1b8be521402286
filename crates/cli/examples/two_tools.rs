//! The shortest complete agent: two tools. Run it like the stock binary:
//! `cargo run -p voice-agent --example two_tools -- console --text`.
use voice_agent::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Table {
    /// How many people.
    party_size: u32,
    /// When, e.g. "19:30".
    time: String,
}

fn main() -> std::process::ExitCode {
    voice_agent::run(|_job| async move {
        Ok(Agent::new("You take table bookings for Luigi's. Be brief.")
            .tool(tool(
                "check_availability",
                "Is a table free?",
                |_ctx, t: Table| async move {
                    Ok(if t.party_size <= 6 {
                        "free"
                    } else {
                        "no table that large"
                    })
                },
            ))
            .tool(tool("book", "Book a table", |_ctx, t: Table| async move {
                Ok(format!("Booked for {} at {}.", t.party_size, t.time))
            })))
    })
}
