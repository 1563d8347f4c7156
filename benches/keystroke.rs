//! The non-model path of a keystroke on a 10,000-line file, with criterion: applying an edit
//! (with the incremental parse of its syntax tree), reading the tree at the cursor, building the
//! prompt, the typed-ahead answer, tokenizing the changed piece. Then the whole path of one
//! keystroke timed 10,000 times for its p99, on both of its branches: a key the suggestion
//! covers (edit, scheduler change, typed-ahead answer), and a key that starts a job (edit,
//! scheduler change that plans and submits the job and queues its stop rules' parse on the
//! planning thread, the budget answer), while the engine decodes the jobs on the other threads
//! as it does for a user. Targets: each part under 100 µs median, each branch under 1 ms p99.
//!
//! `cargo bench --bench keystroke` (default model). Under `cargo test` criterion runs each benchmark once and the
//! p99 loop is short: it checks that the benchmark works, not the timings.

use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use ropey::Rope;

use ghostline::config::Config;
use ghostline::context::{build_prompt, CursorPosition, WindowConfig};
use ghostline::documents::{Change, DocumentStore, Position, PositionEncoding, Range};
use ghostline::engine::{Engine, EngineConfig};
use ghostline::scheduler::{Answer, CursorState, EngineState, Scheduler, Waiting};
use ghostline::server::keystroke::{apply_change, cursor_state, Applied};

const URI: &str = "file:///bench/big.rs";
const LINES: usize = 10_000;

/// 10,000 lines of real code (this project's own sources, repeated).
fn big_file() -> String {
    let sources = [include_str!("../src/scheduler/answer.rs"), include_str!("../src/server/mod.rs"), include_str!("../src/documents.rs"), include_str!("../src/context.rs")];
    let mut text = String::new();
    let mut lines = 0;
    'outer: loop {
        for source in sources {
            for line in source.lines() {
                text.push_str(line);
                text.push('\n');
                lines += 1;
                if lines == LINES {
                    break 'outer;
                }
            }
        }
    }
    text
}

/// Candidates for the cursor line: lines in the second half of the file that open a call, with
/// the cursor at their end. The first the model continues is used.
fn candidate_lines(rope: &Rope) -> Vec<usize> {
    (LINES / 2..LINES)
        .filter(|&line| {
            let text = rope.line(line).to_string();
            let text = text.trim();
            text.len() > 20 && text.ends_with('(')
        })
        .take(20)
        .collect()
}

fn insert(line: usize, character: usize, text: &str) -> Change {
    let at = Position { line: line as u32, character: character as u32 };
    Change { range: Some(Range { start: at, end: at }), text: text.to_string() }
}

fn delete(line: usize, character: usize) -> Change {
    let start = Position { line: line as u32, character: character as u32 };
    let end = Position { line: line as u32, character: character as u32 + 1 };
    Change { range: Some(Range { start, end }), text: String::new() }
}

fn main() {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let text = big_file();
    let rope = Rope::from_str(&text);
    let store = DocumentStore::default();
    store.open(URI, "rust", 1, &text);
    // The server's parse thread parses an opened document; here it is done in line.
    store.refresh_syntax(URI, 1);

    let model = ghostline::models::resolve(ghostline::models::DEFAULT_MODEL).expect("the default model is available");
    let engine = Engine::start(EngineConfig::new(model)).expect("the engine starts");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let scheduler = Scheduler::new(Config { max_wait_ms: 600_000, ..Config::default() });
    scheduler.set_engine_state(EngineState::Ready(engine.clone()));
    let syntax = store.get(URI).and_then(|document| document.syntax).expect("a Rust document has a syntax tree");
    assert!(syntax.is_parsed());
    let state = |rope: &Rope, cursor_char_idx: usize| CursorState {
        uri: URI.to_string(),
        version: 1,
        rope: rope.clone(),
        cursor_char_idx,
        language_id: "rust".to_string(),
        syntax: Some(syntax.clone()),
    };

    // A job at the cursor; once it has a suggestion, typing its first character is answered from
    // it (typed-ahead) without the model.
    let (line, column, suggestion) = candidate_lines(&rope)
        .into_iter()
        .find_map(|line| {
            let column = rope.line(line).to_string().trim_end().chars().count();
            let cursor = rope.line_to_char(line) + column;
            match runtime.block_on(scheduler.complete(state(&rope, cursor), Waiting::UntilReady)).0 {
                Answer::Ready(suggestion) => Some((line, column, suggestion)),
                Answer::Empty(_) => None,
            }
        })
        .expect("the model continues one of the candidate lines");
    let line_text = rope.line(line).to_string();

    let mut criterion = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let mut version = 1;

    criterion.bench_function("insert and delete a character (10k lines)", |bench| {
        bench.iter(|| {
            version += 2;
            store.apply_changes(URI, version, &[insert(line, column, "x")], PositionEncoding::Utf16).unwrap();
            black_box(store.apply_changes(URI, version + 1, &[delete(line, column)], PositionEncoding::Utf16).unwrap());
        })
    });

    // Parsing again, off the keystroke path: after one character, and after the parser's worst
    // keystroke, a quote that turns the rest of the file into a string.
    for (name, typed) in [("parse again after a character and after its deletion (10k lines)", "x"), ("parse again after a quote and after its deletion (10k lines)", "\"")] {
        criterion.bench_function(name, |bench| {
            bench.iter(|| {
                version += 2;
                store.apply_changes(URI, version, &[insert(line, column, typed)], PositionEncoding::Utf16).unwrap();
                store.refresh_syntax(URI, version);
                store.apply_changes(URI, version + 1, &[delete(line, column)], PositionEncoding::Utf16).unwrap();
                store.refresh_syntax(URI, version + 1);
            })
        });
    }

    let cursor_char_idx = rope.line_to_char(line) + column;
    criterion.bench_function("read the syntax tree at the cursor (10k lines)", |bench| bench.iter(|| black_box(syntax.at(&rope, cursor_char_idx))));

    let windows = WindowConfig::default();
    let special = engine.info().special;
    criterion.bench_function("build a prompt (10k lines)", |bench| {
        bench.iter(|| black_box(build_prompt(&rope, CursorPosition { line, column }, &windows, special).unwrap()))
    });

    let line_head: String = line_text.chars().take(column).collect();
    // Timed on the engine thread, where a job's changed prompt piece is tokenized (the trip
    // between threads that this benchmark needs to reach it is not part of a keystroke).
    criterion.bench_function("tokenize the cursor line's head", |bench| {
        bench.iter_custom(|iterations| (0..iterations).map(|_| engine.tokenize_timed(black_box(&line_head)).unwrap().1).sum())
    });

    let line_start = rope.line_to_char(line);
    let first_char = suggestion.text.chars().next().unwrap();
    let mut typed_rope = rope.clone();
    typed_rope.insert_char(line_start + column, first_char);
    let typed_state = state(&typed_rope, line_start + column + 1);
    criterion.bench_function("typed-ahead answer", |bench| {
        bench.iter(|| {
            let (answer, _) = runtime.block_on(scheduler.complete(typed_state.clone(), Waiting::Budget));
            assert!(matches!(answer, Answer::Ready(_)), "typed-ahead answer expected, got {answer:?}");
        })
    });
    criterion.final_summary();

    // The whole non-model path of one keystroke, as the server runs it: apply the edit, tell the
    // scheduler, answer within the budget. First a key the active job covers (no new job, the
    // answer from the suggestion), then keys that each start a job (a character that disagrees
    // with the suggestion, a different one each time, so no job covers the next).
    let iterations = if quick { 200 } else { 10_000 };
    let typed_ahead_durations = time_keystrokes(iterations, |_| first_char, &store, &runtime, &scheduler, line, column, &mut version);
    report("typed-ahead (the suggestion covers the key)", &typed_ahead_durations);
    let jobs_before = scheduler.stats_json()["counters"]["jobsStarted"].as_u64().unwrap();
    let others: Vec<char> = "ZQJXKV".chars().filter(|ch| *ch != first_char).collect();
    let job_start_durations = time_keystrokes(iterations, |idx| others[idx % others.len()], &store, &runtime, &scheduler, line, column, &mut version);
    let jobs_started = scheduler.stats_json()["counters"]["jobsStarted"].as_u64().unwrap() - jobs_before;
    assert_eq!(jobs_started as usize, iterations, "every key of the second branch starts a job");
    report("job start (plan, submit, stop rules queued for the planning thread)", &job_start_durations);
}

/// Times `iterations` keystrokes at the cursor: insert the character `typed(idx)` through the
/// server's own didChange path (`server::keystroke`), answer within the budget; the character is
/// deleted again untimed.
fn time_keystrokes(
    iterations: usize,
    typed: impl Fn(usize) -> char,
    store: &DocumentStore,
    runtime: &tokio::runtime::Runtime,
    scheduler: &std::sync::Arc<Scheduler>,
    line: usize,
    column: usize,
    version: &mut i32,
) -> Vec<f64> {
    let mut durations = Vec::with_capacity(iterations);
    for idx in 0..iterations {
        *version += 2;
        let start = Instant::now();
        runtime.block_on(async {
            // The server's own didChange path (divergence check included), then the request's.
            let applied = apply_change(store, scheduler, URI, *version, &[insert(line, column, &typed(idx).to_string())], PositionEncoding::Utf16).unwrap();
            assert_eq!(applied, Applied::Scheduled(*version));
            let state = cursor_state(store, URI, Position { line: line as u32, character: column as u32 + 1 }, PositionEncoding::Utf16).unwrap();
            black_box(scheduler.complete(state, Waiting::Budget).await);
        });
        durations.push(start.elapsed().as_secs_f64() * 1e6);
        store.apply_changes(URI, *version + 1, &[delete(line, column)], PositionEncoding::Utf16).unwrap();
    }
    durations.sort_by(f64::total_cmp);
    durations
}

fn report(branch: &str, sorted_us: &[f64]) {
    let at = |fraction: f64| ghostline::stats::percentile(sorted_us, fraction);
    println!(
        "whole non-model keystroke path, {branch}, {} keystrokes: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs (target p99 < 1000 µs)",
        sorted_us.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        sorted_us[sorted_us.len() - 1]
    );
}
