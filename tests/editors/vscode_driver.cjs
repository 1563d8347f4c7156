// Drives VS Code (code-server, started by tests/editors/vscode.sh with the Ghostline .vsix
// installed) in headless Chromium through playwright-core, as a user would. Before anything
// else it checks that the server the extension started is the bundled copy inside the
// installed extension: its output log says so, and /proc/PID/exe of every ghostline process
// under code-server is that file.
//
// The test (GHOSTLINE_PAINT_OUT not set), in the default `ghostline.suggestionMode`: opens a
// Python file, types, waits for the ghost text and for it to be the server's complete
// suggestion, saves a screenshot, checks that the ghost text was the server's answer (as the
// extension logged it, ghostline.logSuggestions), accepts its first word with Ctrl+Right
// (VS Code's own editor.action.inlineSuggest.acceptNextWord) and checks that the server counted
// a partial acceptance of that many characters, accepts the rest with Tab, saves the file and
// checks that it holds exactly what was typed and accepted, and that the server counted one
// whole acceptance and every character once (Ghostline: Show Stats and the counters of
// Ghostline: Log Server State at Cursor). In longPoll mode the server must have sent no
// ghostline/suggestionReady (the extension did not opt in). Then, switched to the other mode
// (Ghostline: Choose Suggestion Mode), on a new line, the ghost text must become the server's
// complete suggestion again; in pushRefresh mode through ghostline/suggestionReady refreshes
// (the server must have sent some). Last, Ghostline: Expand Suggestion there: the ghost text
// must become the server's expanded answer (ghostline/expandSuggestion).
//
// The keypress-to-paint measurement (GHOSTLINE_PAINT_OUT=FILE; a benchmark: it asserts nothing
// about times). In the file vscode.sh wrote (GHOSTLINE_PAINT_LINE_ABOVE, GHOSTLINE_PAINT_TYPED:
// the same file and line as the Neovim and Helix measurements), with VS Code's auto-closing of
// brackets and quotes off (as in Neovim and Helix, and so that each key changes the line by
// exactly its character) and auto-save off (vscode.sh sets both), once per mode, pushRefresh
// then longPoll (switched with Ghostline: Choose Suggestion Mode: the extension sends the new
// opt-in to the running server, no reload): the file is reverted to its saved text, the cursor
// moves to the end of the line above by keyboard and rests there (the extension sends
// ghostline/cursorRest) until the server has no job running and its answer there starts none
// (a user reading before writing), then Enter and the line are typed key by key with
// page.keyboard. Times are the page's own clock (performance.now()): a key's time is its
// keydown event's timeStamp (a capture listener on the window, before VS Code sees it); the
// ghost text is read at every animation frame (requestAnimationFrame, so the resolution is one
// frame, resolution_ms: the median frame interval) and each change of it or of the cursor's
// line is stamped. The ghost text is the inline `.ghost-text-decoration` parts and the lines of
// the `.ghost-text` view zone; the cursor's line is the `.view-line` at the cursor's height,
// without the ghost text. Per key:
//   - the key is processed at the first frame whose cursor line is the indentation followed by
//     the characters typed so far (the indentation is what Enter left);
//   - first: ms from the key to the first frame, from the one where it is processed on, that
//     shows non-empty ghost text;
//   - final: ms from the key to the last change of the ghost text, once it has stayed
//     non-empty and unchanged for STABLE_MS (the driver waits for that, or for CAP_MS without
//     any ghost text, then PAUSE_MS, then presses the next key);
//   - never: no ghost text within CAP_MS of the key;
//   - flicker (at most once per key): the ghost text became empty before the next key although
//     what was shown as the key was pressed began with that key and held more (VS Code could
//     have gone on showing the rest), or it became empty and then showed again while the state
//     was the same (between two keys).
// Appends one JSON line per mode to FILE and prints the keys one by one.
//
// Usage: node vscode_driver.cjs URL FILE_NAME FILE_PATH LOGS_DIR SCREENSHOT
// Environment: GHOSTLINE_TEST_CODE_SERVER_PID, GHOSTLINE_TEST_EXPECTED_SERVER (the real path of
// the installed extension's server/bin/ghostline), GHOSTLINE_PAINT_OUT with
// GHOSTLINE_PAINT_LINE_ABOVE, GHOSTLINE_PAINT_TYPED and GHOSTLINE_TEST_MODEL (for the figures).
// Nothing here knows what the model will write: every expectation comes from the screen, the
// log of the server's answers or the file on disk.

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [url, fileName, filePath, logsDir, screenshotPath] = process.argv.slice(2);
const TYPED = 'return math.';
const TYPING_DELAY_MS = Number(process.env.GHOSTLINE_TEST_TYPING_DELAY_MS || 40);
const LOAD_TIMEOUT_MS = Number(process.env.GHOSTLINE_TEST_LOAD_TIMEOUT_MS || 180000);
const SUGGESTION_TIMEOUT_MS = Number(process.env.GHOSTLINE_TEST_SUGGESTION_TIMEOUT_MS || 60000);
// From the first ghost text until the server is idle and the ghost text is its complete
// suggestion (the model finishing the line, then a moment for the refresh).
const COMPLETE_TIMEOUT_MS = Number(process.env.GHOSTLINE_TEST_COMPLETE_TIMEOUT_MS || 60000);
// Bound to Ghostline: Log Server State at Cursor by vscode.sh (keybindings.json): a key runs
// the command without taking the focus from the editor (the command palette would hide the
// ghost text).
const LOG_STATE_KEY = 'Control+Alt+Shift+F10';
// Bound to Ghostline: Choose Suggestion Mode with each mode as its argument by vscode.sh.
const MODE_KEYS = { longPoll: 'Control+Alt+Shift+F11', pushRefresh: 'Control+Alt+Shift+F12' };
// Bound to File: Revert File by vscode.sh.
const REVERT_KEY = 'Control+Alt+Shift+F9';
const CODE_SERVER_PID = Number(process.env.GHOSTLINE_TEST_CODE_SERVER_PID);
const EXPECTED_SERVER = process.env.GHOSTLINE_TEST_EXPECTED_SERVER;
const PAINT_OUT = process.env.GHOSTLINE_PAINT_OUT || '';
// The measurement (see the top of this file).
const CAP_MS = 3000;
const STABLE_MS = 1000;
const PAUSE_MS = 100;
// A ghost text still changing this long after its key is not waited for any longer.
const SETTLE_LIMIT_MS = 15000;
const POLL_MS = 20;
const MODES = ['pushRefresh', 'longPoll'];
const started = Date.now();

function log(message) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`);
}

function fail(message) {
  throw new Error(message);
}

async function waitFor(description, timeoutMs, probe, intervalMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await probe();
    if (last) {
      return last;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  fail(`timed out after ${timeoutMs} ms waiting for ${description}`);
}

/** Every file under a directory. */
function walk(dir) {
  if (!fs.existsSync(dir)) {
    return [];
  }
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? walk(full) : [full];
  });
}

/** The `[info] KIND {json}` lines of the extension's output log, parsed. */
function loggedLines(kind) {
  const res = [];
  const pattern = new RegExp(`\\[info\\] ${kind} (\\{.*\\})$`);
  for (const file of walk(logsDir).filter((name) => path.basename(name) === 'Ghostline.log')) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const match = line.match(pattern);
      if (match) {
        res.push(JSON.parse(match[1]));
      }
    }
  }
  return res;
}

/** The executables of every process under `rootPid` whose executable is named ghostline
 * (read from /proc: the file the kernel runs, whatever the command line says). */
function ghostlineProcesses(rootPid) {
  const parents = new Map();
  for (const name of fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    try {
      // The fields after the command name, which may hold spaces and parentheses.
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parents.set(Number(name), Number(fields[1]));
    } catch {
      // The process ended meanwhile.
    }
  }
  const isUnder = (pid) => {
    for (let current = pid, depth = 0; current > 1 && depth < 64; current = parents.get(current), depth++) {
      if (current === rootPid) {
        return true;
      }
    }
    return false;
  };
  const res = [];
  for (const pid of parents.keys()) {
    let exe;
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`);
    } catch {
      continue;
    }
    if (path.basename(exe).startsWith('ghostline') && isUnder(pid)) {
      res.push({ pid, exe });
    }
  }
  return res;
}

/** The suggestions the extension received from the server, from its output log
 * (ghostline.logSuggestions writes one `suggestion {json}` line per answer with an item). */
function loggedSuggestions() {
  return loggedLines('suggestion');
}

/** Characters as the server counts them (Unicode scalar values). */
function charCount(text) {
  return [...text].length;
}

/** The suggestion mode the extension logged last (`mode {...}`, at start and on each change). */
function currentMode() {
  const modes = loggedLines('mode');
  return modes.length > 0 ? modes[modes.length - 1].suggestionMode : undefined;
}

/** Ghostline: Choose Suggestion Mode (through its key for that mode, see vscode.sh), which sets
 * the user setting; waits until the extension has sent the new opt-in to the running server (it
 * logs `mode {...}` right after). */
async function switchMode(page, mode) {
  if (currentMode() === mode) {
    return;
  }
  const count = loggedLines('mode').length;
  await page.keyboard.press(MODE_KEYS[mode]);
  await waitFor(`the extension to switch to ${mode} mode`, 20000, async () => {
    const logged = loggedLines('mode');
    return logged.length > count && logged[logged.length - 1].suggestionMode === mode;
  }, 100);
}

/** In the page: reads the ghost text and the cursor's line, records every change of them at
 * each animation frame (window.__ghostline.frames) and every keydown (window.__ghostline.keys). */
async function instrument(page) {
  await page.evaluate(() => {
    const clean = (text) => text.replace(/\u00a0/g, ' ');
    const read = () => {
      const editor = document.querySelector('.editor-instance .monaco-editor');
      if (!editor) {
        return { ghost: '', line: null };
      }
      const inline = Array.from(editor.querySelectorAll('.view-lines .ghost-text-decoration')).map((element) => element.textContent).join('');
      const more = Array.from(editor.querySelectorAll('.ghost-text .view-line')).map((element) => element.textContent);
      const ghost = clean([inline, ...more].join('\n'));
      let line = null;
      const cursor = editor.querySelector('.cursors-layer .cursor');
      if (cursor) {
        const row = Array.from(editor.querySelectorAll('.view-lines > .view-line')).find((element) => element.style.top === cursor.style.top);
        if (row) {
          const copy = row.cloneNode(true);
          copy.querySelectorAll('[class*="ghost-text"]').forEach((element) => element.remove());
          line = clean(copy.textContent);
        }
      }
      return { ghost, line };
    };
    const state = { read, frames: [], keys: [], frameIntervals: [] };
    window.__ghostline = state;
    let lastFrameAt;
    const sample = (now) => {
      if (lastFrameAt !== undefined && state.frameIntervals.length < 100000) {
        state.frameIntervals.push(now - lastFrameAt);
      }
      lastFrameAt = now;
      const { ghost, line } = read();
      const last = state.frames[state.frames.length - 1];
      if ((!last || last.ghost !== ghost || last.line !== line) && state.frames.length < 100000) {
        state.frames.push({ t: performance.now(), ghost, line });
      }
      requestAnimationFrame(sample);
    };
    requestAnimationFrame(sample);
    window.addEventListener('keydown', (event) => {
      if (!['Shift', 'Control', 'Alt', 'Meta'].includes(event.key)) {
        state.keys.push({ t: event.timeStamp || performance.now(), key: event.key });
      }
    }, true);
  });
}

/** Opens a file of the workspace with Quick Open and waits until the editor shows its first line. */
async function openFile(page, name, firstLine) {
  await page.keyboard.press('Control+P');
  await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
  await page.keyboard.type(name, { delay: 20 });
  await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${name}"]`, { timeout: 20000 });
  await page.keyboard.press('Enter');
  const editor = page.locator('.editor-instance .monaco-editor').first();
  await editor.waitFor({ timeout: 20000 });
  await waitFor(`${name} in the editor`, 20000, async () => (await editor.locator('.view-lines').innerText()).replace(/\u00a0/g, ' ').includes(firstLine));
  await editor.locator('.view-lines').click();
  return editor;
}

/** Runs a command by its title from the command palette. */
async function runCommand(page, title) {
  await page.keyboard.press('F1');
  await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
  await page.keyboard.type(title, { delay: 10 });
  await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 10000 });
  await page.keyboard.press('Enter');
}

/** Ghostline: Log Server State at Cursor (through its key, so the editor keeps the focus), and
 * the line it wrote: the server's counters and, when it had no job running, its answer here. */
async function serverState(page) {
  const count = loggedLines('state').length;
  await page.keyboard.press(LOG_STATE_KEY);
  const state = await waitFor('Ghostline: Log Server State at Cursor to write its line', 15000, async () => {
    const states = loggedLines('state');
    return states.length > count ? states[states.length - 1] : undefined;
  }, 100);
  if (state.error) {
    fail(`Ghostline: Log Server State at Cursor failed: ${state.error}`);
  }
  return state;
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.GHOSTLINE_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 640 } });
    await page.goto(url);
    await page.waitForSelector('.monaco-workbench', { timeout: 120000 });
    log('workbench loaded');

    // The status bar item says `Ghostline` alone once the model is loaded.
    const statusItem = page.locator('.statusbar-item', { hasText: 'Ghostline' });
    await waitFor('the Ghostline status bar item to report the model ready', LOAD_TIMEOUT_MS, async () => {
      const texts = await statusItem.allInnerTexts();
      const text = texts.join(' ');
      if (/error/.test(text)) {
        fail(`Ghostline reports an error: ${text}`);
      }
      return texts.length > 0 && !/starting|loading|off/.test(text);
    }, 500);
    log(`status bar: ${(await statusItem.allInnerTexts()).join(' ')}`);

    // The server is the copy bundled in the .vsix (no ghostline.path, none on PATH).
    if (!CODE_SERVER_PID || !EXPECTED_SERVER) {
      fail('GHOSTLINE_TEST_CODE_SERVER_PID and GHOSTLINE_TEST_EXPECTED_SERVER must be set');
    }
    const chosen = loggedLines('server');
    if (chosen.length !== 1 || chosen[0].source !== 'bundled' || fs.realpathSync(chosen[0].command) !== EXPECTED_SERVER) {
      fail(`the extension did not start the bundled server ${EXPECTED_SERVER}: its log says ${JSON.stringify(chosen)}`);
    }
    const running = ghostlineProcesses(CODE_SERVER_PID);
    if (running.length === 0 || running.some((proc) => proc.exe !== EXPECTED_SERVER)) {
      fail(`the ghostline processes under code-server are not all ${EXPECTED_SERVER}: ${JSON.stringify(running)}`);
    }
    log(`server: ${chosen[0].command} (${chosen[0].version}), running as ${running.map((proc) => `pid ${proc.pid}`).join(', ')}`);

    await page.locator('.monaco-workbench').click({ position: { x: 600, y: 300 } }).catch(() => {});
    const original = fs.readFileSync(filePath, 'utf8');
    try {
      const editor = await openFile(page, fileName, original.split('\n')[0]);
      await instrument(page);
      if (PAINT_OUT) {
        await measurePaint(page);
      } else {
        await test(page, editor, original);
      }
    } catch (err) {
      // What the window showed (kept with GHOSTLINE_KEEP_LOGS=1).
      await page.screenshot({ path: path.join(path.dirname(path.dirname(logsDir)), 'failure.png') }).catch(() => {});
      throw err;
    }
    log(PAINT_OUT ? 'measured' : 'PASS');
  } finally {
    await browser.close();
  }
}

/** The test (see the top of this file). */
async function test(page, editor, original) {
  const defaultMode = currentMode();
  if (!MODES.includes(defaultMode)) {
    fail(`the extension did not log its suggestion mode: ${JSON.stringify(loggedLines('mode'))}`);
  }
  log(`default mode: ${defaultMode}`);

  // The ghost text: its first line inline, further lines in a view zone below.
  const readGhost = async () => {
    const { ghost } = await page.evaluate(() => window.__ghostline.read());
    return ghost.trim() ? ghost : undefined;
  };
  const readLine = async () => (await page.evaluate(() => window.__ghostline.read())).line;

  /** Waits until the server has no job running and the ghost text is its complete suggestion
   * for the state at the cursor (Log Server State at Cursor asks the server only while it is
   * idle, so it never causes a refresh itself). In pushRefresh mode the suggestion shown first
   * may be its first words: the server sends ghostline/suggestionReady each time it grows, and
   * the extension must then show the longer text. */
  const waitComplete = async (mode) => {
    let state;
    let ghost;
    let idleSeen = false;
    await waitFor('the ghost text to be the server\'s complete suggestion', COMPLETE_TIMEOUT_MS, async () => {
      state = await serverState(page);
      ghost = await readGhost();
      idleSeen = idleSeen || state.idle;
      return state.idle && state.current && state.insertText && ghost === state.insertText;
    }, 500).catch((err) => fail(idleSeen
      ? `the ghost text is ${JSON.stringify(ghost)} but the server's complete suggestion for this state is ${JSON.stringify(state && state.insertText)}${mode === 'pushRefresh' ? ' (the extension did not show the grown suggestion after ghostline/suggestionReady)' : ''}; last state ${JSON.stringify(state)}: ${err.message}`
      : `the server never became idle: ${JSON.stringify(state)}: ${err.message}`));
    return { ghost, state };
  };

  /** Types `typed` at the cursor and waits for the complete ghost text (logging it frame by
   * frame since typing began); returns it and the server's counters then. */
  const typeAndWait = async (mode, typed) => {
    const framesBefore = await page.evaluate(() => window.__ghostline.frames.length);
    await page.keyboard.type(typed, { delay: TYPING_DELAY_MS });
    const firstGhost = await waitFor('ghost text', SUGGESTION_TIMEOUT_MS, readGhost);
    log(`${mode}: first ghost text: ${JSON.stringify(firstGhost)}`);
    const { ghost, state } = await waitComplete(mode);
    log(`${mode}: complete ghost text (the server is idle): ${JSON.stringify(ghost)}`);
    // The ghost text as drawn, frame by frame, since typing began (shows each refresh).
    const frames = await page.evaluate((from) => window.__ghostline.frames.slice(from).map((frame) => ({ t: Math.round(frame.t), ghost: frame.ghost })), framesBefore);
    const changes = frames.filter((frame, idx) => idx === 0 || frame.ghost !== frames[idx - 1].ghost);
    log(`${mode}: ghost text per frame: ${changes.map((frame) => `${frame.t - changes[0].t} ms ${JSON.stringify(frame.ghost)}`).join(', ')}`);
    // The ghost text is what the server answered (as the extension logged it on receipt).
    const served = await waitFor('the server answer in the extension log', 10000, async () => {
      const texts = loggedSuggestions().map((suggestion) => suggestion.insertText);
      return texts.includes(ghost) ? texts : undefined;
    }).catch((err) => fail(`${err.message}; the log holds ${JSON.stringify(loggedSuggestions()).slice(0, 2000)}`));
    log(`${mode}: the server answered it (${served.length} answers with a suggestion in the extension log)`);
    return { ghost, counters: state.counters };
  };

  // 1. The default mode: type a function body on the empty last line (the file ends with a
  // newline, so Control+End is there).
  await page.keyboard.press('Control+End');
  const first = await typeAndWait(defaultMode, `    ${TYPED}`);
  await page.screenshot({ path: screenshotPath });
  log(`screenshot: ${screenshotPath}`);

  // Ctrl+Right is VS Code's Accept Next Word Of Inline Suggestion: the line gets the start of
  // the ghost text, the rest stays shown, and the extension reports the part to the server.
  const lineBefore = await readLine();
  if (!lineBefore || !lineBefore.endsWith(TYPED)) {
    fail(`the cursor's line is ${JSON.stringify(lineBefore)}, expected it to end with ${JSON.stringify(TYPED)}`);
  }
  await page.keyboard.press('Control+ArrowRight');
  const word = await waitFor('Ctrl+Right to insert the next word of the ghost text', 10000, async () => {
    const line = await readLine();
    return line && line !== lineBefore && line.startsWith(lineBefore) ? line.slice(lineBefore.length) : undefined;
  });
  if (!first.ghost.startsWith(word) || word.length >= first.ghost.length) {
    fail(`Ctrl+Right inserted ${JSON.stringify(word)}, not a first part of the ghost text ${JSON.stringify(first.ghost)} (a suggestion of one word cannot be accepted in part)`);
  }
  log(`Ctrl+Right accepted ${JSON.stringify(word)}`);
  const partial = await waitFor('the server to count a partial acceptance', 20000, async () => {
    const { counters } = await serverState(page);
    return counters.acceptedPartially === first.counters.acceptedPartially + 1 ? counters : undefined;
  }, 300);
  if (partial.acceptedChars !== first.counters.acceptedChars + charCount(word) || partial.accepted !== first.counters.accepted) {
    fail(`after accepting ${JSON.stringify(word)} the server counts ${JSON.stringify(partial)} (before: ${JSON.stringify(first.counters)})`);
  }
  log(`the server counted the partial acceptance: acceptedPartially ${partial.acceptedPartially}, acceptedChars ${partial.acceptedChars}`);

  // The rest: the complete suggestion for the new state (the rest of the same one, as a rule).
  const { ghost: rest } = await waitComplete(defaultMode);
  log(`ghost text after the word: ${JSON.stringify(rest)}`);

  // Tab accepts the rest; save and compare the file with what was typed plus what was accepted.
  await waitFor('the ghost text to stay', 5000, async () => (await readGhost()) === rest);
  await page.keyboard.press('Tab');
  await waitFor('Tab to insert the ghost text', 10000, async () => {
    const text = (await editor.locator('.view-lines').innerText()).replace(/\u00a0/g, ' ');
    return text.includes(TYPED + word + rest.split('\n')[0]) && (await editor.locator('.ghost-text-decoration, .ghost-text').count()) === 0;
  }).catch(async (err) => {
    await page.screenshot({ path: path.join(path.dirname(logsDir), 'after-tab.png') });
    throw err;
  });
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+S');
  // (Auto-save may have written the file before; wait for the content with the suggestion.)
  const escaped = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const expected = new RegExp(`^${escaped(original)}[ \\t]*${escaped(TYPED + word + rest)}\\n?$`);
  let saved = '';
  await waitFor('the file to hold the typed text followed by the accepted text', 20000, async () => {
    saved = fs.readFileSync(filePath, 'utf8');
    return expected.test(saved);
  }).catch(() => fail(`the file does not hold the typed text followed by ${JSON.stringify(word)} and ${JSON.stringify(rest)}:\n${saved}`));
  log(`accepted with Ctrl+Right and Tab: ${JSON.stringify(saved.slice(original.length).replace(/\n$/, ''))}`);

  // The whole acceptance counts the rest only: every character accepted is counted once.
  const accepted = await waitFor('the server to count the acceptance', 20000, async () => {
    const { counters } = await serverState(page);
    return counters.accepted === first.counters.accepted + 1 ? counters : undefined;
  }, 300);
  const chars = charCount(word) + charCount(rest);
  if (accepted.acceptedPartially !== first.counters.acceptedPartially + 1 || accepted.acceptedChars !== first.counters.acceptedChars + chars) {
    fail(`after a word and the rest (${chars} characters) the server counts ${JSON.stringify(accepted)} (before: ${JSON.stringify(first.counters)})`);
  }
  log(`the server counted ${accepted.accepted} whole and ${accepted.acceptedPartially} partial acceptance, ${accepted.acceptedChars} characters`);
  if (defaultMode === 'longPoll' && accepted.readyNotifications !== 0) {
    fail(`in longPoll mode the server sent ${accepted.readyNotifications} ghostline/suggestionReady (the extension must not opt in)`);
  }

  // Ghostline: Show Stats opens the server's counters (which hold both acceptances by now).
  await runCommand(page, 'Ghostline: Show Stats');
  const statsEditor = page.locator('.editor-instance .monaco-editor').first();
  await waitFor('Ghostline: Show Stats to show the acceptances', 20000, async () => {
    const text = (await statsEditor.locator('.view-lines').innerText()).replace(/\u00a0/g, ' ');
    return /"accepted": 1/.test(text) && /"acceptedPartially": 1/.test(text);
  });
  log('Ghostline: Show Stats reports the acceptances');
  // Close the stats (an untitled document) without saving it.
  await runCommand(page, 'View: Revert and Close Editor');

  // 2. The other mode, switched in the running window, on a new line of the same file.
  const otherMode = MODES.find((mode) => mode !== defaultMode);
  await openFile(page, fileName, original.split('\n')[0]);
  await switchMode(page, otherMode);
  await page.keyboard.press('Control+End');
  await page.keyboard.press('Enter');
  const before = await serverState(page);
  const other = await typeAndWait(otherMode, 'print(');
  if (otherMode === 'pushRefresh' && !(other.counters.readyNotifications > before.counters.readyNotifications)) {
    fail(`in pushRefresh mode the server sent no ghostline/suggestionReady: ${JSON.stringify(other.counters)}`);
  }
  if (otherMode === 'longPoll' && other.counters.readyNotifications !== before.counters.readyNotifications) {
    fail(`in longPoll mode the server sent ghostline/suggestionReady: ${JSON.stringify(other.counters)} (before: ${JSON.stringify(before.counters)})`);
  }
  log(`${otherMode}: the ghost text is the server's complete suggestion (ghostline/suggestionReady sent: ${other.counters.readyNotifications - before.counters.readyNotifications})`);

  // 3. Ghostline: Expand Suggestion asks the server once for a longer suggestion at the cursor
  // (ghostline/expandSuggestion); the ghost text becomes that answer (as the extension logged
  // it on receipt).
  const expansions = loggedLines('expanded').length;
  await runCommand(page, 'Ghostline: Expand Suggestion');
  const expanded = await waitFor('the expanded suggestion in the extension log', SUGGESTION_TIMEOUT_MS, async () => {
    const lines = loggedLines('expanded');
    return lines.length > expansions ? lines[lines.length - 1] : undefined;
  }, 200);
  if (!expanded.insertText) {
    fail(`the server answered Expand Suggestion with nothing: ${JSON.stringify(expanded)}`);
  }
  let shown;
  await waitFor('the ghost text to show the expanded suggestion', 10000, async () => {
    shown = await readGhost();
    return shown === expanded.insertText;
  }).catch(() => fail(`the ghost text is ${JSON.stringify(shown)}, the expanded suggestion ${JSON.stringify(expanded.insertText)}`));
  log(`Expand Suggestion: the ghost text is the expanded suggestion ${JSON.stringify(shown)}`);
}

/** The p-th percentile (nearest rank) of a list of numbers; null for an empty list. */
function percentile(values, p) {
  if (values.length === 0) {
    return null;
  }
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1];
}

function round(value) {
  return value === null ? null : Math.round(value * 10) / 10;
}

/** The keypress-to-paint measurement (see the top of this file). */
async function measurePaint(page) {
  const lineAbove = process.env.GHOSTLINE_PAINT_LINE_ABOVE;
  const typedLine = process.env.GHOSTLINE_PAINT_TYPED;
  if (!lineAbove || !typedLine) {
    fail('GHOSTLINE_PAINT_LINE_ABOVE and GHOSTLINE_PAINT_TYPED must be set');
  }
  const lineNumber = fs.readFileSync(filePath, 'utf8').split('\n').indexOf(lineAbove) + 1;
  if (lineNumber === 0) {
    fail(`${filePath} has no line ${JSON.stringify(lineAbove)}`);
  }
  const results = [];
  for (const mode of MODES) {
    await switchMode(page, mode);
    // The file as saved, the cursor at the end of the line above (moved by keyboard, so the
    // extension reports the rest), and the server's job for that place done.
    await page.keyboard.press(REVERT_KEY);
    await waitFor('the file to be as saved (no dirty tab)', 10000, async () => (await page.locator('.tab.active.dirty').count()) === 0, 100);
    await page.keyboard.press('Control+G');
    await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
    await page.keyboard.type(String(lineNumber), { delay: 10 });
    await page.keyboard.press('Enter');
    const rests = loggedLines('rest').length;
    await page.keyboard.press('End');
    await waitFor('the cursor at the end of the line above', 10000, async () => (await page.evaluate(() => window.__ghostline.read())).line === lineAbove);
    await waitFor('the extension to report the cursor resting there', 10000, async () => loggedLines('rest').length > rests, 100);
    await waitFor('the server to finish the job where the cursor rests', 60000, async () => (await serverState(page)).idle, 300);
    log(`${mode}: typing ${JSON.stringify(typedLine)} below line ${lineNumber}`);
    results.push(await typeKeys(page, mode, typedLine, process.env.GHOSTLINE_TEST_MODEL));
    // The edit made the tab dirty: the revert before the next mode has something to undo.
    await waitFor('the typed line to make the file dirty', 10000, async () => (await page.locator('.tab.active.dirty').count()) === 1, 100);
  }
  for (const result of results) {
    fs.appendFileSync(PAINT_OUT, `${JSON.stringify(result)}\n`);
    log(JSON.stringify(result));
  }
}

/** Enter, then the line key by key; the figures of one mode. */
async function typeKeys(page, mode, typedLine, model) {
  const keys = ['Enter', ...typedLine];
  const settle = async (keyIdx, expectedLine) => page.evaluate(([keyIdx, expectedLine]) => {
    const state = window.__ghostline;
    const key = state.keys[keyIdx];
    if (!key) {
      return { pressed: false };
    }
    let processed = false;
    let shown = false;
    for (let idx = state.frames.length - 1; idx >= 0 && state.frames[idx].t >= key.t; idx--) {
      const frame = state.frames[idx];
      const lineMatches = expectedLine === null ? frame.line !== null && frame.line.trim() === '' : frame.line === expectedLine;
      processed = processed || lineMatches;
      shown = shown || (lineMatches && frame.ghost.trim() !== '');
    }
    const now = performance.now();
    const last = state.frames[state.frames.length - 1];
    return { pressed: true, processed, shown, sinceKey: now - key.t, sinceChange: now - Math.max(last.t, key.t) };
  }, [keyIdx, expectedLine]);

  await page.evaluate(() => {
    const state = window.__ghostline;
    state.frames = state.frames.slice(-1);
    state.keys = [];
    state.frameIntervals = [];
  });
  let indent;
  for (const [keyIdx, key] of keys.entries()) {
    await (key === 'Enter' ? page.keyboard.press(key) : page.keyboard.type(key));
    let status;
    for (;;) {
      // Enter leaves the new line's indentation; each character adds itself after it.
      const expectedLine = keyIdx === 0 ? null : indent + typedLine.slice(0, keyIdx);
      status = await settle(keyIdx, expectedLine);
      if (keyIdx === 0 && indent === undefined && status.processed) {
        indent = (await page.evaluate(() => window.__ghostline.read())).line;
      }
      const settled = status.processed && status.sinceChange >= STABLE_MS && (status.shown || status.sinceKey >= CAP_MS);
      if (settled || (status.pressed && status.sinceKey >= SETTLE_LIMIT_MS)) {
        break;
      }
      await page.waitForTimeout(POLL_MS);
    }
    if (!status.processed) {
      fail(`${mode}: key ${JSON.stringify(key)} did not reach the cursor's line within ${SETTLE_LIMIT_MS} ms`);
    }
    // The documented pause between keys.
    await page.waitForTimeout(PAUSE_MS);
  }
  const { frames, keys: pressed, frameIntervals } = await page.evaluate(() => {
    const state = window.__ghostline;
    return { frames: state.frames, keys: state.keys, frameIntervals: state.frameIntervals };
  });
  if (pressed.length !== keys.length) {
    fail(`${mode}: ${pressed.length} keydown events for ${keys.length} keys`);
  }

  const firsts = [];
  const finals = [];
  let never = 0;
  let flicker = 0;
  for (const [keyIdx, key] of keys.entries()) {
    const at = pressed[keyIdx].t;
    const until = keyIdx + 1 < keys.length ? pressed[keyIdx + 1].t : Infinity;
    const expectedLine = keyIdx === 0 ? indent : indent + typedLine.slice(0, keyIdx);
    // What was shown as the key was pressed, and the frames of this key's state.
    const before = frames.filter((frame) => frame.t < at).pop();
    const own = frames.filter((frame) => frame.t >= at && frame.t < until && frame.line === expectedLine);
    const firstFrame = own.find((frame) => frame.ghost.trim() !== '');
    const firstMs = firstFrame && firstFrame.t - at <= CAP_MS ? firstFrame.t - at : undefined;
    let finalMs;
    const last = own[own.length - 1];
    if (last && last.ghost.trim() !== '') {
      let start = own.length - 1;
      while (start > 0 && own[start - 1].ghost === last.ghost) {
        start--;
      }
      finalMs = own[start].t - at;
    }
    // Flicker: the rest of what was shown agreed with the key, yet the ghost text went empty;
    // or it went empty and came back for this same state.
    const agreed = key.length === 1 && before && before.ghost.length > 1 && before.ghost.startsWith(key);
    let shownYet = false;
    let emptiedSinceShown = false;
    let blink = false;
    for (const frame of own) {
      if (frame.ghost.trim() === '') {
        emptiedSinceShown = shownYet;
      } else {
        blink = blink || emptiedSinceShown;
        shownYet = true;
        emptiedSinceShown = false;
      }
    }
    const flickered = (agreed && own.some((frame) => frame.ghost.trim() === '')) || blink;
    if (firstMs === undefined) {
      never++;
    } else {
      firsts.push(firstMs);
    }
    if (finalMs !== undefined) {
      finals.push(finalMs);
    }
    if (flickered) {
      flicker++;
    }
    const format = (ms) => (ms === undefined ? '-' : ms.toFixed(1));
    log(`${mode}: key ${String(keyIdx + 1).padStart(2)} ${JSON.stringify(key).padEnd(7)} first ${format(firstMs).padStart(7)} ms  final ${format(finalMs).padStart(7)} ms${flickered ? '  FLICKER' : ''}  ${JSON.stringify(last ? last.ghost : '')}`);
  }
  const cancelled = loggedLines('cancelled').length;
  log(`${mode}: VS Code cancelled ${cancelled} requests so far (extension log)`);
  return {
    editor: 'vscode',
    mode,
    model,
    keys: keys.length,
    first_p50_ms: round(percentile(firsts, 50)),
    first_p90_ms: round(percentile(firsts, 90)),
    first_max_ms: round(percentile(firsts, 100)),
    final_p50_ms: round(percentile(finals, 50)),
    final_p90_ms: round(percentile(finals, 90)),
    never,
    flicker,
    // The ghost text is read once per animation frame.
    resolution_ms: round(percentile(frameIntervals, 50)),
  };
}

main().catch((err) => {
  console.error(`FAIL: ${err.message}`);
  process.exit(1);
});
