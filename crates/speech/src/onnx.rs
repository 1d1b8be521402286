//! The ONNX runtime, loaded once per process from the model cache, and a small
//! pool of sessions for models that several voice sessions share.
//!
//! `ort` is built with `load-dynamic`: nothing is linked at build time, and
//! `libonnxruntime.so` comes from the cache ([`ModelFile::OnnxRuntime`]). The
//! first successful [`environment`] call loads it; later calls reuse it (the
//! library cannot be swapped within a process). A failed load is not
//! remembered, so a later call after `voice-agent download-files` can succeed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::SpeechError;
use crate::models::{ModelCache, ModelFile};

/// The process's ONNX environment, once loaded.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ONNX runtime environment, loading `libonnxruntime.so` from `cache` on
/// first use.
pub fn environment(cache: &ModelCache) -> Result<Environment, SpeechError> {
    let mut env = lock(&ENVIRONMENT);
    if let Some(env) = env.as_ref() {
        return Ok(env.clone());
    }
    let lib = cache.file(ModelFile::OnnxRuntime)?;
    let builder = ort::init_from(&lib).map_err(|e| SpeechError::InvalidModel {
        path: lib.clone(),
        reason: format!("cannot load the ONNX runtime library: {e}"),
    })?;
    let built = builder
        .with_name("voice-agent")
        .with_telemetry(false)
        .build()
        .map_err(|e| ort_error("ONNX runtime", e))?;
    *env = Some(built.clone());
    Ok(built)
}

pub(crate) fn ort_error(engine: &'static str, e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Engine {
        engine,
        reason: e.to_string(),
    }
}

/// A session on one intra-op thread: each voice session's work stays on the
/// core it runs on, and parallelism comes from running sessions side by side.
pub(crate) fn load_session(
    env: &Environment,
    engine: &'static str,
    model: &[u8],
) -> Result<Session, SpeechError> {
    Session::builder(env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
        .and_then(|b| Ok(b.with_intra_threads(1)?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .and_then(|mut b| b.commit_from_memory(model))
        .map_err(|e| ort_error(engine, e))
}

/// Reads a model file from the cache into memory.
pub(crate) fn read_model(cache: &ModelCache, f: ModelFile) -> Result<Arc<[u8]>, SpeechError> {
    let path = cache.file(f)?;
    std::fs::read(&path)
        .map(Arc::from)
        .map_err(|source| SpeechError::Io {
            context: format!("reading {}", path.display()),
            source,
        })
}

/// Sessions of one model shared by many voice sessions. `Session::run` needs
/// `&mut`, so a session serves one inference at a time; the pool hands out
/// idle ones and loads another when none is idle, up to `max` at once (one
/// per core: more would only make them fight over the cores).
pub(crate) struct SessionPool {
    engine: &'static str,
    env: Environment,
    model: Arc<[u8]>,
    idle: Mutex<Vec<Session>>,
    /// Bounds the sessions in use at once.
    permits: Arc<Semaphore>,
}

/// A session taken from a pool; goes back on drop.
pub(crate) struct PooledSession {
    pool: Arc<SessionPool>,
    session: Option<Session>,
    _permit: OwnedSemaphorePermit,
}

impl SessionPool {
    /// Loads one session now (so a broken model fails at start, not at the
    /// first turn) and allows up to `max` at once.
    pub(crate) fn new(
        engine: &'static str,
        env: Environment,
        model: Arc<[u8]>,
        max: usize,
    ) -> Result<Arc<Self>, SpeechError> {
        let first = load_session(&env, engine, &model)?;
        let max = max.max(1);
        let pool = Arc::new(Self {
            engine,
            env,
            model,
            idle: Mutex::new(vec![first]),
            permits: Arc::new(Semaphore::new(max)),
        });
        if max > 1 {
            // Load the other sessions in the background, so the first time
            // two sessions are busy at once nobody waits for a model load
            // (seconds for Piper). The thread ends when they are loaded, or
            // at once if the pool is gone.
            let weak = Arc::downgrade(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("{engine}-preload"))
                .spawn(move || {
                    for _ in 1..max {
                        let Some(pool) = weak.upgrade() else { return };
                        match load_session(&pool.env, pool.engine, &pool.model) {
                            Ok(s) => lock(&pool.idle).push(s),
                            Err(e) => {
                                tracing::warn!(error = %e, "preloading a session failed");
                                return;
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the session preload thread");
            }
        }
        Ok(pool)
    }

    /// Waits for a free slot (async: never blocks the runtime). Loading a new
    /// session, if needed, happens in [`PooledSession::session`], which must
    /// be called off the runtime.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PooledSession, SpeechError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ort_error(self.engine, e))?;
        let session = lock(&self.idle).pop();
        Ok(PooledSession {
            pool: self.clone(),
            session,
            _permit: permit,
        })
    }

    /// Blocking variant of [`acquire`](Self::acquire) for dedicated threads.
    pub(crate) fn acquire_blocking(self: &Arc<Self>) -> Result<PooledSession, SpeechError> {
        let permit = loop {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => break p,
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(ort_error(self.engine, "session pool closed"));
                }
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        };
        let session = lock(&self.idle).pop();
        Ok(PooledSession {
            pool: self.clone(),
            session,
            _permit: permit,
        })
    }
}

impl PooledSession {
    /// The session, loading one if the pool had none idle. Blocking.
    pub(crate) fn session(&mut self) -> Result<&mut Session, SpeechError> {
        if self.session.is_none() {
            let s = load_session(&self.pool.env, self.pool.engine, &self.pool.model)?;
            self.session = Some(s);
        }
        self.session
            .as_mut()
            .ok_or_else(|| ort_error(self.pool.engine, "no session"))
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            lock(&self.pool.idle).push(s);
        }
    }
}
