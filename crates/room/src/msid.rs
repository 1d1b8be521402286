//! Mapping a subscribed media stream to the LiveKit participant and track it belongs to.
//!
//! The SFU names each forwarded stream `msid = "<participant sid>|<track sid>"`
//! (e.g. `PA_abc|TR_xyz`); older servers sent just the participant sid with the
//! track sid as the track id.

/// Participant sid and track sid of a subscribed stream, from its stream id and track id.
/// Returns `None` when neither carries a participant sid.
pub fn parse_msid(stream_id: &str, track_id: &str) -> Option<(String, String)> {
    let (participant, track) = match stream_id.split_once('|') {
        Some((p, t)) => (p, t),
        None => (stream_id, track_id),
    };
    let track = if track.is_empty() { track_id } else { track };
    if participant.is_empty() || track.is_empty() {
        return None;
    }
    Some((participant.to_owned(), track.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_form() {
        assert_eq!(
            parse_msid("PA_abc|TR_xyz", "TR_xyz"),
            Some(("PA_abc".into(), "TR_xyz".into()))
        );
    }

    #[test]
    fn legacy_form() {
        assert_eq!(
            parse_msid("PA_abc", "TR_xyz"),
            Some(("PA_abc".into(), "TR_xyz".into()))
        );
    }

    #[test]
    fn pipe_with_empty_track_falls_back_to_track_id() {
        assert_eq!(
            parse_msid("PA_abc|", "TR_1"),
            Some(("PA_abc".into(), "TR_1".into()))
        );
    }

    #[test]
    fn garbage() {
        assert_eq!(parse_msid("", ""), None);
        assert_eq!(parse_msid("|TR_1", "TR_1"), None);
    }
}
