//! Ghostline's own methods besides ghost text: `ghostline/stats`, `ghostline/document` and the
//! `ghostline/cursorRest` notification.

use super::*;

impl Backend {
    /// `ghostline/stats`; its params (null or an object such as `{}`) are ignored. The field
    /// must be present: tower-lsp-server's router tells a method with params from one without.
    pub(super) async fn stats(&self, _params: Option<Value>) -> Result<Value> {
        guarded("ghostline/stats", async {
            let mut stats = self.scheduler.stats_json();
            let engine = match self.scheduler.engine_state() {
                EngineState::NotStarted => json!({"state": "not started"}),
                EngineState::Loading => json!({"state": "loading"}),
                EngineState::Failed(err) => json!({"state": "failed", "error": err.to_string()}),
                EngineState::Ready(engine) => json!({"state": "ready", "model": engine.info(), "backend": engine.backend_json()}),
            };
            stats["engine"] = engine;
            stats["config"] = json!({"model": self.scheduler.config().model});
            stats["engineLoads"] = json!(self.loader.loads.load(Ordering::SeqCst));
            stats["rejectedChanges"] = json!(self.rejected_changes.load(Ordering::SeqCst));
            stats["divergedDocuments"] = json!(self.documents.diverged_count());
            Ok(stats)
        })
        .await
    }

    /// `ghostline/document` (`{uri}`): the server's copy of a document, its version and why it may
    /// differ from the editor's, so a client (or a bug report) can check that both agree.
    pub(super) async fn document(&self, params: Value) -> Result<Value> {
        guarded("ghostline/document", async {
            let uri: Uri = params
                .get("uri")
                .and_then(Value::as_str)
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| invalid_params("ghostline/document takes {\"uri\": \"<a document's URI>\"}".to_string()))?;
            let uri = uri.as_str();
            let document = self.documents.get(uri).ok_or_else(|| invalid_params(format!("document {uri} is not open")))?;
            Ok(json!({"uri": uri, "version": document.version, "text": document.rope.to_string(), "diverged": document.diverged}))
        })
        .await
    }

    /// `ghostline/cursorRest` (`{textDocument: {uri}, position}`), a notification: the cursor
    /// rests there without typing (a client sends it after a short pause of the cursor), so the
    /// engine starts there unless a job serves that state. Bad params are logged and ignored.
    pub(super) async fn cursor_rest(&self, params: Value) {
        guarded_notification("ghostline/cursorRest", async {
            let params: TextDocumentPositionParams = match serde_json::from_value(params) {
                Ok(params) => params,
                Err(err) => {
                    tracing::warn!(%err, "ghostline/cursorRest takes {{textDocument: {{uri}}, position: {{line, character}}}}; ignored");
                    return;
                }
            };
            if self.documents.diverged(params.text_document.uri.as_str()).is_some() {
                return;
            }
            match self.cursor_state(&params.text_document.uri, params.position) {
                Ok(state) => self.scheduler.cursor_rests(state),
                Err(err) => tracing::debug!(%err, "ghostline/cursorRest ignored"),
            }
        })
        .await
    }
}
