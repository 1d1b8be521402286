//! File mode: a WAV file is the microphone, another WAV file the speaker.
//!
//! The session runs on a media clock that this driver advances 20 ms per
//! frame, feeding the input and taking the agent's audio in lockstep, so the
//! output file holds the agent's speech exactly where it would have been
//! heard. Time runs faster than real time while nothing is waiting on a
//! stage, and at real time while something is (the STT finalizing, the
//! endpointing delay, the LLM thinking, the TTS behind playback), so every
//! latency in the output and in the metrics is the real one.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use agent::audio::{AudioFrame, samples_for};
use agent::clock::Clock;
use agent::playout::{Playout, playout};
use agent::session::{self, AudioIo, SessionEvent, SessionOptions, Stages, TurnMetrics};
use agent::turn::AgentState;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::warn;

use crate::{ConsoleError, is_fatal, wav};

const TICK: Duration = Duration::from_millis(20);

/// Silence fed after the input ends once the agent is quiet, before stopping.
const TRAILING_QUIET: Duration = Duration::from_millis(1500);

/// Longest the agent may keep going after the input ends.
const MAX_OVERRUN: Duration = Duration::from_secs(120);

pub struct FileOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Sample rate of the output file.
    pub output_rate: u32,
}

/// What happened, for callers and tests.
#[derive(Debug, Default)]
pub struct FileSummary {
    /// (user turn, what the agent said, interrupted)
    pub turns: Vec<(String, String, bool)>,
    pub metrics: Vec<TurnMetrics>,
    /// Media time processed.
    pub duration: Duration,
    /// Wall time it took.
    pub wall: Duration,
}

/// Runs a session over `files.input`, writing the agent's speech to
/// `files.output` and `user: …` / `agent: …` lines to `transcript`.
pub async fn run<W: AsyncWrite + Unpin>(
    stages: Stages,
    mut options: SessionOptions,
    files: FileOptions,
    mut transcript: W,
) -> Result<FileSummary, ConsoleError> {
    let input = wav::read(&files.input)?;
    let mut out = wav::WavWriter::create(&files.output, files.output_rate)?;
    let wall_start = tokio::time::Instant::now();

    let (clock, driver) = Clock::media();
    options.clock = clock;
    let max_endpointing = options.turn.max_endpointing_delay;
    let (writer, control, mut reader) = playout(files.output_rate, 64);
    // Small: the session must keep up with the media clock, not lag it.
    let (mic_tx, mic_rx) = tokio::sync::mpsc::channel(2);
    let (handle, mut events, task) = session::start(
        stages,
        options,
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );

    let channels = input.channels as usize;
    let in_per_tick = samples_for(TICK, input.sample_rate) * channels;
    let out_per_tick = samples_for(TICK, files.output_rate);
    let input_len = Duration::from_secs_f64(
        input.samples.len() as f64 / channels as f64 / input.sample_rate as f64,
    );

    let mut summary = FileSummary::default();
    let mut out_buf: VecDeque<i16> = VecDeque::new();
    let mut state = AgentState::Initializing;
    let mut pending_user: Option<String> = None;
    // While set, the user has stopped and the turn is not yet decided.
    let mut turn_pending_until: Option<Duration> = None;
    let mut user_speaking = false;
    let mut last_activity = Duration::ZERO;
    let mut fatal = None;
    let mut pos = Duration::ZERO;
    let mut offset = 0usize;

    loop {
        // Input: the next 20 ms of the file, then silence.
        let frame = if offset < input.samples.len() {
            let end = (offset + in_per_tick).min(input.samples.len());
            let mut chunk = input.samples[offset..end].to_vec();
            chunk.resize(in_per_tick, 0);
            offset = end;
            AudioFrame::new(chunk, input.sample_rate, input.channels)
        } else {
            AudioFrame::silence(TICK, input.sample_rate, input.channels)
        };
        pos += TICK;
        driver.advance_to(pos);
        if mic_tx.send(frame).await.is_err() {
            break;
        }

        // Output: 20 ms of the agent, or silence.
        let mut underflow = false;
        while out_buf.len() < out_per_tick {
            match reader.try_recv() {
                Some(Playout::Frame(f)) => out_buf.extend(f.samples.iter().copied()),
                Some(Playout::Cleared) => out_buf.clear(),
                None => {
                    underflow = true;
                    break;
                }
            }
        }
        let take = out_per_tick.min(out_buf.len());
        let mut tick: Vec<i16> = out_buf.drain(..take).collect();
        tick.resize(out_per_tick, 0);
        out.write(&tick)?;

        // Let the session react to this frame before deciding the pace.
        tokio::task::yield_now().await;
        while let Ok(event) = events.try_recv() {
            match event {
                SessionEvent::AgentState(s) => {
                    state = s;
                    if s == AgentState::Thinking {
                        turn_pending_until = None;
                    }
                    last_activity = pos;
                }
                SessionEvent::UserSpeaking(speaking) => {
                    user_speaking = speaking;
                    if !speaking {
                        turn_pending_until = Some(pos + max_endpointing + Duration::from_secs(1));
                    }
                    last_activity = pos;
                }
                SessionEvent::UserTurn { text, .. } => {
                    write_line(&mut transcript, &format!("user: {text}\n")).await?;
                    pending_user = Some(text);
                }
                SessionEvent::AgentSpoke {
                    text, interrupted, ..
                } => {
                    let mark = if interrupted { " [interrupted]" } else { "" };
                    write_line(&mut transcript, &format!("agent: {text}{mark}\n")).await?;
                    summary.turns.push((
                        pending_user.take().unwrap_or_default(),
                        text,
                        interrupted,
                    ));
                    last_activity = pos;
                }
                SessionEvent::Metrics(m) => summary.metrics.push(m),
                SessionEvent::Error { stage, error } => {
                    if is_fatal(&error) {
                        fatal.get_or_insert(ConsoleError::Stage { stage, error });
                    } else {
                        warn!(stage, %error, "stage error");
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = fatal.take() {
            let _ = out.finish();
            return Err(e);
        }
        if turn_pending_until.is_some_and(|until| pos >= until) {
            turn_pending_until = None;
        }

        let waiting_on_a_stage = state == AgentState::Thinking
            || (state == AgentState::Speaking && underflow && reader.is_active())
            || turn_pending_until.is_some();
        if waiting_on_a_stage {
            tokio::time::sleep(TICK).await;
        }

        let input_done = offset >= input.samples.len();
        let quiet = !user_speaking
            && turn_pending_until.is_none()
            && matches!(state, AgentState::Listening | AgentState::Idle)
            && out_buf.is_empty()
            && !reader.is_active();
        if input_done
            && ((quiet
                && pos >= last_activity + TRAILING_QUIET
                && pos >= input_len + TRAILING_QUIET)
                || pos >= input_len + MAX_OVERRUN)
        {
            break;
        }
    }

    drop(mic_tx);
    drop(handle);
    let _ = task.await;
    out.finish()?;
    write_line(&mut transcript, "").await?;
    summary.duration = pos;
    summary.wall = wall_start.elapsed();
    Ok(summary)
}

/// Writes and flushes one transcript line (or just flushes, given "").
async fn write_line<W: AsyncWrite + Unpin>(out: &mut W, line: &str) -> Result<(), ConsoleError> {
    let io = |source| ConsoleError::Io {
        context: "writing the transcript".into(),
        source,
    };
    out.write_all(line.as_bytes()).await.map_err(io)?;
    out.flush().await.map_err(io)
}
