//! The soak's short version in the test command: `benches/soak.py` types 3,000 keystrokes at
//! full speed into the real binary (the tiny model), each a change and a budgeted request; it
//! fails when a request is answered twice, a change is rejected, the server's copy of the
//! document differs from the script's or the server's threads pass their bound. The 100,000-key run, with the RSS check, is a benchmark (README).

mod common;

use std::process::Command;

use common::{model_path, TINY_MODEL};

#[test]
fn three_thousand_keys_at_full_speed_keep_every_answer_and_the_thread_count() {
    let output = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soak.py"))
        .args(["3000", env!("CARGO_BIN_EXE_ghostline"), model_path(TINY_MODEL).to_str().unwrap()])
        .output()
        .expect("python3 runs the soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("JSON");
    assert_eq!(last["keys"], 3000, "{last}");
    assert_eq!(last["answered_twice"], 0, "{last}");
    assert_eq!(last["document_identical"], true, "{last}");
    assert!(last["max_threads"].as_u64().is_some_and(|threads| threads > 0 && threads <= 32), "{last}");
}
