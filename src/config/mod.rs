//! Settings: the raw form clients send (serde, every field optional, camelCase) and the
//! validated `Config` that is passed explicitly to the parts that need it.
//!
//! Applying raw settings never leaves a half-valid config: each invalid value is reported with
//! a message and the previous value is kept.

use serde::Deserialize;

use crate::context::WindowConfig;
use crate::engine::remote::{FimTemplate, RemoteApi, RemoteConfig, DEFAULT_MAX_IN_FLIGHT};
use crate::expansions::Expansion;
use crate::models::DEFAULT_MODEL;

mod backend;
pub use backend::{parse_backend, DEFAULT_BACKEND_SLOW_MS, DEFAULT_BACKEND_TIMEOUT_MS};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Registry name, path to a .gguf, or hf:OWNER/REPO/FILE.
    pub model: String,
    /// Decode threads; `None` means the number of physical cores.
    pub threads: Option<usize>,
    pub context_tokens: u32,
    /// Model layers offloaded to a GPU; `None` means all when llama.cpp sees a GPU, else 0.
    pub gpu_layers: Option<u32>,
    /// How long a completion request waits for a suggestion, for clients that take the
    /// `ghostline/suggestionReady` notification.
    pub budget_ms: u64,
    /// How long a completion request waits for a suggestion, for other clients.
    pub max_wait_ms: u64,
    /// Pause after a change before the engine starts; adapted to the typing speed up to this.
    pub debounce_ms: u64,
    pub max_tokens: usize,
    pub multi_line: bool,
    pub max_lines: usize,
    /// Language ids that get completions; empty means all.
    pub languages: Vec<String>,
    pub windows: WindowConfig,
    /// Serve typed-ahead characters from the current suggestion (switch off only to measure).
    pub typed_ahead: bool,
    /// A suggestion still being generated is shown up to its last generated character (true)
    /// or its last word boundary (false): `experimental.partialTokens`. Measured on unseen code
    /// at 120 ms a key on a slow 2-core machine (77 ms a token): keys with a suggestion 47% ->
    /// 55%, correct characters per keystroke 1.1 -> 1.3 (a word's first token shows one token
    /// sooner; the word may still grow).
    pub partial_tokens: bool,
    /// User-defined text expansions, offered as completion items without the model.
    pub expansions: Vec<Expansion>,
    /// Shape suggestions and stop them by the syntax tree (switch off only to measure).
    pub syntax: bool,
    /// In idle time, compute the suggestion's other likely starts and the state after
    /// accepting it (off by default: on two cores it cost more than it served, see README).
    pub prefetch: bool,
    /// Chunks of other files in front of the prompt (0: none), and lines per chunk.
    pub cross_file_chunks: usize,
    pub cross_file_lines: usize,
    /// An arrival's first prompt (a place whose prompt is not in the KV cache) is cut to the
    /// lines that decode within this many milliseconds at the measured prompt speed; the full
    /// window follows in a pause. 0: always the full window.
    pub cold_prompt_ms: u64,
    /// Lines below the cursor in the suffix at a line of only whitespace (0: `suffixLines`).
    pub blank_line_suffix_lines: usize,
    /// Tokens drafted per generation step from the context and checked in one batch (0: plain
    /// decoding); the suggestion is the same either way.
    pub draft_tokens: usize,
    /// Memory (MiB) for the KV cache of places the user left, so a switch back does not decode
    /// its prompt again (0: only the current place is kept).
    pub saved_kv_mib: usize,
    /// Runs of at least this many cached tokens that moved in the prompt are shifted instead of
    /// decoded again (0: never).
    pub reuse_min_tokens: usize,
    /// Where jobs go: `None` for the embedded model, else a server (see `engine/remote/`).
    pub backend: Option<RemoteConfig>,
    /// Whether the model's suggestion is an item of the completion list too.
    pub completion_item: CompletionItemMode,
}

/// `completionItem`: where the model's suggestion appears besides inline completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionItemMode {
    /// In the completion list only for clients without inline completion (Helix, Emacs): a
    /// client with ghost text shows the suggestion once, and its completion menu does not wait
    /// for the model.
    Auto,
    Always,
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: DEFAULT_MODEL.to_string(),
            threads: None,
            context_tokens: 4096,
            gpu_layers: None,
            budget_ms: 8,
            max_wait_ms: 2000,
            debounce_ms: 0,
            max_tokens: 48,
            multi_line: true,
            max_lines: 8,
            languages: Vec::new(),
            windows: WindowConfig::default(),
            typed_ahead: true,
            partial_tokens: true,
            expansions: Vec::new(),
            syntax: true,
            prefetch: false,
            cross_file_chunks: 0,
            cross_file_lines: 24,
            cold_prompt_ms: 1000,
            blank_line_suffix_lines: 16,
            draft_tokens: 0,
            saved_kv_mib: crate::engine::DEFAULT_SAVED_KV_MIB,
            reuse_min_tokens: crate::engine::DEFAULT_REUSE_MIN_TOKENS,
            backend: None,
            completion_item: CompletionItemMode::Auto,
        }
    }
}

/// Settings as a client sends them, in `initializationOptions` or
/// `workspace/didChangeConfiguration` (either at the top level or under a `ghostline` key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RawSettings {
    pub model: Option<String>,
    pub threads: Option<serde_json::Value>,
    pub context_tokens: Option<serde_json::Value>,
    pub gpu_layers: Option<serde_json::Value>,
    pub budget_ms: Option<serde_json::Value>,
    pub max_wait_ms: Option<serde_json::Value>,
    pub debounce_ms: Option<serde_json::Value>,
    pub max_tokens: Option<serde_json::Value>,
    pub syntax: Option<serde_json::Value>,
    pub prefetch: Option<serde_json::Value>,
    pub cross_file_chunks: Option<serde_json::Value>,
    pub cross_file_lines: Option<serde_json::Value>,
    pub cold_prompt_ms: Option<serde_json::Value>,
    pub draft_tokens: Option<serde_json::Value>,
    #[serde(rename = "savedKvMiB")]
    pub saved_kv_mib: Option<serde_json::Value>,
    pub reuse_min_tokens: Option<serde_json::Value>,
    pub backend: Option<serde_json::Value>,
    pub completion_item: Option<serde_json::Value>,
    pub multi_line: Option<serde_json::Value>,
    pub max_lines: Option<serde_json::Value>,
    pub languages: Option<serde_json::Value>,
    pub prefix_lines: Option<serde_json::Value>,
    pub suffix_lines: Option<serde_json::Value>,
    pub blank_line_suffix_lines: Option<serde_json::Value>,
    pub anchor_lines: Option<serde_json::Value>,
    pub suffix_in_front: Option<serde_json::Value>,
    pub typed_ahead: Option<serde_json::Value>,
    /// Switches that exist to measure Ghostline against itself (`suffixInFront`, `typedAhead`,
    /// `syntax`); also accepted at the top level, as they were first.
    pub experimental: Option<RawExperimental>,
    pub expansions: Option<serde_json::Value>,
    /// Whether the client handles `ghostline/suggestionReady` (also a client capability).
    pub suggestion_ready_notification: Option<bool>,
}

/// The `experimental` settings: for measuring, not for everyday use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RawExperimental {
    pub suffix_in_front: Option<serde_json::Value>,
    pub typed_ahead: Option<serde_json::Value>,
    pub syntax: Option<serde_json::Value>,
    pub partial_tokens: Option<serde_json::Value>,
}

impl RawSettings {
    /// Reads settings from a JSON value, accepting `{ "ghostline": {...} }` or the bare object.
    pub fn from_json(value: &serde_json::Value) -> Result<RawSettings, String> {
        let object = value.get("ghostline").unwrap_or(value);
        if object.is_null() {
            return Ok(RawSettings::default());
        }
        serde_json::from_value(object.clone()).map_err(|err| format!("invalid settings: {err}"))
    }
}

/// What changed when raw settings were applied.
#[derive(Debug, Default)]
pub struct Applied {
    /// One message per invalid value (the previous value was kept).
    pub errors: Vec<String>,
    /// The engine must be restarted (model, threads or context size changed).
    pub engine_changed: bool,
}

fn integer(name: &str, value: &serde_json::Value, min: u64, max: u64, errors: &mut Vec<String>) -> Option<u64> {
    match value.as_u64() {
        Some(number) if (min..=max).contains(&number) => Some(number),
        _ => {
            errors.push(format!("setting {name} must be a whole number from {min} to {max}, got {value}; keeping the previous value"));
            None
        }
    }
}

fn boolean(name: &str, value: &serde_json::Value, errors: &mut Vec<String>) -> Option<bool> {
    let res = value.as_bool();
    if res.is_none() {
        errors.push(format!("setting {name} must be true or false, got {value}; keeping the previous value"));
    }
    res
}

impl Config {
    /// The engine these settings describe, for the model at `model_path` (resolved by the
    /// caller): the one way the server, the CLI and the benches size an engine from settings.
    pub fn engine_config(&self, model_path: std::path::PathBuf) -> crate::engine::EngineConfig {
        let mut engine = crate::engine::EngineConfig::new(model_path);
        engine.context_tokens = self.context_tokens;
        engine.gpu_layers = self.gpu_layers;
        engine.saved_kv_bytes = self.saved_kv_mib << 20;
        engine.reuse_min_tokens = self.reuse_min_tokens;
        if let Some(threads) = self.threads {
            engine.threads = threads.max(1);
        }
        engine
    }

    pub fn apply(&mut self, raw: &RawSettings) -> Applied {
        let mut applied = Applied::default();
        let errors = &mut applied.errors;
        let before_engine = self.engine_settings();
        if let Some(model) = &raw.model {
            if model.trim().is_empty() {
                errors.push("setting model must not be empty; keeping the previous value".to_string());
            } else {
                self.model = model.trim().to_string();
            }
        }
        if let Some(value) = &raw.threads {
            if value.is_null() {
                self.threads = None;
            } else if let Some(threads) = integer("threads", value, 1, 256, errors) {
                self.threads = Some(threads as usize);
            }
        }
        if let Some(value) = &raw.context_tokens {
            if let Some(tokens) = integer("contextTokens", value, 512, 131_072, errors) {
                self.context_tokens = tokens as u32;
            }
        }
        if let Some(value) = &raw.gpu_layers {
            if value.is_null() || value.as_str() == Some("auto") {
                self.gpu_layers = None;
            } else if let Some(layers) = integer("gpuLayers", value, 0, 10_000, errors) {
                self.gpu_layers = Some(layers as u32);
            }
        }
        if let Some(value) = &raw.budget_ms {
            if let Some(ms) = integer("budgetMs", value, 0, 10_000, errors) {
                self.budget_ms = ms;
            }
        }
        if let Some(value) = &raw.max_wait_ms {
            if let Some(ms) = integer("maxWaitMs", value, 0, 60_000, errors) {
                self.max_wait_ms = ms;
            }
        }
        if let Some(value) = &raw.completion_item {
            match value.as_str() {
                Some("auto") => self.completion_item = CompletionItemMode::Auto,
                Some("always") => self.completion_item = CompletionItemMode::Always,
                Some("never") => self.completion_item = CompletionItemMode::Never,
                _ => errors.push(format!("setting completionItem must be \"auto\", \"always\" or \"never\", got {value}; keeping the previous value")),
            }
        }
        if let Some(value) = &raw.debounce_ms {
            if let Some(ms) = integer("debounceMs", value, 0, 5_000, errors) {
                self.debounce_ms = ms;
            }
        }
        if let Some(value) = &raw.max_tokens {
            if let Some(tokens) = integer("maxTokens", value, 1, 1024, errors) {
                self.max_tokens = tokens as usize;
            }
        }
        if let Some(value) = &raw.multi_line {
            if let Some(multi_line) = boolean("multiLine", value, errors) {
                self.multi_line = multi_line;
            }
        }
        if let Some(value) = &raw.max_lines {
            if let Some(lines) = integer("maxLines", value, 1, 200, errors) {
                self.max_lines = lines as usize;
            }
        }
        if let Some(value) = &raw.prefix_lines {
            if let Some(lines) = integer("prefixLines", value, 0, 2000, errors) {
                self.windows.prefix_lines = lines as usize;
            }
        }
        if let Some(value) = &raw.anchor_lines {
            if let Some(lines) = integer("anchorLines", value, 1, 256, errors) {
                self.windows.anchor_lines = lines as usize;
            }
        }
        let experimental = raw.experimental.clone().unwrap_or_default();
        if let Some(value) = experimental.suffix_in_front.as_ref().or(raw.suffix_in_front.as_ref()) {
            if let Some(in_front) = boolean("suffixInFront", value, errors) {
                self.windows.suffix_in_front = in_front;
            }
        }
        if let Some(value) = &raw.suffix_lines {
            if let Some(lines) = integer("suffixLines", value, 0, 500, errors) {
                self.windows.suffix_lines = lines as usize;
            }
        }
        if let Some(value) = &raw.blank_line_suffix_lines {
            if let Some(lines) = integer("blankLineSuffixLines", value, 0, 500, errors) {
                self.blank_line_suffix_lines = lines as usize;
            }
        }
        if let Some(value) = experimental.typed_ahead.as_ref().or(raw.typed_ahead.as_ref()) {
            if let Some(typed_ahead) = boolean("typedAhead", value, errors) {
                self.typed_ahead = typed_ahead;
            }
        }
        if let Some(value) = &experimental.partial_tokens {
            if let Some(partial_tokens) = boolean("partialTokens", value, errors) {
                self.partial_tokens = partial_tokens;
            }
        }
        if let Some(value) = experimental.syntax.as_ref().or(raw.syntax.as_ref()) {
            if let Some(syntax) = boolean("syntax", value, errors) {
                self.syntax = syntax;
            }
        }
        if let Some(value) = &raw.prefetch {
            if let Some(prefetch) = boolean("prefetch", value, errors) {
                self.prefetch = prefetch;
            }
        }
        if let Some(value) = &raw.cross_file_chunks {
            if let Some(chunks) = integer("crossFileChunks", value, 0, 16, errors) {
                self.cross_file_chunks = chunks as usize;
            }
        }
        if let Some(value) = &raw.cold_prompt_ms {
            if let Some(ms) = integer("coldPromptMs", value, 0, 60_000, errors) {
                self.cold_prompt_ms = ms;
            }
        }
        if let Some(value) = &raw.draft_tokens {
            if let Some(tokens) = integer("draftTokens", value, 0, 32, errors) {
                self.draft_tokens = tokens as usize;
            }
        }
        if let Some(value) = &raw.saved_kv_mib {
            if let Some(mib) = integer("savedKvMiB", value, 0, 65_536, errors) {
                self.saved_kv_mib = mib as usize;
            }
        }
        if let Some(value) = &raw.reuse_min_tokens {
            if let Some(tokens) = integer("reuseMinTokens", value, 0, 4096, errors) {
                self.reuse_min_tokens = tokens as usize;
            }
        }
        if let Some(value) = &raw.cross_file_lines {
            if let Some(lines) = integer("crossFileLines", value, 4, 256, errors) {
                self.cross_file_lines = lines as usize;
            }
        }
        if let Some(value) = &raw.expansions {
            match crate::expansions::parse(value) {
                Ok(expansions) => self.expansions = expansions,
                Err(err) => errors.push(format!("setting expansions: {err}; keeping the previous value")),
            }
        }
        if let Some(value) = &raw.languages {
            match value.as_array().map(|items| items.iter().map(|item| item.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()) {
                Some(Some(languages)) => self.languages = languages,
                _ => errors.push(format!("setting languages must be a list of language ids, got {value}; keeping the previous value")),
            }
        }
        if let Some(value) = &raw.backend {
            match parse_backend(value) {
                Ok(backend) => self.backend = backend,
                Err(err) => errors.push(format!("setting backend: {err}; keeping the previous value")),
            }
        }
        applied.engine_changed = before_engine != self.engine_settings();
        applied
    }

    /// The settings the engine is loaded with: a change of any of them reloads it.
    fn engine_settings(&self) -> (String, Option<usize>, u32, Option<u32>, (usize, usize), Option<RemoteConfig>) {
        (self.model.clone(), self.threads, self.context_tokens, self.gpu_layers, (self.saved_kv_mib, self.reuse_min_tokens), self.backend.clone())
    }

    /// Takes the engine settings (see `engine_settings`) of `other`, keeping the rest.
    pub fn set_engine_settings(&mut self, other: &Config) {
        (self.model, self.threads, self.context_tokens, self.gpu_layers, (self.saved_kv_mib, self.reuse_min_tokens), self.backend) = other.engine_settings();
    }

    pub fn language_enabled(&self, language_id: &str) -> bool {
        self.languages.is_empty() || self.languages.iter().any(|language| language == language_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_settings_apply_and_invalid_keep_previous() {
        let mut config = Config::default();
        let raw = RawSettings::from_json(&json!({"ghostline": {"budgetMs": 20, "maxTokens": -3, "multiLine": "yes", "languages": ["rust", "python"]}})).unwrap();
        let applied = config.apply(&raw);
        assert_eq!(config.budget_ms, 20);
        assert_eq!(config.max_tokens, Config::default().max_tokens);
        assert!(config.multi_line);
        assert_eq!(applied.errors.len(), 2, "{:?}", applied.errors);
        assert!(applied.errors[0].contains("maxTokens"));
        assert!(!applied.engine_changed);
        assert!(config.language_enabled("rust"));
        assert!(!config.language_enabled("go"));
    }

    #[test]
    fn measurement_switches_live_under_experimental_and_are_still_read_at_the_top() {
        let mut config = Config::default();
        config.apply(&RawSettings::from_json(&json!({"experimental": {"typedAhead": false, "syntax": false, "suffixInFront": true}})).unwrap());
        assert!(!config.typed_ahead && !config.syntax && config.windows.suffix_in_front);
        let mut config = Config::default();
        config.apply(&RawSettings::from_json(&json!({"typedAhead": false, "experimental": {"syntax": false}})).unwrap());
        assert!(!config.typed_ahead && !config.syntax);
        // The experimental key wins over the old place.
        config.apply(&RawSettings::from_json(&json!({"typedAhead": false, "experimental": {"typedAhead": true}})).unwrap());
        assert!(config.typed_ahead);
    }

    #[test]
    fn model_change_requires_engine_restart() {
        let mut config = Config::default();
        let applied = config.apply(&RawSettings::from_json(&json!({"model": "smollm2-135m"})).unwrap());
        assert!(applied.engine_changed);
        assert_eq!(config.model, "smollm2-135m");
    }

    #[test]
    fn gpu_layers_take_a_count_or_auto_and_restart_the_engine() {
        let mut config = Config::default();
        assert_eq!(config.gpu_layers, None);
        let applied = config.apply(&RawSettings::from_json(&json!({"gpuLayers": 0})).unwrap());
        assert!(applied.engine_changed && applied.errors.is_empty());
        assert_eq!(config.gpu_layers, Some(0));
        let applied = config.apply(&RawSettings::from_json(&json!({"gpuLayers": "all"})).unwrap());
        assert_eq!(config.gpu_layers, Some(0));
        assert!(applied.errors[0].contains("gpuLayers"), "{:?}", applied.errors);
        assert!(!applied.engine_changed);
        config.apply(&RawSettings::from_json(&json!({"gpuLayers": "auto"})).unwrap());
        assert_eq!(config.gpu_layers, None);
    }

    #[test]
    fn malformed_settings_object_is_an_error() {
        assert!(RawSettings::from_json(&json!({"model": 5})).is_err());
        assert!(RawSettings::from_json(&json!(null)).is_ok());
    }

    #[test]
    fn the_backend_setting_names_a_server_or_the_embedded_model() {
        let mut config = Config::default();
        let applied = config.apply(&RawSettings::from_json(&json!({"backend": {"kind": "openai", "url": "http://127.0.0.1:8000", "model": "qwen-7b", "fallback": "local"}})).unwrap());
        assert!(applied.errors.is_empty() && applied.engine_changed, "{:?}", applied.errors);
        let backend = config.backend.clone().unwrap();
        assert_eq!((backend.api, backend.template.name.as_str(), backend.fallback_local, backend.timeout_ms), (RemoteApi::OpenAi, "qwen", true, DEFAULT_BACKEND_TIMEOUT_MS));
        for (bad, says) in [
            (json!({"kind": "vllm", "url": "http://x"}), "kind must be"),
            (json!({"kind": "openai"}), "url is required"),
            (json!({"kind": "openai", "url": "ftp://x"}), "http://"),
            (json!({"kind": "ollama", "url": "http://127.0.0.1:11434"}), "model is required"),
            (json!({"kind": "openai", "url": "http://x", "template": "gpt"}), "template must be one of"),
            (json!({"kind": "openai", "url": "http://x", "timeoutMs": 0}), "timeoutMs"),
            (json!({"kind": "openai", "url": "http://x", "fallback": "cloud"}), "fallback must be"),
            (json!({"kind": "openai", "url": "http://x", "apiKey": "secret"}), "unknown field `apiKey`"),
            (json!(42), "must be \"local\""),
        ] {
            let applied = config.apply(&RawSettings::from_json(&json!({"backend": bad})).unwrap());
            assert!(applied.errors.len() == 1 && applied.errors[0].contains(says), "{bad}: {:?}", applied.errors);
            assert!(!applied.engine_changed);
            assert_eq!(config.backend.as_ref(), Some(&backend), "an invalid value keeps the previous one");
        }
        let applied = config.apply(&RawSettings::from_json(&json!({"backend": "local"})).unwrap());
        assert!(applied.engine_changed && config.backend.is_none());
        let custom = parse_backend(&json!({"kind": "llama-server", "url": "http://127.0.0.1:8080", "template": {"prefix": "<P>", "suffix": "<S>", "middle": "<M>"}})).unwrap().unwrap();
        assert_eq!((custom.template.prefix.as_str(), custom.template.file_separator.as_ref()), ("<P>", None));
    }
}
