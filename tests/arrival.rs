//! Arriving at a place and typing at a person's pace, end to end: the real binary over stdio
//! with the default model, a client that takes `ghostline/suggestionReady` (as VS Code's and
//! Neovim's do), the editor asking once on arriving at an empty indented line in the middle of
//! a long file, the person reading for two seconds, then typing the line at a key every 120 ms.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::lsp::LspClient;
use common::{model_path, DEFAULT_MODEL};

/// A module of ~900 lines: many small functions of one shape, so the model can tell what the
/// line at the cursor holds.
fn long_module() -> String {
    let mut text = String::from("import math\n\n\n");
    for idx in 0..60 {
        text.push_str(&format!(
            "def weighted_sum_{idx}(values, weights):\n    \"\"\"Return the sum of values times weights, scaled by {idx}.\"\"\"\n    total = 0.0\n    for value, weight in zip(values, weights):\n        total += value * weight * {idx}\n    if total < 0:\n        total = -total\n    result = math.sqrt(total) + {idx}\n    return result\n\n\n\n\n\n"
        ));
    }
    text
}

fn items(response: &Value) -> Option<String> {
    let text = response["result"]["items"].get(0)?["insertText"].as_str()?;
    (!text.trim().is_empty()).then(|| text.to_string())
}

/// Arrival at an empty line inside a function 500 lines down, 2 s of reading, then the line
/// typed at 120 ms a key: at least one key of the line gets a suggestion for its own state
/// before the next key comes. Before the engine measured its prompt speed at load (an arrival
/// then got the full window, seconds of prompt on 2 cores) and kept a job without text covering
/// the keys typed after it, no key of the line got one on 2 cores.
#[test]
fn an_arrival_then_keys_at_a_human_pace_get_a_suggestion_before_the_next_key() {
    let options = json!({"model": model_path(DEFAULT_MODEL).to_str().unwrap(), "suggestionReadyNotification": true, "maxWaitMs": 30000});
    let (mut client, _) = LspClient::start(options, json!({"general": {"positionEncodings": ["utf-16"]}}));
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "ready", "{stats}");
    let mut text = long_module();
    // Function 36 starts at line 3 + 36 * 14 = 507; its `for` body line is 511. Blank it.
    let line = 3 + 36 * 14 + 4;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines[line].trim(), "total += value * weight * 36");
    let typed_line = lines[line].trim().to_string();
    lines[line] = "        ".to_string();
    text = lines.join("\n") + "\n";
    let uri = "file:///project/weights.py";
    client.open(uri, "python", &text);
    let mut column = 8u32;

    let arrival = Instant::now();
    let first = client.inline_completion(uri, line as u32, column);
    assert!(first.get("error").is_none(), "{first}");
    // The work in progress shows in the stats while the arrival's prompt decodes.
    let in_progress = client.wait_stats("the arrival's job in the stats", Duration::from_secs(10), |stats| stats["currentJob"]["promptTokens"].as_u64().unwrap_or(0) > 0);
    assert_eq!(in_progress["currentJob"]["line"], line, "{in_progress}");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(arrival.elapsed()));

    let interval = Duration::from_millis(120);
    let mut shown_keys = Vec::new();
    for (key_idx, ch) in typed_line.chars().enumerate() {
        let keystroke = Instant::now();
        client.notifications.retain(|message| message["method"] != "ghostline/suggestionReady");
        client.insert(uri, line as u32, column, &ch.to_string());
        column += 1;
        let mut shown = items(&client.inline_completion(uri, line as u32, column));
        if shown.is_none() {
            let version = client.version(uri);
            let left = interval.saturating_sub(keystroke.elapsed());
            let ready = client.wait_notification("ghostline/suggestionReady", left, |params| params["uri"] == uri && params["version"] == version && params["position"]["character"] == column);
            if ready.is_some() {
                shown = items(&client.inline_completion(uri, line as u32, column));
            }
        }
        if shown.is_some() {
            shown_keys.push((key_idx, shown));
        }
        std::thread::sleep(interval.saturating_sub(keystroke.elapsed()));
    }
    let stats = client.request_ok("ghostline/stats", json!(null));
    eprintln!("keys shown before the next key: {} of {}: {shown_keys:?}", shown_keys.len(), typed_line.chars().count());
    assert!(!shown_keys.is_empty(), "no key of `{typed_line}` got a suggestion before the next key: {stats}");
    client.shutdown();
}
