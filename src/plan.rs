//! One plan for a job: everything a completion at a cursor needs, worked out the same way for
//! the language server and for `ghostline complete`, so the command line shows exactly what an
//! editor gets. A plan holds the prompt (within the model's token budget), the generation
//! parameters, the stop rules (the plain ones at once; the syntax tree's when asked, since they
//! may need a parse) and the cursor's line split and surroundings for post-processing.
//!
//! Nothing here calls the model or sees an LSP type, and building a plan never parses: only
//! `tree_stop_rules` may, and the server calls it off the LSP loop.

use std::sync::OnceLock;

use ropey::Rope;

use crate::config::Config;
use crate::context::{self, Budget, CrossFile, CursorPosition, PositionError, DEFAULT_CHARS_PER_TOKEN};
use crate::engine::{EngineError, GenerateParams, ModelInfo, Prompt, StopRules};
use crate::postprocess::{detect_indent, Surroundings};
use crate::syntax::{self, Language, SyntaxTree};

/// A cursor state that a completion is asked for or computed at.
#[derive(Debug, Clone)]
pub struct CursorState {
    pub uri: String,
    pub version: i32,
    pub rope: Rope,
    pub cursor_char_idx: usize,
    pub language_id: String,
    /// The document's syntax tree, when its language has a grammar.
    pub syntax: Option<SyntaxTree>,
}

impl CursorState {
    /// The document's language: from its tree, else from the language id or the file name.
    pub fn language(&self) -> Option<&'static Language> {
        match &self.syntax {
            Some(tree) => Some(tree.language),
            None => syntax::language_for(&self.language_id, &self.uri),
        }
    }
}

/// The text of a cursor's line, split at the cursor, and the document around it.
#[derive(Debug, Clone)]
pub struct LineSplit {
    pub line: usize,
    pub head: String,
    pub tail: String,
    /// The document, for the post-processing's view of what is around the cursor (cloning a
    /// rope is cheap); that view is read once, when a suggestion is first cleaned.
    rope: Rope,
    language: Option<&'static Language>,
    surroundings: OnceLock<Surroundings>,
}

/// Lines after the cursor line that a suggestion must not repeat, and the lines above and below
/// the cursor that the indentation style is read from.
const NEXT_LINES: usize = 8;
const INDENT_SAMPLE_ABOVE: usize = 32;
const INDENT_SAMPLE_BELOW: usize = 8;

impl LineSplit {
    /// The cursor's line split at the cursor; None when the cursor is not in the document.
    pub fn new(rope: &Rope, cursor_char_idx: usize, language: Option<&'static Language>) -> Option<LineSplit> {
        if cursor_char_idx > rope.len_chars() {
            return None;
        }
        let line = rope.char_to_line(cursor_char_idx);
        let line_start = rope.line_to_char(line);
        let line_end = line_start + context::line_len_chars(rope, line);
        if cursor_char_idx > line_end {
            return None;
        }
        Some(LineSplit {
            line,
            head: rope.slice(line_start..cursor_char_idx).to_string(),
            tail: rope.slice(cursor_char_idx..line_end).to_string(),
            rope: rope.clone(),
            language,
            surroundings: OnceLock::new(),
        })
    }

    /// The document the split was taken from.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The lines below the cursor, the file's indentation and the language's brackets.
    pub fn surroundings(&self) -> &Surroundings {
        self.surroundings.get_or_init(|| {
            let rope = &self.rope;
            let n_lines = rope.len_lines();
            let next_lines: String = (self.line + 1..(self.line + 1 + NEXT_LINES).min(n_lines)).map(|idx| rope.line(idx).to_string()).collect();
            let sample: Vec<String> = (self.line.saturating_sub(INDENT_SAMPLE_ABOVE)..(self.line + INDENT_SAMPLE_BELOW).min(n_lines)).map(|idx| rope.line(idx).to_string()).collect();
            let brackets = match self.language {
                Some(language) => language.facts.lexical().brackets,
                None => Surroundings::default().brackets,
            };
            Surroundings { next_lines, indent: detect_indent(sample.iter().map(String::as_str)), brackets }
        })
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the cursor (character {char_idx}) is not in the document ({len_chars} characters) or not on a line")]
    CursorOutside { char_idx: usize, len_chars: usize },
    #[error(transparent)]
    Position(#[from] PositionError),
}

/// What the scheduler knows besides the state and the settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanHints<'a> {
    /// Other files' chunks for the front of the prompt.
    pub cross_file: Option<&'a CrossFile>,
    /// The document's measured text density (None until a prompt of it was refused as too long).
    pub chars_per_token: Option<f64>,
    /// An arrival's smaller first prompt (see `ArrivalWindow`).
    pub arrival: Option<ArrivalWindow>,
}

/// An arrival's prompt, sized for the prompt speed measured on this machine: the window starts
/// no higher than `first_line`, and the suffix holds at most `suffix_lines` lines below the
/// cursor line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalWindow {
    pub first_line: usize,
    pub suffix_lines: usize,
}

/// The lines below the cursor line that go into the suffix at a cursor: on a line that holds
/// only whitespace (an empty, auto-indented line in the middle of code) the lines below often
/// say what the line must do, and `blankLineSuffixLines` of them go in; elsewhere `suffixLines`.
/// Measured both ways: at a blank line 16 lines below gave 28% of single lines passing the
/// tests against 19% with 4 (`benches/infill.py`); on a line being typed, 16 lines kept for the
/// whole line cost 7% of the replay's correct characters per keystroke. So the first typed
/// character goes back to the short suffix (one re-decode of the suffix, the window above
/// stays in the KV cache), while typed-ahead keeps serving the blank line's suggestion.
pub fn suffix_lines_at(rope: &Rope, cursor_char_idx: usize, config: &Config) -> usize {
    if config.blank_line_suffix_lines == 0 || cursor_char_idx > rope.len_chars() {
        return config.windows.suffix_lines;
    }
    let line = rope.char_to_line(cursor_char_idx);
    let blank = rope.line(line).chars().all(char::is_whitespace);
    if blank {
        config.blank_line_suffix_lines
    } else {
        config.windows.suffix_lines
    }
}

/// Everything one job needs.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub prompt: Prompt,
    /// Generation parameters with the plain stop rules (those without a syntax tree).
    pub params: GenerateParams,
    pub split: LineSplit,
    /// How the syntax tree's stop rules are worked out (cheap to clone and send to a thread).
    pub rules: RulesPlan,
}

/// The syntax tree's part of a plan: the tree (None without a grammar or with the `syntax`
/// switch off; it may be behind the text) and what the rules are read with.
#[derive(Debug, Clone)]
pub struct RulesPlan {
    tree: Option<SyntaxTree>,
    split: LineSplit,
    shape: syntax::Shape,
    plain: StopRules,
}

impl JobPlan {
    /// The plan for a job at a cursor state, for the loaded model.
    pub fn new(state: &CursorState, config: &Config, model: &ModelInfo, hints: &PlanHints) -> Result<JobPlan, PlanError> {
        let language = state.language();
        let rope = &state.rope;
        let split = LineSplit::new(rope, state.cursor_char_idx, language).ok_or(PlanError::CursorOutside { char_idx: state.cursor_char_idx, len_chars: rope.len_chars() })?;
        let cursor = CursorPosition { line: split.line, column: split.head.chars().count() };
        // The prompt leaves room for the tokens the job may generate (and one spare).
        let budget = Budget {
            tokens: (model.context_tokens as usize).saturating_sub(config.max_tokens + 1),
            chars_per_token: hints.chars_per_token.unwrap_or(DEFAULT_CHARS_PER_TOKEN),
            first_line: hints.arrival.map(|arrival| arrival.first_line),
        };
        let suffix_lines = suffix_lines_at(rope, state.cursor_char_idx, config).min(hints.arrival.map_or(usize::MAX, |arrival| arrival.suffix_lines));
        let windows = context::WindowConfig { suffix_lines, ..config.windows.clone() };
        let built = context::build_prompt_with(rope, cursor, &windows, model.special, hints.cross_file, budget)?;
        let shape = syntax::Shape { multi_line: config.multi_line, max_lines: config.max_lines, tab_width: crate::postprocess::DEFAULT_TAB_WIDTH };
        let plain = syntax::plain_stop_rules(&split.head, &split.tail, shape);
        let params = GenerateParams { max_tokens: config.max_tokens, stop: plain.clone(), draft_tokens: config.draft_tokens, ..GenerateParams::default() };
        let tree = state.syntax.clone().filter(|_| config.syntax);
        let rules = RulesPlan { tree, split: split.clone(), shape, plain };
        Ok(JobPlan { prompt: built.prompt, params, split, rules })
    }

    /// The prompt and the rules, as one JSON object: what `ghostline complete --plan` prints and
    /// what the server logs (at debug level) for each job, so that the two can be compared.
    pub fn describe(prompt: &str, max_tokens: usize, stop: &StopRules) -> serde_json::Value {
        serde_json::json!({
            "prompt": prompt,
            "max_tokens": max_tokens,
            "stop": format!("{stop:?}"),
        })
    }
}

/// The characters per token a refused prompt measured (with a tenth to spare), for planning the
/// job again within its budget; None for any other error.
pub fn density_after(err: &EngineError, prompt: &Prompt) -> Option<f64> {
    let EngineError::PromptTooLong { prompt_tokens, .. } = err else { return None };
    let chars = context::text_chars(prompt) as f64;
    Some((0.9 * chars / (*prompt_tokens).max(1) as f64).clamp(0.1, DEFAULT_CHARS_PER_TOKEN))
}

impl RulesPlan {
    /// Whether the syntax tree has rules to add (a job should wait for them).
    pub fn has_tree(&self) -> bool {
        self.tree.is_some()
    }

    /// How the suggestion is shaped and where it stops by the syntax tree (parsed first when it
    /// is behind the text), with the tab width the file uses; the plain rules without a tree.
    /// May parse: the server calls it off the LSP loop.
    pub fn work_out(&self) -> StopRules {
        let Some(tree) = &self.tree else { return self.plain.clone() };
        let rope = self.split.rope();
        let tree = tree.fresh(rope);
        let cursor_char_idx = rope.line_to_char(self.split.line) + self.split.head.chars().count();
        let cursor = tree.at(rope, cursor_char_idx);
        let tab_width = self.split.surroundings().tab_width();
        syntax::stop_rules(tree.language, &cursor, &self.split.head, &self.split.tail, syntax::Shape { tab_width, ..self.shape })
    }
}
