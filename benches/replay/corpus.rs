//! Replay cases: how a line is picked and typed back, and the local corpus (`--corpus local`):
//! real code that is on the machine without being part of this repository, the Python standard
//! library, the Rust crates of this project's Cargo.lock in cargo's registry, and JavaScript
//! under node_modules folders where there are any. Cases are picked by a seed. The default
//! corpus of a measured run is `unseen.rs`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of a real file, to be blanked after its indentation and typed back.
#[derive(Debug, Clone)]
pub struct Case {
    pub path: PathBuf,
    pub language: &'static str,
    /// The file's lines, without line breaks.
    pub lines: Vec<String>,
    /// The line to type (0-based).
    pub line: usize,
    pub indent: String,
    /// What is typed: the line after its indentation.
    pub content: String,
    /// A return to a file typed earlier in the run (`--revisit`): the file is still open there,
    /// as the user left it.
    pub revisit: bool,
}

impl Case {
    /// The document as opened: the case line holds only its indentation.
    pub fn blanked_text(&self) -> String {
        let mut text = String::new();
        for (idx, line) in self.lines.iter().enumerate() {
            text.push_str(if idx == self.line { &self.indent } else { line });
            text.push('\n');
        }
        text
    }
}

/// A small deterministic generator (SplitMix64), so a seed gives the same cases everywhere the
/// same files are.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    /// Uniform in [-1, 1].
    pub fn symmetric(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn walk(dir: &Path, extension: &str, skip: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip(&path) {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            walk(&path, extension, skip, out);
        } else if kind.is_file() && path.extension().is_some_and(|ext| ext == extension) {
            out.push(path);
        }
    }
}

fn has_component(path: &Path, names: &[&str]) -> bool {
    path.components().any(|component| names.iter().any(|name| component.as_os_str() == *name))
}

fn python_files() -> Vec<PathBuf> {
    let Ok(output) = Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"]).output() else {
        return Vec::new();
    };
    let stdlib = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let mut files = Vec::new();
    let skip = |path: &Path| has_component(path, &["test", "tests", "site-packages", "dist-packages", "__pycache__", "idle_test"]);
    walk(&stdlib, "py", &skip, &mut files);
    files
}

/// The names of this project's locked dependencies.
pub fn locked_crate_names() -> Vec<String> {
    locked_crates().into_iter().filter_map(|folder| folder.rsplit_once('-').map(|(name, _)| name.to_string())).collect()
}

/// The folders cargo unpacks registry crates into.
pub fn registry_source_dirs() -> Vec<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| dirs::home_dir().map(|home| home.join(".cargo")));
    let Some(registry) = cargo_home.map(|home| home.join("registry/src")) else { return Vec::new() };
    std::fs::read_dir(&registry).into_iter().flatten().flatten().map(|entry| entry.path()).collect()
}

/// The `name-version` folders of this project's locked dependencies.
fn locked_crates() -> Vec<String> {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap_or_default();
    let mut crates = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_string());
        } else if let Some(value) = line.strip_prefix("version = ") {
            if let Some(name) = name.take() {
                crates.push(format!("{name}-{}", value.trim_matches('"')));
            }
        }
    }
    crates
}

fn rust_files() -> Vec<PathBuf> {
    let locked = locked_crates();
    let mut files = Vec::new();
    let skip = |path: &Path| has_component(path, &["tests", "benches", "examples", "target", "vendor"]);
    for index in registry_source_dirs() {
        for krate in std::fs::read_dir(index).into_iter().flatten().flatten() {
            if locked.iter().any(|name| krate.file_name() == name.as_str()) {
                walk(&krate.path(), "rs", &skip, &mut files);
            }
        }
    }
    files
}

fn javascript_files() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/usr/lib/node_modules"), PathBuf::from("/usr/share/nodejs")];
    let editors = Path::new(env!("CARGO_MANIFEST_DIR")).join("editors");
    for entry in std::fs::read_dir(editors).into_iter().flatten().flatten() {
        roots.push(entry.path().join("node_modules"));
    }
    let mut files = Vec::new();
    let skip = |path: &Path| {
        has_component(path, &["test", "tests", "dist", "umd", "esm", "min"])
            || path.file_name().is_some_and(|name| name.to_string_lossy().ends_with(".min.js"))
    };
    for root in roots {
        walk(&root, "js", &skip, &mut files);
    }
    files
}

/// The languages with files on this machine, each with its files in a stable order.
pub fn sources(wanted: &[String]) -> Vec<(&'static str, Vec<PathBuf>)> {
    let mut sources = Vec::new();
    for language in ["python", "rust", "javascript"] {
        if !wanted.is_empty() && !wanted.iter().any(|name| name == language) {
            continue;
        }
        let mut files = match language {
            "python" => python_files(),
            "rust" => rust_files(),
            _ => javascript_files(),
        };
        files.sort();
        files.dedup();
        if !files.is_empty() {
            sources.push((language, files));
        }
    }
    sources
}

fn is_comment(trimmed: &str) -> bool {
    ["#", "//", "/*", "*", "\"\"\"", "'''", "--"].iter().any(|marker| trimmed.starts_with(marker))
}

/// A line worth typing: real code of moderate length with context above and below.
fn good_line(lines: &[String], idx: usize) -> bool {
    let content = lines[idx].trim();
    let length = content.chars().count();
    idx >= 8
        && idx + 2 < lines.len()
        && (12..=72).contains(&length)
        && !is_comment(content)
        && !content.contains('\t')
        && content.chars().filter(|ch| ch.is_alphanumeric()).count() * 2 >= length
}

/// Where in a file a case's line may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Any good line.
    Anywhere,
    /// An indented line (inside a block: the editor's auto-indent leaves the empty line
    /// indented) at least 32 lines down, so arrivals land in the middle of files too.
    IndentedInside,
}

fn pick_from_file(path: &Path, language: &'static str, rng: &mut Rng, placement: Placement) -> Option<Case> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() > 256 * 1024 {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.len() < 20 {
        return None;
    }
    for _ in 0..64 {
        let idx = rng.below(lines.len());
        let placed = match placement {
            Placement::Anywhere => true,
            Placement::IndentedInside => idx >= 32 && lines[idx].starts_with([' ', '\t']),
        };
        if placed && good_line(&lines, idx) {
            let line = &lines[idx];
            let content = line.trim_start().trim_end().to_string();
            let indent = line[..line.len() - line.trim_start().len()].to_string();
            return Some(Case { path: path.to_path_buf(), language, lines, line: idx, indent, content, revisit: false });
        }
    }
    None
}

/// Another line of `case`'s file for a return to it: the nearest good line in the same block of
/// 16 lines (the same place: the prompt's window starts on the same line), else the nearest
/// within 16 lines (a move within the file).
pub fn return_case(case: &Case) -> Option<Case> {
    let same_block = |idx: usize| idx / 16 == case.line / 16 || idx.max(case.line) < 80;
    let nearest = (1..=16)
        .flat_map(|distance| [case.line.checked_sub(distance), Some(case.line + distance)])
        .flatten()
        .filter(|&idx| idx < case.lines.len() && good_line(&case.lines, idx));
    let candidates: Vec<usize> = nearest.collect();
    let idx = candidates.iter().copied().find(|&idx| same_block(idx)).or_else(|| candidates.first().copied())?;
    let line = &case.lines[idx];
    let content = line.trim_start().trim_end().to_string();
    let indent = line[..line.len() - line.trim_start().len()].to_string();
    Some(Case { line: idx, indent, content, revisit: true, ..case.clone() })
}

/// Cases in pairs of files, each file visited twice: A, B, then back to A and back to B at
/// another line near the first (`return_case`). Pairs without two return lines are left out.
pub fn with_returns(cases: Vec<Case>) -> Vec<Case> {
    let mut out = Vec::new();
    for pair in cases.chunks(2) {
        if let [first, second] = pair {
            if let (Some(first_back), Some(second_back)) = (return_case(first), return_case(second)) {
                out.extend([first.clone(), second.clone(), first_back, second_back]);
            }
        }
    }
    out
}

/// `count` cases spread evenly over the languages found, chosen by `seed`, one per file. A
/// language whose files are all tried drops out of the rotation, so the others fill the count
/// (a seed whose languages all have files enough picks what it picked before that rule).
pub fn pick_cases(sources: &[(&'static str, Vec<PathBuf>)], count: usize, seed: u64, placement: Placement) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();
    let mut tried: Vec<std::collections::HashSet<&PathBuf>> = vec![Default::default(); sources.len()];
    let mut active: Vec<usize> = (0..sources.len()).filter(|&idx| !sources[idx].1.is_empty()).collect();
    let mut attempts = 0;
    while cases.len() < count && !active.is_empty() && attempts < count * 200 {
        let source = active[cases.len() % active.len()];
        let (language, files) = &sources[source];
        attempts += 1;
        let path = &files[rng.below(files.len())];
        if !cases.iter().any(|case: &Case| &case.path == path) {
            tried[source].insert(path);
            if let Some(case) = pick_from_file(path, language, &mut rng, placement) {
                cases.push(case);
            }
        }
        if tried[source].len() == files.len() {
            active.retain(|&idx| idx != source);
        }
    }
    cases
}

/// Up to `count` files next to the case's file (same folder and extension), nearest to it by
/// name, as (file name, text).
pub fn siblings(case: &Case, count: usize) -> Vec<(String, String)> {
    if count == 0 {
        return Vec::new();
    }
    let (Some(folder), Some(extension)) = (case.path.parent(), case.path.extension()) else { return Vec::new() };
    let mut names: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension() == Some(extension) && *path != case.path)
        .collect();
    names.sort();
    let at = names.partition_point(|path| *path < case.path);
    // Nearest by name: alternate after and before the case's file.
    let mut order = Vec::new();
    for step in 0..names.len() {
        let idx = if step % 2 == 0 { at + step / 2 } else { at.wrapping_sub(step / 2 + 1) };
        if let Some(path) = names.get(idx) {
            order.push(path.clone());
        }
    }
    order
        .into_iter()
        .filter_map(|path| {
            let bytes = std::fs::read(&path).ok().filter(|bytes| bytes.len() <= 256 * 1024)?;
            let text = String::from_utf8(bytes).ok()?;
            Some((path.file_name()?.to_string_lossy().into_owned(), text))
        })
        .take(count)
        .collect()
}
