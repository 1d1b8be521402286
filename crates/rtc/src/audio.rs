//! Audio in and out: PCM frames, the Opus codec, the real-time pacer of a published
//! track and the decoder of a subscribed one.
//!
//! Publishing: [`LocalAudioTrack::capture_frame`] queues PCM (bounded: it waits while
//! the queue is full, so a producer faster than real time is slowed to real time);
//! one pacer task per track takes 20 ms per slot of a fixed 20 ms grid (see
//! `pacer.rs`: no drift, short stalls caught up, long ones skipped), encodes it to
//! Opus and hands it to the RTP sender. [`LocalAudioTrack::clear_queue`] drops
//! everything queued at once (interruptions). RTP timestamps are the slots' due times
//! on a 48 kHz clock, so they follow the wall clock like a microphone's. Between
//! utterances the track goes quiet, as Opus DTX does: after [`HANGOVER_FRAMES`] of
//! silence (so receivers' decoders fade out on real silence, not concealment) the
//! pacer sends one silent frame every 400 ms (subscribers that learn of a track from
//! its packets need them) and sleeps in between; the next talkspurt starts
//! at once, with the RTP marker bit set and the timestamp jumped over the gap, while
//! sequence numbers stay contiguous (receivers must not take a pause for loss). An
//! agent that listens costs 5 % of a talking one to send. `ConnectOptions::dtx = false` sends
//! silence instead, without a gap.
//!
//! Subscribing: [`RemoteAudioTrack::into_stream`] spawns one decoder task that reads
//! RTP, decodes Opus straight to the caller's sample rate (Opus decodes natively to
//! 8, 12, 16, 24 and 48 kHz, so no resampler is needed) and conceals short losses.
//! When the sender goes quiet (DTX: a browser's microphone, or our own tracks), the
//! stream goes on in silent frames: filled in real time from 60 ms after the last
//! packet (500 ms when that packet carried speech: a stall, not a pause), and on the
//! next packet for whatever part of the gap in RTP time is left, so a consumer
//! counting frames (a VAD) hears the pause as it happens.
//! Frames go out on a bounded channel; when the consumer is slower than real time
//! the newest frames are dropped and counted rather than buffered without bound.
//!
//! Opus is libopus (the reference codec, Debian's `libopus-dev`) through the `opus`
//! crate, linked dynamically via pkg-config. Encoding 20 ms of 48 kHz mono costs
//! 0.1–0.2 ms at the complexities we use and decoding ~40 µs, so both run inline in
//! their tasks: per-stream work is one encode (or decode) per 20 ms, bounded and small.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc_core::rtp;

use crate::RtcError;
use crate::opus_enc::OpusApplication;
use crate::pacer::{AtomicHistogram, CadenceHistogram, Schedule};

/// Sample rates Opus encodes from and decodes to natively.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// Duration of one Opus frame as we send it.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Mono 16-bit PCM audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// Interleaved samples; mono, so one per instant.
    pub data: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl AudioFrame {
    /// Duration of the frame.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.data.len() as f64 / self.sample_rate as f64)
    }
}

fn check_rate(rate: u32) -> Result<(), RtcError> {
    if OPUS_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(RtcError::InvalidArgument(format!(
            "sample rate {rate} Hz: use one of {OPUS_RATES:?} (Opus native rates)"
        )))
    }
}

/// Where the pacer writes encoded frames: the track bound to the current publisher
/// peer connection, its SSRC and negotiated payload type. Replaced by the engine on a
/// full rejoin; `None` while not connected.
#[derive(Clone)]
pub(crate) struct RtpSink {
    pub(crate) track: Arc<TrackLocalStaticRTP>,
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
}

/// A queued frame, tagged with the clear-generation it was captured in.
struct Queued {
    generation: u64,
    samples: Vec<i16>,
}

/// Pacing statistics of a published track, for benchmarks and health.
///
/// A frame *leaves* when the pacer has encoded it and handed it to the RTP sender
/// (when connected; otherwise it is paced and dropped). Its lateness is how long after
/// its slot on the 20 ms grid that was.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacerStats {
    /// Frames paced (encoded, and handed to the RTP sender when connected).
    pub frames_sent: u64,
    /// Frames that carried queued audio (the rest were silence).
    pub frames_with_audio: u64,
    /// Of the frames sent, a quiet (DTX) track's keep-alives: not on the cadence, so
    /// not in the lateness and jitter figures.
    pub keepalive_frames: u64,
    /// Largest lateness of a frame behind its 20 ms grid slot, microseconds.
    pub max_lateness_us: u64,
    /// Sum of lateness, microseconds (divide by `frames_sent` for the mean).
    pub total_lateness_us: u64,
    /// Slots skipped because the pacer was more than 60 ms behind (CPU starvation).
    pub slots_skipped: u64,
    /// Lateness of every frame behind its grid slot.
    pub lateness: CadenceHistogram,
    /// How far each interval between two consecutive frames leaving was from 20 ms
    /// (absolute): the send jitter.
    pub interval_deviation: CadenceHistogram,
}

impl PacerStats {
    /// Frames sent on the 20 ms cadence: all but a quiet track's keep-alives.
    pub fn cadence_frames(&self) -> u64 {
        self.frames_sent.saturating_sub(self.keepalive_frames)
    }
}

#[derive(Default)]
struct SharedStats {
    frames_sent: AtomicU64,
    frames_with_audio: AtomicU64,
    keepalive_frames: AtomicU64,
    max_lateness_us: AtomicU64,
    total_lateness_us: AtomicU64,
    slots_skipped: AtomicU64,
    lateness: AtomicHistogram,
    interval_deviation: AtomicHistogram,
}

/// A published audio track fed with PCM. Dropping every clone stops its pacer.
#[derive(Clone)]
pub struct LocalAudioTrack {
    /// Frames to the pacer; the pacer ends when all senders are gone.
    tx: mpsc::Sender<Queued>,
    generation: Arc<AtomicU64>,
    queued_samples: Arc<AtomicUsize>,
    stats: Arc<SharedStats>,
    sample_rate: u32,
    /// Server-assigned track sid (`TR_…`).
    sid: String,
    name: String,
}

impl std::fmt::Debug for LocalAudioTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAudioTrack")
            .field("sid", &self.sid)
            .field("name", &self.name)
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

impl LocalAudioTrack {
    /// The track sid the server assigned.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The track name given when publishing.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PCM sample rate this track takes.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Queue a frame for playout. Waits while the queue is full (about
    /// 100 ms of audio ahead), so the caller is paced to real time. Cancel-safe:
    /// dropped while waiting, nothing is queued.
    pub async fn capture_frame(&self, frame: AudioFrame) -> Result<(), RtcError> {
        if frame.sample_rate != self.sample_rate {
            return Err(RtcError::InvalidArgument(format!(
                "frame at {} Hz on a track taking {} Hz",
                frame.sample_rate, self.sample_rate
            )));
        }
        if frame.data.is_empty() {
            return Ok(());
        }
        // Wait for room first, and count the samples only once they are certain to be
        // queued: a caller may drop this future while it waits (`select!`, abort).
        // A call already waiting when `clear_queue` runs counts as queued before it.
        let generation = self.generation.load(Ordering::Acquire);
        let permit = self.tx.reserve().await.map_err(|_| RtcError::Closed)?;
        self.queued_samples
            .fetch_add(frame.data.len(), Ordering::Relaxed);
        permit.send(Queued {
            generation,
            samples: frame.data,
        });
        Ok(())
    }

    /// Drop all audio queued so far, at once (an interruption). Frames captured after
    /// this call play normally.
    pub fn clear_queue(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Audio queued and not yet sent.
    pub fn queued_duration(&self) -> Duration {
        let n = self.queued_samples.load(Ordering::Relaxed);
        Duration::from_secs_f64(n as f64 / self.sample_rate as f64)
    }

    /// Pacing statistics so far.
    pub fn stats(&self) -> PacerStats {
        PacerStats {
            frames_sent: self.stats.frames_sent.load(Ordering::Relaxed),
            frames_with_audio: self.stats.frames_with_audio.load(Ordering::Relaxed),
            keepalive_frames: self.stats.keepalive_frames.load(Ordering::Relaxed),
            max_lateness_us: self.stats.max_lateness_us.load(Ordering::Relaxed),
            total_lateness_us: self.stats.total_lateness_us.load(Ordering::Relaxed),
            slots_skipped: self.stats.slots_skipped.load(Ordering::Relaxed),
            lateness: self.stats.lateness.snapshot(),
            interval_deviation: self.stats.interval_deviation.snapshot(),
        }
    }
}

/// Frames of look-ahead between `capture_frame` and the pacer.
const QUEUE_FRAMES: usize = 5;

/// Silent frames sent after the last audio before a track goes quiet (200 ms, as
/// libopus's DTX waits): receivers' decoders fade out on real silence.
pub(crate) const HANGOVER_FRAMES: u32 = 10;

/// While quiet, one silent frame this often, as libopus's DTX does: subscribers
/// that learn of a track from its packets (webrtc-rs, Pion) find it within 400 ms.
const DTX_KEEPALIVE: Duration = Duration::from_millis(400);

/// The RTP clock of Opus (RFC 7587: always 48 kHz, whatever the input rate).
const RTP_CLOCK_HZ: u32 = 48_000;

/// RTP ticks in a 20 ms frame.
const FRAME_TICKS: u32 = RTP_CLOCK_HZ / 50;

/// How a published track is encoded and sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrackConfig {
    pub(crate) complexity: i32,
    pub(crate) application: OpusApplication,
    /// Go quiet between utterances (see the module docs).
    pub(crate) dtx: bool,
}

/// Start the pacer of a new local track. The returned task ends when every
/// [`LocalAudioTrack`] clone is dropped or `stop` fires; its owner (the engine) keeps
/// the handle and aborts it on close.
pub(crate) fn spawn_local_track(
    config: TrackConfig,
    sid: String,
    name: String,
    sample_rate: u32,
    sink: watch::Receiver<Option<RtpSink>>,
) -> Result<(LocalAudioTrack, JoinHandle<()>), RtcError> {
    let (track, pacer) = new_local_track(config, sid, name, sample_rate, sink)?;
    let handle = tokio::spawn(pacer.run());
    Ok((track, handle))
}

fn new_local_track(
    config: TrackConfig,
    sid: String,
    name: String,
    sample_rate: u32,
    sink: watch::Receiver<Option<RtpSink>>,
) -> Result<(LocalAudioTrack, Pacer), RtcError> {
    check_rate(sample_rate)?;
    let encoder =
        crate::opus_enc::Encoder::new(sample_rate, config.complexity, config.application)?;
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let track = LocalAudioTrack {
        tx,
        generation: Arc::new(AtomicU64::new(0)),
        queued_samples: Arc::new(AtomicUsize::new(0)),
        stats: Arc::new(SharedStats::default()),
        sample_rate,
        sid,
        name,
    };
    let pacer = Pacer {
        rx,
        generation: track.generation.clone(),
        queued_samples: track.queued_samples.clone(),
        stats: track.stats.clone(),
        buf: VecDeque::with_capacity(sample_rate as usize / 5),
        buf_generation: 0,
        frame_len: sample_rate as usize / 50,
        encoder,
        dtx: config.dtx,
        sink,
        sequence: rand::random(),
        timestamp_base: rand::random(),
        #[cfg(test)]
        probe: None,
    };
    Ok((track, pacer))
}

/// What the pacer sent in one slot (tests only).
#[cfg(test)]
#[derive(Debug, Clone)]
struct Sent {
    slot: u64,
    /// When the frame left, on tokio's (pausable) clock.
    at: tokio::time::Instant,
    /// RTP timestamp, sequence number and marker bit.
    timestamp: u32,
    sequence: u16,
    marker: bool,
    had_audio: bool,
    /// The encoded packet.
    packet: Vec<u8>,
}

struct Pacer {
    /// Frames from the track handles; closed when they are all dropped.
    rx: mpsc::Receiver<Queued>,
    generation: Arc<AtomicU64>,
    queued_samples: Arc<AtomicUsize>,
    stats: Arc<SharedStats>,
    buf: VecDeque<i16>,
    buf_generation: u64,
    frame_len: usize,
    encoder: crate::opus_enc::Encoder,
    dtx: bool,
    sink: watch::Receiver<Option<RtpSink>>,
    /// Sequence number of the next packet (random start, RFC 3550).
    sequence: u16,
    /// RTP time of the pacer's start (random, RFC 3550).
    timestamp_base: u32,
    /// Tests watch what leaves here (bounded; frames are not held back when full).
    #[cfg(test)]
    probe: Option<mpsc::Sender<Sent>>,
}

impl Pacer {
    /// Send one frame per slot of a fixed 20 ms grid ([`Schedule`]) until every
    /// handle is gone and the queue is drained; with DTX, sleep between utterances.
    ///
    /// The encoder runs inline: one 20 ms frame costs 20–250 µs of CPU (see the crate
    /// docs), once per slot, so each poll of this task is short and bounded. Handing
    /// it to another thread would cost a cross-thread wake per frame, which is more
    /// CPU than it moves.
    async fn run(mut self) {
        let mut pcm = vec![0i16; self.frame_len];
        let mut out = vec![0u8; 1500];
        let origin = tokio::time::Instant::now();
        let mut schedule = Schedule::new(origin);
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut closed = false;
        // Silent frames sent in a row. A track is not quiet until it has sent
        // HANGOVER_FRAMES to a connected sink: the SFU only learns of a track (and
        // offers it to subscribers) from its first RTP packets.
        let mut silent_run = 0;
        let mut talkspurt = true;
        loop {
            let mut keepalive = false;
            if self.dtx && silent_run >= HANGOVER_FRAMES {
                // Quiet: until audio is queued, or the track is bound to a new peer
                // connection (a rejoin), only a keep-alive frame every 400 ms.
                tokio::select! {
                    queued = self.rx.recv() => {
                        let Some(queued) = queued else {
                            return;
                        };
                        if !self.accept(queued) {
                            continue;
                        }
                        silent_run = 0;
                        talkspurt = true;
                    }
                    changed = self.sink.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        silent_run = 0;
                        talkspurt = true;
                    }
                    () = tokio::time::sleep(DTX_KEEPALIVE) => keepalive = true,
                }
                // A new grid from now (a talkspurt starts without waiting for a slot),
                // never before the old grid's next slot: RTP time only moves forward.
                schedule = Schedule::new(tokio::time::Instant::now().max(schedule.next_due()));
                last_sent = None;
            }
            let due = schedule.next_due();
            if tokio::time::Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let slot = schedule.take(tokio::time::Instant::now());
            let had_audio = self.fill(&mut pcm, &mut closed);
            if closed && !had_audio {
                return;
            }
            silent_run = if had_audio {
                0
            } else {
                silent_run.saturating_add(1)
            };
            let n = match self.encoder.encode(&pcm, &mut out) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "opus encode failed; frame skipped");
                    continue;
                }
            };
            // RTP time is the slot's due time: skipped slots and quiet gaps show as
            // a jump in timestamps, not in sequence numbers.
            let elapsed_us = slot.due.saturating_duration_since(origin).as_micros();
            let ticks = elapsed_us * u128::from(RTP_CLOCK_HZ) / 1_000_000;
            let timestamp = self.timestamp_base.wrapping_add(ticks as u32);
            let sequence = self.sequence;
            let marker = std::mem::take(&mut talkspurt);
            // Not connected (yet, or while rejoining): the frame is paced and dropped,
            // and the track does not go quiet.
            let sink = self.sink.borrow_and_update().clone();
            if sink.is_none() {
                silent_run = 0;
            }
            if let Some(sink) = sink {
                let packet = rtp::packet::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker,
                        payload_type: sink.payload_type,
                        sequence_number: sequence,
                        timestamp,
                        ssrc: sink.ssrc,
                        ..Default::default()
                    },
                    payload: Bytes::copy_from_slice(&out[..n]),
                };
                if let Err(e) = sink.track.write_rtp(packet).await {
                    tracing::trace!(error = %e, "rtp write failed (not connected yet?)");
                }
            }
            self.sequence = self.sequence.wrapping_add(1);
            let sent = tokio::time::Instant::now();
            if keepalive {
                // On a grid of its own, so trivially on time: not a cadence sample.
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.keepalive_frames.fetch_add(1, Ordering::Relaxed);
            } else {
                self.record(slot.due, sent, last_sent, slot.skipped, had_audio);
            }
            last_sent = Some(sent);
            #[cfg(test)]
            if let Some(probe) = &self.probe {
                let _ = probe.try_send(Sent {
                    slot: slot.index,
                    at: sent,
                    timestamp,
                    sequence,
                    marker,
                    had_audio,
                    packet: out[..n].to_vec(),
                });
            }
        }
    }

    fn record(
        &self,
        due: tokio::time::Instant,
        sent: tokio::time::Instant,
        last_sent: Option<tokio::time::Instant>,
        skipped: u64,
        had_audio: bool,
    ) {
        let stats = &self.stats;
        let lateness = sent.saturating_duration_since(due);
        let us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        if had_audio {
            stats.frames_with_audio.fetch_add(1, Ordering::Relaxed);
        }
        stats.slots_skipped.fetch_add(skipped, Ordering::Relaxed);
        stats.total_lateness_us.fetch_add(us, Ordering::Relaxed);
        stats.max_lateness_us.fetch_max(us, Ordering::Relaxed);
        stats.lateness.record(lateness);
        if let Some(last) = last_sent {
            let interval = sent.saturating_duration_since(last);
            stats
                .interval_deviation
                .record(interval.abs_diff(FRAME_DURATION));
        }
    }

    /// Empty the buffer if a clear has happened since it was filled; returns the
    /// current clear-generation.
    fn drop_cleared(&mut self) -> u64 {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != self.buf_generation {
            self.queued_samples
                .fetch_sub(self.buf.len(), Ordering::Relaxed);
            self.buf.clear();
            self.buf_generation = generation;
        }
        generation
    }

    /// Take a queued frame into the buffer, unless a clear has dropped it since it was
    /// captured. Returns whether it was kept.
    fn accept(&mut self, q: Queued) -> bool {
        let generation = self.drop_cleared();
        if q.generation != generation {
            self.queued_samples
                .fetch_sub(q.samples.len(), Ordering::Relaxed);
            return false;
        }
        self.buf.extend(q.samples);
        true
    }

    /// Fill `pcm` with the next 20 ms: queued audio, padded with silence. Returns
    /// whether any queued audio went in. Sets `closed` once every handle is gone.
    fn fill(&mut self, pcm: &mut [i16], closed: &mut bool) -> bool {
        self.drop_cleared();
        while self.buf.len() < self.frame_len {
            match self.rx.try_recv() {
                Ok(q) => {
                    self.accept(q);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *closed = true;
                    break;
                }
            }
        }
        let take = self.buf.len().min(self.frame_len);
        for (dst, src) in pcm.iter_mut().zip(self.buf.drain(..take)) {
            *dst = src;
        }
        pcm[take..].fill(0);
        self.queued_samples.fetch_sub(take, Ordering::Relaxed);
        take > 0
    }
}

/// A subscribed remote audio track. Turn it into PCM with [`Self::into_stream`].
pub struct RemoteAudioTrack {
    pub(crate) sid: String,
    pub(crate) participant_identity: String,
    pub(crate) participant_sid: String,
    pub(crate) inner: Arc<dyn TrackRemote>,
}

impl std::fmt::Debug for RemoteAudioTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAudioTrack")
            .field("sid", &self.sid)
            .field("participant_identity", &self.participant_identity)
            .finish()
    }
}

impl RemoteAudioTrack {
    /// The track sid (`TR_…`).
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Identity of the publishing participant.
    pub fn participant_identity(&self) -> &str {
        &self.participant_identity
    }

    /// Sid of the publishing participant.
    pub fn participant_sid(&self) -> &str {
        &self.participant_sid
    }

    /// Decode this track to mono PCM at `sample_rate` (8, 12, 16, 24 or 48 kHz), one
    /// frame per received packet (20 ms from LiveKit clients). Must be called within a
    /// tokio runtime. The decoder task stops when the stream is dropped or the track ends.
    pub fn into_stream(self, sample_rate: u32) -> Result<AudioStream, RtcError> {
        check_rate(sample_rate)?;
        let decoder = opus::Decoder::new(sample_rate, opus::Channels::Mono)?;
        let (tx, rx) = mpsc::channel(STREAM_FRAMES);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(decode_loop(
            self.inner,
            decoder,
            sample_rate,
            tx,
            dropped.clone(),
        ));
        Ok(AudioStream { rx, task, dropped })
    }
}

/// Frames buffered between the decoder and a slow consumer (1 s of 20 ms frames).
const STREAM_FRAMES: usize = 50;

/// Decoded PCM of a remote track. Dropping it stops the decoder task.
pub struct AudioStream {
    rx: mpsc::Receiver<AudioFrame>,
    /// The decoder task, aborted on drop.
    task: JoinHandle<()>,
    dropped: Arc<AtomicU64>,
}

impl AudioStream {
    /// The next frame, or `None` when the track has ended.
    pub async fn recv(&mut self) -> Option<AudioFrame> {
        self.rx.recv().await
    }

    /// Frames dropped because the consumer fell more than a second behind.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures::Stream for AudioStream {
    type Item = AudioFrame;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AudioFrame>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for AudioStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Packets lost in a row that we conceal with Opus PLC; longer gaps are skipped.
const MAX_CONCEALED: u16 = 5;

/// How long past the last packet before a quiet sender's silence is filled in: longer
/// than ordinary network jitter. A DTX sender goes quiet after frames of silence.
const FILL_GRACE: Duration = Duration::from_millis(60);

/// The same when the last packet carried speech: no DTX sender stops mid-word, so the
/// gap is the network or the sender stalling, and its audio is still to come. Filling
/// it with silence would cut the utterance in two.
const STALL_GRACE: Duration = Duration::from_millis(500);

/// Mean absolute sample above which a decoded frame counts as speech (about −45 dBFS);
/// silence and comfort noise stay far below it.
const LOUD_MEAN_ABS: u64 = 150;

/// Silent frames filled in per wake while a sender is quiet (60 ms).
const FILL_BATCH: u32 = 3;

/// Longest RTP-time gap filled with silence when a packet arrives (1 s); the rest of
/// a longer pause was filled in real time while it lasted.
const MAX_GAP_FILL: u32 = 50;

/// What to emit before decoding a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BeforePacket {
    /// Frames to conceal with Opus PLC (packets lost).
    conceal: u16,
    /// Silent frames to insert (a quiet sender's gap in RTP time not yet filled).
    silence: u32,
}

/// The timeline of a subscribed stream (pure): detects loss, duplicates and the gaps a
/// quiet (DTX) sender leaves, so that the decoded PCM keeps pace with the wall clock.
/// Consumers such as a VAD count time in frames; without the silence of a pause they
/// would not see the speaker stop until the next packet.
#[derive(Debug, Default)]
struct Timeline {
    last_seq: Option<u16>,
    /// RTP time the next packet should carry if the sender did not pause.
    expected_ts: Option<u32>,
    /// Silent frames filled in since the last packet.
    filled: u32,
    /// The last decoded packet carried speech.
    last_loud: bool,
}

impl Timeline {
    /// A packet `seq` with RTP time `ts` arrived. `None`: a duplicate or a packet
    /// older than one already decoded; drop it.
    fn on_packet(&mut self, seq: u16, ts: u32) -> Option<BeforePacket> {
        let mut before = BeforePacket {
            conceal: 0,
            silence: 0,
        };
        if let Some(prev) = self.last_seq {
            let gap = seq.wrapping_sub(prev);
            if gap == 0 || gap > u16::MAX / 2 {
                return None;
            }
            let lost = gap - 1;
            let filled = u16::try_from(self.filled).unwrap_or(u16::MAX);
            if lost > 0 && lost <= MAX_CONCEALED {
                before.conceal = lost.saturating_sub(filled);
            } else if lost == 0
                && let Some(expected) = self.expected_ts
            {
                // Contiguous sequence numbers with a jump in RTP time: the sender was
                // quiet. Fill what real time has not filled already.
                let jump = ts.wrapping_sub(expected);
                if jump < u32::MAX / 2 {
                    before.silence = (jump / FRAME_TICKS)
                        .saturating_sub(self.filled)
                        .min(MAX_GAP_FILL);
                }
            }
        }
        self.last_seq = Some(seq);
        self.filled = 0;
        Some(before)
    }

    /// The packet at `ts` decoded to `ticks` of RTP time.
    fn on_decoded(&mut self, ts: u32, ticks: u32, pcm: &[i16]) {
        self.expected_ts = Some(ts.wrapping_add(ticks));
        let sum: u64 = pcm.iter().map(|&x| u64::from(x.unsigned_abs())).sum();
        self.last_loud = sum > LOUD_MEAN_ABS * pcm.len() as u64;
    }

    /// How long to wait for the next packet before filling silence in.
    fn fill_grace(&self) -> Duration {
        if self.last_loud {
            STALL_GRACE
        } else {
            FILL_GRACE
        }
    }

    /// No packet for a while: silent frames to emit now (none before the first packet).
    fn on_quiet(&mut self) -> u32 {
        if self.last_seq.is_none() {
            return 0;
        }
        self.filled = self.filled.saturating_add(FILL_BATCH);
        FILL_BATCH
    }
}

async fn decode_loop(
    track: Arc<dyn TrackRemote>,
    mut decoder: opus::Decoder,
    sample_rate: u32,
    tx: mpsc::Sender<AudioFrame>,
    dropped: Arc<AtomicU64>,
) {
    // 120 ms is the longest Opus packet.
    let mut pcm = vec![0i16; sample_rate as usize * 120 / 1000];
    let frame_len = sample_rate as usize / 50;
    let silence = vec![0i16; frame_len];
    let ticks_per_sample = RTP_CLOCK_HZ / sample_rate;
    let mut timeline = Timeline::default();
    let quiet = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(quiet);
    loop {
        let event = tokio::select! {
            event = track.poll() => event,
            () = &mut quiet => {
                for _ in 0..timeline.on_quiet() {
                    if !emit(&tx, &silence, sample_rate, &dropped) {
                        return;
                    }
                }
                let batch = FRAME_DURATION * FILL_BATCH;
                quiet.as_mut().reset(tokio::time::Instant::now() + batch);
                continue;
            }
        };
        let packet = match event {
            Some(TrackRemoteEvent::OnRtpPacket(p)) => p,
            Some(TrackRemoteEvent::OnEnded) | None => break,
            Some(_) => continue,
        };
        quiet
            .as_mut()
            .reset(tokio::time::Instant::now() + timeline.fill_grace());
        let ts = packet.header.timestamp;
        let Some(before) = timeline.on_packet(packet.header.sequence_number, ts) else {
            continue;
        };
        for _ in 0..before.conceal {
            let n = decoder
                .decode(&[], &mut pcm[..frame_len], false)
                .unwrap_or(0);
            if !emit(&tx, &pcm[..n], sample_rate, &dropped) {
                return;
            }
        }
        for _ in 0..before.silence {
            if !emit(&tx, &silence, sample_rate, &dropped) {
                return;
            }
        }
        if packet.payload.is_empty() {
            continue;
        }
        match decoder.decode(&packet.payload, &mut pcm, false) {
            Ok(n) => {
                timeline.on_decoded(ts, n as u32 * ticks_per_sample, &pcm[..n]);
                if !emit(&tx, &pcm[..n], sample_rate, &dropped) {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "opus decode failed; packet skipped"),
        }
    }
}

/// Send one frame; false when the consumer is gone.
fn emit(tx: &mpsc::Sender<AudioFrame>, pcm: &[i16], sample_rate: u32, dropped: &AtomicU64) -> bool {
    if pcm.is_empty() {
        return true;
    }
    let frame = AudioFrame {
        data: pcm.to_vec(),
        sample_rate,
    };
    match tx.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert!(check_rate(48_000).is_ok());
        assert!(check_rate(16_000).is_ok());
        assert!(check_rate(44_100).is_err());
    }

    #[test]
    fn opus_roundtrip_keeps_a_tone() {
        let rate = 48_000;
        let mut enc =
            opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut dec = opus::Decoder::new(16_000, opus::Channels::Mono).unwrap();
        let mut out = vec![0u8; 1500];
        let mut pcm = vec![0i16; 16_000 * 120 / 1000];
        let mut energy = 0f64;
        for f in 0..50 {
            let frame: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (f * 960 + i) as f64 / rate as f64;
                    (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            let n = enc.encode(&frame, &mut out).unwrap();
            let m = dec.decode(&out[..n], &mut pcm, false).unwrap();
            assert_eq!(m, 320, "20 ms at 16 kHz");
            if f > 5 {
                energy += pcm[..m].iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / m as f64;
            }
        }
        let rms = (energy / 44.0).sqrt();
        assert!(rms > 3000.0 && rms < 8000.0, "rms {rms}");
    }

    const MS: Duration = Duration::from_millis(1);

    /// A pacer without DTX and with no RTP sink, its frames reported on a probe; not
    /// yet started. It sends from the start, silence included.
    fn probed() -> (LocalAudioTrack, Pacer, mpsc::Receiver<Sent>) {
        let (track, pacer, sent, _sink) = probed_with(false);
        (track, pacer, sent)
    }

    /// A pacer whose sink is an unbound track (writes fail quietly, as before a
    /// connection completes, but the pacer counts as connected). Keep the sender: the
    /// pacer ends when it is dropped.
    fn probed_with(
        dtx: bool,
    ) -> (
        LocalAudioTrack,
        Pacer,
        mpsc::Receiver<Sent>,
        watch::Sender<Option<RtpSink>>,
    ) {
        let unbound = webrtc_core::media_stream::MediaStreamTrack::new(
            "s".into(),
            "t".into(),
            "t".into(),
            webrtc_core::rtp_transceiver::rtp_sender::RtpCodecKind::Audio,
            vec![],
        );
        let sink = RtpSink {
            track: Arc::new(TrackLocalStaticRTP::new(unbound)),
            ssrc: 1,
            payload_type: 111,
        };
        let (sink_tx, sink_rx) = watch::channel(Some(sink));
        let config = TrackConfig {
            complexity: 5,
            application: OpusApplication::LowDelay,
            dtx,
        };
        let (track, mut pacer) =
            new_local_track(config, "TR_x".into(), "t".into(), 48_000, sink_rx).unwrap();
        let (tx, rx) = mpsc::channel(10_000);
        pacer.probe = Some(tx);
        (track, pacer, rx, sink_tx)
    }

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (i as f64 * 0.0576).sin()) as i16)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn frames_leave_at_exactly_n_times_20ms() {
        let (track, pacer, mut sent) = probed();
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(pacer.run());
        let first = sent.recv().await.unwrap();
        assert!(first.marker, "the first packet starts a talkspurt");
        for n in 1..100u32 {
            let f = sent.recv().await.unwrap();
            assert_eq!(f.slot, u64::from(n));
            assert_eq!(f.at - t0, 20 * MS * n, "slot {n}");
            assert_eq!(f.timestamp.wrapping_sub(first.timestamp), 960 * n);
            assert_eq!(f.sequence, first.sequence.wrapping_add(n as u16));
            assert!(!f.marker);
            assert!(!f.had_audio);
        }
        let s = track.stats();
        assert_eq!(s.frames_sent, 100);
        assert_eq!(s.max_lateness_us, 0);
        assert_eq!(s.interval_deviation.count(), 99);
        assert_eq!(
            s.interval_deviation.percentile(100.0),
            Some(crate::pacer::CADENCE_BUCKET)
        );
        drop(track);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_wake_bursts_then_stays_on_the_grid() {
        let (track, pacer, mut sent) = probed();
        let t0 = tokio::time::Instant::now();
        let _task = tokio::spawn(pacer.run());
        let first = sent.recv().await.unwrap();
        assert_eq!(first.at, t0);
        // The pacer sleeps until 20 ms; it is woken only at 55 ms.
        tokio::time::advance(55 * MS).await;
        let late: Vec<Sent> = vec![sent.recv().await.unwrap(), sent.recv().await.unwrap()];
        assert_eq!(late.iter().map(|f| f.slot).collect::<Vec<_>>(), [1, 2]);
        assert!(late.iter().all(|f| f.at == t0 + 55 * MS));
        let rtp_times: Vec<u32> = late
            .iter()
            .map(|f| f.timestamp.wrapping_sub(first.timestamp))
            .collect();
        assert_eq!(
            rtp_times,
            [960, 1920],
            "RTP time of the slots, not of the wake"
        );
        // Not 75, 95, … (a ticker restarted from the late wake): the grid holds.
        for n in 3..10u32 {
            let f = sent.recv().await.unwrap();
            assert_eq!((f.slot, f.at - t0), (u64::from(n), 20 * MS * n));
        }
        let s = track.stats();
        assert_eq!(s.max_lateness_us, 35_000, "slot 1 left at 55 ms");
        assert_eq!(s.slots_skipped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_stall_skips_slots_and_marks_the_gap_in_rtp_time() {
        let (track, pacer, mut sent) = probed();
        let t0 = tokio::time::Instant::now();
        let _task = tokio::spawn(pacer.run());
        let first = sent.recv().await.unwrap();
        tokio::time::advance(1005 * MS).await;
        let f = sent.recv().await.unwrap();
        assert_eq!((f.slot, f.at - t0), (50, 1005 * MS));
        assert_eq!(
            f.timestamp.wrapping_sub(first.timestamp),
            50 * 960,
            "49 skipped slots show in RTP time"
        );
        assert_eq!(f.sequence, first.sequence.wrapping_add(1), "not as loss");
        let f = sent.recv().await.unwrap();
        assert_eq!((f.slot, f.at - t0), (51, 1020 * MS));
        assert_eq!(f.timestamp.wrapping_sub(first.timestamp), 51 * 960);
        assert_eq!(track.stats().slots_skipped, 49);
    }

    #[tokio::test(start_paused = true)]
    async fn clear_queue_drops_everything_queued() {
        let (track, pacer, mut sent) = probed();
        // One second of audio in 10 ms frames; the queue holds 5 frames, so the
        // producer is paced to real time and stays ~50 ms ahead of the pacer.
        let producer = {
            let track = track.clone();
            tokio::spawn(async move {
                let frame = tone(480);
                for _ in 0..100 {
                    let data = frame.clone();
                    if track
                        .capture_frame(AudioFrame {
                            data,
                            sample_rate: 48_000,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        tokio::task::yield_now().await;
        let task = tokio::spawn(pacer.run());
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; 960];
        let mut rms = |packet: &[u8]| {
            let n = decoder.decode(packet, &mut pcm, false).unwrap();
            (pcm[..n].iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64).sqrt()
        };
        // 200 ms in: every frame so far carried audio, and more is queued.
        for i in 0..10 {
            let f = sent.recv().await.unwrap();
            assert!(f.had_audio);
            let level = rms(&f.packet);
            assert!(i == 0 || level > 4000.0, "frame {i}: rms {level}");
        }
        assert!(
            track.queued_duration() >= 40 * MS,
            "{:?}",
            track.queued_duration()
        );
        producer.abort();
        let _ = producer.await;
        track.clear_queue();
        // The very next slot is silence, and so is everything after it. Decoded, the
        // first frame still holds the encoder's look-ahead of the tone; then CELT's
        // band energies, predicted from frame to frame, fall about 3 dB a frame from
        // 25 dB below the tone (rms ~5700) to nothing.
        let mut last = f64::MAX;
        for i in 0..20 {
            let f = sent.recv().await.unwrap();
            assert!(!f.had_audio);
            let level = rms(&f.packet);
            if i > 0 {
                assert!(
                    level < 400.0 && level <= last,
                    "frame {i} after the clear: rms {level}"
                );
            }
            if i > 8 {
                assert!(level < 20.0, "frame {i} after the clear: rms {level}");
            }
            last = level;
        }
        assert_eq!(track.queued_duration(), Duration::ZERO);
        assert_eq!(track.stats().frames_with_audio, 10);
        // Audio captured after the clear plays normally.
        track
            .capture_frame(AudioFrame {
                data: tone(960),
                sample_rate: 48_000,
            })
            .await
            .unwrap();
        assert!(sent.recv().await.unwrap().had_audio);
        // Wrong rate is refused.
        assert!(
            track
                .capture_frame(AudioFrame {
                    data: vec![0; 160],
                    sample_rate: 8_000
                })
                .await
                .is_err()
        );
        drop(track);
        tokio::time::sleep(100 * MS).await;
        assert!(task.is_finished(), "pacer stops when the handles are gone");
    }

    #[tokio::test(start_paused = true)]
    async fn dtx_goes_quiet_after_the_hangover_and_resumes_on_the_wall_clock() {
        let (track, pacer, mut sent, sink) = probed_with(true);
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(pacer.run());
        let capture = |n: usize| {
            let track = track.clone();
            async move {
                track
                    .capture_frame(AudioFrame {
                        data: tone(n),
                        sample_rate: 48_000,
                    })
                    .await
                    .unwrap()
            }
        };
        // A new track first sends the hangover's silence (the SFU learns of a track
        // from its RTP), then a keep-alive frame every 400 ms.
        for i in 0..HANGOVER_FRAMES {
            let f = sent.recv().await.unwrap();
            assert_eq!(f.at - t0, 20 * MS * i);
            assert!(!f.had_audio);
        }
        let hangover_end = t0 + 20 * MS * HANGOVER_FRAMES;
        for k in 1..=2u32 {
            let f = sent.recv().await.unwrap();
            assert_eq!(f.at - hangover_end, 400 * MS * k - 20 * MS);
            assert!(!f.had_audio && !f.marker);
        }
        tokio::time::sleep(100 * MS).await;
        assert!(sent.try_recv().is_err(), "quiet between keep-alives");
        // 60 ms of audio: sent at once, then 10 frames of silence, then nothing.
        let talk_at = tokio::time::Instant::now();
        capture(3 * 960).await;
        let mut talk = Vec::new();
        for _ in 0..3 + HANGOVER_FRAMES {
            talk.push(sent.recv().await.unwrap());
        }
        let first = &talk[0];
        assert!(first.marker && first.had_audio);
        assert_eq!(first.at, talk_at, "the talkspurt does not wait for a slot");
        for (i, f) in talk.iter().enumerate() {
            assert_eq!(f.at - first.at, 20 * MS * i as u32);
            assert_eq!(f.sequence, first.sequence.wrapping_add(i as u16));
            assert_eq!(f.marker, i == 0);
            assert_eq!(f.had_audio, i < 3, "frame {i}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sent.try_recv().is_err(), "quiet after the hangover");
        // The next talkspurt: marker set, sequence contiguous, RTP time jumped by the
        // wall-clock gap.
        let talk_at = tokio::time::Instant::now();
        capture(960).await;
        let f = sent.recv().await.unwrap();
        assert!(f.marker && f.had_audio);
        assert_eq!(f.at, talk_at);
        assert_eq!(f.sequence, first.sequence.wrapping_add(13));
        let ms = (f.at - first.at).as_millis() as u32;
        assert_eq!(f.timestamp.wrapping_sub(first.timestamp), ms * 48);
        let stats = track.stats();
        assert_eq!(stats.frames_sent, u64::from(2 * HANGOVER_FRAMES + 2 + 4));
        assert_eq!(stats.keepalive_frames, 2);
        assert_eq!(stats.lateness.count(), stats.frames_sent - 2);
        assert_eq!(track.stats().slots_skipped, 0, "a quiet gap is not a stall");
        for _ in 0..HANGOVER_FRAMES {
            sent.recv().await.unwrap();
        }
        // A new peer connection (a rejoin) hears the track at once, though quiet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sent.try_recv().is_err());
        sink.send_modify(|_| {});
        let f = sent.recv().await.unwrap();
        assert!(f.marker && !f.had_audio);
        drop(track);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            task.is_finished(),
            "the pacer stops when the handles are gone"
        );
    }

    #[test]
    fn timeline_fills_a_quiet_senders_gap_and_conceals_loss() {
        let none = BeforePacket {
            conceal: 0,
            silence: 0,
        };
        let mut t = Timeline::default();
        assert_eq!(t.on_quiet(), 0, "nothing to fill before the first packet");
        // Talking: contiguous packets 20 ms apart.
        assert_eq!(t.on_packet(10, 1000), Some(none));
        t.on_decoded(1000, 960, &[0; 960]);
        assert_eq!(t.on_packet(11, 1960), Some(none));
        t.on_decoded(1960, 960, &[0; 960]);
        // A duplicate and a late packet are dropped.
        assert_eq!(t.on_packet(11, 1960), None);
        assert_eq!(t.on_packet(9, 40), None);
        // Two packets lost: concealed.
        assert_eq!(
            t.on_packet(14, 1960 + 3 * 960),
            Some(BeforePacket {
                conceal: 2,
                silence: 0
            })
        );
        t.on_decoded(4840, 960, &[0; 960]);
        // The sender goes quiet for 500 ms (next sequence number, RTP time 25 frames
        // on): 24 frames of silence, less the 2 batches real time already filled.
        assert_eq!(t.on_quiet(), FILL_BATCH);
        assert_eq!(t.on_quiet(), FILL_BATCH);
        assert_eq!(
            t.on_packet(15, 5800 + 24 * 960),
            Some(BeforePacket {
                conceal: 0,
                silence: 24 - 2 * FILL_BATCH
            })
        );
        t.on_decoded(5800 + 24 * 960, 960, &[0; 960]);
        // A pause filled entirely in real time adds nothing on arrival, and a very
        // long one is capped.
        for _ in 0..40 {
            t.on_quiet();
        }
        let next = 5800 + 25 * 960;
        assert_eq!(t.on_packet(16, next + 100 * 960), Some(none));
        t.on_decoded(next + 100 * 960, 960, &[0; 960]);
        let next = next + 101 * 960;
        assert_eq!(
            t.on_packet(17, next + 500 * 960),
            Some(BeforePacket {
                conceal: 0,
                silence: MAX_GAP_FILL
            })
        );
    }

    #[test]
    fn a_stall_mid_speech_is_not_taken_for_a_pause() {
        let mut t = Timeline::default();
        t.on_packet(1, 0);
        // Speech (a tone at about −20 dBFS): the next gap is waited out longer.
        let speech: Vec<i16> = (0..960)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        t.on_decoded(0, 960, &speech);
        assert_eq!(t.fill_grace(), STALL_GRACE);
        // Silence, or a DTX sender's comfort noise: a gap is filled in soon.
        t.on_packet(2, 960);
        t.on_decoded(960, 960, &[40; 960]);
        assert_eq!(t.fill_grace(), FILL_GRACE);
    }
}
