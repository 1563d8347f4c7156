//! The guards every handler runs under: a panic becomes a logged error (and, for a request, an
//! internal-error answer), never a dead server; and the mapping of the scheduler's typed errors
//! to LSP error codes.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};

use crate::scheduler::ExpandError;

/// LSP's `RequestFailed`: the request was valid but the server could not carry it out.
const REQUEST_FAILED: i64 = -32803;

pub(super) fn invalid_params(message: impl Into<String>) -> Error {
    Error { code: ErrorCode::InvalidParams, message: message.into().into(), data: None }
}

/// Runs a notification handler, turning a panic into a logged error (a notification has no
/// answer to carry it; the server goes on).
pub(super) async fn guarded_notification(method: &str, body: impl Future<Output = ()>) {
    if let Err(panic) = AssertUnwindSafe(body).catch_unwind().await {
        let message = panic_message(panic.as_ref());
        tracing::error!(method, %message, "notification handler panicked");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Runs a handler body, turning a panic into a logged internal error.
pub(super) async fn guarded<T>(method: &str, body: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(body).catch_unwind().await {
        Ok(res) => res,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            tracing::error!(method, %message, "handler panicked");
            Err(Error {
                code: ErrorCode::InternalError,
                message: format!("internal error in {method}: {message}").into(),
                data: None,
            })
        }
    }
}


/// An expansion's failure as the LSP error a client can act on: `ContentModified` for a
/// document that moved on (ask again), `InvalidParams` for lines that are not there,
/// `RequestFailed` for the rest.
pub(super) fn expand_error(err: ExpandError) -> Error {
    let code = match &err {
        ExpandError::DocumentChanged => ErrorCode::ContentModified,
        ExpandError::LinesOutOfRange { .. } | ExpandError::NothingToExpand | ExpandError::Plan(_) => ErrorCode::InvalidParams,
        ExpandError::ModelNotReady | ExpandError::NothingWritten | ExpandError::Engine(_) => ErrorCode::ServerError(REQUEST_FAILED),
    };
    Error { code, message: err.to_string().into(), data: None }
}
