#!/usr/bin/env bash
# Keypress-to-paint in the real editors, from one run: each editor's real-editor test in its
# measuring mode (GHOSTLINE_PAINT_OUT) types a line of Python key by key on the default model and
# times, per key, the key event to the first ghost text (or Helix's completion item) consistent
# with what is typed, and to the text that stays; keys with nothing within the cap are "never";
# flicker counts the ghost text vanishing between two keys while it still agreed with them.
# VS Code runs twice (pushRefresh and longPoll). Definitions in each driver's header.
# Prints a Markdown table and keeps the JSON lines. Needs an otherwise idle machine.
#
# Usage: benches/paint.sh [OUT.jsonl]    (default target/paint/paint.jsonl)
# Environment: as tests/editors/*.sh (GHOSTLINE_BIN, GHOSTLINE_EDITORS_DIR); GHOSTLINE_PAINT_EDITORS
# (default "neovim helix vscode").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/paint/paint.jsonl}
mkdir -p "$(dirname "$out")"
: >"$out"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
for editor in ${GHOSTLINE_PAINT_EDITORS:-neovim helix vscode}; do
    echo "paint.sh: $editor" >&2
    GHOSTLINE_PAINT_OUT=$out bash "tests/editors/$editor.sh" >&2
done

python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return str(value)
columns = [("keys", "keys"), ("first p50 ms", "first_p50_ms"), ("first p90 ms", "first_p90_ms"),
           ("first max ms", "first_max_ms"), ("final p50 ms", "final_p50_ms"), ("final p90 ms", "final_p90_ms"),
           ("never", "never"), ("flicker", "flicker")]
print("| editor | mode | " + " | ".join(label for label, _ in columns) + " |")
print("| --- | --- |" + " --- |" * len(columns))
for row in rows:
    print(f"| {row['editor']} | {row.get('mode') or '-'} | " + " | ".join(cell(row.get(key)) for _, key in columns) + " |")
EOF
echo "paint.sh: wrote $out" >&2
