//! LiveKit Inference STT and TTS against a local stand-in of the gateway
//! (`e2e_tests::inference::speech`): the wire protocol as the gateway checks
//! it, the failures real services have (refused upgrade, `error` event,
//! dropped connection, stall), reconnects that keep the turn, the TTS pool,
//! interruption, and fallback to the local engines (whisper, Piper) without
//! losing the turn.
//! The fallback tests need feature `local` (the default); the rest runs
//! without it.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agent::{
    AudioFrame, ErrorKind, JobContext, Resampler, Stt, SttEvent, SttInput, SttStream, Tts,
    TtsAudio, TtsInput,
};
use e2e_tests::inference::speech::{Fault, Gateway, KEY, Plan, SECRET, Synth, livekit_env};
#[cfg(feature = "local")]
use speech::whisper::WhisperStt;
#[cfg(feature = "local")]
use speech::{FallbackStt, FallbackTts, ModelFile, PiperTts};
use speech::{
    InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts, InferenceTtsOptions,
};

fn common_options(gw: &Gateway) -> InferenceOptions {
    InferenceOptions {
        base_url: Some(gw.base_url()),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(500),
        ..InferenceOptions::default()
    }
}

fn stt(gw: &Gateway) -> InferenceStt {
    InferenceStt::new(
        InferenceSttOptions {
            model: "deepgram/nova-3".into(),
            language: Some("en".into()),
            extra: serde_json::json!({"smart_format": true})
                .as_object()
                .cloned()
                .unwrap(),
            common: common_options(gw),
        },
        &livekit_env,
    )
    .expect("stt")
}

fn tts_options(gw: &Gateway) -> InferenceTtsOptions {
    InferenceTtsOptions {
        model: "cartesia/sonic-2".into(),
        voice: Some("voice-1234".into()),
        language: Some("en".into()),
        common: common_options(gw),
        ..InferenceTtsOptions::default()
    }
}

fn tts(gw: &Gateway) -> InferenceTts {
    InferenceTts::new(tts_options(gw), &livekit_env).expect("tts")
}

/// espeak-ng speech of the text at the declared 24 kHz (cached per text).
type SpeechCache = std::sync::Mutex<Vec<(String, Vec<i16>)>>;

fn espeak_24k(text: &str) -> Vec<i16> {
    static CACHE: OnceLock<SpeechCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, pcm)) = cache.lock().unwrap().iter().find(|(t, _)| t == text) {
        return pcm.clone();
    }
    let (pcm, rate) = common::espeak_speech(text);
    let mut r = Resampler::new(rate, 24_000);
    let mut out = Vec::new();
    r.process_into(&pcm, &mut out);
    cache.lock().unwrap().push((text.to_string(), out.clone()));
    out
}

fn espeak_synth() -> Synth {
    Arc::new(|text: &str| espeak_24k(text.trim()))
}

fn no_synth() -> Synth {
    Arc::new(|_: &str| Vec::new())
}

/// A recognisable signal: sample n of the stream is `pattern(n)`.
fn pattern(n: u64) -> i16 {
    ((n * 7919) % 20_000) as i16 - 10_000
}

/// Sends `ms` of patterned 16 kHz audio in 10 ms frames starting at sample `from`.
async fn send_audio(s: &SttStream, from: u64, ms: u64) -> u64 {
    let mut n = from;
    for _ in 0..ms / 10 {
        let samples: Vec<i16> = (n..n + 160).map(pattern).collect();
        n += 160;
        s.input
            .send(SttInput::Audio(AudioFrame::new(samples, 16_000, 1)))
            .await
            .expect("send audio");
    }
    n
}

async fn next_event(s: &mut SttStream) -> SttEvent {
    tokio::time::timeout(Duration::from_secs(10), s.events.recv())
        .await
        .expect("an STT event within 10 s")
        .expect("the stream is open")
}

/// Events until the first `Final` or `Empty` (inclusive).
async fn until_answer(s: &mut SttStream) -> Vec<SttEvent> {
    let mut out = Vec::new();
    loop {
        let e = next_event(s).await;
        let done = matches!(e, SttEvent::Final(_) | SttEvent::Empty);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn final_text(events: &[SttEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        SttEvent::Final(t) => Some(t.text.clone()),
        _ => None,
    })
}

fn error_kinds(events: &[SttEvent]) -> Vec<ErrorKind> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Error(e) => Some(e.kind),
            _ => None,
        })
        .collect()
}

/// One utterance: 300 ms lead-in, `speech_ms` of speech, 300 ms after;
/// returns (samples sent so far, speech start sample).
async fn utterance(s: &SttStream, from: u64, speech_ms: u64) -> (u64, u64) {
    let n = send_audio(s, from, 300).await;
    let start = n;
    s.input
        .send(SttInput::SpeechStarted(Duration::from_secs_f64(
            n as f64 / 16_000.0,
        )))
        .await
        .unwrap();
    let n = send_audio(s, n, speech_ms).await;
    let end = n;
    let n = send_audio(s, n, 300).await;
    s.input
        .send(SttInput::SpeechEnded(Duration::from_secs_f64(
            end as f64 / 16_000.0,
        )))
        .await
        .unwrap();
    (n, start)
}

// ---------------------------------------------------------------- STT

#[tokio::test]
async fn stt_speaks_the_gateway_protocol_and_keeps_one_connection_across_turns() {
    let gw = Gateway::start(no_synth()).await;
    gw.script(&["hello there", "book a table for two"]);
    let job = JobContext {
        room_id: Some("RM_room".into()),
        job_id: Some("AJ_job".into()),
        agent_id: Some("PA_agent".into()),
        ..Default::default()
    };
    let mut s = stt(&gw).stream(&job).await.expect("stream");

    let (n, _) = utterance(&s, 0, 1000).await;
    let events = until_answer(&mut s).await;
    assert!(matches!(events[0], SttEvent::StartOfSpeech), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SttEvent::Interim(t) if t.text == "hello")),
        "{events:?}"
    );
    let SttEvent::Final(t) = events.last().unwrap() else {
        panic!("{events:?}")
    };
    assert_eq!(t.text, "hello there");
    assert_eq!(t.language.as_deref(), Some("en"));
    assert!((t.confidence - 0.97).abs() < 1e-6);
    // The stand-in times the utterance from the connection's first audio.
    assert_eq!(t.start, Duration::ZERO);
    assert!(t.end >= Duration::from_millis(1500), "{t:?}");

    // A second turn on the same connection.
    let (_, _) = utterance(&s, n, 800).await;
    let events = until_answer(&mut s).await;
    assert_eq!(final_text(&events).as_deref(), Some("book a table for two"));
    let SttEvent::Final(t2) = events.last().unwrap() else {
        panic!()
    };
    assert!(
        t2.start >= t.end - Duration::from_millis(60),
        "{t2:?} after {t:?}"
    );

    // A third turn with nothing scripted: session.finalized alone → Empty.
    let _ = utterance(&s, n + 22_400, 200).await;
    let events = until_answer(&mut s).await;
    assert!(matches!(events.last(), Some(SttEvent::Empty)), "{events:?}");

    drop(s);
    let conns = gw.conns();
    assert_eq!(conns.len(), 1, "one connection for the whole session");
    gw.assert_clean();
    let c = &conns[0];
    assert_eq!(c.path, "/v1/stt");
    assert_eq!(c.query_model.as_deref(), Some("deepgram/nova-3"));
    let claims = c.claims.as_ref().unwrap();
    assert_eq!(claims["iss"], KEY);
    assert_eq!(claims["sub"], "agent");
    assert_eq!(claims["inference"]["perform"], true);
    assert_eq!(c.header("x-livekit-room-id"), Some("RM_room"));
    assert_eq!(c.header("x-livekit-job-id"), Some("AJ_job"));
    assert_eq!(c.header("x-livekit-agent-id"), Some("PA_agent"));
    let create = c.session_create.as_ref().unwrap();
    assert_eq!(create["model"], "deepgram/nova-3");
    assert_eq!(create["settings"]["sample_rate"], "16000");
    assert_eq!(create["settings"]["encoding"], "pcm_s16le");
    assert_eq!(create["settings"]["language"], "en");
    assert_eq!(create["settings"]["extra"]["smart_format"], true);
    // 50 ms chunks, and exactly the audio sent, in order.
    assert!(
        c.chunk_bytes.iter().all(|&b| b == 1600),
        "{:?}",
        c.chunk_bytes
    );
    assert!(c.audio.len() >= 3 * 16_000, "{}", c.audio.len());
    for (i, &s) in c.audio.iter().enumerate() {
        assert_eq!(s, pattern(i as u64), "sample {i}");
    }
    // Each finalize came after the speech it closes had been sent.
    assert_eq!(c.finalize_at.len(), 3);
    assert!(c.finalize_at[0] as u64 >= 300 * 16 + 1000 * 16);
}

#[tokio::test]
async fn stt_resamples_to_the_declared_rate() {
    let gw = Gateway::start(no_synth()).await;
    let s = stt(&gw).stream(&JobContext::default()).await.unwrap();
    // One second at 48 kHz in 10 ms frames.
    for _ in 0..100 {
        let f = AudioFrame::new(vec![1000i16; 480], 48_000, 1);
        s.input.send(SttInput::Audio(f)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = &gw.conns()[0];
    // 16 000 samples minus the resampler's delay and the unsent partial chunk.
    assert!(
        (15_000..=16_000).contains(&c.audio.len()),
        "{}",
        c.audio.len()
    );
    assert_eq!(c.audio.len() % 800, 0);
    gw.assert_clean();
}

#[tokio::test]
async fn stt_refused_upgrade_is_an_auth_error_without_secrets() {
    let gw = Gateway::start(no_synth()).await;
    gw.plan(vec![Plan {
        reject: Some(401),
        ..Plan::default()
    }]);
    let e = stt(&gw)
        .stream(&JobContext::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.retryable);
    assert!(e.message.contains("401"), "{e}");
    assert!(
        !e.message.contains(SECRET) && !e.message.contains(KEY),
        "{e}"
    );

    gw.plan(vec![Plan {
        reject: Some(429),
        ..Plan::default()
    }]);
    let e = stt(&gw).stream(&JobContext::default()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::RateLimit);
    assert!(e.retryable);
}

#[tokio::test]
async fn stt_bad_token_is_refused_by_the_gateway() {
    let gw = Gateway::start(no_synth()).await;
    let wrong = |n: &str| match n {
        "LIVEKIT_API_KEY" => Some(KEY.to_string()),
        "LIVEKIT_API_SECRET" => Some("not-the-secret-not-the-secret-xx".to_string()),
        _ => None,
    };
    let s = InferenceStt::new(
        InferenceSttOptions {
            common: common_options(&gw),
            ..InferenceSttOptions::default()
        },
        &wrong,
    )
    .unwrap();
    let e = s.stream(&JobContext::default()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains("not-the-secret"), "{e}");
}

/// The stand-in fails the first finalize with `fault`; the client reconnects,
/// replays the turn's audio and the finalize, and the turn is transcribed.
async fn stt_recovers_from(fault: Fault, kind: ErrorKind) {
    let gw = Gateway::start(no_synth()).await;
    gw.plan(vec![Plan {
        faults: vec![(1, fault)],
        ..Plan::default()
    }]);
    gw.script(&["first turn", "second turn"]);
    let mut s = stt(&gw).stream(&JobContext::default()).await.unwrap();
    let (n, _) = utterance(&s, 0, 500).await;
    assert_eq!(
        final_text(&until_answer(&mut s).await).as_deref(),
        Some("first turn")
    );
    let (_, start) = utterance(&s, n, 1000).await;
    let events = until_answer(&mut s).await;
    assert_eq!(error_kinds(&events), vec![kind], "{events:?}");
    assert_eq!(
        final_text(&events).as_deref(),
        Some("second turn"),
        "{events:?}"
    );
    // Times are stream times, across the reconnect.
    let SttEvent::Final(t) = events.last().unwrap() else {
        panic!()
    };
    assert!(
        t.start <= Duration::from_secs_f64(start as f64 / 16_000.0),
        "{t:?} starts after the speech"
    );
    assert!(
        t.end >= Duration::from_secs_f64((start + 16_000) as f64 / 16_000.0),
        "{t:?}"
    );

    let conns = gw.conns();
    assert_eq!(conns.len(), 2, "one reconnect");
    gw.assert_clean();
    // The second connection got the whole turn again, from before the VAD's
    // speech start, sample for sample.
    let replay = &conns[1];
    assert!(replay.session_create.is_some());
    assert_eq!(replay.finalize_at.len(), 1);
    let offset = {
        // Where the replay starts in stream samples: find the first sample.
        let s0 = replay.audio[0];
        let s1 = replay.audio[1];
        (0..n + 40_000)
            .find(|&k| pattern(k) == s0 && pattern(k + 1) == s1)
            .expect("replayed audio is stream audio")
    };
    assert!(
        offset <= start,
        "replay starts at {offset}, speech at {start}"
    );
    for (i, &x) in replay.audio.iter().enumerate() {
        assert_eq!(x, pattern(offset + i as u64), "replayed sample {i}");
    }
    assert!(offset + replay.audio.len() as u64 >= start + 16_000);
}

#[tokio::test]
async fn stt_error_event_mid_stream_reconnects_and_keeps_the_turn() {
    stt_recovers_from(
        Fault::Error {
            code: 500,
            message: "upstream provider failed".into(),
        },
        ErrorKind::Server,
    )
    .await;
}

#[tokio::test]
async fn stt_dropped_connection_reconnects_and_keeps_the_turn() {
    stt_recovers_from(Fault::Drop, ErrorKind::Connection).await;
}

#[tokio::test]
async fn stt_stall_times_out_and_reconnects() {
    stt_recovers_from(Fault::Stall, ErrorKind::Timeout).await;
}

#[tokio::test]
async fn stt_gives_up_after_its_retries_and_closes() {
    let gw = Gateway::start(no_synth()).await;
    let down = Plan {
        reject: Some(503),
        ..Plan::default()
    };
    gw.plan(vec![
        Plan {
            faults: vec![(0, Fault::Drop)],
            ..Plan::default()
        },
        down.clone(),
        down.clone(),
        down,
    ]);
    let mut s = stt(&gw).stream(&JobContext::default()).await.unwrap();
    let _ = utterance(&s, 0, 300).await;
    let mut kinds = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(10), s.events.recv()).await {
        if let SttEvent::Error(e) = e {
            kinds.push(e.kind);
        }
    }
    // Dropped, then two refused reconnects (max_retries = 2), then closed.
    assert_eq!(
        kinds,
        vec![ErrorKind::Connection, ErrorKind::Server, ErrorKind::Server]
    );
    assert_eq!(gw.conns().len(), 3);
}

// ---------------------------------------------------------------- STT fallback

#[cfg(feature = "local")]
fn whisper() -> Arc<dyn Stt> {
    static W: OnceLock<WhisperStt> = OnceLock::new();
    Arc::new(
        W.get_or_init(|| {
            let cache = common::require(&[
                ModelFile::WhisperModel,
                ModelFile::WhisperTokenizer,
                ModelFile::WhisperConfig,
            ]);
            WhisperStt::load(&cache).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone(),
    )
}

/// Speech at 16 kHz in 10 ms frames with the VAD hints around it, starting
/// at stream time `at`; returns the stream time after it.
#[cfg(feature = "local")]
async fn speak_into(s: &SttStream, at: Duration, text: &str) -> Duration {
    let pcm = common::espeak_speech_16k(text);
    let pcm: Vec<i16> = pcm.iter().map(|&v| (v * 32767.0) as i16).collect();
    let lead = vec![0i16; 4800];
    let mut all = lead.clone();
    all.extend(&pcm);
    all.extend(vec![0i16; 8000]);
    let start = at + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(pcm.len() as f64 / 16_000.0);
    let after = at + Duration::from_secs_f64(all.len() as f64 / 16_000.0);
    for (i, frame) in all.chunks(160).enumerate() {
        if i == 30 {
            s.input.send(SttInput::SpeechStarted(start)).await.unwrap();
        }
        s.input
            .send(SttInput::Audio(AudioFrame::new(frame.to_vec(), 16_000, 1)))
            .await
            .unwrap();
    }
    s.input.send(SttInput::SpeechEnded(end)).await.unwrap();
    after
}

#[cfg(feature = "local")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_falls_back_to_whisper_mid_turn_without_losing_it() {
    let gw = Gateway::start(no_synth()).await;
    // The connection drops at the first finalize; reconnects are refused
    // (bad credentials now): the cloud STT gives up mid-turn.
    let refused = Plan {
        reject: Some(401),
        ..Plan::default()
    };
    gw.plan(vec![
        Plan {
            faults: vec![(0, Fault::Drop)],
            ..Plan::default()
        },
        refused.clone(),
        refused,
    ]);
    let primary: Arc<dyn Stt> = Arc::new(stt(&gw));
    let stt = FallbackStt::new(primary, whisper(), ("livekit/deepgram", "whisper"));
    let mut s = stt.stream(&JobContext::default()).await.unwrap();
    let next = speak_into(&s, Duration::ZERO, "Please book a table for two people.").await;
    let events = until_answer(&mut s).await;
    let text = final_text(&events).unwrap_or_default().to_lowercase();
    assert!(
        text.contains("table") && text.contains("people"),
        "{events:?}"
    );
    // The transcript sits where the speech was, in the session's stream time.
    let SttEvent::Final(t) = events.last().unwrap() else {
        panic!()
    };
    assert!(t.start <= Duration::from_millis(400), "{t:?}");
    assert!(
        error_kinds(&events).contains(&ErrorKind::Connection),
        "{events:?}"
    );

    // The next turn goes straight to whisper on the same stream.
    speak_into(&s, next, "What is the weather like in London?").await;
    let events = until_answer(&mut s).await;
    let text = final_text(&events).unwrap_or_default().to_lowercase();
    assert!(text.contains("weather"), "{events:?}");
    let SttEvent::Final(t) = events.last().unwrap() else {
        panic!()
    };
    assert!(t.start >= next, "{t:?} is in the second turn");
    assert_eq!(gw.conns().len(), 2, "no reconnect after giving up");
}

#[cfg(feature = "local")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_falls_back_when_the_cloud_cannot_open() {
    let gw = Gateway::start(no_synth()).await;
    gw.plan(vec![Plan {
        reject: Some(401),
        ..Plan::default()
    }]);
    let primary: Arc<dyn Stt> = Arc::new(stt(&gw));
    let stt = FallbackStt::new(primary, whisper(), ("livekit/deepgram", "whisper"));
    let mut s = stt.stream(&JobContext::default()).await.unwrap();
    speak_into(
        &s,
        Duration::ZERO,
        "I would like to change my flight to Monday morning.",
    )
    .await;
    let text = final_text(&until_answer(&mut s).await)
        .unwrap_or_default()
        .to_lowercase();
    assert!(text.contains("flight"), "{text}");
    // Within the cooldown, new streams do not knock on the cloud again.
    let _s2 = stt.stream(&JobContext::default()).await.unwrap();
    assert_eq!(gw.conns().len(), 1);
}

// ---------------------------------------------------------------- TTS

const REPLY: [&str; 3] = [
    "Sure, I can help with that. ",
    "The next train leaves at seven. ",
    "Anything else?",
];

/// Sends `segments`, drops input, collects until output closes.
async fn speak(
    tts: &dyn Tts,
    segments: &[&str],
) -> (Vec<Result<TtsAudio, agent::StageError>>, Duration) {
    let mut s = tts.stream(&JobContext::default()).await.expect("stream");
    let t0 = Instant::now();
    for seg in segments {
        s.input
            .send(TtsInput::Segment(seg.to_string()))
            .await
            .unwrap();
    }
    drop(s.input);
    let mut out = Vec::new();
    let mut first = None;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), s.output.recv()).await
    {
        if item.as_ref().is_ok_and(|a| !a.frame.samples.is_empty()) {
            first.get_or_insert_with(|| t0.elapsed());
        }
        out.push(item);
    }
    (out, first.unwrap_or_default())
}

fn pcm_of(items: &[Result<TtsAudio, agent::StageError>]) -> Vec<i16> {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|a| a.frame.samples.iter().copied())
        .collect()
}

fn text_of(items: &[Result<TtsAudio, agent::StageError>]) -> String {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|a| a.text.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_streams_the_gateways_audio_with_the_reply_text() {
    let gw = Gateway::start(espeak_synth()).await;
    let tts = tts(&gw);
    assert_eq!(tts.sample_rate(), 24_000);
    let (items, _) = speak(&tts, &REPLY).await;
    assert!(
        items.iter().all(Result::is_ok),
        "{:?}",
        items.iter().find(|i| i.is_err())
    );
    // Exactly the PCM the gateway sent (espeak-ng speech of each segment).
    let expected: Vec<i16> = REPLY.iter().flat_map(|s| espeak_24k(s.trim())).collect();
    let got = pcm_of(&items);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "audio differs from what the gateway sent");
    for a in items.iter().flatten() {
        assert_eq!(a.frame.sample_rate, 24_000);
        assert_eq!(a.frame.channels, 1);
        assert!(a.frame.samples.len() <= 2400);
    }
    // Text attached to the audio adds up to the reply, segment by segment.
    assert_eq!(text_of(&items), REPLY.concat());
    let secs = got.len() as f64 / 24_000.0;
    assert!((3.0..12.0).contains(&secs), "{secs} s");

    let conns = gw.conns();
    assert_eq!(conns.len(), 1);
    gw.assert_clean();
    let c = &conns[0];
    assert_eq!(c.path, "/v1/tts");
    assert_eq!(c.query_model.as_deref(), Some("cartesia/sonic-2"));
    assert_eq!(c.claims.as_ref().unwrap()["inference"]["perform"], true);
    let create = c.session_create.as_ref().unwrap();
    assert_eq!(create["sample_rate"], "24000");
    assert_eq!(create["encoding"], "pcm_s16le");
    assert_eq!(create["voice"], "voice-1234");
    assert_eq!(create["model"], "cartesia/sonic-2");
    assert_eq!(create["language"], "en");
    // One input_transcript and one flush per segment.
    assert_eq!(c.transcripts, REPLY.to_vec());
    assert_eq!(c.flushes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_first_audio_does_not_wait_for_the_whole_reply() {
    let gw = Gateway::start(espeak_synth()).await;
    // The provider streams in real time: 100 ms of audio every 100 ms.
    gw.set_chunk_gap(Duration::from_millis(100));
    let _ = espeak_24k(REPLY[0].trim());
    let tts = tts(&gw);
    let mut s = tts.stream(&JobContext::default()).await.unwrap();
    let t0 = Instant::now();
    s.input
        .send(TtsInput::Segment(REPLY[0].into()))
        .await
        .unwrap();
    let first = s.output.recv().await.unwrap().unwrap();
    let first_at = t0.elapsed();
    assert!(!first.frame.samples.is_empty());
    assert!(
        first_at < Duration::from_millis(300),
        "first audio after {first_at:?}"
    );
    drop(s.input);
    while s.output.recv().await.is_some() {}
    assert!(
        t0.elapsed() > Duration::from_secs(1),
        "the segment streamed over time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_pools_connections_across_replies_and_refreshes_old_ones() {
    let gw = Gateway::start(espeak_synth()).await;
    let tts = InferenceTts::new(
        InferenceTtsOptions {
            max_session: Duration::from_millis(1500),
            ..tts_options(&gw)
        },
        &livekit_env,
    )
    .unwrap();
    let (a, _) = speak(&tts, &[REPLY[0]]).await;
    assert_eq!(text_of(&a), REPLY[0]);
    assert_eq!(tts.pooled(), 1);
    let (b, _) = speak(&tts, &[REPLY[1]]).await;
    assert_eq!(text_of(&b), REPLY[1]);
    assert_eq!(
        gw.conns().len(),
        1,
        "the second reply reused the connection"
    );
    assert_eq!(gw.conns()[0].flushes, 2);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (c, _) = speak(&tts, &[REPLY[2]]).await;
    assert_eq!(text_of(&c), REPLY[2]);
    assert_eq!(gw.conns().len(), 2, "an old connection is replaced");
    gw.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_never_hands_a_late_generation_to_the_next_reply() {
    let gw = Gateway::start(espeak_synth()).await;
    gw.plan(vec![Plan {
        trailing_generation: true,
        ..Plan::default()
    }]);
    let tts = tts(&gw);
    let (a, _) = speak(&tts, &[REPLY[0]]).await;
    assert_eq!(pcm_of(&a), espeak_24k(REPLY[0].trim()));
    // The late generation arrives on the idle pooled connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (b, _) = speak(&tts, &[REPLY[1]]).await;
    assert_eq!(text_of(&b), REPLY[1]);
    assert!(
        pcm_of(&b) == espeak_24k(REPLY[1].trim()),
        "the second reply holds only its own audio"
    );
    assert_eq!(gw.conns().len(), 2, "the stale connection was replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_interruption_stops_at_once_and_drops_the_connection() {
    let gw = Gateway::start(espeak_synth()).await;
    gw.set_chunk_gap(Duration::from_millis(20));
    let tts = tts(&gw);
    let mut s = tts.stream(&JobContext::default()).await.unwrap();
    for seg in REPLY {
        s.input.send(TtsInput::Segment(seg.into())).await.unwrap();
    }
    let _first = s.output.recv().await.unwrap().unwrap();
    let input = s.input;
    let stopped = Instant::now();
    drop(s.output);
    tokio::time::timeout(Duration::from_millis(100), input.closed())
        .await
        .expect("the stream ends at once");
    // The gateway sees the connection go (it notices on its next send).
    let mut closed = None;
    for _ in 0..50 {
        if let Some(at) = gw.conns()[0].closed_at {
            closed = Some(at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = closed.expect("connection closed");
    assert!(closed.duration_since(stopped) < Duration::from_millis(300));
    assert!(gw.conns()[0].sent_samples < REPLY.iter().map(|s| espeak_24k(s.trim()).len()).sum());
    // The interrupted connection is not reused: its audio could leak.
    assert_eq!(tts.pooled(), 0);
    let (next, _) = speak(&tts, &[REPLY[2]]).await;
    assert_eq!(text_of(&next), REPLY[2]);
    assert_eq!(pcm_of(&next), espeak_24k(REPLY[2].trim()));
    assert_eq!(gw.conns().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_refused_upgrade_is_an_auth_error() {
    let gw = Gateway::start(espeak_synth()).await;
    gw.plan(vec![Plan {
        reject: Some(403),
        ..Plan::default()
    }]);
    let e = tts(&gw).stream(&JobContext::default()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains(SECRET));
}

/// The first segment's audio stops after 3 chunks with `fault`.
async fn tts_fails_with(fault: Fault, kind: ErrorKind) {
    let gw = Gateway::start(espeak_synth()).await;
    gw.plan(vec![Plan {
        faults: vec![(0, fault)],
        chunks_before_fault: 3,
        ..Plan::default()
    }]);
    let tts = tts(&gw);
    let (items, _) = speak(&tts, &REPLY).await;
    let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind, kind);
    assert!(items.last().unwrap().is_err(), "the error ends the stream");
    assert_eq!(pcm_of(&items).len(), 3 * 2400);
    assert_eq!(tts.pooled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_error_event_mid_stream_fails_the_stream() {
    tts_fails_with(
        Fault::Error {
            code: 502,
            message: "provider error".into(),
        },
        ErrorKind::Server,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_dropped_connection_fails_the_stream() {
    tts_fails_with(Fault::Drop, ErrorKind::Connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_stall_times_out() {
    tts_fails_with(Fault::Stall, ErrorKind::Timeout).await;
}

// ---------------------------------------------------------------- TTS fallback

#[cfg(feature = "local")]
fn piper() -> Arc<dyn Tts> {
    let cache = common::require(&[
        ModelFile::PiperVoice,
        ModelFile::PiperVoiceConfig,
        ModelFile::OnnxRuntime,
    ]);
    Arc::new(PiperTts::new(&cache).unwrap_or_else(|e| panic!("{e}")))
}

#[cfg(feature = "local")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_falls_back_to_piper_mid_reply_without_dropping_it() {
    let gw = Gateway::start(espeak_synth()).await;
    gw.plan(vec![Plan {
        faults: vec![(1, Fault::Drop)],
        chunks_before_fault: 2,
        ..Plan::default()
    }]);
    let primary: Arc<dyn Tts> = Arc::new(tts(&gw));
    let tts = FallbackTts::new(primary, piper(), ("livekit/cartesia", "piper"));
    let (items, _) = speak(&tts, &REPLY).await;
    assert!(
        items.iter().all(Result::is_ok),
        "no error reaches the session"
    );
    // The whole reply is spoken: segment 1 by the cloud, the rest by Piper.
    assert_eq!(text_of(&items), REPLY.concat());
    let rates: Vec<u32> = items
        .iter()
        .flatten()
        .map(|a| a.frame.sample_rate)
        .collect();
    assert_eq!(rates.first(), Some(&24_000));
    assert_eq!(rates.last(), Some(&22_050));
    let piper_secs = items
        .iter()
        .flatten()
        .filter(|a| a.frame.sample_rate == 22_050)
        .map(|a| a.frame.duration().as_secs_f64())
        .sum::<f64>();
    assert!(piper_secs > 1.5, "Piper spoke the rest: {piper_secs} s");
}

#[cfg(feature = "local")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_falls_back_when_the_cloud_cannot_open() {
    let gw = Gateway::start(espeak_synth()).await;
    gw.plan(vec![Plan {
        reject: Some(401),
        ..Plan::default()
    }]);
    let primary: Arc<dyn Tts> = Arc::new(tts(&gw));
    let tts = FallbackTts::new(primary, piper(), ("livekit/cartesia", "piper"));
    let (items, _) = speak(&tts, &[REPLY[1]]).await;
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(text_of(&items), REPLY[1]);
    assert!(
        items
            .iter()
            .flatten()
            .all(|a| a.frame.sample_rate == 22_050)
    );
}

// ---------------------------------------------------------------- a whole turn

/// Answers every request with one fixed sentence and records what it heard.
struct OneLineLlm {
    heard: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl agent::Llm for OneLineLlm {
    async fn chat(
        &self,
        request: agent::LlmRequest,
    ) -> Result<agent::LlmStream, agent::StageError> {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == agent::Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        self.heard.lock().unwrap().push(last);
        let chunks = ["The next train ", "leaves at seven."]
            .into_iter()
            .map(|t| Ok(agent::LlmChunk::Text(t.into())))
            .chain([Ok(agent::LlmChunk::Done {
                finish_reason: Some("stop".into()),
            })]);
        Ok(Box::pin(futures::stream::iter(chunks.collect::<Vec<_>>())))
    }
}

/// A session hears real speech through the real VAD, the cloud STT
/// transcribes it (scripted), the LLM answers, and the cloud TTS's espeak-ng
/// audio is what the speaker plays, sample for sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hears_and_speaks_through_livekit_inference() {
    use agent::session::{self, AudioIo, SessionEvent, SessionOptions, Stages};

    let gw = Gateway::start(espeak_synth()).await;
    gw.script(&["when is the next train"]);
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stages = Stages {
        llm: Arc::new(OneLineLlm {
            heard: heard.clone(),
        }),
        stt: Some(Arc::new(stt(&gw))),
        tts: Some(Arc::new(tts(&gw))),
        vad: Some(Arc::new(speech::EarshotVadFactory)),
        turn_detector: None,
    };
    let (mic_tx, mic_rx) = tokio::sync::mpsc::channel(8);
    let (writer, control, mut reader) = agent::playout(24_000, 64);
    let (handle, mut events, task) = session::start(
        stages,
        SessionOptions::default(),
        AudioIo {
            input: Some(mic_rx),
            output: Some((writer, control)),
        },
    );
    // The microphone: 20 ms frames in real time.
    let speech = common::espeak_speech_16k("When is the next train?");
    let mut pcm: Vec<i16> = vec![0; 8_000];
    pcm.extend(speech.iter().map(|&v| (v * 32767.0) as i16));
    pcm.extend(vec![0i16; 16_000 * 3]);
    let mic = tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        for (i, frame) in pcm.chunks(320).enumerate() {
            tokio::time::sleep_until(t0 + Duration::from_millis(20 * i as u64)).await;
            if mic_tx
                .send(AudioFrame::new(frame.to_vec(), 16_000, 1))
                .await
                .is_err()
            {
                return;
            }
        }
        // Keep the input open: closing it ends the session's listening.
        std::future::pending::<()>().await;
    });
    let speaker = tokio::spawn(async move {
        let mut played = Vec::new();
        while let Some(p) = reader.recv().await {
            if let agent::Playout::Frame(f) = p {
                played.extend(f.samples.iter().copied());
            }
        }
        played
    });
    let mut transcript = None;
    let mut spoke = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spoke.is_none() {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the agent answers within 20 s")
            .expect("session alive");
        match e {
            SessionEvent::UserTranscript {
                text,
                is_final: true,
            } => transcript = Some(text),
            SessionEvent::AgentSpoke { text, .. } => spoke = Some(text),
            SessionEvent::Error { stage, error } => panic!("{stage}: {error}"),
            _ => {}
        }
    }
    assert_eq!(transcript.as_deref(), Some("when is the next train"));
    assert_eq!(
        *heard.lock().unwrap(),
        vec!["when is the next train".to_string()]
    );
    assert_eq!(spoke.as_deref(), Some("The next train leaves at seven."));
    drop(handle);
    mic.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    while events.recv().await.is_some() {}
    let played = tokio::time::timeout(Duration::from_secs(5), speaker)
        .await
        .expect("speaker ends with the session")
        .expect("speaker task");
    // Exactly the audio the gateway made for the text it was given.
    let conns = gw.conns();
    let tts_conn = conns
        .iter()
        .find(|c| c.path == "/v1/tts")
        .expect("a TTS connection");
    assert_eq!(
        tts_conn.transcripts.concat().trim(),
        "The next train leaves at seven."
    );
    let expected: Vec<i16> = tts_conn
        .transcripts
        .iter()
        .flat_map(|t| espeak_24k(t.trim()))
        .collect();
    assert!(!expected.is_empty());
    assert!(
        played == expected,
        "{} samples played, {} made",
        played.len(),
        expected.len()
    );
    // The STT heard the speech in 50 ms chunks and finalized once.
    let stt_conn = conns
        .iter()
        .find(|c| c.path == "/v1/stt")
        .expect("an STT connection");
    assert_eq!(stt_conn.finalize_at.len(), 1);
    gw.assert_clean();
}
