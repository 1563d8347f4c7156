//! The scheduler's decisions against a scripted engine (`Engine::scripted`): each test plays
//! the engine's part, publishing progress for the jobs it receives. The end-to-end tests with
//! real models (`tests/lsp.rs`) cover the same paths through the real engine.

use std::sync::mpsc::Receiver;
use std::sync::OnceLock;
use std::time::Duration;

use ropey::Rope;

use super::answer::{answer_from, partial_suggestion};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_that_agrees_with_the_suggestion_is_served_without_a_new_job() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 4096);
    scheduler.on_change(state("x = |\n", 2));
    let job = next_job(&jobs);
    assert!(job.prompt.to_debug_string().ends_with("<FimMiddle>x = "), "{}", job.prompt.to_debug_string());
    finish(&job, "compute(1)", &[]);
    let (answer, _) = scheduler.complete(state("x = |\n", 2), Waiting::UntilReady).await;
    assert_eq!(suggestion(&answer), "compute(1)");

    scheduler.on_change(state("x = co|\n", 3));
    let (answer, _) = scheduler.complete(state("x = co|\n", 3), Waiting::Budget).await;
    assert_eq!(suggestion(&answer), "mpute(1)");
    assert!(matches!(&answer, Answer::Ready(suggestion) if suggestion.from_typed_ahead));
    assert_eq!(counter(&scheduler, "jobsStarted"), 1, "typed-ahead starts no job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_that_disagrees_supersedes_the_running_job() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 4096);
    scheduler.on_change(state("x = |\n", 2));
    let first = next_job(&jobs);
    first.progress.send_modify(|progress| {
        progress.text = "compute".into();
        progress.generated_tokens = 1;
    });
    scheduler.on_change(state("x = z|\n", 3));
    let second = next_job(&jobs);
    assert!(second.id > first.id);
    assert!(second.prompt.to_debug_string().ends_with("<FimMiddle>x = z"));
    assert_eq!((counter(&scheduler, "jobsStarted"), counter(&scheduler, "jobsSuperseded")), (2, 1));
    // Another line: a new job as well, even though the old one had finished.
    finish(&second, "ero", &[]);
    scheduler.on_change(state("x = zero\ny|\n", 4));
    let third = next_job(&jobs);
    assert!(third.prompt.to_debug_string().ends_with("<FimMiddle>y"));
    assert_eq!((counter(&scheduler, "jobsStarted"), counter(&scheduler, "jobsSuperseded")), (3, 1));
}

fn remote_scheduler() -> (Arc<Scheduler>, Receiver<ScriptedJob>) {
    scheduler_on(Engine::scripted_remote(model_info(4096)), Config::default())
}

/// On a server and on the embedded engine alike, a job without text keeps the keys typed
/// after its state; when its text then disagrees with them, a job for the latest state starts
/// with no further key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_key_gets_its_own_job_once_the_text_disagrees() {
    for (scheduler, jobs) in [remote_scheduler(), scheduler_with(Config::default(), 4096)] {
        scheduler.on_change(state("x = |\n", 2));
        let first = next_job(&jobs);
        scheduler.on_change(state("x = z|\n", 3));
        assert_eq!(counter(&scheduler, "jobsStarted"), 1, "kept for the job without text");
        first.progress.send_modify(|progress| {
            progress.text = "compute".into();
            progress.generated_tokens = 1;
        });
        let second = next_job(&jobs);
        assert!(second.prompt.to_debug_string().ends_with("<FimMiddle>x = z"), "{}", second.prompt.to_debug_string());
        // Counted once the submission returns, just after the engine has the job.
        wait_counter(&scheduler, "undecidedRestarts", 1).await;
        assert_eq!(counter(&scheduler, "jobsStarted"), 2);
    }
}

/// A request at a key kept by a job without text is answered early with a waiter; when that
/// job's text goes another way, the waiter follows the job for the request's state and the
/// client hears when that one has words for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_notification_follows_the_job_that_replaces_a_disagreeing_one() {
    let (scheduler, jobs) = scheduler_with(Config { budget_ms: 5, ..Config::default() }, 4096);
    scheduler.on_change(state("x = |\n", 2));
    let first = next_job(&jobs);
    scheduler.on_change(state("x = z|\n", 3));
    let (answer, waiter) = scheduler.complete(state("x = z|\n", 3), Waiting::Budget).await;
    assert!(matches!(answer, Answer::Empty(EmptyReason::NotReadyYet)), "{answer:?}");
    let ready = tokio::spawn({
        let (scheduler, waiter) = (scheduler.clone(), waiter.expect("a waiter"));
        async move { scheduler.wait_ready(waiter, Duration::from_secs(10)).await }
    });
    first.progress.send_modify(|progress| {
        progress.text = "compute".into();
        progress.generated_tokens = 1;
    });
    let second = next_job(&jobs);
    assert!(second.prompt.to_debug_string().ends_with("<FimMiddle>x = z"), "{}", second.prompt.to_debug_string());
    assert!(!ready.is_finished(), "no notification before the new job has words");
    second.progress.send_modify(|progress| {
        progress.text = "ero + one".into();
        progress.generated_tokens = 3;
    });
    assert!(ready.await.unwrap(), "the waiter followed the new job");
}

/// Waits until a counter reaches `value`; fails after 10 s.
async fn wait_counter(scheduler: &Scheduler, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counter(scheduler, name) < value {
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {} (waiting for {value})", counter(scheduler, name));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// ... but not when the job was superseded meanwhile by one for another place (the cursor
/// rests elsewhere): the user is there now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_server_a_kept_key_gets_no_job_once_the_user_rests_elsewhere() {
    let (scheduler, jobs) = remote_scheduler();
    scheduler.on_change(state("x = |\n", 2));
    let first = next_job(&jobs);
    scheduler.on_change(state("x = z|\n", 3));
    scheduler.cursor_rests(state("x = z\n\ndef f():\n    return |\n", 3));
    let rest = next_job(&jobs);
    assert!(rest.prompt.to_debug_string().ends_with("<FimMiddle>    return "), "{}", rest.prompt.to_debug_string());
    // The engine's part: the first job ends superseded.
    end(&first, "", &[], StopReason::Superseded);
    assert!(jobs.recv_timeout(Duration::from_millis(500)).is_err(), "a job for the state the user left");
    assert_eq!(counter(&scheduler, "undecidedRestarts"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_budget_an_early_empty_answer_comes_with_a_ready_notification() {
    let (scheduler, jobs) = scheduler_with(Config { budget_ms: 20, ..Config::default() }, 4096);
    scheduler.on_change(state("x = |\n", 2));
    let job = next_job(&jobs);
    let started = std::time::Instant::now();
    let (answer, waiter) = scheduler.complete(state("x = |\n", 2), Waiting::Budget).await;
    assert!(matches!(answer, Answer::Empty(EmptyReason::NotReadyYet)), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered within the budget");
    let waiter = waiter.expect("a waiter for the ready notification");
    let ready = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.wait_ready(waiter, Duration::from_secs(10)).await }
    });
    finish(&job, "compute(1)", &[]);
    assert!(ready.await.unwrap(), "the finished suggestion is worth a notification");
    let (answer, _) = scheduler.complete(state("x = |\n", 2), Waiting::Budget).await;
    assert_eq!(suggestion(&answer), "compute(1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_notifications_waits_for_the_whole_suggestion() {
    let (scheduler, jobs) = scheduler_with(Config { budget_ms: 1, ..Config::default() }, 4096);
    scheduler.on_change(state("x = |\n", 2));
    let job = next_job(&jobs);
    let answer = spawn_complete(&scheduler, state("x = |\n", 2));
    job.progress.send_modify(|progress| {
        progress.text = "compute(".into();
        progress.generated_tokens = 2;
    });
    finish(&job, "compute(1)", &[]);
    assert_eq!(suggestion(&answer.await.unwrap()), "compute(1)", "no partial answer for this client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_job_on_standby_is_promoted_when_the_user_reaches_its_state() {
    let (scheduler, jobs) = scheduler_with(Config { prefetch: true, ..Config::default() }, 4096);
    scheduler.on_change(state("x = |\n", 2));
    let asked = next_job(&jobs);
    assert_eq!(asked.params.alternatives, ALTERNATIVES, "a job asks for its alternatives to prefetch them");
    finish(&asked, "compute(1)", &["value"]);
    // Idle work: first the state after accepting the suggestion, then the alternative start.
    let accepted = next_job(&jobs);
    assert!(accepted.prompt.to_debug_string().contains("x = compute(1)\n"), "{}", accepted.prompt.to_debug_string());
    finish(&accepted, "print(x)", &[]);
    let alternative = next_job(&jobs);
    assert_eq!(alternative.params.forced_prefix, "value");
    finish(&alternative, "value + 1", &[]);
    assert_eq!(counter(&scheduler, "prefetchJobs"), 2);

    // The user types `v`: not the suggestion, but the alternative's start.
    scheduler.on_change(state("x = v|\n", 3));
    let (answer, _) = scheduler.complete(state("x = v|\n", 3), Waiting::Budget).await;
    assert_eq!(suggestion(&answer), "alue + 1");
    assert_eq!((counter(&scheduler, "prefetchHits"), counter(&scheduler, "jobsStarted")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_finished_with_other_text_is_replaced_once_for_the_requests_state() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 4096);
    scheduler.on_change(state("x = |\n", 2));
    let job = next_job(&jobs);
    job.progress.send_modify(|progress| {
        progress.text = "c".into();
        progress.generated_tokens = 1;
    });
    // `c` was typed while the job ran; the job then finished with text that does not start so.
    scheduler.on_change(state("x = c|\n", 3));
    finish(&job, "value", &[]);
    let answer = spawn_complete(&scheduler, state("x = c|\n", 3));
    let replacement = next_job(&jobs);
    assert!(replacement.prompt.to_debug_string().ends_with("<FimMiddle>x = c"));
    finish(&replacement, "ompute(1)", &[]);
    assert_eq!(suggestion(&answer.await.unwrap()), "ompute(1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_context_gets_a_whole_fill_in_the_middle_prompt_within_its_budget() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 512);
    let above: String = (0..200).map(|idx| format!("value_{idx} = compute({idx}, 'a longer argument to fill the line')\n")).collect();
    scheduler.on_change(state(&format!("{above}result = |\nprint(result)\n"), 2));
    let job = next_job(&jobs);
    let specials: Vec<&Piece> = job.prompt.pieces.iter().filter(|piece| matches!(piece, Piece::Special(_))).collect();
    assert_eq!(specials, [&Piece::Special(Special::FimPrefix), &Piece::Special(Special::FimSuffix), &Piece::Special(Special::FimMiddle)]);
    let n_chars = crate::context::text_chars(&job.prompt);
    let budget_chars = ((512 - Config::default().max_tokens - 1) as f64 * crate::context::DEFAULT_CHARS_PER_TOKEN) as usize;
    assert!(n_chars <= budget_chars, "{n_chars} characters of text for a budget of {budget_chars}");
    assert!(job.prompt.to_debug_string().contains("value_199 = compute(199"), "the lines nearest the cursor stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_refused_as_too_long_is_planned_again_with_the_measured_density() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 512);
    let above: String = (0..200).map(|idx| format!("row_{idx} = [{}]\n", (0..12).map(|value| (idx * 12 + value).to_string()).collect::<Vec<_>>().join(", "))).collect();
    let cursor_state = state(&format!("{above}total = |\n"), 2);
    scheduler.on_change(cursor_state.clone());
    let refused = next_job(&jobs);
    let refused_chars = crate::context::text_chars(&refused.prompt);
    let answer = spawn_complete(&scheduler, cursor_state.clone());
    // The engine counts twice the tokens the budget allowed for (digits are a token each).
    refused.progress.send_modify(|progress| progress.done = Some(Err(EngineError::PromptTooLong { prompt_tokens: refused_chars, limit: 463 })));
    let replanned = next_job(&jobs);
    let replanned_chars = crate::context::text_chars(&replanned.prompt);
    assert!(replanned_chars <= 463, "{replanned_chars} characters at about one a token, for 463 tokens");
    assert!(replanned.prompt.to_debug_string().starts_with("<FimPrefix>") && replanned.prompt.to_debug_string().ends_with("<FimMiddle>total = "));
    finish(&replanned, "sum(row_199)", &[]);
    assert_eq!(suggestion(&answer.await.unwrap()), "sum(row_199)", "the waiting request is answered from the new plan");
    // The next job in the document is planned with that density from the start.
    scheduler.on_change(state(&format!("{above}total = x|\n"), 3));
    let next = next_job(&jobs);
    assert!(crate::context::text_chars(&next.prompt) <= 463);
}

fn progress(text: &str) -> Progress {
    Progress { text: text.to_string(), generated_tokens: 1, ..Progress::default() }
}

fn split(head: &str, tail: &str) -> LineSplit {
    LineSplit::new(&Rope::from_str(&format!("{head}{tail}")), head.chars().count(), None).unwrap()
}

fn partial(text: &str, typed: &str) -> Option<String> {
    partial_suggestion(&progress(text), typed, &split("    return ", ""), true).map(|suggestion| suggestion.text)
}

#[test]
fn partial_suggestions_end_at_a_word_boundary() {
    assert_eq!(partial("radi", ""), None, "no word is complete yet");
    assert_eq!(partial("radius *", "").as_deref(), Some("radius"), "the operator may still grow");
    assert_eq!(partial("self.fo", "").as_deref(), Some("self."));
    assert_eq!(partial("math.pi * r", "").as_deref(), Some("math.pi *"));
}

#[test]
fn partial_suggestions_follow_typed_characters() {
    assert_eq!(partial("radius * rad", "rad").as_deref(), Some("ius *"));
    assert_eq!(partial("radius * rad", "x"), None, "typed characters disagree");
    let done = Progress { done: Some(Err(EngineError::Stopped)), ..progress("radius * 2") };
    assert!(partial_suggestion(&done, "", &split("", ""), true).is_none(), "a finished job has a whole answer instead");
    assert!(matches!(answer_from(&done, "", &split("", "")), Answer::Empty(EmptyReason::NothingToSuggest)));
}

fn python_state(text: &str, cursor_char_idx: usize) -> CursorState {
    let rope = Rope::from_str(text);
    let syntax = crate::syntax::language_for("python", "").map(|language| SyntaxTree::new(language, &rope));
    CursorState { uri: "file:///a.py".into(), version: 1, rope, cursor_char_idx, language_id: "python".into(), syntax }
}

#[test]
fn the_accepted_state_is_the_next_line_indented_as_an_editor_does() {
    let text = "def area(r):\n    return 3.14 * \n";
    let state = python_state(text, text.find(" \n").unwrap() + 1);
    let accepted = accepted_state(&state, "r * r").unwrap();
    assert_eq!(accepted.rope.to_string(), "def area(r):\n    return 3.14 * r * r\n    \n");
    assert_eq!(accepted.cursor_char_idx, accepted.rope.to_string().rfind("    \n").unwrap() + 4);
    assert!(accepted.syntax.unwrap().is_parsed());

    // After a block opener, one level deeper (in the file's own indentation: two spaces here).
    let text = "def f(values):\n  for v in values\n";
    let state = python_state(text, text.find("values\n").unwrap() + 6);
    let accepted = accepted_state(&state, ":").unwrap();
    assert!(accepted.rope.to_string().ends_with("  for v in values:\n    \n"), "{}", accepted.rope);

    // Accepted in the middle of a line: the cursor stays on it, after the suggestion.
    let text = "print(area())\n";
    let state = python_state(text, 11);
    let accepted = accepted_state(&state, "2");
    assert_eq!(accepted.map(|accepted| (accepted.rope.to_string(), accepted.cursor_char_idx)), Some(("print(area(2))\n".to_string(), 12)));
    // Nothing to accept.
    assert!(accepted_state(&state, "   ").is_none());
}

#[test]
fn surroundings_know_the_languages_brackets() {
    let _ = OnceLock::<()>::new();
    let rope = Rope::from_str("x = f(\n");
    let split = LineSplit::new(&rope, 6, crate::syntax::language_for("python", "")).unwrap();
    assert!(split.surroundings().brackets.contains(&('(', ')')));
}

/// Until every job has ended and no idle work is pending.
async fn idle(scheduler: &Scheduler) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = scheduler.stats_json();
        let ended = counter(scheduler, "jobsEnded") >= counter(scheduler, "jobsStarted") + counter(scheduler, "prefetchJobs");
        if ended && stats["idleWork"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still busy: {stats}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A scheduler whose engine measured a slow prompt at load, with arrivals cut to what decodes
/// in 100 ms (the cursor's line and the 2 lines above), and a file of 30 lines above a function.
fn arrival_setup() -> (Arc<Scheduler>, Receiver<ScriptedJob>, CursorState) {
    let mut info = model_info(4096);
    info.prompt_speed = Some(crate::engine::PromptSpeed { ms_per_token: 100.0, chars_per_token: 4.0 });
    let config = Config { cold_prompt_ms: 100, prefetch: false, ..Config::default() };
    let (scheduler, jobs) = scheduler_on(Engine::scripted(info), config);
    let above: String = (0..30).map(|idx| format!("x{idx} = {idx}\n")).collect();
    let arrival = state(&format!("{above}\ndef f():\n    |\n    return total\n"), 1);
    (scheduler, jobs, arrival)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pause_the_full_window_replaces_an_arrivals_suggestion_and_the_listener_hears_of_it() {
    let (scheduler, jobs, arrival_state) = arrival_setup();
    let mut upgrades = scheduler.listen_for_upgrades().expect("the first listener");
    assert!(scheduler.listen_for_upgrades().is_none(), "one listener");
    let request = spawn_complete(&scheduler, arrival_state.clone());
    let arrival = next_job(&jobs);
    assert!(!arrival.prompt.to_debug_string().contains("x0 = 0"), "the arrival's window is cut: {}", arrival.prompt.to_debug_string());
    finish(&arrival, "total = 0", &[]);
    assert_eq!(suggestion(&request.await.unwrap()), "total = 0");

    // No key since (the user arrived by moving): the full window comes at once.
    let full = next_job(&jobs);
    assert!(full.prompt.to_debug_string().contains("x0 = 0"), "the full window: {}", full.prompt.to_debug_string());
    finish(&full, "total = x0 + x1", &[]);
    let upgraded = tokio::time::timeout(Duration::from_secs(10), upgrades.recv()).await.expect("the listener hears of the upgrade").unwrap();
    assert_eq!((upgraded.uri.as_str(), upgraded.version, upgraded.cursor_char_idx), (arrival_state.uri.as_str(), 1, arrival_state.cursor_char_idx));
    let (answer, _) = scheduler.complete(arrival_state.clone(), Waiting::UntilReady).await;
    assert_eq!(suggestion(&answer), "total = x0 + x1");
    assert_eq!(counter(&scheduler, "windowUpgrades"), 1);
    assert_eq!(counter(&scheduler, "jobsStarted"), 1, "the answer after the pause comes from the full window's job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_suggestion_from_the_full_window_is_no_upgrade() {
    let (scheduler, jobs, arrival_state) = arrival_setup();
    let mut upgrades = scheduler.listen_for_upgrades().unwrap();
    let request = spawn_complete(&scheduler, arrival_state.clone());
    finish(&next_job(&jobs), "total = 0", &[]);
    request.await.unwrap();
    finish(&next_job(&jobs), "total = 0", &[]);
    idle(&scheduler).await;
    assert!(upgrades.try_recv().is_err(), "nothing new to show");
    assert_eq!(counter(&scheduler, "windowUpgrades"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_typed_while_the_full_window_decodes_its_prompt_gets_a_job_with_the_arrivals_window() {
    let (scheduler, jobs, arrival_state) = arrival_setup();
    let request = spawn_complete(&scheduler, arrival_state.clone());
    finish(&next_job(&jobs), "total = 0", &[]);
    request.await.unwrap();
    let full = next_job(&jobs);
    // A key the arrival's suggestion does not agree with, while the full window has no text.
    let typed = state(&arrival_state.rope.to_string().replacen("    \n    return", "    y|\n    return", 1), 2);
    scheduler.on_change(typed);
    let for_key = next_job(&jobs);
    assert!(!for_key.prompt.to_debug_string().contains("x0 = 0"), "the arrival's window: {}", for_key.prompt.to_debug_string());
    assert!(full.progress.borrow().done.is_none(), "the full window's job has not finished");
    assert_eq!(counter(&scheduler, "windowUpgrades"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_while_typing_gets_the_first_line_then_the_next_as_typed_ahead() {
    let (scheduler, jobs) = scheduler_with(Config::default(), 4096);
    scheduler.on_change(state("def f(a, b):\n    |\n", 2));
    let job = next_job(&jobs);
    let asked = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.complete(state("def f(a, b):\n    |\n", 2), Waiting::FirstLine).await })
    };
    // The first line is not complete yet: the request keeps waiting.
    job.progress.send_modify(|progress| {
        progress.text = "total = a".into();
        progress.generated_tokens = 3;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!asked.is_finished(), "answered before the first line was complete");
    // Its line break: the answer is that line, while the job goes on.
    job.progress.send_modify(|progress| {
        progress.text = "total = a + b\n    ret".into();
        progress.generated_tokens = 7;
    });
    let (answer, waiter) = asked.await.unwrap();
    assert_eq!(suggestion(&answer), "total = a + b");
    assert!(waiter.is_none(), "a client that waits is not told of more");
    assert!(job.progress.borrow().done.is_none());
    // Accepting that line and asking on the next: the rest of the same job, no new one.
    finish(&job, "total = a + b\n    return total", &[]);
    scheduler.on_change(state("def f(a, b):\n    total = a + b\n    |\n", 3));
    let (answer, _) = scheduler.complete(state("def f(a, b):\n    total = a + b\n    |\n", 3), Waiting::FirstLine).await;
    assert_eq!(suggestion(&answer), "return total");
    assert_eq!(counter(&scheduler, "jobsStarted"), 1, "typed-ahead served the second line");
    // Asked on purpose, the same client waits for the whole suggestion.
    scheduler.on_change(state("def g(a, b):\n    y = 1\n    |\n", 4));
    let job = next_job(&jobs);
    let asked = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move { scheduler.complete(state("def g(a, b):\n    y = 1\n    |\n", 4), Waiting::UntilReady).await.0 })
    };
    job.progress.send_modify(|progress| {
        progress.text = "x = a\n    ".into();
        progress.generated_tokens = 3;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!asked.is_finished(), "an invoked request answered before the suggestion was whole");
    finish(&job, "x = a\n    return x", &[]);
    assert_eq!(suggestion(&asked.await.unwrap()), "x = a\n    return x");
}

#[test]
fn the_first_line_after_a_block_opener_is_the_bodys_first_line() {
    let split = LineSplit::new(&Rope::from_str("def f():\n"), 8, None).unwrap();
    let progress = |text: &str| Progress { text: text.into(), ..Progress::default() };
    assert!(super::answer::first_line_suggestion(&progress("\n    "), "", &split).is_none(), "only white space so far");
    assert!(super::answer::first_line_suggestion(&progress("\n    return 1"), "", &split).is_none(), "the line is not complete");
    let first = super::answer::first_line_suggestion(&progress("\n    return 1\n"), "", &split).unwrap();
    assert_eq!(first.text, "\n    return 1");
    assert!(super::answer::first_line_suggestion(&progress("\n    return 1\n"), "\n    x", &split).is_none(), "typed text that disagrees");
}
