//! Fallback between engines: a primary (usually LiveKit Inference) and a
//! local engine taken when the primary fails, without dropping the turn.
//!
//! - [`FallbackStt`]: the stream keeps the current turn's input (audio and
//!   VAD hints, from a second before the turn's speech until its answer).
//!   When the primary stream ends on its own (it gave up: see
//!   [`crate::inference::stt`]), the fallback stream is opened, the kept
//!   input is replayed into it with times shifted to its own clock, and
//!   transcripts are shifted back; the session sees one stream throughout.
//! - [`FallbackTts`]: the stream keeps the segments of the reply not yet
//!   fully spoken. When the primary fails mid-reply, the rest of the current
//!   segment (after the text already attached to played audio) and the
//!   segments after it are spoken by the fallback.
//!
//! A stream that cannot open on the primary opens on the fallback at once.
//! After a failure the primary is skipped by new streams for `cooldown`, then
//! tried again. The first switch is logged at `warn`, later ones at `debug`:
//! a provider that is down does not flood the log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::audio::duration_of;
use agent::{
    JobContext, StageError, Stt, SttEvent, SttInput, SttStream, Transcript, Tts, TtsAudio,
    TtsInput, TtsStream,
};
use async_trait::async_trait;
use tokio::sync::mpsc;

/// How long new streams skip a primary that failed.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Input kept while no turn is in progress (pre-roll for the next one).
const IDLE_KEEP: Duration = Duration::from_secs(1);
/// Most input kept for one turn (whisper's window is 30 s).
const TURN_KEEP: Duration = Duration::from_secs(30);

/// Whether the primary may be tried, and whether its failure was logged.
#[derive(Debug)]
struct Health {
    stage: &'static str,
    primary: String,
    fallback: String,
    cooldown: Duration,
    down_until: Mutex<Option<Instant>>,
    logged: AtomicBool,
}

impl Health {
    fn new(stage: &'static str, primary: String, fallback: String) -> Arc<Self> {
        Arc::new(Self {
            stage,
            primary,
            fallback,
            cooldown: DEFAULT_COOLDOWN,
            down_until: Mutex::new(None),
            logged: AtomicBool::new(false),
        })
    }

    fn primary_up(&self) -> bool {
        let down = self.down_until.lock().map(|d| *d).unwrap_or(None);
        down.is_none_or(|until| Instant::now() >= until)
    }

    /// Marks the primary down and logs the switch (at `warn` the first time).
    fn failed(&self, error: &StageError) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + self.cooldown);
        }
        if !self.logged.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                stage = self.stage,
                primary = %self.primary,
                fallback = %self.fallback,
                %error,
                "primary failed; falling back (logged once)"
            );
        } else {
            tracing::debug!(stage = self.stage, %error, "primary failed; falling back");
        }
    }
}

// ---------------------------------------------------------------- STT

/// A stage that falls back to a second one of its kind. See the module docs.
pub struct Fallback<S: ?Sized> {
    primary: Arc<S>,
    fallback: Arc<S>,
    health: Arc<Health>,
}

impl<S: ?Sized> Clone for Fallback<S> {
    fn clone(&self) -> Self {
        Self {
            primary: self.primary.clone(),
            fallback: self.fallback.clone(),
            health: self.health.clone(),
        }
    }
}

impl<S: ?Sized> Fallback<S> {
    /// `names` are for the log: (primary, fallback).
    fn for_stage(
        stage: &'static str,
        primary: Arc<S>,
        fallback: Arc<S>,
        names: (&str, &str),
    ) -> Self {
        Self {
            primary,
            fallback,
            health: Health::new(stage, names.0.into(), names.1.into()),
        }
    }

    /// How long new streams skip a failed primary (default 30 s).
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        if let Some(h) = Arc::get_mut(&mut self.health) {
            h.cooldown = cooldown;
        }
        self
    }
}

/// An STT that falls back to a second one.
pub type FallbackStt = Fallback<dyn Stt>;

impl FallbackStt {
    /// `names` are for the log: (primary, fallback).
    pub fn new(primary: Arc<dyn Stt>, fallback: Arc<dyn Stt>, names: (&str, &str)) -> Self {
        Self::for_stage("stt", primary, fallback, names)
    }
}

#[async_trait]
impl Stt for FallbackStt {
    fn sample_rate(&self) -> u32 {
        self.primary.sample_rate()
    }

    async fn stream(&self, job: &JobContext) -> Result<SttStream, StageError> {
        if !self.health.primary_up() {
            return self.fallback.stream(job).await;
        }
        let primary = match self.primary.stream(job).await {
            Ok(s) => s,
            Err(e) => {
                self.health.failed(&e);
                return self.fallback.stream(job).await;
            }
        };
        let (input_tx, input) = mpsc::channel(128);
        let (events, events_rx) = mpsc::channel(32);
        let task = SttTask {
            fallback: self.fallback.clone(),
            health: self.health.clone(),
            job: job.clone(),
            input,
            events,
            active: primary,
            on_fallback: false,
            kept: VecDeque::new(),
            kept_audio: Duration::ZERO,
            time: Duration::ZERO,
            base: Duration::ZERO,
            speaking: false,
            owed: 0,
            last_error: None,
        };
        // Owned by `input_tx`: ends when the session drops it.
        tokio::spawn(task.run());
        Ok(SttStream {
            input: input_tx,
            events: events_rx,
        })
    }
}

/// Input kept for a replay, with the stream time it was received at.
struct Kept {
    input: SttInput,
    /// Stream time at the start of this item.
    at: Duration,
}

struct SttTask {
    fallback: Arc<dyn Stt>,
    health: Arc<Health>,
    job: JobContext,
    /// Dropped by the session to end the stream.
    input: mpsc::Receiver<SttInput>,
    /// Dropped when this task ends.
    events: mpsc::Sender<SttEvent>,
    /// The stream in use; replacing it drops (ends) the old one.
    active: SttStream,
    on_fallback: bool,
    kept: VecDeque<Kept>,
    kept_audio: Duration,
    /// Stream time: audio received so far.
    time: Duration,
    /// Stream time at the active stream's time zero.
    base: Duration,
    speaking: bool,
    /// `SpeechEnded`s not answered by a `Final` or `Empty` yet.
    owed: u32,
    /// The primary's last reported failure: the cause logged at the switch.
    last_error: Option<StageError>,
}

impl SttTask {
    async fn run(mut self) {
        loop {
            tokio::select! {
                input = self.input.recv() => {
                    let Some(input) = input else { return };
                    self.on_input(input).await;
                }
                event = self.active.events.recv() => match event {
                    Some(event) => {
                        if !self.on_event(event).await {
                            return;
                        }
                    }
                    None if self.on_fallback => return,
                    None => {
                        if !self.switch().await {
                            return;
                        }
                    }
                },
                _ = self.events.closed() => return,
            }
        }
    }

    fn shift_in(&self, input: &SttInput) -> SttInput {
        match input {
            SttInput::Audio(f) => SttInput::Audio(f.clone()),
            SttInput::SpeechStarted(t) => SttInput::SpeechStarted(t.saturating_sub(self.base)),
            SttInput::SpeechEnded(t) => SttInput::SpeechEnded(t.saturating_sub(self.base)),
        }
    }

    async fn on_input(&mut self, input: SttInput) {
        match &input {
            SttInput::Audio(f) => {
                let d = if f.sample_rate == 0 {
                    Duration::ZERO
                } else {
                    duration_of(f.samples_per_channel(), f.sample_rate)
                };
                self.kept.push_back(Kept {
                    input: input.clone(),
                    at: self.time,
                });
                self.kept_audio += d;
                self.time += d;
            }
            SttInput::SpeechStarted(_) => {
                self.speaking = true;
                self.kept.push_back(Kept {
                    input: input.clone(),
                    at: self.time,
                });
            }
            SttInput::SpeechEnded(_) => {
                self.speaking = false;
                self.owed += 1;
                self.kept.push_back(Kept {
                    input: input.clone(),
                    at: self.time,
                });
            }
        }
        self.trim();
        let shifted = self.shift_in(&input);
        // A closed primary input shows up as its events closing.
        let _ = self.active.input.send(shifted).await;
    }

    /// Keeps the turn in progress (bounded), else the last second of audio.
    fn trim(&mut self) {
        let limit = if self.speaking || self.owed > 0 {
            TURN_KEEP
        } else {
            IDLE_KEEP
        };
        while self.kept_audio > limit {
            let Some(front) = self.kept.pop_front() else {
                break;
            };
            if let SttInput::Audio(f) = &front.input
                && f.sample_rate > 0
            {
                self.kept_audio = self
                    .kept_audio
                    .saturating_sub(duration_of(f.samples_per_channel(), f.sample_rate));
            }
        }
    }

    fn shift_out(&self, mut t: Transcript) -> Transcript {
        t.start += self.base;
        t.end += self.base;
        t
    }

    /// Forwards one event; false once the session stopped listening.
    async fn on_event(&mut self, event: SttEvent) -> bool {
        let event = match event {
            SttEvent::Final(t) => {
                self.answered();
                SttEvent::Final(self.shift_out(t))
            }
            SttEvent::Empty => {
                self.answered();
                SttEvent::Empty
            }
            SttEvent::Interim(t) => SttEvent::Interim(self.shift_out(t)),
            SttEvent::Error(e) => {
                if !self.on_fallback {
                    self.last_error = Some(e.clone());
                }
                SttEvent::Error(e)
            }
            other => other,
        };
        self.events.send(event).await.is_ok()
    }

    fn answered(&mut self) {
        if self.owed == 0 {
            return;
        }
        self.owed -= 1;
        if self.owed == 0 && !self.speaking {
            // The turn is transcribed: a replay must not answer it again.
            self.kept.retain(|k| matches!(k.input, SttInput::Audio(_)));
            self.trim();
        }
    }

    /// Replaces the failed primary by the fallback and replays the kept
    /// input into it. False if the fallback cannot open either.
    async fn switch(&mut self) -> bool {
        let error = self.last_error.take().unwrap_or_else(|| {
            StageError::new(agent::ErrorKind::Connection, "the primary STT stream ended")
        });
        self.health.failed(&error);
        let stream = match self.fallback.stream(&self.job).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.events.send(SttEvent::Error(e)).await;
                return false;
            }
        };
        self.active = stream;
        self.on_fallback = true;
        self.base = self.kept.front().map_or(self.time, |k| k.at);
        let replay: Vec<SttInput> = self.kept.iter().map(|k| self.shift_in(&k.input)).collect();
        for input in replay {
            if self.active.input.send(input).await.is_err() {
                break;
            }
        }
        true
    }
}

// ---------------------------------------------------------------- TTS

/// A TTS that falls back to a second one. Both should produce audio the
/// session can resample (any rate, mono).
pub type FallbackTts = Fallback<dyn Tts>;

impl FallbackTts {
    /// `names` are for the log: (primary, fallback).
    pub fn new(primary: Arc<dyn Tts>, fallback: Arc<dyn Tts>, names: (&str, &str)) -> Self {
        Self::for_stage("tts", primary, fallback, names)
    }
}

#[async_trait]
impl Tts for FallbackTts {
    fn sample_rate(&self) -> u32 {
        self.primary.sample_rate()
    }

    async fn stream(&self, job: &JobContext) -> Result<TtsStream, StageError> {
        if !self.health.primary_up() {
            return self.fallback.stream(job).await;
        }
        let primary = match self.primary.stream(job).await {
            Ok(s) => s,
            Err(e) => {
                self.health.failed(&e);
                return self.fallback.stream(job).await;
            }
        };
        let (input, input_rx) = mpsc::channel(32);
        let (output_tx, output) = mpsc::channel(16);
        let task = TtsTask {
            fallback: self.fallback.clone(),
            health: self.health.clone(),
            job: job.clone(),
            input: input_rx,
            output: output_tx,
            active_input: Some(primary.input),
            active_output: primary.output,
            on_fallback: false,
            pending: VecDeque::new(),
            delivered: 0,
        };
        // Owned by the stream's channels, like the engines' own tasks.
        tokio::spawn(task.run());
        Ok(TtsStream { input, output })
    }
}

struct TtsTask {
    fallback: Arc<dyn Tts>,
    health: Arc<Health>,
    job: JobContext,
    /// `None` once the session dropped its sender.
    input: mpsc::Receiver<TtsInput>,
    /// Dropped by the session to interrupt.
    output: mpsc::Sender<Result<TtsAudio, StageError>>,
    /// The active engine's input; `None` once ours closed (tells it to finish).
    active_input: Option<mpsc::Sender<TtsInput>>,
    active_output: mpsc::Receiver<Result<TtsAudio, StageError>>,
    on_fallback: bool,
    /// Segments sent to the primary and not fully spoken.
    pending: VecDeque<String>,
    /// Bytes of the front pending segment already spoken.
    delivered: usize,
}

impl TtsTask {
    async fn run(mut self) {
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                _ = self.output.closed() => return,
                segment = self.input.recv(), if input_open => match segment {
                    Some(TtsInput::Segment(text)) => {
                        if !self.on_fallback {
                            self.pending.push_back(text.clone());
                        }
                        if let Some(tx) = &self.active_input {
                            // A closed engine input shows up on its output.
                            let _ = tx.send(TtsInput::Segment(text)).await;
                        }
                    }
                    None => {
                        input_open = false;
                        self.active_input = None;
                    }
                },
                audio = self.active_output.recv() => match audio {
                    Some(Ok(audio)) => {
                        if !self.on_fallback {
                            self.spoke(&audio.text);
                        }
                        if self.output.send(Ok(audio)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if !self.on_fallback => {
                        if !self.switch(e, input_open).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = self.output.send(Err(e)).await;
                        return;
                    }
                    None if self.on_fallback => return,
                    None => {
                        if input_open || !self.pending.is_empty() {
                            let e = StageError::new(
                                agent::ErrorKind::Connection,
                                "the primary TTS stream ended before the reply was spoken",
                            );
                            if !self.switch(e, input_open).await {
                                return;
                            }
                        } else {
                            return;
                        }
                    }
                },
            }
        }
    }

    /// Moves the front of `pending` on by the text of one frame.
    fn spoke(&mut self, text: &str) {
        self.delivered += text.len();
        while let Some(front) = self.pending.front() {
            if self.delivered < front.len() {
                break;
            }
            self.delivered -= front.len();
            self.pending.pop_front();
        }
    }

    /// Speaks what the primary left unsaid on the fallback. False if the
    /// fallback cannot open.
    async fn switch(&mut self, error: StageError, input_open: bool) -> bool {
        self.health.failed(&error);
        let stream = match self.fallback.stream(&self.job).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.output.send(Err(e)).await;
                return false;
            }
        };
        self.on_fallback = true;
        let mut rest: Vec<String> = self.pending.drain(..).collect();
        if let Some(first) = rest.first_mut() {
            let cut = self.delivered.min(first.len());
            *first = first.get(cut..).unwrap_or_default().to_string();
        }
        self.delivered = 0;
        for text in rest.into_iter().filter(|t| !t.is_empty()) {
            if stream.input.send(TtsInput::Segment(text)).await.is_err() {
                break;
            }
        }
        self.active_output = stream.output;
        self.active_input = input_open.then_some(stream.input);
        true
    }
}
