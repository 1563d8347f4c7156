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

mod dispatch;
mod health;
mod wire;

use dispatch::{Dispatcher, Fallback};
pub use health::Status;
use wire::ms;

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
    use super::wire::*;
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
