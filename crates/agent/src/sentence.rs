//! Streaming sentence splitting: LLM tokens in, sentences for the TTS out, so
//! the first sentence is spoken while the rest is still being generated.

/// Sentences shorter than this are joined to the next one, so the TTS is not
/// fed fragments like "Hi." on their own (its prosody suffers).
const MIN_SENTENCE_CHARS: usize = 20;

/// Words ending in '.' that do not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "approx.", "no.",
];

#[derive(Default)]
pub struct SentenceSplitter {
    buf: String,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.find_boundary() {
            let rest = self.buf.split_off(end);
            let sentence = std::mem::replace(&mut self.buf, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_string());
            }
            let trimmed = self.buf.trim_start().len();
            self.buf.drain(..self.buf.len() - trimmed);
        }
        out
    }

    /// Ends the stream; returns what is left as a last sentence.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Byte offset just past a sentence end followed by whitespace, if the
    /// sentence up to there is long enough.
    fn find_boundary(&self) -> Option<usize> {
        let mut chars = self.buf.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            let paragraph = c == '\n' && next == Some('\n');
            let terminal = matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
                && next.is_some_and(char::is_whitespace);
            if !(terminal || paragraph) {
                continue;
            }
            let end = i + c.len_utf8();
            if self.buf[..end].trim().chars().count() < MIN_SENTENCE_CHARS {
                continue;
            }
            if c == '.' {
                let word_start = self.buf[..i]
                    .rfind(char::is_whitespace)
                    .map_or(0, |p| p + 1);
                let word = self.buf[word_start..end].to_lowercase();
                if ABBREVIATIONS.contains(&word.as_str()) {
                    continue;
                }
            }

            return Some(end);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_stream(pieces: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(s.push(p));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("The weather today is sunny").is_empty());
        assert!(s.push(" and warm.").is_empty(), "needs the following space");
        assert_eq!(
            s.push(" Bring"),
            vec!["The weather today is sunny and warm."]
        );
        assert_eq!(s.finish().as_deref(), Some("Bring"));
    }

    #[test]
    fn token_boundaries_do_not_matter() {
        let text = "Dr. Smith will see you at 3.30 today. Is that okay for you? Great!";
        let whole = split_stream(&[text]);
        let chars: Vec<String> = text.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_stream(&refs), whole);
        assert_eq!(
            whole,
            vec![
                "Dr. Smith will see you at 3.30 today.",
                "Is that okay for you?",
                "Great!"
            ]
        );
    }

    #[test]
    fn short_openers_join_the_next_sentence() {
        assert_eq!(
            split_stream(&["Hi! ", "I can help you with that booking. ", "Sure."]),
            vec!["Hi! I can help you with that booking.", "Sure."]
        );
    }
}
