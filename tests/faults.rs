//! Faults inside the server, provoked for real: the binary over stdio with a real model, and
//! `GHOSTLINE_TEST_FAULTS=1`, under which a prompt containing a fault's marker makes the code
//! that runs it panic (the engine thread, a remote request, idle work). Each test fails on a
//! server that lets the panic pass unnoticed.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::lsp::LspClient;
use common::model_path;

const MODEL: &str = "smollm2-135m";
const FAULTS: &[(&str, &str)] = &[("GHOSTLINE_TEST_FAULTS", "1")];

fn start(extra: Value) -> LspClient {
    let mut options = json!({"model": model_path(MODEL).to_str().unwrap(), "maxWaitMs": 30000});
    options.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (mut client, _) = LspClient::start_with_env("info", FAULTS, options, json!({}));
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "ready", "{stats}");
    client
}

fn source(marker: &str) -> String {
    format!("# {marker}\ndef add(left, right):\n    return ")
}

fn error_message(client: &mut LspClient, containing: &str) -> String {
    let message = client
        .wait_notification("window/showMessage", Duration::from_secs(60), |params| params["type"] == 1 && params["message"].as_str().unwrap_or_default().contains(containing))
        .unwrap_or_else(|| panic!("no error message containing {containing:?}"));
    message["params"]["message"].as_str().unwrap().to_string()
}

const MARKER: &str = "ghostline-test-fault: panic in the engine";

/// A panic in the engine thread: the job fails, the editor is told the engine crashed (with the
/// panic's message) and a new engine starts, which answers; a second crash is told too and
/// leaves the engine `failed` rather than restarting for ever.
#[test]
fn an_engine_thread_that_panics_is_reported_and_restarted_once() {
    let mut client = start(json!({}));
    let crashing = "file:///project/crash.py";
    client.open(crashing, "python", &source(MARKER));
    assert_eq!(client.inline_text_invoked(crashing, 2, 11), None, "a crashed job has nothing to show");
    let message = error_message(&mut client, "crashed");
    assert!(message.contains("test fault") && message.contains("starting it again"), "{message}");
    let stats = client.wait_stats("the restarted engine", Duration::from_secs(120), |stats| stats["engine"]["state"] == "ready" && stats["engineLoads"] == 2);
    assert_eq!(stats["engineLoads"], 2, "{stats}");

    // The same document without the marker (another document's prompt could quote this one).
    let marker_line = (0, 0);
    client.replace(crashing, marker_line, (0, 2 + MARKER.len() as u32), "# adds two numbers");
    let text = client.inline_text_invoked(crashing, 2, 11).expect("the restarted engine answers");
    assert!(!text.trim().is_empty(), "{text:?}");

    client.replace(crashing, marker_line, (0, 18), &format!("# {MARKER}"));
    assert_eq!(client.inline_text_invoked(crashing, 2, 11), None);
    let message = error_message(&mut client, "crashed again");
    assert!(message.contains("test fault"), "{message}");
    let stats = client.wait_stats("the engine failed", Duration::from_secs(30), |stats| stats["engine"]["state"] == "failed");
    assert!(stats["engine"]["error"].as_str().unwrap().contains("the engine crashed"), "{stats}");
    assert_eq!(stats["engineLoads"], 2, "no third load: {stats}");
    client.shutdown();
}

/// A panic in idle-time work (after an asked job ends) still counts that work as done: the
/// server becomes idle, where the count stayed up and waiting for idle hung.
#[test]
fn idle_work_that_panics_still_lets_the_server_become_idle() {
    let mut client = start(json!({}));
    let uri = "file:///project/idle.py";
    client.open(uri, "python", &source("ghostline-test-fault: panic in idle work"));
    client.inline_text_invoked(uri, 2, 11);
    let stats = client.wait_idle();
    assert_eq!(stats["idleWork"], 0, "{stats}");
    assert_eq!(stats["engine"]["state"], "ready", "{stats}");
    // The server goes on answering.
    client.insert(uri, 2, 11, "left");
    let response = client.inline_completion(uri, 2, 15);
    assert!(response.get("error").is_none(), "{response}");
    client.shutdown();
}
