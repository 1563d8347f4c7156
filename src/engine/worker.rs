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

/// What is in the KV cache of sequence 0, token by token, the tokens of the pieces of the
/// previous prompt (so unchanged pieces are not tokenized again), and the places saved from
/// the cache.
#[derive(Default)]
struct KvState {
    tokens: Vec<LlamaToken>,
    piece_cache: Vec<(Piece, Vec<LlamaToken>)>,
    saved: SavedPlaces,
    /// Tokens were moved (`reuse_moved`) and no decode has applied the keys' rotation yet.
    shift_pending: bool,
}

/// The KV cache of places the user left, copied out of the context (within `budget_bytes`;
/// least recently used first, so the first is dropped first), so coming back restores the prompt's prefix instead of
/// decoding it again. Copies, not other sequences of the context: a sequence kept in the
/// context would widen the attention of every decode (llama.cpp attends over all used cells).
#[derive(Default)]
struct SavedPlaces {
    places: Vec<SavedPlace>,
    budget_bytes: usize,
}

struct SavedPlace {
    tokens: Vec<LlamaToken>,
    state: SeqState,
}

/// A prompt that would discard at least this many cached tokens (and a third of them) moves to
/// another place: the cache is saved first. Small: an arrival's prompt on a slow machine is a
/// few dozen tokens that took a second or more, and a window warm-up that the next key
/// interrupts must not cost that key the arrival's prompt again (a copy of 24 tokens is about
/// 300 KiB for the default model, far less than decoding them).
const MIN_SAVED_TOKENS: usize = 24;
/// Restoring pays when it brings back at least this many more tokens than the cache keeps.
const MIN_RESTORED_GAIN: usize = 16;

impl SavedPlaces {
    /// Saves the cache's `tokens`, dropping older copies of the same place and the least
    /// recently used places beyond the budget.
    fn save(&mut self, context: &LlamaContext, tokens: &[LlamaToken]) {
        let state = match context.state_seq_get(0, LlamaStateSeqFlags::empty()) {
            Ok(state) => state,
            Err(err) => {
                tracing::warn!(%err, "could not copy the KV cache out; the place is not saved");
                return;
            }
        };
        if state.byte_len() > self.budget_bytes {
            return;
        }
        // An older copy that shares most of its tokens with this one is the same place.
        self.places.retain(|place| common_prefix_len(&place.tokens, tokens) * 2 < place.tokens.len());
        self.places.push(SavedPlace { tokens: tokens.to_vec(), state });
        while self.places.iter().map(|place| place.state.byte_len()).sum::<usize>() > self.budget_bytes {
            self.places.remove(0);
        }
    }

    /// The saved place that shares the most tokens with `tokens`, and how many.
    fn best_for(&self, tokens: &[LlamaToken]) -> Option<(usize, usize)> {
        self.places.iter().enumerate().map(|(idx, place)| (common_prefix_len(&place.tokens, tokens), idx)).max().map(|(common, idx)| (idx, common))
    }

    fn take(&mut self, idx: usize) -> SavedPlace {
        self.places.remove(idx)
    }
}

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

struct JobRunner<'run, 'model> {
    model: &'model LlamaModel,
    /// Runs of at least this many cached tokens are moved to their new positions (0: never).
    reuse_min_tokens: usize,
    /// The context's memory can move tokens (rotary positions; not every model's can).
    can_shift: bool,
    context: &'run mut LlamaContext<'model>,
    batch: &'run mut LlamaBatch<'static>,
    state: &'run mut KvState,
    token_pieces: &'run [Vec<u8>],
    chunk_tokens: usize,
    latest_job_id: &'run AtomicU64,
    job: &'run JobRequest,
}

impl JobRunner<'_, '_> {
    /// The job's stop rules: the late ones when they come (the prompt is decoded by now, so
    /// they usually have), else the plain ones after `LATE_RULES_WAIT`; an interruption while
    /// waiting ends the job.
    fn late_stop_rules(&self) -> Result<StopRules, StopReason> {
        let Some(late) = &self.job.params.late_stop else { return Ok(self.job.params.stop.clone()) };
        let start = Instant::now();
        loop {
            if let Some(rules) = late.wait_timeout(std::time::Duration::from_millis(2)) {
                return Ok(rules);
            }
            if let Some(reason) = self.interruption() {
                return Err(reason);
            }
            if start.elapsed() >= super::stop::LATE_RULES_WAIT {
                tracing::debug!("stop rules came late; generating with the plain ones");
                return Ok(self.job.params.stop.clone());
            }
        }
    }

    /// Why the job must stop now, if it must.
    fn interruption(&self) -> Option<StopReason> {
        self.job.interruption(self.latest_job_id)
    }

    fn tokenize_prompt(&mut self) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = Vec::new();
        let mut new_piece_cache = Vec::with_capacity(self.job.prompt.pieces.len());
        for (piece_idx, piece) in self.job.prompt.pieces.iter().enumerate() {
            let piece_tokens = match piece {
                Piece::Special(special) => special_token(self.model, *special).into_iter().collect(),
                Piece::Text(text) => match self.state.piece_cache.get(piece_idx) {
                    Some((cached_piece, cached_tokens)) if cached_piece == piece => cached_tokens.clone(),
                    _ => vocab.tokenize(text.as_bytes(), false, false),
                },
            };
            tokens.extend_from_slice(&piece_tokens);
            new_piece_cache.push((piece.clone(), piece_tokens));
        }
        self.state.piece_cache = new_piece_cache;
        tokens
    }

    /// Before a prompt that keeps little of the cache: the cache is saved as a place (when the
    /// prompt discards enough of it), and the saved place sharing the most with the prompt
    /// comes back into the cache when that brings back more. The tokens restored beyond what
    /// the cache shared with the prompt.
    fn switch_place(&mut self, tokens: &[LlamaToken]) -> Result<usize, EngineError> {
        if self.state.saved.budget_bytes == 0 {
            return Ok(0);
        }
        let kept = common_prefix_len(&self.state.tokens, tokens);
        let discarded = self.state.tokens.len() - kept;
        // Taken out before saving: saving may drop or evict entries and move the indices.
        let best = self.state.saved.best_for(tokens).filter(|&(_, common)| common >= kept + MIN_RESTORED_GAIN);
        let restore = best.map(|(idx, common)| (self.state.saved.take(idx), common));
        // A shift not yet applied (the keys are rotated at the next decode) must not be saved:
        // the copy would hold the new positions with keys for the old ones.
        if discarded >= MIN_SAVED_TOKENS && discarded * 3 >= self.state.tokens.len() && !self.state.shift_pending {
            let cached = std::mem::take(&mut self.state.tokens);
            self.state.saved.save(self.context, &cached);
            self.state.tokens = cached;
        }
        let Some((place, common)) = restore else { return Ok(0) };
        self.context.clear_kv_cache();
        self.state.tokens.clear();
        self.state.shift_pending = false;
        match self.context.state_seq_set(&place.state, 0) {
            Ok(()) => {
                self.state.tokens = place.tokens;
                Ok(common - kept)
            }
            Err(err) => {
                tracing::warn!(%err, "could not restore a saved place; decoding its prompt");
                self.context.clear_kv_cache();
                Ok(0)
            }
        }
    }

    /// Reuses runs of cached tokens that the prompt still holds after its common prefix, at
    /// their new positions (as llama-server's `--cache-reuse`): the cells between are removed
    /// and each run of at least `reuse_min_tokens` is shifted to where the prompt has it
    /// (`llama_memory_seq_add`; the keys' rotary positions are updated before the next decode).
    /// The window that moved down past an anchor, or the lines below a line the user comes back
    /// to, then cost only what is new. Returns how many tokens were moved: afterwards the cache
    /// holds the prompt's first `common` + that many tokens.
    fn reuse_moved(&mut self, tokens: &[LlamaToken], common: usize) -> Result<usize, EngineError> {
        let min = self.reuse_min_tokens;
        if min == 0 || common >= self.state.tokens.len() || !self.can_shift {
            return Ok(0);
        }
        // At least one prompt token is decoded, for the logits.
        let last = tokens.len() - 1;
        let (mut head_cache, mut head_prompt) = (common, common);
        let map = |err: llama_cpp_2::context::kv_cache::KvCacheConversionError| EngineError::Decode(err.to_string());
        while head_cache < self.state.tokens.len() && head_prompt < last {
            let run = self.state.tokens[head_cache..].iter().zip(&tokens[head_prompt..last]).take_while(|(cached, new)| cached == new).count();
            if run < min {
                head_cache += 1;
                continue;
            }
            if head_cache > head_prompt {
                self.context.kv_cache_seq_rm(0, Some(head_prompt as u32), Some(head_cache as u32)).map_err(map)?;
                self.context.kv_cache_seq_add(0, Some(head_cache as u32), Some((head_cache + run) as u32), head_prompt as i32 - head_cache as i32).map_err(map)?;
                self.state.shift_pending = true;
            }
            head_cache += run;
            head_prompt += run;
        }
        if head_prompt == common {
            return Ok(0);
        }
        self.context.kv_cache_seq_rm(0, Some(head_prompt as u32), None).map_err(map)?;
        self.state.tokens = tokens[..head_prompt].to_vec();
        Ok(head_prompt - common)
    }

    fn run(mut self) -> Result<Completion, EngineError> {
        let prompt_start = Instant::now();
        let mut tokens = self.tokenize_prompt();
        let n_ctx = self.context.n_ctx() as usize;
        let max_prompt = n_ctx.saturating_sub(self.job.params.max_tokens + 1).max(1);
        if tokens.len() > max_prompt {
            // Cutting tokens here would cut the prompt's structure (its special tokens come
            // first); the prompt builder budgets the text, so this is a prompt it misjudged.
            return Err(EngineError::PromptTooLong { prompt_tokens: tokens.len(), limit: max_prompt });
        }
        if tokens.is_empty() {
            return Ok(Completion { prompt_ms: 0.0, ..superseded_before_start_with(StopReason::EndOfGeneration) });
        }
        let mut healed_bytes = Vec::new();
        if self.job.params.token_healing && tokens.len() > 1 && matches!(self.job.prompt.pieces.last(), Some(Piece::Text(_))) {
            if let Some(last) = tokens.pop() {
                healed_bytes = self.token_pieces.get(last.0 as usize).cloned().unwrap_or_default();
                if healed_bytes.is_empty() {
                    tokens.push(last);
                } else if healed_bytes.len() > 1 && healed_bytes.iter().all(|byte| *byte == b' ' || *byte == b'\t') {
                    // A run of indentation: code tokenizes it as the run less its last character,
                    // then that character with the word (`···········` + `·depth`). Rolling back
                    // the whole run made the model spell it out in short pieces and never stop
                    // (measured: 48 tokens of spaces at a blank line); the run less one stays in
                    // the prompt and only the last character is healed.
                    let kept = healed_bytes.split_off(healed_bytes.len() - 1);
                    let run = std::mem::replace(&mut healed_bytes, kept);
                    tokens.extend(self.model.vocab().tokenize(&run, false, false));
                }
            }
        }

        let restored_tokens = self.switch_place(&tokens)?;
        let common = common_prefix_len(&self.state.tokens, &tokens).min(tokens.len() - 1);
        let shifted_tokens = self.reuse_moved(&tokens, common)?;
        let common = common + shifted_tokens;
        if common < self.state.tokens.len() {
            let removed = self
                .context
                .clear_kv_cache_seq(Some(0), Some(common as u32), None)
                .map_err(|err| EngineError::Decode(err.to_string()))?;
            if !removed {
                self.context.clear_kv_cache();
                self.state.tokens.clear();
            } else {
                self.state.tokens.truncate(common);
            }
        }
        let reused_tokens = self.state.tokens.len();
        self.job.publish_prompt(tokens.len(), reused_tokens);
        let mut decoded_tokens = 0;
        let mut completion = Completion {
            text: String::new(),
            stop_reason: StopReason::EndOfGeneration,
            prompt_tokens: tokens.len(),
            reused_tokens,
            decoded_tokens: 0,
            generated_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            drafted_tokens: 0,
            accepted_draft_tokens: 0,
            restored_tokens,
            shifted_tokens,
        };

        let mut logits_idx = 0;
        while self.state.tokens.len() < tokens.len() {
            if let Some(reason) = self.interruption() {
                completion.stop_reason = reason;
                completion.decoded_tokens = decoded_tokens;
                completion.prompt_ms = ms_since(prompt_start);
                return Ok(completion);
            }
            let start = self.state.tokens.len();
            let end = (start + self.chunk_tokens).min(tokens.len());
            self.batch.clear();
            for (token_idx, token) in tokens[start..end].iter().enumerate() {
                let is_last = start + token_idx + 1 == tokens.len();
                self.batch
                    .add(*token, (start + token_idx) as i32, &[0], is_last)
                    .map_err(|err| EngineError::Decode(err.to_string()))?;
            }
            self.context.decode(self.batch).map_err(|err| EngineError::Decode(err.to_string()))?;
            self.state.shift_pending = false;
            self.state.tokens.extend_from_slice(&tokens[start..end]);
            decoded_tokens += end - start;
            self.job.publish_prompt(tokens.len(), end);
            logits_idx = (end - start - 1) as i32;
        }
        completion.decoded_tokens = decoded_tokens;
        completion.prompt_ms = ms_since(prompt_start);

        self.generate(&mut completion, logits_idx, healed_bytes)?;
        tracing::debug!(
            job = self.job.id,
            prompt_tokens = completion.prompt_tokens,
            reused = completion.reused_tokens,
            decoded = completion.decoded_tokens,
            generated = completion.generated_tokens,
            stop = ?completion.stop_reason,
            text = %completion.text,
            "job done"
        );
        Ok(completion)
    }

    /// Generates greedily. While `healed_bytes` (the rolled-back end of the prompt) and then the
    /// job's forced prefix are not yet reproduced, only tokens consistent with them are allowed;
    /// the healed bytes are not emitted, the forced prefix is.
    ///
    /// With `draft_tokens`, each step decodes the chosen token together with the tokens that
    /// followed the latest tokens' last occurrence in the context (`draft`), and keeps those the
    /// model would have chosen itself: each is checked with the same choice as plain decoding
    /// on the logits of the token before it, so the text is the same, in fewer decodes when the
    /// code repeats what is above or below.
    fn generate(&mut self, completion: &mut Completion, mut logits_idx: i32, healed_bytes: Vec<u8>) -> Result<(), EngineError> {
        let generation_start = Instant::now();
        let n_ctx = self.context.n_ctx() as usize;
        let mut output = Output::new(healed_bytes, &self.job.params.forced_prefix);
        let mut alternatives_due = self.job.params.alternatives > 0 && self.job.params.forced_prefix.is_empty();
        completion.stop_reason = StopReason::MaxTokens;
        let stop = match self.late_stop_rules() {
            Ok(stop) => stop,
            Err(reason) => {
                completion.stop_reason = reason;
                return Ok(());
            }
        };
        // A token chosen from the last batch's logits while checking a draft, not yet decoded.
        let mut chosen: Option<LlamaToken> = None;
        'steps: while completion.generated_tokens < self.job.params.max_tokens {
            if let Some(reason) = self.interruption() {
                completion.stop_reason = reason;
                break;
            }
            let token = match chosen.take() {
                Some(token) => token,
                None => {
                    let logits = self.context.get_logits_ith(logits_idx);
                    let token = output.choose(logits, self.token_pieces);
                    if alternatives_due && !self.is_end(token) {
                        alternatives_due = false;
                        self.report_alternatives(logits, token, &output);
                    }
                    token
                }
            };
            if let Some(reason) = self.take(token, &mut output, completion, &stop) {
                completion.stop_reason = reason;
                break;
            }
            if self.state.tokens.len() + 1 >= n_ctx {
                completion.stop_reason = StopReason::ContextFull;
                break;
            }
            let room = (self.job.params.max_tokens - completion.generated_tokens).min(n_ctx - self.state.tokens.len() - 2);
            let max_drafted = self.job.params.draft_tokens.min(room);
            let drafted = if max_drafted == 0 {
                Vec::new()
            } else {
                // The history the draft continues: the cache and the token just chosen.
                self.state.tokens.push(token);
                let drafted = draft(&self.state.tokens, max_drafted);
                self.state.tokens.pop();
                drafted
            };
            let position = self.state.tokens.len();
            self.batch.clear();
            for (offset, token) in std::iter::once(token).chain(drafted.iter().copied()).enumerate() {
                self.batch.add(token, (position + offset) as i32, &[0], true).map_err(|err| EngineError::Decode(err.to_string()))?;
            }
            self.context.decode(self.batch).map_err(|err| EngineError::Decode(err.to_string()))?;
            self.state.tokens.push(token);
            self.state.tokens.extend_from_slice(&drafted);
            completion.drafted_tokens += drafted.len();
            logits_idx = 0;
            for (idx, &drafted_token) in drafted.iter().enumerate() {
                let next = output.choose(self.context.get_logits_ith(idx as i32), self.token_pieces);
                if next != drafted_token {
                    // The model disagrees from here: the rest of the draft leaves the cache, and
                    // its own choice is the next token.
                    self.forget_from(position + 1 + idx)?;
                    chosen = Some(next);
                    continue 'steps;
                }
                completion.accepted_draft_tokens += 1;
                logits_idx = idx as i32 + 1;
                if let Some(reason) = self.take(next, &mut output, completion, &stop) {
                    completion.stop_reason = reason;
                    self.forget_from(position + 2 + idx)?;
                    break 'steps;
                }
            }
        }
        completion.text = output.text;
        completion.generation_ms = ms_since(generation_start);
        Ok(())
    }

    fn is_end(&self, token: LlamaToken) -> bool {
        let vocab = self.model.vocab();
        vocab.is_eog(token) || vocab.is_control(token)
    }

    /// Adds a chosen token to the suggestion and publishes it; the reason to stop, if it ends it.
    fn take(&self, token: LlamaToken, output: &mut Output, completion: &mut Completion, stop: &StopRules) -> Option<StopReason> {
        if self.is_end(token) {
            return Some(StopReason::EndOfGeneration);
        }
        completion.generated_tokens += 1;
        output.push(self.token_pieces.get(token.0 as usize).map(Vec::as_slice).unwrap_or_default());
        if let Some(cut) = stop.check(&output.text) {
            output.text.truncate(cut);
            self.publish(&output.text, completion.generated_tokens);
            return Some(StopReason::StopRule);
        }
        self.publish(&output.text, completion.generated_tokens);
        None
    }

    /// Removes the cache's tokens from `position` on.
    fn forget_from(&mut self, position: usize) -> Result<(), EngineError> {
        if position >= self.state.tokens.len() {
            return Ok(());
        }
        let removed = self.context.clear_kv_cache_seq(Some(0), Some(position as u32), None).map_err(|err| EngineError::Decode(err.to_string()))?;
        if removed {
            self.state.tokens.truncate(position);
        } else {
            self.context.clear_kv_cache();
            self.state.tokens.clear();
        }
        Ok(())
    }

    /// The first token: other tokens that agree with the healed bytes as well, shown as the text
    /// they add after them.
    fn report_alternatives(&self, logits: &[f32], token: LlamaToken, output: &Output) {
        let vocab = self.model.vocab();
        let hidden = output.hidden;
        let agrees = |idx: usize| {
            let piece = self.token_pieces.get(idx).map(Vec::as_slice).unwrap_or_default();
            piece.len() > hidden && (output.required.is_empty() || agrees_with(piece, &output.required))
        };
        let alternatives: Vec<String> = likely_others(logits, token, self.job.params.alternatives, agrees)
            .into_iter()
            .filter(|other| !vocab.is_eog(*other) && !vocab.is_control(*other))
            .filter_map(|other| std::str::from_utf8(&self.token_pieces.get(other.0 as usize)?[hidden..]).ok().map(str::to_string))
            .filter(|shown| !shown.is_empty())
            .collect();
        self.job.progress.send_modify(|progress| progress.alternatives = alternatives);
    }

    fn publish(&self, text: &str, generated_tokens: usize) {
        self.job.publish(text, generated_tokens);
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

/// The suggestion's text as tokens are chosen: the bytes that must come first (the healed end
/// of the prompt, not shown, then the forced prefix, shown) and the bytes of a character not
/// yet complete.
struct Output {
    text: String,
    pending_bytes: Vec<u8>,
    /// How many of the next bytes are the healed ones (not shown).
    hidden: usize,
    required: Vec<u8>,
}

impl Output {
    fn new(healed_bytes: Vec<u8>, forced_prefix: &str) -> Output {
        let hidden = healed_bytes.len();
        let mut required = healed_bytes;
        required.extend_from_slice(forced_prefix.as_bytes());
        Output { text: String::new(), pending_bytes: Vec::new(), hidden, required }
    }

    /// The greedy choice, among the tokens that agree with the required bytes while any are left.
    fn choose(&self, logits: &[f32], token_pieces: &[Vec<u8>]) -> LlamaToken {
        if self.required.is_empty() {
            argmax(logits)
        } else {
            constrained_argmax(logits, token_pieces, &self.required)
        }
    }

    fn push(&mut self, piece: &[u8]) {
        let shown_from = self.hidden.min(piece.len());
        self.hidden -= shown_from;
        self.pending_bytes.extend_from_slice(&piece[shown_from..]);
        self.required.drain(..piece.len().min(self.required.len()));
        let n_valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(valid) => valid.len(),
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            // Invalid bytes that no later token can complete: replace them.
            Err(_) => {
                self.text.push_str(&String::from_utf8_lossy(&self.pending_bytes));
                self.pending_bytes.clear();
                0
            }
        };
        if n_valid > 0 {
            self.text.push_str(std::str::from_utf8(&self.pending_bytes[..n_valid]).unwrap_or_default());
            self.pending_bytes.drain(..n_valid);
        }
    }
}

/// The longest run of tokens drafted from the context looks back at most this far.
const DRAFT_MAX_NGRAM: usize = 4;
/// Matches shorter than this propose too often to pay for their checking.
const DRAFT_MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the most recent earlier occurrence of the history's last
/// tokens (the longest such run from `DRAFT_MAX_NGRAM` down to `DRAFT_MIN_NGRAM` tokens), as a
/// guess of what comes next; empty when the context holds no such run.
fn draft(history: &[LlamaToken], max: usize) -> Vec<LlamaToken> {
    if max == 0 {
        return Vec::new();
    }
    for ngram in (DRAFT_MIN_NGRAM..=DRAFT_MAX_NGRAM).rev() {
        if history.len() <= ngram {
            continue;
        }
        let key = &history[history.len() - ngram..];
        // The latest occurrence that is followed by at least one token.
        let found = (0..history.len() - ngram).rev().find(|&start| &history[start..start + ngram] == key);
        if let Some(start) = found {
            let from = start + ngram;
            return history[from..(from + max).min(history.len())].to_vec();
        }
    }
    Vec::new()
}

fn common_prefix_len(cached: &[LlamaToken], tokens: &[LlamaToken]) -> usize {
    cached.iter().zip(tokens).take_while(|(cached, new)| cached == new).count()
}

fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best_idx = 0;
    let mut best = f32::NEG_INFINITY;
    for (idx, &logit) in logits.iter().enumerate() {
        if logit > best {
            best = logit;
            best_idx = idx;
        }
    }
    LlamaToken(best_idx as i32)
}

/// Up to `count` tokens other than `chosen` among those `allowed`, most likely first, each at
/// least 5% likely among the allowed ones.
fn likely_others(logits: &[f32], chosen: LlamaToken, count: usize, allowed: impl Fn(usize) -> bool) -> Vec<LlamaToken> {
    let max = logits.iter().enumerate().filter(|&(idx, _)| allowed(idx)).map(|(_, &logit)| logit).fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().enumerate().filter(|&(idx, _)| allowed(idx)).map(|(_, &logit)| (logit - max).exp()).sum();
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(count + 1);
    for (idx, &logit) in logits.iter().enumerate() {
        if idx as i32 == chosen.0 || best.len() == count && logit <= best[count - 1].0 || !allowed(idx) {
            continue;
        }
        let at = best.partition_point(|&(other, _)| other >= logit);
        best.insert(at, (logit, idx));
        best.truncate(count);
    }
    best.into_iter().filter(|&(logit, _)| (logit - max).exp() / total >= 0.05).map(|(_, idx)| LlamaToken(idx as i32)).collect()
}

/// Whether a token's bytes agree with `required`: they start with it, or are a non-empty
/// start of it.
fn agrees_with(piece: &[u8], required: &[u8]) -> bool {
    !piece.is_empty() && (piece.starts_with(required) || required.starts_with(piece))
}

/// The most likely token whose bytes agree with `required`.
fn constrained_argmax(logits: &[f32], token_pieces: &[Vec<u8>], required: &[u8]) -> LlamaToken {
    let mut best_idx = None;
    let mut best = f32::NEG_INFINITY;
    for (idx, (&logit, piece)) in logits.iter().zip(token_pieces).enumerate() {
        if logit > best && agrees_with(piece, required) {
            best = logit;
            best_idx = Some(idx);
        }
    }
    best_idx.map_or_else(|| argmax(logits), |idx| LlamaToken(idx as i32))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().copied().map(LlamaToken).collect()
    }

    #[test]
    fn a_draft_continues_the_latest_earlier_run_of_the_last_tokens() {
        // `1 2 3` occurred twice before; the later occurrence (followed by 7 8) wins.
        let history = tokens(&[1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6, 2, 3]);
        assert_eq!(draft(&history, 3), tokens(&[7, 8, 6]));
        // The longest match first: `9 2 3` never occurred, so `2 3` does, latest first.
        let history = tokens(&[2, 3, 5, 1, 2, 3, 6, 9, 2, 3]);
        assert_eq!(draft(&history, 2), tokens(&[6, 9]));
        // Drafts stop at the end of the history and at `max`.
        assert_eq!(draft(&tokens(&[4, 5, 6, 4, 5]), 8), tokens(&[6, 4, 5]));
        assert_eq!(draft(&tokens(&[4, 5, 6, 4, 5]), 0), Vec::new());
        // One token in common is not enough; nothing repeated, no draft.
        assert_eq!(draft(&tokens(&[1, 2, 3, 4, 9, 4]), 4), Vec::new());
        assert_eq!(draft(&tokens(&[1]), 4), Vec::new());
    }
}
