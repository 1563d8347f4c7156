#!/usr/bin/env bash
# Builds Ghostline, fetches the default model when it is not cached, and completes a sample
# file twice: once at the cursor, then again after typing one character (the second answer
# reuses the warm KV cache). Prints each suggestion with its timings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
ghostline=target/release/ghostline
"$ghostline" models fetch qwen2.5-coder-0.5b >/dev/null
"$ghostline" doctor
echo
echo "== examples/geometry.py:6:22, then typing 'r' =="
"$ghostline" complete examples/geometry.py:6:22 --then-type r
