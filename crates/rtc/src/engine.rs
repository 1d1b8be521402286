//! The engine task: owns the signal WebSocket, the two peer connections, the data
//! channels, the published tracks and the participant table, and turns everything
//! into [`RoomEvent`]s. One task, one `select!`:
//!
//! - commands from [`Room`] handles (bounded channel; the task ends when every
//!   handle is dropped or `Close` arrives),
//! - signal responses (offers, answers, trickle, participant updates, leave, pong),
//! - internal events from webrtc-rs callbacks and data-channel readers, tagged with
//!   the session generation so events of a torn-down session are ignored,
//! - the ping timer (`ping_interval`; no message for `ping_timeout` = signal lost).
//!
//! Signal or transport loss runs the reconnect loop (`reconnect`): resume attempts
//! (`reconnect=1&sid=…`, `SyncState`, publisher ICE restart), then full rejoins
//! (new join, new peer connections, tracks republished), then `Disconnected`.
//!
//! Ownership: the engine owns every task it spawns (data-channel readers, track
//! pacers) through `JoinHandle`s that are aborted when the session or the engine
//! ends; webrtc-rs stops a peer connection's driver when the connection is closed
//! and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, configure_nack,
    configure_rtcp_reports,
};
use webrtc_core::data_channel::RTCDataChannelInit;
use webrtc_core::media_stream::MediaStreamTrack;
use webrtc_core::peer_connection::configuration::RTCOfferOptions;
use webrtc_core::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use webrtc_core::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};

use crate::RtcError;
use crate::audio::{self, LocalAudioTrack, RemoteAudioTrack, RtpSink};
use crate::backoff::ReconnectKind;
use crate::data::{self, Sequencer, StreamAssembler};
use crate::msid::parse_msid;
use crate::room::{
    COMMAND_CAPACITY, Command, ConnectOptions, DataKind, DisconnectReason, Participant, Room,
    RoomEvent,
};
use crate::signal::{self, UrlParams, WsSink, WsStream};

const RELIABLE_LABEL: &str = "_reliable";
const LOSSY_LABEL: &str = "_lossy";
/// Payload type we offer Opus on (the answerer must keep it).
const OPUS_PT: u8 = 111;
/// Internal events buffered between webrtc-rs callbacks and the engine.
const INTERNAL_CAPACITY: usize = 1024;
/// Outgoing data packets held while the publisher data channel is not open yet.
const MAX_PENDING_DATA: usize = 1024;
/// Bound on one signal step (handshake, waiting for the join/reconnect response).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on closing a peer connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`nudge_driver`] may poke a publisher whose data channels do not open.
const NUDGE_FOR: Duration = Duration::from_secs(2);
/// Waiting for `TrackPublishedResponse`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Publisher,
    Subscriber,
}

impl Target {
    fn proto(self) -> i32 {
        match self {
            Target::Publisher => proto::SignalTarget::Publisher as i32,
            Target::Subscriber => proto::SignalTarget::Subscriber as i32,
        }
    }
}

enum PcEvent {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
}

enum Internal {
    Pc {
        generation: u64,
        target: Target,
        event: PcEvent,
    },
    Data {
        packet: Box<proto::DataPacket>,
        kind: DataKind,
    },
    DcOpen {
        generation: u64,
        label: String,
    },
}

/// Forwards webrtc-rs callbacks of one peer connection into the engine.
struct Forwarder {
    tx: mpsc::Sender<Internal>,
    generation: u64,
    target: Target,
}

impl Forwarder {
    async fn send(&self, event: PcEvent) {
        let _ = self
            .tx
            .send(Internal::Pc {
                generation: self.generation,
                target: self.target,
                event,
            })
            .await;
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.send(PcEvent::Candidate(init)).await,
            Err(e) => tracing::debug!(error = %e, "unserialisable local candidate"),
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.send(PcEvent::State(state)).await;
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.send(PcEvent::Track(track)).await;
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.send(PcEvent::DataChannel(dc)).await;
    }
}

/// One connection to the server: a signal socket and two peer connections.
struct Session {
    generation: u64,
    ws_tx: WsSink,
    ws_rx: WsStream,
    publisher: Arc<dyn PeerConnection>,
    subscriber: Arc<dyn PeerConnection>,
    reliable: Arc<dyn DataChannel>,
    lossy: Arc<dyn DataChannel>,
    reliable_open: bool,
    lossy_open: bool,
    /// Data-channel reader tasks; aborted when the session is torn down.
    tasks: Vec<JoinHandle<()>>,
    /// Pokes the publisher's driver until both data channels open ([`nudge_driver`]).
    driver_nudge: Option<JoinHandle<()>>,
    pub_remote_set: bool,
    sub_remote_set: bool,
    pub_pending_candidates: Vec<RTCIceCandidateInit>,
    sub_pending_candidates: Vec<RTCIceCandidateInit>,
    awaiting_answer: bool,
    renegotiate: bool,
    offer_id: u32,
    ping_interval: Duration,
    ping_timeout: Duration,
    last_recv: Instant,
    rtt_ms: i64,
}

impl Session {
    async fn teardown(mut self) {
        for t in self.tasks.drain(..).chain(self.driver_nudge.take()) {
            t.abort();
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.publisher.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.subscriber.close()).await;
    }
}

/// A track we publish; survives reconnects.
struct Published {
    cid: String,
    name: String,
    sid: String,
    info: Option<proto::TrackInfo>,
    /// Where the pacer writes; the engine swaps it on rejoin.
    sink_tx: watch::Sender<Option<RtpSink>>,
    /// A sink whose track is in an offer the server has not answered yet.
    /// RTP sent before the server applies the offer carries an SSRC it cannot
    /// place (no MID extension on audio), and it drops that stream for good:
    /// the sink is handed to the pacer once the answer is in.
    held_sink: Option<RtpSink>,
    /// The pacer task; aborted when the engine ends.
    pacer: Option<JoinHandle<()>>,
}

/// An `AddTrackRequest` waiting for its `TrackPublishedResponse`.
struct PendingPublish {
    name: String,
    sample_rate: u32,
    /// `None` for a republish after rejoin.
    reply: Option<oneshot::Sender<Result<LocalAudioTrack, RtcError>>>,
    deadline: Instant,
}

struct Engine {
    url: String,
    token: String,
    options: ConnectOptions,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<RoomEvent>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    session: Option<Session>,
    next_generation: u64,
    local: Participant,
    participants: HashMap<String, Participant>,
    /// Subscribed remote tracks: track sid → participant sid.
    subscribed: HashMap<String, String>,
    /// Track sids per participant as last announced, to notice unpublishes.
    published_by: HashMap<String, Vec<String>>,
    published: Vec<Published>,
    pending_publish: HashMap<String, PendingPublish>,
    pending_data: VecDeque<(DataKind, Vec<u8>)>,
    assembler: StreamAssembler,
    sequencer: Sequencer,
    request_id: u32,
    /// Fired once the publisher's reliable channel first opens (connect waits for it).
    ready: Option<oneshot::Sender<()>>,
    /// Steps of the first join and when they came, logged once it is ready: where
    /// a slow join spent its time.
    join_marks: Vec<(&'static str, Instant)>,
    room_name: String,
    deferred: VecDeque<Command>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{n:032x}")
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(crate) async fn connect(
    url: &str,
    token: &str,
    options: ConnectOptions,
) -> Result<(Room, mpsc::Receiver<RoomEvent>), RtcError> {
    let connect_timeout = options.connect_timeout;
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut engine = Engine::new(
        url.to_owned(),
        token.to_owned(),
        options,
        cmd_rx,
        events_tx,
        INTERNAL_CAPACITY,
        Some(ready_tx),
    );
    let join = tokio::time::timeout(connect_timeout, engine.join(false))
        .await
        .map_err(|_| RtcError::Timeout {
            what: "join response",
            after: connect_timeout,
        })??;
    let room = Room {
        cmd: cmd_tx,
        local: engine.local.clone(),
        room_name: join.room.map(|r| r.name).unwrap_or_default(),
    };
    let task = tokio::spawn(engine.run());
    match tokio::time::timeout(connect_timeout, ready_rx).await {
        Ok(Ok(())) => Ok((room, events_rx)),
        Ok(Err(_)) => {
            let _ = task.await;
            Err(RtcError::SignalClosed(
                "room closed while connecting".into(),
            ))
        }
        Err(_) => {
            task.abort();
            Err(RtcError::Timeout {
                what: "publisher data channel to open",
                after: connect_timeout,
            })
        }
    }
}

/// webrtc-rs 0.21's driver queues what one pass produces (the data channels'
/// DCEP OPEN, the publisher's Connected state) but acts on it only on its next
/// wake. When the SFU is the SCTP client, nothing else wakes it until a 200 ms
/// SCTP timer, and the join waited that long (1 join in 10–30 on loopback). A
/// configuration update with the same configuration is a no-op driver event:
/// once either peer connection is connected, poke the publisher's driver every
/// 10 ms for 200 ms, where a join on a quiet machine opens its channels, then ever
/// less often (a loaded machine joins slowly, and pokes from many joins would
/// only load it more), until both channels are open (the engine then aborts
/// this) or for at most [`NUDGE_FOR`]. Poking from the answer on, through the
/// handshakes, was tried: in a run of 200 rooms, 10 joins then timed out at 15 s.
async fn nudge_driver(pc: Arc<dyn PeerConnection>) {
    let until = Instant::now() + NUDGE_FOR;
    let mut delay = Duration::from_millis(10);
    for poke in 1.. {
        tokio::time::sleep(delay).await;
        if Instant::now() >= until {
            return;
        }
        let config = pc.get_configuration().await;
        if pc.set_configuration(config).await.is_err() {
            return;
        }
        if poke >= 20 {
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

enum Step {
    Cmd(Option<Command>),
    Signal(Result<Box<Resp>, RtcError>),
    Internal(Option<Internal>),
    Ping,
}

impl Engine {
    /// Notes a step of the first join (nothing once it is done).
    fn mark(&mut self, step: &'static str) {
        if self.ready.is_some() {
            self.join_marks.push((step, Instant::now()));
        }
    }

    /// The reliable channel is open: the first join is done. Logs its steps, in ms
    /// from the start.
    fn joined(&mut self) {
        self.mark("reliable_open");
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
            let marks = std::mem::take(&mut self.join_marks);
            let Some((_, start)) = marks.first() else {
                return;
            };
            let steps: Vec<String> = marks[1..]
                .iter()
                .map(|(step, at)| format!("{step}={:.1}", (*at - *start).as_secs_f64() * 1e3))
                .collect();
            tracing::debug!(
                room = %self.room_name,
                participant = %self.local.identity,
                steps = %steps.join(" "),
                "joined (ms from start)"
            );
        }
    }

    async fn emit(&self, event: RoomEvent) {
        let _ = self.events.send(event).await;
    }

    /// Join (or rejoin): signal, JoinResponse, both peer connections, data channels,
    /// first publisher offer. Replaces the current session.
    async fn join(&mut self, rejoin: bool) -> Result<proto::JoinResponse, RtcError> {
        let url = signal::signal_url(
            &self.url,
            &UrlParams {
                auto_subscribe: self.options.auto_subscribe,
                reconnect: None,
            },
        )?;
        let (ws_tx, mut ws_rx) =
            tokio::time::timeout(SIGNAL_TIMEOUT, signal::connect(&url, &self.token))
                .await
                .map_err(|_| RtcError::Timeout {
                    what: "signal connection",
                    after: SIGNAL_TIMEOUT,
                })??;
        self.mark("signal");
        let join = tokio::time::timeout(SIGNAL_TIMEOUT, async {
            loop {
                match signal::recv(&mut ws_rx).await? {
                    Resp::Join(j) => return Ok(j),
                    Resp::Leave(l) => {
                        return Err(RtcError::Disconnected(DisconnectReason::ServerLeave(
                            l.reason,
                        )));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| RtcError::Timeout {
            what: "join response",
            after: SIGNAL_TIMEOUT,
        })??;
        self.mark("join_response");
        if let Some(room) = &join.room {
            self.room_name.clone_from(&room.name);
        }

        let generation = self.next_generation;
        self.next_generation += 1;
        let ice_servers: Vec<RTCIceServer> = join
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let publisher = self
            .build_pc(generation, Target::Publisher, &ice_servers)
            .await?;
        let subscriber = self
            .build_pc(generation, Target::Subscriber, &ice_servers)
            .await?;
        self.mark("peer_connections");
        let reliable = publisher
            .create_data_channel(
                RELIABLE_LABEL,
                Some(RTCDataChannelInit {
                    ordered: true,
                    ..Default::default()
                }),
            )
            .await?;
        let lossy = publisher
            .create_data_channel(
                LOSSY_LABEL,
                Some(RTCDataChannelInit {
                    ordered: false,
                    max_retransmits: Some(0),
                    ..Default::default()
                }),
            )
            .await?;
        let tasks = vec![
            spawn_dc_reader(
                reliable.clone(),
                DataKind::Reliable,
                generation,
                self.internal_tx.clone(),
            ),
            spawn_dc_reader(
                lossy.clone(),
                DataKind::Lossy,
                generation,
                self.internal_tx.clone(),
            ),
        ];
        let secs = |s: i32, d: u64| Duration::from_secs(if s > 0 { s as u64 } else { d });
        let session = Session {
            generation,
            ws_tx,
            ws_rx,
            publisher,
            subscriber,
            reliable,
            lossy,
            reliable_open: false,
            lossy_open: false,
            tasks,
            driver_nudge: None,
            pub_remote_set: false,
            sub_remote_set: false,
            pub_pending_candidates: Vec::new(),
            sub_pending_candidates: Vec::new(),
            awaiting_answer: false,
            renegotiate: false,
            offer_id: 0,
            ping_interval: secs(join.ping_interval, 5),
            ping_timeout: secs(join.ping_timeout, 15),
            last_recv: Instant::now(),
            rtt_ms: 0,
        };
        if let Some(old) = self.session.replace(session) {
            old.teardown().await;
        }
        if let Some(p) = &join.participant {
            self.local = Participant::from(p);
        }
        self.sync_participants(&join.other_participants, rejoin)
            .await;
        self.negotiate_publisher(false).await?;
        Ok(join)
    }

    async fn build_pc(
        &self,
        generation: u64,
        target: Target,
        ice_servers: &[RTCIceServer],
    ) -> Result<Arc<dyn PeerConnection>, RtcError> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )?;
        // NACK and RTCP sender/receiver reports only: TWCC and simulcast header
        // extensions serve video bandwidth estimation and cost CPU per packet.
        let registry = configure_rtcp_reports(configure_nack(Registry::new(), &mut media));
        let udp_addrs = if self.options.udp_addrs.is_empty() {
            signal::default_udp_addrs(&self.url)
        } else {
            self.options.udp_addrs.clone()
        };
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(useful_ice_servers(&udp_addrs, ice_servers))
            .build();
        // ICE checks every 20 ms rather than webrtc-rs's 200 ms (70 attempts keep its
        // 1.4 s per candidate): the first check usually finds no remote candidate
        // yet, and joining a room waited a whole interval for the next (connecting
        // on loopback: 210 ms p50 at 200 ms, 60 ms at 50, 30 ms at 20).
        // And a pair found through the server's own check (a peer-reflexive candidate:
        // its check reached us before its trickled candidate did) is nominated at
        // once rather than after webrtc-rs's 1 s wait for better candidates. It is a
        // proven path to the SFU; waiting held such joins back by the ~100 ms the
        // trickled candidate took to come.
        let settings = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(70))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Forwarder {
                tx: self.internal_tx.clone(),
                generation,
                target,
            }))
            .with_udp_addrs(udp_addrs)
            .build()
            .await?;
        Ok(Arc::new(pc))
    }

    /// The main loop. Ends on close, on a final server leave, or when reconnecting fails.
    async fn run(mut self) {
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            if let Some(cmd) = self.deferred.pop_front() {
                if !self.handle_command(cmd).await {
                    return self.finish(DisconnectReason::ClientInitiated, true).await;
                }
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                return;
            };
            let step = tokio::select! {
                cmd = self.cmd_rx.recv() => Step::Cmd(cmd),
                msg = signal::recv(&mut session.ws_rx) => Step::Signal(msg.map(Box::new)),
                ev = self.internal_rx.recv() => Step::Internal(ev),
                _ = ping.tick() => Step::Ping,
            };
            let lost: Option<String> = match step {
                Step::Cmd(None) => {
                    return self.finish(DisconnectReason::ClientInitiated, true).await;
                }
                Step::Cmd(Some(cmd)) => {
                    if !self.handle_command(cmd).await {
                        return self.finish(DisconnectReason::ClientInitiated, true).await;
                    }
                    None
                }
                Step::Signal(Ok(msg)) => match self.handle_signal(*msg).await {
                    Ok(Flow::Continue) => None,
                    Ok(Flow::Lost(why)) => Some(why),
                    Ok(Flow::Rejoin(why)) => {
                        if self.reconnect(why, false).await {
                            continue;
                        }
                        return;
                    }
                    Ok(Flow::Leave(reason)) => {
                        return self
                            .finish(DisconnectReason::ServerLeave(reason), false)
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "signal message handling failed");
                        None
                    }
                },
                Step::Signal(Err(e)) => Some(e.to_string()),
                Step::Internal(None) => None,
                Step::Internal(Some(ev)) => self.handle_internal(ev).await,
                Step::Ping => {
                    self.expire_pending_publishes();
                    self.flush_pending_data().await;
                    let Some(s) = self.session.as_mut() else {
                        return;
                    };
                    if s.last_recv.elapsed() > s.ping_timeout {
                        Some(format!(
                            "no message from the server for {:?}",
                            s.ping_timeout
                        ))
                    } else {
                        if last_ping.elapsed() >= s.ping_interval {
                            last_ping = Instant::now();
                            let ping = proto::Ping {
                                timestamp: now_ms(),
                                rtt: s.rtt_ms,
                            };
                            if let Err(e) = signal::send(&mut s.ws_tx, Req::PingReq(ping)).await {
                                tracing::debug!(error = %e, "ping failed");
                            }
                        }
                        None
                    }
                }
            };
            if let Some(why) = lost
                && !self.reconnect(why, true).await
            {
                return;
            }
        }
    }

    /// Leave (if `send_leave`), tear everything down, report `Disconnected`.
    async fn finish(mut self, reason: DisconnectReason, send_leave: bool) {
        if let Some(mut s) = self.session.take() {
            if send_leave {
                let leave = proto::LeaveRequest {
                    can_reconnect: false,
                    reason: proto::DisconnectReason::ClientInitiated as i32,
                    action: proto::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                };
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    signal::send(&mut s.ws_tx, Req::Leave(leave)),
                )
                .await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures::SinkExt::close(&mut s.ws_tx))
                    .await;
            }
            s.teardown().await;
        }
        for p in self.published.drain(..) {
            if let Some(t) = p.pacer {
                t.abort();
            }
        }
        for (_, p) in self.pending_publish.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(RtcError::Closed));
            }
        }
        // Bounded: a consumer that stopped reading must not keep this task alive.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            self.events.send(RoomEvent::Disconnected(reason)),
        )
        .await;
        // Answer anything still queued so no caller waits forever.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            reject(cmd);
        }
    }

    /// Returns false when the engine must stop (close requested).
    async fn handle_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Close { reply } => {
                let _ = reply.send(());
                return false;
            }
            Command::RemoteParticipants { reply } => {
                let _ = reply.send(self.participants.values().cloned().collect());
            }
            Command::PublishAudio {
                name,
                sample_rate,
                reply,
            } => {
                if !audio::OPUS_RATES.contains(&sample_rate) {
                    let _ = reply.send(Err(RtcError::InvalidArgument(format!(
                        "sample rate {sample_rate}: use one of {:?}",
                        audio::OPUS_RATES
                    ))));
                    return true;
                }
                let cid = random_id("TR_local_");
                if let Err(e) = self.send_add_track(&cid, &name).await {
                    let _ = reply.send(Err(e));
                    return true;
                }
                self.pending_publish.insert(
                    cid,
                    PendingPublish {
                        name,
                        sample_rate,
                        reply: Some(reply),
                        deadline: Instant::now() + PUBLISH_TIMEOUT,
                    },
                );
            }
            Command::SendData {
                payload,
                kind,
                topic,
                destinations,
                reply,
            } => {
                let packet = data::user_packet(
                    &self.local.identity,
                    payload,
                    topic.as_deref(),
                    &destinations,
                );
                let _ = reply.send(self.send_packet(packet, kind).await);
            }
            Command::SendText {
                topic,
                text,
                attributes,
                destinations,
                reply,
            } => {
                let stream_id = random_id("");
                let spec = data::TextStreamSpec {
                    stream_id: &stream_id,
                    topic: &topic,
                    text: &text,
                    attributes: &attributes,
                    destination_identities: &destinations,
                    timestamp_ms: now_ms(),
                };
                let mut result = Ok(stream_id.clone());
                for packet in data::text_stream_packets(&spec, &self.local.identity) {
                    if let Err(e) = self.send_packet(packet, DataKind::Reliable).await {
                        result = Err(e);
                        break;
                    }
                }
                let _ = reply.send(result);
            }
            Command::SetAttributes { attributes, reply } => {
                self.request_id = self.request_id.wrapping_add(1).max(1);
                let req = proto::UpdateParticipantMetadata {
                    attributes,
                    request_id: self.request_id,
                    ..Default::default()
                };
                let result = match self.session.as_mut() {
                    Some(s) => signal::send(&mut s.ws_tx, Req::UpdateMetadata(req)).await,
                    None => Err(RtcError::Closed),
                };
                let _ = reply.send(result);
            }
        }
        true
    }

    async fn send_add_track(&mut self, cid: &str, name: &str) -> Result<(), RtcError> {
        let req = proto::AddTrackRequest {
            cid: cid.to_owned(),
            name: name.to_owned(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            disable_red: true,
            ..Default::default()
        };
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
        signal::send(&mut s.ws_tx, Req::AddTrack(req)).await
    }

    fn expire_pending_publishes(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .pending_publish
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for cid in expired {
            if let Some(p) = self.pending_publish.remove(&cid)
                && let Some(r) = p.reply
            {
                let _ = r.send(Err(RtcError::Timeout {
                    what: "track published response",
                    after: PUBLISH_TIMEOUT,
                }));
            }
        }
    }

    /// Encode and send one data packet, or hold it until the channel opens.
    async fn send_packet(
        &mut self,
        mut packet: proto::DataPacket,
        kind: DataKind,
    ) -> Result<(), RtcError> {
        // `kind` is deprecated in the protocol (the channel says it) but older servers
        // and clients still read it.
        #[allow(deprecated)]
        match kind {
            DataKind::Reliable => {
                packet.kind = proto::data_packet::Kind::Reliable as i32;
                packet.sequence = self.sequencer.next_sequence();
            }
            DataKind::Lossy => packet.kind = proto::data_packet::Kind::Lossy as i32,
        }
        packet.participant_sid = self.local.sid.clone();
        let bytes = packet.encode_to_vec();
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
        let open = match kind {
            DataKind::Reliable => s.reliable_open,
            DataKind::Lossy => s.lossy_open,
        };
        if open && self.pending_data.is_empty() {
            let dc = match kind {
                DataKind::Reliable => &s.reliable,
                DataKind::Lossy => &s.lossy,
            };
            match dc.send(BytesMut::from(&bytes[..])).await {
                Ok(()) => return Ok(()),
                // Reported open but not sendable (yet or any more): hold the packet and
                // retry from the timer.
                Err(e) => tracing::debug!(error = %e, "data channel not sendable; packet queued"),
            }
        }
        if self.pending_data.len() >= MAX_PENDING_DATA {
            return Err(RtcError::InvalidArgument(
                "too much data queued while the data channel is not open".into(),
            ));
        }
        self.pending_data.push_back((kind, bytes));
        Ok(())
    }

    /// Send held packets in order while their channel takes them.
    async fn flush_pending_data(&mut self) {
        while let Some((kind, bytes)) = self.pending_data.pop_front() {
            let Some(s) = self.session.as_ref() else {
                return;
            };
            let (dc, open) = match kind {
                DataKind::Reliable => (&s.reliable, s.reliable_open),
                DataKind::Lossy => (&s.lossy, s.lossy_open),
            };
            if !open {
                self.pending_data.push_front((kind, bytes));
                return;
            }
            if let Err(e) = dc.send(BytesMut::from(&bytes[..])).await {
                tracing::debug!(error = %e, "data channel not sendable yet");
                self.pending_data.push_front((kind, bytes));
                return;
            }
        }
    }

    async fn negotiate_publisher(&mut self, ice_restart: bool) -> Result<(), RtcError> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if s.awaiting_answer && !ice_restart {
            s.renegotiate = true;
            return Ok(());
        }
        let offer = s
            .publisher
            .create_offer(Some(RTCOfferOptions { ice_restart }))
            .await?;
        s.publisher.set_local_description(offer.clone()).await?;
        let sdp = match s.publisher.local_description().await {
            Some(d) => d.sdp,
            None => offer.sdp,
        };
        s.offer_id = s.offer_id.wrapping_add(1);
        s.awaiting_answer = true;
        let desc = proto::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id: s.offer_id,
            ..Default::default()
        };
        signal::send(&mut s.ws_tx, Req::Offer(desc)).await?;
        self.mark("offer_sent");
        Ok(())
    }

    async fn handle_signal(&mut self, msg: Resp) -> Result<Flow, RtcError> {
        if let Some(s) = self.session.as_mut() {
            s.last_recv = Instant::now();
        }
        match msg {
            Resp::Answer(a) => {
                self.mark("answer");
                let Some(s) = self.session.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let desc = RTCSessionDescription::answer(a.sdp)?;
                s.publisher.set_remote_description(desc).await?;
                s.pub_remote_set = true;
                s.awaiting_answer = false;
                for c in std::mem::take(&mut s.pub_pending_candidates) {
                    if let Err(e) = s.publisher.add_ice_candidate(c).await {
                        tracing::debug!(error = %e, "publisher candidate rejected");
                    }
                }
                if std::mem::take(&mut s.renegotiate) {
                    // Tracks added since are in the next offer, not this one.
                    self.negotiate_publisher(false).await?;
                } else {
                    for p in &mut self.published {
                        if let Some(sink) = p.held_sink.take() {
                            let _ = p.sink_tx.send(Some(sink));
                        }
                    }
                }
            }
            Resp::Offer(o) => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let desc = RTCSessionDescription::offer(o.sdp)?;
                s.subscriber.set_remote_description(desc).await?;
                s.sub_remote_set = true;
                for c in std::mem::take(&mut s.sub_pending_candidates) {
                    if let Err(e) = s.subscriber.add_ice_candidate(c).await {
                        tracing::debug!(error = %e, "subscriber candidate rejected");
                    }
                }
                let answer = s.subscriber.create_answer(None).await?;
                s.subscriber.set_local_description(answer.clone()).await?;
                let sdp = match s.subscriber.local_description().await {
                    Some(d) => d.sdp,
                    None => answer.sdp,
                };
                let desc = proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp,
                    id: o.id,
                    ..Default::default()
                };
                signal::send(&mut s.ws_tx, Req::Answer(desc)).await?;
            }
            Resp::Trickle(t) => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let init: RTCIceCandidateInit = match serde_json::from_str(&t.candidate_init) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "unparsable remote candidate");
                        return Ok(Flow::Continue);
                    }
                };
                if init.candidate.is_empty() {
                    return Ok(Flow::Continue);
                }
                if t.target == proto::SignalTarget::Publisher as i32 {
                    if s.pub_remote_set {
                        if let Err(e) = s.publisher.add_ice_candidate(init).await {
                            tracing::debug!(error = %e, "publisher candidate rejected");
                        }
                    } else {
                        s.pub_pending_candidates.push(init);
                    }
                } else if s.sub_remote_set {
                    if let Err(e) = s.subscriber.add_ice_candidate(init).await {
                        tracing::debug!(error = %e, "subscriber candidate rejected");
                    }
                } else {
                    s.sub_pending_candidates.push(init);
                }
            }
            Resp::Update(u) => self.sync_participants(&u.participants, false).await,
            Resp::TrackPublished(tp) => self.on_track_published(tp).await?,
            Resp::Leave(l) => {
                use proto::leave_request::Action;
                let action = Action::try_from(l.action).unwrap_or(if l.can_reconnect {
                    Action::Reconnect
                } else {
                    Action::Disconnect
                });
                return Ok(match action {
                    Action::Disconnect => Flow::Leave(l.reason),
                    Action::Resume => Flow::Lost("server asked to resume".into()),
                    Action::Reconnect => Flow::Rejoin("server asked to reconnect".into()),
                });
            }
            Resp::PongResp(p) => {
                if let Some(s) = self.session.as_mut() {
                    s.rtt_ms = (now_ms() - p.last_ping_timestamp).max(0);
                }
            }
            Resp::RefreshToken(t) if !t.is_empty() => self.token = t,
            _ => {}
        }
        Ok(Flow::Continue)
    }

    async fn on_track_published(
        &mut self,
        tp: proto::TrackPublishedResponse,
    ) -> Result<(), RtcError> {
        let Some(pending) = self.pending_publish.remove(&tp.cid) else {
            return Ok(());
        };
        let info = tp.track.unwrap_or_default();
        let result = self.attach_local_track(&tp.cid, &pending.name, &info).await;
        match (result, pending.reply) {
            (Ok(sink), Some(reply)) => {
                let (sink_tx, sink_rx) = watch::channel(None);
                match audio::spawn_local_track(
                    audio::TrackConfig {
                        complexity: self.options.opus_complexity,
                        application: self.options.opus_application,
                        dtx: self.options.dtx,
                    },
                    info.sid.clone(),
                    pending.name.clone(),
                    pending.sample_rate,
                    sink_rx,
                ) {
                    Ok((track, pacer)) => {
                        self.published.push(Published {
                            cid: tp.cid,
                            name: pending.name,
                            sid: info.sid.clone(),
                            info: Some(info),
                            sink_tx,
                            held_sink: Some(sink),
                            pacer: Some(pacer),
                        });
                        let _ = reply.send(Ok(track));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            (Ok(sink), None) => {
                if let Some(p) = self.published.iter_mut().find(|p| p.cid == tp.cid) {
                    p.sid = info.sid.clone();
                    p.info = Some(info);
                    p.held_sink = Some(sink);
                }
            }
            (Err(e), Some(reply)) => {
                let _ = reply.send(Err(e));
            }
            (Err(e), None) => tracing::warn!(error = %e, "republishing a track failed"),
        }
        Ok(())
    }

    /// Add a sending Opus track for `cid` to the publisher and renegotiate.
    async fn attach_local_track(
        &mut self,
        cid: &str,
        name: &str,
        _info: &proto::TrackInfo,
    ) -> Result<RtpSink, RtcError> {
        let s = self.session.as_ref().ok_or(RtcError::Closed)?;
        let ssrc: u32 = rand::random();
        let track = MediaStreamTrack::new(
            cid.to_owned(),
            cid.to_owned(),
            name.to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec(),
                ..Default::default()
            }],
        );
        let local = Arc::new(TrackLocalStaticRTP::new(track));
        s.publisher
            .add_track(local.clone() as Arc<dyn TrackLocal>)
            .await?;
        self.negotiate_publisher(false).await?;
        Ok(RtpSink {
            track: local,
            ssrc,
            payload_type: OPUS_PT,
        })
    }

    async fn handle_internal(&mut self, ev: Internal) -> Option<String> {
        let current = self.session.as_ref().map(|s| s.generation);
        match ev {
            Internal::Pc {
                generation,
                target,
                event,
            } => {
                if Some(generation) != current {
                    return None;
                }
                match event {
                    PcEvent::Candidate(init) => {
                        let Ok(json) = serde_json::to_string(&init) else {
                            return None;
                        };
                        let s = self.session.as_mut()?;
                        let req = proto::TrickleRequest {
                            candidate_init: json,
                            target: target.proto(),
                            r#final: false,
                        };
                        if let Err(e) = signal::send(&mut s.ws_tx, Req::Trickle(req)).await {
                            return Some(e.to_string());
                        }
                    }
                    PcEvent::State(state) => {
                        tracing::debug!(?target, ?state, "peer connection state");
                        if state == RTCPeerConnectionState::Connected {
                            self.mark(match target {
                                Target::Publisher => "publisher_connected",
                                Target::Subscriber => "subscriber_connected",
                            });
                            // Either one: the publisher's own Connected may wait in
                            // its driver's queue like the DCEP OPEN does.
                            if let Some(s) = self.session.as_mut()
                                && !(s.reliable_open && s.lossy_open)
                                && s.driver_nudge.is_none()
                            {
                                s.driver_nudge =
                                    Some(tokio::spawn(nudge_driver(s.publisher.clone())));
                            }
                        }
                        if state == RTCPeerConnectionState::Failed {
                            return Some(format!("{target:?} peer connection failed"));
                        }
                    }
                    PcEvent::Track(track) => self.on_remote_track(track).await,
                    PcEvent::DataChannel(dc) => {
                        let label = dc.label().await.unwrap_or_default();
                        let kind = if label == LOSSY_LABEL {
                            DataKind::Lossy
                        } else {
                            DataKind::Reliable
                        };
                        let task = spawn_dc_reader(dc, kind, generation, self.internal_tx.clone());
                        if let Some(s) = self.session.as_mut() {
                            s.tasks.push(task);
                        }
                    }
                }
            }
            Internal::DcOpen { generation, label } => {
                if Some(generation) != current {
                    return None;
                }
                let s = self.session.as_mut()?;
                let reliable = label == RELIABLE_LABEL;
                if reliable {
                    s.reliable_open = true;
                } else if label == LOSSY_LABEL {
                    s.lossy_open = true;
                }
                if s.reliable_open
                    && s.lossy_open
                    && let Some(nudge) = s.driver_nudge.take()
                {
                    nudge.abort();
                }
                if reliable {
                    self.joined();
                }
                self.flush_pending_data().await;
            }
            Internal::Data { packet, kind } => self.on_data(*packet, kind).await,
        }
        None
    }

    async fn on_remote_track(&mut self, track: Arc<dyn TrackRemote>) {
        if track.kind().await != RtpCodecKind::Audio {
            return;
        }
        let stream_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let Some((psid, tsid)) = parse_msid(&stream_id, &track_id) else {
            tracing::debug!(stream_id, track_id, "remote track without a LiveKit msid");
            return;
        };
        let identity = self
            .participants
            .get(&psid)
            .map(|p| p.identity.clone())
            .unwrap_or_default();
        self.subscribed.insert(tsid.clone(), psid.clone());
        self.emit(RoomEvent::TrackSubscribed(RemoteAudioTrack {
            sid: tsid,
            participant_identity: identity,
            participant_sid: psid,
            inner: track,
        }))
        .await;
    }

    async fn on_data(&mut self, packet: proto::DataPacket, kind: DataKind) {
        use proto::data_packet::Value;
        let identity = packet.participant_identity;
        match packet.value {
            Some(Value::User(u)) => {
                self.emit(RoomEvent::DataReceived {
                    participant_identity: identity,
                    topic: u.topic,
                    payload: u.payload,
                    kind,
                })
                .await;
            }
            Some(Value::StreamHeader(h)) => self.assembler.header(&identity, h),
            Some(Value::StreamChunk(c)) => self.assembler.chunk(c),
            Some(Value::StreamTrailer(t)) => {
                if let Some(stream) = self.assembler.trailer(t) {
                    self.emit(RoomEvent::TextStreamReceived(stream)).await;
                }
            }
            _ => {}
        }
    }

    /// Apply a participant list (join response or update) and emit the differences.
    /// On a rejoin (`full` true) participants missing from the list are gone.
    async fn sync_participants(&mut self, list: &[proto::ParticipantInfo], full: bool) {
        if full {
            let present: std::collections::HashSet<&str> =
                list.iter().map(|p| p.sid.as_str()).collect();
            let gone: Vec<String> = self
                .participants
                .keys()
                .filter(|k| !present.contains(k.as_str()))
                .cloned()
                .collect();
            for sid in gone {
                self.remove_participant(&sid).await;
            }
            // Every remote track is gone with the old subscriber connection.
            let subs: Vec<(String, String)> = self.subscribed.drain().collect();
            for (tsid, psid) in subs {
                let identity = self
                    .participants
                    .get(&psid)
                    .map(|p| p.identity.clone())
                    .unwrap_or_default();
                self.emit(RoomEvent::TrackUnsubscribed {
                    participant_identity: identity,
                    track_sid: tsid,
                })
                .await;
            }
        }
        for info in list {
            if info.sid == self.local.sid {
                self.local.attributes = info.attributes.clone();
                continue;
            }
            if info.state == proto::participant_info::State::Disconnected as i32 {
                self.remove_participant(&info.sid).await;
                continue;
            }
            let p = Participant::from(info);
            let tracks: Vec<String> = info.tracks.iter().map(|t| t.sid.clone()).collect();
            let old_tracks = self
                .published_by
                .insert(info.sid.clone(), tracks.clone())
                .unwrap_or_default();
            for gone in old_tracks.iter().filter(|t| !tracks.contains(t)) {
                if self.subscribed.remove(gone).is_some() {
                    self.emit(RoomEvent::TrackUnsubscribed {
                        participant_identity: p.identity.clone(),
                        track_sid: gone.clone(),
                    })
                    .await;
                }
            }
            match self.participants.insert(info.sid.clone(), p.clone()) {
                None => self.emit(RoomEvent::ParticipantJoined(p)).await,
                Some(old) if old.attributes != p.attributes => {
                    self.emit(RoomEvent::ParticipantAttributesChanged {
                        identity: p.identity,
                        attributes: p.attributes,
                    })
                    .await
                }
                Some(_) => {}
            }
        }
    }

    async fn remove_participant(&mut self, sid: &str) {
        self.published_by.remove(sid);
        let Some(p) = self.participants.remove(sid) else {
            return;
        };
        let tracks: Vec<String> = self
            .subscribed
            .iter()
            .filter(|(_, ps)| ps.as_str() == sid)
            .map(|(t, _)| t.clone())
            .collect();
        for t in tracks {
            self.subscribed.remove(&t);
            self.emit(RoomEvent::TrackUnsubscribed {
                participant_identity: p.identity.clone(),
                track_sid: t,
            })
            .await;
        }
        self.assembler.participant_left(&p.identity);
        self.emit(RoomEvent::ParticipantLeft(p)).await;
    }

    /// The reconnect loop. Returns true when connected again, false when the engine
    /// has finished (gave up or was closed meanwhile); `Disconnected` is emitted then.
    async fn reconnect(&mut self, why: String, resume_possible: bool) -> bool {
        tracing::info!(reason = %why, "connection lost; reconnecting");
        self.emit(RoomEvent::Reconnecting).await;
        let mut resume_possible = resume_possible;
        let mut attempt = 0;
        while let Some((kind, delay)) = self.options.reconnect.next(attempt, resume_possible) {
            attempt += 1;
            if !self.sleep_watching_commands(delay).await {
                self.finish_in_place(DisconnectReason::ClientInitiated, false)
                    .await;
                return false;
            }
            let result = match kind {
                ReconnectKind::Resume => self.try_resume().await,
                ReconnectKind::Rejoin => self.try_rejoin().await,
            };
            match result {
                Ok(()) => {
                    self.emit(RoomEvent::Reconnected {
                        resumed: kind == ReconnectKind::Resume,
                    })
                    .await;
                    return true;
                }
                Err(e) => {
                    tracing::info!(?kind, attempt, error = %e, "reconnect attempt failed");
                    if kind == ReconnectKind::Resume {
                        // A refusal or a leave means the server forgot us: rejoin from now on.
                        if matches!(e, RtcError::Refused { .. } | RtcError::Disconnected(_)) {
                            resume_possible = false;
                        }
                    } else if matches!(
                        e,
                        RtcError::Refused {
                            status: 401 | 403,
                            ..
                        }
                    ) {
                        break; // the token is no longer accepted
                    }
                }
            }
        }
        self.finish_in_place(DisconnectReason::ReconnectFailed, false)
            .await;
        false
    }

    async fn finish_in_place(&mut self, reason: DisconnectReason, send_leave: bool) {
        let engine = std::mem::replace(self, self.empty_clone());
        engine.finish(reason, send_leave).await;
    }

    /// A dead engine to leave behind after `finish` consumed the real one.
    fn empty_clone(&self) -> Engine {
        let (_tx, cmd_rx) = mpsc::channel(1);
        Engine::new(
            String::new(),
            String::new(),
            self.options.clone(),
            cmd_rx,
            self.events.clone(),
            1,
            None,
        )
    }

    /// An engine with no session yet.
    fn new(
        url: String,
        token: String,
        options: ConnectOptions,
        cmd_rx: mpsc::Receiver<Command>,
        events: mpsc::Sender<RoomEvent>,
        internal_capacity: usize,
        ready: Option<oneshot::Sender<()>>,
    ) -> Engine {
        let (internal_tx, internal_rx) = mpsc::channel(internal_capacity);
        Engine {
            url,
            token,
            options,
            cmd_rx,
            events,
            internal_tx,
            internal_rx,
            session: None,
            next_generation: 0,
            local: Participant::default(),
            participants: HashMap::new(),
            subscribed: HashMap::new(),
            published_by: HashMap::new(),
            published: Vec::new(),
            pending_publish: HashMap::new(),
            pending_data: VecDeque::new(),
            assembler: StreamAssembler::default(),
            sequencer: Sequencer::default(),
            request_id: 0,
            ready,
            join_marks: vec![("start", Instant::now())],
            room_name: String::new(),
            deferred: VecDeque::new(),
        }
    }

    /// Sleep, but keep taking commands: a close (or every handle dropped) ends the
    /// wait with false; anything else is deferred until after the reconnect.
    async fn sleep_watching_commands(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return false,
                    Some(Command::Close { reply }) => {
                        let _ = reply.send(());
                        return false;
                    }
                    Some(other) => {
                        if self.deferred.len() >= COMMAND_CAPACITY {
                            reject(other);
                        } else {
                            self.deferred.push_back(other);
                        }
                    }
                },
            }
        }
    }

    async fn try_resume(&mut self) -> Result<(), RtcError> {
        let sid = self.local.sid.clone();
        let url = signal::signal_url(
            &self.url,
            &UrlParams {
                auto_subscribe: self.options.auto_subscribe,
                reconnect: Some((&sid, 1)),
            },
        )?;
        let (ws_tx, mut ws_rx) =
            tokio::time::timeout(SIGNAL_TIMEOUT, signal::connect(&url, &self.token))
                .await
                .map_err(|_| RtcError::Timeout {
                    what: "signal reconnection",
                    after: SIGNAL_TIMEOUT,
                })??;
        let mut early = Vec::new();
        tokio::time::timeout(SIGNAL_TIMEOUT, async {
            loop {
                match signal::recv(&mut ws_rx).await? {
                    Resp::Reconnect(_) => return Ok(()),
                    Resp::Leave(l) => {
                        return Err(RtcError::Disconnected(DisconnectReason::ServerLeave(
                            l.reason,
                        )));
                    }
                    Resp::Join(_) => {
                        return Err(RtcError::Protocol("join response to a resume".into()));
                    }
                    other => early.push(other),
                }
            }
        })
        .await
        .map_err(|_| RtcError::Timeout {
            what: "reconnect response",
            after: SIGNAL_TIMEOUT,
        })??;
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
        s.ws_tx = ws_tx;
        s.ws_rx = ws_rx;
        s.last_recv = Instant::now();
        // Tell the server what we have, then restart ICE on the publisher.
        let answer = s
            .subscriber
            .local_description()
            .await
            .map(|d| proto::SessionDescription {
                r#type: "answer".into(),
                sdp: d.sdp,
                ..Default::default()
            });
        let publish_tracks = self
            .published
            .iter()
            .filter_map(|p| {
                p.info.clone().map(|t| proto::TrackPublishedResponse {
                    cid: p.cid.clone(),
                    track: Some(t),
                })
            })
            .collect();
        let sync = proto::SyncState {
            answer,
            subscription: Some(proto::UpdateSubscription {
                track_sids: self.subscribed.keys().cloned().collect(),
                subscribe: true,
                ..Default::default()
            }),
            publish_tracks,
            ..Default::default()
        };
        signal::send(&mut s.ws_tx, Req::SyncState(sync)).await?;
        s.awaiting_answer = false;
        s.pub_remote_set = false;
        self.negotiate_publisher(true).await?;
        for msg in early {
            let _ = self.handle_signal(msg).await;
        }
        Ok(())
    }

    async fn try_rejoin(&mut self) -> Result<(), RtcError> {
        if let Some(old) = self.session.take() {
            old.teardown().await;
        }
        for p in &self.published {
            let _ = p.sink_tx.send(None);
        }
        self.pending_data.clear();
        self.join(true).await?;
        // Tracks whose handles were all dropped (pacer finished) are not republished.
        self.published
            .retain(|p| p.pacer.as_ref().is_some_and(|t| !t.is_finished()));
        let republish: Vec<(String, String)> = self
            .published
            .iter()
            .map(|p| (p.cid.clone(), p.name.clone()))
            .collect();
        for (cid, name) in republish {
            self.send_add_track(&cid, &name).await?;
            self.pending_publish.insert(
                cid,
                PendingPublish {
                    name,
                    sample_rate: 0,
                    reply: None,
                    deadline: Instant::now() + PUBLISH_TIMEOUT,
                },
            );
        }
        Ok(())
    }
}

enum Flow {
    Continue,
    Lost(String),
    Rejoin(String),
    Leave(i32),
}

/// Answer a command that will never be served.
fn reject(cmd: Command) {
    match cmd {
        Command::PublishAudio { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::SendData { reply, .. } | Command::SetAttributes { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::SendText { reply, .. } => {
            let _ = reply.send(Err(RtcError::Closed));
        }
        Command::RemoteParticipants { reply } => {
            let _ = reply.send(Vec::new());
        }
        Command::Close { reply } => {
            let _ = reply.send(());
        }
    }
}

/// Read one data channel: decode `DataPacket`s and report opening. Ends when the
/// channel closes, the engine is gone, or the session aborts it.
fn spawn_dc_reader(
    dc: Arc<dyn DataChannel>,
    kind: DataKind,
    generation: u64,
    tx: mpsc::Sender<Internal>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let label = dc.label().await.unwrap_or_default();
        while let Some(ev) = dc.poll().await {
            let msg = match ev {
                DataChannelEvent::OnOpen => Internal::DcOpen {
                    generation,
                    label: label.clone(),
                },
                DataChannelEvent::OnMessage(m) => {
                    match proto::DataPacket::decode(m.data.as_ref()) {
                        Ok(packet) => Internal::Data {
                            packet: Box::new(packet),
                            kind,
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "undecodable data packet");
                            continue;
                        }
                    }
                }
                DataChannelEvent::OnClose => break,
                _ => continue,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    })
}

/// The ICE servers worth gathering with from sockets bound to `udp_addrs`:
/// none when every socket is on loopback (no STUN or TURN server can reach
/// it, and gathering from an unresolvable STUN host holds the connection
/// back for the resolver's timeout, seconds).
fn useful_ice_servers(udp_addrs: &[String], servers: &[RTCIceServer]) -> Vec<RTCIceServer> {
    let loopback = |a: &String| {
        a.parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| a.starts_with("localhost:"))
    };
    if !udp_addrs.is_empty() && udp_addrs.iter().all(loopback) {
        Vec::new()
    } else {
        servers.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sockets_gather_without_stun() {
        let stun = vec![RTCIceServer {
            urls: vec!["stun:stun.example.org:3478".into()],
            ..Default::default()
        }];
        assert!(useful_ice_servers(&["127.0.0.1:0".into()], &stun).is_empty());
        assert!(useful_ice_servers(&["[::1]:0".into(), "localhost:0".into()], &stun).is_empty());
        assert_eq!(useful_ice_servers(&["0.0.0.0:0".into()], &stun).len(), 1);
        assert_eq!(
            useful_ice_servers(&["127.0.0.1:0".into(), "10.0.0.2:0".into()], &stun).len(),
            1
        );
    }
}
