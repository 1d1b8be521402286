//! Credentials and request authentication: which credentials each backend
//! takes from the environment (by variable name; values never leave this
//! module except as a request header), and the bearer token of a request —
//! for LiveKit Inference a fresh JWT per request. Secrets, the LiveKit
//! variables and their fallbacks, and the token itself are
//! `livekit-plumbing`'s, shared with `speech`.

use livekit_plumbing::{ApiCredentials, INFERENCE_TOKEN_TTL, Redactor, Secret, var};

use crate::config::Backend;
use crate::error::KimiError;

/// Lifetime of a LiveKit Inference token (`exp` = `nbf` + this).
pub const TOKEN_TTL: std::time::Duration = INFERENCE_TOKEN_TTL;

/// How requests to one target are authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Credentials {
    /// LiveKit Inference: a JWT minted per request.
    Livekit {
        credentials: ApiCredentials,
        /// The token's `sub`.
        identity: String,
    },
    /// A static bearer key.
    Bearer(Secret),
    /// No `Authorization` header (local OpenAI-compatible servers).
    None,
}

impl Credentials {
    /// Resolves the credentials `backend` needs. Every secret found is added
    /// to `redactor`.
    pub(crate) fn resolve(
        backend: Backend,
        api_key_env: Option<&str>,
        identity: &str,
        env: &dyn Fn(&str) -> Option<String>,
        redactor: &mut Redactor,
    ) -> Result<Self, KimiError> {
        let creds = match backend {
            Backend::Livekit => match ApiCredentials::inference_from_env(env) {
                Ok(credentials) => Credentials::Livekit {
                    credentials,
                    identity: identity.to_string(),
                },
                Err(missing) => {
                    return Err(KimiError::MissingCredentials {
                        backend: backend.as_str(),
                        vars: missing.vars,
                    });
                }
            },
            Backend::Baseten => {
                let name = api_key_env.unwrap_or("BASETEN_API_KEY");
                match var(env, name) {
                    Some(key) => Credentials::Bearer(Secret::new(key)),
                    None => {
                        return Err(KimiError::MissingCredentials {
                            backend: backend.as_str(),
                            vars: name.to_string(),
                        });
                    }
                }
            }
            Backend::OpenaiCompatible => match api_key_env {
                None => Credentials::None,
                Some(name) => match var(env, name) {
                    Some(key) => Credentials::Bearer(Secret::new(key)),
                    None => {
                        return Err(KimiError::MissingCredentials {
                            backend: backend.as_str(),
                            vars: format!("{name} (named by api_key_env)"),
                        });
                    }
                },
            },
        };
        match &creds {
            Credentials::Livekit { credentials, .. } => credentials.redact_with(redactor),
            Credentials::Bearer(key) => redactor.add(key),
            Credentials::None => {}
        }
        Ok(creds)
    }

    /// The bearer token for the next request, if any: for LiveKit a fresh JWT.
    pub(crate) fn bearer(&self) -> Result<Option<Secret>, KimiError> {
        match self {
            Credentials::Livekit {
                credentials,
                identity,
            } => Ok(Some(credentials.inference_token(identity, TOKEN_TTL)?)),
            Credentials::Bearer(key) => Ok(Some(key.clone())),
            Credentials::None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn livekit_prefers_inference_variables_per_variable() {
        let env = env_of(&[
            ("LIVEKIT_INFERENCE_API_KEY", "ikey"),
            ("LIVEKIT_API_KEY", "key"),
            ("LIVEKIT_API_SECRET", "secret-value"),
        ]);
        let mut r = Redactor::default();
        let c = Credentials::resolve(Backend::Livekit, None, "agent", &env, &mut r).unwrap();
        match c {
            Credentials::Livekit { credentials, .. } => {
                assert_eq!(credentials.api_key().expose(), "ikey");
                assert_eq!(credentials.api_secret().expose(), "secret-value");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            r.clean("x secret-value y ikey"),
            "x [redacted] y [redacted]"
        );
    }

    #[test]
    fn missing_credentials_name_the_variables_only() {
        let env = env_of(&[("LIVEKIT_API_KEY", "only-the-key")]);
        let mut r = Redactor::default();
        let e = Credentials::resolve(Backend::Livekit, None, "agent", &env, &mut r).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("LIVEKIT_API_SECRET"), "{text}");
        assert!(!text.contains("only-the-key"), "{text}");

        let e = Credentials::resolve(Backend::Baseten, None, "agent", &env, &mut r).unwrap_err();
        assert!(e.to_string().contains("BASETEN_API_KEY"));
        let baseten = env_of(&[("BASETEN_API_KEY", "bt-key-value")]);
        let c = Credentials::resolve(Backend::Baseten, None, "agent", &baseten, &mut r).unwrap();
        assert!(matches!(&c, Credentials::Bearer(k) if k.expose() == "bt-key-value"));
        assert_eq!(r.clean("bt-key-value"), "[redacted]");
        let e = Credentials::resolve(Backend::OpenaiCompatible, Some("MY_KEY"), "a", &env, &mut r)
            .unwrap_err();
        assert!(e.to_string().contains("MY_KEY"));
        assert!(matches!(
            Credentials::resolve(Backend::OpenaiCompatible, None, "a", &env, &mut r),
            Ok(Credentials::None)
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::Livekit {
            credentials: ApiCredentials::new("APIkeyXYZ", "very-secret"),
            identity: "agent".into(),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("APIkeyXYZ") && !d.contains("very-secret"),
            "{d}"
        );
        let token = c.bearer().unwrap().unwrap();
        assert_eq!(format!("{token:?}"), "[redacted]");
    }
}
