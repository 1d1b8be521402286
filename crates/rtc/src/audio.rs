//! Audio in and out: PCM frames, the Opus codec, the real-time pacer of a published
//! track and the decoder of a subscribed one.
//!
//! Publishing: [`LocalAudioTrack::capture_frame`] queues PCM (bounded: it waits while
//! the queue is full, so a producer faster than real time is slowed to real time);
//! one pacer task per track takes 20 ms per slot of a fixed 20 ms grid (see
//! `pacer.rs`: no drift, short stalls caught up, long ones skipped), encodes it to
//! Opus and hands it to the RTP sender. [`LocalAudioTrack::clear_queue`] drops
//! everything queued at once (interruptions). Between utterances the pacer keeps
//! sending encoded silence, so RTP timestamps follow the wall clock like a
//! microphone's.
//!
//! Subscribing: [`RemoteAudioTrack::into_stream`] spawns one decoder task that reads
//! RTP, decodes Opus straight to the caller's sample rate (Opus decodes natively to
//! 8, 12, 16, 24 and 48 kHz, so no resampler is needed) and conceals short losses.
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
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc_core::media::Sample;

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
    pub(crate) track: Arc<TrackLocalStaticSample>,
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

#[derive(Default)]
struct SharedStats {
    frames_sent: AtomicU64,
    frames_with_audio: AtomicU64,
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

/// Start the pacer of a new local track. The returned task ends when every
/// [`LocalAudioTrack`] clone is dropped or `stop` fires; its owner (the engine) keeps
/// the handle and aborts it on close.
pub(crate) fn spawn_local_track(
    complexity: i32,
    application: OpusApplication,
    sid: String,
    name: String,
    sample_rate: u32,
    sink: watch::Receiver<Option<RtpSink>>,
) -> Result<(LocalAudioTrack, JoinHandle<()>), RtcError> {
    let (track, pacer) = new_local_track(complexity, application, sid, name, sample_rate, sink)?;
    let handle = tokio::spawn(pacer.run());
    Ok((track, handle))
}

fn new_local_track(
    complexity: i32,
    application: OpusApplication,
    sid: String,
    name: String,
    sample_rate: u32,
    sink: watch::Receiver<Option<RtpSink>>,
) -> Result<(LocalAudioTrack, Pacer), RtcError> {
    check_rate(sample_rate)?;
    let encoder = crate::opus_enc::Encoder::new(sample_rate, complexity, application)?;
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
        sink,
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
    /// RTP duration of the frame: 20 ms, plus any skipped slots.
    duration: Duration,
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
    sink: watch::Receiver<Option<RtpSink>>,
    /// Tests watch what leaves here (bounded; frames are not held back when full).
    #[cfg(test)]
    probe: Option<mpsc::Sender<Sent>>,
}

impl Pacer {
    /// Send one frame per slot of a fixed 20 ms grid ([`Schedule`]) until every
    /// handle is gone and the queue is drained.
    ///
    /// The encoder runs inline: one 20 ms frame costs 0.1–0.25 ms of CPU (see the crate
    /// docs), once per slot, so each poll of this task is short and bounded. Handing
    /// it to another thread would cost a cross-thread wake per frame, which is more
    /// CPU than it moves.
    async fn run(mut self) {
        let mut pcm = vec![0i16; self.frame_len];
        let mut out = vec![0u8; 1500];
        let mut schedule = Schedule::new(tokio::time::Instant::now());
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut closed = false;
        loop {
            let due = schedule.next_due();
            if tokio::time::Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let slot = schedule.take(tokio::time::Instant::now());
            let had_audio = self.fill(&mut pcm, &mut closed);
            if closed && !had_audio {
                return;
            }
            let n = match self.encoder.encode(&pcm, &mut out) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "opus encode failed; frame skipped");
                    continue;
                }
            };
            // Skipped slots are added to this frame's RTP duration, so that the next
            // frame's timestamp is back on the wall clock (see `pacer`).
            let slots = u32::try_from(slot.skipped.saturating_add(1)).unwrap_or(u32::MAX);
            let duration = FRAME_DURATION.saturating_mul(slots);
            // Not connected (yet, or while rejoining): the frame is paced and dropped.
            let sink = self.sink.borrow().clone();
            if let Some(sink) = sink {
                let sample = Sample {
                    data: Bytes::copy_from_slice(&out[..n]),
                    duration,
                    ..Sample::new(Instant::now())
                };
                if let Err(e) = sink
                    .track
                    .write_sample(sink.ssrc, sink.payload_type, &sample, &[])
                    .await
                {
                    tracing::trace!(error = %e, "rtp write failed (not connected yet?)");
                }
            }
            let sent = tokio::time::Instant::now();
            self.record(slot.due, sent, last_sent, slot.skipped, had_audio);
            last_sent = Some(sent);
            #[cfg(test)]
            if let Some(probe) = &self.probe {
                let _ = probe.try_send(Sent {
                    slot: slot.index,
                    at: sent,
                    duration,
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

    /// Fill `pcm` with the next 20 ms: queued audio, padded with silence. Returns
    /// whether any queued audio went in. Sets `closed` once every handle is gone.
    fn fill(&mut self, pcm: &mut [i16], closed: &mut bool) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != self.buf_generation {
            self.queued_samples
                .fetch_sub(self.buf.len(), Ordering::Relaxed);
            self.buf.clear();
            self.buf_generation = generation;
        }
        while self.buf.len() < self.frame_len {
            match self.rx.try_recv() {
                Ok(q) => {
                    if q.generation != generation {
                        self.queued_samples
                            .fetch_sub(q.samples.len(), Ordering::Relaxed);
                        continue;
                    }
                    self.buf.extend(q.samples);
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
    let mut last_seq: Option<u16> = None;
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(p) => p,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let seq = packet.header.sequence_number;
        if let Some(prev) = last_seq {
            let gap = seq.wrapping_sub(prev);
            if gap == 0 || gap > u16::MAX / 2 {
                continue; // duplicate or reordered-late packet
            }
            let lost = gap - 1;
            if lost > 0 && lost <= MAX_CONCEALED {
                for _ in 0..lost {
                    let n = decoder
                        .decode(&[], &mut pcm[..frame_len], false)
                        .unwrap_or(0);
                    if !emit(&tx, &pcm[..n], sample_rate, &dropped) {
                        return;
                    }
                }
            }
        }
        last_seq = Some(seq);
        if packet.payload.is_empty() {
            continue;
        }
        match decoder.decode(&packet.payload, &mut pcm, false) {
            Ok(n) => {
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

    /// A pacer with no RTP sink, its frames reported on a probe; not yet started.
    fn probed() -> (LocalAudioTrack, Pacer, mpsc::Receiver<Sent>) {
        let (_sink_tx, sink_rx) = watch::channel(None);
        let (track, mut pacer) = new_local_track(
            5,
            OpusApplication::Voip,
            "TR_x".into(),
            "t".into(),
            48_000,
            sink_rx,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(10_000);
        pacer.probe = Some(tx);
        (track, pacer, rx)
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
        for n in 0..100u32 {
            let f = sent.recv().await.unwrap();
            assert_eq!(f.slot, u64::from(n));
            assert_eq!(f.at - t0, 20 * MS * n, "slot {n}");
            assert_eq!(f.duration, FRAME_DURATION);
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
        assert_eq!(sent.recv().await.unwrap().at, t0);
        // The pacer sleeps until 20 ms; it is woken only at 55 ms.
        tokio::time::advance(55 * MS).await;
        let late: Vec<Sent> = vec![sent.recv().await.unwrap(), sent.recv().await.unwrap()];
        assert_eq!(late.iter().map(|f| f.slot).collect::<Vec<_>>(), [1, 2]);
        assert!(late.iter().all(|f| f.at == t0 + 55 * MS));
        assert!(late.iter().all(|f| f.duration == FRAME_DURATION));
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
        sent.recv().await.unwrap();
        tokio::time::advance(1005 * MS).await;
        let f = sent.recv().await.unwrap();
        assert_eq!((f.slot, f.at - t0), (50, 1005 * MS));
        assert_eq!(
            f.duration,
            50 * FRAME_DURATION,
            "49 skipped slots + this one"
        );
        let f = sent.recv().await.unwrap();
        assert_eq!((f.slot, f.at - t0), (51, 1020 * MS));
        assert_eq!(f.duration, FRAME_DURATION);
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
        // The very next slot is silence, and so is everything after it (the first
        // decoded frame still holds the encoder's 6.5 ms look-ahead of the tone).
        for i in 0..20 {
            let f = sent.recv().await.unwrap();
            assert!(!f.had_audio);
            let level = rms(&f.packet);
            if i > 0 {
                assert!(level < 50.0, "frame {i} after the clear: rms {level}");
            }
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
}
