//! Answering a completion request within the latency budget: from the job that covers the
//! request's state (typed-ahead included), with the whole suggestion when it is ready in time,
//! its complete words so far for clients that hear `ghostline/suggestionReady`, or nothing
//! yet with a `ReadyWaiter` that resolves when the suggestion grows.
//!
//! The wait counts from the keystroke (the change that made the request's version), not from
//! the request. A budget answer does not wait at all when no token can arrive in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{typed_ahead, ActiveJob};
use super::suggestion::*;
use super::{ms_since, Scheduler};
use crate::config::Config;
use crate::engine::{JobOutcome, Progress};
use crate::plan::{CursorState, LineSplit};

/// How much earlier than the budget a budgeted wait ends (see `answer_within`).
const BUDGET_MARGIN_MS: u64 = 3;

/// How waiting on a job ended.
enum Settled {
    /// It finished, or (for a budget answer) has complete words to show.
    Yes,
    NotYet,
    /// Its progress channel closed: the engine dropped it.
    JobGone,
}

/// A request being answered: its state, how it waits and until when.
#[derive(Clone, Copy)]
struct Request<'a> {
    state: &'a CursorState,
    waiting: Waiting,
    deadline: Instant,
    keystroke: Instant,
    split: &'a LineSplit,
    /// Partial suggestions end at a word boundary (`partialTokens` off).
    whole_words: bool,
}

impl Scheduler {
    /// Answers a completion request at a cursor state.
    pub async fn complete(&self, state: CursorState, waiting: Waiting) -> (Answer, Option<ReadyWaiter>) {
        let request_start = Instant::now();
        let keystroke = self.keystrokes.instant_of(&state.uri, state.version);
        let (answer, waiter) = self.answer_within(&state, waiting, keystroke, &self.config(), false).await;
        let mut stats = self.stats_mut();
        stats.counters.requests += 1;
        stats.response_ms.record(ms_since(request_start));
        match &answer {
            Answer::Ready(suggestion) => {
                stats.counters.answered_with_suggestion += 1;
                if suggestion.from_typed_ahead {
                    stats.counters.typed_ahead_hits += 1;
                }
                stats.time_to_suggestion_ms.record(ms_since(keystroke));
            }
            Answer::Empty(_) => stats.counters.answered_empty += 1,
        }
        (answer, waiter)
    }

    /// "Expand Suggestion": a longer suggestion at this state for this request alone: a new job,
    /// multi-line, with four times the settings' tokens and lines; every other request keeps the
    /// settings. Typing on follows that job as any other.
    pub async fn complete_expanded(&self, state: CursorState) -> Answer {
        let base = self.config();
        let config = Config { multi_line: true, max_tokens: (base.max_tokens * 4).min(1024), max_lines: (base.max_lines * 4).min(200), ..(*base).clone() };
        self.answer_within(&state, Waiting::UntilReady, Instant::now(), &config, true).await.0
    }

    /// `fresh`: a new job even when one covers the state (it was planned with other settings).
    async fn answer_within(&self, state: &CursorState, waiting: Waiting, keystroke: Instant, config: &Config, fresh: bool) -> (Answer, Option<ReadyWaiter>) {
        if self.ready_remote().is_none() {
            return (Answer::Empty(EmptyReason::ModelNotReady), None);
        }
        if !config.language_enabled(&state.language_id) {
            return (Answer::Empty(EmptyReason::LanguageDisabled), None);
        }
        let Some(split) = LineSplit::new(&state.rope, state.cursor_char_idx, state.language()) else {
            return (Answer::Empty(EmptyReason::BadPosition), None);
        };
        // The budget counts from the keystroke, not from the request: the editor sees the
        // whole time since the key was pressed. Timers fire on whole milliseconds, rounding up,
        // and the runtime wakes up to a millisecond after that (measured: a wait of 7 ms ended
        // 8.2 ms after the request at the median); the answer then still has to reach the
        // editor, which takes up to 3 ms more at p99 while the model holds both cores of a
        // 2-core machine (benches/soak.py). So the wait ends three milliseconds early; a token
        // that comes later is announced with `ghostline/suggestionReady` as usual.
        let deadline = match waiting {
            Waiting::Budget => keystroke + Duration::from_millis(config.budget_ms.saturating_sub(BUDGET_MARGIN_MS).max(config.budget_ms / 2)),
            Waiting::FirstLine | Waiting::UntilReady => keystroke + Duration::from_millis(config.max_wait_ms),
        };
        let request = Request { state, waiting, deadline, keystroke, split: &split, whole_words: !config.partial_tokens };
        let start_or_cover = || self.start_job(state, config).or_else(|| self.covering_job(state, &split, config));
        let first = if fresh { self.start_fresh_job(state, config) } else { self.covering_job(state, &split, config).or_else(start_or_cover) };
        let Some(mut active) = first else {
            return (Answer::Empty(EmptyReason::BadPosition), None);
        };
        let mut restarted = false;
        loop {
            let typed = typed_ahead(&active, &state.uri, &split).unwrap_or_default().into_owned();
            let (answer, waiter, finished_elsewhere) = self.wait_on(&active, &request, typed).await;
            // A job that finished with text the user did not type (it was followed while still
            // running), or whose prompt was refused as too long, is replaced once by a job for
            // this very state (planned with the measured density; the job's watcher may have
            // started that one already).
            let refused = self.densities.learn(&active);
            if refused {
                self.replace_refused(&active);
            }
            if (finished_elsewhere || refused) && !restarted {
                restarted = true;
                match self.covering_job(state, &split, config).or_else(start_or_cover) {
                    Some(next) => {
                        active = next;
                        continue;
                    }
                    None => return (Answer::Empty(EmptyReason::BadPosition), None),
                }
            }
            // Superseded while this request waited by a newer job that serves the same state (a
            // remote job whose text disagreed with the keys typed after its state, replaced by
            // one for this state): the answer is that job's.
            if matches!(answer, Answer::Empty(EmptyReason::Outdated)) && matches!(active.job.snapshot().outcome(), JobOutcome::Interrupted(_)) {
                if let Some(next) = self.covering_job(state, &split, config).filter(|next| !Arc::ptr_eq(next, &active)) {
                    active = next;
                    continue;
                }
            }
            return (answer, waiter);
        }
    }

    /// Waits on one job until the deadline; the answer, a waiter for an early answer, and
    /// whether the job finished with text that disagrees with what was typed.
    async fn wait_on(&self, active: &Arc<ActiveJob>, request: &Request<'_>, typed: String) -> (Answer, Option<ReadyWaiter>, bool) {
        let Request { state, waiting, deadline, keystroke, split, whole_words } = *request;
        let mut progress = active.job.subscribe();
        // A client that is told when the suggestion grows may be shown its first words while
        // the rest is generated; any other client gets the whole suggestion.
        let partial_ok = waiting == Waiting::Budget;
        let first_line_ok = waiting == Waiting::FirstLine;
        let may_grow = !partial_ok || self.speed.may_grow_before(&progress.borrow(), deadline);
        let settles = |progress: &Progress| {
            progress.done.is_some()
                || (partial_ok && partial_suggestion(progress, &typed, split, whole_words).is_some())
                || (first_line_ok && first_line_suggestion(progress, &typed, split).is_some())
        };
        // Without a chance of growing in time the answer is what is there now: no timer at all
        // (tokio's timers round up to the next millisecond, so even a zero wait costs one).
        let settled = if may_grow {
            match tokio::time::timeout_at(deadline.into(), progress.wait_for(settles)).await {
                Ok(Ok(_)) => Settled::Yes,
                Ok(Err(_)) => Settled::JobGone,
                Err(_) => Settled::NotYet,
            }
        } else if settles(&progress.borrow_and_update()) {
            Settled::Yes
        } else {
            Settled::NotYet
        };
        let snapshot = progress.borrow().clone();
        let waiter = |answered_chars: usize| ReadyWaiter {
            progress: progress.clone(),
            keystroke,
            typed: typed.clone(),
            split: split.clone(),
            answered_chars,
            state: state.clone(),
            job: active.clone(),
        };
        match settled {
            // Its first line is complete; the rest is typed-ahead for the next request.
            Settled::Yes if snapshot.done.is_none() && first_line_ok => match first_line_suggestion(&snapshot, &typed, split) {
                Some(suggestion) => (Answer::Ready(suggestion), None, false),
                None => (Answer::Empty(EmptyReason::NotReadyYet), None, false),
            },
            Settled::Yes if snapshot.done.is_none() => match partial_suggestion(&snapshot, &typed, split, whole_words) {
                // The first words are ready; the client hears again when there is more.
                Some(suggestion) => {
                    let answered_chars = suggestion.text.chars().count();
                    (Answer::Ready(suggestion), Some(waiter(answered_chars)), false)
                }
                None => (Answer::Empty(EmptyReason::NotReadyYet), Some(waiter(0)), false),
            },
            Settled::Yes => {
                let answer = answer_from(&snapshot, &typed, split);
                let finished_elsewhere = matches!(answer, Answer::Empty(EmptyReason::Outdated)) && matches!(snapshot.outcome(), JobOutcome::Finished(_));
                (answer, None, finished_elsewhere)
            }
            Settled::JobGone => (Answer::Empty(EmptyReason::Outdated), None, false),
            Settled::NotYet if waiting == Waiting::Budget => (Answer::Empty(EmptyReason::NotReadyYet), Some(waiter(0)), false),
            Settled::NotYet => (Answer::Empty(EmptyReason::NotReadyYet), None, false),
        }
    }

    /// Waits until the suggestion behind an early answer grows past what was answered (its first
    /// words, or the whole of it); returns whether that is worth a ready notification.
    /// When the job's text goes another way than the characters typed since its state (it
    /// covered them while it had no text), the wait follows the job for the request's state
    /// (starting it when no one has and the request's state is still the latest), once.
    pub async fn wait_ready(&self, mut waiter: ReadyWaiter, max_wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut followed = false;
        let whole_words = !self.config().partial_tokens;
        let progress = loop {
            let (typed, split, answered_chars) = (waiter.typed.clone(), waiter.split.clone(), waiter.answered_chars);
            let grown = move |progress: &Progress| match &progress.done {
                Some(_) => true,
                None => partial_suggestion(progress, &typed, &split, whole_words).is_some_and(|partial| partial.text.chars().count() > answered_chars),
            };
            let typed = waiter.typed.clone();
            let went_elsewhere = move |progress: &Progress| !progress.text.starts_with(typed.as_str()) && !typed.starts_with(progress.text.as_str());
            let Ok(Ok(progress)) = tokio::time::timeout_at(deadline, waiter.progress.wait_for(|progress| grown(progress) || went_elsewhere(progress))).await else {
                return false;
            };
            let elsewhere = went_elsewhere(&progress) || (progress.done.is_some() && matches!(answer_from(&progress, &waiter.typed, &waiter.split), Answer::Empty(EmptyReason::Outdated)));
            drop(progress);
            if !elsewhere || followed || waiter.answered_chars > 0 {
                break waiter.progress.borrow().clone();
            }
            followed = true;
            let Some(next) = self.job_for_waiter(&waiter) else { return false };
            waiter.typed = typed_ahead(&next, &waiter.state.uri, &waiter.split).unwrap_or_default().into_owned();
            waiter.progress = next.job.subscribe();
            waiter.job = next;
        };
        // A suggestion still being generated has grown already (that is what was waited for);
        // a finished one must still be longer than what was answered.
        let useful = progress.done.is_none()
            || matches!(answer_from(&progress, &waiter.typed, &waiter.split), Answer::Ready(suggestion) if suggestion.text.chars().count() > waiter.answered_chars);
        if useful {
            let mut stats = self.stats_mut();
            stats.counters.ready_notifications += 1;
            if waiter.answered_chars == 0 {
                stats.time_to_suggestion_ms.record(ms_since(waiter.keystroke));
            }
        }
        useful
    }
}

impl Scheduler {
    /// The job that serves a waiter's state now that its own job went another way: the one
    /// covering it, else a new one while the state is still the latest change.
    fn job_for_waiter(&self, waiter: &ReadyWaiter) -> Option<Arc<ActiveJob>> {
        let config = self.config();
        let covering = || self.covering_job(&waiter.state, &waiter.split, &config).filter(|next| !Arc::ptr_eq(next, &waiter.job));
        if let Some(next) = covering() {
            return Some(next);
        }
        if !self.keystrokes.is_latest(&waiter.state.uri, waiter.state.version) {
            return None;
        }
        // Only while the waiter's job is still the active one (`follow_undecided` may replace it
        // at the same time: one of the two starts the job, the other finds it covering).
        let started = self.split_needing_job(&waiter.state, &config).and_then(|_| self.start_job_replacing(&waiter.state, &config, Some(&waiter.job), false));
        started.or_else(covering)
    }
}
