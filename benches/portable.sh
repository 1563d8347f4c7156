#!/usr/bin/env bash
# Decode speed of the portable build (scripts/package.sh) against the native build
# (cargo build --release), same model, same threads, in the same run: rounds alternate between
# the two binaries so that a change in machine load hits both alike. Prints the median ms/token
# of each at each depth and the speed ratio portable / native (1.0: the same speed).
# Needs an otherwise idle machine.
#
# Usage: benches/portable.sh [PORTABLE_BIN] [NATIVE_BIN]
# Environment: GHOSTLINE_BENCH_MODEL (default qwen2.5-coder-0.5b), GHOSTLINE_BENCH_ROUNDS (7),
# GHOSTLINE_BENCH_DEPTHS (128,512).
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
portable=${1:-$(ls -d dist/ghostline-*-"$target"/bin/ghostline | tail -1)}
native=${2:-target/release/ghostline}
model=${GHOSTLINE_BENCH_MODEL:-qwen2.5-coder-0.5b}
rounds=${GHOSTLINE_BENCH_ROUNDS:-7}
depths=${GHOSTLINE_BENCH_DEPTHS:-128,512}
results=$(mktemp)
trap 'rm -f "$results"' EXIT

for ((round = 0; round < rounds; round++)); do
    for build in native portable; do
        bin=$native
        [[ $build == portable ]] && bin=$portable
        "$bin" decode-speed --model "$model" --depths "$depths" --rounds 1 \
            | sed "s/^{/{\"build\":\"$build\",/" >>"$results"
    done
done

python3 - "$results" "$portable" "$native" "$model" <<'PY'
import json, statistics, sys
path, portable, native, model = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if line.strip()]
print(f"model {model}; portable {portable}; native {native}")
print("| prompt depth | native ms/token | portable ms/token | speed ratio portable/native |")
print("| --- | --- | --- | --- |")
for depth in sorted({row["depth"] for row in rows}):
    med = {}
    for build in ("native", "portable"):
        values = [row["ms_per_token"] for row in rows if row["build"] == build and row["depth"] == depth and row["ms_per_token"]]
        med[build] = statistics.median(values)
    print(f"| {depth} | {med['native']:.2f} | {med['portable']:.2f} | {med['native'] / med['portable']:.3f} |")
PY
