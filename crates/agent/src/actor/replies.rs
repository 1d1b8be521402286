//! The reply side of the session's task: starting a reply, interrupting it,
//! taking its reports and the playout's events into its ledger, and ending it
//! (what the history keeps, what the user heard, the turn's metrics).

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{ActiveReply, Actor, spawn_child};
use crate::ledger::{Heard, Ledger, PartId, Record};
use crate::playout::PlaybackEvent;
use crate::reply::{self, ReplyEvent, ReplyJob, ReplyKind};
use crate::session::{SessionEvent, SpeechDone};
use crate::turn::{Input, ReplyId, TurnTiming};

impl Actor {
    pub(super) async fn start_reply(
        &mut self,
        id: ReplyId,
        kind: ReplyKind,
        timing: Option<TurnTiming>,
        done: Option<oneshot::Sender<SpeechDone>>,
    ) {
        let output = self.output.as_ref().map(|(w, c)| (w.clone(), c.begin()));
        let utterance = output.as_ref().map(|(_, g)| *g);
        let llm = self
            .agent
            .own_llm()
            .cloned()
            .unwrap_or_else(|| self.stages.llm.clone());
        let job = ReplyJob {
            id,
            kind,
            llm,
            tts: self.stages.tts.clone(),
            agent: self.agent.clone(),
            messages: self.chat.messages.clone(),
            max_tool_steps: self.options.max_tool_steps,
            tool_options: self.options.tools.clone(),
            context: self.context(),
            output,
            error_message: self.options.error_message.clone(),
            clock: self.options.clock.clone(),
            events: self.reply_tx.clone(),
        };
        let task = spawn_child(&self.panics, reply::run(job));
        // Let the reply start its LLM request before this task goes on with
        // other work: the spawned task runs next on this worker.
        tokio::task::yield_now().await;
        self.reply = Some(ActiveReply {
            task,
            utterance,
            ledger: Ledger::new(id, timing),
            cancelled: false,
            done,
            waiters: Vec::new(),
            shown_part: None,
        });
    }

    pub(super) async fn interrupt(&mut self, id: ReplyId) {
        let Some(reply) = self.reply.as_mut().filter(|r| r.ledger.id() == id) else {
            return;
        };
        reply.task.abort();
        reply.cancelled = true;
        let pending = self.output.as_ref().map(|(_, control)| {
            control.clear();
            // Events the sink emitted before the clear (a Started, say)
            // decide whether a Finished is still to come.
            std::iter::from_fn(|| control.try_event()).collect::<Vec<_>>()
        });
        match pending {
            Some(pending) => {
                for event in pending {
                    self.on_playback(self.options.clock.now(), event).await;
                }
                let not_started = self
                    .reply
                    .as_ref()
                    .is_some_and(|r| r.ledger.id() == id && !r.ledger.playback_started());
                if not_started {
                    self.finish_reply(Heard::Parts(Vec::new()), true).await;
                }
            }
            None => self.finish_reply(Heard::All, true).await,
        }
    }

    pub(super) async fn on_reply(&mut self, id: ReplyId, event: ReplyEvent) {
        let Some(reply) = self
            .reply
            .as_mut()
            .filter(|r| r.ledger.id() == id && !r.cancelled)
        else {
            return; // from a cancelled reply
        };
        match event {
            ReplyEvent::Record(record) => {
                reply.ledger.record(&record);
                self.on_record(id, record).await;
            }
            ReplyEvent::SayWaiter { part, done } => {
                if self.output.is_some() {
                    reply.waiters.push((part, done));
                } else {
                    let heard = reply.ledger.part_text(part);
                    let _ = done.send(SpeechDone {
                        heard,
                        interrupted: false,
                    });
                }
            }
            ReplyEvent::Handoff(agent) => self.switch_agent(agent).await,
            ReplyEvent::LlmFailed(error) => {
                self.emit(SessionEvent::Error {
                    stage: "llm",
                    error,
                })
                .await;
            }
        }
    }

    /// What a reply's record means beyond the ledger: events, and in text
    /// mode the reply's end.
    async fn on_record(&mut self, id: ReplyId, record: Record) {
        match record {
            Record::StepText { part, delta, .. } => self.show(id, part, delta).await,
            Record::Said { part, text, .. } => self.show(id, part, text).await,
            Record::Failed { apology } => {
                if let Some((part, text)) = apology {
                    self.show(id, part, text).await;
                }
                if self.output.is_none() {
                    self.finish_reply(Heard::All, false).await;
                }
            }
            Record::ToolCalls { calls, .. } => {
                for call in &calls {
                    info!(reply = id, tool = %call.name, id = %call.id, "tool call");
                }
                self.emit(SessionEvent::ToolCalls { reply: id, calls })
                    .await;
            }
            Record::ToolResult {
                step,
                index,
                output,
            } => {
                let call_id = self
                    .reply
                    .as_ref()
                    .and_then(|r| r.ledger.call_id(step, index))
                    .unwrap_or_default();
                self.emit(SessionEvent::ToolResult {
                    reply: id,
                    call_id,
                    output,
                })
                .await;
            }
            Record::Generated { .. } if self.output.is_none() => {
                self.finish_reply(Heard::All, false).await;
            }
            _ => {}
        }
    }

    /// Reply text as it comes, a space between parts.
    async fn show(&mut self, id: ReplyId, part: PartId, text: String) {
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        let new_part = reply.shown_part.is_some_and(|p| p != part);
        reply.shown_part = Some(part);
        let delta = if new_part && !text.starts_with(char::is_whitespace) {
            format!(" {text}")
        } else {
            text
        };
        self.emit(SessionEvent::AgentText { reply: id, delta })
            .await;
    }

    pub(super) async fn on_playback(&mut self, now: Instant, event: PlaybackEvent) {
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        match event {
            PlaybackEvent::Started { utterance } if reply.utterance == Some(utterance) => {
                reply.ledger.playback_started_at(now);
                let id = reply.ledger.id();
                self.machine
                    .handle_input(now, Input::PlaybackStarted { reply: id });
            }
            PlaybackEvent::TextPlayed { utterance, text } if reply.utterance == Some(utterance) => {
                let id = reply.ledger.id();
                self.emit(SessionEvent::AgentHeard {
                    reply: id,
                    delta: text,
                })
                .await;
            }
            PlaybackEvent::PartPlayed { utterance, part } if reply.utterance == Some(utterance) => {
                if let Some(i) = reply.waiters.iter().position(|(p, _)| *p == part) {
                    let (_, done) = reply.waiters.swap_remove(i);
                    let _ = done.send(SpeechDone {
                        heard: reply.ledger.part_text(part),
                        interrupted: false,
                    });
                }
            }
            PlaybackEvent::Finished {
                utterance,
                parts,
                interrupted,
                ..
            } if reply.utterance == Some(utterance) => {
                let interrupted = interrupted || reply.cancelled;
                let heard = if interrupted {
                    Heard::Parts(parts)
                } else {
                    Heard::All
                };
                self.finish_reply(heard, interrupted).await;
            }
            _ => {} // another utterance's
        }
    }

    pub(super) fn bound_history(&mut self) {
        let dropped = self.chat.truncate(&self.options.history);
        if dropped > 0 {
            debug!(dropped, "history over its limit: oldest messages dropped");
        }
    }

    /// The reply is over: record what the user heard and tell the machine.
    pub(super) async fn finish_reply(&mut self, heard: Heard, interrupted: bool) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        if !reply.task.is_finished() && interrupted {
            reply.task.abort();
        }
        let id = reply.ledger.id();
        let outcome = reply.ledger.finish(heard, interrupted);
        for message in outcome.messages {
            self.chat.push(message);
        }
        self.bound_history();
        for (part, done) in reply.waiters {
            let heard = outcome
                .parts
                .iter()
                .find(|(p, _)| *p == part)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            let _ = done.send(SpeechDone { heard, interrupted });
        }
        if let Some(done) = reply.done {
            let _ = done.send(SpeechDone {
                heard: outcome.spoken.clone(),
                interrupted,
            });
        }
        info!(reply = id, interrupted, agent = %outcome.spoken, "agent turn");
        let m = &outcome.metrics;
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        info!(
            reply = id,
            end_of_utterance_ms = ms(m.end_of_utterance_delay),
            transcription_ms = ms(m.transcription_delay),
            llm_ttft_ms = ms(m.llm_ttft),
            tts_ttfb_ms = ms(m.tts_ttfb),
            end_to_end_ms = ms(m.end_to_end),
            "turn metrics"
        );
        self.emit(SessionEvent::AgentSpoke {
            reply: id,
            text: outcome.spoken,
            interrupted,
        })
        .await;
        self.emit(SessionEvent::Metrics(outcome.metrics)).await;
        let now = self.options.clock.now();
        self.machine
            .handle_input(now, Input::ReplyEnded { reply: id });
    }
}
