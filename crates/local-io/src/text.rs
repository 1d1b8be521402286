//! Text mode: each line of input is a user turn; the reply streams to the
//! output as it is generated, one reply per line. What the agent says on its
//! own (a greeting) comes first, each on its own line too. The next line is
//! read only once the reply to the last one is over, so piped input is
//! answered turn by turn.

use agent::AgentState;
use agent::session::{SessionEvent, SessionHandle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{ConsoleError, is_fatal};

/// Writes what the agent says, a line per reply.
struct Printer<W> {
    output: W,
    state: AgentState,
    /// A reply's text is on the current line.
    open_line: bool,
    /// A fatal stage error seen during the current turn.
    fatal: Option<ConsoleError>,
    /// An agent took over and its `on_enter` is not done: it may be about
    /// to speak.
    entering: bool,
}

impl<W: AsyncWrite + Unpin> Printer<W> {
    /// The agent is replying, or about to (an agent entering).
    fn busy(&self) -> bool {
        self.entering || self.state != AgentState::Listening
    }

    async fn write(&mut self, text: &str) -> Result<(), ConsoleError> {
        let io = |source| ConsoleError::Io {
            context: "writing the reply".into(),
            source,
        };
        self.output.write_all(text.as_bytes()).await.map_err(io)?;
        self.output.flush().await.map_err(io)
    }

    /// Shows one event; returns the reply it ended, if it ended one.
    async fn show(&mut self, event: SessionEvent) -> Result<Option<u64>, ConsoleError> {
        match event {
            // After a fatal error, the session's spoken apology is noise.
            SessionEvent::AgentText { delta, .. } if self.fatal.is_none() => {
                self.open_line = true;
                self.write(&delta).await?;
            }
            SessionEvent::AgentSpoke { reply, .. } => {
                if self.open_line {
                    self.open_line = false;
                    self.write("\n").await?;
                }
                return Ok(Some(reply));
            }
            SessionEvent::AgentState(state) => self.state = state,
            SessionEvent::AgentChanged { .. } => self.entering = true,
            SessionEvent::AgentEntered { .. } => self.entering = false,
            SessionEvent::Error { stage, error } => {
                if is_fatal(&error) {
                    self.fatal = Some(ConsoleError::Stage { stage, error });
                } else {
                    warn!(stage, %error, "stage error");
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// Runs until the input ends. Returns the number of turns answered.
pub async fn run<R, W>(
    session: SessionHandle,
    mut events: mpsc::Receiver<SessionEvent>,
    input: R,
    output: W,
) -> Result<usize, ConsoleError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut printer = Printer {
        output,
        state: AgentState::Initializing,
        open_line: false,
        fatal: None,
        entering: true,
    };
    // The agent's entry first: once its on_enter is done, what it asked to
    // say is under way; wait until the agent listens again.
    while printer.busy() {
        let event = events.recv().await.ok_or(ConsoleError::SessionEnded)?;
        printer.show(event).await?;
    }
    if let Some(e) = printer.fatal.take() {
        return Err(e);
    }
    let mut lines = input.lines();
    let mut turns = 0;
    loop {
        let line = lines.next_line().await.map_err(|source| ConsoleError::Io {
            context: "reading input".into(),
            source,
        })?;
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        session
            .user_text(line)
            .await
            .map_err(|_| ConsoleError::SessionEnded)?;
        // The reply that answers this line, once the turn is committed; and
        // what the agent says after it on its own (a handoff's new agent),
        // until it listens again.
        let mut answer = None;
        let mut answered = false;
        while !answered || printer.busy() {
            let event = events.recv().await.ok_or(ConsoleError::SessionEnded)?;
            if let SessionEvent::UserTurn { reply, .. } = &event {
                answer = Some(*reply);
            }
            let ended = printer.show(event).await?;
            answered |= ended.is_some() && ended == answer;
        }
        if let Some(e) = printer.fatal.take() {
            return Err(e);
        }
        turns += 1;
    }
    Ok(turns)
}
