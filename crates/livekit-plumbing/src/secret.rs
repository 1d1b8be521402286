//! Secrets that never show, and the scrubbing of text that came from outside.
//!
//! A [`Secret`] holds an API key, an API secret, a token or a header value:
//! its `Debug` prints `[redacted]` and it has no `Display`, so it cannot reach
//! a log line or an error by formatting. Text a server sends (an HTTP body at
//! a refused upgrade, an `error` event, a transport error) may still echo a
//! secret back: a [`Redactor`] knows the secrets in use and replaces them,
//! and anything shaped like a JWT, before the text goes into an error.

use std::fmt;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not scrubbed from text: they would redact
/// ordinary words, and real keys are far longer.
pub const MIN_SECRET_LEN: usize = 4;

/// A string that must never be shown: `Debug` prints `[redacted]` and there
/// is no `Display`. Read it with [`Secret::expose`] only where it goes on
/// the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for a request header or a signature; never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value, owned, for an API that takes a `String` (a token handed on).
    pub fn into_exposed(self) -> String {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Removes known secrets, and anything shaped like a JWT, from text that
/// came from outside before it goes into an error or a log line.
///
/// Longer secrets are replaced first, so a key that happens to sit inside
/// another secret cannot leave the rest of that secret behind.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first.
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Scrubs `secret` from now on (unless it is shorter than
    /// [`MIN_SECRET_LEN`]).
    pub fn add(&mut self, secret: &Secret) {
        let s = secret.expose();
        if s.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|known| known == s) {
            let at = self.secrets.partition_point(|known| known.len() >= s.len());
            self.secrets.insert(at, s.to_owned());
        }
    }

    /// `text` with every known secret and every JWT replaced by `[redacted]`.
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        redact_jwts(&out)
    }

    /// [`clean`](Self::clean), then cut to at most `max_chars` characters
    /// (with `…` when cut). In that order: cutting first could split a
    /// secret at the cut and leave its prefix unrecognised in the text.
    pub fn clean_truncated(&self, text: &str, max_chars: usize) -> String {
        let clean = self.clean(text);
        match clean.char_indices().nth(max_chars) {
            None => clean,
            Some((at, _)) => format!("{}…", &clean[..at]),
        }
    }
}

/// Replaces anything shaped like a JWT (`eyJ….….…`) with `[redacted]`: a
/// server may echo the token it refused, and tokens are minted per request,
/// so no list of secrets can hold them all.
fn redact_jwts(text: &str) -> String {
    if !text.contains("eyJ") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let candidate = &tail[..len];
        if candidate.matches('.').count() >= 2 {
            out.push_str(REDACTED);
        } else {
            out.push_str(candidate);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::from("a-very-secret-value");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(vec![s.clone()])), "Some([[redacted]])");
        assert_eq!(s.expose(), "a-very-secret-value");
    }

    #[test]
    fn removes_secrets_and_jwts_but_not_short_strings() {
        let mut r = Redactor::default();
        r.add(&"s3cr3t-value".into());
        r.add(&"ab".into()); // too short to redact safely
        let text = "bad key s3cr3t-value; token eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJrIn0.sig_-x ok; eyJnot-a-jwt ab";
        let clean = r.clean(text);
        assert!(!clean.contains("s3cr3t-value"), "{clean}");
        assert!(!clean.contains("eyJhbGciOiJIUzI1NiJ9"), "{clean}");
        assert!(clean.contains("eyJnot-a-jwt"), "{clean}");
        assert!(clean.ends_with(" ab"), "{clean}");
        assert_eq!(format!("{r:?}"), "Redactor(1 secrets)");
    }

    #[test]
    fn a_key_inside_a_longer_secret_does_not_leave_the_rest() {
        let mut r = Redactor::default();
        // The shorter one first: replacing it first would leave "xx" and "yy".
        r.add(&"abcd1234".into());
        r.add(&"xxabcd1234yy".into());
        assert_eq!(r.clean("k=xxabcd1234yy"), "k=[redacted]");
        assert_eq!(r.clean("k=abcd1234"), "k=[redacted]");
    }

    #[test]
    fn a_secret_straddling_the_cut_leaves_no_prefix() {
        let secret = "straddling-secret-value-0123456789";
        let mut r = Redactor::default();
        r.add(&secret.into());
        // The cut at 300 characters falls in the middle of the secret.
        let text = format!("{}{secret} and more", "x".repeat(290));
        let out = r.clean_truncated(&text, 300);
        assert!(!out.contains("straddl"), "{out}");
        assert!(!out.contains(&secret[..10]), "{out}");
        assert_eq!(out, format!("{}{REDACTED}…", "x".repeat(290)));
        // Short text is kept whole, without a mark.
        assert_eq!(r.clean_truncated("short", 300), "short");
        // The cut respects character boundaries.
        assert_eq!(r.clean_truncated("ééé", 2), "éé…");
    }
}
