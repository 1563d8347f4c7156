//! The peer: llama.cpp's `llama-server`, driven through `/infill` the way llama.vim drives it.
//! A plain HTTP/1.1 client over a TCP socket on 127.0.0.1 (one connection per request).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where `benches/build-peer.sh` puts the peer, unless GHOSTLINE_PEER_BIN names a folder.
pub fn peer_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GHOSTLINE_PEER_BIN") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("GHOSTLINE_CACHE_DIR").map(PathBuf::from).or_else(|| dirs::cache_dir().map(|dir| dir.join("ghostline")))?;
    let dir = cache.join("peer/build/bin");
    dir.join("llama-server").exists().then_some(dir)
}

pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|pair| pair == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..end]).split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        body = &body[end + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
    out
}

/// One request on a fresh connection; `body` None sends a GET.
pub fn http(port: u16, path: &str, body: Option<&str>, timeout: Duration) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let request = match body {
        Some(body) => format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    };
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = &raw[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_vec() };
    Ok(HttpResponse { status, body })
}

pub struct PeerServer {
    child: Child,
}

impl PeerServer {
    /// Starts `llama-server` with the settings llama.vim recommends for FIM and waits until the
    /// model is loaded: `slots` parallel slots (`-np`) of 4,096 tokens each.
    pub fn start(bin_dir: &Path, model: &Path, threads: usize, port: u16, slots: usize) -> Result<PeerServer, String> {
        let child = Command::new(bin_dir.join("llama-server"))
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", &threads.to_string()])
            .args(["-c", &(4096 * slots).to_string(), "-np", &slots.to_string()])
            .args(["-b", "1024", "-ub", "1024", "--cache-reuse", "256", "--no-webui"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start llama-server: {err}"))?;
        let mut server = PeerServer { child };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("llama-server exited while loading: {status}"));
            }
            if http(port, "/health", None, Duration::from_secs(2)).is_ok_and(|response| response.status == 200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("llama-server did not become healthy within 120 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What llama.vim puts around the cursor: 64 lines before, the cursor line's head as the
/// prompt, its tail and 16 lines after as the suffix. A line of only whitespace is sent as empty.
pub struct InfillContext {
    pub prefix: String,
    pub middle: String,
    pub suffix: String,
    pub indent: usize,
}

pub fn infill_context(lines: &[String], line: usize, head: &str, tail: &str) -> InfillContext {
    let before = &lines[line.saturating_sub(64)..line];
    let after = &lines[(line + 1).min(lines.len())..(line + 17).min(lines.len())];
    let whole = format!("{head}{tail}");
    let (middle, tail, indent) = if whole.trim().is_empty() {
        (String::new(), String::new(), 0)
    } else {
        (head.to_string(), tail.to_string(), whole.len() - whole.trim_start().len())
    };
    InfillContext {
        prefix: format!("{}\n", before.join("\n")),
        middle,
        suffix: format!("{tail}\n{}\n", after.join("\n")),
        indent,
    }
}

/// The `/infill` request body llama.vim sends, with its extra context chunks (file name, text).
pub fn infill_body(context: &InfillContext, extra: &[(String, String)]) -> String {
    let extra: Vec<Value> = extra.iter().map(|(name, text)| json!({"filename": name, "text": text})).collect();
    json!({
        "input_prefix": context.prefix,
        "input_suffix": context.suffix,
        "input_extra": extra,
        "prompt": context.middle,
        "n_predict": 32,
        "n_indent": context.indent,
        "top_k": 40,
        "top_p": 0.90,
        "stream": false,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": true,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 250,
    })
    .to_string()
}

/// An answer of the peer.
#[derive(Debug, Clone)]
pub struct InfillAnswer {
    pub content: String,
    pub prompt_tokens: u64,
}

pub fn infill(port: u16, body: &str) -> Result<InfillAnswer, String> {
    let response = http(port, "/infill", Some(body), Duration::from_secs(120)).map_err(|err| format!("/infill: {err}"))?;
    if response.status != 200 {
        return Err(format!("/infill answered {}: {}", response.status, String::from_utf8_lossy(&response.body)));
    }
    let value: Value = serde_json::from_slice(&response.body).map_err(|err| format!("/infill sent bad JSON: {err}"))?;
    Ok(InfillAnswer {
        content: value["content"].as_str().unwrap_or_default().to_string(),
        prompt_tokens: value["timings"]["prompt_n"].as_u64().unwrap_or(0),
    })
}

/// What llama.vim would show for an answer at a line: trailing empty lines dropped, leading
/// whitespace of a whitespace-only line trimmed, nothing when it only repeats the next line.
pub fn rendered(content: &str, line_head: &str, next_nonblank_line: Option<&str>) -> Option<String> {
    let mut lines: Vec<&str> = content.split('\n').collect();
    while lines.len() > 1 && lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    let mut first = lines[0].to_string();
    if line_head.trim().is_empty() {
        let lead = (first.len() - first.trim_start().len()).min(line_head.len());
        first = first[lead..].to_string();
    }
    if lines.len() == 1 && next_nonblank_line.is_some_and(|next| format!("{line_head}{first}") == next) {
        return None;
    }
    lines[0] = &first;
    let text = lines.join("\n");
    (!text.trim().is_empty()).then_some(text)
}

/// llama.vim's client-side cache: answers by the cursor line's head (the rest of the context is
/// fixed within a case), and the typed-ahead lookup up to 128 characters back.
#[derive(Default)]
pub struct AnswerCache {
    answers: std::collections::HashMap<String, String>,
}

impl AnswerCache {
    pub fn insert(&mut self, head: &str, content: String) {
        self.answers.insert(head.to_string(), content);
    }

    pub fn contains(&self, head: &str) -> bool {
        self.answers.contains_key(head)
    }

    /// The cached answer for `head`, or the rest of one cached a few characters back whose
    /// text agrees with what was typed since; `typed_ahead` is true for the latter.
    pub fn lookup(&self, head: &str) -> Option<(String, bool)> {
        if let Some(content) = self.answers.get(head) {
            return Some((content.clone(), false));
        }
        let boundaries: Vec<usize> = head.char_indices().map(|(idx, _)| idx).rev().take(128).collect();
        for start in boundaries {
            let (base, typed) = head.split_at(start);
            if let Some(content) = self.answers.get(base) {
                if let Some(rest) = content.strip_prefix(typed) {
                    if !rest.is_empty() {
                        return Some((rest.to_string(), true));
                    }
                }
            }
        }
        None
    }
}
