//! The streaming half shared by the local TTS engines: turns a per-piece
//! synthesizer into a [`TtsStream`].
//!
//! Two tasks per stream, joined by a channel of one piece:
//!
//! ```text
//! input ──▶ synth task ──(text, pcm)──▶ frame task ──TtsAudio──▶ output
//!           (one piece ahead)            (100 ms frames, text attached)
//! ```
//!
//! The synth task splits each segment into pieces (sentences, and clauses of
//! long sentences) and synthesises one piece ahead of playback, so the first
//! audio of a segment waits only for its first piece. When `input` is dropped
//! both tasks finish the queued work, then `output` closes. When `output` is
//! dropped the frame task stops, which closes the piece channel; the synth
//! task then cancels the running synthesis ([`Cancel`]) and stops too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use agent::stage::split_text_by_duration;
use agent::{AudioFrame, StageError, TtsAudio, TtsInput, TtsStream};
use futures::future::BoxFuture;
use ort::session::RunOptions;
use tokio::sync::mpsc;

use crate::error::SpeechError;

/// Frames sent on `output`: 100 ms each.
const FRAME_MS: usize = 100;
/// Segments the session may queue before `input.send` waits.
const INPUT_CAPACITY: usize = 32;
/// Frames buffered on `output` (1 s of audio).
const OUTPUT_CAPACITY: usize = 10;

/// A stream's cancellation: a flag for loops and callbacks, and (created on
/// demand) ONNX run options whose `terminate` stops an inference mid-way.
#[derive(Default)]
pub(crate) struct Cancel {
    flag: Arc<AtomicBool>,
    run_options: OnceLock<Option<Arc<RunOptions>>>,
}

impl Cancel {
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(Some(ro)) = self.run_options.get() {
            let _ = ro.terminate();
        }
    }

    /// The flag itself, for engines that poll it on another thread.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Run options tied to this stream (None if ort could not make them).
    pub(crate) fn run_options(&self) -> Option<Arc<RunOptions>> {
        let ro = self
            .run_options
            .get_or_init(|| RunOptions::new().ok().map(Arc::new))
            .clone();
        // Cancelled before the options existed: terminate them now.
        if self.is_cancelled()
            && let Some(ro) = &ro
        {
            let _ = ro.terminate();
        }
        ro
    }
}

/// A TTS engine that makes the audio of one piece of text at a time.
pub(crate) trait Synthesizer: Send + Sync + 'static {
    /// Output rate, mono.
    fn sample_rate(&self) -> u32;
    /// Splits a segment into pieces synthesised one by one. The pieces must
    /// concatenate back to `text` exactly. `first` is set for the stream's
    /// first segment, whose first piece decides the reply's time to first
    /// audio.
    fn pieces(&self, text: &str, first: bool) -> Vec<String>;
    /// The audio of one piece; must not block the async runtime, and should
    /// stop soon after `cancel` fires.
    fn synthesize(
        self: Arc<Self>,
        text: String,
        cancel: Arc<Cancel>,
    ) -> BoxFuture<'static, Result<Vec<i16>, SpeechError>>;
}

/// Opens a stream for one reply. Must be called inside a tokio runtime.
pub(crate) fn open<S: Synthesizer>(synth: Arc<S>) -> TtsStream {
    let (input, input_rx) = mpsc::channel(INPUT_CAPACITY);
    let (output_tx, output) = mpsc::channel(OUTPUT_CAPACITY);
    let (piece_tx, piece_rx) = mpsc::channel(1);
    let cancel = Arc::new(Cancel::default());
    let rate = synth.sample_rate();
    // Both tasks end on their own: see the module docs.
    tokio::spawn(synth_task(synth, input_rx, piece_tx, cancel.clone()));
    tokio::spawn(frame_task(rate, piece_rx, output_tx, cancel));
    TtsStream { input, output }
}

type Piece = Result<(String, Vec<i16>), (String, SpeechError)>;

async fn synth_task<S: Synthesizer>(
    synth: Arc<S>,
    mut input: mpsc::Receiver<TtsInput>,
    pieces: mpsc::Sender<Piece>,
    cancel: Arc<Cancel>,
) {
    let mut first = true;
    loop {
        let segment = tokio::select! {
            s = input.recv() => s,
            _ = pieces.closed() => None,
        };
        let Some(TtsInput::Segment(text)) = segment else {
            break;
        };
        let parts = synth.pieces(&text, first);
        first = false;
        for piece in parts {
            if piece.trim().is_empty() {
                // Nothing to say, but the text still counts as played.
                if pieces.send(Ok((piece, Vec::new()))).await.is_err() {
                    cancel.cancel();
                    return;
                }
                continue;
            }
            let work = synth.clone().synthesize(piece.clone(), cancel.clone());
            let result = tokio::select! {
                r = work => r,
                _ = pieces.closed() => {
                    cancel.cancel();
                    return;
                }
            };
            let item = result
                .map(|pcm| (piece.clone(), pcm))
                .map_err(|e| (piece, e));
            if pieces.send(item).await.is_err() {
                cancel.cancel();
                return;
            }
        }
    }
    if pieces.is_closed() {
        cancel.cancel();
    }
}

async fn frame_task(
    rate: u32,
    mut pieces: mpsc::Receiver<Piece>,
    output: mpsc::Sender<Result<TtsAudio, StageError>>,
    cancel: Arc<Cancel>,
) {
    let frame_len = (rate as usize * FRAME_MS / 1000).max(1);
    loop {
        let piece = tokio::select! {
            p = pieces.recv() => p,
            _ = output.closed() => {
                cancel.cancel();
                return;
            }
        };
        let Some(piece) = piece else {
            return; // input ended and all pieces are out: closes `output`
        };
        match piece {
            Ok((text, pcm)) => {
                let sizes: Vec<usize> = if pcm.is_empty() {
                    vec![0]
                } else {
                    pcm.chunks(frame_len).map(<[i16]>::len).collect()
                };
                let texts = split_text_by_duration(&text, &sizes);
                let mut offset = 0;
                for (size, text) in sizes.into_iter().zip(texts) {
                    let frame = AudioFrame::new(&pcm[offset..offset + size], rate, 1);
                    offset += size;
                    if output.send(Ok(TtsAudio { frame, text })).await.is_err() {
                        cancel.cancel();
                        return;
                    }
                }
            }
            Err((text, e)) => {
                if cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(error = %e, text = %text, "TTS failed for a piece of the reply");
                if output.send(Err(e.into())).await.is_err() {
                    cancel.cancel();
                    return;
                }
            }
        }
    }
}

/// Splits `text` into sentences (after `.`, `!`, `?`, `…` followed by
/// whitespace), and sentences longer than `max_chars` further at clause
/// punctuation (`,`, `;`, `:`, dashes). Whitespace stays with the piece
/// before it, so the pieces concatenate back to `text`.
pub(crate) fn split_pieces(text: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    for sentence in split_after(text, &['.', '!', '?', '…']) {
        if sentence.chars().count() <= max_chars {
            out.push(sentence);
            continue;
        }
        // Merge clauses back up to `max_chars` so pieces are not too short.
        let mut acc = String::new();
        for clause in split_after(&sentence, CLAUSE_MARKS) {
            if !acc.is_empty() && acc.chars().count() + clause.chars().count() > max_chars {
                out.push(std::mem::take(&mut acc));
            }
            acc.push_str(&clause);
        }
        if !acc.is_empty() {
            out.push(acc);
        }
    }
    if out.is_empty() {
        out.push(text.to_string());
    }
    out
}

/// Cuts the first piece down to at most `max_chars`: at its first clause
/// mark if that is short enough, else at the last word break within the
/// limit. Used for the first piece of a reply, so its first audio waits for
/// the inference of a few words only.
pub(crate) fn shorten_first(mut pieces: Vec<String>, max_chars: usize) -> Vec<String> {
    let Some(first) = pieces.first() else {
        return pieces;
    };
    if first.chars().count() <= max_chars {
        return pieces;
    }
    let clauses = split_after(first, CLAUSE_MARKS);
    let head_len = match clauses.first() {
        Some(c) if clauses.len() > 1 && c.chars().count() <= max_chars => c.len(),
        _ => {
            let limit = first
                .char_indices()
                .nth(max_chars)
                .map_or(first.len(), |(i, _)| i);
            match first[..limit]
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
            {
                Some((i, c)) if first[..i].trim().contains(' ') => i + c.len_utf8(),
                // One long word, or no break: leave it whole.
                _ => return pieces,
            }
        }
    };
    let (head, rest) = first.split_at(head_len);
    let (head, rest) = (head.to_string(), rest.to_string());
    pieces.splice(0..1, [head, rest].into_iter().filter(|p| !p.is_empty()));
    pieces
}

const CLAUSE_MARKS: &[char] = &[',', ';', ':', '—', '–'];

/// Splits after any of `marks` when whitespace follows, keeping the
/// whitespace with the left part.
fn split_after(text: &str, marks: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !marks.contains(&c) {
            continue;
        }
        // Swallow runs of marks ("?!", "...") then the whitespace after.
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if marks.contains(&d) {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let mut saw_space = false;
        while let Some(&(j, d)) = chars.peek() {
            if d.is_whitespace() {
                saw_space = true;
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        if saw_space || end == text.len() {
            out.push(text[start..end].to_string());
            start = end;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures::FutureExt;

    use super::*;

    /// Makes 1 s of a tone per piece, taking 200 ms of "work" in 5 ms steps
    /// that watch the cancel flag; records how long the last work ran after
    /// cancel fired.
    struct Slow {
        after_cancel: std::sync::Mutex<Option<Duration>>,
    }

    impl Synthesizer for Slow {
        fn sample_rate(&self) -> u32 {
            16_000
        }

        fn pieces(&self, text: &str, _first: bool) -> Vec<String> {
            split_pieces(text, 20)
        }

        fn synthesize(
            self: Arc<Self>,
            _text: String,
            cancel: Arc<Cancel>,
        ) -> BoxFuture<'static, Result<Vec<i16>, SpeechError>> {
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut cancelled_at = None;
                    for _ in 0..40 {
                        if cancel.is_cancelled() {
                            cancelled_at.get_or_insert_with(Instant::now);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if let Some(at) = cancelled_at {
                        *self.after_cancel.lock().unwrap() = Some(at.elapsed());
                    }
                    Ok(vec![1000i16; 16_000])
                })
                .await
                .map_err(|e| SpeechError::Config(e.to_string()))?
            }
            .boxed()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_output_cancels_the_running_synthesis() {
        let synth = Arc::new(Slow {
            after_cancel: std::sync::Mutex::new(None),
        });
        let mut s = open(synth.clone());
        for _ in 0..3 {
            s.input
                .send(TtsInput::Segment("One two three. Four five six. ".into()))
                .await
                .unwrap();
        }
        let first = s.output.recv().await.unwrap().unwrap();
        assert_eq!(first.frame.samples.len(), 1600);
        let input = s.input;
        drop(s.output);
        tokio::time::timeout(Duration::from_millis(100), input.closed())
            .await
            .expect("tasks end at once");
        // The piece being synthesised saw the flag within one 5 ms step.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = *synth.after_cancel.lock().unwrap();
        assert!(
            seen.is_some_and(|d| d < Duration::from_millis(20)),
            "{seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_input_finishes_queued_segments_then_closes() {
        let synth = Arc::new(Slow {
            after_cancel: std::sync::Mutex::new(None),
        });
        let mut s = open(synth);
        let segments = ["Alpha beta. ", "Gamma delta epsilon zeta eta. ", "Theta."];
        for seg in segments {
            s.input.send(TtsInput::Segment(seg.into())).await.unwrap();
        }
        drop(s.input);
        let mut text = String::new();
        let mut samples = 0;
        while let Some(a) = s.output.recv().await {
            let a = a.unwrap();
            text.push_str(&a.text);
            samples += a.frame.samples.len();
        }
        assert_eq!(text, segments.concat());
        // One second per piece; the long sentence has no clause mark to cut at.
        assert_eq!(samples, 3 * 16_000);
    }

    #[test]
    fn pieces_cover_the_text() {
        let text =
            "Hello there. How are you today, my friend, on this fine and sunny morning? Good!";
        let p = split_pieces(text, 30);
        assert_eq!(p.concat(), text);
        assert_eq!(p[0], "Hello there. ");
        assert!(p.len() >= 4, "{p:?}");
        assert_eq!(p.last().map(String::as_str), Some("Good!"));
    }

    #[test]
    fn first_piece_is_cut_short() {
        let p = shorten_first(split_pieces("Sure, I can help you with that. Bye.", 60), 20);
        assert_eq!(p, vec!["Sure, ", "I can help you with that. ", "Bye."]);
        let p = shorten_first(split_pieces("The next train leaves at seven.", 60), 20);
        assert_eq!(p, vec!["The next train ", "leaves at seven."]);
        let p = shorten_first(vec!["Okay.".into()], 20);
        assert_eq!(p, vec!["Okay."]);
        let p = shorten_first(vec!["Supercalifragilisticexpialidocious".into()], 20);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn decimals_and_abbreviations_without_space_do_not_split() {
        let text = "It costs 3.50 dollars";
        assert_eq!(split_pieces(text, 100), vec![text.to_string()]);
    }
}
