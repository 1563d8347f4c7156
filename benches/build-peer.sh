#!/usr/bin/env bash
# Builds the peer, llama.cpp's own `llama-server` and `llama-bench`, from the llama.cpp sources
# vendored in the PyPI sdist of llama-cpp-python, into a cache directory outside the source tree.
# Prints the directory holding the two binaries. Nothing of the peer is ever committed.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-}"
cache="${GHOSTLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ghostline}/peer"
mkdir -p "$cache"
bin="$cache/build/bin"
# The build's own CPU (GGML_NATIVE) without the AMX kernels: on Xeons with AMX whose kernel or
# hypervisor does not grant the tile state, llama.cpp's AMX matmul faults while loading a model.
# A build made with other flags (the stamp) is built again.
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
stamp="$cache/build/ghostline-flags"
if [ -x "$bin/llama-server" ] && [ -x "$bin/llama-bench" ] && [ "$(cat "$stamp" 2>/dev/null)" == "$flags" ]; then
    echo "$bin"
    exit 0
fi
bash "$(dirname "$0")/../scripts/setup.sh"
spec="llama-cpp-python${version:+==$version}"
if ! ls "$cache"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: "$spec" -d "$cache" >&2
fi
sdist=$(ls "$cache"/llama_cpp_python-*.tar.gz | head -n1)
rm -rf "$cache/src"
mkdir -p "$cache/src"
tar -xzf "$sdist" -C "$cache/src" --strip-components=1
cmake -S "$cache/src/vendor/llama.cpp" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$cache/build" --target llama-server llama-bench -j "$(nproc)" >&2
echo "$flags" > "$stamp"
echo "$bin"
