//! What an answer is: how a request waits (`Waiting`), a suggestion or the reason there is none,
//! the waiter that resolves when a suggestion grows, the token speed that says whether waiting
//! can pay off, and the suggestion cut from a job's text (its complete words so far, its first
//! line, or the whole finished text), cleaned for the state the user typed to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ropey::Rope;
use tokio::sync::watch;

use super::slot::ActiveJob;
use crate::engine::{Completion, JobOutcome, Progress};
use crate::plan::{CursorState, LineSplit};
use crate::postprocess::clean_suggestion;
use crate::sync::MutexExt;

/// How a request wants to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The client handles `ghostline/suggestionReady`: answer within the budget.
    Budget,
    /// Any other client, asked while the person types (an automatic trigger): the first line
    /// of the suggestion as soon as it is complete, or the whole suggestion if that is sooner,
    /// up to the maximum wait. A multi-line suggestion (48 tokens at 40 ms is two seconds) goes
    /// on being generated: accepting the line and asking again there gets the next one from it
    /// as typed-ahead.
    FirstLine,
    /// Any other client, asked on purpose (an invoked trigger, a completion list): the whole
    /// suggestion, up to the maximum wait.
    UntilReady,
}

/// A suggestion to show at the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// Text to insert at the cursor.
    pub text: String,
    /// The cursor line's text after the cursor, which the suggestion is shown before.
    pub line_tail: String,
    pub from_typed_ahead: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyReason {
    ModelNotReady,
    LanguageDisabled,
    BadPosition,
    /// The model had nothing (more) to suggest here.
    NothingToSuggest,
    /// Not ready within the budget; a ready notification may follow.
    NotReadyYet,
    /// The document changed or a newer job replaced this one while waiting.
    Outdated,
    /// Too many requests were waiting; the oldest are answered empty to make room.
    TooManyWaiting,
}

#[derive(Debug)]
pub enum Answer {
    Ready(Suggestion),
    Empty(EmptyReason),
}

/// Returned with an answer given before the suggestion was ready: resolves when it is.
pub struct ReadyWaiter {
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) keystroke: Instant,
    /// The characters typed since the job's state, and the cursor line's split.
    pub(super) typed: String,
    pub(super) split: LineSplit,
    /// The length of the suggestion already answered (0 for an empty answer).
    pub(super) answered_chars: usize,
    /// The request's state (its document, version and cursor), also to follow the job that
    /// replaces this one for it.
    pub state: CursorState,
    /// The job waited on.
    pub(super) job: Arc<ActiveJob>,
}

impl ReadyWaiter {
    /// The document the request was answered for.
    pub fn rope(&self) -> &Rope {
        self.split.rope()
    }
}

/// Recent generation speed: a moving average of ms per token (0 until measured).
#[derive(Default)]
pub(super) struct TokenSpeed {
    pub(super) ms_per_token: Mutex<f64>,
}

impl TokenSpeed {
    pub fn record(&self, completion: &Completion) {
        if completion.generated_tokens < 2 {
            return;
        }
        let measured = completion.generation_ms / completion.generated_tokens as f64;
        let mut average = self.ms_per_token.locked();
        *average = if *average == 0.0 { measured } else { 0.8 * *average + 0.2 * measured };
    }

    /// Whether a job may publish a token before `deadline`: not while its prompt is still
    /// being decoded (a prompt step plus a token take longer than any budget), nor when the
    /// next token is due after it. Waiting then would only delay an empty answer.
    pub(super) fn may_grow_before(&self, progress: &Progress, deadline: Instant) -> bool {
        if progress.done.is_some() {
            return true;
        }
        let ms_per_token = *self.ms_per_token.locked();
        match progress.updated_at {
            _ if ms_per_token == 0.0 => true,
            None => false,
            Some(updated_at) => updated_at + Duration::from_secs_f64(ms_per_token * 0.7 / 1000.0) <= deadline,
        }
    }
}

/// The complete words of a suggestion still being generated, for a state `typed` characters
/// ahead of the job's: the text up to its last word boundary, cleaned. None when no word is
/// complete yet or the typed characters disagree with it.
/// With `whole_words` false, the whole text so far (a word may still grow).
pub(super) fn partial_suggestion(progress: &Progress, typed: &str, split: &LineSplit, whole_words: bool) -> Option<Suggestion> {
    if progress.done.is_some() {
        return None;
    }
    let remainder = progress.text.strip_prefix(typed)?;
    let is_word = |ch: char| ch.is_alphanumeric() || ch == '_';
    // A boundary: the end of a run of non-word characters, or the point where one begins.
    let cut = if whole_words {
        remainder
            .char_indices()
            .zip(remainder.chars().skip(1))
            .filter(|((_, ch), next)| is_word(*ch) != is_word(*next) || !is_word(*ch))
            .map(|((idx, ch), _)| idx + ch.len_utf8())
            .last()?
    } else {
        remainder.len()
    };
    cleaned(&remainder[..cut], typed, split)
}

/// A suggestion's text after the typed characters, cleaned for the cursor; None when nothing is
/// left.
pub(super) fn cleaned(remainder: &str, typed: &str, split: &LineSplit) -> Option<Suggestion> {
    let text = clean_suggestion(&split.head, remainder, &split.tail, split.surroundings());
    if text.is_empty() {
        return None;
    }
    Some(Suggestion { text, line_tail: split.tail.clone(), from_typed_ahead: !typed.is_empty() })
}

/// The first line of a suggestion still being generated, once it is complete (a newline follows
/// it), for a state `typed` characters ahead of the job's: the text up to the end of its first
/// line that holds more than white space (a suggestion after a line that opens a block starts
/// with a line break and the body's first line). None before that line is complete, or when
/// the typed characters disagree with the text.
pub(super) fn first_line_suggestion(progress: &Progress, typed: &str, split: &LineSplit) -> Option<Suggestion> {
    if progress.done.is_some() {
        return None;
    }
    let remainder = progress.text.strip_prefix(typed)?;
    let mut line_start = 0;
    let cut = loop {
        let end = line_start + remainder[line_start..].find('\n')?;
        if !remainder[line_start..end].trim().is_empty() {
            break end;
        }
        line_start = end + 1;
    };
    cleaned(&remainder[..cut], typed, split).filter(|suggestion| !suggestion.text.trim().is_empty())
}

/// Builds the answer from a finished job's progress for a state `typed` characters ahead.
pub(super) fn answer_from(progress: &Progress, typed: &str, split: &LineSplit) -> Answer {
    let completion = match progress.outcome() {
        JobOutcome::Running => return Answer::Empty(EmptyReason::NotReadyYet),
        JobOutcome::Failed(_) => return Answer::Empty(EmptyReason::NothingToSuggest),
        JobOutcome::Interrupted(_) => return Answer::Empty(EmptyReason::Outdated),
        JobOutcome::Finished(completion) => completion,
    };
    let Some(remainder) = completion.text.strip_prefix(typed) else {
        return Answer::Empty(EmptyReason::Outdated);
    };
    match cleaned(remainder, typed, split) {
        Some(suggestion) => Answer::Ready(suggestion),
        None => Answer::Empty(EmptyReason::NothingToSuggest),
    }
}
