//! Text expansions: triggers the user defines in the configuration, offered as completion items
//! the moment the word being typed is a prefix of a trigger, without the model.
//!
//! A body is LSP snippet text (`$1`, `${1:name}`, `$0` are left to the editor's snippet engine).
//! Ghostline fills its own variables first, escaped for snippet syntax, so every editor gets the
//! same text: `${date}` (YYYY-MM-DD), `${time}` (HH:MM), `${year}`, `${file}` (the file name),
//! `${fileBase}` (without its extension), `${language}` (the language id). Dates and times are
//! local.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub trigger: String,
    pub body: String,
    pub description: Option<String>,
}

/// Reads the `expansions` setting: an object of `trigger: body` or `trigger: {body, description}`,
/// or a list of `{trigger, body, description}`. Any malformed entry rejects the whole setting,
/// so a typo never silently drops a trigger.
pub fn parse(value: &Value) -> Result<Vec<Expansion>, String> {
    let entry = |trigger: &str, value: &Value| -> Result<Expansion, String> {
        if trigger.is_empty() || trigger.chars().any(char::is_whitespace) {
            return Err(format!("an expansion trigger must be one word, got {trigger:?}"));
        }
        let (body, description) = match value {
            Value::String(body) => (body.clone(), None),
            Value::Object(fields) => (
                fields.get("body").and_then(Value::as_str).ok_or_else(|| format!("expansion {trigger:?} needs a string `body`"))?.to_string(),
                fields.get("description").and_then(Value::as_str).map(str::to_string),
            ),
            other => return Err(format!("expansion {trigger:?} must be a string or an object with `body`, got {other}")),
        };
        Ok(Expansion { trigger: trigger.to_string(), body, description })
    };
    match value {
        Value::Object(map) => map.iter().map(|(trigger, value)| entry(trigger, value)).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let trigger = item.get("trigger").and_then(Value::as_str).ok_or_else(|| format!("each expansion in the list needs a string `trigger`, got {item}"))?;
                entry(trigger, item)
            })
            .collect(),
        other => Err(format!("setting expansions must be an object of trigger: body, or a list, got {other}")),
    }
}

/// What the variables of a body are filled from.
#[derive(Debug, Clone)]
pub struct Context {
    pub file_name: String,
    pub language_id: String,
    pub now: chrono::DateTime<chrono::Local>,
}

/// The expansions whose trigger starts with the word before the cursor (case-sensitive; an empty
/// word matches none).
pub fn matching<'a>(expansions: &'a [Expansion], word: &'a str) -> impl Iterator<Item = &'a Expansion> + 'a {
    expansions.iter().filter(move |expansion| !word.is_empty() && expansion.trigger.starts_with(word))
}

fn escape_snippet(text: &str) -> String {
    text.replace('\\', "\\\\").replace('$', "\\$").replace('}', "\\}")
}

/// The body with Ghostline's variables filled in; other snippet syntax is left as it is.
pub fn render(body: &str, context: &Context) -> String {
    let file_base = match context.file_name.rsplit_once('.') {
        Some((base, _)) if !base.is_empty() => base,
        _ => context.file_name.as_str(),
    };
    let values = [
        ("date", context.now.format("%Y-%m-%d").to_string()),
        ("time", context.now.format("%H:%M").to_string()),
        ("year", context.now.format("%Y").to_string()),
        ("fileBase", file_base.to_string()),
        ("file", context.file_name.clone()),
        ("language", context.language_id.clone()),
    ];
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let known = values.iter().find(|(name, _)| after.strip_prefix(name).is_some_and(|tail| tail.starts_with('}')));
        match known {
            Some((name, value)) => {
                out.push_str(&escape_snippet(value));
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn context() -> Context {
        Context {
            file_name: "notes.py".to_string(),
            language_id: "python".to_string(),
            now: chrono::Local.with_ymd_and_hms(2026, 3, 7, 9, 5, 0).unwrap(),
        }
    }

    #[test]
    fn both_forms_parse_and_bad_entries_are_rejected() {
        let from_object = parse(&json!({"todo": "# TODO: $0", "hdr": {"body": "# ${file}", "description": "file header"}})).unwrap();
        assert_eq!(from_object.len(), 2);
        assert!(from_object.iter().any(|expansion| expansion.trigger == "hdr" && expansion.description.as_deref() == Some("file header")));
        let from_list = parse(&json!([{"trigger": "todo", "body": "# TODO: $0"}])).unwrap();
        assert_eq!(from_list[0].body, "# TODO: $0");
        assert!(parse(&json!({"two words": "x"})).unwrap_err().contains("one word"));
        assert!(parse(&json!({"todo": 5})).unwrap_err().contains("todo"));
        assert!(parse(&json!([{"body": "x"}])).unwrap_err().contains("trigger"));
        assert!(parse(&json!("todo")).is_err());
    }

    #[test]
    fn variables_are_filled_and_snippet_syntax_is_kept() {
        let body = "# ${fileBase} (${file}, ${language}) ${date} ${time} ${year} ${1:name} $0 ${unknown}";
        assert_eq!(render(body, &context()), "# notes (notes.py, python) 2026-03-07 09:05 2026 ${1:name} $0 ${unknown}");
    }

    #[test]
    fn filled_values_are_escaped_for_snippets() {
        let context = Context { file_name: "a$b}.py".to_string(), ..context() };
        assert_eq!(render("${file}", &context), "a\\$b\\}.py");
        assert_eq!(render("${fileBase}", &Context { file_name: ".env".to_string(), ..context.clone() }), ".env");
    }

    #[test]
    fn triggers_match_by_prefix_of_the_typed_word() {
        let expansions = parse(&json!({"todo": "a", "today": "b", "fixme": "c"})).unwrap();
        let names = |word| matching(&expansions, word).map(|expansion| expansion.trigger.clone()).collect::<Vec<_>>();
        assert_eq!(names("to").len(), 2);
        assert_eq!(names("fixme"), ["fixme"]);
        assert!(names("").is_empty());
        assert!(names("Todo").is_empty());
    }
}
