//! A remote backend behind the same engine handle: jobs go to an HTTP server (llama.cpp's
//! `llama-server`, any OpenAI-compatible `/v1/completions`, or Ollama's `/api/generate`) instead
//! of the embedded model, with the same prompt, stop rules and supersession, and, when the
//! settings ask for it, the embedded model answers while the server is down or slow.
//!
//! Invariants:
//! - The dispatcher thread never waits on the network: each job streams on a thread of its own,
//!   which checks the job's cancel flag, the latest job id and the deadline between every two
//!   streamed pieces and closes the stream (dropping the connection) when the job is over.
//! - At most `maxInFlight` requests stream at once; a newer job waits for a slot (a request it
//!   superseded gives its slot back with the next piece it reads).
//! - The prompt is the same `Prompt` the embedded engine gets, its special tokens written as the
//!   named template's strings (a remote vocabulary cannot be read).
//! - An API key is read from the environment variable the settings name and is never logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::worker::{superseded_before_start_with as ended_early, Command, JobRequest};
use super::{Completion, Engine, EngineError, ModelInfo, Piece, Prompt, Special, SpecialSupport, StopReason};

/// Which HTTP interface the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteApi {
    /// llama.cpp's `llama-server`: `/completion`, streamed, with `cache_prompt`.
    LlamaServer,
    /// An OpenAI-compatible `/v1/completions` (vLLM, TGI, LM Studio, Ollama's `/v1`, llama-server's `/v1`).
    OpenAi,
    /// Ollama's native `/api/generate` with `raw` prompts.
    Ollama,
}

impl RemoteApi {
    pub fn parse(name: &str) -> Option<RemoteApi> {
        match name {
            "llama-server" => Some(RemoteApi::LlamaServer),
            "openai" => Some(RemoteApi::OpenAi),
            "ollama" => Some(RemoteApi::Ollama),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RemoteApi::LlamaServer => "llama-server",
            RemoteApi::OpenAi => "openai",
            RemoteApi::Ollama => "ollama",
        }
    }

    fn path(self) -> &'static str {
        match self {
            RemoteApi::LlamaServer => "/completion",
            RemoteApi::OpenAi => "/v1/completions",
            RemoteApi::Ollama => "/api/generate",
        }
    }

    /// A cheap request that answers 200 when the server is up (llama-server: and its model
    /// loaded).
    fn health_path(self) -> &'static str {
        match self {
            RemoteApi::LlamaServer => "/health",
            RemoteApi::OpenAi => "/v1/models",
            RemoteApi::Ollama => "/api/tags",
        }
    }
}

/// A model family's fill-in-the-middle strings, for a server whose vocabulary cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FimTemplate {
    pub name: String,
    pub prefix: String,
    pub suffix: String,
    pub middle: String,
    pub file_separator: Option<String>,
    pub repo_name: Option<String>,
}

impl FimTemplate {
    pub const NAMES: &'static str = "qwen, starcoder, codellama, deepseek";

    pub fn named(name: &str) -> Option<FimTemplate> {
        let template = |prefix: &str, suffix: &str, middle: &str, file_separator: Option<&str>, repo_name: Option<&str>| FimTemplate {
            name: name.to_string(),
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            middle: middle.to_string(),
            file_separator: file_separator.map(str::to_string),
            repo_name: repo_name.map(str::to_string),
        };
        match name {
            "qwen" => Some(template("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", Some("<|file_sep|>"), Some("<|repo_name|>"))),
            "starcoder" => Some(template("<fim_prefix>", "<fim_suffix>", "<fim_middle>", Some("<file_sep>"), Some("<repo_name>"))),
            "codellama" => Some(template("<PRE> ", " <SUF>", " <MID>", None, None)),
            "deepseek" => Some(template("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None, None)),
            _ => None,
        }
    }

    fn special_support(&self) -> SpecialSupport {
        SpecialSupport { fim: true, file_separator: self.file_separator.is_some(), repo_name: self.repo_name.is_some(), bos: false }
    }

    /// The prompt as the server's text: special tokens as this template's strings (the server
    /// adds a beginning-of-sequence token itself where its model wants one).
    pub fn render(&self, prompt: &Prompt) -> String {
        let mut text = String::new();
        for piece in &prompt.pieces {
            match piece {
                Piece::Text(piece) => text.push_str(piece),
                Piece::Special(Special::Bos) => {}
                Piece::Special(Special::FimPrefix) => text.push_str(&self.prefix),
                Piece::Special(Special::FimSuffix) => text.push_str(&self.suffix),
                Piece::Special(Special::FimMiddle) => text.push_str(&self.middle),
                Piece::Special(Special::FileSeparator) => text.push_str(self.file_separator.as_deref().unwrap_or("\n")),
                Piece::Special(Special::RepoName) => text.push_str(self.repo_name.as_deref().unwrap_or("")),
            }
        }
        text
    }
}

/// Where the jobs go and what happens when the server fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub api: RemoteApi,
    /// The server's base URL (`http://127.0.0.1:8080`); the API's path is appended.
    pub url: String,
    /// The model name sent to the server (required by OpenAI-compatible servers and Ollama).
    pub model: Option<String>,
    pub template: FimTemplate,
    /// llama-server only: send the prompt's parts to `/infill` and let the server build the
    /// fill-in-the-middle prompt with its model's own tokens (`template` is then unused).
    pub infill: bool,
    /// The environment variable holding the API key (sent as a bearer token).
    pub api_key_env: Option<String>,
    /// Connecting, and each wait for the next streamed piece (the first one included), may take
    /// this long before the request fails.
    pub timeout_ms: u64,
    /// Answer from the embedded model while the server fails or is slow.
    pub fallback_local: bool,
    /// With a fallback: a server whose recent time to the first piece exceeds this is treated
    /// as down until a health check passes.
    pub slow_ms: u64,
    /// At most this many requests stream at once.
    pub max_in_flight: usize,
    /// The context size the prompts are planned for.
    pub context_tokens: u32,
}

impl RemoteConfig {
    /// Whether the URL sends code over the network in the clear (not loopback, not TLS).
    pub fn is_unencrypted_remote(&self) -> bool {
        let Some(rest) = self.url.strip_prefix("http://") else { return false };
        let host_port = rest.split('/').next().unwrap_or_default();
        let host = match host_port.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => host_port.rsplit_once(':').map_or(host_port, |(host, _)| host),
        };
        !(host == "localhost" || host == "::1" || host.starts_with("127."))
    }

    fn endpoint(&self) -> String {
        let path = if self.infill { "/infill" } else { self.api.path() };
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// At most this many requests stream at once, unless `maxInFlight` says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
/// After a failure, the server is left alone this long (unless a health check finds it back
/// sooner); the next job then tries it again.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// While the server is down and a fallback answers, its health is checked this often.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// What the remote backend has done, for `ghostline/stats`.
#[derive(Default)]
pub struct Status {
    pub remote_jobs: AtomicU64,
    pub fallback_jobs: AtomicU64,
    pub remote_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Moving average of the time to the first streamed piece, in microseconds (0: none yet).
    first_piece_us: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    /// A health-check thread runs.
    probing: AtomicBool,
    /// Outages a health check ended.
    pub recoveries: AtomicU64,
}

impl Status {
    /// Counts a failure and leaves the server alone for a while; logged once per outage.
    fn failed(&self, err: &RemoteError) {
        self.remote_failures.fetch_add(1, Ordering::Relaxed);
        let message = err.to_string();
        let repeated = self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).replace(message.clone()) == Some(message);
        let mut down_until = self.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if repeated && down_until.is_some() {
            tracing::debug!(%err, "the remote backend failed again");
        } else {
            tracing::warn!(%err, "the remote backend failed");
        }
        *down_until = Some(Instant::now() + DOWN_FOR);
    }

    /// A request streamed to its end: the outage, if any, is over.
    fn succeeded(&self) {
        self.remote_jobs.fetch_add(1, Ordering::Relaxed);
        *self.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// While the server is down after a failure, checks its health every `HEALTH_EVERY` on a
    /// thread of its own (one at a time), and ends the outage as soon as it answers, so jobs go
    /// back to it without one of them trying a dead server first.
    fn watch_health(status: &Arc<Status>, config: &Arc<RemoteConfig>, agent: &ureq::Agent) {
        if status.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (watched, config, agent) = (Arc::downgrade(status), config.clone(), agent.clone());
        let url = format!("{}{}", config.url.trim_end_matches('/'), config.api.health_path());
        let spawned = std::thread::Builder::new().name("ghostline-health".to_string()).spawn(move || loop {
            std::thread::sleep(HEALTH_EVERY);
            // The engine is gone, or a job found the server back: nothing to watch.
            let Some(status) = watched.upgrade() else { return };
            if status.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none() {
                status.probing.store(false, Ordering::SeqCst);
                return;
            }
            let mut request = agent.get(&url).timeout(Duration::from_millis(config.timeout_ms.min(2000)));
            if let Some(key) = config.api_key_env.as_ref().and_then(|variable| std::env::var(variable).ok()) {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            if request.call().is_ok_and(|response| response.status() == 200) {
                *status.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                status.recoveries.fetch_add(1, Ordering::Relaxed);
                status.probing.store(false, Ordering::SeqCst);
                tracing::info!(url = %config.url, "the remote backend answers its health check again");
                return;
            }
        });
        if let Err(err) = spawned {
            tracing::warn!(%err, "cannot start the health check thread");
            status.probing.store(false, Ordering::SeqCst);
        }
    }

    fn first_piece(&self, elapsed: Duration) {
        let measured = elapsed.as_micros() as u64;
        let previous = self.first_piece_us.load(Ordering::Relaxed);
        let average = if previous == 0 { measured } else { (previous * 7 + measured * 3) / 10 };
        self.first_piece_us.store(average.max(1), Ordering::Relaxed);
    }

    /// Whether a job should go to the server now: it has not failed recently, and (when a
    /// fallback can answer) it has not been slower than `slow_ms` of late.
    fn remote_usable(&self, config: &RemoteConfig) -> bool {
        let mut down_until = self.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(until) = *down_until {
            if Instant::now() < until {
                return false;
            }
            // Time for a health check: this job tries the server again.
            *down_until = None;
            if config.fallback_local && self.first_piece_us.load(Ordering::Relaxed) > config.slow_ms * 1000 {
                // A fresh chance for a server that was only slow.
                self.first_piece_us.store(0, Ordering::Relaxed);
            }
            return true;
        }
        if config.fallback_local && self.first_piece_us.load(Ordering::Relaxed) > config.slow_ms * 1000 {
            *down_until = Some(Instant::now() + DOWN_FOR);
            return false;
        }
        true
    }

    pub fn to_json(&self, config: &RemoteConfig) -> Value {
        let first_piece_us = self.first_piece_us.load(Ordering::Relaxed);
        json!({
            "kind": config.api.name(),
            "url": config.url,
            "model": config.model,
            "template": if config.infill { "server (/infill)" } else { config.template.name.as_str() },
            "fallback": if config.fallback_local { "local" } else { "none" },
            "remoteJobs": self.remote_jobs.load(Ordering::Relaxed),
            "fallbackJobs": self.fallback_jobs.load(Ordering::Relaxed),
            "remoteFailures": self.remote_failures.load(Ordering::Relaxed),
            "lastError": *self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            "firstPieceMs": (first_piece_us > 0).then(|| first_piece_us as f64 / 1000.0),
            "healthRecoveries": self.recoveries.load(Ordering::Relaxed),
            "usingFallback": config.fallback_local && self.down_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some_and(|until| Instant::now() < until),
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} sent something that is not a completion stream: {reason}")]
    Protocol { url: String, reason: String },
    /// The stream stopped without its last piece: the server died, or a proxy dropped it.
    #[error("{url} broke off: {reason}")]
    Cut { url: String, reason: String },
    #[error("{url} stopped sending for more than {timeout_ms} ms")]
    TimedOut { url: String, timeout_ms: u64 },
    #[error("the environment variable {0} (the API key) is not set")]
    MissingKey(String),
    #[error("the request's thread panicked: {0}")]
    Panicked(String),
}

impl RemoteError {
    /// A stream that stopped after `generated_tokens` pieces of text without its last piece;
    /// `detail` follows the reason.
    fn cut(url: &str, generated_tokens: usize, detail: &str) -> RemoteError {
        let before = if generated_tokens == 0 { "any text" } else { "the server said it was done" };
        RemoteError::Cut { url: url.to_string(), reason: format!("the stream ended before {before}{detail}") }
    }
}

/// The handle of a remote backend; `fallback` is the embedded engine when the settings ask for one.
pub(super) fn start(config: RemoteConfig, fallback: Option<Engine>) -> Engine {
    let (sender, receiver) = mpsc::channel();
    let latest_job_id = Arc::new(AtomicU64::new(0));
    let status = Arc::new(Status::default());
    if config.is_unencrypted_remote() {
        tracing::warn!(url = %config.url, "the backend URL is neither local nor TLS: code is sent over the network unencrypted");
    }
    let info = ModelInfo {
        path: config.url.clone().into(),
        name: config.model.clone().unwrap_or_else(|| format!("{} at {}", config.api.name(), config.url)),
        size_bytes: 0,
        n_params: 0,
        context_tokens: config.context_tokens,
        threads: 0,
        gpu_layers: 0,
        special: config.template.special_support(),
        load_ms: 0.0,
        kv_places: 1,
        prompt_speed: None,
    };
    let fallback = fallback.map(|local| Fallback { local, running: Arc::new(Mutex::new(None)) });
    let dispatcher = Dispatcher {
        config: Arc::new(config.clone()),
        agent: ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(config.timeout_ms))
            .timeout_read(Duration::from_millis(config.timeout_ms))
            .build(),
        fallback,
        latest_job_id: latest_job_id.clone(),
        status: status.clone(),
        in_flight: Arc::new((Mutex::new(0), Condvar::new())),
    };
    let spawned = std::thread::Builder::new().name("ghostline-remote".to_string()).spawn(move || dispatcher.run(receiver));
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot start the remote backend's thread");
    }
    Engine { sender, latest_job_id, info: Arc::new(info), remote: Some((Arc::new(config), status)), crash: Default::default() }
}

struct Dispatcher {
    config: Arc<RemoteConfig>,
    agent: ureq::Agent,
    fallback: Option<Fallback>,
    latest_job_id: Arc<AtomicU64>,
    status: Arc<Status>,
    in_flight: Arc<(Mutex<usize>, Condvar)>,
}

impl Dispatcher {
    fn run(self, commands: mpsc::Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::Tokenize(text, reply) => match &self.fallback {
                    Some(fallback) => {
                        if let Ok(tokens) = fallback.local.tokenize_timed(&text) {
                            let _ = reply.send(tokens);
                        }
                    }
                    // No vocabulary here: the caller hears that the engine cannot tokenize.
                    None => drop(reply),
                },
                Command::Run(job) => self.dispatch(job),
            }
        }
    }

    fn dispatch(&self, job: JobRequest) {
        let interrupted = |job: &JobRequest| job.interruption(&self.latest_job_id);
        if let Some(fallback) = &self.fallback {
            fallback.cancel_running();
        }
        if self.status.remote_usable(&self.config) || self.fallback.is_none() {
            // Wait for a streaming slot; a superseded job gives up its place at once.
            let (count, freed) = &*self.in_flight;
            let mut in_flight = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while *in_flight >= self.config.max_in_flight {
                if let Some(reason) = interrupted(&job) {
                    job.progress.send_modify(|progress| progress.done = Some(Ok(ended_early(reason))));
                    return;
                }
                in_flight = freed.wait_timeout(in_flight, Duration::from_millis(5)).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
            }
            *in_flight += 1;
            drop(in_flight);
            let request = Request {
                config: self.config.clone(),
                agent: self.agent.clone(),
                latest_job_id: self.latest_job_id.clone(),
                status: self.status.clone(),
                slot: Some(InFlightSlot(self.in_flight.clone())),
                fallback: self.fallback.clone(),
            };
            // A thread that cannot start drops its request, and the slot with it.
            let spawned = std::thread::Builder::new().name("ghostline-request".to_string()).spawn(move || request.run(job));
            if let Err(err) = spawned {
                tracing::error!(%err, "cannot start a request thread");
            }
        } else if let Some(fallback) = &self.fallback {
            self.status.fallback_jobs.fetch_add(1, Ordering::Relaxed);
            fallback.run(job, self.latest_job_id.clone());
        }
    }
}

/// One request's place among the `maxInFlight` that may stream at once: given back when the
/// request ends, however it ends (a panic included).
struct InFlightSlot(Arc<(Mutex<usize>, Condvar)>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let (count, freed) = &*self.0;
        let mut count = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *count = count.saturating_sub(1);
        freed.notify_all();
    }
}

/// The test fault (`super::test_fault`) that makes a remote request's thread panic.
pub const PANIC_MARKER: &str = "ghostline-test-fault: panic in a request";

/// One request's thread: streams the answer into the job's progress.
struct Request {
    config: Arc<RemoteConfig>,
    agent: ureq::Agent,
    latest_job_id: Arc<AtomicU64>,
    status: Arc<Status>,
    slot: Option<InFlightSlot>,
    fallback: Option<Fallback>,
}

impl Request {
    fn run(mut self, job: JobRequest) {
        // A panic while streaming fails this job with its message; the slot is given back below.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::test_fault(PANIC_MARKER, &job.prompt);
            self.stream(&job)
        }))
        .unwrap_or_else(|payload| {
            let why = super::panic_message(payload.as_ref());
            tracing::error!(%why, "a remote request panicked");
            Err(RemoteError::Panicked(why))
        });
        // The next request may stream while this one's fallback runs.
        drop(self.slot.take());
        match result {
            Ok(completion) => {
                self.status.succeeded();
                job.progress.send_modify(|progress| progress.done = Some(Ok(completion)));
            }
            Err(err) => {
                self.status.failed(&err);
                if self.fallback.is_some() {
                    Status::watch_health(&self.status, &self.config, &self.agent);
                }
                if let Some(reason) = job.interruption(&self.latest_job_id) {
                    // Nobody waits for this job any more.
                    job.progress.send_modify(|progress| progress.done = Some(Ok(ended_early(reason))));
                    return;
                }
                match &self.fallback {
                    Some(fallback) => {
                        self.status.fallback_jobs.fetch_add(1, Ordering::Relaxed);
                        // Whatever the server sent before it failed is dropped: the embedded
                        // model answers the whole job.
                        job.progress.send_modify(|progress| {
                            progress.text.clear();
                            progress.generated_tokens = 0;
                        });
                        fallback.run(job, self.latest_job_id.clone());
                    }
                    None => job.progress.send_modify(|progress| progress.done = Some(Err(EngineError::Remote(err.to_string())))),
                }
            }
        }
    }

    fn body(&self, job: &JobRequest, prompt: &str) -> Value {
        let max_tokens = job.params.max_tokens;
        match self.config.api {
            // `timings_per_token`: every piece carries the prompt's counts, so a stream closed
            // early (a stop rule, a newer key) still tells how many prompt tokens the server
            // decoded and how fast: the arrival's first window is sized by that speed.
            RemoteApi::LlamaServer => json!({
                "prompt": prompt, "n_predict": max_tokens, "stream": true, "cache_prompt": true,
                "temperature": 0.0, "top_k": 1, "samplers": ["top_k"], "timings_per_token": true,
            }),
            RemoteApi::OpenAi => {
                let mut body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": true});
                if let Some(model) = &self.config.model {
                    body["model"] = json!(model);
                }
                body
            }
            RemoteApi::Ollama => json!({
                "model": self.config.model, "prompt": prompt, "raw": true, "stream": true,
                "options": {"temperature": 0.0, "top_k": 1, "num_predict": max_tokens},
            }),
        }
    }

    /// The body of an `/infill` request: the prompt's parts, and the text before the cursor on
    /// its line (with the forced prefix) as `prompt`, which llama-server puts at the end of the
    /// prefix.
    fn infill_body(&self, job: &JobRequest, parts: &InfillParts, middle: &str) -> Value {
        let extra: Vec<Value> = parts.extra.iter().map(|(filename, text)| json!({"filename": filename, "text": text})).collect();
        json!({
            "input_prefix": parts.prefix, "input_suffix": parts.suffix, "input_extra": extra, "prompt": middle,
            "n_predict": job.params.max_tokens, "stream": true, "cache_prompt": true,
            "temperature": 0.0, "top_k": 1, "samplers": ["top_k"], "timings_per_token": true,
        })
    }

    fn stream(&self, job: &JobRequest) -> Result<Completion, RemoteError> {
        let start = Instant::now();
        let url = self.config.endpoint();
        // The forced prefix is part of the suggestion: the server continues after it.
        let forced = &job.params.forced_prefix;
        let ends_in_text = matches!(job.prompt.pieces.last(), Some(Piece::Text(_)));
        let heal = job.params.token_healing && forced.is_empty() && ends_in_text;
        // Token healing in text: the prompt's partial last token is left for the model to write
        // (the suggestion must start with it; it is not shown).
        let (body, healed) = if self.config.infill {
            let parts = InfillParts::of(&job.prompt).ok_or_else(|| RemoteError::Protocol { url: url.clone(), reason: "a prompt without fill-in-the-middle parts cannot go to /infill".into() })?;
            // No healing here: the server puts the line's start at the end of the prefix and
            // tokenizes it itself (a partial token left out made the model write another one:
            // `3.14159 *` then `*` instead of ` radius`).
            let middle = format!("{}{forced}", parts.middle);
            (self.infill_body(job, &parts, &middle), String::new())
        } else {
            let mut prompt = format!("{}{forced}", self.config.template.render(&job.prompt));
            let healed = if heal { prompt.split_off(prompt.len() - healed_len(&prompt)) } else { String::new() };
            (self.body(job, &prompt), healed)
        };
        let mut request = self.agent.post(&url).set("Content-Type", "application/json");
        if let Some(variable) = &self.config.api_key_env {
            let key = std::env::var(variable).map_err(|_| RemoteError::MissingKey(variable.clone()))?;
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let mut completion = ended_early(StopReason::MaxTokens);
        let response = match request.send_string(&body.to_string()) {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let body: String = response.into_string().unwrap_or_default().chars().take(300).collect();
                return Err(RemoteError::Status { url, status, body });
            }
            Err(ureq::Error::Transport(transport)) => {
                let reason = transport.to_string();
                if reason.contains("timed out") {
                    return Err(RemoteError::TimedOut { url, timeout_ms: self.config.timeout_ms });
                }
                return Err(RemoteError::Unreachable { url, reason });
            }
        };
        let mut reader = std::io::BufReader::new(response.into_reader());
        let mut text = forced.clone();
        // What the server wrote, until it has written the healed text.
        let mut unhealed = String::new();
        let mut line = String::new();
        let mut first_piece = true;
        let stop_rules = || job.params.late_stop.as_ref().and_then(|late| late.get()).unwrap_or_else(|| job.params.stop.clone());
        loop {
            if let Some(reason) = job.interruption(&self.latest_job_id) {
                completion.stop_reason = reason;
                break;
            }
            line.clear();
            let read = std::io::BufRead::read_line(&mut reader, &mut line).map_err(|err| {
                if matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                    RemoteError::TimedOut { url: url.clone(), timeout_ms: self.config.timeout_ms }
                } else {
                    RemoteError::cut(&url, completion.generated_tokens, &format!(" ({err})"))
                }
            })?;
            if read == 0 {
                // Every flavour ends its stream with a last piece that says so (llama-server's
                // `stop`, OpenAI's `finish_reason` or `[DONE]`, Ollama's `done`): a stream that
                // ends without one was cut (the server died or a proxy dropped it), and its text
                // may stop anywhere.
                return Err(RemoteError::cut(&url, completion.generated_tokens, ""));
            }
            let Some(piece) = parse_line(self.config.api, &line).map_err(|reason| RemoteError::Protocol { url: url.clone(), reason })? else { continue };
            if first_piece {
                first_piece = false;
                self.status.first_piece(start.elapsed());
                completion.prompt_ms = ms(start.elapsed());
            }
            if !piece.text.is_empty() {
                completion.generated_tokens += 1;
                if unhealed.len() < healed.len() {
                    unhealed.push_str(&piece.text);
                    if unhealed.len() >= healed.len() || piece.done.is_some() {
                        match unhealed.strip_prefix(healed.as_str()) {
                            Some(rest) => text.push_str(rest),
                            // The model went another way than the text the user typed.
                            None => {
                                completion.stop_reason = StopReason::StopRule;
                                break;
                            }
                        }
                    }
                } else {
                    text.push_str(&piece.text);
                }
            }
            if let Some(counts) = piece.counts {
                completion.prompt_tokens = counts.prompt_tokens;
                completion.reused_tokens = counts.reused_tokens;
                completion.decoded_tokens = counts.prompt_tokens.saturating_sub(counts.reused_tokens);
                if counts.generated_tokens > 0 {
                    completion.generated_tokens = counts.generated_tokens;
                }
            }
            if let Some(cut) = stop_rules().check(&text) {
                text.truncate(cut);
                completion.stop_reason = StopReason::StopRule;
                job.publish(&text, completion.generated_tokens);
                break;
            }
            job.publish(&text, completion.generated_tokens);
            if let Some(reason) = piece.done {
                completion.stop_reason = reason;
                break;
            }
            // A server that does not keep to the token limit is held to it here.
            if completion.generated_tokens >= job.params.max_tokens {
                completion.stop_reason = StopReason::MaxTokens;
                break;
            }
        }
        // Dropping the reader closes a stream that is still running: the server stops there.
        completion.text = text;
        completion.generation_ms = ms(start.elapsed()) - completion.prompt_ms;
        Ok(completion)
    }
}

/// A fill-in-the-middle prompt in the parts llama-server's `/infill` takes: other files' chunks
/// (file name, text), the text before the cursor, the text after it, and the start of the middle
/// (the cursor's line up to the cursor).
#[derive(Debug, Default, PartialEq)]
struct InfillParts {
    extra: Vec<(String, String)>,
    prefix: String,
    suffix: String,
    middle: String,
}

impl InfillParts {
    /// None for a prompt without the fill-in-the-middle markers.
    fn of(prompt: &Prompt) -> Option<InfillParts> {
        #[derive(PartialEq)]
        enum At {
            Start,
            Repo,
            Chunk,
            Prefix,
            Suffix,
            Middle,
        }
        let mut parts = InfillParts::default();
        let mut at = At::Start;
        for piece in &prompt.pieces {
            match piece {
                Piece::Special(Special::Bos) => {}
                Piece::Special(Special::RepoName) => at = At::Repo,
                Piece::Special(Special::FileSeparator) => {
                    at = At::Chunk;
                    parts.extra.push((String::new(), String::new()));
                }
                Piece::Special(Special::FimPrefix) => at = At::Prefix,
                Piece::Special(Special::FimSuffix) => at = At::Suffix,
                Piece::Special(Special::FimMiddle) => at = At::Middle,
                Piece::Text(text) => match at {
                    At::Start | At::Repo => {}
                    At::Chunk => {
                        if let Some((filename, chunk)) = parts.extra.last_mut() {
                            chunk.push_str(text);
                            // A chunk is `PATH\nTEXT`: the path is its first line.
                            if filename.is_empty() {
                                if let Some((path, rest)) = chunk.clone().split_once('\n') {
                                    *filename = path.to_string();
                                    *chunk = rest.to_string();
                                }
                            }
                        }
                    }
                    At::Prefix => parts.prefix.push_str(text),
                    At::Suffix => parts.suffix.push_str(text),
                    At::Middle => parts.middle.push_str(text),
                },
            }
        }
        // The last separator names this file, with no text of its own.
        parts.extra.retain(|(_, text)| !text.is_empty());
        (at == At::Middle).then_some(parts)
    }
}

/// How much of the prompt's end is left for the server's model to write: a trailing space or
/// tab (a prompt ending in one is a token split the model never saw: `return 3.14159 * ` got
/// `2.0 ** 2`, healed `radius`). Not a partial word: a server cannot be made to reproduce it (the
/// embedded engine constrains its first tokens), and a model that starts another word gives an
/// empty answer (measured: 46% of keystrokes without a suggestion when the word was left out).
fn healed_len(prompt: &str) -> usize {
    match prompt.chars().next_back() {
        Some(last @ (' ' | '\t')) => last.len_utf8(),
        _ => 0,
    }
}

/// The embedded engine that answers for the server, and the cancel flag of the job it runs for it.
#[derive(Clone)]
struct Fallback {
    local: Engine,
    running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

impl Fallback {
    /// A newer job arrived: the job the embedded engine runs for an older one is over.
    fn cancel_running(&self) {
        if let Some(cancel) = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Runs a job on the embedded engine and copies its progress into the job's, cancelling it
    /// when the job is cancelled or superseded.
    fn run(&self, job: JobRequest, latest_job_id: Arc<AtomicU64>) {
        let inner = self.local.submit(job.prompt.clone(), job.params.clone());
        *self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(inner.cancel.clone());
        let spawned = std::thread::Builder::new().name("ghostline-fallback".to_string()).spawn(move || {
            let mut progress = inner.subscribe();
            loop {
                let snapshot = progress.borrow_and_update().clone();
                let done = snapshot.done.is_some();
                job.progress.send_modify(|outer| *outer = snapshot);
                if done {
                    return;
                }
                if job.interruption(&latest_job_id).is_some() {
                    inner.cancel();
                }
                // The embedded engine publishes after every token and when the job ends.
                if futures::executor::block_on(progress.changed()).is_err() {
                    job.progress.send_modify(|outer| outer.done = Some(Err(EngineError::Stopped)));
                    return;
                }
            }
        });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the fallback's thread");
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Token counts a server reports with its last piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    prompt_tokens: usize,
    reused_tokens: usize,
    generated_tokens: usize,
}

/// One streamed piece of text, and whether the server says it is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamPiece {
    text: String,
    done: Option<StopReason>,
    counts: Option<Counts>,
}

/// Reads one line of a stream: server-sent events (`data: {...}`) for llama-server and OpenAI,
/// one JSON object a line for Ollama. `None` for lines that carry nothing (blank lines, SSE
/// comments and other fields).
fn parse_line(api: RemoteApi, line: &str) -> Result<Option<StreamPiece>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let payload = match api {
        RemoteApi::Ollama => line.trim(),
        RemoteApi::LlamaServer | RemoteApi::OpenAi => match line.strip_prefix("data:") {
            Some(data) => data.trim(),
            None if line.trim().starts_with('{') => line.trim(),
            None => return Ok(None),
        },
    };
    if payload.is_empty() {
        return Ok(None);
    }
    if payload == "[DONE]" {
        return Ok(Some(StreamPiece { text: String::new(), done: Some(StopReason::EndOfGeneration), counts: None }));
    }
    let value: Value = serde_json::from_str(payload).map_err(|err| format!("{err} in {}", payload.chars().take(120).collect::<String>()))?;
    if let Some(error) = value.get("error") {
        let message = error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| error.to_string());
        return Err(format!("the server reported an error: {message}"));
    }
    let count = |value: &Value, key: &str| value.get(key).and_then(Value::as_u64).map(|count| count as usize);
    match api {
        RemoteApi::LlamaServer => {
            let text = value.get("content").and_then(Value::as_str).ok_or("a piece without `content`")?.to_string();
            let stopped = value.get("stop").and_then(Value::as_bool).unwrap_or(false);
            let done = stopped.then(|| if value.get("stop_type").and_then(Value::as_str) == Some("limit") { StopReason::MaxTokens } else { StopReason::EndOfGeneration });
            // `timings`: `prompt_n` prompt tokens decoded, `cache_n` taken from the server's cache.
            let counts = value.get("timings").map(|timings| {
                let decoded = count(timings, "prompt_n").unwrap_or_default();
                let reused = count(timings, "cache_n").unwrap_or_default();
                Counts {
                    prompt_tokens: count(&value, "tokens_evaluated").unwrap_or(decoded + reused),
                    reused_tokens: reused,
                    generated_tokens: count(timings, "predicted_n").unwrap_or_default(),
                }
            });
            Ok(Some(StreamPiece { text, done, counts }))
        }
        RemoteApi::OpenAi => {
            let choice = value.get("choices").and_then(|choices| choices.get(0));
            let text = choice.and_then(|choice| choice.get("text")).and_then(Value::as_str).unwrap_or_default().to_string();
            let done = match choice.and_then(|choice| choice.get("finish_reason")).and_then(Value::as_str) {
                Some("length") => Some(StopReason::MaxTokens),
                Some(_) => Some(StopReason::EndOfGeneration),
                None => None,
            };
            if choice.is_none() && value.get("usage").is_none() {
                return Err("a piece without `choices`".to_string());
            }
            let counts = value.get("usage").filter(|usage| !usage.is_null()).map(|usage| Counts {
                prompt_tokens: count(usage, "prompt_tokens").unwrap_or_default(),
                reused_tokens: 0,
                generated_tokens: count(usage, "completion_tokens").unwrap_or_default(),
            });
            Ok(Some(StreamPiece { text, done, counts }))
        }
        RemoteApi::Ollama => {
            let text = value.get("response").and_then(Value::as_str).ok_or("a line without `response`")?.to_string();
            let finished = value.get("done").and_then(Value::as_bool).unwrap_or(false);
            let done = finished.then(|| if value.get("done_reason").and_then(Value::as_str) == Some("length") { StopReason::MaxTokens } else { StopReason::EndOfGeneration });
            let counts = finished.then(|| Counts {
                prompt_tokens: count(&value, "prompt_eval_count").unwrap_or_default(),
                reused_tokens: 0,
                generated_tokens: count(&value, "eval_count").unwrap_or_default(),
            });
            Ok(Some(StreamPiece { text, done, counts }))
        }
    }
}

/// Checks a configured server: reachable, the model it serves, a short completion and how long
/// it took. For `ghostline doctor --backend`.
pub fn check(config: &RemoteConfig) -> Result<String, EngineError> {
    let engine = start(RemoteConfig { fallback_local: false, ..config.clone() }, None);
    let mut prompt = Prompt::default();
    prompt.push_special(Special::FimPrefix);
    prompt.push_text("def add(a, b):\n    return ");
    prompt.push_special(Special::FimSuffix);
    prompt.push_text("\n");
    prompt.push_special(Special::FimMiddle);
    let params = super::GenerateParams { max_tokens: 8, stop: super::StopRules::default(), ..super::GenerateParams::default() };
    let start = Instant::now();
    let completion = engine.complete_blocking(prompt, params)?;
    let mut report = format!(
        "{} at {} answered {:?} in {:.0} ms (first piece after {:.0} ms, {} tokens)",
        config.api.name(),
        config.url,
        completion.text,
        ms(start.elapsed()),
        completion.prompt_ms,
        completion.generated_tokens
    );
    if config.is_unencrypted_remote() {
        report.push_str("\nwarning: the URL is neither local nor TLS: code is sent over the network unencrypted");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_server_pieces_and_the_last_one_with_its_counts() {
        let piece = parse_line(RemoteApi::LlamaServer, "data: {\"content\":\"return\",\"stop\":false}\n").unwrap().unwrap();
        assert_eq!((piece.text.as_str(), piece.done), ("return", None));
        let last = parse_line(
            RemoteApi::LlamaServer,
            r#"data: {"content":"","stop":true,"stop_type":"limit","tokens_evaluated":40,"tokens_cached":52,"timings":{"cache_n":34,"prompt_n":6,"predicted_n":8}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(last.done, Some(StopReason::MaxTokens));
        assert_eq!(last.counts, Some(Counts { prompt_tokens: 40, reused_tokens: 34, generated_tokens: 8 }));
        assert_eq!(parse_line(RemoteApi::LlamaServer, "\n").unwrap(), None);
        assert_eq!(parse_line(RemoteApi::LlamaServer, ": keep-alive\n").unwrap(), None);
        assert!(parse_line(RemoteApi::LlamaServer, "data: {\"error\":{\"message\":\"slot unavailable\"}}").unwrap_err().contains("slot unavailable"));
        assert!(parse_line(RemoteApi::LlamaServer, "data: {not json").is_err());
    }

    #[test]
    fn openai_pieces_finish_reasons_and_done() {
        let piece = parse_line(RemoteApi::OpenAi, r#"data: {"choices":[{"text":"a + b","index":0,"finish_reason":null}]}"#).unwrap().unwrap();
        assert_eq!((piece.text.as_str(), piece.done), ("a + b", None));
        let last = parse_line(RemoteApi::OpenAi, r#"data: {"choices":[{"text":"","finish_reason":"length"}]}"#).unwrap().unwrap();
        assert_eq!(last.done, Some(StopReason::MaxTokens));
        assert_eq!(parse_line(RemoteApi::OpenAi, "data: [DONE]").unwrap().unwrap().done, Some(StopReason::EndOfGeneration));
        assert!(parse_line(RemoteApi::OpenAi, r#"data: {"object":"nothing"}"#).is_err());
    }

    #[test]
    fn ollama_lines() {
        let piece = parse_line(RemoteApi::Ollama, r#"{"model":"m","response":" b","done":false}"#).unwrap().unwrap();
        assert_eq!((piece.text.as_str(), piece.done), (" b", None));
        let last = parse_line(RemoteApi::Ollama, r#"{"response":"","done":true,"done_reason":"stop","prompt_eval_count":30,"eval_count":4}"#).unwrap().unwrap();
        assert_eq!(last.done, Some(StopReason::EndOfGeneration));
        assert_eq!(last.counts.unwrap().generated_tokens, 4);
    }

    #[test]
    fn a_trailing_space_is_left_to_the_model_a_partial_word_is_not() {
        assert_eq!(healed_len("return 3.14159 * "), 1);
        assert_eq!(healed_len("        "), 1);
        assert_eq!(healed_len("    return rad"), 0);
        assert_eq!(healed_len("x = f("), 0);
        assert_eq!(healed_len("naïve"), 0);
    }

    #[test]
    fn templates_render_the_prompt_with_their_strings() {
        let mut prompt = Prompt::default();
        prompt.push_special(Special::Bos);
        prompt.push_special(Special::FimPrefix);
        prompt.push_text("def f():\n    ");
        prompt.push_special(Special::FimSuffix);
        prompt.push_text("\n");
        prompt.push_special(Special::FimMiddle);
        let qwen = FimTemplate::named("qwen").unwrap();
        assert_eq!(qwen.render(&prompt), "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>");
        assert_eq!(FimTemplate::named("codellama").unwrap().render(&prompt), "<PRE> def f():\n     <SUF>\n <MID>");
        assert!(qwen.special_support().file_separator && !FimTemplate::named("deepseek").unwrap().special_support().file_separator);
        assert!(FimTemplate::named("gpt").is_none());
    }

    #[test]
    fn a_prompt_splits_into_the_parts_infill_takes() {
        let mut prompt = Prompt::default();
        prompt.push_special(Special::RepoName);
        prompt.push_text("project\n");
        prompt.push_special(Special::FileSeparator);
        prompt.push_text("util.py\ndef helper():\n    pass\n");
        prompt.push_special(Special::FileSeparator);
        prompt.push_text("main.py\n");
        prompt.push_special(Special::FimPrefix);
        prompt.push_text("x = 1\n");
        prompt.push_special(Special::FimSuffix);
        prompt.push_text("\nprint(y)\n");
        prompt.push_special(Special::FimMiddle);
        prompt.push_text("y = ");
        let parts = InfillParts::of(&prompt).expect("a fill-in-the-middle prompt");
        assert_eq!(
            parts,
            InfillParts {
                extra: vec![("util.py".to_string(), "def helper():\n    pass\n".to_string())],
                prefix: "x = 1\n".to_string(),
                suffix: "\nprint(y)\n".to_string(),
                middle: "y = ".to_string(),
            }
        );
        let mut plain = Prompt::default();
        plain.push_text("x = 1\ny = ");
        assert_eq!(InfillParts::of(&plain), None);
    }

    #[test]
    fn only_unencrypted_urls_off_this_machine_are_flagged() {
        let config = |url: &str| RemoteConfig {
            api: RemoteApi::OpenAi,
            url: url.to_string(),
            model: None,
            template: FimTemplate::named("qwen").unwrap(),
            infill: false,
            api_key_env: None,
            timeout_ms: 1000,
            fallback_local: false,
            slow_ms: 1000,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            context_tokens: 4096,
        };
        assert!(!config("http://127.0.0.1:8080").is_unencrypted_remote());
        assert!(!config("http://localhost:11434/").is_unencrypted_remote());
        assert!(!config("http://[::1]:8080").is_unencrypted_remote());
        assert!(!config("https://gpu.example.com").is_unencrypted_remote());
        assert!(config("http://gpu.example.com:8000").is_unencrypted_remote());
        assert!(config("http://10.0.0.5").is_unencrypted_remote());
    }
}
