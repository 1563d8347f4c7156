//! The document store: one rope per open document, keyed by URI, with exact conversion between
//! editor positions (UTF-16 or UTF-8 code units, as negotiated) and rope character indices.
//!
//! Edits are applied synchronously and atomically: every change of one notification is applied
//! to a clone of the rope (O(1)), and the document is replaced only if all of them were valid,
//! so an impossible range never corrupts a document. Lines are split at `\n`, `\r\n` and `\r`,
//! as the LSP specification says (ropey is built without Unicode line breaks for this).
//! Each document of a language with a grammar keeps its syntax tree. A change only edits the
//! tree (its positions follow, in microseconds); parsing again, incrementally, is left to
//! `refresh_syntax`, which the server runs off the keystroke path, and to whoever needs the
//! tree fresh before that (`SyntaxTree::fresh`).
//! This module knows no LSP types; the server converts to and from them.

use dashmap::DashMap;
use ropey::Rope;

use crate::syntax::SyntaxTree;

/// How a position's `character` counts: UTF-16 code units (the LSP default) or UTF-8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionEncoding {
    Utf8,
    Utf16,
}

/// A position as an editor sends it: 0-based line, and `character` in the negotiated units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u32,
    pub character: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: Position,
    pub end: Position,
}

/// One content change: replace `range` (or the whole document when `None`) with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub range: Option<Range>,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub rope: Rope,
    pub version: i32,
    pub language_id: String,
    /// The syntax tree, for a language Ghostline knows (cloning it is cheap).
    pub syntax: Option<SyntaxTree>,
    /// Set when a change was rejected: the text may differ from the editor's, and nothing is
    /// built from it until a change that replaces the whole text (or a new `didOpen`) repairs it.
    pub diverged: Option<String>,
    /// Which `didOpen` this document came from (a reopened document may start again at the
    /// same version with other text).
    pub opened: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document {0} is not open")]
    NotOpen(String),
    #[error("line {line} is past the end of the document ({n_lines} lines)")]
    LineOutOfRange { line: u32, n_lines: usize },
    #[error("position {line}:{character} is inside a character (not on a code point boundary)")]
    InsideCharacter { line: u32, character: u32 },
    #[error("range end {end_line}:{end_character} is before its start {start_line}:{start_character}")]
    ReversedRange { start_line: u32, start_character: u32, end_line: u32, end_character: u32 },
    #[error("version {new} is older than the document's version {current}")]
    StaleVersion { new: i32, current: i32 },
}

/// The document after a change, and where the cursor probably is: the end of the last
/// inserted text.
#[derive(Debug, Clone)]
pub struct EditOutcome {
    pub document: Document,
    pub cursor_char_idx: usize,
    /// The change replaced the text of a diverged document: it agrees with the editor again.
    pub repaired: bool,
}

#[derive(Default)]
pub struct DocumentStore {
    documents: DashMap<String, Document>,
    /// `didOpen`s so far (each document remembers its own).
    opens: std::sync::atomic::AtomicU64,
}

impl DocumentStore {
    /// Stores an opened document. Its tree is not parsed here (a large file takes long): the
    /// first `refresh_syntax`, or the first job that needs the tree, parses it.
    pub fn open(&self, uri: &str, language_id: &str, version: i32, text: &str) {
        let rope = Rope::from_str(text);
        let syntax = crate::syntax::language_for(language_id, uri).map(SyntaxTree::unparsed);
        self.documents.insert(uri.to_string(), Document {
            rope,
            version,
            language_id: language_id.to_string(),
            syntax,
            diverged: None,
            opened: self.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        });
    }

    pub fn close(&self, uri: &str) {
        self.documents.remove(uri);
    }

    /// A snapshot of the document (the rope is cloned in O(1); no guard is held).
    pub fn get(&self, uri: &str) -> Option<Document> {
        self.documents.get(uri).map(|document| document.clone())
    }

    /// Parses a document's tree again if it is dirty, outside the map's lock, and keeps the
    /// result if the document is still at `version`.
    pub fn refresh_syntax(&self, uri: &str, version: i32) {
        let Some((rope, syntax, opened)) =
            self.documents.get(uri).and_then(|document| Some((document.rope.clone(), document.syntax.clone()?, document.opened)))
        else {
            return;
        };
        if !syntax.is_dirty() {
            return;
        }
        let fresh = syntax.fresh(&rope);
        if let Some(mut document) = self.documents.get_mut(uri) {
            if document.version == version && document.opened == opened {
                document.syntax = Some(fresh);
            }
        }
    }

    /// Applies all changes of one notification, or none of them. A rejected change of an open
    /// document marks it diverged (see `Document::diverged`); a change that replaces the whole
    /// text repairs it.
    pub fn apply_changes(
        &self,
        uri: &str,
        version: i32,
        changes: &[Change],
        encoding: PositionEncoding,
    ) -> Result<EditOutcome, DocumentError> {
        let mut entry = self.documents.get_mut(uri).ok_or_else(|| DocumentError::NotOpen(uri.to_string()))?;
        let applied = if version < entry.version {
            Err(DocumentError::StaleVersion { new: version, current: entry.version })
        } else {
            apply(&entry, changes, encoding)
        };
        let (rope, syntax, cursor_char_idx) = match applied {
            Ok(applied) => applied,
            Err(err) => {
                if entry.diverged.is_none() {
                    entry.diverged = Some(format!("a change for version {version} was rejected at version {}: {err}", entry.version));
                }
                return Err(err);
            }
        };
        let repaired = entry.diverged.is_some() && changes.iter().any(|change| change.range.is_none());
        if repaired {
            entry.diverged = None;
        }
        entry.rope = rope;
        entry.syntax = syntax;
        entry.version = version;
        Ok(EditOutcome { document: entry.clone(), cursor_char_idx, repaired })
    }

    /// Why the document's text may differ from the editor's, if it may.
    pub fn diverged(&self, uri: &str) -> Option<String> {
        self.documents.get(uri).and_then(|document| document.diverged.clone())
    }

    /// How many open documents may differ from the editor's text.
    pub fn diverged_count(&self) -> usize {
        self.documents.iter().filter(|document| document.diverged.is_some()).count()
    }
}

/// The changes applied to a copy of the document: its new rope, tree and the cursor after the
/// last change.
fn apply(document: &Document, changes: &[Change], encoding: PositionEncoding) -> Result<(Rope, Option<SyntaxTree>, usize), DocumentError> {
    let mut rope = document.rope.clone();
    let mut syntax = document.syntax.clone();
    let mut cursor_char_idx = 0;
    for change in changes {
        match change.range {
            None => {
                rope = Rope::from_str(&change.text);
                cursor_char_idx = rope.len_chars();
                if let Some(syntax) = &mut syntax {
                    syntax.replaced();
                }
            }
            Some(range) => {
                let start = char_idx(&rope, range.start, encoding)?;
                let end = char_idx(&rope, range.end, encoding)?;
                if end < start {
                    return Err(DocumentError::ReversedRange {
                        start_line: range.start.line,
                        start_character: range.start.character,
                        end_line: range.end.line,
                        end_character: range.end.character,
                    });
                }
                let pending = SyntaxTree::before_edit(&rope, start, end);
                rope.remove(start..end);
                rope.insert(start, &change.text);
                cursor_char_idx = start + change.text.chars().count();
                if let Some(syntax) = &mut syntax {
                    syntax.edited(&rope, pending, change.text.len());
                }
            }
        }
    }
    Ok((rope, syntax, cursor_char_idx))
}

/// Number of characters of a line, without its line break.
fn line_len_chars(rope: &Rope, line: usize) -> usize {
    crate::context::line_len_chars(rope, line)
}

/// Converts an editor position to a character index. A `character` past the end of its line
/// means the end of the line (as the LSP specification says); a line past the end of the
/// document is an error, except the position just after a final line break.
pub fn char_idx(rope: &Rope, position: Position, encoding: PositionEncoding) -> Result<usize, DocumentError> {
    let line = position.line as usize;
    if line >= rope.len_lines() {
        return Err(DocumentError::LineOutOfRange { line: position.line, n_lines: rope.len_lines() });
    }
    let line_start = rope.line_to_char(line);
    let line_len = line_len_chars(rope, line);
    let mut units = 0usize;
    for (char_offset, ch) in rope.slice(line_start..line_start + line_len).chars().enumerate() {
        if units == position.character as usize {
            return Ok(line_start + char_offset);
        }
        units += match encoding {
            PositionEncoding::Utf8 => ch.len_utf8(),
            PositionEncoding::Utf16 => ch.len_utf16(),
        };
        if units > position.character as usize {
            return Err(DocumentError::InsideCharacter { line: position.line, character: position.character });
        }
    }
    Ok(line_start + line_len)
}

/// Converts a character index back to an editor position.
pub fn position(rope: &Rope, char_idx: usize, encoding: PositionEncoding) -> Position {
    let char_idx = char_idx.min(rope.len_chars());
    let line = rope.char_to_line(char_idx);
    let line_start = rope.line_to_char(line);
    let character: usize = rope
        .slice(line_start..char_idx)
        .chars()
        .map(|ch| match encoding {
            PositionEncoding::Utf8 => ch.len_utf8(),
            PositionEncoding::Utf16 => ch.len_utf16(),
        })
        .sum();
    Position { line: line as u32, character: character as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Position {
        Position { line, character }
    }

    fn edit(start: Position, end: Position, text: &str) -> Change {
        Change { range: Some(Range { start, end }), text: text.to_string() }
    }

    #[test]
    fn utf16_positions_count_surrogate_pairs_and_cjk() {
        let rope = Rope::from_str("a😀b\n漢字x\n");
        assert_eq!(char_idx(&rope, pos(0, 1), PositionEncoding::Utf16).unwrap(), 1);
        assert_eq!(char_idx(&rope, pos(0, 3), PositionEncoding::Utf16).unwrap(), 2);
        assert_eq!(
            char_idx(&rope, pos(0, 2), PositionEncoding::Utf16).unwrap_err(),
            DocumentError::InsideCharacter { line: 0, character: 2 }
        );
        assert_eq!(char_idx(&rope, pos(1, 2), PositionEncoding::Utf16).unwrap(), 6);
        assert_eq!(char_idx(&rope, pos(1, 6), PositionEncoding::Utf8).unwrap(), 6);
        assert_eq!(position(&rope, 2, PositionEncoding::Utf16), pos(0, 3));
        assert_eq!(position(&rope, 2, PositionEncoding::Utf8), pos(0, 5));
        assert_eq!(position(&rope, 6, PositionEncoding::Utf16), pos(1, 2));
    }

    #[test]
    fn character_past_line_end_clamps_and_line_past_end_fails() {
        let rope = Rope::from_str("ab\r\ncd");
        assert_eq!(char_idx(&rope, pos(0, 99), PositionEncoding::Utf16).unwrap(), 2);
        assert_eq!(char_idx(&rope, pos(1, 2), PositionEncoding::Utf16).unwrap(), 6);
        assert!(matches!(char_idx(&rope, pos(2, 0), PositionEncoding::Utf16), Err(DocumentError::LineOutOfRange { .. })));
    }

    #[test]
    fn crlf_and_lone_cr_split_lines_but_unicode_separators_do_not() {
        let rope = Rope::from_str("a\r\nb\rc\u{2028}d\n");
        assert_eq!(rope.len_lines(), 4);
        assert_eq!(char_idx(&rope, pos(2, 1), PositionEncoding::Utf16).unwrap(), 6);
    }

    #[test]
    fn incremental_edits_apply_in_order() {
        let store = DocumentStore::default();
        store.open("file:///a.rs", "rust", 1, "fn main() {}\n");
        let outcome = store
            .apply_changes("file:///a.rs", 2, &[edit(pos(0, 11), pos(0, 11), "\n    let x = 1;\n")], PositionEncoding::Utf16)
            .unwrap();
        assert_eq!(outcome.cursor_char_idx, 11 + 16);
        store.apply_changes("file:///a.rs", 3, &[edit(pos(1, 12), pos(1, 13), "42")], PositionEncoding::Utf16).unwrap();
        assert_eq!(store.get("file:///a.rs").unwrap().rope.to_string(), "fn main() {\n    let x = 42;\n}\n");
    }

    #[test]
    fn an_impossible_range_leaves_the_document_untouched() {
        let store = DocumentStore::default();
        store.open("file:///a.py", "python", 1, "x = 1\n");
        let changes = [edit(pos(0, 0), pos(0, 0), "y = 2\n"), edit(pos(7, 0), pos(8, 0), "boom")];
        assert!(store.apply_changes("file:///a.py", 2, &changes, PositionEncoding::Utf16).is_err());
        let reversed = [edit(pos(0, 3), pos(0, 1), "")];
        assert!(matches!(
            store.apply_changes("file:///a.py", 2, &reversed, PositionEncoding::Utf16),
            Err(DocumentError::ReversedRange { .. })
        ));
        let document = store.get("file:///a.py").unwrap();
        assert_eq!(document.rope.to_string(), "x = 1\n");
        assert_eq!(document.version, 1);
        assert!(matches!(
            store.apply_changes("file:///nope", 2, &[], PositionEncoding::Utf16),
            Err(DocumentError::NotOpen(_))
        ));
    }

    #[test]
    fn full_text_change_replaces_the_document() {
        let store = DocumentStore::default();
        store.open("u", "text", 1, "old");
        store.apply_changes("u", 2, &[Change { range: None, text: "new text".into() }], PositionEncoding::Utf8).unwrap();
        assert_eq!(store.get("u").unwrap().rope.to_string(), "new text");
    }

    /// Lines of a plain string as the documents see them: `\n`, `\r\n` and a lone `\r` end a
    /// line; (start, end) byte offsets without the break.
    fn model_lines(text: &str) -> Vec<(usize, usize)> {
        let bytes = text.as_bytes();
        let mut lines = Vec::new();
        let mut start = 0;
        let mut at = 0;
        while at < bytes.len() {
            match bytes[at] {
                b'\n' => {
                    lines.push((start, at));
                    at += 1;
                    start = at;
                }
                b'\r' => {
                    lines.push((start, at));
                    at += if bytes.get(at + 1) == Some(&b'\n') { 2 } else { 1 };
                    start = at;
                }
                _ => at += 1,
            }
        }
        lines.push((start, bytes.len()));
        lines
    }

    /// A random position on a code point boundary of the model text: its byte offset and its
    /// LSP position in UTF-16 units.
    fn model_position(text: &str, next: &mut impl FnMut() -> u64) -> (usize, Position) {
        let lines = model_lines(text);
        let line = (next() % lines.len() as u64) as usize;
        let (start, end) = lines[line];
        let boundaries: Vec<usize> = text[start..end].char_indices().map(|(offset, _)| start + offset).chain([end]).collect();
        let byte = boundaries[(next() % boundaries.len() as u64) as usize];
        let character = text[start..byte].encode_utf16().count() as u32;
        (byte, pos(line as u32, character))
    }

    /// Random edits applied to a document and to a plain string agree, edit after edit, with
    /// UTF-16 positions past emoji and CJK, CRLF and lone CR line breaks; an edit with an
    /// impossible position leaves the document as it was.
    #[test]
    fn random_edits_agree_with_a_plain_string() {
        const PIECES: [&str; 10] = ["a", "😀", "漢字", "\r\n", "\n", "\r", "é", "", "line\nnext", "\u{2028}"];
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let store = DocumentStore::default();
            let uri = format!("file:///model/{round}.txt");
            let mut model = String::from("a😀b\r\n漢字\rx\n");
            store.open(&uri, "plaintext", 1, &model);
            for version in 2..60 {
                let (a, start) = model_position(&model, &mut next);
                let (b, end) = model_position(&model, &mut next);
                let ((from, start), (to, end)) = if a <= b { ((a, start), (b, end)) } else { ((b, end), (a, start)) };
                let text = PIECES[(next() % PIECES.len() as u64) as usize];
                if next() % 10 == 0 {
                    // A line past the end: rejected, nothing changes.
                    let beyond = pos(model_lines(&model).len() as u32 + 1, 0);
                    assert!(store.apply_changes(&uri, version, &[edit(start, beyond, text)], PositionEncoding::Utf16).is_err());
                } else {
                    store.apply_changes(&uri, version, &[edit(start, end, text)], PositionEncoding::Utf16).unwrap();
                    model.replace_range(from..to, text);
                }
                let document = store.get(&uri).unwrap();
                assert_eq!(document.rope.to_string(), model, "round {round}, version {version}");
                assert_eq!(document.rope.len_lines(), model_lines(&model).len(), "round {round}, version {version}: {model:?}");
            }
        }
    }
}
