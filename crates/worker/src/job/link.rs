//! Who the session talks to: the first participant it may link to, as
//! LiveKit Agents links them, and the tracks of theirs that came first.

use room::RoomEvent;
use tokio::sync::{mpsc, watch};

use super::{JobOptions, Stop};
use crate::error::JobError;

/// Tracks of the user kept while the entrypoint runs.
const EARLY_TRACKS: usize = 4;

/// Participant kinds a session talks to, as LiveKit Agents links them:
/// standard clients, SIP callers, connectors (`ParticipantInfo.Kind`).
const USER_KINDS: [i32; 3] = [0, 3, 7];

/// The attribute an avatar worker sets to the identity of the agent it
/// publishes for.
const PUBLISH_ON_BEHALF: &str = "lk.publish_on_behalf";

/// Whether the session links to `p`: a person (not an agent, a recorder or
/// an ingress); the configured identity if one is set, else anyone but an
/// avatar publishing on behalf of `own` (our identity).
pub fn links_to(p: &room::Participant, wanted: Option<&str>, own: &str) -> bool {
    USER_KINDS.contains(&p.kind)
        && match wanted {
            Some(w) => w == p.identity,
            None => p.attributes.get(PUBLISH_ON_BEHALF).map(String::as_str) != Some(own),
        }
}

/// The user, and their audio tracks subscribed before the session started.
pub(super) struct Linked {
    pub(super) user: room::Participant,
    pub(super) early_tracks: Vec<room::RemoteAudioTrack>,
}

/// Waits for the first participant the session links to. `None` when told to
/// stop first.
pub(super) async fn link_user(
    room_events: &mut mpsc::Receiver<RoomEvent>,
    own: &str,
    options: &JobOptions,
    stop: &mut watch::Receiver<Stop>,
    job_id: &str,
) -> Result<Option<Linked>, JobError> {
    let wanted = options.user_identity.as_deref();
    let mut tracks: Vec<room::RemoteAudioTrack> = Vec::new();
    loop {
        tokio::select! {
            event = room_events.recv() => match event {
                None | Some(RoomEvent::Disconnected(_)) => return Err(JobError::RoomLost),
                Some(RoomEvent::ParticipantJoined(p)) if links_to(&p, wanted, own) => {
                    tracks.retain(|t| t.participant_identity() == p.identity);
                    return Ok(Some(Linked { user: p, early_tracks: tracks }));
                }
                Some(RoomEvent::ParticipantJoined(p)) => {
                    tracing::debug!(job = %job_id, identity = %p.identity, kind = p.kind, "not a user to talk to");
                }
                Some(RoomEvent::TrackSubscribed(t)) => {
                    // Its publisher's join may come after it.
                    if tracks.len() < EARLY_TRACKS {
                        tracks.push(t);
                    }
                }
                Some(_) => {}
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow_and_update() != Stop::Run {
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(identity: &str, kind: i32, attrs: &[(&str, &str)]) -> room::Participant {
        room::Participant {
            identity: identity.into(),
            kind,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn people_are_linked_and_recorders_agents_and_our_avatar_are_not() {
        for kind in [0, 3, 7] {
            assert!(
                links_to(&participant("u", kind, &[]), None, "agent-1"),
                "kind {kind}"
            );
        }
        for kind in [1, 2, 4, 8] {
            assert!(
                !links_to(&participant("u", kind, &[]), None, "agent-1"),
                "kind {kind}"
            );
        }
        let avatar = participant("avatar", 0, &[(PUBLISH_ON_BEHALF, "agent-1")]);
        assert!(!links_to(&avatar, None, "agent-1"));
        assert!(links_to(&avatar, None, "agent-2"), "another agent's avatar");
        // A configured identity is the only one linked, whatever it says.
        assert!(links_to(&avatar, Some("avatar"), "agent-1"));
        assert!(!links_to(
            &participant("u", 0, &[]),
            Some("avatar"),
            "agent-1"
        ));
        assert!(!links_to(
            &participant("avatar", 4, &[]),
            Some("avatar"),
            "agent-1"
        ));
    }
}
