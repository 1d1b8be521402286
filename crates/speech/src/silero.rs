//! Silero VAD v6 (ONNX) behind [`VadModel`]: 16 kHz, 512-sample (32 ms)
//! frames.
//!
//! The model is recurrent: each call takes the previous call's `state`
//! `[2,1,128]` and, in front of the new 512 samples, the last 64 samples of
//! the previous frame (the "context" silero v5/v6 expects), so the input is
//! `[1, 576]`. [`VadModel::reset`] clears both.
//!
//! `score` runs on the session's audio input task; one inference takes well
//! under a millisecond on one thread (`benches/engines.rs`), so it does not need
//! a thread of its own.

use std::sync::Arc;

use agent::{StageError, VadFactory, VadModel};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::error::SpeechError;
use crate::models::{ModelCache, ModelFile};
use crate::onnx;

const SAMPLE_RATE: u32 = 16_000;
const FRAME: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;
const ENGINE: &str = "silero-vad";

/// One session's Silero VAD: its own ONNX session and recurrent state.
pub struct SileroVad {
    session: Session,
    /// The recurrent state `[2,1,128]`, fed back after every frame.
    state: Tensor<f32>,
    /// Model input `[1,576]`: `CONTEXT` samples of the previous frame, then
    /// this frame. The tensors are made once and refilled in place: no
    /// allocation per frame.
    input: Tensor<f32>,
    sample_rate: Tensor<i64>,
    /// Set when an inference failed; logged once, then scores are 0.
    failed: bool,
}

impl SileroVad {
    /// Loads the model from the cache (and the ONNX runtime on first use).
    pub fn load(cache: &ModelCache) -> Result<Self, SpeechError> {
        let env = onnx::environment(cache)?;
        let model = onnx::read_model(cache, ModelFile::SileroVad)?;
        Self::from_parts(&env, &model)
    }

    fn from_parts(env: &Environment, model: &[u8]) -> Result<Self, SpeechError> {
        let session = onnx::load_session(env, ENGINE, model)?;
        let err = |e| onnx::ort_error(ENGINE, e);
        Ok(Self {
            session,
            state: Tensor::from_array(([2usize, 1, 128], vec![0f32; STATE])).map_err(err)?,
            input: Tensor::from_array(([1usize, CONTEXT + FRAME], vec![0f32; CONTEXT + FRAME]))
                .map_err(err)?,
            sample_rate: Tensor::from_array(((), vec![SAMPLE_RATE as i64])).map_err(err)?,
            failed: false,
        })
    }

    /// Speech probability of one 512-sample frame (shorter frames are padded
    /// with silence, longer ones cut).
    pub fn predict(&mut self, frame: &[i16]) -> Result<f32, SpeechError> {
        // Shift the last CONTEXT samples of the previous frame to the front.
        let (_, input) = self.input.extract_tensor_mut();
        input.copy_within(FRAME.., 0);
        for (i, dst) in input[CONTEXT..].iter_mut().enumerate() {
            *dst = frame.get(i).map_or(0.0, |&s| s as f32 / 32768.0);
        }
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => &self.input,
                "state" => &self.state,
                "sr" => &self.sample_rate
            ])
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        let (_, prob) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        let p = prob.first().copied().unwrap_or(0.0);
        let (_, new_state) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(|e| onnx::ort_error(ENGINE, e))?;
        let (_, state) = self.state.extract_tensor_mut();
        if new_state.len() == state.len() {
            state.copy_from_slice(new_state);
        }
        Ok(p.clamp(0.0, 1.0))
    }
}

impl VadModel for SileroVad {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    fn frame_len(&self) -> usize {
        FRAME
    }

    fn score(&mut self, frame: &[i16]) -> f32 {
        if self.failed {
            return 0.0;
        }
        match self.predict(frame) {
            Ok(p) => p,
            Err(e) => {
                // The trait has no error path: report once and go quiet
                // rather than flood the log 31 times a second.
                tracing::error!(error = %e, "silero VAD inference failed; treating audio as silence");
                self.failed = true;
                0.0
            }
        }
    }

    fn reset(&mut self) {
        self.state.extract_tensor_mut().1.fill(0.0);
        self.input.extract_tensor_mut().1.fill(0.0);
        self.failed = false;
    }
}

/// Makes a [`SileroVad`] per session. The ONNX environment and the model
/// bytes are loaded once and shared; each session gets its own ONNX session
/// (`Session::run` needs `&mut`, and VAD state must not mix between users).
#[derive(Clone)]
pub struct SileroVadFactory {
    env: Environment,
    model: Arc<[u8]>,
}

impl SileroVadFactory {
    /// Loads the runtime and the model from `cache`, and checks the model
    /// by building one session.
    pub fn new(cache: &ModelCache) -> Result<Self, SpeechError> {
        let env = onnx::environment(cache)?;
        let model = onnx::read_model(cache, ModelFile::SileroVad)?;
        SileroVad::from_parts(&env, &model)?;
        Ok(Self { env, model })
    }

    pub fn create_vad(&self) -> Result<SileroVad, SpeechError> {
        SileroVad::from_parts(&self.env, &self.model)
    }
}

impl VadFactory for SileroVadFactory {
    fn create(&self) -> Result<Box<dyn VadModel>, StageError> {
        Ok(Box::new(self.create_vad()?))
    }
}
