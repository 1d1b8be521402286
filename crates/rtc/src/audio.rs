//! Audio in and out: PCM frames, the Opus codec, the real-time pacer of a published
//! track and the decoder of a subscribed one.
//!
//! Publishing: [`LocalAudioTrack::capture_frame`] queues PCM (bounded: it waits while
//! the queue is full, so a producer faster than real time is slowed to real time);
//! one pacer task per track takes 20 ms every 20 ms, encodes it to Opus and hands it
//! to the RTP sender. [`LocalAudioTrack::clear_queue`] drops everything queued at
//! once (interruptions). Between utterances the pacer keeps sending encoded silence,
//! so RTP timestamps follow the wall clock like a microphone's.
//!
//! Subscribing: [`RemoteAudioTrack::into_stream`] spawns one decoder task that reads
//! RTP, decodes Opus straight to the caller's sample rate (Opus decodes natively to
//! 8, 12, 16, 24 and 48 kHz, so no resampler is needed) and conceals short losses.
//! Frames go out on a bounded channel; when the consumer is slower than real time
//! the newest frames are dropped and counted rather than buffered without bound.
//!
//! Opus is libopus (the reference codec, Debian's `libopus-dev`) through the `opus`
//! crate, linked dynamically via pkg-config. Encoding 20 ms of 48 kHz mono costs
//! tens of microseconds, so it runs inline in the pacer task: per-stream work is one
//! encode (or decode) per 20 ms tick, bounded and small.

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
}

#[derive(Default)]
struct SharedStats {
    frames_sent: AtomicU64,
    frames_with_audio: AtomicU64,
    max_lateness_us: AtomicU64,
    total_lateness_us: AtomicU64,
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
    /// 100 ms of audio ahead), so the caller is paced to real time.
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
        let n = frame.data.len();
        self.queued_samples.fetch_add(n, Ordering::Relaxed);
        let q = Queued {
            generation: self.generation.load(Ordering::Acquire),
            samples: frame.data,
        };
        if self.tx.send(q).await.is_err() {
            self.queued_samples.fetch_sub(n, Ordering::Relaxed);
            return Err(RtcError::Closed);
        }
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
    sid: String,
    name: String,
    sample_rate: u32,
    sink: watch::Receiver<Option<RtpSink>>,
) -> Result<(LocalAudioTrack, JoinHandle<()>), RtcError> {
    check_rate(sample_rate)?;
    let encoder = crate::opus_enc::Encoder::new(sample_rate, complexity)?;
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
    };
    let handle = tokio::spawn(pacer.run());
    Ok((track, handle))
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
}

impl Pacer {
    async fn run(mut self) {
        let mut pcm = vec![0i16; self.frame_len];
        let mut out = vec![0u8; 1500];
        let start = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval_at(start, FRAME_DURATION);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut closed = false;
        loop {
            let scheduled = ticker.tick().await;
            let lateness = tokio::time::Instant::now().saturating_duration_since(scheduled);
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
            let us = lateness.as_micros() as u64;
            self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            if had_audio {
                self.stats.frames_with_audio.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .total_lateness_us
                .fetch_add(us, Ordering::Relaxed);
            self.stats.max_lateness_us.fetch_max(us, Ordering::Relaxed);
            // Not connected (yet, or while rejoining): the frame is paced and dropped.
            let sink = self.sink.borrow().clone();
            let Some(sink) = sink else { continue };
            let sample = Sample {
                data: Bytes::copy_from_slice(&out[..n]),
                duration: FRAME_DURATION,
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

    #[tokio::test(start_paused = true)]
    async fn pacer_sends_every_20ms_and_clears_at_once() {
        let (_sink_tx, sink_rx) = watch::channel(None);
        let (track, task) =
            spawn_local_track(5, "TR_x".into(), "t".into(), 48_000, sink_rx).unwrap();
        // 200 ms of audio, in 10 ms frames; the queue holds only 5 frames so this paces.
        let producer = {
            let track = track.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    track
                        .capture_frame(AudioFrame {
                            data: vec![1000; 480],
                            sample_rate: 48_000,
                        })
                        .await
                        .unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(101)).await;
        let s = track.stats();
        assert!((5..=7).contains(&s.frames_sent), "{s:?}");
        assert!(s.frames_with_audio >= 5, "{s:?}");
        producer.await.unwrap();
        assert!(track.queued_duration() > Duration::ZERO);
        track.clear_queue();
        tokio::time::sleep(Duration::from_millis(41)).await;
        assert_eq!(track.queued_duration(), Duration::ZERO);
        let before = track.stats().frames_with_audio;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            track.stats().frames_with_audio,
            before,
            "nothing left after clear"
        );
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
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(task.is_finished(), "pacer stops when the handles are gone");
    }
}
