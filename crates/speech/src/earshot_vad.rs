//! The default VAD: `earshot`, pure Rust with its weights inside the crate, so
//! it needs no download. 16 kHz, 256-sample (16 ms) frames.

use agent::{StageError, VadFactory, VadModel};

pub struct EarshotVad {
    detector: Box<earshot::Detector>,
}

impl EarshotVad {
    pub fn new() -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
        }
    }
}

impl Default for EarshotVad {
    fn default() -> Self {
        Self::new()
    }
}

impl VadModel for EarshotVad {
    fn sample_rate(&self) -> u32 {
        16_000
    }

    fn frame_len(&self) -> usize {
        256
    }

    fn score(&mut self, frame: &[i16]) -> f32 {
        self.detector.predict_i16(frame)
    }

    fn reset(&mut self) {
        self.detector.reset();
    }
}

/// Makes an [`EarshotVad`] per session.
#[derive(Clone, Copy, Debug, Default)]
pub struct EarshotVadFactory;

impl VadFactory for EarshotVadFactory {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(EarshotVad::new()))
    }
}
