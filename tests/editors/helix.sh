#!/usr/bin/env bash
# Real-editor test of editors/helix/languages.toml: Helix 25.01 (Debian trixie's `hx`, with
# trixie's libc6 and libgcc-s1 unpacked into ~/.cache/ghostline/editors and hx started through
# that loader, since Debian 12's glibc is older) runs in tmux with the file as its user
# languages.toml, the built server and a real model. tests/editors/helix_driver.py types into a
# Python file, opens the completion menu and checks that Ghostline's item is listed and that
# accepting it inserts the server's text.
#
# With GHOSTLINE_PAINT_OUT=FILE it is a benchmark instead of the test: after the model has
# loaded, tests/editors/helix_paint.py types a line of Python key by key into a file with some
# context (the same file and line as neovim.sh's benchmark), times each key to Ghostline's item
# in the completion menu Helix opens by itself, and appends one JSON line to FILE. The server
# runs with the settings in editors/helix/languages.toml (maxWaitMs 2000), not the test's.
#
# Needs: apt-get (root) on first run to download the three packages, tmux, python3.
# Environment: GHOSTLINE_BIN (default target/release/ghostline), GHOSTLINE_TEST_MODEL (default
# qwen2.5-coder-0.5b), GHOSTLINE_EDITORS_DIR (default ~/.cache/ghostline/editors),
# GHOSTLINE_KEEP_LOGS=1 keeps the temporary directory, GHOSTLINE_PAINT_OUT.
set -euo pipefail
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # Relative to where the script was started, not to the checkout it moves to.
  GHOSTLINE_PAINT_OUT=$(realpath -m -- "$GHOSTLINE_PAINT_OUT")
fi
cd "$(dirname "$0")/../.."
root=$(pwd)

editors_dir=${GHOSTLINE_EDITORS_DIR:-$HOME/.cache/ghostline/editors}
helix_dir="$editors_dir/helix-25.01"
bin=${GHOSTLINE_BIN:-$root/target/release/ghostline}
model=${GHOSTLINE_TEST_MODEL:-qwen2.5-coder-0.5b}

if [[ ! -x "$bin" ]]; then
  echo "helix.sh: $bin is missing; build it first with cargo build --release" >&2
  exit 2
fi
for tool in tmux python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "helix.sh: $tool is missing; install it (apt-get install $tool)" >&2
    exit 2
  fi
done
"$bin" models fetch "$model" >/dev/null

# Downloads hx, libc6 and libgcc-s1 from Debian trixie with an apt configuration of its own
# (nothing in /etc/apt or / changes) and unpacks them into $helix_dir/root.
install_helix() {
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "helix.sh: apt-get and dpkg are needed to fetch Helix from Debian trixie" >&2
    exit 2
  fi
  echo "helix.sh: installing Helix 25.01 from Debian trixie into $helix_dir" >&2
  rm -rf "$helix_dir"
  local apt_dir="$helix_dir/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_dir/sources.list"
  local apt_options=(
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "APT::Update::Post-Invoke::="
  )
  apt-get -q "${apt_options[@]}" update >/dev/null
  (cd "$apt_dir/debs" && apt-get -q "${apt_options[@]}" download hx libc6 libgcc-s1 >/dev/null)
  mkdir -p "$helix_dir/root.partial"
  for deb in "$apt_dir/debs"/*.deb; do
    dpkg -x "$deb" "$helix_dir/root.partial"
  done
  mv "$helix_dir/root.partial" "$helix_dir/root"
  rm -rf "$apt_dir"
}

libs="$helix_dir/root/usr/lib/x86_64-linux-gnu"
hx="$helix_dir/root/usr/lib/hx/hx"
if [[ ! -x "$hx" || ! -x "$libs/ld-linux-x86-64.so.2" ]]; then
  install_helix
fi
hx_version=$("$libs/ld-linux-x86-64.so.2" --library-path "$libs" "$hx" --version)
if [[ "$hx_version" != "helix 25.01"* ]]; then
  echo "helix.sh: expected Helix 25.01, got: $hx_version" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ghostline-helix.XXXXXX")
tmux_socket="ghostline-helix-$$"
cleanup() {
  local status=$?
  # Stops the editor and the server it started, by process id only.
  local pane_pid server_pids=""
  pane_pid=$(tmux -L "$tmux_socket" list-panes -a -F '#{pane_pid}' 2>/dev/null || true)
  if [[ -n "$pane_pid" ]]; then
    server_pids=$(pgrep -P "$pane_pid" || true)
  fi
  server_pids="$server_pids $(cat "$work/server.pids" 2>/dev/null || true)"
  tmux -L "$tmux_socket" kill-server 2>/dev/null || true
  for pid in $server_pids; do
    if grep -qa ghostline "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done
  if [[ $status -ne 0 ]]; then
    echo "--- server log (last 20 lines) ---" >&2
    grep -v llama "$work/server.log" 2>/dev/null | tail -n 20 >&2 || true
  fi
  if [[ "${GHOSTLINE_KEEP_LOGS:-0}" == 1 ]]; then
    echo "helix.sh: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit $status
}
trap cleanup EXIT

# The user configuration is editors/helix/languages.toml itself; the workspace's
# .helix/languages.toml (merged over it by Helix) only points the server at the built binary,
# the test model and a log file, and lets a loaded machine take its time.
mkdir -p "$work/config/helix" "$work/data" "$work/workspace/.helix"
cp "$root/editors/helix/languages.toml" "$work/config/helix/languages.toml"
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # What a user gets: the wait of editors/helix/languages.toml, Helix's own request timeout.
  settings="model = \"$model\", maxWaitMs = 2000"
  timeout=20
else
  settings="model = \"$model\", maxWaitMs = 20000"
  timeout=60
fi
cat >"$work/workspace/.helix/languages.toml" <<EOF
[language-server.ghostline]
command = "$bin"
args = ["--log-file", "$work/server.log", "serve"]
config = { $settings }
timeout = $timeout
EOF
cat >"$work/workspace/shapes.py" <<'EOF'
import math


def circle_area(radius):
    """Return the area of a circle with the given radius."""
EOF
cat >"$work/hx.sh" <<EOF
#!/bin/sh
cd "$work/workspace"
export HELIX_RUNTIME="$helix_dir/root/usr/lib/hx/runtime" XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
exec "$libs/ld-linux-x86-64.so.2" --library-path "$libs" "$hx" -v --log "$work/helix.log" "\$@"
EOF
chmod +x "$work/hx.sh"

started=$(date +%s)
if [[ -n "${GHOSTLINE_PAINT_OUT:-}" ]]; then
  # The benchmark's file and line, the same in every editor: `o` on the `for` line, then the line.
  source "$root/tests/editors/paint_fixture.sh"
  write_paint_file "$work/workspace/geometry.py"
  tmux -L "$tmux_socket" -f /dev/null new-session -d -s helix -x 120 -y 30 "$work/hx.sh geometry.py"
  python3 "$root/tests/editors/helix_paint.py" --tmux-socket "$tmux_socket" --work "$work" \
    --file "$work/workspace/geometry.py" --out "$GHOSTLINE_PAINT_OUT" --model "$model" \
    --line-above "$GHOSTLINE_PAINT_LINE_ABOVE" --typed "$GHOSTLINE_PAINT_TYPED"
  echo "helix.sh: measured in $(($(date +%s) - started)) s, appended to $GHOSTLINE_PAINT_OUT"
else
  tmux -L "$tmux_socket" -f /dev/null new-session -d -s helix -x 120 -y 30 "$work/hx.sh shapes.py"
  python3 "$root/tests/editors/helix_driver.py" --tmux-socket "$tmux_socket" --work "$work" \
    --file "$work/workspace/shapes.py"
  echo "helix.sh: passed in $(($(date +%s) - started)) s"
fi
