//! The language server: the only code that knows LSP types. Handlers convert to and from the
//! plain types of `documents` and `scheduler` (see `proto.rs`) and never call llama.cpp.
//!
//! Invariants:
//! - `didChange` applies the edit with no `.await` before the store is updated, so edits land in
//!   arrival order even though handlers run concurrently.
//! - Every request is answered: a result, an error that says what was wrong, or
//!   `RequestCancelled` (tower-lsp-server answers a `$/cancelRequest` by dropping the handler).
//!   A panic in a handler is caught, logged and answered as an internal error.
//! - Concurrency is raised well above the number of completion requests that can wait at once,
//!   so cancellations and changes never queue behind them.

mod framing;
mod proto;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::config::{Config, RawSettings};
use crate::documents::{self, DocumentStore, PositionEncoding};
use crate::engine::{Engine, EngineConfig};
use crate::expansions;
use crate::models;
use crate::probe;
use crate::scheduler::{Answer, CursorState, EngineState, Scheduler, Waiting};

/// How many requests may be in flight at once. Completion requests wait for the model, so this
/// is far above what an editor sends, keeping `$/cancelRequest` and `didChange` from queueing.
const MAX_CONCURRENCY: usize = 128;

/// Completion requests that may wait for a suggestion at once. Each waiting request holds one of
/// the protocol layer's `MAX_CONCURRENCY` slots; past this many, the oldest is answered empty,
/// so `$/cancelRequest`, `ghostline/stats` and new keystrokes always find a free slot.
const MAX_WAITING_REQUESTS: usize = 32;

/// The longest completion label and inserted text sent in a completion item (some clients
/// misbehave with very long items).
const MAX_LABEL_CHARS: usize = 60;
const MAX_ITEM_TEXT_CHARS: usize = 2000;

pub const ACCEPT_COMMAND: &str = "ghostline.accept";
/// Turns lines (a comment or a note) into code: arguments `[uri, firstLine, lastLine]` (0-based
/// lines). The server applies the edit with `workspace/applyEdit` and returns it. The name
/// differs from the VS Code extension's own `ghostline.expand`: vscode-languageclient registers
/// every server command as an editor command, and two of one name fail the extension.
pub const EXPAND_COMMAND: &str = "ghostline.expandIntoCode";

/// Runs the server on stdin/stdout until the client exits. Returns whether the client asked
/// for `shutdown` first (the process then exits with 0, else 1, as the protocol says).
///
/// The protocol layer (tower-lsp-server) reads and writes through in-memory pipes: a reader in
/// front of it (`framing`) hands on only messages it can take and answers the others with an
/// error, and a writer behind it merges those errors into the output at message boundaries.
pub async fn serve(config: Config) -> bool {
    let shutdown_requested = Arc::new(AtomicBool::new(false));
    let backend_shutdown = shutdown_requested.clone();
    let (service, socket) = LspService::build(move |client| Backend::new(client, config, backend_shutdown))
        .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
        .custom_method("ghostline/stats", Backend::stats)
        .finish();
    let (mut to_protocol, protocol_stdin) = tokio::io::duplex(1 << 16);
    let (protocol_stdout, from_protocol) = tokio::io::duplex(1 << 16);
    let (error_sender, errors) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stdin = tokio::io::stdin();
        let mut deframer = framing::Deframer::default();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let read = match stdin.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            deframer.push(&chunk[..read]);
            while let Some(frame) = deframer.next_frame() {
                match frame {
                    framing::Frame::Message(body) => {
                        if to_protocol.write_all(&framing::encode(&body)).await.is_err() {
                            return;
                        }
                    }
                    framing::Frame::Invalid { response, reason } => {
                        tracing::warn!(%reason, "answered a message that cannot be used with an error");
                        let _ = error_sender.send(response);
                    }
                }
            }
        }
        // End of input: the protocol layer sees it and stops.
    });
    let writer = tokio::spawn(write_output(from_protocol, errors));
    Server::new(protocol_stdin, protocol_stdout, socket).concurrency_level(MAX_CONCURRENCY).serve(service).await;
    // The protocol layer's pipe is closed now; the writer ends once it has written the rest.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    shutdown_requested.load(Ordering::SeqCst)
}

/// Copies the protocol layer's messages to stdout, whole, and the transport's error answers
/// between them.
async fn write_output(mut from_protocol: tokio::io::DuplexStream, mut errors: tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stdout = tokio::io::stdout();
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut errors_open = true;
    loop {
        tokio::select! {
            read = from_protocol.read(&mut chunk) => {
                let read = match read {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                pending.extend_from_slice(&chunk[..read]);
                let whole = framing::complete_frames_len(&pending);
                if whole > 0 {
                    if stdout.write_all(&pending[..whole]).await.is_err() || stdout.flush().await.is_err() {
                        return;
                    }
                    pending.drain(..whole);
                }
            }
            error = errors.recv(), if errors_open => {
                match error {
                    Some(response) => {
                        let body = response.to_string();
                        if stdout.write_all(&framing::encode(body.as_bytes())).await.is_err() || stdout.flush().await.is_err() {
                            return;
                        }
                    }
                    None => errors_open = false,
                }
            }
        }
    }
    let _ = stdout.write_all(&pending).await;
    let _ = stdout.flush().await;
}

pub struct Backend {
    client: Client,
    documents: Arc<DocumentStore>,
    scheduler: Arc<Scheduler>,
    encoding: Mutex<PositionEncoding>,
    wants_ready_notification: AtomicBool,
    client_has_work_done_progress: AtomicBool,
    /// Settings errors found in `initialize`, shown once the client can receive messages.
    pending_messages: Mutex<Vec<String>>,
    /// Incremented on every engine (re)load, so a slow load cannot overwrite a newer one.
    engine_generation: Arc<AtomicU64>,
    /// Set by `shutdown`: the exit code says whether the client shut the server down first.
    shutdown_requested: Arc<AtomicBool>,
    /// Set by the first `initialized`; a second one is ignored.
    initialized: AtomicBool,
    /// The settings the running engine was loaded with, to go back to when a new model fails.
    loaded_config: Arc<Mutex<Option<Config>>>,
    /// Engine loads started (for `ghostline/stats`).
    engine_loads: AtomicU64,
    /// Changes rejected (their documents may differ from the editor's; for `ghostline/stats`).
    rejected_changes: AtomicU64,
    /// Parses documents' trees again after opens and edits, off the LSP loop: one thread, at
    /// most one queued parse per document.
    parser: crate::background::LatestWins<String>,
    waiting_requests: WaitingRequests,
}

/// The completion requests waiting for a suggestion, oldest first.
#[derive(Default)]
struct WaitingRequests {
    next_id: AtomicU64,
    queue: Mutex<std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>>,
}

/// One waiting request's place in the queue; leaving the queue when dropped.
struct WaitTicket<'a> {
    id: u64,
    preempted: Arc<tokio::sync::Notify>,
    requests: &'a WaitingRequests,
}

impl WaitingRequests {
    /// Joins the queue; past `MAX_WAITING_REQUESTS`, the oldest waiting request is told to
    /// answer now.
    fn enter(&self) -> WaitTicket<'_> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let preempted = Arc::new(tokio::sync::Notify::new());
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.push_back((id, preempted.clone()));
        while queue.len() > MAX_WAITING_REQUESTS {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.notify_one();
            }
        }
        WaitTicket { id, preempted, requests: self }
    }
}

impl Drop for WaitTicket<'_> {
    fn drop(&mut self) {
        self.requests.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|(id, _)| *id != self.id);
    }
}

impl Backend {
    /// The scheduler's answer for a state, unless the request is preempted (too many waiting).
    async fn answer_bounded(&self, state: CursorState, waiting: Waiting) -> (Answer, Option<crate::scheduler::ReadyWaiter>) {
        let ticket = self.waiting_requests.enter();
        tokio::select! {
            answer = self.scheduler.complete(state, waiting) => answer,
            _ = ticket.preempted.notified() => (Answer::Empty(crate::scheduler::EmptyReason::TooManyWaiting), None),
        }
    }
}

/// `ghostline/suggestionReady`: the suggestion for a cursor state is ready; ask again.
enum SuggestionReady {}

impl notification::Notification for SuggestionReady {
    type Params = Value;
    const METHOD: &'static str = "ghostline/suggestionReady";
}

fn invalid_params(message: impl Into<String>) -> Error {
    Error { code: ErrorCode::InvalidParams, message: message.into().into(), data: None }
}

/// Runs a notification handler, turning a panic into a logged error (a notification has no
/// answer to carry it; the server goes on).
async fn guarded_notification(method: &str, body: impl Future<Output = ()>) {
    if let Err(panic) = AssertUnwindSafe(body).catch_unwind().await {
        let message = panic_message(panic.as_ref());
        tracing::error!(method, %message, "notification handler panicked");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Runs a handler body, turning a panic into a logged internal error.
async fn guarded<T>(method: &str, body: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(body).catch_unwind().await {
        Ok(res) => res,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            tracing::error!(method, %message, "handler panicked");
            Err(Error {
                code: ErrorCode::InternalError,
                message: format!("internal error in {method}: {message}").into(),
                data: None,
            })
        }
    }
}

impl Backend {
    fn new(client: Client, config: Config, shutdown_requested: Arc<AtomicBool>) -> Backend {
        Backend {
            client,
            documents: Arc::new(DocumentStore::default()),
            scheduler: Scheduler::new(config),
            encoding: Mutex::new(PositionEncoding::Utf16),
            wants_ready_notification: AtomicBool::new(false),
            client_has_work_done_progress: AtomicBool::new(false),
            pending_messages: Mutex::new(Vec::new()),
            engine_generation: Arc::new(AtomicU64::new(0)),
            shutdown_requested,
            initialized: AtomicBool::new(false),
            loaded_config: Arc::new(Mutex::new(None)),
            engine_loads: AtomicU64::new(0),
            rejected_changes: AtomicU64::new(0),
            parser: crate::background::LatestWins::start("ghostline-parse"),
            waiting_requests: WaitingRequests::default(),
        }
    }

    fn encoding(&self) -> PositionEncoding {
        *self.encoding.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads the configured model in the background, reporting progress, and hands the engine
    /// to the scheduler. Until then completion requests are answered empty at once.
    fn load_engine(&self) {
        let generation = self.engine_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.engine_loads.fetch_add(1, Ordering::SeqCst);
        let engine_generation = self.engine_generation.clone();
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        let config = scheduler.config();
        let loaded_config = self.loaded_config.clone();
        let with_progress = self.client_has_work_done_progress.load(Ordering::SeqCst);
        // A running engine keeps serving until its replacement is ready, and stays if the
        // replacement fails.
        let previous_ready = matches!(scheduler.engine_state(), EngineState::Ready(_));
        if !previous_ready {
            scheduler.set_engine_state(EngineState::Loading);
        }
        tokio::spawn(async move {
            let token = NumberOrString::String(format!("ghostline-load-{generation}"));
            let progress = if with_progress
                && client
                    .send_request::<request::WorkDoneProgressCreate>(WorkDoneProgressCreateParams { token: token.clone() })
                    .await
                    .is_ok()
            {
                Some(client.progress(token, "Ghostline").with_message(format!("loading model {}", config.model)).begin().await)
            } else {
                None
            };
            let model = config.model.clone();
            let load_config = config.clone();
            let loaded = tokio::task::spawn_blocking(move || load_checked_engine(&load_config))
                .await
                .unwrap_or_else(|err| Err(LoadFailure::Model(format!("the model loader crashed: {err}"))));
            if engine_generation.load(Ordering::SeqCst) != generation {
                return;
            }
            match loaded {
                Ok(engine) => {
                    let message = format!("model {} ready ({:.0} ms)", engine.info().name, engine.info().load_ms);
                    tracing::info!("{message}");
                    scheduler.set_engine_state(EngineState::Ready(engine));
                    *loaded_config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(config);
                    if let Some(progress) = progress {
                        progress.finish_with_message(message).await;
                    }
                }
                Err(failure) => {
                    tracing::error!(%failure, "model failed to load");
                    // State and settings change before any `.await`, so a newer load that
                    // starts meanwhile is never overwritten by this one.
                    let previous = loaded_config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                    let kept = match (&previous, scheduler.engine_state()) {
                        (Some(previous), EngineState::Ready(_)) if previous_ready => {
                            // Back to the settings of the engine that keeps running.
                            let mut current = scheduler.config();
                            current.set_engine_settings(previous);
                            scheduler.set_config(current);
                            Some(previous.model.clone())
                        }
                        _ => {
                            scheduler.set_engine_state(EngineState::Failed(failure.to_string()));
                            None
                        }
                    };
                    if let Some(progress) = progress {
                        progress.finish_with_message("model failed to load").await;
                    }
                    let consequence = match &kept {
                        Some(previous) => format!("keeping model `{previous}`"),
                        None => String::from("completions are off until then"),
                    };
                    let message = match &failure {
                        LoadFailure::Model(err) => format!("Ghostline could not load model `{model}`: {err}. Set `model` in the Ghostline settings to a registry name (`ghostline models list`) or a .gguf path; {consequence}."),
                        LoadFailure::EngineCheck(err) => format!("Ghostline's engine cannot run model `{model}` on this machine: {err}. `ghostline doctor` repeats this check; {consequence}."),
                    };
                    client.show_message(MessageType::ERROR, message).await;
                }
            }
        });
    }

    fn cursor_state(&self, uri: &Uri, position: Position) -> Result<CursorState> {
        let key = uri.as_str();
        let document = self.documents.get(key).ok_or_else(|| invalid_params(format!("document {key} is not open")))?;
        let cursor_char_idx = documents::char_idx(&document.rope, proto::position(position), self.encoding())
            .map_err(|err| invalid_params(format!("{key}: {err}")))?;
        Ok(CursorState {
            uri: key.to_string(),
            version: document.version,
            rope: document.rope,
            cursor_char_idx,
            language_id: document.language_id,
            syntax: document.syntax,
        })
    }

    fn waiting(&self) -> Waiting {
        if self.wants_ready_notification.load(Ordering::SeqCst) {
            Waiting::Budget
        } else {
            Waiting::UntilReady
        }
    }

    /// After an early empty answer, tells the client when the suggestion is ready.
    fn notify_when_ready(&self, waiter: crate::scheduler::ReadyWaiter) {
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        // Every job ends (its tokens are bounded, and a newer job supersedes it), so wait for it
        // however slow the machine is: a client showing a partial suggestion is only updated
        // by this notification. The bound is a backstop against a stuck engine.
        let max_wait = Duration::from_secs(600);
        let encoding = self.encoding();
        tokio::spawn(async move {
            let uri = waiter.uri.clone();
            let version = waiter.version;
            let position = documents::position(waiter.rope(), waiter.cursor_char_idx, encoding);
            if scheduler.wait_ready(waiter, max_wait).await {
                client
                    .send_notification::<SuggestionReady>(json!({
                        "uri": uri,
                        "version": version,
                        "position": {"line": position.line, "character": position.character},
                    }))
                    .await;
            }
        });
    }

    async fn inline_completion(&self, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
        guarded("textDocument/inlineCompletion", async {
            let position = params.text_document_position.position;
            let uri = params.text_document_position.text_document.uri;
            if let Some(reason) = self.documents.diverged(uri.as_str()) {
                tracing::debug!(uri = uri.as_str(), %reason, "no suggestion: the document may differ from the editor's");
                return Ok(Some(InlineCompletionResponse::List(InlineCompletionList { items: Vec::new() })));
            }
            let state = self.cursor_state(&uri, position)?;
            let (answer, waiter) = self.answer_bounded(state, self.waiting()).await;
            if let Some(waiter) = waiter {
                self.notify_when_ready(waiter);
            }
            let items = match answer {
                Answer::Ready(suggestion) => vec![InlineCompletionItem {
                    insert_text: suggestion.text.clone(),
                    filter_text: None,
                    range: Some(Range { start: position, end: position }),
                    command: Some(accept_command(&uri, &suggestion.text)),
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                }],
                Answer::Empty(reason) => {
                    tracing::debug!(?reason, "no inline suggestion");
                    Vec::new()
                }
            };
            Ok(Some(InlineCompletionResponse::List(InlineCompletionList { items })))
        })
        .await
    }

    /// `ghostline/stats`; its params (null or an object such as `{}`) are ignored. The field
    /// must be present: tower-lsp-server's router tells a method with params from one without.
    async fn stats(&self, _params: Option<Value>) -> Result<Value> {
        guarded("ghostline/stats", async {
            let mut stats = self.scheduler.stats_json();
            let engine = match self.scheduler.engine_state() {
                EngineState::NotStarted => json!({"state": "not started"}),
                EngineState::Loading => json!({"state": "loading"}),
                EngineState::Failed(err) => json!({"state": "failed", "error": err}),
                EngineState::Ready(engine) => json!({"state": "ready", "model": engine.info()}),
            };
            stats["engine"] = engine;
            stats["config"] = json!({"model": self.scheduler.config().model});
            stats["engineLoads"] = json!(self.engine_loads.load(Ordering::SeqCst));
            stats["rejectedChanges"] = json!(self.rejected_changes.load(Ordering::SeqCst));
            stats["divergedDocuments"] = json!(self.documents.diverged_count());
            Ok(stats)
        })
        .await
    }

    /// Queues a parse of the document's tree at `version` on the parse thread (replacing a
    /// queued parse of an older version).
    fn refresh_syntax_later(&self, uri: String, version: i32) {
        let documents = self.documents.clone();
        self.parser.submit(uri.clone(), move || documents.refresh_syntax(&uri, version));
    }

    async fn show_pending_messages(&self) {
        let messages: Vec<String> = std::mem::take(&mut *self.pending_messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for message in messages {
            self.client.show_message(MessageType::WARNING, format!("Ghostline: {message}")).await;
        }
    }
}

fn accept_command(uri: &Uri, text: &str) -> Command {
    Command {
        title: "Ghostline: suggestion accepted".to_string(),
        command: ACCEPT_COMMAND.to_string(),
        arguments: Some(vec![json!({"uri": uri.as_str(), "chars": text.chars().count()})]),
    }
}

impl Backend {
    /// `ghostline.expandIntoCode`: generates the code, applies it with `workspace/applyEdit` and returns
    /// the edit (so a client that cannot apply edits can still use it).
    async fn expand(&self, arguments: &[Value]) -> Result<Value> {
        let usage = || invalid_params(format!("{EXPAND_COMMAND} takes [uri, firstLine, lastLine]"));
        let uri: Uri = arguments.first().and_then(Value::as_str).and_then(|text| text.parse().ok()).ok_or_else(usage)?;
        let first_line = arguments.get(1).and_then(Value::as_u64).ok_or_else(usage)? as usize;
        let last_line = arguments.get(2).and_then(Value::as_u64).ok_or_else(usage)? as usize;
        let document = self.documents.get(uri.as_str()).ok_or_else(|| invalid_params(format!("document {} is not open", uri.as_str())))?;
        if let Some(reason) = &document.diverged {
            return Err(invalid_params(format!("the server's copy of {} may differ from the editor's ({reason}); send the whole text again", uri.as_str())));
        }
        let expanded = self.scheduler.expand(&document.rope, first_line, last_line).await.map_err(invalid_params)?;
        let current = self.documents.get(uri.as_str()).map(|document| document.version);
        if current != Some(document.version) {
            return Err(invalid_params("the document changed while expanding; ask again"));
        }
        let encoding = self.encoding();
        let range = Range {
            start: proto::to_position(documents::position(&document.rope, expanded.start_char_idx, encoding)),
            end: proto::to_position(documents::position(&document.rope, expanded.end_char_idx, encoding)),
        };
        let edit = WorkspaceEdit {
            changes: Some([(uri.clone(), vec![TextEdit { range, new_text: expanded.text }])].into_iter().collect()),
            ..Default::default()
        };
        match self.client.apply_edit(edit.clone()).await {
            Ok(response) if !response.applied => tracing::warn!(reason = ?response.failure_reason, "the client did not apply the expansion"),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "workspace/applyEdit failed"),
        }
        serde_json::to_value(edit).map_err(|err| Error { code: ErrorCode::InternalError, message: err.to_string().into(), data: None })
    }

    /// Completion items for the user's expansions whose trigger starts with `word`.
    fn expansion_items(&self, uri: &Uri, language_id: &str, word: &str, word_range: Range) -> Vec<CompletionItem> {
        let config = self.scheduler.config();
        let path = uri.path().decode().to_string_lossy();
        let file_name = path.rsplit('/').next().unwrap_or_default().to_string();
        let context = expansions::Context { file_name, language_id: language_id.to_string(), now: chrono::Local::now() };
        expansions::matching(&config.expansions, word)
            .map(|expansion| {
                let text = expansions::render(&expansion.body, &context);
                CompletionItem {
                    label: expansion.trigger.clone(),
                    kind: Some(CompletionItemKind::SNIPPET),
                    detail: Some(expansion.description.clone().unwrap_or_else(|| "Ghostline expansion".to_string())),
                    documentation: Some(Documentation::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value: format!("```\n{text}\n```") })),
                    sort_text: Some(format!("1{}", expansion.trigger)),
                    filter_text: Some(expansion.trigger.clone()),
                    insert_text_format: Some(InsertTextFormat::SNIPPET),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit { range: word_range, new_text: text })),
                    ..Default::default()
                }
            })
            .collect()
    }
}

/// The identifier characters right before the cursor (what a completion menu filters on).
fn word_before_cursor(line_head: &str) -> &str {
    let start = line_head
        .char_indices()
        .rev()
        .take_while(|(_, ch)| ch.is_alphanumeric() || *ch == '_')
        .last()
        .map_or(line_head.len(), |(idx, _)| idx);
    &line_head[start..]
}

fn cap_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut res: String = text.chars().take(max_chars).collect();
    res.push('…');
    res
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        guarded("initialize", async {
            let offers_utf8 = params
                .capabilities
                .general
                .as_ref()
                .and_then(|general| general.position_encodings.as_ref())
                .is_some_and(|encodings| encodings.contains(&PositionEncodingKind::UTF8));
            let encoding = if offers_utf8 { PositionEncoding::Utf8 } else { PositionEncoding::Utf16 };
            *self.encoding.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = encoding;
            let has_progress = params
                .capabilities
                .window
                .as_ref()
                .and_then(|window| window.work_done_progress)
                .unwrap_or(false);
            self.client_has_work_done_progress.store(has_progress, Ordering::SeqCst);
            let experimental_ready = params
                .capabilities
                .experimental
                .as_ref()
                .and_then(|experimental| experimental.pointer("/ghostline/suggestionReady"))
                .and_then(Value::as_bool)
                .unwrap_or(false);

            let mut config = self.scheduler.config();
            let mut wants_ready = experimental_ready;
            if let Some(options) = &params.initialization_options {
                match RawSettings::from_json(options) {
                    Ok(raw) => {
                        wants_ready |= raw.suggestion_ready_notification.unwrap_or(false);
                        let applied = config.apply(&raw);
                        self.pending_messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(applied.errors);
                    }
                    Err(err) => self.pending_messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(err),
                }
            }
            self.wants_ready_notification.store(wants_ready, Ordering::SeqCst);
            self.scheduler.set_config(config);
            #[allow(deprecated)]
            let root_uri = params
                .workspace_folders
                .as_ref()
                .and_then(|folders| folders.first())
                .map(|folder| folder.uri.as_str().to_string())
                .or_else(|| params.root_uri.as_ref().map(|uri| uri.as_str().to_string()));
            self.scheduler.set_workspace(root_uri);

            Ok(InitializeResult {
                capabilities: ServerCapabilities {
                    position_encoding: Some(match encoding {
                        PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
                        PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
                    }),
                    text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                        ..Default::default()
                    })),
                    inline_completion_provider: Some(OneOf::Left(true)),
                    code_action_provider: Some(CodeActionProviderCapability::Simple(true)),
                    completion_provider: Some(CompletionOptions { resolve_provider: Some(false), ..Default::default() }),
                    execute_command_provider: Some(ExecuteCommandOptions {
                        commands: vec![ACCEPT_COMMAND.to_string(), EXPAND_COMMAND.to_string()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                server_info: Some(ServerInfo { name: "ghostline".to_string(), version: Some(env!("CARGO_PKG_VERSION").to_string()) }),
                offset_encoding: None,
            })
        })
        .await
    }

    async fn initialized(&self, _: InitializedParams) {
        if self.initialized.swap(true, Ordering::SeqCst) {
            tracing::warn!("a second `initialized` notification was ignored");
            return;
        }
        self.load_engine();
        self.show_pending_messages().await;
    }

    async fn shutdown(&self) -> Result<()> {
        self.shutdown_requested.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        guarded_notification("textDocument/didOpen", async {
            let document = params.text_document;
            let uri = document.uri.as_str().to_string();
            self.documents.open(&uri, &document.language_id, document.version, &document.text);
            if let Some(opened) = self.documents.get(&uri) {
                self.scheduler.file_opened(&uri, &opened.rope);
            }
            self.refresh_syntax_later(uri, document.version);
        })
        .await
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        guarded_notification("textDocument/didChange", async {
            // No `.await` before the store is updated: edits must land in arrival order.
            let uri = params.text_document.uri.as_str().to_string();
            let changes: Vec<documents::Change> = params.content_changes.into_iter().map(proto::change).collect();
            match self.documents.apply_changes(&uri, params.text_document.version, &changes, self.encoding()) {
                Ok(outcome) => {
                    let version = outcome.document.version;
                    if outcome.repaired {
                        tracing::info!(%uri, version, "the whole text was sent: the document agrees with the editor again");
                    }
                    if outcome.document.diverged.is_some() {
                        // Built from text the editor may not have: no job.
                        return;
                    }
                    self.scheduler.on_change(CursorState {
                        uri: uri.clone(),
                        version,
                        rope: outcome.document.rope,
                        cursor_char_idx: outcome.cursor_char_idx,
                        language_id: outcome.document.language_id,
                        syntax: outcome.document.syntax,
                    });
                    // The tree is parsed again off the keystroke path (a quote that turns the rest
                    // of a large file into a string costs milliseconds).
                    self.refresh_syntax_later(uri, version);
                }
                Err(err) => {
                    self.rejected_changes.fetch_add(1, Ordering::SeqCst);
                    let current = self.documents.get(&uri).map(|document| document.version);
                    tracing::warn!(
                        %uri, %err, editor_version = params.text_document.version, ?current,
                        "rejected a change: the document may now differ from the editor's, and its requests are answered empty until the whole text is sent again"
                    );
                    self.scheduler.cancel_for(&uri);
                }
            }

        })
        .await
    }

    async fn did_save(&self, _: DidSaveTextDocumentParams) {}

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        guarded_notification("textDocument/didClose", async {
            let uri = params.text_document.uri.as_str();
            self.scheduler.cancel_for(uri);
            self.documents.close(uri);
        })
        .await
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        guarded_notification("workspace/didChangeConfiguration", async {
            let raw = match RawSettings::from_json(&params.settings) {
                Ok(raw) => raw,
                Err(err) => {
                    self.client.show_message(MessageType::WARNING, format!("Ghostline: {err}")).await;
                    return;
                }
            };
            if let Some(wants) = raw.suggestion_ready_notification {
                self.wants_ready_notification.store(wants, Ordering::SeqCst);
            }
            let mut config = self.scheduler.config();
            let applied = config.apply(&raw);
            self.scheduler.set_config(config);
            if applied.engine_changed {
                self.load_engine();
            }
            for error in applied.errors {
                self.client.show_message(MessageType::WARNING, format!("Ghostline: {error}")).await;
            }

        })
        .await
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        guarded("textDocument/completion", async {
            let position = params.text_document_position.position;
            let uri = params.text_document_position.text_document.uri;
            if let Some(reason) = self.documents.diverged(uri.as_str()) {
                tracing::debug!(uri = uri.as_str(), %reason, "no completion: the document may differ from the editor's");
                return Ok(None);
            }
            let state = self.cursor_state(&uri, position)?;
            let line_start = state.rope.line_to_char(state.rope.char_to_line(state.cursor_char_idx));
            let line_head = state.rope.slice(line_start..state.cursor_char_idx).to_string();
            let word = word_before_cursor(&line_head);
            let word_start_idx = state.cursor_char_idx - word.chars().count();
            let word_start = proto::to_position(documents::position(&state.rope, word_start_idx, self.encoding()));
            let word_range = Range { start: word_start, end: position };
            // Expansions are answered at once: the model's item joins them only if it is ready.
            let mut items = self.expansion_items(&uri, &state.language_id, word, word_range);
            let waiting = if items.is_empty() { Waiting::UntilReady } else { Waiting::Budget };
            let (answer, _) = self.answer_bounded(state.clone(), waiting).await;
            let Answer::Ready(suggestion) = answer else {
                return Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items })));
            };
            let full_text = cap_chars(&suggestion.text, MAX_ITEM_TEXT_CHARS);
            let first_line = suggestion.text.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
            let label = cap_chars(&format!("{word}{}", if suggestion.text.starts_with('\n') { first_line.trim_start() } else { first_line }), MAX_LABEL_CHARS);
            let item = CompletionItem {
                label: label.clone(),
                kind: Some(CompletionItemKind::TEXT),
                detail: Some("Ghostline".to_string()),
                documentation: Some(Documentation::MarkupContent(MarkupContent {
                    kind: MarkupKind::Markdown,
                    value: format!("```\n{}{}\n```", word, full_text),
                })),
                preselect: Some(true),
                sort_text: Some("0".to_string()),
                filter_text: Some(format!("{word}{}", suggestion.text.lines().next().unwrap_or_default())),
                insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                    range: word_range,
                    new_text: format!("{word}{full_text}"),
                })),
                command: Some(accept_command(&uri, &suggestion.text)),
                ..Default::default()
            };
            items.insert(0, item);
            Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items })))
        })
        .await
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        guarded("textDocument/codeAction", async {
            let uri = params.text_document.uri;
            let Some(document) = self.documents.get(uri.as_str()) else {
                return Err(invalid_params(format!("document {} is not open", uri.as_str())));
            };
            if document.diverged.is_some() {
                return Ok(None);
            }
            let first_line = params.range.start.line as usize;
            // A selection that ends at the start of a line does not include that line.
            let last_line = if params.range.end.line > params.range.start.line && params.range.end.character == 0 {
                params.range.end.line as usize - 1
            } else {
                params.range.end.line as usize
            };
            if last_line >= document.rope.len_lines() || (first_line..=last_line).all(|line| document.rope.line(line).to_string().trim().is_empty()) {
                return Ok(None);
            }
            let action = CodeAction {
                title: "Ghostline: expand into code".to_string(),
                kind: Some(CodeActionKind::REFACTOR_REWRITE),
                command: Some(Command {
                    title: "Ghostline: expand into code".to_string(),
                    command: EXPAND_COMMAND.to_string(),
                    arguments: Some(vec![json!(uri.as_str()), json!(first_line), json!(last_line)]),
                }),
                ..Default::default()
            };
            Ok(Some(vec![CodeActionOrCommand::CodeAction(action)]))
        })
        .await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        guarded("workspace/executeCommand", async {
            match params.command.as_str() {
                ACCEPT_COMMAND => {
                    self.scheduler.record_accepted();
                    Ok(None)
                }
                EXPAND_COMMAND => self.expand(&params.arguments).await.map(Some),
                other => Err(invalid_params(format!("unknown command `{other}`; Ghostline offers {ACCEPT_COMMAND} and {EXPAND_COMMAND}"))),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_oldest_waiting_request_is_told_to_answer() {
        let requests = WaitingRequests::default();
        let tickets: Vec<WaitTicket> = (0..MAX_WAITING_REQUESTS + 2).map(|_| requests.enter()).collect();
        let told: Vec<bool> = tickets.iter().map(|ticket| ticket.preempted.notified().now_or_never().is_some()).collect();
        assert_eq!(told.iter().filter(|told| **told).count(), 2, "{told:?}");
        assert!(told[0] && told[1] && !told[2], "the oldest two: {told:?}");
        drop(tickets);
        assert!(requests.queue.lock().unwrap().is_empty(), "tickets leave the queue when dropped");
    }

    #[test]
    fn word_before_cursor_takes_identifier_characters() {
        assert_eq!(word_before_cursor("    let total_sum"), "total_sum");
        assert_eq!(word_before_cursor("print("), "");
        assert_eq!(word_before_cursor("x = größe"), "größe");
        assert_eq!(word_before_cursor(""), "");
    }

    #[test]
    fn long_labels_are_capped() {
        assert_eq!(cap_chars("abcdef", 3), "abc…");
        assert_eq!(cap_chars("abc", 3), "abc");
    }
}

/// Why the engine is not usable.
#[derive(Debug, thiserror::Error)]
enum LoadFailure {
    /// The model could not be found, fetched or loaded.
    #[error("{0}")]
    Model(String),
    /// The model loads, but decoding with it kills the process (the check in a child saw it).
    #[error("{0}")]
    EngineCheck(String),
}

/// Loads the engine in this process while a child process loads the same model and decodes a
/// few tokens (`probe`); the engine is handed out only when the child succeeded, so a llama.cpp
/// build that dies on this CPU never takes the server down. Both loads overlap.
fn load_checked_engine(config: &crate::config::Config) -> std::result::Result<Engine, LoadFailure> {
    let path = models::resolve(&config.model).map_err(|err| LoadFailure::Model(err.to_string()))?;
    let exe = probe::this_program().map_err(|err| LoadFailure::EngineCheck(format!("cannot find this program's path for the engine check: {err}")))?;
    let mut check = probe::start(&exe, &path, config.gpu_layers, probe::DEFAULT_DEADLINE).map_err(|err| LoadFailure::EngineCheck(err.to_string()))?;
    // The child loads first: a model file that crashes the loader (a truncated file, a GPU
    // driver) must not reach this process. Its decoding then overlaps this process's load.
    match check.wait_loaded() {
        Ok(()) => {}
        Err(err @ (probe::ProbeError::Crashed { .. } | probe::ProbeError::TimedOut(_))) => return Err(LoadFailure::EngineCheck(err.to_string())),
        Err(err) => return Err(LoadFailure::Model(err.to_string())),
    }
    let mut engine_config = EngineConfig::new(path);
    engine_config.context_tokens = config.context_tokens;
    engine_config.gpu_layers = config.gpu_layers;
    if let Some(threads) = config.threads {
        engine_config.threads = threads;
    }
    let engine = Engine::start(engine_config).map_err(|err| LoadFailure::Model(err.to_string()))?;
    match check.wait() {
        Ok(report) => {
            tracing::info!(decode_ms = report.decode_ms, generated = report.generated_tokens, "engine check passed");
            Ok(engine)
        }
        // A clean failure of the child (out of GPU memory with two copies loaded, say) is no
        // sign that decoding kills the process: the engine that loaded here is kept.
        Err(probe::ProbeError::Failed { reason, .. }) => {
            tracing::warn!(%reason, "the engine check failed without crashing; keeping the engine");
            Ok(engine)
        }
        Err(err) => Err(LoadFailure::EngineCheck(err.to_string())),
    }
}
