//! A step's tool calls: run concurrently, each within its timeout, with a
//! context whose session handle speaks within this reply while they run; a
//! failure, a panic or the timeout is the call's result, cut to size.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ReplyEvent, ReplyJob, ReplyScope, SAYS_IN_FLIGHT, ScopedSay, Speaker, take_part};
use crate::agents::Agent;
use crate::chat::ToolCall;
use crate::ledger::{PartId, Record};
use crate::tool::{Tool, ToolContext, ToolOutput, ToolSnapshot, parse_arguments};

/// What a step's tools left.
pub(super) struct StepRun {
    /// One result per call, in call order, as the model reads it.
    pub(super) results: Vec<String>,
    /// What tools said while they ran, in order.
    pub(super) says: Vec<String>,
    pub(super) handoff: Option<Agent>,
}

/// Runs a step's calls concurrently (at most `max_calls_per_step` of them),
/// speaking what their tools `say` meanwhile; reports each result as it comes.
pub(super) async fn run_tools(
    job: &ReplyJob,
    tools: &ToolSnapshot,
    calls: &[ToolCall],
    step: usize,
    cancel: &CancellationToken,
    speaker: &Speaker,
    next_part: &mut PartId,
) -> StepRun {
    let limits = &job.tool_options;
    let (says_tx, mut says_rx) = mpsc::channel::<ScopedSay>(SAYS_IN_FLIGHT);
    let scope = ReplyScope {
        says: says_tx,
        open: Arc::new(AtomicBool::new(true)),
    };
    let mut results: Vec<Option<String>> = vec![None; calls.len()];
    let mut running = FuturesUnordered::new();
    for (index, call) in calls.iter().enumerate() {
        if index >= limits.max_calls_per_step {
            results[index] = Some(format!(
                "error: not run: at most {} tool calls are run per step",
                limits.max_calls_per_step
            ));
            continue;
        }
        debug!(reply = job.id, tool = %call.name, id = %call.id, "running tool");
        let ctx = ToolContext::new(
            job.context.scoped(scope.clone()),
            cancel.child_token(),
            call.id.clone(),
        );
        let tool = tools.get(&call.name).cloned();
        let default_timeout = limits.timeout;
        running
            .push(run_call(tool, call.clone(), ctx, default_timeout).map(move |out| (index, out)));
    }
    for (index, result) in results.iter().enumerate() {
        if let Some(output) = result {
            job.record(Record::ToolResult {
                step,
                index,
                output: output.clone(),
            })
            .await;
        }
    }
    let mut says = Vec::new();
    let mut handoff = None;
    while !running.is_empty() {
        tokio::select! {
            Some((index, outcome)) = running.next() => {
                let CallOutcome { text, handoff: next } = outcome;
                let output = truncate_result(text, limits.max_result_chars);
                if let Some(agent) = next {
                    if handoff.is_some() {
                        warn!(reply = job.id, "two tools of one step handed over; the first wins");
                    } else {
                        handoff = Some(agent);
                    }
                }
                job.record(Record::ToolResult { step, index, output: output.clone() }).await;
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(output);
                }
            }
            Some(say) = says_rx.recv() => {
                says.push(say_in_reply(job, speaker, step, next_part, say).await);
            }
        }
    }
    scope.open.store(false, Ordering::SeqCst);
    while let Ok(say) = says_rx.try_recv() {
        says.push(say_in_reply(job, speaker, step, next_part, say).await);
    }
    StepRun {
        results: results.into_iter().map(Option::unwrap_or_default).collect(),
        says,
        handoff,
    }
}

async fn say_in_reply(
    job: &ReplyJob,
    speaker: &Speaker,
    step: usize,
    next_part: &mut PartId,
    say: ScopedSay,
) -> String {
    let part = take_part(next_part);
    job.record(Record::Said {
        step,
        part,
        text: say.text.clone(),
    })
    .await;
    job.report(ReplyEvent::SayWaiter {
        part,
        done: say.done,
    })
    .await;
    speaker.speak(part, &say.text, job.clock.now()).await;
    say.text
}

/// One call's outcome: the text the model reads, and a handoff if any.
struct CallOutcome {
    text: String,
    handoff: Option<Agent>,
}

impl CallOutcome {
    fn error(text: String) -> Self {
        Self {
            text,
            handoff: None,
        }
    }
}

/// Runs one call within its timeout; every failure becomes its result.
async fn run_call(
    tool: Option<Arc<dyn Tool>>,
    call: ToolCall,
    ctx: ToolContext,
    default_timeout: Duration,
) -> CallOutcome {
    let Some(tool) = tool else {
        return CallOutcome::error(format!("error: no tool named {:?}", call.name));
    };
    let args = match parse_arguments(&call.arguments) {
        Ok(args) => args,
        Err(e) => return CallOutcome::error(format!("error: {e}")),
    };
    let limit = tool.timeout().unwrap_or(default_timeout);
    let cancel = ctx.cancellation().clone();
    let called = AssertUnwindSafe(tool.call(ctx, args)).catch_unwind();
    match tokio::time::timeout(limit, called).await {
        Err(_) => {
            cancel.cancel();
            warn!(tool = %call.name, ?limit, "tool timed out");
            CallOutcome::error(format!(
                "error: the tool did not finish within {:.1} s",
                limit.as_secs_f64()
            ))
        }
        Ok(Err(_panic)) => {
            warn!(tool = %call.name, "tool panicked");
            CallOutcome::error("error: the tool failed unexpectedly".into())
        }
        Ok(Ok(Err(e))) => CallOutcome::error(format!("error: {e}")),
        Ok(Ok(Ok(output))) => {
            let text = output.to_model_text();
            let handoff = match output {
                ToolOutput::Handoff { agent, .. } => Some(agent),
                _ => None,
            };
            CallOutcome { text, handoff }
        }
    }
}

/// At most `max` characters of a tool's result, cut on a character boundary.
fn truncate_result(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => {
            let dropped = text.len() - cut;
            let mut kept = text;
            kept.truncate(cut);
            kept.push_str(&format!(" … [{dropped} more bytes cut]"));
            kept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_results_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_result("short".into(), 10), "short");
        let cut = truncate_result("ééééé".into(), 2);
        assert!(cut.starts_with("éé …"), "{cut}");
        assert!(cut.contains("6 more bytes"), "{cut}");
    }
}
