//! Prompt construction: windows of the document around the cursor, laid out from most stable to
//! most volatile so that typing re-decodes as few tokens as possible.
//!
//! Layout for a model with fill-in-the-middle tokens (prefix-suffix-middle order, the order
//! these models are trained on):
//!
//! ```text
//! [extra context] <fim_prefix> WINDOW <fim_suffix> REST_OF_LINE + NEXT_LINES <fim_middle> LINE_HEAD
//! ```
//!
//! WINDOW is the lines above the cursor line, starting on a line anchored to a multiple of
//! `anchor_lines` so it moves rarely. LINE_HEAD, the text of the cursor line before the cursor,
//! is placed after the middle marker as the start of the middle the model writes: the true
//! middle is exactly that head plus the completion, so the prompt stays a faithful
//! prefix-suffix-middle example, and a typed character only changes the last tokens of the
//! prompt. Everything up to the middle marker changes only when the cursor leaves the line.
//! A model without fill-in-the-middle tokens gets WINDOW + LINE_HEAD as plain text.
//!
//! [extra context] is the cross-file ring's snapshot (`src/ring.rs`), in the repository-level
//! format of models whose vocabulary has a file-separator token (Qwen2.5-Coder):
//! `<repo_name> NAME \n <file_sep> PATH \n CHUNK ... <file_sep> THIS_FILE'S_PATH \n`. It is the
//! most stable part of the prompt: it changes only when the scheduler takes a new snapshot.
//!
//! This module never sees LSP types and never calls llama.cpp.

use std::sync::Arc;

use ropey::Rope;

use crate::engine::{Prompt, Special, SpecialSupport};
use crate::ring::Chunk;

/// Other files' code for the front of the prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossFile {
    pub repo: Option<String>,
    pub chunks: Arc<Vec<Chunk>>,
    /// How the prompt names the file being completed.
    pub file_label: String,
}

/// Sizes of the windows around the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// At least this many lines above the cursor line go into the prompt.
    pub prefix_lines: usize,
    /// The window's first line is a multiple of this, so it moves once every this many lines.
    pub anchor_lines: usize,
    /// Lines after the cursor line that go into the suffix.
    pub suffix_lines: usize,
    /// Put the lines after the cursor line in a chunk of their own in front of the prompt
    /// (repository-level format) instead of in the fill-in-the-middle suffix, which then holds
    /// only the rest of the cursor line. Measured worse; kept to measure.
    pub suffix_in_front: bool,
    /// Character caps, so one huge line cannot blow up the prompt.
    pub max_prefix_chars: usize,
    pub max_suffix_chars: usize,
    pub max_line_head_chars: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            prefix_lines: 64,
            anchor_lines: 16,
            suffix_lines: 4,
            suffix_in_front: false,
            max_prefix_chars: 6000,
            max_suffix_chars: 1500,
            max_line_head_chars: 1000,
        }
    }
}

/// The cursor, as a line and a character column (both 0-based, in Unicode scalar values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPosition {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("line {line} is past the end of the document ({n_lines} lines)")]
    LineOutOfRange { line: usize, n_lines: usize },
    #[error("column {column} is past the end of line {line} ({line_len} characters)")]
    ColumnOutOfRange { line: usize, column: usize, line_len: usize },
}

/// A prompt and the text around the cursor it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPrompt {
    pub prompt: Prompt,
    /// The cursor line before the cursor (the volatile tail of the prompt).
    pub line_head: String,
    /// The cursor line after the cursor.
    pub line_tail: String,
    /// The lines after the cursor line that were put in the suffix (for post-processing).
    pub next_lines: String,
}

/// Number of characters of a rope line, without its line break.
pub fn line_len_chars(rope: &Rope, line: usize) -> usize {
    let slice = rope.line(line);
    let mut len = slice.len_chars();
    if len > 0 && slice.char(len - 1) == '\n' {
        len -= 1;
        if len > 0 && slice.char(len - 1) == '\r' {
            len -= 1;
        }
    } else if len > 0 && slice.char(len - 1) == '\r' {
        len -= 1;
    }
    len
}

/// Checks a cursor against the document and returns its char index.
pub fn cursor_char_idx(rope: &Rope, cursor: CursorPosition) -> Result<usize, PositionError> {
    let n_lines = rope.len_lines();
    if cursor.line >= n_lines {
        return Err(PositionError::LineOutOfRange { line: cursor.line, n_lines });
    }
    let line_len = line_len_chars(rope, cursor.line);
    if cursor.column > line_len {
        return Err(PositionError::ColumnOutOfRange { line: cursor.line, column: cursor.column, line_len });
    }
    Ok(rope.line_to_char(cursor.line) + cursor.column)
}

/// Builds the prompt for a cursor position, without a token budget (for a context that holds
/// the largest window, as the default one does).
pub fn build_prompt(
    rope: &Rope,
    cursor: CursorPosition,
    windows: &WindowConfig,
    special: SpecialSupport,
) -> Result<BuiltPrompt, PositionError> {
    build_prompt_with(rope, cursor, windows, special, None, Budget::UNLIMITED)
}

/// How many tokens a prompt may have, and the characters per token its text is assumed to take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub tokens: usize,
    pub chars_per_token: f64,
    /// The window starts no higher than this line: an arrival's smaller first window, sized by
    /// the time its prompt may take (see `scheduler/places.rs`).
    pub first_line: Option<usize>,
}

/// Characters per token that a budget assumes until a document shows denser text. Code
/// tokenizes to more (Qwen2.5-Coder: 3 to 4 characters per token on the replay's Python, Rust
/// and JavaScript); digits are one token each in many vocabularies and data files come near 1.
/// A prompt that still has too many tokens is refused by the engine (never cut), and the job
/// is planned again with the density it measured (`plan::density_after`).
pub const DEFAULT_CHARS_PER_TOKEN: f64 = 2.0;

impl Budget {
    pub const UNLIMITED: Budget = Budget { tokens: usize::MAX, chars_per_token: DEFAULT_CHARS_PER_TOKEN, first_line: None };

    /// The characters of text that fit, besides the special tokens and labels.
    pub fn chars(&self) -> usize {
        if self.tokens == usize::MAX {
            return usize::MAX;
        }
        (self.tokens.saturating_sub(STRUCTURE_TOKENS) as f64 * self.chars_per_token) as usize
    }
}

/// What names the lines below the cursor when they go in front (`suffix_in_front`).
const BELOW_LABEL: &str = "(the lines below the cursor)\n";

/// The most tokens that the special tokens and labels of a prompt take besides its text.
const STRUCTURE_TOKENS: usize = 8;

/// Builds the prompt for a cursor position within `token_budget` tokens, with other files'
/// chunks in front when the model has the tokens to separate files. When the budget is smaller
/// than the windows, the parts give way in this order: other files' chunks (oldest first), the
/// top of the window above the cursor (whole lines), the lines below the cursor, the start of
/// the cursor line. The special tokens always stay.
pub fn build_prompt_with(
    rope: &Rope,
    cursor: CursorPosition,
    windows: &WindowConfig,
    special: SpecialSupport,
    cross_file: Option<&CrossFile>,
    budget: Budget,
) -> Result<BuiltPrompt, PositionError> {
    let cursor_idx = cursor_char_idx(rope, cursor)?;
    let mut char_budget = budget.chars();
    let cross_file = cross_file.filter(|cross_file| special.fim && special.file_separator && !cross_file.chunks.is_empty());
    let labels = cross_file.map_or(0, |cross_file| cross_file.repo.as_ref().map_or(0, |repo| repo.chars().count() + 1) + cross_file.file_label.chars().count() + 1);
    let suffix_in_front = windows.suffix_in_front && special.fim && special.file_separator;
    char_budget = char_budget.saturating_sub(labels + if suffix_in_front { BELOW_LABEL.chars().count() } else { 0 });
    let line_start_idx = rope.line_to_char(cursor.line);
    let first_line = window_first_line(cursor.line, windows).max(budget.first_line.unwrap_or(0).min(cursor.line));
    let window_start_idx = rope.line_to_char(first_line);

    let line_head_full = rope.slice(line_start_idx..cursor_idx);
    let line_head = last_chars(&line_head_full.to_string(), windows.max_line_head_chars.min(char_budget / 2));
    char_budget -= line_head.chars().count();
    let max_suffix_chars = windows.max_suffix_chars.min(char_budget / 3);
    let line_end_idx = line_start_idx + line_len_chars(rope, cursor.line);
    let line_tail = rope.slice(cursor_idx..line_end_idx).to_string();
    let next_lines_start = if cursor.line + 1 < rope.len_lines() {
        rope.line_to_char(cursor.line + 1)
    } else {
        rope.len_chars()
    };
    let next_lines_end_line = (cursor.line + 1 + windows.suffix_lines).min(rope.len_lines());
    let next_lines_end = if next_lines_end_line < rope.len_lines() {
        rope.line_to_char(next_lines_end_line)
    } else {
        rope.len_chars()
    };
    let next_lines = rope.slice(next_lines_start..next_lines_end.max(next_lines_start)).to_string();
    let line_break = rope.slice(line_end_idx..next_lines_start).to_string();
    let below = if suffix_in_front { "" } else { next_lines.as_str() };
    let suffix = first_chars(&format!("{line_tail}{line_break}{below}"), max_suffix_chars);
    let below_in_front = if suffix_in_front { first_chars(&next_lines, max_suffix_chars) } else { String::new() };
    char_budget = char_budget.saturating_sub(suffix.chars().count() + below_in_front.chars().count());

    let mut window = rope.slice(window_start_idx..line_start_idx).to_string();
    let max_window_chars = windows.max_prefix_chars.min(char_budget);
    if window.chars().count() > max_window_chars {
        window = cut_to_last_chars_on_line_boundary(&window, max_window_chars);
    }
    char_budget = char_budget.saturating_sub(window.chars().count());

    let mut prompt = Prompt::default();
    if special.bos {
        prompt.push_special(Special::Bos);
    }
    if let Some(cross_file) = cross_file {
        if let (true, Some(repo)) = (special.repo_name, &cross_file.repo) {
            prompt.push_special(Special::RepoName);
            prompt.push_text(format!("{repo}\n"));
        }
        for chunk in chunks_within(&cross_file.chunks, char_budget) {
            prompt.push_special(Special::FileSeparator);
            let line_break = if chunk.text.ends_with('\n') { "" } else { "\n" };
            prompt.push_text(format!("{}\n{}{line_break}", chunk.label, chunk.text));
        }
        prompt.push_special(Special::FileSeparator);
        prompt.push_text(format!("{}\n", cross_file.file_label));
    }
    let suffix_in_front = windows.suffix_in_front && special.fim && special.file_separator;
    if suffix_in_front {
        prompt.push_special(Special::FileSeparator);
        prompt.push_text(format!("{BELOW_LABEL}{below_in_front}"));
        prompt.push_special(Special::FileSeparator);
    }
    if special.fim {
        prompt.push_special(Special::FimPrefix);
        prompt.push_text(window);
        prompt.push_special(Special::FimSuffix);
        prompt.push_text(suffix);
        prompt.push_special(Special::FimMiddle);
        prompt.push_text(line_head.clone());
    } else {
        prompt.push_text(window);
        prompt.push_text(line_head.clone());
    }
    Ok(BuiltPrompt { prompt, line_head, line_tail, next_lines })
}

/// The first line of the window above a cursor line: at least `prefix_lines` up, anchored to a
/// multiple of `anchor_lines` so it moves rarely.
pub fn window_first_line(cursor_line: usize, windows: &WindowConfig) -> usize {
    let anchor = windows.anchor_lines.max(1);
    cursor_line.saturating_sub(windows.prefix_lines) / anchor * anchor
}

/// The characters of a prompt's text pieces (its special tokens left out).
pub fn text_chars(prompt: &Prompt) -> usize {
    prompt.pieces.iter().map(|piece| if let crate::engine::Piece::Text(text) = piece { text.chars().count() } else { 0 }).sum()
}

/// The newest chunks whose text (with its label and line breaks) fits in `char_budget`
/// characters, in their order.
fn chunks_within(chunks: &[Chunk], mut char_budget: usize) -> Vec<&Chunk> {
    let mut kept: Vec<&Chunk> = Vec::new();
    for chunk in chunks.iter().rev() {
        let n_chars = chunk.label.chars().count() + chunk.text.chars().count() + 2;
        if n_chars > char_budget {
            break;
        }
        char_budget -= n_chars;
        kept.push(chunk);
    }
    kept.reverse();
    kept
}

fn last_chars(text: &str, max_chars: usize) -> String {
    let n_chars = text.chars().count();
    if n_chars <= max_chars {
        return text.to_string();
    }
    text.chars().skip(n_chars - max_chars).collect()
}

fn first_chars(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Keeps at most `max_chars` of the end of `text`, starting on a line boundary when one exists
/// in the kept part (a window that starts mid-line confuses the model about indentation).
fn cut_to_last_chars_on_line_boundary(text: &str, max_chars: usize) -> String {
    let kept = last_chars(text, max_chars);
    match kept.find('\n') {
        Some(newline_idx) if newline_idx + 1 < kept.len() => kept[newline_idx + 1..].to_string(),
        _ => kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Piece;

    const FIM: SpecialSupport = SpecialSupport { fim: true, file_separator: true, repo_name: true, bos: false };
    const PLAIN: SpecialSupport = SpecialSupport { fim: false, file_separator: false, repo_name: false, bos: true };

    fn rope(text: &str) -> Rope {
        Rope::from_str(text)
    }

    #[test]
    fn fim_layout_puts_line_head_after_middle_marker() {
        let doc = rope("def area(radius):\n    return 3.14 * \n\nprint(area(2))\n");
        let built = build_prompt(&doc, CursorPosition { line: 1, column: 18 }, &WindowConfig::default(), FIM).unwrap();
        assert_eq!(
            built.prompt.to_debug_string(),
            "<FimPrefix>def area(radius):\n<FimSuffix>\n\nprint(area(2))\n<FimMiddle>    return 3.14 * "
        );
        assert_eq!(built.line_head, "    return 3.14 * ");
        assert_eq!(built.line_tail, "");
    }

    #[test]
    fn typing_only_changes_the_last_piece() {
        let before = rope("fn main() {\n    let x = \n}\n");
        let after = rope("fn main() {\n    let x = 4\n}\n");
        let windows = WindowConfig::default();
        let first = build_prompt(&before, CursorPosition { line: 1, column: 12 }, &windows, FIM).unwrap();
        let second = build_prompt(&after, CursorPosition { line: 1, column: 13 }, &windows, FIM).unwrap();
        let n = first.prompt.pieces.len();
        assert_eq!(n, second.prompt.pieces.len());
        assert_eq!(first.prompt.pieces[..n - 1], second.prompt.pieces[..n - 1]);
        assert_eq!(second.prompt.pieces[n - 1], Piece::Text("    let x = 4".into()));
    }

    #[test]
    fn plain_layout_without_fim_tokens() {
        let doc = rope("# Title\nSome text");
        let built = build_prompt(&doc, CursorPosition { line: 1, column: 4 }, &WindowConfig::default(), PLAIN).unwrap();
        assert_eq!(built.prompt.to_debug_string(), "<Bos># Title\nSome");
        assert_eq!(built.line_tail, " text");
    }

    #[test]
    fn window_is_anchored_and_moves_rarely() {
        let text: String = (0..200).map(|idx| format!("line {idx}\n")).collect();
        let doc = rope(&text);
        let windows = WindowConfig { prefix_lines: 10, anchor_lines: 8, ..WindowConfig::default() };
        let at = |line| {
            let built = build_prompt(&doc, CursorPosition { line, column: 0 }, &windows, PLAIN).unwrap();
            match &built.prompt.pieces[1] {
                Piece::Text(text) => text.lines().next().unwrap().to_string(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(at(100), "line 88");
        assert_eq!(at(101), "line 88");
        assert_eq!(at(105), "line 88");
        assert_eq!(at(106), "line 96");
    }

    #[test]
    fn positions_out_of_range_are_errors() {
        let doc = rope("ab\ncd");
        let windows = WindowConfig::default();
        assert_eq!(
            build_prompt(&doc, CursorPosition { line: 5, column: 0 }, &windows, FIM).unwrap_err(),
            PositionError::LineOutOfRange { line: 5, n_lines: 2 }
        );
        assert_eq!(
            build_prompt(&doc, CursorPosition { line: 0, column: 3 }, &windows, FIM).unwrap_err(),
            PositionError::ColumnOutOfRange { line: 0, column: 3, line_len: 2 }
        );
        assert!(build_prompt(&doc, CursorPosition { line: 1, column: 2 }, &windows, FIM).is_ok());
    }

    #[test]
    fn crlf_line_endings_are_not_part_of_the_line() {
        let doc = rope("a = 1\r\nb = \r\nc\r\n");
        assert_eq!(line_len_chars(&doc, 1), 4);
        let built = build_prompt(&doc, CursorPosition { line: 1, column: 4 }, &WindowConfig::default(), FIM).unwrap();
        assert_eq!(built.line_tail, "");
        assert_eq!(built.prompt.to_debug_string(), "<FimPrefix>a = 1\r\n<FimSuffix>\r\nc\r\n<FimMiddle>b = ");
    }

    #[test]
    fn other_files_go_in_front_in_the_repository_format() {
        let doc = rope("x = 1\ny = \n");
        let chunk = Chunk { uri: "file:///p/util.py".into(), label: "util.py".into(), first_line: 0, n_lines: 1, text: "def helper(): pass\n".into() };
        let cross_file = CrossFile { repo: Some("p".into()), chunks: Arc::new(vec![chunk]), file_label: "main.py".into() };
        let cursor = CursorPosition { line: 1, column: 4 };
        let built = build_prompt_with(&doc, cursor, &WindowConfig::default(), FIM, Some(&cross_file), Budget::UNLIMITED).unwrap();
        assert_eq!(
            built.prompt.to_debug_string(),
            "<RepoName>p\n<FileSeparator>util.py\ndef helper(): pass\n<FileSeparator>main.py\n<FimPrefix>x = 1\n<FimSuffix>\n<FimMiddle>y = "
        );
        // No chunks, or no file separator in the vocabulary: the plain layout.
        let plain = build_prompt(&doc, cursor, &WindowConfig::default(), FIM).unwrap();
        let empty = CrossFile { chunks: Arc::new(Vec::new()), ..cross_file.clone() };
        assert_eq!(build_prompt_with(&doc, cursor, &WindowConfig::default(), FIM, Some(&empty), Budget::UNLIMITED).unwrap(), plain);
        let no_separator = SpecialSupport { file_separator: false, ..FIM };
        assert_eq!(build_prompt_with(&doc, cursor, &WindowConfig::default(), no_separator, Some(&cross_file), Budget::UNLIMITED).unwrap(), build_prompt(&doc, cursor, &WindowConfig::default(), no_separator).unwrap());
    }

    #[test]
    fn the_lines_below_can_go_in_front() {
        let doc = rope("a = 1\nb = \nc = 3\n");
        let windows = WindowConfig { suffix_in_front: true, ..WindowConfig::default() };
        let built = build_prompt(&doc, CursorPosition { line: 1, column: 4 }, &windows, FIM).unwrap();
        assert_eq!(
            built.prompt.to_debug_string(),
            "<FileSeparator>(the lines below the cursor)\nc = 3\n<FileSeparator><FimPrefix>a = 1\n<FimSuffix>\n<FimMiddle>b = "
        );
    }

    #[test]
    fn a_small_token_budget_shortens_the_window_and_keeps_the_structure() {
        let text: String = (0..100).map(|idx| format!("value_{idx} = compute({idx})\n")).collect();
        let doc = rope(&format!("{text}result = \nprint(result)\n"));
        let cursor = CursorPosition { line: 100, column: 9 };
        let chunk = Chunk { uri: "file:///p/util.py".into(), label: "util.py".into(), first_line: 0, n_lines: 1, text: "def compute(x): return x\n".repeat(40) };
        let cross_file = CrossFile { repo: Some("p".into()), chunks: Arc::new(vec![chunk]), file_label: "main.py".into() };
        let budget = Budget { tokens: 120, chars_per_token: DEFAULT_CHARS_PER_TOKEN, first_line: None };
        let built = build_prompt_with(&doc, cursor, &WindowConfig::default(), FIM, Some(&cross_file), budget).unwrap();
        let shown = built.prompt.to_debug_string();
        assert!(text_chars(&built.prompt) <= 240, "{} characters of text", text_chars(&built.prompt));
        // Every special token of the layout is there, in order, and the line head is whole.
        let order: Vec<&Piece> = built.prompt.pieces.iter().filter(|piece| matches!(piece, Piece::Special(_))).collect();
        assert_eq!(order, [&Piece::Special(Special::RepoName), &Piece::Special(Special::FileSeparator), &Piece::Special(Special::FimPrefix), &Piece::Special(Special::FimSuffix), &Piece::Special(Special::FimMiddle)]);
        assert!(shown.ends_with("<FimMiddle>result = "), "{shown}");
        assert!(shown.contains("<FimSuffix>\nprint(result)\n"), "{shown}");
        // The window keeps the lines nearest the cursor, starting on a line of its own; the
        // other file's chunk, which did not fit, is left out.
        let window = shown.split("<FimPrefix>").nth(1).unwrap().split("<FimSuffix>").next().unwrap();
        assert!(window.starts_with("value_") && window.ends_with("value_99 = compute(99)\n"), "{window}");
        assert!(!shown.contains("def compute"), "{shown}");
    }

    #[test]
    fn huge_lines_are_capped() {
        let long_line = "x".repeat(50_000);
        let doc = rope(&format!("{long_line}\n{long_line}"));
        let windows = WindowConfig::default();
        let built = build_prompt(&doc, CursorPosition { line: 1, column: 50_000 }, &windows, FIM).unwrap();
        assert!(built.prompt.to_debug_string().chars().count() < windows.max_prefix_chars + windows.max_suffix_chars + windows.max_line_head_chars + 50);
    }
}
