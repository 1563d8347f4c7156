//! Conversions from LSP types to the plain types of `documents` (the protocol boundary).

use tower_lsp_server::ls_types::{Position, TextDocumentContentChangeEvent};

use crate::documents;

pub fn position(position: Position) -> documents::Position {
    documents::Position { line: position.line, character: position.character }
}

pub fn change(event: TextDocumentContentChangeEvent) -> documents::Change {
    documents::Change {
        range: event.range.map(|range| documents::Range { start: position(range.start), end: position(range.end) }),
        text: event.text,
    }
}

pub fn to_position(position: documents::Position) -> Position {
    Position { line: position.line, character: position.character }
}
