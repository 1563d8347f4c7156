//! What runs after a job ends: its token counts and the speed average, and, after a job the
//! user asked for, the idle-time work (one job after the other while that job is still the
//! active one): prefetch jobs on standby (the `prefetch` setting) for the suggestion's other
//! likely starts and for the state after accepting it; after an arrival's smaller window, in a
//! pause of the user's, the same state with the full window (its suggestion replaces the
//! arrival's when it differs, and the client hears of it); then the cross-file snapshot's
//! renewal with a job that warms the KV cache with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ended::IDLE_PANIC_MARKER;
use super::places::{Place, Places};
use super::slot::{ActiveJob, Anchor};
use super::{ring_size, Scheduler};
use crate::config::Config;
use crate::engine::{Engine, GenerateParams, JobOutcome, Prompt};
use crate::plan::{ArrivalWindow, CursorState, JobPlan, LineSplit, PlanHints};
use crate::postprocess::clean_suggestion;
use crate::syntax::SyntaxTree;

/// How long the user must have paused before the cross-file snapshot is renewed, or an
/// arrival's smaller window is replaced by the full one (either moves the start of the prompt:
/// a keystroke during the warm-up would pay for the whole prompt).
const RING_PAUSE: Duration = Duration::from_millis(1000);
const WINDOW_PAUSE: Duration = Duration::from_millis(1000);

/// Who a job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobKind {
    /// The user's keystroke asked for it: idle work may follow it.
    Asked,
    /// Idle work itself.
    Standby,
}

/// One piece of idle work that runs a job on standby.
enum StandbyWork {
    /// A prefetch job for a state the user may reach next.
    Prefetch { anchor: Anchor, state: CursorState, prompt: Prompt, params: GenerateParams, place: Place, arrival: Option<ArrivalWindow> },
    /// The full window at the origin's state, after a job with an arrival's smaller one: the
    /// place is warm from then on, and its suggestion (the model seeing the whole function
    /// instead of a few lines) replaces the arrival's.
    WindowUpgrade,
    /// A new snapshot of the cross-file ring, and a job at the origin's state that decodes
    /// the prompt with it.
    RingWarmUp,
}

impl Scheduler {

    pub(super) async fn idle_work_after(&self, origin: Arc<ActiveJob>) {
        crate::engine::test_fault(IDLE_PANIC_MARKER, &origin.prompt);
        let Some(engine) = self.ready_engine() else { return };
        let config = self.config();
        let mut origin = origin;
        // After an arrival's smaller window, the full one in a pause of the user's. A user who
        // has paused already (arrived by moving, not by typing) gets it before the prefetching:
        // what is shown matters more than the state after accepting it, and the prefetch jobs
        // then start from the better suggestion.
        let mut upgrade = origin.arrival.is_some() && config.cold_prompt_ms > 0;
        if upgrade && self.keystrokes.since_latest() >= WINDOW_PAUSE {
            upgrade = false;
            let Some(upgraded) = self.upgrade_window(&engine, &origin).await else { return };
            origin = upgraded;
        }
        if config.prefetch && !self.prefetch_after(&engine, &origin, &config).await {
            return;
        }
        if upgrade && self.paused_for(WINDOW_PAUSE).await {
            let Some(upgraded) = self.upgrade_window(&engine, &origin).await else { return };
            origin = upgraded;
        }
        if config.cross_file_chunks > 0 && self.cross_files.is_changed() {
            // A new snapshot moves the start of every prompt: it is taken only in a pause of the
            // user's (a keystroke during the warm-up would pay for the whole prompt).
            if self.paused_for(RING_PAUSE).await {
                self.run_on_standby(&engine, &origin, StandbyWork::RingWarmUp).await;
            }
        }
    }

    /// Prefetch jobs after `origin` (finished): the state after accepting its suggestion, then
    /// its alternatives' starts; false when the user moved on meanwhile.
    async fn prefetch_after(&self, engine: &Engine, origin: &Arc<ActiveJob>, config: &Config) -> bool {
        let progress = origin.job.snapshot();
        let JobOutcome::Finished(completion) = progress.outcome() else { return true };
        let mut work = Vec::new();
        // The accepted state first: its prompt differs from the origin's below the cursor, so
        // the alternatives after it (the origin's prompt) leave the KV cache where the next
        // keystroke wants it.
        let cross_file = self.cross_files.for_prompt_in(&origin.state.uri, ring_size(config));
        if let Some(accepted) = accepted_state(&origin.state, &completion.text) {
            let place = Places::place_of(&accepted.uri, &accepted.rope, accepted.cursor_char_idx, config);
            let cursor_line = accepted.rope.char_to_line(accepted.cursor_char_idx);
            let arrival = self.places.arrival_window(&place, &accepted.rope, cursor_line, config);
            let hints = PlanHints { cross_file: cross_file.as_ref(), chars_per_token: self.densities.get(&accepted.uri), arrival };
            if let Ok(plan) = JobPlan::new(&accepted, config, engine.info(), &hints) {
                let params = GenerateParams { late_stop: self.plan_stop_rules(&plan, "prefetch"), ..plan.params.clone() };
                work.push(StandbyWork::Prefetch { anchor: Anchor::new(&accepted.uri, &plan.split), state: accepted, prompt: plan.prompt, params, place, arrival });
            }
        }
        for alternative in progress.alternatives.iter().filter(|alternative| !completion.text.starts_with(alternative.as_str())) {
            let params = GenerateParams { forced_prefix: alternative.clone(), alternatives: 0, ..origin.params.clone() };
            work.push(StandbyWork::Prefetch {
                anchor: origin.anchor.clone(),
                state: origin.state.clone(),
                prompt: origin.prompt.clone(),
                params,
                place: origin.place.clone(),
                arrival: origin.arrival,
            });
        }
        for item in work {
            if matches!(self.run_on_standby(engine, origin, item).await, Standby::OriginGone) {
                return false;
            }
        }
        true
    }

    /// The full window at the state of `origin` (a job with an arrival's smaller one); the job
    /// the user's state is served from afterwards (the upgrade's when it replaced the origin),
    /// or None when the user moved on.
    async fn upgrade_window(&self, engine: &Engine, origin: &Arc<ActiveJob>) -> Option<Arc<ActiveJob>> {
        match self.run_on_standby(engine, origin, StandbyWork::WindowUpgrade).await {
            Standby::OriginGone => None,
            Standby::NoJob => Some(origin.clone()),
            Standby::Ended(upgrade) => Some(self.take_upgrade(origin, upgrade).unwrap_or_else(|| origin.clone())),
        }
    }

    /// The full window's job at the arrival's state ended: when its suggestion (as it would be
    /// shown) is not empty and differs from the arrival's, and the arrival's job is still the
    /// active one, it becomes the active job and the upgrade listener hears of its state.
    fn take_upgrade(&self, origin: &Arc<ActiveJob>, upgrade: Arc<ActiveJob>) -> Option<Arc<ActiveJob>> {
        let shown = |job: &ActiveJob| {
            let progress = job.job.snapshot();
            let JobOutcome::Finished(completion) = progress.outcome() else { return None };
            let split = LineSplit::new(&job.state.rope, job.state.cursor_char_idx, job.state.language())?;
            Some(clean_suggestion(&split.head, &completion.text, &split.tail, split.surroundings()))
        };
        let upgraded = shown(&upgrade).filter(|text| !text.trim().is_empty())?;
        if shown(origin).as_deref() == Some(upgraded.as_str()) || !self.slot.replace_active(origin, &upgrade) {
            return None;
        }
        self.stats_mut().counters.window_upgrades += 1;
        self.notify_upgrade(&upgrade.state);
        Some(upgrade)
    }

    /// Waits until `pause` has passed since the latest change; whether no change came since.
    async fn paused_for(&self, pause: Duration) -> bool {
        let since_change = self.keystrokes.since_latest();
        if since_change < pause {
            tokio::time::sleep(pause - since_change).await;
        }
        self.keystrokes.since_latest() >= pause
    }

    /// Runs a piece of idle work on standby and waits for its job, if `origin` is still the
    /// active job.
    async fn run_on_standby(&self, engine: &Engine, origin: &Arc<ActiveJob>, work: StandbyWork) -> Standby {
        // Counted before the job is submitted (the slot's lock is held then; stats are never held
        // while the slot is locked elsewhere), so whoever sees the job sees it counted.
        let count = || self.stats_mut().counters.prefetch_jobs += 1;
        let submit = || match work {
            StandbyWork::Prefetch { anchor, state, prompt, params, place, arrival } => {
                count();
                let job = engine.submit(prompt.clone(), params.clone());
                self.places.started(&place, arrival);
                Some(ActiveJob { anchor, job, state, prompt, params, place, arrival, started: Instant::now(), upgrade: false })
            }
            StandbyWork::WindowUpgrade => {
                let config = self.config();
                let cross_file = self.cross_files.for_prompt_in(&origin.state.uri, ring_size(&config));
                let hints = PlanHints { cross_file: cross_file.as_ref(), chars_per_token: self.densities.get(&origin.state.uri), arrival: None };
                let plan = JobPlan::new(&origin.state, &config, engine.info(), &hints).ok()?;
                let params = GenerateParams { late_stop: self.plan_stop_rules(&plan, "window"), ..plan.params.clone() };
                count();
                let job = engine.submit(plan.prompt.clone(), params.clone());
                self.places.started(&origin.place, None);
                Some(ActiveJob { anchor: origin.anchor.clone(), job, state: origin.state.clone(), prompt: plan.prompt, params, place: origin.place.clone(), arrival: None, started: Instant::now(), upgrade: true })
            }
            StandbyWork::RingWarmUp => {
                if !self.cross_files.renew_snapshot() {
                    return None;
                }
                let config = self.config();
                let cross_file = self.cross_files.for_prompt_in(&origin.state.uri, ring_size(&config));
                let hints = PlanHints { cross_file: cross_file.as_ref(), chars_per_token: self.densities.get(&origin.state.uri), arrival: origin.arrival };
                let plan = JobPlan::new(&origin.state, &config, engine.info(), &hints).ok()?;
                let params = origin.params.clone();
                count();
                let job = engine.submit(plan.prompt.clone(), params.clone());
                self.places.started(&origin.place, origin.arrival);
                Some(ActiveJob {
                    anchor: origin.anchor.clone(),
                    job,
                    state: origin.state.clone(),
                    prompt: plan.prompt,
                    params,
                    place: origin.place.clone(),
                    arrival: origin.arrival,
                    started: Instant::now(),
                    upgrade: false,
                })
            }
        };
        let Some(standby) = self.slot.start_standby_after(origin, submit) else { return Standby::OriginGone };
        let Some(standby) = standby else { return Standby::NoJob };
        self.watch_job(&standby, JobKind::Standby);
        let mut progress = standby.job.subscribe();
        let _ = progress.wait_for(|progress| progress.done.is_some()).await;
        Standby::Ended(standby)
    }
}

/// How a piece of idle work went.
enum Standby {
    /// The origin is no longer the active job: the user moved on, nothing ran.
    OriginGone,
    /// There was nothing to run (no plan, or the snapshot did not change).
    NoJob,
    /// Its job ran to its end (finished, superseded or failed).
    Ended(Arc<ActiveJob>),
}

/// The state after the user accepts a suggestion (as shown, cleaned): its text inserted at the
/// cursor; when that completes the line, the next line too, indented as editors indent it (as
/// the line, one level deeper after a block opener), since that is where the user goes next.
pub(super) fn accepted_state(state: &CursorState, raw: &str) -> Option<CursorState> {
    let split = LineSplit::new(&state.rope, state.cursor_char_idx, state.language())?;
    let shown = clean_suggestion(&split.head, raw, &split.tail, split.surroundings());
    if shown.is_empty() {
        return None;
    }
    let mut inserted = shown;
    if split.tail.trim().is_empty() {
        let whole = format!("{}{}", split.head, inserted);
        let last_line = whole.rsplit('\n').next().unwrap_or_default();
        let mut indent: String = last_line.chars().take_while(|ch| *ch == ' ' || *ch == '\t').collect();
        if state.language().is_some_and(|language| language.facts.opens_block(last_line)) {
            indent.push_str(&split.surroundings().indent_unit());
        }
        inserted.push('\n');
        inserted.push_str(&indent);
    }
    let mut rope = state.rope.clone();
    let mut syntax = state.syntax.clone();
    let pending = SyntaxTree::before_edit(&rope, state.cursor_char_idx, state.cursor_char_idx);
    rope.insert(state.cursor_char_idx, &inserted);
    if let Some(tree) = &mut syntax {
        tree.edited(&rope, pending, inserted.len());
        tree.reparse(&rope);
    }
    Some(CursorState { rope, syntax, cursor_char_idx: state.cursor_char_idx + inserted.chars().count(), ..state.clone() })
}
