//! Ghostline: a language server that keeps a code model warm in its own process and answers
//! inline completions at keystroke speed.
//!
//! Map of the modules (each uses only modules below it in this list):
//! - `server`: the language server, the only code that knows LSP types.
//! - `probe`: the engine check in a child process, so a crashing llama.cpp build becomes a message.
//! - `scheduler`: document change -> engine job, typed-ahead, latency budget, stats.
//! - `plan`: one plan for a job (prompt within the token budget, stop rules, surroundings),
//!   shared by the server and `ghostline complete`.
//! - `config`: raw client settings and the validated `Config` (and the engine it describes).
//! - `documents`: ropes per URI, edits applied atomically, UTF-16/UTF-8 positions.
//! - `context`: builds prompts from a rope and a cursor, ordered stable to volatile.
//! - `syntax`: tree-sitter trees per document and the grammar facts of each language.
//! - `postprocess`: cleaning a raw suggestion (overlap with the text after the cursor, whitespace).
//! - `engine`: the one thread that owns llama.cpp; takes a `Prompt`, returns text. Superseding,
//!   cancellation and deadlines are checked between every two decode steps.
//! - `background`: one thread for off-loop work where only the latest request per key matters.
//! - `models`: the model registry, fetching with checksum verification, the cache directory.
//! - `expansions`: user-defined triggers served as completion items without the model.
//! - `ring`: the cross-file chunks of recently edited files.
//! - `stats`: counters and latency histograms.
//! - `priority`: the computing threads (model, parses, planning) run below the protocol's.
//! - `sync`: locks that outlive a panic.
//!
//! Invariants: only the engine calls llama.cpp; stdout belongs to the protocol (or to the CLI's
//! result), logs go through `tracing` to stderr or a file.

#![deny(clippy::print_stdout)]

pub mod background;
pub mod config;
pub mod context;
pub mod documents;
pub mod engine;
pub mod expansions;
pub mod models;
pub mod plan;
pub mod postprocess;
pub mod priority;
pub mod probe;
pub mod ring;
pub mod scheduler;
pub mod server;
pub mod stats;
pub mod syntax;
pub mod sync;
