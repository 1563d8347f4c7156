//! One plan for a job: `ghostline complete --plan` prints the plan the server makes for an
//! editor at the same place (prompt, token limit, stop rules), and a context far smaller than
//! the prompt windows still gets a whole fill-in-the-middle prompt and a sensible suggestion.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use serde_json::{json, Value};

use common::lsp::LspClient;
use common::{model_path, DEFAULT_MODEL};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ghostline-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ghostline complete --plan --json` at a 1-based line and column: its JSON lines (each plan
/// made, then the completion).
fn complete_with_plans(file: &std::path::Path, line: usize, column: usize, extra: &[&str]) -> Vec<Value> {
    let model = model_path(DEFAULT_MODEL);
    let location = format!("{}:{line}:{column}", file.display());
    let output = Command::new(env!("CARGO_BIN_EXE_ghostline"))
        .args(["complete", &location, "--plan", "--json", "--model", model.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().map(|line| serde_json::from_str(line).expect("JSON lines")).collect()
}

/// One plan and its completion.
fn complete_with_plan(file: &std::path::Path, line: usize, column: usize, extra: &[&str]) -> (Value, Value) {
    let lines = complete_with_plans(file, line, column, extra);
    assert_eq!(lines.len(), 2, "a plan and a completion: {lines:?}");
    (lines[0].clone(), lines[1].clone())
}

const RECTANGLE: &str = "class Rectangle:\n    def __init__(self, width, height):\n        self.width = width\n        self.height = height\n\n    def area(self):\n        return self.width * self.height\n\n    def perimeter(self):\n        return 2 * (self.width + \n\n\nprint(Rectangle(2, 3).area())\n";

#[test]
fn the_command_line_and_the_server_plan_the_same_job() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = scratch_dir();
    let file = dir.join("rectangle.py");
    std::fs::write(&file, RECTANGLE).unwrap();
    // The cursor at the end of `return 2 * (self.width + ` (line 10, after the space).
    let (cli_plan, completion) = complete_with_plan(&file, 10, 34, &[]);
    assert!(completion["text"].as_str().is_some_and(|text| !text.is_empty()), "{completion}");

    // The server: the file opened without that last space, which is then typed.
    let log_file = dir.join("server.log");
    let _ = std::fs::remove_file(&log_file);
    // `complete` plans the full prompt; the server's first job at a place gets an arrival's
    // smaller one (sized from the prompt speed measured at load) unless `coldPromptMs` is 0.
    let options = json!({"model": model_path(DEFAULT_MODEL).to_str().unwrap(), "maxWaitMs": 30000, "coldPromptMs": 0});
    let (mut client, _) = LspClient::start_with_log_file("ghostline=debug", &log_file, options, json!({"general": {"positionEncodings": ["utf-16"]}}));
    assert_eq!(client.wait_engine()["engine"]["state"], "ready");
    let uri = format!("file://{}", file.display());
    let without_space = RECTANGLE.replacen("(self.width + \n", "(self.width +\n", 1);
    client.open(&uri, "python", &without_space);
    client.insert(&uri, 9, 32, " ");
    let answer = client.inline_completion(&uri, 9, 33);
    assert!(answer["result"]["items"].as_array().is_some_and(|items| !items.is_empty()), "{answer}");
    client.wait_idle();
    client.shutdown();

    let log = std::fs::read_to_string(&log_file).expect("the server wrote its log");
    let plans: Vec<Value> = log
        .lines()
        .filter(|line| line.contains("job plan"))
        .map(|line| serde_json::from_str(&line[line.find("plan=").expect("a plan field") + 5..]).expect("the plan is JSON"))
        .collect();
    assert_eq!(plans.len(), 1, "one job for one keystroke: {log}");
    assert_eq!(plans[0], cli_plan, "the server's plan and `ghostline complete --plan` differ");
    // The plan holds the tree's rules (a scope), not the plain ones.
    assert!(cli_plan["stop"].as_str().is_some_and(|stop| stop.contains("scope: Some")), "{cli_plan}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_context_far_smaller_than_the_windows_gets_a_whole_fim_prompt_and_a_sensible_suggestion() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = scratch_dir();
    let file = dir.join("areas.py");
    // 120 lines above the cursor: the 64-line window is about 3,000 characters, more than a
    // context of 512 tokens leaves for the prompt.
    let mut text: String = (0..40).map(|idx| format!("def area_{idx}(radius):\n    \"\"\"The area of circle {idx}.\"\"\"\n    return 3.14159 * radius * radius\n")).collect();
    text.push_str("def area_40(radius):\n    return 3.14159 * \n");
    std::fs::write(&file, &text).unwrap();
    let (plan, completion) = complete_with_plan(&file, 122, 22, &["--context-tokens", "512", "--single-line"]);
    let prompt = plan["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("<FimPrefix>"), "{prompt}");
    let middle = prompt.find("<FimMiddle>").expect("the middle marker");
    assert!(prompt.find("<FimSuffix>").is_some_and(|suffix| suffix < middle), "{prompt}");
    assert!(prompt.ends_with("<FimMiddle>    return 3.14159 * "), "{prompt}");
    assert!(prompt.len() < text.len() / 3, "the window was shortened to fit: {} of {} characters", prompt.len(), text.len());
    assert!(completion["text"].as_str().is_some_and(|text| text.contains("radius")), "{completion}");
    assert!(completion["prompt_tokens"].as_u64().is_some_and(|tokens| tokens < 512), "{completion}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_denser_than_the_budget_assumes_is_planned_again_not_cut() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = scratch_dir();
    let file = dir.join("table.py");
    // Digits are one token each: 80 lines of numbers are about twice the tokens the budget's
    // two characters per token assume.
    let mut text: String = (0..80).map(|idx| format!("row_{idx} = [{}]\n", (0..12).map(|value| (idx * 12 + value).to_string()).collect::<Vec<_>>().join(", "))).collect();
    text.push_str("total = sum(row_79) + \n");
    std::fs::write(&file, &text).unwrap();
    let lines = complete_with_plans(&file, 81, 23, &["--context-tokens", "512"]);
    assert_eq!(lines.len(), 3, "a refused plan, the plan again, the completion: {lines:?}");
    let (first, second) = (lines[0]["prompt"].as_str().unwrap(), lines[1]["prompt"].as_str().unwrap());
    assert!(second.len() < first.len(), "the second plan is shorter");
    for prompt in [first, second] {
        assert!(prompt.starts_with("<FimPrefix>") && prompt.ends_with("<FimMiddle>total = sum(row_79) + "), "{prompt}");
    }
    assert!(lines[2]["prompt_tokens"].as_u64().is_some_and(|tokens| tokens < 512), "{}", lines[2]);
    assert!(lines[2]["text"].as_str().is_some_and(|text| !text.trim().is_empty()), "{}", lines[2]);
    let _ = std::fs::remove_dir_all(&dir);
}
