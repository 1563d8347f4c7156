//! Answers: partial and first-line suggestions, the accepted state, the window upgrade after an
//! arrival.

use super::*;

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
    assert!(super::suggestion::first_line_suggestion(&progress("\n    "), "", &split).is_none(), "only white space so far");
    assert!(super::suggestion::first_line_suggestion(&progress("\n    return 1"), "", &split).is_none(), "the line is not complete");
    let first = super::suggestion::first_line_suggestion(&progress("\n    return 1\n"), "", &split).unwrap();
    assert_eq!(first.text, "\n    return 1");
    assert!(super::suggestion::first_line_suggestion(&progress("\n    return 1\n"), "\n    x", &split).is_none(), "typed text that disagrees");
}
