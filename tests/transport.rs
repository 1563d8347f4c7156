//! The transport under bad input, over stdio with the real binary: a message that cannot be
//! used is answered with an error and the session goes on; exit codes follow the protocol.
//! No model is needed (a model path that does not exist keeps the engine out of the way).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::{json, Value};

struct RawClient {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
}

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length: ") {
            length = value.parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length?];
    reader.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).expect("the server writes JSON"))
}

impl RawClient {
    fn start() -> RawClient {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ghostline"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        let mut client = RawClient { child, stdin, incoming };
        client.send_json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "capabilities": {}, "initializationOptions": {"model": "/nonexistent/transport-test.gguf"}}}));
        assert!(client.answer(0)["result"]["capabilities"].is_object());
        client.send_json(&json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        client
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send_json(&mut self, message: &Value) {
        let body = message.to_string();
        self.send_raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    /// The next message that answers `id` (skipping notifications and other answers).
    fn answer(&mut self, id: impl Into<Value>) -> Value {
        let id = id.into();
        loop {
            let message = self.incoming.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no answer to id {id}"));
            if message["id"] == id && message.get("method").is_none() {
                return message;
            }
        }
    }

    fn stats(&mut self, id: i64) -> Value {
        self.send_json(&json!({"jsonrpc": "2.0", "id": id, "method": "ghostline/stats", "params": {}}));
        self.answer(id)
    }

    fn wait_exit(mut self) -> i32 {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        status.code().expect("exited by itself")
    }
}

fn framed(body: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Every malformed message of the report, each followed by a valid request: each bad one gets
/// its error answer, and every valid request after it is answered.
#[test]
fn malformed_messages_are_answered_and_the_session_goes_on() {
    let mut client = RawClient::start();
    let bad: Vec<(&str, Vec<u8>, i64, Value)> = vec![
        ("a bare number", b"Content-Length: 2\r\n\r\n42".to_vec(), -32600, Value::Null),
        ("null", b"Content-Length: 4\r\n\r\nnull".to_vec(), -32600, Value::Null),
        ("a batch", b"Content-Length: 5\r\n\r\n[1,2]".to_vec(), -32600, Value::Null),
        ("a fractional id", framed(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#), -32600, Value::Null),
        ("an id of 2^64", framed(r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"x"}"#), -32600, Value::Null),
        ("no jsonrpc field", framed(r#"{"id":7,"method":"x"}"#), -32600, json!(7)),
        ("truncated JSON", framed(r#"{"jsonrpc":"2.0","id"#), -32700, Value::Null),
        ("a length too short", format!("Content-Length: 5\r\n\r\n{}", r#"{"jsonrpc":"2.0","id":9,"method":"x"}"#).into_bytes(), -32700, Value::Null),
        ("invalid UTF-8", b"Content-Length: 3\r\n\r\n\xff\xfe{".to_vec(), -32700, Value::Null),
        ("a length that is not a number", b"Content-Length: abc\r\n\r\n{}".to_vec(), -32700, Value::Null),
        ("no Content-Length", b"Content-Type: application/vscode-jsonrpc\r\n\r\n{}".to_vec(), -32700, Value::Null),
        ("garbage", b"\x00\x01garbage\r\n".to_vec(), -32700, Value::Null),
    ];
    let mut id = 100;
    for (what, bytes, code, error_id) in bad {
        client.send_raw(&bytes);
        let error = client.answer(error_id.clone());
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        id += 1;
        let stats = client.stats(id);
        assert!(stats["result"]["engine"].is_object(), "{what}: the next request was not served: {stats}");
    }
    // Header names in any case, and headers the server does not know.
    let body = json!({"jsonrpc": "2.0", "id": 500, "method": "ghostline/stats", "params": {}}).to_string();
    client.send_raw(format!("content-length: {}\r\nX-Extra: 1\r\n\r\n{body}", body.len()).as_bytes());
    assert!(client.answer(500)["result"].is_object());
    client.send_json(&json!({"jsonrpc": "2.0", "id": 501, "method": "shutdown"}));
    client.answer(501);
    client.send_json(&json!({"jsonrpc": "2.0", "method": "exit"}));
    assert_eq!(client.wait_exit(), 0, "exit after shutdown is a clean stop");
}

#[test]
fn exit_without_shutdown_is_exit_code_1() {
    let mut client = RawClient::start();
    client.send_json(&json!({"jsonrpc": "2.0", "method": "exit"}));
    assert_eq!(client.wait_exit(), 1);
}

#[test]
fn the_end_of_input_without_shutdown_is_exit_code_1() {
    let client = RawClient::start();
    assert_eq!(client.wait_exit(), 1);
}
