// Drives VS Code (code-server, started by tests/editors/vscode.sh with the Ghostline .vsix
// installed) in headless Chromium through playwright-core, as a user would: opens a Python
// file, types, waits for the ghost text, saves a screenshot, accepts with Tab, saves the file
// and checks that it holds exactly the ghost text after what was typed, checks that the ghost
// text was the server's answer (as the extension logged it, ghostline.logSuggestions) and that
// the server counted the acceptance (Ghostline: Show Stats). Before typing, it checks that the
// server the extension started is the bundled copy inside the installed extension: its output
// log says so, and /proc/PID/exe of every ghostline process under code-server is that file.
//
// Usage: node vscode_driver.cjs URL FILE_NAME FILE_PATH LOGS_DIR SCREENSHOT
// Environment: GHOSTLINE_TEST_CODE_SERVER_PID, GHOSTLINE_TEST_EXPECTED_SERVER (the real path of
// the installed extension's server/bin/ghostline).
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
const CODE_SERVER_PID = Number(process.env.GHOSTLINE_TEST_CODE_SERVER_PID);
const EXPECTED_SERVER = process.env.GHOSTLINE_TEST_EXPECTED_SERVER;
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

    // Open the file with Quick Open.
    await page.locator('.monaco-workbench').click({ position: { x: 600, y: 300 } }).catch(() => {});
    await page.keyboard.press('Control+P');
    await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
    await page.keyboard.type(fileName, { delay: 20 });
    await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${fileName}"]`, { timeout: 20000 });
    await page.keyboard.press('Enter');
    const editor = page.locator('.editor-instance .monaco-editor').first();
    await editor.waitFor({ timeout: 20000 });
    await waitFor('the file in the editor', 20000, async () => (await editor.locator('.view-lines').innerText()).includes('circle_area'));
    await editor.locator('.view-lines').click();
    const original = fs.readFileSync(filePath, 'utf8');

    // Records the inline ghost text at every animation frame where it changes (for the log).
    await page.evaluate(() => {
      const start = performance.now();
      window.__ghostFrames = [];
      let last = null;
      const sample = () => {
        const text = Array.from(document.querySelectorAll('.editor-instance .monaco-editor .ghost-text-decoration'))
          .map((element) => element.textContent).join('').replace(/\u00a0/g, ' ');
        if (text !== last && window.__ghostFrames.length < 200) {
          window.__ghostFrames.push({ t: Math.round(performance.now() - start), text });
          last = text;
        }
        requestAnimationFrame(sample);
      };
      requestAnimationFrame(sample);
    });

    // Type a function body on a new last line.
    // The file ends with a newline: Control+End is on an empty last line.
    await page.keyboard.press('Control+End');
    await page.keyboard.type(`    ${TYPED}`, { delay: TYPING_DELAY_MS });

    // The ghost text: its first line inline, further lines in a view zone below.
    const readGhost = async () => {
      const inline = await editor.locator('.ghost-text-decoration').allTextContents();
      const lines = await editor.locator('.ghost-text .view-line').allTextContents();
      const text = [inline.join(''), ...lines].join('\n').replace(/\u00a0/g, ' ');
      return text.trim() ? text : undefined;
    };
    const firstGhost = await waitFor('ghost text', SUGGESTION_TIMEOUT_MS, readGhost);
    log(`first ghost text: ${JSON.stringify(firstGhost)}`);

    // The suggestion shown first may be its first words: the server sends
    // ghostline/suggestionReady each time it grows, and the extension must then show the longer
    // text. Once the server has no job running, its answer for this state is complete; the
    // ghost text must become exactly that (Ghostline: Log Server State at Cursor asks the server
    // only while it is idle, so it never causes a refresh itself).
    let state;
    let ghost;
    let idleSeen = false;
    await waitFor('the ghost text to be the server\'s complete suggestion', COMPLETE_TIMEOUT_MS, async () => {
      const count = loggedLines('state').length;
      await page.keyboard.press(LOG_STATE_KEY);
      state = await waitFor('Ghostline: Log Server State at Cursor to write its line', 15000, async () => {
        const states = loggedLines('state');
        return states.length > count ? states[states.length - 1] : undefined;
      }, 100);
      ghost = await readGhost();
      if (state.error) {
        fail(`Ghostline: Log Server State at Cursor failed: ${state.error}`);
      }
      idleSeen = idleSeen || state.idle;
      return state.idle && state.current && state.insertText && ghost === state.insertText;
    }, 500).catch((err) => fail(idleSeen
      ? `the ghost text is ${JSON.stringify(ghost)} but the server's complete suggestion for this state is ${JSON.stringify(state && state.insertText)} (the extension did not show the grown suggestion after ghostline/suggestionReady; last state ${JSON.stringify(state)}): ${err.message}`
      : `the server never became idle: ${JSON.stringify(state)}: ${err.message}`));
    log(`complete ghost text (the server is idle): ${JSON.stringify(ghost)}`);
    // The ghost text as drawn, frame by frame, since typing began (shows each refresh).
    const frames = await page.evaluate(() => window.__ghostFrames || []);
    log(`ghost text per frame: ${frames.map((frame) => `${frame.t} ms ${JSON.stringify(frame.text)}`).join(', ')}`);
    await page.screenshot({ path: screenshotPath });
    log(`screenshot: ${screenshotPath}`);

    // The ghost text is what the server answered (as the extension logged it on receipt).
    const served = await waitFor('the server answer in the extension log', 10000, async () => {
      const texts = loggedSuggestions().map((suggestion) => suggestion.insertText);
      return texts.includes(ghost) ? texts : undefined;
    }).catch((err) => fail(`${err.message}; the log holds ${JSON.stringify(loggedSuggestions()).slice(0, 2000)}`));
    log(`the server answered it (${served.length} answers with a suggestion in the extension log)`);

    // Tab accepts; save and compare the file with what was typed plus the ghost text.
    await waitFor('the ghost text to stay', 5000, async () => (await readGhost()) === ghost);
    await page.keyboard.press('Tab');
    await waitFor('Tab to insert the ghost text', 10000, async () => {
      const text = (await editor.locator('.view-lines').innerText()).replace(/\u00a0/g, ' ');
      return text.includes(TYPED + ghost.split('\n')[0]) && (await editor.locator('.ghost-text-decoration, .ghost-text').count()) === 0;
    }).catch(async (err) => {
      await page.screenshot({ path: path.join(path.dirname(logsDir), 'after-tab.png') });
      throw err;
    });
    await page.keyboard.press('Escape');
    await page.keyboard.press('Control+S');
    // (Auto-save may have written the file before; wait for the content with the suggestion.)
    const escaped = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const expected = new RegExp(`^${escaped(original)}[ \\t]*${escaped(TYPED + ghost)}\\n?$`);
    let saved = '';
    await waitFor('the file to hold the typed text followed by the ghost text', 20000, async () => {
      saved = fs.readFileSync(filePath, 'utf8');
      return expected.test(saved);
    }).catch(() => fail(`the file does not hold the typed text followed by the ghost text ${JSON.stringify(ghost)}:\n${saved}`));
    log(`accepted with Tab: ${JSON.stringify(saved.slice(original.length).replace(/\n$/, ''))}`);

    // Ghostline: Show Stats opens the server's counters; the acceptance reached the server.
    await waitFor('the server to count the acceptance', 20000, async () => {
      await page.keyboard.press('F1');
      await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
      await page.keyboard.type('Ghostline: Show Stats', { delay: 10 });
      await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 10000 });
      await page.keyboard.press('Enter');
      const statsEditor = page.locator('.editor-instance .monaco-editor').first();
      await page.waitForTimeout(500);
      const text = (await statsEditor.locator('.view-lines').innerText()).replace(/\u00a0/g, ' ');
      return /"accepted": 1/.test(text);
    }, 1000);
    log('Ghostline: Show Stats reports the acceptance');
    log('PASS');
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(`FAIL: ${err.message}`);
  process.exit(1);
});
