//! Remote backends end to end: the real binary over stdio, its jobs sent to llama.cpp's own
//! `llama-server` (built by `benches/build-peer.sh`, which the test command runs) serving the
//! default model, through its native API and through its OpenAI-compatible one; the embedded
//! model answering until a server started late is up, and for a server killed mid-stream until
//! it is back; on the real server's own `/slots`, that keys
//! agreeing with a running request send nothing new and that a superseded request stops there;
//! and, with scripted servers, what a broken server does (an HTTP error, a stream that is not
//! one, a stream cut before its end) and that a newer keystroke closes the stream of the request
//! it supersedes.

mod common;
#[allow(dead_code)]
#[path = "../benches/replay/peer.rs"]
mod peer;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use common::lsp::LspClient;
use common::{model_path, DEFAULT_MODEL};

static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_SERVER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const CIRCLE_URI: &str = "file:///project/circle.py";
const CIRCLE: &str = "import math\n\n\ndef circle_area(radius):\n    \"\"\"Return the area of a circle.\"\"\"\n    \n\n\nprint(circle_area(2.0))\n";

/// A one-line list the model goes on with up to its token limit when nothing stops it (on the
/// raw server: 1,000 tokens of 1,000), the cursor before its `]`.
const NUMBERS_URI: &str = "file:///project/numbers.py";
const NUMBERS: &str = "numbers = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, ]\n";

/// llama-server's API flavours (kind, infill): its /completion with Ghostline's prompt, its
/// /infill with the prompt's parts (the server builds the fill-in-the-middle prompt), and its
/// OpenAI-compatible API.
const FLAVOURS: [(&str, bool); 3] = [("llama-server", false), ("llama-server", true), ("openai", false)];

fn flavour(kind: &str, infill: bool, url: &str) -> Value {
    json!({"kind": kind, "url": url, "model": "qwen2.5-coder", "template": "qwen", "infill": infill})
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// llama.cpp's llama-server serving the default model on `port`, ready.
fn llama_server(port: u16) -> peer::PeerServer {
    let bin_dir = peer::peer_bin_dir().expect("llama-server, built by benches/build-peer.sh (scripts/test.sh runs it)");
    peer::PeerServer::start(&bin_dir, &model_path(DEFAULT_MODEL), 2, port, 1).expect("llama-server starts")
}

/// Ghostline with `backend`, ready.
fn start(backend: Value, model: &str) -> LspClient {
    start_with(backend, model, json!({}))
}

fn start_with(backend: Value, model: &str, extra: Value) -> LspClient {
    let mut options = json!({"model": model_path(model).to_str().unwrap(), "maxWaitMs": 30000, "backend": backend});
    options.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (mut client, _) = LspClient::start(options, json!({}));
    let stats = client.wait_engine();
    assert_eq!(stats["engine"]["state"], "ready", "{stats}");
    client
}

/// `ghostline doctor --backend` for an OpenAI-compatible server at `url`.
fn doctor_backend(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ghostline"))
        .args(["doctor", "--backend", &json!({"kind": "openai", "url": url}).to_string()])
        .output()
        .unwrap()
}

fn backend_stats(client: &mut LspClient) -> Value {
    client.request_ok("ghostline/stats", json!(null))["engine"]["backend"].clone()
}

fn circle_suggestion(client: &mut LspClient) -> String {
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    client.inline_text(CIRCLE_URI, 5, character).unwrap_or_default()
}

#[test]
fn llama_server_answers_through_its_own_apis_and_its_openai_api() {
    let _serial = serial();
    let port = free_port();
    let _server = llama_server(port);
    let url = format!("http://127.0.0.1:{port}");
    for (kind, infill) in FLAVOURS {
        let mut client = start(flavour(kind, infill, &url), DEFAULT_MODEL);
        let suggestion = circle_suggestion(&mut client);
        assert!(suggestion.starts_with("radius"), "{kind} (infill: {infill}): got {suggestion:?}");
        let backend = backend_stats(&mut client);
        assert_eq!(backend["kind"], kind, "{backend}");
        assert!(backend["remoteJobs"].as_u64().unwrap() >= 1, "{backend}");
        assert_eq!((backend["fallbackJobs"].as_u64(), backend["remoteFailures"].as_u64()), (Some(0), Some(0)), "{backend}");
        if kind == "llama-server" {
            // Its pieces carry the prompt's counts (`timings_per_token`), also for streams
            // closed before their end: the prompt tokens the server decoded are counted.
            let counters = client.wait_idle()["counters"].clone();
            assert!(counters["tokensDecoded"].as_u64().unwrap() + counters["tokensReused"].as_u64().unwrap() >= 30, "{counters}");
        }
        client.shutdown();
    }
    let doctor = doctor_backend(&url);
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success() && stdout.contains("backend check: ok"), "{stdout}{}", String::from_utf8_lossy(&doctor.stderr));
}

/// The server is not up yet when Ghostline starts: the embedded model answers; once the server
/// starts, a health check notices and the next job goes to it.
#[test]
fn the_embedded_model_answers_until_a_server_started_late_is_up() {
    let _serial = serial();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let backend = json!({"kind": "openai", "url": url, "model": "qwen2.5-coder", "template": "qwen", "fallback": "local", "timeoutMs": 2000});
    let mut client = start(backend, DEFAULT_MODEL);
    let suggestion = circle_suggestion(&mut client);
    assert!(suggestion.starts_with("radius"), "got {suggestion:?}");
    let backend = backend_stats(&mut client);
    assert!(backend["remoteFailures"].as_u64().unwrap() >= 1 && backend["fallbackJobs"].as_u64().unwrap() >= 1, "{backend}");
    assert_eq!(backend["remoteJobs"], 0, "{backend}");
    assert!(backend["lastError"].as_str().unwrap().contains("cannot reach"), "{backend}");
    assert_eq!(backend["usingFallback"], true, "{backend}");

    let server = llama_server(port);
    let back = client.wait_stats("the health check finding the server up", Duration::from_secs(60), |stats| stats["engine"]["backend"]["healthRecoveries"].as_u64() >= Some(1))["engine"]["backend"].clone();
    assert_eq!(back["usingFallback"], false, "{back}");
    let uri = "file:///project/square.py";
    client.open(uri, "python", "def square_area(side):\n    \n");
    let character = client.type_text(uri, 1, 4, "return side * ");
    let suggestion = client.inline_text(uri, 1, character).unwrap_or_default();
    assert!(suggestion.starts_with("side"), "the server answers: {suggestion:?}");
    let after = backend_stats(&mut client);
    assert!(after["remoteJobs"].as_u64().unwrap() >= 1, "the job went to the server: {after}");
    client.shutdown();
    drop(server);

    // Without a fallback the answer is empty, and the server keeps serving.
    let mut client = start(json!({"kind": "llama-server", "url": url}), DEFAULT_MODEL);
    assert_eq!(circle_suggestion(&mut client), "");
    let backend = backend_stats(&mut client);
    assert_eq!(backend["remoteJobs"], 0, "{backend}");
    assert!(backend["lastError"].as_str().unwrap().contains("cannot reach"), "{backend}");
    client.shutdown();

    let doctor = doctor_backend(&url);
    let stderr = String::from_utf8_lossy(&doctor.stderr);
    assert_eq!(doctor.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

/// A server that answers every request with the head and the pieces `respond` writes;
/// each request's body arrives on the returned channel.
fn scripted_server(respond: impl Fn(&mut TcpStream) + Send + Sync + 'static) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (bodies, received) = mpsc::channel();
    let respond = std::sync::Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let respond = respond.clone();
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let _ = bodies.send(String::from_utf8_lossy(&body).into_owned());
                respond(&mut stream);
            });
        }
    });
    (port, received)
}

#[test]
fn a_broken_server_is_reported_and_never_takes_the_language_server_down() {
    let _serial = serial();
    let (error_port, _) = scripted_server(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 15\r\nConnection: close\r\n\r\nloading model..");
    });
    let (garbage_port, _) = scripted_server(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {this is not json\n\n");
    });
    for (port, says) in [(error_port, "HTTP 503: loading model"), (garbage_port, "not a completion stream")] {
        let mut client = start(json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")}), DEFAULT_MODEL);
        assert_eq!(circle_suggestion(&mut client), "");
        let backend = backend_stats(&mut client);
        assert!(backend["lastError"].as_str().unwrap().contains(says), "{backend}");
        // Still serving.
        assert_eq!(client.request_ok("ghostline/stats", json!(null))["engine"]["state"], "ready");
        client.shutdown();
    }
}

/// A server that dies in the middle of a stream (a few pieces, then the connection drops without
/// the last piece): its text is not shown as a suggestion; the embedded model answers the job
/// with a fallback, and without one the answer is empty and the error is reported.
#[test]
fn a_stream_cut_before_its_end_falls_back_and_is_never_shown_cut() {
    let _serial = serial();
    let (port, _) = scripted_server(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for piece in [" pi", " *", " rad"] {
            let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": false})).as_bytes());
        }
        // The connection drops here, as when the server is killed.
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut client = start(json!({"kind": "llama-server", "url": url, "fallback": "local"}), DEFAULT_MODEL);
    let suggestion = circle_suggestion(&mut client);
    let backend = backend_stats(&mut client);
    assert!(suggestion.starts_with("radius"), "the embedded model answers the whole job: {suggestion:?} {}", client.request_ok("ghostline/stats", json!(null)));
    assert!(backend["fallbackJobs"].as_u64().unwrap() >= 1 && backend["remoteFailures"].as_u64().unwrap() >= 1, "{backend}");
    assert!(backend["lastError"].as_str().unwrap().contains("before the server said it was done"), "{backend}");
    client.shutdown();

    let mut client = start(json!({"kind": "llama-server", "url": url}), DEFAULT_MODEL);
    assert_eq!(circle_suggestion(&mut client), "", "a cut stream's text is not a suggestion");
    assert!(backend_stats(&mut client)["lastError"].as_str().unwrap().contains("before the server said it was done"));
    client.shutdown();
}

#[test]
fn a_newer_keystroke_closes_the_stream_of_the_request_it_supersedes() {
    let _serial = serial();
    // A server that streams a piece every 20 ms for as long as the client reads, says on
    // `streaming` when a stream has sent ten pieces, and on `closed` when the client closed one.
    let (streaming_sender, streaming) = mpsc::channel::<()>();
    let (closed_sender, closed) = mpsc::channel::<()>();
    let senders = Mutex::new((streaming_sender, closed_sender));
    let (port, bodies) = scripted_server(move |stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for sent in 0..1500 {
            let piece = format!("data: {}\n\n", json!({"content": "x", "stop": false}));
            if stream.write_all(piece.as_bytes()).and_then(|()| stream.flush()).is_err() {
                let _ = senders.lock().unwrap().1.send(());
                return;
            }
            if sent == 10 {
                let _ = senders.lock().unwrap().0.send(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // 1,000 tokens at 20 ms: the first request would stream for 20 s if nothing closed it.
    let mut client = start_with(json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")}), DEFAULT_MODEL, json!({"maxTokens": 1000}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    client.type_text(CIRCLE_URI, 5, 4, "r");
    let first = bodies.recv_timeout(Duration::from_secs(30)).expect("the first keystroke's request");
    assert!(first.contains("<|fim_prefix|>") && first.contains("\"stream\":true") && first.contains("\"timings_per_token\":true"), "{first}");
    streaming.recv_timeout(Duration::from_secs(30)).expect("the first request streaming");
    client.type_text(CIRCLE_URI, 5, 5, "e");
    bodies.recv_timeout(Duration::from_secs(30)).expect("the second keystroke's request");
    // The first stream is closed long before its 20 s of pieces are over.
    closed.recv_timeout(Duration::from_secs(5)).expect("the superseded request's stream was closed");
    client.shutdown();
}

/// A key typed while the server has not sent the running request's first piece is kept for
/// that request (see the next test); when its text then disagrees with the key, a request for
/// the key's state goes out at once, with no further key or request from the editor, the first
/// stream is closed, and an editor waiting on the first request gets the second one's answer.
/// (Before, nothing went out until the next key, and the waiting editor saw nothing.)
#[test]
fn a_key_the_running_request_turns_out_not_to_foresee_gets_its_own_request_at_once() {
    let _serial = serial();
    let (closed_sender, closed) = mpsc::channel::<()>();
    let closed_sender = Mutex::new(closed_sender);
    let requests = std::sync::atomic::AtomicUsize::new(0);
    let (port, bodies) = scripted_server(move |stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        if requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            // The first: half a second of prompt, then `x` every 20 ms for 30 s.
            std::thread::sleep(Duration::from_millis(500));
            for _ in 0..1500 {
                let piece = format!("data: {}\n\n", json!({"content": "x", "stop": false}));
                if stream.write_all(piece.as_bytes()).and_then(|()| stream.flush()).is_err() {
                    let _ = closed_sender.lock().unwrap().send(());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            for (piece, stop) in [("turn", false), (" 3.14159", false), ("", true)] {
                let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": stop})).as_bytes());
            }
        }
    });
    let mut client = start_with(json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")}), DEFAULT_MODEL, json!({"maxTokens": 1000}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    client.type_text(CIRCLE_URI, 5, 4, "r");
    bodies.recv_timeout(Duration::from_secs(30)).expect("the first keystroke's request");
    let character = client.type_text(CIRCLE_URI, 5, 5, "e");
    // An editor that waits for the suggestion asks now, while the first request has no text.
    let asked = client.send_request("textDocument/inlineCompletion", LspClient::inline_params(CIRCLE_URI, 5, character));
    bodies.recv_timeout(Duration::from_secs(10)).expect("a request for the second key's state, once the first request's text disagreed with it");
    closed.recv_timeout(Duration::from_secs(5)).expect("the first request's stream was closed");
    // Its answer is the second request's.
    let answer = client.response(asked, Duration::from_secs(30));
    assert_eq!(answer["result"]["items"][0]["insertText"], "turn 3.14159", "{answer}");
    assert_eq!(client.inline_text(CIRCLE_URI, 5, character).as_deref(), Some("turn 3.14159"));
    let counters = client.wait_stats("the restart counted", Duration::from_secs(10), |stats| stats["counters"]["undecidedRestarts"].as_u64() >= Some(1))["counters"].clone();
    assert_eq!(counters["undecidedRestarts"], 1, "{counters}");
    client.shutdown();
}

/// A server still decoding the prompt of a request (it cannot stop that) is not sent a new
/// request for each key typed meanwhile: the running one serves them once its text comes, as
/// typed-ahead. (A new request per key, each closed at its first piece, showed nothing at all
/// on a busy server.)
#[test]
fn keys_typed_while_the_server_decodes_a_prompt_are_served_by_that_request() {
    let _serial = serial();
    let (port, bodies) = scripted_server(|stream| {
        // The prompt takes the server 1.5 s; then the suggestion for the first key's state.
        std::thread::sleep(Duration::from_millis(1500));
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for (piece, stop) in [("adius", false), (" **", false), (" 2", false), ("", true)] {
            let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": stop})).as_bytes());
        }
    });
    let mut client = start(json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")}), DEFAULT_MODEL);
    let text = CIRCLE.replace("\n    \n", "\n    return 3.14159 * \n");
    client.open(CIRCLE_URI, "python", &text);
    let character = client.type_text(CIRCLE_URI, 5, 21, "ra");
    let suggestion = client.inline_text(CIRCLE_URI, 5, character).unwrap_or_default();
    assert_eq!(suggestion, "dius ** 2", "the first key's request, past the typed `a`");
    assert!(bodies.recv_timeout(Duration::from_secs(5)).is_ok(), "the first key's request");
    assert!(bodies.try_recv().is_err(), "no request for the key typed while the first was decoding");
    client.shutdown();
}

/// The server is killed in the middle of a stream: the embedded model answers that job; the
/// server comes back on the same port: a health check notices within seconds and the next jobs go
/// to it again.
#[test]
fn a_server_killed_mid_stream_falls_back_to_the_embedded_model_and_is_used_again_once_back() {
    let _serial = serial();
    let port = free_port();
    let server = llama_server(port);
    let backend = json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}"), "fallback": "local", "timeoutMs": 3000});
    let mut client = start_with(backend, DEFAULT_MODEL, json!({"maxTokens": 100, "maxWaitMs": 60000}));
    assert!(circle_suggestion(&mut client).starts_with("radius"));
    let before = backend_stats(&mut client);
    assert!(before["remoteJobs"].as_u64().unwrap() >= 1 && before["fallbackJobs"] == 0, "{before}");

    // A job the server decodes for seconds (a one-line list the model goes on with): killed
    // once the server is seen decoding it.
    client.open(NUMBERS_URI, "python", NUMBERS);
    let (uri, column) = (NUMBERS_URI, client.type_text(NUMBERS_URI, 0, NUMBERS.find(']').unwrap() as u32, "1"));
    wait_slot(port, "the request to be decoding", Duration::from_secs(60), |_| {}, |(_, processing, decoded, _)| processing && decoded >= 8);
    drop(server);
    // Read while the outage is on (it lasts 10 s after a failure; the embedded model's answer of
    // 100 tokens takes longer than that on a slow 2-core machine).
    let down = client.wait_stats("the outage after the broken stream", Duration::from_secs(60), |stats| stats["engine"]["backend"]["usingFallback"] == true)["engine"]["backend"].clone();
    assert!(down["lastError"].as_str().unwrap().contains("before the server said it was done"), "{down}");
    let suggestion = client.inline_text(uri, 0, column).unwrap_or_default();
    assert!(suggestion.starts_with("011, 1012, 1013"), "the embedded model answers the job whose stream was cut: {suggestion:?}");
    let answered = backend_stats(&mut client);
    assert!(answered["fallbackJobs"].as_u64().unwrap() >= 1, "{answered}");

    let _server = llama_server(port);
    let back = client.wait_stats("the health check finding the server back", Duration::from_secs(60), |stats| stats["engine"]["backend"]["healthRecoveries"].as_u64() >= Some(1))["engine"]["backend"].clone();
    assert_eq!(back["usingFallback"], false, "{back}");
    let remote_jobs = back["remoteJobs"].as_u64().unwrap();
    // In a file of its own, so it needs a job (no typed-ahead answer).
    let uri = "file:///project/rectangle.py";
    client.open(uri, "python", "def rectangle_area(width, height):\n    \n");
    let character = client.type_text(uri, 1, 4, "return width * ");
    let suggestion = client.inline_text(uri, 1, character).unwrap_or_default();
    assert!(suggestion.starts_with("height"), "the server answers again: {suggestion:?}");
    let after = backend_stats(&mut client);
    assert!(after["remoteJobs"].as_u64().unwrap() > remote_jobs, "the next job went to the server: {after}");
    client.shutdown();
}

/// llama-server's own view of its one slot: (task id, still processing, tokens decoded, tokens
/// left of its `n_predict`), from `/slots`.
fn slot_state(port: u16) -> (Option<u64>, bool, u64, u64) {
    let answer = peer::http(port, "/slots", None, Duration::from_secs(5)).expect("/slots answers");
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let slots: Value = serde_json::from_slice(&answer.body).expect("/slots is JSON");
    let slot = &slots[0];
    let next = &slot["next_token"][0];
    (slot["id_task"].as_u64(), slot["is_processing"] == true, next["n_decoded"].as_u64().unwrap_or(0), next["n_remain"].as_u64().unwrap_or(0))
}

/// Polls `/slots` until `done` holds for a state, failing after `timeout`; every state seen
/// goes to `seen` first.
fn wait_slot(port: u16, what: &str, timeout: Duration, mut seen: impl FnMut((Option<u64>, bool, u64, u64)), done: impl Fn((Option<u64>, bool, u64, u64)) -> bool) -> (Option<u64>, bool, u64, u64) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = slot_state(port);
        seen(state);
        if done(state) {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; the slot: {state:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// On the real llama-server (one slot), seen by the server itself through `/slots`, for each
/// API flavour: keys that agree with the running request send nothing new (the same task keeps
/// decoding), and a key that supersedes it stops it at once, far before its `n_predict` (a list
/// of numbers on one line, which the model continues up to its token limit when nothing stops it).
#[test]
fn on_llama_server_typed_ahead_keys_keep_the_request_and_a_superseding_key_stops_it() {
    let _serial = serial();
    let port = free_port();
    let _server = llama_server(port);
    let url = format!("http://127.0.0.1:{port}");
    for (kind, infill) in FLAVOURS {
        let name = format!("{kind} (infill: {infill})");
        // The previous flavour's last request has left the slot.
        wait_slot(port, "an idle slot", Duration::from_secs(60), |_| {}, |(_, processing, ..)| !processing);
        let mut client = start_with(flavour(kind, infill, &url), DEFAULT_MODEL, json!({"maxTokens": 1000}));
        client.open(NUMBERS_URI, "python", NUMBERS);
        let (uri, column) = (NUMBERS_URI, NUMBERS.find(']').unwrap() as u32);
        client.type_text(uri, 0, column, "1");

        let (task, ..) = wait_slot(port, "the first key's request to be decoding", Duration::from_secs(60), |_| {}, |(task, processing, decoded, _)| task.is_some() && processing && decoded >= 8);
        // The model goes on `011, 1012, ...`: typing its `0` is served by the same request.
        let (_, _, decoded_before, _) = slot_state(port);
        client.type_text(uri, 0, column + 1, "0");
        wait_slot(port, "the same request to decode further after the agreeing key", Duration::from_secs(60), |(now, ..)| assert_eq!(now, task, "{name}: the agreeing key started a new request"), |(_, _, decoded, _)| decoded >= decoded_before + 8);

        // A key the request did not foresee: its stream is closed and the server stops the task.
        let mut last_of_first = None;
        client.type_text(uri, 0, column + 2, "x");
        wait_slot(
            port,
            "the superseded request to leave the slot",
            Duration::from_secs(60),
            |state| {
                if state.0 == task && state.1 {
                    last_of_first = Some(state);
                }
            },
            |(now, processing, ..)| now != task || !processing,
        );
        let (_, _, decoded, remain) = last_of_first.expect("the first request was seen decoding");
        assert!(remain > 500, "{name}: the superseded request ran on to {decoded} tokens ({remain} left of its 1,000)");
        client.shutdown();
    }
}

/// A panic in a remote request's thread (a test fault: `GHOSTLINE_TEST_FAULTS=1` and its marker
/// in the prompt) fails that job alone and gives its streaming slot back: with `maxInFlight` 1
/// the next job streams and is answered, where before it waited for a slot never freed.
#[test]
fn a_remote_request_that_panics_fails_alone_and_frees_its_slot() {
    let _serial = serial();
    let (port, bodies) = scripted_server(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for (piece, stop) in [(" radius", false), (" ** 2", false), ("", true)] {
            let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": stop})).as_bytes());
        }
    });
    let backend = json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}"), "maxInFlight": 1});
    let options = json!({"model": model_path(DEFAULT_MODEL).to_str().unwrap(), "maxWaitMs": 30000, "backend": backend});
    let (mut client, _) = LspClient::start_with_env("info", &[("GHOSTLINE_TEST_FAULTS", "1")], options, json!({}));
    assert_eq!(client.wait_engine()["engine"]["state"], "ready");
    let text = CIRCLE.replace("\"\"\"Return the area of a circle.\"\"\"", "\"\"\"ghostline-test-fault: panic in a request\"\"\"");
    let uri = "file:///project/panics.py";
    client.open(uri, "python", &text);
    let character = client.type_text(uri, 5, 4, "return 3.14159 * ");
    assert_eq!(client.inline_text_invoked(uri, 5, character), None, "the panicking request has nothing to show");
    let backend = backend_stats(&mut client);
    assert!(backend["lastError"].as_str().unwrap().contains("panicked: test fault"), "{backend}");
    assert!(bodies.try_recv().is_err(), "the panic came before the request was sent");

    // The same document without the marker (another document's prompt could quote this one).
    let line = text.lines().nth(4).unwrap();
    client.replace(uri, (4, 0), (4, line.len() as u32), "    \"\"\"Return the area of a circle.\"\"\"");
    let answer = client.inline_text_invoked(uri, 5, character);
    assert_eq!(answer.as_deref(), Some("radius ** 2"), "the next job had a slot: {}", client.request_ok("ghostline/stats", json!(null)));
    bodies.recv_timeout(Duration::from_secs(5)).expect("the next job's request");
    client.shutdown();
}


/// A server that streams `x` every 20 ms for as long as the client reads; each stream's end
/// (the client closed it) is told on the returned channel, with the request bodies.
fn endless_server() -> (u16, mpsc::Receiver<String>, mpsc::Receiver<()>) {
    let (closed_sender, closed) = mpsc::channel::<()>();
    let closed_sender = Mutex::new(closed_sender);
    let (port, bodies) = scripted_server(move |stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for _ in 0..1500 {
            let piece = format!("data: {}\n\n", json!({"content": "x", "stop": false}));
            if stream.write_all(piece.as_bytes()).and_then(|()| stream.flush()).is_err() {
                let _ = closed_sender.lock().unwrap().send(());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (port, bodies, closed)
}

/// Closing a document cancels its job: the request streaming for it is closed at once (1,000
/// tokens at 20 ms would stream for 20 s).
#[test]
fn closing_a_document_closes_the_stream_of_its_request() {
    let _serial = serial();
    let (port, bodies, closed) = endless_server();
    let mut client = start_with(json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")}), DEFAULT_MODEL, json!({"maxTokens": 1000}));
    client.open(CIRCLE_URI, "python", CIRCLE);
    client.type_text(CIRCLE_URI, 5, 4, "r");
    bodies.recv_timeout(Duration::from_secs(30)).expect("the keystroke's request");
    client.wait_stats("the request streaming", Duration::from_secs(30), |stats| stats["currentJob"]["generatedTokens"].as_u64().unwrap_or(0) >= 5);
    client.notify("textDocument/didClose", json!({"textDocument": {"uri": CIRCLE_URI}}));
    closed.recv_timeout(Duration::from_secs(5)).expect("the closed document's stream was closed");
    client.shutdown();
}

/// `maxInFlight` 2: a job for another document goes out while the first request still waits
/// for the server's first piece; with 1 it waits until that request has given its slot back.
#[test]
fn max_in_flight_says_how_many_requests_wait_on_the_server_at_once() {
    let _serial = serial();
    for (max_in_flight, second_before_first_answer) in [(2, true), (1, false)] {
        // Every request: its body is told, then 1.5 s of "prompt", then the answer is told.
        let (events_sender, events) = mpsc::channel::<&'static str>();
        let events_sender = Mutex::new(events_sender);
        let (port, _bodies) = scripted_server(move |stream| {
            let _ = events_sender.lock().unwrap().send("request");
            std::thread::sleep(Duration::from_millis(1500));
            let _ = events_sender.lock().unwrap().send("answer");
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            for (piece, stop) in [(" radius", false), ("", true)] {
                let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": stop})).as_bytes());
            }
        });
        let backend = json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}"), "maxInFlight": max_in_flight});
        let mut client = start(backend, DEFAULT_MODEL);
        client.open(CIRCLE_URI, "python", CIRCLE);
        client.type_text(CIRCLE_URI, 5, 4, "r");
        assert_eq!(events.recv_timeout(Duration::from_secs(30)), Ok("request"));
        let other = "file:///project/other.py";
        client.open(other, "python", "def double(value):\n    return \n");
        client.type_text(other, 1, 11, "v");
        let order: Vec<&str> = (0..3).map(|_| events.recv_timeout(Duration::from_secs(30)).expect("the server's next event")).collect();
        let expected = if second_before_first_answer { ["request", "answer", "answer"] } else { ["answer", "request", "answer"] };
        assert_eq!(order, expected, "maxInFlight {max_in_flight}");
        client.shutdown();
    }
}

/// `slowMs`: a server slower than it to its first piece is left alone for a while when the
/// embedded model can answer; the next job goes to the fallback and `usingFallback` says so.
#[test]
fn a_server_slower_than_slow_ms_hands_the_next_jobs_to_the_embedded_model() {
    let _serial = serial();
    let (port, bodies) = scripted_server(|stream| {
        std::thread::sleep(Duration::from_millis(800));
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
        for (piece, stop) in [(" radius", false), (" ** 2", false), ("", true)] {
            let _ = stream.write_all(format!("data: {}\n\n", json!({"content": piece, "stop": stop})).as_bytes());
        }
    });
    let backend = json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}"), "fallback": "local", "slowMs": 300});
    let mut client = start(backend, DEFAULT_MODEL);
    client.open(CIRCLE_URI, "python", CIRCLE);
    let character = client.type_text(CIRCLE_URI, 5, 4, "return 3.14159 * ");
    assert_eq!(client.inline_text_invoked(CIRCLE_URI, 5, character).as_deref(), Some("radius ** 2"), "the server's answer, slow");
    bodies.recv_timeout(Duration::from_secs(5)).expect("the first job's request");
    let before = backend_stats(&mut client);
    assert!(before["firstPieceMs"].as_f64().unwrap() > 300.0, "{before}");
    let character = client.type_text(CIRCLE_URI, 5, character, "(");
    let suggestion = client.inline_text_invoked(CIRCLE_URI, 5, character);
    let after = backend_stats(&mut client);
    assert!(after["fallbackJobs"].as_u64().unwrap() >= 1 && after["usingFallback"] == true, "{after}");
    assert!(bodies.try_recv().is_err(), "no request to the slow server meanwhile: {after}");
    assert!(suggestion.is_some_and(|text| text.contains("radius")), "the embedded model answers: {after}");
    client.shutdown();
}
