//! The public face: [`connect`], the [`Room`] handle, [`RoomEvent`]s and options.
//!
//! `Room` is a cheap `Clone` handle on the engine task (see `engine/`); requests
//! travel on a bounded channel and answers come back on oneshots. The engine task
//! ends — leaving the room, closing both peer connections and stopping every task it
//! spawned — when [`Room::close`] is called or the last handle is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::RtcError;
use crate::backoff::ReconnectPolicy;
use crate::data::TextStream;
use crate::local_track::{LocalAudioTrack, OpusApplication};
use crate::remote_track::RemoteAudioTrack;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Subscribe to every published track automatically (`auto_subscribe=1`).
    pub auto_subscribe: bool,
    /// Bound on the whole join (signal, join response, publisher data channel open).
    pub connect_timeout: Duration,
    /// Local UDP addresses for ICE. Empty (the default) picks them from the server
    /// URL: `127.0.0.1:0` when the server is on loopback (`localhost`, `127.x`, `[::1]`),
    /// else `0.0.0.0:0`, which binds every non-loopback interface.
    pub udp_addrs: Vec<String>,
    /// The reconnect schedule after signal or transport loss.
    pub reconnect: ReconnectPolicy,
    /// Capacity of the event channel. The engine never waits for a slow reader: when
    /// the channel is full, data packets, text streams and attribute changes are
    /// dropped and counted ([`Room::dropped_events`]); every other event waits in the
    /// engine, in order, until the reader makes room.
    pub event_capacity: usize,
    /// Opus encoder complexity of published tracks, 0–10 (libopus default 10; ours 3,
    /// see the crate docs' "Opus" section). The encoder is the largest cost of a
    /// stream; see `tests/benches/rtc_streams.rs`.
    pub opus_complexity: i32,
    /// Opus coding mode of published tracks: CELT only by default (cheapest, lowest
    /// delay); VoIP for SILK's in-band FEC on lossy links.
    pub opus_application: OpusApplication,
    /// Published tracks go quiet between utterances, like Opus DTX: after 200 ms of
    /// silence no packets are sent until audio is queued again (on by default: an
    /// agent that listens then costs nothing to send). Off, silence is encoded and
    /// sent every 20 ms.
    pub dtx: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            auto_subscribe: true,
            connect_timeout: Duration::from_secs(15),
            udp_addrs: Vec::new(),
            reconnect: ReconnectPolicy::default(),
            event_capacity: 256,
            opus_complexity: crate::local_track::DEFAULT_COMPLEXITY,
            opus_application: OpusApplication::default(),
            dtx: true,
        }
    }
}

/// A participant as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Participant {
    /// Server-assigned id (`PA_…`).
    pub sid: String,
    /// Identity from the token.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Participant attributes.
    pub attributes: HashMap<String, String>,
    /// Free-form metadata.
    pub metadata: String,
    /// Kind as the protocol numbers it (0 standard, 1 ingress, 2 egress, 3 SIP, 4 agent).
    pub kind: i32,
}

impl From<&livekit_protocol::ParticipantInfo> for Participant {
    fn from(p: &livekit_protocol::ParticipantInfo) -> Self {
        Self {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            attributes: p.attributes.clone(),
            metadata: p.metadata.clone(),
            kind: p.kind,
        }
    }
}

/// Reliable (ordered, retransmitted) or lossy (unordered, no retransmits) data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// `_reliable` data channel.
    Reliable,
    /// `_lossy` data channel.
    Lossy,
}

/// Why the room is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// We left ([`Room::close`] or the last handle dropped).
    ClientInitiated,
    /// The server told us to leave; the protocol's `DisconnectReason` number.
    ServerLeave(i32),
    /// Signal or transport lost and every reconnect attempt failed.
    ReconnectFailed,
}

/// What happens in the room. Events arrive in the order they happened; when the
/// reader falls behind, the engine drops the ones marked so rather than wait (see
/// [`ConnectOptions::event_capacity`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum RoomEvent {
    /// Someone joined (also sent for everyone already there when we join).
    ParticipantJoined(Participant),
    /// Someone left.
    ParticipantLeft(Participant),
    /// A participant's attributes changed; `attributes` is the whole new set.
    /// Dropped (and counted) if the reader falls behind.
    ParticipantAttributesChanged {
        /// Participant identity.
        identity: String,
        /// All attributes now.
        attributes: HashMap<String, String>,
    },
    /// A remote audio track is ready to decode: call [`RemoteAudioTrack::into_stream`].
    TrackSubscribed(RemoteAudioTrack),
    /// A remote track went away.
    TrackUnsubscribed {
        /// Publisher identity.
        participant_identity: String,
        /// Track sid.
        track_sid: String,
    },
    /// A user data packet. Dropped (and counted) if the reader falls behind.
    DataReceived {
        /// Sender identity.
        participant_identity: String,
        /// Topic, if the sender gave one.
        topic: Option<String>,
        /// The bytes.
        payload: Vec<u8>,
        /// Which channel it came on.
        kind: DataKind,
    },
    /// A complete text stream (e.g. topic `lk.transcription`). Dropped (and counted)
    /// if the reader falls behind.
    TextStreamReceived(TextStream),
    /// Signal or transport lost; reconnecting.
    Reconnecting,
    /// Back. `resumed` is true when the session was resumed (subscriptions and
    /// publications kept), false after a full rejoin (tracks republished; remote
    /// tracks arrive again as `TrackSubscribed`).
    Reconnected {
        /// Resumed rather than rejoined.
        resumed: bool,
    },
    /// The room is gone; no more events follow.
    Disconnected(DisconnectReason),
}

/// Requests from [`Room`] handles to the engine task.
pub(crate) enum Command {
    PublishAudio {
        name: String,
        sample_rate: u32,
        reply: oneshot::Sender<Result<LocalAudioTrack, RtcError>>,
    },
    SendData {
        payload: Vec<u8>,
        kind: DataKind,
        topic: Option<String>,
        destinations: Vec<String>,
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    SendText {
        topic: String,
        text: String,
        attributes: HashMap<String, String>,
        destinations: Vec<String>,
        reply: oneshot::Sender<Result<String, RtcError>>,
    },
    SetAttributes {
        attributes: HashMap<String, String>,
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    RemoteParticipants {
        reply: oneshot::Sender<Vec<Participant>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Handle on a joined room. Clone freely; the room is left when [`Room::close`] is
/// called or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Room {
    /// To the engine task, which ends when every clone of this is dropped.
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) local: Participant,
    pub(crate) room_name: String,
    /// Events the engine dropped because the reader was behind.
    pub(crate) dropped_events: Arc<AtomicU64>,
}

/// Requests waiting in the engine's queue at most.
pub(crate) const COMMAND_CAPACITY: usize = 64;

impl Room {
    /// Our own participant as of the join (sid, identity, name).
    pub fn local_participant(&self) -> &Participant {
        &self.local
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.room_name
    }

    /// Events dropped so far because the event reader fell behind (data packets,
    /// text streams and attribute changes only; see [`ConnectOptions::event_capacity`]).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RtcError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| RtcError::Closed)?;
        rx.await.map_err(|_| RtcError::Closed)
    }

    /// Publish a microphone audio track fed with mono PCM at `sample_rate` (8, 12, 16,
    /// 24 or 48 kHz); sent as 48 kHz Opus in 20 ms frames, paced in real time.
    pub async fn publish_audio(
        &self,
        name: &str,
        sample_rate: u32,
    ) -> Result<LocalAudioTrack, RtcError> {
        self.request(|reply| Command::PublishAudio {
            name: name.to_owned(),
            sample_rate,
            reply,
        })
        .await?
    }

    /// Send a user data packet to everyone (`destinations` empty) or to the given identities.
    pub async fn send_data(
        &self,
        payload: Vec<u8>,
        kind: DataKind,
        topic: Option<&str>,
        destinations: &[String],
    ) -> Result<(), RtcError> {
        self.request(|reply| Command::SendData {
            payload,
            kind,
            topic: topic.map(str::to_owned),
            destinations: destinations.to_vec(),
            reply,
        })
        .await?
    }

    /// Send a text stream (reliable; chunked on UTF-8 boundaries, ≤ 15000 bytes a
    /// chunk). Returns the stream id.
    pub async fn send_text(
        &self,
        topic: &str,
        text: &str,
        attributes: HashMap<String, String>,
        destinations: &[String],
    ) -> Result<String, RtcError> {
        self.request(|reply| Command::SendText {
            topic: topic.to_owned(),
            text: text.to_owned(),
            attributes,
            destinations: destinations.to_vec(),
            reply,
        })
        .await?
    }

    /// Set (merge) our own participant attributes, e.g. `lk.agent.state`. An empty
    /// value deletes a key. The token needs the `canUpdateOwnMetadata` grant.
    pub async fn set_attributes(
        &self,
        attributes: HashMap<String, String>,
    ) -> Result<(), RtcError> {
        self.request(|reply| Command::SetAttributes { attributes, reply })
            .await?
    }

    /// The other participants in the room now.
    pub async fn remote_participants(&self) -> Result<Vec<Participant>, RtcError> {
        self.request(|reply| Command::RemoteParticipants { reply })
            .await
    }

    /// Leave the room (`LeaveRequest`), close both peer connections and stop every
    /// task. Other clones of this handle become dead.
    pub async fn close(&self) -> Result<(), RtcError> {
        match self.request(|reply| Command::Close { reply }).await {
            Ok(()) | Err(RtcError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Join a room: `url` is the server (`ws(s)://` or `http(s)://`), `token` an access
/// token with a `roomJoin` grant. Returns the room handle and its events; the first
/// events announce the participants already present.
pub async fn connect(
    url: &str,
    token: &str,
    options: ConnectOptions,
) -> Result<(Room, mpsc::Receiver<RoomEvent>), RtcError> {
    crate::engine::connect(url, token, options).await
}
