//! Ghost text: `textDocument/inlineCompletion` (LSP 3.18), `ghostline/expandSuggestion`, how a
//! request waits for its answer, and `ghostline/suggestionReady` for clients that ask again.

use super::*;

/// `ghostline/suggestionReady`: the suggestion for a cursor state is ready; ask again.
enum SuggestionReady {}

impl notification::Notification for SuggestionReady {
    type Params = Value;
    const METHOD: &'static str = "ghostline/suggestionReady";
}

/// An answer as an inline completion list at `position`.
fn inline_list(uri: &Uri, position: Position, answer: Answer) -> InlineCompletionList {
    let items = match answer {
        Answer::Ready(suggestion) => vec![InlineCompletionItem {
            insert_text: suggestion.text.clone(),
            filter_text: None,
            range: Some(Range { start: position, end: position }),
            command: Some(accept_command(uri, &suggestion.text)),
            insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
        }],
        Answer::Empty(reason) => {
            tracing::debug!(?reason, "no inline suggestion");
            Vec::new()
        }
    };
    InlineCompletionList { items }
}

impl Backend {
    /// How an inline completion request waits: within the budget for a client told when the
    /// suggestion is ready; otherwise for the first line while the person types (an automatic
    /// trigger), for the whole suggestion when asked on purpose.
    pub(super) fn waiting(&self, trigger_kind: InlineCompletionTriggerKind) -> Waiting {
        if self.wants_ready_notification.load(Ordering::SeqCst) {
            Waiting::Budget
        } else if trigger_kind == InlineCompletionTriggerKind::AUTOMATIC {
            Waiting::FirstLine
        } else {
            Waiting::UntilReady
        }
    }

    /// A suggestion that replaced the one answered at a state (the full window's after an
    /// arrival's, in a pause) is announced as a ready one: a client that opted in asks again.
    pub(super) fn tell_upgrades(&self) {
        let Some(mut upgrades) = self.scheduler.listen_for_upgrades() else { return };
        let (client, wants, encoding) = (self.client.clone(), self.wants_ready_notification.clone(), self.encoding());
        tokio::spawn(async move {
            while let Some(state) = upgrades.recv().await {
                if !wants.load(Ordering::SeqCst) {
                    continue;
                }
                let position = documents::position(&state.rope, state.cursor_char_idx, encoding);
                client
                    .send_notification::<SuggestionReady>(json!({
                        "uri": state.uri,
                        "version": state.version,
                        "position": {"line": position.line, "character": position.character},
                    }))
                    .await;
            }
        });
    }

    /// After an early empty answer, tells the client when the suggestion is ready.
    pub(super) fn notify_when_ready(&self, waiter: crate::scheduler::ReadyWaiter) {
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        // Every job ends (its tokens are bounded, and a newer job supersedes it), so wait for it
        // however slow the machine is: a client showing a partial suggestion is only updated
        // by this notification. The bound is a backstop against a stuck engine.
        let max_wait = Duration::from_secs(600);
        let encoding = self.encoding();
        tokio::spawn(async move {
            let uri = waiter.state.uri.clone();
            let version = waiter.state.version;
            let position = documents::position(waiter.rope(), waiter.state.cursor_char_idx, encoding);
            if scheduler.wait_ready(waiter, max_wait).await {
                client
                    .send_notification::<SuggestionReady>(json!({
                        "uri": uri,
                        "version": version,
                        "position": {"line": position.line, "character": position.character},
                    }))
                    .await;
            }
        });
    }

    pub(super) async fn inline_completion(&self, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
        guarded("textDocument/inlineCompletion", async {
            let position = params.text_document_position.position;
            let uri = params.text_document_position.text_document.uri;
            if let Some(reason) = self.documents.diverged(uri.as_str()) {
                tracing::debug!(uri = uri.as_str(), %reason, "no suggestion: the document may differ from the editor's");
                return Ok(Some(InlineCompletionResponse::List(InlineCompletionList { items: Vec::new() })));
            }
            let state = self.cursor_state(&uri, position)?;
            let (answer, waiter) = self.answer_bounded(state, self.waiting(params.context.trigger_kind)).await;
            if let Some(waiter) = waiter {
                self.notify_when_ready(waiter);
            }
            Ok(Some(InlineCompletionResponse::List(inline_list(&uri, position, answer))))
        })
        .await
    }

    /// `ghostline/expandSuggestion` (`{textDocument: {uri}, position}`): a longer, multi-line
    /// suggestion at the cursor for this request alone (an inline completion list); the
    /// settings stay as they are for every other request.
    pub(super) async fn expand_suggestion(&self, params: Value) -> Result<Value> {
        guarded("ghostline/expandSuggestion", async {
            let params: TextDocumentPositionParams = serde_json::from_value(params)
                .map_err(|err| invalid_params(format!("ghostline/expandSuggestion takes {{textDocument: {{uri}}, position: {{line, character}}}}: {err}")))?;
            let position = params.position;
            let uri = params.text_document.uri;
            if let Some(reason) = self.documents.diverged(uri.as_str()) {
                tracing::debug!(uri = uri.as_str(), %reason, "no expanded suggestion: the document may differ from the editor's");
                return Ok(json!({"items": []}));
            }
            let state = self.cursor_state(&uri, position)?;
            let answer = self.scheduler.complete_expanded(state).await;
            Ok(serde_json::to_value(inline_list(&uri, position, answer)).unwrap_or_else(|_| json!({"items": []})))
        })
        .await
    }
}
