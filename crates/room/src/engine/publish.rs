//! Publishing audio tracks: `AddTrackRequest` → `TrackPublishedResponse` → a send
//! Opus track on the publisher (its track id is the cid) → a publisher offer; the
//! track's pacer gets its RTP sink once the server has answered that offer (see
//! `negotiation.rs`, held sinks). Published tracks survive reconnects: a resume
//! announces them in `SyncState`; a full rejoin unbinds their sinks and republishes
//! each on the same [`LocalAudioTrack`] handle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use tokio::sync::{oneshot, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc_core::media_stream::MediaStreamTrack;
use webrtc_core::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};

use super::{Engine, OwnedTask, random_id};
use crate::RtcError;
use crate::frame::check_rate;
use crate::local_track::{self, LocalAudioTrack, RtpSink};
use crate::signal::Req;

/// Payload type we offer Opus on (the answerer must keep it).
pub(super) const OPUS_PT: u8 = 111;

/// Waiting for `TrackPublishedResponse`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The one codec we offer and send: Opus at 48 kHz, FEC allowed.
pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A track we publish; survives reconnects.
struct Published {
    cid: String,
    name: String,
    /// The server's description of it (`None` until its first `TrackPublishedResponse`
    /// after a rejoin), for `SyncState` on a resume.
    info: Option<proto::TrackInfo>,
    /// Where the pacer writes; the engine swaps it on rejoin, `None` while unbound.
    sink_tx: watch::Sender<Option<RtpSink>>,
    /// The pacer task; aborted when the engine drops this.
    pacer: OwnedTask,
}

/// An `AddTrackRequest` waiting for its `TrackPublishedResponse`.
struct PendingPublish {
    name: String,
    sample_rate: u32,
    /// The caller of `publish_audio`; `None` for a republish after rejoin.
    reply: Option<oneshot::Sender<Result<LocalAudioTrack, RtcError>>>,
    deadline: Instant,
}

/// Tracks published and being published.
#[derive(Default)]
pub(super) struct Publications {
    published: Vec<Published>,
    /// By cid.
    pending: HashMap<String, PendingPublish>,
}

impl Publications {
    /// The server has applied the offer carrying `cid`: its pacer may send.
    pub(super) fn release(&self, cid: &str, sink: RtpSink) {
        if let Some(p) = self.published.iter().find(|p| p.cid == cid) {
            let _ = p.sink_tx.send(Some(sink));
        }
    }

    /// Fail the publishes the server has not answered in time.
    pub(super) fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(cid, _)| cid.clone())
            .collect();
        for cid in expired {
            if let Some(p) = self.pending.remove(&cid)
                && let Some(reply) = p.reply
            {
                let _ = reply.send(Err(RtcError::Timeout {
                    what: "track published response",
                    after: PUBLISH_TIMEOUT,
                }));
            }
        }
    }

    /// What a resume tells the server we publish.
    pub(super) fn announced(&self) -> Vec<proto::TrackPublishedResponse> {
        self.published
            .iter()
            .filter_map(|p| {
                p.info.clone().map(|t| proto::TrackPublishedResponse {
                    cid: p.cid.clone(),
                    track: Some(t),
                })
            })
            .collect()
    }

    /// The peer connections are gone (a rejoin): pacers pace into nothing until
    /// their tracks are published again.
    pub(super) fn unbind(&self) {
        for p in &self.published {
            let _ = p.sink_tx.send(None);
        }
    }

    /// The room is gone: stop every pacer, fail every publish in flight.
    pub(super) fn close(&mut self) {
        self.published.clear();
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(RtcError::Closed));
            }
        }
    }
}

impl Engine {
    /// `Room::publish_audio`: ask the server for a track; answered on `reply` when it
    /// has published it.
    pub(super) async fn publish_audio(
        &mut self,
        name: String,
        sample_rate: u32,
        reply: oneshot::Sender<Result<LocalAudioTrack, RtcError>>,
    ) {
        if let Err(e) = check_rate(sample_rate) {
            let _ = reply.send(Err(e));
            return;
        }
        let cid = random_id("TR_local_");
        if let Err(e) = self.send_add_track(&cid, &name).await {
            let _ = reply.send(Err(e));
            return;
        }
        self.publications.pending.insert(
            cid,
            PendingPublish {
                name,
                sample_rate,
                reply: Some(reply),
                deadline: Instant::now() + PUBLISH_TIMEOUT,
            },
        );
    }

    /// After a full rejoin: publish again every track whose handles are still alive
    /// (their pacers run), under the same cid.
    pub(super) async fn republish(&mut self) -> Result<(), RtcError> {
        self.publications
            .published
            .retain(|p| !p.pacer.is_finished());
        let tracks: Vec<(String, String)> = self
            .publications
            .published
            .iter()
            .map(|p| (p.cid.clone(), p.name.clone()))
            .collect();
        for (cid, name) in tracks {
            self.send_add_track(&cid, &name).await?;
            self.publications.pending.insert(
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
        s.signal.send(Req::AddTrack(req)).await
    }

    /// The server published track `tp.cid`: add it to the publisher and renegotiate;
    /// a new track's pacer starts (unbound) and its handle goes to the caller.
    pub(super) async fn on_track_published(
        &mut self,
        tp: proto::TrackPublishedResponse,
    ) -> Result<(), RtcError> {
        let Some(pending) = self.publications.pending.remove(&tp.cid) else {
            return Ok(());
        };
        let info = tp.track.unwrap_or_default();
        let attached = self.attach_local_track(&tp.cid, &pending.name).await;
        match (attached, pending.reply) {
            (Ok(()), Some(reply)) => {
                let (sink_tx, sink_rx) = watch::channel(None);
                let config = local_track::TrackConfig {
                    complexity: self.options.opus_complexity,
                    application: self.options.opus_application,
                    dtx: self.options.dtx,
                };
                match local_track::spawn_local_track(
                    config,
                    info.sid.clone(),
                    pending.name.clone(),
                    pending.sample_rate,
                    sink_rx,
                ) {
                    Ok((track, pacer)) => {
                        self.publications.published.push(Published {
                            cid: tp.cid,
                            name: pending.name,
                            info: Some(info),
                            sink_tx,
                            pacer: OwnedTask(pacer),
                        });
                        let _ = reply.send(Ok(track));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            (Ok(()), None) => {
                if let Some(p) = self
                    .publications
                    .published
                    .iter_mut()
                    .find(|p| p.cid == tp.cid)
                {
                    p.info = Some(info);
                }
            }
            (Err(e), Some(reply)) => {
                let _ = reply.send(Err(e));
            }
            (Err(e), None) => tracing::warn!(error = %e, "republishing a track failed"),
        }
        Ok(())
    }

    /// Add a sending Opus track for `cid` to the publisher, hold its sink until the
    /// offer carrying it is answered, and renegotiate.
    async fn attach_local_track(&mut self, cid: &str, name: &str) -> Result<(), RtcError> {
        let s = self.session.as_mut().ok_or(RtcError::Closed)?;
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
        let sink = RtpSink {
            track: local,
            ssrc,
            payload_type: OPUS_PT,
        };
        s.negotiation.hold_sink(cid.to_owned(), sink);
        s.negotiation.offer_needed();
        self.negotiate().await
    }
}
