//! Turning lines (a comment, or a short note saying what should come) into code: the model
//! writes what follows them on a new line with their indentation. A comment stays and the code
//! goes below it; a note is replaced by the code.

use ropey::Rope;

use super::Scheduler;
use crate::config::Config;
use crate::context;
use crate::engine::{EngineError, GenerateParams, JobOutcome, StopRules};
use crate::plan::{CursorState, JobPlan, PlanHints};
use crate::postprocess::clean_suggestion;
use crate::syntax::{self, Language};

/// An expansion: replace the characters `start_char_idx..end_char_idx` with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub start_char_idx: usize,
    pub end_char_idx: usize,
    pub text: String,
}

/// Why there is no expansion; the server maps each to its LSP error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExpandError {
    #[error("the model is not loaded yet")]
    ModelNotReady,
    #[error("lines {first_line}..{last_line} are not in the document ({n_lines} lines)")]
    LinesOutOfRange { first_line: usize, last_line: usize, n_lines: usize },
    #[error("there is nothing to expand on these lines")]
    NothingToExpand,
    /// A newer edit superseded the expansion's job, or the document moved on meanwhile.
    #[error("the document changed while expanding; ask again")]
    DocumentChanged,
    #[error("the model had nothing to write here")]
    NothingWritten,
    /// The lines are in the document but no prompt could be built there (a position the
    /// document's text cannot hold, as an editor out of step with the server sends).
    #[error("cannot build a prompt at these lines: {0}")]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The most tokens an expansion writes, and the fewest lines it may have.
const EXPANSION_MAX_TOKENS: usize = 256;
const EXPANSION_MIN_LINES: usize = 24;

impl Scheduler {
    /// Expands lines `first_line..=last_line` of a document.
    pub async fn expand(&self, uri: &str, language_id: &str, rope: &Rope, first_line: usize, last_line: usize) -> Result<Expanded, ExpandError> {
        let language = syntax::language_for(language_id, uri);
        let engine = self.ready_engine().ok_or(ExpandError::ModelNotReady)?;
        if first_line > last_line || last_line >= rope.len_lines() {
            return Err(ExpandError::LinesOutOfRange { first_line, last_line, n_lines: rope.len_lines() });
        }
        let lines: Vec<String> = (first_line..=last_line).map(|line| rope.line(line).to_string().trim_end_matches(['\r', '\n']).to_string()).collect();
        if lines.iter().all(|line| line.trim().is_empty()) {
            return Err(ExpandError::NothingToExpand);
        }
        let indent: String = lines[0].chars().take_while(|ch| ch.is_whitespace()).collect();
        let is_comment = lines.iter().filter(|line| !line.trim().is_empty()).all(|line| starts_with_comment(line.trim_start(), language));
        let first_start = rope.line_to_char(first_line);
        let last_end = rope.line_to_char(last_line) + context::line_len_chars(rope, last_line);
        let mut with_new_line = rope.clone();
        with_new_line.insert(last_end, &format!("\n{indent}"));
        let state = CursorState {
            uri: uri.to_string(),
            version: 0,
            cursor_char_idx: last_end + 1 + indent.chars().count(),
            rope: with_new_line,
            language_id: language_id.to_string(),
            syntax: None,
        };
        let config = self.config();
        let config = Config { max_tokens: EXPANSION_MAX_TOKENS, ..(*config).clone() };
        let plan = JobPlan::new(&state, &config, engine.info(), &PlanHints { chars_per_token: self.densities.get(uri), ..PlanHints::default() })?;
        let params = GenerateParams { max_tokens: EXPANSION_MAX_TOKENS, stop: StopRules::multi_line(config.max_lines.max(EXPANSION_MIN_LINES)), ..GenerateParams::default() };
        // The expansion replaces the active job and whatever runs on standby (under the slot's
        // lock, so idle-time work cannot supersede it).
        let mut job = self.slot.clear_and_submit(|| engine.submit(plan.prompt, params));
        let completion = job.wait().await?;
        let progress = job.snapshot();
        if matches!(progress.outcome(), JobOutcome::Interrupted(_)) {
            return Err(ExpandError::DocumentChanged);
        }
        let code = clean_suggestion(&indent, &completion.text, "", plan.split.surroundings());
        if code.trim().is_empty() {
            return Err(ExpandError::NothingWritten);
        }
        Ok(if is_comment {
            Expanded { start_char_idx: last_end, end_char_idx: last_end, text: format!("\n{indent}{code}") }
        } else {
            Expanded { start_char_idx: first_start, end_char_idx: last_end, text: format!("{indent}{code}") }
        })
    }
}

/// Whether a line starts with a comment marker of its language; without a grammar, of any
/// language Ghostline knows.
fn starts_with_comment(text: &str, language: Option<&'static Language>) -> bool {
    let mut markers = match language {
        Some(language) => language.facts.line_comments.iter().collect::<Vec<_>>(),
        None => syntax::languages().iter().flat_map(|language| &language.facts.line_comments).collect(),
    };
    markers.retain(|marker| !marker.is_empty());
    // A block comment's lines (`/*`, ` * `) are comments too where the language has `//`.
    let block = markers.iter().any(|marker| *marker == "//") && (text.starts_with("/*") || text.starts_with('*'));
    block || markers.iter().any(|marker| text.starts_with(marker.as_str()))
}
