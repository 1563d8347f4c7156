//! Architecture rules checked on the source tree: only `src/server/` knows LSP types, and only
//! `src/engine/worker.rs` calls llama.cpp.

use std::path::Path;

fn rust_files(dir: &Path, res: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, res);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            res.push(path);
        }
    }
}

fn files_mentioning(needle: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut res: Vec<String> = files
        .into_iter()
        .filter(|path| std::fs::read_to_string(path).unwrap().contains(needle))
        .map(|path| path.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    res.sort();
    res
}

#[test]
fn only_the_server_knows_lsp_types() {
    for file in files_mentioning("tower_lsp_server") {
        assert!(file.starts_with("server/"), "{file} uses LSP types; only src/server/ may");
    }
}

#[test]
fn only_the_engine_worker_calls_llama_cpp() {
    for needle in ["llama_cpp_2", "llama_cpp_sys_2"] {
        let files = files_mentioning(needle);
        assert!(!files.is_empty() && files.iter().all(|file| file.starts_with("engine/worker/")), "{needle}: {files:?}");
    }
}
