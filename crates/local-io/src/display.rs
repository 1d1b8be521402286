//! What the device console shows. On a terminal: finished lines (your final
//! transcripts, the agent's replies, each turn's latency) scroll up, and one
//! status line at the bottom is redrawn in place with the agent's state, the
//! microphone level meter, the buffering, and the live (interim) text of
//! whoever is speaking. Elsewhere (a pipe, a file, a test): plain lines, one
//! per event, no escape sequences.
//!
//! The display only composes text; its owner writes it out. It never changes
//! terminal modes (no raw mode, the cursor stays visible), so restoring the
//! terminal means clearing the status line, which [`Display::finish`] does.

use std::fmt::Write as _;
use std::time::Duration;

use agent::session::{SessionEvent, TurnMetrics};
use agent::turn::AgentState;

/// Clear the current line and return to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

pub struct Display {
    tty: bool,
    state: AgentState,
    user_speaking: bool,
    /// The user's words not yet final.
    interim: String,
    /// The agent's reply as it is generated.
    agent_live: String,
    mic_dbfs: f32,
    buffering: Duration,
}

impl Display {
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            state: AgentState::Initializing,
            user_speaking: false,
            interim: String::new(),
            agent_live: String::new(),
            mic_dbfs: -100.0,
            buffering: Duration::ZERO,
        }
    }

    /// Text to write for a session event (maybe empty).
    pub fn event(&mut self, event: &SessionEvent) -> String {
        let mut lines = String::new();
        match event {
            SessionEvent::AgentState(s) => {
                self.state = *s;
                if !self.tty {
                    let _ = writeln!(lines, "state: {}", s.as_str());
                }
            }
            SessionEvent::UserSpeaking(speaking) => {
                self.user_speaking = *speaking;
                if !self.tty {
                    let what = if *speaking { "started" } else { "stopped" };
                    let _ = writeln!(lines, "vad: user {what} speaking");
                }
            }
            SessionEvent::UserTranscript { text, is_final } => {
                if *is_final {
                    self.interim.clear();
                    let _ = writeln!(lines, "user: {}", text.trim());
                } else {
                    self.interim = text.trim().to_string();
                    if !self.tty {
                        let _ = writeln!(lines, "user (interim): {}", self.interim);
                    }
                }
            }
            SessionEvent::UserTurn { text, .. } => {
                let _ = writeln!(lines, "turn: {}", text.trim());
            }
            SessionEvent::AgentText { delta, .. } => self.agent_live.push_str(delta),
            SessionEvent::AgentSpoke {
                text, interrupted, ..
            } => {
                self.agent_live.clear();
                let mark = if *interrupted { " [interrupted]" } else { "" };
                let _ = writeln!(lines, "agent: {}{mark}", text.trim());
            }
            SessionEvent::Metrics(m) => {
                let _ = writeln!(lines, "{}", latency_line(m));
            }
            SessionEvent::Error { stage, error } => {
                let _ = writeln!(lines, "error: {stage}: {error}");
            }
            SessionEvent::ToolCalls { calls, .. } => {
                for call in calls {
                    let _ = writeln!(lines, "tool: {}({})", call.name, call.arguments);
                }
            }
            SessionEvent::ToolResult {
                call_id, output, ..
            } => {
                let _ = writeln!(lines, "tool result ({call_id}): {}", one_line(output));
            }
            SessionEvent::AgentChanged { agent } => {
                let _ = writeln!(lines, "agent now: {agent}");
            }
            _ => {}
        }
        if self.tty && !lines.is_empty() {
            // Finished lines go above the status line, which is redrawn.
            let mut out = String::from(CLEAR_LINE);
            out.push_str(&lines.replace('\n', "\r\n"));
            out.push_str(&self.status_line());
            return out;
        }
        lines
    }

    /// Redraws the status line with fresh meters (terminal only).
    pub fn meters(&mut self, mic_dbfs: f32, buffering: Duration) -> String {
        self.mic_dbfs = mic_dbfs;
        self.buffering = buffering;
        if !self.tty {
            return String::new();
        }
        format!("{CLEAR_LINE}{}", self.status_line())
    }

    /// Clears the status line, leaving the terminal as it was.
    pub fn finish(&self) -> String {
        if self.tty {
            CLEAR_LINE.to_string()
        } else {
            String::new()
        }
    }

    fn status_line(&self) -> String {
        let width = terminal_width();
        let mut line = format!(
            "[{:<9}] mic {} {:>4.0} dB | buf {:>3} ms",
            self.state.as_str(),
            meter(self.mic_dbfs, 12),
            self.mic_dbfs.max(-99.0),
            self.buffering.as_millis()
        );
        if self.user_speaking || !self.interim.is_empty() {
            let _ = write!(line, " | you: {}", self.interim);
        } else if !self.agent_live.is_empty() {
            let _ = write!(line, " | agent: {}", self.agent_live.trim());
        }
        // One line only: a wrapped status line could not be redrawn in place.
        let visible = width.saturating_sub(1);
        if line.chars().count() > visible {
            // Keep the end of long live text: it is what is being said now.
            let head: String = line.chars().take(42.min(visible)).collect();
            let tail_len = visible.saturating_sub(head.chars().count() + 1);
            let tail: Vec<char> = line.chars().collect();
            let tail: String = tail[tail.len().saturating_sub(tail_len)..].iter().collect();
            line = format!("{head}…{tail}");
        }
        line
    }
}

/// A bar of `width` cells for a level between −60 and 0 dBFS.
fn meter(dbfs: f32, width: usize) -> String {
    let filled = (((dbfs + 60.0) / 60.0).clamp(0.0, 1.0) * width as f32).round() as usize;
    let mut bar = String::with_capacity(width * 3);
    for i in 0..width {
        bar.push(if i < filled { '█' } else { '·' });
    }
    bar
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{}", d.as_millis()))
}

/// One turn's latency: end to end, then its parts.
pub fn latency_line(m: &TurnMetrics) -> String {
    format!(
        "latency: end-to-end {} ms (end of utterance {} ms, transcription {} ms, LLM first token {} ms, TTS first audio {} ms){}",
        ms(m.end_to_end),
        ms(m.end_of_utterance_delay),
        ms(m.transcription_delay),
        ms(m.llm_ttft),
        ms(m.tts_ttfb),
        if m.interrupted { " [interrupted]" } else { "" }
    )
}

fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .map(|w| w.ws_col as usize)
        .ok()
        .filter(|&w| w > 20)
        .unwrap_or(80)
}

/// The first 120 characters of `text` on one line.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if text.chars().count() > 120 {
        format!("{flat}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_has_no_escapes_and_one_line_per_event() {
        let mut d = Display::new(false);
        let mut out = String::new();
        out += &d.event(&SessionEvent::AgentState(AgentState::Listening));
        out += &d.event(&SessionEvent::UserSpeaking(true));
        out += &d.event(&SessionEvent::UserTranscript {
            text: "what is".into(),
            is_final: false,
        });
        out += &d.event(&SessionEvent::UserTranscript {
            text: "what is the time".into(),
            is_final: true,
        });
        out += &d.meters(-20.0, Duration::from_millis(40));
        out += &d.event(&SessionEvent::AgentText {
            reply: 1,
            delta: "Noon.".into(),
        });
        out += &d.event(&SessionEvent::AgentSpoke {
            reply: 1,
            text: "Noon.".into(),
            interrupted: false,
        });
        out += &d.finish();
        assert!(!out.contains('\x1b'), "{out:?}");
        assert_eq!(
            out,
            "state: listening\nvad: user started speaking\nuser (interim): what is\n\
             user: what is the time\nagent: Noon.\n"
        );
    }

    #[test]
    fn terminal_status_line_shows_interim_text_and_is_cleared_at_the_end() {
        let mut d = Display::new(true);
        let _ = d.event(&SessionEvent::AgentState(AgentState::Listening));
        let _ = d.event(&SessionEvent::UserSpeaking(true));
        let _ = d.event(&SessionEvent::UserTranscript {
            text: "what is".into(),
            is_final: false,
        });
        let status = d.meters(-30.0, Duration::from_millis(45));
        assert!(status.starts_with(CLEAR_LINE));
        assert!(status.contains("[listening]"), "{status}");
        assert!(status.contains("you: what is"), "{status}");
        assert!(status.contains("buf  45 ms"), "{status}");
        assert!(!status.contains('\n'));
        let final_line = d.event(&SessionEvent::UserTranscript {
            text: "what is the time".into(),
            is_final: true,
        });
        assert!(
            final_line.contains("user: what is the time\r\n"),
            "{final_line:?}"
        );
        assert_eq!(d.finish(), CLEAR_LINE);
    }

    #[test]
    fn meter_spans_minus_sixty_to_zero() {
        assert_eq!(meter(-100.0, 4), "····");
        assert_eq!(meter(-30.0, 4), "██··");
        assert_eq!(meter(0.0, 4), "████");
    }
}
