//! [`TcpProxy`]: a loopback TCP proxy, to cut connections without touching
//! the server behind it.

use crate::HarnessError;

/// A loopback TCP proxy in front of the server's signal port, to cut signal
/// connections without touching the server (media does not go through it).
pub struct TcpProxy {
    /// Port to connect to instead of the server's.
    pub port: u16,
    /// The accept loop; aborted on drop.
    accept: tokio::task::JoinHandle<()>,
    /// One forwarding task per open connection; `sever` and drop abort them.
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Forward `127.0.0.1:<new port>` to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Result<Self, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut v) = c.lock() {
                    v.push(task);
                }
            }
        });
        Ok(Self {
            port,
            accept,
            conns,
        })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Drop every connection open now (new ones are still accepted).
    pub fn sever(&self) {
        if let Ok(mut v) = self.conns.lock() {
            for t in v.drain(..) {
                t.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}
