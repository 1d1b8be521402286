//! The audio pump: one thread between the device rings and the session.
//!
//! Every couple of milliseconds it
//! 1. tops the output ring up to its target depth with 10 ms blocks of the
//!    agent's speech (from the [`PlayoutReader`]) or silence, and takes what
//!    the output callback reports it played (silence of an underrun included),
//!    at 16 kHz, as the echo canceller's render reference — so a late pump
//!    shifts the echo and its reference alike; the reference goes to the
//!    canceller in step with the microphone by the two streams' sample clocks;
//! 2. takes every complete 10 ms of microphone audio from the input ring,
//!    resamples it to 16 kHz, removes the echo, and sends it to the session
//!    with `try_send` (a full channel drops the block and counts it: the pump
//!    never waits on the runtime);
//! 3. updates the level meters and the buffering measurement, and writes the
//!    recording (microphone left, agent right) when one was asked for.
//!
//! The output ring is filled to a fixed depth rather than paced by the input,
//! so the speaker's clock sets the output rate and the two devices' clocks may
//! drift without the queue growing.
//!
//! The thread is owned by [`Pump`]: [`Pump::stop`] (or dropping it) sets the
//! stop flag and joins it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use agent::audio::{AudioFrame, Resampler};
use agent::playout::{Playout, PlayoutReader};
use tokio::sync::mpsc;

use crate::devices::{DeviceStats, StreamErrors};
use crate::echo::{BLOCK, ECHO_RATE, EchoCanceller};
use crate::wav::StereoWavWriter;

/// Blocks (10 ms each) left out of the buffering figures while the devices
/// start and their buffers settle.
const SETTLE_BLOCKS: u64 = 100;

/// Reference (16 kHz samples) that may wait for its microphone block before
/// it goes to the canceller anyway: 300 ms.
const RENDER_BACKLOG: usize = BLOCK * 30;

/// The glitch guard. A pump that ran late, or a speaker that ran dry, moves
/// the echo relative to the reference the canceller has learnt, and until it
/// re-converges (about a second) the agent's voice leaks through, enough for
/// the VAD and the STT to take it for the user. (A speaker ring that ran dry
/// is in the reference too; but on PulseAudio such a run came with server
/// side glitches the reference cannot show: guarding only pump stalls and
/// long underruns let the echo through in half the device tests on a loaded
/// machine, guarding every underrun in none of them.) So after such a glitch, for
/// [`GUARD_BLOCKS`] and only while the agent is audible, the canceller's
/// output is muted. Muted, not attenuated: the VAD and the STT are nearly
/// level-blind, and a leak 30 dB down still made turns of the agent's words.
/// The price: a user talking over the agent in that second is not heard, and
/// only on a machine busy enough to glitch (or in the agent's first seconds).
const GLITCH_GAP: Duration = Duration::from_millis(40);
const GUARD_BLOCKS: u32 = 100;
/// The guard also holds during the canceller's first convergence: the
/// agent's first 2 s of audible speech in the session.
const CONVERGE_BLOCKS: u32 = 200;
/// Reference level above which the agent counts as audible, and how long
/// (blocks) it stays so after: its echo outlasts it by the path's delay.
const FAR_ACTIVE_DBFS: f32 = -50.0;
const FAR_HOLD_BLOCKS: u32 = 30;

/// How often the pump looks at the rings.
const POLL: Duration = Duration::from_millis(2);

/// What the pump shows the display, updated every block.
#[derive(Default)]
pub struct Meters {
    /// Microphone RMS level of the last 10 ms (before echo cancellation), dBFS, as f32 bits.
    mic_dbfs: AtomicU32,
    /// The agent's output level of the last 10 ms, dBFS, as f32 bits.
    agent_dbfs: AtomicU32,
    /// Input-to-output buffering of the last block, µs.
    buffering_us: AtomicU32,
}

impl Meters {
    pub fn mic_dbfs(&self) -> f32 {
        f32::from_bits(self.mic_dbfs.load(Ordering::Relaxed))
    }

    pub fn agent_dbfs(&self) -> f32 {
        f32::from_bits(self.agent_dbfs.load(Ordering::Relaxed))
    }

    pub fn buffering(&self) -> Duration {
        Duration::from_micros(self.buffering_us.load(Ordering::Relaxed) as u64)
    }
}

pub struct PumpConfig {
    pub input_rate: u32,
    pub output_rate: u32,
    /// Depth the output ring is kept at.
    pub output_target: Duration,
    pub echo_cancellation: bool,
    pub record: Option<PathBuf>,
}

/// Measured over the run.
#[derive(Clone, Debug, Default)]
pub struct PumpSummary {
    /// Input-to-output buffering (input device + input ring + output ring +
    /// output device), averaged over every 10 ms block after the first second.
    pub mean_buffering: Duration,
    pub max_buffering: Duration,
    /// Its parts, averaged.
    pub input_device: Duration,
    pub input_ring: Duration,
    pub output_ring: Duration,
    pub output_device: Duration,
    /// 10 ms blocks sent to the session, and dropped because it lagged.
    pub blocks: u64,
    pub dropped_blocks: u64,
    pub input_overruns: u64,
    pub output_underruns: u64,
    /// Glitches the devices reported.
    pub xruns: u64,
    pub backend_errors: u64,
    /// The longest the pump went without looking at the rings (it sleeps 2 ms).
    pub max_pump_gap: Duration,
    /// Microphone time the glitch guard held down.
    pub guarded: Duration,
}

/// The pump thread's owner.
pub struct Pump {
    stop: Arc<AtomicBool>,
    /// Joined by [`Pump::stop`] or on drop.
    thread: Option<JoinHandle<PumpSummary>>,
}

pub struct PumpIo {
    pub mic: rtrb::Consumer<f32>,
    pub speaker: rtrb::Producer<f32>,
    /// What the speaker actually played: the echo reference.
    pub played: rtrb::Consumer<f32>,
    pub agent: PlayoutReader,
    pub session: mpsc::Sender<AudioFrame>,
    pub stats: Arc<DeviceStats>,
    pub meters: Arc<Meters>,
    /// Where a failure of the canceller or the recording is reported.
    pub errors: StreamErrors,
}

impl Pump {
    pub fn spawn(config: PumpConfig, io: PumpIo) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("console-audio".into())
            .spawn(move || run(config, io, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (finishing the recording) and returns what it measured.
    pub fn stop(mut self) -> PumpSummary {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn level_dbfs(block: &[f32]) -> f32 {
    if block.is_empty() {
        return -100.0;
    }
    let mean = block.iter().map(|&s| s * s).sum::<f32>() / block.len() as f32;
    let rms = mean.sqrt();
    if rms <= 1e-5 {
        -100.0
    } else {
        20.0 * rms.log10()
    }
}

fn to_i16(s: f32) -> i16 {
    (s * 32768.0)
        .round()
        .clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

fn to_f32(s: i16) -> f32 {
    s as f32 / 32768.0
}

/// The recording's writer thread: file writes can block (a disk busy with
/// write-back held a writing thread for a tenth of a second), and the pump
/// must not. Blocks go over a bounded channel (5 s); a full one drops them.
struct Recorder {
    /// Dropped by [`Recorder::finish`], which ends the thread.
    tx: Option<std::sync::mpsc::SyncSender<[[i16; BLOCK]; 2]>>,
    /// Joined by [`Recorder::finish`].
    thread: Option<JoinHandle<Result<(), crate::ConsoleError>>>,
    dropped: u64,
}

impl Recorder {
    fn spawn(mut writer: StereoWavWriter) -> Result<Self, crate::ConsoleError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<[[i16; BLOCK]; 2]>(500);
        let thread = std::thread::Builder::new()
            .name("console-record".into())
            .spawn(move || {
                while let Ok([left, right]) = rx.recv() {
                    writer.write(&left, &right)?;
                }
                writer.finish()
            })
            .map_err(|source| crate::ConsoleError::Io {
                context: "starting the recording thread".into(),
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            dropped: 0,
        })
    }

    fn push(&mut self, block: [[i16; BLOCK]; 2]) {
        if let Some(tx) = &self.tx
            && tx.try_send(block).is_err()
        {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Result<(), crate::ConsoleError> {
        drop(self.tx.take());
        let result = match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(crate::ConsoleError::Io {
                context: "the recording thread".into(),
                source: std::io::Error::other("it panicked"),
            }),
            None => Ok(()),
        };
        if self.dropped > 0 {
            tracing::warn!(
                blocks = self.dropped,
                "recording: blocks dropped (disk too slow)"
            );
        }
        result
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Running sums for [`PumpSummary`].
#[derive(Default)]
struct Tally {
    count: u64,
    total_us: u64,
    max_us: u64,
    parts_us: [u64; 4],
}

fn run(config: PumpConfig, mut io: PumpIo, stop: &AtomicBool) -> PumpSummary {
    crate::devices::raise_thread_priority();
    let in_block = (config.input_rate / 100).max(1) as usize;
    let out_block = (config.output_rate / 100).max(1) as usize;
    let out_capacity = io.speaker.buffer().capacity();
    let out_target = ((config.output_rate as u128 * config.output_target.as_micros() / 1_000_000)
        as usize)
        .clamp(out_block, out_capacity);
    let mut mic_resampler = Resampler::new(config.input_rate, ECHO_RATE);
    let mut render_resampler = Resampler::new(config.output_rate, ECHO_RATE);

    let report = |errors: &StreamErrors, message: String| {
        let _ = errors.try_send(message);
    };
    let mut aec = if config.echo_cancellation {
        match EchoCanceller::new() {
            Ok(a) => Some(a),
            Err(e) => {
                report(&io.errors, e.to_string());
                return PumpSummary::default();
            }
        }
    } else {
        None
    };
    let mut recorder = match &config.record {
        Some(path) => match StereoWavWriter::create(path, ECHO_RATE).and_then(Recorder::spawn) {
            Ok(r) => Some(r),
            Err(e) => {
                report(&io.errors, format!("recording: {e}"));
                return PumpSummary::default();
            }
        },
        None => None,
    };

    // Scratch space, reused: nothing below allocates once warmed up, except
    // the frame handed to the session.
    let mut pending_agent: VecDeque<i16> = VecDeque::with_capacity(out_block * 8);
    let mut out_i16: Vec<i16> = Vec::with_capacity(out_block);
    let mut out_f32: Vec<f32> = Vec::with_capacity(out_block);
    let mut render16: Vec<i16> = Vec::with_capacity(BLOCK * 2);
    let mut played_i16: Vec<i16> = Vec::with_capacity(out_capacity);
    let mut render_fifo: VecDeque<i16> = VecDeque::with_capacity(BLOCK * 16);
    let mut record_fifo: VecDeque<i16> = VecDeque::with_capacity(BLOCK * 16);
    let mut in_i16: Vec<i16> = Vec::with_capacity(in_block);
    let mut mic16: Vec<i16> = Vec::with_capacity(BLOCK * 2);
    let mut capture_fifo: VecDeque<i16> = VecDeque::with_capacity(BLOCK * 16);
    let mut block_f32 = vec![0f32; BLOCK];
    let mut clean = vec![0f32; BLOCK];
    let mut render_block = vec![0f32; BLOCK];

    // 16 kHz samples of each stream taken so far, for timing the reference.
    let mut captured_samples = 0u64;
    let mut rendered_samples = 0u64;
    // The glitch guard: blocks left to hold the output down, blocks since
    // the agent was last audible in the reference, and the counts they watch.
    let mut guard_blocks = 0u32;
    let mut far_active_blocks = 0u32;
    let mut last_underruns = 0u64;
    let mut guarded_blocks = 0u64;
    let mut far_heard_blocks = 0u32;
    let mut tally = Tally::default();
    let mut blocks_seen = 0u64;
    let mut blocks = 0u64;
    let mut dropped = 0u64;
    // The latest reading of the input ring's depth when a block was taken.
    let mut input_ring_frames = 0usize;

    let mut last_turn = std::time::Instant::now();
    let mut max_gap = Duration::ZERO;
    'pump: while !stop.load(Ordering::SeqCst) {
        let now = std::time::Instant::now();
        let gap = now - last_turn;
        if blocks_seen > SETTLE_BLOCKS {
            max_gap = max_gap.max(gap);
        }
        last_turn = now;
        let underruns = io.stats.output_underruns.load(Ordering::Relaxed);
        if gap > GLITCH_GAP || underruns > last_underruns {
            // The echo path may just have moved under the canceller.
            guard_blocks = GUARD_BLOCKS;
        }
        last_underruns = underruns;
        // 1. The speaker: keep the output ring at its target depth.
        while out_capacity - io.speaker.slots() + out_block <= out_target {
            while pending_agent.len() < out_block {
                match io.agent.try_recv() {
                    Some(Playout::Frame(f)) => {
                        let ch = f.channels.max(1) as usize;
                        if ch == 1 {
                            pending_agent.extend(f.samples.iter().copied());
                        } else {
                            pending_agent.extend(f.samples.chunks_exact(ch).map(|s| {
                                (s.iter().map(|&v| v as i32).sum::<i32>() / ch as i32) as i16
                            }));
                        }
                    }
                    Some(Playout::Cleared) => pending_agent.clear(),
                    None => break,
                }
            }
            let n = out_block.min(pending_agent.len());
            out_i16.clear();
            out_i16.extend(pending_agent.drain(..n));
            out_i16.resize(out_block, 0);
            out_f32.clear();
            out_f32.extend(out_i16.iter().map(|&s| to_f32(s)));
            if let Ok(chunk) = io.speaker.write_chunk_uninit(out_block) {
                chunk.fill_from_iter(out_f32.iter().copied());
            }
            io.meters
                .agent_dbfs
                .store(level_dbfs(&out_f32).to_bits(), Ordering::Relaxed);
        }

        // What the speaker played since: the echo reference, and the
        // recording's agent side, in the speaker's time.
        let played = io.played.slots();
        if played > 0
            && let Ok(chunk) = io.played.read_chunk(played)
        {
            played_i16.clear();
            played_i16.extend(chunk.into_iter().map(to_i16));
            render16.clear();
            render_resampler.process_into(&played_i16, &mut render16);
            render_fifo.extend(render16.iter().copied());
            if recorder.is_some() {
                record_fifo.extend(render16.iter().copied());
            }
        }

        // 2. The microphone: every complete 10 ms of input.
        while io.mic.slots() >= in_block {
            let Ok(chunk) = io.mic.read_chunk(in_block) else {
                break;
            };
            in_i16.clear();
            in_i16.extend(chunk.into_iter().map(to_i16));
            input_ring_frames = io.mic.slots();
            mic16.clear();
            mic_resampler.process_into(&in_i16, &mut mic16);
            capture_fifo.extend(mic16.iter().copied());
        }

        while capture_fifo.len() >= BLOCK {
            for (dst, s) in block_f32.iter_mut().zip(capture_fifo.drain(..BLOCK)) {
                *dst = to_f32(s);
            }
            // The reference blocks played before this microphone block
            // ends go in first, timed by the two sample clocks from their
            // measured starts — not by when the pump got to them, which
            // jitters with the pump's scheduling and moves the echo under
            // the canceller. A reference piling up (clock drift, a stream
            // that never reported its start) goes in regardless.
            let in_start = io.stats.input_start_us.load(Ordering::Relaxed);
            let out_start = io.stats.output_start_us.load(Ordering::Relaxed);
            let captured_until_us =
                in_start + (captured_samples + BLOCK as u64) * 1_000_000 / ECHO_RATE as u64;
            captured_samples += BLOCK as u64;
            while render_fifo.len() >= BLOCK {
                let rendered_at_us = out_start + rendered_samples * 1_000_000 / ECHO_RATE as u64;
                let due = in_start == 0
                    || out_start == 0
                    || rendered_at_us < captured_until_us
                    || render_fifo.len() > RENDER_BACKLOG;
                if !due {
                    break;
                }
                rendered_samples += BLOCK as u64;
                for (dst, s) in render_block.iter_mut().zip(render_fifo.drain(..BLOCK)) {
                    *dst = to_f32(s);
                }
                if level_dbfs(&render_block) > FAR_ACTIVE_DBFS {
                    far_active_blocks = FAR_HOLD_BLOCKS;
                    far_heard_blocks += 1;
                }
                if let Some(aec) = &mut aec
                    && let Err(e) = aec.render(&render_block)
                {
                    report(&io.errors, e.to_string());
                    break 'pump;
                }
            }
            match &mut aec {
                Some(aec) => {
                    if let Err(e) = aec.capture(&block_f32, &mut clean) {
                        report(&io.errors, e.to_string());
                        break 'pump;
                    }
                    // Right after a glitch, while the agent is audible, the
                    // canceller may be re-converging: hold its output down.
                    let converging = far_heard_blocks < CONVERGE_BLOCKS;
                    if (guard_blocks > 0 || converging) && far_active_blocks > 0 {
                        clean.fill(0.0);
                        guarded_blocks += 1;
                    }
                }
                None => clean.copy_from_slice(&block_f32),
            }
            guard_blocks = guard_blocks.saturating_sub(1);
            far_active_blocks = far_active_blocks.saturating_sub(1);
            io.meters
                .mic_dbfs
                .store(level_dbfs(&block_f32).to_bits(), Ordering::Relaxed);

            if let Some(rec) = &mut recorder {
                // Agent audio lines up with the microphone block by block;
                // if the output ran ahead (clock drift), drop its oldest.
                let excess = record_fifo.len().saturating_sub(BLOCK * 20);
                record_fifo.drain(..excess);
                let n = BLOCK.min(record_fifo.len());
                let mut block = [[0i16; BLOCK]; 2];
                for (dst, &s) in block[0].iter_mut().zip(&block_f32) {
                    *dst = to_i16(s);
                }
                for (dst, s) in block[1].iter_mut().zip(record_fifo.drain(..n)) {
                    *dst = s;
                }
                rec.push(block);
            }

            let frame = AudioFrame::new(
                clean.iter().map(|&s| to_i16(s)).collect::<Vec<i16>>(),
                ECHO_RATE,
                1,
            );
            match io.session.try_send(frame) {
                Ok(()) => blocks += 1,
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => break 'pump,
            }

            // Buffering now, from microphone to session and session to speaker.
            let parts_us = [
                io.stats.input_device_latency_us.load(Ordering::Relaxed) as u64,
                (input_ring_frames + in_block / 2) as u64 * 1_000_000
                    / config.input_rate.max(1) as u64,
                (out_capacity - io.speaker.slots()) as u64 * 1_000_000
                    / config.output_rate.max(1) as u64,
                io.stats.output_device_latency_us.load(Ordering::Relaxed) as u64,
            ];
            let total: u64 = parts_us.iter().sum();
            io.meters
                .buffering_us
                .store(total.min(u32::MAX as u64) as u32, Ordering::Relaxed);
            blocks_seen += 1;
            if blocks_seen <= SETTLE_BLOCKS {
                continue;
            }
            tally.count += 1;
            tally.total_us += total;
            tally.max_us = tally.max_us.max(total);
            for (sum, part) in tally.parts_us.iter_mut().zip(parts_us) {
                *sum += part;
            }
        }

        std::thread::sleep(POLL);
    }

    if let Some(rec) = recorder
        && let Err(e) = rec.finish()
    {
        report(&io.errors, format!("recording: {e}"));
    }
    let mean = |sum: u64| Duration::from_micros(sum / tally.count.max(1));
    PumpSummary {
        mean_buffering: mean(tally.total_us),
        max_buffering: Duration::from_micros(tally.max_us),
        input_device: mean(tally.parts_us[0]),
        input_ring: mean(tally.parts_us[1]),
        output_ring: mean(tally.parts_us[2]),
        output_device: mean(tally.parts_us[3]),
        blocks,
        dropped_blocks: dropped,
        input_overruns: io.stats.input_overruns.load(Ordering::Relaxed),
        output_underruns: io.stats.output_underruns.load(Ordering::Relaxed),
        xruns: io.stats.input_xruns.load(Ordering::Relaxed)
            + io.stats.output_xruns.load(Ordering::Relaxed),
        backend_errors: io.stats.backend_errors.load(Ordering::Relaxed),
        max_pump_gap: max_gap,
        guarded: Duration::from_millis(guarded_blocks * 10),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use agent::playout::playout;

    use super::*;
    use crate::echo::tests::babble_at_rate;

    const RATE: u32 = 48_000;

    /// What the session heard, per 10 ms block: (seconds into the run, RMS).
    struct Heard(Vec<(f64, f64)>);

    impl Heard {
        fn rms_between(&self, from: f64, to: f64) -> f64 {
            let v: Vec<f64> = self
                .0
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, r)| r * r)
                .collect();
            (v.iter().sum::<f64>() / v.len().max(1) as f64).sqrt()
        }
    }

    /// Runs the pump against a simulated sound card: every 10 ms the
    /// "speaker" plays what the pump queued and reports it played, and the
    /// "microphone" hears it 30 ms later at half level. The agent says 5 s of
    /// speech-like noise. Returns what the session heard and the speaker's
    /// output level while the agent spoke.
    fn simulate(echo_cancellation: bool) -> (Heard, f64, PumpSummary) {
        let block = (RATE / 100) as usize;
        let (mut mic_tx, mic) = rtrb::RingBuffer::new(RATE as usize / 5);
        let (speaker, mut speaker_rx) = rtrb::RingBuffer::new(RATE as usize / 5);
        let (mut played_tx, played) = rtrb::RingBuffer::new(RATE as usize / 5);
        let (writer, control, reader) = playout(RATE, 1024);
        let (session_tx, mut session_rx) = mpsc::channel(2000);
        let (errors, _errors_rx) = mpsc::channel(8);
        let stats = Arc::new(DeviceStats::default());
        let pump = Pump::spawn(
            PumpConfig {
                input_rate: RATE,
                output_rate: RATE,
                output_target: Duration::from_millis(30),
                echo_cancellation,
                record: None,
            },
            PumpIo {
                mic,
                speaker,
                played,
                agent: reader,
                session: session_tx,
                stats: stats.clone(),
                meters: Arc::new(Meters::default()),
                errors,
            },
        )
        .expect("pump");

        // The agent's reply, queued at once (the queue is deep enough).
        let speech = babble_at_rate(5.0, 3, 0.3, 4.0, RATE);
        let utterance = control.begin();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for chunk in speech.chunks(block * 2) {
                let pcm: Vec<i16> = chunk.iter().map(|&s| to_i16(s)).collect();
                writer
                    .push(utterance, 0, AudioFrame::new(pcm, RATE, 1), String::new())
                    .await
                    .expect("push");
            }
        });

        // The sound card, on the clock.
        let start = Instant::now();
        let us = |at: Instant| at.duration_since(stats.epoch).as_micros() as u64 + 1;
        stats.input_start_us.store(us(start), Ordering::Relaxed);
        stats.output_start_us.store(us(start), Ordering::Relaxed);
        let mut delay_line: VecDeque<f32> = std::iter::repeat_n(0.0, block * 3).collect();
        let mut speaker_energy = 0.0f64;
        let mut speaker_n = 0usize;
        for tick in 1..=650u32 {
            let mut out = vec![0f32; block];
            let n = speaker_rx.slots().min(block);
            if let Ok(chunk) = speaker_rx.read_chunk(n) {
                for (dst, s) in out.iter_mut().zip(chunk) {
                    *dst = s;
                }
            }
            if (100..500).contains(&tick) {
                speaker_energy += out.iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
                speaker_n += block;
            }
            if let Ok(chunk) = played_tx.write_chunk_uninit(block) {
                chunk.fill_from_iter(out.iter().copied());
            }
            delay_line.extend(out.iter().map(|&s| s * 0.5));
            if let Ok(chunk) = mic_tx.write_chunk_uninit(block) {
                chunk.fill_from_iter(delay_line.drain(..block));
            }
            let due = start + Duration::from_millis(10 * tick as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let summary = pump.stop();
        let mut heard = Vec::new();
        let mut t = 0.0;
        while let Ok(frame) = session_rx.try_recv() {
            assert_eq!((frame.sample_rate, frame.channels), (ECHO_RATE, 1));
            let rms = (frame
                .samples
                .iter()
                .map(|&s| (s as f64).powi(2))
                .sum::<f64>()
                / frame.samples.len().max(1) as f64)
                .sqrt();
            heard.push((t, rms));
            t += frame.duration().as_secs_f64();
        }
        (
            Heard(heard),
            (speaker_energy / speaker_n.max(1) as f64).sqrt(),
            summary,
        )
    }

    #[test]
    fn agent_speech_reaches_the_speaker_and_its_echo_is_removed_from_the_microphone() {
        let (on, speaker_rms, summary) = simulate(true);
        let (off, _, _) = simulate(false);
        // The speaker played the agent (0.3 babble at full level).
        assert!(speaker_rms > 0.05, "speaker RMS {speaker_rms}");
        // Without cancellation the session hears the echo; with it, past the
        // first-convergence guard (2 s) and with no glitch, far less.
        let echo = off.rms_between(3.0, 5.0);
        let left = on.rms_between(3.0, 5.0);
        assert!(echo > 1000.0, "echo RMS without cancellation {echo}");
        let reduction = 20.0 * (echo / left.max(1.0)).log10();
        // The guard must have let go before the window measured (a glitch
        // renews it): what is measured is the canceller alone.
        assert!(
            summary.guarded < Duration::from_millis(2900),
            "guard held {:?} (longest pump gap {:?})",
            summary.guarded,
            summary.max_pump_gap
        );
        assert!(
            reduction > 20.0,
            "echo reduced by {reduction:.1} dB ({echo:.0} -> {left:.0}); {summary:?}"
        );
    }
}
