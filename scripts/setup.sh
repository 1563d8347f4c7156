#!/usr/bin/env bash
# Installs what building Ghostline needs when it is missing: cmake, clang and libclang
# (llama.cpp is compiled by the llama-cpp-sys-2 crate), pip (models are fetched from PyPI).
# As root it uses apt-get; otherwise it says what to install and stops.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
    missing+=(libclang-dev)
fi
command -v c++ >/dev/null 2>&1 || missing+=(g++)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if ! command -v cargo >/dev/null 2>&1; then
    echo "ghostline setup: cargo is missing: install Rust from https://rustup.rs and run this again" >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "ghostline setup: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "ghostline setup: missing ${missing[*]}; install them (for example: sudo apt-get install ${missing[*]}) and run this again" >&2
        exit 1
    fi
fi
