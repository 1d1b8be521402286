//! Speech engines behind the stage traits of `agent`.
//!
//! # Layout
//! - [`error`]: the crate's error type.
//! - [`earshot_vad`]: the default VAD (pure Rust, weights built in).
//! - [`models`]: the model cache and `download-files`.
//! - [`onnx`]: the ONNX runtime (loaded from the cache) and session pools.
//! - [`silero`]: Silero VAD v6 (ONNX).
//! - [`smart_turn`]: Smart Turn v3.2 end-of-turn model (ONNX) and its log-mel features.
//! - [`espeak`]: libespeak-ng on its one thread: phonemes and audio.
//! - [`piper`]: Piper TTS (ONNX + espeak-ng phonemes).
//! - [`espeak_tts`]: espeak-ng TTS.
//! - `tts_stream`: the streaming/cancel machinery the local TTS engines share.
//! - [`whisper`]: local whisper tiny.en STT (CTranslate2 weights on candle;
//!   `whisper/`: `mod.rs`, `ct2.rs`, `tokenizer.rs`, `mel.rs`, `model.rs`,
//!   `stream.rs`, each in its module's Layout).
//! - [`inference`]: LiveKit Inference STT and TTS (the gateway's websockets;
//!   `inference/`: `mod.rs` the connection and credentials both share,
//!   `stt.rs`, `tts.rs`).
//! - [`fallback`]: a primary engine with a local fallback, per stage.
//!
//! # Cargo features
//! - `local` (default): the local engines — `models`, `onnx`, `silero`,
//!   `smart_turn`, `espeak`, `piper`, `espeak_tts`, `tts_stream` and
//!   `whisper` — and what only they need: candle and rustfft, `ort` (the
//!   ONNX runtime itself is loaded at run time from the model cache),
//!   libespeak-ng (linked: `libespeak-ng-dev` at build time) and the model
//!   downloads (sha256, zip).
//!
//! Without it (`default-features = false`) the crate is what a cloud-only
//! agent needs: [`earshot_vad`] (the session still needs a VAD), the
//! LiveKit Inference clients in [`inference`], [`fallback`] (chains of
//! cloud engines) and [`error`]; candle, `ort` and libespeak-ng are neither
//! compiled nor linked.

// The layout above links the local modules, which such a build has not.
#![cfg_attr(not(feature = "local"), allow(rustdoc::broken_intra_doc_links))]

pub mod earshot_vad;
pub mod error;
#[cfg(feature = "local")]
pub mod espeak;
#[cfg(feature = "local")]
pub mod espeak_tts;
pub mod fallback;
pub mod inference;
#[cfg(feature = "local")]
pub mod models;
#[cfg(feature = "local")]
pub mod onnx;
#[cfg(feature = "local")]
pub mod piper;
#[cfg(feature = "local")]
pub mod silero;
#[cfg(feature = "local")]
pub mod smart_turn;
#[cfg(feature = "local")]
mod tts_stream;
#[cfg(feature = "local")]
pub mod whisper;

pub use earshot_vad::{EarshotVad, EarshotVadFactory};
pub use error::SpeechError;
#[cfg(feature = "local")]
pub use espeak_tts::{EspeakTts, EspeakVoice};
pub use fallback::{Fallback, FallbackStt, FallbackTts};
pub use inference::{
    InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts, InferenceTtsOptions,
};
#[cfg(feature = "local")]
pub use models::{ModelCache, ModelFile};
#[cfg(feature = "local")]
pub use piper::PiperTts;
#[cfg(feature = "local")]
pub use silero::{SileroVad, SileroVadFactory};
#[cfg(feature = "local")]
pub use smart_turn::SmartTurn;
