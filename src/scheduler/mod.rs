//! The keystroke brain: turns document changes into engine jobs, serves typed-ahead characters
//! from the current suggestion, and answers completion requests within the latency budget.
//!
//! It knows neither LSP types nor llama.cpp: it takes ropes, character indices and URIs as
//! strings, and talks to the engine through its handle. Its parts, one file each:
//! - `keystrokes.rs`: the latest change and the densities refused prompts measured;
//! - `start.rs`: whether a state needs a job, planning and starting it, a restart when a
//!   covering job turns out to disagree with the keys typed after it;
//! - `slot.rs`: the active job and the standby jobs behind one lock, and whether a job covers
//!   a cursor state (typed-ahead);
//! - `answer.rs`: answering a request within the budget and waiting for a ready notification;
//! - `suggestion.rs`: what an answer is, the token speed, the suggestion cut from a job's text;
//! - `ended.rs`: the end of a job: counts, a refused prompt planned again, a crashed engine;
//! - `idle.rs`: what runs after an asked job ends: prefetch jobs on standby, an arrival's
//!   upgrade to the full window, the cross-file snapshot's warm-up;
//! - `places.rs`: where the KV cache is warm, an arrival's smaller first window;
//! - `cross_file.rs`: the cross-file ring and its snapshot;
//! - `expand.rs`: turning a comment or a note into code.
//!
//! Every job is planned by `src/plan.rs` (the same plan `ghostline complete` uses). A job never
//! waits for its syntax tree: it is submitted with the plain stop rules, and the tree's rules
//! follow from the planning thread before its first generated token.

mod answer;
mod cross_file;
mod ended;
mod expand;
mod idle;
mod keystrokes;
mod places;
mod slot;
mod start;
mod suggestion;
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
pub use suggestion::{Answer, EmptyReason, ReadyWaiter, Suggestion, Waiting};
pub use expand::{ExpandError, Expanded};

use suggestion::TokenSpeed;
use cross_file::{CrossFiles, RingSize};
use idle::JobKind;
use keystrokes::{Densities, Keystrokes};
use places::Places;
use slot::{typed_ahead, ActiveJob, Anchor, JobSlot};
use crate::sync::{MutexExt, RwLockExt};

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
            let mut engine = self.engine.writing();
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
        self.config.reading().clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.writing() = Arc::new(config);
    }

    pub fn engine_state(&self) -> EngineState {
        self.engine.reading().clone()
    }

    pub fn set_engine_state(&self, state: EngineState) {
        if let EngineState::Ready(engine) = &state {
            self.stats_mut().model_load_ms = Some(engine.info().load_ms);
            self.places.reset(engine.info().kv_places, engine.info().prompt_speed);
        }
        self.slot.clear();
        *self.engine.writing() = state;
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
        self.stats.locked()
    }

    fn ready_engine(&self) -> Option<Engine> {
        match &*self.engine.reading() {
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
        match &*self.engine.reading() {
            EngineState::Ready(engine) => Some(engine.is_remote()),
            _ => None,
        }
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
