//! Tests of the pacer task, under tokio's paused clock: the 20 ms grid, stalls,
//! clearing, DTX; and of the encoder's two applications.

use super::*;

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
                    .capture_frame(AudioFrame::new(data, 48_000, 1))
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
        .capture_frame(AudioFrame::new(tone(960), 48_000, 1))
        .await
        .unwrap();
    assert!(sent.recv().await.unwrap().had_audio);
    // Wrong rate is refused.
    assert!(
        track
            .capture_frame(AudioFrame::new(vec![0; 160], 8_000, 1))
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
                .capture_frame(AudioFrame::new(tone(n), 48_000, 1))
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
fn encodes_and_decodes_in_both_applications() {
    for app in [OpusApplication::LowDelay, OpusApplication::Voip] {
        let mut enc = new_encoder(48_000, DEFAULT_COMPLEXITY, app).unwrap();
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut out = [0u8; 1500];
        let mut pcm = vec![0i16; 5760];
        let frame = tone(960);
        for _ in 0..10 {
            let n = enc.encode(&frame, &mut out).unwrap();
            assert!(n > 2);
            // TOC byte (RFC 6716 §3.1): configurations 16–31 are CELT only.
            let celt = out[0] >> 3 >= 16;
            assert_eq!(celt, app == OpusApplication::LowDelay, "{app:?}");
            assert_eq!(dec.decode(&out[..n], &mut pcm, false).unwrap(), 960);
        }
        assert!(
            enc.encode(&frame[..100], &mut out).is_err(),
            "bad frame size is an error"
        );
    }
}

#[test]
fn the_encoder_takes_the_settings_it_is_given() {
    let mut enc = new_encoder(24_000, 42, OpusApplication::Voip).unwrap();
    assert_eq!(enc.get_complexity().unwrap(), 10, "clamped");
    assert!(enc.get_inband_fec().unwrap());
    assert_eq!(enc.get_signal().unwrap(), opus::Signal::Voice);
    assert_eq!(enc.get_application().unwrap(), opus::Application::Voip);
    let mut enc = new_encoder(48_000, 3, OpusApplication::LowDelay).unwrap();
    assert_eq!(enc.get_complexity().unwrap(), 3);
    assert!(!enc.get_inband_fec().unwrap());
    assert_eq!(enc.get_application().unwrap(), opus::Application::LowDelay);
}
