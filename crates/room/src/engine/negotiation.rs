//! SDP and ICE negotiation of one session's two peer connections, as a pure state
//! machine: no webrtc-rs, no tokio, no clock (nothing here waits for a deadline, so
//! no time is passed in).
//!
//! The engine tells [`Negotiation`] what happened (a track wants an offer, the
//! server's answer or offer has been applied, a remote candidate arrived, the session
//! resumes) and then drains [`Negotiation::poll_action`] in order, doing each
//! [`Action`] on the peer connections and the signal socket (`engine/sdp.rs`).
//!
//! What it keeps, and why:
//!
//! - **One publisher offer at a time.** LiveKit's SFU answers offers in order; a new
//!   offer while one is out would race its answer. A change meanwhile (a track
//!   added) sets `renegotiate`, and the next offer goes out once the answer is in.
//! - **Offer ids** 1, 2, 3, … (the server echoes them in its answers).
//! - **Remote-description state** per peer connection: webrtc-rs rejects a remote
//!   candidate before the remote description, and the server trickles its candidates
//!   as soon as it has them, often before its offer or answer. They are queued and
//!   applied right after the description.
//! - **Held sinks.** A published track's RTP sink is held until the server has
//!   answered the offer that carries it: RTP sent before the server applies the offer
//!   carries an SSRC it cannot place (no MID header extension on audio), and it
//!   drops that stream for good. A held sink is released by the first answer after
//!   which no renegotiation is pending, so never before the offer carrying it.
//!
//! The machine lives in the session: a full rejoin starts a new one (held sinks and
//! queued candidates of the old connection go with it); a resume keeps it and
//! restarts ICE ([`Negotiation::restart_ice`]).

use std::collections::VecDeque;

use livekit_protocol as proto;

/// Which of the two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Ours to offer: published tracks and the data channels.
    Publisher,
    /// The server's to offer: subscribed tracks.
    Subscriber,
}

impl Target {
    /// The protocol's number for it (`SignalTarget`).
    pub(crate) fn proto(self) -> i32 {
        match self {
            Target::Publisher => proto::SignalTarget::Publisher as i32,
            Target::Subscriber => proto::SignalTarget::Subscriber as i32,
        }
    }

    /// From the protocol's number; anything but the publisher is the subscriber, as
    /// LiveKit's clients read it.
    pub(crate) fn from_proto(target: i32) -> Self {
        if target == proto::SignalTarget::Publisher as i32 {
            Target::Publisher
        } else {
            Target::Subscriber
        }
    }
}

/// What the engine must do next, in the order given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action<C, S> {
    /// Create a publisher offer (restarting ICE if asked), set it as the local
    /// description and send it with this id. If any of that fails, tell
    /// [`Negotiation::offer_failed`].
    SendOffer {
        /// The offer's id (echoed by the server's answer).
        id: u32,
        /// New ICE credentials (a resumed session).
        ice_restart: bool,
    },
    /// Create the subscriber's answer to the server's offer `id` (already set as its
    /// remote description), set it locally and send it.
    SendAnswer {
        /// The server offer's id.
        id: u32,
    },
    /// Add a remote ICE candidate to `target` (its remote description is set).
    AddCandidate {
        /// The peer connection.
        target: Target,
        /// The candidate as the server sent it.
        candidate: C,
    },
    /// The server has applied the offer carrying track `cid`: hand its sink to the
    /// track's pacer.
    ReleaseSink {
        /// The track's client id.
        cid: String,
        /// The sink.
        sink: S,
    },
}

/// The remote side of one peer connection.
#[derive(Debug)]
struct Remote<C> {
    /// A remote description has been applied.
    description_set: bool,
    /// Candidates that came before it, in arrival order.
    queued: Vec<C>,
}

impl<C> Default for Remote<C> {
    fn default() -> Self {
        Self {
            description_set: false,
            queued: Vec::new(),
        }
    }
}

/// The negotiation state of one session (see the module docs). `C` is an ICE
/// candidate, `S` a track's RTP sink; the machine only stores and hands them back.
#[derive(Debug)]
pub(crate) struct Negotiation<C, S> {
    /// A publisher offer is out and its answer has not been applied yet.
    awaiting_answer: bool,
    /// Something changed while an offer was out: offer again after its answer.
    renegotiate: bool,
    /// Id of the last offer (0 before the first).
    offer_id: u32,
    publisher: Remote<C>,
    subscriber: Remote<C>,
    /// Sinks of published tracks waiting for the answer to the offer carrying them.
    held: Vec<(String, S)>,
    /// What the engine must do, oldest first.
    actions: VecDeque<Action<C, S>>,
}

impl<C, S> Default for Negotiation<C, S> {
    fn default() -> Self {
        Self {
            awaiting_answer: false,
            renegotiate: false,
            offer_id: 0,
            publisher: Remote::default(),
            subscriber: Remote::default(),
            held: Vec::new(),
            actions: VecDeque::new(),
        }
    }
}

impl<C, S> Negotiation<C, S> {
    /// The publisher needs a (new) offer: the first one of a session, or a track was
    /// added. Sent now, or once the offer that is out has been answered.
    pub(crate) fn offer_needed(&mut self) {
        if self.awaiting_answer {
            self.renegotiate = true;
        } else {
            self.offer(false);
        }
    }

    /// The session resumed on a new signal connection: the server forgot our last
    /// offer and the publisher's ICE must restart. Offers now, whatever was out;
    /// candidates for the publisher wait for the new answer.
    pub(crate) fn restart_ice(&mut self) {
        self.awaiting_answer = false;
        self.publisher.description_set = false;
        self.offer(true);
    }

    fn offer(&mut self, ice_restart: bool) {
        self.offer_id = self.offer_id.wrapping_add(1);
        self.awaiting_answer = true;
        self.actions.push_back(Action::SendOffer {
            id: self.offer_id,
            ice_restart,
        });
    }

    /// Offer `id` could not be created, set or sent: no answer will come for it.
    pub(crate) fn offer_failed(&mut self, id: u32) {
        if id == self.offer_id {
            self.awaiting_answer = false;
        }
    }

    /// The server's answer has been applied to the publisher: its queued candidates
    /// go in, then the next offer (if something changed meanwhile) or else every
    /// held sink is released.
    pub(crate) fn answer_applied(&mut self) {
        self.publisher.description_set = true;
        self.awaiting_answer = false;
        for candidate in self.publisher.queued.drain(..) {
            self.actions.push_back(Action::AddCandidate {
                target: Target::Publisher,
                candidate,
            });
        }
        if std::mem::take(&mut self.renegotiate) {
            // Tracks added since are in the next offer, not the answered one.
            self.offer(false);
        } else {
            for (cid, sink) in self.held.drain(..) {
                self.actions.push_back(Action::ReleaseSink { cid, sink });
            }
        }
    }

    /// The server's offer `id` has been applied to the subscriber: its queued
    /// candidates go in, then our answer.
    pub(crate) fn offer_applied(&mut self, id: u32) {
        self.subscriber.description_set = true;
        for candidate in self.subscriber.queued.drain(..) {
            self.actions.push_back(Action::AddCandidate {
                target: Target::Subscriber,
                candidate,
            });
        }
        self.actions.push_back(Action::SendAnswer { id });
    }

    /// A remote candidate for `target`: added now, or queued until that peer
    /// connection has its remote description.
    pub(crate) fn remote_candidate(&mut self, target: Target, candidate: C) {
        let remote = match target {
            Target::Publisher => &mut self.publisher,
            Target::Subscriber => &mut self.subscriber,
        };
        if remote.description_set {
            self.actions
                .push_back(Action::AddCandidate { target, candidate });
        } else {
            remote.queued.push(candidate);
        }
    }

    /// Hold track `cid`'s sink until the server has answered the offer carrying it
    /// (call it with [`Self::offer_needed`] for that track, in either order).
    pub(crate) fn hold_sink(&mut self, cid: String, sink: S) {
        self.held.push((cid, sink));
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<Action<C, S>> {
        self.actions.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type N = Negotiation<&'static str, u32>;
    type A = Action<&'static str, u32>;

    fn drain(n: &mut N) -> Vec<A> {
        std::iter::from_fn(|| n.poll_action()).collect()
    }

    fn offer(id: u32) -> A {
        Action::SendOffer {
            id,
            ice_restart: false,
        }
    }

    #[test]
    fn offers_one_at_a_time_and_renegotiates_after_the_answer() {
        let mut n = N::default();
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(1)]);
        // Two tracks added while offer 1 is out: one more offer, after its answer.
        n.offer_needed();
        n.offer_needed();
        assert_eq!(drain(&mut n), []);
        n.answer_applied();
        assert_eq!(drain(&mut n), [offer(2)]);
        n.answer_applied();
        assert_eq!(drain(&mut n), []);
        // Nothing out: the next change offers at once.
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(3)]);
    }

    #[test]
    fn a_sink_is_held_until_the_offer_carrying_its_track_is_answered() {
        let mut n = N::default();
        n.offer_needed();
        drain(&mut n);
        // A track is added while offer 1 (without it) is out.
        n.hold_sink("TR_a".into(), 7);
        n.offer_needed();
        assert_eq!(drain(&mut n), []);
        // Offer 1's answer does not release it: offer 2 carries the track.
        n.answer_applied();
        assert_eq!(drain(&mut n), [offer(2)]);
        n.answer_applied();
        assert_eq!(
            drain(&mut n),
            [Action::ReleaseSink {
                cid: "TR_a".into(),
                sink: 7
            }]
        );
        // Released once only.
        n.offer_needed();
        drain(&mut n);
        n.answer_applied();
        assert_eq!(drain(&mut n), []);
    }

    #[test]
    fn a_sink_added_with_nothing_out_goes_with_the_next_answer() {
        let mut n = N::default();
        n.hold_sink("TR_a".into(), 1);
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(1)]);
        n.hold_sink("TR_b".into(), 2);
        n.offer_needed();
        n.answer_applied();
        // TR_b is not in offer 1: both wait for offer 2's answer.
        assert_eq!(drain(&mut n), [offer(2)]);
        n.answer_applied();
        assert_eq!(
            drain(&mut n),
            [
                Action::ReleaseSink {
                    cid: "TR_a".into(),
                    sink: 1
                },
                Action::ReleaseSink {
                    cid: "TR_b".into(),
                    sink: 2
                }
            ]
        );
    }

    #[test]
    fn candidates_before_the_remote_description_are_queued_in_order() {
        let mut n = N::default();
        n.remote_candidate(Target::Publisher, "p1");
        n.remote_candidate(Target::Subscriber, "s1");
        n.remote_candidate(Target::Publisher, "p2");
        assert_eq!(drain(&mut n), []);
        // The server's offer: the subscriber's candidates, then our answer.
        n.offer_applied(5);
        assert_eq!(
            drain(&mut n),
            [
                Action::AddCandidate {
                    target: Target::Subscriber,
                    candidate: "s1"
                },
                Action::SendAnswer { id: 5 }
            ]
        );
        n.offer_needed();
        drain(&mut n);
        n.answer_applied();
        assert_eq!(
            drain(&mut n),
            [
                Action::AddCandidate {
                    target: Target::Publisher,
                    candidate: "p1"
                },
                Action::AddCandidate {
                    target: Target::Publisher,
                    candidate: "p2"
                }
            ]
        );
        // From now on they go straight in.
        n.remote_candidate(Target::Publisher, "p3");
        n.remote_candidate(Target::Subscriber, "s2");
        assert_eq!(
            drain(&mut n),
            [
                Action::AddCandidate {
                    target: Target::Publisher,
                    candidate: "p3"
                },
                Action::AddCandidate {
                    target: Target::Subscriber,
                    candidate: "s2"
                }
            ]
        );
    }

    #[test]
    fn an_ice_restart_offers_at_once_and_queues_publisher_candidates_again() {
        let mut n = N::default();
        n.offer_needed();
        drain(&mut n);
        n.answer_applied();
        n.offer_applied(1);
        drain(&mut n);
        // A track was added while offer 2 was out; then the signal dropped.
        n.offer_needed();
        n.hold_sink("TR_a".into(), 3);
        n.offer_needed();
        drain(&mut n);
        n.restart_ice();
        assert_eq!(
            drain(&mut n),
            [Action::SendOffer {
                id: 3,
                ice_restart: true
            }]
        );
        n.remote_candidate(Target::Publisher, "p");
        n.remote_candidate(Target::Subscriber, "s");
        assert_eq!(
            drain(&mut n),
            [Action::AddCandidate {
                target: Target::Subscriber,
                candidate: "s"
            }]
        );
        // The renegotiation asked for before the restart still follows its answer
        // (harmless: the restart's offer already carried the track).
        n.answer_applied();
        assert_eq!(
            drain(&mut n),
            [
                Action::AddCandidate {
                    target: Target::Publisher,
                    candidate: "p"
                },
                offer(4)
            ]
        );
        n.answer_applied();
        assert_eq!(
            drain(&mut n),
            [Action::ReleaseSink {
                cid: "TR_a".into(),
                sink: 3
            }]
        );
    }

    #[test]
    fn a_failed_offer_does_not_wait_for_an_answer() {
        let mut n = N::default();
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(1)]);
        n.offer_failed(1);
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(2)]);
        // A stale failure report changes nothing.
        n.offer_failed(1);
        n.offer_needed();
        assert_eq!(drain(&mut n), []);
    }

    #[test]
    fn offer_ids_wrap() {
        let mut n = N {
            offer_id: u32::MAX,
            ..N::default()
        };
        n.offer_needed();
        assert_eq!(drain(&mut n), [offer(0)]);
    }

    #[test]
    fn targets_map_to_the_protocol() {
        for t in [Target::Publisher, Target::Subscriber] {
            assert_eq!(Target::from_proto(t.proto()), t);
        }
        assert_eq!(Target::from_proto(99), Target::Subscriber);
    }
}
