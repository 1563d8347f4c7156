//! The job slot: the one job the user's keystrokes are served from (the active job) and the
//! prefetched jobs waiting for states the user may reach next (standby), behind one lock, so
//! that starting, promoting and clearing are each one step that no other can interleave with.
//!
//! It also decides whether a job covers a cursor state: the same document, line and text after
//! the cursor, and a line head that extends the job's by characters that agree with its
//! suggestion (typed-ahead).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::engine::{GenerateParams, Job, JobOutcome, Prompt};
use super::places::Place;
use crate::plan::{ArrivalWindow, CursorState, LineSplit};
use crate::sync::MutexExt;

/// The cursor state a job was started for, as far as covering is concerned.
#[derive(Debug, Clone)]
pub(super) struct Anchor {
    pub uri: String,
    pub line: usize,
    pub line_head: String,
    pub line_tail: String,
}

impl Anchor {
    pub fn new(uri: &str, split: &LineSplit) -> Anchor {
        Anchor { uri: uri.to_string(), line: split.line, line_head: split.head.clone(), line_tail: split.tail.clone() }
    }
}

/// A submitted job and what it was started from (prefetching derives its jobs from them).
pub(super) struct ActiveJob {
    pub anchor: Anchor,
    pub job: Job,
    pub state: CursorState,
    pub prompt: Prompt,
    pub params: GenerateParams,
    /// Where the job's prompt puts the KV cache, and the arrival's smaller prompt when its
    /// prompt is one.
    pub place: Place,
    pub arrival: Option<ArrivalWindow>,
    pub started: Instant,
    /// The full window's job after an arrival's smaller one: keys typed after its state are
    /// covered by it only once its text agrees with them (while it decodes its long prompt, a
    /// job for the key with the arrival's window answers sooner).
    pub upgrade: bool,
}

impl ActiveJob {
    /// The job as `ghostline/stats` shows it (`currentJob`): its age and where it stands, so a
    /// slow prompt shows while it decodes.
    pub fn describe(&self) -> serde_json::Value {
        let progress = self.job.snapshot();
        let stage = match progress.outcome() {
            JobOutcome::Running if progress.generated_tokens == 0 && progress.text.is_empty() => "prompt",
            JobOutcome::Running => "generating",
            JobOutcome::Finished(_) => "finished",
            JobOutcome::Interrupted(_) => "interrupted",
            JobOutcome::Failed(_) => "failed",
        };
        serde_json::json!({
            "stage": stage,
            "ageMs": (self.started.elapsed().as_secs_f64() * 1000.0).round(),
            "promptTokens": progress.prompt_tokens,
            "promptTokensDone": progress.prompt_tokens_done,
            "generatedTokens": progress.generated_tokens,
            "line": self.anchor.line,
            "arrivalWindow": self.arrival.is_some(),
        })
    }
}

#[derive(Default)]
struct Jobs {
    active: Option<Arc<ActiveJob>>,
    standby: Vec<Arc<ActiveJob>>,
}

/// What starting a job replaced.
pub(super) struct Started {
    pub job: Arc<ActiveJob>,
    /// The replaced active job was still running (it is superseded).
    pub superseded_running: bool,
    /// No job was submitted: the active job covers the state after all (see `start`).
    pub covered: bool,
}

#[derive(Default)]
pub(super) struct JobSlot {
    jobs: Mutex<Jobs>,
}

impl JobSlot {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.locked()
    }

    pub fn active(&self) -> Option<Arc<ActiveJob>> {
        self.lock().active.clone()
    }

    /// Submits a job (`submit` runs under the lock) and makes it the active one, dropping the
    /// standby jobs; when `previous` is given, only while it is still the active job (two who
    /// replace the same job start one job between them). Under the lock, a job submitted for
    /// standby (which checks its origin under the same lock) can never supersede this one, and
    /// the stop-rule plans that `submit` queues reach the planning thread in the order their
    /// jobs reach the engine. With `unless_covered`, an active job that covers that state (one
    /// that someone started since the caller looked) is returned instead of a new one: two who
    /// start a job for the same state start one between them.
    pub fn start(&self, previous: Option<&Arc<ActiveJob>>, unless_covered: Option<(&CursorState, &LineSplit, bool)>, submit: impl FnOnce() -> ActiveJob) -> Option<Started> {
        let mut jobs = self.lock();
        if let Some(previous) = previous {
            if !jobs.active.as_ref().is_some_and(|active| Arc::ptr_eq(active, previous)) {
                return None;
            }
        }
        if let Some((state, split, typed_ahead_on)) = unless_covered {
            if let Some(active) = jobs.active.as_ref().filter(|active| covers(active, state, split, typed_ahead_on)) {
                return Some(Started { job: active.clone(), superseded_running: false, covered: true });
            }
        }
        let active = Arc::new(submit());
        let previous = jobs.active.replace(active.clone());
        jobs.standby.clear();
        let superseded_running = previous.is_some_and(|previous| matches!(previous.job.snapshot().outcome(), JobOutcome::Running));
        Some(Started { job: active, superseded_running, covered: false })
    }

    /// Runs `submit` and keeps its job on standby, only while `origin` is the active job;
    /// None when it no longer is (the user moved on: the work is not wanted).
    pub fn start_standby_after(&self, origin: &Arc<ActiveJob>, submit: impl FnOnce() -> Option<ActiveJob>) -> Option<Option<Arc<ActiveJob>>> {
        let mut jobs = self.lock();
        if !jobs.active.as_ref().is_some_and(|active| Arc::ptr_eq(active, origin)) {
            return None;
        }
        let standby = submit().map(Arc::new);
        if let Some(standby) = &standby {
            jobs.standby.push(standby.clone());
        }
        Some(standby)
    }

    /// Makes `with` (a job on standby) the active job in place of `current`, only while
    /// `current` is still the active job; whether it did.
    pub fn replace_active(&self, current: &Arc<ActiveJob>, with: &Arc<ActiveJob>) -> bool {
        let mut jobs = self.lock();
        if !jobs.active.as_ref().is_some_and(|active| Arc::ptr_eq(active, current)) {
            return false;
        }
        jobs.standby.retain(|job| !Arc::ptr_eq(job, with));
        jobs.active = Some(with.clone());
        true
    }

    /// The active job if it covers this state; else a standby job that does, which becomes the
    /// active job (`promoted` is then true).
    pub fn covering(&self, state: &CursorState, split: &LineSplit, typed_ahead_on: bool) -> Option<(Arc<ActiveJob>, bool)> {
        let mut jobs = self.lock();
        if let Some(active) = jobs.active.as_ref().filter(|active| covers(active, state, split, typed_ahead_on)) {
            return Some((active.clone(), false));
        }
        let idx = jobs.standby.iter().position(|job| covers(job, state, split, typed_ahead_on))?;
        let promoted = jobs.standby.remove(idx);
        jobs.active = Some(promoted.clone());
        Some((promoted, true))
    }

    /// Drops every job (a new engine, an expansion that takes the engine over).
    pub fn clear(&self) {
        let mut jobs = self.lock();
        jobs.active = None;
        jobs.standby.clear();
    }

    /// Runs `submit` with the slot emptied, under its lock (no prefetch job can slip in).
    pub fn clear_and_submit<T>(&self, submit: impl FnOnce() -> T) -> T {
        let mut jobs = self.lock();
        jobs.active = None;
        jobs.standby.clear();
        submit()
    }

    /// Cancels and drops the jobs when the active one belongs to this document.
    pub fn cancel_for(&self, uri: &str) {
        let mut jobs = self.lock();
        if jobs.active.as_ref().is_some_and(|active| active.anchor.uri == uri) {
            if let Some(active) = jobs.active.take() {
                active.job.cancel();
            }
            for job in jobs.standby.drain(..) {
                job.job.cancel();
            }
        }
    }
}

/// The characters typed since the job's state, if this split is that state plus typing: the
/// same document and line, the same text after the cursor, and a head that extends the
/// anchor's. Typing may have crossed lines (a line of the suggestion accepted, Enter pressed
/// where the suggestion starts a new line): then the document must be the job's with the typed
/// text inserted at its cursor, and nothing else changed.
pub(super) fn typed_ahead<'split>(job: &ActiveJob, uri: &str, split: &'split LineSplit) -> Option<Cow<'split, str>> {
    let anchor = &job.anchor;
    if anchor.uri != uri || anchor.line_tail != split.tail || split.line < anchor.line {
        return None;
    }
    if anchor.line == split.line {
        return split.head.strip_prefix(anchor.line_head.as_str()).map(Cow::Borrowed);
    }
    let (before, after) = (&job.state.rope, split.rope());
    let at = job.state.cursor_char_idx;
    let cursor = after.try_line_to_char(split.line).ok()? + split.head.chars().count();
    let typed_chars = cursor.checked_sub(at)?;
    if after.len_chars() != before.len_chars() + typed_chars || at > before.len_chars() {
        return None;
    }
    if after.slice(..at) != before.slice(..at) || after.slice(cursor..) != before.slice(at..) {
        return None;
    }
    Some(Cow::Owned(after.slice(at..cursor).to_string()))
}

/// Whether a job can serve this state (now or when it finishes).
fn covers(active: &ActiveJob, state: &CursorState, split: &LineSplit, typed_ahead_on: bool) -> bool {
    let Some(typed) = typed_ahead(active, &state.uri, split) else { return false };
    let typed = typed.as_ref();
    let progress = active.job.snapshot();
    if progress.is_interrupted_or_failed() {
        return false;
    }
    if typed.is_empty() {
        return true;
    }
    if !typed_ahead_on {
        return false;
    }
    // With no text yet there is nothing to compare the typed characters with, so the running
    // job is kept until its text says whether it agrees (`Scheduler::follow_undecided` starts
    // a job for the latest state when it does not). A server cannot stop a prompt it is
    // decoding: a request per key, each closed at its first piece, showed nothing on a busy
    // server (none on 226 keys, two editors on one 2-core server). On the embedded engine a
    // job per key keeps the prompt decoded so far, but each new job decodes the changed tail
    // and its first token again, and at a human cadence (a key every 120 ms, a prompt step
    // and a token about as long on 2 cores) that left no key of a line with a suggestion.
    let running = matches!(progress.outcome(), JobOutcome::Running);
    if typed.contains('\n') {
        // Across lines only what the suggestion said (a line of it accepted): a job with no
        // text yet does not keep a cursor that moved to another line.
        return progress.text.starts_with(typed) && (running || progress.text.len() > typed.len());
    }
    if progress.text.is_empty() {
        return running && !active.upgrade;
    }
    if progress.text.starts_with(typed) {
        // Typed characters agree with the suggestion; something must remain.
        running || progress.text.len() > typed.len()
    } else {
        // The suggestion may still grow into what was typed.
        running && typed.starts_with(progress.text.as_str())
    }
}
