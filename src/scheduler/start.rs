//! Starting jobs: whether a state needs one (or a running job covers it), the job's plan with
//! its arrival window, cross-file chunks and measured density, its submission under the slot's
//! lock, the stop rules worked out on the planning thread, and a restart when a covering job
//! turns out not to agree with the keys typed after it.

use super::*;

impl Scheduler {
    /// The cursor's line split when this state needs a job of its own: an engine is ready, the
    /// language gets suggestions, and no job serves the state already.
    pub(super) fn split_needing_job(&self, state: &CursorState, config: &Config) -> Option<LineSplit> {
        self.needs(state, config).and_then(|(split, covering)| covering.is_none().then_some(split))
    }

    /// The cursor's line split and the job that covers the state, if any; None without a
    /// ready engine, for a language without suggestions, or a cursor outside the document.
    pub(super) fn needs(&self, state: &CursorState, config: &Config) -> Option<(LineSplit, Option<Arc<ActiveJob>>)> {
        if self.ready_remote().is_none() || !config.language_enabled(&state.language_id) {
            return None;
        }
        let split = LineSplit::new(&state.rope, state.cursor_char_idx, state.language())?;
        let covering = self.covering_job(state, &split, config);
        Some((split, covering))
    }

    /// A running job covers the keys typed after its state until its text says whether it
    /// agrees with them (see `slot::covers`). When it turns out not to (or the job finishes
    /// without serving the state) and no key came since, a job starts for this state at once,
    /// instead of at the next key.
    pub(super) fn follow_undecided(self: &Arc<Self>, covering: Arc<ActiveJob>, state: CursorState, split: &LineSplit, change_count: u64) {
        let Some(typed) = typed_ahead(&covering, &state.uri, split).filter(|typed| !typed.is_empty()).map(|typed| typed.into_owned()) else { return };
        let undecided = move |progress: &Progress| progress.done.is_none() && typed.starts_with(progress.text.as_str());
        let mut progress = covering.job.subscribe();
        if !undecided(&progress.borrow_and_update()) {
            return;
        }
        let scheduler = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(decided) = progress.wait_for(|progress| !undecided(progress)).await else { return };
            // Superseded or cancelled: someone else took over (a newer job, a rest elsewhere);
            // failed: a new request would fail as well.
            if decided.is_interrupted_or_failed() {
                return;
            }
            drop(decided);
            if scheduler.keystrokes.latest_count() != change_count {
                return;
            }
            let config = scheduler.config();
            // Only while the undecided job is still the active one: a request's ready waiter
            // follows it too (`answer.rs`), and between them they start one job.
            if scheduler.split_needing_job(&state, &config).is_some() && scheduler.start_job_replacing(&state, &config, Some(&covering), false).is_some() {
                scheduler.stats_mut().counters.undecided_restarts += 1;
            }
        });
    }

    /// The active job, if it can serve this state (now or when it finishes); else a job on
    /// standby that can, which becomes the active job.
    pub(super) fn covering_job(&self, state: &CursorState, split: &LineSplit, config: &Config) -> Option<Arc<ActiveJob>> {
        let (job, promoted) = self.slot.covering(state, split, config.typed_ahead)?;
        if promoted {
            self.stats_mut().counters.prefetch_hits += 1;
            if job.job.snapshot().done.is_some() {
                self.spawn_idle_work(job.clone());
            }
        }
        Some(job)
    }

    /// Plans a job for this state and makes it the active one; None without an engine or a
    /// plan (a cursor outside the document), or when the active job was a refused one that
    /// someone else has replaced meanwhile.
    pub(super) fn start_job(&self, state: &CursorState, config: &Config) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(state, config, None, true)
    }

    /// A new job for this state even when the active one covers it (it was planned with other
    /// settings).
    pub(super) fn start_fresh_job(&self, state: &CursorState, config: &Config) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(state, config, None, false)
    }

    /// A job for the state of `refused`, whose prompt was refused as too long (its density
    /// learned already), only while `refused` is still the active job (None otherwise: the user
    /// moved on, or someone replaced it already).
    pub(super) fn replace_refused(&self, refused: &Arc<ActiveJob>) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(&refused.state, &self.config(), Some(refused), false)
    }

    /// `unless_covered`: without `replacing`, the job that covers the state if one does by the
    /// time the job would start (see `Slot::start`).
    pub(super) fn start_job_replacing(&self, state: &CursorState, config: &Config, replacing: Option<&Arc<ActiveJob>>, unless_covered: bool) -> Option<Arc<ActiveJob>> {
        let engine = self.ready_engine()?;
        // A job that follows one whose prompt was refused before anyone saw it (a request that
        // arrives after the refusal) is planned with the density that prompt measured, and
        // replaces it only if no one else did meanwhile (the refused job's watcher does too).
        let refused = self.slot.active().filter(|active| self.densities.learn(active));
        let replacing = replacing.or(refused.as_ref());
        let cross_file = self.cross_files.for_prompt_in(&state.uri, ring_size(config));
        let place = Places::place_of(&state.uri, &state.rope, state.cursor_char_idx, config);
        let cursor_line = state.rope.char_to_line(state.cursor_char_idx.min(state.rope.len_chars()));
        let arrival = self.places.arrival_window(&place, &state.rope, cursor_line, config);
        let hints = PlanHints { cross_file: cross_file.as_ref(), chars_per_token: self.densities.get(&state.uri), arrival };
        let plan = match JobPlan::new(state, config, engine.info(), &hints) {
            Ok(plan) => plan,
            Err(err) => {
                tracing::warn!(%err, uri = %state.uri, "no job for this state");
                return None;
            }
        };
        let alternatives = if config.prefetch { ALTERNATIVES } else { 0 };
        // The split outlives the plan, which the submission takes; cloned only when it is needed.
        let split = (unless_covered && replacing.is_none()).then(|| plan.split.clone());
        let unless = split.as_ref().map(|split| (state, split, config.typed_ahead));
        let started = self.slot.start(replacing, unless, || {
            let params = GenerateParams { alternatives, late_stop: self.plan_stop_rules(&plan, "job"), ..plan.params.clone() };
            let job = engine.submit(plan.prompt.clone(), params.clone());
            self.places.started(&place, arrival);
            ActiveJob { anchor: Anchor::new(&state.uri, &plan.split), job, state: state.clone(), prompt: plan.prompt, params, place, arrival, started: Instant::now(), upgrade: false }
        })?;
        if started.covered {
            return Some(started.job);
        }
        let mut stats = self.stats_mut();
        stats.counters.jobs_started += 1;
        if started.superseded_running {
            stats.counters.jobs_superseded += 1;
        }
        drop(stats);
        self.watch_job(&started.job, JobKind::Asked);
        Some(started.job)
    }

    /// Queues the work-out of a plan's syntax-tree rules on the planning thread (`key` names
    /// the kind of job: a newer job of the kind replaces a plan still queued); the engine gets
    /// them before its first token. None when the plain rules are all there is. At debug level
    /// the plan is logged as `ghostline complete --plan` prints it.
    pub(super) fn plan_stop_rules(&self, plan: &JobPlan, key: &'static str) -> Option<LateStopRules> {
        let described = tracing::enabled!(tracing::Level::DEBUG).then(|| (plan.prompt.to_debug_string(), plan.params.max_tokens));
        if !plan.rules.has_tree() {
            if let Some((prompt, max_tokens)) = described {
                tracing::debug!(plan = %JobPlan::describe(&prompt, max_tokens, &plan.params.stop), "job plan");
            }
            return None;
        }
        let late = LateStopRules::default();
        let (deliver, rules) = (late.clone(), plan.rules.clone());
        self.planner.submit(key, move || {
            let stop = rules.work_out();
            if let Some((prompt, max_tokens)) = described {
                tracing::debug!(plan = %JobPlan::describe(&prompt, max_tokens, &stop), "job plan");
            }
            deliver.set(stop);
        });
        Some(late)
    }
}
