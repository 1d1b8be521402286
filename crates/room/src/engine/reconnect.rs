//! Getting back after the signal or a peer connection is lost, following
//! [`crate::ReconnectPolicy`]: first **resume** attempts (a new signal connection with
//! `reconnect=1&sid=…` → `ReconnectResponse`, then `SyncState` with our subscriber
//! answer, publications and subscriptions, then a publisher offer with an ICE
//! restart; the peer connections, subscriptions and publications survive), then
//! **full rejoins** (a fresh join with new peer connections; tracks republished on
//! the same handles). Between attempts commands keep being taken: `Close` (or every
//! handle dropped) ends the engine, others wait until the end of the reconnect.

use std::time::{Duration, Instant};

use livekit_protocol as proto;

use super::join::SIGNAL_TIMEOUT;
use super::{End, Engine, Loss, reject};
use crate::RtcError;
use crate::backoff::ReconnectKind;
use crate::room::{COMMAND_CAPACITY, Command, DisconnectReason, RoomEvent};
use crate::signal::{Req, Resp};

impl Engine {
    /// Reconnect after `loss`. `None` when connected again; otherwise how the engine
    /// ends (it gave up, or it was closed meanwhile).
    pub(super) async fn reconnect(&mut self, loss: Loss, resume_possible: bool) -> Option<End> {
        tracing::info!(reason = %loss, "connection lost; reconnecting");
        self.events.emit(RoomEvent::Reconnecting).await;
        let mut resume_possible = resume_possible;
        let mut attempt: u32 = 0;
        while let Some((kind, delay)) = self.options.reconnect.next(attempt, resume_possible) {
            attempt = attempt.saturating_add(1);
            if !self.sleep_watching_commands(delay).await {
                return Some(End {
                    reason: DisconnectReason::ClientInitiated,
                    send_leave: false,
                });
            }
            let result = match kind {
                ReconnectKind::Resume => self.try_resume().await,
                ReconnectKind::Rejoin => self.try_rejoin().await,
            };
            match result {
                Ok(()) => {
                    self.events
                        .emit(RoomEvent::Reconnected {
                            resumed: kind == ReconnectKind::Resume,
                        })
                        .await;
                    return None;
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
        Some(End {
            reason: DisconnectReason::ReconnectFailed,
            send_leave: false,
        })
    }

    /// Sleep, but keep taking commands (and delivering waiting events): a close (or
    /// every handle dropped) ends the wait with false; other commands are deferred
    /// until after the reconnect, up to the command channel's capacity.
    async fn sleep_watching_commands(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                () = self.events.deliver_one(), if self.events.has_backlog() => {}
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

    /// Resume the session on a new signal connection.
    async fn try_resume(&mut self) -> Result<(), RtcError> {
        let sid = self.participants.local().sid.clone();
        let mut signal = self.open_signal(Some(&sid), "signal reconnection").await?;
        // What the server sends before its ReconnectResponse is handled after it.
        let mut early = Vec::new();
        tokio::time::timeout(SIGNAL_TIMEOUT, async {
            loop {
                match signal.recv().await? {
                    Resp::Reconnect(_) => return Ok(()),
                    Resp::Leave(l) => {
                        return Err(RtcError::Disconnected(DisconnectReason::ServerLeave(
                            l.reason,
                        )));
                    }
                    Resp::Join(_) => return Err(RtcError::Protocol("join response to a resume")),
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
        s.signal = signal;
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
        let sync = proto::SyncState {
            answer,
            subscription: Some(proto::UpdateSubscription {
                track_sids: self.participants.subscribed_tracks(),
                subscribe: true,
                ..Default::default()
            }),
            publish_tracks: self.publications.announced(),
            ..Default::default()
        };
        s.signal.send(Req::SyncState(sync)).await?;
        s.negotiation.restart_ice();
        self.negotiate().await?;
        for msg in early {
            let _ = self.handle_signal(msg).await;
        }
        Ok(())
    }

    /// Join again from scratch and republish.
    async fn try_rejoin(&mut self) -> Result<(), RtcError> {
        if let Some(old) = self.session.take() {
            old.teardown().await;
        }
        self.publications.unbind();
        self.outbox.clear();
        self.join(true).await?;
        self.republish().await
    }
}
