//! The user side: [`Human`] runs a script of `tests/python/` with the real
//! LiveKit Python SDK from the venv `tests/setup.sh` makes, and reads its
//! one-JSON-object-a-line output; the helpers below read what it saw.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{HarnessError, cache_dir};

/// The venv's Python.
pub fn python() -> Result<PathBuf, HarnessError> {
    let p = cache_dir().join("venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(p.display().to_string()))
    }
}

/// The human side: `tests/python/human.py` with the real LiveKit Python SDK.
pub struct Human {
    /// The script; dropping it kills it (`kill_on_drop`).
    child: Child,
    /// Its stdout's JSON lines with when each was read, from a task that
    /// ends when the script's stdout closes or this receiver drops.
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    /// Everything seen so far (for failure messages).
    pub seen: Vec<serde_json::Value>,
    /// When each of `seen` arrived (read off the script's stdout as it came).
    pub seen_at: Vec<Instant>,
}

impl Human {
    /// Start the script with these extra arguments.
    pub async fn spawn(url: &str, token: &str, args: &[&str]) -> Result<Self, HarnessError> {
        let mut all = vec!["--url", url, "--token", token];
        all.extend_from_slice(args);
        Self::spawn_script("human.py", &all).await
    }

    /// Start `python/<script>` with these arguments; it speaks the same
    /// one-JSON-object-a-line protocol.
    pub async fn spawn_script(script: &str, args: &[&str]) -> Result<Self, HarnessError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let mut child = Command::new(python()?)
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Other("no stdout".into()))?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send((Instant::now(), v)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines: rx,
            seen: Vec::new(),
            seen_at: Vec::new(),
        })
    }

    /// The script's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for an agent (a participant whose identity starts with `agent-`)
    /// to be in the room; returns its `participant` event. Other participants'
    /// events are kept in `seen`.
    pub async fn wait_agent(
        &mut self,
        timeout: Duration,
    ) -> Result<serde_json::Value, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.wait_event("participant", left).await?;
            if is_agent(&v) {
                return Ok(v);
            }
        }
    }

    /// Wait for the next line whose `"event"` is `event` (earlier lines are kept in `seen`).
    pub async fn wait_event(
        &mut self,
        event: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (at, v) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| {
                    HarnessError::Timeout(format!("python event {event:?}; seen: {:?}", self.seen))
                })?
                .ok_or_else(|| {
                    HarnessError::Other(format!(
                        "python exited before {event:?}; seen: {:?}",
                        self.seen
                    ))
                })?;
            self.seen.push(v.clone());
            self.seen_at.push(at);
            if v.get("event").and_then(|e| e.as_str()) == Some("error") {
                return Err(HarnessError::Other(format!("python error: {v}")));
            }
            if v.get("event").and_then(|e| e.as_str()) == Some(event) {
                return Ok(v);
            }
        }
    }

    /// When the first event named `event` arrived, if it did.
    pub fn arrival(&self, event: &str) -> Option<Instant> {
        self.seen
            .iter()
            .position(|v| v["event"] == event)
            .and_then(|i| self.seen_at.get(i).copied())
    }

    /// Kill the script.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Whether a Python event is about an agent participant (identity `agent-…`).
pub fn is_agent(event: &serde_json::Value) -> bool {
    event["identity"]
        .as_str()
        .is_some_and(|i| i.starts_with("agent-"))
}

/// The texts of the final `lk.transcription` streams a [`Human`] received that
/// transcribe the track `track_sid`, in arrival order.
pub fn final_transcriptions(seen: &[serde_json::Value], track_sid: &str) -> Vec<String> {
    seen.iter()
        .filter(|v| v["event"] == "text" && v["topic"] == "lk.transcription")
        .filter(|v| v["attributes"]["lk.transcription_final"] == "true")
        .filter(|v| v["attributes"]["lk.transcribed_track_id"] == track_sid)
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect()
}

/// The sid of the first audio track the [`Human`] subscribed to from a
/// participant whose identity starts with `agent-`.
pub fn agent_track_sid(seen: &[serde_json::Value]) -> Option<String> {
    seen.iter()
        .filter(|v| v["event"] == "track")
        .find(|v| {
            v["identity"]
                .as_str()
                .is_some_and(|i| i.starts_with("agent-"))
        })
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
}
