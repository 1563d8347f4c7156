//! The engine: one named OS thread that owns llama.cpp (model and context), and a cloneable
//! handle that the rest of the program uses to talk to it.
//!
//! Invariants:
//! - Nothing outside `worker/` touches llama.cpp; the handle only sends jobs and reads results.
//! - Submitting a job supersedes every earlier job: the decode loop checks one atomic between
//!   every two decode steps and stops at once.
//! - The KV cache always mirrors `worker::KvState::tokens`; a job only decodes the tokens after
//!   the longest common prefix with it.
//! - The engine never sees a rope, a document or an LSP type: it takes a `Prompt` and returns text.

pub mod prompt;
pub mod remote;
pub mod stop;
#[cfg(test)]
mod scripted;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch;

pub use prompt::{Piece, Prompt, Special, SpecialSupport};
pub use stop::{LateStopRules, StopRules};
#[cfg(test)]
pub use scripted::ScriptedJob;

/// How to load the model and size the context.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// Threads for decoding; defaults to the number of physical cores.
    pub threads: usize,
    /// Context size in tokens (prompt plus generation).
    pub context_tokens: u32,
    /// Prompt tokens decoded per step; smaller steps let cancellation land sooner.
    pub prompt_chunk_tokens: usize,
    /// Layers to offload to a GPU; `None` means all of them when llama.cpp sees a GPU device
    /// (a GPU backend compiled in and a device present), else none.
    pub gpu_layers: Option<u32>,
    /// Memory for the KV cache of places the user left (0: only the current place is kept).
    pub saved_kv_bytes: usize,
    /// Runs of at least this many cached tokens that moved in the prompt are shifted to their
    /// new positions instead of decoded again (0: never).
    pub reuse_min_tokens: usize,
}

/// The shortest run of moved tokens worth shifting.
pub const DEFAULT_REUSE_MIN_TOKENS: usize = 32;

/// The default memory for saved places: about 20 windows of the default model, 4 of a 7B one.
pub const DEFAULT_SAVED_KV_MIB: usize = 256;

impl EngineConfig {
    pub fn new(model_path: PathBuf) -> EngineConfig {
        EngineConfig { model_path, threads: physical_cores(), context_tokens: 4096, prompt_chunk_tokens: 32, gpu_layers: None, saved_kv_bytes: DEFAULT_SAVED_KV_MIB << 20, reuse_min_tokens: DEFAULT_REUSE_MIN_TOKENS }
    }
}

/// What the loaded model is and can do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub name: String,
    pub size_bytes: u64,
    pub n_params: u64,
    pub context_tokens: u32,
    pub threads: usize,
    /// Layers offloaded to a GPU (0 on the CPU alone).
    pub gpu_layers: u32,
    pub special: SpecialSupport,
    pub load_ms: f64,
    /// How many places' KV cache the engine keeps (the current one and those saved within
    /// `saved_kv_bytes`, at `PLACE_TOKENS` each); 1 keeps only the current place.
    pub kv_places: usize,
    /// Prompt decoding measured at load on a sample of code, in the jobs' prompt steps (None:
    /// not measured, as for a remote backend, whose speed is learned from its answers). An
    /// arrival's first window is sized with it from the very first job.
    pub prompt_speed: Option<PromptSpeed>,
}

/// How fast prompts decode: milliseconds per prompt token, and the characters of text per token.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptSpeed {
    pub ms_per_token: f64,
    pub chars_per_token: f64,
}

/// The tokens of one place's prompt, for sizing how many places the saved memory holds (the
/// default layout's window is 400-1,500 tokens).
pub const PLACE_TOKENS: usize = 1536;

/// How to generate for one job.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub stop: StopRules,
    /// Rules that replace `stop` once they arrive (see `LateStopRules`).
    pub late_stop: Option<LateStopRules>,
    /// Stop generating (keeping what was generated) once this instant has passed.
    pub deadline: Option<Instant>,
    /// Roll back the prompt's last token when the prompt ends in text, and make the first
    /// generated tokens reproduce it: a cursor in the middle of a word (or after a space) then
    /// gets the natural tokenization instead of an out-of-distribution split.
    pub token_healing: bool,
    /// Text the suggestion must start with (the first tokens are constrained to produce it,
    /// and it is part of the text): prefetches a suggestion that starts another way.
    pub forced_prefix: String,
    /// How many other likely first tokens to report in `Progress::alternatives`.
    pub alternatives: usize,
    /// At most this many tokens drafted per step from what the context already holds (prompt
    /// lookup: the tokens that followed the last occurrence of the latest tokens), verified in
    /// one batch; the agreeing ones are kept. Greedy output is the same as without (0: off).
    pub draft_tokens: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { max_tokens: 48, stop: StopRules::default(), late_stop: None, deadline: None, token_healing: true, forced_prefix: String::new(), alternatives: 0, draft_tokens: 0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation or control token.
    EndOfGeneration,
    /// A stop rule (end of line, line count, stop string) fired.
    StopRule,
    MaxTokens,
    Deadline,
    /// The job's own cancel flag was set.
    Cancelled,
    /// A newer job was submitted.
    Superseded,
    /// The context has no room left for another token.
    ContextFull,
}

/// The result of one job, with the counts that show how much of the KV cache was reused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub text: String,
    pub stop_reason: StopReason,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub decoded_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// Tokens drafted from the context, and how many of them the model agreed with.
    pub drafted_tokens: usize,
    pub accepted_draft_tokens: usize,
    /// Prompt tokens that came back from a saved place (counted in `reused_tokens` too).
    pub restored_tokens: usize,
    /// Prompt tokens reused from the cache at a new position (counted in `reused_tokens` too).
    pub shifted_tokens: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("could not initialise llama.cpp: {0}")]
    Backend(String),
    #[error("could not load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("could not create a llama.cpp context: {0}")]
    Context(String),
    #[error("llama.cpp failed to decode: {0}")]
    Decode(String),
    #[error("the prompt has {prompt_tokens} tokens but the context leaves room for {limit}; the prompt builder must stay within its token budget (raise contextTokens or lower the windows)")]
    PromptTooLong { prompt_tokens: usize, limit: usize },
    #[error("the engine thread has stopped")]
    Stopped,
    /// The engine's thread panicked (running a job, or before any): it has stopped for good,
    /// and the handle's `crash` says why.
    #[error("the engine crashed: {0}")]
    Crashed(String),
    #[error("the remote backend failed: {0}")]
    Remote(String),
}

/// Where a job stands, as its progress says.
#[derive(Debug)]
pub enum JobOutcome<'progress> {
    Running,
    /// It ended by itself (end of generation, a stop rule, its token limit or deadline).
    Finished(&'progress Completion),
    /// A newer job superseded it, or it was cancelled: its text is not a whole suggestion.
    Interrupted(&'progress Completion),
    Failed(&'progress EngineError),
}

/// What a job has produced so far; published after every generated token.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub text: String,
    pub generated_tokens: usize,
    /// The prompt's tokens, and how many of them are in the KV cache so far (reused, restored
    /// or decoded): published after every prompt step, so a slow prompt shows while it runs
    /// (0 and 0 until the engine has tokenized it; a remote backend leaves them at 0).
    pub prompt_tokens: usize,
    pub prompt_tokens_done: usize,
    /// When the latest token was published.
    pub updated_at: Option<Instant>,
    /// Other ways the suggestion could start: the text up to the first freely chosen token
    /// with one of the next most likely tokens instead (at least 5% likely), most likely
    /// first; published with the first token.
    pub alternatives: Vec<String>,
    pub done: Option<Result<Completion, EngineError>>,
}

impl Progress {
    pub fn outcome(&self) -> JobOutcome<'_> {
        match &self.done {
            None => JobOutcome::Running,
            Some(Err(err)) => JobOutcome::Failed(err),
            Some(Ok(completion)) if matches!(completion.stop_reason, StopReason::Superseded | StopReason::Cancelled) => JobOutcome::Interrupted(completion),
            Some(Ok(completion)) => JobOutcome::Finished(completion),
        }
    }

    /// Whether the job was superseded, cancelled or failed: nothing more will come from it.
    pub fn is_interrupted_or_failed(&self) -> bool {
        matches!(self.outcome(), JobOutcome::Interrupted(_) | JobOutcome::Failed(_))
    }
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    sender: mpsc::Sender<worker::Command>,
    latest_job_id: Arc<AtomicU64>,
    info: Arc<ModelInfo>,
    /// A remote backend's settings and what it has done (None: the embedded model).
    remote: Option<(Arc<remote::RemoteConfig>, Arc<remote::Status>)>,
    /// Why the engine's thread stopped, once it has crashed.
    crash: Arc<OnceLock<String>>,
}

/// One submitted job: its progress, and a way to cancel it.
pub struct Job {
    pub id: u64,
    cancel: Arc<AtomicBool>,
    progress: watch::Receiver<Progress>,
}

impl Engine {
    /// Starts the engine thread and waits until the model is loaded.
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let (sender, receiver) = mpsc::channel();
        let (ready_sender, ready_receiver) = mpsc::channel();
        let latest_job_id = Arc::new(AtomicU64::new(0));
        let worker_latest_job_id = latest_job_id.clone();
        let crash = Arc::new(OnceLock::new());
        let worker_crash = crash.clone();
        std::thread::Builder::new()
            .name("ghostline-engine".to_string())
            .spawn(move || {
                crate::priority::lower_this_thread();
                // A panic outside a job (a job's own is caught around it) ends the thread too.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker::run(config, receiver, ready_sender, worker_latest_job_id, &worker_crash)
                }));
                if let Err(payload) = ran {
                    let _ = worker_crash.set(panic_message(payload.as_ref()));
                }
            })
            .map_err(|err| EngineError::Backend(format!("cannot start the engine thread: {err}")))?;
        let info = ready_receiver.recv().map_err(|_| crash.get().map_or(EngineError::Stopped, |why| EngineError::Crashed(why.clone())))??;
        Ok(Engine { sender, latest_job_id, info: Arc::new(info), remote: None, crash })
    }

    /// A handle whose jobs go to a remote server (see `remote/`), answered by `fallback`
    /// (an embedded engine) while the server fails or is slow, when one is given.
    pub fn start_remote(config: remote::RemoteConfig, fallback: Option<Engine>) -> Engine {
        remote::start(config, fallback)
    }

    /// Which backend answers, and for a remote one what it has done: for `ghostline/stats`.
    pub fn backend_json(&self) -> serde_json::Value {
        match &self.remote {
            Some((config, status)) => status.to_json(config),
            None => serde_json::json!({"kind": "local"}),
        }
    }

    /// Whether jobs go to a server (a new job there costs a round trip and the server's time,
    /// and a prompt being decoded cannot be stopped).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Why the engine stopped for good, once its thread has crashed (None while it runs).
    pub fn crash(&self) -> Option<&str> {
        self.crash.get().map(String::as_str)
    }

    /// Whether two handles talk to the same engine.
    pub fn same_as(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.latest_job_id, &other.latest_job_id)
    }

    /// Queues a job, superseding every job submitted before it.
    pub fn submit(&self, prompt: Prompt, params: GenerateParams) -> Job {
        let id = self.latest_job_id.fetch_add(1, Ordering::SeqCst) + 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let (progress_sender, progress) = watch::channel(Progress::default());
        let job = worker::JobRequest { id, prompt, params, cancel: cancel.clone(), progress: progress_sender };
        if let Err(mpsc::SendError(worker::Command::Run(job))) = self.sender.send(worker::Command::Run(job)) {
            job.progress.send_modify(|progress| progress.done = Some(Err(self.stopped())));
        }
        Job { id, cancel, progress }
    }

    /// What a job gets from an engine whose thread is gone.
    fn stopped(&self) -> EngineError {
        self.crash().map_or(EngineError::Stopped, |why| EngineError::Crashed(why.to_string()))
    }

    /// Submits a job and blocks this (non-async) thread until it finishes.
    pub fn complete_blocking(&self, prompt: Prompt, params: GenerateParams) -> Result<Completion, EngineError> {
        self.submit(prompt, params).wait_blocking()
    }

    /// Tokenizes text with the model's vocabulary (no special tokens).
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>, EngineError> {
        self.tokenize_timed(text).map(|(tokens, _)| tokens)
    }

    /// Tokenizes on the engine thread and says how long the tokenization itself took there
    /// (without the trip between threads), as it costs when a job's prompt is prepared.
    pub fn tokenize_timed(&self, text: &str) -> Result<(Vec<i32>, std::time::Duration), EngineError> {
        let (reply_sender, reply) = mpsc::channel();
        self.sender
            .send(worker::Command::Tokenize(text.to_string(), reply_sender))
            .map_err(|_| EngineError::Stopped)?;
        reply.recv().map_err(|_| EngineError::Stopped)
    }
}

impl Job {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// The progress right now.
    pub fn snapshot(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that is notified after every generated token.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    pub async fn wait(&mut self) -> Result<Completion, EngineError> {
        match self.progress.wait_for(|progress| progress.done.is_some()).await {
            Ok(progress) => progress.done.clone().unwrap_or(Err(EngineError::Stopped)),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    pub fn wait_blocking(mut self) -> Result<Completion, EngineError> {
        // A small runtime of its own, so callers without tokio (the CLI, tests) can wait.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|err| EngineError::Backend(err.to_string()))?;
        runtime.block_on(self.wait())
    }
}

/// A panic's message, as `std` prints it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| String::from("a panic without a message"))
}

/// A fault for tests to provoke, where `GHOSTLINE_TEST_FAULTS=1` is in the environment (never
/// otherwise): code that runs a prompt containing `marker` panics there, so a test can check
/// what a real panic in that place does to the server.
pub fn test_fault(marker: &str, prompt: &Prompt) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var("GHOSTLINE_TEST_FAULTS").is_ok_and(|value| value == "1"))
        && prompt.pieces.iter().any(|piece| matches!(piece, Piece::Text(text) if text.contains(marker)))
    {
        panic!("test fault: {marker}");
    }
}

/// The number of physical cores (hyper-threads share execution units, and llama.cpp decodes
/// fastest with one thread per physical core), falling back to the logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut cores = std::collections::HashSet::new();
    let mut physical_id = String::new();
    for line in cpuinfo.lines() {
        if let Some((key, value)) = line.split_once(':') {
            match key.trim() {
                "physical id" => physical_id = value.trim().to_string(),
                "core id" => {
                    cores.insert((physical_id.clone(), value.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The CPU features llama.cpp was built with and uses, as llama.cpp reports them.
pub fn system_info() -> String {
    worker::system_info()
}

/// One device llama.cpp can run on (the CPU, a GPU, an accelerator).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Device {
    /// llama.cpp's name for it, such as `CPU`, `Vulkan0` or `CUDA0`.
    pub name: String,
    pub description: String,
    /// The backend that drives it: `CPU`, `Vulkan`, `CUDA`, `Metal`, ...
    pub backend: String,
    /// `cpu`, `gpu`, `igpu`, `accelerator` or `unknown`.
    pub kind: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

impl Device {
    /// Whether model layers can be offloaded to it.
    pub fn is_gpu(&self) -> bool {
        self.kind == "gpu" || self.kind == "igpu"
    }
}

/// The devices llama.cpp sees in this process (backends loaded, devices enumerated).
pub fn devices() -> Result<Vec<Device>, EngineError> {
    worker::devices()
}
