//! The build runs on every x86-64 machine it installs on: no Intel AMX instruction in the
//! binary (llama.cpp's AMX kernels die with SIGILL on CPUs that advertise AMX), and the
//! flags that keep them out reached llama.cpp's compiler, so an AMX build machine produces the
//! same binary. A check that only disassembled would pass on any CPU without AMX.
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(script: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("bash").arg(script).args(args).output().expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_binary_holds_no_amx_instructions() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-no-amx.sh");
    let (ok, text) = run(script, &["--self-test"]);
    assert!(ok, "the AMX detector must find AMX code: {text}");
    let (ok, text) = run(script, &[env!("CARGO_BIN_EXE_ghostline")]);
    assert!(ok, "{text}");
}

/// The CMake cache of the llama.cpp build that went into this profile's binary.
fn llama_cmake_cache() -> PathBuf {
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_ghostline")).parent().unwrap();
    let build_dir = profile_dir.join("build");
    let mut caches: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build_dir)
        .unwrap_or_else(|err| panic!("{}: {err}", build_dir.display()))
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("llama-cpp-sys-2-"))
        .map(|entry| entry.path().join("out/build/CMakeCache.txt"))
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    caches.sort();
    caches.pop().unwrap_or_else(|| panic!("no llama.cpp CMakeCache.txt under {}", build_dir.display())).1
}

#[test]
fn llama_cpp_was_compiled_with_amx_switched_off() {
    let path = llama_cmake_cache();
    let cache = std::fs::read_to_string(&path).unwrap();
    for language in ["C", "CXX"] {
        let key = format!("CMAKE_{language}_FLAGS:");
        let line = cache.lines().find(|line| line.starts_with(&key)).unwrap_or_else(|| panic!("{key} missing in {}", path.display()));
        for flag in ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16", "-U__AMX_TILE__", "-U__AMX_INT8__"] {
            assert!(line.contains(flag), "{flag} missing from {line} ({}): see .cargo/config.toml", path.display());
        }
    }
}
