#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests of the real binary with real models.
# Installs the build tools when missing and fetches both test models (verified by sha256)
# into the model cache on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
target/release/ghostline models fetch smollm2-135m >/dev/null
target/release/ghostline models fetch qwen2.5-coder-0.5b >/dev/null
cargo test --release --all-targets "$@"
