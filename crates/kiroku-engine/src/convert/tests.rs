//! Converter tests against synthetic CTranslate2 models of shapes not downloadable
//! here (multilingual vocabularies, large-v3's 128 mel bins), read back by a small
//! independent ggml parser and, in `engine` tests, by whisper.cpp itself.

use std::collections::BTreeMap;
use std::path::Path;

use super::ct2::{Ct2Dtype, write_model};
use super::*;

/// Shape of a synthetic Whisper model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SynthSpec {
    pub n_mels: usize,
    pub n_vocab: usize,
    pub state: usize,
    pub heads: usize,
    pub layers: usize,
    pub n_audio_ctx: usize,
    pub n_text_ctx: usize,
    /// Put a non-zero value into the fused key bias (a model whisper.cpp can't hold).
    pub nonzero_key_bias: bool,
}

impl SynthSpec {
    /// A large-v3-shaped (128 mels, 51866 tokens) but tiny-width model.
    pub(crate) fn large_v3_like() -> Self {
        Self {
            n_mels: 128,
            n_vocab: 51866,
            state: 64,
            heads: 2,
            layers: 2,
            n_audio_ctx: 1500,
            n_text_ctx: 448,
            nonzero_key_bias: false,
        }
    }

    /// An English-only (51864 tokens, 80 mels) tiny-width model.
    pub(crate) fn english_like() -> Self {
        Self {
            n_mels: 80,
            n_vocab: 51864,
            ..Self::large_v3_like()
        }
    }
}

/// Deterministic pseudo-random f16 bytes in [-0.05, 0.05).
fn values_f16(n: usize, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 2);
    for _ in 0..n {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = ((*seed >> 33) as f32) / (1u64 << 31) as f32;
        out.extend_from_slice(&half::f16::from_f32((unit - 0.5) * 0.1).to_le_bytes());
    }
    out
}

struct Builder {
    vars: Vec<(String, Vec<usize>, Ct2Dtype, Vec<u8>)>,
    seed: u64,
}

impl Builder {
    fn add(&mut self, name: &str, shape: Vec<usize>) {
        let bytes = values_f16(shape.iter().product(), &mut self.seed);
        self.vars
            .push((name.to_string(), shape, Ct2Dtype::F16, bytes));
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize) {
        self.add(&format!("{name}/weight"), vec![rows, cols]);
        self.add(&format!("{name}/bias"), vec![rows]);
    }
}

/// Writes `model.bin` and `vocabulary.txt` of a synthetic model into `dir`.
pub(crate) fn write_synthetic_ct2(dir: &Path, spec: SynthSpec) {
    let mut b = Builder {
        vars: Vec::new(),
        seed: 42,
    };
    let s = spec.state;
    b.add("encoder/conv1/weight", vec![s, spec.n_mels, 3]);
    b.add("encoder/conv1/bias", vec![s]);
    b.add("encoder/conv2/weight", vec![s, s, 3]);
    b.add("encoder/conv2/bias", vec![s]);
    b.add(
        "encoder/position_encodings/encodings",
        vec![spec.n_audio_ctx, s],
    );
    b.add(
        "decoder/position_encodings/encodings",
        vec![spec.n_text_ctx, s],
    );
    b.add("decoder/embeddings/weight", vec![spec.n_vocab, s]);
    for side in ["encoder", "decoder"] {
        b.add(&format!("{side}/layer_norm/gamma"), vec![s]);
        b.add(&format!("{side}/layer_norm/beta"), vec![s]);
        let heads = (spec.heads as i16).to_le_bytes().to_vec();
        b.vars
            .push((format!("{side}/num_heads"), vec![], Ct2Dtype::I16, heads));
        for i in 0..spec.layers {
            let p = format!("{side}/layer_{i}");
            b.add(&format!("{p}/self_attention/layer_norm/gamma"), vec![s]);
            b.add(&format!("{p}/self_attention/layer_norm/beta"), vec![s]);
            b.linear(&format!("{p}/self_attention/linear_0"), 3 * s, s);
            b.linear(&format!("{p}/self_attention/linear_1"), s, s);
            if side == "decoder" {
                b.add(&format!("{p}/attention/layer_norm/gamma"), vec![s]);
                b.add(&format!("{p}/attention/layer_norm/beta"), vec![s]);
                b.linear(&format!("{p}/attention/linear_0"), s, s);
                b.linear(&format!("{p}/attention/linear_1"), 2 * s, s);
                b.linear(&format!("{p}/attention/linear_2"), s, s);
            }
            b.add(&format!("{p}/ffn/layer_norm/gamma"), vec![s]);
            b.add(&format!("{p}/ffn/layer_norm/beta"), vec![s]);
            b.linear(&format!("{p}/ffn/linear_0"), 4 * s, s);
            b.linear(&format!("{p}/ffn/linear_1"), s, 4 * s);
        }
    }
    let mut vars = b.vars;
    // Zero the key-bias blocks as CTranslate2 does (unless the test wants otherwise).
    for (name, _, _, bytes) in vars.iter_mut() {
        let block = if name.ends_with("self_attention/linear_0/bias") {
            Some((1, 3))
        } else if name.starts_with("decoder/layer_") && name.ends_with("/attention/linear_1/bias") {
            Some((0, 2))
        } else {
            None
        };
        if let Some((index, of)) = block {
            let len = bytes.len() / of;
            bytes[index * len..(index + 1) * len].fill(0);
            if spec.nonzero_key_bias {
                bytes[index * len..index * len + 2]
                    .copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
            }
        }
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let aliases = [(
        "decoder/projection/weight".to_string(),
        "decoder/embeddings/weight".to_string(),
    )];
    let mut file = std::fs::File::create(dir.join("model.bin")).expect("create model.bin");
    write_model(&mut file, "WhisperSpec", &vars, &aliases).expect("write model.bin");

    // Regular tokens as in GPT-2: the 256 single bytes first, then " -" and " '" (which
    // whisper.cpp's blank suppression looks up), then filler; then the special tokens.
    let regular = if spec.n_vocab >= 51865 { 50257 } else { 50256 };
    let mut vocabulary = String::new();
    for byte in 0..=255u8 {
        vocabulary.push(vocab::byte_symbol(byte));
        vocabulary.push('\n');
    }
    vocabulary.push_str("Ġ-\nĠ'\n");
    for i in 258..regular {
        vocabulary.push_str(&format!("Ġt{i}\n"));
    }
    vocabulary.push_str("<|endoftext|>\n");
    for i in regular + 1..spec.n_vocab {
        vocabulary.push_str(&format!("<|special{i}|>\n"));
    }
    std::fs::write(dir.join("vocabulary.txt"), vocabulary).expect("write vocabulary");
}

/// Independent reader of the ggml file layout, for assertions.
struct GgmlFile {
    header: Vec<i32>,
    mel: (i32, i32, Vec<f32>),
    tokens: Vec<Vec<u8>>,
    tensors: BTreeMap<String, (i32, Vec<i32>, Vec<u8>)>,
}

fn parse_ggml(bytes: &[u8]) -> GgmlFile {
    let mut pos = 0;
    let i32_at = |pos: &mut usize| {
        let v = i32::from_le_bytes(bytes[*pos..*pos + 4].try_into().expect("4 bytes"));
        *pos += 4;
        v
    };
    assert_eq!(i32_at(&mut pos) as u32, GGML_MAGIC);
    let header: Vec<i32> = (0..11).map(|_| i32_at(&mut pos)).collect();
    let (n_mel, n_fft) = (i32_at(&mut pos), i32_at(&mut pos));
    let mel: Vec<f32> = (0..n_mel * n_fft)
        .map(|_| f32::from_bits(i32_at(&mut pos) as u32))
        .collect();
    let n_tokens = i32_at(&mut pos);
    let mut tokens = Vec::new();
    for _ in 0..n_tokens {
        let len = i32_at(&mut pos) as usize;
        tokens.push(bytes[pos..pos + len].to_vec());
        pos += len;
    }
    let mut tensors = BTreeMap::new();
    while pos < bytes.len() {
        let n_dims = i32_at(&mut pos);
        let name_len = i32_at(&mut pos) as usize;
        let ttype = i32_at(&mut pos);
        let dims: Vec<i32> = (0..n_dims).map(|_| i32_at(&mut pos)).collect();
        let name = String::from_utf8(bytes[pos..pos + name_len].to_vec()).expect("utf8 name");
        pos += name_len;
        let n: usize = dims.iter().map(|d| *d as usize).product();
        let size = match ttype {
            GGML_TYPE_F32 => n * 4,
            GGML_TYPE_F16 => n * 2,
            GGML_TYPE_Q8_0 => n / 32 * 34,
            other => panic!("unexpected ggml type {other}"),
        };
        tensors.insert(name, (ttype, dims, bytes[pos..pos + size].to_vec()));
        pos += size;
    }
    GgmlFile {
        header,
        mel: (n_mel, n_fft, mel),
        tokens,
        tensors,
    }
}

fn convert_synthetic(
    spec: SynthSpec,
    weight_type: WeightType,
) -> (tempfile::TempDir, ConvertSummary, GgmlFile) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_synthetic_ct2(dir.path(), spec);
    let out = dir.path().join("out.bin");
    let mut calls = 0;
    let summary = convert(dir.path(), &out, weight_type, &mut |_| calls += 1).expect("convert");
    assert_eq!(
        calls, summary.tensors,
        "progress is reported once per tensor"
    );
    let parsed = parse_ggml(&std::fs::read(&out).expect("read output"));
    (dir, summary, parsed)
}

#[test]
fn header_carries_hyperparameters_read_from_the_model() {
    let spec = SynthSpec::large_v3_like();
    let (_dir, summary, file) = convert_synthetic(spec, WeightType::F16);
    assert_eq!(
        file.header,
        vec![51866, 1500, 64, 2, 2, 448, 64, 2, 2, 128, 1],
        "n_vocab, audio ctx/state/head/layer, text ctx/state/head/layer, n_mels, ftype"
    );
    assert!(summary.multilingual);
    assert_eq!((file.mel.0, file.mel.1), (128, 201));
    assert_eq!(file.mel.2, mel::filterbank(128));
}

#[test]
fn english_model_gets_80_mels_and_50256_regular_tokens() {
    let (_dir, summary, file) = convert_synthetic(SynthSpec::english_like(), WeightType::F16);
    assert_eq!(file.header[0], 51864);
    assert_eq!(file.header[9], 80);
    assert!(!summary.multilingual);
    assert_eq!(file.tokens.len(), 50256);
    assert_eq!(
        file.tokens[7],
        vec![7u8],
        "single-byte tokens decode to their byte"
    );
    assert_eq!(
        file.tokens[256],
        b" -".to_vec(),
        "GPT-2 'Ġ' decodes to a space byte"
    );
    assert_eq!(file.tokens[300], b" t300".to_vec());
}

#[test]
fn multilingual_vocabulary_keeps_token_50256() {
    let (_dir, _, file) = convert_synthetic(SynthSpec::large_v3_like(), WeightType::F16);
    assert_eq!(file.tokens.len(), 50257);
    assert_eq!(file.tokens[50256], b" t50256".to_vec());
}

#[test]
fn tensor_names_shapes_and_types_follow_whisper_cpp() {
    let spec = SynthSpec::english_like();
    let (_dir, summary, file) = convert_synthetic(spec, WeightType::F16);
    assert_eq!(file.tensors.len(), summary.tensors);
    // 7 encoder stem + 4 decoder stem + 15 per encoder layer + 24 per decoder layer
    // (whisper.cpp's tensor count for the same model).
    assert_eq!(summary.tensors, 11 + 15 * spec.layers + 24 * spec.layers);
    let t = |name: &str| {
        file.tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
    };
    assert_eq!(
        (t("encoder.conv1.weight").0, &t("encoder.conv1.weight").1),
        (GGML_TYPE_F16, &vec![3, 80, 64])
    );
    assert_eq!(
        (t("encoder.conv1.bias").0, &t("encoder.conv1.bias").1),
        (GGML_TYPE_F32, &vec![1, 64])
    );
    assert_eq!(
        (
            t("encoder.positional_embedding").0,
            &t("encoder.positional_embedding").1
        ),
        (GGML_TYPE_F32, &vec![64, 1500])
    );
    assert_eq!(
        (
            t("decoder.token_embedding.weight").0,
            &t("decoder.token_embedding.weight").1
        ),
        (GGML_TYPE_F16, &vec![64, 51864])
    );
    assert_eq!(
        (
            t("decoder.blocks.1.mlp.0.weight").0,
            &t("decoder.blocks.1.mlp.0.weight").1
        ),
        (GGML_TYPE_F16, &vec![64, 256])
    );
    assert_eq!(t("encoder.blocks.0.attn_ln.bias").0, GGML_TYPE_F32);
    assert_eq!(t("decoder.blocks.0.cross_attn.out.weight").1, vec![64, 64]);
    assert!(file.tensors.contains_key("decoder.ln.weight"));
    assert!(
        !file.tensors.keys().any(|k| k.contains("projection")),
        "the tied projection is not written"
    );
}

#[test]
fn key_bias_is_dropped_and_fused_matrices_are_split_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SynthSpec::english_like();
    write_synthetic_ct2(dir.path(), spec);
    let mut model = Ct2Model::open(&dir.path().join("model.bin")).expect("open");
    let fused = model
        .read_bytes("encoder/layer_0/self_attention/linear_0/weight")
        .expect("read");
    let out = dir.path().join("out.bin");
    convert(dir.path(), &out, WeightType::F16, &mut |_| {}).expect("convert");
    let file = parse_ggml(&std::fs::read(&out).expect("read"));
    let block = fused.len() / 3;
    for (i, name) in ["query", "key", "value"].iter().enumerate() {
        let (_, _, data) = &file.tensors[&format!("encoder.blocks.0.attn.{name}.weight")];
        assert_eq!(
            data,
            &fused[i * block..(i + 1) * block],
            "{name} is block {i} of linear_0"
        );
    }
    assert!(!file.tensors.contains_key("encoder.blocks.0.attn.key.bias"));
    assert!(
        !file
            .tensors
            .contains_key("decoder.blocks.0.cross_attn.key.bias")
    );
    assert!(
        file.tensors
            .contains_key("decoder.blocks.0.cross_attn.value.bias")
    );
}

#[test]
fn nonzero_key_bias_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_synthetic_ct2(
        dir.path(),
        SynthSpec {
            nonzero_key_bias: true,
            ..SynthSpec::english_like()
        },
    );
    let err = convert(
        dir.path(),
        &dir.path().join("out.bin"),
        WeightType::F16,
        &mut |_| {},
    )
    .expect_err("non-zero key bias");
    assert!(err.to_string().contains("non-zero key bias"), "{err}");
    assert!(!dir.path().join("out.bin").exists(), "no output on failure");
}

#[test]
fn q8_0_quantizes_matrices_only_and_round_trips_closely() {
    let (_dir, _, file) = convert_synthetic(SynthSpec::english_like(), WeightType::Q8_0);
    assert_eq!(
        file.header[10], 2007,
        "ftype q8_0 with quantization version 2"
    );
    assert_eq!(
        file.tensors["decoder.blocks.0.mlp.0.weight"].0,
        GGML_TYPE_Q8_0
    );
    assert_eq!(
        file.tensors["encoder.conv2.weight"].0, GGML_TYPE_F16,
        "conv kernels stay f16"
    );
    assert_eq!(file.tensors["encoder.blocks.0.mlp.0.bias"].0, GGML_TYPE_F32);

    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
    let packed = quantize_q8_0(&values);
    assert_eq!(packed.len(), 2 * 34);
    for (block, chunk) in packed.chunks(34).zip(values.chunks(32)) {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (q, v) in block[2..].iter().zip(chunk) {
            assert!((f32::from(*q as i8) * scale - v).abs() <= scale, "{v}");
        }
    }
}

#[test]
fn corrupt_and_foreign_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let err = convert(dir.path(), &out, WeightType::F16, &mut |_| {}).expect_err("empty dir");
    assert!(err.to_string().contains("no model.bin"), "{err}");

    std::fs::write(dir.path().join("model.bin"), b"PK\x03\x04 this is a zip").expect("write");
    let err = convert(dir.path(), &out, WeightType::F16, &mut |_| {}).expect_err("garbage");
    assert!(err.to_string().contains("binary version"), "{err}");

    write_synthetic_ct2(dir.path(), SynthSpec::english_like());
    let full = std::fs::read(dir.path().join("model.bin")).expect("read");
    std::fs::write(dir.path().join("model.bin"), &full[..full.len() / 2]).expect("truncate");
    let err = convert(dir.path(), &out, WeightType::F16, &mut |_| {}).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(!out.exists());
}
