// Ghostline for VS Code: starts the `ghostline` language server (found by server.ts: the
// ghostline.path setting, the server bundled in the .vsix, PATH or ~/.cargo/bin) over stdio
// through vscode-languageclient, so inline completion flows through the standard
// textDocument/inlineCompletion method, maps the `ghostline.*` settings to the server's
// configuration, and shows a status bar item (model, state, last latency, acceptance rate).
// How a suggestion reaches the ghost text is `ghostline.suggestionMode`: "longPoll", a request
// waits for the whole suggestion and VS Code's cancellation (a key typed meanwhile) becomes
// $/cancelRequest; or "pushRefresh", a request is answered within `ghostline.budgetMs` and the
// extension refreshes the ghost text on each ghostline/suggestionReady (first words, then the
// whole line).
//
// This file never builds suggestions or edits documents itself: the language client shows the
// server's items and runs their `ghostline.accept` command when one is accepted; a word or a
// line accepted with VS Code's own commands is reported to the server here (see trackEdit).

import * as vscode from 'vscode';
import {
  InlineCompletionRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';

import { ResolvedServer, ServerSource, resolveServer } from './server';

/** Server settings (camelCase, as the server reads them) with their `ghostline.*` names. */
const SERVER_SETTINGS = [
  'model',
  'threads',
  'contextTokens',
  'gpuLayers',
  'budgetMs',
  'maxTokens',
  'multiLine',
  'maxLines',
  'debounceMs',
  'completionItem',
  'languages',
  'prefixLines',
  'suffixLines',
  'syntax',
  'prefetch',
  'crossFileChunks',
  'crossFileLines',
  'maxWaitMs',
  'blankLineSuffixLines',
  'anchorLines',
  'coldPromptMs',
  'savedKvMiB',
  'reuseMinTokens',
  'draftTokens',
  'expansions',
  'backend',
] as const;

/** How the Ghostline output and error messages name where the server came from. */
const SOURCE_NAMES: Record<ServerSource, string> = {
  setting: 'ghostline.path',
  bundled: 'bundled with the extension',
  path: 'found on PATH',
  cargo: 'installed by cargo install',
};

/** Settings that need a new server process when they change. */
const RESTART_SETTINGS = ['ghostline.path', 'ghostline.trace.server'];

/** How a suggestion reaches the ghost text (`ghostline.suggestionMode`, see the file's top). */
type SuggestionMode = 'longPoll' | 'pushRefresh';

/** The server's command that counts an acceptance: `{uri, chars, acceptedChars?}`. */
const ACCEPT_COMMAND = 'ghostline.accept';

/** How often the status bar refreshes its counters from ghostline/stats. */
const STATS_INTERVAL_MS = 5000;

/** pushRefresh: how long an answer fetched after ghostline/suggestionReady waits for VS Code
 * to ask for it. */
const FRESH_ANSWER_MS = 2000;

/** pushRefresh: the shortest time between two refreshes of the ghost text: each one hides it
 * for a moment (see onSuggestionReady), so growth that comes faster is shown in fewer, larger
 * steps. */
const REFRESH_INTERVAL_MS = 150;

type InlineResult = vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined;

/** A document state: its URI, version and cursor. */
function stateKey(uri: string, version: number, line: number, character: number): string {
  return `${uri}@${version}:${line}:${character}`;
}

function firstText(result: InlineResult): string {
  const items = Array.isArray(result) ? result : result?.items;
  const item = items?.[0];
  if (!item) {
    return '';
  }
  return typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
}

/** The argument of an item's `ghostline.accept` command, which VS Code passes back as this very
 * object when the item is accepted. */
interface AcceptArgument {
  uri: string;
  chars: number;
  acceptedChars?: number;
}

function acceptArgument(result: InlineResult): AcceptArgument | undefined {
  const items = Array.isArray(result) ? result : result?.items;
  const command = items?.[0]?.command;
  const argument: unknown = command?.command === ACCEPT_COMMAND ? command.arguments?.[0] : undefined;
  return typeof argument === 'object' && argument !== null && typeof (argument as AcceptArgument).chars === 'number'
    ? (argument as AcceptArgument)
    : undefined;
}

/** Characters as the server counts them (Unicode scalar values, not UTF-16 units). */
function charCount(text: string): number {
  return [...text].length;
}

/** What the mode is now. */
function suggestionMode(): SuggestionMode {
  return vscode.workspace.getConfiguration('ghostline').get<string>('suggestionMode') === 'pushRefresh' ? 'pushRefresh' : 'longPoll';
}

/** A suggestion as VS Code shows it: where (document version and cursor offset) and the text
 * still shown there, with its item's accept argument. */
interface ShownSuggestion {
  uri: string;
  version: number;
  offset: number;
  text: string;
  accept: AcceptArgument | undefined;
}

interface SuggestionReadyParams {
  uri: string;
  version: number;
  position: { line: number; character: number };
}

interface Summary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

interface Stats {
  counters: { requests: number; answeredWithSuggestion: number; accepted: number; [name: string]: number };
  responseMs: Summary;
  timeToSuggestionMs: Summary;
  engine: { state: string; error?: string; model?: { name: string }; backend?: Backend };
  config: { model: string };
  currentJob?: CurrentJob | null;
}

/** `currentJob` of ghostline/stats: the job the model is on now. */
interface CurrentJob {
  stage: string;
  ageMs: number;
  promptTokens: number;
  promptTokensDone: number;
  generatedTokens: number;
}

/** The tooltip's line for a job still running (nothing once it ended). */
function currentJobLine(job: CurrentJob | null | undefined): string | undefined {
  if (!job || (job.stage !== 'prompt' && job.stage !== 'generating')) {
    return undefined;
  }
  return `working: ${job.stage}, ${job.promptTokensDone} of ${job.promptTokens} prompt tokens, ${job.generatedTokens} generated, ${(job.ageMs / 1000).toFixed(1)} s`;
}

/** `engine.backend` of ghostline/stats: where the jobs run. */
interface Backend {
  kind: string;
  url?: string;
  remoteJobs?: number;
  fallbackJobs?: number;
  usingFallback?: boolean;
  lastError?: string | null;
}

/** The status bar's word for the backend (nothing for the embedded model) and the tooltip's
 * line about it. */
function backendStatus(backend: Backend | undefined): { label?: string; line?: string } {
  if (!backend || backend.kind === 'local') {
    return {};
  }
  const counts = `${backend.remoteJobs ?? 0} jobs there, ${backend.fallbackJobs ?? 0} by the embedded model`;
  if (backend.usingFallback) {
    return {
      label: 'local fallback',
      line: `backend: ${backend.kind} at ${backend.url} is failing, the embedded model answers until it is back (${counts}); last error: ${backend.lastError ?? 'none'}`,
    };
  }
  return { label: backend.kind, line: `backend: ${backend.kind} at ${backend.url} (${counts})` };
}

type EngineState = 'starting' | 'loading' | 'ready' | 'error' | 'off';

class Ghostline implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private readonly output = vscode.window.createOutputChannel('Ghostline', { log: true });
  private readonly status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private statsTimer: NodeJS.Timeout | undefined;
  private state: EngineState = 'off';
  private modelName = '';
  private backend: { label?: string; line?: string } = {};
  private currentJob: string | undefined;
  private errorMessage = '';
  private lastLatencyMs: number | undefined;
  /** The first request for a state; the latency shown is to its first answer with a suggestion. */
  private firstAsked: { key: string; at: number; answered: boolean } | undefined;
  private acceptanceRate: number | undefined;
  /** The text VS Code was last given for a state (what it shows, if anything). */
  private answered: { key: string; text: string } | undefined;
  /** The suggestion VS Code was last given, moved along by the keys typed or accepted through
   * it (see trackEdit). */
  private shown: ShownSuggestion | undefined;
  /** The start of `shown` just inserted by the latest edit, until the selection change that
   * tells a typed key from a partial accept (see trackSelection). */
  private inserted: { uri: string; version: number; endOffset: number; before: ShownSuggestion; part: string } | undefined;
  /** A grown answer fetched after ghostline/suggestionReady (pushRefresh), or an expanded one
   * ("Expand Suggestion"), for VS Code's next request. */
  private fresh: { key: string; result: InlineResult; at: number } | undefined;
  /** pushRefresh: counts ghostline/suggestionReady refreshes; only the latest one goes on. */
  private refreshSeq = 0;
  /** When the ghost text was last refreshed (performance.now()). */
  private lastRefreshAt = -Infinity;
  /** Counts start() and stop() calls: a start that finds the binary after a later call gives up. */
  private startSeq = 0;
  /** Runs out `ghostline.restMs` after the cursor's latest move (see cursorMoved). */
  private restTimer: NodeJS.Timeout | undefined;
  /** The latest edit, until the selection change that follows it: the cursor moved by typing
   * (the API reports typing as a Keyboard move), which is no rest. */
  private lastEdit: { uri: string; version: number } | undefined;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.status.command = 'ghostline.showStats';
    this.status.show();
    this.render();
  }

  async start(): Promise<void> {
    if (this.client) {
      return;
    }
    const config = vscode.workspace.getConfiguration('ghostline');
    if (!config.get<boolean>('enable', true)) {
      this.state = 'off';
      this.render();
      return;
    }
    const seq = ++this.startSeq;
    let server: ResolvedServer;
    try {
      server = await resolveServer(config.get<string>('path') ?? '', this.context.extensionPath);
      if (seq !== this.startSeq) {
        return; // stopped, or started again, while looking for the binary
      }
    } catch (err) {
      if (seq !== this.startSeq) {
        return;
      }
      this.state = 'error';
      this.errorMessage = err instanceof Error ? err.message : String(err);
      this.output.error(this.errorMessage);
      this.render();
      void vscode.window.showErrorMessage(`Ghostline: ${this.errorMessage}`);
      return;
    }
    const command = server.command;
    this.output.info(`server ${JSON.stringify(server)}`);
    this.output.info(`mode ${JSON.stringify({ suggestionMode: suggestionMode() })}`);
    // No `transport`: TransportKind.stdio would append `--stdio`, which `ghostline serve` rejects.
    const serverOptions: ServerOptions = {
      run: { command, args: ['serve'] },
      debug: { command, args: ['serve'], options: { env: { ...process.env, GHOSTLINE_LOG: 'debug' } } },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      outputChannel: this.output,
      initializationOptions: serverSettings(),
      middleware: {
        // The latency shown is from the first request for a document state to the answer
        // with a suggestion for it (in pushRefresh mode often after ghostline/suggestionReady).
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          const key = stateKey(document.uri.toString(), document.version, position.line, position.character);
          if (this.firstAsked?.key !== key) {
            this.firstAsked = { key, at: performance.now(), answered: false };
          }
          const asked = this.firstAsked;
          let res: InlineResult;
          const fresh = this.fresh;
          if (fresh && fresh.key === key && performance.now() - fresh.at < FRESH_ANSWER_MS) {
            // VS Code asks again after a refresh (below) or an expansion: the answer is already here.
            this.fresh = undefined;
            res = fresh.result;
          } else {
            // The token goes with the request: when VS Code stops waiting for it (a key typed
            // meanwhile), the language client sends $/cancelRequest and the server drops it.
            const askedAt = performance.now();
            res = await next(document, position, context, token);
            this.logAnswer(key, res, performance.now() - askedAt);
          }
          if (token.isCancellationRequested) {
            this.logCancelled(key);
          } else {
            const text = firstText(res);
            this.answered = { key, text };
            this.shown = text === ''
              ? undefined
              : { uri: document.uri.toString(), version: document.version, offset: document.offsetAt(position), text, accept: acceptArgument(res) };
          }
          if (firstText(res) !== '' && asked === this.firstAsked && !asked.answered) {
            asked.answered = true;
            this.lastLatencyMs = performance.now() - asked.at;
            this.render();
          }
          return res;
        },
      },
    };
    const client = new LanguageClient('ghostline', 'Ghostline', serverOptions, clientOptions);
    client.registerProposedFeatures();
    this.client = client;
    this.state = 'starting';
    this.render();
    client.onDidChangeState((event) => {
      if (event.newState === State.Stopped && this.client === client) {
        this.state = this.state === 'off' ? 'off' : 'error';
        this.errorMessage = this.errorMessage || 'the server stopped';
        this.render();
      }
    });
    try {
      await client.start();
    } catch (err) {
      this.state = 'error';
      this.errorMessage = `could not start \`${command}\` (${SOURCE_NAMES[server.source]}): ${String(err)}`;
      this.render();
      void vscode.window.showErrorMessage(`Ghostline: ${this.errorMessage}`);
      this.client = undefined;
      return;
    }
    this.state = 'loading';
    this.render();
    client.onNotification('ghostline/suggestionReady', (params: SuggestionReadyParams) => void this.onSuggestionReady(params));
    this.statsTimer = setInterval(() => void this.refreshStats(), STATS_INTERVAL_MS);
    void this.refreshStats();
  }

  async stop(): Promise<void> {
    this.startSeq++;
    if (this.statsTimer) {
      clearInterval(this.statsTimer);
      this.statsTimer = undefined;
    }
    const client = this.client;
    this.client = undefined;
    this.state = 'off';
    this.render();
    if (client) {
      await client.stop();
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Whether a document state is the one in the active editor (same version, cursor there). */
  private isCurrent(uri: string, version: number, position: { line: number; character: number }): boolean {
    const editor = vscode.window.activeTextEditor;
    if (!editor || editor.document.uri.toString() !== uri || editor.document.version !== version) {
      return false;
    }
    const selection = editor.selection;
    return selection.isEmpty && selection.active.line === position.line && selection.active.character === position.character;
  }

  /** Writes a server answer to the output (ghostline.logSuggestions): `suggestion {json}` with
   * its text, or `empty {json}`; with the milliseconds it took when VS Code asked for it. */
  private logAnswer(key: string, result: InlineResult, ms?: number): void {
    if (!vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false)) {
      return;
    }
    const insertText = firstText(result);
    const match = /^(.*)@(\d+):(\d+):(\d+)$/.exec(key);
    if (match) {
      const [, uri, version, line, character] = match;
      const entry = { uri, version: Number(version), line: Number(line), character: Number(character), ms: ms === undefined ? undefined : Math.round(ms) };
      this.output.info(insertText === '' ? `empty ${JSON.stringify(entry)}` : `suggestion ${JSON.stringify({ ...entry, insertText })}`);
    }
  }

  /** Writes a request VS Code stopped waiting for to the output (ghostline.logSuggestions). */
  private logCancelled(key: string): void {
    if (vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false)) {
      this.output.info(`cancelled ${JSON.stringify({ key })}`);
    }
  }

  /** A document changed: when the change inserted the start of the suggestion shown, at its
   * cursor (a key typed through it, or a word or a line accepted with VS Code's
   * editor.action.inlineSuggest.acceptNextWord / acceptNextLine), VS Code goes on showing the
   * rest; anything else ends it. Which of the two it was, the selection change that follows
   * says (trackSelection). */
  trackEdit(event: vscode.TextDocumentChangeEvent): void {
    if (event.contentChanges.length > 0) {
      this.lastEdit = { uri: event.document.uri.toString(), version: event.document.version };
    }
    const shown = this.shown;
    this.inserted = undefined;
    if (!shown || event.document.uri.toString() !== shown.uri || event.contentChanges.length === 0) {
      return;
    }
    this.shown = undefined;
    const change = event.contentChanges.length === 1 ? event.contentChanges[0] : undefined;
    if (
      !change ||
      change.rangeLength !== 0 ||
      change.rangeOffset !== shown.offset ||
      event.document.version !== shown.version + 1 ||
      change.text === '' ||
      change.text.length >= shown.text.length ||
      !shown.text.startsWith(change.text)
    ) {
      return;
    }
    const endOffset = shown.offset + change.text.length;
    this.shown = { ...shown, version: event.document.version, offset: endOffset, text: shown.text.slice(change.text.length) };
    this.inserted = { uri: shown.uri, version: event.document.version, endOffset, before: shown, part: change.text };
  }

  /** The selection changed. After an edit that inserted the start of the suggestion shown
   * (trackEdit), a typed key moves the cursor with the kind Keyboard; VS Code's partial accept
   * moves it with a source the API reports as no kind (`inlineCompletionPartialAccept`). The
   * stable API has no partial-accept event (InlineCompletionItemProvider's
   * handleDidPartiallyAcceptCompletionItem is the proposed `inlineCompletionsAdditions` API,
   * which an installed extension cannot use), so this is where a partial accept is seen: it is
   * reported to the server with `acceptedChars`, and the item's own accept argument is left
   * counting only the rest, should it be accepted too. */
  trackSelection(event: vscode.TextEditorSelectionChangeEvent): void {
    const inserted = this.inserted;
    this.inserted = undefined;
    const client = this.client;
    const document = event.textEditor.document;
    if (
      !inserted ||
      !client ||
      !client.isRunning() ||
      event.kind !== undefined ||
      document.uri.toString() !== inserted.uri ||
      document.version !== inserted.version ||
      event.selections.length !== 1 ||
      !event.selections[0].isEmpty ||
      document.offsetAt(event.selections[0].active) !== inserted.endOffset
    ) {
      return;
    }
    const chars = charCount(inserted.before.text);
    const acceptedChars = charCount(inserted.part);
    if (inserted.before.accept) {
      inserted.before.accept.chars = chars - acceptedChars;
    }
    if (vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false)) {
      this.output.info(`partialAccept ${JSON.stringify({ uri: inserted.uri, chars, acceptedChars })}`);
    }
    void vscode.commands.executeCommand(ACCEPT_COMMAND, { uri: inserted.uri, chars, acceptedChars });
  }

  /** ghostline/suggestionReady (pushRefresh mode only): the suggestion for a document state is
   * ready or has grown past what the server last answered for it (it is sent again as it grows:
   * first words, then the whole line). If that state is still the one in the active editor,
   * fetch the grown answer and have VS Code show it, also while a shorter one is shown.
   *
   * `editor.action.inlineSuggest.trigger` alone does not do that: VS Code asks its providers
   * again only when no earlier request for the same position and version already satisfies the
   * new one, and after one explicit trigger every later one is satisfied, so the ghost text would
   * stay at the first words. Hiding first drops the shown suggestion and its request; the
   * trigger then asks again, and this extension answers that at once with the answer fetched
   * here, so the old text is gone only for the round trip to the extension host. */
  private async onSuggestionReady(params: SuggestionReadyParams): Promise<void> {
    const client = this.client;
    if (!client || suggestionMode() !== 'pushRefresh') {
      return;
    }
    const uri = vscode.Uri.parse(params.uri).toString();
    const logging = vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false);
    const current = this.isCurrent(uri, params.version, params.position);
    if (logging) {
      this.output.info(`ready ${JSON.stringify({ uri, version: params.version, line: params.position.line, character: params.position.character, current })}`);
    }
    if (!current) {
      return;
    }
    const seq = ++this.refreshSeq;
    const key = stateKey(uri, params.version, params.position.line, params.position.character);
    const wait = this.lastRefreshAt + REFRESH_INTERVAL_MS - performance.now();
    if (wait > 0) {
      // Right after a refresh: wait, then ask once for whatever the suggestion has become.
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (seq !== this.refreshSeq || !this.isCurrent(uri, params.version, params.position)) {
        return;
      }
    }
    let result: InlineResult;
    try {
      const answer = await client.sendRequest(InlineCompletionRequest.type, {
        textDocument: { uri: params.uri },
        position: params.position,
        context: { triggerKind: 2 }, // InlineCompletionTriggerKind.Automatic
      });
      result = await client.protocol2CodeConverter.asInlineCompletionResult(answer);
    } catch (err) {
      this.output.debug(`refresh after ghostline/suggestionReady failed: ${String(err)}`);
      return;
    }
    this.logAnswer(key, result);
    if (seq !== this.refreshSeq || !this.isCurrent(uri, params.version, params.position)) {
      return;
    }
    const text = firstText(result);
    if (text === '' || (this.answered?.key === key && this.answered.text === text)) {
      return; // nothing new to show
    }
    this.fresh = { key, result, at: performance.now() };
    this.lastRefreshAt = performance.now();
    if (logging) {
      this.output.info(`refresh ${JSON.stringify({ uri, version: params.version, shown: this.answered?.key === key ? this.answered.text : '', insertText: text })}`);
    }
    // One call, so that both commands run back to back in the window.
    await vscode.commands.executeCommand('runCommands', {
      commands: ['editor.action.inlineSuggest.hide', 'editor.action.inlineSuggest.trigger'],
    });
  }

  async stats(): Promise<Stats | undefined> {
    if (!this.client || !this.client.isRunning()) {
      return undefined;
    }
    // With params: the server rejects a request without a params field.
    return this.client.sendRequest<Stats>('ghostline/stats', {});
  }

  private async refreshStats(): Promise<void> {
    let stats: Stats | undefined;
    try {
      stats = await this.stats();
    } catch {
      return;
    }
    if (!stats) {
      return;
    }
    const engine = stats.engine;
    this.backend = backendStatus(engine.backend);
    this.currentJob = currentJobLine(stats.currentJob);
    if (engine.state === 'ready') {
      this.state = 'ready';
      this.modelName = engine.model?.name ?? stats.config.model;
    } else if (engine.state === 'failed') {
      this.state = 'error';
      this.errorMessage = engine.error ?? 'the model failed to load';
      this.modelName = stats.config.model;
    } else {
      this.state = 'loading';
      this.modelName = stats.config.model;
    }
    const shown = stats.counters.answeredWithSuggestion;
    this.acceptanceRate = shown > 0 ? (stats.counters.accepted + (stats.counters.acceptedPartially ?? 0)) / shown : undefined;
    this.render();
  }

  private render(): void {
    const icon = { starting: '$(sync~spin)', loading: '$(sync~spin)', ready: '$(sparkle)', error: '$(error)', off: '$(circle-slash)' }[this.state];
    const parts = [this.state === 'ready' ? `${icon} Ghostline` : `${icon} Ghostline: ${this.state}`];
    if (this.state === 'ready' && this.backend.label) {
      parts.push(this.backend.label);
    }
    if (this.state === 'ready' && this.lastLatencyMs !== undefined) {
      parts.push(`${Math.round(this.lastLatencyMs)} ms`);
    }
    if (this.state === 'ready' && this.acceptanceRate !== undefined) {
      parts.push(`${Math.round(this.acceptanceRate * 100)}% accepted`);
    }
    this.status.text = parts.join(' · ');
    const tooltip = new vscode.MarkdownString();
    tooltip.appendMarkdown(`**Ghostline**: ${this.state}${this.state === 'error' ? ` (${this.errorMessage})` : ''}\n\n`);
    if (this.modelName) {
      tooltip.appendMarkdown(`model: ${this.modelName}\n\n`);
    }
    if (this.backend.line) {
      tooltip.appendText(this.backend.line);
      tooltip.appendMarkdown('\n\n');
    }
    if (this.currentJob) {
      tooltip.appendText(this.currentJob);
      tooltip.appendMarkdown('\n\n');
    }
    if (this.lastLatencyMs !== undefined) {
      tooltip.appendMarkdown(`last suggestion: ${Math.round(this.lastLatencyMs)} ms\n\n`);
    }
    if (this.acceptanceRate !== undefined) {
      tooltip.appendMarkdown(`accepted: ${Math.round(this.acceptanceRate * 100)}% of suggestions shown\n\n`);
    }
    tooltip.appendMarkdown('Click for stats.');
    this.status.tooltip = tooltip;
    const background = this.state === 'error' ? 'statusBarItem.errorBackground' : this.backend.label === 'local fallback' ? 'statusBarItem.warningBackground' : undefined;
    this.status.backgroundColor = background ? new vscode.ThemeColor(background) : undefined;
  }

  /** After the cursor moves by keyboard or mouse (not by typing) and rests `ghostline.restMs`
   * with the document unchanged, tells the server where (ghostline/cursorRest): unless a job serves that state it
   * starts there, so the first key typed finds the prompt decoded. */
  cursorMoved(event: vscode.TextEditorSelectionChangeEvent): void {
    if (this.restTimer) {
      clearTimeout(this.restTimer);
      this.restTimer = undefined;
    }
    const client = this.client;
    const restMs = vscode.workspace.getConfiguration('ghostline').get<number>('restMs', 300);
    const document = event.textEditor.document;
    const edited = this.lastEdit;
    this.lastEdit = undefined;
    const typed = edited !== undefined && edited.uri === document.uri.toString() && edited.version === document.version;
    const moved = !typed && (event.kind === vscode.TextEditorSelectionChangeKind.Keyboard || event.kind === vscode.TextEditorSelectionChangeKind.Mouse);
    const selection = event.selections[0];
    if (!client || !client.isRunning() || !moved || restMs <= 0 || event.selections.length !== 1 || !selection.isEmpty) {
      return;
    }
    const version = document.version;
    this.restTimer = setTimeout(() => {
      this.restTimer = undefined;
      if (this.client !== client || !client.isRunning() || document.version !== version || vscode.window.activeTextEditor?.document !== document) {
        return;
      }
      const position = client.code2ProtocolConverter.asPosition(selection.active);
      if (vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false)) {
        this.output.info(`rest ${JSON.stringify({ uri: document.uri.toString(), version, line: position.line, character: position.character })}`);
      }
      void client.sendNotification('ghostline/cursorRest', { textDocument: { uri: document.uri.toString() }, position });
    }, restMs);
  }

  /** `ghostline.suggestionMode` changed: a refresh of the old mode does not go on. */
  modeChanged(): void {
    this.refreshSeq++;
    this.fresh = undefined;
    this.output.info(`mode ${JSON.stringify({ suggestionMode: suggestionMode() })}`);
  }

  /** Sends the settings to the running server (with the mode's opt-in to
   * ghostline/suggestionReady). */
  sendSettings(): void {
    if (!this.client || !this.client.isRunning()) {
      return;
    }
    void this.client.sendNotification('workspace/didChangeConfiguration', {
      settings: { ghostline: serverSettings() },
    });
  }

  /** "Expand Suggestion": asks the server once for a longer, multi-line suggestion at the
   * cursor (`ghostline/expandSuggestion`; the settings stay as they are for every other
   * request) and has VS Code show it. */
  async expand(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const client = this.client;
    if (!editor || !client || !client.isRunning()) {
      return;
    }
    const document = editor.document;
    const position = editor.selection.active;
    const answer = await client.sendRequest('ghostline/expandSuggestion', {
      textDocument: { uri: document.uri.toString() },
      position: client.code2ProtocolConverter.asPosition(position),
    });
    const result = await client.protocol2CodeConverter.asInlineCompletionResult(answer as Parameters<typeof client.protocol2CodeConverter.asInlineCompletionResult>[0]);
    if (vscode.workspace.getConfiguration('ghostline').get<boolean>('logSuggestions', false)) {
      this.output.info(`expanded ${JSON.stringify({ uri: document.uri.toString(), version: document.version, line: position.line, character: position.character, insertText: firstText(result) })}`);
    }
    // VS Code's next request for this state gets the expanded answer (provideInlineCompletionItems).
    this.fresh = { key: stateKey(document.uri.toString(), document.version, position.line, position.character), result, at: performance.now() };
    await vscode.commands.executeCommand('editor.action.inlineSuggest.hide');
    await vscode.commands.executeCommand('editor.action.inlineSuggest.trigger');
  }

  /** "Log Server State at Cursor": writes the server's counters and, when it has no job
   * running, its suggestion for the state at the cursor to the Ghostline output, as a line
   * `state {json}`. For bug reports and for tests: what the server would suggest here, next to
   * the ghost text shown. It never asks while a job runs, so it cannot cause a
   * ghostline/suggestionReady refresh itself. */
  async logState(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const client = this.client;
    if (!editor || !client || !client.isRunning()) {
      this.output.info(`state ${JSON.stringify({ error: 'no editor or no running server' })}`);
      return;
    }
    const document = editor.document;
    const position = editor.selection.active;
    const entry: Record<string, unknown> = {
      uri: document.uri.toString(),
      version: document.version,
      line: position.line,
      character: position.character,
    };
    try {
      const idle = (stats: Stats) => stats.counters.jobsEnded >= stats.counters.jobsStarted;
      const before = await client.sendRequest<Stats>('ghostline/stats', {});
      entry.idle = idle(before);
      entry.jobsStarted = before.counters.jobsStarted;
      entry.jobsEnded = before.counters.jobsEnded;
      entry.counters = before.counters;
      if (entry.idle) {
        const answer = await client.sendRequest(InlineCompletionRequest.type, {
          textDocument: { uri: document.uri.toString() },
          position: client.code2ProtocolConverter.asPosition(position),
          context: { triggerKind: 1 }, // InlineCompletionTriggerKind.Invoked
        });
        const after = await client.sendRequest<Stats>('ghostline/stats', {});
        // The answer is final only if it started no job (it came from a finished one).
        entry.idle = idle(after) && after.counters.jobsStarted === before.counters.jobsStarted;
        entry.insertText = firstText(await client.protocol2CodeConverter.asInlineCompletionResult(answer));
      }
    } catch (err) {
      entry.error = String(err);
    }
    entry.current = document.version === entry.version && editor.selection.active.isEqual(position);
    this.output.info(`state ${JSON.stringify(entry)}`);
  }

  async showStats(): Promise<void> {
    const stats = await this.stats();
    if (!stats) {
      void vscode.window.showInformationMessage('Ghostline is not running.');
      return;
    }
    const document = await vscode.workspace.openTextDocument({ language: 'json', content: JSON.stringify(stats, null, 2) });
    await vscode.window.showTextDocument(document, { preview: true });
  }

  dispose(): void {
    if (this.restTimer) {
      clearTimeout(this.restTimer);
    }
    void this.stop();
    this.status.dispose();
    this.output.dispose();
  }
}

/** The server settings from the `ghostline.*` configuration, without unset values, and the
 * opt-in to ghostline/suggestionReady of the mode (the server takes it in
 * initializationOptions and in every workspace/didChangeConfiguration, so a new mode needs no
 * restart). */
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration('ghostline');
  const res: Record<string, unknown> = { suggestionReadyNotification: suggestionMode() === 'pushRefresh' };
  for (const name of SERVER_SETTINGS) {
    const value = config.get(name);
    if (value !== undefined && value !== null && value !== '') {
      res[name] = value;
    }
  }
  return res;
}

/** "Choose Suggestion Mode": sets `ghostline.suggestionMode` in the user settings, to the mode
 * given (a keybinding's `args`) or the one picked. */
async function chooseSuggestionMode(mode?: unknown): Promise<void> {
  const modes: { label: SuggestionMode; detail: string }[] = [
    { label: 'longPoll', detail: 'A request waits for the whole suggestion; a key typed meanwhile cancels it.' },
    { label: 'pushRefresh', detail: 'The first words at once, refreshed as the suggestion grows (the ghost text blanks for a moment at each refresh).' },
  ];
  let chosen = modes.find((entry) => entry.label === mode)?.label;
  if (!chosen) {
    const picked = await vscode.window.showQuickPick(modes, { placeHolder: `Suggestion mode (now ${suggestionMode()})` });
    chosen = picked?.label;
  }
  if (chosen) {
    await vscode.workspace.getConfiguration('ghostline').update('suggestionMode', chosen, vscode.ConfigurationTarget.Global);
  }
}

let ghostline: Ghostline | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  ghostline = new Ghostline(context);
  context.subscriptions.push(
    ghostline,
    vscode.commands.registerCommand('ghostline.enable', async () => {
      await vscode.workspace.getConfiguration('ghostline').update('enable', true, vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand('ghostline.disable', async () => {
      await vscode.workspace.getConfiguration('ghostline').update('enable', false, vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand('ghostline.showStats', () => ghostline?.showStats()),
    vscode.commands.registerCommand('ghostline.expand', () => ghostline?.expand()),
    vscode.commands.registerCommand('ghostline.logState', () => ghostline?.logState()),
    vscode.commands.registerCommand('ghostline.chooseSuggestionMode', chooseSuggestionMode),
    vscode.window.onDidChangeTextEditorSelection((event) => {
      ghostline?.trackSelection(event);
      ghostline?.cursorMoved(event);
    }),
    vscode.workspace.onDidChangeTextDocument((event) => ghostline?.trackEdit(event)),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!ghostline || !event.affectsConfiguration('ghostline')) {
        return;
      }
      if (event.affectsConfiguration('ghostline.enable')) {
        const enabled = vscode.workspace.getConfiguration('ghostline').get<boolean>('enable', true);
        await (enabled ? ghostline.start() : ghostline.stop());
      } else if (RESTART_SETTINGS.some((name) => event.affectsConfiguration(name))) {
        await ghostline.restart();
      } else {
        ghostline.sendSettings();
        if (event.affectsConfiguration('ghostline.suggestionMode')) {
          ghostline.modeChanged();
        }
      }
    }),
  );
  await ghostline.start();
}

export async function deactivate(): Promise<void> {
  await ghostline?.stop();
}
