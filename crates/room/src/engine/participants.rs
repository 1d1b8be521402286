//! The participant table, pure: what the server says about participants (the join
//! response's list, `ParticipantUpdate`s, a rejoin's fresh list) and about tracks
//! (each participant's publications, our subscriptions) goes in; the differences come
//! out as [`RoomEvent`]s, drained with [`Participants::poll_event`]. No I/O, no clock.
//!
//! The server sends whole `ParticipantInfo`s, not deltas, so the table diffs them
//! against what it last saw:
//!
//! - a sid not seen before → [`RoomEvent::ParticipantJoined`];
//! - state `DISCONNECTED` → its subscribed tracks unsubscribed, then
//!   [`RoomEvent::ParticipantLeft`];
//! - other attributes than before → [`RoomEvent::ParticipantAttributesChanged`]
//!   (the whole new set);
//! - a track sid gone from its publications while we are subscribed →
//!   [`RoomEvent::TrackUnsubscribed`];
//! - our own sid → our attributes are updated, nothing is reported.
//!
//! After a full rejoin the new list is complete ([`Participants::apply`] with `full`):
//! whoever is missing from it has left, and every subscription died with the old
//! subscriber connection. Events come out in a fixed order (by sid where several
//! happen at once) so that the same input always gives the same output.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use livekit_protocol as proto;

use crate::room::{Participant, RoomEvent};

/// Remote participants, their publications and our subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Participants {
    /// Ourselves, as of the last join (attributes kept up to date).
    local: Participant,
    /// Everyone else, by participant sid.
    remote: BTreeMap<String, Participant>,
    /// Tracks we are subscribed to: track sid → publisher's participant sid.
    subscribed: BTreeMap<String, String>,
    /// Track sids each participant published, as last announced, to notice unpublishes.
    published_by: HashMap<String, Vec<String>>,
    /// Differences not yet drained.
    events: VecDeque<RoomEvent>,
}

impl Participants {
    /// Ourselves.
    pub(crate) fn local(&self) -> &Participant {
        &self.local
    }

    /// Who we are after a join or rejoin.
    pub(crate) fn set_local(&mut self, local: Participant) {
        self.local = local;
    }

    /// The other participants now, by sid.
    pub(crate) fn remote(&self) -> Vec<Participant> {
        self.remote.values().cloned().collect()
    }

    /// Track sids we are subscribed to.
    pub(crate) fn subscribed_tracks(&self) -> Vec<String> {
        self.subscribed.keys().cloned().collect()
    }

    /// Apply a participant list (join response or update). `full` is a rejoin's
    /// complete list: whoever is missing has left, and every subscription is gone.
    pub(crate) fn apply(&mut self, list: &[proto::ParticipantInfo], full: bool) {
        if full {
            let present: BTreeSet<&str> = list.iter().map(|p| p.sid.as_str()).collect();
            let gone: Vec<String> = self
                .remote
                .keys()
                .filter(|sid| !present.contains(sid.as_str()))
                .cloned()
                .collect();
            for sid in gone {
                self.remove(&sid);
            }
            for (track_sid, participant_sid) in std::mem::take(&mut self.subscribed) {
                let participant_identity = self.identity_of(&participant_sid);
                self.events.push_back(RoomEvent::TrackUnsubscribed {
                    participant_identity,
                    track_sid,
                });
            }
        }
        for info in list {
            if info.sid == self.local.sid {
                self.local.attributes.clone_from(&info.attributes);
                continue;
            }
            if info.state == proto::participant_info::State::Disconnected as i32 {
                self.remove(&info.sid);
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
                    self.events.push_back(RoomEvent::TrackUnsubscribed {
                        participant_identity: p.identity.clone(),
                        track_sid: gone.clone(),
                    });
                }
            }
            match self.remote.insert(info.sid.clone(), p.clone()) {
                None => self.events.push_back(RoomEvent::ParticipantJoined(p)),
                Some(old) if old.attributes != p.attributes => {
                    self.events
                        .push_back(RoomEvent::ParticipantAttributesChanged {
                            identity: p.identity,
                            attributes: p.attributes,
                        });
                }
                Some(_) => {}
            }
        }
    }

    /// We receive track `track_sid` of participant `participant_sid`; returns the
    /// publisher's identity (empty if the server has not announced them yet).
    pub(crate) fn subscribed(&mut self, participant_sid: &str, track_sid: &str) -> String {
        self.subscribed
            .insert(track_sid.to_owned(), participant_sid.to_owned());
        self.identity_of(participant_sid)
    }

    /// The next difference to report. A [`RoomEvent::ParticipantLeft`] also means
    /// that participant's half-received text streams are void.
    pub(crate) fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    fn identity_of(&self, participant_sid: &str) -> String {
        self.remote
            .get(participant_sid)
            .map(|p| p.identity.clone())
            .unwrap_or_default()
    }

    /// `sid` left: its subscribed tracks go first, then the participant.
    fn remove(&mut self, sid: &str) {
        self.published_by.remove(sid);
        let Some(p) = self.remote.remove(sid) else {
            return;
        };
        let tracks: Vec<String> = self
            .subscribed
            .iter()
            .filter(|(_, publisher)| publisher.as_str() == sid)
            .map(|(track, _)| track.clone())
            .collect();
        for track_sid in tracks {
            self.subscribed.remove(&track_sid);
            self.events.push_back(RoomEvent::TrackUnsubscribed {
                participant_identity: p.identity.clone(),
                track_sid,
            });
        }
        self.events.push_back(RoomEvent::ParticipantLeft(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        sid: &str,
        identity: &str,
        attrs: &[(&str, &str)],
        tracks: &[&str],
    ) -> proto::ParticipantInfo {
        proto::ParticipantInfo {
            sid: sid.into(),
            identity: identity.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            tracks: tracks
                .iter()
                .map(|t| proto::TrackInfo {
                    sid: (*t).into(),
                    ..Default::default()
                })
                .collect(),
            state: proto::participant_info::State::Active as i32,
            ..Default::default()
        }
    }

    fn left(mut p: proto::ParticipantInfo) -> proto::ParticipantInfo {
        p.state = proto::participant_info::State::Disconnected as i32;
        p
    }

    /// Events as short strings, in order.
    fn drain(t: &mut Participants) -> Vec<String> {
        std::iter::from_fn(|| t.poll_event())
            .map(|e| match e {
                RoomEvent::ParticipantJoined(p) => format!("joined {}", p.identity),
                RoomEvent::ParticipantLeft(p) => format!("left {}", p.identity),
                RoomEvent::ParticipantAttributesChanged {
                    identity,
                    attributes,
                } => {
                    let mut a: Vec<String> =
                        attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    a.sort();
                    format!("attributes {identity} {}", a.join(","))
                }
                RoomEvent::TrackUnsubscribed {
                    participant_identity,
                    track_sid,
                } => format!("unsubscribed {participant_identity} {track_sid}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn table() -> Participants {
        let mut t = Participants::default();
        t.set_local(Participant {
            sid: "PA_me".into(),
            identity: "agent".into(),
            ..Default::default()
        });
        t
    }

    #[test]
    fn the_join_list_announces_everyone_but_us() {
        let mut t = table();
        t.apply(
            &[
                info("PA_b", "bob", &[], &[]),
                info("PA_me", "agent", &[("k", "v")], &[]),
                info("PA_a", "alice", &[], &[]),
            ],
            false,
        );
        assert_eq!(drain(&mut t), ["joined bob", "joined alice"]);
        assert_eq!(t.local().attributes.get("k").map(String::as_str), Some("v"));
        let sids: Vec<String> = t.remote().into_iter().map(|p| p.sid).collect();
        assert_eq!(sids, ["PA_a", "PA_b"]);
    }

    #[test]
    fn updates_report_only_what_changed() {
        let mut t = table();
        t.apply(
            &[info("PA_a", "alice", &[("lk.agent.state", "idle")], &[])],
            false,
        );
        drain(&mut t);
        // The same info again (the server resends whole infos): nothing.
        t.apply(
            &[info("PA_a", "alice", &[("lk.agent.state", "idle")], &[])],
            false,
        );
        assert_eq!(drain(&mut t), Vec::<String>::new());
        // An attribute changed: the whole new set.
        t.apply(
            &[info(
                "PA_a",
                "alice",
                &[("lk.agent.state", "listening"), ("x", "1")],
                &[],
            )],
            false,
        );
        assert_eq!(
            drain(&mut t),
            ["attributes alice lk.agent.state=listening,x=1"]
        );
        // Our own attributes change silently.
        t.apply(&[info("PA_me", "agent", &[("a", "b")], &[])], false);
        assert_eq!(drain(&mut t), Vec::<String>::new());
        assert_eq!(t.local().attributes.len(), 1);
    }

    #[test]
    fn a_participant_leaving_takes_its_subscriptions_with_it() {
        let mut t = table();
        t.apply(&[info("PA_a", "alice", &[], &["TR_1", "TR_2"])], false);
        drain(&mut t);
        assert_eq!(t.subscribed("PA_a", "TR_2"), "alice");
        assert_eq!(t.subscribed("PA_a", "TR_1"), "alice");
        t.apply(
            &[left(info("PA_a", "alice", &[], &["TR_1", "TR_2"]))],
            false,
        );
        assert_eq!(
            drain(&mut t),
            [
                "unsubscribed alice TR_1",
                "unsubscribed alice TR_2",
                "left alice"
            ]
        );
        assert!(t.remote().is_empty());
        assert!(t.subscribed_tracks().is_empty());
        // Leaving twice, or someone never seen leaving: nothing.
        t.apply(&[left(info("PA_a", "alice", &[], &[]))], false);
        t.apply(&[left(info("PA_z", "zed", &[], &[]))], false);
        assert_eq!(drain(&mut t), Vec::<String>::new());
    }

    #[test]
    fn an_unpublished_track_is_unsubscribed_if_we_had_it() {
        let mut t = table();
        t.apply(&[info("PA_a", "alice", &[], &["TR_1", "TR_2"])], false);
        drain(&mut t);
        t.subscribed("PA_a", "TR_1");
        // TR_2 (not subscribed) and TR_1 both unpublished; a new TR_3.
        t.apply(&[info("PA_a", "alice", &[], &["TR_3"])], false);
        assert_eq!(drain(&mut t), ["unsubscribed alice TR_1"]);
        assert!(t.subscribed_tracks().is_empty());
    }

    #[test]
    fn a_track_of_an_unannounced_participant_has_no_identity_yet() {
        let mut t = table();
        assert_eq!(t.subscribed("PA_x", "TR_1"), "");
        assert_eq!(t.subscribed_tracks(), ["TR_1"]);
    }

    #[test]
    fn a_rejoin_list_is_complete() {
        let mut t = table();
        t.apply(
            &[
                info("PA_a", "alice", &[], &["TR_a"]),
                info("PA_b", "bob", &[], &["TR_b"]),
                info("PA_c", "carol", &[("k", "1")], &[]),
            ],
            false,
        );
        drain(&mut t);
        t.subscribed("PA_a", "TR_a");
        t.subscribed("PA_b", "TR_b");
        // After the rejoin: bob is gone, carol changed, dave is new, alice stayed.
        t.apply(
            &[
                info("PA_a", "alice", &[], &["TR_a"]),
                info("PA_c", "carol", &[("k", "2")], &[]),
                info("PA_d", "dave", &[], &[]),
            ],
            true,
        );
        assert_eq!(
            drain(&mut t),
            [
                "unsubscribed bob TR_b",
                "left bob",
                // Alice's track died with the old subscriber connection; it will be
                // subscribed again on the new one.
                "unsubscribed alice TR_a",
                "attributes carol k=2",
                "joined dave",
            ]
        );
        assert!(t.subscribed_tracks().is_empty());
    }

    #[test]
    fn an_update_is_not_a_complete_list() {
        let mut t = table();
        t.apply(&[info("PA_a", "alice", &[], &[])], false);
        drain(&mut t);
        t.apply(&[info("PA_b", "bob", &[], &[])], false);
        assert_eq!(drain(&mut t), ["joined bob"]);
        assert_eq!(t.remote().len(), 2);
    }
}
