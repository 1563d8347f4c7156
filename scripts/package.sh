#!/usr/bin/env bash
# Builds the portable Ghostline for distribution and packs it:
#   dist/ghostline-VERSION-TARGET/          bin/ghostline, lib/ (llama.cpp and its backends),
#                                           README.md, ARCHITECTURE.md, editors/
#   dist/ghostline-VERSION-TARGET.tar.gz    the same folder as an archive
#   dist/ghostline-VERSION-VSCODE_TARGET.vsix   the VS Code extension with the server inside
#                                           (when npm is available; skip with --no-vsix)
#
# Portable means: the Rust code and llama.cpp's core are compiled for the architecture's baseline
# (x86-64 without any extension, or the default aarch64 target), and llama.cpp's CPU kernels are
# built once per instruction-set level (x86-64: SSE4.2, AVX, AVX2, AVX-512 variants, ...) as
# libraries; at start the binary loads the best one this CPU runs (ggml's backend scoring). No
# variant contains AMX instructions (.cargo/config.toml; checked below). The binary finds its
# libraries through its rpath, $ORIGIN/../lib.
#
# Usage: scripts/package.sh [--features "vulkan"] [--no-vsix]
#   --features  extra Cargo features (a GPU backend: vulkan, cuda) compiled into the package
# Environment: GHOSTLINE_DIST_DIR (default dist).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

features=portable
vsix=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --features) features="portable,$2"; shift 2 ;;
        --no-vsix) vsix=0; shift ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

bash scripts/setup.sh
target=$(rustc -vV | sed -n 's/^host: //p')
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
case $target in
    x86_64-*) cpu_flags="-C target-cpu=x86-64" ;;
    *) cpu_flags="" ;;
esac
case $target in
    x86_64-unknown-linux-*) vscode_target=linux-x64 ;;
    aarch64-unknown-linux-*) vscode_target=linux-arm64 ;;
    x86_64-apple-darwin) vscode_target=darwin-x64 ;;
    aarch64-apple-darwin) vscode_target=darwin-arm64 ;;
    *) vscode_target="" ;;
esac
case $target in
    *-apple-*) rpath='@executable_path/../lib' ;;
    *) rpath='$ORIGIN/../lib' ;;
esac

# RUSTFLAGS replaces the `target-cpu=native` of .cargo/config.toml for this build only; the
# explicit --target keeps its outputs apart from the native build's (target/TARGET/release).
echo "package.sh: building Ghostline $version for $target (features: $features)" >&2
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
RUSTFLAGS="$cpu_flags -C link-arg=-Wl,-rpath,$rpath" \
    cargo build --release --locked --target "$target" --features "$features" \
    --message-format=json-render-diagnostics >"$build_log"
# The output folder of the llama-cpp-sys-2 build that went into this binary (other builds with
# other features have folders of their own).
sys_out=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    message = json.loads(line)
    if message.get("reason") == "build-script-executed" and "llama-cpp-sys-2" in message.get("package_id", ""):
        print(message["out_dir"])
' "$build_log" | tail -1)
rm -f "$build_log"

out_dir=target/$target/release
dist_root=${GHOSTLINE_DIST_DIR:-dist}
mkdir -p "$dist_root"
dist_root=$(cd "$dist_root" && pwd)
name=ghostline-$version-$target
stage=$dist_root/$name
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
cp "$out_dir/ghostline" "$stage/bin/"
# llama.cpp's shared libraries and its backend modules (one CPU library per level, GPU backends).
if [[ -z "$sys_out" || ! -d "$sys_out" ]]; then
    echo "package.sh: cargo did not report the llama-cpp-sys-2 build folder" >&2
    exit 1
fi
find "$sys_out" \( -name 'lib*.so' -o -name 'lib*.so.*' -o -name 'lib*.dylib' \) -not -path '*/CMakeFiles/*' \
    -exec cp -P {} "$stage/lib/" \;
# The OpenMP runtime llama.cpp's CPU kernels use is not on every machine (it comes with gcc):
# it goes along, and the binary's rpath finds it first.
if command -v ldd >/dev/null; then
    ldd "$stage/bin/ghostline" | awk '/libgomp/ { print $3 }' | while read -r lib; do
        if [[ -f $lib ]]; then cp -L "$lib" "$stage/lib/"; fi
    done
fi
cp README.md ARCHITECTURE.md "$stage/"
mkdir -p "$stage/editors"
git ls-files editors | grep -v '^editors/vscode/screenshot' | while read -r file; do
    mkdir -p "$stage/$(dirname "$file")"
    cp "$file" "$stage/$file"
done

# Checks: no AMX instruction anywhere, every library found, and the engine runs from the package.
if [[ $target == x86_64-* ]]; then
    bash scripts/check-no-amx.sh --self-test >/dev/null
    mapfile -t libraries < <(find "$stage/lib" -type f \( -name '*.so*' -o -name '*.dylib' \))
    bash scripts/check-no-amx.sh "$stage/bin/ghostline" "${libraries[@]}" >/dev/null
fi
if command -v ldd >/dev/null && ldd "$stage/bin/ghostline" | grep -q 'not found'; then
    echo "package.sh: the binary misses libraries:" >&2
    ldd "$stage/bin/ghostline" | grep 'not found' >&2
    exit 1
fi
"$stage/bin/ghostline" --version
echo "package.sh: CPU backends: $(cd "$stage/lib" && ls | grep -c 'ggml-cpu') libraries" >&2

tar -C "$dist_root" -czf "$dist_root/$name.tar.gz" "$name"
echo "package.sh: $dist_root/$name.tar.gz"

if [[ $vsix == 1 && -n $vscode_target ]]; then
    if command -v npm >/dev/null; then
        server_dir=$(mktemp -d)
        trap 'rm -rf "$server_dir"' EXIT
        cp -a "$stage/bin" "$stage/lib" "$server_dir/"
        bash editors/vscode/package.sh "$server_dir" "$vscode_target" "$dist_root/ghostline-$version-$vscode_target.vsix"
        echo "package.sh: $dist_root/ghostline-$version-$vscode_target.vsix"
    else
        echo "package.sh: npm is missing; no .vsix (install npm, or pass --no-vsix)" >&2
        exit 1
    fi
fi
