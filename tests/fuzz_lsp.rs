//! An LSP-level fuzzer over stdio with the real binary and the tiny model: valid traffic (opens,
//! incremental and full-text edits with random ranges, UTF-16 positions past emoji and CJK, CRLF,
//! completion and inline-completion requests, stats, unknown methods) mixed with malformed
//! messages (broken framing, bad JSON, bad ids, batches, random bytes). Every request with an id
//! must be answered exactly once, the server must stay alive, and it must still complete
//! afterwards.
//!
//! GHOSTLINE_FUZZ_MESSAGES (default 10000) and GHOSTLINE_FUZZ_SEED (default 1) choose the run.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::lsp::{framed, RawServer};
use common::{model_path, TINY_MODEL};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const URIS: [&str; 3] = ["file:///fuzz/a.py", "file:///fuzz/b.rs", "file:///fuzz/c.txt"];
const PIECES: [&str; 12] = ["x", "def f(a):\n    ", "é", "😀", "漢字", "\r\n", "\n", "    return a + 1\n", "}", "\"", "", "fn main() {\n"];

fn malformed(rng: &mut Rng, counter: u64) -> Vec<u8> {
    match rng.below(12) {
        0 => b"Content-Length: 2\r\n\r\n42".to_vec(),
        1 => b"Content-Length: 4\r\n\r\nnull".to_vec(),
        2 => framed(r#"[{"jsonrpc":"2.0","id":1,"method":"ghostline/stats"}]"#),
        3 => framed(r#"{"jsonrpc":"2.0","id":1.5,"method":"ghostline/stats"}"#),
        4 => framed(&format!(r#"{{"id":"bad-{counter}","method":"ghostline/stats"}}"#)),
        5 => framed(r#"{"jsonrpc":"2.0","id":"#),
        6 => b"Content-Length: 3\r\n\r\n\xff\xfe{".to_vec(),
        7 => b"Content-Length: nope\r\n\r\n{}".to_vec(),
        8 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        9 => framed(r#"{"jsonrpc":"2.0","id":{},"method":"ghostline/stats"}"#),
        10 => format!("content-length: {}\r\nX-Unknown: yes\r\n\r\n{}", 2, "{}").into_bytes(),
        _ => framed(r#"{"jsonrpc":"2.0","method":"textDocument/didChange","params":{"textDocument":{"uri":7}}}"#),
    }
}

#[test]
fn mixed_valid_and_malformed_traffic_is_answered_and_the_server_survives() {
    let messages: u64 = std::env::var("GHOSTLINE_FUZZ_MESSAGES").ok().and_then(|value| value.parse().ok()).unwrap_or(10_000);
    let seed: u64 = std::env::var("GHOSTLINE_FUZZ_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or(1);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut server = RawServer::start("info", &[]);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"capabilities": {},
        "initializationOptions": {"model": model_path(TINY_MODEL).to_str().unwrap(), "maxWaitMs": 20, "maxTokens": 8}}});
    server.send_json(&init);
    let initialized = server.incoming.recv_timeout(Duration::from_secs(30)).expect("initialize is answered");
    assert!(initialized["result"]["capabilities"].is_object(), "{initialized}");
    server.send_raw(&framed(r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#));
    // The engine first, so edits start real jobs and requests wait for them.
    let ready_deadline = Instant::now() + Duration::from_secs(120);
    let mut probe_id = 1_000_000_000u64;
    loop {
        server.send_json(&json!({"jsonrpc": "2.0", "id": probe_id, "method": "ghostline/stats", "params": {}}));
        let stats = server.answer(probe_id, Duration::from_secs(60));
        let state = stats["result"]["engine"]["state"].clone();
        assert_ne!(state, "failed", "{stats}");
        if state == "ready" {
            break;
        }
        assert!(Instant::now() < ready_deadline, "the engine did not load: {stats}");
        probe_id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    for (uri, language) in URIS.iter().zip(["python", "rust", "plaintext"]) {
        let open = json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": language, "version": 1, "text": "def f(a):\n    return a\n😀漢字\r\nend\n"}}});
        server.send_json(&open);
    }

    // Ids of requests sent, and of invalid-request messages whose string id must come back.
    let mut expected: HashMap<Value, &'static str> = HashMap::new();
    let mut versions = [1i64; 3];
    let mut next_id = 1u64;
    let mut malformed_sent = 0;
    for counter in 0..messages {
        let doc = rng.below(3) as usize;
        let uri = URIS[doc];
        let position = json!({"line": rng.below(8), "character": rng.below(14)});
        match rng.below(100) {
            0..=29 => {
                versions[doc] += 1;
                let end = json!({"line": position["line"].as_u64().unwrap() + rng.below(2), "character": rng.below(14)});
                let change = json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                    "textDocument": {"uri": uri, "version": versions[doc]},
                    "contentChanges": [{"range": {"start": position, "end": end}, "text": rng.pick(&PIECES)}]}});
                server.send_json(&change);
            }
            30..=33 => {
                versions[doc] += if rng.below(4) == 0 { -3 } else { 1 };
                let text: String = (0..rng.below(8)).map(|_| *rng.pick(&PIECES)).collect();
                let change = json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                    "textDocument": {"uri": uri, "version": versions[doc]}, "contentChanges": [{"text": text}]}});
                server.send_json(&change);
            }
            34..=53 => {
                let id = next_id;
                next_id += 1;
                expected.insert(json!(id), "inlineCompletion");
                let request = json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/inlineCompletion", "params": {
                    "textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 2}}});
                server.send_json(&request);
            }
            54..=63 => {
                let id = next_id;
                next_id += 1;
                expected.insert(json!(id), "completion");
                let request = json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/completion", "params": {
                    "textDocument": {"uri": uri}, "position": position}});
                server.send_json(&request);
            }
            64..=71 => {
                let id = next_id;
                next_id += 1;
                expected.insert(json!(id), "stats");
                server.send_json(&json!({"jsonrpc": "2.0", "id": id, "method": "ghostline/stats", "params": {}}));
            }
            72..=75 => {
                let id = next_id;
                next_id += 1;
                expected.insert(json!(id), "unknown method");
                server.send_json(&json!({"jsonrpc": "2.0", "id": id, "method": "fuzz/unknown", "params": {}}));
            }
            _ => {
                let bytes = malformed(&mut rng, counter);
                if bytes.windows(5).any(|window| window == b"\"bad-") {
                    expected.insert(json!(format!("bad-{counter}")), "invalid request");
                }
                malformed_sent += 1;
                server.send_raw(&bytes);
            }
        }
    }
    // A valid message after the noise; any length the noise left open ends at its header.
    let last = next_id;
    expected.insert(json!(last), "final stats");
    server.send_json(&json!({"jsonrpc": "2.0", "id": last, "method": "ghostline/stats", "params": {}}));

    let mut answered: HashMap<Value, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while expected.keys().any(|id| !answered.contains_key(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = server.incoming.recv_timeout(left) else {
            let missing: Vec<_> = expected.iter().filter(|(id, _)| !answered.contains_key(*id)).take(10).collect();
            panic!("{} requests never answered, for example {missing:?}", expected.len() - answered.len());
        };
        if message.get("method").is_some() {
            continue; // a notification or a request from the server
        }
        if !message["id"].is_null() {
            *answered.entry(message["id"].clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = answered.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    let unexpected: Vec<_> = answered.keys().filter(|id| !expected.contains_key(*id)).collect();
    assert!(unexpected.is_empty(), "answers to ids never sent: {unexpected:?}");
    assert!(malformed_sent > messages / 10, "the mix holds malformed messages: {malformed_sent}");
    eprintln!("{messages} messages, {malformed_sent} malformed, {} answers checked", answered.len());

    // Still completing: a fresh document, typed into, gets a non-error answer from the model.
    let id = last + 1;
    let open = json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": "file:///fuzz/final.py", "languageId": "python", "version": 1, "text": "def add(a, b):\n    return a\n"}}});
    server.send_json(&open);
    let request = json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": "file:///fuzz/final.py"}, "position": {"line": 1, "character": 12}, "context": {"triggerKind": 1}}});
    server.send_json(&request);
    let answer = server.answer(id, Duration::from_secs(60));
    assert!(answer["result"]["items"].is_array(), "{answer}");
    let stats_id = id + 100;
    server.send_json(&json!({"jsonrpc": "2.0", "id": stats_id, "method": "ghostline/stats", "params": {}}));
    let stats = server.answer(stats_id, Duration::from_secs(30))["result"].clone();
    eprintln!("counters after the fuzz: {}", stats["counters"]);
    assert!(stats["counters"]["jobsStarted"].as_u64().unwrap() > 100, "edits started model jobs: {stats}");
    assert!(stats["rejectedChanges"].as_u64().unwrap() > 0, "some edits were out of range: {stats}");
    server.send_json(&json!({"jsonrpc": "2.0", "id": id + 1, "method": "shutdown"}));
    server.answer(id + 1, Duration::from_secs(30));
    server.send_raw(&framed(r#"{"jsonrpc":"2.0","method":"exit"}"#));
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean exit after shutdown");
}
