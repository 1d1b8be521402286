//! The per-room entrypoint: the user's async function that gives each job's
//! agent and session data, run with the job's context; its error, panic or
//! hang fails that job only.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use agent::session::SessionSetup;
use agent::stage::JobContext;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::error::JobError;

/// An error an entrypoint returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once per job with the job's context (room, metadata, the linked
/// user) and gives the session's agent and data.
pub type Entrypoint =
    Arc<dyn Fn(JobContext) -> BoxFuture<'static, Result<SessionSetup, BoxError>> + Send + Sync>;

/// An [`Entrypoint`] from an async function.
pub fn entrypoint<F, Fut, S>(f: F) -> Entrypoint
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, BoxError>> + Send + 'static,
    S: Into<SessionSetup>,
{
    Arc::new(move |job| {
        let fut = f(job);
        Box::pin(async move { fut.await.map(Into::into) })
    })
}

/// An [`Entrypoint`] that gives every job the same agent.
pub fn fixed(setup: SessionSetup) -> Entrypoint {
    Arc::new(move |_job| {
        let setup = setup.clone();
        Box::pin(async move { Ok(setup) })
    })
}

/// Runs the entrypoint; its failure, panic or hang fails this job only.
pub(super) async fn run_entrypoint(
    entrypoint: &Entrypoint,
    context: JobContext,
) -> Result<SessionSetup, JobError> {
    let call = AssertUnwindSafe(entrypoint(context)).catch_unwind();
    match tokio::time::timeout(ENTRYPOINT_TIMEOUT, call).await {
        Err(_) => Err(JobError::EntrypointTimeout(ENTRYPOINT_TIMEOUT)),
        Ok(Err(_panic)) => {
            tracing::error!("the entrypoint panicked");
            Err(JobError::EntrypointPanicked)
        }
        Ok(Ok(Err(e))) => Err(JobError::Entrypoint(error_chain(e.as_ref()))),
        Ok(Ok(Ok(setup))) => Ok(setup),
    }
}

/// The longest an entrypoint may take to give its agent.
pub const ENTRYPOINT_TIMEOUT: Duration = Duration::from_secs(30);

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
