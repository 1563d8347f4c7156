#!/usr/bin/env bash
# The Vulkan build on a real Vulkan device: builds Ghostline with `--features vulkan`, lists the
# devices (`ghostline doctor`, whose engine check decodes on the GPU), and completes the demo
# file (examples/geometry.py:6:22, then typing `r`) with every layer on the Vulkan device and
# with none (`--gpu-layers 0`, the CPU), expecting the same suggestions.
#
# Without a GPU, Mesa's software Vulkan driver (lavapipe, Debian's mesa-vulkan-drivers) is the
# device; llama.cpp skips CPU-type Vulkan devices unless named, so GGML_VK_VISIBLE_DEVICES=0
# names it (set GGML_VK_VISIBLE_DEVICES yourself to choose another device). Installs
# libvulkan-dev, glslc, spirv-headers and mesa-vulkan-drivers through apt-get when run as root.
# llama.cpp's Vulkan backend needs Vulkan headers 1.3.261 or newer (VK_EXT_layer_settings);
# where the system's are older (Debian 12 has 1.3.239), trixie's libvulkan-dev is downloaded
# with an apt configuration of its own and unpacked into ~/.cache/ghostline/vulkan-headers
# (nothing in /etc/apt or / changes), and only its headers are used (CPLUS_INCLUDE_PATH).
# Not part of scripts/test.sh: the Vulkan build compiles llama.cpp's shaders (many minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
missing=()
[[ -e /usr/include/vulkan/vulkan.hpp ]] || missing+=(libvulkan-dev)
command -v glslc >/dev/null || missing+=(glslc)
[[ -d /usr/include/spirv ]] || missing+=(spirv-headers)
ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "vulkan.sh: install ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

header_version=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)$/\1/p' /usr/include/vulkan/vulkan_core.h)
if ((header_version < 261)); then
    headers_dir=${GHOSTLINE_CACHE_DIR:-$HOME/.cache/ghostline}/vulkan-headers
    if [[ ! -e $headers_dir/usr/include/vulkan/vulkan.hpp ]]; then
        echo "vulkan.sh: Vulkan headers $header_version are too old; fetching trixie's libvulkan-dev into $headers_dir" >&2
        apt_dir=$(mktemp -d)
        mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
            >"$apt_dir/sources.list"
        apt_options=(
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
            -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
            -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "APT::Update::Post-Invoke::="
        )
        apt-get -q "${apt_options[@]}" update >/dev/null
        (cd "$apt_dir/debs" && apt-get -q "${apt_options[@]}" download libvulkan-dev >/dev/null)
        rm -rf "$headers_dir"
        dpkg -x "$apt_dir"/debs/libvulkan-dev_*.deb "$headers_dir"
        rm -rf "$apt_dir"
    fi
    export CPLUS_INCLUDE_PATH=$headers_dir/usr/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}
    export C_INCLUDE_PATH=$headers_dir/usr/include${C_INCLUDE_PATH:+:$C_INCLUDE_PATH}
fi

target=$(rustc -vV | sed -n 's/^host: //p')
# Its own --target directory, so the native build in target/release is left alone.
cargo build --release --locked --features vulkan --target "$target"
bin=target/$target/release/ghostline
export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
model=${GHOSTLINE_TEST_MODEL:-qwen2.5-coder-0.5b}
"$bin" models fetch "$model" >/dev/null

doctor=$("$bin" doctor --model "$model")
echo "$doctor"
grep -q '^device Vulkan' <<<"$doctor" || { echo "vulkan.sh: llama.cpp lists no Vulkan device" >&2; exit 1; }
grep -Eq 'engine check: ok, .* [1-9][0-9]* layers on a GPU' <<<"$doctor" || { echo "vulkan.sh: the engine check did not run on the GPU" >&2; exit 1; }

gpu=$("$bin" complete examples/geometry.py:6:22 --then-type r --model "$model" --json)
cpu=$("$bin" complete examples/geometry.py:6:22 --then-type r --model "$model" --json --gpu-layers 0)
echo "Vulkan: $gpu"
echo "CPU:    $cpu"
texts() { python3 -c 'import json,sys; print([json.loads(l)["text"] for l in sys.stdin if l.strip()])'; }
if [[ "$(texts <<<"$gpu")" != "$(texts <<<"$cpu")" ]]; then
    echo "vulkan.sh: the Vulkan build's suggestions differ from the CPU's" >&2
    exit 1
fi
echo "vulkan.sh: same suggestions on Vulkan and on the CPU: $(texts <<<"$gpu")"
