//! The transport under bad input, over stdio with the real binary: a message that cannot be
//! used is answered with an error and the session goes on; exit codes follow the protocol.
//! No model is needed (a model path that does not exist keeps the engine out of the way).

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::lsp::{framed, RawServer};

struct RawClient {
    server: RawServer,
}

impl RawClient {
    fn start() -> RawClient {
        let mut client = RawClient { server: RawServer::start("info", &[]) };
        client.send_json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "capabilities": {}, "initializationOptions": {"model": "/nonexistent/transport-test.gguf"}}}));
        assert!(client.answer(0)["result"]["capabilities"].is_object());
        client.send_json(&json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        client
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.server.send_raw(bytes);
    }

    fn send_json(&mut self, message: &Value) {
        self.server.send_json(message);
    }

    fn answer(&mut self, id: impl Into<Value>) -> Value {
        self.server.answer(id, Duration::from_secs(30))
    }

    fn stats(&mut self, id: i64) -> Value {
        self.send_json(&json!({"jsonrpc": "2.0", "id": id, "method": "ghostline/stats", "params": {}}));
        self.answer(id)
    }

    fn wait_exit(self) -> i32 {
        let RawServer { mut child, stdin, .. } = self.server;
        drop(stdin);
        let status = child.wait().unwrap();
        status.code().expect("exited by itself")
    }
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
