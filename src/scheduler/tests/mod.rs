//! The scheduler's decisions against a scripted engine (`Engine::scripted`): each test plays
//! the engine's part, publishing progress for the jobs it receives. The end-to-end tests with
//! real models (`tests/lsp.rs`) cover the same paths through the real engine.

use std::sync::mpsc::Receiver;
use std::sync::OnceLock;
use std::time::Duration;

use ropey::Rope;

use super::suggestion::{answer_from, partial_suggestion};
use super::idle::accepted_state;
use super::*;
use crate::engine::{Completion, EngineError, Piece, Progress, ScriptedJob, Special, SpecialSupport, StopReason};
use crate::syntax::SyntaxTree;

fn model_info(context_tokens: u32) -> crate::engine::ModelInfo {
    crate::engine::ModelInfo {
        path: "scripted.gguf".into(),
        name: "scripted".into(),
        size_bytes: 0,
        n_params: 0,
        context_tokens,
        threads: 1,
        gpu_layers: 0,
        special: SpecialSupport { fim: true, file_separator: true, repo_name: true, bos: false },
        load_ms: 0.0,
        kv_places: 1,
        prompt_speed: None,
    }
}

fn scheduler_with(config: Config, context_tokens: u32) -> (Arc<Scheduler>, Receiver<ScriptedJob>) {
    scheduler_on(Engine::scripted(model_info(context_tokens)), config)
}

/// A scheduler whose engine is ready, with the receiver of its jobs.
fn scheduler_on((engine, jobs): (Engine, Receiver<ScriptedJob>), config: Config) -> (Arc<Scheduler>, Receiver<ScriptedJob>) {
    let scheduler = Scheduler::new(config);
    scheduler.set_engine_state(EngineState::Ready(engine));
    (scheduler, jobs)
}

/// A Python document with the cursor at `|`.
fn state(text_with_cursor: &str, version: i32) -> CursorState {
    let cursor_char_idx = text_with_cursor.chars().position(|ch| ch == '|').expect("a cursor marker");
    let rope = Rope::from_str(&text_with_cursor.replacen('|', "", 1));
    CursorState { uri: "file:///w/a.py".into(), version, rope, cursor_char_idx, language_id: "python".into(), syntax: None }
}

fn next_job(jobs: &Receiver<ScriptedJob>) -> ScriptedJob {
    jobs.recv_timeout(Duration::from_secs(10)).expect("the scheduler submitted a job")
}

fn finish(job: &ScriptedJob, text: &str, alternatives: &[&str]) {
    end(job, text, alternatives, StopReason::StopRule);
}

fn end(job: &ScriptedJob, text: &str, alternatives: &[&str], stop_reason: StopReason) {
    job.progress.send_modify(|progress| {
        progress.text = text.to_string();
        progress.generated_tokens = 3;
        progress.alternatives = alternatives.iter().map(|alternative| alternative.to_string()).collect();
        progress.done = Some(Ok(Completion {
            text: text.to_string(),
            stop_reason,
            prompt_tokens: 10,
            reused_tokens: 0,
            decoded_tokens: 10,
            generated_tokens: 3,
            prompt_ms: 1.0,
            generation_ms: 3.0,
            drafted_tokens: 0,
            accepted_draft_tokens: 0,
            restored_tokens: 0,
            shifted_tokens: 0,
        }));
    });
}

/// A request waiting for the whole suggestion, answered while the test plays the engine.
fn spawn_complete(scheduler: &Arc<Scheduler>, cursor_state: CursorState) -> tokio::task::JoinHandle<Answer> {
    let scheduler = scheduler.clone();
    tokio::spawn(async move { scheduler.complete(cursor_state, Waiting::UntilReady).await.0 })
}

fn counter(scheduler: &Scheduler, name: &str) -> u64 {
    scheduler.stats_json()["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {}", scheduler.stats_json()))
}

fn suggestion(answer: &Answer) -> &str {
    match answer {
        Answer::Ready(suggestion) => &suggestion.text,
        Answer::Empty(reason) => panic!("expected a suggestion, got nothing ({reason:?})"),
    }
}

mod answers;
mod jobs;
