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
//! - [`whisper`]: local whisper tiny.en STT (CTranslate2 weights on candle).
//! - [`inference`]: LiveKit Inference STT and TTS (the gateway's websockets).
//! - [`fallback`]: a primary engine with a local fallback, per stage.

pub mod earshot_vad;
pub mod error;
pub mod espeak;
pub mod espeak_tts;
pub mod fallback;
pub mod inference;
pub mod models;
pub mod onnx;
pub mod piper;
pub mod silero;
pub mod smart_turn;
mod tts_stream;
pub mod whisper;

pub use earshot_vad::{EarshotVad, EarshotVadFactory};
pub use error::SpeechError;
pub use espeak_tts::{EspeakTts, EspeakVoice};
pub use fallback::{Fallback, FallbackStt, FallbackTts};
pub use inference::{
    InferenceOptions, InferenceStt, InferenceSttOptions, InferenceTts, InferenceTtsOptions,
};
pub use models::{ModelCache, ModelFile};
pub use piper::PiperTts;
pub use silero::{SileroVad, SileroVadFactory};
pub use smart_turn::SmartTurn;
