//! Typing replay: Ghostline against llama.cpp's `llama-server` on the same model, same cases,
//! same run.
//!
//! Each case opens a real source file, blanks one line after its indentation and types it back,
//! one keystroke at a time, as an editor would: Ghostline over stdio (didChange, then
//! inlineCompletion; with the human cadence as a client that takes `ghostline/suggestionReady`),
//! the peer through `/infill` as llama.vim drives it. A simulated user presses Tab to accept the
//! suggestion's next word when it is right. Servers take turns case by case, so machine noise
//! hits all of them.
//!
//! `cargo bench --bench replay -- [--cases N] [--seed S] [--cadence human|wait]
//!  [--interval-ms MS] [--jitter-ms MS] [--model NAME|PATH] [--threads N] [--languages a,b]
//!  [--no-peer] [--regression] [--variant JSON]... [--baseline BINARY] [--reading-ms MS] [--siblings N]
//!  [--max-keys N] [--settings JSON] [--revisit] [--rest-ms MS] [--backend-peer]
//!  [--load 1,2,4,8] [--load-cases N] [--out DIR] [--corpus unseen|local] [--packages N]
//!  [--min-shown SHARE]`
//!
//! Cases come from `--corpus unseen` (the default of a measured run, `replay/unseen.rs`):
//! `--packages N` packages per registry (PyPI, crates.io, npm, default 3) picked by the seed,
//! a new seed each run unless `--seed` is given, lines inside blocks anywhere in files of
//! 300-3,000 lines; or `--corpus local` (the quick check's), code already on the machine.
//! Each case starts with an arrival: the editor asks at the blanked line (not counted as a
//! keystroke; its time to a first suggestion is the cold-start figure), and the user reads until
//! the server is idle (or for `--reading-ms`, a fixed reading time, as users do not wait for an
//! idle server), then types. Cadences: `human` types a key every interval ± jitter (a fixed seed), and a suggestion counts
//! when it arrives before the next key; `wait` types the next key as soon as the current one has
//! its answer (Ghostline then runs as a client without the ready notification). `--regression`
//! adds a Ghostline run with typed-ahead reuse switched off, which must come out visibly worse,
//! and fails the run when Ghostline's share of keys with a suggestion is more than 10 points
//! below the README's headline figure (the lowest of its seeds, `replay/headline.json`; run it
//! as the headline was measured: `--reading-ms 2000`, the unseen corpus; `--min-shown SHARE`
//! sets another floor);
//! `--baseline BINARY` adds a run of another build of Ghostline (an earlier commit's) with the
//! same settings, so a change is compared on the same cases in the same run.
//! Each `--variant JSON` adds a Ghostline run with those settings on top (to compare prompt
//! layouts and features). `--siblings N` opens the N files next to each case's file (same folder
//! and extension, nearest by name) before it, as a user with related files open: Ghostline hears
//! didOpen, the peer gets their first 32 lines as `input_extra` chunks (a ring of 16, as
//! llama.vim keeps on entering a buffer).
//! `--revisit` is the arrival-heavy mode: files in pairs, each visited twice (A, B, back to A,
//! back to B), the return at another line near the first (the same place when one is there);
//! Ghostline keeps the documents open, as an editor does, and the table adds the cold start of
//! first visits and of returns. `--rest-ms MS`: on arriving, Ghostline's client sends
//! `ghostline/cursorRest` at the line and makes the arrival request MS later (the user looked
//! before starting, and the editor said where the cursor rests); the cold start is timed from
//! that request, and the peer arrives as usual. `--backend-peer` adds a Ghostline run whose
//! backend is the peer's own llama-server (`/completion`): Ghostline's keystroke logic in front
//! of the same server and model that llama.vim's flow uses, in the same run (its CPU figure is
//! Ghostline's process only; the peer's figure then holds the server's work for both).
//! `--load 1,2,4,8` is the team mode instead: for each number N, N simulated editors type at the
//! same time (human cadence, each its own `--load-cases` cases, starts spread over a second)
//! against one llama-server started with N slots (`-np N`, 4,096 tokens each), first through
//! llama.vim's flow straight to the server, then each editor through its own Ghostline in front
//! of a fresh server of the same kind; the table gives, per N and side, the share of keys with a
//! suggestion before the next key, correct characters per keystroke, time to suggestion and
//! cold start (`load.json`).
//! Under `cargo test` it runs a quick check on the tiny model: a few keystrokes, output well formed.

#[allow(dead_code)]
#[path = "../tests/common/lsp.rs"]
mod lsp;

#[path = "replay/corpus.rs"]
mod corpus;
#[path = "replay/metrics.rs"]
mod metrics;
#[path = "replay/peer.rs"]
mod peer;
#[path = "replay/unseen.rs"]
mod unseen;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use corpus::{Case, Rng};
use lsp::LspClient;
use metrics::{Keystroke, ServerTotals};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cadence {
    Human { interval_ms: f64, jitter_ms: f64 },
    Wait,
}

struct Options {
    cases: usize,
    seed: u64,
    cadence: Cadence,
    model: String,
    threads: usize,
    languages: Vec<String>,
    peer: bool,
    regression: bool,
    /// Settings of extra Ghostline runs, compared in the same run.
    variants: Vec<Value>,
    /// Another build of Ghostline to run on the same cases.
    baseline: Option<PathBuf>,
    /// The user's reading time between arriving at a line and the first key (None: until the
    /// server is idle).
    reading: Option<Duration>,
    siblings: usize,
    /// Visit files in pairs and come back to each (`corpus::with_returns`).
    revisit: bool,
    /// Ghostline's client tells where the cursor rests on arriving, and asks this much later.
    rest: Option<Duration>,
    /// A Ghostline run with the peer's server as its backend.
    backend_peer: bool,
    /// `--load`: numbers of simulated editors sharing one llama-server, and cases per editor.
    load: Vec<usize>,
    load_cases: usize,
    max_keys: Option<usize>,
    /// Extra Ghostline settings (a JSON object), for trying a variant.
    settings: Value,
    out: PathBuf,
    quick: bool,
    /// Where cases come from: packages fetched by seed (`unseen`, the default of a measured run)
    /// or the code already on the machine (`local`, the quick check's).
    corpus: CorpusKind,
    /// Packages per registry for the unseen corpus.
    packages: usize,
    /// Fail the run when Ghostline's share of keys with a suggestion is below this (0-1).
    min_shown: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CorpusKind {
    Unseen,
    Local,
}

fn parse_options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = !args.iter().any(|arg| arg == "--bench");
    let value = |name: &str| args.iter().position(|arg| arg == name).and_then(|idx| args.get(idx + 1)).cloned();
    let corpus = match value("--corpus").as_deref() {
        Some("unseen") => CorpusKind::Unseen,
        Some("local") => CorpusKind::Local,
        None if quick => CorpusKind::Local,
        None => CorpusKind::Unseen,
        Some(other) => panic!("--corpus is unseen or local, not {other}"),
    };
    let number = |name: &str, default: f64| value(name).map(|text| text.parse::<f64>().unwrap_or_else(|_| panic!("{name} takes a number"))).unwrap_or(default);
    let interval_ms = number("--interval-ms", 120.0);
    let jitter_ms = number("--jitter-ms", 40.0);
    let cadence = match value("--cadence").as_deref() {
        None | Some("human") => Cadence::Human { interval_ms, jitter_ms },
        Some("wait") => Cadence::Wait,
        Some(other) => panic!("--cadence is human or wait, not {other}"),
    };
    Options {
        cases: number("--cases", if quick { 2.0 } else { 24.0 }) as usize,
        // The unseen corpus takes a new seed each run unless told (it is printed, so a run can
        // be repeated): a figure is never fitted to one set of packages.
        seed: value("--seed").map(|text| text.parse().expect("--seed takes a number")).unwrap_or_else(|| match corpus {
            CorpusKind::Unseen => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |since| since.as_secs() % 100_000),
            CorpusKind::Local => 1,
        }),
        cadence,
        model: value("--model").unwrap_or_else(|| if quick { "smollm2-135m" } else { ghostline::models::DEFAULT_MODEL }.to_string()),
        threads: number("--threads", ghostline::engine::physical_cores() as f64) as usize,
        languages: value("--languages").map(|list| list.split(',').map(str::to_string).collect()).unwrap_or_default(),
        peer: !quick && !args.iter().any(|arg| arg == "--no-peer"),
        regression: args.iter().any(|arg| arg == "--regression"),
        variants: args
            .windows(2)
            .filter(|pair| pair[0] == "--variant")
            .map(|pair| serde_json::from_str(&pair[1]).expect("--variant takes a JSON object"))
            .collect(),
        baseline: value("--baseline").map(PathBuf::from),
        // `--load` reads for 2 s unless told: its editors never wait until the server is idle.
        reading: value("--reading-ms")
            .map(|text| Duration::from_millis(text.parse().expect("--reading-ms takes milliseconds")))
            .or_else(|| args.iter().any(|arg| arg == "--load").then_some(Duration::from_secs(2))),
        siblings: number("--siblings", 0.0) as usize,
        revisit: args.iter().any(|arg| arg == "--revisit"),
        backend_peer: args.iter().any(|arg| arg == "--backend-peer"),
        rest: value("--rest-ms").map(|text| Duration::from_millis(text.parse().expect("--rest-ms takes milliseconds"))),
        load: value("--load").map(|list| list.split(',').map(|count| count.trim().parse().expect("--load takes numbers of editors, as 1,2,4,8")).collect()).unwrap_or_default(),
        load_cases: number("--load-cases", 3.0) as usize,
        max_keys: value("--max-keys").map(|text| text.parse().expect("--max-keys takes a number")).or(quick.then_some(6)),
        settings: value("--settings").map(|text| serde_json::from_str(&text).expect("--settings takes a JSON object")).unwrap_or_else(|| json!({})),
        out: value("--out").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/replay")),
        quick,
        corpus,
        packages: number("--packages", 3.0) as usize,
        // `--regression` guards the README's headline figure (`replay/headline.json`): a share of
        // keys with a suggestion more than 10 points below it fails the run.
        min_shown: value("--min-shown").map(|text| text.parse().expect("--min-shown takes a share, 0-1")).or_else(|| {
            args.iter().any(|arg| arg == "--regression").then(|| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/replay/headline.json");
                let headline: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("benches/replay/headline.json is readable")).expect("headline.json is JSON");
                headline["shareWithSuggestion"]["min"].as_f64().expect("headline.json has shareWithSuggestion.min") - 0.10
            })
        }),
    }
}

/// The simulated user: types the line's characters, or presses Tab to take the suggestion's
/// next word when that word is what they were about to type.
struct Typist {
    content: Vec<char>,
    position: usize,
}

/// The next word of a suggestion: its leading whitespace, then a run of word characters or a
/// run of other non-space characters.
fn next_word(suggestion: &str) -> String {
    let first_line = suggestion.split('\n').next().unwrap_or_default();
    let mut chars = first_line.chars().peekable();
    let mut word = String::new();
    while let Some(ch) = chars.next_if(|ch| ch.is_whitespace()) {
        word.push(ch);
    }
    let is_word = |ch: &char| ch.is_alphanumeric() || *ch == '_';
    match chars.peek() {
        Some(ch) if is_word(ch) => word.extend(std::iter::from_fn(|| chars.next_if(is_word))),
        Some(_) => word.extend(std::iter::from_fn(|| chars.next_if(|ch| !is_word(ch) && !ch.is_whitespace()))),
        None => {}
    }
    word
}

impl Typist {
    fn new(content: &str) -> Typist {
        Typist { content: content.chars().collect(), position: 0 }
    }

    fn done(&self) -> bool {
        self.position >= self.content.len()
    }

    fn rest(&self) -> String {
        self.content[self.position..].iter().collect()
    }

    fn typed(&self) -> String {
        self.content[..self.position].iter().collect()
    }

    /// The text of the next keystroke and, for a Tab, how many characters it accepts.
    fn next(&mut self, shown: Option<&str>) -> (String, Option<usize>) {
        let rest = self.rest();
        if let Some(word) = shown.map(next_word) {
            let length = word.chars().count();
            if length >= 2 && rest.starts_with(&word) {
                self.position += length;
                return (word, Some(length));
            }
        }
        self.position += 1;
        (rest.chars().next().map(String::from).unwrap_or_default(), None)
    }
}

/// Characters of the suggestion's first line that equal the real rest of the line.
fn correct_chars(suggestion: Option<&str>, rest: &str) -> usize {
    let Some(suggestion) = suggestion else { return 0 };
    let first_line = suggestion.split('\n').next().unwrap_or_default();
    first_line.chars().zip(rest.chars()).take_while(|(a, b)| a == b).count()
}

fn intervals(cadence: Cadence, seed: u64, case_idx: usize) -> impl FnMut() -> Option<Duration> {
    let mut rng = Rng::new(seed ^ (case_idx as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    move || match cadence {
        Cadence::Human { interval_ms, jitter_ms } => Some(Duration::from_secs_f64((interval_ms + jitter_ms * rng.symmetric()).max(1.0) / 1000.0)),
        Cadence::Wait => None,
    }
}

/// GHOSTLINE_REPLAY_TRACE=1 prints every keystroke to stderr.
fn trace() -> bool {
    std::env::var_os("GHOSTLINE_REPLAY_TRACE").is_some()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system, all threads) and peak RSS in MiB of a process.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (ticks / clock_ticks(), peak_kib / 1024.0)
}

/// The start of a case: the editor asks at the blanked line as the user arrives there (as
/// llama.vim and Neovim do on entering insert mode), and the user reads until the server is idle.
#[derive(Debug, Clone)]
struct Arrival {
    language: &'static str,
    /// From the arrival request to the first suggestion there (None: none came).
    first_suggestion_ms: Option<f64>,
    /// A return to a file typed earlier in the run (`--revisit`).
    revisit: bool,
}

trait Driver {
    fn name(&self) -> String;
    /// Runs one case: the arrival, then `reading` (None: until the server is idle), then the
    /// keystrokes.
    fn run_case(&mut self, case: &Case, case_idx: usize, reading: Option<Duration>, next_interval: &mut dyn FnMut() -> Option<Duration>) -> (Arrival, Vec<Keystroke>);
    /// The user opens these files (name, text) before the case's file.
    fn open_siblings(&mut self, case_idx: usize, siblings: &[(String, String)]);
    /// Totals since the driver was ready.
    fn totals(&mut self) -> ServerTotals;
}

struct GhostlineDriver {
    name: String,
    client: LspClient,
    notified: bool,
    cpu_at_start: f64,
    /// Inline completion requests sent, to hold against the answers the server counted.
    requests_sent: u64,
    /// `--revisit`: documents stay open between cases, one per file.
    keep_open: bool,
    open_files: std::collections::HashSet<String>,
    /// `--rest-ms`: the client sends `ghostline/cursorRest` on arriving and asks this much later.
    rest: Option<Duration>,
}

impl GhostlineDriver {
    fn start(name: &str, model: &Path, threads: usize, cadence: Cadence, typed_ahead: bool, extra: &Value) -> GhostlineDriver {
        Self::start_program(name, Path::new(env!("CARGO_BIN_EXE_ghostline")), model, threads, cadence, typed_ahead, extra)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_program(name: &str, program: &Path, model: &Path, threads: usize, cadence: Cadence, typed_ahead: bool, extra: &Value) -> GhostlineDriver {
        let notified = matches!(cadence, Cadence::Human { .. });
        let mut settings = json!({
            "model": model.to_string_lossy(),
            "threads": threads,
            "suggestionReadyNotification": notified,
            "maxWaitMs": 60000,
            "experimental": {"typedAhead": typed_ahead},
        });
        for (key, value) in extra.as_object().into_iter().flatten() {
            settings[key] = value.clone();
        }
        let (mut client, _) = LspClient::start_program(program, "warn", &[], &[], settings, json!({"general": {"positionEncodings": ["utf-16"]}}));
        let stats = client.wait_engine();
        assert_eq!(stats["engine"]["state"], "ready", "Ghostline's engine did not start: {stats}");
        let cpu_at_start = process_usage(client.pid()).0;
        GhostlineDriver { name: name.to_string(), client, notified, cpu_at_start, requests_sent: 0, keep_open: false, open_files: Default::default(), rest: None }
    }

    fn stats(&mut self) -> Value {
        self.client.request_ok("ghostline/stats", json!(null))
    }

    fn inline_completion(&mut self, uri: &str, line: u32, column: u32) -> Value {
        self.requests_sent += 1;
        self.client.inline_completion(uri, line, column)
    }

    fn suggestion_of(response: &Value) -> Option<String> {
        let text = response["result"]["items"].get(0)?["insertText"].as_str()?;
        (!text.trim().is_empty()).then(|| text.to_string())
    }
}

impl Driver for GhostlineDriver {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open_siblings(&mut self, case_idx: usize, siblings: &[(String, String)]) {
        for (name, text) in siblings {
            let language = if name.ends_with(".py") { "python" } else if name.ends_with(".rs") { "rust" } else { "javascript" };
            self.client.open(&format!("file:///replay/{case_idx}/{name}"), language, text);
        }
    }

    fn run_case(&mut self, case: &Case, case_idx: usize, reading: Option<Duration>, next_interval: &mut dyn FnMut() -> Option<Duration>) -> (Arrival, Vec<Keystroke>) {
        let file_name = case.path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let uri = if self.keep_open { format!("file:///replay/{}", case.path.display()) } else { format!("file:///replay/{case_idx}/{file_name}") };
        if self.open_files.contains(&uri) {
            // Back in a file left open: the user goes to the line and clears it.
            let line = case.line as u32;
            let full = case.lines[case.line].encode_utf16().count() as u32;
            self.client.replace(&uri, (line, case.indent.encode_utf16().count() as u32), (line, full), "");
        } else {
            self.client.open(&uri, case.language, &case.blanked_text());
            if self.keep_open {
                self.open_files.insert(uri.clone());
            }
        }
        let line = case.line as u32;
        let mut column = case.indent.encode_utf16().count() as u32;
        if let Some(rest) = self.rest {
            // The editor says where the cursor rests, and the user looks for this long before
            // the editor asks (on entering insert mode, say).
            self.client.notify("ghostline/cursorRest", json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": column}}));
            std::thread::sleep(rest);
        }
        let arrival_start = Instant::now();
        let response = self.inline_completion(&uri, line, column);
        let mut first_suggestion_ms = Self::suggestion_of(&response).map(|_| ms(arrival_start));
        let reading_until = reading.map(|reading| arrival_start + reading);
        if first_suggestion_ms.is_none() && self.notified {
            let wait = reading_until.map_or(Duration::from_secs(120), |until| until.saturating_duration_since(Instant::now()));
            let ready = self.client.wait_notification("ghostline/suggestionReady", wait, |params| params["uri"] == uri.as_str());
            if ready.is_some() && Self::suggestion_of(&self.inline_completion(&uri, line, column)).is_some() {
                first_suggestion_ms = Some(ms(arrival_start));
            }
        }
        match reading_until {
            Some(until) => std::thread::sleep(until.saturating_duration_since(Instant::now())),
            None => {
                self.client.wait_idle();
            }
        }
        let mut shown = Self::suggestion_of(&self.inline_completion(&uri, line, column));
        let arrival = Arrival { language: case.language, first_suggestion_ms, revisit: case.revisit };
        let mut typist = Typist::new(&case.content);
        let mut typed_ahead_hits = self.stats()["counters"]["typedAheadHits"].as_u64().unwrap_or(0);
        let mut keystrokes = Vec::new();
        while !typist.done() {
            let (text, accepted_word) = typist.next(shown.as_deref());
            let interval = next_interval();
            self.client.notifications.retain(|message| message["method"] != "ghostline/suggestionReady");
            let keystroke = Instant::now();
            self.client.insert(&uri, line, column, &text);
            column += text.encode_utf16().count() as u32;
            let response = self.inline_completion(&uri, line, column);
            assert!(response.get("error").is_none(), "inline completion failed: {response}");
            let response_ms = ms(keystroke);
            shown = Self::suggestion_of(&response);
            let mut suggestion_ms = shown.as_ref().map(|_| response_ms);
            if let (None, true, Some(interval)) = (&shown, self.notified, interval) {
                let version = self.client.version(&uri);
                let left = interval.saturating_sub(keystroke.elapsed());
                let ready = self.client.wait_notification("ghostline/suggestionReady", left, |params| {
                    params["uri"] == uri.as_str() && params["version"] == version && params["position"]["character"] == column
                });
                if ready.is_some() {
                    let response = self.inline_completion(&uri, line, column);
                    shown = Self::suggestion_of(&response);
                    suggestion_ms = shown.as_ref().map(|_| ms(keystroke));
                }
            }
            let hits = self.stats()["counters"]["typedAheadHits"].as_u64().unwrap_or(0);
            keystrokes.push(Keystroke {
                language: case.language,
                response_ms: Some(response_ms),
                suggestion_ms,
                typed_ahead: hits > typed_ahead_hits,
                correct_chars: correct_chars(shown.as_deref(), &typist.rest()),
                accepted_word,
            });
            typed_ahead_hits = hits;
            if trace() {
                let last = keystrokes.last().unwrap();
                eprintln!("  {} {text:?}: answer {:?} ms, suggestion {:?} ms {shown:?}", self.name, last.response_ms.map(|v| v.round()), last.suggestion_ms.map(|v| v.round()));
            }
            if let Some(interval) = interval {
                std::thread::sleep(interval.saturating_sub(keystroke.elapsed()));
            }
        }
        if !self.keep_open {
            self.client.notify("textDocument/didClose", json!({"textDocument": {"uri": uri}}));
        }
        self.client.wait_idle();
        (arrival, keystrokes)
    }

    fn totals(&mut self) -> ServerTotals {
        let stats = self.stats();
        let (cpu, rss) = process_usage(self.client.pid());
        ServerTotals {
            prompt_tokens: stats["counters"]["tokensDecoded"].as_u64().unwrap_or(0),
            cpu_seconds: cpu - self.cpu_at_start,
            peak_rss_mib: rss,
            typed_ahead_hits: stats["counters"]["typedAheadHits"].as_u64().unwrap_or(0),
            prefetch_hits: stats["counters"]["prefetchHits"].as_u64().unwrap_or(0),
            generated_tokens: stats["counters"]["tokensGenerated"].as_u64().unwrap_or(0),
            generation_ms: stats["counters"]["generationMs"].as_f64().unwrap_or(0.0),
            drafted_tokens: stats["counters"]["tokensDrafted"].as_u64().unwrap_or(0),
            accepted_draft_tokens: stats["counters"]["draftsAccepted"].as_u64().unwrap_or(0),
            restored_tokens: stats["counters"]["tokensRestored"].as_u64().unwrap_or(0),
            requests_sent: self.requests_sent,
            requests_answered: stats["counters"]["requests"].as_u64().unwrap_or(0),
        }
    }
}

/// Answers of the peer's worker thread: the line head asked for and the answer.
type PeerAnswer = (String, Result<peer::InfillAnswer, String>);

struct PeerDriver {
    /// The server this driver started (None: a server shared with other drivers, `--load`).
    server: Option<peer::PeerServer>,
    requests: mpsc::Sender<(String, String)>,
    answers: mpsc::Receiver<PeerAnswer>,
    prompt_tokens: u64,
    typed_ahead_hits: u64,
    errors: u64,
    requests_sent: u64,
    requests_answered: u64,
    cpu_at_start: f64,
    /// Extra context chunks (file name, text), oldest first.
    ring: Vec<(String, String)>,
    /// The server's port on this machine.
    port: u16,
}

impl PeerDriver {
    fn start(bin_dir: &Path, model: &Path, threads: usize) -> Result<PeerDriver, String> {
        let port = free_port();
        let server = peer::PeerServer::start(bin_dir, model, threads, port, 1)?;
        Ok(PeerDriver::connect(port, Some(server)))
    }

    /// llama.vim's flow to the server on `port`.
    fn connect(port: u16, server: Option<peer::PeerServer>) -> PeerDriver {
        let (requests, worker_requests) = mpsc::channel::<(String, String)>();
        let (worker_answers, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for (head, body) in worker_requests {
                if worker_answers.send((head, peer::infill(port, &body))).is_err() {
                    break;
                }
            }
        });
        let cpu_at_start = server.as_ref().map_or(0.0, |server| process_usage(server.pid()).0);
        PeerDriver { server, requests, answers, prompt_tokens: 0, typed_ahead_hits: 0, errors: 0, requests_sent: 0, requests_answered: 0, cpu_at_start, ring: Vec::new(), port }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port on 127.0.0.1").port()
}

impl PeerDriver {
    /// Sends an `/infill` request for the line head `head` to the worker thread.
    fn ask(&mut self, head: String, body: String) {
        self.requests_sent += 1;
        self.requests.send((head, body)).expect("the peer's worker runs");
    }

    fn content_of(&mut self, answer: Result<peer::InfillAnswer, String>) -> String {
        match answer {
            Ok(answer) => {
                self.requests_answered += 1;
                self.prompt_tokens += answer.prompt_tokens;
                answer.content
            }
            Err(err) => {
                self.errors += 1;
                eprintln!("peer error: {err}");
                String::new()
            }
        }
    }
}

impl Driver for PeerDriver {
    fn name(&self) -> String {
        "llama-server".to_string()
    }

    fn open_siblings(&mut self, _case_idx: usize, siblings: &[(String, String)]) {
        for (name, text) in siblings {
            let chunk: Vec<&str> = text.lines().take(32).collect();
            self.ring.retain(|(existing, _)| existing != name);
            self.ring.push((name.clone(), format!("{}\n", chunk.join("\n"))));
            if self.ring.len() > 16 {
                self.ring.remove(0);
            }
        }
    }

    fn run_case(&mut self, case: &Case, _case_idx: usize, reading: Option<Duration>, next_interval: &mut dyn FnMut() -> Option<Duration>) -> (Arrival, Vec<Keystroke>) {
        let next_nonblank = case.lines[case.line + 1..].iter().find(|line| !line.trim().is_empty()).map(String::as_str);
        let mut cache = peer::AnswerCache::default();
        let mut in_flight = false;
        // Arrival: the cursor line holds only its indentation, which llama.vim sends as an
        // empty middle (the cache key is the middle).
        let arrival_start = Instant::now();
        let context = peer::infill_context(&case.lines, case.line, &case.indent, "");
        self.ask(context.middle.clone(), peer::infill_body(&context, &self.ring));
        let reading_until = reading.map(|reading| arrival_start + reading);
        let first_answer = match reading_until {
            None => Some(self.answers.recv().expect("the peer's worker answers")),
            Some(until) => self.answers.recv_timeout(until.saturating_duration_since(Instant::now())).ok(),
        };
        let mut shown = None;
        let mut first_suggestion_ms = None;
        match first_answer {
            Some((asked, answer)) => {
                let content = self.content_of(answer);
                shown = peer::rendered(&content, &case.indent, next_nonblank);
                first_suggestion_ms = shown.as_ref().map(|_| ms(arrival_start));
                cache.insert(&asked, content);
            }
            // Still decoding when the user starts typing: the keystrokes find it in flight.
            None => in_flight = true,
        }
        if let Some(until) = reading_until {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        let arrival = Arrival { language: case.language, first_suggestion_ms, revisit: case.revisit };
        let mut typist = Typist::new(&case.content);
        let mut keystrokes = Vec::new();
        while !typist.done() {
            let (_, accepted_word) = typist.next(shown.as_deref());
            let interval = next_interval();
            let keystroke = Instant::now();
            let head = format!("{}{}", case.indent, typist.typed());
            let mut response_ms = None;
            let mut suggestion_ms = None;
            let mut typed_ahead = false;
            shown = None;
            // What the client shows for this state from its cache, if anything.
            let mut try_cache = |cache: &peer::AnswerCache, shown: &mut Option<String>| -> bool {
                let Some((content, from_typed_ahead)) = cache.lookup(&head) else { return false };
                response_ms = Some(ms(keystroke));
                *shown = peer::rendered(&content, &head, next_nonblank);
                if shown.is_some() {
                    suggestion_ms = response_ms;
                    typed_ahead = from_typed_ahead;
                }
                true
            };
            let mut answered = try_cache(&cache, &mut shown);
            if !answered && !in_flight {
                let context = peer::infill_context(&case.lines, case.line, &head, "");
                self.ask(head.clone(), peer::infill_body(&context, &self.ring));
                in_flight = true;
            }
            let deadline = interval.map(|interval| keystroke + interval);
            loop {
                if answered && deadline.is_none() {
                    break;
                }
                let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(300));
                if !in_flight {
                    std::thread::sleep(left);
                    break;
                }
                match self.answers.recv_timeout(left) {
                    Ok((asked, answer)) => {
                        in_flight = false;
                        let content = self.content_of(answer);
                        cache.insert(&asked, content);
                        if !answered {
                            answered = try_cache(&cache, &mut shown);
                        }
                        if !answered && !cache.contains(&head) {
                            let context = peer::infill_context(&case.lines, case.line, &head, "");
                            self.ask(head.clone(), peer::infill_body(&context, &self.ring));
                            in_flight = true;
                        }
                    }
                    Err(_) => break,
                }
            }
            if typed_ahead {
                self.typed_ahead_hits += 1;
            }
            if trace() {
                eprintln!("  peer {head:?}: answer {:?} ms, suggestion {:?} ms {shown:?}", response_ms.map(|v| v.round()), suggestion_ms.map(|v| v.round()));
            }
            keystrokes.push(Keystroke {
                language: case.language,
                response_ms,
                suggestion_ms,
                typed_ahead,
                correct_chars: correct_chars(shown.as_deref(), &typist.rest()),
                accepted_word,
            });
        }
        // The request still running belongs to this case: let it finish before the next turn.
        if in_flight {
            let finished = self.answers.recv_timeout(Duration::from_secs(300));
            self.requests_answered += u64::from(matches!(finished, Ok((_, Ok(_)))));
        }
        (arrival, keystrokes)
    }

    fn totals(&mut self) -> ServerTotals {
        let (cpu, rss) = self.server.as_ref().map_or((self.cpu_at_start, 0.0), |server| process_usage(server.pid()));
        if self.errors > 0 {
            eprintln!("the peer answered {} requests with errors", self.errors);
        }
        ServerTotals {
            prompt_tokens: self.prompt_tokens,
            cpu_seconds: cpu - self.cpu_at_start,
            peak_rss_mib: rss,
            typed_ahead_hits: self.typed_ahead_hits,
            prefetch_hits: 0,
            requests_sent: self.requests_sent,
            requests_answered: self.requests_answered,
            ..ServerTotals::default()
        }
    }
}

/// `--load`: for each number of editors, both sides (llama.vim's flow straight to the server,
/// then Ghostline in front of it) against a fresh llama-server with that many slots; each editor
/// types its own cases on a thread of its own. Returns the rows of `load.json`.
fn run_load(options: &Options, cases: &[Case], model: &Path, reading: Duration) -> Vec<Value> {
    let bin_dir = peer::peer_bin_dir().expect("--load needs llama-server: run benches/build-peer.sh or set GHOSTLINE_PEER_BIN");
    let mut rows = Vec::new();
    for &editors in &options.load {
        for fronted in [false, true] {
            let side = if fronted { "ghostline -> llama-server" } else { "llama.vim flow -> llama-server" };
            let port = free_port();
            let server = peer::PeerServer::start(&bin_dir, model, options.threads, port, editors).unwrap_or_else(|err| panic!("llama-server for {editors} editors: {err}"));
            let mut drivers: Vec<Box<dyn Driver + Send>> = (0..editors)
                .map(|editor| -> Box<dyn Driver + Send> {
                    if fronted {
                        // Backend options in `--settings` (`{"backend": {"maxInFlight": 1}}`) stay.
                        let mut settings = options.settings.clone();
                        let mut backend = settings.get("backend").filter(|backend| backend.is_object()).cloned().unwrap_or_else(|| json!({}));
                        backend["kind"] = json!("llama-server");
                        backend["url"] = json!(format!("http://127.0.0.1:{port}"));
                        settings["backend"] = backend;
                        Box::new(GhostlineDriver::start(&format!("editor {editor}"), model, options.threads, options.cadence, true, &settings))
                    } else {
                        Box::new(PeerDriver::connect(port, None))
                    }
                })
                .collect();
            let started = Instant::now();
            let results: Vec<(Vec<Arrival>, Vec<Keystroke>)> = std::thread::scope(|scope| {
                let threads: Vec<_> = drivers
                    .iter_mut()
                    .enumerate()
                    .map(|(editor, driver)| {
                        scope.spawn(move || {
                            // Editors do not start in step: spread their first arrivals over a second.
                            std::thread::sleep(Duration::from_millis((editor * 1000 / editors) as u64));
                            let (mut arrivals, mut keys) = (Vec::new(), Vec::new());
                            for turn in 0..options.load_cases {
                                let case_idx = (editor * options.load_cases + turn) % cases.len();
                                let mut next_interval = intervals(options.cadence, options.seed, case_idx);
                                let (arrival, case_keys) = driver.run_case(&cases[case_idx], case_idx, Some(reading), &mut next_interval);
                                arrivals.push(arrival);
                                keys.extend(case_keys);
                            }
                            (arrivals, keys)
                        })
                    })
                    .collect();
                threads.into_iter().map(|thread| thread.join().expect("an editor's thread")).collect()
            });
            let seconds = started.elapsed().as_secs_f64();
            drop(drivers);
            drop(server);
            let keys: Vec<&Keystroke> = results.iter().flat_map(|(_, keys)| keys).collect();
            let arrivals: Vec<Option<f64>> = results.iter().flat_map(|(arrivals, _)| arrivals.iter().map(|arrival| arrival.first_suggestion_ms)).collect();
            let chars: usize = (0..editors).flat_map(|editor| (0..options.load_cases).map(move |turn| (editor * options.load_cases + turn) % cases.len())).map(|idx| cases[idx].content.chars().count()).sum();
            let figures = metrics::summarize(&keys, &arrivals, chars, None);
            println!("{editors} editors, {side}: {} keys in {seconds:.0} s", keys.len());
            rows.push(json!({"editors": editors, "side": side, "seconds": seconds, "all": figures}));
        }
    }
    rows
}

/// The load table: one row per number of editors and side.
fn load_table(rows: &[Value]) -> String {
    let columns: [(&str, &str); 6] = [
        ("keys", "/keystrokes"),
        ("with suggestion", "/shareWithSuggestion"),
        ("correct chars/key", "/correctCharsPerKeystroke"),
        ("suggestion p50 ms", "/suggestionMs/p50"),
        ("suggestion p90 ms", "/suggestionMs/p90"),
        ("cold start p50 ms", "/coldStartMs/p50"),
    ];
    let mut out = format!("{:<8}{:<32}", "editors", "side");
    for (label, _) in columns {
        out.push_str(&format!("{label:>19}"));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&format!("{:<8}{:<32}", row["editors"].as_u64().unwrap_or_default(), row["side"].as_str().unwrap_or_default()));
        for (_, pointer) in columns {
            out.push_str(&format!("{:>19}", metrics::cell(row["all"].pointer(pointer))));
        }
        out.push('\n');
    }
    out
}

/// What every report starts with: the machine, the model, threads, cadence, seed, settings.
fn report_head(options: &Options, model: &Path, cadence_text: &str) -> Value {
    json!({
        "machine": machine(),
        "model": {"name": options.model, "file": model.file_name().map(|name| name.to_string_lossy().into_owned())},
        "threads": options.threads,
        "cadence": cadence_text,
        "seed": options.seed,
        "ghostlineSettings": options.settings,
    })
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find_map(|line| line.strip_prefix("model name")).map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|value| value.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0);
    json!({
        "cpu": cpu,
        "logicalCpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "physicalCores": ghostline::engine::physical_cores(),
        "memoryGiB": memory,
    })
}

fn main() {
    let options = parse_options();
    let model = ghostline::models::resolve(&options.model).unwrap_or_else(|err| panic!("model {}: {err}", options.model));
    let (sources, placement) = match options.corpus {
        CorpusKind::Unseen => (unseen::sources(&options.languages, options.packages, options.seed, &options.out.join("unseen")), corpus::Placement::IndentedInside),
        CorpusKind::Local => (corpus::sources(&options.languages), corpus::Placement::Anywhere),
    };
    for (language, files) in &sources {
        println!("corpus ({:?}): {language}: {} files", options.corpus, files.len());
    }
    let mut cases = corpus::pick_cases(&sources, options.cases, options.seed, placement);
    if options.revisit {
        cases = corpus::with_returns(cases);
    }
    assert!(!cases.is_empty(), "no source files found for the replay (Python standard library, cargo registry, node_modules)");
    if let Some(max_keys) = options.max_keys {
        for case in &mut cases {
            case.content = case.content.chars().take(max_keys).collect();
        }
    }
    let cadence_text = match options.cadence {
        Cadence::Human { interval_ms, jitter_ms } => format!("human: a key every {interval_ms} ± {jitter_ms} ms"),
        Cadence::Wait => "wait: next key once the current one has its answer".to_string(),
    };
    let reading_text = options.reading.map_or("until the server is idle".to_string(), |reading| format!("{} ms", reading.as_millis()));
    println!("model {} ({}), threads {}, {} cases, seed {}, cadence {cadence_text}, reading after arrival {reading_text}", options.model, model.display(), options.threads, cases.len(), options.seed);

    if !options.load.is_empty() {
        let reading = options.reading.expect("--load has a reading time");
        assert!(matches!(options.cadence, Cadence::Human { .. }), "--load types at the human cadence");
        let rows = run_load(&options, &cases, &model, reading);
        println!("\nload ({} cases per editor, reading {} ms):\n{}", options.load_cases, reading.as_millis(), load_table(&rows));
        let mut report = report_head(&options, &model, &cadence_text);
        report["readingMs"] = json!(reading.as_millis() as u64);
        report["casesPerEditor"] = json!(options.load_cases);
        report["rows"] = json!(rows);
        std::fs::create_dir_all(&options.out).expect("the output folder can be made");
        let path = options.out.join("load.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).expect("the load report is written");
        println!("wrote {}", path.display());
        return;
    }
    let ghostline = |mut driver: GhostlineDriver| -> Box<dyn Driver> {
        driver.keep_open = options.revisit;
        driver.rest = options.rest;
        Box::new(driver)
    };
    let mut drivers: Vec<Box<dyn Driver>> = vec![ghostline(GhostlineDriver::start("ghostline", &model, options.threads, options.cadence, true, &options.settings))];
    let mut peer_port = None;
    if options.peer {
        match peer::peer_bin_dir() {
            Some(dir) => match PeerDriver::start(&dir, &model, options.threads) {
                Ok(driver) => {
                    peer_port = Some(driver.port);
                    drivers.push(Box::new(driver));
                }
                Err(err) => eprintln!("no peer in this run: {err}"),
            },
            None => eprintln!("no peer in this run: llama-server not found (run benches/build-peer.sh or set GHOSTLINE_PEER_BIN)"),
        }
    }
    if options.backend_peer {
        // Ghostline in front of the peer's own server: the same server and model as llama.vim's
        // flow, the keystroke logic in Ghostline.
        let port = peer_port.expect("--backend-peer needs the peer in the run");
        let mut settings = options.settings.clone();
        settings["backend"] = json!({"kind": "llama-server", "url": format!("http://127.0.0.1:{port}")});
        drivers.push(ghostline(GhostlineDriver::start("ghostline -> llama-server", &model, options.threads, options.cadence, true, &settings)));
    }
    for variant in &options.variants {
        let mut settings = options.settings.clone();
        for (key, value) in variant.as_object().into_iter().flatten() {
            settings[key] = value.clone();
        }
        let label: Vec<String> = variant.as_object().into_iter().flatten().map(|(key, value)| format!("{key}={value}")).collect();
        drivers.push(ghostline(GhostlineDriver::start(&format!("ghostline {}", label.join(",")), &model, options.threads, options.cadence, true, &settings)));
    }
    if let Some(baseline) = &options.baseline {
        drivers.push(ghostline(GhostlineDriver::start_program("ghostline baseline", baseline, &model, options.threads, options.cadence, true, &options.settings)));
    }
    if options.regression {
        drivers.push(ghostline(GhostlineDriver::start("ghostline typedAhead=off", &model, options.threads, options.cadence, false, &options.settings)));
    }

    let started = Instant::now();
    let mut keystrokes: Vec<Vec<Keystroke>> = vec![Vec::new(); drivers.len()];
    let mut arrivals: Vec<Vec<Arrival>> = vec![Vec::new(); drivers.len()];
    for (case_idx, case) in cases.iter().enumerate() {
        let file = case.path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        println!("case {case_idx:>2} {:<10} {file}:{} `{}`", case.language, case.line + 1, case.content);
        let siblings = corpus::siblings(case, options.siblings);
        // Take turns, starting with a different server each case.
        for turn in 0..drivers.len() {
            let idx = (case_idx + turn) % drivers.len();
            let mut next_interval = intervals(options.cadence, options.seed, case_idx);
            drivers[idx].open_siblings(case_idx, &siblings);
            let (arrival, keys) = drivers[idx].run_case(case, case_idx, options.reading, &mut next_interval);
            arrivals[idx].push(arrival);
            keystrokes[idx].extend(keys);
        }
    }
    let names: Vec<String> = drivers.iter().map(|driver| driver.name()).collect();
    let totals: Vec<ServerTotals> = drivers.iter_mut().map(|driver| driver.totals()).collect();
    drop(drivers);

    let mut languages: Vec<&'static str> = cases.iter().map(|case| case.language).collect();
    languages.sort();
    languages.dedup();
    let chars_in = |language: Option<&str>| cases.iter().filter(|case| language.is_none_or(|language| case.language == language)).map(|case| case.content.chars().count()).sum::<usize>();
    let mut runs = Vec::new();
    for (idx, name) in names.iter().enumerate() {
        let all: Vec<&Keystroke> = keystrokes[idx].iter().collect();
        let first_suggestions = |language: Option<&str>| -> Vec<Option<f64>> {
            arrivals[idx].iter().filter(|arrival| language.is_none_or(|language| arrival.language == language)).map(|arrival| arrival.first_suggestion_ms).collect()
        };
        let mut by_language = serde_json::Map::new();
        for language in &languages {
            let subset: Vec<&Keystroke> = keystrokes[idx].iter().filter(|key| key.language == *language).collect();
            by_language.insert(language.to_string(), metrics::summarize(&subset, &first_suggestions(Some(language)), chars_in(Some(language)), None));
        }
        let mut all_figures = metrics::summarize(&all, &first_suggestions(None), chars_in(None), Some(&totals[idx]));
        if options.revisit {
            let of_kind = |revisit: bool| -> Vec<Option<f64>> { arrivals[idx].iter().filter(|arrival| arrival.revisit == revisit).map(|arrival| arrival.first_suggestion_ms).collect() };
            all_figures["coldStartFirstVisitMs"] = metrics::cold_start(&of_kind(false));
            all_figures["coldStartReturnMs"] = metrics::cold_start(&of_kind(true));
        }
        runs.push(json!({"name": name, "all": all_figures, "languages": by_language}));
    }

    let alls: Vec<&Value> = runs.iter().map(|run| &run["all"]).collect();
    println!("\nall languages ({} s of replay):\n{}", started.elapsed().as_secs(), metrics::table(&names, &alls));
    for language in &languages {
        let figures: Vec<&Value> = runs.iter().map(|run| &run["languages"][*language]).collect();
        println!("{language}:\n{}", metrics::table(&names, &figures));
    }
    let ratios: serde_json::Map<String, Value> = if runs.len() >= 2 {
        metrics::ROWS
            .iter()
            .filter_map(|(_, pointer, _)| Some((pointer.trim_start_matches('/').replace('/', "."), json!(metrics::ratio(alls[0].pointer(pointer), alls[1].pointer(pointer))?))))
            .collect()
    } else {
        serde_json::Map::new()
    };
    let mut report = report_head(&options, &model, &cadence_text);
    report["readingMs"] = json!(options.reading.map(|reading| reading.as_millis() as u64));
    report["cases"] = cases.iter().map(|case| json!({"language": case.language, "file": case.path.to_string_lossy(), "line": case.line + 1, "text": case.content})).collect();
    report["runs"] = json!(runs);
    report["ratiosFirstToSecond"] = json!(ratios);
    std::fs::create_dir_all(&options.out).expect("the output folder can be made");
    let json_path = options.out.join("replay.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).expect("the JSON report is written");
    let curves: Vec<metrics::Curve> = names
        .iter()
        .zip(&keystrokes)
        .map(|(name, keys)| (name.clone(), keys.iter().map(|key| key.response_ms).collect(), keys.iter().map(|key| key.suggestion_ms).collect()))
        .collect();
    let title = format!("{} keystrokes per server, {} cases, {}, {cadence_text}", keystrokes[0].len(), cases.len(), options.model);
    let svg_path = options.out.join("replay.svg");
    std::fs::write(&svg_path, metrics::svg(&title, &curves)).expect("the picture is written");
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if let Some(min_shown) = options.min_shown {
        // The regression guard: Ghostline's share of keys shown must not slide below the floor.
        let shown = alls[0]["shareWithSuggestion"].as_f64().expect("the share with a suggestion is measured");
        if shown < min_shown {
            eprintln!("REGRESSION: {} showed a suggestion on {:.0}% of keys, below the floor of {:.0}% (seed {})", names[0], shown * 100.0, min_shown * 100.0, options.seed);
            std::process::exit(1);
        }
        println!("regression guard: {} showed a suggestion on {:.0}% of keys (floor {:.0}%)", names[0], shown * 100.0, min_shown * 100.0);
    }

    if options.quick {
        // The harness ran and its output is well formed (timings are not judged here).
        let read: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).expect("the report is valid JSON");
        let all = &read["runs"][0]["all"];
        let keystrokes = all["keystrokes"].as_u64().unwrap();
        assert!(keystrokes > 0, "no keystrokes were replayed");
        // Every keystroke is answered: each has its answer, and the server counted an answer
        // for every request sent (a request answered outside the completion path, as for a
        // document whose change was rejected, or never answered, would show here).
        assert_eq!(all["responseMs"]["unanswered"], 0, "Ghostline keystrokes without an answer: {all}");
        let requests_sent = all["requestsSent"].as_u64().unwrap();
        assert!(requests_sent >= keystrokes, "fewer requests than keystrokes: {all}");
        assert_eq!(all["requestsAnswered"].as_u64(), Some(requests_sent), "requests the server did not answer: {all}");
        let revisit_only = |pointer: &str| pointer.starts_with("/coldStartFirstVisit") || pointer.starts_with("/coldStartReturn");
        for (_, pointer, _) in metrics::ROWS.iter().filter(|(_, pointer, _)| options.revisit || !revisit_only(pointer)) {
            assert!(all.pointer(pointer).is_some(), "the report lacks {pointer}");
        }
        let picture = std::fs::read_to_string(&svg_path).unwrap();
        assert!(picture.starts_with("<svg") && picture.contains("<polyline") && picture.trim_end().ends_with("</svg>"));

        // The load mode on the same cases: 1 and 2 editors, both sides, well formed (on the
        // default model: the peer's /infill needs a model with fill-in-the-middle tokens).
        let load = Options { load: vec![1, 2], load_cases: 1, ..options };
        let fim_model = ghostline::models::resolve(ghostline::models::DEFAULT_MODEL).expect("the default model is fetched");
        let rows = run_load(&load, &cases, &fim_model, Duration::from_millis(500));
        println!("{}", load_table(&rows));
        assert_eq!(rows.len(), 4, "a row per number of editors and side: {rows:?}");
        for row in &rows {
            let editors = row["editors"].as_u64().unwrap() as usize;
            // Every character of each editor's case was typed or taken with Tab.
            let chars: u64 = cases.iter().take(editors).map(|case| case.content.chars().count() as u64).sum();
            assert_eq!(row["all"]["keystrokes"].as_u64().unwrap() + row["all"]["charsSaved"].as_u64().unwrap(), chars, "{row}");
            assert!(row["all"]["shareWithSuggestion"].is_number() && row["all"]["correctCharsPerKeystroke"].is_number(), "{row}");
        }
    }
}
