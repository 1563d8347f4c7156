//! The keystroke brain: turns document changes into engine jobs, serves typed-ahead characters
//! from the current suggestion, and answers completion requests within the latency budget.
//!
//! It knows neither LSP types nor llama.cpp: it takes ropes, character indices and URIs as
//! strings, and talks to the engine through its handle.
//!
//! One job is active at a time (a new job supersedes the old one inside the decode loop). The
//! active job is anchored to a cursor state: the document, the cursor line, the line's text
//! before the cursor (the head) and after it (the tail). A later state whose line head is the
//! anchor's head plus typed characters that agree with the suggestion is served from that job,
//! without touching the model.
//!
//! When a job finishes, the time until the next keystroke can be used to prefetch (the
//! `prefetch` setting, off by default): jobs for the suggestion's other likely starts (a key that leaves
//! the suggestion may still agree with one of them), then for the state after accepting it (the
//! next line, indented as an editor does). They wait on standby, anchored to their states, and
//! become the active job when the user reaches one; any other new job drops them.
//!
//! It also keeps the cross-file ring (`src/ring.rs`): chunks of files as they open and around a
//! file's last edit when the user moves to another file. Prompts use a snapshot of the ring,
//! renewed in idle time after the prefetch jobs, with a job that warms the KV cache with it.

use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use ropey::Rope;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::{self, CrossFile, CursorPosition};
use crate::ring::{self, Ring};
use crate::background::LatestWins;
use crate::engine::{Engine, GenerateParams, Job, LateStopRules, Progress, Prompt, StopReason, StopRules};
use crate::postprocess::{clean_suggestion, detect_indent, Surroundings};
use crate::stats::Stats;
use crate::syntax::{self, SyntaxTree};

/// Where the model is.
#[derive(Clone)]
pub enum EngineState {
    NotStarted,
    Loading,
    Ready(Engine),
    Failed(String),
}

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

/// How a request wants to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The client handles `ghostline/suggestionReady`: answer within the budget.
    Budget,
    /// Any other client: wait for the suggestion, up to the maximum wait.
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

/// An expansion: replace the characters `start_char_idx..end_char_idx` with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub start_char_idx: usize,
    pub end_char_idx: usize,
    pub text: String,
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
    pub uri: String,
    pub version: i32,
    pub cursor_char_idx: usize,
    progress: watch::Receiver<Progress>,
    keystroke: Instant,
    /// The characters typed since the job's state, and the cursor line's split.
    typed: String,
    split: LineSplit,
    /// The length of the suggestion already answered (0 for an empty answer).
    answered_chars: usize,
}

impl ReadyWaiter {
    /// The document the request was answered for.
    pub fn rope(&self) -> &Rope {
        &self.split.rope
    }
}

#[derive(Clone)]
struct Anchor {
    uri: String,
    line: usize,
    line_head: String,
    line_tail: String,
}

struct ActiveJob {
    anchor: Anchor,
    job: Job,
    /// The state, prompt and parameters the job was started with (prefetching derives its jobs
    /// from them).
    state: CursorState,
    prompt: Prompt,
    params: GenerateParams,
}

/// The other likely starts a job asks for, to prefetch.
const ALTERNATIVES: usize = 2;

/// How long the user must have paused before the cross-file snapshot is renewed.
const RING_PAUSE: Duration = Duration::from_millis(1000);

/// The most characters of one cross-file chunk.
const MAX_CHUNK_CHARS: usize = 2000;

#[derive(Default)]
struct CrossFileState {
    ring: Ring,
    /// What prompts put in front (renewed in idle time).
    snapshot: Arc<Vec<ring::Chunk>>,
    root_uri: Option<String>,
    /// The document edited last, and the line of that edit.
    last_edit: Option<(String, Rope, usize)>,
}

/// The text of a cursor's line, split at the cursor.
#[derive(Clone)]
struct LineSplit {
    line: usize,
    head: String,
    tail: String,
    /// The document, for the post-processing's view of what is around the cursor (cloning a
    /// rope is cheap); that view is read once, when a suggestion is first cleaned.
    rope: Rope,
    surroundings: OnceLock<Surroundings>,
}

impl LineSplit {
    fn surroundings(&self) -> &Surroundings {
        self.surroundings.get_or_init(|| surroundings(&self.rope, self.line))
    }
}

/// Lines after the cursor line that a suggestion must not repeat, and the sample of lines the
/// indentation style is read from.
const NEXT_LINES: usize = 8;
const INDENT_SAMPLE_LINES: usize = 32;

fn surroundings(rope: &Rope, line: usize) -> Surroundings {
    let n_lines = rope.len_lines();
    let next_lines: String = (line + 1..(line + 1 + NEXT_LINES).min(n_lines)).map(|idx| rope.line(idx).to_string()).collect();
    let sample: Vec<String> = (line.saturating_sub(INDENT_SAMPLE_LINES)..(line + 8).min(n_lines)).map(|idx| rope.line(idx).to_string()).collect();
    Surroundings { next_lines, indent: detect_indent(sample.iter().map(String::as_str)) }
}

fn split_line(rope: &Rope, cursor_char_idx: usize) -> Option<LineSplit> {
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
        surroundings: OnceLock::new(),
    })
}

pub struct Scheduler {
    engine: RwLock<EngineState>,
    config: RwLock<Config>,
    active: Mutex<Option<Arc<ActiveJob>>>,
    stats_handle: Arc<Mutex<Stats>>,
    /// The instant of the latest change, per URI, and a counter of changes (for debouncing).
    last_change: Mutex<Option<(String, i32, Instant)>>,
    change_counter: std::sync::atomic::AtomicU64,
    /// Recent generation speed (ms per token, a moving average; 0 until measured).
    ms_per_token: Arc<Mutex<f64>>,
    /// Prefetched jobs for states the user may reach next.
    standby: Mutex<Vec<Arc<ActiveJob>>>,
    /// Rounds of idle-time work pending or running (for `ghostline/stats`: idle means none).
    idle_work: Arc<std::sync::atomic::AtomicUsize>,
    cross_file: Mutex<CrossFileState>,
    /// The thread that works out jobs' stop rules from the syntax tree (parsing it when the
    /// tree is behind), off the LSP loop.
    planner: LatestWins<&'static str>,
    me: Weak<Scheduler>,
}

impl Scheduler {
    pub fn new(config: Config) -> Arc<Scheduler> {
        Arc::new_cyclic(|me| Scheduler {
            engine: RwLock::new(EngineState::NotStarted),
            config: RwLock::new(config),
            active: Mutex::new(None),
            stats_handle: Arc::new(Mutex::new(Stats::default())),
            last_change: Mutex::new(None),
            change_counter: std::sync::atomic::AtomicU64::new(0),
            ms_per_token: Arc::new(Mutex::new(0.0)),
            standby: Mutex::new(Vec::new()),
            idle_work: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            cross_file: Mutex::new(CrossFileState::default()),
            planner: LatestWins::start("ghostline-plan"),
            me: me.clone(),
        })
    }

    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    pub fn engine_state(&self) -> EngineState {
        self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set_engine_state(&self, state: EngineState) {
        if let EngineState::Ready(engine) = &state {
            self.stats_mut().model_load_ms = Some(engine.info().load_ms);
        }
        *self.lock_active() = None;
        self.lock_standby().clear();
        *self.engine.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let mut json = self.stats_mut().to_json();
        json["idleWork"] = serde_json::json!(self.idle_work.load(std::sync::atomic::Ordering::SeqCst));
        json
    }

    pub fn record_accepted(&self) {
        self.stats_mut().counters.accepted += 1;
    }

    fn stats_mut(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats_handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, Option<Arc<ActiveJob>>> {
        self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_cross_file(&self) -> std::sync::MutexGuard<'_, CrossFileState> {
        self.cross_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The workspace root, which names files and the repository in cross-file prompts.
    pub fn set_workspace(&self, root_uri: Option<String>) {
        self.lock_cross_file().root_uri = root_uri;
    }

    /// A document opened: its top goes into the cross-file ring.
    pub fn file_opened(&self, uri: &str, rope: &Rope) {
        let config = self.config();
        if config.cross_file_chunks == 0 {
            return;
        }
        let mut cross_file = self.lock_cross_file();
        let label = ring::label_for(uri, cross_file.root_uri.as_deref());
        let chunk = ring::chunk_of(uri, &label, rope, 0, config.cross_file_lines, MAX_CHUNK_CHARS);
        cross_file.ring.add(chunk, config.cross_file_chunks);
    }

    /// Notes an edit; when it is in another document than the last one, the lines around that
    /// document's last edit go into the cross-file ring.
    fn note_edit(&self, state: &CursorState, config: &Config) {
        if config.cross_file_chunks == 0 {
            return;
        }
        let line = state.rope.char_to_line(state.cursor_char_idx.min(state.rope.len_chars()));
        let mut cross_file = self.lock_cross_file();
        let previous = cross_file.last_edit.replace((state.uri.clone(), state.rope.clone(), line));
        if let Some((uri, rope, line)) = previous.filter(|(uri, _, _)| *uri != state.uri) {
            let label = ring::label_for(&uri, cross_file.root_uri.as_deref());
            let chunk = ring::chunk_around(&uri, &label, &rope, line, config.cross_file_lines, MAX_CHUNK_CHARS);
            cross_file.ring.add(chunk, config.cross_file_chunks);
        }
    }

    /// Other files' chunks for a prompt in `uri` (the file's own chunks would show the model
    /// an old copy of the text it is completing).
    fn cross_file_for(&self, uri: &str, config: &Config) -> Option<CrossFile> {
        if config.cross_file_chunks == 0 {
            return None;
        }
        let cross_file = self.lock_cross_file();
        let repo = cross_file.root_uri.as_deref().and_then(ring::repo_name);
        let chunks = if cross_file.snapshot.iter().any(|chunk| chunk.uri == uri) {
            Arc::new(cross_file.snapshot.iter().filter(|chunk| chunk.uri != uri).cloned().collect())
        } else {
            cross_file.snapshot.clone()
        };
        Some(CrossFile { repo, chunks, file_label: ring::label_for(uri, cross_file.root_uri.as_deref()) })
    }

    fn lock_standby(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ActiveJob>>> {
        self.standby.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ready_engine(&self) -> Option<Engine> {
        match &*self.engine.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            EngineState::Ready(engine) => Some(engine.clone()),
            _ => None,
        }
    }

    /// A document changed: start on the new state unless the active job still covers it.
    /// Called from the change handler after the edit is in the store; never blocks.
    pub fn on_change(self: &Arc<Self>, state: CursorState) {
        let now = Instant::now();
        let previous_change = self
            .last_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace((state.uri.clone(), state.version, now));
        let change_id = self.change_counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let config = self.config();
        self.note_edit(&state, &config);
        if self.ready_engine().is_none() || !config.language_enabled(&state.language_id) {
            return;
        }
        let Some(split) = split_line(&state.rope, state.cursor_char_idx) else { return };
        if self.covering_job(&state, &split, &config).is_some() {
            return;
        }
        // Adaptive debounce: an isolated keystroke starts the engine at once; a burst (a held
        // key, a paste in pieces) waits until it pauses.
        let in_burst = previous_change.is_some_and(|(_, _, at)| now.duration_since(at) < Duration::from_millis(config.debounce_ms * 2));
        if config.debounce_ms == 0 || !in_burst {
            self.start_job(&state, split, &config);
            return;
        }
        let scheduler = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(config.debounce_ms)).await;
            if scheduler.change_counter.load(std::sync::atomic::Ordering::SeqCst) != change_id {
                return;
            }
            if scheduler.covering_job(&state, &split, &config).is_none() {
                scheduler.start_job(&state, split, &config);
            }
        });
    }

    /// The active job, if it can serve this state (now or when it finishes); else a job on
    /// standby that can, which becomes the active job.
    fn covering_job(&self, state: &CursorState, split: &LineSplit, config: &Config) -> Option<Arc<ActiveJob>> {
        let active = self.lock_active().clone();
        if let Some(active) = active.filter(|active| covers(active, state, split, config)) {
            return Some(active);
        }
        let mut active = self.lock_active();
        let mut standby = self.lock_standby();
        let idx = standby.iter().position(|job| covers(job, state, split, config))?;
        let promoted = standby.remove(idx);
        *active = Some(promoted.clone());
        drop((active, standby));
        self.stats_mut().counters.prefetch_hits += 1;
        if promoted.job.snapshot().done.is_some() {
            self.spawn_prefetch(promoted.clone());
        }
        Some(promoted)
    }

    fn start_job(&self, state: &CursorState, split: LineSplit, config: &Config) -> Option<Arc<ActiveJob>> {
        let engine = self.ready_engine()?;
        let cross_file = self.cross_file_for(&state.uri, config);
        // Planned and submitted under the lock: a prefetch job is submitted only while its
        // origin is the active job, so it can never supersede a newer job; and the plans of
        // jobs queue in the order the jobs are submitted, so the newest job's plan is the one
        // that stays (a newer plan replaces a queued older one).
        let mut active_slot = self.lock_active();
        let rules = Rules::Planned { planner: &self.planner, key: "job" };
        let (prompt, params) = job_for(state, &split, config, &engine, cross_file.as_ref(), rules)?;
        let params = GenerateParams { alternatives: if config.prefetch { ALTERNATIVES } else { 0 }, ..params };
        tracing::trace!(prompt = %prompt.to_debug_string(), "new job");
        let job = engine.submit(prompt.clone(), params.clone());
        let active = Arc::new(ActiveJob {
            anchor: Anchor { uri: state.uri.clone(), line: split.line, line_head: split.head, line_tail: split.tail },
            job,
            state: state.clone(),
            prompt,
            params,
        });
        let previous = active_slot.replace(active.clone());
        self.lock_standby().clear();
        drop(active_slot);
        let mut stats = self.stats_mut();
        stats.counters.jobs_started += 1;
        if previous.is_some_and(|previous| previous.job.snapshot().done.is_none()) {
            stats.counters.jobs_superseded += 1;
        }
        drop(stats);
        self.count_tokens_when_done(&active, true);
        Some(active)
    }

    /// Runs the idle-time work after `origin`, counted in `idle_work` from this call on.
    fn spawn_prefetch(&self, origin: Arc<ActiveJob>) {
        let (Some(scheduler), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        self.idle_work.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        runtime.spawn(async move {
            scheduler.prefetch(origin).await;
            scheduler.idle_work.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Idle-time work after a finished job, one job after the other while it is still the
    /// active job: its prefetch jobs, then a new snapshot of the cross-file ring if the ring
    /// changed, with a job that warms the KV cache with it.
    async fn prefetch(&self, origin: Arc<ActiveJob>) {
        let Some(engine) = self.ready_engine() else { return };
        let progress = origin.job.snapshot();
        let Some(Ok(completion)) = &progress.done else { return };
        if matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled) {
            return;
        }
        let config = self.config();
        let cross_file = self.cross_file_for(&origin.state.uri, &config);
        // The accepted state first: its prompt differs from the origin's below the cursor, so
        // the alternatives after it (the origin's prompt) leave the KV cache where the next
        // keystroke wants it.
        let mut plans: Vec<(Anchor, CursorState, Prompt, GenerateParams)> = Vec::new();
        if let Some(accepted) = accepted_state(&origin.state, &completion.text).filter(|_| config.prefetch) {
            if let Some(split) = split_line(&accepted.rope, accepted.cursor_char_idx) {
                let rules = Rules::Planned { planner: &self.planner, key: "prefetch" };
                if let Some((prompt, params)) = job_for(&accepted, &split, &config, &engine, cross_file.as_ref(), rules) {
                    let anchor = Anchor { uri: accepted.uri.clone(), line: split.line, line_head: split.head, line_tail: split.tail };
                    plans.push((anchor, accepted, prompt, params));
                }
            }
        }
        plans.extend(
            progress
                .alternatives
                .iter()
                .filter(|_| config.prefetch)
                .filter(|alternative| !completion.text.starts_with(alternative.as_str()))
                .map(|alternative| {
                    let params = GenerateParams { forced_prefix: alternative.clone(), alternatives: 0, ..origin.params.clone() };
                    (origin.anchor.clone(), origin.state.clone(), origin.prompt.clone(), params)
                }),
        );
        for (anchor, state, prompt, params) in plans {
            if !self.run_on_standby(&engine, &origin, anchor, state, Some(prompt), params).await {
                return;
            }
        }
        if config.cross_file_chunks > 0 && self.lock_cross_file().ring.is_changed() {
            // A new snapshot moves the start of every prompt: it is taken only in a pause of the
            // user's (a keystroke during the warm-up would pay for the whole prompt), and under
            // the active job's lock together with the warm-up job.
            let since_change = self.since_last_change();
            if since_change < RING_PAUSE {
                tokio::time::sleep(RING_PAUSE - since_change).await;
            }
            if self.since_last_change() >= RING_PAUSE {
                let params = origin.params.clone();
                self.run_on_standby(&engine, &origin, origin.anchor.clone(), origin.state.clone(), None, params).await;
            }
        }
    }

    fn since_last_change(&self) -> Duration {
        match &*self.last_change.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some((_, _, at)) => at.elapsed(),
            None => Duration::MAX,
        }
    }

    /// Runs a job on standby, if `origin` is still the active job; false if it is not. Without
    /// a prompt, it is the cross-file warm-up: a new snapshot of the ring, if the ring changed,
    /// and a job at the origin's state with it.
    async fn run_on_standby(&self, engine: &Engine, origin: &Arc<ActiveJob>, anchor: Anchor, state: CursorState, prompt: Option<Prompt>, params: GenerateParams) -> bool {
        {
            let standby = {
                let active = self.lock_active();
                if !active.as_ref().is_some_and(|active| Arc::ptr_eq(active, origin)) {
                    return false;
                }
                let prompt = match prompt {
                    Some(prompt) => prompt,
                    None => {
                        let Some(chunks) = self.lock_cross_file().ring.take_if_changed() else { return true };
                        self.lock_cross_file().snapshot = Arc::new(chunks);
                        let config = self.config();
                        let cross_file = self.cross_file_for(&state.uri, &config);
                        let Some(split) = split_line(&state.rope, state.cursor_char_idx) else { return true };
                        let Some((prompt, _)) = job_for(&state, &split, &config, engine, cross_file.as_ref(), Rules::PromptOnly) else { return true };
                        prompt
                    }
                };
                let job = engine.submit(prompt.clone(), params.clone());
                let standby = Arc::new(ActiveJob { anchor, job, state, prompt, params });
                self.lock_standby().push(standby.clone());
                standby
            };
            self.stats_mut().counters.prefetch_jobs += 1;
            self.count_tokens_when_done(&standby, false);
            let mut progress = standby.job.subscribe();
            let _ = progress.wait_for(|progress| progress.done.is_some()).await;
        }
        true
    }
}

/// Whether a job can serve this state (now or when it finishes).
fn covers(active: &ActiveJob, state: &CursorState, split: &LineSplit, config: &Config) -> bool {
    let Some(typed) = typed_ahead(&active.anchor, &state.uri, split) else { return false };
    let progress = active.job.snapshot();
    let finished_with_error = matches!(progress.done, Some(Err(_)));
    let superseded = matches!(&progress.done, Some(Ok(completion)) if matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled));
    if finished_with_error || superseded {
        return false;
    }
    if typed.is_empty() {
        return true;
    }
    if !config.typed_ahead {
        return false;
    }
    // With no text yet there is nothing to compare the typed characters with: a new job is
    // cheap (it reuses the KV cache of this one) and is for the right state.
    !progress.text.is_empty()
        && if progress.text.starts_with(typed) {
            // Typed characters agree with the suggestion; something must remain.
            progress.done.is_none() || progress.text.len() > typed.len()
        } else {
            // The suggestion may still grow into what was typed.
            progress.done.is_none() && typed.starts_with(progress.text.as_str())
        }
}

impl Scheduler {
    /// Counts a job's tokens when it ends, and starts prefetching after a job the user asked
    /// for (`then_prefetch`).
    fn count_tokens_when_done(&self, active: &Arc<ActiveJob>, then_prefetch: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut progress = active.job.subscribe();
        let stats = self.stats_handle.clone();
        let ms_per_token = self.ms_per_token.clone();
        let origin = then_prefetch.then(|| active.clone());
        let me = self.me.clone();
        runtime.spawn(async move {
            let Ok(progress) = progress.wait_for(|progress| progress.done.is_some()).await else { return };
            let progress = progress.clone();
            // Idle work is counted before the job counts as ended, so no one sees the server
            // idle between the two.
            if let (Some(origin), Some(scheduler)) = (origin, me.upgrade()) {
                scheduler.spawn_prefetch(origin);
            }
            stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).counters.jobs_ended += 1;
            if let Some(Ok(completion)) = &progress.done {
                if completion.generated_tokens >= 2 {
                    let measured = completion.generation_ms / completion.generated_tokens as f64;
                    let mut average = ms_per_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    *average = if *average == 0.0 { measured } else { 0.8 * *average + 0.2 * measured };
                }
                let mut stats = stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                stats.counters.tokens_reused += completion.reused_tokens as u64;
                stats.counters.tokens_decoded += completion.decoded_tokens as u64;
                stats.counters.tokens_generated += completion.generated_tokens as u64;
            }
        });
    }

    /// Cancels the active job if it belongs to this document (closed or no longer focused).
    pub fn cancel_for(&self, uri: &str) {
        let mut active = self.lock_active();
        if active.as_ref().is_some_and(|active| active.anchor.uri == uri) {
            if let Some(active) = active.take() {
                active.job.cancel();
            }
            for job in self.lock_standby().drain(..) {
                job.job.cancel();
            }
        }
    }

    fn keystroke_instant(&self, state: &CursorState) -> Instant {
        match &*self.last_change.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some((uri, version, at)) if *uri == state.uri && *version == state.version => *at,
            _ => Instant::now(),
        }
    }

    /// Answers a completion request at a cursor state.
    pub async fn complete(&self, state: CursorState, waiting: Waiting) -> (Answer, Option<ReadyWaiter>) {
        let request_start = Instant::now();
        let keystroke = self.keystroke_instant(&state);
        let (answer, waiter) = self.complete_inner(&state, waiting, keystroke).await;
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

    async fn complete_inner(&self, state: &CursorState, waiting: Waiting, keystroke: Instant) -> (Answer, Option<ReadyWaiter>) {
        let config = self.config();
        if self.ready_engine().is_none() {
            return (Answer::Empty(EmptyReason::ModelNotReady), None);
        }
        if !config.language_enabled(&state.language_id) {
            return (Answer::Empty(EmptyReason::LanguageDisabled), None);
        }
        let Some(split) = split_line(&state.rope, state.cursor_char_idx) else {
            return (Answer::Empty(EmptyReason::BadPosition), None);
        };
        // The budget counts from the keystroke, not from the request: the editor sees the
        // whole time since the key was pressed. Timers fire on whole milliseconds, rounding up,
        // so the wait ends one millisecond early to leave within the budget.
        let deadline = match waiting {
            Waiting::Budget => keystroke + Duration::from_millis(if config.budget_ms > 1 { config.budget_ms - 1 } else { config.budget_ms }),
            Waiting::UntilReady => keystroke + Duration::from_millis(config.max_wait_ms),
        };
        let covering = self.covering_job(state, &split, &config);
        let mut active = match covering {
            Some(active) => active,
            None => match self.start_job(state, split.clone(), &config) {
                Some(active) => active,
                None => return (Answer::Empty(EmptyReason::BadPosition), None),
            },
        };
        let mut restarted = false;
        loop {
            let typed = typed_ahead(&active.anchor, &state.uri, &split).unwrap_or_default().to_string();
            let mut progress = active.job.subscribe();
            // A client that is told when the suggestion grows may be shown its first words while
            // the rest is generated; any other client gets the whole suggestion.
            let partial_ok = waiting == Waiting::Budget;
            let may_grow = !partial_ok || self.may_grow_before(&progress.borrow(), deadline);
            let wait_until = if may_grow { deadline } else { Instant::now() };
            let settled = tokio::time::timeout_at(
                wait_until.into(),
                progress.wait_for(|progress| progress.done.is_some() || (partial_ok && partial_suggestion(progress, &typed, &split).is_some())),
            )
            .await
            .map(|res| res.map(|_| ()));
            let snapshot = progress.borrow().clone();
            let waiter = |answered_chars: usize| ReadyWaiter {
                uri: state.uri.clone(),
                version: state.version,
                cursor_char_idx: state.cursor_char_idx,
                progress: progress.clone(),
                keystroke,
                typed: typed.clone(),
                split: split.clone(),
                answered_chars,
            };
            match settled {
                Ok(Ok(())) if snapshot.done.is_none() => {
                    // The first words are ready; the client hears again when there is more.
                    let Some(suggestion) = partial_suggestion(&snapshot, &typed, &split) else {
                        return (Answer::Empty(EmptyReason::NotReadyYet), Some(waiter(0)));
                    };
                    let answered_chars = suggestion.text.chars().count();
                    return (Answer::Ready(suggestion), Some(waiter(answered_chars)));
                }
                Ok(Ok(())) => {
                    let answer = answer_from(&snapshot, &typed, &split);
                    // A job that finished with text the user did not type (it was followed
                    // while still running) is replaced once by a job for this very state.
                    let mismatched = matches!(answer, Answer::Empty(EmptyReason::Outdated))
                        && matches!(&snapshot.done, Some(Ok(completion)) if !matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled));
                    if mismatched && !restarted {
                        restarted = true;
                        match self.start_job(state, split.clone(), &config) {
                            Some(next) => {
                                active = next;
                                continue;
                            }
                            None => return (Answer::Empty(EmptyReason::BadPosition), None),
                        }
                    }
                    return (answer, None);
                }
                Ok(Err(_)) => return (Answer::Empty(EmptyReason::Outdated), None),
                Err(_) if waiting == Waiting::Budget => return (Answer::Empty(EmptyReason::NotReadyYet), Some(waiter(0))),
                Err(_) => return (Answer::Empty(EmptyReason::NotReadyYet), None),
            }
        }
    }

    /// Turns lines `first_line..=last_line` (a comment or a short note saying what should come)
    /// into code: the model writes what follows them on a new line with their indentation. A
    /// comment stays and the code goes below it; a note is replaced by the code. Returns the
    /// character range to replace and its new text.
    pub async fn expand(&self, rope: &Rope, first_line: usize, last_line: usize) -> Result<Expanded, String> {
        let engine = self.ready_engine().ok_or("the model is not loaded yet")?;
        if first_line > last_line || last_line >= rope.len_lines() {
            return Err(format!("lines {first_line}..{last_line} are not in the document"));
        }
        let lines: Vec<String> = (first_line..=last_line).map(|line| rope.line(line).to_string().trim_end_matches(['\r', '\n']).to_string()).collect();
        if lines.iter().all(|line| line.trim().is_empty()) {
            return Err("there is nothing to expand on these lines".to_string());
        }
        let first = &lines[0];
        let indent: String = first.chars().take_while(|ch| ch.is_whitespace()).collect();
        let is_comment = lines.iter().filter(|line| !line.trim().is_empty()).all(|line| {
            let text = line.trim_start();
            ["#", "//", "--", "/*", "*", ";", "%", "<!--"].iter().any(|marker| text.starts_with(marker))
        });
        let first_start = rope.line_to_char(first_line);
        let last_end = rope.line_to_char(last_line) + context::line_len_chars(rope, last_line);
        let mut with_new_line = rope.clone();
        with_new_line.insert(last_end, &format!("\n{indent}"));
        let cursor_idx = last_end + 1 + indent.chars().count();
        let cursor_line = with_new_line.char_to_line(cursor_idx);
        let cursor = CursorPosition { line: cursor_line, column: cursor_idx - with_new_line.line_to_char(cursor_line) };
        let config = self.config();
        let built = context::build_prompt(&with_new_line, cursor, &config.windows, engine.info().special).map_err(|err| err.to_string())?;
        let params = GenerateParams { max_tokens: 256, stop: StopRules::multi_line(config.max_lines.max(24)), ..GenerateParams::default() };
        // The expansion replaces the active job and whatever runs on standby (under the lock, so
        // idle-time work cannot supersede it).
        let mut job = {
            let mut active = self.lock_active();
            active.take();
            self.lock_standby().clear();
            engine.submit(built.prompt, params)
        };
        let completion = job.wait().await.map_err(|err| err.to_string())?;
        if matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled) {
            return Err("a newer edit interrupted the expansion; ask again".to_string());
        }
        let code = clean_suggestion(&indent, &completion.text, "", &surroundings(&with_new_line, cursor_line));
        if code.trim().is_empty() {
            return Err("the model had nothing to write here".to_string());
        }
        Ok(if is_comment {
            Expanded { start_char_idx: last_end, end_char_idx: last_end, text: format!("\n{indent}{code}") }
        } else {
            Expanded { start_char_idx: first_start, end_char_idx: last_end, text: format!("{indent}{code}") }
        })
    }

    /// Whether a job may publish a token before `deadline`: not while its prompt is still being
    /// decoded (a prompt step plus a token take longer than any budget), nor when the next token
    /// is due after it. Waiting then would only delay an empty answer.
    fn may_grow_before(&self, progress: &Progress, deadline: Instant) -> bool {
        if progress.done.is_some() {
            return true;
        }
        let ms_per_token = *self.ms_per_token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match progress.updated_at {
            _ if ms_per_token == 0.0 => true,
            None => false,
            Some(updated_at) => updated_at + Duration::from_secs_f64(ms_per_token * 0.7 / 1000.0) <= deadline,
        }
    }

    /// Waits until the suggestion behind an early answer grows past what was answered (its first
    /// words, or the whole of it); returns whether that is worth a ready notification.
    pub async fn wait_ready(&self, mut waiter: ReadyWaiter, max_wait: Duration) -> bool {
        let grown = |progress: &Progress| match &progress.done {
            Some(_) => true,
            None => partial_suggestion(progress, &waiter.typed, &waiter.split).is_some_and(|partial| partial.text.chars().count() > waiter.answered_chars),
        };
        let Ok(Ok(progress)) = tokio::time::timeout(max_wait, waiter.progress.wait_for(grown)).await else {
            return false;
        };
        // A suggestion still being generated has grown already (that is what was waited for);
        // a finished one must still be longer than what was answered.
        let useful = progress.done.is_none()
            || matches!(answer_from(&progress, &waiter.typed, &waiter.split), Answer::Ready(suggestion) if suggestion.text.chars().count() > waiter.answered_chars);
        drop(progress);
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

/// The characters typed since the anchor's state, if this split is that state plus typing: the
/// same document and line, the same text after the cursor, and a head that extends the anchor's.
fn typed_ahead<'split>(anchor: &Anchor, uri: &str, split: &'split LineSplit) -> Option<&'split str> {
    if anchor.uri != uri || anchor.line != split.line || anchor.line_tail != split.tail {
        return None;
    }
    split.head.strip_prefix(anchor.line_head.as_str())
}

/// The complete words of a suggestion still being generated, for a state `typed` characters
/// ahead of the job's: the text up to its last word boundary, cleaned. None when no word is
/// complete yet or the typed characters disagree with it.
fn partial_suggestion(progress: &Progress, typed: &str, split: &LineSplit) -> Option<Suggestion> {
    if progress.done.is_some() {
        return None;
    }
    let remainder = progress.text.strip_prefix(typed)?;
    let is_word = |ch: char| ch.is_alphanumeric() || ch == '_';
    // A boundary: the end of a run of non-word characters, or the point where one begins.
    let cut = remainder
        .char_indices()
        .zip(remainder.chars().skip(1))
        .filter(|((_, ch), next)| is_word(*ch) != is_word(*next) || !is_word(*ch))
        .map(|((idx, ch), _)| idx + ch.len_utf8())
        .last()?;
    let text = clean_suggestion(&split.head, &remainder[..cut], &split.tail, split.surroundings());
    if text.is_empty() {
        return None;
    }
    Some(Suggestion { text, line_tail: split.tail.clone(), from_typed_ahead: !typed.is_empty() })
}

/// Builds the answer from a finished job's progress for a state `typed` characters ahead.
fn answer_from(progress: &Progress, typed: &str, split: &LineSplit) -> Answer {
    let Some(done) = &progress.done else { return Answer::Empty(EmptyReason::NotReadyYet) };
    let completion = match done {
        Ok(completion) => completion,
        Err(_) => return Answer::Empty(EmptyReason::NothingToSuggest),
    };
    if matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled) {
        return Answer::Empty(EmptyReason::Outdated);
    }
    let Some(remainder) = completion.text.strip_prefix(typed) else {
        return Answer::Empty(EmptyReason::Outdated);
    };
    let text = clean_suggestion(&split.head, remainder, &split.tail, split.surroundings());
    if text.is_empty() {
        return Answer::Empty(EmptyReason::NothingToSuggest);
    }
    Answer::Ready(Suggestion { text, line_tail: split.tail.clone(), from_typed_ahead: !typed.is_empty() })
}

/// How a job's stop rules are worked out.
#[derive(Clone, Copy)]
enum Rules<'a> {
    /// From the syntax tree, on the planning thread (`key` names the kind of job; a newer job
    /// of the kind replaces a pending plan); the engine gets them before its first token.
    Planned { planner: &'a LatestWins<&'static str>, key: &'static str },
    /// Only the prompt is wanted: plain rules, no parse.
    PromptOnly,
}

/// The prompt and generation parameters for a job at a state. Nothing here parses: the prompt
/// needs no tree, and the tree's stop rules follow the job (`Rules::Planned`).
fn job_for(state: &CursorState, split: &LineSplit, config: &Config, engine: &Engine, cross_file: Option<&CrossFile>, rules: Rules) -> Option<(Prompt, GenerateParams)> {
    let line_start = state.rope.line_to_char(split.line);
    let cursor = CursorPosition { line: split.line, column: state.cursor_char_idx - line_start };
    let built = context::build_prompt_with(&state.rope, cursor, &config.windows, engine.info().special, cross_file).ok()?;
    let shape = shape(config);
    let plain = plain_stop_rules(split, shape);
    let late_stop = match (rules, state.syntax.as_ref().filter(|_| config.syntax)) {
        (Rules::Planned { planner, key }, Some(tree)) => {
            let late = LateStopRules::default();
            let (deliver, tree, rope, cursor_char_idx, split) = (late.clone(), tree.clone(), state.rope.clone(), state.cursor_char_idx, split.clone());
            planner.submit(key, move || deliver.set(tree_stop_rules(&tree, &rope, cursor_char_idx, &split, shape)));
            Some(late)
        }
        _ => None,
    };
    let params = GenerateParams { max_tokens: config.max_tokens, stop: plain, late_stop, ..GenerateParams::default() };
    Some((built.prompt, params))
}

/// The state after the user accepts a suggestion (as shown, cleaned): its text inserted at the
/// cursor; when that completes the line, the next line too, indented as editors indent it (as
/// the line, one level deeper after a block opener), since that is where the user goes next.
fn accepted_state(state: &CursorState, raw: &str) -> Option<CursorState> {
    let split = split_line(&state.rope, state.cursor_char_idx)?;
    let shown = clean_suggestion(&split.head, raw, &split.tail, split.surroundings());
    if shown.is_empty() {
        return None;
    }
    let mut inserted = shown;
    if split.tail.trim().is_empty() {
        let whole = format!("{}{}", split.head, inserted);
        let last_line = whole.rsplit('\n').next().unwrap_or_default();
        let mut indent: String = last_line.chars().take_while(|ch| *ch == ' ' || *ch == '\t').collect();
        let opens_block = state.syntax.as_ref().is_some_and(|tree| tree.language.facts.opens_block(last_line));
        if opens_block {
            match split.surroundings().indent {
                Some(crate::postprocess::Indent::Tabs) => indent.push('\t'),
                Some(crate::postprocess::Indent::Spaces(width)) => indent.push_str(&" ".repeat(width)),
                None => indent.push_str("    "),
            }
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

/// The suggestion's shape from the settings (tab width 4 until the file says otherwise).
fn shape(config: &Config) -> syntax::Shape {
    syntax::Shape { multi_line: config.multi_line, max_lines: config.max_lines, tab_width: 4 }
}

/// Several lines on an empty line, one line elsewhere: the rules without a syntax tree.
fn plain_stop_rules(split: &LineSplit, shape: syntax::Shape) -> StopRules {
    syntax::plain_stop_rules(&split.head, &split.tail, shape)
}

/// How the suggestion is shaped and where it stops, by the syntax tree (parsed first if it is
/// behind the text), with the tab width the file uses.
fn tree_stop_rules(tree: &SyntaxTree, rope: &Rope, cursor_char_idx: usize, split: &LineSplit, shape: syntax::Shape) -> StopRules {
    let tree = tree.fresh(rope);
    let cursor = tree.at(rope, cursor_char_idx);
    let tab_width = match split.surroundings().indent {
        Some(crate::postprocess::Indent::Spaces(width)) => width,
        _ => shape.tab_width,
    };
    syntax::stop_rules(tree.language, &cursor, &split.head, &split.tail, syntax::Shape { tab_width, ..shape })
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    fn progress(text: &str) -> Progress {
        Progress { text: text.to_string(), generated_tokens: 1, ..Progress::default() }
    }

    fn split(head: &str, tail: &str) -> LineSplit {
        LineSplit { line: 0, head: head.to_string(), tail: tail.to_string(), rope: Rope::new(), surroundings: OnceLock::new() }
    }

    fn partial(text: &str, typed: &str) -> Option<String> {
        partial_suggestion(&progress(text), typed, &split("    return ", "")).map(|suggestion| suggestion.text)
    }

    #[test]
    fn partial_suggestions_end_at_a_word_boundary() {
        assert_eq!(partial("radi", ""), None, "no word is complete yet");
        assert_eq!(partial("radius *", "").as_deref(), Some("radius"), "the operator may still grow");
        assert_eq!(partial("self.fo", "").as_deref(), Some("self."));
        assert_eq!(partial("math.pi * r", "").as_deref(), Some("math.pi *"));
    }

    #[test]
    fn partial_suggestions_follow_typed_characters() {
        assert_eq!(partial("radius * rad", "rad").as_deref(), Some("ius *"));
        assert_eq!(partial("radius * rad", "x"), None, "typed characters disagree");
        let done = Progress { done: Some(Err(EngineError::Stopped)), ..progress("radius * 2") };
        assert!(partial_suggestion(&done, "", &split("", "")).is_none(), "a finished job has a whole answer instead");
    }

    fn python_state(text: &str, cursor_char_idx: usize) -> CursorState {
        let rope = Rope::from_str(text);
        let syntax = crate::syntax::language_for("python", "").map(|language| SyntaxTree::new(language, &rope));
        CursorState { uri: "file:///a.py".into(), version: 1, rope, cursor_char_idx, language_id: "python".into(), syntax }
    }

    #[test]
    fn the_accepted_state_is_the_next_line_indented_as_an_editor_does() {
        let text = "def area(r):\n    return 3.14 * \n";
        let state = python_state(text, text.find(" \n").unwrap() + 1);
        let accepted = accepted_state(&state, "r * r").unwrap();
        assert_eq!(accepted.rope.to_string(), "def area(r):\n    return 3.14 * r * r\n    \n");
        assert_eq!(accepted.cursor_char_idx, accepted.rope.to_string().rfind("    \n").unwrap() + 4);
        assert!(accepted.syntax.unwrap().is_parsed());

        // After a block opener, one level deeper.
        let text = "def f(values):\n    for v in values\n";
        let state = python_state(text, text.find("values\n").unwrap() + 6);
        let accepted = accepted_state(&state, ":").unwrap();
        assert!(accepted.rope.to_string().ends_with("    for v in values:\n        \n"), "{}", accepted.rope);

        // Accepted in the middle of a line: the cursor stays on it, after the suggestion.
        let text = "print(area())\n";
        let state = python_state(text, 11);
        let accepted = accepted_state(&state, "2");
        assert_eq!(accepted.map(|accepted| (accepted.rope.to_string(), accepted.cursor_char_idx)), Some(("print(area(2))\n".to_string(), 12)));
        // Nothing to accept.
        assert!(accepted_state(&state, "   ").is_none());
    }
}
