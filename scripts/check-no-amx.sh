#!/usr/bin/env bash
# Fails when a binary or shared library holds an Intel AMX instruction (llama.cpp's AMX kernels
# die with SIGILL on CPUs that advertise AMX; no Ghostline build may contain them).
# Usage: check-no-amx.sh FILE...      check these files (x86-64 ELF), print offending lines
#        check-no-amx.sh --self-test   prove the check finds AMX code: compile a tiny AMX
#                                      function with the C compiler and expect a failure
# Needs objdump (binutils 2.36 or newer knows the AMX mnemonics).
set -euo pipefail

amx='\s(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilerelease|tilezero|tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps|tcmmimfp16ps|tcmmrlfp16ps)\s'

if ! command -v objdump >/dev/null; then
    echo "check-no-amx: objdump is missing (apt-get install binutils)" >&2
    exit 2
fi

if [[ "${1:-}" == --self-test ]]; then
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    printf '#include <immintrin.h>\nvoid ghostline_amx_probe(void) { _tile_zero(0); _tile_release(); }\n' > "$dir/amx.c"
    cc -O2 -mamx-tile -c "$dir/amx.c" -o "$dir/amx.o"
    set +e
    "$0" "$dir/amx.o" >/dev/null 2>&1
    code=$?
    set -e
    if [[ $code -ne 1 ]]; then
        echo "check-no-amx: self-test failed: an object with AMX instructions gave exit code $code, not 1" >&2
        exit 1
    fi
    echo "check-no-amx: self-test ok (AMX instructions are found)"
    exit 0
fi

if [[ $# -eq 0 ]]; then
    echo "usage: check-no-amx.sh FILE... | --self-test" >&2
    exit 2
fi

status=0
for file in "$@"; do
    if ! listing=$(objdump -d --no-show-raw-insn "$file"); then
        echo "check-no-amx: objdump cannot read $file" >&2
        exit 2
    fi
    found=$(grep -E -m 5 "$amx" <<<"$listing" || true)
    if [[ -n "$found" ]]; then
        echo "check-no-amx: $file contains AMX instructions:" >&2
        echo "$found" >&2
        status=1
    else
        echo "check-no-amx: $file: no AMX instructions"
    fi
done
exit $status
