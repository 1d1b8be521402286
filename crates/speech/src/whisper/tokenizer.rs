//! Whisper's tokenizer, decode direction only: `tokenizer.json` (Hugging Face
//! format, byte-level BPE) read into an id → token table, and tokens turned
//! back into text through GPT-2's byte decoder. Encoding is never needed: the
//! prompt is made of special tokens only.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("not a tokenizer.json: {0}")]
    Json(String),
    #[error("special token {0} is missing")]
    MissingSpecial(&'static str),
    #[error("token id {id} of {token:?} is out of range")]
    BadId { token: String, id: u64 },
}

/// Ids of the special tokens decoding needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub end_of_text: u32,
    pub start_of_transcript: u32,
    pub no_timestamps: u32,
    /// `<|nocaptions|>` (older vocabularies) or `<|nospeech|>`.
    pub no_speech: Option<u32>,
    /// `<|en|>`, absent from some English-only vocabularies.
    pub english: Option<u32>,
    pub transcribe: Option<u32>,
}

/// id → token string (in the byte-level alphabet) plus the special ids.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    tokens: Vec<Option<String>>,
    /// Ids of added (special) tokens: never printed.
    special: Vec<bool>,
    byte_of_char: HashMap<char, u8>,
    pub specials: SpecialTokens,
}

#[derive(Deserialize)]
struct Json {
    model: JsonModel,
    #[serde(default)]
    added_tokens: Vec<JsonAdded>,
}

#[derive(Deserialize)]
struct JsonModel {
    vocab: HashMap<String, u64>,
}

#[derive(Deserialize)]
struct JsonAdded {
    id: u64,
    content: String,
}

/// Largest id we accept: far above any whisper vocabulary, small enough that a
/// hostile file cannot make us allocate much.
const MAX_ID: u64 = 1 << 20;

impl Tokenizer {
    pub fn from_json(text: &str) -> Result<Self, TokenizerError> {
        let json: Json =
            serde_json::from_str(text).map_err(|e| TokenizerError::Json(e.to_string()))?;
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut special = Vec::new();
        let mut put = |token: &str, id: u64, is_special: bool| {
            if id > MAX_ID {
                return Err(TokenizerError::BadId {
                    token: token.to_string(),
                    id,
                });
            }
            let id = id as usize;
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
                special.resize(id + 1, false);
            }
            tokens[id] = Some(token.to_string());
            special[id] = is_special;
            Ok(())
        };
        for (token, &id) in &json.model.vocab {
            put(token, id, false)?;
        }
        let mut by_name = HashMap::new();
        for added in &json.added_tokens {
            put(&added.content, added.id, true)?;
            by_name.insert(added.content.as_str(), added.id as u32);
        }
        let find = |name: &'static str| by_name.get(name).copied();
        let need = |name: &'static str| find(name).ok_or(TokenizerError::MissingSpecial(name));
        let specials = SpecialTokens {
            end_of_text: need("<|endoftext|>")?,
            start_of_transcript: need("<|startoftranscript|>")?,
            no_timestamps: need("<|notimestamps|>")?,
            no_speech: find("<|nospeech|>").or_else(|| find("<|nocaptions|>")),
            english: find("<|en|>"),
            transcribe: find("<|transcribe|>"),
        };
        let byte_of_char = bytes_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            tokens,
            special,
            byte_of_char,
            specials,
        })
    }

    /// Highest id + 1 known to the tokenizer.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token string of `id` (in the byte-level alphabet), if known.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// Text of `ids`: special and unknown ids (timestamps) are skipped, the
    /// bytes are joined before UTF-8 decoding so multi-byte characters split
    /// over tokens come out whole.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let i = id as usize;
            if self.special.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Some(Some(token)) = self.tokens.get(i) else {
                continue;
            };
            for c in token.chars() {
                match self.byte_of_char.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Not in the byte alphabet: keep it as is.
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes map to themselves, the others to U+0100 upwards.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 0u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            255 + next
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let map = bytes_to_unicode();
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[b'A' as usize], 'A');
        let mut seen: Vec<char> = map.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }
}
