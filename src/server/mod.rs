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

mod commands;
mod custom;
mod framing;
mod guard;
mod inline;
pub mod keystroke;
mod loading;
mod proto;
mod waiting;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::config::{CompletionItemMode, Config, RawSettings};
use crate::documents::{self, DocumentStore, PositionEncoding};
use crate::scheduler::{Answer, CursorState, EngineState, Scheduler, Waiting};
use commands::{accept_command, cap_chars, word_before_cursor};
use guard::{guarded, guarded_notification, invalid_params};
use waiting::WaitingRequests;
use crate::sync::MutexExt;

/// How many requests may be in flight at once. Completion requests wait for the model, so this
/// is far above what an editor sends, keeping `$/cancelRequest` and `didChange` from queueing.
const MAX_CONCURRENCY: usize = 128;

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
        .custom_method("ghostline/document", Backend::document)
        .custom_method("ghostline/cursorRest", Backend::cursor_rest)
        .custom_method("ghostline/expandSuggestion", Backend::expand_suggestion)
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
    wants_ready_notification: Arc<AtomicBool>,
    /// The client declared `textDocument.inlineCompletion` (it shows ghost text).
    client_has_inline_completion: AtomicBool,
    /// Settings errors found in `initialize`, shown once the client can receive messages.
    pending_messages: Mutex<Vec<String>>,
    /// Starts the engine the settings name, and again after a crash.
    loader: loading::Loader,
    /// Set by `shutdown`: the exit code says whether the client shut the server down first.
    shutdown_requested: Arc<AtomicBool>,
    /// Set by the first `initialized`; a second one is ignored.
    initialized: AtomicBool,
    /// Changes rejected (their documents may differ from the editor's; for `ghostline/stats`).
    rejected_changes: AtomicU64,
    /// Parses documents' trees again after opens and edits, off the LSP loop: one thread, at
    /// most one queued parse per document.
    parser: crate::background::LatestWins<String>,
    waiting_requests: WaitingRequests,
}

impl Backend {
    fn new(client: Client, config: Config, shutdown_requested: Arc<AtomicBool>) -> Backend {
        let scheduler = Scheduler::new(config);
        Backend {
            loader: loading::Loader::new(scheduler.clone(), client.clone()),
            client,
            documents: Arc::new(DocumentStore::default()),
            scheduler,
            encoding: Mutex::new(PositionEncoding::Utf16),
            wants_ready_notification: Arc::new(AtomicBool::new(false)),
            client_has_inline_completion: AtomicBool::new(false),
            pending_messages: Mutex::new(Vec::new()),
            shutdown_requested,
            initialized: AtomicBool::new(false),
            rejected_changes: AtomicU64::new(0),
            parser: crate::background::LatestWins::start("ghostline-parse"),
            waiting_requests: WaitingRequests::default(),
        }
    }

    fn encoding(&self) -> PositionEncoding {
        *self.encoding.locked()
    }

    fn cursor_state(&self, uri: &Uri, position: Position) -> Result<CursorState> {
        keystroke::cursor_state(&self.documents, uri.as_str(), proto::position(position), self.encoding()).map_err(invalid_params)
    }

    /// Queues a parse of the document's tree at `version` on the parse thread (replacing a
    /// queued parse of an older version).
    fn refresh_syntax_later(&self, uri: String, version: i32) {
        let documents = self.documents.clone();
        self.parser.submit(uri.clone(), move || documents.refresh_syntax(&uri, version));
    }

    async fn show_pending_messages(&self) {
        let messages: Vec<String> = std::mem::take(&mut *self.pending_messages.locked());
        for message in messages {
            self.client.show_message(MessageType::WARNING, format!("Ghostline: {message}")).await;
        }
    }
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
            *self.encoding.locked() = encoding;
            let has_progress = params
                .capabilities
                .window
                .as_ref()
                .and_then(|window| window.work_done_progress)
                .unwrap_or(false);
            self.loader.with_progress.store(has_progress, Ordering::SeqCst);
            let has_inline = params.capabilities.text_document.as_ref().is_some_and(|text| text.inline_completion.is_some());
            self.client_has_inline_completion.store(has_inline, Ordering::SeqCst);
            let experimental_ready = params
                .capabilities
                .experimental
                .as_ref()
                .and_then(|experimental| experimental.pointer("/ghostline/suggestionReady"))
                .and_then(Value::as_bool)
                .unwrap_or(false);

            let mut config = (*self.scheduler.config()).clone();
            let mut wants_ready = experimental_ready;
            if let Some(options) = &params.initialization_options {
                match RawSettings::from_json(options) {
                    Ok(raw) => {
                        wants_ready |= raw.suggestion_ready_notification.unwrap_or(false);
                        let applied = config.apply(&raw);
                        self.pending_messages.locked().extend(applied.errors);
                    }
                    Err(err) => self.pending_messages.locked().push(err),
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
        self.loader.load_configured();
        self.loader.restart_after_crashes();
        self.tell_upgrades();
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
            match keystroke::apply_change(&self.documents, &self.scheduler, &uri, params.text_document.version, &changes, self.encoding()) {
                // The tree is parsed again off the keystroke path (a quote that turns the rest
                // of a large file into a string costs milliseconds).
                Ok(keystroke::Applied::Scheduled(version)) => self.refresh_syntax_later(uri, version),
                // Built from text the editor may not have: no job.
                Ok(keystroke::Applied::Diverged) => {}
                Err(err) => {
                    self.rejected_changes.fetch_add(1, Ordering::SeqCst);
                    let current = self.documents.get(&uri).map(|document| document.version);
                    tracing::warn!(
                        %uri, %err, editor_version = params.text_document.version, ?current,
                        "rejected a change: the document may now differ from the editor's, and its requests are answered empty until the whole text is sent again"
                    );
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
            let mut config = (*self.scheduler.config()).clone();
            let applied = config.apply(&raw);
            self.scheduler.set_config(config);
            if applied.engine_changed {
                self.loader.load_configured();
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
            let model_item = match self.scheduler.config().completion_item {
                CompletionItemMode::Auto => !self.client_has_inline_completion.load(Ordering::SeqCst),
                CompletionItemMode::Always => true,
                CompletionItemMode::Never => false,
            };
            if !model_item {
                return Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items })));
            }
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
                    // `{uri, chars, acceptedChars?}`: the suggestion's length and what was
                    // accepted of it (all of it when absent).
                    let argument = params.arguments.first();
                    let number = |key: &str| argument.and_then(|argument| argument.get(key)).and_then(Value::as_u64);
                    let chars = number("chars").unwrap_or(0);
                    self.scheduler.record_accepted(chars, number("acceptedChars").unwrap_or(chars));
                    Ok(None)
                }
                EXPAND_COMMAND => self.expand(&params.arguments).await.map(Some),
                other => Err(invalid_params(format!("unknown command `{other}`; Ghostline offers {ACCEPT_COMMAND} and {EXPAND_COMMAND}"))),
            }
        })
        .await
    }
}

