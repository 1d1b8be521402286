//! The engine driven over channel transports: the test plays the LiveKit server
//! message by message (join and reconnect responses, participant updates, answers
//! and offers made by webrtc-rs peer connections of its own), so negotiation,
//! reconnects and back-pressure are checked without a server. The peer connections
//! are real (on loopback) because the engine's SDP must be real. (Test code only; it
//! runs past 600 lines because each scenario scripts the server message by message.)

use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCSessionDescription,
};

use super::join::new_peer_connection;
use super::*;
use crate::ReconnectPolicy;
use crate::local_track::LocalAudioTrack;
use crate::room::Participant;
use crate::signal::testing::{ChannelConnector, Dial, ServerEnd};

/// Longest wait for anything the engine should do.
const WAIT: Duration = Duration::from_secs(10);

/// The server side's peer connections ignore their callbacks.
struct Quiet;

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Quiet {}

async fn server_pc() -> Arc<dyn PeerConnection> {
    new_peer_connection(vec!["127.0.0.1:0".into()], Vec::new(), Arc::new(Quiet))
        .await
        .unwrap()
}

fn participant(sid: &str, identity: &str) -> proto::ParticipantInfo {
    proto::ParticipantInfo {
        sid: sid.into(),
        identity: identity.into(),
        state: proto::participant_info::State::Active as i32,
        ..Default::default()
    }
}

fn join_response(local_sid: &str, others: Vec<proto::ParticipantInfo>) -> Resp {
    Resp::Join(proto::JoinResponse {
        room: Some(proto::Room {
            name: "test-room".into(),
            ..Default::default()
        }),
        participant: Some(participant(local_sid, "agent")),
        other_participants: others,
        ping_interval: 1,
        ping_timeout: 30,
        ..Default::default()
    })
}

fn update(list: Vec<proto::ParticipantInfo>) -> Resp {
    Resp::Update(proto::ParticipantUpdate { participants: list })
}

/// The test's side of a room: the handle, its events, and the server's ends.
struct Harness {
    room: Room,
    events: mpsc::Receiver<RoomEvent>,
    /// Connections the engine opens.
    dials: mpsc::Receiver<Dial>,
    /// The signal connection now.
    server: ServerEnd,
    /// The server's publisher-facing peer connection (answers our offers).
    sfu: Arc<dyn PeerConnection>,
    /// The engine task: join, then run.
    engine: JoinHandle<Result<DisconnectReason, RtcError>>,
}

fn options() -> ConnectOptions {
    ConnectOptions {
        reconnect: ReconnectPolicy {
            base_delay: Duration::from_millis(1),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Join as `PA_me` with `others` in the room; returns once offer 1 is in.
async fn start(
    options: ConnectOptions,
    others: Vec<proto::ParticipantInfo>,
) -> (Harness, proto::SessionDescription) {
    let (dial_tx, mut dials) = mpsc::channel(4);
    let connector = Box::new(ChannelConnector { dials: dial_tx });
    let (events_tx, events) = mpsc::channel(options.event_capacity.max(1));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (mut engine, dropped) = Engine::new(
        connector,
        "ws://127.0.0.1:9",
        "secret-token",
        options,
        cmd_rx,
        events_tx,
        None,
    );
    let engine = tokio::spawn(async move {
        engine.join(false).await?;
        Ok(engine.run().await)
    });
    let dial = next_dial(&mut dials).await;
    assert!(
        dial.url.starts_with("ws://127.0.0.1:9/rtc?"),
        "{}",
        dial.url
    );
    assert!(!dial.url.contains("reconnect=1"), "{}", dial.url);
    assert!(
        !dial.url.contains("secret-token"),
        "the token is never in the URL"
    );
    let server = dial.accept();
    server
        .tx
        .send(join_response("PA_me", others))
        .await
        .unwrap();
    let mut h = Harness {
        room: Room {
            cmd: cmd_tx,
            local: Participant {
                sid: "PA_me".into(),
                identity: "agent".into(),
                ..Default::default()
            },
            room_name: "test-room".into(),
            dropped_events: dropped,
        },
        events,
        dials,
        server,
        sfu: server_pc().await,
        engine,
    };
    let offer = expect_offer(&mut h.server).await;
    assert_eq!(offer.id, 1);
    (h, offer)
}

async fn next_dial(dials: &mut mpsc::Receiver<Dial>) -> Dial {
    tokio::time::timeout(WAIT, dials.recv())
        .await
        .expect("the engine dialled nobody")
        .expect("the engine is gone")
}

/// The next request that is not a candidate or a ping.
async fn next_req(server: &mut ServerEnd) -> Req {
    next_req_where(server, |r| !matches!(r, Req::Trickle(_) | Req::PingReq(_))).await
}

/// The next request `wanted` accepts, skipping the others.
async fn next_req_where(server: &mut ServerEnd, wanted: impl Fn(&Req) -> bool) -> Req {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let req = tokio::time::timeout_at(until, server.rx.recv())
            .await
            .expect("the engine sent nothing")
            .expect("the engine hung up");
        if wanted(&req) {
            return req;
        }
    }
}

async fn expect_offer(server: &mut ServerEnd) -> proto::SessionDescription {
    match next_req(server).await {
        Req::Offer(o) => {
            assert_eq!(o.r#type, "offer");
            o
        }
        other => panic!("expected an offer, got {other:?}"),
    }
}

async fn next_event(events: &mut mpsc::Receiver<RoomEvent>) -> RoomEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event")
        .expect("the events ended")
}

/// The next event `wanted` accepts, skipping the others.
async fn event_where(
    events: &mut mpsc::Receiver<RoomEvent>,
    wanted: impl Fn(&RoomEvent) -> bool,
) -> RoomEvent {
    loop {
        let e = next_event(events).await;
        if wanted(&e) {
            return e;
        }
    }
}

/// The server's answer to our offer, made by `sfu`.
async fn answer(sfu: &Arc<dyn PeerConnection>, offer: &proto::SessionDescription) -> Resp {
    sfu.set_remote_description(RTCSessionDescription::offer(offer.sdp.clone()).unwrap())
        .await
        .unwrap();
    let answer = sfu.create_answer(None).await.unwrap();
    sfu.set_local_description(answer.clone()).await.unwrap();
    let sdp = sfu.local_description().await.map_or(answer.sdp, |d| d.sdp);
    Resp::Answer(proto::SessionDescription {
        r#type: "answer".into(),
        sdp,
        id: offer.id,
        ..Default::default()
    })
}

fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:"))
}

/// Publish a track: the engine's AddTrackRequest is answered with track sid `sid`.
/// Returns the track and its cid.
async fn publish(h: &mut Harness, sid: &str) -> (LocalAudioTrack, String) {
    let room = h.room.clone();
    let publishing = tokio::spawn(async move { room.publish_audio("voice", 48_000).await });
    let Req::AddTrack(add) = next_req(&mut h.server).await else {
        panic!("expected an AddTrackRequest");
    };
    assert_eq!(add.r#type, proto::TrackType::Audio as i32);
    h.server
        .tx
        .send(Resp::TrackPublished(proto::TrackPublishedResponse {
            cid: add.cid.clone(),
            track: Some(proto::TrackInfo {
                sid: sid.into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let track = tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(track.sid(), sid);
    (track, add.cid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_renegotiates_only_once_the_answer_is_in() {
    let (mut h, offer1) = start(options(), vec![participant("PA_a", "alice")]).await;
    assert!(offer1.sdp.contains("m=application"), "the data channels");
    assert!(
        matches!(next_event(&mut h.events).await, RoomEvent::ParticipantJoined(p) if p.identity == "alice")
    );
    // Two tracks published while offer 1 is unanswered: no offer goes out yet.
    let (_a, _) = publish(&mut h, "TR_a").await;
    let (_b, _) = publish(&mut h, "TR_b").await;
    while let Ok(req) = h.server.rx.try_recv() {
        assert!(!matches!(req, Req::Offer(_)), "an offer while one is out");
    }
    h.server
        .tx
        .send(answer(&h.sfu, &offer1).await)
        .await
        .unwrap();
    // One offer carries both.
    let offer2 = expect_offer(&mut h.server).await;
    assert_eq!(offer2.id, 2);
    assert_eq!(offer2.sdp.matches("m=audio").count(), 2, "{}", offer2.sdp);
    h.server
        .tx
        .send(answer(&h.sfu, &offer2).await)
        .await
        .unwrap();
    // Everything before this update has been handled when its event comes.
    h.server
        .tx
        .send(update(vec![participant("PA_b", "bob")]))
        .await
        .unwrap();
    event_where(&mut h.events, |e| {
        matches!(e, RoomEvent::ParticipantJoined(_))
    })
    .await;
    while let Ok(req) = h.server.rx.try_recv() {
        assert!(!matches!(req, Req::Offer(_)), "nothing left to offer");
    }
    // The next track is offered at once.
    let (_c, _) = publish(&mut h, "TR_c").await;
    assert_eq!(expect_offer(&mut h.server).await.id, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_offer_is_answered_with_its_id_after_early_candidates() {
    let (mut h, _) = start(options(), Vec::new()).await;
    let sfu_sub = server_pc().await;
    sfu_sub.create_data_channel("x", None).await.unwrap();
    let offer = sfu_sub.create_offer(None).await.unwrap();
    sfu_sub.set_local_description(offer.clone()).await.unwrap();
    // A candidate before the offer: queued, not an error.
    let candidate = RTCIceCandidateInit {
        candidate: "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host".into(),
        ..Default::default()
    };
    h.server
        .tx
        .send(Resp::Trickle(proto::TrickleRequest {
            candidate_init: serde_json::to_string(&candidate).unwrap(),
            target: proto::SignalTarget::Subscriber as i32,
            r#final: false,
        }))
        .await
        .unwrap();
    // Garbage is ignored too.
    h.server
        .tx
        .send(Resp::Trickle(proto::TrickleRequest {
            candidate_init: "{not json".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    h.server
        .tx
        .send(Resp::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.sdp,
            id: 7,
            ..Default::default()
        }))
        .await
        .unwrap();
    let Req::Answer(a) = next_req(&mut h.server).await else {
        panic!("expected an answer");
    };
    assert_eq!((a.r#type.as_str(), a.id), ("answer", 7));
    sfu_sub
        .set_remote_description(RTCSessionDescription::answer(a.sdp).unwrap())
        .await
        .expect("a valid answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_signal_is_resumed_with_sync_state_and_an_ice_restart() {
    let (mut h, offer1) = start(options(), Vec::new()).await;
    h.server
        .tx
        .send(answer(&h.sfu, &offer1).await)
        .await
        .unwrap();
    let (_track, cid) = publish(&mut h, "TR_a").await;
    let offer2 = expect_offer(&mut h.server).await;
    h.server
        .tx
        .send(answer(&h.sfu, &offer2).await)
        .await
        .unwrap();

    // The signal drops.
    drop(std::mem::replace(
        &mut h.server,
        ServerEnd {
            tx: mpsc::channel(1).0,
            rx: mpsc::channel(1).1,
        },
    ));
    assert!(matches!(
        event_where(&mut h.events, |e| matches!(e, RoomEvent::Reconnecting)).await,
        RoomEvent::Reconnecting
    ));
    let dial = next_dial(&mut h.dials).await;
    assert!(dial.url.contains("&reconnect=1&sid=PA_me"), "{}", dial.url);
    h.server = dial.accept();
    h.server
        .tx
        .send(Resp::Reconnect(proto::ReconnectResponse::default()))
        .await
        .unwrap();
    let Req::SyncState(sync) = next_req(&mut h.server).await else {
        panic!("expected SyncState");
    };
    assert_eq!(sync.publish_tracks.len(), 1);
    assert_eq!(sync.publish_tracks[0].cid, cid);
    assert_eq!(
        sync.publish_tracks[0]
            .track
            .as_ref()
            .map(|t| t.sid.as_str()),
        Some("TR_a")
    );
    let offer3 = expect_offer(&mut h.server).await;
    assert_eq!(offer3.id, 3);
    assert_ne!(
        ice_ufrag(&offer3.sdp),
        ice_ufrag(&offer2.sdp),
        "the publisher restarts ICE"
    );
    assert!(matches!(
        next_event(&mut h.events).await,
        RoomEvent::Reconnected { resumed: true }
    ));
    h.server
        .tx
        .send(answer(&h.sfu, &offer3).await)
        .await
        .unwrap();
    // The room works on the new connection.
    h.room
        .set_attributes([("lk.agent.state".to_owned(), "listening".to_owned())].into())
        .await
        .unwrap();
    let Req::UpdateMetadata(m) = next_req(&mut h.server).await else {
        panic!("expected UpdateParticipantMetadata");
    };
    assert_eq!(m.attributes["lk.agent.state"], "listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resume_falls_back_to_a_rejoin_that_republishes() {
    let (mut h, offer1) = start(
        options(),
        vec![participant("PA_a", "alice"), participant("PA_b", "bob")],
    )
    .await;
    h.server
        .tx
        .send(answer(&h.sfu, &offer1).await)
        .await
        .unwrap();
    let (_track, cid) = publish(&mut h, "TR_a").await;
    // The server asks us to resume (e.g. it is migrating).
    h.server
        .tx
        .send(Resp::Leave(proto::LeaveRequest {
            action: proto::leave_request::Action::Resume as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    event_where(&mut h.events, |e| matches!(e, RoomEvent::Reconnecting)).await;
    // It has forgotten us: the resume is refused, so the next attempt rejoins.
    let dial = next_dial(&mut h.dials).await;
    assert!(dial.url.contains("reconnect=1"));
    dial.refuse(RtcError::Refused {
        status: 404,
        body: "unknown participant".into(),
    });
    let dial = next_dial(&mut h.dials).await;
    assert!(!dial.url.contains("reconnect=1"), "{}", dial.url);
    h.server = dial.accept();
    h.sfu = server_pc().await;
    h.server
        .tx
        .send(join_response(
            "PA_me2",
            vec![participant("PA_b", "bob"), participant("PA_c", "carol")],
        ))
        .await
        .unwrap();
    let offer = expect_offer(&mut h.server).await;
    assert_eq!(offer.id, 1, "a new session negotiates from scratch");
    let Req::AddTrack(add) = next_req(&mut h.server).await else {
        panic!("expected the track republished");
    };
    assert_eq!(add.cid, cid, "same track, same cid");
    let mut seen = Vec::new();
    loop {
        match next_event(&mut h.events).await {
            RoomEvent::Reconnected { resumed } => {
                assert!(!resumed);
                break;
            }
            RoomEvent::ParticipantLeft(p) => seen.push(format!("left {}", p.identity)),
            RoomEvent::ParticipantJoined(p) => seen.push(format!("joined {}", p.identity)),
            _ => {}
        }
    }
    assert_eq!(seen, ["left alice", "joined carol"]);
    // The republished track is added to the new publisher once published again.
    h.server
        .tx
        .send(Resp::TrackPublished(proto::TrackPublishedResponse {
            cid: cid.clone(),
            track: Some(proto::TrackInfo {
                sid: "TR_a2".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    h.server
        .tx
        .send(answer(&h.sfu, &offer).await)
        .await
        .unwrap();
    let offer2 = expect_offer(&mut h.server).await;
    assert_eq!(offer2.id, 2);
    assert!(offer2.sdp.contains("m=audio"), "{}", offer2.sdp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_reports_disconnected_and_the_handle_dies() {
    let mut options = options();
    options.reconnect.resume_attempts = 1;
    options.reconnect.max_attempts = 3;
    let (mut h, _) = start(options, Vec::new()).await;
    drop(h.server);
    event_where(&mut h.events, |e| matches!(e, RoomEvent::Reconnecting)).await;
    next_dial(&mut h.dials).await.refuse(RtcError::Refused {
        status: 404,
        body: String::new(),
    });
    // A rejoin refused for the token: no point trying again.
    next_dial(&mut h.dials).await.refuse(RtcError::Refused {
        status: 401,
        body: String::new(),
    });
    assert!(matches!(
        next_event(&mut h.events).await,
        RoomEvent::Disconnected(DisconnectReason::ReconnectFailed)
    ));
    assert!(h.events.recv().await.is_none(), "no more events");
    assert!(matches!(
        h.room.publish_audio("x", 48_000).await,
        Err(RtcError::Closed)
    ));
    assert_eq!(
        h.engine.await.unwrap().unwrap(),
        DisconnectReason::ReconnectFailed
    );
    assert!(h.dials.try_recv().is_err(), "no third attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_leave_ends_the_room_and_close_sends_ours() {
    let (mut h, _) = start(options(), Vec::new()).await;
    h.server
        .tx
        .send(Resp::Leave(proto::LeaveRequest {
            action: proto::leave_request::Action::Disconnect as i32,
            reason: proto::DisconnectReason::RoomDeleted as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut h.events).await,
        RoomEvent::Disconnected(DisconnectReason::ServerLeave(r)) if r == proto::DisconnectReason::RoomDeleted as i32
    ));
    assert!(
        h.room.close().await.is_ok(),
        "closing a closed room is fine"
    );

    let (mut h, _) = start(options(), Vec::new()).await;
    h.room.close().await.unwrap();
    let Req::Leave(leave) = next_req(&mut h.server).await else {
        panic!("expected our LeaveRequest");
    };
    assert_eq!(
        leave.action,
        proto::leave_request::Action::Disconnect as i32
    );
    assert!(matches!(
        event_where(&mut h.events, |e| matches!(e, RoomEvent::Disconnected(_))).await,
        RoomEvent::Disconnected(DisconnectReason::ClientInitiated)
    ));
    assert_eq!(
        h.engine.await.unwrap().unwrap(),
        DisconnectReason::ClientInitiated
    );
}

/// The engine never waits for the event reader: with the channel full and nobody
/// reading, it keeps serving commands and pinging; what it sheds is counted, and
/// every event that must arrive does, in order, once the reader is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_never_stalls_the_engine() {
    let mut options = options();
    options.event_capacity = 1;
    let (mut h, _) = start(options, vec![participant("PA_a", "alice")]).await;
    const CHANGES: usize = 300;
    const JOINS: usize = 20;
    for i in 0..CHANGES {
        let mut alice = participant("PA_a", "alice");
        alice.attributes.insert("n".into(), i.to_string());
        let mut list = vec![alice];
        if i % (CHANGES / JOINS) == 0 {
            let n = i / (CHANGES / JOINS);
            list.push(participant(&format!("PA_{n:02}"), &format!("p{n:02}")));
        }
        h.server.tx.send(update(list)).await.unwrap();
    }
    // Nobody reads; the engine still answers commands...
    let everyone = tokio::time::timeout(WAIT, async {
        loop {
            let list = h.room.remote_participants().await.unwrap();
            if list.len() == JOINS + 1 {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the engine stalled");
    assert_eq!(everyone.len(), JOINS + 1);
    // ...and keeps the session alive (ping_interval is 1 s).
    next_req_where(&mut h.server, |r| matches!(r, Req::PingReq(_))).await;
    next_req_where(&mut h.server, |r| matches!(r, Req::PingReq(_))).await;
    let dropped = h.room.dropped_events();
    assert!(dropped > 0, "attribute changes were shed");
    // The reader comes back: every join, in order; attribute changes that were not
    // dropped.
    let mut joined = Vec::new();
    let mut changes = 0;
    while joined.len() < JOINS + 1 {
        match next_event(&mut h.events).await {
            RoomEvent::ParticipantJoined(p) => joined.push(p.identity),
            RoomEvent::ParticipantAttributesChanged { .. } => changes += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut expected = vec!["alice".to_owned()];
    expected.extend((0..JOINS).map(|n| format!("p{n:02}")));
    assert_eq!(joined, expected);
    while let Ok(e) = h.events.try_recv() {
        assert!(matches!(e, RoomEvent::ParticipantAttributesChanged { .. }));
        changes += 1;
    }
    assert_eq!(
        changes as u64 + h.room.dropped_events(),
        CHANGES as u64,
        "each change is delivered or counted as dropped"
    );
    assert!(h.dropped_events_seen_by_clones());
}

impl Harness {
    /// Every clone of the handle reads the same counter.
    fn dropped_events_seen_by_clones(&self) -> bool {
        let clone = self.room.clone();
        clone.dropped_events() == self.room.dropped_events()
            && self.room.dropped_events.load(Ordering::Relaxed) > 0
    }
}
