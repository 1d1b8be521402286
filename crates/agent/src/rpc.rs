//! Remote calls a session answers: methods the user's frontend calls on the
//! agent by name (LiveKit RPC), each an async function of the caller and the
//! payload. The worker registers them with the room; a method no one
//! registered gets the protocol's "unsupported method" error at once.
//!
//! ```
//! use agent::{RpcError, RpcMethods};
//!
//! let mut methods = RpcMethods::new();
//! methods.add("get_booking", |ctx, call| async move {
//!     let _ = ctx.session().say("Let me read it out.", true).await;
//!     if call.payload.is_empty() {
//!         return Err(RpcError::application("which booking?"));
//!     }
//!     Ok(format!("{{\"booking\": {:?}}}", call.payload))
//! });
//! assert_eq!(methods.names(), vec!["get_booking"]);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::tool::SessionContext;

/// One call of a method.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcCall {
    /// Who called (their participant identity).
    pub caller: String,
    pub method: String,
    pub payload: String,
}

impl RpcCall {
    pub fn new(
        caller: impl Into<String>,
        method: impl Into<String>,
        payload: impl Into<String>,
    ) -> Self {
        Self {
            caller: caller.into(),
            method: method.into(),
            payload: payload.into(),
        }
    }
}

/// An RPC failure as the caller sees it: LiveKit's code, message and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: u32,
    pub message: String,
    pub data: String,
}

impl RpcError {
    /// LiveKit's code for a method that is not registered.
    pub const UNSUPPORTED_METHOD: u32 = 1400;
    /// LiveKit's code for a handler that failed.
    pub const APPLICATION_ERROR: u32 = 1500;
    /// LiveKit's code for a response that came too late.
    pub const RESPONSE_TIMEOUT: u32 = 1502;

    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: String::new(),
        }
    }

    /// A handler's own failure (code 1500).
    pub fn application(message: impl Into<String>) -> Self {
        Self::new(Self::APPLICATION_ERROR, message)
    }

    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.data = data.into();
        self
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// A method's handler.
pub type RpcHandler = Arc<
    dyn Fn(SessionContext, RpcCall) -> BoxFuture<'static, Result<String, RpcError>> + Send + Sync,
>;

/// The methods a session answers, by name.
#[derive(Clone, Default)]
pub struct RpcMethods {
    methods: BTreeMap<String, RpcHandler>,
}

impl RpcMethods {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) method `name`.
    pub fn add<F, Fut>(&mut self, name: impl Into<String>, handler: F)
    where
        F: Fn(SessionContext, RpcCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, RpcError>> + Send + 'static,
    {
        self.methods.insert(
            name.into(),
            Arc::new(move |ctx, call| Box::pin(handler(ctx, call))),
        );
    }

    pub fn get(&self, name: &str) -> Option<&RpcHandler> {
        self.methods.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.methods.keys().map(String::as_str).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

impl fmt::Debug for RpcMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.methods.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionHandle;
    use crate::stage::JobContext;
    use crate::tool::Userdata;

    #[tokio::test]
    async fn a_registered_method_answers_with_its_result_or_its_error() {
        let mut methods = RpcMethods::new();
        methods.add("echo", |_ctx, call| async move {
            match call.payload.as_str() {
                "" => Err(RpcError::application("empty").with_data("x")),
                p => Ok(format!("{} said {p}", call.caller)),
            }
        });
        let ctx = SessionContext::new(
            SessionHandle::detached(),
            Userdata::default(),
            Arc::new(JobContext::default()),
        );
        let echo = methods.get("echo").expect("registered");
        let ok = echo(ctx.clone(), RpcCall::new("ana", "echo", "hi")).await;
        assert_eq!(ok, Ok("ana said hi".to_string()));
        let err = echo(ctx, RpcCall::new("ana", "echo", "")).await;
        assert_eq!(
            err,
            Err(RpcError {
                code: 1500,
                message: "empty".into(),
                data: "x".into()
            })
        );
        assert!(methods.get("nope").is_none());
    }
}
