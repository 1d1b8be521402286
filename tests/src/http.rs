//! Bare HTTP/1.1, as much as the small stand-ins and health checks need:
//! one request read off a socket ([`read_request`]), one `GET` sent
//! ([`http_get`]). The stand-ins that must speak HTTP the way real servers
//! do (chunked bodies, keep-alive) use hyper instead (`inference::chat`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::HarnessError;

/// One request read by [`read_request`].
#[derive(Clone, Debug)]
pub struct Request {
    /// The request line and the headers as sent, up to the blank line.
    pub head: String,
    /// The `content-length` bytes after the head.
    pub body: Vec<u8>,
}

impl Request {
    /// The request target (`/v1/chat/completions`), or "" if the request
    /// line has none.
    pub fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    /// The value of the first header named `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Reads one request: the head up to the blank line, then `content-length`
/// bytes of body (none without the header). `None` when the peer closes (or
/// the read fails) before the request is whole.
pub async fn read_request(sock: &mut (impl AsyncRead + Unpin)) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request = Request {
        head,
        body: Vec::new(),
    };
    let len: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    request.body = buf[head_end..head_end + len].to_vec();
    Some(request)
}

/// `GET path` on `127.0.0.1:port`: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), HarnessError> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| HarnessError::Timeout(format!("GET {path}")))??;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HarnessError::Other(format!("not HTTP: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
