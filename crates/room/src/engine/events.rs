//! The engine's end of the event channel: a slow consumer never stalls the engine.
//!
//! The engine is one task that also answers the server's messages and sends the
//! pings that keep the session alive; if it waited for room on the event channel, a
//! consumer that stopped reading for `ping_timeout` would cost the room. So it never
//! waits there (but see the last point):
//!
//! - events that may be **shed** under pressure — data packets, text streams and
//!   attribute changes ([`sheddable`]) — are offered with `try_send`; when the
//!   channel is full they are dropped and counted ([`crate::Room::dropped_events`]),
//!   with a warning logged at most every [`WARN_EVERY`];
//! - every other event (participants joining and leaving, tracks subscribed and
//!   unsubscribed, `Reconnecting`, `Reconnected`, `Disconnected`) must arrive: when
//!   the channel is full it waits in a backlog, in order, which the engine's loop
//!   feeds into the channel as the consumer makes room. While a backlog waits,
//!   sheddable events are shed (the consumer is behind), and events never overtake
//!   each other;
//! - only when [`MAX_BACKLOG`] events are waiting does the engine wait for the
//!   consumer, as a last resort against unbounded memory: a room does not produce
//!   that many joins, leaves and subscriptions unless its consumer is stuck.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::room::RoomEvent;

/// Must-arrive events held for a full channel before the engine waits.
pub(crate) const MAX_BACKLOG: usize = 1024;

/// Shortest interval between two warnings about shed events.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Events that may be dropped when the consumer falls behind: each is one of many of
/// its kind, and missing one does not leave the consumer with a wrong picture of the
/// room's membership or media (an attribute change carries the whole new set).
pub(crate) fn sheddable(event: &RoomEvent) -> bool {
    matches!(
        event,
        RoomEvent::DataReceived { .. }
            | RoomEvent::TextStreamReceived(_)
            | RoomEvent::ParticipantAttributesChanged { .. }
    )
}

/// Sends [`RoomEvent`]s to the consumer without waiting (see the module docs).
pub(crate) struct EventSink {
    /// To the consumer's receiver; dropped with the engine, which ends the stream.
    tx: mpsc::Sender<RoomEvent>,
    /// Must-arrive events that found the channel full, oldest first.
    backlog: VecDeque<RoomEvent>,
    /// Events shed since the room was joined; shared with every `Room` handle.
    shed: Arc<AtomicU64>,
    /// Shed since the last warning.
    unreported: u64,
    /// When the last warning was logged.
    last_warn: Option<Instant>,
}

impl EventSink {
    /// A sink on `tx`, and the counter of shed events for the `Room` handles.
    pub(crate) fn new(tx: mpsc::Sender<RoomEvent>) -> (Self, Arc<AtomicU64>) {
        let shed = Arc::new(AtomicU64::new(0));
        let sink = Self {
            tx,
            backlog: VecDeque::new(),
            shed: shed.clone(),
            unreported: 0,
            last_warn: None,
        };
        (sink, shed)
    }

    /// Report `event`. Returns at once, unless [`MAX_BACKLOG`] must-arrive events
    /// are already waiting for the consumer.
    pub(crate) async fn emit(&mut self, event: RoomEvent) {
        if sheddable(&event) {
            if !self.backlog.is_empty() {
                return self.shed_one();
            }
            match self.tx.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.shed_one(),
            }
            return;
        }
        if self.backlog.is_empty() {
            match self.tx.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(event)) => self.backlog.push_back(event),
            }
            return;
        }
        if self.backlog.len() >= MAX_BACKLOG {
            tracing::warn!(
                waiting = self.backlog.len(),
                "room event consumer stuck; the engine waits for it"
            );
            self.deliver_one().await;
        }
        self.backlog.push_back(event);
    }

    /// Must-arrive events are waiting for room in the channel.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Wait for room in the channel and move the oldest waiting event into it.
    /// Cancel-safe: nothing is taken from the backlog until there is room. A closed
    /// channel (the consumer dropped its receiver) empties the backlog.
    pub(crate) async fn deliver_one(&mut self) {
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(event) = self.backlog.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => self.backlog.clear(),
        }
    }

    /// The room is gone: deliver the backlog, then `last`. Waits for the consumer;
    /// the caller bounds it.
    pub(crate) async fn finish(&mut self, last: RoomEvent) {
        self.backlog.push_back(last);
        while self.has_backlog() {
            self.deliver_one().await;
        }
    }

    fn shed_one(&mut self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.unreported = self.unreported.saturating_add(1);
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                dropped = self.unreported,
                total = self.shed.load(Ordering::Relaxed),
                "room event consumer too slow: data, text-stream and attribute events dropped"
            );
            self.unreported = 0;
            self.last_warn = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{DataKind, DisconnectReason, Participant};

    fn data(n: u8) -> RoomEvent {
        RoomEvent::DataReceived {
            participant_identity: "p".into(),
            topic: None,
            payload: vec![n],
            kind: DataKind::Lossy,
        }
    }

    fn joined(identity: &str) -> RoomEvent {
        RoomEvent::ParticipantJoined(Participant {
            identity: identity.into(),
            ..Default::default()
        })
    }

    fn name(e: &RoomEvent) -> String {
        match e {
            RoomEvent::DataReceived { payload, .. } => format!("data {payload:?}"),
            RoomEvent::ParticipantJoined(p) => format!("joined {}", p.identity),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_channel_sheds_data_and_holds_the_rest_in_order() {
        let (tx, mut rx) = mpsc::channel(2);
        let (mut sink, shed) = EventSink::new(tx);
        sink.emit(data(1)).await;
        sink.emit(joined("a")).await;
        // Full from here on: data is shed, joins wait.
        sink.emit(data(2)).await;
        sink.emit(joined("b")).await;
        sink.emit(data(3)).await;
        sink.emit(joined("c")).await;
        assert_eq!(shed.load(Ordering::Relaxed), 2);
        assert!(sink.has_backlog());
        // The consumer reads one: the next waiting event moves in, not newer data.
        assert_eq!(name(&rx.recv().await.unwrap()), "data [1]");
        sink.deliver_one().await;
        sink.emit(data(4)).await;
        assert_eq!(
            shed.load(Ordering::Relaxed),
            3,
            "shed while a backlog waits"
        );
        assert_eq!(name(&rx.recv().await.unwrap()), "joined a");
        assert_eq!(name(&rx.recv().await.unwrap()), "joined b");
        sink.deliver_one().await;
        assert!(!sink.has_backlog());
        assert_eq!(name(&rx.recv().await.unwrap()), "joined c");
        // Room again: data flows.
        sink.emit(data(5)).await;
        assert_eq!(name(&rx.recv().await.unwrap()), "data [5]");
        assert_eq!(shed.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn only_data_text_and_attribute_events_are_sheddable() {
        assert!(sheddable(&data(0)));
        assert!(sheddable(&RoomEvent::ParticipantAttributesChanged {
            identity: "p".into(),
            attributes: Default::default(),
        }));
        for e in [
            joined("a"),
            RoomEvent::ParticipantLeft(Participant::default()),
            RoomEvent::TrackUnsubscribed {
                participant_identity: "p".into(),
                track_sid: "TR".into(),
            },
            RoomEvent::Reconnecting,
            RoomEvent::Reconnected { resumed: true },
            RoomEvent::Disconnected(DisconnectReason::ReconnectFailed),
        ] {
            assert!(!sheddable(&e), "{e:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn emit_waits_only_past_the_backlog_bound() {
        let (tx, mut rx) = mpsc::channel(1);
        let (mut sink, _) = EventSink::new(tx);
        for i in 0..=MAX_BACKLOG {
            let emitted =
                tokio::time::timeout(Duration::from_secs(1), sink.emit(joined(&i.to_string())));
            assert!(emitted.await.is_ok(), "event {i} waited");
        }
        // One in the channel, MAX_BACKLOG waiting: the next one waits for the reader.
        let next = sink.emit(joined("last"));
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut next)
                .await
                .is_err()
        );
        assert_eq!(name(&rx.recv().await.unwrap()), "joined 0");
        next.await;
        assert_eq!(name(&rx.recv().await.unwrap()), "joined 1");
    }

    #[tokio::test]
    async fn finish_delivers_the_backlog_then_the_last_event() {
        let (tx, mut rx) = mpsc::channel(1);
        let (mut sink, _) = EventSink::new(tx);
        sink.emit(joined("a")).await;
        sink.emit(joined("b")).await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = rx.recv().await {
                got.push(name(&e));
            }
            got
        });
        sink.finish(RoomEvent::Disconnected(DisconnectReason::ClientInitiated))
            .await;
        drop(sink);
        assert_eq!(
            reader.await.unwrap(),
            ["joined a", "joined b", "Disconnected(ClientInitiated)"]
        );
    }

    #[tokio::test]
    async fn a_dropped_receiver_discards_everything() {
        let (tx, rx) = mpsc::channel(1);
        let (mut sink, shed) = EventSink::new(tx);
        sink.emit(joined("a")).await;
        sink.emit(joined("b")).await;
        drop(rx);
        sink.deliver_one().await;
        assert!(!sink.has_backlog());
        sink.emit(data(1)).await;
        sink.emit(joined("c")).await;
        assert!(!sink.has_backlog());
        assert_eq!(shed.load(Ordering::Relaxed), 0, "nobody to shed for");
    }
}
