//! The agent's outgoing audio: a bounded queue between the reply that produces
//! speech and the sink that plays it (room track, speaker, file), with the
//! controls turn taking needs — pause, resume, and clear at once — and the
//! accounting of what was actually played, text included.
//!
//! Three ends, each owned by one party:
//! - [`PlayoutWriter`] (the reply task) queues frames tagged with an utterance;
//! - [`PlayoutControl`] (the session) starts utterances, pauses, clears, and
//!   reads [`PlaybackEvent`]s;
//! - [`PlayoutReader`] (the sink) takes frames to play.
//!
//! A clear bumps the current utterance: queued frames of older utterances
//! are dropped when the reader reaches them, so clearing never waits behind
//! the queue. Events go through a small mutex-guarded deque (two per
//! utterance, one per part and one per frame that carries text), so the sink
//! never blocks on the session.
//!
//! An utterance is one reply's audio, numbered by [`PlayoutControl::begin`].
//! A reply's audio comes in *parts* (each LLM step's text, each `say` of a
//! tool): frames carry their part, and what was played is accounted per part,
//! so the session knows what of each part the user heard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::audio::{AudioFrame, duration_of};

#[derive(Clone, Debug, PartialEq)]
pub enum PlaybackEvent {
    /// The first frame of utterance `utterance` went to the sink.
    Started { utterance: u64 },
    /// A frame carrying this text went to the sink: the words as they are
    /// heard, in order (concatenated, the utterance's played text).
    TextPlayed { utterance: u64, text: String },
    /// Every frame of `part` was played (the writer marked its end, see
    /// [`PlayoutWriter::end_part`]).
    PartPlayed { utterance: u64, part: u32 },
    /// Utterance `utterance` is over: played to its end, or cleared.
    Finished {
        utterance: u64,
        played: Duration,
        /// The text of the frames that were played.
        text: String,
        /// The same text by part, in play order.
        parts: Vec<(u32, String)>,
        interrupted: bool,
    },
}

/// What a sink gets from [`PlayoutReader::recv`].
#[derive(Debug)]
pub enum Playout {
    Frame(AudioFrame),
    /// Queued audio was dropped: the sink drops what it buffered too.
    Cleared,
}

enum Item {
    Audio {
        utterance: u64,
        part: u32,
        frame: AudioFrame,
        text: String,
    },
    /// The frames of `part` before this are all it has.
    PartEnd {
        utterance: u64,
        part: u32,
    },
    End {
        utterance: u64,
    },
}

struct Shared {
    sample_rate: u32,
    utterance: AtomicU64,
    paused: AtomicBool,
    /// Wakes the reader on clear, pause and resume.
    wake: Notify,
    events: Mutex<VecDeque<PlaybackEvent>>,
    /// Wakes the session when an event is queued.
    event_ready: Notify,
    /// The utterance being played and its text so far by part, for a
    /// session that must know what was heard before the sink reports the end.
    played: Mutex<(u64, Vec<(u32, String)>)>,
}

impl Shared {
    fn emit(&self, event: PlaybackEvent) {
        if let Ok(mut q) = self.events.lock() {
            q.push_back(event);
        }
        self.event_ready.notify_one();
    }
}

/// Creates a playout queue holding up to `capacity` frames.
pub fn playout(
    sample_rate: u32,
    capacity: usize,
) -> (PlayoutWriter, PlayoutControl, PlayoutReader) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        sample_rate,
        utterance: AtomicU64::new(0),
        paused: AtomicBool::new(false),
        wake: Notify::new(),
        events: Mutex::new(VecDeque::new()),
        event_ready: Notify::new(),
        played: Mutex::new((0, Vec::new())),
    });
    (
        PlayoutWriter {
            tx,
            shared: shared.clone(),
        },
        PlayoutControl {
            shared: shared.clone(),
        },
        PlayoutReader {
            rx,
            shared,
            active: None,
        },
    )
}

/// Queues audio. Cheap to clone; each reply task holds one.
#[derive(Clone)]
pub struct PlayoutWriter {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

/// The sink is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audio output closed")]
pub struct PlayoutClosed;

impl PlayoutWriter {
    pub fn sample_rate(&self) -> u32 {
        self.shared.sample_rate
    }

    /// Queues a frame of `part` and the text it speaks; waits while the
    /// queue is full.
    pub async fn push(
        &self,
        utterance: u64,
        part: u32,
        frame: AudioFrame,
        text: String,
    ) -> Result<(), PlayoutClosed> {
        self.tx
            .send(Item::Audio {
                utterance,
                part,
                frame,
                text,
            })
            .await
            .map_err(|_| PlayoutClosed)
    }

    /// Marks the end of a part's audio: the session hears of it
    /// ([`PlaybackEvent::PartPlayed`]) once the sink has taken every frame
    /// queued before.
    pub async fn end_part(&self, utterance: u64, part: u32) -> Result<(), PlayoutClosed> {
        self.tx
            .send(Item::PartEnd { utterance, part })
            .await
            .map_err(|_| PlayoutClosed)
    }

    /// Marks the end of an utterance's audio.
    pub async fn end(&self, utterance: u64) -> Result<(), PlayoutClosed> {
        self.tx
            .send(Item::End { utterance })
            .await
            .map_err(|_| PlayoutClosed)
    }
}

/// The session's end.
pub struct PlayoutControl {
    shared: Arc<Shared>,
}

impl PlayoutControl {
    /// Starts a new utterance (a new reply); frames of older ones are dropped.
    pub fn begin(&self) -> u64 {
        self.shared.paused.store(false, Ordering::SeqCst);
        let g = self.shared.utterance.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        g
    }

    /// Drops all queued audio now.
    pub fn clear(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.utterance.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// The text played so far of `utterance`, by part (empty if none of it
    /// played).
    pub fn played_parts(&self, utterance: u64) -> Vec<(u32, String)> {
        self.shared
            .played
            .lock()
            .ok()
            .filter(|p| p.0 == utterance)
            .map(|p| p.1.clone())
            .unwrap_or_default()
    }

    pub fn try_event(&self) -> Option<PlaybackEvent> {
        self.shared.events.lock().ok()?.pop_front()
    }

    /// Waits for the next playback event.
    pub async fn event(&self) -> PlaybackEvent {
        loop {
            let notified = self.shared.event_ready.notified();
            if let Some(e) = self.try_event() {
                return e;
            }
            notified.await;
        }
    }
}

struct Active {
    utterance: u64,
    samples: usize,
    text: String,
    /// Played text by part, in play order; the last entry is the part playing.
    parts: Vec<(u32, String)>,
}

/// The sink's end.
pub struct PlayoutReader {
    rx: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
    /// The utterance being played and what of it went out.
    active: Option<Active>,
}

impl PlayoutReader {
    pub fn sample_rate(&self) -> u32 {
        self.shared.sample_rate
    }

    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Whether an utterance is being played (a reply is in progress).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The next frame to play, waiting for one (and while paused). `None`
    /// when the writers and the control are gone.
    pub async fn recv(&mut self) -> Option<Playout> {
        let shared = self.shared.clone();
        loop {
            let woken = shared.wake.notified();
            if let Some(out) = self.check_cleared() {
                return Some(out);
            }
            if self.is_paused() {
                woken.await;
                continue;
            }
            tokio::select! {
                item = self.rx.recv() => match item {
                    None => return self.closed(),
                    Some(item) => {
                        if let Some(out) = self.accept(item) {
                            return Some(out);
                        }
                    }
                },
                _ = woken => {}
            }
        }
    }

    /// Like [`recv`](Self::recv) without waiting: `None` when nothing is
    /// ready now (or while paused).
    pub fn try_recv(&mut self) -> Option<Playout> {
        loop {
            if let Some(out) = self.check_cleared() {
                return Some(out);
            }
            if self.is_paused() {
                return None;
            }
            let item = self.rx.try_recv().ok()?;
            if let Some(out) = self.accept(item) {
                return Some(out);
            }
        }
    }

    fn check_cleared(&mut self) -> Option<Playout> {
        let current = self.shared.utterance.load(Ordering::SeqCst);
        if self.active.as_ref().is_some_and(|a| a.utterance != current) {
            self.finish(true);
            return Some(Playout::Cleared);
        }
        None
    }

    fn accept(&mut self, item: Item) -> Option<Playout> {
        let current = self.shared.utterance.load(Ordering::SeqCst);
        match item {
            Item::Audio {
                utterance,
                part,
                frame,
                text,
            } if utterance == current => {
                let active = self.active.get_or_insert_with(|| {
                    if let Ok(mut p) = self.shared.played.lock() {
                        *p = (utterance, Vec::new());
                    }
                    self.shared.emit(PlaybackEvent::Started { utterance });
                    Active {
                        utterance,
                        samples: 0,
                        text: String::new(),
                        parts: Vec::new(),
                    }
                });
                active.samples += frame.samples_per_channel();
                let new_part = active.parts.last().map(|(p, _)| *p) != Some(part);
                if new_part {
                    active.parts.push((part, String::new()));
                }
                if !text.is_empty() {
                    active.text.push_str(&text);
                    if let Some((_, t)) = active.parts.last_mut() {
                        t.push_str(&text);
                    }
                    self.shared.emit(PlaybackEvent::TextPlayed {
                        utterance,
                        text: text.clone(),
                    });
                }
                if (new_part || !text.is_empty())
                    && let Ok(mut p) = self.shared.played.lock()
                {
                    if new_part {
                        p.1.push((part, String::new()));
                    }
                    if let Some((_, t)) = p.1.last_mut() {
                        t.push_str(&text);
                    }
                }
                Some(Playout::Frame(frame))
            }
            Item::PartEnd { utterance, part } if utterance == current => {
                self.shared
                    .emit(PlaybackEvent::PartPlayed { utterance, part });
                None
            }
            Item::End { utterance } if utterance == current => {
                if self.active.is_none() {
                    // A reply with no audio at all still ends.
                    self.active = Some(Active {
                        utterance,
                        samples: 0,
                        text: String::new(),
                        parts: Vec::new(),
                    });
                }
                self.finish(false);
                None
            }
            _ => None, // stale: from a cleared utterance
        }
    }

    fn finish(&mut self, interrupted: bool) {
        if let Some(a) = self.active.take() {
            self.shared.emit(PlaybackEvent::Finished {
                utterance: a.utterance,
                played: duration_of(a.samples, self.shared.sample_rate),
                text: a.text,
                parts: a.parts,
                interrupted,
            });
        }
    }

    fn closed(&mut self) -> Option<Playout> {
        self.finish(true);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ms: u64) -> AudioFrame {
        AudioFrame::silence(Duration::from_millis(ms), 1000, 1)
    }

    #[tokio::test]
    async fn played_text_is_what_the_sink_took_before_the_clear() {
        let (w, c, mut r) = playout(1000, 16);
        let g = c.begin();
        for (part, word) in [(0, "one "), (1, "two "), (1, "three "), (2, "four")] {
            w.push(g, part, frame(100), word.into())
                .await
                .expect("push");
            if word == "one " {
                w.end_part(g, 0).await.expect("part end");
            }
        }
        assert!(matches!(r.recv().await, Some(Playout::Frame(_))));
        assert!(matches!(r.recv().await, Some(Playout::Frame(_))));
        assert_eq!(c.try_event(), Some(PlaybackEvent::Started { utterance: g }));
        let text = |t: &str| {
            Some(PlaybackEvent::TextPlayed {
                utterance: g,
                text: t.into(),
            })
        };
        assert_eq!(c.try_event(), text("one "), "heard as it is taken");
        assert_eq!(
            c.try_event(),
            Some(PlaybackEvent::PartPlayed {
                utterance: g,
                part: 0
            }),
            "part 0 ended before part 1's frame was taken"
        );
        assert_eq!(c.try_event(), text("two "));
        assert_eq!(
            c.played_parts(g),
            vec![(0, "one ".to_string()), (1, "two ".to_string())]
        );
        c.clear();
        assert!(matches!(r.recv().await, Some(Playout::Cleared)));
        assert_eq!(
            c.try_event(),
            Some(PlaybackEvent::Finished {
                utterance: g,
                played: Duration::from_millis(200),
                text: "one two ".into(),
                parts: vec![(0, "one ".into()), (1, "two ".into())],
                interrupted: true
            })
        );
        // The rest of the old utterance is never played.
        let g2 = c.begin();
        w.push(g2, 0, frame(10), "new".into()).await.expect("push");
        match r.recv().await {
            Some(Playout::Frame(f)) => assert_eq!(f.samples.len(), 10),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn pause_holds_frames_and_resume_releases_them() {
        let (w, c, mut r) = playout(1000, 16);
        let g = c.begin();
        w.push(g, 0, frame(10), "a".into()).await.expect("push");
        c.pause();
        assert!(r.try_recv().is_none());
        c.resume();
        assert!(matches!(r.try_recv(), Some(Playout::Frame(_))));
        w.end(g).await.expect("end");
        assert!(r.try_recv().is_none());
        assert_eq!(c.try_event(), Some(PlaybackEvent::Started { utterance: g }));
        assert_eq!(
            c.try_event(),
            Some(PlaybackEvent::TextPlayed {
                utterance: g,
                text: "a".into()
            })
        );
        assert!(matches!(
            c.try_event(),
            Some(PlaybackEvent::Finished {
                interrupted: false,
                ..
            })
        ));
    }
}
