//! Speech engines behind the stage traits of `agent`.
//!
//! # Layout
//! - [`error`]: the crate's error type.
//! - [`earshot_vad`]: the default VAD (pure Rust, weights built in).
//! - [`models`]: the model cache and `download-files`.
//! - [`whisper`]: local whisper tiny.en STT (CTranslate2 weights on candle).

pub mod earshot_vad;
pub mod error;
pub mod models;
pub mod whisper;

pub use earshot_vad::{EarshotVad, EarshotVadFactory};
pub use error::SpeechError;
pub use models::{ModelCache, ModelFile};
