//! Publishing: a local audio track fed with PCM, paced onto the wire as Opus.
//!
//! [`LocalAudioTrack::capture_frame`] queues PCM (bounded: it waits while the queue
//! is full, so a producer faster than real time is slowed to real time); one pacer
//! task per track takes 20 ms per slot of a fixed 20 ms grid (`pacer.rs`: no drift,
//! short stalls caught up, long ones skipped), encodes it to Opus and hands it to the
//! RTP sender. [`LocalAudioTrack::clear_queue`] drops everything queued at once
//! (interruptions). RTP timestamps are the slots' due times on a 48 kHz clock, so
//! they follow the wall clock like a microphone's.
//!
//! Between utterances the track goes quiet, as Opus DTX does: after
//! [`HANGOVER_FRAMES`] of silence (so receivers' decoders fade out on real silence,
//! not concealment) the pacer sends one silent frame every 400 ms (subscribers that
//! learn of a track from its packets need them) and sleeps in between; the next
//! talkspurt starts at once, with the RTP marker bit set and the timestamp jumped
//! over the gap, while sequence numbers stay contiguous (receivers must not take a
//! pause for loss). `ConnectOptions::dtx = false` sends silence instead, without a
//! gap.
//!
//! ## The encoder
//!
//! libopus through the `opus` crate (0.3.1, which has the encoder controls we set:
//! application, complexity, in-band FEC, signal type). Published tracks are CELT
//! only ([`OpusApplication::LowDelay`], libopus's `RESTRICTED_LOWDELAY`) at
//! complexity [`DEFAULT_COMPLEXITY`]: the encoder is a stream's largest single cost,
//! and against VoIP mode (SILK or hybrid, what libwebrtc uses for speech) this takes
//! a third of its CPU, makes every listener's decode cheaper, and cuts 4 ms of codec
//! delay (2.5 ms look-ahead instead of 6.5 ms), at the same ~50 kbit/s and with a
//! waveform closer to the input (the measurements: `examples/opus_cost.rs`). What it
//! gives up is SILK's in-band FEC, which covers a lost packet from the next one; the
//! publisher still answers NACKs, so on a lossy uplink a lost packet costs one round
//! trip instead. [`OpusApplication::Voip`] (FEC on) is there for lossy links or
//! bitrates far below 32 kbit/s, where SILK sounds better.
//!
//! The encoder runs inline in the pacer task: one 20 ms frame costs 20–250 µs of CPU
//! at the complexities we use, once per slot, which is less than a cross-thread
//! hand-off per frame would add.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc_core::rtp;

use crate::RtcError;
use crate::frame::{AudioFrame, FRAME_DURATION, RTP_CLOCK_HZ, check_rate};
use crate::pacer::{AtomicHistogram, CadenceHistogram, Schedule};

/// Encoder complexity used for published tracks (0–10; libopus default 10).
pub(crate) const DEFAULT_COMPLEXITY: i32 = 3;

/// The Opus coding mode of a published track (see the module docs, "The encoder").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpusApplication {
    /// CELT only (`OPUS_APPLICATION_RESTRICTED_LOWDELAY`): the cheapest to encode and
    /// decode, the lowest delay, no in-band FEC.
    #[default]
    LowDelay,
    /// SILK or hybrid for speech (`OPUS_APPLICATION_VOIP`), in-band FEC on: better at
    /// low bitrates and under loss, about three times the encoder CPU.
    Voip,
}

/// An encoder for one published track: mono 16-bit PCM at `sample_rate` (an Opus
/// rate), `complexity` clamped to 0–10, a voice signal hint, in-band FEC in VoIP mode.
pub(crate) fn new_encoder(
    sample_rate: u32,
    complexity: i32,
    application: OpusApplication,
) -> Result<opus::Encoder, RtcError> {
    let (application, fec) = match application {
        OpusApplication::LowDelay => (opus::Application::LowDelay, false),
        OpusApplication::Voip => (opus::Application::Voip, true),
    };
    let mut encoder = opus::Encoder::new(sample_rate, opus::Channels::Mono, application)?;
    encoder.set_complexity(complexity.clamp(0, 10))?;
    encoder.set_inband_fec(fec)?;
    encoder.set_signal(opus::Signal::Voice)?;
    Ok(encoder)
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

/// A queued frame, tagged with the number of clears before it was captured.
struct Queued {
    clears: u64,
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
    clears: Arc<AtomicU64>,
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
            return Err(RtcError::SampleRateMismatch {
                frame: frame.sample_rate,
                track: self.sample_rate,
            });
        }
        if frame.samples.is_empty() {
            return Ok(());
        }
        // Tracks are mono.
        let frame = frame.to_mono();
        // Wait for room first, and count the samples only once they are certain to be
        // queued: a caller may drop this future while it waits (`select!`, abort).
        // A call already waiting when `clear_queue` runs counts as queued before it.
        let clears = self.clears.load(Ordering::Acquire);
        let permit = self.tx.reserve().await.map_err(|_| RtcError::Closed)?;
        self.queued_samples
            .fetch_add(frame.samples.len(), Ordering::Relaxed);
        permit.send(Queued {
            clears,
            samples: frame.samples.to_vec(),
        });
        Ok(())
    }

    /// Drop all audio queued so far, at once (an interruption). Frames captured after
    /// this call play normally.
    pub fn clear_queue(&self) {
        self.clears.fetch_add(1, Ordering::AcqRel);
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
    let encoder = new_encoder(sample_rate, config.complexity, config.application)?;
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let track = LocalAudioTrack {
        tx,
        clears: Arc::new(AtomicU64::new(0)),
        queued_samples: Arc::new(AtomicUsize::new(0)),
        stats: Arc::new(SharedStats::default()),
        sample_rate,
        sid,
        name,
    };
    let pacer = Pacer {
        rx,
        clears: track.clears.clone(),
        queued_samples: track.queued_samples.clone(),
        stats: track.stats.clone(),
        buf: VecDeque::with_capacity(sample_rate as usize / 5),
        buf_clears: 0,
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
    clears: Arc<AtomicU64>,
    queued_samples: Arc<AtomicUsize>,
    stats: Arc<SharedStats>,
    buf: VecDeque<i16>,
    buf_clears: u64,
    frame_len: usize,
    /// libopus state of this track, used only by this task.
    encoder: opus::Encoder,
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
    /// current clear-clears.
    fn drop_cleared(&mut self) -> u64 {
        let clears = self.clears.load(Ordering::Acquire);
        if clears != self.buf_clears {
            self.queued_samples
                .fetch_sub(self.buf.len(), Ordering::Relaxed);
            self.buf.clear();
            self.buf_clears = clears;
        }
        clears
    }

    /// Take a queued frame into the buffer, unless a clear has dropped it since it was
    /// captured. Returns whether it was kept.
    fn accept(&mut self, q: Queued) -> bool {
        let clears = self.drop_cleared();
        if q.clears != clears {
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

#[cfg(test)]
mod tests;
