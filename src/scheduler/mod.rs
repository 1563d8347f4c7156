//! The keystroke brain: turns document changes into engine jobs, serves typed-ahead characters
//! from the current suggestion, and answers completion requests within the latency budget.
//!
//! It knows neither LSP types nor llama.cpp: it takes ropes, character indices and URIs as
//! strings, and talks to the engine through its handle. Its parts, one file each:
//! - `slot.rs`: the active job and the standby jobs behind one lock, and whether a job covers
//!   a cursor state (typed-ahead);
//! - `answer.rs`: answering a request within the budget, partial suggestions, ready
//!   notifications, the generation speed that says whether waiting can pay off;
//! - `idle.rs`: what runs after a job ends: token counts, prefetch jobs on standby, the
//!   cross-file snapshot's warm-up;
//! - `cross_file.rs`: the cross-file ring and its snapshot;
//! - `expand.rs`: turning a comment or a note into code.
//!
//! Every job is planned by `src/plan.rs` (the same plan `ghostline complete` uses). A job never
//! waits for its syntax tree: it is submitted with the plain stop rules, and the tree's rules
//! follow from the planning thread before its first generated token.

mod answer;
mod cross_file;
mod expand;
mod idle;
mod places;
mod slot;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use ropey::Rope;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::background::LatestWins;
use crate::config::Config;
use crate::engine::{Engine, GenerateParams, LateStopRules, Progress};
use crate::plan::{JobPlan, LineSplit, PlanHints};
use crate::probe::LoadFailure;
use crate::stats::Stats;

pub use crate::plan::CursorState;
pub use answer::{Answer, EmptyReason, ReadyWaiter, Suggestion, Waiting};
pub use expand::{ExpandError, Expanded};

use answer::TokenSpeed;
use cross_file::{CrossFiles, RingSize};
use idle::JobKind;
use places::Places;
use slot::{typed_ahead, ActiveJob, Anchor, JobSlot};

/// Where the model is.
#[derive(Clone)]
pub enum EngineState {
    NotStarted,
    Loading,
    Ready(Engine),
    Failed(Arc<LoadFailure>),
}

/// The other likely starts a job asks for, to prefetch.
const ALTERNATIVES: usize = 2;

/// The latest change: its document, version and instant, and a count of changes (debouncing
/// compares it).
#[derive(Default)]
struct Keystrokes {
    latest: Mutex<Option<(String, i32, Instant)>>,
    count: AtomicU64,
}

impl Keystrokes {
    /// Records a change; returns the previous one's instant and this change's number.
    fn record(&self, uri: &str, version: i32, at: Instant) -> (Option<Instant>, u64) {
        let previous = self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).replace((uri.to_string(), version, at));
        (previous.map(|(_, _, at)| at), self.count.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn latest_count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The instant of the change that made this version, or now for one not seen.
    fn instant_of(&self, uri: &str, version: i32) -> Instant {
        match &*self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some((latest_uri, latest_version, at)) if latest_uri == uri && *latest_version == version => *at,
            _ => Instant::now(),
        }
    }

    /// Whether this version of this document is the latest change.
    fn is_latest(&self, uri: &str, version: i32) -> bool {
        matches!(&*self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), Some((latest_uri, latest_version, _)) if latest_uri == uri && *latest_version == version)
    }

    fn since_latest(&self) -> Duration {
        match &*self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some((_, _, at)) => at.elapsed(),
            None => Duration::MAX,
        }
    }
}

/// Per document, the characters per token that a refused prompt measured (text denser than a
/// budget assumes, such as digits); its next plans are budgeted with it.
#[derive(Default)]
struct Densities {
    by_uri: Mutex<std::collections::HashMap<String, f64>>,
}

impl Densities {
    fn get(&self, uri: &str) -> Option<f64> {
        self.by_uri.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(uri).copied()
    }

    /// Learns from a job that ended; whether its prompt was refused as too long (so the job is
    /// worth planning again).
    fn learn(&self, job: &ActiveJob) -> bool {
        let receiver = job.job.subscribe();
        let progress = receiver.borrow();
        let crate::engine::JobOutcome::Failed(err) = progress.outcome() else { return false };
        let Some(density) = crate::plan::density_after(err, &job.prompt) else { return false };
        let mut by_uri = self.by_uri.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = by_uri.entry(job.state.uri.clone()).or_insert(f64::MAX);
        if density < *known {
            *known = density;
            tracing::info!(uri = %job.state.uri, chars_per_token = density, %err, "the prompt was too long for the context; planning again with the measured density");
        }
        true
    }
}

pub struct Scheduler {
    engine: RwLock<EngineState>,
    densities: Densities,
    /// Shared, not copied: a change of settings swaps in a new one.
    config: RwLock<Arc<Config>>,
    slot: JobSlot,
    speed: TokenSpeed,
    stats: Mutex<Stats>,
    keystrokes: Keystrokes,
    /// Rounds of idle-time work pending or running (for `ghostline/stats`: idle means none).
    idle_work: AtomicUsize,
    cross_files: CrossFiles,
    places: Places,
    /// The thread that works out jobs' stop rules from the syntax tree (parsing it when the
    /// tree is behind), off the LSP loop.
    planner: LatestWins<&'static str>,
    /// Told the state of each suggestion that replaced the one shown (a full window's after an
    /// arrival's), so the client can ask again; set once by the server.
    upgrades: OnceLock<UnboundedSender<CursorState>>,
    /// Told why the engine crashed, when a job finds it so; set once by the server.
    crashes: OnceLock<UnboundedSender<String>>,
    me: Weak<Scheduler>,
}

impl Scheduler {
    pub fn new(config: Config) -> Arc<Scheduler> {
        Arc::new_cyclic(|me| Scheduler {
            engine: RwLock::new(EngineState::NotStarted),
            densities: Densities::default(),
            config: RwLock::new(Arc::new(config)),
            slot: JobSlot::default(),
            speed: TokenSpeed::default(),
            stats: Mutex::new(Stats::default()),
            keystrokes: Keystrokes::default(),
            idle_work: AtomicUsize::new(0),
            cross_files: CrossFiles::default(),
            places: Places::default(),
            planner: LatestWins::start("ghostline-plan"),
            upgrades: OnceLock::new(),
            crashes: OnceLock::new(),
            me: me.clone(),
        })
    }

    /// The states whose suggestion changed after it was answered (an arrival's replaced by the
    /// full window's), for a server that tells its client to ask again; None after the first
    /// call (there is one listener).
    pub fn listen_for_upgrades(&self) -> Option<UnboundedReceiver<CursorState>> {
        let (sender, receiver) = unbounded_channel();
        self.upgrades.set(sender).ok()?;
        Some(receiver)
    }

    /// Why the engine crashed, each time a crash is noticed, for a server that reports it and
    /// starts a new engine; None after the first call (there is one listener).
    pub fn listen_for_crashes(&self) -> Option<UnboundedReceiver<String>> {
        let (sender, receiver) = unbounded_channel();
        self.crashes.set(sender).ok()?;
        Some(receiver)
    }

    /// After a job ended: a ready engine whose thread has crashed is `Failed` from now on (its
    /// jobs could only fail), and the listener hears why. Once per engine.
    fn notice_crash(&self) {
        let why = {
            let mut engine = self.engine.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let EngineState::Ready(ready) = &*engine else { return };
            let Some(why) = ready.crash().map(str::to_string) else { return };
            *engine = EngineState::Failed(Arc::new(LoadFailure::Crashed(why.clone())));
            why
        };
        self.slot.clear();
        if let Some(listener) = self.crashes.get() {
            let _ = listener.send(why);
        }
    }

    fn notify_upgrade(&self, state: &CursorState) {
        if let Some(listener) = self.upgrades.get() {
            // A listener that is gone (the server shutting down) has nothing to tell.
            let _ = listener.send(state.clone());
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
    }

    pub fn engine_state(&self) -> EngineState {
        self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_engine_state(&self, state: EngineState) {
        if let EngineState::Ready(engine) = &state {
            self.stats_mut().model_load_ms = Some(engine.info().load_ms);
            self.places.reset(engine.info().kv_places, engine.info().prompt_speed);
        }
        self.slot.clear();
        *self.engine.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let mut json = self.stats_mut().to_json();
        json["idleWork"] = serde_json::json!(self.idle_work.load(Ordering::SeqCst));
        json["currentJob"] = self.slot.active().map_or(serde_json::Value::Null, |active| active.describe());
        json
    }

    /// A suggestion of `chars` characters was accepted, `accepted_chars` of them (fewer: a word
    /// or a line of it).
    pub fn record_accepted(&self, chars: u64, accepted_chars: u64) {
        let mut stats = self.stats_mut();
        if accepted_chars >= chars {
            stats.counters.accepted += 1;
        } else {
            stats.counters.accepted_partially += 1;
        }
        stats.counters.accepted_chars += accepted_chars.min(chars);
    }

    fn stats_mut(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ready_engine(&self) -> Option<Engine> {
        match &*self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            EngineState::Ready(engine) => Some(engine.clone()),
            _ => None,
        }
    }

    /// The workspace root, which names files and the repository in cross-file prompts.
    pub fn set_workspace(&self, root_uri: Option<String>) {
        self.cross_files.set_workspace(root_uri);
    }

    /// A document opened: its top goes into the cross-file ring.
    pub fn file_opened(&self, uri: &str, rope: &Rope) {
        self.cross_files.file_opened(uri, rope, ring_size(&self.config()));
    }

    /// A document changed: start on the new state unless the active job still covers it.
    /// Called from the change handler after the edit is in the store; never blocks, never
    /// parses.
    pub fn on_change(self: &Arc<Self>, state: CursorState) {
        let now = Instant::now();
        let (previous_change, change_count) = self.keystrokes.record(&state.uri, state.version, now);
        let config = self.config();
        self.cross_files.note_edit(&state, ring_size(&config));
        let Some((split, covering)) = self.needs(&state, &config) else { return };
        if let Some(covering) = covering {
            self.follow_undecided(covering, state, &split, change_count);
            return;
        }
        // Adaptive debounce: an isolated keystroke starts the engine at once; a burst (a held
        // key, a paste in pieces) waits until it pauses.
        let in_burst = previous_change.is_some_and(|at| now.duration_since(at) < Duration::from_millis(config.debounce_ms * 2));
        if config.debounce_ms == 0 || !in_burst {
            self.start_job(&state, &config);
            return;
        }
        let scheduler = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(config.debounce_ms)).await;
            if scheduler.keystrokes.latest_count() != change_count {
                return;
            }
            if scheduler.covering_job(&state, &split, &config).is_none() {
                scheduler.start_job(&state, &config);
            }
        });
    }

    /// The cursor rests at this state (the editor's `ghostline/cursorRest`): unless a job serves
    /// the state already, its job starts now, as at an arrival (the window an arrival gets, the
    /// full one after a pause), so the first keystroke there finds the prompt in the KV cache. A
    /// running job for another place (the one the cursor left) is superseded.
    pub fn cursor_rests(self: &Arc<Self>, state: CursorState) {
        let config = self.config();
        if self.split_needing_job(&state, &config).is_some() && self.start_job(&state, &config).is_some() {
            self.stats_mut().counters.rest_jobs += 1;
        }
    }

    /// Whether jobs go to a server, None while no engine is ready (read under the lock: no
    /// clone of the engine per key).
    fn ready_remote(&self) -> Option<bool> {
        match &*self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            EngineState::Ready(engine) => Some(engine.is_remote()),
            _ => None,
        }
    }

    /// The cursor's line split when this state needs a job of its own: an engine is ready, the
    /// language gets suggestions, and no job serves the state already.
    fn split_needing_job(&self, state: &CursorState, config: &Config) -> Option<LineSplit> {
        self.needs(state, config).and_then(|(split, covering)| covering.is_none().then_some(split))
    }

    /// The cursor's line split and the job that covers the state, if any; None without a
    /// ready engine, for a language without suggestions, or a cursor outside the document.
    fn needs(&self, state: &CursorState, config: &Config) -> Option<(LineSplit, Option<Arc<ActiveJob>>)> {
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
    fn follow_undecided(self: &Arc<Self>, covering: Arc<ActiveJob>, state: CursorState, split: &LineSplit, change_count: u64) {
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
    fn covering_job(&self, state: &CursorState, split: &LineSplit, config: &Config) -> Option<Arc<ActiveJob>> {
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
    fn start_job(&self, state: &CursorState, config: &Config) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(state, config, None, true)
    }

    /// A new job for this state even when the active one covers it (it was planned with other
    /// settings).
    fn start_fresh_job(&self, state: &CursorState, config: &Config) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(state, config, None, false)
    }

    /// A job for the state of `refused`, whose prompt was refused as too long (its density
    /// learned already), only while `refused` is still the active job (None otherwise: the user
    /// moved on, or someone replaced it already).
    fn replace_refused(&self, refused: &Arc<ActiveJob>) -> Option<Arc<ActiveJob>> {
        self.start_job_replacing(&refused.state, &self.config(), Some(refused), false)
    }

    /// `unless_covered`: without `replacing`, the job that covers the state if one does by the
    /// time the job would start (see `Slot::start`).
    fn start_job_replacing(&self, state: &CursorState, config: &Config, replacing: Option<&Arc<ActiveJob>>, unless_covered: bool) -> Option<Arc<ActiveJob>> {
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
    fn plan_stop_rules(&self, plan: &JobPlan, key: &'static str) -> Option<LateStopRules> {
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

    /// Cancels the active job if it belongs to this document (closed or no longer focused).
    pub fn cancel_for(&self, uri: &str) {
        self.slot.cancel_for(uri);
    }
}

fn ring_size(config: &Config) -> RingSize {
    RingSize { chunks: config.cross_file_chunks, lines: config.cross_file_lines }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
