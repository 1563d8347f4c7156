//! A document's syntax tree: parsed when the document opens, edited and parsed again
//! incrementally after every change, and read at the cursor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ropey::Rope;
use tree_sitter::{InputEdit, Node, Parser, Point, Query, QueryCursor, StreamingIterator, Tree};

use super::Language;

/// Documents larger than this are not parsed (the syntax rules are then left out).
const MAX_PARSE_BYTES: usize = 8 << 20;
/// A parse that takes longer is given up, and the document has no syntax from then on.
const PARSE_TIME_LIMIT: Duration = Duration::from_millis(500);
/// A parse error around the cursor longer than this is not scanned for open brackets.
const MAX_ERROR_SCAN_BYTES: usize = 64 << 10;

pub(super) struct Grammar {
    language: tree_sitter::Language,
    query: Query,
    comment: Option<u32>,
    string: Option<u32>,
    block: Option<u32>,
    code: Option<u32>,
}

impl Grammar {
    pub(super) fn new(language: tree_sitter::Language, query_source: &str) -> Result<Grammar, String> {
        let query = Query::new(&language, query_source).map_err(|err| err.to_string())?;
        let capture = |name: &str| query.capture_index_for_name(name);
        Ok(Grammar { comment: capture("comment"), string: capture("string"), block: capture("block"), code: capture("code"), language, query })
    }
}

/// Where the cursor is, by the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Code,
    Comment,
    String,
    /// A prose language (Markdown outside code blocks, plain text, commit messages).
    Prose,
}

/// What the tree says about a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorSyntax {
    pub region: Region,
    /// The innermost construct around the cursor is a bracket pair (arguments, a list), not a
    /// block.
    pub in_brackets: bool,
    /// Closing brackets of enclosing scopes that the document lacks; `usize::MAX` when the
    /// tree cannot tell (the cursor is inside a parse error).
    pub missing_closers: usize,
}

/// A document's language and its tree (none when the language has no grammar, or the document
/// was too large or too slow to parse).
#[derive(Clone)]
pub struct SyntaxTree {
    pub language: &'static Language,
    tree: Option<Tree>,
    /// A parse was given up: do not try again on every keystroke.
    gave_up: bool,
    /// Edited since the last parse (the tree's positions follow the edits, its nodes do not).
    dirty: bool,
    /// The whole document was replaced: the next parse starts from scratch.
    replaced: bool,
    /// The parse of this version, shared by every copy of it: whoever needs the fresh tree
    /// first (a job starting, or the parse after a change) parses, once.
    parsed: Arc<OnceLock<SyntaxTree>>,
}

impl std::fmt::Debug for SyntaxTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntaxTree").field("language", &self.language.name).field("parsed", &self.tree.is_some()).finish()
    }
}

thread_local! {
    /// One parser per language and thread (parsers are cheap to keep and costly to create).
    static PARSERS: RefCell<HashMap<&'static str, Parser>> = RefCell::new(HashMap::new());
}

fn parse(language: &'static Language, rope: &Rope, old: Option<&Tree>) -> Option<Tree> {
    let grammar = language.grammar.as_ref()?;
    if rope.len_bytes() > MAX_PARSE_BYTES {
        return None;
    }
    PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let parser = match parsers.entry(language.name) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let mut parser = Parser::new();
                parser.set_language(&grammar.language).ok()?;
                entry.insert(parser)
            }
        };
        let start = Instant::now();
        let mut too_slow = |_: &tree_sitter::ParseState| start.elapsed() > PARSE_TIME_LIMIT;
        let options = tree_sitter::ParseOptions::new().progress_callback(&mut too_slow);
        let mut read = |byte: usize, _: Point| -> &[u8] {
            if byte >= rope.len_bytes() {
                return &[];
            }
            let (chunk, chunk_start, _, _) = rope.chunk_at_byte(byte);
            &chunk.as_bytes()[byte - chunk_start..]
        };
        let tree = parser.parse_with_options(&mut read, old, Some(options));
        if tree.is_none() {
            parser.reset();
            tracing::warn!(language = language.name, bytes = rope.len_bytes(), "parse given up; no syntax rules for this document");
        }
        tree
    })
}

fn point(rope: &Rope, byte: usize) -> Point {
    let line = rope.byte_to_line(byte);
    Point { row: line, column: byte - rope.line_to_byte(line) }
}

/// An edit about to be made: the span it replaces, measured before the edit.
pub struct PendingEdit {
    start_byte: usize,
    old_end_byte: usize,
    start_position: Point,
    old_end_position: Point,
}

impl SyntaxTree {
    /// Parses a document in a language.
    pub fn new(language: &'static Language, rope: &Rope) -> SyntaxTree {
        let tree = parse(language, rope, None);
        let gave_up = language.grammar.is_some() && tree.is_none();
        SyntaxTree { language, tree, gave_up, dirty: false, replaced: false, parsed: Arc::default() }
    }

    /// A tree not parsed yet (the first parse of a large file runs off the LSP loop): the
    /// first `fresh`, `reparse` or `at` parses it from scratch.
    pub fn unparsed(language: &'static Language) -> SyntaxTree {
        SyntaxTree { language, tree: None, gave_up: false, dirty: true, replaced: true, parsed: Arc::default() }
    }

    /// Whether the document has a tree.
    pub fn is_parsed(&self) -> bool {
        self.tree.is_some()
    }

    /// Measures the characters `start..end` of `rope` before they are replaced.
    pub fn before_edit(rope: &Rope, start: usize, end: usize) -> PendingEdit {
        let start_byte = rope.char_to_byte(start);
        let old_end_byte = rope.char_to_byte(end);
        PendingEdit { start_byte, old_end_byte, start_position: point(rope, start_byte), old_end_position: point(rope, old_end_byte) }
    }

    /// Tells the tree about an edit, once `rope` holds its result (`inserted_bytes` of text at
    /// the start of the span). The tree is parsed again by `reparse`.
    pub fn edited(&mut self, rope: &Rope, pending: PendingEdit, inserted_bytes: usize) {
        self.dirty = true;
        self.parsed = Arc::default();
        let Some(tree) = &mut self.tree else { return };
        let new_end_byte = pending.start_byte + inserted_bytes;
        tree.edit(&InputEdit {
            start_byte: pending.start_byte,
            old_end_byte: pending.old_end_byte,
            new_end_byte,
            start_position: pending.start_position,
            old_end_position: pending.old_end_position,
            new_end_position: point(rope, new_end_byte),
        });
    }

    /// The whole document was replaced: the next parse starts from scratch.
    pub fn replaced(&mut self) {
        self.replaced = true;
        self.dirty = true;
        self.parsed = Arc::default();
    }

    /// Whether edits came since the last parse.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Parses the document again after edits, reusing the unchanged parts of the old tree; a
    /// replaced document is parsed from scratch, even after a parse was given up.
    pub fn reparse(&mut self, rope: &Rope) {
        let from_scratch = std::mem::take(&mut self.replaced);
        self.dirty = false;
        if self.gave_up && !from_scratch {
            return;
        }
        let old = if from_scratch { None } else { self.tree.as_ref() };
        self.tree = parse(self.language, rope, old);
        self.gave_up = self.language.grammar.is_some() && self.tree.is_none();
    }

    /// This tree, parsed again if edits came since the last parse (once per version, however
    /// many copies ask).
    pub fn fresh(&self, rope: &Rope) -> SyntaxTree {
        if !self.dirty {
            return self.clone();
        }
        self.parsed
            .get_or_init(|| {
                let mut tree = SyntaxTree { parsed: Arc::default(), ..self.clone() };
                tree.reparse(rope);
                tree
            })
            .clone()
    }

    /// What the tree says about the cursor at `char_idx` (parse it first if it is dirty:
    /// see `fresh`).
    pub fn at(&self, rope: &Rope, char_idx: usize) -> CursorSyntax {
        let prose = self.language.facts.prose;
        let default = CursorSyntax { region: if prose { Region::Prose } else { Region::Code }, in_brackets: false, missing_closers: usize::MAX };
        let (Some(tree), Some(grammar)) = (&self.tree, &self.language.grammar) else { return default };
        if char_idx > rope.len_chars() {
            return default;
        }
        let byte = rope.char_to_byte(char_idx);
        let root = tree.root_node();

        let mut region = default.region;
        let mut blocks = Vec::new();
        let mut query_cursor = QueryCursor::new();
        query_cursor.set_byte_range(byte.saturating_sub(1)..byte + 1);
        let mut captures = query_cursor.captures(&grammar.query, root, RopeText(rope));
        while let Some((found, capture_idx)) = captures.next() {
            let capture = found.captures[*capture_idx];
            let node = capture.node;
            let inside = node.start_byte() < byte && byte < node.end_byte();
            let at_end = node.start_byte() < byte && byte == node.end_byte();
            let index = Some(capture.index);
            if index == grammar.comment {
                // A line comment runs to the end of its line: its end is still inside it.
                let line_comment = grammar_line_comment(self.language, rope, node);
                if inside || (at_end && line_comment) {
                    region = Region::Comment;
                }
            } else if index == grammar.string && inside {
                region = Region::String;
            } else if index == grammar.code && (inside || at_end) {
                region = Region::Code;
            } else if index == grammar.block && (inside || at_end) {
                blocks.push(node.id());
            }
        }

        let mut in_brackets = false;
        let mut decided_brackets = false;
        let mut in_error = false;
        let mut node = root.descendant_for_byte_range(byte, byte);
        while let Some(current) = node {
            in_error |= current.is_error();
            let spans_cursor = current.start_byte() < byte && byte <= current.end_byte();
            if spans_cursor && !decided_brackets {
                if blocks.contains(&current.id()) {
                    decided_brackets = true;
                } else if opens_with_bracket(current) && !closed_before(current, byte) {
                    in_brackets = true;
                    decided_brackets = true;
                }
            }
            node = current.parent();
        }

        // Scopes left open at the cursor: the parser closes them with an invented (missing)
        // closer, right after the last token before the cursor or further on. They enclose
        // that last token.
        let last_code = last_non_blank_byte(rope, byte);
        let mut unclosed = 0;
        let mut outermost_error = None;
        let mut node = last_code.and_then(|last| root.descendant_for_byte_range(last, last));
        while let Some(current) = node {
            if current.is_error() {
                outermost_error = Some(current);
            }
            if lacks_closer(current).is_some_and(|closer| closer.start_byte() > last_code.unwrap_or(0)) {
                unclosed += 1;
            }
            node = current.parent();
        }
        // Inside a parse error the tree does not know the scopes: the brackets left open in
        // the error's text before the cursor do.
        let missing_closers = match outermost_error {
            _ if in_error && outermost_error.is_none() => usize::MAX,
            None => unclosed,
            Some(error) if byte - error.start_byte() <= MAX_ERROR_SCAN_BYTES => {
                let text = rope.byte_slice(error.start_byte()..byte).to_string();
                unclosed + self.language.facts.lexical().unclosed(&text).len()
            }
            Some(_) => usize::MAX,
        };
        CursorSyntax { region, in_brackets, missing_closers }
    }
}

/// Whether a comment node starts with one of the language's line comment tokens.
fn grammar_line_comment(language: &Language, rope: &Rope, node: Node) -> bool {
    let start = node.start_byte().min(rope.len_bytes());
    let head: Vec<u8> = rope.bytes_at(start).take(4.min(node.end_byte().saturating_sub(start))).collect();
    language.facts.line_comments.iter().any(|token| head.starts_with(token.as_bytes()))
}

fn opens_with_bracket(node: Node) -> bool {
    node.child(0).is_some_and(|first| matches!(first.kind(), "(" | "["))
}

/// Whether the node's own closing bracket is before the cursor (the cursor is after the list).
fn closed_before(node: Node, byte: usize) -> bool {
    let count = node.child_count();
    count > 0 && node.child(count - 1).is_some_and(|last| !last.is_missing() && matches!(last.kind(), ")" | "]") && last.end_byte() <= byte)
}

/// The node's last child, when it is a closing bracket the parser had to invent.
fn lacks_closer(node: Node) -> Option<Node> {
    let count = node.child_count();
    node.child(count.checked_sub(1)?).filter(|last| last.is_missing() && matches!(last.kind(), ")" | "]" | "}"))
}

/// The last byte before `byte` that is not white space (looking back a bounded distance).
fn last_non_blank_byte(rope: &Rope, byte: usize) -> Option<usize> {
    let mut bytes = rope.bytes_at(byte);
    let mut at = byte;
    for _ in 0..100_000 {
        let previous = bytes.prev()?;
        at -= 1;
        if !previous.is_ascii_whitespace() {
            return Some(at);
        }
    }
    None
}

/// The rope as text for tree-sitter's query predicates.
struct RopeText<'rope>(&'rope Rope);

impl<'rope> tree_sitter::TextProvider<&'rope [u8]> for RopeText<'rope> {
    type I = RopeChunks<'rope>;

    fn text(&mut self, node: Node) -> Self::I {
        RopeChunks { rope: self.0, at: node.start_byte(), end: node.end_byte().min(self.0.len_bytes()) }
    }
}

struct RopeChunks<'rope> {
    rope: &'rope Rope,
    at: usize,
    end: usize,
}

impl<'rope> Iterator for RopeChunks<'rope> {
    type Item = &'rope [u8];

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let (chunk, chunk_start, _, _) = self.rope.chunk_at_byte(self.at);
        let bytes = &chunk.as_bytes()[self.at - chunk_start..];
        let len = bytes.len().min(self.end - self.at);
        self.at += len;
        Some(&bytes[..len])
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
