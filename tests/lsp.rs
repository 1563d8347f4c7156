//! The language server end to end: the real binary over stdio with real models, driven the way
//! an editor drives it. One server at a time, so timings of one test do not disturb another.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::lsp::LspClient;
use common::{model_path, DEFAULT_MODEL, TINY_MODEL};

static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_SERVER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a server on `model`. These tests check behaviour, not latency, so a client that waits
/// for suggestions waits long enough for a loaded machine (the default is 2 s).
fn start(model: &str, extra_options: Value) -> LspClient {
    let mut options = json!({"model": model_path(model).to_str().unwrap(), "maxWaitMs": 30000});
    if let (Some(options), Some(extra)) = (options.as_object_mut(), extra_options.as_object()) {
        options.extend(extra.clone());
    }
    let (mut client, _) = LspClient::start(options, json!({"general": {"positionEncodings": ["utf-16"]}}));
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "ready", "{stats}");
    client
}

const CIRCLE_URI: &str = "file:///project/circle.py";
const CIRCLE: &str = "import math\n\n\ndef circle_area(radius):\n    \"\"\"Return the area of a circle.\"\"\"\n    \n\n\nprint(circle_area(2.0))\n";

#[test]
fn initialize_negotiates_utf8_and_advertises_capabilities() {
    let _serial = serial();
    let (client, result) = LspClient::start(json!({"model": "smollm2-135m"}), json!({"general": {"positionEncodings": ["utf-8", "utf-16"]}}));
    let capabilities = &result["capabilities"];
    assert_eq!(capabilities["positionEncoding"], "utf-8");
    assert_eq!(capabilities["textDocumentSync"]["change"], 2, "incremental sync");
    assert_eq!(capabilities["inlineCompletionProvider"], true);
    assert!(capabilities["completionProvider"].is_object());
    assert_eq!(capabilities["executeCommandProvider"]["commands"][0], "ghostline.accept");
    client.shutdown();

    let (client, result) = LspClient::start(json!({}), json!({}));
    assert_eq!(result["capabilities"]["positionEncoding"], "utf-16", "utf-16 when the client offers nothing");
    client.shutdown();
}

#[test]
fn typing_gets_inline_completions_and_typed_ahead_answers() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    let suggestion = client.inline_text(CIRCLE_URI, 5, character).expect("a suggestion");
    assert!(suggestion.starts_with("radius"), "got {suggestion:?}");

    // Typing the suggestion's own characters is answered from it, without the model.
    let character = client.type_text(CIRCLE_URI, 5, character, "ra");
    let start = Instant::now();
    let rest = client.inline_text(CIRCLE_URI, 5, character).expect("a typed-ahead suggestion");
    let typed_ahead_ms = start.elapsed().as_millis();
    assert_eq!(format!("ra{rest}"), suggestion);
    let stats = client.request_ok("ghostline/stats", json!({}));
    assert!(stats["counters"]["typedAheadHits"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["counters"]["tokensGenerated"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["responseMs"]["count"].as_u64().unwrap() >= 2, "{stats}");
    eprintln!("typed-ahead answer in {typed_ahead_ms} ms");

    // Accepting is reported through the item's command.
    let response = client.inline_completion(CIRCLE_URI, 5, character);
    let command = response["result"]["items"][0]["command"].clone();
    assert_eq!(command["command"], "ghostline.accept");
    client.request_ok("workspace/executeCommand", json!({"command": "ghostline.accept", "arguments": command["arguments"]}));
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(stats["counters"]["accepted"], 1, "{stats}");
    // A client that accepts a word of it says how much.
    let mut partial = command["arguments"].clone();
    partial[0]["acceptedChars"] = json!(2);
    client.request_ok("workspace/executeCommand", json!({"command": "ghostline.accept", "arguments": partial}));
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!((stats["counters"]["accepted"].clone(), stats["counters"]["acceptedPartially"].clone()), (json!(1), json!(1)), "{stats}");
    let whole_chars = command["arguments"][0]["chars"].as_u64().unwrap();
    assert_eq!(stats["counters"]["acceptedChars"], json!(whole_chars + 2), "{stats}");
    assert!(stats["acceptance"]["rate"].as_f64().unwrap() > 0.0, "{stats}");
    client.shutdown();
}

#[test]
fn the_state_after_accepting_is_prefetched_in_idle_time() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({"prefetch": true}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    let suggestion = client.inline_text(CIRCLE_URI, 5, character).expect("a suggestion");
    assert!(!suggestion.contains('\n'), "one line: {suggestion:?}");
    let before = client.wait_idle();
    assert!(before["counters"]["prefetchJobs"].as_u64().unwrap() >= 1, "{before}");

    // Accept, then Enter: the editor indents the new line as the last one.
    client.insert(CIRCLE_URI, 5, character, &format!("{suggestion}\n    "));
    client.inline_completion(CIRCLE_URI, 6, 4);
    let after = client.request_ok("ghostline/stats", json!({}));
    assert_eq!(after["counters"]["prefetchHits"], 1, "{after}");
    assert_eq!(after["counters"]["jobsStarted"], before["counters"]["jobsStarted"], "answered from the prefetched job: {after}");

    // With prefetching off, nothing runs in idle time (counted from when the switch landed: the
    // prefetched job's own idle work may still have started prefetches before it).
    client.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"prefetch": false}}}));
    let switched = client.wait_idle();
    let character = client.type_text(CIRCLE_URI, 6, 4, "x = ");
    client.inline_text(CIRCLE_URI, 6, character);
    let idle = client.wait_idle();
    assert_eq!(idle["counters"]["prefetchJobs"], switched["counters"]["prefetchJobs"], "{idle}");
    client.shutdown();
}

const UTIL: &str = "\"\"\"Checksums for the wire format.\"\"\"\n\n\ndef adler_fold_digest(data):\n    \"\"\"Fold the bytes into a 16-bit digest.\"\"\"\n    return sum(data) % 65521\n";
const CHECK: &str = "import util\n\n\ndef first():\n    return 1\n\n\ndef check(data, expected):\n    return util.\n";

/// The suggestion at `return util.|` in `check`, after a first completion (and the idle time
/// after it) elsewhere in the file.
fn suggestion_with_util_open(cross_file_chunks: u64) -> (String, Value) {
    let mut client = start(DEFAULT_MODEL, json!({"crossFileChunks": cross_file_chunks}));
    client.open("file:///project/util.py", "python", UTIL);
    client.open("file:///project/check.py", "python", CHECK);
    client.inline_text("file:///project/check.py", 4, 10);
    client.wait_idle();
    let suggestion = client.inline_text("file:///project/check.py", 8, 16).unwrap_or_default();
    let stats = client.wait_idle();
    client.shutdown();
    (suggestion, stats)
}

#[test]
fn other_open_files_are_in_the_prompt() {
    let _serial = serial();
    let (with_ring, stats) = suggestion_with_util_open(3);
    assert!(with_ring.starts_with("adler_fold_digest"), "got {with_ring:?}: {stats}");
    let (without, _) = suggestion_with_util_open(0);
    assert!(!without.starts_with("adler_fold_digest"), "the name cannot be guessed: got {without:?}");
}

const TOTAL_URI: &str = "file:///project/total.py";
const TOTAL: &str = "def total(values):\n    result = 0\n    \n\n\ndef other():\n    pass\n";

/// The lines of a multi-line suggestion made at indentation `block_indent` that leave the block:
/// non-blank lines after the first (which continues the cursor's line) indented less than it.
fn lines_outside_the_block(suggestion: &str, block_indent: usize) -> Vec<&str> {
    suggestion
        .split('\n')
        .skip(1)
        .filter(|line| !line.trim().is_empty() && line.len() - line.trim_start().len() < block_indent)
        .collect()
}

/// On the tiny model: on this fixture the default model answers the empty line with one line
/// (`return result`), so only the tiny one shows several lines ending with the block.
#[test]
fn the_syntax_tree_shapes_and_ends_suggestions() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    client.open(TOTAL_URI, "python", TOTAL);
    // Asked while typing, a client that waits gets the first line as soon as it is complete;
    // asked on purpose, the whole suggestion: at an empty line in a block, several lines, none
    // of them outside the block.
    let first = client.inline_text(TOTAL_URI, 2, 4).expect("a first line in the function body");
    assert!(!first.trim().contains('\n'), "one line: {first:?}");
    let body = client.inline_text_invoked(TOTAL_URI, 2, 4).expect("a suggestion in the function body");
    assert!(body.starts_with(&first), "the first line, then the rest: {first:?}, {body:?}");
    assert!(body.trim_end().contains('\n'), "several lines: {body:?}");
    assert_eq!(lines_outside_the_block(&body, 4), Vec::<&str>::new(), "the suggestion runs past its block: {body:?}");
    assert!(!body.contains("def other"), "the suggestion runs past its block: {body:?}");
    // A line that opens a block gets its body on the next lines.
    let character = client.type_text(TOTAL_URI, 2, 4, "for value in values:");
    let block = client.inline_text_invoked(TOTAL_URI, 2, character).expect("a suggestion after a block opener");
    assert!(block.starts_with("\n        "), "the body, one level deeper: {block:?}");
    // Without the syntax tree the same request runs past the block: the model does not stop
    // there by itself, so the block check above can fail.
    client.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"syntax": false}}}));
    let plain_uri = "file:///project/total_without_tree.py";
    client.open(plain_uri, "python", TOTAL);
    let plain = client.inline_text_invoked(plain_uri, 2, 4).expect("a suggestion without the syntax tree");
    assert!(!lines_outside_the_block(&plain, 4).is_empty(), "without the syntax tree the model stopped at the block's end by itself: {plain:?}");
    client.shutdown();
}

/// At an auto-indented empty line the model once spelled the indentation out in short runs of
/// spaces and never stopped (48 tokens of spaces, an empty answer) on the first two cases; a
/// suggestion that started with the indentation again indented the line twice. The editor
/// inserts the line break and the indentation in one change, then asks.
#[test]
fn an_auto_indented_empty_line_gets_code_at_its_indentation() {
    let _serial = serial();
    // The prompt's content at an empty line is what is tested here, so every file gets its full
    // prompt: an arrival's prompt is cut to what decodes in `coldPromptMs` at this machine's
    // speed (on a slow 2-core machine, the cursor's line and 2 lines above), which
    // `tests/arrival.rs` covers.
    let mut client = start(DEFAULT_MODEL, json!({"coldPromptMs": 0}));
    let cases = [
        (
            "file:///project/brackets.py",
            "def correct_bracketing(brackets: str):\n    depth = 0\n    for b in brackets:\n        if b == \"<\":\n            depth += 1\n        else:\n        if depth < 0:\n            return False\n    return depth == 0\n",
            5,
            "            ",
            "depth -= 1",
        ),
        (
            "file:///project/factorize.py",
            "def factorize(n):\n    fact = []\n    i = 2\n    while i <= n:\n        if n % i == 0:\n            fact.append(i)\n        else:\n            i += 1\n    return fact\n",
            5,
            "            ",
            "n",
        ),
        (
            "file:///project/balance.py",
            "def below_zero(operations):\n    balance = 0\n    for op in operations:\n        balance += op\n            return True\n    return False\n",
            3,
            "        ",
            "if balance < 0",
        ),
    ];
    for (uri, text, line_before, indentation, expected) in cases {
        client.open(uri, "python", text);
        let end_of_line = text.lines().nth(line_before).unwrap().encode_utf16().count() as u32;
        client.insert(uri, line_before as u32, end_of_line, &format!("\n{indentation}"));
        let suggestion = client.inline_text(uri, line_before as u32 + 1, indentation.len() as u32).unwrap_or_default();
        assert!(suggestion.starts_with(expected), "{uri}: expected {expected:?} at the indentation, got {suggestion:?}");
    }
    client.shutdown();
}

/// At an empty line the reason for the line may be further down than the 4 lines a typed line
/// gets: a collection filled 6 lines below and returned 7 lines below must be created here. With
/// 4 lines below the model wrote `even_squares = []` and a whole `return [...]`.
#[test]
fn an_empty_line_sees_the_lines_below_that_use_what_it_must_define() {
    let _serial = serial();
    // The full prompt, as in the test above: an arrival's smaller prompt on a slow machine holds
    // fewer lines below than the 7 this needs.
    let mut client = start(DEFAULT_MODEL, json!({"coldPromptMs": 0}));
    let cases = [
        (
            "file:///project/squares.py",
            "def collect_even_squares(numbers):\n    \n    for number in numbers:\n        if number % 2 == 0:\n            square = number * number\n            if square > 100:\n                continue\n            squares.append(square)\n    return squares\n",
            "squares = []",
        ),
        (
            "file:///project/lengths.py",
            "def word_lengths(text):\n    \n    for line in text.splitlines():\n        for word in line.split():\n            word = word.strip(\".,;:!?\")\n            if not word:\n                continue\n            lengths[word] = len(word)\n    return lengths\n",
            "lengths = {}",
        ),
    ];
    for (uri, text, expected) in cases {
        client.open(uri, "python", text);
        let suggestion = client.inline_text(uri, 1, 4).unwrap_or_default();
        assert_eq!(suggestion.lines().next(), Some(expected), "{uri}: got {suggestion:?}");
    }
    client.shutdown();
}

/// At an arrival the prompt is cut for speed (here to the lines above the cursor, nothing
/// below: `coldPromptMs` 1), and the model cannot see what the empty line must define. In the
/// pause that follows, the full window's suggestion replaces the arrival's and a client that
/// opted in is told to ask again.
#[test]
fn in_a_pause_after_an_arrival_the_full_window_replaces_its_suggestion() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({"coldPromptMs": 1, "suggestionReadyNotification": true}));
    let uri = "file:///project/squares.py";
    let text = "def collect_even_squares(numbers):\n    \n    for number in numbers:\n        if number % 2 == 0:\n            square = number * number\n            if square > 100:\n                continue\n            squares.append(square)\n    return squares\n";
    client.open(uri, "python", text);
    client.inline_completion(uri, 1, 4);
    let stats = client.wait_idle();
    assert_eq!(stats["counters"]["windowUpgrades"], 1, "the full window's suggestion differs from the arrival's and replaced it: {stats}");
    client
        .wait_notification("ghostline/suggestionReady", Duration::from_secs(1), |params| {
            params["uri"] == uri && params["version"] == 1 && params["position"] == json!({"line": 1, "character": 4})
        })
        .expect("the client is told to ask again");
    let suggestion = client.inline_text(uri, 1, 4).unwrap_or_default();
    assert_eq!(suggestion.lines().next(), Some("squares = []"), "the full window's suggestion: {suggestion:?}");
    client.shutdown();
}

#[test]
fn prose_and_comments_get_one_sentence() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    let cases = [
        ("file:///project/NOTES.md", "markdown", "# Release notes\n\nThis release makes completions faster. The new cache \n"),
        ("file:///project/.git/COMMIT_EDITMSG", "git-commit", "Speed up the \n"),
        ("file:///project/stats.py", "python", "def mean(values):\n    # Divide the sum of the values by \n    pass\n"),
    ];
    for (uri, language, text) in cases {
        client.open(uri, language, text);
        let line = text.lines().position(|line| line.ends_with(' ') && !line.trim().is_empty()).unwrap() as u32;
        let character = text.lines().nth(line as usize).unwrap().encode_utf16().count() as u32;
        let suggestion = client.inline_text(uri, line, character).unwrap_or_default();
        assert!(!suggestion.trim().is_empty(), "{language}: a suggestion");
        assert!(!suggestion.contains('\n'), "{language}: one line: {suggestion:?}");
        let sentence_ends = suggestion.match_indices(['.', '!', '?']).filter(|(idx, _)| suggestion[idx + 1..].starts_with(' ')).count();
        assert_eq!(sentence_ends, 0, "{language}: more than one sentence: {suggestion:?}");
    }
    client.shutdown();
}

#[test]
fn a_client_that_opts_in_is_answered_within_the_budget_and_notified_when_ready() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({"suggestionReadyNotification": true, "budgetMs": 5}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    // A fresh state needs the model (tens of milliseconds at least): the first answer is
    // empty, then the notification names this state.
    let first = client.inline_text(CIRCLE_URI, 5, character);
    assert_eq!(first, None, "answered before the model could have finished");
    let ready = client
        .wait_notification("ghostline/suggestionReady", Duration::from_secs(30), |params| params["position"]["character"] == character)
        .expect("a ready notification");
    assert_eq!(ready["params"]["uri"], CIRCLE_URI);
    assert_eq!(ready["params"]["position"]["line"], 5);
    let suggestion = client.inline_text(CIRCLE_URI, 5, character).expect("ready after the notification");
    assert!(suggestion.contains("radius"), "got {suggestion:?}");
    client.shutdown();
}

#[test]
fn a_cancelled_request_is_answered_request_cancelled() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    // A document with no change yet: the request itself starts the model, which takes longer
    // than the cancellation takes to arrive.
    let id = client.send_request("textDocument/inlineCompletion", LspClient::inline_params(CIRCLE_URI, 5, 4));
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(id, Duration::from_secs(30));
    assert_eq!(response["error"]["code"], -32800, "{response}");
    // The server goes on answering.
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    assert!(client.inline_text(CIRCLE_URI, 5, character).is_some());
    client.shutdown();
}

#[test]
fn a_newer_change_supersedes_a_waiting_request() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    let first = client.send_request("textDocument/inlineCompletion", LspClient::inline_params(CIRCLE_URI, 5, character));
    // A change that no suggestion can cover (a different line) starts a new job.
    client.insert(CIRCLE_URI, 0, 11, "\nimport os");
    let first = client.response(first, Duration::from_secs(30));
    assert_eq!(first["result"]["items"], json!([]), "the superseded request is answered empty: {first}");
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert!(stats["counters"]["jobsSuperseded"].as_u64().unwrap() >= 1, "{stats}");
    let second = client.inline_text(CIRCLE_URI, 6, character).expect("the newer state gets a suggestion");
    assert!(second.contains("radius"), "{second:?}");
    client.shutdown();
}

#[test]
fn utf16_positions_with_emoji_and_cjk() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    let uri = "file:///project/greeting.py";
    client.open(uri, "python", "words = [\"😀 漢字\", \"世界\"]\nfor word in words:\n    print(\"😀 漢字\")\n");
    // After the indentation, `print("`, the emoji (2 UTF-16 units), a space, two CJK characters
    // (1 unit each) and the closing quote.
    let after_the_string = 4 + 6 + 1 + 2 + 1 + 2 + 1;
    client.insert(uri, 2, after_the_string, " + ");
    let character = after_the_string + 3;
    // The edit and the cursor land where the UTF-16 offsets say (right after the `+`), else the
    // model would not be asked to continue `print("😀 漢字" + `.
    let response = client.inline_completion(uri, 2, character);
    let item = response["result"]["items"].get(0).unwrap_or_else(|| panic!("a suggestion after the emoji and CJK: {response}"));
    assert!(item["insertText"].as_str().unwrap().starts_with("word"), "{item}");
    let cursor = json!({"line": 2, "character": character});
    assert_eq!(item["range"], json!({"start": cursor, "end": cursor}), "{item}");
    // A position inside the surrogate pair of the emoji is a clear error.
    let inside = client.inline_completion(uri, 2, 12);
    assert_eq!(inside["error"]["code"], -32602, "{inside}");
    assert!(inside["error"]["message"].as_str().unwrap().contains("inside a character"), "{inside}");
    // The line is as long as the client thinks: one past its end clamps to the end.
    let clamped = client.inline_completion(uri, 2, character + 5);
    assert!(clamped.get("error").is_none(), "{clamped}");
    client.shutdown();
}

#[test]
fn crlf_documents_complete_without_carriage_returns_in_suggestions() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    let uri = "file:///project/crlf.py";
    client.open(uri, "python", "def circle_area(radius):\r\n    \r\n\r\nprint(circle_area(2))\r\n");
    let character = client.type_text(uri, 1, 4, "return 3.14159 * ");
    let suggestion = client.inline_text(uri, 1, character).expect("a suggestion");
    assert!(suggestion.contains("radius") && !suggestion.contains('\r'), "{suggestion:?}");
    client.shutdown();
}

#[test]
fn unknown_documents_and_positions_out_of_range_are_clear_errors() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    let response = client.inline_completion("file:///never/opened.rs", 0, 0);
    assert_eq!(response["error"]["code"], -32602, "{response}");
    assert!(response["error"]["message"].as_str().unwrap().contains("is not open"), "{response}");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let response = client.inline_completion(CIRCLE_URI, 400, 0);
    assert_eq!(response["error"]["code"], -32602, "{response}");
    assert!(response["error"]["message"].as_str().unwrap().contains("past the end"), "{response}");
    // An edit with an impossible range is rejected and the document stays as it was.
    client.insert(CIRCLE_URI, 900, 0, "garbage");
    let response = client.completion(CIRCLE_URI, 8, 0);
    assert!(response.get("error").is_none(), "line 8 still exists: {response}");
    client.shutdown();
}

#[test]
fn completion_items_for_clients_without_ghost_text() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * rad");
    let response = client.completion(CIRCLE_URI, 5, character);
    assert!(response.get("error").is_none(), "{response}");
    let result = &response["result"];
    assert_eq!(result["isIncomplete"], true);
    let item = &result["items"][0];
    let label = item["label"].as_str().unwrap();
    assert!(label.starts_with("radius"), "{item}");
    assert!(label.chars().count() <= 61);
    assert_eq!(item["textEdit"]["range"]["start"], json!({"line": 5, "character": character - 3}), "covers the word being typed");
    assert!(item["textEdit"]["newText"].as_str().unwrap().starts_with("radius"), "{item}");
    assert!(item["filterText"].as_str().unwrap().starts_with("rad"), "{item}");
    client.shutdown();
}

/// A client with inline completion (it shows ghost text) gets the model's suggestion only there:
/// its completion list holds the expansions, answered without waiting for the model, unless
/// `completionItem` is "always".
#[test]
fn clients_with_ghost_text_get_only_expansions_in_the_completion_list() {
    let _serial = serial();
    let options = json!({"model": model_path(DEFAULT_MODEL).to_str().unwrap(), "maxWaitMs": 30000, "expansions": {"radius2": "radius ** 2"}});
    let capabilities = json!({"textDocument": {"inlineCompletion": {"dynamicRegistration": false}}});
    let (mut client, _) = LspClient::start(options.clone(), capabilities.clone());
    assert_eq!(client.wait_engine()["engine"]["state"], "ready");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * rad");
    // The suggestion is there, inline (and ready, so the list below could hold it).
    assert!(client.inline_text(CIRCLE_URI, 5, character).unwrap_or_default().starts_with("ius"));
    let items = client.completion(CIRCLE_URI, 5, character)["result"]["items"].clone();
    let labels: Vec<&str> = items.as_array().unwrap().iter().map(|item| item["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["radius2"], "only the expansion: {items}");
    client.shutdown();

    let mut options = options;
    options["completionItem"] = json!("always");
    let (mut client, _) = LspClient::start(options, capabilities);
    assert_eq!(client.wait_engine()["engine"]["state"], "ready");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * rad");
    // With expansions to offer, the completion list waits only the budget for the model: let
    // the suggestion be ready first.
    assert!(client.inline_text(CIRCLE_URI, 5, character).unwrap_or_default().starts_with("ius"));
    let items = client.completion(CIRCLE_URI, 5, character)["result"]["items"].clone();
    assert!(items[0]["label"].as_str().unwrap().starts_with("radius") && items[0]["detail"] == "Ghostline", "the model's item first: {items}");
    client.shutdown();
}

/// "Expand Suggestion" asks once for a longer, multi-line suggestion; the settings (here one
/// line) stay for every other request.
#[test]
fn an_expanded_suggestion_is_multi_line_for_that_request_only() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({"multiLine": false}));
    let uri = "file:///project/fizzbuzz.py";
    client.open(uri, "python", "def fizzbuzz(n):\n    \"\"\"Print the numbers from 1 to n, Fizz for multiples of 3, Buzz for 5, FizzBuzz for both.\"\"\"\n    \n");
    let line = client.inline_text(uri, 2, 4).expect("a suggestion");
    assert!(!line.contains('\n'), "one line, as the settings say: {line:?}");
    let response = client.request("ghostline/expandSuggestion", json!({"textDocument": {"uri": uri}, "position": {"line": 2, "character": 4}}));
    let expanded = response["result"]["items"][0]["insertText"].as_str().unwrap_or_else(|| panic!("{response}")).to_string();
    assert!(expanded.lines().count() >= 3 && expanded.starts_with(line.trim_end()), "{expanded:?} after {line:?}");
    assert_eq!(response["result"]["items"][0]["command"]["command"], "ghostline.accept", "{response}");
    // The next request at that state is the expanded job's (it covers the state); a new state
    // elsewhere is planned with the settings again.
    client.insert(uri, 0, 0, "# fizzbuzz\n");
    assert!(!client.inline_text(uri, 3, 4).expect("a suggestion").contains('\n'), "one line again");
    let bad = client.request("ghostline/expandSuggestion", json!({"position": 3}));
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    client.shutdown();
}

#[test]
fn expansions_are_offered_as_snippets_with_their_variables_filled() {
    let _serial = serial();
    let expansions = json!({
        "todo": {"body": "# TODO(${fileBase}, ${year}): ${1:what}$0", "description": "a to-do note"},
        "today": "${date}",
    });
    let mut client = start(DEFAULT_MODEL, json!({"expansions": expansions}));
    let uri = "file:///project/my%20notes.py";
    client.open(uri, "python", "import math\n\n\n");
    let character = client.type_text(uri, 1, 0, "to");
    let response = client.completion(uri, 1, character);
    assert!(response.get("error").is_none(), "{response}");
    let result = &response["result"];
    let items = result["items"].as_array().unwrap();
    let todo = items.iter().find(|item| item["label"] == "todo").unwrap_or_else(|| panic!("no todo item in {result}"));
    let year = chrono_year();
    assert_eq!(todo["textEdit"]["newText"], format!("# TODO(my notes, {year}): ${{1:what}}$0"));
    assert_eq!(todo["insertTextFormat"], 2, "a snippet");
    assert_eq!(todo["detail"], "a to-do note");
    assert_eq!(todo["textEdit"]["range"]["start"], json!({"line": 1, "character": 0}), "replaces the typed trigger");
    let today = items.iter().find(|item| item["label"] == "today").expect("today matches `to` too");
    assert!(today["textEdit"]["newText"].as_str().unwrap().starts_with(&year), "{today}");

    // A bad setting is reported and the previous expansions stay.
    client.notify("workspace/didChangeConfiguration", json!({"settings": {"expansions": {"two words": "x"}}}));
    client
        .wait_notification("window/showMessage", Duration::from_secs(10), |params| params["message"].as_str().unwrap_or_default().contains("expansions"))
        .expect("the invalid expansions are reported");
    let character = client.type_text(uri, 1, character, "da");
    let response = client.completion(uri, 1, character);
    assert!(response.get("error").is_none(), "{response}");
    let result = &response["result"];
    let labels: Vec<&str> = result["items"].as_array().unwrap().iter().filter_map(|item| item["label"].as_str()).collect();
    assert!(labels.contains(&"today") && !labels.contains(&"todo"), "{labels:?}");
    client.shutdown();
}

#[test]
fn a_comment_or_a_note_expands_into_code_through_a_code_action() {
    let _serial = serial();
    let mut client = start(DEFAULT_MODEL, json!({}));
    let uri = "file:///project/stats.py";
    let comment = "# return the mean of a list of numbers";
    client.open(uri, "python", &format!("import math\n\n{comment}\n\n\nprint(mean([1, 2, 3]))\n"));
    let range = json!({"start": {"line": 2, "character": 0}, "end": {"line": 2, "character": 5}});
    let actions = client.request_ok("textDocument/codeAction", json!({"textDocument": {"uri": uri}, "range": range, "context": {"diagnostics": []}}));
    let command = &actions[0]["command"];
    assert_eq!(command["command"], "ghostline.expandIntoCode", "{actions}");
    let edit = client.request_ok("workspace/executeCommand", json!({"command": "ghostline.expandIntoCode", "arguments": command["arguments"]}));
    let change = &edit["changes"][uri][0];
    // A comment stays: the code goes in after it, at its indentation.
    assert_eq!(change["range"]["start"], json!({"line": 2, "character": comment.len()}), "{edit}");
    assert_eq!(change["range"]["start"], change["range"]["end"]);
    let code = change["newText"].as_str().unwrap();
    assert!(code.starts_with('\n') && code.contains("def ") && code.contains("return"), "{code:?}");
    let apply = client.wait_notification("workspace/applyEdit", Duration::from_secs(10), |params| params["edit"]["changes"][uri].is_array());
    assert!(apply.is_some(), "the server asks the client to apply the edit");

    // A note (not a comment) is replaced by the code.
    let note_uri = "file:///project/note.py";
    client.open(note_uri, "python", "import math\n\ndef circle_area(radius):\n    compute the area with math.pi\n");
    let edit = client.request_ok("workspace/executeCommand", json!({"command": "ghostline.expandIntoCode", "arguments": [note_uri, 3, 3]}));
    let change = &edit["changes"][note_uri][0];
    assert_eq!(change["range"], json!({"start": {"line": 3, "character": 0}, "end": {"line": 3, "character": 33}}), "{edit}");
    let code = change["newText"].as_str().unwrap();
    assert!(code.starts_with("    ") && code.contains("math.pi"), "{code:?}");

    // Blank lines offer nothing; bad arguments are clear errors.
    let blank = json!({"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 0}});
    assert_eq!(client.request_ok("textDocument/codeAction", json!({"textDocument": {"uri": note_uri}, "range": blank, "context": {"diagnostics": []}})), json!(null));
    let response = client.request("workspace/executeCommand", json!({"command": "ghostline.expandIntoCode", "arguments": [note_uri, 40, 41]}));
    assert!(response["error"]["message"].as_str().unwrap_or_default().contains("not in the document"), "{response}");
    let response = client.request("workspace/executeCommand", json!({"command": "ghostline.expandIntoCode", "arguments": [note_uri]}));
    assert!(response["error"]["message"].as_str().unwrap_or_default().contains("takes [uri, firstLine, lastLine]"), "{response}");
    client.shutdown();
}

/// The current year, as the server's local clock gives it.
fn chrono_year() -> String {
    let output = std::process::Command::new("date").arg("+%Y").output().expect("date runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn configuration_changes_apply_and_invalid_values_are_reported() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({"maxTokens": "many"}));
    let warning = client
        .wait_notification("window/showMessage", Duration::from_secs(10), |params| params["message"].as_str().unwrap_or_default().contains("maxTokens"))
        .expect("the invalid initialization option is reported");
    assert_eq!(warning["params"]["type"], 2);

    client.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"languages": ["rust"], "budgetMs": -4}}}));
    client
        .wait_notification("window/showMessage", Duration::from_secs(10), |params| params["message"].as_str().unwrap_or_default().contains("budgetMs"))
        .expect("the invalid value is reported");
    // A disabled language is answered empty (through the completion path, counted) without
    // running the model.
    let before = client.request_ok("ghostline/stats", json!(null));
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return ");
    assert_eq!(client.inline_text(CIRCLE_URI, 5, character), None, "python is no longer enabled");
    let after = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(after["counters"]["jobsStarted"], before["counters"]["jobsStarted"], "a job ran for python: {after}");
    assert_eq!(after["counters"]["answeredEmpty"].as_u64(), before["counters"]["answeredEmpty"].as_u64().map(|count| count + 1), "{after}");
    // An enabled language runs the model, so the job counter above does count.
    let rust_uri = "file:///project/lib.rs";
    client.open(rust_uri, "rust", "fn double(value: i32) -> i32 {\n    \n}\n");
    let character = client.type_text(rust_uri, 1, 4, "value *");
    let response = client.inline_completion(rust_uri, 1, character);
    assert!(response.get("error").is_none(), "{response}");
    let rust_stats = client.request_ok("ghostline/stats", json!(null));
    assert!(rust_stats["counters"]["jobsStarted"].as_u64() > after["counters"]["jobsStarted"].as_u64(), "{rust_stats}");
    client.shutdown();
}

/// An engine that dies on this CPU (here: the engine check's child executes an illegal
/// instruction, as llama.cpp's AMX kernels did on an Intel Xeon) is a message, not a dead server.
#[test]
fn an_engine_that_crashes_is_reported_and_the_server_stays_up() {
    let _serial = serial();
    let model = model_path(TINY_MODEL);
    let (mut client, _) = LspClient::start_with_env(
        "info",
        &[("GHOSTLINE_TEST_ILLEGAL_INSTRUCTION", "1")],
        json!({"model": model.to_str().unwrap()}),
        json!({}),
    );
    let message = client
        .wait_notification("window/showMessage", Duration::from_secs(60), |params| params["type"] == 1)
        .expect("an error message");
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("cannot run model") && text.contains("SIGILL") && text.contains("llama.cpp was built with"), "{text}");
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "failed", "{stats}");
    assert!(stats["engine"]["error"].as_str().unwrap().contains("SIGILL"), "{stats}");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return ");
    assert_eq!(client.inline_text(CIRCLE_URI, 5, character), None, "answered empty, not an error");
    client.shutdown();
}

#[test]
fn a_missing_model_is_reported_and_the_server_stays_up() {
    let _serial = serial();
    let (mut client, _) = LspClient::start(json!({"model": "/nonexistent/models/missing.gguf"}), json!({}));
    let message = client
        .wait_notification("window/showMessage", Duration::from_secs(30), |params| params["type"] == 1)
        .expect("an error message");
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("could not load model") && text.contains("does not exist"), "{text}");
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "failed");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return ");
    assert_eq!(client.inline_text(CIRCLE_URI, 5, character), None, "answered empty, not an error");
    client.shutdown();
}

/// Model paths that are not regular files are refused at once: `/dev/stdin` is the server's
/// own protocol stream (reading it would eat the next message), and a named pipe would block
/// the loader forever.
#[test]
fn a_model_path_that_is_not_a_regular_file_is_refused_at_once() {
    let _serial = serial();
    let fifo = std::env::temp_dir().join(format!("ghostline-model-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    for (model, kind) in [("/dev/stdin", "not a regular file"), (fifo.to_str().unwrap(), "a named pipe"), ("/tmp", "a directory")] {
        let (mut client, _) = LspClient::start(json!({"model": model}), json!({}));
        let message = client
            .wait_notification("window/showMessage", Duration::from_secs(30), |params| params["type"] == 1)
            .unwrap_or_else(|| panic!("no error message for {model}"));
        let text = message["params"]["message"].as_str().unwrap();
        assert!(text.contains(kind), "{model}: {text}");
        let stats = client.wait_engine();
        assert_eq!(stats["engine"]["state"], "failed", "{model}: {stats}");
        client.open(CIRCLE_URI, "python", CIRCLE);
        assert_eq!(client.inline_text(CIRCLE_URI, 5, 4), None, "{model}: answered empty");
        client.shutdown();
    }
    let _ = std::fs::remove_file(&fifo);
}

/// A new model that fails keeps the one that works (the promise for every invalid setting),
/// and a second `initialized` does not load the model again.
#[test]
fn a_bad_model_setting_keeps_the_working_model() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    let tiny = model_path(TINY_MODEL).to_str().unwrap().to_string();
    client.notify("initialized", json!({}));
    for bad in ["/etc/passwd", "/tmp", "/nonexistent/model.gguf"] {
        client.notify("workspace/didChangeConfiguration", json!({"settings": {"ghostline": {"model": bad}}}));
        let message = client
            .wait_notification("window/showMessage", Duration::from_secs(30), |params| params["type"] == 1)
            .unwrap_or_else(|| panic!("no error message for {bad}"));
        let text = message["params"]["message"].as_str().unwrap();
        assert!(text.contains(bad) && text.contains(&format!("keeping model `{tiny}`")), "{text}");
        let stats = client.request_ok("ghostline/stats", json!(null));
        assert_eq!(stats["engine"]["state"], "ready", "{stats}");
        assert_eq!(stats["config"]["model"], tiny.as_str(), "the setting went back: {stats}");
    }
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(stats["engineLoads"], 4, "one load at start, one per bad model, none for the second `initialized`: {stats}");
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return ");
    let response = client.inline_completion(CIRCLE_URI, 5, character);
    assert!(response.get("error").is_none(), "{response}");
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(stats["engine"]["model"]["path"], tiny.as_str(), "{stats}");
    client.shutdown();
}

/// After a change the server rejects, its copy may differ from the editor's: the rejection is
/// counted, the document's requests are answered empty, and a change with the whole text
/// repairs it.
#[test]
fn a_rejected_change_silences_the_document_until_the_whole_text_comes_again() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    // A range past the end of the document.
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": CIRCLE_URI, "version": 50}, "contentChanges": [
            {"range": {"start": {"line": 400, "character": 0}, "end": {"line": 400, "character": 0}}, "text": "x"}]}),
    );
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(stats["rejectedChanges"], 1, "{stats}");
    assert_eq!(stats["divergedDocuments"], 1, "{stats}");
    // `ghostline/document` shows the server's copy and why it may differ.
    let copy = client.request_ok("ghostline/document", json!({"uri": CIRCLE_URI}));
    assert_eq!((copy["text"].as_str(), copy["version"].as_i64()), (Some(CIRCLE), Some(1)), "{copy}");
    assert!(copy["diverged"].as_str().is_some_and(|reason| !reason.is_empty()), "{copy}");
    let unknown = client.request("ghostline/document", json!({"uri": "file:///project/never-opened.py"}));
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let inline = client.inline_completion(CIRCLE_URI, 5, 4);
    assert_eq!(inline["result"]["items"], json!([]), "{inline}");
    let completion = client.completion(CIRCLE_URI, 5, 4);
    assert!(completion.get("error").is_none() && completion["result"].is_null(), "{completion}");
    // A later incremental change still leaves it diverged (it applies to a text that may be wrong).
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": CIRCLE_URI, "version": 51}, "contentChanges": [
            {"range": {"start": {"line": 5, "character": 4}, "end": {"line": 5, "character": 4}}, "text": "r"}]}),
    );
    assert_eq!(client.request_ok("ghostline/stats", json!(null))["divergedDocuments"], 1);
    // The whole text repairs it.
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": CIRCLE_URI, "version": 52}, "contentChanges": [{"text": CIRCLE}]}),
    );
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!(stats["divergedDocuments"], 0, "{stats}");
    assert_eq!(stats["rejectedChanges"], 1, "{stats}");
    let copy = client.request_ok("ghostline/document", json!({"uri": CIRCLE_URI}));
    assert_eq!((copy["text"].as_str(), copy["version"].as_i64(), copy["diverged"].is_null()), (Some(CIRCLE), Some(52), true), "{copy}");
    // A version going back is a rejection too.
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": CIRCLE_URI, "version": 3}, "contentChanges": [{"text": "old"}]}),
    );
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!((stats["rejectedChanges"].clone(), stats["divergedDocuments"].clone()), (json!(2), json!(1)), "{stats}");
    client.shutdown();
}

/// Each document counts its own versions: edits to two documents in turn are all applied (a
/// version that goes back is rejected, as above).
#[test]
fn edits_to_two_documents_in_turn_each_keep_their_versions() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({}));
    let other_uri = "file:///project/other.py";
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return ");
    client.open(other_uri, "python", "x = 1\n");
    client.type_text(other_uri, 0, 5, "0");
    client.type_text(CIRCLE_URI, 5, character, "math.pi");
    let stats = client.request_ok("ghostline/stats", json!(null));
    assert_eq!((stats["rejectedChanges"].clone(), stats["divergedDocuments"].clone()), (json!(0), json!(0)), "{stats}");
    assert_eq!((client.version(CIRCLE_URI), client.version(other_uri)), (15, 2));
    client.shutdown();
}

/// Many requests waiting for one job (a cold prompt of thousands of tokens) do not starve the
/// server: `ghostline/stats` is answered while the job still decodes, `$/cancelRequest` cancels a
/// waiting request, and past the limit of waiting requests the oldest are answered empty (the
/// limit itself: `server::tests`).
#[test]
fn waiting_requests_are_bounded_and_stats_and_cancel_stay_prompt() {
    let _serial = serial();
    let mut client = start(TINY_MODEL, json!({"maxWaitMs": 120000}));
    let uri = "file:///project/numbers.py";
    let mut text = String::new();
    for i in 0..64 {
        let values: Vec<String> = (0..16).map(|j| (i * 16 + j).to_string()).collect();
        text.push_str(&format!("values_{i} = [{}]\n", values.join(", ")));
    }
    text.push('\n');
    client.open(uri, "python", &text);
    let ids: Vec<i64> = (0..200).map(|_| client.send_request("textDocument/inlineCompletion", LspClient::inline_params(uri, 64, 0))).collect();
    let stats_id = client.send_request("ghostline/stats", json!(null));
    let last = *ids.last().unwrap();
    client.notify("$/cancelRequest", json!({"id": last}));
    let stats = client.response(stats_id, Duration::from_secs(60));
    let counters = &stats["result"]["counters"];
    // The digits tokenize one per token, so the first prompt is refused as too long and planned
    // again shorter: one job has ended then, and its replacement is still decoding.
    let (started, ended) = (counters["jobsStarted"].as_u64().unwrap(), counters["jobsEnded"].as_u64().unwrap());
    assert_eq!(started, ended + 1, "stats came only after the job: {stats}");
    let cancelled = client.response(last, Duration::from_secs(60));
    assert_eq!(cancelled["error"]["code"], -32800, "the waiting request was cancelled: {cancelled}");
    let mut empty = 0;
    for id in &ids[..ids.len() - 1] {
        let response = client.response(*id, Duration::from_secs(120));
        assert!(response.get("error").is_none(), "{response}");
        empty += usize::from(response["result"]["items"].as_array().is_some_and(Vec::is_empty));
    }
    assert!(empty >= 200 - 32 - 1, "the oldest requests past the limit were answered empty: {empty}");
    client.shutdown();
}

/// A module of `count` small functions, as a user's file.
fn module_text(name: &str, count: usize) -> String {
    (0..count).map(|idx| format!("def {name}_{idx}(values):\n    total = 0\n    for value in values:\n        total += value * {idx}\n    return total\n\n\n")).collect()
}

/// Going to another file and coming back: the KV cache of the place left is saved by the engine
/// and restored on return, so the return decodes a few tokens instead of the whole window; with
/// `savedKvMiB` 0 the return decodes it again.
#[test]
fn coming_back_to_a_file_restores_its_place_instead_of_decoding_it_again() {
    let _serial = serial();
    let decoded_on_return = |saved_kv_mib: u64| -> (u64, u64) {
        let mut client = start(TINY_MODEL, json!({"coldPromptMs": 0, "savedKvMiB": saved_kv_mib}));
        let (first, second) = ("file:///project/first.py", "file:///project/second.py");
        client.open(first, "python", &module_text("scale", 12));
        client.open(second, "python", &module_text("shift", 12));
        // Line 45 is `    return total` of the seventh function; its place starts at line 32.
        client.inline_completion(first, 45, 4);
        client.wait_idle();
        client.inline_completion(second, 45, 4);
        let before = client.wait_idle();
        let character = client.type_text(first, 45, 4, "r");
        assert!(client.inline_completion(first, 45, character)["result"]["items"].is_array());
        let after = client.wait_idle();
        let counter = |stats: &Value, name: &str| stats["counters"][name].as_u64().unwrap_or_else(|| panic!("{name} in {stats}"));
        let decoded = counter(&after, "tokensDecoded") - counter(&before, "tokensDecoded");
        let restored = counter(&after, "tokensRestored") - counter(&before, "tokensRestored");
        client.shutdown();
        (decoded, restored)
    };
    let (decoded_saved, restored) = decoded_on_return(256);
    let (decoded_unsaved, restored_unsaved) = decoded_on_return(0);
    eprintln!("on return: {decoded_saved} tokens decoded, {restored} restored; without saving {decoded_unsaved} decoded");
    assert_eq!(restored_unsaved, 0);
    assert!(restored >= 100, "the place's window came back: {restored} tokens restored");
    assert!(decoded_saved * 4 < decoded_unsaved, "the return decoded {decoded_saved} tokens with the saved place, {decoded_unsaved} without");
}

/// The editor says where the cursor rests (`ghostline/cursorRest`): the engine starts
/// there, so the first key at that line decodes a few tokens instead of the window. Bad params
/// are ignored without harm.
#[test]
fn a_resting_cursor_warms_its_place_before_the_first_key() {
    let _serial = serial();
    let decoded_by_first_key = |rest: bool| -> u64 {
        let mut client = start(TINY_MODEL, json!({"coldPromptMs": 0}));
        let uri = "file:///project/rest.py";
        client.open(uri, "python", &module_text("scale", 12));
        client.notify("ghostline/cursorRest", json!({"nonsense": true}));
        client.notify("ghostline/cursorRest", json!({"textDocument": {"uri": uri}, "position": {"line": 9999, "character": 0}}));
        client.notify("ghostline/cursorRest", json!({"textDocument": {"uri": "file:///project/never-opened.py"}, "position": {"line": 0, "character": 0}}));
        if rest {
            client.notify("ghostline/cursorRest", json!({"textDocument": {"uri": uri}, "position": {"line": 45, "character": 4}}));
            client.wait_stats("a job where the cursor rests", Duration::from_secs(120), |stats| stats["counters"]["restJobs"].as_u64().expect("restJobs in the stats") >= 1);
        }
        let before = client.wait_idle();
        let character = client.type_text(uri, 45, 4, "r");
        assert!(client.inline_text(uri, 45, character).is_some(), "a suggestion after the first key");
        let after = client.wait_idle();
        assert_eq!(after["counters"]["restJobs"], json!(u64::from(rest)), "{after}");
        client.shutdown();
        after["counters"]["tokensDecoded"].as_u64().unwrap() - before["counters"]["tokensDecoded"].as_u64().unwrap()
    };
    let (rested, unrested) = (decoded_by_first_key(true), decoded_by_first_key(false));
    eprintln!("the first key decoded {rested} prompt tokens after a rest, {unrested} without");
    assert!(rested * 4 < unrested, "after a rest {rested} tokens, without {unrested}");
}

/// llama.cpp's OpenMP threads spin only briefly at their barriers (`GOMP_SPINCOUNT=300`, set by
/// the server restarting itself once at start: libgomp reads it before `main`), so another busy
/// process does not stall every barrier; a value the user set is kept. Read from the running
/// server's own environment, after it answered `initialize`.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_with_a_short_openmp_spin_unless_the_user_set_one() {
    for (env, expected) in [(&[][..], "GOMP_SPINCOUNT=300"), (&[("GOMP_SPINCOUNT", "5000")][..], "GOMP_SPINCOUNT=5000")] {
        let (client, _) = LspClient::start_with_env("warn", env, json!({"model": model_path(TINY_MODEL).to_str().unwrap()}), json!({}));
        let environ = std::fs::read(format!("/proc/{}/environ", client.pid())).expect("the server's environment");
        let spin: Vec<String> = environ.split(|byte| *byte == 0).map(|entry| String::from_utf8_lossy(entry).into_owned()).filter(|entry| entry.starts_with("GOMP_SPINCOUNT=")).collect();
        assert_eq!(spin, [expected], "with {env:?}");
        client.shutdown();
    }
}
