//! Speech engines behind the stage traits of `agent`.
//!
//! # Layout
//! - [`error`]: the crate's error type.
//! - [`earshot_vad`]: the default VAD (pure Rust, weights built in).

pub mod earshot_vad;
pub mod error;

pub use earshot_vad::{EarshotVad, EarshotVadFactory};
pub use error::SpeechError;
