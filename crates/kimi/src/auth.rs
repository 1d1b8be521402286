//! Credentials and request authentication: resolving keys from the
//! environment (by variable name; values never leave this module except as a
//! request header), and minting LiveKit Inference's per-request HS256 JWT with
//! `livekit-token`, whose access tokens express the `inference.perform` grant.

use std::fmt;
use std::time::Duration;

use livekit_token::{AccessToken, InferenceGrants};

use crate::config::Backend;
use crate::error::{KimiError, Redactor};

/// Lifetime of a LiveKit Inference token (`exp` = `nbf` + this).
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// A string that must never be shown: `Debug` prints `[redacted]` and there is
/// no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How requests to one target are authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Credentials {
    /// LiveKit Inference: a JWT minted per request.
    Livekit {
        api_key: Secret,
        api_secret: Secret,
        /// The token's `sub`.
        identity: String,
    },
    /// A static bearer key.
    Bearer(Secret),
    /// No `Authorization` header (local OpenAI-compatible servers).
    None,
}

/// Looks a variable up, treating an empty value as unset.
fn lookup(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
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
            Backend::Livekit => {
                let key = lookup(env, "LIVEKIT_INFERENCE_API_KEY")
                    .or_else(|| lookup(env, "LIVEKIT_API_KEY"));
                let secret = lookup(env, "LIVEKIT_INFERENCE_API_SECRET")
                    .or_else(|| lookup(env, "LIVEKIT_API_SECRET"));
                match (key, secret) {
                    (Some(key), Some(secret)) => Credentials::Livekit {
                        api_key: Secret(key),
                        api_secret: Secret(secret),
                        identity: identity.to_string(),
                    },
                    _ => {
                        return Err(KimiError::MissingCredentials {
                            backend: backend.as_str(),
                            vars: "LIVEKIT_INFERENCE_API_KEY and LIVEKIT_INFERENCE_API_SECRET \
                                   (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET)"
                                .to_string(),
                        });
                    }
                }
            }
            Backend::Baseten => {
                let var = api_key_env.unwrap_or("BASETEN_API_KEY");
                match lookup(env, var) {
                    Some(key) => Credentials::Bearer(Secret(key)),
                    None => {
                        return Err(KimiError::MissingCredentials {
                            backend: backend.as_str(),
                            vars: var.to_string(),
                        });
                    }
                }
            }
            Backend::OpenaiCompatible => match api_key_env {
                None => Credentials::None,
                Some(var) => match lookup(env, var) {
                    Some(key) => Credentials::Bearer(Secret(key)),
                    None => {
                        return Err(KimiError::MissingCredentials {
                            backend: backend.as_str(),
                            vars: format!("{var} (named by api_key_env)"),
                        });
                    }
                },
            },
        };
        match &creds {
            Credentials::Livekit {
                api_key,
                api_secret,
                ..
            } => {
                redactor.add(api_key.expose());
                redactor.add(api_secret.expose());
            }
            Credentials::Bearer(key) => redactor.add(key.expose()),
            Credentials::None => {}
        }
        Ok(creds)
    }

    /// The bearer token for the next request, if any: for LiveKit a fresh JWT.
    pub(crate) fn bearer(&self) -> Result<Option<Secret>, KimiError> {
        match self {
            Credentials::Livekit {
                api_key,
                api_secret,
                identity,
            } => mint_inference_token(api_key.expose(), api_secret.expose(), identity).map(Some),
            Credentials::Bearer(key) => Ok(Some(key.clone())),
            Credentials::None => Ok(None),
        }
    }
}

/// An HS256 JWT for LiveKit Inference: `iss` = key, `sub` = identity, `nbf` =
/// now, `exp` = now + [`TOKEN_TTL`], `inference: {perform: true}`.
pub(crate) fn mint_inference_token(
    api_key: &str,
    api_secret: &str,
    identity: &str,
) -> Result<Secret, KimiError> {
    AccessToken::with_api_key(api_key, api_secret)
        .with_identity(identity)
        .with_ttl(TOKEN_TTL)
        .with_inference_grants(InferenceGrants::default().with_perform())
        .to_jwt()
        .map(Secret)
        // The token error names no secret, but say only what failed.
        .map_err(|_| KimiError::Config("could not sign the LiveKit Inference token".into()))
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
            Credentials::Livekit {
                api_key,
                api_secret,
                ..
            } => {
                assert_eq!(api_key.expose(), "ikey");
                assert_eq!(api_secret.expose(), "secret-value");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!r.clean("x secret-value y").contains("secret-value"));
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
            api_key: Secret("APIkeyXYZ".into()),
            api_secret: Secret("very-secret".into()),
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
