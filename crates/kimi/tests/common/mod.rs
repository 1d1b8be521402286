//! What the kimi test binaries share besides the stand-in gateway
//! (`e2e_tests::inference::chat`): a `KimiLlm` reply read to its end.

use std::time::Duration;

use agent::{Llm, LlmChunk, LlmRequest, StageError};
use futures::StreamExt;
use kimi::KimiLlm;

/// Collects a whole reply; fails the test if it takes more than 10 s (a hang).
pub async fn collect(
    llm: &KimiLlm,
    req: LlmRequest,
) -> Result<Vec<Result<LlmChunk, StageError>>, StageError> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = llm.chat(req).await?;
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            out.push(item);
        }
        Ok(out)
    })
    .await
    .expect("the reply hung")
}
