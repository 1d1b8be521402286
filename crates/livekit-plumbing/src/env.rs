//! Credentials and endpoints from the environment, looked up by variable
//! name through a function (`&|k| std::env::var(k).ok()` in a program, a
//! table in a test), so that nothing here reads the process environment
//! itself. Values go straight into [`Secret`]s; errors name the variables,
//! never their values.

use crate::secret::{Redactor, Secret};

/// The variables LiveKit Inference credentials come from, as an error names
/// them: each of the first pair falls back to the one in parentheses.
pub const INFERENCE_CREDENTIAL_VARS: &str = "LIVEKIT_INFERENCE_API_KEY and LIVEKIT_INFERENCE_API_SECRET \
                                             (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET)";
/// The variables a LiveKit server's credentials come from.
pub const SERVER_CREDENTIAL_VARS: &str = "LIVEKIT_API_KEY and LIVEKIT_API_SECRET";
/// Overrides [`DEFAULT_INFERENCE_URL`].
pub const INFERENCE_URL_VAR: &str = "LIVEKIT_INFERENCE_URL";
/// LiveKit Inference's gateway (LLM, STT and TTS alike).
pub const DEFAULT_INFERENCE_URL: &str = "https://agent-gateway.livekit.cloud/v1";

/// Credentials are not set. Names the variables to set, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("set {vars}")]
pub struct MissingCredentials {
    /// The environment variables to set, as a human-readable list.
    pub vars: String,
}

/// The value of `name`, treating an empty (or blank) value as unset.
pub fn var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The LiveKit Inference base URL: `explicit` (a configured `base_url`),
/// else `LIVEKIT_INFERENCE_URL`, else [`DEFAULT_INFERENCE_URL`]. Trimmed.
pub fn inference_base_url(explicit: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| var(env, INFERENCE_URL_VAR))
        .unwrap_or_else(|| DEFAULT_INFERENCE_URL.to_owned())
        .trim()
        .to_owned()
}

/// A LiveKit API key and secret: what access tokens are signed with. Both
/// are [`Secret`]s (a key names a project, and a server may echo it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCredentials {
    api_key: Secret,
    api_secret: Secret,
}

impl ApiCredentials {
    pub fn new(api_key: impl Into<Secret>, api_secret: impl Into<Secret>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
        }
    }

    /// LiveKit Inference's: `LIVEKIT_INFERENCE_API_KEY` and
    /// `LIVEKIT_INFERENCE_API_SECRET`, each falling back on its own to
    /// `LIVEKIT_API_KEY` / `LIVEKIT_API_SECRET`.
    pub fn inference_from_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, MissingCredentials> {
        let key = var(env, "LIVEKIT_INFERENCE_API_KEY").or_else(|| var(env, "LIVEKIT_API_KEY"));
        let secret =
            var(env, "LIVEKIT_INFERENCE_API_SECRET").or_else(|| var(env, "LIVEKIT_API_SECRET"));
        match (key, secret) {
            (Some(key), Some(secret)) => Ok(Self::new(key, secret)),
            _ => Err(MissingCredentials {
                vars: INFERENCE_CREDENTIAL_VARS.to_owned(),
            }),
        }
    }

    /// A LiveKit server's: `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET`.
    pub fn server_from_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, MissingCredentials> {
        match (var(env, "LIVEKIT_API_KEY"), var(env, "LIVEKIT_API_SECRET")) {
            (Some(key), Some(secret)) => Ok(Self::new(key, secret)),
            _ => Err(MissingCredentials {
                vars: SERVER_CREDENTIAL_VARS.to_owned(),
            }),
        }
    }

    pub fn api_key(&self) -> &Secret {
        &self.api_key
    }

    pub fn api_secret(&self) -> &Secret {
        &self.api_secret
    }

    /// Adds the key and the secret to `redactor`.
    pub fn redact_with(&self, redactor: &mut Redactor) {
        redactor.add(&self.api_key);
        redactor.add(&self.api_secret);
    }

    /// A redactor that knows the key and the secret.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        self.redact_with(&mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment holding `pairs` only.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn inference_credentials_fall_back_per_variable() {
        let env = env_of(&[
            ("LIVEKIT_INFERENCE_API_KEY", "ikey"),
            ("LIVEKIT_API_KEY", "key"),
            ("LIVEKIT_API_SECRET", "secret-value"),
            ("LIVEKIT_INFERENCE_API_SECRET", "  "), // blank is unset
        ]);
        let c = ApiCredentials::inference_from_env(&env).unwrap();
        assert_eq!(c.api_key().expose(), "ikey");
        assert_eq!(c.api_secret().expose(), "secret-value");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("ikey") && !shown.contains("secret-value"),
            "{shown}"
        );
        assert_eq!(
            c.redactor().clean("x secret-value y ikey"),
            "x [redacted] y [redacted]"
        );
    }

    #[test]
    fn missing_credentials_name_the_variables_only() {
        let env = env_of(&[("LIVEKIT_API_KEY", "only-the-key")]);
        let e = ApiCredentials::inference_from_env(&env).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("LIVEKIT_INFERENCE_API_SECRET"), "{text}");
        assert!(text.contains("LIVEKIT_API_SECRET"), "{text}");
        assert!(!text.contains("only-the-key"), "{text}");
        let e = ApiCredentials::server_from_env(&env).unwrap_err();
        assert_eq!(e.to_string(), "set LIVEKIT_API_KEY and LIVEKIT_API_SECRET");
        let env = env_of(&[("LIVEKIT_API_KEY", "k"), ("LIVEKIT_API_SECRET", "s")]);
        assert_eq!(
            ApiCredentials::server_from_env(&env).unwrap(),
            ApiCredentials::new("k", "s")
        );
    }

    #[test]
    fn base_url_prefers_explicit_then_env_then_default() {
        let env = env_of(&[("LIVEKIT_INFERENCE_URL", " http://127.0.0.1:9/v1 ")]);
        assert_eq!(inference_base_url(None, &env), "http://127.0.0.1:9/v1");
        assert_eq!(
            inference_base_url(Some("https://gw/v1"), &env),
            "https://gw/v1"
        );
        assert_eq!(
            inference_base_url(None, &env_of(&[])),
            DEFAULT_INFERENCE_URL
        );
        let blank = env_of(&[("LIVEKIT_INFERENCE_URL", "")]);
        assert_eq!(inference_base_url(None, &blank), DEFAULT_INFERENCE_URL);
    }
}
