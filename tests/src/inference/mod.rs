//! Stand-ins for LiveKit Inference on loopback port 0, for the clients in
//! `crates/kimi` and `crates/speech` (and the stock binary in benches): they
//! check what the gateway checks and fail the way real services fail, as
//! each test scripts it.
//!
//! - [`chat`]: chat completions over HTTP (`POST /v1/chat/completions`),
//!   also as Baseten, Moonshot or a vLLM deployment.
//! - [`speech`]: the STT and TTS websockets (`/v1/stt`, `/v1/tts`).
//! - here: the credentials both accept ([`KEY`], [`SECRET`],
//!   [`livekit_env`]) and the token check both make ([`verify_jwt`]).

pub mod chat;
pub mod speech;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The LiveKit API key the stand-ins accept.
pub const KEY: &str = "APItestKey123";
/// Its secret.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// The environment a client under test reads its credentials from:
/// `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` are [`KEY`] and [`SECRET`],
/// nothing else is set.
pub fn livekit_env(name: &str) -> Option<String> {
    match name {
        "LIVEKIT_API_KEY" => Some(KEY.into()),
        "LIVEKIT_API_SECRET" => Some(SECRET.into()),
        _ => None,
    }
}

/// Checks a LiveKit Inference token the way the gateway does, and returns its
/// claims: an HS256 signature with `secret`, `iss` = `key`, a subject, now
/// within nbf/exp, the 600 s the clients mint, `inference.perform`. The error
/// says what is wrong.
pub fn verify_jwt(token: &str, key: &str, secret: &str) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token".into());
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|_| "header b64")?)
            .map_err(|_| "header json")?;
    if header["alg"] != "HS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "hmac key")?;
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "sig b64")?;
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "claims b64")?)
            .map_err(|_| "claims json")?;
    if claims["iss"] != key {
        return Err("iss is not the api key".into());
    }
    if claims["sub"].as_str().is_none_or(str::is_empty) {
        return Err("no sub".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nbf = claims["nbf"].as_i64().ok_or("no nbf")?;
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if nbf > now + 5 {
        return Err("not yet valid".into());
    }
    if exp <= now {
        return Err("expired".into());
    }
    if !(595..=605).contains(&(exp - nbf)) {
        return Err(format!("ttl {} is not 600 s", exp - nbf));
    }
    if claims["inference"]["perform"] != true {
        return Err("no inference.perform grant".into());
    }
    Ok(claims)
}
