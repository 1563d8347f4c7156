//! Generation speed of Ghostline's engine against llama.cpp's own `llama-bench`, same model,
//! same threads, same prompt depth, in the same run.
//!
//! `cargo bench --bench decode` (set GHOSTLINE_PEER_BIN to the folder with `llama-bench`, or let
//! it use the one `benches/build-peer.sh` builds). Prints ms/token for both and the ratio of
//! speeds (Ghostline / llama-bench; 1.0 means the same speed). When run as a test (`cargo test
//! --benches`) it does one short round on the tiny model to check that it works.

use std::process::Command;
use std::time::Duration;

use ghostline::engine::{Engine, EngineConfig};

const N_GENERATE: usize = 64;

fn engine_ms_per_token(engine: &Engine, depth_tokens: usize, round: usize) -> Option<f64> {
    ghostline::probe::decode_ms_per_token(engine, depth_tokens, round, N_GENERATE).expect("generation works")
}

fn llama_bench_ms_per_token(bin_dir: &str, model: &str, depth_tokens: usize, threads: usize) -> Option<f64> {
    let output = Command::new(format!("{bin_dir}/llama-bench"))
        .args(["-m", model, "-p", "0", "-n", &N_GENERATE.to_string(), "-d", &depth_tokens.to_string()])
        .args(["-t", &threads.to_string(), "-r", "1", "-o", "json"])
        .output()
        .ok()?;
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let tokens_per_second = results.get(0)?.get("avg_ts")?.as_f64()?;
    Some(1000.0 / tokens_per_second)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let model_name = if quick { "smollm2-135m" } else { ghostline::models::DEFAULT_MODEL };
    let model = ghostline::models::resolve(model_name).expect("model available");
    let mut engine_config = EngineConfig::new(model.clone());
    // GHOSTLINE_BENCH_CONTEXT sets the context size (default: the engine's own default).
    if let Some(context_tokens) = std::env::var("GHOSTLINE_BENCH_CONTEXT").ok().and_then(|value| value.parse().ok()) {
        engine_config.context_tokens = context_tokens;
    }
    let engine = Engine::start(engine_config).expect("engine starts");
    let threads = engine.info().threads;
    let depths: &[usize] = if quick { &[32] } else { &[128, 512] };
    println!(
        "model {} ({}), threads {threads}, context {} tokens, {N_GENERATE} tokens generated per round",
        engine.info().name,
        model_name,
        engine.info().context_tokens
    );
    println!("load {:.0} ms", engine.info().load_ms);
    let peer_dir = std::env::var("GHOSTLINE_PEER_BIN").ok().or_else(|| {
        let dir = dirs::cache_dir()?.join("ghostline/peer/build/bin");
        dir.join("llama-bench").exists().then(|| dir.to_string_lossy().into_owned())
    });
    // Rounds interleave the two, so machine noise hits both; each figure is a median.
    let rounds = if quick { 1 } else { 7 };
    for &depth in depths {
        let mut ghostline = Vec::new();
        let mut peer = Vec::new();
        for round in 0..rounds {
            ghostline.extend(engine_ms_per_token(&engine, depth, round));
            if !quick {
                if let Some(dir) = peer_dir.as_deref() {
                    peer.extend(llama_bench_ms_per_token(dir, model.to_str().unwrap(), depth, threads));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!ghostline.is_empty(), "the engine generated too few tokens to measure");
        let ghostline_ms = median(&mut ghostline);
        if peer.is_empty() {
            println!("depth {depth}: ghostline {ghostline_ms:.2} ms/token (no llama-bench run)");
        } else {
            let peer_ms = median(&mut peer);
            println!(
                "depth {depth}: ghostline {ghostline_ms:.2} ms/token, llama-bench {peer_ms:.2} ms/token (medians of {} interleaved rounds), speed ratio {:.3}",
                ghostline.len(),
                peer_ms / ghostline_ms
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|line| line.starts_with("VmHWM")) {
            println!("peak RSS {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
}
