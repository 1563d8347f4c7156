//! Commands and completion items: the accept command, `ghostline.expandIntoCode` (offered as a
//! code action), and the items of the user's expansions.

use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::*;

use super::guard::{expand_error, invalid_params};
use super::{proto, Backend, ACCEPT_COMMAND, EXPAND_COMMAND};
use crate::documents;
use crate::expansions;

/// The accept command of an item: `{uri, chars}`; a client that accepts part of the suggestion
/// (a word, a line) sends it with `acceptedChars` too.
pub(super) fn accept_command(uri: &Uri, text: &str) -> Command {
    Command {
        title: "Ghostline: suggestion accepted".to_string(),
        command: ACCEPT_COMMAND.to_string(),
        arguments: Some(vec![json!({"uri": uri.as_str(), "chars": text.chars().count()})]),
    }
}

impl Backend {
    /// `ghostline.expandIntoCode`: generates the code, applies it with `workspace/applyEdit` and returns
    /// the edit (so a client that cannot apply edits can still use it).
    pub(super) async fn expand(&self, arguments: &[Value]) -> Result<Value> {
        let usage = || invalid_params(format!("{EXPAND_COMMAND} takes [uri, firstLine, lastLine]"));
        let uri: Uri = arguments.first().and_then(Value::as_str).and_then(|text| text.parse().ok()).ok_or_else(usage)?;
        let first_line = arguments.get(1).and_then(Value::as_u64).ok_or_else(usage)? as usize;
        let last_line = arguments.get(2).and_then(Value::as_u64).ok_or_else(usage)? as usize;
        let document = self.documents.get(uri.as_str()).ok_or_else(|| invalid_params(format!("document {} is not open", uri.as_str())))?;
        if let Some(reason) = &document.diverged {
            return Err(invalid_params(format!("the server's copy of {} may differ from the editor's ({reason}); send the whole text again", uri.as_str())));
        }
        let expanded = self.scheduler.expand(uri.as_str(), &document.language_id, &document.rope, first_line, last_line).await.map_err(expand_error)?;
        let current = self.documents.get(uri.as_str()).map(|document| document.version);
        if current != Some(document.version) {
            return Err(expand_error(crate::scheduler::ExpandError::DocumentChanged));
        }
        let encoding = self.encoding();
        let range = Range {
            start: proto::to_position(documents::position(&document.rope, expanded.start_char_idx, encoding)),
            end: proto::to_position(documents::position(&document.rope, expanded.end_char_idx, encoding)),
        };
        let edit = WorkspaceEdit {
            changes: Some([(uri.clone(), vec![TextEdit { range, new_text: expanded.text }])].into_iter().collect()),
            ..Default::default()
        };
        match self.client.apply_edit(edit.clone()).await {
            Ok(response) if !response.applied => tracing::warn!(reason = ?response.failure_reason, "the client did not apply the expansion"),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "workspace/applyEdit failed"),
        }
        serde_json::to_value(edit).map_err(|err| Error { code: ErrorCode::InternalError, message: err.to_string().into(), data: None })
    }

    /// Completion items for the user's expansions whose trigger starts with `word`.
    pub(super) fn expansion_items(&self, uri: &Uri, language_id: &str, word: &str, word_range: Range) -> Vec<CompletionItem> {
        let config = self.scheduler.config();
        let path = uri.path().decode().to_string_lossy();
        let file_name = path.rsplit('/').next().unwrap_or_default().to_string();
        let context = expansions::Context { file_name, language_id: language_id.to_string(), now: chrono::Local::now() };
        expansions::matching(&config.expansions, word)
            .map(|expansion| {
                let text = expansions::render(&expansion.body, &context);
                CompletionItem {
                    label: expansion.trigger.clone(),
                    kind: Some(CompletionItemKind::SNIPPET),
                    detail: Some(expansion.description.clone().unwrap_or_else(|| "Ghostline expansion".to_string())),
                    documentation: Some(Documentation::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value: format!("```\n{text}\n```") })),
                    sort_text: Some(format!("1{}", expansion.trigger)),
                    filter_text: Some(expansion.trigger.clone()),
                    insert_text_format: Some(InsertTextFormat::SNIPPET),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit { range: word_range, new_text: text })),
                    ..Default::default()
                }
            })
            .collect()
    }
}

/// The identifier characters right before the cursor (what a completion menu filters on).
pub(super) fn word_before_cursor(line_head: &str) -> &str {
    let start = line_head
        .char_indices()
        .rev()
        .take_while(|(_, ch)| ch.is_alphanumeric() || *ch == '_')
        .last()
        .map_or(line_head.len(), |(idx, _)| idx);
    &line_head[start..]
}

pub(super) fn cap_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut res: String = text.chars().take(max_chars).collect();
    res.push('…');
    res
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_before_cursor_takes_identifier_characters() {
        assert_eq!(word_before_cursor("    let total_sum"), "total_sum");
        assert_eq!(word_before_cursor("print("), "");
        assert_eq!(word_before_cursor("x = größe"), "größe");
        assert_eq!(word_before_cursor(""), "");
    }

    #[test]
    fn long_labels_are_capped() {
        assert_eq!(cap_chars("abcdef", 3), "abc…");
        assert_eq!(cap_chars("abc", 3), "abc");
    }
}
