//! A minimal LSP client that runs the real `ghostline` binary over stdio, as an editor would:
//! framed JSON-RPC, requests with ids, notifications, and answers to the server's own requests.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct LspClient {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: i64,
    responses: HashMap<i64, Value>,
    pub notifications: VecDeque<Value>,
    /// The version of the latest change sent, per document URI: each document counts its own
    /// versions, and the server rejects a change whose version goes back.
    versions: HashMap<String, i32>,
}

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut content_length = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some(length) = header.strip_prefix("Content-Length: ") {
            content_length = length.parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; content_length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// The server over stdio with nothing between: bytes go in as they are, and every message it
/// writes comes out of `incoming` (for tests of bad input and of raw traffic).
pub struct RawServer {
    pub child: Child,
    pub stdin: ChildStdin,
    pub incoming: Receiver<Value>,
}

impl RawServer {
    /// Starts `ghostline serve` with the given `GHOSTLINE_LOG` filter and extra environment.
    pub fn start(log_filter: &str, env: &[(&str, &str)]) -> RawServer {
        Self::start_with_args(log_filter, env, &[])
    }

    /// Starts `ghostline serve` with extra command-line arguments (`--log-file PATH`).
    pub fn start_with_args(log_filter: &str, env: &[(&str, &str)], args: &[&str]) -> RawServer {
        Self::start_program(std::path::Path::new(env!("CARGO_BIN_EXE_ghostline")), log_filter, env, args)
    }

    /// Starts another build of Ghostline (a benchmark's baseline) as `start_with_args` does.
    pub fn start_program(program: &std::path::Path, log_filter: &str, env: &[(&str, &str)], args: &[&str]) -> RawServer {
        let mut child = Command::new(program)
            .arg("serve")
            .args(args)
            .env("GHOSTLINE_LOG", log_filter)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("GHOSTLINE_TEST_STDERR").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("the server starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(message) = read_message(&mut reader) {
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        RawServer { child, stdin, incoming }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).expect("the server reads");
        self.stdin.flush().expect("the server reads");
    }

    pub fn send_json(&mut self, message: &Value) {
        self.send_raw(&framed(&message.to_string()));
    }

    /// The next message that answers `id`, skipping notifications, the server's own requests
    /// and other answers.
    pub fn answer(&mut self, id: impl Into<Value>, timeout: Duration) -> Value {
        let id = id.into();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.incoming.recv_timeout(left).unwrap_or_else(|_| panic!("no answer to id {id} within {timeout:?}"));
            if message["id"] == id && message.get("method").is_none() {
                return message;
            }
        }
    }
}

/// A body framed for the wire with its `Content-Length` header.
pub fn framed(body: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

impl LspClient {
    /// Starts the server (logging at debug level) and completes `initialize`/`initialized`.
    pub fn start(initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        Self::start_logging("debug", initialization_options, capabilities)
    }

    /// Starts the server with the given `GHOSTLINE_LOG` filter and completes
    /// `initialize`/`initialized`.
    pub fn start_logging(log_filter: &str, initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        Self::start_with_env(log_filter, &[], initialization_options, capabilities)
    }

    /// Starts the server with extra environment variables and completes `initialize`/`initialized`.
    pub fn start_with_env(log_filter: &str, env: &[(&str, &str)], initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        Self::start_with_args(log_filter, env, &[], initialization_options, capabilities)
    }

    /// Starts the server with its log written to `log_file` (at `log_filter`).
    pub fn start_with_log_file(log_filter: &str, log_file: &std::path::Path, initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        Self::start_with_args(log_filter, &[], &["--log-file", log_file.to_str().expect("a UTF-8 path")], initialization_options, capabilities)
    }

    fn start_with_args(log_filter: &str, env: &[(&str, &str)], args: &[&str], initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        Self::start_program(std::path::Path::new(env!("CARGO_BIN_EXE_ghostline")), log_filter, env, args, initialization_options, capabilities)
    }

    /// Starts another build of Ghostline (a benchmark's baseline) and completes `initialize`.
    pub fn start_program(program: &std::path::Path, log_filter: &str, env: &[(&str, &str)], args: &[&str], initialization_options: Value, capabilities: Value) -> (LspClient, Value) {
        let RawServer { child, stdin, incoming } = RawServer::start_program(program, log_filter, env, args);
        let mut client = LspClient { child, stdin, incoming, next_id: 0, responses: HashMap::new(), notifications: VecDeque::new(), versions: HashMap::new() };
        let result = client.request_ok(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": capabilities, "initializationOptions": initialization_options}),
        );
        client.notify("initialized", json!({}));
        (client, result)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The version of the latest change sent for `uri` (1 after `open`).
    pub fn version(&self, uri: &str) -> i32 {
        *self.versions.get(uri).unwrap_or_else(|| panic!("{uri} was never opened by this client"))
    }

    fn send(&mut self, message: &Value) {
        self.stdin.write_all(&framed(&message.to_string())).unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Reads one incoming message, sorting it into responses and notifications and answering
    /// the server's requests. Returns false on timeout.
    fn pump(&mut self, timeout: Duration) -> bool {
        match self.incoming.recv_timeout(timeout) {
            Ok(message) => {
                if message.get("method").is_some() && message.get("id").is_some() {
                    let id = message["id"].clone();
                    self.send(&json!({"jsonrpc": "2.0", "id": id, "result": null}));
                    self.notifications.push_back(message);
                } else if message.get("method").is_some() {
                    self.notifications.push_back(message);
                } else if let Some(id) = message.get("id").and_then(Value::as_i64) {
                    self.responses.insert(id, message);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed its stdout"),
        }
    }

    /// The whole response message (with `result` or `error`).
    pub fn response(&mut self, id: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(response) = self.responses.remove(&id) {
                return response;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no response to request {id} within {timeout:?}");
            self.pump(left);
        }
    }

    /// The responses received and not yet taken by `response`, by id.
    pub fn responses_so_far(&self) -> &HashMap<i64, Value> {
        &self.responses
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.response(id, Duration::from_secs(60))
    }

    pub fn request_ok(&mut self, method: &str, params: Value) -> Value {
        let response = self.request(method, params);
        assert!(response.get("error").is_none(), "{method} failed: {response}");
        response["result"].clone()
    }

    /// Waits for a notification of `method` matching `accept`, removing it from the queue.
    pub fn wait_notification(&mut self, method: &str, timeout: Duration, accept: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(idx) = self.notifications.iter().position(|message| message["method"] == method && accept(&message["params"])) {
                return self.notifications.remove(idx);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.pump(left);
        }
    }

    /// Polls `ghostline/stats` until the engine is ready (or failed); returns the stats.
    pub fn wait_engine(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stats = self.request_ok("ghostline/stats", json!(null));
            let state = stats["engine"]["state"].as_str().unwrap_or_default().to_string();
            if state == "ready" || state == "failed" {
                return stats;
            }
            assert!(Instant::now() < deadline, "engine not ready: {stats}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `ghostline/stats` until `done` holds for them, and returns them; not within
    /// `timeout` is a failure (`what` says what was awaited).
    pub fn wait_stats(&mut self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.request_ok("ghostline/stats", json!(null));
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "{what} within {timeout:?}: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `ghostline/stats` until every job the server started has ended, idle-time work
    /// included, and returns the stats. Idle must be seen twice in a row, since idle-time work
    /// starts just after a job ends. A server still busy after two minutes is a failure: a test
    /// that went on would judge a state that is not the one it waited for.
    pub fn wait_idle(&mut self) -> Value {
        let timeout = Duration::from_secs(120);
        let deadline = Instant::now() + timeout;
        let mut idle_checks_in_a_row = 0;
        loop {
            let stats = self.request_ok("ghostline/stats", json!(null));
            let counters = &stats["counters"];
            let started = counters["jobsStarted"].as_u64().unwrap() + counters["prefetchJobs"].as_u64().unwrap();
            let idle = counters["jobsEnded"].as_u64().unwrap() >= started && stats["idleWork"] == 0;
            idle_checks_in_a_row = if idle { idle_checks_in_a_row + 1 } else { 0 };
            if idle_checks_in_a_row == 2 {
                return stats;
            }
            assert!(Instant::now() < deadline, "the server is still busy after {timeout:?}: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn open(&mut self, uri: &str, language_id: &str, text: &str) {
        self.versions.insert(uri.to_string(), 1);
        self.notify("textDocument/didOpen", json!({"textDocument": {"uri": uri, "languageId": language_id, "version": 1, "text": text}}));
    }

    /// Inserts `text` at (line, character), as one incremental change.
    pub fn insert(&mut self, uri: &str, line: u32, character: u32, text: &str) {
        self.replace(uri, (line, character), (line, character), text);
    }

    /// Replaces the text from `start` to `end` (line, character) with `text`, as one incremental
    /// change.
    pub fn replace(&mut self, uri: &str, start: (u32, u32), end: (u32, u32), text: &str) {
        let version = self.versions.get_mut(uri).unwrap_or_else(|| panic!("a change to {uri}, which this client never opened"));
        *version += 1;
        let version = *version;
        let range = json!({"start": {"line": start.0, "character": start.1}, "end": {"line": end.0, "character": end.1}});
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"range": range, "text": text}]}),
        );
    }

    /// Types `text` one character at a time at (line, character); returns the new character
    /// (in UTF-16 units), assuming no line break is typed.
    pub fn type_text(&mut self, uri: &str, line: u32, mut character: u32, text: &str) -> u32 {
        for ch in text.chars() {
            self.insert(uri, line, character, &ch.to_string());
            character += ch.len_utf16() as u32;
        }
        character
    }

    pub fn inline_params(uri: &str, line: u32, character: u32) -> Value {
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 2}})
    }

    pub fn inline_completion(&mut self, uri: &str, line: u32, character: u32) -> Value {
        self.request("textDocument/inlineCompletion", Self::inline_params(uri, line, character))
    }

    /// `textDocument/completion` at (line, character); the whole response message.
    pub fn completion(&mut self, uri: &str, line: u32, character: u32) -> Value {
        self.request("textDocument/completion", json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}))
    }

    /// The text of the first inline item, or None for an empty answer.
    pub fn inline_text(&mut self, uri: &str, line: u32, character: u32) -> Option<String> {
        let response = self.inline_completion(uri, line, character);
        assert!(response.get("error").is_none(), "inline completion failed: {response}");
        response["result"]["items"].get(0).and_then(|item| item["insertText"].as_str()).map(str::to_string)
    }

    /// The suggestion's text of an inline completion asked on purpose (an invoked trigger: the
    /// whole suggestion, where an automatic one gets its first line as soon as it is complete).
    pub fn inline_text_invoked(&mut self, uri: &str, line: u32, character: u32) -> Option<String> {
        let mut params = Self::inline_params(uri, line, character);
        params["context"]["triggerKind"] = json!(1);
        let response = self.request("textDocument/inlineCompletion", params);
        assert!(response.get("error").is_none(), "inline completion failed: {response}");
        response["result"]["items"].get(0).and_then(|item| item["insertText"].as_str()).map(str::to_string)
    }

    pub fn shutdown(mut self) {
        let _ = self.request("shutdown", json!(null));
        self.notify("exit", json!(null));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not exit after shutdown/exit");
    }
}

impl Drop for LspClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
