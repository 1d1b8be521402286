//! The real LiveKit server: [`LiveKitServer`] runs the `livekit-server` that
//! `tests/setup.sh` builds, on free loopback ports with the dev keys; access
//! tokens signed with those keys ([`token`], [`token_dispatching`]); explicit
//! dispatch through the real AgentDispatch API ([`create_dispatch`]).

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};
use tokio::process::{Child, Command};

use crate::human::python;
use crate::{HarnessError, cache_dir};

/// Version of the server `tests/setup.sh` builds.
pub const LIVEKIT_SERVER_VERSION: &str = "v1.13.5";
/// Dev API key of `livekit-server --dev`.
pub const API_KEY: &str = "devkey";
/// Dev API secret of `livekit-server --dev`.
pub const API_SECRET: &str = "secret";

/// The cached server binary.
pub fn server_bin() -> Result<PathBuf, HarnessError> {
    let p = cache_dir().join(format!("bin/livekit-server-{LIVEKIT_SERVER_VERSION}"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Missing(p.display().to_string()))
    }
}

/// A free loopback TCP port (and, for `udp`, free for UDP too).
pub fn free_port(udp: bool) -> Result<u16, HarnessError> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !udp || UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(HarnessError::Other("no free port".into()))
}

/// A running `livekit-server --dev` on loopback.
pub struct LiveKitServer {
    /// The server process while it runs: `kill` takes it, dropping it kills
    /// it (`kill_on_drop`).
    child: Option<Child>,
    /// HTTP/WebSocket port.
    pub port: u16,
    /// ICE/TCP port.
    pub tcp_port: u16,
    /// ICE/UDP port (single port mux).
    pub udp_port: u16,
    /// Its config and log (`server.log`), kept for failure messages.
    dir: PathBuf,
}

impl LiveKitServer {
    /// Start on free ports and wait until it accepts connections (logging
    /// warnings and errors).
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_logging("warn").await
    }

    /// [`LiveKitServer::start`] with this log level (`info` logs job status
    /// updates, among much else).
    pub async fn start_logging(level: &str) -> Result<Self, HarnessError> {
        // Say that the server is missing before making anything.
        server_bin()?;
        let port = free_port(false)?;
        let tcp_port = free_port(false)?;
        let udp_port = free_port(true)?;
        let dir = std::env::temp_dir().join(format!("lk-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "port: {port}\nbind_addresses: [\"127.0.0.1\"]\nrtc:\n  tcp_port: {tcp_port}\n  udp_port: {udp_port}\n  node_ip: 127.0.0.1\n  use_external_ip: false\n  enable_loopback_candidate: true\nlogging:\n  level: {level}\n"
        );
        std::fs::write(dir.join("config.yaml"), config)?;
        let mut s = Self {
            child: None,
            port,
            tcp_port,
            udp_port,
            dir,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let bin = server_bin()?;
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--config")
            .arg(self.dir.join("config.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "livekit-server did not listen on {} (log: {})",
                    self.port,
                    self.dir.join("server.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait for it to exit.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Start it again on the same ports.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await?;
        self.spawn().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// An access token for `identity` in `room`, valid for an hour, allowed to publish,
/// subscribe, send data and update its own attributes.
pub fn token(identity: &str, room: &str) -> Result<String, HarnessError> {
    sign(grant(identity, room))
}

/// Like [`token`], with the room configuration asking for the agent `agent_name`
/// to be dispatched when the room is created (explicit dispatch through a token).
pub fn token_dispatching(
    identity: &str,
    room: &str,
    agent_name: &str,
) -> Result<String, HarnessError> {
    sign(
        grant(identity, room).with_room_config(livekit_protocol::RoomConfiguration {
            agents: vec![livekit_protocol::RoomAgentDispatch {
                agent_name: agent_name.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

/// The grants of [`token`], signed with the dev keys once built.
fn grant(identity: &str, room: &str) -> AccessToken {
    AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_ttl(Duration::from_secs(3600))
        .with_grants(VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            ..Default::default()
        })
}

fn sign(token: AccessToken) -> Result<String, HarnessError> {
    token
        .to_jwt()
        .map_err(|e| HarnessError::Other(format!("token: {e}")))
}

/// Creates an explicit dispatch of `agent_name` into `room` through the real
/// AgentDispatch API (the Python `livekit-api` client, `python/dispatch.py`).
/// Returns the dispatch id.
pub async fn create_dispatch(
    server: &LiveKitServer,
    room: &str,
    agent_name: &str,
) -> Result<String, HarnessError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dispatch.py");
    let out = Command::new(python()?)
        .arg(script)
        .args([server.url().as_str(), API_KEY, API_SECRET, room, agent_name])
        .stdin(Stdio::null())
        .output()
        .await?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
        HarnessError::Other(format!(
            "dispatch.py: {e}: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    match (v["event"].as_str(), v["id"].as_str()) {
        (Some("dispatched"), Some(id)) if out.status.success() => Ok(id.to_owned()),
        _ => Err(HarnessError::Other(format!("dispatch failed: {v}"))),
    }
}
