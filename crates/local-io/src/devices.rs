//! The machine's audio devices through cpal: listing them, choosing one by
//! name, and opening an input and an output stream whose callbacks only move
//! samples between the device and lock-free ring buffers.
//!
//! Callbacks run on the audio backend's threads. They never block, never
//! allocate and never touch the async runtime: the input callback down-mixes
//! to mono f32 straight into an SPSC ring ([`rtrb`]); the output callback
//! copies mono f32 out of another ring into every channel, filling silence
//! when the ring runs dry. Counters and latencies go out through atomics.
//!
//! One file (~620 lines): it is all of the crate's cpal, so no other module
//! touches the audio backend or its sample formats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample, StreamConfig};
use tokio::sync::mpsc;

use crate::ConsoleError;

/// Device periods asked for (the backend may round them). Input: 10 ms, the
/// pump's block. Output: 20 ms, so the audio server holds 40 ms of ours: with
/// 20 ms, a client late under load made the server play silence now and
/// then, which shifts the echo away from the reference the canceller has and
/// let the agent hear itself. (The pump's output ring must stay deeper than
/// the output period, or every callback would find it short.)
const INPUT_PERIOD: Duration = Duration::from_millis(10);
pub const OUTPUT_PERIOD: Duration = Duration::from_millis(20);

/// Counters and measurements the callbacks publish.
pub struct DeviceStats {
    /// The origin of the start times below.
    pub epoch: Instant,
    /// Input frames lost because the input ring was full.
    pub input_overruns: AtomicU64,
    /// Output frames played as silence because the output ring was empty
    /// while something was due (counted only while the agent speaks would
    /// need more state; this counts every empty callback frame after the
    /// first fill).
    pub output_underruns: AtomicU64,
    /// Glitches the backend reported (over- and underruns of its buffer).
    pub input_xruns: AtomicU64,
    pub output_xruns: AtomicU64,
    /// Backend errors that passed (see [`BACKEND_ERRORS_TOLERATED`]).
    pub backend_errors: AtomicU64,
    /// When each stream's first sample was captured / will be played, in
    /// µs after [`DeviceStats::epoch`] (0: not yet): the two sample clocks'
    /// common origin, which lines the speaker's samples up with the
    /// microphone's for the echo canceller.
    pub input_start_us: AtomicU64,
    pub output_start_us: AtomicU64,
    /// Capture → callback delay the backend reports, in µs.
    pub input_device_latency_us: AtomicU32,
    /// Callback → playback delay the backend reports, in µs.
    pub output_device_latency_us: AtomicU32,
}

impl Default for DeviceStats {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            input_overruns: AtomicU64::new(0),
            output_underruns: AtomicU64::new(0),
            input_xruns: AtomicU64::new(0),
            output_xruns: AtomicU64::new(0),
            backend_errors: AtomicU64::new(0),
            input_start_us: AtomicU64::new(0),
            output_start_us: AtomicU64::new(0),
            input_device_latency_us: AtomicU32::new(0),
            output_device_latency_us: AtomicU32::new(0),
        }
    }
}

impl DeviceStats {
    /// µs since the epoch, at least 1 (0 means unset).
    fn since_epoch_us(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_micros() as u64).max(1)
    }
}

/// An open input or output stream and its format.
pub struct OpenStream {
    /// Dropping it stops the device callback.
    pub stream: cpal::Stream,
    pub name: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub format: SampleFormat,
}

fn device_error(what: &str, name: &str, reason: impl ToString) -> ConsoleError {
    ConsoleError::Device {
        what: format!("{what} device \"{name}\""),
        reason: reason.to_string(),
    }
}

/// A device's short id on its host (`default`, `pulse`, `hw:0,0`) and its
/// description.
fn label(device: &cpal::Device) -> (String, String) {
    let id = device
        .id()
        .map(|id| id.id().to_string())
        .unwrap_or_default();
    (id, device.to_string())
}

/// Raises the calling thread's scheduling priority (nice −10) where the
/// process may (root, or an `RLIMIT_NICE` allowance); elsewhere it stays as
/// it is. Audio threads starved by a busy machine drop samples, and every
/// dropout shifts the echo path the canceller has learnt. One syscall, no
/// allocation: callable from a device callback.
pub fn raise_thread_priority() -> bool {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), -10).is_ok()
}

/// Every input and output device with its default format, one per line.
pub fn list() -> Result<String, ConsoleError> {
    let host = cpal::default_host();
    let mut out = format!("audio host: {}\n", host.id().name());
    let default_in = host.default_input_device().map(|d| label(&d).0);
    let default_out = host.default_output_device().map(|d| label(&d).0);
    let devices = host.devices().map_err(|e| ConsoleError::Device {
        what: "the audio devices".into(),
        reason: e.to_string(),
    })?;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for device in devices {
        let (id, description) = label(&device);
        let line = |config: cpal::SupportedStreamConfig, default: &Option<String>| {
            let mark = if default.as_deref() == Some(id.as_str()) {
                " [default]"
            } else {
                ""
            };
            format!(
                "  {id}{mark}: {description} ({} Hz, {} ch, {})",
                config.sample_rate(),
                config.channels(),
                config.sample_format()
            )
        };
        if let Ok(config) = device.default_input_config() {
            inputs.push(line(config, &default_in));
        }
        if let Ok(config) = device.default_output_config() {
            outputs.push(line(config, &default_out));
        }
    }
    for (title, lines) in [("input devices", inputs), ("output devices", outputs)] {
        out.push_str(title);
        out.push_str(":\n");
        if lines.is_empty() {
            out.push_str("  (none)\n");
        }
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn display_name(device: &cpal::Device) -> String {
    match label(device) {
        (id, description) if id.is_empty() => description,
        (id, description) => format!("{id}: {description}"),
    }
}

/// Finds both devices and a format for each without opening them: the
/// cheap check that runs before the models load.
pub fn probe(input: Option<&str>, output: Option<&str>) -> Result<(), ConsoleError> {
    for (direction, name) in [(Direction::Input, input), (Direction::Output, output)] {
        let device = find(direction, name)?;
        choose_config(direction, &device, &display_name(&device))?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// The named device (exact name first, then a unique case-insensitive
/// substring), or the default one.
fn find(direction: Direction, name: Option<&str>) -> Result<cpal::Device, ConsoleError> {
    let host = cpal::default_host();
    let what = direction.as_str();
    let Some(wanted) = name else {
        let device = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return device.ok_or_else(|| ConsoleError::NoDevice { what: what.into() });
    };
    let devices = host.devices().map_err(|e| device_error(what, wanted, e))?;
    let capable: Vec<(String, String, cpal::Device)> = devices
        .filter(|d| match direction {
            Direction::Input => d.default_input_config().is_ok(),
            Direction::Output => d.default_output_config().is_ok(),
        })
        .map(|d| {
            let (id, description) = label(&d);
            (id, description, d)
        })
        .collect();
    if let Some((_, _, d)) = capable
        .iter()
        .find(|(id, description, _)| id == wanted || description == wanted)
    {
        return Ok(d.clone());
    }
    let lower = wanted.to_lowercase();
    let mut matching: Vec<&(String, String, cpal::Device)> = capable
        .iter()
        .filter(|(id, description, _)| {
            id.to_lowercase().contains(&lower) || description.to_lowercase().contains(&lower)
        })
        .collect();
    match matching.len() {
        1 => Ok(matching.remove(0).2.clone()),
        0 => Err(device_error(
            what,
            wanted,
            format!(
                "no such {what} device (--list-devices shows the {} there are)",
                capable.len()
            ),
        )),
        _ => Err(device_error(
            what,
            wanted,
            format!(
                "ambiguous: matches {}",
                matching
                    .iter()
                    .map(|(id, _, _)| format!("\"{id}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The stream config to open: the device's default rate and channels, a
/// sample format we convert (f32, i16, i32, u16), a short period when the
/// device allows it.
fn choose_config(
    direction: Direction,
    device: &cpal::Device,
    name: &str,
) -> Result<(StreamConfig, SampleFormat, bool), ConsoleError> {
    let what = direction.as_str();
    let default = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .map_err(|e| device_error(what, name, e))?;
    let rate = default.sample_rate();
    let channels = default.channels();
    let supported = |f: SampleFormat| matches!(f, SampleFormat::F32 | SampleFormat::I16);
    let mut format = default.sample_format();
    if !supported(format) && !matches!(format, SampleFormat::I32 | SampleFormat::U16) {
        // Look for the same rate and channels in a format we convert.
        let configs: Vec<cpal::SupportedStreamConfigRange> = match direction {
            Direction::Input => device.supported_input_configs().map(|c| c.collect()),
            Direction::Output => device.supported_output_configs().map(|c| c.collect()),
        }
        .map_err(|e| device_error(what, name, e))?;
        format = configs
            .iter()
            .filter(|c| {
                c.channels() == channels
                    && c.min_sample_rate() <= rate
                    && rate <= c.max_sample_rate()
            })
            .map(|c| c.sample_format())
            .find(|f| supported(*f))
            .ok_or_else(|| {
                device_error(
                    what,
                    name,
                    format!("sample format {} is not supported", default.sample_format()),
                )
            })?;
    }
    let period_ms = match direction {
        Direction::Input => INPUT_PERIOD,
        Direction::Output => OUTPUT_PERIOD,
    }
    .as_millis() as u64;
    let period = (rate as u64 * period_ms / 1000) as u32;
    let fixed = match default.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } => *min <= period && period <= *max,
        cpal::SupportedBufferSize::Unknown => true,
    };
    let config = StreamConfig {
        channels,
        sample_rate: rate,
        buffer_size: if fixed {
            cpal::BufferSize::Fixed(period)
        } else {
            cpal::BufferSize::Default
        },
    };
    Ok((config, format, fixed))
}

/// Backend errors tolerated before the stream counts as failed: the
/// PulseAudio ALSA plugin answers `EIO` for a moment while it re-creates its
/// stream after an xrun, and cpal goes on after it.
const BACKEND_ERRORS_TOLERATED: u64 = 50;

/// Whether a stream error is a passing glitch (counted) rather than a failure.
fn is_glitch(e: &cpal::Error, xruns: &AtomicU64, backend_errors: &AtomicU64) -> bool {
    match e.kind() {
        cpal::ErrorKind::Xrun => {
            xruns.fetch_add(1, Ordering::Relaxed);
            true
        }
        cpal::ErrorKind::DeviceChanged | cpal::ErrorKind::RealtimeDenied => true,
        cpal::ErrorKind::BackendError => {
            backend_errors.fetch_add(1, Ordering::Relaxed) < BACKEND_ERRORS_TOLERATED
        }
        _ => false,
    }
}

/// Builds a stream with `build` (falling back to the backend's own period
/// when a fixed one is refused) and starts it.
fn start<T>(
    direction: Direction,
    dev_name: String,
    config: StreamConfig,
    format: SampleFormat,
    fixed: bool,
    build: impl Fn(StreamConfig) -> Result<(cpal::Stream, T), cpal::Error>,
) -> Result<(OpenStream, T), ConsoleError> {
    let what = match direction {
        Direction::Input => "input",
        Direction::Output => "output",
    };
    let (stream, ends) = match build(config) {
        Ok(s) => s,
        // Some backends refuse a fixed period they advertised: take theirs.
        Err(_) if fixed => build(StreamConfig {
            buffer_size: cpal::BufferSize::Default,
            ..config
        })
        .map_err(|e| device_error(what, &dev_name, e))?,
        Err(e) => return Err(device_error(what, &dev_name, e)),
    };
    stream
        .play()
        .map_err(|e| device_error(what, &dev_name, e))?;
    Ok((
        OpenStream {
            stream,
            name: dev_name,
            sample_rate: config.sample_rate,
            channels: config.channels,
            format,
        },
        ends,
    ))
}

/// Errors a running stream reports; the console stops on the first.
pub type StreamErrors = mpsc::Sender<String>;

/// Opens the input device: each callback down-mixes to mono f32 into `ring`.
pub fn open_input(
    name: Option<&str>,
    ring_capacity_ms: u32,
    stats: Arc<DeviceStats>,
    errors: StreamErrors,
) -> Result<(OpenStream, rtrb::Consumer<f32>), ConsoleError> {
    let device = find(Direction::Input, name)?;
    let dev_name = display_name(&device);
    let (config, format, fixed) = choose_config(Direction::Input, &device, &dev_name)?;
    let capacity = (config.sample_rate * ring_capacity_ms / 1000) as usize;
    let build = |config: StreamConfig| -> Result<(cpal::Stream, rtrb::Consumer<f32>), cpal::Error> {
        let (producer, consumer) = rtrb::RingBuffer::new(capacity);
        let stream = match format {
            SampleFormat::F32 => {
                input_stream::<f32>(&device, config, producer, stats.clone(), errors.clone())
            }
            SampleFormat::I16 => {
                input_stream::<i16>(&device, config, producer, stats.clone(), errors.clone())
            }
            SampleFormat::I32 => {
                input_stream::<i32>(&device, config, producer, stats.clone(), errors.clone())
            }
            _ => input_stream::<u16>(&device, config, producer, stats.clone(), errors.clone()),
        }?;
        Ok((stream, consumer))
    };
    start(Direction::Input, dev_name, config, format, fixed, build)
}

fn input_stream<T>(
    device: &cpal::Device,
    config: StreamConfig,
    mut ring: rtrb::Producer<f32>,
    stats: Arc<DeviceStats>,
    errors: StreamErrors,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = config.channels.max(1) as usize;
    let err_stats = stats.clone();
    let mut boosted = false;
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], info: &cpal::InputCallbackInfo| {
            if !boosted {
                boosted = true;
                raise_thread_priority();
            }
            let ts = info.timestamp();
            let latency = ts.callback.checked_duration_since(ts.capture);
            if let Some(d) = latency {
                stats
                    .input_device_latency_us
                    .store(d.as_micros() as u32, Ordering::Relaxed);
            }
            if stats.input_start_us.load(Ordering::Relaxed) == 0 {
                let captured = Instant::now()
                    .checked_sub(latency.unwrap_or_default())
                    .unwrap_or(stats.epoch);
                stats
                    .input_start_us
                    .store(stats.since_epoch_us(captured), Ordering::Relaxed);
            }
            let frames = data.len() / channels;
            let room = ring.slots().min(frames);
            if room < frames {
                stats
                    .input_overruns
                    .fetch_add((frames - room) as u64, Ordering::Relaxed);
            }
            if let Ok(chunk) = ring.write_chunk_uninit(room) {
                let scale = 1.0 / channels as f32;
                chunk.fill_from_iter(
                    data.chunks_exact(channels).map(|frame| {
                        frame.iter().map(|&s| f32::from_sample(s)).sum::<f32>() * scale
                    }),
                );
            }
        },
        move |e: cpal::Error| {
            // A glitch is counted; the rest end the console (a full channel
            // means an error is already waiting to be reported).
            if is_glitch(&e, &err_stats.input_xruns, &err_stats.backend_errors) {
                return;
            }
            let _ = errors.try_send(format!("input stream: {e}"));
        },
        None,
    )
}

/// The output device's rings: what to play, and what was played.
pub struct OutputRings {
    /// Mono f32 at the device rate, filled by the pump.
    pub to_play: rtrb::Producer<f32>,
    /// Exactly what each callback played (silence included where `to_play`
    /// ran dry): the echo canceller's reference, in the device's own time.
    pub played: rtrb::Consumer<f32>,
}

/// Opens the output device: each callback plays mono f32 from one ring on
/// every channel and copies what it played to another.
pub fn open_output(
    name: Option<&str>,
    ring_capacity_ms: u32,
    stats: Arc<DeviceStats>,
    errors: StreamErrors,
) -> Result<(OpenStream, OutputRings), ConsoleError> {
    let device = find(Direction::Output, name)?;
    let dev_name = display_name(&device);
    let (config, format, fixed) = choose_config(Direction::Output, &device, &dev_name)?;
    let capacity = (config.sample_rate * ring_capacity_ms / 1000) as usize;
    let build = |config: StreamConfig| -> Result<(cpal::Stream, OutputRings), cpal::Error> {
        let (to_play, from_pump) = rtrb::RingBuffer::new(capacity);
        let (to_pump, played) = rtrb::RingBuffer::new(capacity);
        let rings = (from_pump, to_pump);
        let stream = match format {
            SampleFormat::F32 => {
                output_stream::<f32>(&device, config, rings, stats.clone(), errors.clone())
            }
            SampleFormat::I16 => {
                output_stream::<i16>(&device, config, rings, stats.clone(), errors.clone())
            }
            SampleFormat::I32 => {
                output_stream::<i32>(&device, config, rings, stats.clone(), errors.clone())
            }
            _ => output_stream::<u16>(&device, config, rings, stats.clone(), errors.clone()),
        }?;
        Ok((stream, OutputRings { to_play, played }))
    };
    start(Direction::Output, dev_name, config, format, fixed, build)
}

/// Writes `value` into slot `at` of a chunk; returns how many slots were
/// written (0 once the chunk is full).
fn write_one(chunk: &mut rtrb::chunks::WriteChunk<'_, f32>, at: usize, value: f32) -> usize {
    let (a, b) = chunk.as_mut_slices();
    let slot = if at < a.len() {
        a.get_mut(at)
    } else {
        b.get_mut(at - a.len())
    };
    match slot {
        Some(slot) => {
            *slot = value;
            1
        }
        None => 0,
    }
}

fn output_stream<T>(
    device: &cpal::Device,
    config: StreamConfig,
    (mut ring, mut played): (rtrb::Consumer<f32>, rtrb::Producer<f32>),
    stats: Arc<DeviceStats>,
    errors: StreamErrors,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = config.channels.max(1) as usize;
    let err_stats = stats.clone();
    let mut started = false;
    let mut boosted = false;
    device.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], info: &cpal::OutputCallbackInfo| {
            if !boosted {
                boosted = true;
                raise_thread_priority();
            }
            let ts = info.timestamp();
            let latency = ts.playback.checked_duration_since(ts.callback);
            if let Some(d) = latency {
                stats
                    .output_device_latency_us
                    .store(d.as_micros() as u32, Ordering::Relaxed);
            }
            if stats.output_start_us.load(Ordering::Relaxed) == 0 {
                let played = Instant::now() + latency.unwrap_or_default();
                stats
                    .output_start_us
                    .store(stats.since_epoch_us(played), Ordering::Relaxed);
            }
            let frames = data.len() / channels;
            let available = ring.slots().min(frames);
            // What is played goes to `played` too (dropped if the pump
            // lags that far: the canceller then misses a moment of echo).
            let mut copy = played.write_chunk(frames.min(played.slots())).ok();
            let mut copied = 0;
            let mut frames_out = data.chunks_exact_mut(channels);
            if let Ok(chunk) = ring.read_chunk(available) {
                started |= available > 0;
                let (a, b) = chunk.as_slices();
                for (&sample, frame) in a.iter().chain(b).zip(frames_out.by_ref()) {
                    let sample = sample.clamp(-1.0, 1.0);
                    frame.fill(T::from_sample(sample));
                    if let Some(c) = copy.as_mut() {
                        copied += write_one(c, copied, sample);
                    }
                }
                chunk.commit_all();
            }
            for frame in frames_out {
                frame.fill(T::EQUILIBRIUM);
                if let Some(c) = copy.as_mut() {
                    copied += write_one(c, copied, 0.0);
                }
            }
            if let Some(c) = copy {
                c.commit(copied);
            }
            if started && available < frames {
                stats
                    .output_underruns
                    .fetch_add((frames - available) as u64, Ordering::Relaxed);
            }
        },
        move |e: cpal::Error| {
            // A glitch is counted; the rest end the console (a full channel
            // means an error is already waiting to be reported).
            if is_glitch(&e, &err_stats.output_xruns, &err_stats.backend_errors) {
                return;
            }
            let _ = errors.try_send(format!("output stream: {e}"));
        },
        None,
    )
}
