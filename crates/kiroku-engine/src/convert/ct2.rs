//! Reader for CTranslate2 `model.bin` files (binary version 6 and earlier 5).
//!
//! The layout comes from `python/ctranslate2/specs/model_spec.py` (`_serialize`):
//! `u32 version`, `str spec name`, `u32 revision`, `u32 n_variables`, then per variable
//! `str name`, `u8 rank`, `u32 dims[rank]`, `u8 dtype`, `u32 n_bytes`, `bytes`; then
//! `u32 n_aliases` and `(str alias, str target)` pairs. A `str` is a `u16` length that
//! counts a trailing NUL, followed by that many bytes. Everything is little-endian.
//!
//! Only the index is read eagerly (tensor data is skipped with a seek) so that a
//! 3 GB large-v3 file costs kilobytes until a tensor is asked for.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{ConvertError, Result};

/// Element types CTranslate2 writes, by their on-disk id (`DTYPE_ID` in model_spec.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// The on-disk id, the inverse of `from_id`.
    pub fn id(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::I8 => 1,
            Self::I16 => 2,
            Self::I32 => 3,
            Self::F16 => 4,
            Self::Bf16 => 5,
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable of the model: where its bytes are and how to read them.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    pub offset_bytes: u64,
    pub len_bytes: usize,
}

impl Ct2Variable {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened CTranslate2 model: the index of its variables plus a file handle.
#[derive(Debug)]
pub struct Ct2Model {
    path: PathBuf,
    pub spec_name: String,
    pub binary_version: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    pub aliases: BTreeMap<String, String>,
    file: File,
}

/// Largest binary version this reader understands (CTranslate2 4.x writes 6).
const MAX_BINARY_VERSION: u32 = 6;

impl Ct2Model {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ConvertError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = IndexReader {
            inner: BufReader::new(file),
            path,
        };
        let binary_version = reader.u32()?;
        if binary_version == 0 || binary_version > MAX_BINARY_VERSION {
            return Err(reader.corrupt(format!(
                "unsupported CTranslate2 binary version {binary_version} (this reader knows 1 to {MAX_BINARY_VERSION}); is this a CTranslate2 model.bin?"
            )));
        }
        let (spec_name, _revision) = if binary_version >= 2 {
            (reader.string()?, reader.u32()?)
        } else {
            (String::new(), 1)
        };
        let n_variables = reader.u32()?;
        if n_variables > 100_000 {
            return Err(reader.corrupt(format!("implausible variable count {n_variables}")));
        }
        let mut variables = BTreeMap::new();
        for _ in 0..n_variables {
            let name = reader.string()?;
            let rank = reader.u8()?;
            let shape = (0..rank)
                .map(|_| reader.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let dtype_id = reader.u8()?;
            let dtype = Ct2Dtype::from_id(dtype_id).ok_or_else(|| {
                reader.corrupt(format!("variable {name} has unknown dtype id {dtype_id}"))
            })?;
            let len_bytes = reader.u32()? as usize;
            let n_elements: usize = shape.iter().product();
            if n_elements * dtype.size_bytes() != len_bytes {
                return Err(reader.corrupt(format!(
                    "variable {name}: shape {shape:?} of {dtype:?} needs {} bytes, header says {len_bytes}",
                    n_elements * dtype.size_bytes()
                )));
            }
            let offset_bytes = reader.position()?;
            if offset_bytes + len_bytes as u64 > file_len {
                return Err(reader.corrupt(format!(
                    "variable {name} runs past the end of the file (truncated download?)"
                )));
            }
            reader.skip(len_bytes as i64)?;
            variables.insert(
                name,
                Ct2Variable {
                    shape,
                    dtype,
                    offset_bytes,
                    len_bytes,
                },
            );
        }
        let mut aliases = BTreeMap::new();
        if binary_version >= 3 {
            let n_aliases = reader.u32()?;
            for _ in 0..n_aliases {
                let alias = reader.string()?;
                let target = reader.string()?;
                aliases.insert(alias, target);
            }
        }
        let file = reader.inner.into_inner();
        Ok(Self {
            path: path.to_path_buf(),
            spec_name,
            binary_version,
            variables,
            aliases,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn variable(&self, name: &str) -> Result<&Ct2Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.variables
            .get(name)
            .ok_or_else(|| ConvertError::MissingVariable(name.to_string()))
    }

    /// Reads a variable's raw little-endian bytes.
    pub fn read_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let var = self.variable(name)?.clone();
        let mut buf = vec![0u8; var.len_bytes];
        let file = &mut self.file;
        file.seek(SeekFrom::Start(var.offset_bytes))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|source| ConvertError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Reads a floating-point (or int8 with a `<name>_scale` sibling) tensor as f32.
    pub fn read_f32(&mut self, name: &str) -> Result<Vec<f32>> {
        let var = self.variable(name)?.clone();
        let bytes = self.read_bytes(name)?;
        match var.dtype {
            Ct2Dtype::F32 => Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Ct2Dtype::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            Ct2Dtype::Bf16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            Ct2Dtype::I8 => {
                // CTranslate2 int8 quantization: one f32 scale per output row,
                // stored as `<name>_scale`; value = q / scale.
                let scale_name = format!("{name}_scale");
                let scales = self.read_f32(&scale_name).map_err(|_| {
                    ConvertError::Unsupported(format!(
                        "{name} is int8 but has no {scale_name} variable"
                    ))
                })?;
                let rows = var.shape.first().copied().unwrap_or(1).max(1);
                let row_len = var.n_elements() / rows;
                if scales.len() != rows {
                    return Err(ConvertError::Unsupported(format!(
                        "{scale_name} has {} values for {rows} rows",
                        scales.len()
                    )));
                }
                Ok(bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| f32::from(q as i8) / scales[i / row_len])
                    .collect())
            }
            other => Err(ConvertError::Unsupported(format!(
                "tensor {name} has dtype {other:?}, expected a float type"
            ))),
        }
    }

    /// Reads an integer scalar setting such as `encoder/num_heads`.
    pub fn read_scalar_i64(&mut self, name: &str) -> Result<i64> {
        let var = self.variable(name)?.clone();
        if var.n_elements() != 1 {
            return Err(ConvertError::Unsupported(format!(
                "{name} should be a scalar, has shape {:?}",
                var.shape
            )));
        }
        let b = self.read_bytes(name)?;
        Ok(match var.dtype {
            Ct2Dtype::I8 => i64::from(b[0] as i8),
            Ct2Dtype::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            Ct2Dtype::I32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Ct2Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            Ct2Dtype::F16 | Ct2Dtype::Bf16 => {
                return Err(ConvertError::Unsupported(format!(
                    "{name} is a half-float, expected an integer"
                )));
            }
        })
    }
}

/// Sequential reader for the index with positions and precise errors.
struct IndexReader<'a> {
    inner: BufReader<File>,
    path: &'a Path,
}

impl IndexReader<'_> {
    fn corrupt(&self, detail: String) -> ConvertError {
        ConvertError::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    fn exact<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt("file ends in the middle of the header (truncated?)".into())
            } else {
                ConvertError::Io {
                    path: self.path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.exact::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.exact::<4>()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = usize::from(u16::from_le_bytes(self.exact::<2>()?));
        if len == 0 {
            return Err(self.corrupt("zero-length string".into()));
        }
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| self.corrupt("file ends inside a string (truncated?)".into()))?;
        if buf.pop() != Some(0) {
            return Err(self.corrupt("string without its trailing NUL".into()));
        }
        String::from_utf8(buf).map_err(|_| self.corrupt("string is not UTF-8".into()))
    }

    fn position(&mut self) -> Result<u64> {
        self.inner
            .stream_position()
            .map_err(|source| ConvertError::Io {
                path: self.path.to_path_buf(),
                source,
            })
    }

    fn skip(&mut self, n: i64) -> Result<()> {
        self.inner
            .seek_relative(n)
            .map_err(|source| ConvertError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(())
    }
}

/// Writes a CTranslate2 model file: used by tests to build synthetic models of
/// shapes that cannot be downloaded here (large-v3's 128 mel bins, multilingual).
pub fn write_model(
    out: &mut impl std::io::Write,
    spec_name: &str,
    variables: &[(String, Vec<usize>, Ct2Dtype, Vec<u8>)],
    aliases: &[(String, String)],
) -> std::io::Result<()> {
    fn string(out: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
        let len = u16::try_from(s.len() + 1).map_err(std::io::Error::other)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(s.as_bytes())?;
        out.write_all(&[0])
    }
    out.write_all(&6u32.to_le_bytes())?;
    string(out, spec_name)?;
    out.write_all(&3u32.to_le_bytes())?;
    out.write_all(&(variables.len() as u32).to_le_bytes())?;
    for (name, shape, dtype, bytes) in variables {
        string(out, name)?;
        out.write_all(&[shape.len() as u8])?;
        for d in shape {
            out.write_all(&(*d as u32).to_le_bytes())?;
        }
        out.write_all(&[dtype.id()])?;
        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        out.write_all(bytes)?;
    }
    out.write_all(&(aliases.len() as u32).to_le_bytes())?;
    for (alias, target) in aliases {
        string(out, alias)?;
        string(out, target)?;
    }
    Ok(())
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any file as a CTranslate2 `model.bin`: refused or opened, never a panic, no
        /// allocation beyond the file (sizes are checked against its length), and every
        /// variable it lists reads or is refused.
        #[test]
        fn arbitrary_model_files_open_or_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            version in 1u32..8,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("model.bin");
            // Half the cases start with a plausible version, to get past the first check.
            let mut file = version.to_le_bytes().to_vec();
            file.extend_from_slice(&bytes);
            for contents in [&bytes, &file] {
                std::fs::write(&path, contents).expect("write");
                if let Ok(mut model) = Ct2Model::open(&path) {
                    let names: Vec<String> = model.variables.keys().cloned().collect();
                    for name in names {
                        let _ = model.read_bytes(&name);
                        let _ = model.read_f32(&name);
                    }
                }
            }
        }
    }
}
