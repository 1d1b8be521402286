//! One whisper STT stream: a task that owns the audio buffer and the segment
//! state, cut by the VAD hints, and at most one decode in flight on a
//! blocking thread.
//!
//! - `SpeechStarted(t)`: an utterance begins at `t − pre_padding`;
//!   `StartOfSpeech` is sent.
//! - while it lasts: an interim decode every `interim_interval` of new speech,
//!   only when a decode slot is free at once and no final waits anywhere in
//!   the process.
//! - `SpeechEnded(t)`: the utterance up to `t + post_padding` is queued for a
//!   final decode (a running interim is cancelled); one `Final` or `Empty`
//!   comes out per utterance, in order.
//! - speech longer than `max_segment` is finalized in windows of that length.
//!
//! Decodes run under a [`DecodeLimiter`] shared by the whole process (one
//! permit per core), so sessions never wait on each other on the async runtime,
//! and never oversubscribe the CPU.
//!
//! The task ends when the input sender drops (or the event receiver does); a
//! decode still running then is told to stop and its result is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent::audio::{duration_of, samples_for};
use agent::{FrameConverter, StageError, SttEvent, SttInput, SttStream, Transcript};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::mel::SAMPLE_RATE;
use super::{MAX_AUDIO, Transcription, WhisperModel, WhisperOptions, engine_err};
use crate::error::SpeechError;

/// Bounds the number of decodes running at once across all streams using it.
/// Finals wait for a permit; interims only take one that is free right away
/// and only while no final is waiting, so finals are never delayed by more
/// than the decodes already running.
#[derive(Debug)]
pub struct DecodeLimiter {
    permits: Arc<Semaphore>,
    finals_waiting: AtomicUsize,
}

impl DecodeLimiter {
    pub fn new(concurrent_decodes: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(concurrent_decodes.max(1))),
            finals_waiting: AtomicUsize::new(0),
        })
    }

    /// The process-wide limiter: one decode per available core.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<DecodeLimiter>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                DecodeLimiter::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
            })
            .clone()
    }

    async fn acquire_final(self: Arc<Self>) -> Result<OwnedSemaphorePermit, SpeechError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.finals_waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.finals_waiting);
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| engine_err("decode limiter closed"))
    }

    fn try_acquire_interim(&self) -> Option<OwnedSemaphorePermit> {
        if self.finals_waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Opens a stream: spawns its task, owned by the returned input sender.
pub(super) fn spawn(
    model: Arc<WhisperModel>,
    limiter: Arc<DecodeLimiter>,
    options: WhisperOptions,
) -> SttStream {
    let (input_tx, input) = mpsc::channel(128);
    let (events, events_rx) = mpsc::channel(32);
    let pre = samples_for(options.pre_padding, SAMPLE_RATE as u32) as u64;
    let task = StreamTask {
        max_segment: samples_for(options.max_segment.min(MAX_AUDIO), SAMPLE_RATE as u32).max(1)
            as u64,
        // VAD hints name past instants: keep enough history for them.
        history: pre + samples_for(Duration::from_secs(2), SAMPLE_RATE as u32) as u64,
        options,
        model,
        limiter,
        input,
        events,
        converter: FrameConverter::new(SAMPLE_RATE as u32),
        buffer: Vec::new(),
        base: 0,
        received: 0,
        speech: None,
        queue: VecDeque::new(),
        running: None,
    };
    tokio::spawn(task.run());
    SttStream {
        input: input_tx,
        events: events_rx,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Interim,
    Final,
}

/// The utterance being heard (absolute sample positions).
struct Speech {
    start: u64,
    next_interim: u64,
}

/// Audio cut out for a decode.
struct Job {
    kind: Kind,
    start: u64,
    end: u64,
    pcm: Vec<f32>,
}

type DecodeFuture =
    Pin<Box<dyn Future<Output = Result<Option<Transcription>, SpeechError>> + Send>>;

/// The decode in flight. Dropping it tells the blocking thread to stop.
struct Running {
    kind: Kind,
    start: u64,
    end: u64,
    cancel: Arc<AtomicBool>,
    future: DecodeFuture,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

struct StreamTask {
    options: WhisperOptions,
    model: Arc<WhisperModel>,
    limiter: Arc<DecodeLimiter>,
    /// Dropped by the session to end the stream.
    input: mpsc::Receiver<SttInput>,
    /// Dropping it (when this task ends) closes the session's receiver.
    events: mpsc::Sender<SttEvent>,
    converter: FrameConverter,
    /// Samples from absolute position `base` to `received`.
    buffer: Vec<f32>,
    base: u64,
    received: u64,
    max_segment: u64,
    /// Samples kept before `received` while no one speaks.
    history: u64,
    speech: Option<Speech>,
    /// Finals waiting for the decode in flight.
    queue: VecDeque<Job>,
    running: Option<Running>,
}

async fn finished(running: &mut Option<Running>) -> Result<Option<Transcription>, SpeechError> {
    match running {
        Some(r) => r.future.as_mut().await,
        None => std::future::pending().await,
    }
}

impl StreamTask {
    async fn run(mut self) {
        loop {
            tokio::select! {
                result = finished(&mut self.running) => {
                    if !self.on_decoded(result).await {
                        return;
                    }
                }
                input = self.input.recv() => {
                    let Some(input) = input else { return };
                    if !self.on_input(input).await {
                        return;
                    }
                }
            }
            self.start_next();
        }
    }

    fn to_samples(&self, t: Duration) -> u64 {
        samples_for(t, SAMPLE_RATE as u32) as u64
    }

    fn time(samples: u64) -> Duration {
        duration_of(samples as usize, SAMPLE_RATE as u32)
    }

    /// Sends an event; false once the session stopped listening.
    async fn emit(&mut self, event: SttEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    async fn on_input(&mut self, input: SttInput) -> bool {
        match input {
            SttInput::Audio(frame) => {
                if frame.sample_rate == 0 || frame.channels == 0 {
                    // Not audio we can place in time; the resampler cannot
                    // take a zero rate.
                    return true;
                }
                let frame = self.converter.convert(&frame);
                self.buffer
                    .extend(frame.samples.iter().map(|&s| s as f32 / 32768.0));
                self.received += frame.samples.len() as u64;
                self.cut_long_speech();
                self.trim();
                true
            }
            SttInput::SpeechStarted(t) => {
                if self.speech.is_some() {
                    return true;
                }
                let pre = self.to_samples(self.options.pre_padding);
                let start = self
                    .to_samples(t)
                    .saturating_sub(pre)
                    .clamp(self.base, self.received);
                let interval = self
                    .options
                    .interim_interval
                    .map_or(u64::MAX, |d| self.to_samples(d));
                self.speech = Some(Speech {
                    start,
                    next_interim: start.saturating_add(interval),
                });
                self.emit(SttEvent::StartOfSpeech).await
            }
            SttInput::SpeechEnded(t) => {
                let Some(speech) = self.speech.take() else {
                    // An end without a start: nothing to transcribe.
                    return self.emit(SttEvent::Empty).await;
                };
                let post = self.to_samples(self.options.post_padding);
                let end = self.to_samples(t).saturating_add(post).min(self.received);
                self.queue_final(speech.start, end);
                if let Some(r) = &self.running
                    && r.kind == Kind::Interim
                {
                    r.cancel.store(true, Ordering::Relaxed);
                }
                true
            }
        }
    }

    fn queue_final(&mut self, start: u64, end: u64) {
        let start = start.max(self.base);
        let end = end.max(start);
        let pcm = self.slice(start, end);
        self.queue.push_back(Job {
            kind: Kind::Final,
            start,
            end,
            pcm,
        });
    }

    fn slice(&self, start: u64, end: u64) -> Vec<f32> {
        let from = (start.saturating_sub(self.base) as usize).min(self.buffer.len());
        let to = (end.saturating_sub(self.base) as usize).clamp(from, self.buffer.len());
        self.buffer[from..to].to_vec()
    }

    /// Finalizes a window of speech that has gone on too long.
    fn cut_long_speech(&mut self) {
        let Some(speech) = &self.speech else { return };
        if self.received - speech.start < self.max_segment {
            return;
        }
        let (start, cut) = (speech.start, speech.start + self.max_segment);
        self.queue_final(start, cut);
        if let Some(s) = &mut self.speech {
            s.start = cut;
            s.next_interim = s.next_interim.max(cut);
        }
    }

    /// Drops audio no segment can need any more.
    fn trim(&mut self) {
        let keep_from = match &self.speech {
            Some(s) => s.start,
            None => self.received.saturating_sub(self.history),
        };
        let excess = keep_from.saturating_sub(self.base) as usize;
        // Amortized: drain in chunks of at least a second.
        if excess >= SAMPLE_RATE {
            let excess = excess.min(self.buffer.len());
            self.buffer.drain(..excess);
            self.base += excess as u64;
        }
    }

    /// Starts the next final, or an interim when one is due and a slot is free.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        if let Some(job) = self.queue.pop_front() {
            let limiter = self.limiter.clone();
            self.start(job, PermitSource::Wait(limiter));
            return;
        }
        let Some(speech) = &mut self.speech else {
            return;
        };
        let Some(interval) = self.options.interim_interval else {
            return;
        };
        if self.received < speech.next_interim {
            return;
        }
        let Some(permit) = self.limiter.try_acquire_interim() else {
            return;
        };
        speech.next_interim = self.received + samples_for(interval, SAMPLE_RATE as u32) as u64;
        let (start, end) = (speech.start, self.received);
        let job = Job {
            kind: Kind::Interim,
            start,
            end,
            pcm: self.slice(start, end),
        };
        self.start(job, PermitSource::Held(permit));
    }

    fn start(&mut self, job: Job, permit: PermitSource) {
        let cancel = Arc::new(AtomicBool::new(false));
        let model = self.model.clone();
        let flag = cancel.clone();
        let Job {
            kind,
            start,
            end,
            pcm,
        } = job;
        let future = Box::pin(async move {
            let permit = match permit {
                PermitSource::Held(p) => p,
                PermitSource::Wait(limiter) => limiter.acquire_final().await?,
            };
            if pcm.is_empty() {
                return Ok(None);
            }
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                model.transcribe_cancellable(&pcm, &flag)
            })
            .await
            .map_err(|e| engine_err(format!("decode thread failed: {e}")))?
        });
        self.running = Some(Running {
            kind,
            start,
            end,
            cancel,
            future,
        });
    }

    async fn on_decoded(&mut self, result: Result<Option<Transcription>, SpeechError>) -> bool {
        let Some(running) = self.running.take() else {
            return true;
        };
        let transcript = |t: &Transcription| Transcript {
            text: t.text.clone(),
            language: Some("en".into()),
            start: Self::time(running.start),
            end: Self::time(running.end),
            confidence: t.confidence(),
        };
        match (running.kind, result) {
            (Kind::Interim, Ok(Some(t))) => {
                let current = self.speech.is_some() && self.queue.is_empty();
                if current && t.has_speech() && !running.cancel.load(Ordering::Relaxed) {
                    return self.emit(SttEvent::Interim(transcript(&t))).await;
                }
                true
            }
            (Kind::Interim, Ok(None)) => true,
            (Kind::Interim, Err(e)) => self.emit(SttEvent::Error(StageError::from(e))).await,
            (Kind::Final, Ok(Some(t))) if t.has_speech() => {
                self.emit(SttEvent::Final(transcript(&t))).await
            }
            (Kind::Final, Ok(_)) => self.emit(SttEvent::Empty).await,
            (Kind::Final, Err(e)) => {
                // Still close the utterance so the session is not left waiting.
                self.emit(SttEvent::Error(StageError::from(e))).await
                    && self.emit(SttEvent::Empty).await
            }
        }
    }
}

enum PermitSource {
    Held(OwnedSemaphorePermit),
    Wait(Arc<DecodeLimiter>),
}
