//! espeak-ng TTS behind [`Tts`]: robotic but instant, and needs no download
//! (only the Debian packages). 22.05 kHz mono.
//!
//! Synthesis happens on the one espeak-ng thread ([`Espeak`]); each sentence
//! comes back whole (espeak-ng runs far faster than real time, so that is a
//! few ms: `benches/engines.rs`) and is then streamed in 100 ms frames like
//! every local engine ([`tts_stream`]).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use agent::{JobContext, StageError, Tts, TtsStream};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::error::SpeechError;
use crate::espeak::Espeak;
pub use crate::espeak::EspeakVoice;
use crate::tts_stream::{self, Cancel, Synthesizer};

const MAX_PIECE_CHARS: usize = 200;

/// espeak-ng TTS. Cheap to clone.
#[derive(Clone)]
pub struct EspeakTts {
    inner: Arc<Inner>,
}

struct Inner {
    espeak: Espeak,
    voice: EspeakVoice,
}

impl EspeakTts {
    /// Starts (or joins) the espeak-ng thread and checks `voice` exists.
    pub fn new(voice: EspeakVoice) -> Result<Self, SpeechError> {
        let espeak = Espeak::global()?;
        // Fails early on an unknown voice name.
        espeak.synthesize(&voice, "", Arc::new(AtomicBool::new(false)))?;
        Ok(Self {
            inner: Arc::new(Inner { espeak, voice }),
        })
    }

    /// The whole audio of `text`, blocking (for tests and benchmarks).
    pub fn synthesize_blocking(&self, text: &str) -> Result<Vec<i16>, SpeechError> {
        self.inner
            .espeak
            .synthesize(&self.inner.voice, text, Arc::default())
    }
}

impl Synthesizer for Inner {
    fn sample_rate(&self) -> u32 {
        self.espeak.sample_rate()
    }

    fn pieces(&self, text: &str, _first: bool) -> Vec<String> {
        tts_stream::split_pieces(text, MAX_PIECE_CHARS)
    }

    fn synthesize(
        self: Arc<Self>,
        text: String,
        cancel: Arc<Cancel>,
    ) -> BoxFuture<'static, Result<Vec<i16>, SpeechError>> {
        async move {
            // The espeak thread checks the stream's flag in its audio callback.
            tokio::task::spawn_blocking(move || {
                self.espeak.synthesize(&self.voice, &text, cancel.flag())
            })
            .await
            .map_err(|e| SpeechError::Engine {
                engine: "espeak-ng",
                reason: e.to_string(),
            })?
        }
        .boxed()
    }
}

#[async_trait]
impl Tts for EspeakTts {
    fn sample_rate(&self) -> u32 {
        self.inner.espeak.sample_rate()
    }

    async fn stream(&self, _job: &JobContext) -> Result<TtsStream, StageError> {
        Ok(tts_stream::open(self.inner.clone()))
    }
}
