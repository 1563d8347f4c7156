//! The APIs on the wire: a prompt's parts for `/infill`, the token healing's length, and one
//! streamed line of each API parsed into a piece of text and, at the end, the server's counts.

use super::*;

/// A fill-in-the-middle prompt in the parts llama-server's `/infill` takes: other files' chunks
/// (file name, text), the text before the cursor, the text after it, and the start of the middle
/// (the cursor's line up to the cursor).
#[derive(Debug, Default, PartialEq)]
pub(super) struct InfillParts {
    pub(super) extra: Vec<(String, String)>,
    pub(super) prefix: String,
    pub(super) suffix: String,
    pub(super) middle: String,
}

impl InfillParts {
    /// None for a prompt without the fill-in-the-middle markers.
    pub(super) fn of(prompt: &Prompt) -> Option<InfillParts> {
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
pub(super) fn healed_len(prompt: &str) -> usize {
    match prompt.chars().next_back() {
        Some(last @ (' ' | '\t')) => last.len_utf8(),
        _ => 0,
    }
}

pub(super) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Token counts a server reports with its last piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) prompt_tokens: usize,
    pub(super) reused_tokens: usize,
    pub(super) generated_tokens: usize,
}

/// One streamed piece of text, and whether the server says it is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StreamPiece {
    pub(super) text: String,
    pub(super) done: Option<StopReason>,
    pub(super) counts: Option<Counts>,
}

/// Reads one line of a stream: server-sent events (`data: {...}`) for llama-server and OpenAI,
/// one JSON object a line for Ollama. `None` for lines that carry nothing (blank lines, SSE
/// comments and other fields).
pub(super) fn parse_line(api: RemoteApi, line: &str) -> Result<Option<StreamPiece>, String> {
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
