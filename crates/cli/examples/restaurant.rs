//! A restaurant host with per-session state: it checks availability, books
//! (saying something while the booking takes its time) and confirms.
//!
//! ```sh
//! cargo run -p voice-agent --example restaurant -- console --text
//! cargo run -p voice-agent --example restaurant -- console --input-file q.wav --output-file a.wav
//! cargo run -p voice-agent --example restaurant -- dev     # in LiveKit rooms
//! ```
//!
//! Speech, the LLM and turn taking come from `agent-config/agent.toml`, as for
//! the stock binary.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use voice_agent::prelude::*;

const INSTRUCTIONS: &str = "You are the host of Luigi's, an Italian restaurant, on the phone. \
Answer in one or two short spoken sentences, no lists. To take a booking, find out the party \
size and the time, check availability, then book it under the guest's name and read the \
reference back. Opening hours are 17:00 to 22:00.";

/// What this call has booked so far.
#[derive(Default)]
struct Booking {
    reference: Option<String>,
    party_size: u32,
    time: String,
    name: String,
}

#[derive(Deserialize, JsonSchema)]
struct Availability {
    /// Number of guests.
    party_size: u32,
    /// Time of the booking, 24-hour "HH:MM".
    time: String,
}

#[derive(Deserialize, JsonSchema)]
struct Book {
    /// Number of guests.
    party_size: u32,
    /// Time of the booking, 24-hour "HH:MM".
    time: String,
    /// The name the table is booked under.
    name: String,
}

/// Minutes after midnight of an "HH:MM" time.
fn minutes(time: &str) -> Option<u32> {
    let (h, m) = time.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Luigi's book: tables of up to 8, 17:00 to 22:00, full at 20:00.
fn availability(party_size: u32, time: &str) -> Result<&'static str, ToolError> {
    let at = minutes(time).ok_or_else(|| ToolError::new(format!("{time:?} is not a time")))?;
    Ok(match (party_size, at) {
        (0, _) => "a party needs at least one guest",
        (9.., _) => "no table for more than 8",
        (_, at) if !(17 * 60..=22 * 60).contains(&at) => "closed then: open 17:00 to 22:00",
        (_, at) if at == 20 * 60 => "full at 20:00; 19:30 and 20:30 are free",
        _ => "free",
    })
}

fn booking(ctx: &ToolContext) -> Result<std::sync::MutexGuard<'_, Booking>, ToolError> {
    ctx.userdata::<Mutex<Booking>>()?
        .lock()
        .map_err(|_| ToolError::new("the booking book is unavailable"))
}

fn host() -> Agent {
    Agent::new(INSTRUCTIONS)
        .named("host")
        .tool(tool(
            "check_availability",
            "Whether a table is free for this many guests at this time",
            |_ctx, a: Availability| async move { availability(a.party_size, &a.time) },
        ))
        .tool(tool(
            "book_table",
            "Book a table (check availability first)",
            |ctx, b: Book| async move {
                if availability(b.party_size, &b.time)? != "free" {
                    return Err(ToolError::new("that table is not free"));
                }
                // The booking system is slow: tell the guest while it works.
                ctx.session()
                    .say("One moment while I write that down.", true)
                    .await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let reference = format!("L{:03}", (b.party_size * 37 + b.name.len() as u32) % 1000);
                let mut book = booking(&ctx)?;
                *book = Booking {
                    reference: Some(reference.clone()),
                    party_size: b.party_size,
                    time: b.time.clone(),
                    name: b.name.clone(),
                };
                Ok(json!({"booked": true, "reference": reference}))
            },
        ))
        .tool(tool(
            "current_booking",
            "The booking made on this call, if any",
            |ctx, _: NoArgs| async move {
                let book = booking(&ctx)?;
                Ok(match &book.reference {
                    Some(r) => json!({
                        "reference": r, "party_size": book.party_size,
                        "time": book.time, "name": book.name,
                    }),
                    None => json!({"booked": false}),
                })
            },
        ))
        .on_enter(|ctx| async move {
            let _ = ctx
                .session()
                .say("Luigi's, good evening! How can I help?", true)
                .await;
        })
}

fn main() -> std::process::ExitCode {
    voice_agent::run(|_job| async move {
        Ok(SessionSetup::new(host()).with_userdata(Mutex::new(Booking::default())))
    })
}
