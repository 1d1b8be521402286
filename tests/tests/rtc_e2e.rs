//! `crates/room` against the real LiveKit server (v1.13.5) with the real LiveKit Python
//! SDK as the other participant. Run `tests/setup.sh` once first.
//!
//! The tests share a 2-core machine with media flowing in real time, so they run one
//! at a time (a global lock), each with its own server on free loopback ports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use e2e_tests::*;
use room::{AudioFrame, ConnectOptions, DisconnectReason, Room, RoomEvent};
use tokio::sync::mpsc;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Envelope correlation bound: the decoded speech's 10 ms RMS envelope against the
/// original's, best lag within ±300 ms.
const MIN_CORRELATION: f64 = 0.9;
/// "Within one frame": voiced durations may differ by one 20 ms Opus frame plus one
/// 10 ms envelope window of measurement granularity.
const MAX_DURATION_DIFF_S: f64 = 0.030;

/// Defaults: ICE binds loopback by itself because the server URL is on loopback.
fn options() -> ConnectOptions {
    ConnectOptions::default()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtc-e2e-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d.join(name)
}

async fn speech_fixture(text: &str, name: &str) -> R<(Pcm, PathBuf)> {
    let raw = tmp(&format!("{name}-raw.wav"));
    espeak(text, &raw).await?;
    let pcm = resample(&read_wav(&raw)?, 48_000);
    let path = tmp(&format!("{name}-48k.wav"));
    write_wav(&path, &pcm)?;
    Ok((pcm, path))
}

async fn next_event<F: FnMut(&RoomEvent) -> bool>(
    events: &mut mpsc::Receiver<RoomEvent>,
    timeout: Duration,
    mut pred: F,
) -> R<RoomEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                return Err(
                    format!("timed out waiting for a room event; skipped {skipped:?}").into(),
                );
            }
            Ok(None) => {
                return Err(format!("room event channel closed; skipped {skipped:?}").into());
            }
            Ok(Some(ev)) => {
                if pred(&ev) {
                    return Ok(ev);
                }
                skipped.push(format!("{ev:?}"));
            }
        }
    }
}

async fn join(
    server: &LiveKitServer,
    identity: &str,
    room: &str,
) -> R<(Room, mpsc::Receiver<RoomEvent>)> {
    let t = token(identity, room)?;
    Ok(room::connect(&server.url(), &t, options()).await?)
}

/// The envelope of `got` matches `reference` (correlation, voiced duration).
fn assert_same_speech(label: &str, reference: &Pcm, got: &Pcm, detail: &str) {
    let (corr, got_s, ref_s) = match_speech(reference, got, 30);
    eprintln!("{label}: correlation {corr:.3}, voiced {got_s:.3}s vs {ref_s:.3}s, {detail}");
    assert!(
        corr > MIN_CORRELATION,
        "envelope correlation {corr:.3} ≤ {MIN_CORRELATION}"
    );
    assert!(
        (got_s - ref_s).abs() <= MAX_DURATION_DIFF_S,
        "voiced {got_s:.3}s vs {ref_s:.3}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_speech_and_we_receive_matching_pcm() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let (reference, wav) =
        speech_fixture("The quick brown fox jumps over the lazy dog.", "in").await?;
    let (room, mut events) = join(&server, "agent", "room-in").await?;
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "room-in")?,
        &[
            "--publish-wav",
            wav.to_str().unwrap_or_default(),
            "--duration",
            "20",
        ],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(20)).await?;
    let ev = next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, RoomEvent::TrackSubscribed(_))
    })
    .await?;
    let RoomEvent::TrackSubscribed(track) = ev else {
        unreachable!()
    };
    assert_eq!(track.participant_identity(), "human");
    let mut stream = track.into_stream(48_000)?;
    let mut got = Vec::new();
    // Listen until Python has played the whole file, plus a second for the last
    // packets; bounded in any case.
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut played = false;
    loop {
        tokio::select! {
            f = tokio::time::timeout_at(deadline, stream.recv()) => match f {
                Ok(Some(f)) => {
                    assert_eq!(f.sample_rate, 48_000);
                    got.extend_from_slice(&f.samples);
                }
                Ok(None) | Err(_) => break,
            },
            ev = human.wait_event("played", Duration::from_secs(30)), if !played => {
                ev?;
                played = true;
                deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    }
    let got = Pcm {
        samples: got,
        sample_rate: 48_000,
    };
    write_wav(&tmp("in-received.wav"), &got)?;
    let dropped = format!("dropped {}", stream.dropped_frames());
    assert_same_speech("received", &reference, &got, &dropped);
    room.close().await?;
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_publish_speech_and_python_records_it() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let (reference, _) =
        speech_fixture("Hello, this is the agent speaking from Rust.", "out").await?;
    let (room, mut events) = join(&server, "agent", "room-out").await?;
    let rec = tmp("out-recorded.wav");
    let secs = format!("{:.1}", reference.seconds() + 2.5);
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "room-out")?,
        &[
            "--record-wav",
            rec.to_str().unwrap_or_default(),
            "--record-seconds",
            &secs,
            "--duration",
            "25",
        ],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(20)).await?;
    next_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, RoomEvent::ParticipantJoined(p) if p.identity == "human"),
    )
    .await?;
    let track = room.publish_audio("agent-voice", 48_000).await?;
    assert!(track.sid().starts_with("TR_"), "{}", track.sid());
    human.wait_event("track", Duration::from_secs(20)).await?;
    // Half a second of silence, then the speech, in 10 ms frames (paced by the track).
    for chunk in vec![0i16; 24_000]
        .chunks(480)
        .chain(reference.samples.chunks(480))
    {
        track
            .capture_frame(AudioFrame::new(chunk.to_vec(), 48_000, 1))
            .await?;
    }
    let recorded = human
        .wait_event("recorded", Duration::from_secs(30))
        .await?;
    eprintln!("python recorded {recorded}");
    let got = read_wav(&rec)?;
    let pacer = format!("pacer {:?}", track.stats());
    assert_same_speech("sent", &reference, &got, &pacer);
    room.close().await?;
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_streams_both_ways_with_attributes_and_multibyte_text() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let (room, mut events) = join(&server, "agent", "room-text").await?;
    let text_in = "Grüße aus Zürich — 日本語のテキスト 🎙️ ".repeat(700);
    assert!(text_in.len() > 15_000 * 2);
    let text_file = tmp("text-in.txt");
    std::fs::write(&text_file, &text_in)?;
    let attrs_in = r#"{"lk.segment_id":"SG_1","lk.transcription_final":"true","lk.transcribed_track_id":"TR_x"}"#;
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "room-text")?,
        &[
            "--text-topic",
            "lk.transcription",
            "--send-text-file",
            text_file.to_str().unwrap_or_default(),
            "--send-attrs",
            attrs_in,
            "--duration",
            "20",
        ],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(20)).await?;
    // Python → us.
    let ev = next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, RoomEvent::TextStreamReceived(_))
    })
    .await?;
    let RoomEvent::TextStreamReceived(s) = ev else {
        unreachable!()
    };
    assert_eq!(s.topic, "lk.transcription");
    assert_eq!(s.participant_identity, "human");
    assert_eq!(
        s.attributes.get("lk.segment_id").map(String::as_str),
        Some("SG_1")
    );
    assert_eq!(
        s.attributes
            .get("lk.transcription_final")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        s.text == text_in,
        "text differs: {} vs {} bytes",
        s.text.len(),
        text_in.len()
    );
    // Us → Python.
    let text_out = "Ответ агента — エージェントの返事 🤖 ".repeat(800);
    let mut attrs = HashMap::new();
    attrs.insert("lk.segment_id".to_owned(), "SG_agent".to_owned());
    attrs.insert("lk.transcription_final".to_owned(), "true".to_owned());
    attrs.insert("lk.transcribed_track_id".to_owned(), "TR_agent".to_owned());
    room.send_text("lk.transcription", &text_out, attrs, &[])
        .await?;
    let got = human.wait_event("text", Duration::from_secs(20)).await?;
    assert_eq!(got["identity"], "agent");
    assert_eq!(got["topic"], "lk.transcription");
    assert_eq!(got["attributes"]["lk.segment_id"], "SG_agent");
    assert_eq!(got["attributes"]["lk.transcription_final"], "true");
    assert!(
        got["text"].as_str() == Some(text_out.as_str()),
        "text differs"
    );
    room.close().await?;
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_we_set_are_seen_by_python() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let (room, _events) = join(&server, "agent", "room-attrs").await?;
    let mut human = Human::spawn(
        &server.url(),
        &token("human", "room-attrs")?,
        &["--duration", "20"],
    )
    .await?;
    human.wait_event("ready", Duration::from_secs(20)).await?;
    for state in ["listening", "thinking", "speaking"] {
        let mut a = HashMap::new();
        a.insert("lk.agent.state".to_owned(), state.to_owned());
        room.set_attributes(a).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = human.wait_event("attributes", left).await?;
            if ev["identity"] == "agent" && ev["attributes"]["lk.agent.state"] == state {
                break;
            }
        }
    }
    room.close().await?;
    human.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_we_reconnect_or_report_disconnected() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let mut server = LiveKitServer::start().await?;
    let (room, mut events) = join(&server, "agent", "room-reconnect").await?;
    let track = room.publish_audio("agent-voice", 48_000).await?;
    server.kill().await?;
    next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, RoomEvent::Reconnecting)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await?;
    let ev = next_event(&mut events, Duration::from_secs(90), |e| {
        matches!(
            e,
            RoomEvent::Reconnected { .. } | RoomEvent::Disconnected(_)
        )
    })
    .await?;
    eprintln!("after restart: {ev:?}");
    match ev {
        RoomEvent::Reconnected { .. } => {
            // The room works again: a second participant sees us, and we can send.
            let (_other, mut other_events) = join(&server, "human", "room-reconnect").await?;
            next_event(
                &mut other_events,
                Duration::from_secs(20),
                |e| matches!(e, RoomEvent::ParticipantJoined(p) if p.identity == "agent"),
            )
            .await?;
            // The republished track reaches the newcomer (its subscriber connection is
            // up from then on, so data sent to it is delivered).
            next_event(&mut other_events, Duration::from_secs(20), |e| {
                matches!(e, RoomEvent::TrackSubscribed(t) if t.participant_identity() == "agent")
            })
            .await?;
            room.send_data(
                b"hello again".to_vec(),
                room::DataKind::Reliable,
                Some("t"),
                &[],
            )
            .await?;
            let ev = next_event(&mut other_events, Duration::from_secs(20), |e| {
                matches!(e, RoomEvent::DataReceived { .. })
            })
            .await?;
            let RoomEvent::DataReceived {
                payload,
                participant_identity,
                topic,
                ..
            } = ev
            else {
                unreachable!()
            };
            assert_eq!(payload, b"hello again");
            assert_eq!(participant_identity, "agent");
            assert_eq!(topic.as_deref(), Some("t"));
            drop(track);
        }
        RoomEvent::Disconnected(reason) => assert_eq!(reason, DisconnectReason::ReconnectFailed),
        _ => unreachable!(),
    }
    tokio::time::timeout(Duration::from_secs(10), room.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused_with_a_typed_error() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let err = room::connect(&server.url(), "not-a-token", options())
        .await
        .err()
        .ok_or("connected with a bad token")?;
    assert!(
        matches!(err, room::RtcError::Refused { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("not-a-token"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_cut_is_resumed_without_leaving_the_room() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let proxy = TcpProxy::start(server.port).await?;
    let (room, mut events) =
        room::connect(&proxy.url(), &token("agent", "room-resume")?, options()).await?;
    let _track = room.publish_audio("agent-voice", 48_000).await?;
    let (_other, mut other_events) = join(&server, "human", "room-resume").await?;
    next_event(
        &mut other_events,
        Duration::from_secs(20),
        |e| matches!(e, RoomEvent::TrackSubscribed(t) if t.participant_identity() == "agent"),
    )
    .await?;
    proxy.sever();
    next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, RoomEvent::Reconnecting)
    })
    .await?;
    let ev = next_event(&mut events, Duration::from_secs(60), |e| {
        matches!(
            e,
            RoomEvent::Reconnected { .. } | RoomEvent::Disconnected(_)
        )
    })
    .await?;
    assert!(
        matches!(ev, RoomEvent::Reconnected { resumed: true }),
        "{ev:?}"
    );
    // Still in the room as the same participant: data reaches the other side, which
    // never saw us leave.
    room.send_data(
        b"after resume".to_vec(),
        room::DataKind::Reliable,
        None,
        &[],
    )
    .await?;
    let ev = next_event(&mut other_events, Duration::from_secs(20), |e| {
        matches!(
            e,
            RoomEvent::DataReceived { .. } | RoomEvent::ParticipantLeft(_)
        )
    })
    .await?;
    assert!(
        matches!(&ev, RoomEvent::DataReceived { payload, .. } if payload == b"after resume"),
        "{ev:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), room.close()).await??;
    // Our leave is seen.
    next_event(
        &mut other_events,
        Duration::from_secs(20),
        |e| matches!(e, RoomEvent::ParticipantLeft(p) if p.identity == "agent"),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_leaves_the_room_and_ends_the_events() -> R {
    let _g = SERIAL.lock().await;
    init_logging();
    let server = LiveKitServer::start().await?;
    let (room, mut events) = join(&server, "agent", "room-drop").await?;
    let track = room.publish_audio("agent-voice", 24_000).await?;
    let (_other, mut other_events) = join(&server, "human", "room-drop").await?;
    next_event(
        &mut other_events,
        Duration::from_secs(20),
        |e| matches!(e, RoomEvent::TrackSubscribed(t) if t.participant_identity() == "agent"),
    )
    .await?;
    drop(room);
    // The engine leaves, reports Disconnected(ClientInitiated) and closes the channel.
    let ev = next_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, RoomEvent::Disconnected(_))
    })
    .await?;
    assert!(
        matches!(
            ev,
            RoomEvent::Disconnected(DisconnectReason::ClientInitiated)
        ),
        "{ev:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await?
            .is_none()
    );
    // The other side sees us go, promptly (a LeaveRequest, not a timeout).
    next_event(
        &mut other_events,
        Duration::from_secs(5),
        |e| matches!(e, RoomEvent::ParticipantLeft(p) if p.identity == "agent"),
    )
    .await?;
    // The track handle outlives the room harmlessly: once the engine's pacer
    // task has wound down (it is stopped asynchronously), capturing fails,
    // with no panic and no hang.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let frame = AudioFrame::new(vec![0; 480], 24_000, 1);
        let r = tokio::time::timeout(Duration::from_secs(2), track.capture_frame(frame)).await?;
        if r.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "capturing still succeeds 3 s after the room was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
