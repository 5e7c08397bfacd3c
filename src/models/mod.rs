//! The model layer: every pretrained network ClassGuard runs, each wrapped with its own
//! pre- and post-processing so that callers hand in pixels or samples and get typed results.
//!
//! All models run through ONNX Runtime, which is loaded at run time from a shared library
//! installed by the setup (see [`ModelHome`]). Nothing here downloads anything: a missing
//! runtime or model file is reported as a [`ModelError`] telling the user to run the setup.
//!
//! Layout of the installed files (root = `CLASSGUARD_HOME`, else
//! `${XDG_DATA_HOME:-$HOME/.local/share}/classguard`):
//! - `onnxruntime/libonnxruntime.so`
//! - `models/*.onnx` (+ Whisper's tokenizer and config)
//! - `testdata/`, `reference/` (used by the integration tests)

/// One float output of a raw run: (name, shape, data).
pub type RawOutput = (String, Vec<usize>, Vec<f32>);

pub mod embed;
pub mod face;
pub mod imageops;
pub mod nsfw;
pub mod ocr;
pub mod vad;
pub mod whisper;

pub use embed::{cosine, FaceEmbedder};
pub use face::{Face, FaceDetector, FaceDetectorKind, UltraFace, YuNet};
pub use nsfw::{NsfwClassifier, NudeNetDetection, NudeNetDetector};
pub use ocr::{Ocr, OcrLine, OcrOptions};
pub use vad::{SpeechSegment, Vad, VadOptions, VadStream};
pub use whisper::{Transcript, TranscriptSegment, Whisper};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use sha2::{Digest, Sha256};

/// What to tell a user whose installation lacks the runtime or a model file.
pub const SETUP_HINT: &str =
    "run the ClassGuard setup to install ONNX Runtime and the models (or point CLASSGUARD_HOME at an installed root)";

/// Every failure of the model layer. Each variant names the file it concerns so that a log line
/// alone tells which model broke and why.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime shared library was not found where the setup installs it.
    #[error("ONNX Runtime library not found (looked for {looked}); {hint}", hint = SETUP_HINT)]
    RuntimeMissing { looked: String },
    /// The library exists but could not be loaded (wrong file, too old, wrong architecture).
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
    /// A model (or tokenizer/config) file is not installed.
    #[error("model file {file} is missing; {hint}", hint = SETUP_HINT)]
    MissingFile { file: PathBuf },
    /// The file exists but ONNX Runtime (or the tokenizer) refused it.
    #[error("{model}: cannot load: {reason}")]
    Load { model: String, reason: String },
    /// The model's inputs/outputs are not the layout this wrapper was written for.
    #[error("{model}: unexpected model interface: {reason}")]
    Interface { model: String, reason: String },
    /// `Session::run` failed.
    #[error("{model}: inference failed: {reason}")]
    Run { model: String, reason: String },
    /// The caller handed in something the model cannot take (empty image, bad sample rate...).
    #[error("{model}: invalid input: {reason}")]
    Input { model: String, reason: String },
    /// An option combination that this build cannot honour (e.g. CUDA without the feature).
    #[error("unsupported option: {0}")]
    Unsupported(String),
    /// Reading a media or model file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Decoding a media file failed.
    #[error("cannot decode {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Installed layout
// ---------------------------------------------------------------------------------------------

/// File names of the installed models (under `$ROOT/models`).
pub mod files {
    pub const YUNET: &str = "yunet.onnx";
    pub const ULTRAFACE: &str = "ultraface-rfb320.onnx";
    pub const SFACE: &str = "sface.onnx";
    pub const OPEN_NSFW: &str = "open_nsfw.onnx";
    pub const NUDENET: &str = "nudenet-320n.onnx";
    pub const OCR_DET: &str = "ppocrv6-det-small.onnx";
    pub const OCR_REC: &str = "ppocrv6-rec-small.onnx";
    pub const SILERO_VAD: &str = "silero-vad-v6.onnx";
    pub const WHISPER_ENCODER: &str = "whisper-tiny.en-encoder.onnx";
    pub const WHISPER_DECODER: &str = "whisper-tiny.en-decoder.onnx";
    pub const WHISPER_TOKENIZER: &str = "whisper-tiny.en-tokenizer.json";
    pub const WHISPER_CONFIG: &str = "whisper-tiny.en-config.json";
}

/// Where the setup installed the runtime, the models and the test data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelHome {
    root: PathBuf,
}

/// Pure root resolution, separated from the environment so it can be unit-tested:
/// `CLASSGUARD_HOME` wins; else `$XDG_DATA_HOME/classguard` (only if absolute, as the XDG
/// specification demands); else `$HOME/.local/share/classguard`.
fn resolve_root(
    classguard_home: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    if let Some(h) = classguard_home.filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = xdg_data_home.filter(|x| !x.is_empty()) {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return p.join("classguard");
        }
    }
    match home.filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/classguard"),
        // No HOME at all (some service managers): fall back to a relative directory rather
        // than failing here; the missing-file errors later say where we looked.
        None => PathBuf::from(".classguard"),
    }
}

impl ModelHome {
    /// Locates the root from the environment (see [`resolve_root`] rules).
    pub fn locate() -> Self {
        Self {
            root: resolve_root(
                std::env::var_os("CLASSGUARD_HOME"),
                std::env::var_os("XDG_DATA_HOME"),
                std::env::var_os("HOME"),
            ),
        }
    }

    /// Uses an explicit root (tests, packaging).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }
    /// Path of a model file by its installed name (see [`files`]).
    pub fn model(&self, file: &str) -> PathBuf {
        self.models_dir().join(file)
    }
    pub fn ort_library(&self) -> PathBuf {
        self.root.join("onnxruntime").join(ort_library_name())
    }
    pub fn testdata(&self, name: &str) -> PathBuf {
        self.root.join("testdata").join(name)
    }
    pub fn reference(&self, name: &str) -> PathBuf {
        self.root.join("reference").join(name)
    }
    pub fn yunet(&self) -> PathBuf {
        self.model(files::YUNET)
    }
    pub fn ultraface(&self) -> PathBuf {
        self.model(files::ULTRAFACE)
    }
    pub fn sface(&self) -> PathBuf {
        self.model(files::SFACE)
    }
    pub fn open_nsfw(&self) -> PathBuf {
        self.model(files::OPEN_NSFW)
    }
    pub fn nudenet(&self) -> PathBuf {
        self.model(files::NUDENET)
    }
    pub fn ocr_det(&self) -> PathBuf {
        self.model(files::OCR_DET)
    }
    pub fn ocr_rec(&self) -> PathBuf {
        self.model(files::OCR_REC)
    }
    pub fn silero_vad(&self) -> PathBuf {
        self.model(files::SILERO_VAD)
    }
    pub fn whisper_encoder(&self) -> PathBuf {
        self.model(files::WHISPER_ENCODER)
    }
    pub fn whisper_decoder(&self) -> PathBuf {
        self.model(files::WHISPER_DECODER)
    }
    pub fn whisper_tokenizer(&self) -> PathBuf {
        self.model(files::WHISPER_TOKENIZER)
    }
    pub fn whisper_config(&self) -> PathBuf {
        self.model(files::WHISPER_CONFIG)
    }
}

fn ort_library_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

// ---------------------------------------------------------------------------------------------
// Runtime
// ---------------------------------------------------------------------------------------------

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Candidate library paths in priority order: `CLASSGUARD_ORT_LIB`, the installed root, then
/// versioned names (`libonnxruntime.so.1.22.1`) in the installed directory, so that a setup
/// which kept the wheel's file name still works.
fn ort_library_candidates(home: &ModelHome) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("CLASSGUARD_ORT_LIB").filter(|p| !p.is_empty()) {
        // An explicit override is the only candidate: silently falling back elsewhere would
        // hide a misconfiguration.
        out.push(PathBuf::from(p));
        return out;
    }
    let lib = home.ort_library();
    out.push(lib.clone());
    if let Some(dir) = lib.parent() {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let base = ort_library_name();
            let mut versioned: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&base) && n.len() > base.len())
                })
                .collect();
            versioned.sort();
            out.extend(versioned.into_iter().rev());
        }
    }
    out
}

/// Large blocks (at least this many bytes) are always mapped and unmapped by the system allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// glibc raises its mmap threshold every time a mapped block is freed, up to 32 MB, after which
/// tensors of a few MB to 32 MB come from the heap and their freed space stays resident: with the
/// arena off, model loading (protobuf and initializer copies) and 1280x720 OCR detection left
/// hundreds of MB of holes. A fixed threshold returns large tensors to the system on free, at
/// the cost of page faults on every large allocation (docs/benchmarks.md). Process-wide; set
/// once, before the runtime allocates anything; `MALLOC_MMAP_THRESHOLD_` in the environment wins.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; M_MMAP_THRESHOLD takes a size.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Hands the free pages inside the allocator's heaps back to the system. Called after each
/// slice's models: pre- and post-processing buffers of varying size (crops, OCR line images,
/// decoded outputs) leave free holes in the worker threads' heaps, which otherwise stay
/// resident and add up over a long recording. Measured when the models still allocated their
/// activations through the system allocator (10-minute whiteboard: 683-699 -> 671-675 MB, no
/// change in wall time); with the runtime's arenas on (`ModelOptions::cpu_arena`) the holes
/// left are smaller and the gain has not been measured again. A no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads ONNX Runtime once per process and returns the shared environment.
///
/// The library is found without configuration (see [`ModelHome`]); `CLASSGUARD_ORT_LIB`
/// overrides it. Never panics: a missing library yields [`ModelError::RuntimeMissing`] with a
/// hint to run the setup. A failed attempt is not cached, so a later call after the setup
/// succeeds.
pub fn init_runtime() -> Result<&'static Environment> {
    init_runtime_in(&ModelHome::locate())
}

/// [`init_runtime`] with an explicit installation root.
pub fn init_runtime_in(home: &ModelHome) -> Result<&'static Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    fixed_mmap_threshold();
    let candidates = ort_library_candidates(home);
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let looked = candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ModelError::RuntimeMissing { looked });
    };
    // ort resolves relative paths against the executable directory and panics if that
    // cannot be determined: always hand it an absolute path.
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|d| d.join(&path))
            .unwrap_or(path)
    };
    let builder = ort::init_from(&path).map_err(|e| ModelError::RuntimeLoad {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let env = builder
        .with_name("classguard")
        .with_telemetry(false)
        .build()
        .map_err(|e| ModelError::RuntimeLoad {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    tracing::debug!(target: "classguard::models", "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

// ---------------------------------------------------------------------------------------------
// Options and session pool
// ---------------------------------------------------------------------------------------------

/// Where inference runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// CUDA (only in builds with the `cuda` cargo feature; the runtime library must be a GPU build).
    Cuda,
}

/// How each model is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Threads ONNX Runtime uses inside one operator. 1 keeps many concurrent workers from
    /// oversubscribing the CPU; raise it for single-stream latency.
    pub intra_threads: usize,
    /// Sessions kept per model. `Session::run` needs exclusive access, so this is the number
    /// of concurrent inferences one model object serves.
    pub pool_size: usize,
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal when `execution_provider` is CUDA.
    pub device_id: i32,
    /// Keep ONNX Runtime's CPU arena: activations stay mapped from one run to the next. Every
    /// model here runs the same shapes call after call (a recording's frames reach a detector
    /// at one size; a Whisper window is always 30 s), so without the arena each run mapped its
    /// large tensors afresh, faulted them in, and the model workers queued on the kernel's
    /// mapping lock. Measured on the 10-minute camera file: default scan 27.8 -> 25.5 s, system
    /// time 6.5 -> 2.2 s, peak RSS +17 MB; naive row 83 -> 61 s. Off trades that time for a
    /// lower resident set (the arena keeps each session's largest run).
    pub cpu_arena: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            intra_threads: 1,
            pool_size: 1,
            execution_provider: ExecutionProvider::Cpu,
            device_id: 0,
            cpu_arena: true,
        }
    }
}

/// Dimension `i` of a model shape when it is fixed (> 0), else `default` (dynamic axes are -1).
pub fn fixed_dim(shape: &[i64], i: usize, default: usize) -> usize {
    shape
        .get(i)
        .copied()
        .filter(|&v| v > 0)
        .map_or(default, |v| v as usize)
}

/// A fixed set of sessions of one model. `Session::run` takes `&mut self` (ONNX Runtime
/// internals such as some allocators are not thread-safe), so concurrent callers each check
/// one out; callers beyond the pool size wait.
pub struct SessionPool {
    model: String,
    free: Mutex<Vec<Session>>,
    available: Condvar,
    size: usize,
}

/// A session checked out of a [`SessionPool`]; it goes back on drop.
pub struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl std::ops::Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Invariant: `session` is Some until drop.
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable!("session taken before drop"))
    }
}
impl std::ops::DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session
            .as_mut()
            .unwrap_or_else(|| unreachable!("session taken before drop"))
    }
}
impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            free.push(s);
            self.pool.available.notify_one();
        }
    }
}

impl SessionPool {
    pub fn new(model: impl Into<String>, sessions: Vec<Session>) -> Self {
        let size = sessions.len();
        Self {
            model: model.into(),
            free: Mutex::new(sessions),
            available: Condvar::new(),
            size,
        }
    }

    /// Blocks until a session is free.
    pub fn checkout(&self) -> PooledSession<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = free.pop() {
                return PooledSession {
                    pool: self,
                    session: Some(s),
                };
            }
            free = self.available.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Input names and shapes (`-1` = dynamic) of the model.
    pub fn input_shapes(&self) -> Vec<(String, Vec<i64>)> {
        outlet_shapes(self.checkout().inputs())
    }

    /// Name and shape of the first input: every single-input model here starts from it.
    pub fn first_input(&self) -> Result<(String, Vec<i64>)> {
        self.input_shapes()
            .into_iter()
            .next()
            .ok_or_else(|| self.output_err("no inputs"))
    }

    /// Name of the first output.
    pub fn first_output(&self) -> Result<String> {
        self.output_names()
            .into_iter()
            .next()
            .ok_or_else(|| self.output_err("no outputs"))
    }

    /// Output names of the model.
    pub fn output_names(&self) -> Vec<String> {
        self.output_shapes().into_iter().map(|(n, _)| n).collect()
    }

    /// Output names and shapes (`-1` = dynamic) of the model.
    pub fn output_shapes(&self) -> Vec<(String, Vec<i64>)> {
        outlet_shapes(self.checkout().outputs())
    }

    /// Runs the model on raw named inputs and returns every float output as (name, shape,
    /// data). Used by tests and benchmarks to compare raw outputs with the reference runs
    /// and to time the bare `Session::run`; the typed wrappers use their own paths.
    pub fn run_raw(&self, inputs: &[(&str, RawInput<'_>)]) -> Result<Vec<RawOutput>> {
        let mut values = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let v = match input {
                RawInput::F32(shape, data) => ort::session::SessionInputValue::from(
                    ort::value::TensorRef::from_array_view((shape.to_vec(), *data))
                        .map_err(|e| self.run_err(e))?,
                ),
                RawInput::I64(shape, data) => ort::session::SessionInputValue::from(
                    ort::value::TensorRef::from_array_view((shape.to_vec(), *data))
                        .map_err(|e| self.run_err(e))?,
                ),
            };
            values.push((std::borrow::Cow::Borrowed(*name), v));
        }
        let mut s = self.checkout();
        let outputs = s.run(values).map_err(|e| self.run_err(e))?;
        let mut out = Vec::new();
        for (name, v) in outputs.iter() {
            if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
                out.push((
                    name.to_string(),
                    shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data.to_vec(),
                ));
            }
        }
        Ok(out)
    }

    pub(crate) fn run_err<E: std::fmt::Display>(&self, e: E) -> ModelError {
        ModelError::Run {
            model: self.model.clone(),
            reason: e.to_string(),
        }
    }
    pub(crate) fn output_err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Interface {
            model: self.model.clone(),
            reason: reason.into(),
        }
    }
}

/// A borrowed input tensor for [`SessionPool::run_raw`]: shape and row-major data.
#[derive(Clone, Copy, Debug)]
pub enum RawInput<'a> {
    F32(&'a [usize], &'a [f32]),
    I64(&'a [usize], &'a [i64]),
}

/// A model file loaded into a pool of sessions, with its identity.
pub struct LoadedModel {
    pub pool: SessionPool,
    /// Hex sha256 of the exact bytes handed to ONNX Runtime.
    pub sha256: String,
    /// File name (no directories: these strings end up in logs and verdict records).
    pub file: String,
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn read_model_file(path: &Path) -> Result<Vec<u8>> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            file: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Names and shapes (`-1` = dynamic) of a session's inputs or outputs.
fn outlet_shapes(outlets: &[ort::value::Outlet]) -> Vec<(String, Vec<i64>)> {
    outlets
        .iter()
        .map(|o| {
            let shape = o.dtype().tensor_shape().map(|s| s.to_vec());
            (o.name().to_string(), shape.unwrap_or_default())
        })
        .collect()
}

/// Reads, hashes and loads a model file into `opts.pool_size` sessions.
///
/// The bytes are read once and both hashed and handed to ONNX Runtime, so the reported hash
/// is exactly what runs.
pub fn load_model(path: &Path, opts: &ModelOptions) -> Result<LoadedModel> {
    let file = file_name(path);
    let bytes = read_model_file(path)?;
    let env = init_runtime()?;
    let sha256 = sha256_hex(&bytes);
    let n = opts.pool_size.max(1);
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(build_session(env, &bytes, opts, &file)?);
    }
    tracing::debug!(target: "classguard::models", model = %file, sha256 = %&sha256[..16], sessions = n, "model loaded");
    Ok(LoadedModel {
        pool: SessionPool::new(file.clone(), sessions),
        sha256,
        file,
    })
}

fn build_session(
    env: &Environment,
    bytes: &[u8],
    opts: &ModelOptions,
    file: &str,
) -> Result<Session> {
    let err = |e: ort::Error<ort::session::builder::SessionBuilder>| ModelError::Load {
        model: file.to_string(),
        reason: ort::Error::<()>::from(e).to_string(),
    };
    let b = Session::builder(env).map_err(|e| ModelError::Load {
        model: file.to_string(),
        reason: e.to_string(),
    })?;
    let b = b
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(err)?;
    let b = b.with_inter_threads(1).map_err(err)?;
    // Intra-op worker threads sleep between operators instead of spinning: every core is also
    // wanted by the video decoder and the other model workers, and Whisper's decoder runs a
    // hundred small operators per token. Measured on the 10-minute camera file: default scan
    // 64.7 -> 59.4 and 59.0 -> 54.8 user CPU-s with the wall time no worse; the looser naive
    // row 122 -> 106 CPU-s.
    let b = b
        .with_config_entry("session.intra_op.allow_spinning", "0")
        .map_err(err)?;
    // `All` (99), not `Level3`: ort maps Level3 to ORT_ENABLE_LAYOUT (3), which runtimes before
    // 1.23 reject as invalid.
    let b = b
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?;
    // Memory (measured in docs/benchmarks.md): the CPU arena (`ModelOptions::cpu_arena`) keeps
    // each session's largest run mapped; the memory pattern would also pre-plan one block per
    // input shape, which OCR's variable line widths would multiply: off. Pre-packing
    // keeps a second, re-laid-out copy of MatMul/Gemm weights (75 MB for the Whisper decoder's
    // token projection alone) and measured no faster here: off.
    let b = b.with_memory_pattern(false).map_err(err)?;
    let b = b
        .with_config_entry("session.disable_prepacking", "1")
        .map_err(err)?;
    let mut b = match opts.execution_provider {
        ExecutionProvider::Cpu => b
            .with_execution_providers([ort::ep::CPU::default()
                .with_arena_allocator(opts.cpu_arena)
                .build()])
            .map_err(err)?,
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda => b
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(opts.device_id)
                .build()
                .error_on_failure()])
            .map_err(err)?,
        #[cfg(not(feature = "cuda"))]
        ExecutionProvider::Cuda => {
            return Err(ModelError::Unsupported(
                "execution provider `cuda` needs a build with the `cuda` cargo feature".into(),
            ))
        }
    };
    b.commit_from_memory(bytes).map_err(|e| ModelError::Load {
        model: file.to_string(),
        reason: e.to_string(),
    })
}

/// Finds an input or output name that matches one of `wanted`, else the one at `fallback`.
/// Used so that a re-export with slightly different tensor names still loads.
pub(crate) fn pick_name(names: &[String], wanted: &[&str], fallback: usize) -> Option<String> {
    for w in wanted {
        if let Some(n) = names.iter().find(|n| n.as_str() == *w) {
            return Some(n.clone());
        }
    }
    names.get(fallback).cloned()
}

// ---------------------------------------------------------------------------------------------
// Shared post-processing
// ---------------------------------------------------------------------------------------------

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou_xywh(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let x1 = a[0].max(b[0]);
    let y1 = a[1].max(b[1]);
    let x2 = (a[0] + a[2]).min(b[0] + b[2]);
    let y2 = (a[1] + a[3]).min(b[1] + b[3]);
    let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let union = a[2].max(0.0) * a[3].max(0.0) + b[2].max(0.0) * b[3].max(0.0) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy non-maximum suppression. Returns the indices kept, by descending score.
/// `boxes` are `[x, y, w, h]`. NaN scores sort last and are never kept.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len()))
        .filter(|&i| scores[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    'outer: for &i in &order {
        for &k in &keep {
            if iou_xywh(&boxes[i], &boxes[k]) > iou_threshold {
                continue 'outer;
            }
        }
        keep.push(i);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolution_order() {
        let o = |s: &str| Some(OsString::from(s));
        assert_eq!(
            resolve_root(o("/cg"), o("/xdg"), o("/home/u")),
            PathBuf::from("/cg")
        );
        assert_eq!(
            resolve_root(None, o("/xdg"), o("/home/u")),
            PathBuf::from("/xdg/classguard")
        );
        assert_eq!(
            resolve_root(o(""), o("rel"), o("/home/u")),
            PathBuf::from("/home/u/.local/share/classguard")
        );
        assert_eq!(
            resolve_root(None, None, o("/h")),
            PathBuf::from("/h/.local/share/classguard")
        );
    }

    #[test]
    fn home_paths() {
        let h = ModelHome::at("/r");
        assert_eq!(h.yunet(), PathBuf::from("/r/models/yunet.onnx"));
        assert_eq!(
            h.ort_library(),
            PathBuf::from("/r/onnxruntime/libonnxruntime.so")
        );
    }

    #[test]
    fn missing_runtime_is_an_error_not_a_panic() {
        // Only meaningful when no runtime was loaded yet in this test process.
        if ENVIRONMENT.get().is_none() && std::env::var_os("CLASSGUARD_ORT_LIB").is_none() {
            let r = init_runtime_in(&ModelHome::at("/nonexistent-classguard-root"));
            match r {
                Err(ModelError::RuntimeMissing { looked }) => {
                    assert!(looked.contains("nonexistent"))
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("runtime found in a nonexistent root"),
            }
        }
    }

    #[test]
    fn nms_suppresses_overlaps() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0],
            [50.0, 50.0, 10.0, 10.0],
        ];
        let scores = [0.8, 0.9, 0.5];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        assert!((iou_xywh(&boxes[0], &boxes[0]) - 1.0).abs() < 1e-6);
        assert_eq!(iou_xywh(&boxes[0], &boxes[2]), 0.0);
        assert!(nms(&boxes, &[f32::NAN, 0.1, 0.2], 0.5).len() == 2);
    }
}
