//! Removes `<think>…</think>` reasoning blocks from streamed text, whatever
//! the chunk boundaries: a tag split across deltas (`"<thi"` + `"nk>"`) is
//! recognised, and text that merely starts like a tag is released as soon as it
//! cannot be one. Whitespace right after a closing tag is dropped too, so the
//! reply does not start with the blank line models put there.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Streaming filter; feed deltas in order with [`push`](Self::push), then call
/// [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct ThinkFilter {
    /// Inside a think block: text is dropped until the closing tag.
    inside: bool,
    /// Just left a think block: leading whitespace is dropped.
    after_close: bool,
    /// A tail that may be the start of a tag; held until the next delta says.
    held: String,
}

impl ThinkFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Filters the next delta; returns the text to pass on (possibly empty).
    pub fn push(&mut self, delta: &str) -> String {
        let mut out = String::new();
        // Fast path: nothing held and no '<' anywhere means no tag can start
        // or continue here.
        if self.held.is_empty() && !delta.contains('<') {
            if self.inside {
                return out;
            }
            self.emit(&mut out, delta);
            return out;
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(delta);
        let mut rest = buf.as_str();
        loop {
            let tag = if self.inside { CLOSE } else { OPEN };
            match rest.find(tag) {
                Some(at) => {
                    if !self.inside {
                        self.emit(&mut out, &rest[..at]);
                    }
                    rest = &rest[at + tag.len()..];
                    self.inside = !self.inside;
                    if !self.inside {
                        self.after_close = true;
                    }
                }
                None => {
                    // Hold back the longest suffix that is a proper prefix of
                    // the tag we look for.
                    let keep = partial_tag_suffix(rest, tag);
                    let (pass, hold) = rest.split_at(rest.len() - keep);
                    if !self.inside {
                        self.emit(&mut out, pass);
                    }
                    self.held = hold.to_string();
                    break;
                }
            }
        }
        out
    }

    /// Ends the stream: text held back because it looked like the start of a
    /// tag is released (unless inside an unclosed think block).
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        let mut out = String::new();
        if !self.inside {
            self.emit(&mut out, &held);
        }
        out
    }

    fn emit(&mut self, out: &mut String, text: &str) {
        if self.after_close {
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                return;
            }
            self.after_close = false;
            out.push_str(trimmed);
        } else {
            out.push_str(text);
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag_suffix(text: &str, tag: &str) -> usize {
    let max = (tag.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&str]) -> String {
        let mut f = ThinkFilter::new();
        let mut out: String = parts.iter().map(|p| f.push(p)).collect();
        out.push_str(&f.finish());
        out
    }

    fn every_split(input: &str) -> Vec<String> {
        let mut outs = Vec::new();
        let bounds: Vec<usize> = (0..=input.len())
            .filter(|&i| input.is_char_boundary(i))
            .collect();
        for &a in &bounds {
            for &b in bounds.iter().filter(|&&b| b >= a) {
                outs.push(run(&[&input[..a], &input[a..b], &input[b..]]));
            }
        }
        outs
    }

    #[test]
    fn strips_a_block_whatever_the_splits() {
        let input = "<think>Let me think… 2+2=4</think>\n\nIt is four.";
        for out in every_split(input) {
            assert_eq!(out, "It is four.");
        }
    }

    #[test]
    fn keeps_text_around_and_between_blocks() {
        let input = "Hi <think>x</think> there<think>y</think>!";
        for out in every_split(input) {
            assert_eq!(out, "Hi there!");
        }
    }

    #[test]
    fn lookalikes_are_released() {
        for out in every_split("a <b> <thin> <thinking> c < d") {
            assert_eq!(out, "a <b> <thin> <thinking> c < d");
        }
        // A trailing partial tag at the end of the stream is text.
        assert_eq!(run(&["so x <thi"]), "so x <thi");
    }

    #[test]
    fn unclosed_block_drops_the_rest() {
        assert_eq!(run(&["ok <think>never", " closed"]), "ok ");
    }

    #[test]
    fn plain_text_passes_through_unchanged() {
        assert_eq!(run(&["Hello, ", "wörld ", "🎉"]), "Hello, wörld 🎉");
    }
}
