//! The `backend` setting: the embedded model, or a server and how to talk to it.

use super::*;

/// Default time a remote server may take to connect, or between two streamed pieces.
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 5000;
/// Default recent time to the first piece beyond which a fallback answers instead.
pub const DEFAULT_BACKEND_SLOW_MS: u64 = 1500;

/// The `backend` setting: `"local"` (or null) for the embedded model, or an object naming a
/// server: `{"kind": "llama-server" | "openai" | "ollama", "url", "model", "template" (a name
/// or `{"prefix", "suffix", "middle", "fileSeparator"?, "repoName"?}`), "apiKeyEnv",
/// "timeoutMs", "fallback": "local" | "none", "slowMs", "maxInFlight"}`.
pub fn parse_backend(value: &serde_json::Value) -> Result<Option<RemoteConfig>, String> {
    use serde_json::Value;
    if value.is_null() || value.as_str() == Some("local") {
        return Ok(None);
    }
    let Some(object) = value.as_object() else {
        return Err(format!("must be \"local\" or an object with kind and url, got {value}"));
    };
    let known = ["kind", "url", "model", "template", "infill", "apiKeyEnv", "timeoutMs", "fallback", "slowMs", "maxInFlight"];
    if let Some(unknown) = object.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!("unknown field `{unknown}` (fields: {})", known.join(", ")));
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
            Some(other) => Err(format!("{key} must be a non-empty string, got {other}")),
        }
    };
    let kind = text("kind")?.ok_or("kind is required (\"llama-server\", \"openai\" or \"ollama\")")?;
    if kind == "local" {
        return Ok(None);
    }
    let api = RemoteApi::parse(&kind).ok_or_else(|| format!("kind must be \"local\", \"llama-server\", \"openai\" or \"ollama\", got \"{kind}\""))?;
    let url = text("url")?.ok_or("url is required (for example \"http://127.0.0.1:8080\")")?;
    let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
        return Err(format!("url must start with http:// or https://, got \"{url}\""));
    }
    let model = text("model")?;
    if model.is_none() && api == RemoteApi::Ollama {
        return Err("model is required for Ollama (the name `ollama list` shows)".to_string());
    }
    let template = match object.get("template") {
        None | Some(Value::Null) => FimTemplate::named("qwen").expect("a known template"),
        Some(Value::String(name)) => FimTemplate::named(name).ok_or_else(|| format!("template must be one of {} or an object of strings, got \"{name}\"", FimTemplate::NAMES))?,
        Some(Value::Object(strings)) => {
            let string = |key: &str| strings.get(key).and_then(Value::as_str).map(str::to_string);
            let required = |key: &str| string(key).filter(|text| !text.is_empty()).ok_or_else(|| format!("template needs a non-empty string `{key}`"));
            FimTemplate {
                name: "custom".to_string(),
                prefix: required("prefix")?,
                suffix: required("suffix")?,
                middle: required("middle")?,
                file_separator: string("fileSeparator"),
                repo_name: string("repoName"),
            }
        }
        Some(other) => return Err(format!("template must be a name or an object, got {other}")),
    };
    let infill = match object.get("infill") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(infill)) => *infill,
        Some(other) => return Err(format!("infill must be true or false, got {other}")),
    };
    if infill && api != RemoteApi::LlamaServer {
        return Err(format!("infill (the server's own fill-in-the-middle, /infill) is llama-server's; kind is \"{kind}\""));
    }
    let api_key_env = text("apiKeyEnv")?;
    let milliseconds = |key: &str, default: u64| -> Result<u64, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value.as_u64().filter(|ms| (1..=600_000).contains(ms)).ok_or_else(|| format!("{key} must be a whole number of milliseconds from 1 to 600000, got {value}")),
        }
    };
    let fallback_local = match text("fallback")?.as_deref() {
        None | Some("none") => false,
        Some("local") => true,
        Some(other) => return Err(format!("fallback must be \"local\" or \"none\", got \"{other}\"")),
    };
    Ok(Some(RemoteConfig {
        api,
        url,
        model,
        template,
        infill,
        api_key_env,
        timeout_ms: milliseconds("timeoutMs", DEFAULT_BACKEND_TIMEOUT_MS)?,
        fallback_local,
        slow_ms: milliseconds("slowMs", DEFAULT_BACKEND_SLOW_MS)?,
        max_in_flight: match object.get("maxInFlight") {
            None | Some(Value::Null) => DEFAULT_MAX_IN_FLIGHT,
            Some(value) => value.as_u64().filter(|count| (1..=8).contains(count)).ok_or_else(|| format!("maxInFlight must be a whole number from 1 to 8, got {value}"))? as usize,
        },
        context_tokens: 0,
    }))
}
