//! [`import_gguf`]: a GGUF file to a Hugging Face model folder that transformers and the IBench
//! engine both load.
//!
//! Layout rules (the inverse of llama.cpp's `convert_hf_to_gguf.py`):
//! - GGUF dims are reversed: a tensor with `ne = [in, out]` is the `[out, in]` matrix.
//! - llama-arch `attn_q` / `attn_k` rows were permuted for llama.cpp's interleaved rotary
//!   embedding (`LlamaModel.permute`); they are permuted back. qwen2/qwen3 are not permuted.
//! - no `output.weight` means the embeddings are tied.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;
use ibench_shared::hf::{Architecture, ModelConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::reader::{GgufFile, TensorInfo};
use super::tokenizer::{tokenizer_config_json, tokenizer_json, GgufVocab};
use super::GgufError;

/// The dtype of the written `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutDtype {
    /// bfloat16: half the disk; rounds the dequantized values to 8 significant bits.
    #[default]
    Bf16,
    /// float32: the dequantized GGUF values exactly.
    F32,
}

impl OutDtype {
    fn safetensors_name(self) -> &'static str {
        match self {
            OutDtype::Bf16 => "BF16",
            OutDtype::F32 => "F32",
        }
    }
    /// The `torch_dtype` spelling.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::Bf16 => "bfloat16",
            OutDtype::F32 => "float32",
        }
    }
    fn bytes(self) -> u64 {
        match self {
            OutDtype::Bf16 => 2,
            OutDtype::F32 => 4,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub architecture: Architecture,
    /// `general.architecture` of the GGUF file.
    pub gguf_architecture: String,
    /// `general.name`, when the file has one.
    pub model_name: Option<String>,
    /// Tensors in the GGUF file / written to `model.safetensors`.
    pub tensor_count: usize,
    pub tensors_written: usize,
    /// GGUF tensor type name -> how many tensors have it.
    pub tensor_types: BTreeMap<String, usize>,
    /// Parameters written (tied embeddings once).
    pub params: u64,
    /// Bytes of all files written.
    pub bytes_written: u64,
    pub dtype: OutDtype,
    pub vocab_size: usize,
    pub pre_tokenizer: String,
    pub tie_word_embeddings: bool,
}

/// Progress of an import, for a progress bar.
#[derive(Debug, Clone)]
pub struct ImportProgress<'a> {
    /// The tensor being written now (Hugging Face name).
    pub tensor: &'a str,
    /// Tensors done before this one, of `total`.
    pub index: usize,
    pub total: usize,
    /// Bytes of `model.safetensors` data written so far, of `bytes_total`.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Imports `gguf_path` into `out_dir` (created if needed; the files written there are replaced).
pub fn import_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: OutDtype,
) -> Result<ImportReport, GgufError> {
    import_gguf_with_progress(gguf_path, out_dir, dtype, &mut |_| {})
}

/// [`import_gguf`], calling `progress` before each tensor and once at the end.
pub fn import_gguf_with_progress(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: OutDtype,
    progress: &mut dyn FnMut(&ImportProgress),
) -> Result<ImportReport, GgufError> {
    let g = GgufFile::open(gguf_path)?;
    if let Some(t) = g.tensors.iter().find(|t| !t.ty.is_supported()) {
        return Err(GgufError::UnsupportedTensorType {
            tensor: t.name.clone(),
            ty: t.ty,
        });
    }
    let hp = Hyper::read(&g)?;
    let vocab = GgufVocab::from_gguf(&g)?;
    let plan = plan_tensors(&g, &hp)?;
    let tie = !plan.iter().any(|p| p.hf_name == "lm_head.weight");
    let embed = &g.tensors[plan
        .iter()
        .find(|p| p.hf_name == "model.embed_tokens.weight")
        .expect("checked")
        .src];
    let vocab_size = embed.dims[1] as usize;
    if vocab.tokens.len() > vocab_size {
        return Err(GgufError::Tokenizer(format!(
            "the vocabulary has {} tokens but the embedding only {vocab_size} rows",
            vocab.tokens.len()
        )));
    }

    std::fs::create_dir_all(out_dir).map_err(|source| GgufError::Write {
        path: out_dir.into(),
        source,
    })?;
    let mut bytes_written = 0u64;
    let mut write_json = |name: &str, v: &Value| -> Result<(), GgufError> {
        bytes_written += write_json_file(&out_dir.join(name), v)?;
        Ok(())
    };
    let eos_ids = vocab.eos_ids(&hp.gguf_arch);
    write_json(
        "config.json",
        &config_json(&hp, &vocab, vocab_size, tie, dtype, &plan),
    )?;
    let mut gen = json!({"eos_token_id": eos_ids});
    if let Some(pad) = vocab.pad {
        gen["pad_token_id"] = json!(pad);
    }
    if vocab.add_bos {
        gen["bos_token_id"] = json!(vocab.bos);
    }
    write_json("generation_config.json", &gen)?;
    write_json("tokenizer.json", &tokenizer_json(&vocab)?)?;
    write_json(
        "tokenizer_config.json",
        &tokenizer_config_json(&vocab, hp.context_length),
    )?;

    let (params, st_bytes) = write_safetensors(
        &g,
        &hp,
        &plan,
        dtype,
        &out_dir.join("model.safetensors"),
        progress,
    )?;
    bytes_written += st_bytes;

    let mut tensor_types = BTreeMap::new();
    for t in &g.tensors {
        *tensor_types.entry(t.ty.to_string()).or_insert(0) += 1;
    }
    let mut report = ImportReport {
        architecture: hp.arch,
        gguf_architecture: hp.gguf_arch.clone(),
        model_name: g.get_str("general.name")?.map(String::from),
        tensor_count: g.tensors.len(),
        tensors_written: plan.len(),
        tensor_types,
        params,
        bytes_written,
        dtype,
        vocab_size,
        pre_tokenizer: vocab.pre.clone(),
        tie_word_embeddings: tie,
    };
    let provenance = json!({
        "source": gguf_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "gguf_version": g.version,
        "report": report,
    });
    report.bytes_written += write_json_file(&out_dir.join("ibench_gguf_import.json"), &provenance)?;

    // The folder must resolve the way the engine reads it, and the tokenizer must load.
    ModelConfig::from_folder(out_dir)?;
    tokenizers::Tokenizer::from_file(out_dir.join("tokenizer.json")).map_err(|e| {
        GgufError::Tokenizer(format!("the written tokenizer.json does not load: {e}"))
    })?;
    Ok(report)
}

fn write_json_file(path: &Path, v: &Value) -> Result<u64, GgufError> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
    std::fs::write(path, &text).map_err(|source| GgufError::Write {
        path: path.into(),
        source,
    })?;
    Ok(text.len() as u64)
}

/// The model hyperparameters from `<arch>.*` keys.
#[derive(Debug, Clone)]
struct Hyper {
    arch: Architecture,
    gguf_arch: String,
    layers: u64,
    hidden: u64,
    intermediate: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    context_length: u64,
    rms_eps: f64,
    rope_theta: f64,
}

impl Hyper {
    fn read(g: &GgufFile) -> Result<Self, GgufError> {
        let gguf_arch = g.require_str("general.architecture")?.to_string();
        let arch = match gguf_arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => return Err(GgufError::UnsupportedArchitecture(other.into())),
        };
        let key = |k: &str| format!("{gguf_arch}.{k}");
        let hidden = g.require_u64(&key("embedding_length"))?;
        let heads = g.require_u64(&key("attention.head_count"))?;
        let kv_heads = g.get_u64(&key("attention.head_count_kv"))?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(GgufError::Unsupported(format!(
                "{heads} attention heads are not a multiple of {kv_heads} KV heads"
            )));
        }
        let head_dim = match g.get_u64(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(GgufError::Unsupported(format!(
                    "hidden size {hidden} is not divisible by {heads} heads"
                )))
            }
        };
        if let Some(v) = g.get_u64(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(GgufError::Unsupported(format!(
                    "value head size {v} differs from key head size {head_dim}"
                )));
            }
        }
        if let Some(r) = g.get_u64(&key("rope.dimension_count"))? {
            if r != head_dim {
                return Err(GgufError::Unsupported(format!(
                    "rotary embedding on {r} of {head_dim} head dimensions (partial rotary) is not supported"
                )));
            }
        }
        if let Some(s) = g.get_str(&key("rope.scaling.type"))? {
            if s != "none" {
                return Err(GgufError::Unsupported(format!(
                    "rope scaling '{s}' is not supported (only plain rotary)"
                )));
            }
        }
        if g.get_u64(&key("expert_count"))?.unwrap_or(0) > 0 {
            return Err(GgufError::Unsupported(
                "mixture-of-experts models are not supported".into(),
            ));
        }
        Ok(Self {
            arch,
            layers: g.require_u64(&key("block_count"))?,
            hidden,
            intermediate: g.require_u64(&key("feed_forward_length"))?,
            heads,
            kv_heads,
            head_dim,
            context_length: g.get_u64(&key("context_length"))?.unwrap_or(4096),
            rms_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: g.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
            gguf_arch,
        })
    }
}

/// One tensor to write.
#[derive(Debug, Clone)]
struct Planned {
    hf_name: String,
    /// Index into `GgufFile::tensors`.
    src: usize,
    /// Shape in Hugging Face order.
    shape: Vec<u64>,
    /// Undo llama.cpp's rotary row permutation with this many heads.
    unpermute_heads: Option<u64>,
    /// Sort key: embeddings, layers in order, final norm, head.
    order: (u64, u64),
}

/// The Hugging Face name of a per-layer GGUF tensor suffix.
fn layer_name(suffix: &str) -> Option<&'static str> {
    Some(match suffix {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    })
}

fn plan_tensors(g: &GgufFile, hp: &Hyper) -> Result<Vec<Planned>, GgufError> {
    let unexpected = |t: &TensorInfo| GgufError::UnexpectedTensor {
        tensor: t.name.clone(),
        arch: hp.gguf_arch.clone(),
    };
    let (h, i, hd) = (hp.hidden, hp.intermediate, hp.head_dim);
    let (q, kv) = (hp.heads * hd, hp.kv_heads * hd);
    let mut plan = Vec::new();
    for (src, t) in g.tensors.iter().enumerate() {
        if t.name == "rope_freqs.weight" {
            return Err(GgufError::Unsupported(
                "rope_freqs.weight (Llama 3.1-style rope frequency scaling) is not supported"
                    .into(),
            ));
        }
        let (hf_name, expected, order, unpermute_heads): (
            String,
            Vec<u64>,
            (u64, u64),
            Option<u64>,
        ) = match t.name.as_str() {
            "token_embd.weight" => ("model.embed_tokens.weight".into(), vec![0, h], (0, 0), None),
            "output_norm.weight" => ("model.norm.weight".into(), vec![h], (u64::MAX, 0), None),
            "output.weight" => ("lm_head.weight".into(), vec![0, h], (u64::MAX, 1), None),
            name => {
                let rest = name.strip_prefix("blk.").ok_or_else(|| unexpected(t))?;
                let (n, suffix) = rest.split_once('.').ok_or_else(|| unexpected(t))?;
                let layer: u64 = n.parse().map_err(|_| unexpected(t))?;
                let hf = layer_name(suffix).ok_or_else(|| unexpected(t))?;
                if layer >= hp.layers {
                    return Err(unexpected(t));
                }
                let llama = hp.arch == Architecture::Llama;
                let (shape, perm) = match suffix {
                    "attn_norm.weight" | "ffn_norm.weight" => (vec![h], None),
                    "attn_q.weight" => (vec![q, h], llama.then_some(hp.heads)),
                    "attn_q.bias" => (vec![q], llama.then_some(hp.heads)),
                    "attn_k.weight" => (vec![kv, h], llama.then_some(hp.kv_heads)),
                    "attn_k.bias" => (vec![kv], llama.then_some(hp.kv_heads)),
                    "attn_v.weight" => (vec![kv, h], None),
                    "attn_v.bias" => (vec![kv], None),
                    "attn_output.weight" => (vec![h, q], None),
                    "attn_output.bias" => (vec![h], None),
                    "attn_q_norm.weight" | "attn_k_norm.weight" => (vec![hd], None),
                    "ffn_gate.weight" | "ffn_up.weight" => (vec![i, h], None),
                    "ffn_down.weight" => (vec![h, i], None),
                    _ => unreachable!("layer_name() lists the same suffixes"),
                };
                if hp.arch != Architecture::Qwen3
                    && matches!(suffix, "attn_q_norm.weight" | "attn_k_norm.weight")
                {
                    return Err(unexpected(t));
                }
                (
                    format!("model.layers.{layer}.{hf}"),
                    shape,
                    (layer + 1, 0),
                    perm,
                )
            }
        };
        let found = t.hf_shape();
        let matches = found.len() == expected.len()
            && found.iter().zip(&expected).all(|(f, e)| *e == 0 || f == e);
        if !matches {
            return Err(GgufError::ShapeMismatch {
                tensor: t.name.clone(),
                expected,
                found,
            });
        }
        if !t.ty.is_supported() {
            return Err(GgufError::UnsupportedTensorType {
                tensor: t.name.clone(),
                ty: t.ty,
            });
        }
        plan.push(Planned {
            hf_name,
            src,
            shape: found,
            unpermute_heads,
            order,
        });
    }
    // Every layer needs its tensors; biases come all-or-none per projection family.
    let have = |n: &str| plan.iter().any(|p| p.hf_name == n);
    let mut required = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    let gguf_name = |hf: &str| -> String {
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            _ => hf.to_string(),
        }
    };
    let qkv_bias =
        plan.iter().any(|p| p.hf_name.ends_with("q_proj.bias")) || hp.arch == Architecture::Qwen2;
    let o_bias = plan.iter().any(|p| p.hf_name.ends_with("o_proj.bias"));
    for l in 0..hp.layers {
        let mut names = vec![
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ];
        if qkv_bias {
            names.extend([
                "self_attn.q_proj.bias",
                "self_attn.k_proj.bias",
                "self_attn.v_proj.bias",
            ]);
        }
        if o_bias {
            names.push("self_attn.o_proj.bias");
        }
        if hp.arch == Architecture::Qwen3 {
            names.extend(["self_attn.q_norm.weight", "self_attn.k_norm.weight"]);
        }
        required.extend(names.into_iter().map(|n| format!("model.layers.{l}.{n}")));
    }
    for r in &required {
        if !have(r) {
            return Err(GgufError::MissingTensor(gguf_name(r)));
        }
    }
    match (hp.arch, qkv_bias, o_bias) {
        (Architecture::Qwen2, _, true) => {
            return Err(GgufError::Unsupported(
                "qwen2 with an attn_output bias is not a Qwen2 checkpoint".into(),
            ))
        }
        (Architecture::Llama | Architecture::Qwen3, true, false)
        | (Architecture::Llama | Architecture::Qwen3, false, true) => {
            return Err(GgufError::Unsupported(
                "attention biases on q/k/v without one on the output projection (or the reverse): \
                 transformers' attention_bias needs all four"
                    .into(),
            ))
        }
        _ => {}
    }
    let vocab_rows: Vec<u64> = plan
        .iter()
        .filter(|p| p.hf_name == "model.embed_tokens.weight" || p.hf_name == "lm_head.weight")
        .map(|p| p.shape[0])
        .collect();
    if vocab_rows.windows(2).any(|w| w[0] != w[1]) {
        return Err(GgufError::ShapeMismatch {
            tensor: "output.weight".into(),
            expected: vec![vocab_rows[0], h],
            found: vec![vocab_rows[1], h],
        });
    }
    plan.sort_by(|a, b| {
        a.order
            .cmp(&b.order)
            .then_with(|| a.hf_name.cmp(&b.hf_name))
    });
    Ok(plan)
}

fn config_json(
    hp: &Hyper,
    v: &GgufVocab,
    vocab_size: usize,
    tie: bool,
    dtype: OutDtype,
    plan: &[Planned],
) -> Value {
    let (arch_name, model_type) = match hp.arch {
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
        Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Architecture::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    let mut c = json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hp.hidden,
        "intermediate_size": hp.intermediate,
        "num_hidden_layers": hp.layers,
        "num_attention_heads": hp.heads,
        "num_key_value_heads": hp.kv_heads,
        "head_dim": hp.head_dim,
        "max_position_embeddings": hp.context_length,
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "rope_scaling": null,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": v.bos,
        "eos_token_id": v.eos,
        "pad_token_id": v.pad,
        "torch_dtype": dtype.torch_name(),
    });
    match hp.arch {
        Architecture::Llama | Architecture::Qwen3 => {
            c["attention_bias"] = json!(plan.iter().any(|p| p.hf_name.ends_with("q_proj.bias")));
            c["mlp_bias"] = json!(false);
        }
        Architecture::Qwen2 => {
            c["use_sliding_window"] = json!(false);
        }
    }
    if hp.arch == Architecture::Qwen3 {
        c["use_sliding_window"] = json!(false);
    }
    c
}

/// GGUF row `h*hd + 2j + t` is Hugging Face row `h*hd + t*hd/2 + j` (inverse of
/// `convert_hf_to_gguf.py`'s `permute`: `reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)`).
pub(crate) fn unpermute_rows(data: &[f32], n_head: usize, row_len: usize) -> Vec<f32> {
    let rows = data.len() / row_len;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                let from = h * hd + 2 * j + t;
                let to = h * hd + t * half + j;
                out[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&data[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    out
}

fn encode_into(values: &[f32], dtype: OutDtype, buf: &mut Vec<u8>) {
    buf.clear();
    match dtype {
        OutDtype::F32 => {
            buf.reserve(values.len() * 4);
            for v in values {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        OutDtype::Bf16 => {
            buf.reserve(values.len() * 2);
            for v in values {
                buf.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
    }
}

/// Streams the tensors into a safetensors file (header first, then each tensor dequantized in
/// chunks of rows). Returns (parameters, bytes).
fn write_safetensors(
    g: &GgufFile,
    hp: &Hyper,
    plan: &[Planned],
    dtype: OutDtype,
    path: &Path,
    progress: &mut dyn FnMut(&ImportProgress),
) -> Result<(u64, u64), GgufError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    let mut params = 0u64;
    for p in plan {
        let n: u64 = p.shape.iter().product();
        let bytes = n * dtype.bytes();
        header.insert(
            p.hf_name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": p.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
        params += n;
    }
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "source": "gguf", "gguf_architecture": hp.gguf_arch}),
    );
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("header serializes");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let werr = |source| GgufError::Write {
        path: PathBuf::from(path),
        source,
    };
    let file = File::create(path).map_err(werr)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(werr)?;
    w.write_all(&head).map_err(werr)?;
    let total = offset;
    let mut done = 0u64;
    let mut buf = Vec::new();
    const CHUNK_ELEMENTS: u64 = 1 << 20;
    for (index, p) in plan.iter().enumerate() {
        progress(&ImportProgress {
            tensor: &p.hf_name,
            index,
            total: plan.len(),
            bytes_done: done,
            bytes_total: total,
        });
        let t = &g.tensors[p.src];
        let row_len = t.dims[0];
        let rows = t.n_elements() / row_len.max(1);
        if let Some(n_head) = p.unpermute_heads {
            let data = g.dequantize_tensor(t)?;
            let fixed = unpermute_rows(&data, n_head as usize, row_len as usize);
            encode_into(&fixed, dtype, &mut buf);
            w.write_all(&buf).map_err(werr)?;
        } else {
            let step = (CHUNK_ELEMENTS / row_len.max(1)).max(1);
            let mut r = 0;
            while r < rows {
                let end = (r + step).min(rows);
                let data = g.dequantize_rows(t, r as usize..end as usize)?;
                encode_into(&data, dtype, &mut buf);
                w.write_all(&buf).map_err(werr)?;
                r = end;
            }
        }
        done += t.n_elements() * dtype.bytes();
    }
    w.flush().map_err(werr)?;
    progress(&ImportProgress {
        tensor: "",
        index: plan.len(),
        total: plan.len(),
        bytes_done: done,
        bytes_total: total,
    });
    Ok((params, 8 + head.len() as u64 + total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// convert_hf_to_gguf.py's permute, on row indices.
    fn permute_rows(data: &[f32], n_head: usize, row_len: usize) -> Vec<f32> {
        let rows = data.len() / row_len;
        let hd = rows / n_head;
        let half = hd / 2;
        let mut out = vec![0f32; data.len()];
        // out = w.reshape(n, 2, half, c).swapaxes(1, 2): out[(h, j, t)] = w[(h, t, j)]
        for h in 0..n_head {
            for j in 0..half {
                for t in 0..2 {
                    let to = h * hd + 2 * j + t;
                    let from = h * hd + t * half + j;
                    out[to * row_len..(to + 1) * row_len]
                        .copy_from_slice(&data[from * row_len..(from + 1) * row_len]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, hd, cols) = (3, 8, 5);
        let w: Vec<f32> = (0..n_head * hd * cols).map(|x| x as f32).collect();
        let g = permute_rows(&w, n_head, cols);
        assert_ne!(g, w);
        assert_eq!(unpermute_rows(&g, n_head, cols), w);
        // a bias is a matrix with one column
        let b: Vec<f32> = (0..n_head * hd).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&b, n_head, 1), n_head, 1), b);
        // head 0, HF rows 0..4 are the first halves of the rotary pairs: GGUF rows 0, 2, 4, 6
        assert_eq!(
            &unpermute_rows(&b, n_head, 1)[..8],
            &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
        );
    }

    #[test]
    fn bf16_encoding_rounds_to_nearest() {
        let mut buf = Vec::new();
        encode_into(&[1.0, -2.5, 1.0 + 1.0 / 256.0], OutDtype::Bf16, &mut buf);
        let back: Vec<f32> = buf
            .chunks(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        assert_eq!(back, vec![1.0, -2.5, 1.0]);
    }
}
