//! Subscribing: a remote audio track decoded to PCM.
//!
//! [`RemoteAudioTrack::into_stream`] spawns one decoder task that reads RTP, decodes
//! Opus straight to the caller's sample rate (Opus decodes natively to 8, 12, 16, 24
//! and 48 kHz, so no resampler is needed) and follows the stream's [`Timeline`]
//! (`timeline.rs`): short losses concealed, duplicates dropped, and when the sender
//! goes quiet (DTX) the stream goes on in silent frames filled in real time, so a
//! consumer counting frames (a VAD) hears the pause as it happens.
//!
//! Frames go out on a bounded channel; when the consumer is slower than real time
//! the newest frames are dropped and counted ([`AudioStream::dropped_frames`])
//! rather than buffered without bound. Decoding 20 ms costs about 20–40 µs, so it
//! runs inline in the task: one decode per packet, bounded and small.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::RtcError;
use crate::frame::{AudioFrame, FRAME_DURATION, RTP_CLOCK_HZ, check_rate};
use crate::timeline::{FILL_BATCH, Timeline};

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
    let frame = AudioFrame::new(pcm, sample_rate, 1);
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

    #[test]
    fn a_slow_consumer_loses_the_newest_frames_counted() {
        let (tx, mut rx) = mpsc::channel(1);
        let dropped = AtomicU64::new(0);
        assert!(emit(&tx, &[1; 320], 16_000, &dropped));
        assert!(emit(&tx, &[2; 320], 16_000, &dropped), "full is not gone");
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        assert!(emit(&tx, &[], 16_000, &dropped), "nothing to send");
        assert_eq!(&*rx.try_recv().unwrap().samples, &[1; 320][..]);
        drop(rx);
        assert!(
            !emit(&tx, &[3; 320], 16_000, &dropped),
            "the consumer is gone"
        );
    }
}
