//! Device mode: the microphone and the speaker, in real time.
//!
//! Parts and owners:
//! - the cpal streams ([`devices`]): owned here, dropped (stopping their
//!   callbacks) after the pump is stopped;
//! - the pump thread ([`pump`](crate::pump)): owned here through [`Pump`], stopped and
//!   joined on every exit path;
//! - the session task: ends when its handle (dropped here) is gone and its
//!   microphone channel (owned by the pump) closes; awaited before returning;
//! - the display ([`display`](crate::display)): plain text, written by this task.
//!
//! Device callbacks and the pump report failures on one bounded channel; the
//! first failure ends the run with an error naming the device.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::playout::playout;
use agent::session::{self, AudioIo, SessionEvent, SessionOptions, Stages, TurnMetrics};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::devices::{self, DeviceStats};
use crate::display::Display;
use crate::pump::{Meters, Pump, PumpConfig, PumpIo, PumpSummary};
use crate::{ConsoleError, is_fatal};

/// Ring capacities: room for hiccups, not a target (the pump keeps the
/// output ring at [`OUTPUT_TARGET`] and drains the input ring every 2 ms).
const RING_MS: u32 = 200;

/// Agent audio queued ahead of the speaker's device buffer: one output
/// period and a 10 ms block of margin.
const OUTPUT_TARGET: Duration = Duration::from_millis(30);

/// Display refresh.
const REFRESH: Duration = Duration::from_millis(100);

pub struct DeviceOptions {
    /// Device names (as `--list-devices` shows them); `None`: the default.
    pub input_device: Option<String>,
    pub output_device: Option<String>,
    pub echo_cancellation: bool,
    /// A stereo WAV: microphone left, agent right, 16 kHz.
    pub record: Option<PathBuf>,
    /// A terminal status line, or plain lines.
    pub tty: bool,
}

/// What happened, for callers and tests.
#[derive(Debug, Default)]
pub struct DeviceSummary {
    pub input: String,
    pub output: String,
    pub audio: PumpSummary,
    pub metrics: Vec<TurnMetrics>,
}

impl DeviceSummary {
    /// The buffering report printed at exit.
    pub fn buffering_line(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let a = &self.audio;
        format!(
            "audio buffering, input to output: mean {:.1} ms, max {:.1} ms (input device {:.1} + input ring {:.1} + output ring {:.1} + output device {:.1}); {} blocks, {} dropped, {} input overrun frames, {} output underrun frames, {} device xruns, {} passing device errors, longest pump gap {:.1} ms, echo guard {:.1} s",
            ms(a.mean_buffering),
            ms(a.max_buffering),
            ms(a.input_device),
            ms(a.input_ring),
            ms(a.output_ring),
            ms(a.output_device),
            a.blocks,
            a.dropped_blocks,
            a.input_overruns,
            a.output_underruns,
            a.xruns,
            a.backend_errors,
            ms(a.max_pump_gap),
            a.guarded.as_secs_f64()
        )
    }
}

/// Opened devices, handed back from the blocking thread that opened them.
struct Opened {
    input: devices::OpenStream,
    output: devices::OpenStream,
    mic: rtrb::Consumer<f32>,
    speaker: devices::OutputRings,
}

/// Runs until `shutdown` resolves (Ctrl-C) or something fails.
pub async fn run<W, S>(
    stages: Stages,
    options: SessionOptions,
    devices_opts: DeviceOptions,
    mut out: W,
    shutdown: S,
) -> Result<DeviceSummary, ConsoleError>
where
    W: AsyncWrite + Unpin,
    S: Future<Output = ()>,
{
    let stats = Arc::new(DeviceStats::default());
    let (err_tx, mut err_rx) = mpsc::channel::<String>(8);

    // Opening devices talks to the audio server: keep it off the runtime.
    let open = {
        let stats = stats.clone();
        let err_tx = err_tx.clone();
        let input_name = devices_opts.input_device.clone();
        let output_name = devices_opts.output_device.clone();
        tokio::task::spawn_blocking(move || -> Result<Opened, ConsoleError> {
            let (output, speaker) = devices::open_output(
                output_name.as_deref(),
                RING_MS,
                stats.clone(),
                err_tx.clone(),
            )?;
            let (input, mic) = devices::open_input(input_name.as_deref(), RING_MS, stats, err_tx)?;
            Ok(Opened {
                input,
                output,
                mic,
                speaker,
            })
        })
    };
    let opened = open.await.map_err(|e| ConsoleError::Device {
        what: "the audio devices".into(),
        reason: format!("opening them failed: {e}"),
    })??;
    let Opened {
        input,
        output,
        mic,
        speaker,
    } = opened;

    let mut summary = DeviceSummary {
        input: format!(
            "{} ({} Hz, {} ch, {})",
            input.name, input.sample_rate, input.channels, input.format
        ),
        output: format!(
            "{} ({} Hz, {} ch, {})",
            output.name, output.sample_rate, output.channels, output.format
        ),
        ..Default::default()
    };
    let mut display = Display::new(devices_opts.tty);
    write_out(
        &mut out,
        &format!(
            "microphone: {}\nspeaker: {}\necho cancellation: {}\n{}",
            summary.input,
            summary.output,
            if devices_opts.echo_cancellation {
                "on"
            } else {
                "off"
            },
            if devices_opts.tty {
                "Talk to the agent; Ctrl-C to quit.\n"
            } else {
                ""
            }
        ),
    )
    .await?;

    let (writer, control, reader) = playout(output.sample_rate, 64);
    // 500 ms of 10 ms blocks: the session reads far faster than that.
    let (mic_tx, mic_rx) = mpsc::channel(50);
    let meters = Arc::new(Meters::default());
    let pump = Pump::spawn(
        PumpConfig {
            input_rate: input.sample_rate,
            output_rate: output.sample_rate,
            output_target: OUTPUT_TARGET,
            echo_cancellation: devices_opts.echo_cancellation,
            record: devices_opts.record.clone(),
        },
        PumpIo {
            mic,
            speaker: speaker.to_play,
            played: speaker.played,
            agent: reader,
            session: mic_tx,
            stats: stats.clone(),
            meters: meters.clone(),
            errors: err_tx.clone(),
        },
    )
    .map_err(|source| ConsoleError::Io {
        context: "starting the audio thread".into(),
        source,
    })?;
    drop(err_tx);

    let (handle, mut events, task) = session::start(
        stages,
        options,
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );

    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let mut failure = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(reason) = err_rx.recv() => {
                failure = Some(ConsoleError::Device { what: "audio".into(), reason });
                break;
            }
            event = events.recv() => {
                let Some(event) = event else {
                    failure = Some(ConsoleError::SessionEnded);
                    break;
                };
                let text = display.event(&event);
                write_out(&mut out, &text).await?;
                match event {
                    SessionEvent::Error { stage, error } if is_fatal(&error) => {
                        failure = Some(ConsoleError::Stage { stage, error });
                    }
                    SessionEvent::Metrics(m) => summary.metrics.push(m),
                    _ => {}
                }
                if failure.is_some() {
                    break;
                }
            }
            _ = refresh.tick() => {
                let text = display.meters(meters.mic_dbfs(), meters.buffering());
                write_out(&mut out, &text).await?;
            }
        }
    }

    // Stop in order: the session (its reply stops pushing audio), the pump
    // (finishing the recording), then the device callbacks.
    drop(handle);
    let pump_summary = tokio::task::spawn_blocking(move || pump.stop())
        .await
        .unwrap_or_default();
    drop(events);
    let _ = task.await;
    let _ = tokio::task::spawn_blocking(move || drop((input, output))).await;
    summary.audio = pump_summary;
    write_out(&mut out, &display.finish()).await?;
    write_out(&mut out, &format!("{}\n", summary.buffering_line())).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

async fn write_out<W: AsyncWrite + Unpin>(out: &mut W, text: &str) -> Result<(), ConsoleError> {
    if text.is_empty() {
        return Ok(());
    }
    let io = |source| ConsoleError::Io {
        context: "writing to the terminal".into(),
        source,
    };
    out.write_all(text.as_bytes()).await.map_err(io)?;
    out.flush().await.map_err(io)
}
