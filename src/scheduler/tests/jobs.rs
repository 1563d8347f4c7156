//! Jobs: typed-ahead, supersession, kept keys, ready notifications, prefetch, refused prompts.

use super::*;

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
