//! The replay's default corpus: code this project has never been measured or tuned on, chosen
//! by a seed at run time. From lists of popular packages of three registries (PyPI for Python,
//! crates.io for Rust, npm for JavaScript and TypeScript), the seed picks a few per language;
//! each is fetched with the registry's own client (`pip download`, `cargo fetch`, `npm pack`)
//! into `target/replay/unseen/` (kept between runs), and only files of 300-3,000 lines are
//! used. A different seed gives other packages, so no figure can come from one corpus that the
//! code was fitted to. Packages this project depends on (its `Cargo.lock`) are left out.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::corpus::Rng;

/// Popular pure-Python packages whose wheels hold their source.
const PYPI: &[&str] = &[
    "requests", "flask", "click", "rich", "httpx", "attrs", "jinja2", "werkzeug", "django", "pytest", "packaging", "urllib3", "tqdm",
    "tomlkit", "typer", "fastapi", "starlette", "pygments", "docutils", "sphinx", "babel", "arrow", "marshmallow", "networkx",
    "pyparsing", "more-itertools", "toolz", "python-dateutil", "jsonschema", "paramiko", "celery", "kombu", "scrapy", "twisted",
    "pylint", "astroid", "isort", "setuptools", "hypothesis", "bleach", "markdown", "mistune", "feedparser", "beautifulsoup4",
    "openpyxl", "ruamel.yaml", "sqlparse", "alembic", "mako", "pexpect", "prompt-toolkit", "textual", "httpcore", "anyio",
    "trio", "websockets", "boltons", "cachetools", "tenacity", "structlog", "loguru", "pluggy", "virtualenv", "tox", "nox",
];

/// Popular crates with a moderate dependency tree.
const CRATES: &[&str] = &[
    "clap_builder", "rayon-core", "hyper", "nom", "pest", "toml_edit", "chrono", "time", "uuid", "rand", "itertools", "petgraph",
    "crossbeam-channel", "indexmap", "hashbrown", "bytes", "http", "h2", "env_logger", "anyhow", "walkdir", "globset", "ignore",
    "bincode", "ron", "csv", "winnow", "pulldown-cmark", "tera", "handlebars", "minijinja", "tokio-util", "futures-util", "mio",
    "regex-automata", "aho-corasick", "similar", "unicode-segmentation", "semver", "url", "base64", "flate2", "tar", "zip",
    "ropey", "smallvec", "arrayvec", "tinyvec", "num-bigint", "rust_decimal", "humantime", "indicatif", "console", "dialoguer",
    "notify", "tempfile", "memchr", "bstr", "quick-xml", "serde_yaml", "toml", "lru", "dashmap", "papaya",
];

/// Popular npm packages that ship readable JavaScript or TypeScript sources.
const NPM: &[&str] = &[
    "lodash", "express", "commander", "yargs", "moment", "axios", "eslint", "underscore", "async", "bluebird", "q", "mocha",
    "handlebars", "marked", "markdown-it", "ws", "socket.io", "mongoose", "sequelize", "knex", "redux", "three", "d3-scale",
    "d3-shape", "acorn", "esprima", "estraverse", "jsdom", "cheerio", "htmlparser2", "postcss", "less", "stylus", "pug", "ejs",
    "nunjucks", "luxon", "dayjs", "date-fns", "immutable", "rxjs", "zod", "yup", "joi", "ajv", "fastify", "koa", "hapi",
    "chokidar", "glob", "minimatch", "semver", "uglify-js", "terser", "svgo", "pdfkit", "node-forge", "jszip", "xlsx", "chart.js",
];

/// The languages' files from `per_language` packages of each registry, chosen by `seed`: the
/// same shape as `corpus::sources` gives. A registry whose client is missing or fails is left
/// out with a message.
pub fn sources(wanted: &[String], per_language: usize, seed: u64, cache: &Path) -> Vec<(&'static str, Vec<PathBuf>)> {
    // Absolute: the package clients run in folders of their own.
    let _ = std::fs::create_dir_all(cache);
    let cache = &std::path::absolute(cache).unwrap_or_else(|_| cache.to_path_buf());
    let locked = super::corpus::locked_crate_names();
    let mut rng = Rng::new(seed ^ 0x756E_7365_656E);
    let mut by_language: Vec<(&'static str, Vec<PathBuf>)> = ["python", "rust", "javascript", "typescript"].iter().map(|language| (*language, Vec::new())).collect();
    let wants = |language: &str| wanted.is_empty() || wanted.iter().any(|name| name == language);
    let registries: [(&str, &[&str]); 3] = [("pypi", PYPI), ("crates", CRATES), ("npm", NPM)];
    for (registry, names) in registries {
        let languages: &[&str] = match registry {
            "pypi" => &["python"],
            "crates" => &["rust"],
            _ => &["javascript", "typescript"],
        };
        if !languages.iter().any(|language| wants(language)) {
            continue;
        }
        let mut candidates: Vec<&str> = names.iter().copied().filter(|name| registry != "crates" || !locked.iter().any(|locked| locked == name)).collect();
        let mut taken = 0;
        while taken < per_language && !candidates.is_empty() {
            let name = candidates.remove(rng.below(candidates.len()));
            let root = match fetch(registry, name, cache) {
                Ok(root) => root,
                Err(err) => {
                    eprintln!("unseen corpus: {registry} package {name} left out: {err}");
                    continue;
                }
            };
            let mut found = 0;
            for (language, extensions) in [("python", &["py"][..]), ("rust", &["rs"][..]), ("javascript", &["js", "mjs", "cjs"][..]), ("typescript", &["ts"][..])] {
                if !languages.contains(&language) || !wants(language) {
                    continue;
                }
                let files = usable_files(&root, extensions);
                found += files.len();
                let entry = by_language.iter_mut().find(|(name, _)| *name == language).expect("every language has an entry");
                entry.1.extend(files);
            }
            if found > 0 {
                println!("unseen corpus: {registry} {name} ({found} files of 300-3,000 lines)");
                taken += 1;
            } else {
                eprintln!("unseen corpus: {registry} package {name} has no file of 300-3,000 lines");
            }
        }
    }
    by_language.retain(|(_, files)| !files.is_empty());
    for (_, files) in &mut by_language {
        files.sort();
        files.dedup();
    }
    by_language
}

/// Downloads and unpacks one package (once: an unpacked package is kept) and returns its folder.
fn fetch(registry: &str, name: &str, cache: &Path) -> Result<PathBuf, String> {
    let root = cache.join(registry).join(name);
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|err| format!("cannot make {}: {err}", root.display()))?;
    match registry {
        "pypi" => {
            let download = root.join("download");
            run(Command::new("python3").args(["-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d"]).arg(&download).arg(name))?;
            let wheel = first_file(&download, ".whl")?;
            run(Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(root.join("src")))?;
        }
        "npm" => {
            let download = root.join("download");
            std::fs::create_dir_all(&download).map_err(|err| err.to_string())?;
            run(Command::new("npm").args(["pack", "-q", "--pack-destination"]).arg(&download).arg(name).current_dir(&download))?;
            let tarball = first_file(&download, ".tgz")?;
            std::fs::create_dir_all(root.join("src")).map_err(|err| err.to_string())?;
            run(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(root.join("src")))?;
        }
        _ => {
            // cargo unpacks a fetched crate into its registry's source folder; a throwaway
            // project that depends on it makes cargo fetch it.
            let project = root.join("project");
            std::fs::create_dir_all(&project).map_err(|err| err.to_string())?;
            let manifest = format!("[package]\nname = \"unseen-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[lib]\npath = \"lib.rs\"\n[dependencies]\n{name} = \"*\"\n");
            std::fs::write(project.join("Cargo.toml"), manifest).map_err(|err| err.to_string())?;
            std::fs::write(project.join("lib.rs"), "").map_err(|err| err.to_string())?;
            run(Command::new("cargo").args(["fetch", "-q"]).current_dir(&project))?;
            let lock = std::fs::read_to_string(project.join("Cargo.lock")).map_err(|err| err.to_string())?;
            let version = lock
                .split("[[package]]")
                .find_map(|entry| {
                    let mut lines = entry.lines().map(str::trim);
                    (lines.clone().any(|line| line == format!("name = \"{name}\""))).then(|| lines.find_map(|line| line.strip_prefix("version = ").map(|v| v.trim_matches('"').to_string())))?
                })
                .ok_or("cargo locked no version of it")?;
            let source = super::corpus::registry_source_dirs()
                .into_iter()
                .map(|dir| dir.join(format!("{name}-{version}")))
                .find(|dir| dir.is_dir())
                .ok_or_else(|| format!("cargo fetched {name} {version} but its source is not unpacked"))?;
            copy_tree(&source, &root.join("src"))?;
            let _ = std::fs::remove_dir_all(&project);
        }
    }
    std::fs::write(&done, "").map_err(|err| err.to_string())?;
    Ok(root)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|err| format!("cannot run {:?}: {err}", command.get_program()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{:?} failed: {}", command.get_program(), stderr.lines().last().unwrap_or_default()))
}

fn first_file(dir: &Path, suffix: &str) -> Result<PathBuf, String> {
    std::fs::read_dir(dir)
        .map_err(|err| format!("{}: {err}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| format!("no {suffix} file was downloaded"))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|err| err.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|err| err.to_string())?.flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|err| err.to_string())?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).map_err(|err| err.to_string())?;
        }
    }
    Ok(())
}

/// Source files of 300-3,000 lines, not generated or minified (lines of 200 characters or
/// more on average), not tests or declarations.
fn usable_files(root: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect(root, extensions, &mut files);
    files.retain(|path| {
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".d.ts") || name.contains(".min.") || path.components().any(|part| ["test", "tests", "__tests__", "benches", "examples"].contains(&part.as_os_str().to_string_lossy().as_ref())) {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        let lines = text.lines().count();
        (300..=3000).contains(&lines) && text.len() / lines.max(1) < 100
    });
    files
}

fn collect(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            collect(&path, extensions, out);
        } else if kind.is_file() && path.extension().is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted)) {
            out.push(path);
        }
    }
}
