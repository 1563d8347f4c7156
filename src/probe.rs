//! The engine check: load the model and decode a few tokens in a child process, so that a
//! llama.cpp build that dies on this machine (an illegal instruction, a memory fault, an abort)
//! becomes a message instead of a dead language server.
//!
//! `ghostline doctor` and the server run it before they call the engine usable. The child is
//! the same binary (`ghostline probe-engine`, hidden); it prints one JSON line with what it
//! decoded. Its stdin is closed and its stdout is a pipe: it never touches the editor's stream.
//!
//! Invariants: the parent never loads llama.cpp kernels for the check; a child killed by a
//! signal is always reported with the signal's name; the check has a deadline and kills the
//! child when it passes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::engine::{self, Device, Engine, EngineConfig, GenerateParams, Piece, Prompt, StopRules};

/// Set only by the tests: the child executes an illegal instruction after loading the model,
/// exactly where a build with the wrong CPU kernels dies.
pub const ILLEGAL_INSTRUCTION_SWITCH: &str = "GHOSTLINE_TEST_ILLEGAL_INSTRUCTION";

/// How long the child may take to load the model and decode (a big model from a slow disk).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// What the child decoded.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub model: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub text: String,
    pub load_ms: f64,
    pub decode_ms: f64,
    pub gpu_layers: u32,
    pub devices: Vec<Device>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the engine check could not start {exe}: {reason}")]
    Spawn { exe: PathBuf, reason: String },
    #[error("{}", crash_message(*.signal, .stage, .system_info))]
    Crashed { signal: i32, stage: String, system_info: String },
    #[error("the engine check failed (exit code {code}): {reason}")]
    Failed { code: i32, reason: String },
    #[error("the engine check did not finish within {} s and was stopped; the model may be too big for this machine, or its file is not a regular file", .0.as_secs())]
    TimedOut(Duration),
}

/// The child's side: load the model, decode a short prompt, generate a few tokens.
pub fn run_in_child(model_path: &Path, gpu_layers: Option<u32>) -> Result<ProbeReport, engine::EngineError> {
    let mut config = EngineConfig::new(model_path.to_path_buf());
    config.context_tokens = 512;
    config.gpu_layers = gpu_layers;
    let engine = Engine::start(config)?;
    eprintln!("stage: decoding");
    if std::env::var_os(ILLEGAL_INSTRUCTION_SWITCH).is_some() {
        illegal_instruction();
    }
    let prompt = Prompt { pieces: vec![Piece::Text(String::from("def add(a, b):\n    return a"))] };
    let params = GenerateParams { max_tokens: 4, stop: StopRules::default(), ..GenerateParams::default() };
    let start = Instant::now();
    let completion = engine.complete_blocking(prompt, params)?;
    Ok(ProbeReport {
        model: engine.info().name.clone(),
        prompt_tokens: completion.prompt_tokens,
        generated_tokens: completion.generated_tokens,
        text: completion.text,
        load_ms: engine.info().load_ms,
        decode_ms: start.elapsed().as_secs_f64() * 1000.0,
        gpu_layers: engine.info().gpu_layers,
        devices: engine::devices()?,
    })
}

/// Generation speed at a prompt depth: milliseconds per generated token for `n_generate`
/// tokens after a prompt of about `depth_tokens` tokens that invites a long continuation. A
/// different first line per `round` keeps KV reuse from flattering the figure. `None` when the
/// model stopped before 8 tokens. Used by `benches/decode.rs` and `ghostline decode-speed`.
pub fn decode_ms_per_token(engine: &Engine, depth_tokens: usize, round: usize, n_generate: usize) -> Result<Option<f64>, engine::EngineError> {
    let mut text = format!("# round {round}: the integers, one per line\nvalues = [\n");
    let mut value = 0;
    while engine.tokenize(&text)?.len() < depth_tokens {
        text.push_str(&format!("    {value},\n"));
        value += 1;
    }
    let mut prompt = Prompt::default();
    prompt.push_text(text);
    let params = GenerateParams { max_tokens: n_generate, stop: StopRules::multi_line(0), token_healing: false, ..GenerateParams::default() };
    let completion = engine.complete_blocking(prompt, params)?;
    Ok((completion.generated_tokens >= 8).then(|| completion.generation_ms / completion.generated_tokens as f64))
}

#[cfg(target_arch = "x86_64")]
fn illegal_instruction() -> ! {
    // SAFETY: `ud2` raises SIGILL; nothing after it runs.
    unsafe { std::arch::asm!("ud2", options(noreturn)) }
}

#[cfg(target_arch = "aarch64")]
fn illegal_instruction() -> ! {
    // SAFETY: `udf` raises SIGILL; nothing after it runs.
    unsafe { std::arch::asm!("udf #0", options(noreturn)) }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn illegal_instruction() -> ! {
    std::process::abort()
}

/// A started check. `wait_loaded` waits until the child has loaded the model (so a model file
/// that crashes the loader never reaches the caller's own process); `wait` collects the verdict.
/// Dropping it kills the child.
pub struct PendingProbe {
    child: std::process::Child,
    started: Instant,
    deadline: Duration,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    loaded: std::sync::mpsc::Receiver<()>,
}

/// Starts `exe probe-engine` for the model (normally `this_program()`).
pub fn start(exe: &Path, model_path: &Path, gpu_layers: Option<u32>, deadline: Duration) -> Result<PendingProbe, ProbeError> {
    let mut command = Command::new(exe);
    command.arg("probe-engine").arg("--model").arg(model_path);
    if let Some(layers) = gpu_layers {
        command.arg("--gpu-layers").arg(layers.to_string());
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ProbeError::Spawn { exe: exe.to_path_buf(), reason: err.to_string() })?;
    // The pipes are drained from the start on their own threads, so a chatty child (a debug
    // log level) never blocks on a full pipe; stderr also tells when the model is loaded.
    let (loaded_sender, loaded) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().map(|pipe| drain(pipe, None));
    let stderr = child.stderr.take().map(|pipe| drain(pipe, Some(loaded_sender)));
    Ok(PendingProbe { child, started: Instant::now(), deadline, stdout, stderr, loaded })
}

impl PendingProbe {
    /// Waits until the child has loaded the model and started decoding. An error is the
    /// verdict of a child that ended (or was stopped at the deadline) before that.
    pub fn wait_loaded(&mut self) -> Result<(), ProbeError> {
        let left = self.deadline.saturating_sub(self.started.elapsed());
        match self.loaded.recv_timeout(left) {
            Ok(()) => Ok(()),
            // The child closed stderr without loading: it ended; its verdict says why.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match self.finish() {
                Ok(_) => Err(ProbeError::Failed { code: 0, reason: String::from("the check ended without loading the model") }),
                Err(err) => Err(err),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.kill();
                Err(ProbeError::TimedOut(self.deadline))
            }
        }
    }

    /// Waits for the child (killing it at the deadline) and reads its verdict.
    pub fn wait(mut self) -> Result<ProbeReport, ProbeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<ProbeReport, ProbeError> {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() >= self.deadline => {
                    self.kill();
                    return Err(ProbeError::TimedOut(self.deadline));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(err) => return Err(ProbeError::Failed { code: -1, reason: err.to_string() }),
            }
        };
        let stdout = self.stdout.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        let stderr = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        verdict(status, &stdout, &stderr)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PendingProbe {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// This program, for starting the check: on Linux `/proc/self/exe`, which still works after the
/// binary was replaced on disk (an update while the server runs).
pub fn this_program() -> std::io::Result<PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe()
}

fn drain(pipe: impl Read + Send + 'static, loaded: Option<std::sync::mpsc::Sender<()>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(pipe);
        let mut text = Vec::new();
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).map(|read| read > 0).unwrap_or(false) {
            if let Some(loaded) = &loaded {
                if line.starts_with(b"stage: decoding") {
                    let _ = loaded.send(());
                }
            }
            text.append(&mut line);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Runs the whole check and waits for it.
pub fn check(exe: &Path, model_path: &Path, gpu_layers: Option<u32>) -> Result<ProbeReport, ProbeError> {
    start(exe, model_path, gpu_layers, DEFAULT_DEADLINE)?.wait()
}

fn verdict(status: ExitStatus, stdout: &str, stderr: &str) -> Result<ProbeReport, ProbeError> {
    if let Some(signal) = terminating_signal(&status) {
        let stage = if stderr.contains("stage: decoding") { "decoding the first tokens" } else { "loading the model" };
        return Err(ProbeError::Crashed { signal, stage: stage.to_string(), system_info: engine::system_info().trim().to_string() });
    }
    if !status.success() {
        let reason = stderr
            .lines()
            .rev()
            .find(|line| line.starts_with("ghostline: "))
            .map(|line| line.trim_start_matches("ghostline: ").to_string())
            .unwrap_or_else(|| last_lines(stderr, 3));
        return Err(ProbeError::Failed { code: status.code().unwrap_or(-1), reason });
    }
    let line = stdout.lines().rev().find(|line| line.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).map_err(|err| ProbeError::Failed { code: 0, reason: format!("unreadable answer from the check ({err}): {}", last_lines(stdout, 2)) })
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join(" / ")
}

#[cfg(unix)]
fn terminating_signal(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn terminating_signal(_status: &ExitStatus) -> Option<i32> {
    None
}

/// The signal's name and what it means, for the numbers a crashing engine dies of.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL (illegal instruction)",
        6 => "SIGABRT (llama.cpp aborted)",
        8 => "SIGFPE (arithmetic fault)",
        9 => "SIGKILL (killed, often by the out-of-memory killer)",
        11 => "SIGSEGV (invalid memory access)",
        #[cfg(target_os = "linux")]
        7 => "SIGBUS (bus error)",
        #[cfg(not(target_os = "linux"))]
        10 => "SIGBUS (bus error)",
        _ => "a signal",
    }
}

fn crash_message(signal: i32, stage: &str, system_info: &str) -> String {
    let advice = match signal {
        4 => "this build of llama.cpp uses CPU instructions that this machine does not run. Use the portable build (scripts/package.sh, or the release archive or VS Code extension built by it), which picks its CPU kernels at run time, or build from source on this machine (cargo build --release)",
        9 => "the machine ran out of memory: choose a smaller model, or lower contextTokens",
        7 | 10 | 11 => "the model file may be damaged or changed while in use (fetch it again: ghostline models fetch NAME), memory may be short, or, with a GPU, its driver failed (try gpuLayers 0)",
        6 => "llama.cpp stopped on an internal check: the model file may be damaged or of an unsupported kind, or the GPU backend failed (try gpuLayers 0)",
        _ => "try the portable build, or build from source on this machine",
    };
    format!(
        "the engine crashed with signal {signal}, {}, while {stage}; {advice}. llama.cpp was built with: {system_info}",
        signal_name(signal)
    )
}


/// Why the engine is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    /// The model could not be found or fetched.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The model was found but llama.cpp could not load it (in this process or the child).
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("the model could not be loaded: {0}")]
    ChildLoad(ProbeError),
    /// The model loads, but decoding with it kills the process (the check in a child saw it),
    /// or the check could not run at all.
    #[error(transparent)]
    EngineCheck(ProbeError),
    #[error("cannot find this program's path for the engine check: {0}")]
    ThisProgram(String),
    #[error("the model loader crashed: {0}")]
    LoaderPanicked(String),
    /// The engine loaded and ran, then its thread crashed.
    #[error("the engine crashed: {0}")]
    Crashed(String),
}

impl LoadFailure {
    /// Whether the engine check failed (the model itself may be fine).
    pub fn is_engine_check(&self) -> bool {
        matches!(self, LoadFailure::EngineCheck(_) | LoadFailure::ThisProgram(_))
    }
}

/// Loads the engine in this process while a child process loads the same model and decodes a
/// few tokens (`start`); the engine is handed out only when the child succeeded, so a llama.cpp
/// build that dies on this CPU never takes the server down. Both loads overlap.
pub fn load_checked_engine(config: &crate::config::Config) -> Result<Engine, LoadFailure> {
    match &config.backend {
        None => load_checked_local_engine(config),
        Some(remote) => {
            // The embedded model is loaded (and checked) only as a fallback.
            let fallback = if remote.fallback_local { Some(load_checked_local_engine(config)?) } else { None };
            let remote = engine::remote::RemoteConfig { context_tokens: config.context_tokens, ..remote.clone() };
            Ok(Engine::start_remote(remote, fallback))
        }
    }
}

fn load_checked_local_engine(config: &crate::config::Config) -> Result<Engine, LoadFailure> {
    let path = crate::models::resolve(&config.model)?;
    let exe = this_program().map_err(|err| LoadFailure::ThisProgram(err.to_string()))?;
    let mut check = start(&exe, &path, config.gpu_layers, DEFAULT_DEADLINE).map_err(LoadFailure::EngineCheck)?;
    // The child loads first: a model file that crashes the loader (a truncated file, a GPU
    // driver) must not reach this process. Its decoding then overlaps this process's load.
    match check.wait_loaded() {
        Ok(()) => {}
        Err(err @ (ProbeError::Crashed { .. } | ProbeError::TimedOut(_))) => return Err(LoadFailure::EngineCheck(err)),
        Err(err) => return Err(LoadFailure::ChildLoad(err)),
    }
    let engine = Engine::start(config.engine_config(path))?;
    match check.wait() {
        Ok(report) => {
            tracing::info!(decode_ms = report.decode_ms, generated = report.generated_tokens, "engine check passed");
            Ok(engine)
        }
        // A clean failure of the child (out of GPU memory with two copies loaded, say) is no
        // sign that decoding kills the process: the engine that loaded here is kept.
        Err(ProbeError::Failed { reason, .. }) => {
            tracing::warn!(%reason, "the engine check failed without crashing; keeping the engine");
            Ok(engine)
        }
        Err(err) => Err(LoadFailure::EngineCheck(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_messages_name_the_signal_and_the_way_out() {
        let message = ProbeError::Crashed { signal: 4, stage: "decoding the first tokens".into(), system_info: "CPU : AVX2 = 1 | AMX_INT8 = 1".into() }.to_string();
        assert!(message.contains("SIGILL"), "{message}");
        assert!(message.contains("AMX_INT8 = 1"), "{message}");
        assert!(message.contains("portable build"), "{message}");
        assert!(ProbeError::Crashed { signal: 11, stage: String::new(), system_info: String::new() }.to_string().contains("SIGSEGV"));
    }

    #[test]
    fn a_failing_child_is_reported_with_its_own_error_line() {
        let status = Command::new("sh").arg("-c").arg("exit 4").status().unwrap();
        let err = verdict(status, "", "loading\nghostline: model /x is not a GGUF file\n").unwrap_err();
        assert_eq!(err.to_string(), "the engine check failed (exit code 4): model /x is not a GGUF file");
    }

    #[cfg(unix)]
    #[test]
    fn a_child_killed_by_a_signal_is_a_crash() {
        let status = Command::new("sh").arg("-c").arg("kill -SEGV $$").status().unwrap();
        match verdict(status, "", "stage: decoding\n") {
            Err(ProbeError::Crashed { signal: 11, stage, .. }) => assert_eq!(stage, "decoding the first tokens"),
            other => panic!("expected a SIGSEGV crash, got {other:?}"),
        }
    }
}
