//! Two agents and a handoff: the host greets and hands wine questions to the
//! sommelier, who can hand the guest back. The history carries over; each
//! agent's instructions and tools apply while it is in charge.
//!
//! ```sh
//! cargo run -p voice-agent --example handoff -- console --text
//! cargo run -p voice-agent --example handoff -- dev
//! ```

use serde_json::json;
use voice_agent::prelude::*;

fn host() -> Agent {
    Agent::new(
        "You are the host of Luigi's, an Italian restaurant. Answer in one short spoken \
         sentence. For any question about wine, call ask_sommelier.",
    )
    .named("host")
    .tool(tool(
        "ask_sommelier",
        "Hand the guest to the sommelier, for wine questions",
        |_ctx, _: NoArgs| async move { Ok(sommelier()) },
    ))
}

fn sommelier() -> Agent {
    Agent::new(
        "You are the sommelier of Luigi's. Recommend one wine from the wine list in one short \
         spoken sentence. When the guest has no more wine questions, call back_to_host.",
    )
    .named("sommelier")
    .tool(tool(
        "wine_list",
        "The wines Luigi's has tonight",
        |_ctx, _: NoArgs| async move {
            Ok(json!([
                {"name": "Chablis", "colour": "white", "with": "fish, seafood"},
                {"name": "Barolo", "colour": "red", "with": "beef, truffle"},
                {"name": "Prosecco", "colour": "sparkling", "with": "starters"},
            ]))
        },
    ))
    .tool(tool(
        "back_to_host",
        "Hand the guest back to the host",
        |_ctx, _: NoArgs| async move { Ok(host()) },
    ))
    .on_enter(|ctx| async move {
        let _ = ctx
            .session()
            .generate_reply(
                "Introduce yourself as the sommelier and answer the guest's wine question.",
            )
            .await;
    })
}

fn main() -> std::process::ExitCode {
    voice_agent::run(|_job| async move {
        Ok(host().on_enter(|ctx| async move {
            let _ = ctx.session().say("Welcome to Luigi's!", true).await;
        }))
    })
}
