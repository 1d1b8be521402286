//! Carrying out the negotiation (`negotiation.rs` decides, this does): publisher
//! offers, subscriber answers, remote candidates onto the peer connections, local
//! candidates trickled to the server, held sinks released to their pacers.

use livekit_protocol as proto;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};
use webrtc_core::peer_connection::configuration::RTCOfferOptions;

use super::join::Session;
use super::negotiation::{Action, Target};
use super::{Engine, Loss};
use crate::RtcError;
use crate::signal::Req;

impl Engine {
    /// Do what the negotiation asks, in order, until it asks nothing more. On an
    /// error the rest stays queued for the next call.
    pub(super) async fn negotiate(&mut self) -> Result<(), RtcError> {
        loop {
            let Some(s) = self.session.as_mut() else {
                return Ok(());
            };
            let Some(action) = s.negotiation.poll_action() else {
                return Ok(());
            };
            match action {
                Action::SendOffer { id, ice_restart } => {
                    if let Err(e) = send_offer(s, id, ice_restart).await {
                        s.negotiation.offer_failed(id);
                        return Err(e);
                    }
                    self.progress.mark("offer_sent");
                }
                Action::SendAnswer { id } => send_answer(s, id).await?,
                Action::AddCandidate { target, candidate } => {
                    if let Err(e) = s.pc(target).add_ice_candidate(candidate).await {
                        tracing::debug!(?target, error = %e, "remote candidate rejected");
                    }
                }
                Action::ReleaseSink { cid, sink } => self.publications.release(&cid, sink),
            }
        }
    }

    /// The server answered our publisher offer.
    pub(super) async fn on_answer(&mut self, a: proto::SessionDescription) -> Result<(), RtcError> {
        self.progress.mark("answer");
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let desc = RTCSessionDescription::answer(a.sdp)?;
        s.publisher.set_remote_description(desc).await?;
        s.negotiation.answer_applied();
        self.negotiate().await
    }

    /// The server offers the subscriber its tracks (again).
    pub(super) async fn on_offer(&mut self, o: proto::SessionDescription) -> Result<(), RtcError> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let desc = RTCSessionDescription::offer(o.sdp)?;
        s.subscriber.set_remote_description(desc).await?;
        s.negotiation.offer_applied(o.id);
        self.negotiate().await
    }

    /// A remote ICE candidate. Unparsable or empty ones (end of candidates) are ignored.
    pub(super) async fn on_trickle(&mut self, t: proto::TrickleRequest) -> Result<(), RtcError> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let init: RTCIceCandidateInit = match serde_json::from_str(&t.candidate_init) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "unparsable remote candidate");
                return Ok(());
            }
        };
        if init.candidate.is_empty() {
            return Ok(());
        }
        s.negotiation
            .remote_candidate(Target::from_proto(t.target), init);
        self.negotiate().await
    }

    /// Trickle one of our candidates to the server; a failed send is a lost signal.
    pub(super) async fn send_local_candidate(
        &mut self,
        target: Target,
        init: RTCIceCandidateInit,
    ) -> Option<Loss> {
        let json = serde_json::to_string(&init).ok()?;
        let s = self.session.as_mut()?;
        let req = proto::TrickleRequest {
            candidate_init: json,
            target: target.proto(),
            r#final: false,
        };
        s.signal
            .send(Req::Trickle(req))
            .await
            .err()
            .map(Loss::Signal)
    }
}

/// Create, set and send publisher offer `id`.
async fn send_offer(s: &mut Session, id: u32, ice_restart: bool) -> Result<(), RtcError> {
    let offer = s
        .publisher
        .create_offer(Some(RTCOfferOptions { ice_restart }))
        .await?;
    s.publisher.set_local_description(offer.clone()).await?;
    // The local description carries the candidates gathered so far.
    let sdp = match s.publisher.local_description().await {
        Some(d) => d.sdp,
        None => offer.sdp,
    };
    let desc = proto::SessionDescription {
        r#type: "offer".into(),
        sdp,
        id,
        ..Default::default()
    };
    s.signal.send(Req::Offer(desc)).await
}

/// Create, set and send the subscriber's answer to server offer `id`.
async fn send_answer(s: &mut Session, id: u32) -> Result<(), RtcError> {
    let answer = s.subscriber.create_answer(None).await?;
    s.subscriber.set_local_description(answer.clone()).await?;
    let sdp = match s.subscriber.local_description().await {
        Some(d) => d.sdp,
        None => answer.sdp,
    };
    let desc = proto::SessionDescription {
        r#type: "answer".into(),
        sdp,
        id,
        ..Default::default()
    };
    s.signal.send(Req::Answer(desc)).await
}
