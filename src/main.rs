//! The `ghostline` command: `serve` (the language server, the default), `complete` (one completion from the command line),
//! `models` (list, fetch, path) and `doctor`.
//!
//! Exit codes: 0 success, 1 internal error, 2 bad arguments or position, 3 unreadable, non-UTF-8
//! or empty file, 4 model missing or invalid, 5 engine failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use ropey::Rope;

use ghostline::config::Config;
use ghostline::context::{self, CursorPosition};
use ghostline::engine::{Engine, EngineConfig, GenerateParams};
use ghostline::models;
use ghostline::plan::{CursorState, JobPlan, PlanHints};
use ghostline::syntax::SyntaxTree;

#[derive(Parser)]
#[command(name = "ghostline", version, about = "Local code completion at keystroke speed")]
struct Cli {
    /// Write logs to this file instead of stderr (level from GHOSTLINE_LOG, e.g. `debug`).
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,
    /// The server always speaks over stdin/stdout; the flag is accepted for clients that pass it.
    #[arg(long, global = true, hide = true)]
    stdio: bool,
    #[command(subcommand)]
    command: Option<CliCommand>,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run the language server over stdin/stdout (the default).
    Serve,
    /// Complete at FILE:LINE:COL (1-based line and column, like compiler messages).
    Complete(CompleteArgs),
    /// Manage models: list, fetch NAME, path NAME.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Check that the engine runs here: CPU features, devices, threads, cache, models, and a
    /// few tokens decoded with the model in a child process.
    Doctor {
        /// Registry name or path of the model to check (it is not fetched).
        #[arg(long, default_value = models::DEFAULT_MODEL)]
        model: String,
        /// Layers to offload to a GPU (default: all when a GPU is present).
        #[arg(long)]
        gpu_layers: Option<u32>,
        /// Check a remote backend instead, given as the `backend` setting's JSON object:
        /// reachable, a short completion, its latency.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Generation speed of this binary's engine: ms per token after prompts of the given depths,
    /// one JSON line per round (for comparing builds, as benches/portable.sh does).
    #[command(hide = true)]
    DecodeSpeed {
        #[arg(long, default_value = models::DEFAULT_MODEL)]
        model: String,
        #[arg(long, value_delimiter = ',', default_value = "128,512")]
        depths: Vec<usize>,
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The child process of the engine check: load the model, decode a few tokens, print JSON.
    #[command(hide = true)]
    ProbeEngine {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        gpu_layers: Option<u32>,
    },
}

#[derive(clap::Args)]
struct CompleteArgs {
    /// FILE:LINE:COL, 1-based; COL counts characters.
    location: String,
    /// Registry name, path to a .gguf file, or hf:OWNER/REPO/FILE.
    #[arg(long, default_value = models::DEFAULT_MODEL)]
    model: String,
    /// Print one JSON object per completion.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Context size in tokens (prompt and generation; the prompt is shortened to fit).
    #[arg(long)]
    context_tokens: Option<u32>,
    #[arg(long)]
    threads: Option<usize>,
    /// Layers to offload to a GPU (default: all when llama.cpp sees one; 0 for the CPU alone).
    #[arg(long)]
    gpu_layers: Option<u32>,
    /// Only complete the current line.
    #[arg(long)]
    single_line: bool,
    /// Before each completion, print the job's plan (prompt, token limit, stop rules) as one
    /// JSON line: what the server plans for an editor at the same place.
    #[arg(long)]
    plan: bool,
    /// After the first completion, type this text at the cursor and complete again with the
    /// same warm engine (shows the reuse of the KV cache).
    #[arg(long)]
    then_type: Option<String>,
    /// Tokens drafted from the context per generation step (0: plain decoding; the suggestion
    /// is the same either way).
    #[arg(long)]
    draft_tokens: Option<usize>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the registry and what is cached.
    List,
    /// Download a registry model (verified by sha256) into the cache.
    Fetch { name: String },
    /// Print the local path of a model, fetching it if needed.
    Path { name: String },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error(transparent)]
    Engine(#[from] ghostline::engine::EngineError),
    #[error(transparent)]
    Probe(#[from] ghostline::probe::ProbeError),
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Internal(_) => 1,
            CliError::Usage(_) => 2,
            CliError::File(_) => 3,
            CliError::Model(_) => 4,
            CliError::Engine(_) | CliError::Probe(_) => 5,
        }
    }
}

/// llama.cpp's threads meet at a barrier after every operation of the graph (hundreds per token),
/// and libgomp (its OpenMP runtime on Linux) spins 300,000 times at each before it sleeps. With
/// one other busy process on the cores, a spinning thread holds a core its partner needs and
/// every barrier waits for a scheduler time slice: 23 -> 2,677 ms per token measured on 2 cores.
/// A spin of 300 cost nothing measurable on the idle machine and kept that case at 44 ms.
/// libgomp reads its settings when it is loaded, before `main`, so the process starts itself
/// again, once, with the setting; one the user set (`GOMP_SPINCOUNT`, `OMP_WAIT_POLICY`) wins.
#[cfg(target_os = "linux")]
fn restart_with_short_openmp_spin() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GOMP_SPINCOUNT").is_some() || std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("GOMP_SPINCOUNT", "300").exec();
    // Only a failed exec returns: go on with libgomp's defaults.
    eprintln!("ghostline: cannot restart with a short OpenMP spin ({err}); going on without it");
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    restart_with_short_openmp_spin();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(CliCommand::Serve);
    let default_log_level = if matches!(command, CliCommand::Serve) { "info,llama-cpp-2=warn" } else { "warn,llama-cpp-2=error" };
    if let Err(err) = init_logging(cli.log_file.as_deref(), default_log_level) {
        eprintln!("ghostline: cannot open the log file: {err}");
        return ExitCode::from(2);
    }
    let res = match command {
        CliCommand::Serve => serve(),
        CliCommand::Complete(args) => complete(args),
        CliCommand::Models { command } => models_command(command),
        CliCommand::Doctor { backend: Some(backend), .. } => doctor_backend(&backend),
        CliCommand::Doctor { model, gpu_layers, backend: None } => doctor(&model, gpu_layers),
        CliCommand::ProbeEngine { model, gpu_layers } => probe_engine(&model, gpu_layers),
        CliCommand::DecodeSpeed { model, depths, tokens, rounds, threads } => decode_speed(&model, &depths, tokens, rounds, threads),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ghostline: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn init_logging(log_file: Option<&std::path::Path>, default_level: &str) -> std::io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GHOSTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn serve() -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ghostline-lsp")
        .build()
        .map_err(|err| CliError::Internal(format!("cannot start the async runtime: {err}")))?;
    let shut_down = runtime.block_on(ghostline::server::serve(Config::default()));
    // The engine thread may be mid-decode; the process exits without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if shut_down {
        Ok(())
    } else {
        // The protocol: exit code 1 when the client exits (or goes away) without `shutdown`.
        Err(CliError::Internal(String::from("the client ended the session without a shutdown request")))
    }
}

/// Splits `FILE:LINE:COL` from the right, so paths may contain colons.
fn parse_location(location: &str) -> Result<(PathBuf, usize, usize), CliError> {
    let usage = || CliError::Usage(format!("expected FILE:LINE:COL with 1-based LINE and COL, got `{location}`"));
    let mut parts = location.rsplitn(3, ':');
    let column: usize = parts.next().and_then(|part| part.parse().ok()).ok_or_else(usage)?;
    let line: usize = parts.next().and_then(|part| part.parse().ok()).ok_or_else(usage)?;
    let file = parts.next().filter(|file| !file.is_empty()).ok_or_else(usage)?;
    if line == 0 || column == 0 {
        return Err(usage());
    }
    Ok((PathBuf::from(file), line - 1, column - 1))
}

fn read_source(path: &std::path::Path) -> Result<String, CliError> {
    let bytes = std::fs::read(path).map_err(|err| CliError::File(format!("cannot read {}: {err}", path.display())))?;
    if bytes.is_empty() {
        return Err(CliError::File(format!("{} is empty: there is nothing to complete from", path.display())));
    }
    String::from_utf8(bytes).map_err(|err| {
        CliError::File(format!(
            "{} is not valid UTF-8 (first invalid byte at offset {}): only UTF-8 text can be completed",
            path.display(),
            err.utf8_error().valid_up_to()
        ))
    })
}

fn complete(args: CompleteArgs) -> Result<(), CliError> {
    let total_start = Instant::now();
    let (path, line, column) = parse_location(&args.location)?;
    let text = read_source(&path)?;
    let mut rope = Rope::from_str(&text);
    let mut cursor = CursorPosition { line, column };
    let mut config = Config::default();
    config.multi_line &= !args.single_line;
    if let Some(max_tokens) = args.max_tokens {
        config.max_tokens = max_tokens;
    }
    if let Some(context_tokens) = args.context_tokens {
        config.context_tokens = context_tokens;
    }
    if let Some(draft_tokens) = args.draft_tokens {
        // As the setting: a batch holds the chosen token and its drafts.
        config.draft_tokens = draft_tokens.min(32);
    }
    context::cursor_char_idx(&rope, cursor)
        .map_err(|err| CliError::Usage(format!("{}:{}:{}: {err}", path.display(), line + 1, column + 1)))?;

    let model_path = models::resolve(&args.model)?;
    config.gpu_layers = args.gpu_layers.or(config.gpu_layers);
    config.threads = args.threads.or(config.threads);
    let engine = Engine::start(config.engine_config(model_path))?;
    let load_ms = engine.info().load_ms;

    let mut rounds = vec![None];
    if let Some(typed) = &args.then_type {
        rounds.push(Some(typed.clone()));
    }
    for typed in rounds {
        let round_start = Instant::now();
        if let Some(typed) = typed {
            let char_idx = context::cursor_char_idx(&rope, cursor).map_err(|err| CliError::Internal(err.to_string()))?;
            rope.insert(char_idx, &typed);
            let typed_lines: Vec<&str> = typed.split('\n').collect();
            if typed_lines.len() > 1 {
                cursor.line += typed_lines.len() - 1;
                cursor.column = typed_lines.last().map_or(0, |last| last.chars().count());
            } else {
                cursor.column += typed.chars().count();
            }
        }
        // The same plan the server makes for an editor at this state.
        let state = CursorState {
            uri: path.to_string_lossy().into_owned(),
            version: 0,
            cursor_char_idx: context::cursor_char_idx(&rope, cursor).map_err(|err| CliError::Internal(err.to_string()))?,
            syntax: ghostline::syntax::language_for("", &path.to_string_lossy()).map(|language| SyntaxTree::new(language, &rope)),
            rope: rope.clone(),
            language_id: String::new(),
        };
        // As the server does: a prompt refused as too long for the context is planned again
        // once, with the density of text it measured.
        let mut chars_per_token = None;
        let (plan, mut completion) = loop {
            let plan = JobPlan::new(&state, &config, engine.info(), &PlanHints { chars_per_token, ..PlanHints::default() }).map_err(|err| CliError::Internal(err.to_string()))?;
            let stop = plan.rules.work_out();
            if args.plan {
                let described = JobPlan::describe(&plan.prompt.to_debug_string(), plan.params.max_tokens, &stop);
                writeln!(std::io::stdout().lock(), "{described}").map_err(|err| CliError::Internal(err.to_string()))?;
            }
            let params = GenerateParams { stop, ..plan.params.clone() };
            match engine.complete_blocking(plan.prompt.clone(), params) {
                Ok(completion) => break (plan, completion),
                Err(err) => match ghostline::plan::density_after(&err, &plan.prompt) {
                    Some(density) if chars_per_token.is_none() => chars_per_token = Some(density),
                    _ => return Err(err.into()),
                },
            }
        };
        completion.text = ghostline::postprocess::clean_suggestion(&plan.split.head, &completion.text, &plan.split.tail, plan.split.surroundings());
        let total_ms = round_start.elapsed().as_secs_f64() * 1000.0;
        let mut stdout = std::io::stdout().lock();
        if args.json {
            let object = serde_json::json!({
                "text": completion.text,
                "stop_reason": completion.stop_reason,
                "line": cursor.line + 1,
                "column": cursor.column + 1,
                "prompt_tokens": completion.prompt_tokens,
                "reused_tokens": completion.reused_tokens,
                "decoded_tokens": completion.decoded_tokens,
                "generated_tokens": completion.generated_tokens,
                "load_ms": load_ms,
                "prompt_ms": completion.prompt_ms,
                "generation_ms": completion.generation_ms,
                "drafted_tokens": completion.drafted_tokens,
                "accepted_draft_tokens": completion.accepted_draft_tokens,
                "total_ms": total_ms,
                "process_ms": total_start.elapsed().as_secs_f64() * 1000.0,
                "model": engine.info().name,
            });
            writeln!(stdout, "{object}").map_err(|err| CliError::Internal(err.to_string()))?;
        } else {
            writeln!(stdout, "{}", completion.text).map_err(|err| CliError::Internal(err.to_string()))?;
            eprintln!(
                "[{}:{}] load {load_ms:.0} ms, prompt {} tokens ({} reused, {} decoded) {:.0} ms, {} tokens generated {:.0} ms ({:.1} ms/token), total {total_ms:.0} ms, stop: {:?}",
                cursor.line + 1,
                cursor.column + 1,
                completion.prompt_tokens,
                completion.reused_tokens,
                completion.decoded_tokens,
                completion.prompt_ms,
                completion.generated_tokens,
                completion.generation_ms,
                completion.generation_ms / completion.generated_tokens.max(1) as f64,
                completion.stop_reason,
            );
        }
    }
    Ok(())
}

fn models_command(command: ModelsCommand) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let write_err = |err: std::io::Error| CliError::Internal(err.to_string());
    match command {
        ModelsCommand::List => {
            writeln!(stdout, "cache: {}", models::cache_dir()?.display()).map_err(write_err)?;
            for spec in models::REGISTRY {
                let state = if models::is_cached(spec) { "cached" } else { "not fetched" };
                let default = if spec.name == models::DEFAULT_MODEL { " (default)" } else { "" };
                writeln!(
                    stdout,
                    "{}{default}\t{:.0} MB\t{state}\t{}",
                    spec.name,
                    spec.size_bytes as f64 / 1e6,
                    spec.description
                )
                .map_err(write_err)?;
            }
        }
        ModelsCommand::Fetch { name } => {
            let spec = models::spec(&name).ok_or_else(|| models::ModelError::Unknown(name.clone()))?;
            let path = if models::is_cached(spec) { models::cached_path(spec)? } else { models::fetch(spec)? };
            writeln!(stdout, "{}", path.display()).map_err(write_err)?;
        }
        ModelsCommand::Path { name } => {
            let path = models::resolve(&name)?;
            writeln!(stdout, "{}", path.display()).map_err(write_err)?;
        }
    }
    Ok(())
}

fn doctor(model: &str, gpu_layers: Option<u32>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let write_err = |err: std::io::Error| CliError::Internal(err.to_string());
    writeln!(stdout, "ghostline {}", env!("CARGO_PKG_VERSION")).map_err(write_err)?;
    let exe = ghostline::probe::this_program().map_err(|err| CliError::Internal(format!("cannot find this program's path: {err}")))?;
    let shown = std::env::current_exe().unwrap_or_else(|_| exe.clone());
    writeln!(stdout, "binary: {}", shown.display()).map_err(write_err)?;
    writeln!(stdout, "llama.cpp system info: {}", ghostline::engine::system_info().trim()).map_err(write_err)?;
    for device in ghostline::engine::devices()? {
        let memory = if device.memory_total_bytes > 0 {
            format!(", {} MiB free of {} MiB", device.memory_free_bytes >> 20, device.memory_total_bytes >> 20)
        } else {
            String::new()
        };
        writeln!(stdout, "device {} ({}, {}): {}{memory}", device.name, device.backend, device.kind, device.description).map_err(write_err)?;
    }
    writeln!(stdout, "default threads (physical cores): {}", ghostline::engine::physical_cores()).map_err(write_err)?;
    writeln!(stdout, "model cache: {}", models::cache_dir()?.display()).map_err(write_err)?;
    for spec in models::REGISTRY {
        let state = if models::is_cached(spec) { "cached" } else { "not fetched (ghostline models fetch NAME)" };
        writeln!(stdout, "model {}: {state}", spec.name).map_err(write_err)?;
    }
    let path = models::resolve_cached(model)?;
    writeln!(stdout, "engine check: loading {} and decoding a few tokens in a child process", path.display()).map_err(write_err)?;
    stdout.flush().map_err(write_err)?;
    let report = ghostline::probe::check(&exe, &path, gpu_layers)?;
    writeln!(
        stdout,
        "engine check: ok, {} prompt tokens and {} generated in {:.0} ms ({:?}), load {:.0} ms, {} layers on a GPU",
        report.prompt_tokens, report.generated_tokens, report.decode_ms, report.text, report.load_ms, report.gpu_layers
    )
    .map_err(write_err)?;
    Ok(())
}

fn doctor_backend(setting: &str) -> Result<(), CliError> {
    let value: serde_json::Value = serde_json::from_str(setting).map_err(|err| CliError::Usage(format!("--backend takes the backend setting as JSON: {err}")))?;
    let remote = ghostline::config::parse_backend(&value)
        .map_err(|err| CliError::Usage(format!("--backend: {err}")))?
        .ok_or_else(|| CliError::Usage("--backend names the embedded model; run `ghostline doctor` without it".to_string()))?;
    let remote = ghostline::engine::remote::RemoteConfig { context_tokens: Config::default().context_tokens, ..remote };
    let mut stdout = std::io::stdout().lock();
    let write_err = |err: std::io::Error| CliError::Internal(err.to_string());
    writeln!(stdout, "backend check: {} at {}", remote.api.name(), remote.url).map_err(write_err)?;
    stdout.flush().map_err(write_err)?;
    let report = ghostline::engine::remote::check(&remote)?;
    writeln!(stdout, "backend check: ok, {report}").map_err(write_err)?;
    Ok(())
}

fn decode_speed(model: &str, depths: &[usize], tokens: usize, rounds: usize, threads: Option<usize>) -> Result<(), CliError> {
    let mut config = EngineConfig::new(models::resolve_cached(model)?);
    if let Some(threads) = threads {
        config.threads = threads;
    }
    let engine = Engine::start(config)?;
    let mut stdout = std::io::stdout().lock();
    for round in 0..rounds {
        for &depth in depths {
            let ms = ghostline::probe::decode_ms_per_token(&engine, depth, round, tokens)?;
            let line = serde_json::json!({"depth": depth, "round": round, "ms_per_token": ms, "threads": engine.info().threads});
            writeln!(stdout, "{line}").map_err(|err| CliError::Internal(err.to_string()))?;
        }
    }
    Ok(())
}

fn probe_engine(model: &std::path::Path, gpu_layers: Option<u32>) -> Result<(), CliError> {
    let report = ghostline::probe::run_in_child(model, gpu_layers)?;
    let line = serde_json::to_string(&report).map_err(|err| CliError::Internal(err.to_string()))?;
    writeln!(std::io::stdout().lock(), "{line}").map_err(|err| CliError::Internal(err.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_from_the_right() {
        assert_eq!(parse_location("a/b.py:3:7").unwrap(), (PathBuf::from("a/b.py"), 2, 6));
        assert_eq!(parse_location("c:/x.rs:1:1").unwrap(), (PathBuf::from("c:/x.rs"), 0, 0));
        assert!(parse_location("x.py:0:1").is_err());
        assert!(parse_location("x.py:3").is_err());
        assert!(parse_location(":3:4").is_err());
    }
}
