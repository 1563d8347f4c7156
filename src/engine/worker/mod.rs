//! The engine thread: the only code that calls llama.cpp.
//!
//! It owns the backend, the model and one context, and runs jobs one at a time: tokenize the
//! prompt (reusing the tokens of unchanged pieces), keep the longest common token prefix with
//! the KV cache, remove the rest, decode the new tokens in chunks, then generate greedily,
//! publishing the text after every token. Between every two decode steps it checks the job's
//! cancel flag, the latest job id (supersession) and the deadline.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::watch;

use super::stop::StopRules;
use super::{
    Completion, Device, EngineConfig, EngineError, GenerateParams, ModelInfo, Piece, Progress, Prompt, PromptSpeed,
    Special, SpecialSupport, StopReason,
};

/// The test fault (`super::test_fault`) that makes the engine thread panic in a job.
pub const PANIC_MARKER: &str = "ghostline-test-fault: panic in the engine";

pub(super) enum Command {
    Run(JobRequest),
    Tokenize(String, mpsc::Sender<(Vec<i32>, std::time::Duration)>),
}

pub(super) struct JobRequest {
    pub id: u64,
    pub prompt: Prompt,
    pub params: GenerateParams,
    pub cancel: Arc<AtomicBool>,
    pub progress: watch::Sender<Progress>,
}

/// llama.cpp's backend may be initialised once per process; every engine shares it.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            #[cfg(feature = "portable")]
            load_backend_libraries();
            LlamaBackend::init().map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| EngineError::Backend(err.clone()))
}

/// A portable build carries llama.cpp's CPU kernels as one library per instruction-set level
/// (and any GPU backend) and loads the best one this CPU runs. They live in `lib/` beside the
/// binary's `bin/` (the archive's and the VS Code extension's layout), else beside the binary,
/// else where the build put them; `GHOSTLINE_BACKENDS_DIR` overrides all three.
#[cfg(feature = "portable")]
fn load_backend_libraries() {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("GHOSTLINE_BACKENDS_DIR") {
        candidates.push(std::path::PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(std::path::Path::to_path_buf)) {
        if let Some(prefix) = exe_dir.parent() {
            candidates.push(prefix.join("lib"));
        }
        candidates.push(exe_dir);
    }
    if let Some(dir) = llama_cpp_sys_2::BACKENDS_DIR {
        candidates.push(std::path::PathBuf::from(dir));
    }
    let has_cpu_backend = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|entry| entry.file_name().to_string_lossy().contains("ggml-cpu")))
            .unwrap_or(false)
    };
    match candidates.iter().find(|dir| has_cpu_backend(dir)) {
        Some(dir) => {
            tracing::debug!(dir = %dir.display(), "loading llama.cpp backends");
            llama_cpp_2::llama_backend::load_backends_from_path(dir);
        }
        None => tracing::error!(?candidates, "no llama.cpp CPU backend library found; set GHOSTLINE_BACKENDS_DIR"),
    }
}

pub(super) fn devices() -> Result<Vec<Device>, EngineError> {
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|device| Device {
            name: device.name,
            description: device.description,
            backend: device.backend,
            kind: match device.device_type {
                llama_cpp_2::LlamaBackendDeviceType::Cpu => "cpu",
                llama_cpp_2::LlamaBackendDeviceType::Gpu => "gpu",
                llama_cpp_2::LlamaBackendDeviceType::IntegratedGpu => "igpu",
                llama_cpp_2::LlamaBackendDeviceType::Accelerator => "accelerator",
                llama_cpp_2::LlamaBackendDeviceType::Unknown => "unknown",
            }
            .to_string(),
            memory_total_bytes: device.memory_total as u64,
            memory_free_bytes: device.memory_free as u64,
        })
        .collect())
}

/// `None` (the default) offloads every layer when llama.cpp sees a GPU, else none.
fn gpu_layers(setting: Option<u32>) -> u32 {
    setting.unwrap_or_else(|| if devices().map(|devices| devices.iter().any(Device::is_gpu)).unwrap_or(false) { 999 } else { 0 })
}

pub(super) fn system_info() -> String {
    if backend().is_err() {
        return String::from("llama.cpp backend unavailable");
    }
    // SAFETY: llama_print_system_info returns a pointer to a static, NUL-terminated buffer.
    let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    info.to_string_lossy().into_owned()
}

mod places;
mod runner;
mod sampling;

use places::*;
use runner::*;
use sampling::*;

pub(super) fn run(
    config: EngineConfig,
    commands: mpsc::Receiver<Command>,
    ready: mpsc::Sender<Result<ModelInfo, EngineError>>,
    latest_job_id: Arc<AtomicU64>,
    crash: &OnceLock<String>,
) {
    let load_start = Instant::now();
    let backend = match backend() {
        Ok(backend) => backend,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let gpu_layers = gpu_layers(config.gpu_layers);
    let model_params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
    let model = match LlamaModel::load_from_file(backend, &config.model_path, &model_params) {
        Ok(model) => model,
        Err(err) => {
            let _ = ready.send(Err(EngineError::Load { path: config.model_path.clone(), reason: err.to_string() }));
            return;
        }
    };
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
    let context_tokens = config.context_tokens.min(model.n_ctx_train().max(512));
    let context_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_tokens))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut context = match model.new_context(backend, context_params) {
        Ok(context) => context,
        Err(err) => {
            let _ = ready.send(Err(EngineError::Context(err.to_string())));
            return;
        }
    };
    let vocab = model.vocab();
    let special = special_support(&model);
    let chunk_tokens = config.prompt_chunk_tokens.clamp(1, 512);
    let mut batch = LlamaBatch::new(512, 1);
    let prompt_speed = measure_prompt_speed(&model, &mut context, &mut batch, chunk_tokens);
    let info = ModelInfo {
        path: config.model_path.clone(),
        name: model.meta_val_str("general.name").unwrap_or_else(|_| String::from("unknown")),
        size_bytes: model.size(),
        n_params: model.n_params(),
        context_tokens: context.n_ctx(),
        threads: config.threads.max(1),
        gpu_layers: gpu_layers.min(model.n_layer()),
        special,
        load_ms: load_start.elapsed().as_secs_f64() * 1000.0,
        kv_places: 1 + config.saved_kv_bytes / (kv_bytes_per_token(&model) * super::PLACE_TOKENS).max(1),
        prompt_speed,
    };
    tracing::info!(name = %info.name, load_ms = info.load_ms, ?special, ?prompt_speed, "model loaded");
    if ready.send(Ok(info)).is_err() {
        return;
    }

    // The bytes of every token, once, so generation and token healing never call back into
    // the tokenizer for single tokens. Control tokens render as nothing.
    let token_pieces: Vec<Vec<u8>> = (0..vocab.n_tokens())
        .map(|token| {
            let token = LlamaToken(token);
            if vocab.is_control(token) || vocab.is_eog(token) {
                Vec::new()
            } else {
                vocab.token_to_piece(token, false, None)
            }
        })
        .collect();
    let can_shift = can_shift(&model);
    let mut state = KvState::default();
    state.saved.budget_bytes = config.saved_kv_bytes;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Tokenize(text, reply) => {
                let start = Instant::now();
                let tokens: Vec<i32> = vocab.tokenize(text.as_bytes(), false, false).into_iter().map(|token| token.0).collect();
                let _ = reply.send((tokens, start.elapsed()));
            }
            Command::Run(job) => {
                let res = if job.id != latest_job_id.load(Ordering::SeqCst) {
                    Ok(superseded_before_start())
                } else {
                    let runner = JobRunner {
                        model: &model,
                        reuse_min_tokens: config.reuse_min_tokens,
                        can_shift,
                        context: &mut context,
                        batch: &mut batch,
                        state: &mut state,
                        token_pieces: &token_pieces,
                        chunk_tokens,
                        latest_job_id: &latest_job_id,
                        job: &job,
                    };
                    // A panic leaves the context and the cache's mirror in no known state: the
                    // job fails with its message and the thread stops, for the server to say so
                    // and start a new engine.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        super::test_fault(PANIC_MARKER, &job.prompt);
                        runner.run()
                    }));
                    match ran {
                        Ok(res) => res,
                        Err(payload) => {
                            let why = super::panic_message(payload.as_ref());
                            tracing::error!(%why, "the engine thread panicked; it stops");
                            let _ = crash.set(why.clone());
                            job.progress.send_modify(|progress| progress.done = Some(Err(EngineError::Crashed(why))));
                            return;
                        }
                    }
                };
                if let Err(err) = &res {
                    tracing::error!(%err, "job failed; clearing the KV cache");
                    context.clear_kv_cache();
                    state.tokens.clear();
                    state.shift_pending = false;
                }
                job.progress.send_modify(|progress| progress.done = Some(res));
            }
        }
    }
    tracing::debug!("engine thread stopping");
}

/// Code to time prompt decoding with at load: ordinary source text, tokenized as a prompt's is.
const SPEED_SAMPLE: &str = "def parse_arguments(argv, defaults=None):\n    \"\"\"Reads the command line into a dictionary of options.\"\"\"\n    options = dict(defaults or {})\n    for index, argument in enumerate(argv):\n        if argument.startswith(\"--\"):\n            key, _, value = argument[2:].partition(\"=\")\n            options[key.replace(\"-\", \"_\")] = value or True\n        elif index == 0:\n            options[\"program\"] = argument\n    return options\n\n\nfn total_length(items: &[String]) -> usize {\n    items.iter().map(|item| item.chars().count()).sum()\n}\n";

/// Measures prompt decoding on `SPEED_SAMPLE`: one step of `chunk_tokens`, as a job's prompt
/// is decoded, timed after a short step that is not (the first decode after loading pays for
/// touching the weights); then the cache is emptied again. One step: on a slow 2-core machine a
/// step of 32 tokens takes over a second, and the jobs' own prompts refine the figure. None when
/// the sample does not decode (the first job will say why).
fn measure_prompt_speed(model: &LlamaModel, context: &mut LlamaContext, batch: &mut LlamaBatch, chunk_tokens: usize) -> Option<PromptSpeed> {
    const UNTIMED_TOKENS: usize = 8;
    let tokens = model.vocab().tokenize(SPEED_SAMPLE.as_bytes(), false, false);
    let timed_end = (UNTIMED_TOKENS + chunk_tokens).min(tokens.len());
    let mut decode = |start: usize, end: usize| -> bool {
        batch.clear();
        for (offset, token) in tokens[start..end].iter().enumerate() {
            if batch.add(*token, (start + offset) as i32, &[0], start + offset + 1 == end).is_err() {
                return false;
            }
        }
        context.decode(&mut *batch).is_ok()
    };
    let mut measured = None;
    if timed_end > UNTIMED_TOKENS && decode(0, UNTIMED_TOKENS) {
        let timed_start = Instant::now();
        if decode(UNTIMED_TOKENS, timed_end) {
            let chars_per_token = SPEED_SAMPLE.chars().count() as f64 / tokens.len() as f64;
            measured = Some(PromptSpeed { ms_per_token: ms_since(timed_start) / (timed_end - UNTIMED_TOKENS) as f64, chars_per_token });
        }
    }
    context.clear_kv_cache();
    measured
}

/// Whether cached tokens can be moved to other positions: plain rotary positions, one attention
/// cache for every layer (llama.cpp aborts on a shift it cannot do, so anything else is left
/// alone).
fn can_shift(model: &LlamaModel) -> bool {
    let architecture = model.meta_val_str("general.architecture").unwrap_or_default();
    let sliding_window = model.meta_val_str(&format!("{architecture}.attention.sliding_window")).is_ok();
    matches!(model.rope_type(), Some(llama_cpp_2::model::RopeType::Norm | llama_cpp_2::model::RopeType::NeoX))
        && !model.is_recurrent()
        && !model.is_hybrid()
        && !sliding_window
        // Sliding windows these set in llama.cpp's code, not in the file.
        && !matches!(architecture.as_str(), "step35" | "llama4" | "exaone4")
}

/// The KV cache's bytes per token (keys and values in 16 bits, every layer), with the head
/// sizes the model states (`key_length`, `value_length`), else the embedding over the heads.
fn kv_bytes_per_token(model: &LlamaModel) -> usize {
    let architecture = model.meta_val_str("general.architecture").unwrap_or_default();
    let default_head = model.n_embd().max(1) as usize / model.n_head().max(1) as usize;
    let length = |key: &str| model.meta_val_str(&format!("{architecture}.attention.{key}")).ok().and_then(|value| value.parse::<usize>().ok()).unwrap_or(default_head);
    2 * model.n_layer() as usize * (length("key_length") + length("value_length")) * model.n_head_kv().max(1) as usize
}

fn superseded_before_start() -> Completion {
    Completion {
        text: String::new(),
        stop_reason: StopReason::Superseded,
        prompt_tokens: 0,
        reused_tokens: 0,
        decoded_tokens: 0,
        generated_tokens: 0,
        prompt_ms: 0.0,
        generation_ms: 0.0,
        drafted_tokens: 0,
        accepted_draft_tokens: 0,
        restored_tokens: 0,
        shifted_tokens: 0,
    }
}

/// A token id that is in the vocabulary; llama.cpp reports a missing special token as -1.
fn valid_token(model: &LlamaModel, token: LlamaToken) -> Option<LlamaToken> {
    (token.0 >= 0 && token.0 < model.vocab().n_tokens()).then_some(token)
}

fn special_token(model: &LlamaModel, special: Special) -> Option<LlamaToken> {
    let vocab = model.vocab();
    match special {
        Special::Bos => valid_token(model, vocab.bos()),
        Special::FimPrefix => valid_token(model, vocab.fim_pre()),
        Special::FimSuffix => valid_token(model, vocab.fim_suf()),
        Special::FimMiddle => valid_token(model, vocab.fim_mid()),
        Special::FileSeparator => valid_token(model, vocab.fim_sep()),
        Special::RepoName => valid_token(model, vocab.fim_rep()),
    }
}

fn special_support(model: &LlamaModel) -> SpecialSupport {
    let has = |special| special_token(model, special).is_some();
    SpecialSupport {
        fim: has(Special::FimPrefix) && has(Special::FimSuffix) && has(Special::FimMiddle),
        file_separator: has(Special::FileSeparator),
        repo_name: has(Special::RepoName),
        bos: model.vocab().should_add_bos() && has(Special::Bos),
    }
}

impl JobRequest {
    /// Why the job must stop now, if it must: cancelled, superseded by a newer job, or past its
    /// deadline.
    pub(super) fn interruption(&self, latest_job_id: &AtomicU64) -> Option<StopReason> {
        if self.cancel.load(Ordering::Relaxed) {
            return Some(StopReason::Cancelled);
        }
        if latest_job_id.load(Ordering::Relaxed) != self.id {
            return Some(StopReason::Superseded);
        }
        if self.params.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Some(StopReason::Deadline);
        }
        None
    }

    /// Publishes how much of the prompt is in the cache.
    pub(super) fn publish_prompt(&self, prompt_tokens: usize, prompt_tokens_done: usize) {
        self.progress.send_modify(|progress| {
            progress.prompt_tokens = prompt_tokens;
            progress.prompt_tokens_done = prompt_tokens_done;
        });
    }

    /// Publishes the text so far.
    pub(super) fn publish(&self, text: &str, generated_tokens: usize) {
        self.progress.send_modify(|progress| {
            progress.text.clear();
            progress.text.push_str(text);
            progress.generated_tokens = generated_tokens;
            progress.updated_at = Some(Instant::now());
        });
    }
}

/// A completion that ended before producing anything, for this reason.
pub(super) fn superseded_before_start_with(stop_reason: StopReason) -> Completion {
    Completion { stop_reason, ..superseded_before_start() }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
