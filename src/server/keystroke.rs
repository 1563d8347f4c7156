//! One document change on the keystroke path, as `didChange` runs it and the keystroke benchmark
//! drives it: the edit applied to the store, then the scheduler told of the new cursor state,
//! unless the document may differ from the editor's (a change that cannot apply marks it so and
//! cancels its job). No `.await` anywhere: edits must land in arrival order.

use std::sync::Arc;

use crate::documents::{Change, DocumentError, DocumentStore, Position, PositionEncoding};
use crate::scheduler::{CursorState, Scheduler};

/// What a change did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The scheduler has the new state (its version).
    Scheduled(i32),
    /// The document may differ from the editor's: no job is built from it.
    Diverged,
}

/// Applies `changes` (the editor's `version`) to the document and hands the new cursor state to
/// the scheduler; a change that cannot apply is rejected, its document's job cancelled.
pub fn apply_change(documents: &DocumentStore, scheduler: &Arc<Scheduler>, uri: &str, version: i32, changes: &[Change], encoding: PositionEncoding) -> Result<Applied, DocumentError> {
    let outcome = match documents.apply_changes(uri, version, changes, encoding) {
        Ok(outcome) => outcome,
        Err(err) => {
            scheduler.cancel_for(uri);
            return Err(err);
        }
    };
    let version = outcome.document.version;
    if outcome.repaired {
        tracing::info!(%uri, version, "the whole text was sent: the document agrees with the editor again");
    }
    if outcome.document.diverged.is_some() {
        return Ok(Applied::Diverged);
    }
    scheduler.on_change(CursorState {
        uri: uri.to_string(),
        version,
        rope: outcome.document.rope,
        cursor_char_idx: outcome.cursor_char_idx,
        language_id: outcome.document.language_id,
        syntax: outcome.document.syntax,
    });
    Ok(Applied::Scheduled(version))
}

/// The state a request at `position` sees: the document as stored and the cursor in it.
pub fn cursor_state(documents: &DocumentStore, uri: &str, position: Position, encoding: PositionEncoding) -> Result<CursorState, String> {
    let document = documents.get(uri).ok_or_else(|| format!("document {uri} is not open"))?;
    let cursor_char_idx = crate::documents::char_idx(&document.rope, position, encoding).map_err(|err| format!("{uri}: {err}"))?;
    Ok(CursorState { uri: uri.to_string(), version: document.version, rope: document.rope, cursor_char_idx, language_id: document.language_id, syntax: document.syntax })
}
