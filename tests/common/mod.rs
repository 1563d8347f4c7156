//! Shared helpers for the end-to-end tests: real models from the registry (fetched into the
//! cache on first use) and one warm engine per model, used by one test at a time.

#![allow(dead_code)]

#[allow(dead_code)]
pub mod lsp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ghostline::engine::{Engine, EngineConfig};

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";
pub const TINY_MODEL: &str = "smollm2-135m";

pub fn model_path(name: &str) -> PathBuf {
    ghostline::models::resolve(name).unwrap_or_else(|err| panic!("model {name} is needed by the tests: {err}"))
}

/// A warm engine for `name`, and a guard that keeps other tests from submitting jobs to it
/// (a submission supersedes the running job) while this test runs.
pub fn engine(name: &str) -> (MutexGuard<'static, ()>, Engine) {
    static ENGINES: OnceLock<Mutex<HashMap<String, Engine>>> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut engines = ENGINES.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let engine = engines
        .entry(name.to_string())
        .or_insert_with(|| Engine::start(EngineConfig::new(model_path(name))).expect("engine starts"))
        .clone();
    (guard, engine)
}

/// Splits a fixture with one `|` cursor marker into the text and the cursor (0-based line and
/// character column).
pub fn with_cursor(fixture: &str) -> (String, usize, usize) {
    let cursor_idx = fixture.find('|').expect("fixture has a | cursor marker");
    let before = &fixture[..cursor_idx];
    let line = before.matches('\n').count();
    let column = before.rsplit('\n').next().unwrap_or("").chars().count();
    (format!("{}{}", before, &fixture[cursor_idx + 1..]), line, column)
}
