//! CTranslate2 Whisper → whisper.cpp ggml model converter.
//!
//! Reads a CTranslate2 model folder (`model.bin` + `vocabulary.txt` or
//! `vocabulary.json`) and writes the legacy ggml file that `whisper_model_load`
//! (whisper.cpp 1.8) reads: the header of hyperparameters, the mel filterbank, the
//! vocabulary, then every tensor under whisper.cpp's name. Hyperparameters are read from
//! the model's own shapes and scalars, so every Whisper size, English-only or
//! multilingual vocabularies and large-v3's 128 mel bins convert the same way.
//!
//! Output is written to `<out>.partial` and renamed at the end: an interrupted
//! conversion never leaves a file that looks complete.

pub mod ct2;
pub mod mel;
pub mod vocab;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ct2::Ct2Model;

/// Errors of model conversion; each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt CTranslate2 model: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("not a CTranslate2 Whisper model: {0}")]
    NotWhisper(String),
    #[error("model is missing variable {0}")]
    MissingVariable(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("vocabulary: {0}")]
    Vocab(#[from] vocab::VocabError),
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// Weight storage of the converted model's 2-D matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    /// IEEE half floats: what the original models use.
    #[default]
    F16,
    /// ggml's 8-bit blocks (32 weights + one f16 scale): half the size, faster matmuls.
    Q8_0,
}

impl WeightType {
    /// `ftype` as whisper.cpp's header stores it (quantized types carry
    /// `GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR`).
    fn header_ftype(self) -> i32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7 + GGML_QNT_VERSION * 1000,
        }
    }
}

impl std::str::FromStr for WeightType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            other => Err(format!(
                "unknown weight type {other:?} (supported: f16, q8_0)"
            )),
        }
    }
}

/// First four bytes (little-endian) of a whisper.cpp ggml model file.
pub const GGML_MAGIC: u32 = 0x6767_6d6c;
const GGML_QNT_VERSION: i32 = 2;
const GGML_TYPE_F32: i32 = 0;
const GGML_TYPE_F16: i32 = 1;
const GGML_TYPE_Q8_0: i32 = 8;
const Q8_0_BLOCK: usize = 32;

/// Whisper hyperparameters in whisper.cpp's header order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperParams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

impl HyperParams {
    /// Derives the hyperparameters from a CTranslate2 Whisper model's shapes.
    pub fn from_ct2(model: &mut Ct2Model) -> Result<Self> {
        let shape = |model: &Ct2Model, name: &str| -> Result<Vec<usize>> {
            Ok(model.variable(name)?.shape.clone())
        };
        let count_layers = |model: &Ct2Model, prefix: &str| {
            (0..)
                .take_while(|i| {
                    model
                        .variables
                        .keys()
                        .any(|k| k.starts_with(&format!("{prefix}/layer_{i}/")))
                })
                .count()
        };
        let conv1 = shape(model, "encoder/conv1/weight")?;
        let enc_pos = shape(model, "encoder/position_encodings/encodings")?;
        let dec_pos = shape(model, "decoder/position_encodings/encodings")?;
        let embeddings = shape(model, "decoder/embeddings/weight")?;
        let [_, n_mels, 3] = conv1[..] else {
            return Err(ConvertError::Unsupported(format!(
                "encoder/conv1/weight has shape {conv1:?}, expected [state, mels, 3]"
            )));
        };
        let (&[n_audio_ctx, n_audio_state], &[n_text_ctx, n_text_state], &[n_vocab, _]) =
            (&enc_pos[..], &dec_pos[..], &embeddings[..])
        else {
            return Err(ConvertError::Unsupported(
                "position encodings or embeddings are not 2-D".into(),
            ));
        };
        let heads = |model: &mut Ct2Model, name: &str| -> Result<usize> {
            let n = model.read_scalar_i64(name)?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ConvertError::Unsupported(format!("{name} = {n}")))
        };
        let params = Self {
            n_vocab,
            n_audio_ctx,
            n_audio_state,
            n_audio_head: heads(model, "encoder/num_heads")?,
            n_audio_layer: count_layers(model, "encoder"),
            n_text_ctx,
            n_text_state,
            n_text_head: heads(model, "decoder/num_heads")?,
            n_text_layer: count_layers(model, "decoder"),
            n_mels,
        };
        if params.n_audio_layer == 0 || params.n_text_layer == 0 {
            return Err(ConvertError::NotWhisper(
                "no encoder or decoder layers".into(),
            ));
        }
        if !params.n_audio_state.is_multiple_of(params.n_audio_head)
            || !params.n_text_state.is_multiple_of(params.n_text_head)
        {
            return Err(ConvertError::Unsupported(
                "state size is not a multiple of the head count".into(),
            ));
        }
        Ok(params)
    }

    fn header_fields(&self) -> [usize; 10] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
        ]
    }
}

/// How one output tensor is stored in the ggml file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Always f32: 1-D tensors, biases, positional embeddings.
    F32,
    /// Always f16: convolution kernels (whisper.cpp's im2col needs f16).
    F16,
    /// 2-D matrices: f16 or quantized, as the user chose.
    Weight,
}

/// One tensor of the output: its whisper.cpp name, where it comes from and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub ggml_name: String,
    pub ct2_name: String,
    /// For fused CT2 matrices (q|k|v, k|v): which block of rows (index, of how many).
    pub split: Option<(usize, usize)>,
    /// Shape in CT2 (row-major) order, after splitting; ggml gets it reversed.
    pub shape: Vec<usize>,
    pub storage: Storage,
}

/// The fused CT2 key-bias blocks that whisper.cpp has no tensor for: they must be zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedBias {
    pub ct2_name: String,
    pub block: (usize, usize),
}

/// Collects the output tensors of [`plan`].
#[derive(Default)]
struct PlanBuilder {
    plans: Vec<TensorPlan>,
    dropped: Vec<DroppedBias>,
}

impl PlanBuilder {
    fn tensor(&mut self, ggml: &str, ct2: &str, shape: Vec<usize>, storage: Storage) {
        self.split(ggml, ct2, None, shape, storage);
    }

    fn split(
        &mut self,
        ggml: &str,
        ct2: &str,
        split: Option<(usize, usize)>,
        shape: Vec<usize>,
        storage: Storage,
    ) {
        self.plans.push(TensorPlan {
            ggml_name: ggml.to_string(),
            ct2_name: ct2.to_string(),
            split,
            shape,
            storage,
        });
    }

    /// A CT2 layer norm (`gamma`, `beta`) as ggml `weight`, `bias`.
    fn norm(&mut self, ggml: &str, ct2: &str, state: usize) {
        self.tensor(
            &format!("{ggml}.weight"),
            &format!("{ct2}/gamma"),
            vec![state],
            Storage::F32,
        );
        self.tensor(
            &format!("{ggml}.bias"),
            &format!("{ct2}/beta"),
            vec![state],
            Storage::F32,
        );
    }

    /// A linear layer, or one block of a fused one; `bias: false` for Whisper's keys.
    fn linear(
        &mut self,
        ggml: &str,
        ct2: &str,
        shape: [usize; 2],
        split: Option<(usize, usize)>,
        bias: bool,
    ) {
        let (weight, bias_name) = (format!("{ct2}/weight"), format!("{ct2}/bias"));
        self.split(
            &format!("{ggml}.weight"),
            &weight,
            split,
            shape.to_vec(),
            Storage::Weight,
        );
        if bias {
            self.split(
                &format!("{ggml}.bias"),
                &bias_name,
                split,
                vec![shape[0]],
                Storage::F32,
            );
        } else if let Some(block) = split {
            self.dropped.push(DroppedBias {
                ct2_name: bias_name,
                block,
            });
        }
    }

    /// The equal row blocks of a fused CT2 matrix as separate ggml linears, in order;
    /// `(name, false)` marks a block without bias (Whisper's keys).
    fn fused(&mut self, ggml_prefix: &str, ct2: &str, blocks: &[(&str, bool)], state: usize) {
        for (index, (name, bias)) in blocks.iter().enumerate() {
            let split = Some((index, blocks.len()));
            let ggml = format!("{ggml_prefix}.{name}");
            self.linear(&ggml, ct2, [state, state], split, *bias);
        }
    }

    /// One transformer block; decoder blocks also have cross-attention.
    fn block(&mut self, side: &str, index: usize, state: usize) {
        let (g, c) = (
            format!("{side}.blocks.{index}"),
            format!("{side}/layer_{index}"),
        );
        let square = [state, state];
        let qkv = [("query", true), ("key", false), ("value", true)];
        self.norm(
            &format!("{g}.attn_ln"),
            &format!("{c}/self_attention/layer_norm"),
            state,
        );
        self.fused(
            &format!("{g}.attn"),
            &format!("{c}/self_attention/linear_0"),
            &qkv,
            state,
        );
        let out = format!("{c}/self_attention/linear_1");
        self.linear(&format!("{g}.attn.out"), &out, square, None, true);
        if side == "decoder" {
            let (ln, cross) = (format!("{g}.cross_attn_ln"), format!("{g}.cross_attn"));
            self.norm(&ln, &format!("{c}/attention/layer_norm"), state);
            let query = format!("{c}/attention/linear_0");
            self.linear(&format!("{cross}.query"), &query, square, None, true);
            let kv = [("key", false), ("value", true)];
            self.fused(&cross, &format!("{c}/attention/linear_1"), &kv, state);
            let out = format!("{c}/attention/linear_2");
            self.linear(&format!("{cross}.out"), &out, square, None, true);
        }
        self.norm(
            &format!("{g}.mlp_ln"),
            &format!("{c}/ffn/layer_norm"),
            state,
        );
        let (up, down) = (format!("{c}/ffn/linear_0"), format!("{c}/ffn/linear_1"));
        self.linear(&format!("{g}.mlp.0"), &up, [4 * state, state], None, true);
        self.linear(&format!("{g}.mlp.2"), &down, [state, 4 * state], None, true);
    }
}

/// Builds the full list of output tensors for a model with `params`, and the fused
/// key-bias blocks that are dropped.
pub fn plan(params: &HyperParams) -> (Vec<TensorPlan>, Vec<DroppedBias>) {
    let mut b = PlanBuilder::default();
    let (a, t) = (params.n_audio_state, params.n_text_state);
    b.tensor(
        "encoder.positional_embedding",
        "encoder/position_encodings/encodings",
        vec![params.n_audio_ctx, a],
        Storage::F32,
    );
    b.tensor(
        "encoder.conv1.weight",
        "encoder/conv1/weight",
        vec![a, params.n_mels, 3],
        Storage::F16,
    );
    b.tensor(
        "encoder.conv1.bias",
        "encoder/conv1/bias",
        vec![a, 1],
        Storage::F32,
    );
    b.tensor(
        "encoder.conv2.weight",
        "encoder/conv2/weight",
        vec![a, a, 3],
        Storage::F16,
    );
    b.tensor(
        "encoder.conv2.bias",
        "encoder/conv2/bias",
        vec![a, 1],
        Storage::F32,
    );
    b.norm("encoder.ln_post", "encoder/layer_norm", a);
    // The output projection is tied to the embeddings (a CT2 alias): not written.
    b.tensor(
        "decoder.positional_embedding",
        "decoder/position_encodings/encodings",
        vec![params.n_text_ctx, t],
        Storage::F32,
    );
    b.tensor(
        "decoder.token_embedding.weight",
        "decoder/embeddings/weight",
        vec![params.n_vocab, t],
        Storage::Weight,
    );
    b.norm("decoder.ln", "decoder/layer_norm", t);
    for i in 0..params.n_audio_layer {
        b.block("encoder", i, a);
    }
    for i in 0..params.n_text_layer {
        b.block("decoder", i, t);
    }
    (b.plans, b.dropped)
}

/// Takes block `index` of `of` equal row blocks of a row-major tensor.
fn split_rows(data: Vec<f32>, split: Option<(usize, usize)>) -> Vec<f32> {
    match split {
        None => data,
        Some((index, of)) => {
            let block = data.len() / of;
            data[index * block..(index + 1) * block].to_vec()
        }
    }
}

/// ggml's reference q8_0 quantization (`quantize_row_q8_0_ref`): per 32 values one f16
/// scale `amax / 127` and 32 rounded int8s.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * (2 + Q8_0_BLOCK));
    for block in values.chunks(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        out.extend_from_slice(&half::f16::from_f32(scale).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
    }
    out
}

/// What a finished conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub params: HyperParams,
    pub weight_type: WeightType,
    pub tensors: usize,
    pub output_bytes: u64,
    pub multilingual: bool,
}

/// Progress of a conversion, reported after each tensor.
#[derive(Debug, Clone, Copy)]
pub struct ConvertProgress<'a> {
    pub tensor: &'a str,
    pub done_tensors: usize,
    pub total_tensors: usize,
}

/// Converts the CTranslate2 Whisper model in `ct2_dir` into a ggml file at `out`.
pub fn convert(
    ct2_dir: &Path,
    out: &Path,
    weight_type: WeightType,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<ConvertSummary> {
    let model_bin = ct2_dir.join("model.bin");
    if !model_bin.is_file() {
        return Err(ConvertError::NotWhisper(format!(
            "{} has no model.bin (expected a CTranslate2 model folder)",
            ct2_dir.display()
        )));
    }
    let mut model = Ct2Model::open(&model_bin)?;
    if !model.spec_name.is_empty() && model.spec_name != "WhisperSpec" {
        return Err(ConvertError::NotWhisper(format!(
            "{} holds a {} model",
            model_bin.display(),
            model.spec_name
        )));
    }
    let params = HyperParams::from_ct2(&mut model)?;
    let vocabulary = read_vocabulary(ct2_dir)?;
    if vocab::token_count(&vocabulary) != params.n_vocab {
        return Err(ConvertError::Unsupported(format!(
            "vocabulary has {} tokens but the embeddings have {} rows",
            vocab::token_count(&vocabulary),
            params.n_vocab
        )));
    }
    let tokens = vocab::regular_token_bytes(&vocabulary)?;
    let (plans, dropped) = plan(&params);
    check_dropped_biases(&mut model, &dropped)?;
    if weight_type == WeightType::Q8_0
        && let Some(p) = plans
            .iter()
            .find(|p| p.storage == Storage::Weight && !p.shape[1].is_multiple_of(Q8_0_BLOCK))
    {
        return Err(ConvertError::Unsupported(format!(
            "{} has rows of {} values, q8_0 needs a multiple of {Q8_0_BLOCK}",
            p.ggml_name, p.shape[1]
        )));
    }

    let partial = out.with_extension("partial");
    let io = |source| ConvertError::Io {
        path: partial.clone(),
        source,
    };
    let mut writer = BufWriter::new(File::create(&partial).map_err(io)?);
    write_header(&mut writer, &params, weight_type, &tokens).map_err(io)?;
    for (i, tensor) in plans.iter().enumerate() {
        let values = split_rows(model.read_f32(&tensor.ct2_name)?, tensor.split);
        let expected: usize = tensor.shape.iter().product();
        if values.len() != expected {
            return Err(ConvertError::Unsupported(format!(
                "{} has {} values, expected shape {:?}",
                tensor.ct2_name,
                values.len(),
                tensor.shape
            )));
        }
        write_tensor(&mut writer, tensor, &values, weight_type).map_err(io)?;
        progress(ConvertProgress {
            tensor: &tensor.ggml_name,
            done_tensors: i + 1,
            total_tensors: plans.len(),
        });
    }
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&partial, out).map_err(|source| ConvertError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let output_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(ConvertSummary {
        multilingual: params.n_vocab >= 51865,
        params,
        weight_type,
        tensors: plans.len(),
        output_bytes,
    })
}

fn read_vocabulary(ct2_dir: &Path) -> Result<String> {
    let txt = ct2_dir.join("vocabulary.txt");
    let json = ct2_dir.join("vocabulary.json");
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    if txt.is_file() {
        read(&txt)
    } else if json.is_file() {
        // Newer CTranslate2 writes a JSON array of tokens; normalise to one per line.
        let tokens: Vec<String> =
            serde_json::from_str(&read(&json)?).map_err(|e| ConvertError::Corrupt {
                path: json.clone(),
                detail: e.to_string(),
            })?;
        Ok(tokens.join("\n"))
    } else {
        Err(ConvertError::NotWhisper(format!(
            "{} has no vocabulary.txt or vocabulary.json",
            ct2_dir.display()
        )))
    }
}

/// CT2 fuses projections and fills the key bias (which Whisper does not have) with
/// zeros; whisper.cpp has no tensor for it. Dropping a non-zero block would change
/// the model, so refuse instead.
fn check_dropped_biases(model: &mut Ct2Model, dropped: &[DroppedBias]) -> Result<()> {
    for bias in dropped {
        let values = split_rows(model.read_f32(&bias.ct2_name)?, Some(bias.block));
        if values.iter().any(|v| *v != 0.0) {
            return Err(ConvertError::Unsupported(format!(
                "{} has a non-zero key bias, which whisper.cpp cannot represent",
                bias.ct2_name
            )));
        }
    }
    Ok(())
}

fn write_i32(w: &mut impl Write, v: i32) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn to_i32(v: usize) -> std::io::Result<i32> {
    i32::try_from(v).map_err(std::io::Error::other)
}

fn write_header(
    w: &mut impl Write,
    params: &HyperParams,
    weight_type: WeightType,
    tokens: &[Vec<u8>],
) -> std::io::Result<()> {
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for field in params.header_fields() {
        write_i32(w, to_i32(field)?)?;
    }
    write_i32(w, weight_type.header_ftype())?;
    write_i32(w, to_i32(params.n_mels)?)?;
    write_i32(w, to_i32(mel::N_FFT / 2 + 1)?)?;
    for v in mel::filterbank(params.n_mels) {
        w.write_all(&v.to_le_bytes())?;
    }
    write_i32(w, to_i32(tokens.len())?)?;
    for token in tokens {
        write_i32(w, to_i32(token.len())?)?;
        w.write_all(token)?;
    }
    Ok(())
}

fn write_tensor(
    w: &mut impl Write,
    tensor: &TensorPlan,
    values: &[f32],
    weight_type: WeightType,
) -> std::io::Result<()> {
    let ggml_type = match (tensor.storage, weight_type) {
        (Storage::F32, _) => GGML_TYPE_F32,
        (Storage::F16, _) | (Storage::Weight, WeightType::F16) => GGML_TYPE_F16,
        (Storage::Weight, WeightType::Q8_0) => GGML_TYPE_Q8_0,
    };
    write_i32(w, to_i32(tensor.shape.len())?)?;
    write_i32(w, to_i32(tensor.ggml_name.len())?)?;
    write_i32(w, ggml_type)?;
    for dim in tensor.shape.iter().rev() {
        write_i32(w, to_i32(*dim)?)?;
    }
    w.write_all(tensor.ggml_name.as_bytes())?;
    match ggml_type {
        GGML_TYPE_F32 => {
            for v in values {
                w.write_all(&v.to_le_bytes())?;
            }
        }
        GGML_TYPE_F16 => {
            for v in values {
                w.write_all(&half::f16::from_f32(*v).to_le_bytes())?;
            }
        }
        _ => w.write_all(&quantize_q8_0(values))?,
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
