//! The TTS side of a reply: sentences into the TTS stream, its audio into the
//! playout queue at the output rate, each frame tagged with its part, and the
//! end of each part someone waits on marked after its last frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::warn;

use super::{PLAYOUT_FRAME, ReplyJob, Speech};
use crate::audio::FrameConverter;
use crate::ledger::{PartId, Record};
use crate::playout::PlayoutWriter;
use crate::stage::{Tts, TtsInput};

/// Which part each TTS output belongs to, and when a part is over. The TTS
/// contract: summed over a segment, its outputs' text is the segment, so a
/// segment's outputs end when its text is used up.
#[derive(Default)]
struct Attribution {
    /// Segments sent and not yet fully spoken: part, text bytes left, and
    /// whether the part ends with it.
    pending: VecDeque<(PartId, usize, bool)>,
    /// The part of the last segment used up.
    last: PartId,
}

impl Attribution {
    fn sent(&mut self, part: PartId, len: usize) {
        if len > 0 {
            self.pending.push_back((part, len, false));
        }
    }

    /// `part` has no more segments. True when it is over already (nothing
    /// of it is pending); else it ends with its last pending segment.
    fn part_ended(&mut self, part: PartId) -> bool {
        match self.pending.iter_mut().rev().find(|(p, _, _)| *p == part) {
            Some(last) => {
                last.2 = true;
                false
            }
            None => true,
        }
    }

    /// The part of an output carrying `len` bytes of text, and whether that
    /// part is now over.
    fn take(&mut self, len: usize) -> (PartId, bool) {
        let Some(front) = self.pending.front_mut() else {
            return (self.last, false);
        };
        let part = front.0;
        front.1 = front.1.saturating_sub(len);
        if front.1 > 0 {
            return (part, false);
        }
        let ended = front.2;
        self.last = part;
        self.pending.pop_front();
        (part, ended)
    }
}

/// The TTS side: opens the stream, feeds it sentences, pushes its audio into
/// the playout queue at the output rate, then marks the utterance's end.
pub(super) async fn pump_audio(
    tts: Arc<dyn Tts>,
    mut sentences: mpsc::Receiver<Speech>,
    writer: PlayoutWriter,
    utterance: u64,
    job: &ReplyJob,
) {
    let id = job.id;
    let stream = match tts.stream(job.context.job()).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(reply = id, error = %e, "TTS failed to open; the reply is text only");
            None
        }
    };
    if let Some(stream) = stream {
        let input = stream.input;
        let mut output = stream.output;
        let attribution = Mutex::new(Attribution::default());
        // Part ends go to the play side, the one writer of the playout, so
        // an end is queued after the part's last frame.
        let (ends_tx, mut ends_rx) = mpsc::channel::<PartId>(16);
        let feed = async {
            while let Some(speech) = sentences.recv().await {
                let (part, text, last_token) = match speech {
                    Speech::Sentence {
                        part,
                        text,
                        last_token,
                    } => (part, text, last_token),
                    Speech::PartEnd(part) => {
                        let _ = ends_tx.send(part).await;
                        continue;
                    }
                };
                if let Ok(mut a) = attribution.lock() {
                    a.sent(part, text.len());
                }
                if input.send(TtsInput::Segment(text)).await.is_err() {
                    break;
                }
                let sent = job.clock.now();
                job.record(Record::SentenceToTts { last_token, sent }).await;
            }
            // Dropping `input` tells the TTS no more segments come.
            drop(input);
            drop(ends_tx);
        };
        let play = async {
            let mut converter = FrameConverter::new(writer.sample_rate());
            let mut first = true;
            // Whether the text queued so far needs a space before more: each
            // segment's text is a trimmed sentence.
            let mut needs_space = false;
            let mut ends_open = true;
            loop {
                let chunk = tokio::select! {
                    chunk = output.recv() => match chunk {
                        Some(chunk) => chunk,
                        None => break,
                    },
                    part = ends_rx.recv(), if ends_open => {
                        match part {
                            Some(part) => {
                                let over = attribution.lock().is_ok_and(|mut a| a.part_ended(part));
                                if over && writer.end_part(utterance, part).await.is_err() {
                                    return;
                                }
                            }
                            None => ends_open = false,
                        }
                        continue;
                    }
                };
                match chunk {
                    Ok(audio) => {
                        if first {
                            first = false;
                            job.record(Record::FirstAudio {
                                at: job.clock.now(),
                            })
                            .await;
                        }
                        let (part, part_over) = attribution
                            .lock()
                            .map(|mut a| a.take(audio.text.len()))
                            .unwrap_or_default();
                        let mut text = audio.text;
                        if !text.is_empty() {
                            if needs_space && !text.starts_with(char::is_whitespace) {
                                text.insert(0, ' ');
                            }
                            needs_space = !text.ends_with(char::is_whitespace);
                        }
                        // Short frames keep a pause or a clear prompt in every
                        // sink, and the accounting of what was played exact.
                        let frame = converter.convert(&audio.frame);
                        for (i, piece) in frame.split(PLAYOUT_FRAME).into_iter().enumerate() {
                            let text = if i == 0 {
                                std::mem::take(&mut text)
                            } else {
                                String::new()
                            };
                            if writer.push(utterance, part, piece, text).await.is_err() {
                                return;
                            }
                        }
                        if part_over && writer.end_part(utterance, part).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(reply = id, error = %e, "TTS failed mid-reply");
                        return;
                    }
                }
            }
        };
        futures::join!(feed, play);
    } else {
        // Drain so the LLM side never blocks on a full channel; nothing is
        // played, so every part is over as soon as it ends.
        while let Some(speech) = sentences.recv().await {
            if let Speech::PartEnd(part) = speech {
                let _ = writer.end_part(utterance, part).await;
            }
        }
    }
    let _ = writer.end(utterance).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_attributed_to_the_segment_whose_text_they_carry() {
        let mut a = Attribution::default();
        a.sent(0, 6); // "Hello."
        a.sent(1, 11); // "One moment."
        a.sent(1, 5); // "Sure."
        assert!(!a.part_ended(1), "part 1 still has audio to come");
        // Leading audio without text belongs to the segment being spoken.
        assert_eq!(a.take(0), (0, false));
        assert_eq!(a.take(6), (0, false));
        assert_eq!(a.take(0), (1, false));
        assert_eq!(a.take(4), (1, false));
        assert_eq!(a.take(7), (1, false), "a segment of part 1 is left");
        assert_eq!(a.take(5), (1, true), "its last segment ends the part");
        // Nothing pending: trailing audio stays with the last part.
        assert_eq!(a.take(0), (1, false));
        assert_eq!(
            a.take(3),
            (1, false),
            "more text than promised is not a panic"
        );
        assert!(
            a.part_ended(2),
            "a part with nothing pending is over at once"
        );
    }
}
