//! LiveKit access tokens: HS256 JWTs signed with the API secret, `iss` = the
//! API key, `nbf` = now, `exp` = now + ttl, minted with `livekit-token`
//! (whose claims are LiveKit's own). Three kinds, one per client:
//!
//! - LiveKit Inference (`kimi`, `speech`): `sub` = the identity, grant
//!   `"inference": {"perform": true}`; minted per request or connection.
//! - the worker's `/agent` socket (`worker`): video grant `agent: true`.
//! - a room, for `connect --room`: join, publish, subscribe, data, own
//!   metadata, `agent: true`, kind `agent`.

use std::time::Duration;

use livekit_token::{AccessToken, InferenceGrants, VideoGrants};

use crate::env::ApiCredentials;
use crate::secret::Secret;

/// Lifetime of a LiveKit Inference token: the gateway checks it when a
/// request (or a websocket upgrade) arrives, and a fresh one is minted for
/// each.
pub const INFERENCE_TOKEN_TTL: Duration = Duration::from_secs(600);

/// A token could not be signed (an empty key or secret, claims the token
/// library refuses). Says what failed, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign the access token: {reason}")]
pub struct TokenError {
    pub reason: String,
}

impl From<livekit_token::AccessTokenError> for TokenError {
    fn from(e: livekit_token::AccessTokenError) -> Self {
        // The library's messages name what is wrong ("Invalid API Key or
        // Secret Key", "invalid claims: …"), never a value.
        Self {
            reason: e.to_string(),
        }
    }
}

impl ApiCredentials {
    fn access_token(&self) -> AccessToken {
        AccessToken::with_api_key(self.api_key().expose(), self.api_secret().expose())
    }

    /// A LiveKit Inference token: `sub` = `identity`, `inference.perform`.
    pub fn inference_token(&self, identity: &str, ttl: Duration) -> Result<Secret, TokenError> {
        Ok(self
            .access_token()
            .with_identity(identity)
            .with_ttl(ttl)
            .with_inference_grants(InferenceGrants::default().with_perform())
            .to_jwt()?
            .into())
    }

    /// A token for the worker's `/agent` socket: video grant `agent = true`.
    pub fn worker_token(&self, ttl: Duration) -> Result<Secret, TokenError> {
        Ok(self
            .access_token()
            .with_ttl(ttl)
            .with_grants(VideoGrants {
                agent: true,
                ..Default::default()
            })
            .to_jwt()?
            .into())
    }

    /// A token to join `room` as the agent `identity`: publish, subscribe,
    /// data, its own attributes.
    pub fn room_token(
        &self,
        identity: &str,
        room: &str,
        ttl: Duration,
    ) -> Result<Secret, TokenError> {
        Ok(self
            .access_token()
            .with_identity(identity)
            .with_name(identity)
            .with_kind("agent")
            .with_ttl(ttl)
            .with_grants(VideoGrants {
                room_join: true,
                room: room.to_owned(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                can_update_own_metadata: Some(true),
                agent: true,
                ..Default::default()
            })
            .to_jwt()?
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn claims(token: &Secret, secret: &str) -> livekit_token::Claims {
        livekit_token::TokenVerifier::with_api_key("APIkey", secret)
            .verify(token.expose())
            .expect("a valid signature")
    }

    #[test]
    fn inference_token_has_the_claims_the_gateway_checks() {
        let creds = ApiCredentials::new("APIkey", "a-very-secret-value");
        let token = creds
            .inference_token("agent-7", INFERENCE_TOKEN_TTL)
            .unwrap();
        assert!(!token.expose().contains("a-very-secret-value"));
        let c = claims(&token, "a-very-secret-value");
        assert_eq!(c.iss, "APIkey");
        assert_eq!(c.sub, "agent-7");
        assert!(c.inference.perform);
        assert!(!c.video.agent && !c.video.room_join);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as usize;
        assert!(
            c.nbf <= now + 1 && c.nbf + 5 >= now,
            "nbf {} now {now}",
            c.nbf
        );
        // `nbf` and `exp` are read from the clock one after the other.
        assert!(
            (600..=601).contains(&(c.exp - c.nbf)),
            "{} {}",
            c.nbf,
            c.exp
        );
        // A token signed with another secret does not verify.
        assert!(
            livekit_token::TokenVerifier::with_api_key("APIkey", "another-secret")
                .verify(token.expose())
                .is_err()
        );
    }

    #[test]
    fn worker_and_room_tokens_carry_their_grants() {
        let creds = ApiCredentials::new("APIkey", "a-very-secret-value");
        let worker = creds.worker_token(Duration::from_secs(60)).unwrap();
        let c = claims(&worker, "a-very-secret-value");
        assert!(c.video.agent && !c.video.room_join && !c.inference.perform);
        assert!((60..=61).contains(&(c.exp - c.nbf)), "{} {}", c.nbf, c.exp);

        let room = creds
            .room_token("agent-x", "room-1", Duration::from_secs(3600))
            .unwrap();
        let c = claims(&room, "a-very-secret-value");
        assert!(c.video.room_join && c.video.agent);
        assert_eq!(c.video.room, "room-1");
        assert_eq!((c.sub.as_str(), c.kind.as_str()), ("agent-x", "agent"));
        assert!(c.video.can_publish() && c.video.can_subscribe());
        assert!(c.video.can_publish_data() && c.video.can_update_own_metadata());
    }

    #[test]
    fn an_empty_secret_cannot_sign_and_the_error_says_so() {
        let e = ApiCredentials::new("APIkey", "")
            .inference_token("agent", INFERENCE_TOKEN_TTL)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("cannot sign the access token"),
            "{e}"
        );
    }
}
