//! A session: one connection to the server. Joining opens the signal transport,
//! waits for the `JoinResponse`, builds both peer connections (with the callback
//! handler that forwards webrtc-rs's events into the engine) and the publisher's
//! data channels, and sends the first publisher offer. Also here: what the peer
//! connections report (local candidates, states, remote tracks and data channels),
//! and the log of where a slow first join spent its time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use tokio::sync::{mpsc, oneshot};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, Registry, configure_nack, configure_rtcp_reports,
};
use webrtc_core::data_channel::RTCDataChannelInit;
use webrtc_core::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use webrtc_core::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};

use super::data::{LOSSY_LABEL, RELIABLE_LABEL, spawn_dc_reader};
use super::negotiation::{Negotiation, Target};
use super::publish::{OPUS_PT, opus_codec};
use super::{CLOSE_TIMEOUT, Engine, Internal, Loss, OwnedTask};
use crate::RtcError;
use crate::local_track::RtpSink;
use crate::msid::parse_msid;
use crate::remote_track::RemoteAudioTrack;
use crate::room::{DataKind, DisconnectReason, Participant, RoomEvent};
use crate::signal::{self, Resp, SignalTransport, UrlParams};

/// Bound on one signal step (handshake, waiting for the join/reconnect response).
pub(super) const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`nudge_driver`] may poke a publisher whose data channels do not open.
const NUDGE_FOR: Duration = Duration::from_secs(2);

/// One connection to the server: a signal transport and two peer connections.
/// Replaced whole by a rejoin; a resume replaces only its signal transport.
pub(super) struct Session {
    /// Tags the internal events of this session, so that late events of a torn-down
    /// one are ignored.
    pub(super) session_id: u64,
    /// The signal connection; dropped (closed) with the session or replaced on resume.
    pub(super) signal: Box<dyn SignalTransport>,
    pub(super) publisher: Arc<dyn PeerConnection>,
    pub(super) subscriber: Arc<dyn PeerConnection>,
    /// The publisher's data channels.
    pub(super) reliable: Arc<dyn DataChannel>,
    pub(super) lossy: Arc<dyn DataChannel>,
    pub(super) reliable_open: bool,
    pub(super) lossy_open: bool,
    /// Data-channel readers; aborted when the session is dropped.
    pub(super) tasks: Vec<OwnedTask>,
    /// Pokes the publisher's driver until both data channels open ([`nudge_driver`]);
    /// aborted once they are, or with the session.
    pub(super) driver_nudge: Option<OwnedTask>,
    /// Offers, answers, candidates and held sinks of this connection.
    pub(super) negotiation: Negotiation<RTCIceCandidateInit, RtpSink>,
    pub(super) ping_interval: Duration,
    pub(super) ping_timeout: Duration,
    /// When the server last sent anything (any message counts as alive).
    pub(super) last_recv: Instant,
    /// Round-trip time from the last pong, reported in the next ping.
    pub(super) rtt_ms: i64,
}

impl Session {
    /// The peer connection `target`.
    pub(super) fn pc(&self, target: Target) -> &Arc<dyn PeerConnection> {
        match target {
            Target::Publisher => &self.publisher,
            Target::Subscriber => &self.subscriber,
        }
    }

    /// Stop its tasks and close both peer connections (bounded). webrtc-rs stops a
    /// peer connection's driver when it is closed and dropped.
    pub(super) async fn teardown(mut self) {
        self.tasks.clear();
        self.driver_nudge = None;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.publisher.close()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.subscriber.close()).await;
    }
}

/// The first join's progress: `connect` waits for `ready`, and the steps are logged
/// (at debug, target `room::engine`) once it is: where a slow join spent its time.
pub(super) struct JoinProgress {
    /// Fired once the publisher's reliable channel first opens; `None` after.
    ready: Option<oneshot::Sender<()>>,
    /// Steps and when they came, the first one the start.
    marks: Vec<(&'static str, Instant)>,
}

impl JoinProgress {
    pub(super) fn new(ready: Option<oneshot::Sender<()>>) -> Self {
        Self {
            ready,
            marks: vec![("start", Instant::now())],
        }
    }

    /// Notes a step of the first join (nothing once it is done).
    pub(super) fn mark(&mut self, step: &'static str) {
        if self.ready.is_some() {
            self.marks.push((step, Instant::now()));
        }
    }

    /// The reliable channel is open: the first join is done. Logs its steps, in ms
    /// from the start.
    fn done(&mut self, room: &str, identity: &str) {
        self.mark("reliable_open");
        let Some(ready) = self.ready.take() else {
            return;
        };
        let _ = ready.send(());
        let marks = std::mem::take(&mut self.marks);
        let Some(((_, start), rest)) = marks.split_first() else {
            return;
        };
        let steps: Vec<String> = rest
            .iter()
            .map(|(step, at)| {
                let ms = at.saturating_duration_since(*start).as_secs_f64() * 1e3;
                format!("{step}={ms:.1}")
            })
            .collect();
        tracing::debug!(
            room = %room,
            participant = %identity,
            steps = %steps.join(" "),
            "joined (ms from start)"
        );
    }
}

/// What a peer connection's callbacks report.
pub(super) enum PcEvent {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
}

/// Forwards webrtc-rs callbacks of one peer connection into the engine. Waits when
/// the engine's internal channel is full (webrtc-rs then holds its events back).
struct Forwarder {
    tx: mpsc::Sender<Internal>,
    session_id: u64,
    target: Target,
}

impl Forwarder {
    async fn send(&self, event: PcEvent) {
        let _ = self
            .tx
            .send(Internal::Pc {
                session_id: self.session_id,
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

impl Engine {
    /// Open a signal connection: a join, or a resume of participant `resume_sid`.
    pub(super) async fn open_signal(
        &mut self,
        resume_sid: Option<&str>,
        what: &'static str,
    ) -> Result<Box<dyn SignalTransport>, RtcError> {
        let url = signal::signal_url(
            &self.url,
            &UrlParams {
                auto_subscribe: self.options.auto_subscribe,
                reconnect: resume_sid.map(|sid| (sid, 1)),
            },
        )?;
        tokio::time::timeout(SIGNAL_TIMEOUT, self.connector.connect(&url, &self.token))
            .await
            .map_err(|_| RtcError::Timeout {
                what,
                after: SIGNAL_TIMEOUT,
            })?
    }

    /// Join (or rejoin): signal, JoinResponse, both peer connections, data channels,
    /// first publisher offer. Replaces the current session.
    pub(super) async fn join(&mut self, rejoin: bool) -> Result<proto::JoinResponse, RtcError> {
        let mut signal = self.open_signal(None, "signal connection").await?;
        self.progress.mark("signal");
        let join = tokio::time::timeout(SIGNAL_TIMEOUT, async {
            loop {
                match signal.recv().await? {
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
        self.progress.mark("join_response");
        if let Some(room) = &join.room {
            self.room_name.clone_from(&room.name);
        }

        let session_id = self.next_session_id;
        self.next_session_id = self.next_session_id.wrapping_add(1);
        let ice_servers: Vec<RTCIceServer> = join
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        let udp_addrs = if self.options.udp_addrs.is_empty() {
            signal::default_udp_addrs(&self.url)
        } else {
            self.options.udp_addrs.clone()
        };
        let ice_servers = useful_ice_servers(&udp_addrs, &ice_servers);
        let handler = |target| {
            Arc::new(Forwarder {
                tx: self.internal_tx.clone(),
                session_id,
                target,
            })
        };
        let publisher = new_peer_connection(
            udp_addrs.clone(),
            ice_servers.clone(),
            handler(Target::Publisher),
        )
        .await?;
        let subscriber =
            new_peer_connection(udp_addrs, ice_servers, handler(Target::Subscriber)).await?;
        self.progress.mark("peer_connections");
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
                session_id,
                self.internal_tx.clone(),
            ),
            spawn_dc_reader(
                lossy.clone(),
                DataKind::Lossy,
                session_id,
                self.internal_tx.clone(),
            ),
        ];
        let secs = |s: i32, default: u64| {
            Duration::from_secs(u64::try_from(s).ok().filter(|&s| s > 0).unwrap_or(default))
        };
        let session = Session {
            session_id,
            signal,
            publisher,
            subscriber,
            reliable,
            lossy,
            reliable_open: false,
            lossy_open: false,
            tasks,
            driver_nudge: None,
            negotiation: Negotiation::default(),
            ping_interval: secs(join.ping_interval, 5),
            ping_timeout: secs(join.ping_timeout, 15),
            last_recv: Instant::now(),
            rtt_ms: 0,
        };
        if let Some(old) = self.session.replace(session) {
            old.teardown().await;
        }
        if let Some(p) = &join.participant {
            self.participants.set_local(Participant::from(p));
        }
        self.apply_participants(&join.other_participants, rejoin)
            .await;
        if let Some(s) = self.session.as_mut() {
            s.negotiation.offer_needed();
        }
        self.negotiate().await?;
        Ok(join)
    }

    /// The reliable channel opened: the first join is done.
    pub(super) fn joined(&mut self) {
        let identity = &self.participants.local().identity;
        self.progress.done(&self.room_name, identity);
    }

    /// A webrtc-rs callback of the current session's peer connection `target`.
    /// Returns why the connection is lost, if it is.
    pub(super) async fn on_pc_event(
        &mut self,
        session_id: u64,
        target: Target,
        event: PcEvent,
    ) -> Option<Loss> {
        match event {
            PcEvent::Candidate(init) => return self.send_local_candidate(target, init).await,
            PcEvent::State(state) => {
                tracing::debug!(?target, ?state, "peer connection state");
                if state == RTCPeerConnectionState::Connected {
                    self.progress.mark(match target {
                        Target::Publisher => "publisher_connected",
                        Target::Subscriber => "subscriber_connected",
                    });
                    // Either one: the publisher's own Connected may wait in its
                    // driver's queue like the DCEP OPEN does.
                    if let Some(s) = self.session.as_mut()
                        && !(s.reliable_open && s.lossy_open)
                        && s.driver_nudge.is_none()
                    {
                        s.driver_nudge = Some(OwnedTask::spawn(nudge_driver(s.publisher.clone())));
                    }
                }
                if state == RTCPeerConnectionState::Failed {
                    return Some(Loss::PeerConnectionFailed(target));
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
                let task = spawn_dc_reader(dc, kind, session_id, self.internal_tx.clone());
                if let Some(s) = self.session.as_mut() {
                    s.tasks.push(task);
                }
            }
        }
        None
    }

    /// A subscribed track arrived: named by its msid, reported if it is audio.
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
        let identity = self.participants.subscribed(&psid, &tsid);
        self.events
            .emit(RoomEvent::TrackSubscribed(RemoteAudioTrack {
                sid: tsid,
                participant_identity: identity,
                participant_sid: psid,
                inner: track,
            }))
            .await;
    }
}

/// A peer connection with our codec (Opus only), NACK and RTCP reports, and ICE
/// tuned for joining fast; its callbacks go to `handler`.
pub(super) async fn new_peer_connection(
    udp_addrs: Vec<String>,
    ice_servers: Vec<RTCIceServer>,
    handler: Arc<dyn PeerConnectionEventHandler>,
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
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
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
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// webrtc-rs 0.21's driver queues what one pass produces (the data channels'
/// DCEP OPEN, the publisher's Connected state) but acts on it only on its next
/// wake. When the SFU is the SCTP client, nothing else wakes it until a 200 ms
/// SCTP timer, and the join waited that long (1 join in 10–30 on loopback). A
/// configuration update with the same configuration is a no-op driver event:
/// once either peer connection is connected, poke the publisher's driver every
/// 10 ms for 200 ms, where a join on a quiet machine opens its channels, then ever
/// less often (a loaded machine joins slowly, and pokes from many joins would
/// only load it more), until both channels are open (the engine then drops
/// this task) or for at most [`NUDGE_FOR`]. Poking from the answer on, through the
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

    #[test]
    fn join_progress_fires_ready_once() {
        let (tx, mut rx) = oneshot::channel();
        let mut p = JoinProgress::new(Some(tx));
        p.mark("signal");
        assert_eq!(p.marks.len(), 2);
        p.done("room", "agent");
        assert!(rx.try_recv().is_ok());
        p.mark("later");
        assert!(p.marks.is_empty(), "nothing is noted after the first join");
        p.done("room", "agent");
    }
}
