//! PCM audio: the frame type and resampler of the [`pcm`] crate, which the
//! room participant shares.

pub use pcm::{AudioFrame, FrameConverter, Resampler, duration_of, samples_for};
