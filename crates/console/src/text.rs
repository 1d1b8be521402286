//! Text mode: each line of input is a user turn; the reply streams to the
//! output as it is generated, one reply per line. The next line is read only
//! once the reply is over, so piped input is answered turn by turn.

use agent::session::{SessionEvent, SessionHandle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{ConsoleError, is_fatal};

/// Runs until the input ends. Returns the number of turns answered.
pub async fn run<R, W>(
    session: SessionHandle,
    mut events: mpsc::Receiver<SessionEvent>,
    input: R,
    mut output: W,
) -> Result<usize, ConsoleError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |source| ConsoleError::Io {
        context: "writing the reply".into(),
        source,
    };
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
        let mut fatal = None;
        loop {
            match events.recv().await.ok_or(ConsoleError::SessionEnded)? {
                // After a fatal error, the session's spoken apology is noise.
                SessionEvent::AgentText { delta, .. } if fatal.is_none() => {
                    output.write_all(delta.as_bytes()).await.map_err(io)?;
                    output.flush().await.map_err(io)?;
                }
                SessionEvent::Error { stage, error } => {
                    if is_fatal(&error) {
                        fatal = Some(ConsoleError::Stage { stage, error });
                    } else {
                        warn!(stage, %error, "stage error");
                    }
                }
                SessionEvent::AgentSpoke { .. } => break,
                _ => {}
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        output.write_all(b"\n").await.map_err(io)?;
        output.flush().await.map_err(io)?;
        turns += 1;
    }
    Ok(turns)
}
