//! libespeak-ng through FFI, on one dedicated thread.
//!
//! libespeak-ng keeps global state (the current voice, the synthesis
//! callback, its buffers), so every call goes through one thread that owns
//! the library: [`Espeak::global`] starts it on first use and it lives as
//! long as the process (it sleeps on its request channel when idle). Requests
//! are short (one sentence's phonemes, or one sentence's audio, synthesised
//! far faster than real time: `benches/engines.rs`), so sessions sharing the
//! thread wait little.
//!
//! Audio is synthesised into a buffer and handed back whole; the synthesis
//! callback never waits on a consumer, so a slow reader of one stream cannot
//! stall another stream's phonemes. Cancelling sets a flag the callback
//! checks, which aborts synthesis at the next buffer (~20 ms of audio).

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};

use crate::error::SpeechError;

const ENGINE: &str = "espeak-ng";

// ---------------------------------------------------------------- FFI

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
const ESPEAK_CHARS_UTF8: c_uint = 1;
const ESPEAK_PHONEMES_IPA: c_int = 0x02;
const POS_CHARACTER: c_int = 1;
const EE_OK: c_int = 0;
const ESPEAK_RATE: c_int = 1;
const ESPEAK_PITCH: c_int = 3;

type SynthCallback = unsafe extern "C" fn(*mut i16, c_int, *mut c_void) -> c_int;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetSynthCallback(cb: SynthCallback);
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
    fn espeak_Synth(
        text: *const c_void,
        size: usize,
        position: c_uint,
        position_type: c_int,
        end_position: c_uint,
        flags: c_uint,
        unique_identifier: *mut c_uint,
        user_data: *mut c_void,
    ) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// What the synthesis callback writes into, on the espeak thread only.
struct SynthTarget {
    samples: Vec<i16>,
    cancel: Arc<AtomicBool>,
}

thread_local! {
    static TARGET: RefCell<Option<SynthTarget>> = const { RefCell::new(None) };
}

unsafe extern "C" fn synth_callback(wav: *mut i16, n: c_int, _events: *mut c_void) -> c_int {
    TARGET.with(|t| {
        let mut t = t.borrow_mut();
        let Some(target) = t.as_mut() else {
            return 1;
        };
        if target.cancel.load(Ordering::Relaxed) {
            return 1; // abort synthesis
        }
        if !wav.is_null() && n > 0 {
            // SAFETY: espeak hands us `n` samples at `wav`, valid for this call.
            let chunk = unsafe { std::slice::from_raw_parts(wav, n as usize) };
            target.samples.extend_from_slice(chunk);
        }
        0
    })
}

// ---------------------------------------------------------------- the thread

/// Voice settings for synthesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspeakVoice {
    /// espeak-ng voice name, e.g. `en-us`.
    pub name: String,
    /// Words per minute (espeak's default is 175).
    pub rate: u32,
    /// Base pitch 0–100 (50 is normal).
    pub pitch: u32,
}

impl Default for EspeakVoice {
    fn default() -> Self {
        Self {
            name: "en-us".into(),
            rate: 175,
            pitch: 50,
        }
    }
}

enum Request {
    Phonemize {
        voice: String,
        text: String,
        reply: std_mpsc::SyncSender<Result<String, SpeechError>>,
    },
    Synthesize {
        voice: EspeakVoice,
        text: String,
        cancel: Arc<AtomicBool>,
        reply: std_mpsc::SyncSender<Result<Vec<i16>, SpeechError>>,
    },
}

/// A handle to the espeak-ng thread. Cheap to clone.
#[derive(Clone)]
pub struct Espeak {
    requests: std_mpsc::SyncSender<Request>,
    sample_rate: u32,
}

static GLOBAL: Mutex<Option<Espeak>> = Mutex::new(None);

impl Espeak {
    /// The process's espeak-ng thread, started on first use.
    pub fn global() -> Result<Espeak, SpeechError> {
        let mut g = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = g.as_ref() {
            return Ok(e.clone());
        }
        let (tx, rx) = std_mpsc::sync_channel::<Request>(64);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<u32, SpeechError>>(1);
        std::thread::Builder::new()
            .name("espeak-ng".into())
            .spawn(move || run(rx, ready_tx))
            .map_err(|e| SpeechError::Engine {
                engine: ENGINE,
                reason: format!("cannot start the espeak-ng thread: {e}"),
            })?;
        let sample_rate = ready_rx.recv().map_err(|_| SpeechError::Engine {
            engine: ENGINE,
            reason: "the espeak-ng thread stopped during start-up".into(),
        })??;
        let e = Espeak {
            requests: tx,
            sample_rate,
        };
        *g = Some(e.clone());
        Ok(e)
    }

    /// Output sample rate (22050 Hz).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// IPA phonemes of `text` in `voice`, one string per clause as espeak
    /// splits them (punctuation is not in the output). Blocking.
    pub fn phonemize(&self, voice: &str, text: &str) -> Result<String, SpeechError> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.send(Request::Phonemize {
            voice: voice.into(),
            text: text.into(),
            reply,
        })?;
        rx.recv().map_err(|_| gone())?
    }

    /// 16-bit mono audio of `text`. Blocking; returns early (with what was
    /// made so far) once `cancel` is set.
    pub fn synthesize(
        &self,
        voice: &EspeakVoice,
        text: &str,
        cancel: Arc<AtomicBool>,
    ) -> Result<Vec<i16>, SpeechError> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.send(Request::Synthesize {
            voice: voice.clone(),
            text: text.into(),
            cancel,
            reply,
        })?;
        rx.recv().map_err(|_| gone())?
    }

    fn send(&self, r: Request) -> Result<(), SpeechError> {
        self.requests.send(r).map_err(|_| gone())
    }
}

fn gone() -> SpeechError {
    SpeechError::Engine {
        engine: ENGINE,
        reason: "the espeak-ng thread has stopped".into(),
    }
}

fn run(rx: std_mpsc::Receiver<Request>, ready: std_mpsc::SyncSender<Result<u32, SpeechError>>) {
    // SAFETY: plain C calls; this thread is the only one touching espeak.
    let rate = unsafe {
        espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS,
            20,
            std::ptr::null(),
            ESPEAK_INITIALIZE_DONT_EXIT,
        )
    };
    if rate <= 0 {
        let _ = ready.send(Err(SpeechError::Engine {
            engine: ENGINE,
            reason: "espeak_Initialize failed: is espeak-ng-data installed \
                     (Debian: espeak-ng-data)?"
                .into(),
        }));
        return;
    }
    // SAFETY: the callback only touches this thread's TARGET.
    unsafe { espeak_SetSynthCallback(synth_callback) };
    let _ = ready.send(Ok(rate as u32));
    let mut current_voice: Option<String> = None;
    // Ends when every handle (and the global) is gone: in practice, at exit.
    while let Ok(req) = rx.recv() {
        match req {
            Request::Phonemize { voice, text, reply } => {
                let r = set_voice(&mut current_voice, &voice).and_then(|()| phonemize(&text));
                let _ = reply.send(r);
            }
            Request::Synthesize {
                voice,
                text,
                cancel,
                reply,
            } => {
                let r = set_voice(&mut current_voice, &voice.name)
                    .and_then(|()| synthesize(&voice, &text, cancel));
                let _ = reply.send(r);
            }
        }
    }
}

fn set_voice(current: &mut Option<String>, voice: &str) -> Result<(), SpeechError> {
    if current.as_deref() == Some(voice) {
        return Ok(());
    }
    let name = CString::new(voice)
        .map_err(|_| SpeechError::Config(format!("bad espeak voice name {voice:?}")))?;
    // SAFETY: `name` outlives the call.
    let r = unsafe { espeak_SetVoiceByName(name.as_ptr()) };
    if r != EE_OK {
        *current = None;
        return Err(SpeechError::Config(format!(
            "espeak-ng has no voice {voice:?} (see `espeak-ng --voices`)"
        )));
    }
    *current = Some(voice.to_string());
    Ok(())
}

fn phonemize(text: &str) -> Result<String, SpeechError> {
    let c = CString::new(text.replace('\0', " ")).map_err(|e| SpeechError::Engine {
        engine: ENGINE,
        reason: e.to_string(),
    })?;
    let mut ptr: *const c_void = c.as_ptr().cast();
    let mut out = String::new();
    // espeak returns one clause per call and sets `ptr` to null at the end.
    let mut guard = 0;
    while !ptr.is_null() && guard < 10_000 {
        guard += 1;
        // SAFETY: `ptr` points into `c`, which outlives the loop; the result
        // is a NUL-terminated string owned by espeak, copied at once.
        let ph = unsafe {
            espeak_TextToPhonemes(&mut ptr, ESPEAK_CHARS_UTF8 as c_int, ESPEAK_PHONEMES_IPA)
        };
        if ph.is_null() {
            break;
        }
        let s = unsafe { CStr::from_ptr(ph) }.to_string_lossy();
        let s = s.trim();
        if !s.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
    }
    Ok(out)
}

fn synthesize(
    voice: &EspeakVoice,
    text: &str,
    cancel: Arc<AtomicBool>,
) -> Result<Vec<i16>, SpeechError> {
    // SAFETY: plain setters on the espeak thread.
    unsafe {
        espeak_SetParameter(ESPEAK_RATE, voice.rate.clamp(80, 450) as c_int, 0);
        espeak_SetParameter(ESPEAK_PITCH, voice.pitch.min(100) as c_int, 0);
    }
    let c = CString::new(text.replace('\0', " ")).map_err(|e| SpeechError::Engine {
        engine: ENGINE,
        reason: e.to_string(),
    })?;
    TARGET.with(|t| {
        *t.borrow_mut() = Some(SynthTarget {
            samples: Vec::new(),
            cancel,
        })
    });
    let bytes = c.as_bytes_with_nul();
    // SAFETY: `c` outlives the synchronous call; the callback runs inside it
    // on this thread.
    let r = unsafe {
        espeak_Synth(
            c.as_ptr().cast(),
            bytes.len(),
            0,
            POS_CHARACTER,
            0,
            ESPEAK_CHARS_UTF8,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let target = TARGET.with(|t| t.borrow_mut().take());
    if r != EE_OK {
        return Err(SpeechError::Engine {
            engine: ENGINE,
            reason: format!("espeak_Synth failed ({r})"),
        });
    }
    Ok(target.map(|t| t.samples).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phonemizes_english_in_ipa() {
        let e = Espeak::global().unwrap();
        let ph = e.phonemize("en-us", "Hello world").unwrap();
        assert!(ph.contains("wˈɜːld"), "{ph}");
    }

    #[test]
    fn synthesizes_audio() {
        let e = Espeak::global().unwrap();
        let pcm = e
            .synthesize(&EspeakVoice::default(), "Hello world", Arc::default())
            .unwrap();
        let secs = pcm.len() as f32 / e.sample_rate() as f32;
        assert!((0.5..3.0).contains(&secs), "{secs}");
    }
}
